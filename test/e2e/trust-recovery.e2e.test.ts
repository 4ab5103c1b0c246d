// Secret storage and recovery against Synapse: a bot stores its cross-signing and backup keys
// under a recovery key, loses its store, and comes back on a new device with the recovery key.
import { describe, expect, it } from 'vitest';
import { EncryptedClient } from '../../src/client';
import { SecretStorageKey } from '../../src/trust';
import { syncUntilDecrypted, useHomeserver, useParticipants } from './harness';
import { waitFor } from './js-sdk-user';

const { hs, logs } = useHomeserver();
const { jsUser, tempDir, client: open } = useParticipants(hs, logs);

/** The account data this library reads for recovery, as the server has it. */
async function secretStorageOf(client: EncryptedClient): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  const pointer = await client.transport.getAccountData(client.userId, 'm.secret_storage.default_key');
  out.default = pointer;
  for (const t of ['m.cross_signing.master', 'm.cross_signing.self_signing', 'm.cross_signing.user_signing', 'm.megolm_backup.v1']) {
    out[t] = await client.transport.getAccountData(client.userId, t);
  }
  return out;
}

describe('secret storage and recovery', () => {
  it('a bot that lost its store comes back on a new device with the recovery key, cross-signed, and reads a message from before', async () => {
    const alice = await jsUser('rec-alice');
    const botUser = await hs().registerUser('rec-bot');
    const bot = await open(botUser, { crossSigning: { bootstrap: 'if-missing' } });
    const setup = await bot.setUpRecovery();
    expect(setup.stored).toEqual(['m.cross_signing.master', 'm.cross_signing.self_signing', 'm.cross_signing.user_signing', 'm.megolm_backup.v1']);
    expect(setup.backupVersion).toEqual(expect.any(String));
    expect(setup.recoveryKey).toMatch(/^(\w{4} ){11}\w{4}$/);
    expect(await bot.machine.backupVersion()).toBe(setup.backupVersion);

    const roomId = await alice.createEncryptedRoom([bot.userId]);
    await bot.transport.joinRoom(roomId);
    await alice.waitForMember(roomId, bot.userId);
    await waitFor('js-sdk to see the bot cross-signed', async () =>
      (await alice.crypto.getDeviceVerificationStatus(bot.userId, bot.deviceId))?.signedByOwner ? true : undefined,
    );
    const before = await alice.sendText(roomId, 'sent before the bot lost its store');
    await syncUntilDecrypted(bot, before);
    // syncOnce backed the room key up.
    expect(await bot.machine.backupRoomKeyCounts()).toEqual({ total: 1, backedUp: 1 });
    const stored = await secretStorageOf(bot);
    await bot.close();

    // The store is gone (it was in memory): log in again, a new device with a new store.
    const again = await hs().login(botUser.userId, botUser.password);
    expect(again.deviceId).not.toBe(botUser.deviceId);
    const store = { kind: 'sqlite' as const, path: await tempDir('mcn-recovery-') };

    const wrongKey = (await SecretStorageKey.create()).recoveryKey;
    await expect(open(again, { store, crossSigning: { bootstrap: 'if-missing', recoveryKey: wrongKey } })).rejects.toMatchObject({
      name: 'MatrixCryptoError',
      code: 'SecretStorageKeyMismatch',
      field: 'crossSigning.recoveryKey',
    });
    // Not a recovery key at all (bad parity) is the same typed error.
    const typo = setup.recoveryKey.slice(0, -1) + (setup.recoveryKey.endsWith('a') ? 'b' : 'a');
    await expect(open(again, { store, crossSigning: { recoveryKey: typo } })).rejects.toMatchObject({ code: 'SecretStorageKeyMismatch' });

    const progress: Array<[number, number]> = [];
    const recovered = await open(again, {
      store,
      crossSigning: { bootstrap: 'if-missing', recoveryKey: setup.recoveryKey, onProgress: (done, total) => progress.push([done, total]) },
    });
    // Nothing the failed attempts did changed secret storage.
    expect(await secretStorageOf(recovered)).toEqual(stored);
    expect(recovered.recovery).toMatchObject({
      crossSigning: { hasMaster: true, hasSelfSigning: true, hasUserSigning: true },
      signedDevice: true,
      backupVersion: setup.backupVersion,
      restored: { imported: 1, total: 1, undecryptable: [] },
    });
    expect(progress.at(-1)).toEqual([1, 1]);
    expect(recovered.crossSigning).toMatchObject({ created: false });
    expect(await recovered.machine.backupVersion()).toBe(setup.backupVersion);

    const old = await syncUntilDecrypted(recovered, before);
    expect(old.decrypted.event.content.body).toBe('sent before the bot lost its store');
    await waitFor('js-sdk to see the new device cross-signed', async () =>
      (await alice.crypto.getDeviceVerificationStatus(again.userId, again.deviceId))?.signedByOwner ? true : undefined,
    );
    const after = await alice.sendText(roomId, 'welcome back');
    expect((await syncUntilDecrypted(recovered, after)).decrypted.event.content.body).toBe('welcome back');
  });

  it('a passphrase unlocks what it protects, a wrong one is refused, and malformed account data is named', async () => {
    const botUser = await hs().registerUser('rec-bot2');
    const bot = await open(botUser, { crossSigning: {} });
    const setup = await bot.setUpRecovery({ passphrase: 'correct horse battery staple', backup: false });
    expect(setup.stored).toEqual(['m.cross_signing.master', 'm.cross_signing.self_signing', 'm.cross_signing.user_signing']);
    expect(setup.backupVersion).toBeNull();

    const second = await open(await hs().login(botUser.userId, botUser.password));
    await second.processOutgoingRequests();
    await expect(second.recover('Tr0ub4dor&3')).rejects.toMatchObject({ code: 'SecretStorageKeyMismatch', field: 'recoveryKey' });
    expect(await second.machine.crossSigningStatus()).toEqual({ hasMaster: false, hasSelfSigning: false, hasUserSigning: false });

    // A self-signing key that does not authenticate: nothing is imported, the event is named.
    const good = await bot.transport.getAccountData(bot.userId, 'm.cross_signing.self_signing');
    const encrypted = (good as { encrypted: Record<string, { iv: string; ciphertext: string; mac: string }> }).encrypted[setup.keyId]!;
    await bot.transport.setAccountData(bot.userId, 'm.cross_signing.self_signing', {
      encrypted: { [setup.keyId]: { ...encrypted, mac: encrypted.mac.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) } },
    });
    await expect(second.recover('correct horse battery staple')).rejects.toMatchObject({
      code: 'SecretStorageCorrupt',
      field: 'accountData["m.cross_signing.self_signing"]',
    });
    expect(await second.machine.crossSigningStatus()).toEqual({ hasMaster: false, hasSelfSigning: false, hasUserSigning: false });
    await bot.transport.setAccountData(bot.userId, 'm.cross_signing.self_signing', { encrypted: 'not an object' });
    await expect(second.recover('correct horse battery staple')).rejects.toMatchObject({ code: 'SecretStorageCorrupt' });
    await bot.transport.setAccountData(bot.userId, 'm.cross_signing.self_signing', good!);

    const result = await second.recover('correct horse battery staple');
    expect(result).toMatchObject({ crossSigning: { hasMaster: true, hasSelfSigning: true, hasUserSigning: true }, signedDevice: true, backupVersion: null, restored: null });
    // The recovery key works as well as the passphrase.
    const third = await open(await hs().login(botUser.userId, botUser.password));
    await third.processOutgoingRequests();
    expect((await third.recover(setup.recoveryKey)).signedDevice).toBe(true);
  });

  it('a device holding stale cross-signing keys and an old backup key recovers with the new recovery key', async () => {
    const botUser = await hs().registerUser('rec-stale');
    const store = { kind: 'sqlite' as const, path: await tempDir('mcn-recovery-') };
    const first = await open(botUser, { store, crossSigning: { bootstrap: 'if-missing' } });
    const oldSetup = await first.setUpRecovery();
    const oldBackup = await first.machine.savedBackupDecryptionKey();
    await first.close();

    // Another device replaces the identity; secret storage still holds the old keys.
    const other = await open(await hs().login(botUser.userId, botUser.password), {
      crossSigning: { bootstrap: 'reset', auth: { type: 'password', password: botUser.password } },
    });
    let stale = await open(botUser, { store });
    expect(await stale.machine.crossSigningStatus()).toEqual({ hasMaster: true, hasSelfSigning: true, hasUserSigning: true });
    const refused = await stale.recover(oldSetup.recoveryKey).catch((e: unknown) => e);
    expect(refused).toMatchObject({ code: 'SecretStorageCorrupt', field: 'accountData["m.cross_signing.master"]' });
    expect((refused as Error).message).toMatch(/secret storage is older than the identity.*setUpRecovery.*bootstrap: 'reset'/);
    // Nothing was imported and the old backup key is still held. The old cross-signing keys are
    // gone: the crate drops private keys that are not the published identity's as soon as it
    // sees the new identity (recover queries it first).
    expect(await stale.machine.crossSigningStatus()).toEqual({ hasMaster: false, hasSelfSigning: false, hasUserSigning: false });
    expect(await stale.machine.savedBackupDecryptionKey()).toEqual(oldBackup);
    await stale.close();

    // The other device makes a new backup and stores the current keys under a new recovery key.
    const newBackup = await other.machine.createBackupKey();
    const newVersion = await other.transport.createBackupVersion(newBackup.versionBody);
    await other.machine.saveBackupDecryptionKey(newBackup.decryptionKey, newVersion);
    const newSetup = await other.setUpRecovery();
    expect(newSetup.backupVersion).toBe(newVersion);
    expect(newVersion).not.toBe(oldSetup.backupVersion);

    // Opening with the old keys and the new recovery key replaces both.
    stale = await open(botUser, { store, crossSigning: { recoveryKey: newSetup.recoveryKey } });
    expect(stale.recovery).toMatchObject({ signedDevice: true, backupVersion: newVersion, crossSigning: { hasMaster: true, hasSelfSigning: true, hasUserSigning: true } });
    expect(stale.crossSigning).toMatchObject({ created: false });
    expect(await stale.machine.isOwnDeviceCrossSigned()).toBe(true);
    expect(await stale.machine.savedBackupDecryptionKey()).toEqual({ decryptionKey: newBackup.decryptionKey, version: newVersion });
    expect(await stale.machine.backupVersion()).toBe(newVersion);
    await waitFor('the other device to see the recovered device cross-signed', async () => {
      const query = other.machine.queryOwnKeys();
      await other.machine.markRequestAsSent(query, await other.transport.send(query));
      return (await other.machine.getDevice(botUser.userId, botUser.deviceId))?.isCrossSignedByOwner ? true : undefined;
    });
  });
});
