/**
 * Outgoing requests: what the machine asks the application to send to the homeserver.
 *
 * Every request carries `id` (pass it back to {@link OlmMachine.markRequestAsSent}) and `body`,
 * the HTTP request body as a ready-to-send JSON string: it goes to the homeserver unchanged, so it
 * is never parsed on the hot path.
 *
 * @module
 */
import type { RequestType as NativeRequestType } from '../native/index';

/** `POST /_matrix/client/v3/keys/upload`: device keys, one-time keys and fallback keys. */
export interface KeysUploadRequest {
  /** The request kind: `keys_upload`. */
  readonly type: 'keys_upload';
  /** Pass it back to `markRequestAsSent`. */
  readonly id: string;
  /** The HTTP request body, a ready-to-send JSON string. */
  readonly body: string;
}

/** `POST /_matrix/client/v3/keys/query`: download device keys of tracked users. */
export interface KeysQueryRequest {
  /** The request kind: `keys_query`. */
  readonly type: 'keys_query';
  /** Pass it back to `markRequestAsSent`. */
  readonly id: string;
  /** The HTTP request body, a ready-to-send JSON string. */
  readonly body: string;
}

/** `POST /_matrix/client/v3/keys/claim`: claim one-time keys to create Olm sessions. */
export interface KeysClaimRequest {
  /** The request kind: `keys_claim`. */
  readonly type: 'keys_claim';
  /** Pass it back to `markRequestAsSent`. */
  readonly id: string;
  /** The HTTP request body, a ready-to-send JSON string. */
  readonly body: string;
}

/** `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`. */
export interface ToDeviceRequest {
  /** The request kind: `to_device`. */
  readonly type: 'to_device';
  /** Pass it back to `markRequestAsSent`. */
  readonly id: string;
  /** The to-device event type, e.g. `m.room.encrypted` or `m.room_key.withheld`. */
  readonly eventType: string;
  /** The transaction id for the URL; retries must reuse it. */
  readonly txnId: string;
  /** `{"messages": {user: {device: content}}}` as a JSON string. */
  readonly body: string;
}

/** `POST /_matrix/client/v3/keys/signatures/upload`. */
export interface SignatureUploadRequest {
  /** The request kind: `signature_upload`. */
  readonly type: 'signature_upload';
  /** Pass it back to `markRequestAsSent`. */
  readonly id: string;
  /** The HTTP request body, a ready-to-send JSON string. */
  readonly body: string;
}

/** `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` (in-room verification). */
export interface RoomMessageRequest {
  /** The request kind: `room_message`. */
  readonly type: 'room_message';
  /** Pass it back to `markRequestAsSent`. */
  readonly id: string;
  /** The room to send the event to. */
  readonly roomId: string;
  /** The event type for the URL. */
  readonly eventType: string;
  /** The transaction id for the URL; retries must reuse it. */
  readonly txnId: string;
  /** The event content as a JSON string. */
  readonly body: string;
}

/** `PUT /_matrix/client/v3/room_keys/keys?version={version}`: upload to server-side key backup. */
export interface KeysBackupRequest {
  /** The request kind: `keys_backup`. */
  readonly type: 'keys_backup';
  /** Pass it back to `markRequestAsSent`. */
  readonly id: string;
  /** The backup version for the `version` query parameter. */
  readonly version: string;
  /** `{"rooms": ...}` as a JSON string. */
  readonly body: string;
}

/** Any request the machine wants sent; switch on `type`. */
export type OutgoingRequest =
  | KeysUploadRequest
  | KeysQueryRequest
  | KeysClaimRequest
  | ToDeviceRequest
  | SignatureUploadRequest
  | RoomMessageRequest
  | KeysBackupRequest;

/**
 * The `type` tag of an {@link OutgoingRequest}: the Rust enum `RequestType` of
 * native/src/requests.rs as napi-rs generated it, less `signing_keys_upload` (the
 * cross-signing upload that {@link OlmMachine.bootstrapCrossSigning} hands out on its own).
 */
export type RequestType = Exclude<NativeRequestType, 'signing_keys_upload'>;

// The request interfaces above and the generated union name the same types: otherwise `Same`
// is `never` and tsc rejects this line.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : never) : never;
const typesAgree: Same<OutgoingRequest['type'], RequestType> = true;

// Exactly the members of the generated union (tsc rejects a missing or an extra key), as values.
const REQUEST_TYPES: { readonly [K in NativeRequestType]: true } = {
  keys_upload: typesAgree,
  keys_query: true,
  keys_claim: true,
  to_device: true,
  signature_upload: true,
  signing_keys_upload: true,
  room_message: true,
  keys_backup: true,
};

/** Every request type, signing_keys_upload included, as values. @internal */
export const requestTypeList = Object.keys(REQUEST_TYPES);
