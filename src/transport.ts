/**
 * A small fetch-based client for the Matrix client-server API: sends the machine's
 * {@link OutgoingRequest}s to a homeserver and offers the few calls a bot loop needs
 * (sync, rooms, messages).
 *
 * Every call goes through the same retry policy: `429 Too Many Requests` (honouring the
 * server's `retry_after_ms` or `Retry-After`), `5xx` answers and network errors are retried
 * with exponential back-off and jitter, up to {@link HomeserverTransportOptions.maxRetries}
 * times; any other error answer fails at once with a {@link HomeserverError}.
 *
 * ```ts
 * const transport = new HomeserverTransport({ baseUrl: 'https://matrix.example.org', accessToken });
 * let since: string | undefined;
 * for (;;) {
 *   for (const request of await machine.outgoingRequests()) {
 *     await machine.markRequestAsSent(request, await transport.send(request));
 *   }
 *   const sync = await transport.sync({ since, timeoutMs: 30_000 });
 *   await machine.receiveSyncChanges(toSyncChanges(sync));
 *   since = sync.next_batch;
 * }
 * ```
 *
 * @module
 */

import type { ENDPOINTS } from './metrics/definitions';
import { recorderFor, type MetricsOptions, type MetricsRecorder, type MetricsSnapshot } from './metrics/recorder';
import type { OutgoingRequest, RequestType } from './requests';
import type { MatrixEvent, SyncChanges } from './types';

/** What a transport call was doing: an {@link OutgoingRequest} type or one of the helper calls. */
export type TransportCallType =
  | RequestType
  | 'sync'
  | 'create_room'
  | 'join_room'
  | 'send_room_event'
  | 'joined_members'
  | 'room_messages'
  | 'whoami'
  | 'signing_keys_upload'
  | 'get_account_data'
  | 'set_account_data'
  | 'get_state_event'
  | 'get_backup_version'
  | 'create_backup_version'
  | 'get_backup_keys'
  | 'put_device'
  | 'delete_device'
  | 'register';

/** Passed to {@link HomeserverTransportOptions.onRetry} before each retry. */
export interface RetryInfo {
  /** What was being sent. */
  readonly requestType: TransportCallType;
  /** HTTP method and path of the call (without the query string). */
  readonly method: string;
  /** The path of the call, e.g. `/_matrix/client/v3/keys/upload`. */
  readonly path: string;
  /** 1 for the first retry, 2 for the second, and so on. */
  readonly attempt: number;
  /** How long the transport waits before retrying, in milliseconds. */
  readonly delayMs: number;
  /** The HTTP status that caused the retry; absent for network errors. */
  readonly status?: number;
  /** The error that caused the retry: a {@link HomeserverError} or the network error. */
  readonly error: unknown;
}

/** Options for {@link HomeserverTransport}. */
export interface HomeserverTransportOptions {
  /** The homeserver's client-server API base URL, e.g. `https://matrix.example.org`. */
  baseUrl: string;
  /** The access token of the device the machine belongs to. */
  accessToken: string;
  /** How many times a failed call is retried (so at most `maxRetries + 1` attempts). Default 5. */
  maxRetries?: number;
  /** First back-off delay in milliseconds; it doubles on each retry. Default 500. */
  baseDelayMs?: number;
  /** Upper bound of the computed back-off in milliseconds (a server's `retry_after_ms` is honoured even when longer). Default 30 000. */
  maxDelayMs?: number;
  /** Per-attempt timeout in milliseconds for calls other than sync; a timeout counts as a network error. Default 60 000. */
  requestTimeoutMs?: number;
  /** The `fetch` implementation to use. Default: the global `fetch`. */
  fetch?: typeof fetch;
  /** Called before each retry, e.g. for logging. Exceptions it throws are ignored. */
  onRetry?: (info: RetryInfo) => void;
  /**
   * Application services only (`accessToken` is the appservice's `as_token`): act as this user,
   * and as this device of theirs, on every call. Adds the `user_id` query parameter and the
   * stable MSC4326 `device_id` query parameter (MSC3202 device masquerading) to every URL.
   */
  masquerade?: {
    /** The user to act as; must be in the appservice's user namespace. */
    userId: string;
    /** The device of that user to act as; it must exist on the homeserver. */
    deviceId?: string;
  };
  /**
   * Metrics of the requests (by endpoint template and status): `{ registry }` to register them in
   * a prom-client `Registry`. Either way {@link HomeserverTransport.metrics} returns the figures;
   * see docs/metrics.md.
   */
  metrics?: MetricsOptions;
}

/** Per-call options. */
export interface TransportCallOptions {
  /** Aborts the call, including any back-off wait; the call then rejects with the signal's reason and is not retried. */
  signal?: AbortSignal;
}

/** Options for {@link HomeserverTransport.sync}. */
export interface SyncOptions extends TransportCallOptions {
  /** The `next_batch` token of the previous sync; omit for an initial sync. */
  since?: string;
  /** How long the server may hold the request waiting for events, in milliseconds. Default 30 000. */
  timeoutMs?: number;
  /** A filter id, or an inline filter object (sent as JSON). */
  filter?: string | Record<string, unknown>;
  /** Ask for the full state of every room. */
  fullState?: boolean;
  /** Presence to set while syncing, e.g. `offline` for bots. */
  setPresence?: 'offline' | 'online' | 'unavailable';
}

/** A room event as it appears in sync timelines and `/messages` pages (minimal typing). */
export interface RoomEvent extends MatrixEvent {
  /** The event id. */
  event_id?: string;
  /** The state key (state events only). */
  state_key?: string;
  /** Server timestamp in milliseconds. */
  origin_server_ts?: number;
  /** Unsigned data such as `transaction_id` and `age`. */
  unsigned?: Record<string, unknown>;
}

/** A list of events, as sync responses wrap them. */
export interface EventList<E extends MatrixEvent = MatrixEvent> {
  /** The events, oldest first. */
  events: E[];
}

/** The timeline part of a joined room in a sync response. */
export interface TimelineSync extends EventList<RoomEvent> {
  /** Whether events were left out between the previous sync and these. */
  limited?: boolean;
  /** Token for {@link HomeserverTransport.roomMessages} to page back from the first event. */
  prev_batch?: string;
}

/** A joined room in a sync response (minimal typing). */
export interface JoinedRoomSync {
  /** New timeline events. */
  timeline?: TimelineSync;
  /** State changes before the timeline. */
  state?: EventList<RoomEvent>;
  /** Room account data. */
  account_data?: EventList;
  /** Ephemeral events such as typing and receipts. */
  ephemeral?: EventList;
  /** Any other field. */
  [key: string]: unknown;
}

/** The `rooms` part of a sync response: room updates by our membership, keyed by room id. */
export interface SyncRooms {
  /** Rooms we are joined to. */
  join?: Record<string, JoinedRoomSync>;
  /** Rooms we are invited to. */
  invite?: Record<string, Record<string, unknown>>;
  /** Rooms we left or were removed from. */
  leave?: Record<string, Record<string, unknown>>;
  /** Rooms we knocked on. */
  knock?: Record<string, Record<string, unknown>>;
}

/** The `device_lists` part of a sync response. */
export interface DeviceListChanges {
  /** Users whose devices changed (query their keys again). */
  changed?: string[];
  /** Users who no longer share an encrypted room with us. */
  left?: string[];
}

/** The parsed body of `GET /_matrix/client/v3/sync` (minimal typing; the crypto-relevant parts are spelt out). */
export interface SyncResponse {
  /** Pass as `since` to the next sync. */
  next_batch: string;
  /** Room updates by membership. */
  rooms?: SyncRooms;
  /** To-device events for this device (feed them to the machine, see {@link toSyncChanges}). */
  to_device?: EventList;
  /** Users whose device lists changed or who no longer share a room with us. */
  device_lists?: DeviceListChanges;
  /** Unclaimed one-time keys of this device, by algorithm. */
  device_one_time_keys_count?: Record<string, number>;
  /** Fallback key algorithms this device still has unused. */
  device_unused_fallback_key_types?: string[];
  /** Global account data. */
  account_data?: EventList;
  /** Presence updates. */
  presence?: EventList;
  /** Any other field. */
  [key: string]: unknown;
}

/** The parsed body of `GET /_matrix/client/v3/rooms/{roomId}/messages`. */
export interface RoomMessagesResponse {
  /** The events, in the requested direction. */
  chunk: RoomEvent[];
  /** The token the page starts at. */
  start: string;
  /** Pass as `from` for the next page; absent when there are no more events. */
  end?: string;
  /** State events relevant to `chunk`, if lazy-loading members was requested. */
  state?: RoomEvent[];
}

/** A member in {@link JoinedMembersResponse}. */
export interface JoinedMember {
  /** The member's display name in the room. */
  display_name?: string;
  /** The member's avatar `mxc://` URL. */
  avatar_url?: string;
}

/** The parsed body of `GET /_matrix/client/v3/rooms/{roomId}/joined_members`. */
export interface JoinedMembersResponse {
  /** Joined members by user id. */
  joined: Record<string, JoinedMember>;
}

/** The parsed body of `createRoom` and `join` answers. */
export interface RoomIdResponse {
  /** The room's id. */
  room_id: string;
}

/** The parsed body of a room event send. */
export interface EventIdResponse {
  /** The id of the new event. */
  event_id: string;
}

/** The parsed body of `GET /_matrix/client/v3/account/whoami`. */
export interface WhoamiResponse {
  /** The user the access token belongs to. */
  user_id: string;
  /** The device the access token belongs to (absent for appservice tokens). */
  device_id?: string;
  /** Whether the user is a guest. */
  is_guest?: boolean;
}

/** A server-side key backup version, as `GET /room_keys/version` returns it. */
export interface BackupVersionInfo {
  /** The version id. */
  version: string;
  /** The backup algorithm, `m.megolm_backup.v1.curve25519-aes-sha2` for the backups this library reads. */
  algorithm: string;
  /** The algorithm's data: `public_key` and the `signatures` of it. */
  auth_data: {
    /** The backup's public key (unpadded base64). */
    public_key?: string;
    /** Signatures of `auth_data` by devices and master keys. */
    signatures?: Record<string, Record<string, string>>;
  };
  /** How many keys the backup holds. */
  count?: number;
  /** Changes whenever keys are added. */
  etag?: string;
}

/**
 * The homeserver answered with an error status that is not retried (or retries ran out).
 *
 * `errcode` and `error` come from the Matrix error body (`{"errcode": "M_FORBIDDEN", "error": "..."}`);
 * they are `undefined` when the body was not a Matrix error (e.g. an HTML page from a proxy).
 */
export class HomeserverError extends Error {
  /** The HTTP status code, e.g. 403. */
  readonly status: number;
  /** The Matrix error code, e.g. `M_FORBIDDEN`, `M_LIMIT_EXCEEDED`, `M_UNKNOWN_TOKEN`. */
  readonly errcode: string | undefined;
  /** The human-readable Matrix `error` text. */
  readonly error: string | undefined;
  /** What was being sent: the {@link OutgoingRequest} `type` or the helper call. */
  readonly requestType: TransportCallType;
  /** The raw response body (at most 64 KiB of it). */
  readonly body: string;
  /** For 429 answers: the delay the server asked for, in milliseconds. */
  readonly retryAfterMs: number | undefined;

  /** Builds the error; normally only the transport does this. */
  constructor(init: {
    status: number;
    errcode?: string | undefined;
    error?: string | undefined;
    requestType: TransportCallType;
    body?: string;
    retryAfterMs?: number | undefined;
  }) {
    const detail = init.errcode ? `${init.errcode}: ${init.error ?? ''}` : (init.error ?? 'no Matrix error body');
    super(`${init.requestType} failed with HTTP ${init.status} (${detail})`);
    this.name = 'HomeserverError';
    this.status = init.status;
    this.errcode = init.errcode;
    this.error = init.error;
    this.requestType = init.requestType;
    this.body = (init.body ?? '').slice(0, 65_536);
    this.retryAfterMs = init.retryAfterMs;
  }
}

/**
 * Picks the encryption-relevant parts of a sync response (to-device events, device list
 * changes, one-time-key counts, unused fallback key types) for `OlmMachine.receiveSyncChanges`.
 */
export function toSyncChanges(sync: SyncResponse): SyncChanges {
  const changes: SyncChanges = {};
  if (sync.to_device?.events) changes.toDeviceEvents = sync.to_device.events;
  if (sync.device_lists) changes.changedDevices = sync.device_lists;
  if (sync.device_one_time_keys_count) changes.oneTimeKeyCounts = sync.device_one_time_keys_count;
  if (sync.device_unused_fallback_key_types) changes.unusedFallbackKeys = sync.device_unused_fallback_key_types;
  return changes;
}

interface Call {
  requestType: TransportCallType;
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  path: string;
  query?: Record<string, string | undefined>;
  body?: string;
  timeoutMs?: number;
  signal?: AbortSignal | undefined;
}

const CLIENT_V3 = '/_matrix/client/v3';

/** The endpoint template of each call type: the metrics' bounded `endpoint` label (no ids). */
const ENDPOINT_OF: { readonly [K in TransportCallType]: (typeof ENDPOINTS)[number] } = {
  keys_upload: '/keys/upload',
  keys_query: '/keys/query',
  keys_claim: '/keys/claim',
  to_device: '/sendToDevice/{eventType}/{txnId}',
  signature_upload: '/keys/signatures/upload',
  room_message: '/rooms/{roomId}/send/{eventType}/{txnId}',
  keys_backup: '/room_keys/keys',
  sync: '/sync',
  create_room: '/createRoom',
  join_room: '/join/{roomIdOrAlias}',
  send_room_event: '/rooms/{roomId}/send/{eventType}/{txnId}',
  joined_members: '/rooms/{roomId}/joined_members',
  room_messages: '/rooms/{roomId}/messages',
  whoami: '/account/whoami',
  signing_keys_upload: '/keys/device_signing/upload',
  get_account_data: '/user/{userId}/account_data/{type}',
  set_account_data: '/user/{userId}/account_data/{type}',
  get_state_event: '/rooms/{roomId}/state/{eventType}/{stateKey}',
  get_backup_version: '/room_keys/version',
  create_backup_version: '/room_keys/version',
  get_backup_keys: '/room_keys/keys',
  put_device: '/devices/{deviceId}',
  delete_device: '/devices/{deviceId}',
  register: '/register',
};

/** URL-encodes one path segment (room ids, event types, transaction ids). */
function seg(s: string): string {
  return encodeURIComponent(s);
}

/** A fresh transaction id for calls where the caller gave none. */
function newTxnId(): string {
  return `mcn${Date.now().toString(36)}${Math.random().toString(36).slice(2, 10)}`;
}

function parseErrorBody(text: string): { errcode?: string; error?: string; retryAfterMs?: number } {
  try {
    const v: unknown = JSON.parse(text);
    if (v && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      const out: { errcode?: string; error?: string; retryAfterMs?: number } = {};
      if (typeof o.errcode === 'string') out.errcode = o.errcode;
      if (typeof o.error === 'string') out.error = o.error;
      if (typeof o.retry_after_ms === 'number' && Number.isFinite(o.retry_after_ms) && o.retry_after_ms >= 0) {
        out.retryAfterMs = o.retry_after_ms;
      }
      return out;
    }
  } catch {
    // not JSON
  }
  return {};
}

/** `Retry-After` is either delta-seconds or an HTTP date. */
function parseRetryAfterHeader(value: string | null): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.max(0, date - Date.now());
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The recorder a transport reports into. Not exported from the package. @internal */
export function transportRecorder(transport: HomeserverTransport): MetricsRecorder {
  return transport['recorder'];
}

/**
 * Sends {@link OutgoingRequest}s and a few helper calls to a Matrix homeserver, with retries.
 *
 * Node 20's global `fetch` is used unless {@link HomeserverTransportOptions.fetch} is given.
 */
export class HomeserverTransport {
  /** The base URL, without a trailing slash. */
  readonly baseUrl: string;
  private readonly accessToken: string;
  private readonly maxRetries: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly requestTimeoutMs: number;
  private readonly fetchImpl: typeof fetch;
  private readonly onRetry: ((info: RetryInfo) => void) | undefined;
  private readonly masquerade: HomeserverTransportOptions['masquerade'];
  private readonly recorder: MetricsRecorder;

  /**
   * Creates a transport; no request is made until a method is called.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `metrics.registry` when it is not a prom-client `Registry`.
   */
  constructor(options: HomeserverTransportOptions) {
    if (!options.baseUrl) throw new TypeError('HomeserverTransport: baseUrl is required');
    if (!options.accessToken) throw new TypeError('HomeserverTransport: accessToken is required');
    const maxRetries = options.maxRetries ?? 5;
    if (!Number.isInteger(maxRetries) || maxRetries < 0) {
      throw new RangeError('HomeserverTransport: maxRetries must be a non-negative integer');
    }
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.accessToken = options.accessToken;
    this.maxRetries = maxRetries;
    this.baseDelayMs = options.baseDelayMs ?? 500;
    this.maxDelayMs = options.maxDelayMs ?? 30_000;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.onRetry = options.onRetry;
    this.masquerade = options.masquerade;
    this.recorder = recorderFor(options.metrics, 'metrics');
  }

  /**
   * The request metrics (see docs/metrics.md): with `metrics: { registry }`, the figures of
   * everything recording into that registry.
   */
  metrics(): MetricsSnapshot {
    return this.recorder.snapshot();
  }

  /**
   * Sends one request of the machine to its client-server API endpoint and resolves with the
   * response body string, ready for `markRequestAsSent`. `request.body` is sent unchanged.
   *
   * | `type` | call |
   * | --- | --- |
   * | `keys_upload` | `POST /_matrix/client/v3/keys/upload` |
   * | `keys_query` | `POST /_matrix/client/v3/keys/query` |
   * | `keys_claim` | `POST /_matrix/client/v3/keys/claim` |
   * | `to_device` | `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}` |
   * | `signature_upload` | `POST /_matrix/client/v3/keys/signatures/upload` |
   * | `room_message` | `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}` |
   * | `keys_backup` | `PUT /_matrix/client/v3/room_keys/keys?version={version}` |
   *
   * Retries reuse the request's transaction id, so a retried send is not duplicated.
   *
   * @throws {@link HomeserverError} for a non-retried error status or when retries run out on one.
   * @throws the network error (usually a `TypeError` from fetch) when retries run out on network errors.
   */
  send(request: OutgoingRequest, options: TransportCallOptions = {}): Promise<string> {
    return this.request(this.callFor(request, options.signal));
  }

  /**
   * `GET /_matrix/client/v3/sync`: long-polls for new events. The per-attempt timeout is
   * `timeoutMs` plus the transport's `requestTimeoutMs`.
   */
  async sync(opts: SyncOptions = {}): Promise<SyncResponse> {
    const timeoutMs = opts.timeoutMs ?? 30_000;
    const filter = opts.filter === undefined || typeof opts.filter === 'string' ? opts.filter : JSON.stringify(opts.filter);
    const text = await this.request({
      requestType: 'sync',
      method: 'GET',
      path: `${CLIENT_V3}/sync`,
      query: {
        since: opts.since,
        timeout: String(Math.max(0, Math.floor(timeoutMs))),
        filter,
        full_state: opts.fullState ? 'true' : undefined,
        set_presence: opts.setPresence,
      },
      timeoutMs: timeoutMs + this.requestTimeoutMs,
      signal: opts.signal,
    });
    return JSON.parse(text) as SyncResponse;
  }

  /** `POST /_matrix/client/v3/createRoom` with `body` as given (e.g. `{ invite: [...], preset: 'private_chat' }`). */
  async createRoom(body: Record<string, unknown> = {}, options: TransportCallOptions = {}): Promise<RoomIdResponse> {
    const text = await this.request({
      requestType: 'create_room',
      method: 'POST',
      path: `${CLIENT_V3}/createRoom`,
      body: JSON.stringify(body),
      signal: options.signal,
    });
    return JSON.parse(text) as RoomIdResponse;
  }

  /** `POST /_matrix/client/v3/join/{roomIdOrAlias}`: joins a room (or accepts an invite). */
  async joinRoom(roomIdOrAlias: string, options: TransportCallOptions = {}): Promise<RoomIdResponse> {
    const text = await this.request({
      requestType: 'join_room',
      method: 'POST',
      path: `${CLIENT_V3}/join/${seg(roomIdOrAlias)}`,
      body: '{}',
      signal: options.signal,
    });
    return JSON.parse(text) as RoomIdResponse;
  }

  /**
   * `PUT /_matrix/client/v3/rooms/{roomId}/send/{type}/{txnId}`: sends a room event. A
   * transaction id is generated when `txnId` is omitted; retries reuse it either way.
   */
  async sendRoomEvent(
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    txnId: string = newTxnId(),
    options: TransportCallOptions = {},
  ): Promise<EventIdResponse> {
    const text = await this.request({
      requestType: 'send_room_event',
      method: 'PUT',
      path: `${CLIENT_V3}/rooms/${seg(roomId)}/send/${seg(type)}/${seg(txnId)}`,
      body: JSON.stringify(content),
      signal: options.signal,
    });
    return JSON.parse(text) as EventIdResponse;
  }

  /** `GET /_matrix/client/v3/rooms/{roomId}/joined_members`. */
  async getJoinedMembers(roomId: string, options: TransportCallOptions = {}): Promise<JoinedMembersResponse> {
    const text = await this.request({
      requestType: 'joined_members',
      method: 'GET',
      path: `${CLIENT_V3}/rooms/${seg(roomId)}/joined_members`,
      signal: options.signal,
    });
    return JSON.parse(text) as JoinedMembersResponse;
  }

  /**
   * `GET /_matrix/client/v3/rooms/{roomId}/messages`: one page of room history.
   *
   * @param from - pagination token (`prev_batch` from sync, or `end` of the previous page); omit to start at the latest (`dir = 'b'`) or earliest (`dir = 'f'`) event.
   * @param dir - `b` (backwards, the default) or `f` (forwards).
   * @param limit - maximum number of events (server default when omitted).
   */
  async roomMessages(
    roomId: string,
    from?: string,
    dir: 'b' | 'f' = 'b',
    limit?: number,
    options: TransportCallOptions = {},
  ): Promise<RoomMessagesResponse> {
    const text = await this.request({
      requestType: 'room_messages',
      method: 'GET',
      path: `${CLIENT_V3}/rooms/${seg(roomId)}/messages`,
      query: { from, dir, limit: limit === undefined ? undefined : String(limit) },
      signal: options.signal,
    });
    return JSON.parse(text) as RoomMessagesResponse;
  }

  /** `GET /_matrix/client/v3/account/whoami`: the user and device the access token belongs to. */
  async whoami(options: TransportCallOptions = {}): Promise<WhoamiResponse> {
    const text = await this.request({
      requestType: 'whoami',
      method: 'GET',
      path: `${CLIENT_V3}/account/whoami`,
      signal: options.signal,
    });
    return JSON.parse(text) as WhoamiResponse;
  }

  /**
   * `POST /_matrix/client/v3/keys/device_signing/upload`: publishes cross-signing keys. `body`
   * is the JSON of `{ master_key, self_signing_key, user_signing_key }`; `auth` is the
   * user-interactive auth object of the second attempt (the first, without it, gets the 401
   * challenge unless the homeserver waives auth, e.g. for a first upload or an appservice user).
   */
  async uploadSigningKeys(body: string, auth?: Record<string, unknown>, options: TransportCallOptions = {}): Promise<string> {
    return this.request({
      requestType: 'signing_keys_upload',
      method: 'POST',
      path: `${CLIENT_V3}/keys/device_signing/upload`,
      body: auth ? JSON.stringify({ ...(JSON.parse(body) as Record<string, unknown>), auth }) : body,
      signal: options.signal,
    });
  }

  /**
   * `GET /_matrix/client/v3/user/{userId}/account_data/{type}`: one global account-data event's
   * content, or `null` when the user has none of that type (404 `M_NOT_FOUND`).
   */
  async getAccountData(userId: string, type: string, options: TransportCallOptions = {}): Promise<Record<string, unknown> | null> {
    try {
      const text = await this.request({
        requestType: 'get_account_data',
        method: 'GET',
        path: `${CLIENT_V3}/user/${seg(userId)}/account_data/${seg(type)}`,
        signal: options.signal,
      });
      return JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof HomeserverError && err.status === 404) return null;
      throw err;
    }
  }

  /**
   * `GET /_matrix/client/v3/rooms/{roomId}/state/{type}/{stateKey}`: the content of one state
   * event of a room, or `null` when the room has none of that type and key (404 `M_NOT_FOUND`).
   */
  async getStateEvent(roomId: string, type: string, stateKey = '', options: TransportCallOptions = {}): Promise<Record<string, unknown> | null> {
    try {
      const text = await this.request({
        requestType: 'get_state_event',
        method: 'GET',
        path: `${CLIENT_V3}/rooms/${seg(roomId)}/state/${seg(type)}/${seg(stateKey)}`,
        signal: options.signal,
      });
      return JSON.parse(text) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof HomeserverError && err.status === 404) return null;
      throw err;
    }
  }

  /** `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`: sets a global account-data event. */
  async setAccountData(userId: string, type: string, content: Record<string, unknown> | string, options: TransportCallOptions = {}): Promise<void> {
    await this.request({
      requestType: 'set_account_data',
      method: 'PUT',
      path: `${CLIENT_V3}/user/${seg(userId)}/account_data/${seg(type)}`,
      body: typeof content === 'string' ? content : JSON.stringify(content),
      signal: options.signal,
    });
  }

  /**
   * `GET /_matrix/client/v3/room_keys/version`: the current server-side key backup version
   * (`{ version, algorithm, auth_data, count, etag }`), or `null` when there is none.
   */
  async getBackupVersion(options: TransportCallOptions = {}): Promise<BackupVersionInfo | null> {
    try {
      const text = await this.request({ requestType: 'get_backup_version', method: 'GET', path: `${CLIENT_V3}/room_keys/version`, signal: options.signal });
      return JSON.parse(text) as BackupVersionInfo;
    } catch (err) {
      if (err instanceof HomeserverError && err.status === 404) return null;
      throw err;
    }
  }

  /** `POST /_matrix/client/v3/room_keys/version` with `body` (`{ algorithm, auth_data }` JSON); resolves with the new version. */
  async createBackupVersion(body: string, options: TransportCallOptions = {}): Promise<string> {
    const text = await this.request({ requestType: 'create_backup_version', method: 'POST', path: `${CLIENT_V3}/room_keys/version`, body, signal: options.signal });
    return (JSON.parse(text) as { version: string }).version;
  }

  /** `GET /_matrix/client/v3/room_keys/keys?version=...`: every backed-up room key of `version`, as the JSON text. */
  async getBackupKeys(version: string, options: TransportCallOptions = {}): Promise<string> {
    return this.request({ requestType: 'get_backup_keys', method: 'GET', path: `${CLIENT_V3}/room_keys/keys`, query: { version }, signal: options.signal });
  }

  /**
   * `PUT /_matrix/client/v3/devices/{deviceId}`: updates a device's display name; for an
   * application service with MSC4190 (set {@link HomeserverTransportOptions.masquerade} to the
   * user, without `deviceId`), creates the device if it does not exist (HTTP 201) without a login.
   */
  async putDevice(deviceId: string, body: { display_name?: string } = {}, options: TransportCallOptions = {}): Promise<void> {
    await this.request({
      requestType: 'put_device',
      method: 'PUT',
      path: `${CLIENT_V3}/devices/${seg(deviceId)}`,
      body: JSON.stringify(body),
      signal: options.signal,
    });
  }

  /**
   * `DELETE /_matrix/client/v3/devices/{deviceId}`: deletes a device and its keys. Ordinary
   * users must add user-interactive auth, which this call does not do; application services
   * (MSC4190) need none.
   */
  async deleteDevice(deviceId: string, options: TransportCallOptions = {}): Promise<void> {
    await this.request({
      requestType: 'delete_device',
      method: 'DELETE',
      path: `${CLIENT_V3}/devices/${seg(deviceId)}`,
      body: '{}',
      signal: options.signal,
    });
  }

  /**
   * `POST /_matrix/client/v3/register` with `type: m.login.application_service` and
   * `inhibit_login`: registers a user in the appservice's namespace (the transport's access token
   * must be the `as_token`). Resolves `false` when the user already exists (`M_USER_IN_USE`).
   */
  async registerAppserviceUser(localpart: string, options: TransportCallOptions = {}): Promise<boolean> {
    try {
      await this.request({
        requestType: 'register',
        method: 'POST',
        path: `${CLIENT_V3}/register`,
        body: JSON.stringify({ type: 'm.login.application_service', username: localpart, inhibit_login: true }),
        signal: options.signal,
      });
      return true;
    } catch (err) {
      if (err instanceof HomeserverError && err.errcode === 'M_USER_IN_USE') return false;
      throw err;
    }
  }

  private callFor(request: OutgoingRequest, signal: AbortSignal | undefined): Call {
    const base = { requestType: request.type, body: request.body, signal } as const;
    switch (request.type) {
      case 'keys_upload':
        return { ...base, method: 'POST', path: `${CLIENT_V3}/keys/upload` };
      case 'keys_query':
        return { ...base, method: 'POST', path: `${CLIENT_V3}/keys/query` };
      case 'keys_claim':
        return { ...base, method: 'POST', path: `${CLIENT_V3}/keys/claim` };
      case 'to_device':
        return {
          ...base,
          method: 'PUT',
          path: `${CLIENT_V3}/sendToDevice/${seg(request.eventType)}/${seg(request.txnId)}`,
        };
      case 'signature_upload':
        return { ...base, method: 'POST', path: `${CLIENT_V3}/keys/signatures/upload` };
      case 'room_message':
        return {
          ...base,
          method: 'PUT',
          path: `${CLIENT_V3}/rooms/${seg(request.roomId)}/send/${seg(request.eventType)}/${seg(request.txnId)}`,
        };
      case 'keys_backup':
        return { ...base, method: 'PUT', path: `${CLIENT_V3}/room_keys/keys`, query: { version: request.version } };
      default: {
        const unknown: { type?: unknown } = request;
        throw new TypeError(`HomeserverTransport.send: unknown request type ${String(unknown.type)}`);
      }
    }
  }

  private url(call: Call): string {
    let url = this.baseUrl + call.path;
    const query = this.masquerade
      ? { ...call.query, user_id: this.masquerade.userId, device_id: this.masquerade.deviceId }
      : call.query;
    if (query) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined) params.append(k, v);
      const qs = params.toString();
      if (qs) url += `?${qs}`;
    }
    return url;
  }

  private countRequest(endpoint: string, method: string, status: string, start: number): void {
    this.recorder.add('matrix_crypto_homeserver_requests_total', { endpoint, method, status });
    this.recorder.observe('matrix_crypto_homeserver_request_duration_seconds', { endpoint }, (performance.now() - start) / 1000);
  }

  /** Exponential back-off with "equal jitter": half fixed, half random. */
  private backoff(retry: number): number {
    const exp = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (retry - 1));
    return Math.round(exp / 2 + Math.random() * (exp / 2));
  }

  private async request(call: Call): Promise<string> {
    const url = this.url(call);
    const headers: Record<string, string> = { Authorization: `Bearer ${this.accessToken}`, Accept: 'application/json' };
    if (call.body !== undefined) headers['Content-Type'] = 'application/json';
    for (let retry = 0; ; retry++) {
      if (call.signal?.aborted) throw abortReason(call.signal);
      const timeout = AbortSignal.timeout(call.timeoutMs ?? this.requestTimeoutMs);
      const signal = call.signal ? AbortSignal.any([call.signal, timeout]) : timeout;
      let failure: { error: unknown; status?: number; delayMs?: number | undefined };
      const endpoint = ENDPOINT_OF[call.requestType];
      const start = performance.now();
      let status = 'network_error';
      try {
        const res = await this.fetchImpl(url, { method: call.method, headers, body: call.body ?? null, signal });
        const text = await res.text();
        status = String(res.status);
        this.countRequest(endpoint, call.method, status, start);
        if (res.ok) return text;
        const parsed = parseErrorBody(text);
        const retryAfterMs =
          res.status === 429 ? (parsed.retryAfterMs ?? parseRetryAfterHeader(res.headers.get('retry-after'))) : undefined;
        const error = new HomeserverError({
          status: res.status,
          errcode: parsed.errcode,
          error: parsed.error,
          requestType: call.requestType,
          body: text,
          retryAfterMs,
        });
        if (res.status !== 429 && res.status < 500) throw error;
        failure = { error, status: res.status, delayMs: retryAfterMs };
      } catch (err) {
        if (err instanceof HomeserverError) throw err;
        if (status === 'network_error') this.countRequest(endpoint, call.method, status, start);
        // The caller's abort is final; our own per-attempt timeout is a retryable network error.
        if (call.signal?.aborted) throw abortReason(call.signal);
        failure = { error: err };
      }
      if (retry >= this.maxRetries) throw failure.error;
      const attempt = retry + 1;
      const delayMs = failure.delayMs !== undefined ? failure.delayMs + Math.round(Math.random() * 100) : this.backoff(attempt);
      if (this.onRetry) {
        try {
          this.onRetry({
            requestType: call.requestType,
            method: call.method,
            path: call.path,
            attempt,
            delayMs,
            ...(failure.status !== undefined ? { status: failure.status } : {}),
            error: failure.error,
          });
        } catch {
          // a logging hook must not break sending
        }
      }
      await sleep(delayMs, call.signal);
    }
  }
}
