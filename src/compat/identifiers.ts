/**
 * Matrix identifiers as classes, parsed and validated the way ruma (and so the official
 * bindings) does it.
 *
 * @module
 */
import {
  compatParseDeviceKeyId,
  compatParseRoomId,
  compatParseServerName,
  compatParseUserId,
  type CompatServerNameParts,
  type CompatUserIdParts,
} from '../../native/index';
import { MatrixCryptoError, nativeSync } from '../errors';
import { DeviceKeyAlgorithmName } from './enums';

/** A string argument, or `InvalidArgument` naming `field`. @internal */
export function requireString(field: string, value: unknown): string {
  if (typeof value !== 'string') {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be a string, got ${typeof value}`, field);
  }
  return value;
}

/**
 * A Matrix user ID, e.g. `@alice:example.org`.
 *
 * @throws {@link MatrixCryptoError} `InvalidArgument` from the constructor for a malformed id.
 */
export class UserId {
  readonly #id: string;
  readonly #parts: CompatUserIdParts;

  /** Parse and validate a user id. */
  constructor(id: string) {
    this.#id = requireString('userId', id);
    this.#parts = nativeSync(() => compatParseUserId(id));
  }

  /** The part before the colon, without the `@`. */
  get localpart(): string {
    return this.#parts.localpart;
  }

  /** The server part. */
  get serverName(): ServerName {
    return new ServerName(this.#parts.serverName);
  }

  /** Whether the id uses characters only historical ids may contain. */
  isHistorical(): boolean {
    return this.#parts.isHistorical;
  }

  /** The id as a string. */
  toString(): string {
    return this.#id;
  }
}

/** A Matrix device ID: opaque, any string. */
export class DeviceId {
  readonly #id: string;

  /** Wrap a device id. */
  constructor(id: string) {
    this.#id = requireString('deviceId', id);
  }

  /** The id as a string. */
  toString(): string {
    return this.#id;
  }
}

/** The algorithm of a device key, e.g. `ed25519`. */
export class DeviceKeyAlgorithm {
  readonly #name: string;
  readonly #known: DeviceKeyAlgorithmName;

  /** @internal */
  constructor(name: string, known: DeviceKeyAlgorithmName) {
    this.#name = name;
    this.#known = known;
  }

  /** The algorithm, or `Unknown` (then see {@link toString}). */
  get name(): DeviceKeyAlgorithmName {
    return this.#known;
  }

  /** The algorithm's name as it appears in key ids. */
  toString(): string {
    return this.#name;
  }
}

/** A device key id: an algorithm and a device id joined by `:`, e.g. `ed25519:BOTDEVICE`. */
export class DeviceKeyId {
  readonly #id: string;
  readonly #algorithm: DeviceKeyAlgorithm;
  readonly #deviceId: DeviceId;

  /**
   * Parse and validate a device key id.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` for a malformed id.
   */
  constructor(id: string) {
    this.#id = requireString('deviceKeyId', id);
    const parts = nativeSync(() => compatParseDeviceKeyId(id));
    this.#algorithm = new DeviceKeyAlgorithm(parts.algorithm, parts.algorithmName);
    this.#deviceId = new DeviceId(parts.deviceId);
  }

  /** The key's algorithm. */
  get algorithm(): DeviceKeyAlgorithm {
    return this.#algorithm;
  }

  /** The device the key belongs to. */
  get deviceId(): DeviceId {
    return this.#deviceId;
  }

  /** The id as a string. */
  toString(): string {
    return this.#id;
  }
}

/** A Matrix room ID, e.g. `!abc:example.org`. */
export class RoomId {
  readonly #id: string;

  /**
   * Parse and validate a room id.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` for a malformed id.
   */
  constructor(id: string) {
    this.#id = requireString('roomId', id);
    nativeSync(() => compatParseRoomId(id));
  }

  /** The id as a string. */
  toString(): string {
    return this.#id;
  }
}

/** A server name: a host and an optional port. */
export class ServerName {
  readonly #parts: CompatServerNameParts;

  /**
   * Parse and validate a server name.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` for a malformed name.
   */
  constructor(name: string) {
    requireString('serverName', name);
    this.#parts = nativeSync(() => compatParseServerName(name));
  }

  /** The host: the server name without its port. */
  get host(): string {
    return this.#parts.host;
  }

  /** The port, if the name has one. */
  get port(): number | null {
    return this.#parts.port ?? null;
  }

  /** Whether the host is an IPv4 or IPv6 address. */
  isIpLiteral(): boolean {
    return this.#parts.isIpLiteral;
  }
}

/** The string of a `UserId` (or a plain string), checked. @internal */
export function idString(field: string, value: unknown): string {
  if (value instanceof UserId || value instanceof DeviceId || value instanceof RoomId) return value.toString();
  return requireString(field, value);
}
