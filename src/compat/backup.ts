/**
 * Server-side key backup: the backup key pair and the results of backup checks.
 *
 * @module
 */
import { compatBackupDecryptV1, compatBackupKeyRandom, compatBackupPublicKey } from '../../native/index';
import { MatrixCryptoError, nativeSync } from '../errors';
import type { SignatureState } from './enums';

/** The public half of a backup key: room keys are encrypted to it. */
export class MegolmV1BackupKey {
  readonly #publicKeyBase64: string;
  readonly #algorithm: string;

  /** @internal */
  constructor(publicKeyBase64: string, algorithm: string) {
    this.#publicKeyBase64 = publicKeyBase64;
    this.#algorithm = algorithm;
  }

  /** The public key as base64. */
  get publicKeyBase64(): string {
    return this.#publicKeyBase64;
  }

  /** The backup algorithm, `m.megolm_backup.v1.curve25519-aes-sha2`. */
  get algorithm(): string {
    return this.#algorithm;
  }
}

/**
 * The private half of a backup key, the one used for recovery.
 *
 * @example Enable a new backup
 * ```ts
 * const key = BackupDecryptionKey.createRandomKey();
 * // create the backup version on the server with key.megolmV1PublicKey.publicKeyBase64, then:
 * await machine.enableBackupV1(key.megolmV1PublicKey.publicKeyBase64, version);
 * await machine.saveBackupDecryptionKey(key, version);
 * ```
 */
export class BackupDecryptionKey {
  readonly #base64: string;
  readonly #public: MegolmV1BackupKey;

  private constructor(base64: string) {
    const pub = nativeSync(() => compatBackupPublicKey(base64));
    this.#base64 = base64;
    this.#public = new MegolmV1BackupKey(pub.publicKeyBase64, pub.algorithm);
  }

  /** A new random key. */
  static createRandomKey(): BackupDecryptionKey {
    return new BackupDecryptionKey(compatBackupKeyRandom());
  }

  /**
   * A key from its base64 export.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` if it is not a backup key.
   */
  static fromBase64(key: string): BackupDecryptionKey {
    if (typeof key !== 'string') throw new MatrixCryptoError('InvalidArgument', 'key: must be a string', 'key');
    return new BackupDecryptionKey(key);
  }

  /** The key as base64. */
  toBase64(): string {
    return this.#base64;
  }

  /** The public half. */
  get megolmV1PublicKey(): MegolmV1BackupKey {
    return this.#public;
  }

  /**
   * Decrypt a message encrypted to the public half (a backed-up room key's `session_data`).
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` if it does not decrypt with this key.
   */
  decryptV1(ephemeralKey: string, mac: string, ciphertext: string): string {
    return nativeSync(() => compatBackupDecryptV1(this.#base64, ephemeralKey, mac, ciphertext));
  }
}

/** How many room keys the store holds, and how many of them are backed up. */
export class RoomKeyCounts {
  /** Every room key. */
  total: number;
  /** The backed-up ones. */
  backedUp: number;

  /** @internal */
  constructor(total: number, backedUp: number) {
    this.total = total;
    this.backedUp = backedUp;
  }
}

/** The backup key and version saved in the store. */
export class BackupKeys {
  /** The decryption key as base64, if one was saved. */
  decryptionKeyBase64?: string;
  /** The backup version in use, if any. */
  backupVersion?: string;

  /** @internal */
  constructor(decryptionKeyBase64: string | null | undefined, backupVersion: string | null | undefined) {
    if (decryptionKeyBase64 != null) this.decryptionKeyBase64 = decryptionKeyBase64;
    if (backupVersion != null) this.backupVersion = backupVersion;
  }
}

/** Whether a backup version's `auth_data` is signed by us. */
export class SignatureVerification {
  readonly #deviceState: SignatureState;
  readonly #userState: SignatureState;
  readonly #trusted: boolean;

  /** @internal */
  constructor(deviceState: SignatureState, userState: SignatureState, trusted: boolean) {
    this.#deviceState = deviceState;
    this.#userState = userState;
    this.#trusted = trusted;
  }

  /** The signature by our own device. */
  get deviceState(): SignatureState {
    return this.#deviceState;
  }

  /** The signature by our cross-signing identity. */
  get userState(): SignatureState {
    return this.#userState;
  }

  /** Whether a trusted signature exists: our device's, our trusted identity's or a trusted device's of ours. */
  trusted(): boolean {
    return this.#trusted;
  }
}
