// Secret storage on the main API, without a homeserver's account data: the key, the secrets
// in and out, and what bad input gets.
import { describe, expect, it } from 'vitest';
import { readSecretStorage, SecretStorageKey } from '../src/index';
import type { HomeserverTransport } from '../src/transport';
import { TestDevice, TestHomeserver } from '../src/testing/homeserver';

const USER = '@bot:example.org';

async function crossSignedDevice(hs: TestHomeserver, deviceId: string): Promise<TestDevice> {
  const d = await TestDevice.create(hs, USER, deviceId);
  const boot = await d.machine.bootstrapCrossSigning(false);
  await d.machine.markRequestAsSent(boot.uploadSigningKeys, hs.handle(USER, deviceId, boot.uploadSigningKeys));
  await d.send(boot.uploadSignatures);
  return d;
}

describe('secret storage', () => {
  it('a random key: its recovery key unlocks it, with or without the spaces; another key does not', async () => {
    const key = await SecretStorageKey.create();
    expect(key.eventType).toBe(`m.secret_storage.key.${key.keyId}`);
    expect(key.description).toMatchObject({ algorithm: 'm.secret_storage.v1.aes-hmac-sha2', iv: expect.any(String), mac: expect.any(String) });
    expect(key.description).not.toHaveProperty('passphrase');
    const again = await SecretStorageKey.unlock(key.recoveryKey.replaceAll(' ', ''), key.keyId, key.description);
    expect(again.recoveryKey).toBe(key.recoveryKey);
    const other = await SecretStorageKey.create();
    await expect(SecretStorageKey.unlock(other.recoveryKey, key.keyId, key.description)).rejects.toMatchObject({
      code: 'SecretStorageKeyMismatch',
      field: 'recoveryKey',
    });
    await expect(SecretStorageKey.unlock('not base58 at all!', key.keyId, key.description)).rejects.toMatchObject({ code: 'SecretStorageKeyMismatch' });
    await expect(SecretStorageKey.unlock('', key.keyId, key.description)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'recoveryKey' });
    await expect(SecretStorageKey.unlock(key.recoveryKey, key.keyId, '{not json')).rejects.toMatchObject({
      code: 'SecretStorageCorrupt',
      field: `accountData["m.secret_storage.key.${key.keyId}"]`,
    });
    await expect(SecretStorageKey.unlock(key.recoveryKey, key.keyId, { algorithm: 'm.unknown' })).rejects.toMatchObject({ code: 'SecretStorageCorrupt' });
  });

  it('a passphrase key: the passphrase and the recovery key both unlock it', async () => {
    const key = await SecretStorageKey.create({ passphrase: 'correct horse' });
    expect(key.description).toMatchObject({ passphrase: { algorithm: 'm.pbkdf2', iterations: 500000, salt: expect.any(String) } });
    expect((await SecretStorageKey.unlock('correct horse', key.keyId, key.description, 'passphrase')).recoveryKey).toBe(key.recoveryKey);
    expect((await SecretStorageKey.unlock(key.recoveryKey, key.keyId, key.description)).keyId).toBe(key.keyId);
    await expect(SecretStorageKey.unlock('wrong horse', key.keyId, key.description, 'passphrase')).rejects.toMatchObject({
      code: 'SecretStorageKeyMismatch',
      field: 'passphrase',
    });
    await expect(SecretStorageKey.create({ passphrase: '' })).rejects.toMatchObject({ code: 'InvalidArgument', field: 'passphrase' });
  });

  it('exports the cross-signing keys and the backup key; a second device imports them, checked against the identity and the backup', async () => {
    const hs = new TestHomeserver();
    const first = await crossSignedDevice(hs, 'FIRST');
    const key = await SecretStorageKey.create();
    const backup = await first.machine.createBackupKey();
    const secrets = await first.machine.exportSecretsForStorage(key, backup.decryptionKey);
    expect(secrets.map((s) => s.name)).toEqual(['m.cross_signing.master', 'm.cross_signing.self_signing', 'm.cross_signing.user_signing', 'm.megolm_backup.v1']);
    for (const s of secrets) expect(Object.keys(JSON.parse(s.content).encrypted)).toEqual([key.keyId]);

    const second = await TestDevice.create(hs, USER, 'SECOND');
    const wrong = await SecretStorageKey.create();
    await expect(second.machine.importSecretsFromStorage(wrong, secrets)).rejects.toMatchObject({
      code: 'SecretStorageCorrupt',
      field: 'accountData["m.cross_signing.master"]',
    });
    const tampered = secrets.map((s) => (s.name === 'm.megolm_backup.v1' ? { ...s, content: '{"encrypted": 1}' } : s));
    await expect(second.machine.importSecretsFromStorage(key, tampered)).rejects.toMatchObject({ field: 'accountData["m.megolm_backup.v1"]' });
    expect(await second.machine.crossSigningStatus()).toEqual({ hasMaster: false, hasSelfSigning: false, hasUserSigning: false });

    const otherBackup = await first.machine.createBackupKey();
    const mismatch = await second.machine.importSecretsFromStorage(key, secrets, { version: '1', publicKey: otherBackup.publicKey });
    expect(mismatch).toMatchObject({ backupKeyMatches: false, backupDecryptionKey: null });
    expect(await second.machine.savedBackupDecryptionKey()).toBeNull();

    const imported = await second.machine.importSecretsFromStorage(key, secrets, { version: '2', publicKey: backup.publicKey });
    expect(imported).toMatchObject({
      crossSigning: { hasMaster: true, hasSelfSigning: true, hasUserSigning: true },
      backupKeyMatches: true,
      backupDecryptionKey: backup.decryptionKey,
      signatureUpload: { type: 'signature_upload' },
    });
    expect(await second.machine.savedBackupDecryptionKey()).toEqual({ decryptionKey: backup.decryptionKey, version: '2' });
    await second.send(imported.signatureUpload!);
    await first.sync();
    expect((await first.machine.getDevice(USER, 'SECOND'))?.isCrossSignedByOwner).toBe(true);
    // The second device can now store the same secrets (the backup key comes from its store).
    expect((await second.machine.exportSecretsForStorage(key)).map((s) => s.name)).toContain('m.megolm_backup.v1');
  });

  it('needs the cross-signing keys to export and our public identity to import', async () => {
    const hs = new TestHomeserver();
    const lone = await TestDevice.create(hs, USER, 'LONE');
    const key = await SecretStorageKey.create();
    await expect(lone.machine.exportSecretsForStorage(key)).rejects.toMatchObject({ code: 'CrossSigningKeyMissing' });
    const other = await crossSignedDevice(new TestHomeserver(), 'ELSEWHERE');
    const secrets = await other.machine.exportSecretsForStorage(key);
    await expect(lone.machine.importSecretsFromStorage(key, secrets)).rejects.toMatchObject({ code: 'CrossSigningKeyMissing' });
    await expect(lone.machine.exportSecretsForStorage({} as SecretStorageKey)).rejects.toMatchObject({ code: 'InvalidArgument', field: 'key' });
  });

  it('reading secret storage names the account-data event that is missing or malformed', async () => {
    const hs = new TestHomeserver();
    const device = await crossSignedDevice(hs, 'READER');
    const key = await SecretStorageKey.create();
    const read = (data: Record<string, unknown>) => {
      const transport = { getAccountData: async (_user: string, type: string) => (data[type] ?? null) as Record<string, unknown> | null };
      return readSecretStorage(device.machine, transport as unknown as HomeserverTransport, key.recoveryKey);
    };
    const pointer = 'accountData["m.secret_storage.default_key"]';
    await expect(read({})).rejects.toMatchObject({ code: 'SecretStorageCorrupt', field: pointer });
    await expect(read({ 'm.secret_storage.default_key': { key: 42 } })).rejects.toMatchObject({ code: 'SecretStorageCorrupt', field: pointer });
    await expect(read({ 'm.secret_storage.default_key': { key: key.keyId } })).rejects.toMatchObject({
      code: 'SecretStorageCorrupt',
      field: `accountData["m.secret_storage.key.${key.keyId}"]`,
    });
    const described = { 'm.secret_storage.default_key': { key: key.keyId }, [key.eventType]: key.description };
    await expect(read({ ...described, [key.eventType]: { algorithm: 'm.secret_storage.v1.aes-hmac-sha2', iv: 42 } })).rejects.toMatchObject({
      code: 'SecretStorageCorrupt',
    });
    const secrets = await device.machine.exportSecretsForStorage(key);
    const stored = Object.fromEntries(secrets.map((s) => [s.name, JSON.parse(s.content) as unknown]));
    const ok = await read({ ...described, ...stored });
    expect(ok.secrets.map((s) => s.name)).toEqual(['m.cross_signing.master', 'm.cross_signing.self_signing', 'm.cross_signing.user_signing']);
    // A wrong recovery key for that storage is a mismatch, not corruption.
    const other = await SecretStorageKey.create();
    const transport = { getAccountData: async (_u: string, type: string) => (({ ...described, ...stored }) as Record<string, unknown>)[type] ?? null };
    await expect(readSecretStorage(device.machine, transport as unknown as HomeserverTransport, other.recoveryKey)).rejects.toMatchObject({
      code: 'SecretStorageKeyMismatch',
      field: 'recoveryKey',
    });
  });
});
