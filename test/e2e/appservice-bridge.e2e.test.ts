// Scenario: the matrix-appservice-bridge echo bridge (examples/appservice-bridge-echo.ts: a
// matrix-appservice-bridge 11.2 Bridge turned encrypting by matrix-crypto-node/appservice-bridge)
// on a real Synapse, in an encrypted room with a matrix-js-sdk user who excludes insecure devices
// (OnlySignedDevicesIsolationMode, as Element). The bridge's onEvent reads the user's messages
// decrypted, its ghost's echoes are read by the user, and the bridge's /metrics shows the
// decryptions and the room-key share.
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// First: stands in for the official bindings that matrix-appservice-bridge loads.
import '../helpers/bridge-package';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startEchoBridge } from '../../examples/appservice-bridge-echo';
import type { AppserviceRegistration } from '../../src/index';
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

/** The value of one sample line of a Prometheus text exposition (0 when absent). */
function sample(text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

let hs: Homeserver;
let registration: AppserviceRegistration & { url: string; id: string };
let asPort: number;
const cleanup: Array<() => Promise<void>> = [];
const logs: Array<{ name: string; tail: () => string }> = [];

beforeAll(async () => {
  asPort = await freePort();
  registration = appserviceRegistration({
    id: 'mcn-e2e-mab',
    url: `http://127.0.0.1:${asPort}`,
    senderLocalpart: 'mab',
    userRegex: '@mab_.*:localhost',
  }) as unknown as typeof registration;
  hs = await startSynapse({ appservices: [registration as unknown as Record<string, unknown>], extraConfig: { experimental_features: APPSERVICE_EXPERIMENTAL_FEATURES } });
}, 120_000);
afterAll(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
  await hs?.stop();
});
beforeEach((ctx) => {
  ctx.onTestFailed(() => {
    for (const l of logs) console.error(`--- ${l.name} ---\n${l.tail()}`);
    console.error(`--- Synapse ---\n${hs.logTail(120)}`);
  });
});

describe('a matrix-appservice-bridge echo bridge with matrix-crypto-node/appservice-bridge', () => {
  it('reads a strict js-sdk user decrypted and its ghost answers encrypted from its own cross-signed device', async () => {
    const storeRoot = await mkdtemp(join(tmpdir(), 'mcn-mab-e2e-'));
    cleanup.push(() => rm(storeRoot, { recursive: true, force: true }));
    const messages: Array<{ eventId: string; type: string; body: unknown; how: string; decryptedBy: string | null }> = [];
    const running = await startEchoBridge({
      registration,
      homeserverUrl: hs.baseUrl,
      domain: 'localhost',
      storeRoot,
      onMessage: (event, how) => {
        const info = running.encryption.decryptionOf(event);
        messages.push({ eventId: event.event_id, type: event.type, body: event.content.body, how, decryptedBy: info?.decryptedBy ?? null });
      },
    });
    cleanup.push(() => running.stop());
    const echo = running.echoUserId;
    expect(echo).toBe('@mab_echo:localhost');

    const alice = await JsSdkUser.start(hs.baseUrl, await hs.registerUser('alice'));
    logs.push({ name: 'js-sdk alice', tail: () => alice.logTail(40) });
    cleanup.push(() => alice.stop());
    await alice.excludeInsecureDevices();

    // The ghost joins on the invite (onEvent), its device created and cross-signed before it does.
    const roomId = await alice.createEncryptedRoom([echo], 'mab echo');
    await alice.waitForMember(roomId, echo);
    const deviceId = running.crypto.deviceIdOf(echo);
    expect(deviceId).toMatch(/^MCN/);
    await alice.crypto.getUserDeviceInfo([echo], true);
    expect((await alice.crypto.getDeviceVerificationStatus(echo, deviceId!))?.signedByOwner).toBe(true);

    const echoes = (): Array<{ eventId: string; body: unknown; encrypted: boolean }> =>
      (alice.client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [])
        .filter((e) => e.getSender() === echo && e.getType() === 'm.room.message' && !e.isDecryptionFailure())
        .map((e) => ({ eventId: e.getId()!, body: e.getContent().body, encrypted: e.isEncrypted() }));

    for (const [n, text] of ['hello bridge', 'second message'].entries()) {
      const sent = await alice.sendText(roomId, text);
      // onEvent got the event decrypted: clear type and body, under the encrypted event's id.
      const got = await waitFor(`onEvent to get ${sent}`, () => messages.find((m) => m.eventId === sent), 30_000);
      expect(got).toEqual({ eventId: sent, type: 'm.room.message', body: text, how: 'decrypted', decryptedBy: echo });
      // The ghost's echo, encrypted, decrypted by a user who refuses unsigned devices.
      const reply = await waitFor(`the echo of ${text}`, () => echoes().find((e) => e.body === `echo: ${text}`), 30_000);
      expect(reply.encrypted).toBe(true);
      expect(echoes()).toHaveLength(n + 1);
    }
    const first = echoes()[0]!;
    const info = await alice.crypto.getEncryptionInfoForEvent(alice.findEvent(roomId, first.eventId)!);
    expect(info?.shieldColour).toBe(0); // EventShieldColour.NONE: a cross-signed device of its user
    expect(messages.every((m) => m.how === 'decrypted')).toBe(true);
    expect(running.encryption.isRoomEncrypted(roomId)).toBe(true);

    // The bridge's own metrics endpoint carries the crypto figures. Four decryptions: alice's two
    // messages and the ghost's two echoes, which come back to the bridge in transactions too
    // (waited for: the last echo's transaction may still be on its way).
    const scrape = async () => {
      const res = await fetch(`http://127.0.0.1:${asPort}/metrics`);
      expect(res.status).toBe(200);
      return res.text();
    };
    const text = await waitFor('4 decryptions on /metrics', async () => {
      const t = await scrape();
      return sample(t, 'matrix_crypto_decryptions_total', '{outcome="decrypted"}') >= 4 ? t : undefined;
    }, 30_000);
    expect(sample(text, 'matrix_crypto_decryptions_total', '{outcome="decrypted"}')).toBe(4);
    expect(sample(text, 'matrix_crypto_decryptions_total', '{outcome="undecryptable"}')).toBe(0);
    expect(sample(text, 'matrix_crypto_room_key_shares_total')).toBeGreaterThanOrEqual(1);
    // The room key reached alice's one device (the ghost has no other device to share with).
    expect(sample(text, 'matrix_crypto_room_key_share_devices_total')).toBe(1);
    expect(sample(text, 'matrix_crypto_appservice_transactions_total', '{outcome="failed"}')).toBe(0);
    expect(sample(text, 'matrix_crypto_appservice_transactions_total', '{outcome="processed"}')).toBeGreaterThanOrEqual(2);
    // matrix-appservice-bridge's own metrics are in the same exposition.
    expect(text).toContain('process_cpu_user_seconds_total');
  }, 180_000);
});
