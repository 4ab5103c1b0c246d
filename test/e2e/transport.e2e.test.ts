// End-to-end tests of HomeserverTransport against a real Synapse on 127.0.0.1.
// Run with `npm run test:e2e` (scripts/test-e2e.sh).
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { HomeserverError, HomeserverTransport, toSyncChanges } from '../../src/transport';
import { b64, rawPublicKey, signJson, verifyJson } from './raw-device';
import { startSynapse, type Homeserver, type TestUser } from './synapse';

let hs: Homeserver;
let alice: TestUser;
let bob: TestUser;
let aliceT: HomeserverTransport;
let bobT: HomeserverTransport;
let roomId: string;

beforeAll(async () => {
  hs = await startSynapse();
  try {
    [alice, bob] = await Promise.all([hs.registerUser('alice'), hs.registerUser('bob')]);
    aliceT = new HomeserverTransport({ baseUrl: hs.baseUrl, accessToken: alice.accessToken });
    bobT = new HomeserverTransport({ baseUrl: hs.baseUrl, accessToken: bob.accessToken });
  } catch (err) {
    console.error(`--- Synapse log tail ---\n${hs.logTail(50)}`);
    throw err;
  }
});

afterAll(async () => {
  await hs?.stop();
});

beforeEach((ctx) => {
  ctx.onTestFailed(() => {
    console.error(`--- Synapse log tail (${ctx.task.name}) ---\n${hs.logTail(50)}`);
  });
});

async function syncUntil<T>(
  t: HomeserverTransport,
  pick: (sync: Awaited<ReturnType<HomeserverTransport['sync']>>) => T | undefined,
  maxMs = 15_000,
): Promise<T> {
  const deadline = Date.now() + maxMs;
  let since: string | undefined;
  while (Date.now() < deadline) {
    const sync = await t.sync({ ...(since ? { since } : {}), timeoutMs: 1000 });
    const found = pick(sync);
    if (found !== undefined) return found;
    since = sync.next_batch;
  }
  throw new Error('sync: expected data did not arrive in time');
}

describe('HomeserverTransport against Synapse', () => {
  it('whoami reports the registered user and device', async () => {
    expect(await aliceT.whoami()).toEqual({ user_id: alice.userId, device_id: alice.deviceId, is_guest: false });
  });

  it('creates and joins a room, sends and reads events', async () => {
    roomId = (await aliceT.createRoom({ preset: 'private_chat', invite: [bob.userId], name: 'e2e' })).room_id;
    expect(roomId).toMatch(/^!/);
    expect((await bobT.joinRoom(roomId)).room_id).toBe(roomId);

    const members = await aliceT.getJoinedMembers(roomId);
    expect(Object.keys(members.joined).sort()).toEqual([alice.userId, bob.userId].sort());

    const { event_id } = await aliceT.sendRoomEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: 'hello bob' });
    // An OutgoingRequest of type room_message takes the same path.
    const viaSend = JSON.parse(
      await aliceT.send({
        type: 'room_message',
        id: 'req-room-message',
        roomId,
        eventType: 'org.example.test',
        txnId: 'txn-room-1',
        body: JSON.stringify({ n: 1 }),
      }),
    ) as { event_id: string };
    expect(viaSend.event_id).toMatch(/^\$/);

    const page = await bobT.roomMessages(roomId, undefined, 'b', 10);
    const ids = page.chunk.map((e) => e.event_id);
    expect(ids).toContain(event_id);
    expect(ids).toContain(viaSend.event_id);
    expect(page.chunk.find((e) => e.event_id === event_id)?.content).toEqual({ msgtype: 'm.text', body: 'hello bob' });

    // Bob sees both in his sync timeline too.
    const timeline = await syncUntil(bobT, (s) => {
      const events = s.rooms?.join?.[roomId]?.timeline?.events ?? [];
      return events.some((e) => e.event_id === viaSend.event_id) ? events : undefined;
    });
    expect(timeline.map((e) => e.type)).toContain('org.example.test');
  });

  it('sends a to-device message that the other user receives in /sync', async () => {
    const marker = randomBytes(8).toString('hex');
    const res = await aliceT.send({
      type: 'to_device',
      id: 'req-to-device',
      eventType: 'org.example.ping',
      txnId: `txn-${marker}`,
      body: JSON.stringify({ messages: { [bob.userId]: { [bob.deviceId]: { marker } } } }),
    });
    expect(JSON.parse(res)).toEqual({});

    const event = await syncUntil(bobT, (s) =>
      toSyncChanges(s).toDeviceEvents?.find((e) => e.type === 'org.example.ping' && e.content.marker === marker),
    );
    expect(event.sender).toBe(alice.userId);
  });

  it('uploads signed device and one-time keys, which the other user queries and claims', async () => {
    const ed = generateKeyPairSync('ed25519');
    const curve = generateKeyPairSync('x25519');
    const otk = generateKeyPairSync('x25519');
    const dev = alice.deviceId;
    const edRaw = rawPublicKey(ed.publicKey);

    const deviceKeys: Record<string, unknown> = {
      user_id: alice.userId,
      device_id: dev,
      algorithms: ['m.olm.v1.curve25519-aes-sha2', 'm.megolm.v1.aes-sha2'],
      keys: { [`curve25519:${dev}`]: b64(rawPublicKey(curve.publicKey)), [`ed25519:${dev}`]: b64(edRaw) },
    };
    deviceKeys.signatures = { [alice.userId]: { [`ed25519:${dev}`]: signJson(deviceKeys, ed.privateKey) } };
    const oneTimeKey: Record<string, unknown> = { key: b64(rawPublicKey(otk.publicKey)) };
    oneTimeKey.signatures = { [alice.userId]: { [`ed25519:${dev}`]: signJson(oneTimeKey, ed.privateKey) } };

    const uploaded = JSON.parse(
      await aliceT.send({
        type: 'keys_upload',
        id: 'req-keys-upload',
        body: JSON.stringify({ device_keys: deviceKeys, one_time_keys: { 'signed_curve25519:AAAAAQ': oneTimeKey } }),
      }),
    ) as { one_time_key_counts: Record<string, number> };
    expect(uploaded.one_time_key_counts.signed_curve25519).toBe(1);

    const queried = JSON.parse(
      await bobT.send({
        type: 'keys_query',
        id: 'req-keys-query',
        body: JSON.stringify({ device_keys: { [alice.userId]: [] } }),
      }),
    ) as { device_keys: Record<string, Record<string, Record<string, unknown>>> };
    const got = queried.device_keys[alice.userId]?.[dev];
    expect(got).toBeDefined();
    expect((got!.keys as Record<string, string>)[`ed25519:${dev}`]).toBe(b64(edRaw));
    const sig = (got!.signatures as Record<string, Record<string, string>>)[alice.userId]![`ed25519:${dev}`]!;
    expect(verifyJson(got!, sig, edRaw)).toBe(true);

    const claimed = JSON.parse(
      await bobT.send({
        type: 'keys_claim',
        id: 'req-keys-claim',
        body: JSON.stringify({ one_time_keys: { [alice.userId]: { [dev]: 'signed_curve25519' } } }),
      }),
    ) as { one_time_keys: Record<string, Record<string, Record<string, { key: string }>>> };
    expect(claimed.one_time_keys[alice.userId]?.[dev]?.['signed_curve25519:AAAAAQ']?.key).toBe(oneTimeKey.key);

    // Nothing to cross-sign here, but the endpoint mapping must be accepted.
    const sigs = JSON.parse(await aliceT.send({ type: 'signature_upload', id: 'req-sig', body: '{}' })) as {
      failures: Record<string, unknown>;
    };
    expect(sigs.failures).toEqual({});
  });

  it('uploads room keys to a server-side backup version', async () => {
    const res = await fetch(`${hs.baseUrl}/_matrix/client/v3/room_keys/version`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${alice.accessToken}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({
        algorithm: 'm.megolm_backup.v1.curve25519-aes-sha2',
        auth_data: { public_key: b64(randomBytes(32)) },
      }),
    });
    expect(res.status).toBe(200);
    const { version } = (await res.json()) as { version: string };

    const session = {
      first_message_index: 0,
      forwarded_count: 0,
      is_verified: false,
      session_data: { ephemeral: b64(randomBytes(32)), ciphertext: b64(randomBytes(64)), mac: b64(randomBytes(8)) },
    };
    const out = JSON.parse(
      await aliceT.send({
        type: 'keys_backup',
        id: 'req-backup',
        version,
        body: JSON.stringify({ rooms: { [roomId]: { sessions: { [b64(randomBytes(32))]: session } } } }),
      }),
    ) as { count: number; etag: string };
    expect(out.count).toBe(1);
    expect(typeof out.etag).toBe('string');

    // An unknown version is a non-retried 404 M_NOT_FOUND.
    const err = await aliceT
      .send({ type: 'keys_backup', id: 'req-backup-2', version: '999', body: JSON.stringify({ rooms: {} }) })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HomeserverError);
    expect(err).toMatchObject({ status: 404, errcode: 'M_NOT_FOUND', requestType: 'keys_backup' });
  });

  it('maps Synapse error answers to HomeserverError without retrying', async () => {
    const retries: unknown[] = [];
    const carol = await hs.registerUser('carol');
    const carolT = new HomeserverTransport({
      baseUrl: hs.baseUrl,
      accessToken: carol.accessToken,
      onRetry: (i) => retries.push(i),
    });
    // Carol is not in the room.
    const err = await carolT
      .sendRoomEvent(roomId, 'm.room.message', { msgtype: 'm.text', body: 'let me in' })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(HomeserverError);
    expect(err).toMatchObject({ status: 403, errcode: 'M_FORBIDDEN', requestType: 'send_room_event' });

    const badToken = new HomeserverTransport({ baseUrl: hs.baseUrl, accessToken: 'not-a-token' });
    const err2 = await badToken.sync({ timeoutMs: 0 }).catch((e: unknown) => e);
    expect(err2).toMatchObject({ status: 401, errcode: 'M_UNKNOWN_TOKEN', requestType: 'sync' });
    expect(retries).toHaveLength(0);
  });

  it('logs in again with the password (new device)', async () => {
    const again = await hs.login(bob.userId, bob.password);
    expect(again.userId).toBe(bob.userId);
    expect(again.deviceId).not.toBe(bob.deviceId);
    const t = new HomeserverTransport({ baseUrl: hs.baseUrl, accessToken: again.accessToken });
    expect((await t.whoami()).device_id).toBe(again.deviceId);
  });
});
