// Cross-signing of our bot against Synapse, with a matrix-js-sdk user in "exclude insecure
// devices" mode (OnlySignedDevicesIsolationMode, Element's MSC4153 setting) on the other side.
import { describe, expect, it } from 'vitest';
import { EncryptedClient } from '../../src/client';
import { HomeserverError } from '../../src/transport';
import { openBot, syncUntil, syncUntilDecrypted, useHomeserver, useParticipants } from './harness';
import { JsSdkUser, waitFor } from './js-sdk-user';

const { hs, logs } = useHomeserver();
const { jsUser, tempDir, later } = useParticipants(hs, logs);

/** Waits until the js-sdk user sees the bot's device as signed by its owner (or not). */
async function waitForSignedByOwner(alice: JsSdkUser, userId: string, deviceId: string, signed: boolean): Promise<void> {
  await waitFor(`js-sdk to see ${userId}/${deviceId} ${signed ? '' : 'not '}cross-signed`, async () => {
    const status = await alice.crypto.getDeviceVerificationStatus(userId, deviceId);
    return status && status.signedByOwner === signed ? true : undefined;
  });
}

describe('cross-signing: trusted by a client that excludes insecure devices', () => {
  it('before bootstrap the bot gets a withheld notice instead of the key; after it, the next message decrypts', async () => {
    const alice = await jsUser('cs-alice');
    const botUser = await hs().registerUser('cs-bot');
    const store = { kind: 'sqlite' as const, path: await tempDir('mcn-trust-') };
    // Unsigned on purpose: the test is about what a strict client does before the bootstrap.
    let bot = await openBot(hs(), botUser, { store, unsigned: true });
    const roomId = await alice.createEncryptedRoom([bot.userId]);
    await bot.transport.joinRoom(roomId);
    await alice.waitForMember(roomId, bot.userId);
    await waitForSignedByOwner(alice, bot.userId, bot.deviceId, false);

    const before = await alice.sendText(roomId, 'not for insecure devices');
    const refused = await syncUntil(bot, 'the withheld notice for the first message', (items) => {
      const item = items.find((i) => i.event.event_id === before);
      return item?.kind === 'undecryptable' && item.error.withheld ? item : undefined;
    });
    if (refused.kind !== 'undecryptable') throw new Error('unreachable');
    // What js-sdk sends an unsigned device under OnlySignedDevicesIsolationMode.
    expect(refused.error).toMatchObject({ code: 'MissingRoomKey', withheldCode: 'm.unverified' });
    expect(refused.error.withheld).toEqual({ code: 'm.unverified', reason: 'The sender has disabled encrypting to unverified devices.', scope: 'session' });
    expect(refused.error.message).toContain('m.unverified');
    await bot.close();

    bot = await EncryptedClient.open({
      baseUrl: hs().baseUrl,
      accessToken: botUser.accessToken,
      userId: botUser.userId,
      deviceId: botUser.deviceId,
      store,
      crossSigning: { bootstrap: 'if-missing' },
    });
    later(() => bot.close());
    // Synapse lets the first upload of an account's keys through without user-interactive auth (MSC3967).
    expect(bot.crossSigning).toEqual({
      created: true,
      signedDevice: true,
      status: { hasMaster: true, hasSelfSigning: true, hasUserSigning: true },
    });
    expect(await bot.machine.isOwnDeviceCrossSigned()).toBe(true);
    await waitForSignedByOwner(alice, bot.userId, bot.deviceId, true);

    const after = await alice.sendText(roomId, 'now you are cross-signed');
    const got = await syncUntilDecrypted(bot, after);
    expect(got.decrypted.event.content.body).toBe('now you are cross-signed');
    // The first message stays withheld: its session reached us only from a later index, or not at all.
    const first = await bot.decryptEvent(roomId, refused.event);
    expect(first.kind).toBe('undecryptable');

    // Opening again with the same store changes nothing: the keys are there and the device is signed.
    await bot.close();
    bot = await EncryptedClient.open({
      baseUrl: hs().baseUrl,
      accessToken: botUser.accessToken,
      store,
      crossSigning: { bootstrap: 'if-missing' },
    });
    expect(bot.crossSigning).toMatchObject({ created: false, signedDevice: false });
    expect((await bot.machine.getUserIdentity(bot.userId))?.isVerified).toBe(true);
  });

  it('replacing the identity needs user-interactive auth: refused without it and with a wrong password, done with the password', async () => {
    const alice = await jsUser('cs-alice2');
    const botUser = await hs().registerUser('cs-bot2');
    // Unsigned on purpose: the test's own setUpCrossSigning call creates the identity.
    const bot = await openBot(hs(), botUser, { unsigned: true });
    later(() => bot.close());
    expect(await bot.setUpCrossSigning()).toMatchObject({ created: true });
    const first = await bot.machine.getUserIdentity(bot.userId);
    expect(first).toMatchObject({ isOwn: true, isVerified: true });

    await expect(bot.setUpCrossSigning({ bootstrap: 'reset' })).rejects.toMatchObject({
      name: 'MatrixCryptoError',
      code: 'InvalidArgument',
      field: 'options.auth',
    });
    const wrong = await bot.setUpCrossSigning({ bootstrap: 'reset', auth: { type: 'password', password: 'not the password' } }).catch((e: unknown) => e);
    expect(wrong).toBeInstanceOf(HomeserverError);
    expect(wrong).toMatchObject({ status: 401, errcode: 'M_FORBIDDEN' });

    const reset = await bot.setUpCrossSigning({ bootstrap: 'reset', auth: { type: 'password', password: botUser.password } });
    expect(reset).toMatchObject({ created: true, signedDevice: true });
    const second = await bot.machine.getUserIdentity(bot.userId);
    expect(second?.masterKey).not.toBe(first?.masterKey);
    // The other side learns the new master key and our device signed by it.
    await waitFor('js-sdk to see the new master key', async () => {
      const keys = await alice.client.downloadKeysForUsers([bot.userId]);
      const master = Object.values(keys.master_keys?.[bot.userId]?.keys ?? {})[0];
      return master === second?.masterKey ? true : undefined;
    });
  });

  it('with signOwnDevices, the bot signs a new device of its account and clients trust that device', async () => {
    const botUser = await hs().registerUser('cs-bot3');
    const bot = await EncryptedClient.open({
      baseUrl: hs().baseUrl,
      accessToken: botUser.accessToken,
      store: { kind: 'memory' },
      crossSigning: { bootstrap: 'if-missing', signOwnDevices: true },
    });
    later(() => bot.close());
    // After one sync the next ones are incremental and report device-list changes.
    await bot.syncOnce({ timeoutMs: 0 });
    // A second device of the bot's own account, in js-sdk's default mode: strict mode would
    // bootstrap cross-signing from it, replacing the identity the bot holds the keys of.
    const other = await JsSdkUser.start(hs().baseUrl, await hs().login(botUser.userId, botUser.password));
    later(() => other.stop());
    logs({ name: `js-sdk ${other.user.userId}/${other.user.deviceId}`, logTail: (n) => other.logTail(n) });
    expect((await bot.machine.unsignedOwnDevices())).not.toContain(bot.deviceId);
    await waitFor('the bot to sign the new device', async () => {
      await bot.syncOnce({ timeoutMs: 300 });
      return (await bot.machine.getDevice(bot.userId, other.user.deviceId))?.isCrossSignedByOwner ? true : undefined;
    });
    await waitForSignedByOwner(other, bot.userId, other.user.deviceId, true);
    expect(await bot.machine.unsignedOwnDevices()).toEqual([]);
  });

  it('a device whose keys were replaced from another device is told so instead of signing with stale keys', async () => {
    const botUser = await hs().registerUser('cs-bot4');
    const store = { kind: 'sqlite' as const, path: await tempDir('mcn-trust-') };
    const open = () => EncryptedClient.open({ baseUrl: hs().baseUrl, accessToken: botUser.accessToken, store, crossSigning: {} });
    let first = await open();
    expect(first.crossSigning?.created).toBe(true);
    await first.close();
    // Another device of the account replaces the identity (with the password).
    // Unsigned: a second login holds none of the identity's private keys (the test's point).
    const other = await openBot(hs(), await hs().login(botUser.userId, botUser.password), { unsigned: true });
    later(() => other.close());
    await other.setUpCrossSigning({ bootstrap: 'reset', auth: { type: 'password', password: botUser.password } });
    await expect(open()).rejects.toMatchObject({ name: 'MatrixCryptoError', code: 'CrossSigningKeyMissing', field: 'crossSigning' });
    // Resetting again from the first device makes it signed by a new identity.
    first = await EncryptedClient.open({
      baseUrl: hs().baseUrl,
      accessToken: botUser.accessToken,
      store,
      crossSigning: { bootstrap: 'reset', auth: { type: 'password', password: botUser.password } },
    });
    later(() => first.close());
    expect(first.crossSigning).toMatchObject({ created: true, signedDevice: true });
    expect(await first.machine.isOwnDeviceCrossSigned()).toBe(true);
  });
});
