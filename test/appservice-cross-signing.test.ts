// AppserviceCrypto's devices are cross-signed by their users (MSC4153), against the fake
// homeserver (test/appservice-fake.ts): new devices, the appservice's own user, a reset identity
// when the published one's private keys are missing, the migration of an unsigned device of an
// older store root, and the per-user trust options (sharing strategy, decryption requirement).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  defaultDeviceStore,
  OlmMachine,
  setLogger,
  type AppserviceCryptoOptions,
  type LogRecord,
  type TrustRequirement,
} from '../src/index';
import { TestDevice } from '../src/testing';
import { appserviceRoot, FakeAppserviceHomeserver } from './appservice-fake';

const ROOM = '!room:example.org';
const A = '@puppet_a:example.org';
const B = '@puppet_b:example.org';
const BOT = '@bridgebot:example.org';
const ALICE = '@alice:example.org';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  setLogger(null);
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function setup(fake = new FakeAppserviceHomeserver()) {
  const { root, open } = await appserviceRoot(fake, cleanup);
  const alice = await TestDevice.create(fake.hs, ALICE, 'ALICE');
  return { fake, root, open, alice };
}

/** The device as another user's machine sees it after querying its owner's keys. */
async function seenBy(viewer: TestDevice, userId: string, deviceId: string) {
  await viewer.machine.updateTrackedUsers([userId]);
  await viewer.sync();
  return {
    device: await viewer.machine.getDevice(userId, deviceId),
    identity: await viewer.machine.getUserIdentity(userId),
  };
}

function member(userId: string) {
  return { type: 'm.room.member', state_key: userId, sender: userId, room_id: ROOM, event_id: `$m-${userId}`, content: { membership: 'join' } };
}

function captureLogs(): LogRecord[] {
  const records: LogRecord[] = [];
  setLogger((r) => records.push(r), { level: 'info' });
  return records;
}

describe('cross-signed devices', () => {
  it('a new puppet device is signed by its user’s new identity, whose private keys stay in the device’s store', async () => {
    const { fake, open, alice } = await setup();
    const crypto = await open();
    const { deviceId } = await crypto.deviceFor(A);
    const upload = fake.calls.find((c) => c.path === '/_matrix/client/v3/keys/device_signing/upload');
    expect(upload).toEqual({ method: 'POST', path: '/_matrix/client/v3/keys/device_signing/upload', userId: A, deviceId });
    expect(fake.calls.find((c) => c.path === '/_matrix/client/v3/keys/signatures/upload')).toMatchObject({ userId: A, deviceId });

    const seen = await seenBy(alice, A, deviceId);
    expect(seen.device).toMatchObject({ isCrossSignedByOwner: true });
    expect(seen.identity?.masterKey).toBe(Object.values(fake.hs.crossSigning.get(A)!.master_key.keys)[0]);
    expect(await crypto.withMachine(A, (m) => m.crossSigningStatus())).toEqual({ hasMaster: true, hasSelfSigning: true, hasUserSigning: true });
    expect(crypto.crossSigningResets).toBe(0);

    // After a restart, one query of the user's own keys finds the device signed: nothing is uploaded.
    await crypto.close();
    const before = fake.calls.length;
    const again = await open();
    await again.deviceFor(A);
    expect(fake.calls.slice(before).filter((c) => c.path.includes('/keys/')).map((c) => c.path)).toEqual(['/_matrix/client/v3/keys/query']);
  });

  it('the appservice’s own user gets a signed device too', async () => {
    const { open, alice } = await setup();
    const crypto = await open();
    const { deviceId } = await crypto.deviceFor(BOT);
    expect((await seenBy(alice, BOT, deviceId)).device).toMatchObject({ isCrossSignedByOwner: true });
  });

  it('a user whose published identity has no private keys in the store is reset: counted, logged, signed', async () => {
    const { fake, open, alice } = await setup();
    // An identity of A created elsewhere (another client of the same account).
    const elsewhere = await TestDevice.create(fake.hs, A, 'ELSEWHERE');
    const made = await elsewhere.machine.bootstrapCrossSigning();
    fake.hs.handle(A, 'ELSEWHERE', made.uploadSigningKeys);
    const oldMaster = Object.values(fake.hs.crossSigning.get(A)!.master_key.keys)[0];

    const logs = captureLogs();
    const crypto = await open();
    const { deviceId } = await crypto.deviceFor(A);
    expect(crypto.crossSigningResets).toBe(1);
    const seen = await seenBy(alice, A, deviceId);
    expect(seen.device).toMatchObject({ isCrossSignedByOwner: true });
    expect(seen.identity?.masterKey).not.toBe(oldMaster);
    const warning = logs.find((r) => r.target === 'matrix_crypto_node::appservice::cross_signing' && r.level === 'warn');
    expect(warning?.message).toMatch(/^reset the cross-signing identity of a bridged user/);
    expect(warning?.fields).toEqual({ user_id: A, device_id: deviceId });

    // The store lost with the device: a new device, a new identity.
    await crypto.deleteDevice(A);
    const second = await crypto.deviceFor(A);
    expect(crypto.crossSigningResets).toBe(2);
    expect((await seenBy(alice, A, second.deviceId)).device).toMatchObject({ isCrossSignedByOwner: true });
  });

  it('an unsigned device of an older store root is signed when its machine next opens', async () => {
    const { fake, root, open, alice } = await setup();
    // A root as the code before cross-signing left it: the device created and its keys
    // uploaded, no identity. (Every key query fails, so signing never starts.)
    fake.failWhile = (c) => c.path.endsWith('/keys/query');
    const old = await open();
    await expect(old.deviceFor(A)).rejects.toMatchObject({ name: 'HomeserverError' });
    const deviceId = old.deviceIdOf(A)!;
    await old.close();
    fake.failWhile = undefined;
    expect(fake.hs.deviceKeys.get(A)?.has(deviceId)).toBe(true);
    expect(fake.hs.crossSigning.has(A)).toBe(false);
    const machine = await OlmMachine.open({ userId: A, deviceId, store: defaultDeviceStore(root, A, deviceId) });
    expect(await machine.crossSigningStatus()).toEqual({ hasMaster: false, hasSelfSigning: false, hasUserSigning: false });
    await machine.close();

    // Reopened: the first transaction for the device opens its machine, which signs it.
    const crypto = await open();
    fake.rooms.set(ROOM, [ALICE, A]);
    const event = await alice.sendMessage(ROOM, [ALICE, A], { msgtype: 'm.text', body: 'to the old device' });
    const result = await crypto.processTransaction('t1', fake.transaction([{ userId: A, deviceId }], [member(A), event]));
    expect(result.events[1]).toMatchObject({ kind: 'decrypted', decryptedBy: A });
    expect((await seenBy(alice, A, deviceId)).device).toMatchObject({ isCrossSignedByOwner: true });
    expect(crypto.crossSigningResets).toBe(0);
  });

  it('a homeserver that demands user-interactive auth for the identity is CrossSigningFailed', async () => {
    const { fake, open } = await setup();
    fake.signingKeysNeedAuth = true;
    const crypto = await open();
    await expect(crypto.deviceFor(A)).rejects.toMatchObject({ name: 'AppserviceError', code: 'CrossSigningFailed', userId: A });
    expect(fake.hs.crossSigning.has(A)).toBe(false);
    // The identity made for the refused upload is in the store but was never published: once
    // the homeserver lets it, the next call publishes it and signs the device.
    fake.signingKeysNeedAuth = false;
    const { deviceId } = await crypto.deviceFor(A);
    expect(fake.hs.crossSigning.has(A)).toBe(true);
    expect((await seenBy(await TestDevice.create(fake.hs, ALICE, 'ALICE2'), A, deviceId)).device).toMatchObject({ isCrossSignedByOwner: true });
    expect(crypto.crossSigningResets).toBe(0);
  });
});

describe('trust options per bridged user', () => {
  it('sharingStrategy: identity_based withholds the key from unsigned devices (m.unverified); the default shares it', async () => {
    const { fake, open } = await setup();
    const crypto = await open({ trust: (u) => (u === A ? { sharingStrategy: 'identity_based' } : undefined) });
    fake.rooms.set(ROOM, [ALICE, A, B]);
    const strict = await crypto.encrypt(A, ROOM, 'm.room.message', { body: 'strict' });
    expect(strict.share.sharedWith).not.toContainEqual({ userId: ALICE, deviceId: 'ALICE' });
    expect(strict.share.withheld).toContainEqual(expect.objectContaining({ userId: ALICE, deviceId: 'ALICE', code: 'm.unverified' }));
    const lenient = await crypto.encrypt(B, ROOM, 'm.room.message', { body: 'default' });
    expect(lenient.share.sharedWith).toContainEqual({ userId: ALICE, deviceId: 'ALICE' });
    // A per-call setting still wins.
    const perCall = await crypto.encrypt(A, ROOM, 'm.room.message', { body: 'x' }, { shareSettings: { sharingStrategy: 'all_devices' } });
    expect(perCall.share.sharedWith).toContainEqual({ userId: ALICE, deviceId: 'ALICE' });
  });

  it('decryptionTrustRequirement: cross_signed refuses an unsigned sender (SenderIdentityNotTrusted) and reads a cross-signed one', async () => {
    const { fake, open, alice } = await setup();
    const crypto = await open({ trust: { decryptionTrustRequirement: 'cross_signed' } });
    const otherRoot = await mkdtemp(join(tmpdir(), 'mcn-as-xs-'));
    cleanup.push(() => rm(otherRoot, { recursive: true, force: true }));
    const lenient = await open({ storeRoot: otherRoot });
    const a = await crypto.deviceFor(A);
    const b = await lenient.deviceFor(B);
    fake.rooms.set(ROOM, [ALICE, A, B]);
    const unsigned = await alice.sendMessage(ROOM, [ALICE, A, B], { msgtype: 'm.text', body: 'unsigned alice' });
    const r1 = await crypto.processTransaction('d1', fake.transaction([a], [member(A), unsigned]));
    expect(r1.events[1]).toMatchObject({ kind: 'undecryptable', decryptedBy: A, error: { code: 'SenderIdentityNotTrusted' } });
    const r2 = await lenient.processTransaction('d1', fake.transaction([b], [member(B), unsigned]));
    expect(r2.events[1]).toMatchObject({ kind: 'decrypted', decryptedBy: B });

    // Alice cross-signs her device; A learns it (its share queries her keys), then her new session decrypts.
    const made = await alice.machine.bootstrapCrossSigning();
    fake.hs.handle(ALICE, 'ALICE', made.uploadSigningKeys);
    await alice.send(made.uploadSignatures);
    await crypto.encrypt(A, ROOM, 'm.room.message', { body: 'A queries alice' });
    await alice.machine.discardRoomKey(ROOM);
    const signed = await alice.sendMessage(ROOM, [ALICE, A], { msgtype: 'm.text', body: 'signed alice' });
    const r3 = await crypto.processTransaction('d2', fake.transaction([a], [signed]));
    expect(r3.events[0]).toMatchObject({ kind: 'decrypted', decryptedBy: A, decrypted: { event: { content: { body: 'signed alice' } } } });
  });

  it('OlmMachine.decryptRoomEvent takes every trust requirement and names a bad one', async () => {
    const hs = new FakeAppserviceHomeserver().hs;
    const alice = await TestDevice.create(hs, ALICE, 'ALICE');
    const bob = await TestDevice.create(hs, '@bob:example.org', 'BOB');
    await bob.machine.updateTrackedUsers([ALICE]);
    await bob.flush();
    const event = await alice.sendMessage(ROOM, [ALICE, '@bob:example.org'], { msgtype: 'm.text', body: 'hi' });
    await bob.sync();
    const outcomes: Record<TrustRequirement, string> = { untrusted: '', cross_signed_or_legacy: '', cross_signed: '' };
    for (const t of Object.keys(outcomes) as TrustRequirement[]) {
      outcomes[t] = await bob.machine.decryptRoomEvent(event, ROOM, { trustRequirement: t }).then(
        () => 'decrypted',
        (e: { code: string }) => e.code,
      );
    }
    // Alice's device is known to Bob and unsigned (she has no identity), and the session is new.
    expect(outcomes).toEqual({ untrusted: 'decrypted', cross_signed_or_legacy: 'SenderIdentityNotTrusted', cross_signed: 'SenderIdentityNotTrusted' });
    await expect(bob.machine.decryptRoomEvent(event, ROOM, { trustRequirement: 'strict' as TrustRequirement })).rejects.toMatchObject({
      code: 'InvalidArgument',
      field: 'options.trustRequirement',
    });
    await expect(bob.machine.decryptRoomEvent(event, ROOM, { other: 1 } as never)).rejects.toMatchObject({ code: 'InvalidArgument' });
  });

  it('names the bad trust option', async () => {
    const { open } = await setup();
    const err = (trust: unknown) => open({ trust } as Partial<AppserviceCryptoOptions>).catch((e: unknown) => e);
    expect(await err({ sharingStrategy: 'everyone' })).toMatchObject({ code: 'InvalidArgument', field: 'options.trust.sharingStrategy' });
    expect(await err({ decryptionTrustRequirement: 'Untrusted' })).toMatchObject({
      code: 'InvalidArgument',
      field: 'options.trust.decryptionTrustRequirement',
      message: 'options.trust.decryptionTrustRequirement: "Untrusted" is not one of untrusted, cross_signed_or_legacy, cross_signed',
    });
    expect(await err({ sharing: 'all_devices' })).toMatchObject({ field: 'options.trust.sharing' });
    expect(await err('strict')).toMatchObject({ field: 'options.trust' });
    const crypto = await open({ trust: () => ({ decryptionTrustRequirement: 'always' as TrustRequirement }) });
    const event = { type: 'm.room.encrypted', sender: ALICE, room_id: ROOM, event_id: '$e', origin_server_ts: 1, content: {} };
    await expect(crypto.decryptRoomEvent(A, ROOM, event)).rejects.toMatchObject({
      code: 'InvalidArgument',
      field: `options.trust("${A}").decryptionTrustRequirement`,
    });
  });
});
