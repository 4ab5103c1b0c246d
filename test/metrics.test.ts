// Metrics of OlmMachine, HomeserverTransport and EncryptedClient: every figure moves with its
// event by exact counts, label values stay in their closed sets, the prom-client exposition
// parses, and a registry that is not one is refused naming the option.
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import {
  AppserviceCrypto,
  DecryptionError,
  EncryptedClient,
  HomeserverTransport,
  MatrixCryptoError,
  OlmMachine,
  type MatrixEvent,
  type MetricsOptions,
} from '../src/index';
import { TestDevice, TestHomeserver } from '../src/testing';
import { DEFINITIONS } from '../src/metrics/definitions';
import { observed, parseExposition, value } from './helpers/metrics';

const ALICE = '@alice:example.org';
const BOB = '@bob:example.org';

/** A device on the test homeserver whose machine is opened with `metrics`. */
async function device(hs: TestHomeserver, userId: string, deviceId: string, metrics?: MetricsOptions): Promise<TestDevice> {
  hs.changed.set(`${userId}|${deviceId}`, new Set());
  const d = new TestDevice(hs, await OlmMachine.open({ userId, deviceId, store: { kind: 'memory' }, ...(metrics ? { metrics } : {}) }));
  await d.flush();
  return d;
}

async function decrypt(machine: OlmMachine, event: MatrixEvent): Promise<DecryptionError | null> {
  try {
    await machine.decryptRoomEvent(event, event.room_id as string);
    return null;
  } catch (err) {
    if (err instanceof DecryptionError) return err;
    throw err;
  }
}

describe('OlmMachine metrics', () => {
  it('count decryptions, late keys, waiting events, to-device events, shares, Olm sessions and one-time keys', async () => {
    const hs = new TestHomeserver();
    const alice = await device(hs, ALICE, 'ALICE');
    const bob = await device(hs, BOB, 'BOB');
    expect(value(bob.machine.metrics(), 'matrix_crypto_open_machines')).toBe(1);
    expect(value(bob.machine.metrics(), 'matrix_crypto_one_time_keys_uploaded_total')).toBe(hs.oneTimeKeyCount(BOB, 'BOB'));
    expect(observed(bob.machine.metrics(), 'matrix_crypto_machine_operation_duration_seconds', { operation: 'open' })).toBe(1);

    // 50 rooms: Alice shares a key in each and sends one event; Bob has none of the keys yet.
    const events: MatrixEvent[] = [];
    let bytes = 0;
    for (let i = 0; i < 50; i++) {
      const room = `!room${i}:example.org`;
      const share = await alice.prepareRoom(room, [ALICE, BOB]);
      for (const r of share.requests) {
        bytes += Buffer.byteLength(r.body);
        await alice.send(r);
      }
      events.push(await alice.encrypt(room, { msgtype: 'm.text', body: `message ${i}` }));
    }
    const a = alice.machine.metrics();
    expect(value(a, 'matrix_crypto_room_key_shares_total')).toBe(50);
    expect(value(a, 'matrix_crypto_room_key_share_devices_total')).toBe(50);
    expect(value(a, 'matrix_crypto_room_key_share_request_bytes_total')).toBe(bytes);
    expect(value(a, 'matrix_crypto_olm_sessions_created_total', { direction: 'outbound' })).toBe(1);
    expect(observed(a, 'matrix_crypto_machine_operation_duration_seconds', { operation: 'share_room_key' })).toBe(50);
    expect(observed(a, 'matrix_crypto_machine_operation_duration_seconds', { operation: 'encrypt_room_event' })).toBe(50);

    for (const e of events) expect((await decrypt(bob.machine, e))?.code).toBe('MissingRoomKey');
    // The same event failing twice waits once.
    await decrypt(bob.machine, events[0]!);
    let b = bob.machine.metrics();
    expect(value(b, 'matrix_crypto_decryptions_total', { outcome: 'undecryptable' })).toBe(51);
    expect(b.matrix_crypto_decryption_errors_total.samples).toEqual([{ labels: { code: 'MissingRoomKey', withheld: 'none' }, value: 51 }]);
    expect(value(b, 'matrix_crypto_undecryptable_events_waiting')).toBe(50);
    expect(value(b, 'matrix_crypto_late_room_keys_total')).toBe(0);

    // The 50 room keys arrive, Olm-encrypted in one session (50 pre-key messages, one base key).
    const sync = await bob.sync();
    expect(sync.toDeviceEvents.filter((e) => e.kind === 'decrypted')).toHaveLength(50);
    for (const e of events) expect(await decrypt(bob.machine, e)).toBeNull();
    b = bob.machine.metrics();
    expect(value(b, 'matrix_crypto_to_device_events_total', { outcome: 'decrypted' })).toBe(50);
    expect(value(b, 'matrix_crypto_olm_sessions_created_total', { direction: 'inbound' })).toBe(1);
    expect(value(b, 'matrix_crypto_late_room_keys_total')).toBe(50);
    expect(observed(b, 'matrix_crypto_room_key_delay_seconds')).toBe(50);
    expect(value(b, 'matrix_crypto_undecryptable_events_waiting')).toBe(0);
    expect(value(b, 'matrix_crypto_decryptions_total', { outcome: 'decrypted' })).toBe(50);
    expect(observed(b, 'matrix_crypto_machine_operation_duration_seconds', { operation: 'decrypt_room_event' })).toBe(101);
    // One key was claimed from Bob: the server's count went down, and Bob topped it up.
    expect(value(b, 'matrix_crypto_one_time_keys_left')).toBe(hs.oneTimeKeyCount(BOB, 'BOB'));
    expect(value(b, 'matrix_crypto_one_time_keys_uploaded_total')).toBe(hs.oneTimeKeyCount(BOB, 'BOB') + 1);

    // Label values stay in their closed sets: 50 rooms, 50 sessions, yet one series each.
    expect(b.matrix_crypto_decryptions_total.samples.map((s) => s.labels)).toEqual([{ outcome: 'undecryptable' }, { outcome: 'decrypted' }]);
    expect(b.matrix_crypto_decryption_errors_total.samples).toHaveLength(1);
    for (const metric of Object.values(b)) {
      for (const s of metric.samples) for (const v of Object.values(s.labels)) expect(v).not.toMatch(/[!@$:]/);
    }

    // Entries that are not event objects are skipped; objects without the event fields are invalid.
    await bob.machine.receiveSyncChanges({ toDeviceEvents: [42, 'x', {}] as unknown as MatrixEvent[] });
    b = bob.machine.metrics();
    expect(value(b, 'matrix_crypto_to_device_events_total', { outcome: 'skipped' })).toBe(2);
    expect(value(b, 'matrix_crypto_to_device_events_total', { outcome: 'invalid' })).toBe(1);

    await Promise.all([bob.machine.close(), bob.machine.close()]);
    await bob.machine.close();
    expect(value(bob.machine.metrics(), 'matrix_crypto_open_machines')).toBe(0);
    expect(value(bob.machine.metrics(), 'matrix_crypto_one_time_keys_left')).toBe(0);
    await alice.machine.close();
  });

  it('count withheld devices by code, and undecryptable events by the withheld code that explains them', async () => {
    const hs = new TestHomeserver();
    const alice = await device(hs, ALICE, 'ALICE');
    const bob = await device(hs, BOB, 'BOB');
    const room = '!blocked:example.org';
    await alice.machine.updateTrackedUsers([BOB]);
    await alice.flush();
    await alice.machine.setLocalTrust(BOB, 'BOB', 'blacklisted');
    const event = await alice.sendMessage(room, [ALICE, BOB]);
    expect(alice.machine.metrics().matrix_crypto_room_key_withheld_total.samples).toEqual([{ labels: { code: 'm.blacklisted' }, value: 1 }]);
    await bob.sync();
    expect((await decrypt(bob.machine, event))?.withheld?.code).toBe('m.blacklisted');
    expect(bob.machine.metrics().matrix_crypto_decryption_errors_total.samples).toEqual([
      { labels: { code: 'MissingRoomKey', withheld: 'm.blacklisted' }, value: 1 },
    ]);
    await alice.machine.close();
    await bob.machine.close();
  });
});

describe('Olm session metrics', () => {
  it('count one outbound session per claimed key and one inbound session per base key', async () => {
    const hs = new TestHomeserver();
    const alice = await device(hs, ALICE, 'ALICE');
    const bobs = await Promise.all(['B1', 'B2', 'B3', 'B4', 'B5'].map((id) => device(hs, BOB, id)));
    // Two messages in two rooms before any answer: every room key goes in a pre-key message.
    await alice.sendMessage('!one:example.org', [ALICE, BOB]);
    await alice.sendMessage('!two:example.org', [ALICE, BOB]);
    expect(value(alice.machine.metrics(), 'matrix_crypto_olm_sessions_created_total', { direction: 'outbound' })).toBe(5);
    for (const b of bobs) {
      const sync = await b.sync();
      expect(sync.roomKeyUpdates).toHaveLength(2);
      expect(b.machine.metrics().matrix_crypto_olm_sessions_created_total.samples).toEqual([{ labels: { direction: 'inbound' }, value: 1 }]);
    }
    for (const d of [alice, ...bobs]) await d.machine.close();
  });
});

describe('one prom-client registry for several machines', () => {
  it('adds every machine to the same series, and the exposition parses', async () => {
    const registry = new Registry();
    const hs = new TestHomeserver();
    const alice = await device(hs, ALICE, 'ALICE', { registry });
    const bob = await device(hs, BOB, 'BOB', { registry });
    const events: MatrixEvent[] = [];
    for (let i = 0; i < 50; i++) events.push(await alice.sendMessage(`!r${i}:example.org`, [ALICE, BOB]));
    await bob.sync();
    for (const e of events) expect(await decrypt(bob.machine, e)).toBeNull();

    const snapshot = alice.machine.metrics();
    expect(bob.machine.metrics()).toEqual(snapshot);
    expect(value(snapshot, 'matrix_crypto_open_machines')).toBe(2);
    expect(value(snapshot, 'matrix_crypto_decryptions_total', { outcome: 'decrypted' })).toBe(50);
    expect(value(snapshot, 'matrix_crypto_olm_sessions_created_total', { direction: 'outbound' })).toBe(1);
    expect(value(snapshot, 'matrix_crypto_olm_sessions_created_total', { direction: 'inbound' })).toBe(1);

    const families = parseExposition(await registry.metrics());
    expect(families.get('matrix_crypto_decryptions_total')).toMatchObject({ type: 'counter', samples: [{ labels: { outcome: 'decrypted' }, value: 50 }] });
    expect(families.get('matrix_crypto_open_machines')).toMatchObject({ type: 'gauge', samples: [{ labels: {}, value: 2 }] });
    expect(families.get('matrix_crypto_room_key_shares_total')!.samples).toEqual([{ name: 'matrix_crypto_room_key_shares_total', labels: {}, value: 50 }]);
    const delay = families.get('matrix_crypto_machine_operation_duration_seconds')!;
    expect(delay.type).toBe('histogram');
    expect(delay.samples.find((s) => s.name.endsWith('_count') && s.labels.operation === 'decrypt_room_event')!.value).toBe(50);
    expect(delay.samples.find((s) => s.name.endsWith('_bucket') && s.labels.operation === 'decrypt_room_event' && s.labels.le === '+Inf')!.value).toBe(50);
    // Every metric of the snapshot is in the registry, with the same type; no label value is an id.
    for (const [name, metric] of Object.entries(snapshot)) expect(families.get(name)?.type).toBe(metric.type);
    for (const f of families.values()) for (const s of f.samples) for (const v of Object.values(s.labels)) expect(v).not.toMatch(/[!@$:]/);

    // A machine opened with the same registry later adds to the same series.
    const carol = await device(hs, '@carol:example.org', 'CAROL', { registry });
    expect(value(carol.machine.metrics(), 'matrix_crypto_open_machines')).toBe(3);
    for (const d of [alice, bob, carol]) await d.machine.close();
    const json = (await registry.getMetricsAsJSON()) as Array<{ name: string; values: Array<{ value: number }> }>;
    expect(json.find((m) => m.name === 'matrix_crypto_open_machines')!.values.map((v) => v.value)).toEqual([0]);
  });

  it('refuses a registry that is not a prom-client Registry, naming the option', async () => {
    const bad = { registry: { metrics: () => '' } } as unknown as MetricsOptions;
    const store = { kind: 'memory' } as const;
    const err = await OlmMachine.open({ userId: ALICE, deviceId: 'A', store, metrics: bad }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MatrixCryptoError);
    expect(err).toMatchObject({ code: 'InvalidArgument', field: 'metrics.registry' });
    expect((err as Error).message).toMatch(/prom-client Registry.*without registerMetric, getSingleMetric, getMetricsAsJSON/);
    await expect(OlmMachine.open({ userId: ALICE, deviceId: 'A', store, metrics: 5 as unknown as MetricsOptions })).rejects.toMatchObject({
      code: 'InvalidArgument',
      field: 'metrics',
    });
    expect(() => new HomeserverTransport({ baseUrl: 'https://hs.invalid', accessToken: 't', metrics: bad })).toThrow(
      expect.objectContaining({ code: 'InvalidArgument', field: 'metrics.registry' }),
    );
    await expect(EncryptedClient.open({ baseUrl: 'https://hs.invalid', accessToken: 't', userId: ALICE, deviceId: 'A', store, metrics: bad })).rejects.toMatchObject({
      code: 'InvalidArgument',
      field: 'metrics.registry',
    });
    const registration = { as_token: 'a', hs_token: 'h', sender_localpart: 'bot' };
    await expect(
      AppserviceCrypto.open({ homeserverUrl: 'https://hs.invalid', registration, storeRoot: '/nonexistent/never-created', metrics: { registry: new Map() as never } }),
    ).rejects.toMatchObject({ code: 'InvalidArgument', field: 'options.metrics.registry' });
  });
});

describe('docs/metrics.md', () => {
  it('documents every metric with its type and labels', async () => {
    const docs = await readFile(resolve(__dirname, '../docs/metrics.md'), 'utf8');
    const rows = new Map([...docs.matchAll(/^\| `(matrix_crypto_[a-z_]+)` \| (\w+) \| ([^|]+) \|/gm)].map((m) => [m[1], [m[2], m[3]!.trim()]]));
    const defined = Object.entries(DEFINITIONS).map(([name, d]) => [name, [d.type, Object.keys(d.labels).map((l) => `\`${l}\``).join(', ') || '—']]);
    expect([...rows.entries()]).toEqual(defined);
  });
});

describe('HomeserverTransport metrics', () => {
  it('count every attempt by endpoint template, method and status, never by id', async () => {
    let attempts = 0;
    const fetchImpl: typeof fetch = async (input) => {
      const path = new URL(String(input)).pathname;
      if (path.endsWith('/joined_members')) {
        attempts++;
        if (attempts === 1) throw new TypeError('fetch failed');
        if (attempts === 2) return new Response('{"errcode":"M_UNKNOWN"}', { status: 502 });
        return new Response('{"joined":{}}', { status: 200 });
      }
      return new Response('{"errcode":"M_FORBIDDEN"}', { status: 403 });
    };
    const t = new HomeserverTransport({ baseUrl: 'https://hs.example.org', accessToken: 't', fetch: fetchImpl, baseDelayMs: 1, maxRetries: 3 });
    for (let i = 0; i < 5; i++) {
      attempts = 0;
      await t.getJoinedMembers(`!room${i}:example.org`);
    }
    await expect(t.whoami()).rejects.toMatchObject({ status: 403 });
    const m = t.metrics();
    const endpoint = '/rooms/{roomId}/joined_members';
    expect(m.matrix_crypto_homeserver_requests_total.samples).toEqual([
      { labels: { endpoint, method: 'GET', status: 'network_error' }, value: 5 },
      { labels: { endpoint, method: 'GET', status: '502' }, value: 5 },
      { labels: { endpoint, method: 'GET', status: '200' }, value: 5 },
      { labels: { endpoint: '/account/whoami', method: 'GET', status: '403' }, value: 1 },
    ]);
    expect(observed(m, 'matrix_crypto_homeserver_request_duration_seconds', { endpoint })).toBe(15);
  });
});

describe('EncryptedClient metrics', () => {
  it('show the machine and the transport together, opened with a registry or built from parts', async () => {
    const answer = (path: string): Response => {
      if (path.endsWith('/keys/upload')) return new Response('{"one_time_key_counts":{"signed_curve25519":50}}', { status: 200 });
      if (path.endsWith('/keys/query')) return new Response('{"device_keys":{},"failures":{}}', { status: 200 });
      return new Response('{"next_batch":"s1"}', { status: 200 });
    };
    const fetchImpl: typeof fetch = async (input) => answer(new URL(String(input)).pathname);
    const registry = new Registry();
    const opened = await EncryptedClient.open({
      baseUrl: 'https://hs.example.org',
      accessToken: 't',
      userId: ALICE,
      deviceId: 'A',
      store: { kind: 'memory' },
      transport: { fetch: fetchImpl },
      metrics: { registry },
    });
    await opened.syncOnce({ timeoutMs: 0 });
    const m = opened.metrics();
    expect(value(m, 'matrix_crypto_homeserver_requests_total', { endpoint: '/sync', method: 'GET', status: '200' })).toBe(1);
    expect(value(m, 'matrix_crypto_homeserver_requests_total', { endpoint: '/keys/upload', method: 'POST', status: '200' })).toBe(1);
    expect(value(m, 'matrix_crypto_one_time_keys_uploaded_total')).toBe(50);
    expect(value(m, 'matrix_crypto_one_time_keys_left')).toBe(50);
    expect(m).toEqual(opened.machine.metrics());
    const families = parseExposition(await registry.metrics());
    expect(families.get('matrix_crypto_homeserver_requests_total')!.samples.map((s) => s.labels.endpoint).sort()).toEqual(['/keys/query', '/keys/upload', '/sync']);
    await opened.close();

    // From parts without a registry: each part keeps its own figures, the client sums them.
    const machine = await OlmMachine.open({ userId: BOB, deviceId: 'B', store: { kind: 'memory' } });
    const transport = new HomeserverTransport({ baseUrl: 'https://hs.example.org', accessToken: 't', fetch: fetchImpl });
    const client = new EncryptedClient({ machine, transport });
    const sent = await client.processOutgoingRequests();
    const c = client.metrics();
    expect(c.matrix_crypto_homeserver_requests_total.samples.reduce((n, s) => n + s.value, 0)).toBe(sent);
    expect(value(c, 'matrix_crypto_homeserver_requests_total', { endpoint: '/keys/upload', method: 'POST', status: '200' })).toBe(1);
    expect(value(c, 'matrix_crypto_one_time_keys_uploaded_total')).toBe(50);
    expect(observed(c, 'matrix_crypto_machine_operation_duration_seconds', { operation: 'mark_request_as_sent' })).toBe(sent);
    expect(value(machine.metrics(), 'matrix_crypto_homeserver_requests_total', { endpoint: '/keys/upload', method: 'POST', status: '200' })).toBe(0);
    await client.close();
  });
});
