/**
 * Recovery: secret storage set up and read back over a {@link HomeserverTransport}.
 *
 * {@link setUpRecovery} creates a secret storage key, makes it the account's default and stores
 * our cross-signing keys and the backup key in it (creating a server-side key backup when the
 * account has none). {@link recover} is the other end, for a new device or a bot that lost its
 * store: from the recovery key (or passphrase) it fetches the secrets, imports the
 * cross-signing keys, signs our device, enables the backup and restores the room keys.
 *
 * @module
 */
import { MatrixCryptoError } from '../errors';
import type { OlmMachine } from '../machine';
import type { ProgressCallback } from '../progress';
import type { OutgoingRequest } from '../requests';
import type { HomeserverTransport, BackupVersionInfo } from '../transport';
import type { BackupImportResult, CrossSigningStatus } from '../types';
import { DEFAULT_KEY_EVENT, SECRET_NAMES, SecretStorageKey, type AccountDataSecret } from './secret-storage';

/** The backup algorithm this library backs up to and restores from. */
const BACKUP_ALGORITHM = 'm.megolm_backup.v1.curve25519-aes-sha2';

/** Options of {@link setUpRecovery}. */
export interface RecoverySetupOptions {
  /** Derive the secret storage key from this passphrase; default: a random key (use the recovery key). */
  passphrase?: string;
  /**
   * Store the backup key too (default `true`): the one saved in the store when it belongs to
   * the account's current backup version (that backup is enabled); when the account has no
   * backup, a new backup version is created and enabled. A backup version whose key this
   * device does not hold is left alone, and no backup key is stored.
   */
  backup?: boolean;
}

/** What {@link setUpRecovery} returns. */
export interface RecoverySetup {
  /** The recovery key (base58). Show it to the bot's owner once; it unlocks everything stored. */
  recoveryKey: string;
  /** The id of the new default secret storage key. */
  keyId: string;
  /** The names of the secrets stored, e.g. `m.cross_signing.master`, `m.megolm_backup.v1`. */
  stored: string[];
  /** The backup version whose key was stored, or `null`. */
  backupVersion: string | null;
}

/** Options of {@link recover}. */
export interface RecoverOptions {
  /** Reports `(done, total)` while backed-up room keys are imported. */
  onProgress?: ProgressCallback;
  /** Restore the room keys from the backup (default `true`); `false` only enables the backup. */
  restoreBackup?: boolean;
}

/** What {@link recover} did. */
export interface RecoveryResult {
  /** Which private cross-signing keys this device holds now. */
  crossSigning: CrossSigningStatus;
  /** Our device was signed with the recovered self-signing key (and the signature uploaded). */
  signedDevice: boolean;
  /** The backup version now enabled, or `null` (no backup, or secret storage has not its key). */
  backupVersion: string | null;
  /** The restore from the backup, or `null` when nothing was restored. */
  restored: BackupImportResult | null;
}

async function sendAndMark(machine: OlmMachine, transport: HomeserverTransport, request: OutgoingRequest): Promise<void> {
  await machine.markRequestAsSent(request, await transport.send(request));
}

/** The current backup version when it is one this library can use. */
async function currentBackup(transport: HomeserverTransport): Promise<(BackupVersionInfo & { auth_data: { public_key: string } }) | null> {
  const info = await transport.getBackupVersion();
  if (!info || info.algorithm !== BACKUP_ALGORITHM || typeof info.auth_data?.public_key !== 'string') return null;
  return info as BackupVersionInfo & { auth_data: { public_key: string } };
}

/**
 * Creates a secret storage key, makes it the default, and stores our cross-signing keys (and
 * the backup key, see {@link RecoverySetupOptions.backup}) in account data. This device must
 * hold the cross-signing keys (after {@link setUpCrossSigning}).
 *
 * @throws {@link MatrixCryptoError} `CrossSigningKeyMissing` when it does not.
 */
export async function setUpRecovery(machine: OlmMachine, transport: HomeserverTransport, options: RecoverySetupOptions = {}): Promise<RecoverySetup> {
  const status = await machine.crossSigningStatus();
  if (!(status.hasMaster && status.hasSelfSigning && status.hasUserSigning)) {
    throw new MatrixCryptoError('CrossSigningKeyMissing', 'this device does not hold our cross-signing keys: set up cross-signing first');
  }
  let backupVersion: string | null = null;
  let backupKey: string | undefined;
  if (options.backup ?? true) {
    const current = await currentBackup(transport);
    const saved = await machine.savedBackupDecryptionKey();
    if (current && saved && saved.version === current.version) {
      backupVersion = current.version;
      backupKey = saved.decryptionKey;
      if ((await machine.backupVersion()) !== current.version) {
        await machine.enableBackup({ publicKey: current.auth_data.public_key, version: current.version });
      }
    } else if (!(await transport.getBackupVersion())) {
      const key = await machine.createBackupKey();
      backupVersion = await transport.createBackupVersion(key.versionBody);
      await machine.saveBackupDecryptionKey(key.decryptionKey, backupVersion);
      await machine.enableBackup({ publicKey: key.publicKey, version: backupVersion });
      backupKey = key.decryptionKey;
    }
  }
  const key = await SecretStorageKey.create(options.passphrase === undefined ? {} : { passphrase: options.passphrase });
  const secrets = await machine.exportSecretsForStorage(key, backupKey);
  const stored = backupKey === undefined ? secrets.filter((s) => s.name !== 'm.megolm_backup.v1') : secrets;
  // The key's description first, the secrets next, the default pointer last: a reader that
  // follows the pointer finds everything in place.
  await transport.setAccountData(machine.userId, key.eventType, key.description);
  for (const s of stored) await transport.setAccountData(machine.userId, s.name, s.content);
  await transport.setAccountData(machine.userId, DEFAULT_KEY_EVENT, { key: key.keyId });
  return { recoveryKey: key.recoveryKey, keyId: key.keyId, stored: stored.map((s) => s.name), backupVersion };
}

/**
 * Unlocks the account's default secret storage key with `recoveryKey` (a recovery key or the
 * passphrase it was made from) and reads the stored secrets, without changing anything.
 *
 * @throws {@link MatrixCryptoError} `SecretStorageKeyMismatch` when `recoveryKey` does not unlock
 *   the key; `SecretStorageCorrupt` naming the account-data event that is missing or malformed.
 */
export async function readSecretStorage(
  machine: OlmMachine,
  transport: HomeserverTransport,
  recoveryKey: string,
  field = 'recoveryKey',
): Promise<{
  /** The unlocked key. */
  key: SecretStorageKey;
  /** The secrets found (encrypted, as stored). */
  secrets: AccountDataSecret[];
}> {
  const pointer = await transport.getAccountData(machine.userId, DEFAULT_KEY_EVENT);
  if (!pointer) {
    throw new MatrixCryptoError('SecretStorageCorrupt', `accountData["${DEFAULT_KEY_EVENT}"]: the account has no default secret storage key`, `accountData["${DEFAULT_KEY_EVENT}"]`);
  }
  if (typeof pointer.key !== 'string' || pointer.key === '') {
    throw new MatrixCryptoError('SecretStorageCorrupt', `accountData["${DEFAULT_KEY_EVENT}"]: key must be a non-empty string`, `accountData["${DEFAULT_KEY_EVENT}"]`);
  }
  const keyId = pointer.key;
  const description = await transport.getAccountData(machine.userId, `m.secret_storage.key.${keyId}`);
  if (!description) {
    const f = `accountData["m.secret_storage.key.${keyId}"]`;
    throw new MatrixCryptoError('SecretStorageCorrupt', `${f}: the default key's description is missing`, f);
  }
  const key = await SecretStorageKey.unlock(recoveryKey, keyId, description, field);
  const secrets: AccountDataSecret[] = [];
  for (const name of SECRET_NAMES) {
    const content = await transport.getAccountData(machine.userId, name);
    if (content) secrets.push({ name, content: JSON.stringify(content) });
  }
  return { key, secrets };
}

/**
 * Recovers this device's trust from secret storage: imports the cross-signing keys (checked
 * against our published identity), signs our device, enables the account's backup when
 * storage holds its key, and restores the backed-up room keys (with their withheld records).
 * Every secret is checked before anything changes. Keys this device already holds (older
 * cross-signing keys, the key of an older backup) are replaced by the ones in storage.
 *
 * @throws {@link MatrixCryptoError} `SecretStorageKeyMismatch` (wrong recovery key or passphrase;
 *   nothing changed), `SecretStorageCorrupt` (malformed or foreign account data, or cross-signing
 *   keys that are not the published identity's because storage is older than the identity; the
 *   field names the event; nothing changed).
 */
export async function recover(
  machine: OlmMachine,
  transport: HomeserverTransport,
  recoveryKey: string,
  options: RecoverOptions = {},
  field = 'recoveryKey',
): Promise<RecoveryResult> {
  const { key, secrets } = await readSecretStorage(machine, transport, recoveryKey, field);
  // Our published identity must be known before the keys can be checked against it, and known
  // as it is now: the store's view is old when the identity was replaced from another device.
  for (let round = 0; round < 10; round++) {
    const requests = await machine.outgoingRequests();
    if (requests.length === 0) break;
    for (const r of requests) await sendAndMark(machine, transport, r);
  }
  await sendAndMark(machine, transport, machine.queryOwnKeys());
  const backup = await currentBackup(transport);
  const imported = await machine.importSecretsFromStorage(
    key,
    secrets,
    backup ? { version: backup.version, publicKey: backup.auth_data.public_key } : undefined,
  );
  if (imported.signatureUpload) {
    await sendAndMark(machine, transport, imported.signatureUpload);
    await sendAndMark(machine, transport, machine.queryOwnKeys());
  }
  let backupVersion: string | null = null;
  let restored: BackupImportResult | null = null;
  if (backup && imported.backupDecryptionKey) {
    backupVersion = backup.version;
    // Another version enabled (an old backup this device used): forget which keys went there,
    // so that every key is uploaded to the current one.
    const enabled = await machine.backupVersion();
    if (enabled !== null && enabled !== backup.version) await machine.disableBackup();
    await machine.enableBackup({ publicKey: backup.auth_data.public_key, version: backup.version });
    if (options.restoreBackup ?? true) {
      const keys = await transport.getBackupKeys(backup.version);
      restored = await machine.importBackedUpRoomKeys(keys, imported.backupDecryptionKey, backup.version, options.onProgress ? { onProgress: options.onProgress } : {});
    }
  }
  return { crossSigning: imported.crossSigning, signedDevice: imported.signatureUpload !== null, backupVersion, restored };
}

/**
 * Enables the account's backup when the store holds the current backup version's key (saved
 * by {@link setUpRecovery} or {@link recover}); backup is not persisted across opens.
 *
 * @returns the enabled version, or `null`.
 */
export async function resumeBackup(machine: OlmMachine, transport: HomeserverTransport): Promise<string | null> {
  const saved = await machine.savedBackupDecryptionKey();
  if (!saved) return null;
  const current = await currentBackup(transport);
  if (!current || current.version !== saved.version) return null;
  await machine.enableBackup({ publicKey: current.auth_data.public_key, version: current.version });
  return current.version;
}
