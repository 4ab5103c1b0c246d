/**
 * Secret storage (SSSS): the key that encrypts secrets in account data, and the encrypted
 * cross-signing keys.
 *
 * @module
 */
import { CompatSecretStorageKey } from '../../native/index';
import { MatrixCryptoError, nativeSync } from '../errors';

/**
 * A secret storage key. The key material stays in the native addon.
 *
 * @example Store the cross-signing keys in secret storage
 * ```ts
 * const key = SecretStorageKey.createFromPassphrase('correct horse battery staple');
 * await putAccountData(key.eventType(), JSON.parse(key.accountDataContent()));
 * const items = await machine.exportSecretsForSecretStorage(key);
 * await putAccountData('m.cross_signing.master', JSON.parse(items.masterKey));
 * ```
 */
export class SecretStorageKey {
  readonly #inner: CompatSecretStorageKey;

  private constructor(inner: CompatSecretStorageKey) {
    this.#inner = inner;
  }

  /** A new random key. */
  static createRandomKey(): SecretStorageKey {
    return new SecretStorageKey(CompatSecretStorageKey.random());
  }

  /** A new key derived from a passphrase. */
  static createFromPassphrase(passphrase: string): SecretStorageKey {
    return new SecretStorageKey(CompatSecretStorageKey.fromPassphrase(passphrase));
  }

  /**
   * Restore a key from a passphrase or a base58 recovery key, checked against its description
   * from account data (`eventType` is `m.secret_storage.key.<id>`, `content` its JSON).
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` if the input does not match the description.
   */
  static fromAccountData(input: string, eventType: string, content: string): SecretStorageKey {
    return new SecretStorageKey(nativeSync(() => CompatSecretStorageKey.fromAccountData(input, eventType, content)));
  }

  /** The key as a base58 recovery key. */
  toBase58(): string {
    return this.#inner.toBase58();
  }

  /** Encrypt a secret; returns the JSON account-data content to store under `secretName`. */
  encrypt(plaintext: string, secretName: string): string {
    return nativeSync(() => this.#inner.encrypt(plaintext, secretName));
  }

  /**
   * Decrypt a secret from its JSON account-data content.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` if it was not encrypted with this key.
   */
  decrypt(accountDataContentJson: string, secretName: string): string {
    return nativeSync(() => this.#inner.decrypt(accountDataContentJson, secretName));
  }

  /** The key's description for account data, as JSON. */
  accountDataContent(): string {
    return nativeSync(() => this.#inner.accountDataContent());
  }

  /** The key's id. */
  keyId(): string {
    return this.#inner.keyId();
  }

  /** The account-data event type of the key's description, `m.secret_storage.key.<id>`. */
  eventType(): string {
    return this.#inner.eventType();
  }

  /** @internal */
  get native(): CompatSecretStorageKey {
    return this.#inner;
  }
}

const ITEM_NAMES = {
  masterKey: 'm.cross_signing.master',
  userSigningKey: 'm.cross_signing.user_signing',
  selfSigningKey: 'm.cross_signing.self_signing',
} as const;

/** The cross-signing keys as encrypted account-data contents (JSON strings). */
export class SecretStorageItems {
  /** The content for `m.cross_signing.master`. */
  masterKey: string;
  /** The content for `m.cross_signing.user_signing`. */
  userSigningKey: string;
  /** The content for `m.cross_signing.self_signing`. */
  selfSigningKey: string;

  /**
   * From the account-data contents, keyed by secret name (`m.cross_signing.master`,
   * `m.cross_signing.user_signing`, `m.cross_signing.self_signing`) or by this class's field
   * names.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` if one of the three is missing.
   */
  constructor(items: Record<string, string>) {
    const pick = (field: keyof typeof ITEM_NAMES): string => {
      const value = items?.[ITEM_NAMES[field]] ?? items?.[field];
      if (typeof value !== 'string') {
        throw new MatrixCryptoError('InvalidArgument', `items: ${ITEM_NAMES[field]} is missing`, 'items');
      }
      return value;
    };
    this.masterKey = pick('masterKey');
    this.userSigningKey = pick('userSigningKey');
    this.selfSigningKey = pick('selfSigningKey');
  }
}
