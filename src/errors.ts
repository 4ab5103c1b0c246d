import type { WithheldExplanation } from './withheld';

/**
 * Typed errors. Every rejection from this library is a {@link MatrixCryptoError} with a stable
 * `code`; decryption failures are {@link DecryptionError}s that say why.
 *
 * @module
 */

/** Stable codes of {@link MatrixCryptoError}. */
export type ErrorCode =
  /** An argument was malformed; `field` names it. */
  | 'InvalidArgument'
  /** The machine was closed; open it again. */
  | 'MachineClosed'
  /** The crypto store failed. */
  | 'StoreError'
  /** The store passphrase is wrong, or the store is not encrypted with one. */
  | 'StorePassphrase'
  /** Another machine or process holds the store. */
  | 'StoreLocked'
  /** The store belongs to another user or device id. */
  | 'StoreMismatchedAccount'
  /** Encrypting failed, e.g. no room key was shared for the room yet. */
  | 'EncryptionError'
  /** A failure inside the library that is not the caller's input. */
  | 'InternalError'
  /**
   * A cross-signing operation needs a private key this device does not hold: bootstrap
   * cross-signing, or recover the keys from secret storage.
   */
  | 'CrossSigningKeyMissing'
  /** The recovery key or passphrase does not unlock the secret storage key; nothing was changed. */
  | 'SecretStorageKeyMismatch'
  /** Secret storage in account data is malformed or does not authenticate; `field` names the event. */
  | 'SecretStorageCorrupt';

/** Why a room event could not be decrypted: the `code` of a {@link DecryptionError}. */
export type DecryptionErrorCode =
  /** We have no room key for the event's session. */
  | 'MissingRoomKey'
  /** We have the session, but only from a later message index. */
  | 'UnknownMessageIndex'
  /** The event is not a well-formed `m.room.encrypted` event. */
  | 'MalformedEvent'
  /** The ciphertext did not authenticate or decrypt. */
  | 'DecryptionFailed'
  /** The session's keys do not match the device that claims to have sent it. */
  | 'MismatchedIdentityKeys'
  /** The decrypted event names a different sender than the encrypted one. */
  | 'MismatchedSender'
  /** The sender's device is not trusted enough for the configured requirement. */
  | 'SenderIdentityNotTrusted'
  /** The crypto store failed while decrypting. */
  | 'StoreError';

// Exactly the members of each union (tsc rejects a missing or an extra key): the lists that
// test/errors.test.ts compares with the Rust enums `ErrorCode` and `DecryptionCode` of
// native/src/errors.rs, so the unions cannot drift from the codes the addon produces.
const ERROR_CODES: { readonly [K in ErrorCode]: true } = {
  InvalidArgument: true,
  MachineClosed: true,
  StoreError: true,
  StorePassphrase: true,
  StoreLocked: true,
  StoreMismatchedAccount: true,
  EncryptionError: true,
  InternalError: true,
  CrossSigningKeyMissing: true,
  SecretStorageKeyMismatch: true,
  SecretStorageCorrupt: true,
};
const DECRYPTION_ERROR_CODES: { readonly [K in DecryptionErrorCode]: true } = {
  MissingRoomKey: true,
  UnknownMessageIndex: true,
  MalformedEvent: true,
  DecryptionFailed: true,
  MismatchedIdentityKeys: true,
  MismatchedSender: true,
  SenderIdentityNotTrusted: true,
  StoreError: true,
};

/** Every {@link ErrorCode} and {@link DecryptionErrorCode}, for the test that ties them to Rust. @internal */
export const codeLists = { errorCodes: Object.keys(ERROR_CODES), decryptionErrorCodes: Object.keys(DECRYPTION_ERROR_CODES) };

/** Base class of every error this library throws. */
export class MatrixCryptoError extends Error {
  /** Stable machine-readable code; safe to switch on. */
  readonly code: ErrorCode | DecryptionErrorCode;
  /** For `InvalidArgument` and store errors: the argument or option at fault (e.g. `store.path`). */
  readonly field?: string;

  /** @internal */
  constructor(code: ErrorCode | DecryptionErrorCode, message: string, field?: string) {
    super(message);
    this.name = 'MatrixCryptoError';
    this.code = code;
    if (field !== undefined) this.field = field;
  }
}

/**
 * A room event that could not be decrypted, with the reason as a stable `code` and, when a
 * withheld notice explains it, that notice.
 *
 * @example
 * ```ts
 * try {
 *   await machine.decryptRoomEvent(event, roomId);
 * } catch (err) {
 *   if (err instanceof DecryptionError && err.withheld) {
 *     console.log(`withheld (${err.withheld.scope}): ${err.withheld.code} ${err.withheld.reason ?? ''}`);
 *   }
 * }
 * ```
 */
export class DecryptionError extends MatrixCryptoError {
  declare readonly code: DecryptionErrorCode;
  /** The Megolm session id of the event, when the event names one. */
  readonly sessionId: string | null;
  /**
   * The withheld notice that explains the failure, validated against the session's creator;
   * `null` when none does (e.g. the key simply has not arrived yet).
   */
  readonly withheld: WithheldExplanation | null;

  /** @internal */
  constructor(code: DecryptionErrorCode, message: string, sessionId: string | null, withheld: WithheldExplanation | null) {
    super(code, message);
    this.name = 'DecryptionError';
    this.sessionId = sessionId;
    this.withheld = withheld;
  }

  /** Shorthand for `withheld?.code`. */
  get withheldCode(): string | null {
    return this.withheld?.code ?? null;
  }
}

const TAG = '\u0001mcn-error:';

interface NativePayload {
  code: string;
  message: string;
  details: null | {
    field?: string;
    decryptionCode?: DecryptionErrorCode;
    sessionId?: string | null;
    withheld?: WithheldExplanation | null;
  };
}

/** Turn whatever the native addon threw into a typed error. @internal */
export function toTypedError(err: unknown): MatrixCryptoError {
  if (err instanceof MatrixCryptoError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const at = message.indexOf(TAG);
  if (at === -1) {
    return new MatrixCryptoError('InternalError', message);
  }
  let payload: NativePayload;
  try {
    payload = JSON.parse(message.slice(at + TAG.length)) as NativePayload;
  } catch {
    return new MatrixCryptoError('InternalError', message);
  }
  const details = payload.details ?? {};
  if (payload.code === 'DecryptionError' && details.decryptionCode) {
    return new DecryptionError(details.decryptionCode, payload.message, details.sessionId ?? null, details.withheld ?? null);
  }
  return new MatrixCryptoError(payload.code as ErrorCode, payload.message, details.field);
}

/** Run a native call and convert its failure into a typed error. @internal */
export async function native<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw toTypedError(err);
  }
}

/** The synchronous variant of {@link native}. @internal */
export function nativeSync<T>(call: () => T): T {
  try {
    return call();
  } catch (err) {
    throw toTypedError(err);
  }
}
