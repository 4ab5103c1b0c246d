/**
 * Secret storage (4S, `m.secret_storage.v1.aes-hmac-sha2`): the key that encrypts secrets into
 * account data, and the shapes of the secrets this library stores (the three private
 * cross-signing keys and the `m.megolm_backup.v1` backup key).
 *
 * @module
 */
import { createSecretStorageKey, unlockSecretStorageKey, type NativeSecretStorageKey } from '../../native/index';
import { MatrixCryptoError, native } from '../errors';
import type { CrossSigningStatus } from '../types';
import type { SignatureUploadRequest } from '../requests';

/** The account-data type that names the default secret storage key. */
export const DEFAULT_KEY_EVENT = 'm.secret_storage.default_key';

/** The secrets this library keeps in secret storage, by their names (= account-data types). */
export const SECRET_NAMES = ['m.cross_signing.master', 'm.cross_signing.self_signing', 'm.cross_signing.user_signing', 'm.megolm_backup.v1'] as const;

/** One secret as a global account-data event. */
export interface AccountDataSecret {
  /** The secret's name, which is also its account-data type, e.g. `m.cross_signing.master`. */
  name: string;
  /** The event content, `{ encrypted: { <keyId>: { iv, ciphertext, mac } } }`, as JSON. */
  content: string;
}

/** What {@link OlmMachine.importSecretsFromStorage} did. */
export interface SecretsImport {
  /** Which private cross-signing keys this device holds now. */
  crossSigning: CrossSigningStatus;
  /** The self-signing key's signature of our device, to send; `null` without that key. */
  signatureUpload: SignatureUploadRequest | null;
  /** The backup decryption key, when storage had the key of the backup version given (it is saved in the store). */
  backupDecryptionKey: string | null;
  /** Whether the stored backup key belongs to the backup version given; `null` when either is missing. */
  backupKeyMatches: boolean | null;
}

/**
 * A secret storage key. Its key material stays in the native addon; JavaScript holds a handle,
 * the key id and the recovery key.
 *
 * @example
 * ```ts
 * const key = await SecretStorageKey.create({ passphrase: 'correct horse battery staple' });
 * console.log(key.recoveryKey); // "EsTc 8h2M ..." — show it once, keep it safe
 * ```
 */
export class SecretStorageKey {
  readonly #inner: NativeSecretStorageKey;

  private constructor(inner: NativeSecretStorageKey) {
    this.#inner = inner;
  }

  /**
   * A new key: random, or derived from `passphrase` (PBKDF2-SHA-512, 500,000 rounds, a random
   * salt, run off the JS thread). Either way {@link recoveryKey} unlocks it too.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `passphrase` when it is empty.
   */
  static async create(options: {
    /** Derive the key from this passphrase; default: a random key. */
    passphrase?: string;
  } = {}): Promise<SecretStorageKey> {
    const passphrase = options?.passphrase;
    if (passphrase !== undefined && typeof passphrase !== 'string') {
      throw new MatrixCryptoError('InvalidArgument', 'passphrase: must be a string', 'passphrase');
    }
    return new SecretStorageKey(await native(() => createSecretStorageKey(passphrase)));
  }

  /**
   * Unlock key `keyId` from its account-data description (the content of
   * `m.secret_storage.key.<keyId>`) with a recovery key (whitespace does not matter) or, when
   * the key was made from one, its passphrase.
   *
   * @param inputField - how errors name `input` (default `recoveryKey`).
   * @throws {@link MatrixCryptoError} `SecretStorageKeyMismatch` when `input` does not unlock the
   *   key, `SecretStorageCorrupt` when the description is malformed.
   */
  static async unlock(input: string, keyId: string, description: Record<string, unknown> | string, inputField = 'recoveryKey'): Promise<SecretStorageKey> {
    if (typeof input !== 'string' || input.trim() === '') {
      throw new MatrixCryptoError('InvalidArgument', `${inputField}: must be a non-empty string`, inputField);
    }
    if (typeof keyId !== 'string' || keyId === '') throw new MatrixCryptoError('InvalidArgument', 'keyId: must be a non-empty string', 'keyId');
    const json = typeof description === 'string' ? description : JSON.stringify(description);
    return new SecretStorageKey(await native(() => unlockSecretStorageKey(input, inputField, keyId, json)));
  }

  /** The key's id. */
  get keyId(): string {
    return this.#inner.keyId;
  }

  /** The account-data type of its description: `m.secret_storage.key.<keyId>`. */
  get eventType(): string {
    return this.#inner.eventType;
  }

  /** The recovery key: base58 in groups of four characters, the form Element shows and accepts. */
  get recoveryKey(): string {
    return this.#inner.recoveryKey;
  }

  /** The key's account-data description (`{ algorithm, iv, mac, passphrase? }`), to store under {@link eventType}. */
  get description(): Record<string, unknown> {
    return JSON.parse(this.#inner.description) as Record<string, unknown>;
  }

  /** @internal */
  get native(): NativeSecretStorageKey {
    return this.#inner;
  }
}
