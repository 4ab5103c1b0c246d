// AppserviceCrypto against a fake homeserver (test/appservice-fake.ts): device creation with
// MSC4190, masquerading, routing of transactions, idempotency, half-failed transactions, the
// LRU of machines, device-list changes for closed machines, bounded concurrency, bad input.
import { appendFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AppserviceCrypto, AppserviceError, defaultDeviceStore, serveAppservice, type AppserviceCryptoOptions } from '../src/index';
import { TestDevice } from '../src/testing';
import { appserviceRoot, FakeAppserviceHomeserver, HS_TOKEN, registration } from './appservice-fake';

const ROOM = '!room:example.org';
const A = '@puppet_a:example.org';
const B = '@puppet_b:example.org';
const ALICE = '@alice:example.org';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function setup(limits: AppserviceCryptoOptions['limits'] = {}, fake = new FakeAppserviceHomeserver()) {
  // The drains are tested on their own (test/appservice-delivery.test.ts); here transactions alone feed the machines.
  const { root, open } = await appserviceRoot(fake, cleanup, { limits, inboxDrain: false });
  return { fake, root, open, crypto: await open() };
}

function member(userId: string, membership = 'join') {
  return { type: 'm.room.member', state_key: userId, sender: userId, room_id: ROOM, event_id: `$m-${userId}-${membership}`, content: { membership } };
}

describe('devices for bridged users', () => {
  it('creates a device with MSC4190 on first need, uploads its keys as that device, and keeps it', async () => {
    const { fake, crypto, open } = await setup();
    const dev = await crypto.deviceFor(A);
    expect(dev.userId).toBe(A);
    expect(dev.deviceId).toMatch(/^MCN[A-Z]{10}$/);
    const put = fake.calls.find((c) => c.method === 'PUT' && c.path === `/_matrix/client/v3/devices/${dev.deviceId}`);
    expect(put).toEqual({ method: 'PUT', path: `/_matrix/client/v3/devices/${dev.deviceId}`, userId: A, deviceId: null });
    const upload = fake.calls.find((c) => c.path === '/_matrix/client/v3/keys/upload');
    expect(upload).toMatchObject({ userId: A, deviceId: dev.deviceId });
    expect(fake.hs.deviceKeys.get(A)?.has(dev.deviceId)).toBe(true);
    expect(fake.hs.oneTimeKeyCount(A, dev.deviceId)).toBe(50);

    expect(await crypto.deviceFor(A)).toEqual(dev);
    await crypto.close();
    const again = await open();
    expect(again.deviceIdOf(A)).toBe(dev.deviceId);
    expect(await again.deviceFor(A)).toEqual(dev);
    expect(fake.calls.filter((c) => c.method === 'PUT').length).toBe(1);
  });

  it('concurrent first calls create one device', async () => {
    const { fake, crypto } = await setup();
    fake.delayMs = 5;
    const [x, y] = await Promise.all([crypto.deviceFor(A), crypto.deviceFor(A)]);
    expect(x).toEqual(y);
    expect(fake.devices.get(A)?.size).toBe(1);
  });

  it('refuses users outside the namespace, and says so when the homeserver lacks MSC4190', async () => {
    const { fake, crypto } = await setup();
    await expect(crypto.deviceFor(ALICE)).rejects.toMatchObject({ name: 'AppserviceError', code: 'NotInNamespace', userId: ALICE });
    fake.noMsc4190 = true;
    const err = await crypto.deviceFor(A).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AppserviceError);
    expect(err).toMatchObject({ code: 'DeviceManagementUnsupported', userId: A });
    expect((err as Error).message).toMatch(/MSC4190/);
    expect(fake.calls.some((c) => c.path.endsWith('/keys/upload'))).toBe(false);
    // Once the homeserver supports it, the same call succeeds with the recorded device id.
    fake.noMsc4190 = false;
    const dev = await crypto.deviceFor(A);
    expect(fake.devices.get(A)).toEqual(new Set([dev.deviceId]));
  });

  it('deletes a device on request; the next need creates a new one', async () => {
    const { fake, crypto } = await setup();
    const first = await crypto.deviceFor(A);
    expect(await crypto.deleteDevice(A)).toBe(true);
    expect(fake.calls.at(-1)).toEqual({ method: 'DELETE', path: `/_matrix/client/v3/devices/${first.deviceId}`, userId: A, deviceId: null });
    expect(fake.devices.get(A)?.size).toBe(0);
    expect(crypto.deviceIdOf(A)).toBeNull();
    expect(await crypto.deleteDevice(A)).toBe(false);
    const second = await crypto.deviceFor(A);
    expect(second.deviceId).not.toBe(first.deviceId);
  });
});

describe('transactions', () => {
  async function conversation(limits: AppserviceCryptoOptions['limits'] = {}) {
    const s = await setup(limits);
    const a = await s.crypto.deviceFor(A);
    const b = await s.crypto.deviceFor(B);
    const alice = await TestDevice.create(s.fake.hs, ALICE, 'ALICE');
    s.fake.rooms.set(ROOM, [ALICE, A, B]);
    return { ...s, a, b, alice };
  }

  it('routes to-device events per device (unstable and stable names) and decrypts the room events', async () => {
    const { fake, crypto, a, b, alice } = await conversation();
    const event = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'hi puppets' });
    const result = await crypto.processTransaction('1', fake.transaction([a, b], [member(A), member(B), event]));
    expect(result.duplicate).toBe(false);
    expect(result.devices.map((d) => d.userId).sort()).toEqual([A, B]);
    for (const d of result.devices) expect(d.result.roomKeyUpdates).toHaveLength(1);
    const decrypted = result.events.filter((e) => e.kind === 'decrypted');
    expect(decrypted).toHaveLength(1);
    expect(decrypted[0]!.kind === 'decrypted' && decrypted[0]!.decrypted.event.content).toEqual({ msgtype: 'm.text', body: 'hi puppets' });
    expect([A, B]).toContain(decrypted[0]!.decryptedBy);
    // Every puppet holds the key.
    for (const u of [A, B]) expect((await crypto.decryptRoomEvent(u, ROOM, event)).kind).toBe('decrypted');

    // The stable MSC4203 name: a new session after rotation.
    await alice.machine.discardRoomKey(ROOM);
    const second = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'stable' });
    const r2 = await crypto.processTransaction('2', fake.transaction([a, b], [second], 'to_device'));
    expect(r2.devices.every((d) => d.result.roomKeyUpdates.length === 1)).toBe(true);
    expect(r2.events[0]).toMatchObject({ kind: 'decrypted', decrypted: { event: { content: { body: 'stable' } } } });
  });

  it('reports events nobody can decrypt as undecryptable, and counts to-device events for unknown devices', async () => {
    const { fake, crypto, a, alice } = await conversation();
    const event = await alice.sendMessage(ROOM, [ALICE], { msgtype: 'm.text', body: 'not for puppets' });
    const body = fake.transaction([a], [member(A), event]);
    (body['de.sorunome.msc2409.to_device'] as unknown[]).push({ type: 'm.dummy', sender: ALICE, content: {}, to_user_id: A, to_device_id: 'OTHER' });
    const result = await crypto.processTransaction('u1', body);
    expect(result.unroutedToDeviceEvents).toBe(1);
    const item = result.events.find((e) => e.event.type === 'm.room.encrypted')!;
    expect(item).toMatchObject({ kind: 'undecryptable', decryptedBy: A, error: { code: 'MissingRoomKey', withheld: null } });
  });

  it('decrypts an event that came before its room key once a later transaction brings the key', async () => {
    const { fake, crypto, a, alice } = await conversation();
    const event = await alice.sendMessage(ROOM, [ALICE, A], { msgtype: 'm.text', body: 'key comes later' });
    const early = await crypto.processTransaction('e1', fake.transaction([], [member(A), event]));
    expect(early.events[1]).toMatchObject({ kind: 'undecryptable', error: { code: 'MissingRoomKey' } });
    const later = await crypto.processTransaction('e2', fake.transaction([a]));
    expect(later.events).toEqual([]);
    expect(later.lateDecryptions).toHaveLength(1);
    expect(later.lateDecryptions[0]).toMatchObject({ kind: 'decrypted', decryptedBy: A, decrypted: { event: { content: { body: 'key comes later' } } } });
    // Handed over once.
    expect((await crypto.processTransaction('e3', { events: [] })).lateDecryptions).toEqual([]);
  });

  it('processes a transaction id once', async () => {
    const { fake, crypto, a, b, alice } = await conversation();
    const event = await alice.sendMessage(ROOM, [ALICE, A, B]);
    const body = fake.transaction([a, b], [member(A), member(B), event]);
    const seen: string[] = [];
    const first = await crypto.processTransaction('7', body, { onResult: (r) => void seen.push(r.txnId) });
    const again = await crypto.processTransaction('7', body, { onResult: (r) => void seen.push(r.txnId) });
    expect(first.events).toHaveLength(3);
    expect(again).toEqual({
      txnId: '7',
      duplicate: true,
      events: [],
      lateDecryptions: [],
      devices: [],
      unroutedToDeviceEvents: 0,
      unrouted: [],
      duplicateToDeviceEvents: 0,
      malformed: [],
      setAside: [],
      redelivery: false,
    });
    expect(seen).toEqual(['7']);
  });

  it('remembers processed transactions across a restart', async () => {
    const { fake, crypto, a, alice, open } = await conversation();
    const body = fake.transaction([a], [await alice.sendMessage(ROOM, [ALICE, A])]);
    await crypto.processTransaction('42', body);
    await crypto.close();
    expect((await (await open()).processTransaction('42', body)).duplicate).toBe(true);
  });

  it('a transaction that fails half-way loses no room key; its retry redoes only the failed part', async () => {
    const { fake, crypto, a, b, alice } = await conversation();
    const event = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'survives' });
    const body = fake.transaction([a, b], [member(A), member(B), event]);
    // B's machine has to upload one-time keys after this transaction; the homeserver refuses once.
    body['org.matrix.msc3202.device_one_time_keys_count'] = { [A]: { [a.deviceId]: { signed_curve25519: 50 } }, [B]: { [b.deviceId]: { signed_curve25519: 3 } } };
    fake.failNext = (c) => c.userId === B && c.path.endsWith('/keys/upload');
    const delivered: number[] = [];
    const err = await crypto.processTransaction('9', body, { onResult: (r) => void delivered.push(r.events.length) }).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'AppserviceError', code: 'TransactionFailed' });
    expect(delivered).toEqual([]);

    const retry = await crypto.processTransaction('9', body, { onResult: (r) => void delivered.push(r.events.length) });
    expect(retry.devices.map((d) => d.userId)).toEqual([B]);
    expect(delivered).toEqual([3]);
    for (const u of [A, B]) {
      expect(await crypto.decryptRoomEvent(u, ROOM, event)).toMatchObject({ kind: 'decrypted', decrypted: { event: { content: { body: 'survives' } } } });
    }
    expect(fake.hs.oneTimeKeyCount(B, b.deviceId)).toBeGreaterThan(3);
  });

  it('a device whose part failed gets its to-device events again when the retry comes without them (as Synapse retries)', async () => {
    const s = await setup({ maxOpenMachines: 1 });
    const a = await s.crypto.deviceFor(A);
    const b = await s.crypto.deviceFor(B);
    const alice = await TestDevice.create(s.fake.hs, ALICE, 'ALICE');
    s.fake.rooms.set(ROOM, [ALICE, A, B]);
    await s.crypto.close();
    // B's store cannot be opened during the first attempt: its part fails before its machine
    // has seen its to-device events.
    const notADir = join(s.root, 'not-a-folder');
    await appendFile(notADir, '');
    let broken = true;
    const deviceStore = (u: string, d: string) =>
      broken && u === B ? { kind: 'sqlite' as const, path: join(notADir, 'store') } : defaultDeviceStore(s.root, u, d);
    const first = await s.open({ deviceStore });
    const event = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'kept for the retry' });
    const body = (s.fake.transaction([a, b], [member(A), member(B), event]));
    const err = await first.processTransaction('h1', body).catch((e: unknown) => e);
    expect(err).toMatchObject({ name: 'AppserviceError', code: 'TransactionFailed' });
    await first.close();

    // After a restart, the homeserver retries with the room events only (Synapse's catch-up
    // transactions carry no to-device events, key counts or device lists).
    broken = false;
    const second = await s.open({ deviceStore });
    const retry = await second.processTransaction('h1', { events: body.events });
    expect(retry.devices.map((d) => d.userId)).toEqual([B]);
    expect(retry.devices[0]!.result.roomKeyUpdates).toHaveLength(1);
    for (const u of [A, B]) {
      expect(await second.decryptRoomEvent(u, ROOM, event)).toMatchObject({ kind: 'decrypted', decrypted: { event: { content: { body: 'kept for the retry' } } } });
    }
    // Done: a later retry of the same id is a duplicate, and nothing is fed twice.
    expect((await second.processTransaction('h1', { events: body.events })).duplicate).toBe(true);
  });
});

describe('sending', () => {
  it('encrypts as a puppet: members, query, claim, share with the withheld policy, per puppet', async () => {
    const fake = new FakeAppserviceHomeserver();
    const { crypto } = await setup({}, fake);
    const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
    fake.rooms.set(ROOM, [ALICE, A, B]);
    await crypto.deviceFor(A);
    await crypto.deviceFor(B);
    const sent = await crypto.sendEncrypted(A, ROOM, 'm.room.message', { msgtype: 'm.text', body: 'from A' });
    expect(sent.share.sharedWith).toContainEqual({ userId: ALICE, deviceId: 'ALICE' });
    expect(fake.sentEvents.at(-1)).toMatchObject({ roomId: ROOM, userId: A, type: 'm.room.encrypted' });
    await alice.sync();
    const ev = { type: 'm.room.encrypted', sender: A, room_id: ROOM, event_id: '$x', origin_server_ts: 1, content: fake.sentEvents.at(-1)!.content };
    expect((await alice.machine.decryptRoomEvent(ev, ROOM)).event.content).toEqual({ msgtype: 'm.text', body: 'from A' });

    // B blacklists Alice's device: Alice gets m.blacklisted from B, not from A.
    await crypto.encrypt(B, ROOM, 'm.room.message', { body: 'B knows Alice now' });
    await crypto.withMachine(B, async (m) => {
      await m.setLocalTrust(ALICE, 'ALICE', 'blacklisted');
      await m.discardRoomKey(ROOM);
    });
    const { share } = await crypto.encrypt(B, ROOM, 'm.room.message', { body: 'secret' });
    expect(share.withheld).toContainEqual(expect.objectContaining({ userId: ALICE, deviceId: 'ALICE', code: 'm.blacklisted' }));
    const notices = fake.hs.sentTo(ALICE, 'ALICE', 'm.room_key.withheld');
    expect(notices.filter((m) => m.content.code === 'm.blacklisted').map((m) => m.sender)).toEqual([B]);
  });

  it('keeps at most requestConcurrency requests in flight across devices', async () => {
    const fake = new FakeAppserviceHomeserver();
    fake.delayMs = 10;
    const { crypto } = await setup({ requestConcurrency: 2 }, fake);
    await Promise.all(Array.from({ length: 6 }, (_, i) => crypto.deviceFor(`@puppet_${i}:example.org`)));
    expect(fake.devices.size).toBe(6);
    expect(fake.maxInFlight).toBe(2);
  });
});

describe('open machines', () => {
  it('closes idle machines beyond the cap and reopens them with their keys', async () => {
    const fake = new FakeAppserviceHomeserver();
    const { crypto } = await setup({ maxOpenMachines: 2 }, fake);
    const puppets = Array.from({ length: 5 }, (_, i) => `@puppet_${i}:example.org`);
    const devices = [];
    for (const p of puppets) devices.push(await crypto.deviceFor(p));
    expect(crypto.openMachineCount).toBeLessThanOrEqual(2);
    const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
    const event = await alice.sendMessage(ROOM, [ALICE, ...puppets], { msgtype: 'm.text', body: 'to five' });
    const result = await crypto.processTransaction('lru', fake.transaction(devices, [event]));
    expect(result.devices).toHaveLength(5);
    expect(crypto.openMachineCount).toBeLessThanOrEqual(2);
    for (const p of puppets) {
      expect((await crypto.decryptRoomEvent(p, ROOM, event)).kind).toBe('decrypted');
      expect(crypto.openMachineCount).toBeLessThanOrEqual(2);
    }
  });

  it('a closed machine sees the device-list changes it missed when it reopens', async () => {
    const fake = new FakeAppserviceHomeserver();
    const { crypto } = await setup({ maxOpenMachines: 1 }, fake);
    await TestDevice.create(fake.hs, ALICE, 'ALICE');
    fake.rooms.set(ROOM, [ALICE, A]);
    await crypto.deviceFor(A);
    const first = await crypto.encrypt(A, ROOM, 'm.room.message', { body: 'one' });
    expect(first.share.sharedWith).toEqual([{ userId: ALICE, deviceId: 'ALICE' }]);
    await crypto.deviceFor(B); // A's machine is closed now
    expect(crypto.openMachineCount).toBe(1);
    await TestDevice.create(fake.hs, ALICE, 'ALICE2');
    await crypto.processTransaction('dl', { events: [], 'org.matrix.msc3202.device_lists': { changed: [ALICE], left: [] } });
    const second = await crypto.encrypt(A, ROOM, 'm.room.message', { body: 'two' });
    expect(second.share.sharedWith).toEqual([{ userId: ALICE, deviceId: 'ALICE2' }]);
  });
});

describe('options', () => {
  it('names the bad option', async () => {
    const root = await mkdtemp(join(tmpdir(), 'mcn-as-'));
    cleanup.push(() => rm(root, { recursive: true, force: true }));
    const base = { homeserverUrl: 'http://hs.invalid', registration, storeRoot: root };
    const err = (o: unknown) => AppserviceCrypto.open(o as AppserviceCryptoOptions).catch((e: unknown) => e);
    expect(await err({ ...base, registration: { ...registration, as_token: '' } })).toMatchObject({
      code: 'InvalidArgument',
      message: 'options.registration.as_token: must be a non-empty string',
    });
    expect(await err({ ...base, homeserverUrl: undefined })).toMatchObject({ field: 'options.homeserverUrl' });
    expect(await err({ ...base, limits: { maxOpenMachines: 0 } })).toMatchObject({ field: 'options.limits.maxOpenMachines' });
    expect(await err({ ...base, registration: { ...registration, namespaces: { users: [{ regex: '(' }] } } })).toMatchObject({
      field: 'options.registration.namespaces.users[0].regex',
    });
    expect(await err({ ...base, deviceStore: 'x' })).toMatchObject({ field: 'options.deviceStore' });
  });
});

describe('serveAppservice', () => {
  it('checks the hs_token, answers transactions, and answers 500 so that a failed one is retried', async () => {
    const { fake, crypto } = await setup();
    const a = await crypto.deviceFor(A);
    const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
    const event = await alice.sendMessage(ROOM, [ALICE, A], { msgtype: 'm.text', body: 'over http' });
    const handled: string[] = [];
    let failOnce = true;
    const server = await serveAppservice(crypto, {
      port: 0,
      onEvents: (r) => {
        if (failOnce) {
          failOnce = false;
          throw new Error('bridge busy');
        }
        for (const e of r.events) if (e.kind === 'decrypted') handled.push(String(e.decrypted.event.content.body));
      },
    });
    cleanup.push(() => server.close());
    const body = JSON.stringify(fake.transaction([a], [member(A), event]));
    const put = (path: string, headers: Record<string, string> = { Authorization: `Bearer ${HS_TOKEN}` }, data = body) =>
      fetch(`http://127.0.0.1:${server.port}${path}`, { method: 'PUT', headers: { 'Content-Type': 'application/json', ...headers }, body: data });
    expect((await put('/_matrix/app/v1/transactions/1', {})).status).toBe(401);
    expect(await (await put('/_matrix/app/v1/transactions/1', { Authorization: 'Bearer nope' })).json()).toMatchObject({ errcode: 'M_FORBIDDEN' });
    expect((await put('/_matrix/app/v1/transactions/1')).status).toBe(500);
    expect(handled).toEqual([]);
    expect((await put('/_matrix/app/v1/transactions/1')).status).toBe(200);
    expect((await put(`/transactions/1?access_token=${HS_TOKEN}`, {})).status).toBe(200);
    expect(handled).toEqual(['over http']);
    // Not JSON: answered 200 (a retry would bring the same bytes), reported as a malformed body.
    expect((await put('/_matrix/app/v1/transactions/2', undefined, '{not json')).status).toBe(200);
    expect((await put('/_matrix/app/v1/rooms/x')).status).toBe(404);
  });
});
