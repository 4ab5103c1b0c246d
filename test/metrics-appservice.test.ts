// AppserviceCrypto's metrics (transactions, events handed to the bridge, late keys, open
// machines and evictions) and serveAppservice's /health/live, /health/ready and /metrics.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Registry } from 'prom-client';
import { AppserviceCrypto, serveAppservice, type AppserviceCryptoOptions, type ServeAppserviceOptions } from '../src/index';
import { TestDevice } from '../src/testing';
import { FakeAppserviceHomeserver, registration } from './appservice-fake';
import { observed, parseExposition, value } from './helpers/metrics';

const ROOM = '!room:example.org';
const A = '@puppet_a:example.org';
const B = '@puppet_b:example.org';
const ALICE = '@alice:example.org';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

/** An AppserviceCrypto on the fake homeserver; `down` makes every request fail as a network error. */
async function setup(extra: Partial<AppserviceCryptoOptions> = {}) {
  const fake = new FakeAppserviceHomeserver();
  const net = { down: false };
  const root = await mkdtemp(join(tmpdir(), 'mcn-asm-'));
  cleanup.push(() => rm(root, { recursive: true, force: true }));
  const crypto = await AppserviceCrypto.open({
    homeserverUrl: 'http://hs.invalid',
    registration,
    storeRoot: root,
    transport: { fetch: (input, init) => (net.down ? Promise.reject(new TypeError('fetch failed')) : fake.fetch(input, init)), maxRetries: 0 },
    ...extra,
  });
  cleanup.push(() => crypto.close());
  return { fake, net, crypto };
}

function member(userId: string) {
  return { type: 'm.room.member', state_key: userId, sender: userId, room_id: ROOM, event_id: `$m-${userId}`, content: { membership: 'join' } };
}

async function serve(crypto: AppserviceCrypto, options: Partial<ServeAppserviceOptions> = {}) {
  const server = await serveAppservice(crypto, { port: 0, ...options });
  cleanup.push(() => server.close());
  const get = async (path: string) => {
    const res = await fetch(`http://127.0.0.1:${server.port}${path}`);
    return { status: res.status, type: res.headers.get('content-type'), text: await res.text() };
  };
  return { server, get };
}

describe('AppserviceCrypto metrics', () => {
  it('count transactions, the events handed to the bridge once each, late keys, open machines and evictions', async () => {
    const registry = new Registry();
    // Room keys come through transactions only here: a background inbox drain at start could take
    // the key first and hand the late decryption over in a later transaction.
    const { fake, crypto } = await setup({ metrics: { registry }, limits: { maxOpenMachines: 1 }, inboxDrain: false });
    const a = await crypto.deviceFor(A);
    const b = await crypto.deviceFor(B);
    // The evicted machine closes in the background.
    await vi.waitFor(() => expect(value(crypto.metrics(), 'matrix_crypto_open_machines')).toBe(1));
    let m = crypto.metrics();
    expect(crypto.openMachineCount).toBe(1);
    expect(value(m, 'matrix_crypto_appservice_machine_evictions_total')).toBe(1);
    const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
    fake.rooms.set(ROOM, [ALICE, A, B]);

    // The event comes before its room key: both puppets try it (two machine decryptions), the
    // bridge gets it once, undecryptable, and it waits.
    const event = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'late' });
    await crypto.processTransaction('t1', fake.transaction([], [member(A), member(B), event]));
    m = crypto.metrics();
    expect(value(m, 'matrix_crypto_decryptions_total', { outcome: 'undecryptable' })).toBe(1);
    expect(m.matrix_crypto_decryption_errors_total.samples).toEqual([{ labels: { code: 'MissingRoomKey', withheld: 'none' }, value: 1 }]);
    expect(value(m, 'matrix_crypto_undecryptable_events_waiting')).toBe(1);
    expect(observed(m, 'matrix_crypto_machine_operation_duration_seconds', { operation: 'decrypt_room_event' })).toBe(2);

    // The key comes: one late decryption, one late key.
    const t2 = await crypto.processTransaction('t2', fake.transaction([a, b]));
    expect(t2.lateDecryptions).toHaveLength(1);
    await crypto.processTransaction('t2', fake.transaction([]));
    m = crypto.metrics();
    expect(value(m, 'matrix_crypto_decryptions_total', { outcome: 'decrypted' })).toBe(1);
    expect(value(m, 'matrix_crypto_late_room_keys_total')).toBe(1);
    expect(observed(m, 'matrix_crypto_room_key_delay_seconds')).toBe(1);
    expect(value(m, 'matrix_crypto_undecryptable_events_waiting')).toBe(0);
    expect(value(m, 'matrix_crypto_to_device_events_total', { outcome: 'decrypted' })).toBe(2);
    expect(value(m, 'matrix_crypto_appservice_transactions_total', { outcome: 'processed' })).toBe(2);
    expect(value(m, 'matrix_crypto_appservice_transactions_total', { outcome: 'duplicate' })).toBe(1);
    expect(observed(m, 'matrix_crypto_appservice_transaction_duration_seconds')).toBe(3);
    const devices = m.matrix_crypto_appservice_transaction_devices.samples[0]!;
    expect([devices.count, devices.sum]).toEqual([2, 2]);
    await vi.waitFor(() => expect(value(crypto.metrics(), 'matrix_crypto_open_machines')).toBe(1));
    expect(value(m, 'matrix_crypto_appservice_machine_evictions_total')).toBeGreaterThanOrEqual(2);
    expect(value(m, 'matrix_crypto_homeserver_requests_total', { endpoint: '/devices/{deviceId}', method: 'PUT', status: '201' })).toBe(2);

    // A failed transaction.
    fake.failNext = (c) => c.userId === A && c.path.endsWith('/keys/upload');
    const low = fake.transaction([a]);
    low['org.matrix.msc3202.device_one_time_keys_count'] = { [A]: { [a.deviceId]: { signed_curve25519: 1 } } };
    await expect(crypto.processTransaction('t3', low)).rejects.toMatchObject({ code: 'TransactionFailed' });
    expect(value(crypto.metrics(), 'matrix_crypto_appservice_transactions_total', { outcome: 'failed' })).toBe(1);

    // The registry holds the same figures; the exposition parses.
    const families = parseExposition(await registry.metrics());
    expect(families.get('matrix_crypto_appservice_transactions_total')!.samples.map((s) => [s.labels.outcome, s.value])).toEqual([
      ['processed', 2],
      ['duplicate', 1],
      ['failed', 1],
    ]);
    for (const f of families.values()) for (const s of f.samples) for (const v of Object.values(s.labels)) expect(v).not.toMatch(/[!@$:]/);
  });
});

describe('serveAppservice health and metrics endpoints', () => {
  it('is live; ready while the store is open and the homeserver answers; not ready once closed', async () => {
    const { crypto, fake } = await setup();
    const { get } = await serve(crypto);
    expect(await get('/health/live')).toMatchObject({ status: 200, text: JSON.stringify({ status: 'live' }) });
    // Never contacted yet: readiness asks the homeserver (whoami, answered by the fake with 404).
    const first = await get('/health/ready');
    expect(first.status).toBe(200);
    expect(JSON.parse(first.text)).toEqual({ status: 'ready', checks: { store: { ok: true }, homeserver: { ok: true, detail: 'answered now' } } });
    expect(fake.calls.filter((c) => c.path.endsWith('/account/whoami'))).toHaveLength(1);
    // Answered within the window: no new question.
    expect(JSON.parse((await get('/health/ready')).text).checks.homeserver.detail).toMatch(/^answered \d+ ms ago$/);
    expect(fake.calls.filter((c) => c.path.endsWith('/account/whoami'))).toHaveLength(1);

    await crypto.close();
    const closed = await get('/health/ready');
    expect(closed.status).toBe(503);
    expect(JSON.parse(closed.text)).toMatchObject({ status: 'not_ready', checks: { store: { ok: false, detail: 'the AppserviceCrypto is closed' } } });
    expect((await get('/health/live')).status).toBe(200);
  });

  it('is not ready when the homeserver has not answered for longer than the window and does not answer now', async () => {
    const { crypto, net } = await setup();
    const { get } = await serve(crypto, { health: { homeserverWindowMs: 1, probeTimeoutMs: 1000 } });
    await crypto.deviceFor(A);
    net.down = true;
    await new Promise((r) => setTimeout(r, 10));
    const down = await get('/health/ready');
    expect(down.status).toBe(503);
    const body = JSON.parse(down.text);
    expect(body).toMatchObject({ status: 'not_ready', checks: { store: { ok: true }, homeserver: { ok: false } } });
    expect(body.checks.homeserver.detail).toMatch(/^unreachable: last answered \d+ s ago \(window 1 ms\), no answer to whoami within 1000 ms$/);
    net.down = false;
    expect((await get('/health/ready')).status).toBe(200);
  });

  it('adds the conditions the bridge plugs in (a standby lease, say), and a failing check says why', async () => {
    const { crypto } = await setup();
    let leader = false;
    const { get } = await serve(crypto, {
      health: {
        checks: {
          lease: () => (leader ? { ok: true } : { ok: false, detail: 'standby: another process holds the lease' }),
          broken: () => {
            throw new Error('database unreachable');
          },
        },
      },
    });
    const r = await get('/health/ready');
    expect(r.status).toBe(503);
    expect(JSON.parse(r.text).checks).toMatchObject({
      store: { ok: true },
      lease: { ok: false, detail: 'standby: another process holds the lease' },
      broken: { ok: false, detail: 'check failed: database unreachable' },
    });
    leader = true;
    expect(JSON.parse((await get('/health/ready')).text).checks.lease).toEqual({ ok: true });
    await expect(serveAppservice(crypto, { port: 0, health: { homeserverWindowMs: -1 } })).rejects.toMatchObject({
      code: 'InvalidArgument',
      field: 'health.homeserverWindowMs',
    });
    await expect(serveAppservice(crypto, { port: 0, health: { checks: { x: 1 as never } } })).rejects.toMatchObject({ field: 'health.checks.x' });
  });

  it('serves the registry at /metrics without the hs_token, and 404 without a registry', async () => {
    const registry = new Registry();
    const { crypto } = await setup({ metrics: { registry } });
    await crypto.deviceFor(A);
    const { get } = await serve(crypto);
    const r = await get('/metrics');
    expect(r.status).toBe(200);
    expect(r.type).toBe(registry.contentType);
    const families = parseExposition(r.text);
    expect(families.get('matrix_crypto_open_machines')!.samples[0]!.value).toBe(1);
    expect(families.get('matrix_crypto_homeserver_requests_total')!.samples.some((s) => s.labels.endpoint === '/keys/upload')).toBe(true);

    const plain = await setup();
    const { get: getPlain } = await serve(plain.crypto);
    expect((await getPlain('/metrics')).status).toBe(404);
    // The crypto API still demands the token.
    expect((await getPlain('/_matrix/app/v1/users/x')).status).toBe(401);
  });
});
