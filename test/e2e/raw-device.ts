/**
 * Test helper: a Matrix device made by hand with node:crypto. It publishes signed device keys and
 * exactly the one-time keys a test asks for (never a fallback key), and reads its to-device
 * events in the clear. It runs no Olm: it is the device whose keys ran out, seen from the wire.
 */
import { createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { HomeserverTransport, type MatrixEvent, type RoomEvent } from '../../src/index';
import type { TestUser } from './synapse';

/** Unpadded standard base64, as Matrix encodes keys and signatures. */
export function b64(buf: Buffer): string {
  return buf.toString('base64').replace(/=+$/, '');
}

/** The 32 raw bytes of an ed25519 or x25519 public key. */
export function rawPublicKey(key: KeyObject): Buffer {
  // SPKI DER of ed25519/x25519 public keys ends with the 32 raw key bytes.
  const der = key.export({ format: 'der', type: 'spki' });
  return der.subarray(der.length - 32);
}

/** Matrix canonical JSON: sorted keys, no whitespace. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const o = value as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(value);
}

/** The ed25519 signature of a JSON object (without `signatures` and `unsigned`). */
export function signJson(obj: Record<string, unknown>, privateKey: KeyObject): string {
  const { signatures: _s, unsigned: _u, ...rest } = obj;
  return b64(sign(null, Buffer.from(canonicalJson(rest)), privateKey));
}

/** Checks a signature made by {@link signJson} against a raw ed25519 public key. */
export function verifyJson(obj: Record<string, unknown>, signature: string, ed25519Raw: Buffer): boolean {
  const { signatures: _s, unsigned: _u, ...rest } = obj;
  const spkiPrefix = Buffer.from('302a300506032b6570032100', 'hex');
  const key = createPublicKey({ key: Buffer.concat([spkiPrefix, ed25519Raw]), format: 'der', type: 'spki' });
  return verify(null, Buffer.from(canonicalJson(rest)), key, Buffer.from(signature, 'base64'));
}

/** A hand-made device of `user` (its registered device id and token). */
export class RawDevice {
  /** A transport with the device's token. */
  readonly transport: HomeserverTransport;
  /** Every to-device event the device received, in order. */
  readonly toDevice: MatrixEvent[] = [];
  /** Every room timeline event the device saw, in order. */
  readonly timeline: RoomEvent[] = [];
  private readonly ed = generateKeyPairSync('ed25519');
  private readonly curve = generateKeyPairSync('x25519');
  private otkCounter = 0;
  private since: string | undefined;

  /** Makes the device's key pairs; nothing is sent until {@link uploadDeviceKeys}. */
  constructor(
    baseUrl: string,
    /** The account and device. */
    readonly user: TestUser,
  ) {
    this.transport = new HomeserverTransport({ baseUrl, accessToken: user.accessToken });
  }

  /** The device's Curve25519 identity key (unpadded base64). */
  get curve25519(): string {
    return b64(rawPublicKey(this.curve.publicKey));
  }

  /** The device's Ed25519 fingerprint key (unpadded base64). */
  get ed25519(): string {
    return b64(rawPublicKey(this.ed.publicKey));
  }

  private signed<T extends Record<string, unknown>>(obj: T): T & { signatures: Record<string, Record<string, string>> } {
    return {
      ...obj,
      signatures: { [this.user.userId]: { [`ed25519:${this.user.deviceId}`]: signJson(obj, this.ed.privateKey) } },
    };
  }

  /** Uploads the signed device keys (Olm and Megolm algorithms) and no one-time key. */
  async uploadDeviceKeys(): Promise<void> {
    const dev = this.user.deviceId;
    const deviceKeys = this.signed({
      user_id: this.user.userId,
      device_id: dev,
      algorithms: ['m.olm.v1.curve25519-aes-sha2', 'm.megolm.v1.aes-sha2'],
      keys: { [`curve25519:${dev}`]: this.curve25519, [`ed25519:${dev}`]: this.ed25519 },
    });
    await this.transport.send({ type: 'keys_upload', id: 'raw-device-keys', body: JSON.stringify({ device_keys: deviceKeys }) });
  }

  /** Uploads `n` new signed one-time keys; resolves with the server's count afterwards. */
  async uploadOneTimeKeys(n: number): Promise<number> {
    const keys: Record<string, unknown> = {};
    for (let i = 0; i < n; i++) {
      const id = `signed_curve25519:RAW${String(++this.otkCounter).padStart(5, '0')}`;
      keys[id] = this.signed({ key: b64(rawPublicKey(generateKeyPairSync('x25519').publicKey)) });
    }
    const res = JSON.parse(
      await this.transport.send({ type: 'keys_upload', id: 'raw-otks', body: JSON.stringify({ one_time_keys: keys }) }),
    ) as { one_time_key_counts: Record<string, number> };
    return res.one_time_key_counts.signed_curve25519 ?? 0;
  }

  /** One sync (short poll); collects to-device and timeline events. */
  async sync(timeoutMs = 0): Promise<void> {
    const s = await this.transport.sync({ timeoutMs, ...(this.since !== undefined ? { since: this.since } : {}) });
    this.since = s.next_batch;
    this.toDevice.push(...(s.to_device?.events ?? []));
    for (const room of Object.values(s.rooms?.join ?? {})) this.timeline.push(...(room.timeline?.events ?? []));
  }

  /** The `m.room_key.withheld` notices received so far. */
  withheldNotices(): MatrixEvent[] {
    return this.toDevice.filter((e) => e.type === 'm.room_key.withheld');
  }
}
