/**
 * Encrypted media (attachments): AES-CTR with a SHA-256 hash, the Matrix `v2` format.
 *
 * @module
 */
import { compatAttachmentDecrypt, compatAttachmentEncrypt } from '../../native/index';
import { MatrixCryptoError, nativeSync } from '../errors';

/** An encrypted file and the information needed to decrypt it once. */
export class EncryptedAttachment {
  /** The encrypted bytes. */
  encryptedData: Uint8Array;
  #info: string | null;

  /**
   * From encrypted bytes and the JSON media encryption info (the `file` object of an encrypted
   * media event, without `url`).
   */
  constructor(encryptedData: Uint8Array, mediaEncryptionInfo: string) {
    if (!(encryptedData instanceof Uint8Array)) {
      throw new MatrixCryptoError('InvalidArgument', 'encryptedData: must be a Uint8Array', 'encryptedData');
    }
    if (typeof mediaEncryptionInfo !== 'string') {
      throw new MatrixCryptoError('InvalidArgument', 'mediaEncryptionInfo: must be a JSON string', 'mediaEncryptionInfo');
    }
    this.encryptedData = encryptedData;
    this.#info = mediaEncryptionInfo;
  }

  /** The media encryption info as JSON, or `null` once {@link Attachment.decrypt} consumed it. */
  get mediaEncryptionInfo(): string | null {
    return this.#info;
  }

  /** Whether {@link Attachment.decrypt} consumed the media encryption info. */
  get hasMediaEncryptionInfoBeenConsumed(): boolean {
    return this.#info === null;
  }

  /** Hand out the info once. @internal */
  consumeInfo(): string {
    if (this.#info === null) {
      throw new MatrixCryptoError('InvalidArgument', 'attachment: its media encryption info was already consumed', 'attachment');
    }
    const info = this.#info;
    this.#info = null;
    return info;
  }
}

/**
 * Encrypt and decrypt files for encrypted rooms.
 *
 * @example
 * ```ts
 * const encrypted = Attachment.encrypt(fileBytes);
 * const mxc = await upload(encrypted.encryptedData);
 * const file = { ...JSON.parse(encrypted.mediaEncryptionInfo!), url: mxc };
 * ```
 */
export class Attachment {
  private constructor() {}

  /** Encrypt bytes with a new random key. */
  static encrypt(array: Uint8Array): EncryptedAttachment {
    const out = nativeSync(() => compatAttachmentEncrypt(Buffer.from(array.buffer, array.byteOffset, array.byteLength)));
    return new EncryptedAttachment(new Uint8Array(out.data), out.mediaEncryptionInfo);
  }

  /**
   * Decrypt an attachment, checking its hash. Consumes the attachment's media encryption info:
   * an attachment decrypts once.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` if the bytes or the info do not match.
   */
  static decrypt(attachment: EncryptedAttachment): Uint8Array {
    const info = attachment.consumeInfo();
    const data = attachment.encryptedData;
    return new Uint8Array(nativeSync(() => compatAttachmentDecrypt(Buffer.from(data.buffer, data.byteOffset, data.byteLength), info)));
  }
}
