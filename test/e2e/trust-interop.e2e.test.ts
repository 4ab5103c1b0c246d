// Secret storage interop with matrix-js-sdk (Rust crypto): what js-sdk stores we read, and the
// reverse, on the same account.
import { decodeRecoveryKey } from 'matrix-js-sdk/lib/crypto-api/recovery-key.js';
import { describe, expect, it } from 'vitest';
import { EncryptedClient } from '../../src/client';
import { useHomeserver, useParticipants } from './harness';
import { JsSdkUser, waitFor } from './js-sdk-user';
import type { TestUser } from './synapse';

const { hs, logs } = useHomeserver();
const { later, client } = useParticipants(hs, logs);

/**
 * A js-sdk client whose secret storage callback answers with `recoveryKey()`. It is another
 * device of the same account, left in js-sdk's default mode: strict mode would bootstrap
 * cross-signing as it starts, and who creates the account's identity, and when, is what these
 * tests are about (it shares and decrypts no room keys here, which is all the mode governs).
 */
async function jsClient(user: TestUser, recoveryKey: () => string | undefined): Promise<JsSdkUser> {
  const u = await JsSdkUser.start(hs().baseUrl, user, {
    cryptoCallbacks: {
      getSecretStorageKey: async ({ keys }) => {
        const key = recoveryKey();
        const keyId = Object.keys(keys)[0];
        return key && keyId ? [keyId, decodeRecoveryKey(key)] : null;
      },
    },
  });
  logs({ name: `js-sdk ${u.user.userId}/${u.user.deviceId}`, logTail: (n) => u.logTail(n) });
  later(() => u.stop());
  return u;
}

async function ourClient(user: TestUser, crossSigning?: Parameters<typeof EncryptedClient.open>[0]['crossSigning']): Promise<EncryptedClient> {
  return client(user, crossSigning ? { crossSigning } : {});
}

describe('secret storage interop with matrix-js-sdk', () => {
  it('we recover from secret storage and a key backup that js-sdk set up', async () => {
    const user = await hs().registerUser('interop-js');
    let recoveryKey: string | undefined;
    const js = await jsClient(user, () => recoveryKey);
    await js.crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: async (makeRequest) => void (await makeRequest(null)) });
    await js.crypto.bootstrapSecretStorage({
      createSecretStorageKey: async () => {
        const generated = await js.crypto.createRecoveryKeyFromPassphrase();
        recoveryKey = generated.encodedPrivateKey;
        return generated;
      },
      setupNewSecretStorage: true,
      setupNewKeyBackup: true,
    });
    expect(await js.crypto.isSecretStorageReady()).toBe(true);
    const backup = await js.crypto.getActiveSessionBackupVersion();
    expect(backup).toEqual(expect.any(String));

    const ours = await ourClient(await hs().login(user.userId, user.password), { bootstrap: 'if-missing', recoveryKey: recoveryKey! });
    expect(ours.recovery).toMatchObject({
      crossSigning: { hasMaster: true, hasSelfSigning: true, hasUserSigning: true },
      signedDevice: true,
      backupVersion: backup,
    });
    expect(ours.crossSigning).toMatchObject({ created: false });
    // js-sdk sees our device signed by the identity it created.
    await waitFor('js-sdk to see our device cross-signed', async () =>
      (await js.crypto.getDeviceVerificationStatus(user.userId, ours.deviceId))?.signedByOwner ? true : undefined,
    );
  });

  it('js-sdk recovers from secret storage and a key backup that we set up', async () => {
    const user = await hs().registerUser('interop-ours');
    const ours = await ourClient(user, { bootstrap: 'if-missing' });
    const setup = await ours.setUpRecovery();
    // An initial sync reports no device-list changes: sync once now, so that the next syncs
    // are incremental and carry the change js-sdk's signature makes.
    await ours.syncOnce({ timeoutMs: 0 });

    const second = await hs().login(user.userId, user.password);
    const js = await jsClient(second, () => setup.recoveryKey);
    expect(await js.crypto.isSecretStorageReady()).toBe(true);
    // js-sdk checks the keys it imports against our public identity: let it download it first
    // (under load its bootstrap could otherwise run before its own key query answered).
    await waitFor('js-sdk to know our identity', async () => ((await js.crypto.userHasCrossSigningKeys(user.userId, true)) ? true : undefined));
    // With the keys in secret storage, js-sdk's bootstrap reads them instead of creating new ones.
    await js.crypto.bootstrapCrossSigning({});
    const status = await js.crypto.getCrossSigningStatus();
    expect(status).toMatchObject({
      publicKeysOnDevice: true,
      privateKeysInSecretStorage: true,
      privateKeysCachedLocally: { masterKey: true, selfSigningKey: true, userSigningKey: true },
    });
    expect((await js.crypto.getCrossSigningKeyId())).toBe((await ours.machine.getUserIdentity(user.userId))?.masterKey);
    await js.crypto.loadSessionBackupPrivateKeyFromSecretStorage();
    const check = await js.crypto.checkKeyBackupAndEnable();
    expect(check?.backupInfo.version).toBe(setup.backupVersion);
    expect(await js.crypto.getActiveSessionBackupVersion()).toBe(setup.backupVersion);

    // We see js-sdk's device signed by our identity.
    await waitFor('our machine to see the js-sdk device cross-signed', async () => {
      await ours.syncOnce({ timeoutMs: 300 });
      return (await ours.machine.getDevice(user.userId, second.deviceId))?.isCrossSignedByOwner ? true : undefined;
    });
  });
});
