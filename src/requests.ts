/**
 * Outgoing requests: what the machine asks the application to send to the homeserver.
 *
 * Every request carries `id` (pass it back to {@link OlmMachine.markRequestAsSent}) and `body`,
 * the HTTP request body as a ready-to-send JSON string: it goes to the homeserver unchanged, so it
 * is never parsed on the hot path.
 *
 * @module
 */

/** `POST /_matrix/client/v3/keys/upload`: device keys, one-time keys and fallback keys. */
export interface KeysUploadRequest {
  readonly type: 'keys_upload';
  readonly id: string;
  readonly body: string;
}

/** `POST /_matrix/client/v3/keys/query`: download device keys of tracked users. */
export interface KeysQueryRequest {
  readonly type: 'keys_query';
  readonly id: string;
  readonly body: string;
}

/** `POST /_matrix/client/v3/keys/claim`: claim one-time keys to create Olm sessions. */
export interface KeysClaimRequest {
  readonly type: 'keys_claim';
  readonly id: string;
  readonly body: string;
}

/** `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`. */
export interface ToDeviceRequest {
  readonly type: 'to_device';
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
  readonly type: 'signature_upload';
  readonly id: string;
  readonly body: string;
}

/** `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` (in-room verification). */
export interface RoomMessageRequest {
  readonly type: 'room_message';
  readonly id: string;
  readonly roomId: string;
  readonly eventType: string;
  readonly txnId: string;
  /** The event content as a JSON string. */
  readonly body: string;
}

/** `PUT /_matrix/client/v3/room_keys/keys?version={version}`: upload to server-side key backup. */
export interface KeysBackupRequest {
  readonly type: 'keys_backup';
  readonly id: string;
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

/** The `type` tag of an {@link OutgoingRequest}. */
export type RequestType = OutgoingRequest['type'];
