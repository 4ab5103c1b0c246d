/**
 * Outgoing requests as classes with a numeric `type`, as in the official bindings. Every body
 * is the ready-to-send JSON string.
 *
 * @module
 */
import type { OutgoingRequest } from '../requests';
import { RequestType } from './enums';

/**
 * Only this layer creates request objects: the official classes have no public constructor
 * (`new KeysUploadRequest(INTERNAL, )` throws there), so neither do ours.
 *
 * @internal
 */
export const INTERNAL: unique symbol = Symbol('matrix-crypto-node compat request');

function guard(token: unknown): void {
  if (token !== INTERNAL) throw new Error('Class contains no `constructor`, can not new it!');
}

/** `POST /_matrix/client/v3/keys/upload`: device keys, one-time keys and fallback keys. */
export class KeysUploadRequest {
  /** The request id, for `markRequestAsSent`. */
  readonly id: string;
  /** The JSON body: `device_keys`, `one_time_keys`, `fallback_keys`. */
  readonly body: string;

  /** @internal */
  constructor(token: typeof INTERNAL, id: string, body: string) {
    guard(token);
    this.id = id;
    this.body = body;
  }

  /** {@link RequestType.KeysUpload}. */
  get type(): RequestType {
    return RequestType.KeysUpload;
  }
}

/** `POST /_matrix/client/v3/keys/query`: download device keys of tracked users. */
export class KeysQueryRequest {
  /** The request id, for `markRequestAsSent`. */
  readonly id: string;
  /** The JSON body: `{"timeout": …, "device_keys": …}`. */
  readonly body: string;

  /** @internal */
  constructor(token: typeof INTERNAL, id: string, body: string) {
    guard(token);
    this.id = id;
    this.body = body;
  }

  /** {@link RequestType.KeysQuery}. */
  get type(): RequestType {
    return RequestType.KeysQuery;
  }
}

/** `POST /_matrix/client/v3/keys/claim`: claim one-time keys to create Olm sessions. */
export class KeysClaimRequest {
  /** The request id, for `markRequestAsSent`. */
  readonly id: string;
  /** The JSON body: `{"timeout": …, "one_time_keys": …}`. */
  readonly body: string;

  /** @internal */
  constructor(token: typeof INTERNAL, id: string, body: string) {
    guard(token);
    this.id = id;
    this.body = body;
  }

  /** {@link RequestType.KeysClaim}. */
  get type(): RequestType {
    return RequestType.KeysClaim;
  }
}

/** `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`. */
export class ToDeviceRequest {
  /** The request id, for `markRequestAsSent` (equal to {@link txnId}). */
  readonly id: string;
  /** The type of the events sent to each device. */
  readonly eventType: string;
  /** The transaction id for the URL; retries must reuse it. */
  readonly txnId: string;
  /** The JSON body: `{"messages": …}`. */
  readonly body: string;

  /** @internal */
  constructor(token: typeof INTERNAL, id: string, eventType: string, txnId: string, body: string) {
    guard(token);
    this.id = id;
    this.eventType = eventType;
    this.txnId = txnId;
    this.body = body;
  }

  /** {@link RequestType.ToDevice}. */
  get type(): RequestType {
    return RequestType.ToDevice;
  }
}

/**
 * `POST /_matrix/client/v3/keys/signatures/upload`. As in the official bindings the body is
 * `{"signed_keys": …}`: send the value of `signed_keys` as the HTTP body.
 */
export class SignatureUploadRequest {
  /** The request id, for `markRequestAsSent`. */
  readonly id: string;
  /** The JSON `{"signed_keys": …}`. */
  readonly body: string;

  /** @internal */
  constructor(token: typeof INTERNAL, id: string, body: string) {
    guard(token);
    this.id = id;
    this.body = body;
  }

  /** {@link RequestType.SignatureUpload}. */
  get type(): RequestType {
    return RequestType.SignatureUpload;
  }
}

/** `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` (in-room verification). */
export class RoomMessageRequest {
  /** The request id, for `markRequestAsSent`. */
  readonly id: string;
  /** The room to send the event to. */
  readonly roomId: string;
  /** The transaction id for the URL. */
  readonly txnId: string;
  /** The event type. */
  readonly eventType: string;
  /** The event content as JSON. */
  readonly body: string;

  /** @internal */
  constructor(token: typeof INTERNAL, id: string, roomId: string, txnId: string, eventType: string, body: string) {
    guard(token);
    this.id = id;
    this.roomId = roomId;
    this.txnId = txnId;
    this.eventType = eventType;
    this.body = body;
  }

  /** {@link RequestType.RoomMessage}. */
  get type(): RequestType {
    return RequestType.RoomMessage;
  }
}

/** `PUT /_matrix/client/v3/room_keys/keys?version=…`: a batch of room keys for the backup. */
export class KeysBackupRequest {
  /** The request id, for `markRequestAsSent`. */
  readonly id: string;
  /** The JSON body: `{"rooms": …}`. */
  readonly body: string;

  /** @internal */
  constructor(token: typeof INTERNAL, id: string, body: string) {
    guard(token);
    this.id = id;
    this.body = body;
  }

  /** {@link RequestType.KeysBackup}. */
  get type(): RequestType {
    return RequestType.KeysBackup;
  }
}

/** The requests that publish new cross-signing keys. */
export class CrossSigningBootstrapRequests {
  /** Our device keys, if they were never uploaded. */
  readonly uploadKeysReq?: KeysUploadRequest;
  /**
   * The body of `POST /_matrix/client/v3/keys/device_signing/upload` (needs user-interactive
   * auth). It has no id: it is never passed to `markRequestAsSent`.
   */
  readonly uploadSigningKeysReq: string;
  /** Signatures of our device by the new self-signing key. */
  readonly uploadSignaturesReq: SignatureUploadRequest;

  /** @internal */
  constructor(uploadKeysReq: KeysUploadRequest | undefined, uploadSigningKeysReq: string, uploadSignaturesReq: SignatureUploadRequest) {
    if (uploadKeysReq) this.uploadKeysReq = uploadKeysReq;
    this.uploadSigningKeysReq = uploadSigningKeysReq;
    this.uploadSignaturesReq = uploadSignaturesReq;
  }
}

/** Any request `outgoingRequests()` hands out. */
export type AnyOutgoingRequest =
  | KeysUploadRequest
  | KeysQueryRequest
  | KeysClaimRequest
  | ToDeviceRequest
  | SignatureUploadRequest
  | RoomMessageRequest
  | KeysBackupRequest;

/** `{"signed_keys": body}`: the official body of a signature upload. @internal */
export function signedKeysBody(body: string): string {
  return `{"signed_keys":${body}}`;
}

/** One of our typed requests as the official class. @internal */
export function toCompatRequest(r: OutgoingRequest): AnyOutgoingRequest {
  switch (r.type) {
    case 'keys_upload':
      return new KeysUploadRequest(INTERNAL, r.id, r.body);
    case 'keys_query':
      return new KeysQueryRequest(INTERNAL, r.id, r.body);
    case 'keys_claim':
      return new KeysClaimRequest(INTERNAL, r.id, r.body);
    case 'to_device':
      return new ToDeviceRequest(INTERNAL, r.id, r.eventType, r.txnId, r.body);
    case 'signature_upload':
      return new SignatureUploadRequest(INTERNAL, r.id, signedKeysBody(r.body));
    case 'room_message':
      return new RoomMessageRequest(INTERNAL, r.id, r.roomId, r.txnId, r.eventType, r.body);
    case 'keys_backup':
      return new KeysBackupRequest(INTERNAL, r.id, r.body);
  }
}

/** Our request type names by the official numbers. @internal */
export const REQUEST_TYPE_NAMES: Record<RequestType, OutgoingRequest['type']> = {
  [RequestType.KeysUpload]: 'keys_upload',
  [RequestType.KeysQuery]: 'keys_query',
  [RequestType.KeysClaim]: 'keys_claim',
  [RequestType.ToDevice]: 'to_device',
  [RequestType.SignatureUpload]: 'signature_upload',
  [RequestType.RoomMessage]: 'room_message',
  [RequestType.KeysBackup]: 'keys_backup',
};
