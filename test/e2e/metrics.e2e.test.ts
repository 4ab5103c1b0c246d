// Metrics and health of an encrypting appservice on a real Synapse: a js-sdk user and a puppet
// exchange encrypted messages, and the bridge's /metrics (scraped over HTTP, parsed) shows the
// decryption, the share and the homeserver requests by endpoint; /health/ready is ready while
// Synapse answers, and not ready for a homeserver that refuses connections.
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AppserviceCrypto, serveAppservice, type AppserviceRegistration, type AppserviceTimelineEvent } from '../../src/index';
import { parseExposition } from '../helpers/metrics';
import { JsSdkUser, waitFor } from './js-sdk-user';
import { APPSERVICE_EXPERIMENTAL_FEATURES, appserviceRegistration, startSynapse, type Homeserver } from './synapse';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

let hs: Homeserver;
let registration: AppserviceRegistration;
let asPort: number;
const cleanup: Array<() => Promise<void>> = [];
let alice: JsSdkUser | undefined;

beforeAll(async () => {
  asPort = await freePort();
  const reg = appserviceRegistration({ id: 'mcn-e2e-metrics', url: `http://127.0.0.1:${asPort}`, senderLocalpart: 'metricsbot', userRegex: '@puppet_.*:localhost' });
  registration = reg as unknown as AppserviceRegistration;
  hs = await startSynapse({ appservices: [reg], extraConfig: { experimental_features: APPSERVICE_EXPERIMENTAL_FEATURES } });
}, 120_000);
afterAll(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
  await hs?.stop();
});
beforeEach((ctx) => {
  ctx.onTestFailed(() => {
    if (alice) console.error(`--- js-sdk ---\n${alice.logTail(40)}`);
    console.error(`--- Synapse ---\n${hs.logTail(120)}`);
  });
});

async function get(port: number, path: string) {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, text: await res.text() };
}

describe('an encrypting appservice with a metrics registry', () => {
  it('shows the decryption, the share and the requests at /metrics, and is ready while Synapse answers', async () => {
    const root = await mkdtemp(join(tmpdir(), 'mcn-metrics-e2e-'));
    cleanup.push(() => rm(root, { recursive: true, force: true }));
    const registry = new Registry();
    const crypto = await AppserviceCrypto.open({ homeserverUrl: hs.baseUrl, registration, storeRoot: root, metrics: { registry } });
    const handed: AppserviceTimelineEvent[] = [];
    const server = await serveAppservice(crypto, { port: asPort, onEvents: (r) => void handed.push(...r.events, ...r.lateDecryptions) });
    cleanup.push(async () => {
      await server.close();
      await crypto.close();
    });

    alice = await (await JsSdkUser.start(hs.baseUrl, await hs.registerUser('metrics_alice'))).excludeInsecureDevices();
    cleanup.push(() => alice!.stop());
    const puppet = '@puppet_metrics:localhost';
    await crypto.registerUser('puppet_metrics');
    await crypto.deviceFor(puppet);
    const roomId = await alice.createEncryptedRoom([puppet], 'metrics');
    await (await crypto.transportFor(puppet)).joinRoom(roomId);
    await alice.waitForMember(roomId, puppet);

    const hello = await alice.sendText(roomId, 'hello bridge');
    await waitFor('the bridge to get the message decrypted', () => handed.find((e) => e.kind === 'decrypted' && e.event.event_id === hello));
    const reply = await crypto.sendEncrypted(puppet, roomId, 'm.room.message', { msgtype: 'm.text', body: 'hello user' });
    expect(await alice.waitForDecrypted(roomId, reply.eventId)).toMatchObject({ content: { body: 'hello user' } });
    // The puppet's own message comes back in a transaction too, and its device decrypts it.
    await waitFor('the bridge to get the reply', () => handed.find((e) => e.kind === 'decrypted' && e.event.event_id === reply.eventId));

    const scraped = await get(server.port, '/metrics');
    expect(scraped.status).toBe(200);
    const families = parseExposition(scraped.text);
    const sample = (name: string, labels: Record<string, string> = {}) =>
      families.get(name)?.samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value ?? 0;
    // Each encrypted event counts once, as handed to the bridge: decrypted, or first undecryptable.
    expect(sample('matrix_crypto_decryptions_total', { outcome: 'decrypted' })).toBe(handed.filter((e) => e.kind === 'decrypted').length);
    expect(sample('matrix_crypto_decryptions_total', { outcome: 'decrypted' })).toBe(2);
    expect(sample('matrix_crypto_decryptions_total', { outcome: 'undecryptable' })).toBe(handed.filter((e) => e.kind === 'undecryptable').length);
    // The event may have come before its key: then it waited, and its key counts as late.
    expect(sample('matrix_crypto_late_room_keys_total')).toBe(sample('matrix_crypto_decryptions_total', { outcome: 'undecryptable' }));
    expect(sample('matrix_crypto_undecryptable_events_waiting')).toBe(0);
    expect(sample('matrix_crypto_room_key_shares_total')).toBe(1);
    expect(sample('matrix_crypto_room_key_share_devices_total')).toBeGreaterThanOrEqual(1);
    // The user's device opened the one Olm session (the puppet replies over it, claiming nothing).
    expect(sample('matrix_crypto_olm_sessions_created_total', { direction: 'inbound' })).toBe(1);
    expect(sample('matrix_crypto_olm_sessions_created_total', { direction: 'outbound' })).toBe(0);
    expect(sample('matrix_crypto_homeserver_requests_total', { endpoint: '/devices/{deviceId}', method: 'PUT', status: '201' })).toBe(1);
    expect(sample('matrix_crypto_homeserver_requests_total', { endpoint: '/keys/upload', method: 'POST', status: '200' })).toBeGreaterThanOrEqual(1);
    expect(sample('matrix_crypto_appservice_transactions_total', { outcome: 'processed' })).toBeGreaterThanOrEqual(1);
    expect(sample('matrix_crypto_open_machines')).toBe(1);
    for (const f of families.values()) for (const s of f.samples) for (const v of Object.values(s.labels)) expect(v).not.toMatch(/[!@$]|localhost/);

    const ready = await get(server.port, '/health/ready');
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.text)).toMatchObject({ status: 'ready', checks: { store: { ok: true }, homeserver: { ok: true } } });
    expect((await get(server.port, '/health/live')).status).toBe(200);
  });

  it('is not ready when the homeserver refuses connections', async () => {
    const root = await mkdtemp(join(tmpdir(), 'mcn-metrics-e2e-'));
    cleanup.push(() => rm(root, { recursive: true, force: true }));
    const crypto = await AppserviceCrypto.open({ homeserverUrl: `http://127.0.0.1:${await freePort()}`, registration, storeRoot: root, transport: { maxRetries: 0 } });
    const server = await serveAppservice(crypto, { port: 0, health: { probeTimeoutMs: 2000 } });
    cleanup.push(async () => {
      await server.close();
      await crypto.close();
    });
    const ready = await get(server.port, '/health/ready');
    expect(ready.status).toBe(503);
    expect(JSON.parse(ready.text)).toMatchObject({ status: 'not_ready', checks: { store: { ok: true }, homeserver: { ok: false } } });
    expect(JSON.parse(ready.text).checks.homeserver.detail).toMatch(/^unreachable: never answered/);
  });
});
