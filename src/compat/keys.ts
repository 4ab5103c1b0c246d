/**
 * Public keys and signatures as classes.
 *
 * @module
 */
import { MatrixCryptoError } from '../errors';
import { idString, type DeviceKeyId, type UserId } from './identifiers';

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Decode (padded or unpadded) standard base64 strictly: no stray characters. */
function decodeBase64(field: string, value: unknown): Buffer {
  if (typeof value !== 'string' || !BASE64.test(value) || value.replace(/=+$/, '').length % 4 === 1) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: not valid base64`, field);
  }
  return Buffer.from(value, 'base64');
}

function unpadded(bytes: Buffer): string {
  return bytes.toString('base64').replace(/=+$/, '');
}

/** An Ed25519 public key, used to verify signatures. */
export class Ed25519PublicKey {
  readonly #base64: string;

  /** @internal */
  constructor(base64: string) {
    this.#base64 = base64;
  }

  /** The number of bytes of an Ed25519 public key: 32. */
  get length(): number {
    return 32;
  }

  /** The key as unpadded base64. */
  toBase64(): string {
    return this.#base64;
  }
}

/** A Curve25519 public key, used to establish shared secrets. */
export class Curve25519PublicKey {
  readonly #base64: string;

  /** @internal */
  constructor(base64: string) {
    this.#base64 = base64;
  }

  /** The number of bytes of a Curve25519 public key: 32. */
  get length(): number {
    return 32;
  }

  /** The key as unpadded base64. */
  toBase64(): string {
    return this.#base64;
  }
}

/** The two public identity keys of a device. */
export class IdentityKeys {
  /** The Ed25519 key, used for signing. */
  readonly ed25519: Ed25519PublicKey;
  /** The Curve25519 key, used to establish Olm sessions. */
  readonly curve25519: Curve25519PublicKey;

  /** @internal */
  constructor(keys: { ed25519: string; curve25519: string }) {
    this.ed25519 = new Ed25519PublicKey(keys.ed25519);
    this.curve25519 = new Curve25519PublicKey(keys.curve25519);
  }
}

/** An Ed25519 signature. */
export class Ed25519Signature {
  readonly #bytes: Buffer;

  /**
   * Parse a signature from (unpadded) base64.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` unless it decodes to 64 bytes.
   */
  constructor(signature: string) {
    const bytes = decodeBase64('signature', signature);
    if (bytes.length !== 64) {
      throw new MatrixCryptoError('InvalidArgument', `signature: an Ed25519 signature has 64 bytes, got ${bytes.length}`, 'signature');
    }
    this.#bytes = bytes;
  }

  /** The signature as unpadded base64. */
  toBase64(): string {
    return unpadded(this.#bytes);
  }
}

/** A decoded signature: Ed25519, or of another algorithm (kept as its string). */
export class Signature {
  readonly #ed25519: Ed25519Signature | null;
  readonly #text: string;

  /** @internal */
  constructor(ed25519: Ed25519Signature | null, text: string) {
    this.#ed25519 = ed25519;
    this.#text = text;
  }

  /** The Ed25519 signature, if this is one. */
  get ed25519(): Ed25519Signature | null {
    return this.#ed25519;
  }

  /** The signature as base64. */
  toBase64(): string {
    return this.#text;
  }
}

/** A signature that decoded, or the string that claimed to be one and did not. */
export class MaybeSignature {
  readonly #signature: Signature | null;
  readonly #source: string | null;

  /** @internal */
  constructor(signature: Signature | null, source: string | null) {
    this.#signature = signature;
    this.#source = source;
  }

  /** Whether the signature decoded. */
  get isValid(): boolean {
    return this.#signature !== null;
  }

  /** Whether the signature could not be decoded. */
  get isInvalid(): boolean {
    return this.#signature === null;
  }

  /** The signature, if it decoded. */
  get signature(): Signature | null {
    return this.#signature;
  }

  /** The string that did not decode, if any. */
  get invalidSignatureSource(): string | null {
    return this.#source;
  }

  /** @internal */
  static decode(keyId: string, value: string): MaybeSignature {
    if (!keyId.startsWith('ed25519:')) return new MaybeSignature(new Signature(null, value), null);
    try {
      const ed = new Ed25519Signature(value);
      return new MaybeSignature(new Signature(ed, ed.toBase64()), null);
    } catch {
      return new MaybeSignature(null, value);
    }
  }

  /** The string to serialise: the signature, or the undecodable source. @internal */
  get text(): string {
    return this.#signature ? this.#signature.toBase64() : (this.#source as string);
  }
}

/** Signatures by signer (user id) and key id, e.g. from {@link OlmMachine.sign}. */
export class Signatures {
  readonly #map = new Map<string, Map<string, MaybeSignature>>();

  /** An empty collection. */
  constructor() {}

  /** @internal */
  static fromJSON(json: string): Signatures {
    const out = new Signatures();
    const parsed = JSON.parse(json) as Record<string, Record<string, string>>;
    for (const [user, keys] of Object.entries(parsed)) {
      const inner = new Map<string, MaybeSignature>();
      for (const [keyId, value] of Object.entries(keys)) inner.set(keyId, MaybeSignature.decode(keyId, value));
      out.#map.set(user, inner);
    }
    return out;
  }

  /** Add a signature; returns the one it replaced, if any. */
  addSignature(signer: UserId, keyId: DeviceKeyId, signature: Ed25519Signature): MaybeSignature | null {
    const user = idString('signer', signer);
    let inner = this.#map.get(user);
    if (!inner) this.#map.set(user, (inner = new Map()));
    const key = keyId.toString();
    const previous = inner.get(key) ?? null;
    inner.set(key, new MaybeSignature(new Signature(signature, signature.toBase64()), null));
    return previous;
  }

  /** The Ed25519 signature of `signer` with `keyId`, if there is a valid one. */
  getSignature(signer: UserId, keyId: DeviceKeyId): Ed25519Signature | null {
    return this.#map.get(idString('signer', signer))?.get(keyId.toString())?.signature?.ed25519 ?? null;
  }

  /** All signatures of `signer`, by key id, or `null` if it has none. */
  get(signer: UserId): Record<string, MaybeSignature> | null {
    const inner = this.#map.get(idString('signer', signer));
    return inner ? Object.fromEntries(inner) : null;
  }

  /** Remove every signature. */
  clear(): void {
    this.#map.clear();
  }

  /** Whether there is no signature at all. */
  get isEmpty(): boolean {
    return this.count === 0n;
  }

  /** How many signatures, over all signers. */
  get count(): bigint {
    let n = 0;
    for (const inner of this.#map.values()) n += inner.size;
    return BigInt(n);
  }

  /** The signatures as JSON, `{ user: { key id: signature } }`, as in a signed object. */
  asJSON(): string {
    const out: Record<string, Record<string, string>> = {};
    for (const [user, inner] of this.#map) {
      out[user] = {};
      for (const [keyId, sig] of inner) out[user][keyId] = sig.text;
    }
    return JSON.stringify(out);
  }
}
