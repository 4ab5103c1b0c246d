/**
 * Errors of the appservice layer.
 *
 * @module
 */

/** Stable codes of {@link AppserviceError}. */
export type AppserviceErrorCode =
  /**
   * The homeserver does not let the appservice create devices for its users (MSC4190): it
   * answered `PUT /_matrix/client/v3/devices/{deviceId}` with "not found" or "unrecognised".
   */
  | 'DeviceManagementUnsupported'
  /**
   * The device of a bridged user could not be cross-signed: the homeserver demands
   * user-interactive auth to publish the user's cross-signing keys (Synapse waives it for
   * appservices), or it did not keep the device's signature.
   */
  | 'CrossSigningFailed'
  /** The user is neither the appservice's sender nor in its user namespace. */
  | 'NotInNamespace'
  /**
   * Part of a transaction failed (a store error, the homeserver refusing an upload, ...). Answer
   * the homeserver with an error status (the HTTP helper answers 500) so that it retries: the
   * parts already done are not done again, the failed ones are.
   */
  | 'TransactionFailed'
  /**
   * Another process serves the appservice now (PostgreSQL): this one did not renew the
   * appservice's lease in time and another took it over. Nothing more is written; close this
   * manager (its transactions are answered 500, and the homeserver retries them at the other).
   */
  | 'LeaseLost'
  /** The manager was closed. */
  | 'Closed';

/** An error of {@link AppserviceCrypto}, with a stable `code`. */
export class AppserviceError extends Error {
  /** Stable machine-readable code; safe to switch on. */
  readonly code: AppserviceErrorCode;
  /** The bridged user concerned, when there is one. */
  readonly userId: string | undefined;

  /** @internal */
  constructor(code: AppserviceErrorCode, message: string, options: { userId?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'AppserviceError';
    this.code = code;
    this.userId = options.userId;
  }
}
