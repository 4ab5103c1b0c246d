import type { DecryptionCode, ErrorCode as NativeErrorCode } from '../native/index';
export type { DecryptionCode as DecryptionErrorCode } from '../native/index';
import type { WithheldExplanation } from './withheld';

/**
 * Typed errors. Every rejection from this library is a {@link MatrixCryptoError} with a stable
 * `code`; decryption failures are {@link DecryptionError}s that say why.
 *
 * @module
 */

/**
 * Stable codes of {@link MatrixCryptoError}: the Rust enum `ErrorCode` of native/src/errors.rs
 * (each code documented there), as napi-rs generated it, less `DecryptionError` (whose errors
 * are {@link DecryptionError}s with a {@link DecryptionErrorCode}). `InvalidArgument` names the
 * bad value in `field`.
 */
export type ErrorCode = Exclude<NativeErrorCode, 'DecryptionError'>;

// Exactly the members of each generated union (tsc rejects a missing or an extra key), as
// values: the metrics' label sets are built from them.
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
const DECRYPTION_ERROR_CODES: { readonly [K in DecryptionCode]: true } = {
  MissingRoomKey: true,
  UnknownMessageIndex: true,
  MalformedEvent: true,
  DecryptionFailed: true,
  MismatchedIdentityKeys: true,
  MismatchedSender: true,
  SenderIdentityNotTrusted: true,
  StoreError: true,
};

/** Every {@link ErrorCode} and {@link DecryptionErrorCode}, as values. @internal */
export const codeLists = { errorCodes: Object.keys(ERROR_CODES), decryptionErrorCodes: Object.keys(DECRYPTION_ERROR_CODES) };

/** Base class of every error this library throws. */
export class MatrixCryptoError extends Error {
  /** Stable machine-readable code; safe to switch on. */
  readonly code: ErrorCode | DecryptionCode;
  /** For `InvalidArgument` and store errors: the argument or option at fault (e.g. `store.path`). */
  readonly field?: string;

  /** @internal */
  constructor(code: ErrorCode | DecryptionCode, message: string, field?: string) {
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
  declare readonly code: DecryptionCode;
  /** The Megolm session id of the event, when the event names one. */
  readonly sessionId: string | null;
  /**
   * The withheld notice that explains the failure, validated against the session's creator;
   * `null` when none does (e.g. the key simply has not arrived yet).
   */
  readonly withheld: WithheldExplanation | null;

  /** @internal */
  constructor(code: DecryptionCode, message: string, sessionId: string | null, withheld: WithheldExplanation | null) {
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
    decryptionCode?: DecryptionCode;
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
