/**
 * The {@link OlmMachine}: one device's end-to-end encryption state.
 *
 * @module
 */
import { openMachine, type NativeMachine, type NativeRequest, type ReceivedNotice } from '../native/index';
import { MatrixCryptoError, native, nativeSync } from './errors';
import { deleteAccount, listAccounts, nativeStoreOptions, type StoreAccount, type StoreDatabase, type StoreOptions } from './store';
import { ProgressRelay, type ProgressCallback } from './progress';
import { MachineMetrics } from './metrics/machine';
import { MetricsRecorder, recorderFor, type MetricsOptions, type MetricsSnapshot } from './metrics/recorder';
import type { OutgoingRequest, RequestType } from './requests';
import { SecretStorageKey, type AccountDataSecret, type SecretsImport } from './trust/secret-storage';
import type { VerificationCancelCode, VerificationInfo, VerificationMethodKind, VerificationQrCode, VerificationStep } from './trust/verification';
import type {
  BackupImportResult,
  CrossSigningStatus,
  DecryptedRoomEvent,
  DecryptOptions,
  DeviceInfo,
  UserIdentityInfo,
  ExportedRoomKey,
  ImportResult,
  KeyBackup,
  LocalTrust,
  MatrixEvent,
  NewBackupKey,
  RoomKeyCounts,
  ShareSettings,
  SyncChanges,
  SyncResult,
} from './types';
import type { ToDeviceRequest, SignatureUploadRequest, KeysUploadRequest, KeysClaimRequest, KeysBackupRequest, KeysQueryRequest } from './requests';
import type {
  DeviceRef,
  NoOlmRecord,
  NoOlmState,
  WithheldMetrics,
  WithheldNotice,
  WithheldPolicy,
  WithheldRecipient,
  WithheldRecord,
} from './withheld';
import type { ReceivedRoomKeyBundle, RoomKeyBundleResult, RoomKeyBundleUpload, RoomKeyBundleWithheldEntry } from './bundles';

let wrap: (inner: NativeMachine) => OlmMachine;
let openWith: (options: OpenOptions, metrics: (recorder: MetricsRecorder) => MachineMetrics) => Promise<OlmMachine>;
let recorderOf: (machine: OlmMachine) => MetricsRecorder;

/**
 * This library's machine over a native machine that is already open: how the compat layer, which
 * opens machines its own way, gets one without a public constructor. Not exported from the package.
 *
 * @internal
 */
export function wrapNativeMachine(inner: NativeMachine): OlmMachine {
  return wrap(inner);
}

/**
 * {@link OlmMachine.open} for an AppserviceCrypto's machines: they record into the manager's
 * recorder (its `metrics` option), without counting decryptions, which the manager counts per
 * event it hands to the bridge. Not exported from the package.
 *
 * @internal
 */
export function openUncountedDecryptions(options: OpenOptions): Promise<OlmMachine> {
  return openWith(options, (recorder) => new MachineMetrics(recorder, false));
}

/** The recorder a machine reports into. Not exported from the package. @internal */
export function machineRecorder(machine: OlmMachine): MetricsRecorder {
  return recorderOf(machine);
}

export type { StoreOptions } from './store';

/** Options of {@link OlmMachine.open}. */
export interface OpenOptions {
  /** Our user id, e.g. `@bot:example.org`. */
  userId: string;
  /** Our device id, as the homeserver assigned it at login. */
  deviceId: string;
  /**
   * The store; opening the same store again restores the account. Required: there is no
   * default, so that an account is never kept in memory by mistake.
   */
  store: StoreOptions;
  /** Which withheld notices to send; default: every code, with default reasons. */
  withheld?: WithheldPolicy;
  /**
   * On a trusted `m.no_olm` notice, claim a one-time key of the sender device, create an Olm
   * session and send it an encrypted `m.dummy`, so it can reach us next time (at most once per
   * device per hour, persisted). Default: `true`.
   */
  reactToNoOlm?: boolean;
  /**
   * Metrics: `{ registry }` to register them in a prom-client `Registry` (shared by every
   * machine opened with it). Either way {@link OlmMachine.metrics} returns the figures; see
   * docs/metrics.md.
   */
  metrics?: MetricsOptions;
}

/** What {@link OlmMachine.shareRoomKey} returns. */
export interface ShareResult {
  /** The to-device requests: room keys and withheld notices. Send them all before the event. */
  requests: ToDeviceRequest[];
  /** Devices that receive the room key from this share. */
  sharedWith: DeviceRef[];
  /** Devices refused in this share, with the notice each gets (or would get, if suppressed). */
  withheld: WithheldRecipient[];
}

/** The requests {@link OlmMachine.bootstrapCrossSigning} produces, to send in this order. */
export interface CrossSigningBootstrapRequests {
  /** Our device keys, if they were never uploaded. */
  uploadKeys: KeysUploadRequest | null;
  /**
   * `POST /_matrix/client/v3/keys/device_signing/upload`: the public cross-signing keys. The
   * homeserver usually demands user-interactive auth for it; add the `auth` object to the body.
   */
  uploadSigningKeys: {
    /** Pass it back to `markRequestAsSent`. */
    id: string;
    /** The request kind: `signing_keys_upload`. */
    type: 'signing_keys_upload';
    /** `{ master_key, self_signing_key, user_signing_key }` as a JSON string. */
    body: string;
  };
  /** Signatures of our device by the new self-signing key. */
  uploadSignatures: SignatureUploadRequest;
}

/** A request of the native union, as the public one: the same shape, without `signing_keys_upload` (bootstrap's own field). */
function toRequest(r: NativeRequest): OutgoingRequest {
  if (r.type === 'signing_keys_upload') {
    throw new MatrixCryptoError('InternalError', 'a signing_keys_upload request outside bootstrapCrossSigning');
  }
  return r;
}

function step(r: { requests: NativeRequest[]; verification: VerificationInfo }): VerificationStep {
  return { requests: r.requests.map(toRequest) as VerificationStep['requests'], verification: r.verification };
}

function requireString(field: string, value: unknown): string {
  if (typeof value !== 'string') {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be a string, got ${typeof value}`, field);
  }
  return value;
}

function requireStringArray(field: string, value: unknown): string[] {
  if (!Array.isArray(value)) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be an array of strings`, field);
  }
  value.forEach((v, i) => requireString(`${field}[${i}]`, v));
  return value as string[];
}

/** A plain object argument (a policy), checked to be one; it crosses as an object, not as JSON. */
function objectArg<T>(field: string, value: T, shape: string): T {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    const got = value === null ? 'null' : Array.isArray(value) ? 'an array' : `a ${typeof value}`;
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be an object ${shape}, got ${got}`, field);
  }
  jsonValues(field, value, 0);
  return value;
}

/**
 * Checks that an option object crosses to the native side as JSON would: the native side reads
 * it as a JSON value, and napi's conversion of a function, symbol or bigint, or of `undefined`
 * inside an array, fails without saying where. Object keys whose value is `undefined` are left
 * out, as by `JSON.stringify`.
 */
function jsonValues(field: string, value: unknown, depth: number): void {
  if (depth > 64) throw new MatrixCryptoError('InvalidArgument', `${field}: nested too deeply`, field);
  if (value === null || typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') return;
  if (Array.isArray(value)) {
    value.forEach((v, i) => {
      if (v === undefined) throw new MatrixCryptoError('InvalidArgument', `${field}[${i}]: must not be undefined`, `${field}[${i}]`);
      jsonValues(`${field}[${i}]`, v, depth + 1);
    });
    return;
  }
  if (typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) {
      const path = /^[A-Za-z_$][\w$]*$/.test(k) ? `${field}.${k}` : `${field}[${JSON.stringify(k)}]`;
      if (v !== undefined) jsonValues(path, v, depth + 1);
    }
    return;
  }
  throw new MatrixCryptoError('InvalidArgument', `${field}: a ${typeof value} is not a JSON value`, field);
}

function jsonArg(field: string, value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === null || typeof value !== 'object') {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be an object or a JSON string`, field);
  }
  return JSON.stringify(value);
}

/**
 * End-to-end encryption for one device: wraps matrix-sdk-crypto's `OlmMachine`.
 *
 * Every method that touches keys or the store returns a Promise and runs off the JS thread.
 *
 * @example The send/receive loop of a bot
 * ```ts
 * const machine = await OlmMachine.open({ userId, deviceId, store: { kind: 'sqlite', path: './crypto' } });
 * // after each /sync:
 * await machine.receiveSyncChanges({ toDeviceEvents, changedDevices, oneTimeKeyCounts });
 * for (const request of await machine.outgoingRequests()) {
 *   await machine.markRequestAsSent(request, await transport.send(request));
 * }
 * ```
 */
export class OlmMachine {
  readonly #inner: NativeMachine;
  readonly #metrics: MachineMetrics;
  #closeCounted = false;
  readonly #withheldListeners = new Set<(notice: WithheldNotice) => void>();

  static {
    wrap = (inner) => {
      const machine = new OlmMachine(inner, new MachineMetrics(new MetricsRecorder()));
      machine.#metrics.opened();
      return machine;
    };
    openWith = (options, metrics) => OlmMachine.#open(options, metrics);
    recorderOf = (machine) => machine.#metrics.recorder;
  }

  /** Hidden: machines come from {@link OlmMachine.open}. */
  private constructor(inner: NativeMachine, metrics: MachineMetrics) {
    this.#inner = inner;
    this.#metrics = metrics;
  }

  /**
   * Open the account of `userId`/`deviceId`, creating it on first use.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` for a malformed id or store option,
   *   `StorePassphrase` for a wrong passphrase, `StoreMismatchedAccount` if the store belongs to
   *   another account.
   */
  static async open(options: OpenOptions): Promise<OlmMachine> {
    return OlmMachine.#open(options, (recorder) => new MachineMetrics(recorder));
  }

  static async #open(options: OpenOptions, withMetrics: (recorder: MetricsRecorder) => MachineMetrics): Promise<OlmMachine> {
    if (options === null || typeof options !== 'object') {
      throw new MatrixCryptoError('InvalidArgument', 'options: must be an object', 'options');
    }
    const userId = requireString('userId', options.userId);
    const deviceId = requireString('deviceId', options.deviceId);
    const store = options.store;
    if (store === undefined) {
      throw new MatrixCryptoError(
        'InvalidArgument',
        'store: is required: { kind: "sqlite", path } to keep the account, or { kind: "memory" } for a throwaway device',
        'store',
      );
    }
    const nativeStore = nativeStoreOptions(store);
    const withheldPolicy = options.withheld === undefined ? undefined : objectArg('withheld', options.withheld, '{ send, reasons }');
    if (options.reactToNoOlm !== undefined && typeof options.reactToNoOlm !== 'boolean') {
      throw new MatrixCryptoError('InvalidArgument', 'reactToNoOlm: must be a boolean', 'reactToNoOlm');
    }
    const metrics = withMetrics(recorderFor(options.metrics, 'metrics'));
    const inner = await metrics.time('open', () =>
      native(() =>
        openMachine({
          userId,
          deviceId,
          ...nativeStore,
          withheldPolicy,
          reactToNoOlm: options.reactToNoOlm,
        }),
      ),
    );
    metrics.opened();
    return new OlmMachine(inner, metrics);
  }

  /**
   * The accounts kept in a store database (a `sqlite` folder or a `postgres` database), sorted
   * by user id then device id.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` for a bad store option or a folder without
   *   our engine's database, `StoreLocked` if another process has the SQLite folder open.
   */
  static async listAccounts(store: StoreDatabase): Promise<StoreAccount[]> {
    return listAccounts(store);
  }

  /**
   * Delete an account and everything stored for it from a store database; resolves to whether
   * it existed. The device's keys are gone for good: its user's other devices and its peers
   * will see it as a new device if it is opened again.
   *
   * @throws {@link MatrixCryptoError} `StoreLocked` while a machine has the account open (in
   *   this process, or another process on PostgreSQL), `InvalidArgument` for a bad option or id.
   */
  static async deleteAccount(store: StoreDatabase, userId: string, deviceId: string): Promise<boolean> {
    return deleteAccount(store, requireString('userId', userId), requireString('deviceId', deviceId));
  }

  /** Our user id. */
  get userId(): string {
    return this.#inner.userId;
  }

  /** Our device id. */
  get deviceId(): string {
    return this.#inner.deviceId;
  }

  /** Our device's public identity keys. */
  get identityKeys(): {
    /** The Curve25519 key (unpadded base64), used to establish Olm sessions. */
    curve25519: string;
    /** The Ed25519 key (unpadded base64), used for signing. */
    ed25519: string;
  } {
    return this.#inner.identityKeys;
  }

  /** Whether {@link close} was called. */
  get isClosed(): boolean {
    return this.#inner.isClosed;
  }

  /**
   * Release the store. Calls already running finish; later calls reject with `MachineClosed`.
   * Resolves once the store's files are closed (so the folder can be deleted, or the same
   * store opened again, right away). Reopen the same store with {@link OlmMachine.open}.
   */
  async close(): Promise<void> {
    // Counted once, by the first call (calls may overlap).
    const first = !this.#closeCounted && !this.#inner.isClosed;
    this.#closeCounted = true;
    await this.#metrics.time('close', () => native(() => this.#inner.close()));
    if (first) this.#metrics.closed();
  }

  /**
   * This machine's metrics (see docs/metrics.md): with `metrics: { registry }` at
   * {@link open}, the figures of everything recording into that registry.
   */
  metrics(): MetricsSnapshot {
    return this.#metrics.recorder.snapshot();
  }

  /**
   * Feed the encryption-relevant parts of a `/sync` response to the machine: to-device events
   * (room keys, key requests, withheld notices, verification), device-list changes and key counts.
   */
  async receiveSyncChanges(changes: SyncChanges): Promise<SyncResult> {
    const json = jsonArg('changes', changes ?? {});
    const out = await this.#metrics.time('receive_sync_changes', () => native(() => this.#inner.receiveSyncChanges(json)));
    const result: SyncResult = {
      toDeviceEvents: JSON.parse(out.toDeviceEvents) as SyncResult['toDeviceEvents'],
      roomKeyUpdates: out.roomKeyUpdates,
      withheldNotices: out.withheldNotices.map(toWithheldNotice),
      keyRequestAnswers: out.keyRequestAnswers,
      skippedToDeviceEvents: out.skippedToDeviceEvents,
    };
    // `changes` may be a JSON string despite its type (jsonArg accepts one).
    const input = typeof (changes as unknown) === 'string' ? (JSON.parse(changes as unknown as string) as SyncChanges) : (changes ?? {});
    this.#metrics.sync(input, result, this.identityKeys.curve25519);
    for (const notice of result.withheldNotices) {
      for (const listener of this.#withheldListeners) {
        try {
          listener(notice);
        } catch (err) {
          // A listener's failure must not undo a processed sync: report it like an uncaught error.
          queueMicrotask(() => {
            throw err;
          });
        }
      }
    }
    return result;
  }

  /**
   * Subscribe to received withheld notices (room notices and `m.no_olm`, plain or inside
   * encrypted to-device events), as {@link receiveSyncChanges} processes them. Spoofed notices
   * are reported too, with `verdict: 'spoofed'`. Returns a function that unsubscribes.
   *
   * @example
   * ```ts
   * const stop = machine.on('withheld', (notice) => {
   *   if (notice.kind === 'room') log(`${notice.sender} withheld ${notice.sessionId}: ${notice.code}`);
   * });
   * ```
   */
  on(event: 'withheld', listener: (notice: WithheldNotice) => void): () => void {
    if (event !== 'withheld') {
      throw new MatrixCryptoError('InvalidArgument', `event: unknown event ${String(event)}; only 'withheld'`, 'event');
    }
    if (typeof listener !== 'function') {
      throw new MatrixCryptoError('InvalidArgument', 'listener: must be a function', 'listener');
    }
    this.#withheldListeners.add(listener);
    return () => this.off(event, listener);
  }

  /** Remove a listener added with {@link on}. */
  off(event: 'withheld', listener: (notice: WithheldNotice) => void): void {
    if (event === 'withheld') this.#withheldListeners.delete(listener);
  }

  /**
   * The withheld records of a session, oldest first: one per sender and source (room notices,
   * a forwarded key's `withheld`, an imported export). Which of them explains a failed event is
   * decided per event (its sender must be the notice's sender); see {@link DecryptionError.withheld}.
   */
  async getWithheldRecords(roomId: string, sessionId: string): Promise<WithheldRecord[]> {
    requireString('roomId', roomId);
    requireString('sessionId', sessionId);
    return native(() => this.#inner.withheldRecords(roomId, sessionId));
  }

  /**
   * The `m.no_olm` notices received from a user's devices; with `deviceId`, that device's: those
   * that nothing known contradicts (their key is the device's key when we know it, their
   * `from_device` is the device when they name one). Decryption errors use the same rule.
   */
  async getNoOlmNotices(userId: string, deviceId?: string): Promise<NoOlmRecord[]> {
    requireString('userId', userId);
    if (deviceId !== undefined) requireString('deviceId', deviceId);
    return native(() => this.#inner.noOlmNotices(userId, deviceId));
  }

  /**
   * Build the room's key bundle for sharing its history with a user we invite (MSC4268): the
   * sessions of the room whose history may be shared (those created while the room's history
   * visibility was `shared` or `world_readable`), and a `m.history_not_shared` withheld entry for
   * each other session we hold (and each one a bundle we received listed so). Returns the
   * encrypted file, or `null` if the bundle would be empty. Upload
   * {@link RoomKeyBundleUpload.ciphertext} to the media repository, then call
   * {@link shareRoomKeyBundle} with the upload's URI.
   */
  async buildRoomKeyBundle(roomId: string): Promise<RoomKeyBundleUpload | null> {
    requireString('roomId', roomId);
    const built = await native(() => this.#inner.buildRoomKeyBundle(roomId));
    if (!built) return null;
    return { ...built, ciphertext: new Uint8Array(built.ciphertext.buffer, built.ciphertext.byteOffset, built.ciphertext.byteLength) };
  }

  /**
   * Tell every device of `userId` where the room's uploaded bundle is: an Olm-encrypted
   * `m.room_key_bundle` event with the file's URI and key. The user's devices must be known and
   * have Olm sessions (track the user and send {@link getMissingSessions}'s claim first, as for
   * {@link shareRoomKey}). Send every returned request.
   */
  async shareRoomKeyBundle(userId: string, roomId: string, url: string, mediaEncryptionInfo: string): Promise<ToDeviceRequest[]> {
    requireString('userId', userId);
    requireString('roomId', roomId);
    requireString('url', url);
    requireString('mediaEncryptionInfo', mediaEncryptionInfo);
    const requests = await native(() => this.#inner.shareRoomKeyBundle(userId, roomId, url, mediaEncryptionInfo));
    return requests.map(toRequest) as ToDeviceRequest[];
  }

  /**
   * The `m.room_key_bundle` event that `inviterUserId` sent us for the room (received by
   * {@link receiveSyncChanges}), or `null`: download its `url` and pass the bytes to
   * {@link receiveRoomKeyBundle}.
   */
  async getReceivedRoomKeyBundle(roomId: string, inviterUserId: string): Promise<ReceivedRoomKeyBundle | null> {
    requireString('roomId', roomId);
    requireString('inviterUserId', inviterUserId);
    return (await native(() => this.#inner.receivedRoomKeyBundle(roomId, inviterUserId))) ?? null;
  }

  /**
   * Receive a room's key bundle (MSC4268) from the user who invited us: `encryptedBundle` is the
   * file downloaded from {@link ReceivedRoomKeyBundle.url}, still encrypted (it is decrypted
   * and its hash checked here, with the key the event carried). Pass the inviter as the room's
   * `m.room.member` invite names it: the library does not check room membership. The room keys
   * are imported if the inviter's device is cross-signed by its owner (the crate's rule), and the
   * `withheld` entries become withheld records with `source: 'key_bundle'` (see
   * {@link RoomKeyBundleWithheldEntry.verdict} for which ones are kept), which explain later
   * decryption failures with their code (`m.history_not_shared`) and reason.
   */
  async receiveRoomKeyBundle(
    roomId: string,
    inviterUserId: string,
    encryptedBundle: Uint8Array,
    options: { onProgress?: ProgressCallback } = {},
  ): Promise<RoomKeyBundleResult> {
    requireString('roomId', roomId);
    requireString('inviterUserId', inviterUserId);
    if (!(encryptedBundle instanceof Uint8Array)) {
      throw new MatrixCryptoError('InvalidArgument', 'encryptedBundle: must be a Uint8Array (the downloaded file)', 'encryptedBundle');
    }
    const data = Buffer.from(encryptedBundle.buffer, encryptedBundle.byteOffset, encryptedBundle.byteLength);
    const relay = new ProgressRelay(options.onProgress, 'onProgress');
    const out = await native(() => this.#inner.receiveRoomKeyBundle(roomId, inviterUserId, data, relay.callback));
    relay.rethrow();
    // Each entry is its record (with `source: 'key_bundle'`) plus the verdict, flat as a received notice.
    const withheld = out.withheld.map(({ record, verdict }) => ({ kind: 'room', ...record, verdict }) as RoomKeyBundleWithheldEntry);
    return { ...out, withheld };
  }

  /** Counters of received withheld notices, including ignored spoofed ones. */
  withheldMetrics(): WithheldMetrics {
    return nativeSync(() => this.#inner.withheldMetrics());
  }

  /**
   * The requests to send now. Send each one, then pass the response to
   * {@link markRequestAsSent}. Call after every sync and after {@link shareRoomKey}.
   */
  async outgoingRequests(): Promise<OutgoingRequest[]> {
    const list = (await this.#metrics.time('outgoing_requests', () => native(() => this.#inner.outgoingRequests()))).map(toRequest);
    this.#metrics.handedOut(list);
    return list;
  }

  /**
   * Tell the machine a request was sent, with the homeserver's response (JSON string or object).
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `id` for a request this machine
   *   did not hand out, `type` for a type that does not match it, `response` for a response that
   *   does not parse.
   */
  async markRequestAsSent(request: OutgoingRequest | CrossSigningBootstrapRequests['uploadSigningKeys'], response: string | object): Promise<void>;
  async markRequestAsSent(id: string, type: RequestType | 'signing_keys_upload', response: string | object): Promise<void>;
  async markRequestAsSent(
    requestOrId: OutgoingRequest | CrossSigningBootstrapRequests['uploadSigningKeys'] | string,
    typeOrResponse: string | object,
    maybeResponse?: string | object,
  ): Promise<void> {
    let id: string;
    let type: string;
    let response: string | object;
    if (typeof requestOrId === 'string') {
      id = requestOrId;
      type = requireString('type', typeOrResponse);
      response = maybeResponse as string | object;
    } else if (requestOrId !== null && typeof requestOrId === 'object') {
      id = requireString('request.id', requestOrId.id);
      type = requireString('request.type', requestOrId.type);
      response = typeOrResponse;
    } else {
      throw new MatrixCryptoError('InvalidArgument', 'request: must be a request object or its id', 'request');
    }
    const body = jsonArg('response', response);
    await this.#metrics.time('mark_request_as_sent', () => native(() => this.#inner.markRequestAsSent(id, type, body)));
    this.#metrics.sent(id, type, body);
  }

  /** Track the device lists of these users (everyone in the encrypted rooms we send to). */
  async updateTrackedUsers(users: string[]): Promise<void> {
    const list = requireStringArray('users', users);
    await this.#metrics.time('update_tracked_users', () => native(() => this.#inner.updateTrackedUsers(list)));
  }

  /**
   * A `keys/claim` request for devices of `users` that have no Olm session yet, or `null`.
   * Send it and mark it sent before {@link shareRoomKey}.
   */
  async getMissingSessions(users: string[]): Promise<KeysClaimRequest | null> {
    const list = requireStringArray('users', users);
    const r = await this.#metrics.time('get_missing_sessions', () => native(() => this.#inner.getMissingSessions(list)));
    return r ? (toRequest(r) as KeysClaimRequest) : null;
  }

  /**
   * Share the room's Megolm key with every device of `users` (subject to the sharing strategy),
   * creating or rotating the session as the settings require. Devices that do not get the key
   * get a withheld notice as the policy allows (`settings.withheld` overrides the machine's
   * policy for this call). Send every returned request before sending the encrypted event.
   */
  async shareRoomKey(roomId: string, users: string[], settings: ShareSettings = {}): Promise<ShareResult> {
    requireString('roomId', roomId);
    const list = requireStringArray('users', users);
    const s = jsonArg('settings', settings);
    const result = await this.#metrics.time('share_room_key', () => native(() => this.#inner.shareRoomKey(roomId, list, s)));
    const share = { requests: result.requests.map(toRequest) as ToDeviceRequest[], sharedWith: result.sharedWith, withheld: result.withheld };
    this.#metrics.share(share);
    return share;
  }

  /** The machine-wide withheld policy (see {@link setWithheldPolicy}). */
  getWithheldPolicy(): WithheldPolicy {
    return nativeSync(() => this.#inner.withheldPolicy());
  }

  /** Whether the machine reacts to `m.no_olm` notices (see {@link OpenOptions.reactToNoOlm}). */
  getReactToNoOlm(): boolean {
    return nativeSync(() => this.#inner.reactToNoOlm());
  }

  /** Turn the reaction to `m.no_olm` notices on or off (see {@link OpenOptions.reactToNoOlm}). */
  setReactToNoOlm(on: boolean): void {
    if (typeof on !== 'boolean') throw new MatrixCryptoError('InvalidArgument', 'on: must be a boolean', 'on');
    this.#inner.setReactToNoOlm(on);
  }

  /** Replace the machine-wide withheld policy (not persisted: pass it to {@link open} too). */
  setWithheldPolicy(policy: WithheldPolicy): void {
    objectArg('policy', policy, '{ send, reasons }');
    nativeSync(() => this.#inner.setWithheldPolicy(policy));
  }

  /**
   * Whether a recipient device was sent an `m.no_olm` notice and whether the rule re-armed since
   * (an Olm session was established after it); `null` if it was never notified.
   */
  async getNoOlmState(userId: string, deviceId: string): Promise<NoOlmState | null> {
    requireString('userId', userId);
    requireString('deviceId', deviceId);
    return (await native(() => this.#inner.noOlmState(userId, deviceId))) ?? null;
  }

  /** Discard the room's current outbound session; the next share creates a new one. */
  async discardRoomKey(roomId: string): Promise<boolean> {
    requireString('roomId', roomId);
    return native(() => this.#inner.discardRoomKey(roomId));
  }

  /**
   * Encrypt a room event. Returns the `m.room.encrypted` content to send in the room.
   * Share the room key first ({@link shareRoomKey}), before every message: the share is cheap
   * when nothing changed, and it rotates the key when the rotation period is reached.
   *
   * @throws {@link MatrixCryptoError} `EncryptionError` with field `roomId` when the room has no
   * room key yet, or its key reached the rotation period (messages or time) since the last share.
   */
  async encryptRoomEvent(roomId: string, eventType: string, content: Record<string, unknown>): Promise<Record<string, unknown>> {
    requireString('roomId', roomId);
    requireString('eventType', eventType);
    const json = jsonArg('content', content);
    return JSON.parse(await this.#metrics.time('encrypt_room_event', () => native(() => this.#inner.encryptRoomEvent(roomId, eventType, json))));
  }

  /**
   * Decrypt an `m.room.encrypted` room event. By default every sender's device is decrypted
   * and the result says how far to trust it; `options.trustRequirement` refuses devices their
   * owner did not cross-sign (MSC4153).
   *
   * @throws {@link DecryptionError} with a `code` that says why (`MissingRoomKey`,
   *   `UnknownMessageIndex`, `SenderIdentityNotTrusted` when the sender's device falls short of
   *   `options.trustRequirement`, ...).
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming the bad option, e.g. `options.trustRequirement`.
   */
  async decryptRoomEvent(event: MatrixEvent | string, roomId: string, options?: DecryptOptions): Promise<DecryptedRoomEvent> {
    requireString('roomId', roomId);
    const json = jsonArg('event', event);
    const opts = options === undefined ? undefined : jsonArg('options', options);
    let out;
    try {
      out = await this.#metrics.time('decrypt_room_event', () => native(() => this.#inner.decryptRoomEvent(json, roomId, opts)));
    } catch (err) {
      this.#metrics.decryption(roomId, event, err);
      throw err;
    }
    this.#metrics.decryption(roomId, event, undefined);
    return { event: JSON.parse(out.event) as MatrixEvent, ...out.encryptionInfo };
  }

  /** A device we know of, or `null`. */
  async getDevice(userId: string, deviceId: string): Promise<DeviceInfo | null> {
    requireString('userId', userId);
    requireString('deviceId', deviceId);
    return (await native(() => this.#inner.getDevice(userId, deviceId))) ?? null;
  }

  /** Every known device of a user. */
  async getUserDevices(userId: string): Promise<DeviceInfo[]> {
    requireString('userId', userId);
    return native(() => this.#inner.getUserDevices(userId));
  }

  /**
   * Set our local trust in a device. `verified` devices receive keys under the trusted-only
   * strategy; `blacklisted` devices never receive room keys (they get `m.blacklisted`).
   */
  async setLocalTrust(userId: string, deviceId: string, trust: LocalTrust): Promise<void> {
    requireString('userId', userId);
    requireString('deviceId', deviceId);
    requireString('trust', trust);
    await native(() => this.#inner.setLocalTrust(userId, deviceId, trust));
  }

  /** Which private cross-signing keys this device holds. */
  async crossSigningStatus(): Promise<CrossSigningStatus> {
    return native(() => this.#inner.crossSigningStatus());
  }

  /**
   * Create cross-signing keys (or new ones with `reset`) and return the requests that publish
   * them. Mark each sent with {@link markRequestAsSent}. Without `reset`, keys this device
   * already holds are published again instead of new ones. {@link EncryptedClient.setUpCrossSigning}
   * sends them for you, with user-interactive auth.
   */
  async bootstrapCrossSigning(reset = false): Promise<CrossSigningBootstrapRequests> {
    if (typeof reset !== 'boolean') throw new MatrixCryptoError('InvalidArgument', 'reset: must be a boolean', 'reset');
    const r = await native(() => this.#inner.bootstrapCrossSigning(reset));
    return {
      uploadKeys: r.uploadKeys ? (toRequest(r.uploadKeys) as KeysUploadRequest) : null,
      uploadSigningKeys: { id: r.uploadSigningKeys.id, type: 'signing_keys_upload', body: r.uploadSigningKeys.body },
      uploadSignatures: toRequest(r.uploadSignatures) as SignatureUploadRequest,
    };
  }

  /**
   * Whether our self-signing key (as published, by the keys we last queried) signed this
   * device: what clients that exclude insecure devices check before sharing room keys with us.
   */
  async isOwnDeviceCrossSigned(): Promise<boolean> {
    return native(() => this.#inner.isOwnDeviceCrossSigned());
  }

  /**
   * Sign another device of our own account with our self-signing key (so other clients trust
   * it); returns the `signature_upload` request to send.
   *
   * @throws {@link MatrixCryptoError} `CrossSigningKeyMissing` without the self-signing key,
   *   `InvalidArgument` naming `deviceId` for a device we do not know.
   */
  async signOwnDevice(deviceId: string): Promise<SignatureUploadRequest> {
    requireString('deviceId', deviceId);
    return toRequest(await native(() => this.#inner.signOwnDevice(deviceId))) as SignatureUploadRequest;
  }

  /**
   * A `keys_query` request for our own keys: send it to learn our published identity and our
   * devices' signatures now (e.g. right after uploading signatures) instead of at the next
   * device-list change.
   */
  queryOwnKeys(): KeysQueryRequest {
    return toRequest(nativeSync(() => this.#inner.queryOwnKeys())) as KeysQueryRequest;
  }

  /** The ids of our own devices that our self-signing key has not signed (by the keys we know). */
  async unsignedOwnDevices(): Promise<string[]> {
    return native(() => this.#inner.unsignedOwnDevices());
  }

  /**
   * A user's cross-signing identity as we know it (verified, changed, ...), or `null` when the
   * user has none or their keys were never queried.
   */
  async getUserIdentity(userId: string): Promise<UserIdentityInfo | null> {
    requireString('userId', userId);
    return (await native(() => this.#inner.getUserIdentity(userId))) ?? null;
  }

  /**
   * Verify another user: sign their master key with our user-signing key, and send the returned
   * `signature_upload` request. Once their keys are queried again (the homeserver reports the
   * change in the next sync), their identity counts as verified, and with it the devices they
   * signed; other clients see our signature too.
   *
   * @throws {@link MatrixCryptoError} `CrossSigningKeyMissing` without the user-signing key,
   *   `InvalidArgument` naming `userId` for our own user or a user without a known identity.
   */
  async verifyUser(userId: string): Promise<SignatureUploadRequest> {
    requireString('userId', userId);
    return toRequest(await native(() => this.#inner.verifyUser(userId))) as SignatureUploadRequest;
  }

  /**
   * Accept a user's current identity after it changed (clears {@link UserIdentityInfo.needsUserApproval}),
   * without verifying it.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `userId` for our own user or a user without a known identity.
   */
  async pinIdentity(userId: string): Promise<void> {
    requireString('userId', userId);
    await native(() => this.#inner.pinIdentity(userId));
  }

  /**
   * Stop requiring a user's identity to be verified: clears
   * {@link UserIdentityInfo.hasVerificationViolation} after their verified identity changed.
   */
  async withdrawVerification(userId: string): Promise<void> {
    requireString('userId', userId);
    await native(() => this.#inner.withdrawVerification(userId));
  }

  /**
   * Our private cross-signing keys and the backup key, encrypted with `key` as the account-data
   * events to store (`PUT /user/{userId}/account_data/{name}`). The backup key is
   * `backupDecryptionKey` when given, else the one saved with {@link saveBackupDecryptionKey}
   * (left out when there is none).
   *
   * @throws {@link MatrixCryptoError} `CrossSigningKeyMissing` when this device does not hold all three cross-signing keys.
   */
  async exportSecretsForStorage(key: SecretStorageKey, backupDecryptionKey?: string): Promise<AccountDataSecret[]> {
    if (!(key instanceof SecretStorageKey)) throw new MatrixCryptoError('InvalidArgument', 'key: must be a SecretStorageKey', 'key');
    if (backupDecryptionKey !== undefined) requireString('backupDecryptionKey', backupDecryptionKey);
    return native(() => this.#inner.exportSecretsForStorage(key.native, backupDecryptionKey));
  }

  /**
   * Import our secrets from secret storage: `secrets` are the account-data events as
   * {@link exportSecretsForStorage} made them (any of the four). Every secret is decrypted and
   * checked before anything changes. The cross-signing keys must match our public identity
   * (our own keys must have been queried, e.g. by a sync); our device is then signed (send
   * `signatureUpload`). The backup key is saved with `backup.version` when it is that backup
   * version's key.
   *
   * @throws {@link MatrixCryptoError} `SecretStorageCorrupt` naming the event that is malformed
   *   or does not decrypt, `CrossSigningKeyMissing` when our public identity is not known yet.
   */
  async importSecretsFromStorage(
    key: SecretStorageKey,
    secrets: AccountDataSecret[],
    backup?: {
      /** The current backup version. */
      version: string;
      /** Its `auth_data.public_key`. */
      publicKey: string;
    },
  ): Promise<SecretsImport> {
    if (!(key instanceof SecretStorageKey)) throw new MatrixCryptoError('InvalidArgument', 'key: must be a SecretStorageKey', 'key');
    if (!Array.isArray(secrets)) throw new MatrixCryptoError('InvalidArgument', 'secrets: must be an array of { name, content }', 'secrets');
    const list = secrets.map((s, i) => ({ name: requireString(`secrets[${i}].name`, s?.name), content: requireString(`secrets[${i}].content`, s?.content) }));
    if (backup !== undefined) {
      requireString('backup.version', backup?.version);
      requireString('backup.publicKey', backup?.publicKey);
    }
    const r = await native(() => this.#inner.importSecretsFromStorage(key.native, list, backup));
    return {
      crossSigning: r.crossSigning,
      signatureUpload: r.signatureUpload ? (toRequest(r.signatureUpload) as SignatureUploadRequest) : null,
      backupDecryptionKey: r.backupDecryptionKey ?? null,
      backupKeyMatches: r.backupKeyMatches ?? null,
    };
  }

  /**
   * Save a backup decryption key (unpadded base64) with its backup version in the store, so
   * that it survives restarts and {@link exportSecretsForStorage} finds it.
   */
  async saveBackupDecryptionKey(decryptionKey: string, version: string): Promise<void> {
    requireString('decryptionKey', decryptionKey);
    requireString('version', version);
    await native(() => this.#inner.saveBackupDecryptionKey(decryptionKey, version));
  }

  /** The backup decryption key saved in the store and the version it was saved for, or `null`. */
  async savedBackupDecryptionKey(): Promise<{
    /** The private key, unpadded base64. */
    decryptionKey: string;
    /** The backup version, when it was saved with one. */
    version: string | null;
  } | null> {
    const r = await native(() => this.#inner.savedBackupDecryptionKey());
    return r ? { decryptionKey: r.decryptionKey, version: r.version ?? null } : null;
  }

  /** A verification flow with `userId` by its flow id, or `null` when none is known. */
  getVerification(userId: string, flowId: string): VerificationInfo | null {
    requireString('userId', userId);
    requireString('flowId', flowId);
    return nativeSync(() => this.#inner.getVerification(userId, flowId)) ?? null;
  }

  /** Every verification request with `userId` the machine knows, in any phase. */
  getVerifications(userId: string): VerificationInfo[] {
    requireString('userId', userId);
    return nativeSync(() => this.#inner.getVerifications(userId));
  }

  /**
   * Ask a device to verify with us (to-device): another of our devices, or another user's,
   * offering `methods` (default `['sas']`). Send the returned requests; the flow is then in
   * phase `created`.
   */
  async requestDeviceVerification(userId: string, deviceId: string, methods?: VerificationMethodKind[]): Promise<VerificationStep> {
    requireString('userId', userId);
    requireString('deviceId', deviceId);
    return step(await native(() => this.#inner.requestDeviceVerification(userId, deviceId, methods)));
  }

  /**
   * The content of an in-room verification request to `userId`: an `m.room.message` with
   * `msgtype: m.key.verification.request`, offering `methods` (default `['sas']`). Send it to a
   * room shared with the user (encrypted in an encrypted room), then call
   * {@link requestVerificationInRoom} with its event id. {@link EncryptedClient.requestVerificationInRoom}
   * does both.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `userId` when the user has no
   *   cross-signing identity we know of (in-room verification verifies a user's identity) or is our own user.
   */
  async verificationRequestContent(userId: string, methods?: VerificationMethodKind[]): Promise<Record<string, unknown>> {
    requireString('userId', userId);
    return JSON.parse(await native(() => this.#inner.verificationRequestContent(userId, methods))) as Record<string, unknown>;
  }

  /**
   * Starts tracking an in-room request made with {@link verificationRequestContent} and sent as
   * event `eventId` in `roomId`, with the same `methods`. The flow id is the event id; the flow
   * is in phase `created`.
   */
  async requestVerificationInRoom(userId: string, roomId: string, eventId: string, methods?: VerificationMethodKind[]): Promise<VerificationInfo> {
    requireString('userId', userId);
    requireString('roomId', roomId);
    requireString('eventId', eventId);
    return native(() => this.#inner.requestVerificationInRoom(userId, roomId, eventId, methods));
  }

  /**
   * Feeds a room event to the verification flows: an in-room request (`m.room.message` with
   * `msgtype: m.key.verification.request`) or an `m.key.verification.*` event relating to one,
   * decrypted (the `event` of {@link decryptRoomEvent}) or as received in an unencrypted room.
   * Other events are ignored. The sender's devices must be known before their request arrives
   * (the machine ignores a request from a device it does not know): track the user and send
   * the key query first. {@link EncryptedClient.syncOnce} does all of this. Returns the flow
   * the event belongs to, or `null` (not a verification event, or no flow we know).
   */
  async receiveRoomVerificationEvent(roomId: string, event: MatrixEvent | string): Promise<VerificationInfo | null> {
    requireString('roomId', roomId);
    const json = jsonArg('event', event);
    return (await native(() => this.#inner.receiveRoomVerificationEvent(roomId, json))) ?? null;
  }

  /**
   * Shows a QR code in a `ready` flow where we offered `qr_show` and the other side can scan:
   * returns the bytes to encode in a QR code (byte mode) for the other user to scan; the flow
   * is then `qr_shown`. Both users need cross-signing identities. Sends nothing.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `flowId` when the flow cannot show one.
   */
  async showQrCode(userId: string, flowId: string): Promise<VerificationQrCode> {
    requireString('userId', userId);
    requireString('flowId', flowId);
    const r = await native(() => this.#inner.showQrCode(userId, flowId));
    return { bytes: new Uint8Array(r.bytes), verification: r.verification };
  }

  /**
   * Scans the other side's QR code (its bytes) in a `ready` flow where we offered `qr_scan`:
   * checks its keys and returns the `m.reciprocate.v1` start to send; the flow is then
   * `reciprocated` until the other side confirms.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `qrCode` when the bytes are no
   *   Matrix verification code or do not match the flow's keys.
   */
  async scanQrCode(userId: string, flowId: string, qrCode: Uint8Array): Promise<VerificationStep> {
    requireString('userId', userId);
    requireString('flowId', flowId);
    if (!(qrCode instanceof Uint8Array)) throw new TypeError('qrCode: must be a Uint8Array (the bytes decoded from the QR code)');
    return step(await native(() => this.#inner.scanQrCode(userId, flowId, Buffer.from(qrCode))));
  }

  /**
   * Confirms that the other side scanned our QR code (phase `qr_scanned`; its user sees a
   * confirmation on their screen). The flow is done once the other side's `done` arrives.
   */
  confirmQrScan(userId: string, flowId: string): VerificationStep {
    requireString('userId', userId);
    requireString('flowId', flowId);
    return step(nativeSync(() => this.#inner.confirmQrScan(userId, flowId)));
  }

  /**
   * Accept a verification request (phase `requested`), offering `methods` (default `['sas']`).
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `flowId` for an unknown flow or one in another phase.
   */
  acceptVerification(userId: string, flowId: string, methods?: VerificationMethodKind[]): VerificationStep {
    requireString('userId', userId);
    requireString('flowId', flowId);
    return step(nativeSync(() => this.#inner.acceptVerification(userId, flowId, methods)));
  }

  /** Start SAS on a `ready` flow, or accept the SAS the other side started. */
  async startSas(userId: string, flowId: string): Promise<VerificationStep> {
    requireString('userId', userId);
    requireString('flowId', flowId);
    return step(await native(() => this.#inner.startSas(userId, flowId)));
  }

  /**
   * Confirm that the SAS (emoji or decimals) matches what the other side shows (phase
   * `keys_exchanged`). Once both sides confirmed, the requests include the signature that
   * publishes the verification.
   */
  async confirmSas(userId: string, flowId: string): Promise<VerificationStep> {
    requireString('userId', userId);
    requireString('flowId', flowId);
    return step(await native(() => this.#inner.confirmSas(userId, flowId)));
  }

  /**
   * Cancel a flow with a cancel code: `m.user` (the default) or, for a SAS that did not match,
   * `m.mismatched_sas`.
   */
  cancelVerification(userId: string, flowId: string, code: VerificationCancelCode = 'm.user'): VerificationStep {
    requireString('userId', userId);
    requireString('flowId', flowId);
    requireString('code', code);
    return step(nativeSync(() => this.#inner.cancelVerification(userId, flowId, code)));
  }

  /**
   * Export room keys in the Matrix key-export format. With no filter, every key; with `roomId`
   * (and `sessionId`), the matching ones. `onProgress` reports `(done, total)` as keys are
   * exported; if it throws, the export still completes and the promise rejects with that error.
   */
  async exportRoomKeys(
    filter: { roomId?: string; sessionId?: string; onProgress?: ProgressCallback } = {},
  ): Promise<ExportedRoomKey[]> {
    if (filter.roomId !== undefined) requireString('roomId', filter.roomId);
    if (filter.sessionId !== undefined) requireString('sessionId', filter.sessionId);
    const relay = new ProgressRelay(filter.onProgress, 'onProgress');
    const json = await native(() => this.#inner.exportRoomKeys(filter.roomId, filter.sessionId, relay.callback));
    relay.rethrow();
    return JSON.parse(json) as ExportedRoomKey[];
  }

  /**
   * Import exported room keys; keys we already hold at a better index are kept. `onProgress`
   * reports `(done, total)` as keys are imported; if it throws, the import still completes and
   * the promise rejects with that error.
   */
  async importRoomKeys(keys: ExportedRoomKey[] | string, options: { onProgress?: ProgressCallback } = {}): Promise<ImportResult> {
    const json = typeof keys === 'string' ? keys : jsonArg('keys', keys);
    const relay = new ProgressRelay(options.onProgress, 'onProgress');
    const result = await native(() => this.#inner.importRoomKeys(json, relay.callback));
    relay.rethrow();
    return result;
  }

  /**
   * Export room keys as an encrypted key-export file (the spec's "MEGOLM SESSION DATA" format,
   * readable by Element and the other SDKs), protected by `passphrase`. Unlike the crate's own
   * export, every field survives, including the withheld extension (see {@link ExportedRoomKey}).
   *
   * @example
   * ```ts
   * const file = await machine.exportRoomKeysFile('correct horse battery staple');
   * await fs.writeFile('element-keys.txt', file);
   * ```
   */
  async exportRoomKeysFile(
    passphrase: string,
    options: { roomId?: string; sessionId?: string; rounds?: number; onProgress?: ProgressCallback } = {},
  ): Promise<string> {
    requireString('passphrase', passphrase);
    if (options.roomId !== undefined) requireString('roomId', options.roomId);
    if (options.sessionId !== undefined) requireString('sessionId', options.sessionId);
    if (options.rounds !== undefined && (!Number.isInteger(options.rounds) || options.rounds < 1 || options.rounds > 0xffffffff)) {
      throw new MatrixCryptoError('InvalidArgument', 'rounds: must be a positive integer', 'rounds');
    }
    const relay = new ProgressRelay(options.onProgress, 'onProgress');
    const text = await native(() =>
      this.#inner.exportRoomKeysFile(passphrase, options.rounds, options.roomId, options.sessionId, relay.callback),
    );
    relay.rethrow();
    return text;
  }

  /**
   * Import an encrypted key-export file made by {@link exportRoomKeysFile} or any client.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `passphrase` (wrong passphrase or
   *   damaged file) or `file` (not a key-export file).
   */
  async importRoomKeysFile(text: string, passphrase: string, options: { onProgress?: ProgressCallback } = {}): Promise<ImportResult> {
    requireString('text', text);
    requireString('passphrase', passphrase);
    const relay = new ProgressRelay(options.onProgress, 'onProgress');
    const result = await native(() => this.#inner.importRoomKeysFile(text, passphrase, relay.callback));
    relay.rethrow();
    return result;
  }

  /**
   * Create a new server-side backup key (`m.megolm_backup.v1.curve25519-aes-sha2`) and the
   * signed body that creates a backup version for it on the homeserver. Nothing is stored:
   * keep `decryptionKey` safe, it is the only way to restore the backup.
   *
   * @example Start a new backup
   * ```ts
   * const key = await machine.createBackupKey();
   * const { version } = await http.post('/_matrix/client/v3/room_keys/version', key.versionBody);
   * await secrets.save('m.megolm_backup.v1', key.decryptionKey);
   * await machine.enableBackup({ publicKey: key.publicKey, version });
   * ```
   */
  async createBackupKey(): Promise<NewBackupKey> {
    return native(() => this.#inner.createBackupKey());
  }

  /**
   * Back up room keys to backup `version`, encrypted to `publicKey` (unpadded base64). Only pass
   * a key you created ({@link createBackupKey}) or whose backup version you checked is signed by
   * you: whoever holds the private half can read every backed-up key. Not persisted: enable the
   * backup again after each {@link open}. Then call {@link backupRoomKeys} after syncs.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `publicKey` (not a Curve25519
   *   key) or `version` (empty).
   */
  async enableBackup(backup: {
    /** The backup's public key, unpadded base64 (`auth_data.public_key` of the backup version). */
    publicKey: string;
    /** The backup version, as `POST /room_keys/version` returned it. */
    version: string;
  }): Promise<void> {
    if (backup === null || typeof backup !== 'object') {
      throw new MatrixCryptoError('InvalidArgument', 'backup: must be { publicKey, version }', 'backup');
    }
    const publicKey = requireString('publicKey', backup.publicKey);
    const version = requireString('version', backup.version);
    await native(() => this.#inner.enableBackup(publicKey, version));
  }

  /** Stop backing up, and forget which keys were backed up (a new backup starts from scratch). */
  async disableBackup(): Promise<void> {
    await native(() => this.#inner.disableBackup());
  }

  /** The version of the enabled backup, or `null` when backup is not enabled. */
  async backupVersion(): Promise<string | null> {
    return (await native(() => this.#inner.backupVersion())) ?? null;
  }

  /**
   * The next batch of room keys to back up (up to 100), or `null` when every key is backed up
   * or backup is not enabled. Send it with `PUT /_matrix/client/v3/room_keys/keys?version=...`,
   * mark it sent with {@link markRequestAsSent}, and call again until it returns `null`. Until
   * it is marked sent, the same batch is returned.
   *
   * Extension beyond the spec: a session we hold only from a later message index, whose start
   * was withheld and for which we hold the withheld record, is backed up with the field
   * `io.github.matrix_crypto_node.withheld: { code, reason, first_known_index }` inside its
   * encrypted `session_data` (the homeserver cannot see it; clients that do not know it ignore
   * it). {@link importBackedUpRoomKeys} restores it.
   */
  async backupRoomKeys(): Promise<KeysBackupRequest | null> {
    const r = await native(() => this.#inner.backupRoomKeys());
    return r ? (toRequest(r) as KeysBackupRequest) : null;
  }

  /** How many room keys the store holds, and how many of them are in the enabled backup. */
  async backupRoomKeyCounts(): Promise<RoomKeyCounts> {
    return native(() => this.#inner.backupRoomKeyCounts());
  }

  /**
   * Restore room keys from server-side key backup: `backup` is the response of
   * `GET /_matrix/client/v3/room_keys/keys?version=...` (object or JSON string), `decryptionKey`
   * the backup's private key (unpadded base64, see {@link NewBackupKey.decryptionKey}) and
   * `version` the backup version it came from (restored keys count as backed up to it). Keys
   * we already hold at a better index are kept. Withheld records that the backup carries (see
   * {@link backupRoomKeys}) are restored, so decryption errors stay explained; backups made by
   * other clients restore as usual. `onProgress` reports `(done, total)` as keys are imported.
   *
   * Backed-up keys that do not decrypt are skipped and listed in `undecryptable` (anyone who
   * knows the public key can write to a backup, so one bad entry does not stop the restore).
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `decryptionKey` (not a key, or no
   *   backed-up key decrypts with it), `version` (empty), or `backup` or the part of it that is
   *   malformed (e.g. `backup.rooms["!room:example.org"].sessions["id"].session_data`).
   */
  async importBackedUpRoomKeys(
    backup: KeyBackup | string,
    decryptionKey: string,
    version: string,
    options: { onProgress?: ProgressCallback } = {},
  ): Promise<BackupImportResult> {
    const json = jsonArg('backup', backup);
    requireString('decryptionKey', decryptionKey);
    requireString('version', version);
    const relay = new ProgressRelay(options.onProgress, 'onProgress');
    const result = await native(() => this.#inner.importBackedUpRoomKeys(json, decryptionKey, version, relay.callback));
    relay.rethrow();
    return result;
  }
}

/** The binding's flat notice, narrowed to the {@link WithheldNotice} union by its `kind`. */
function toWithheldNotice(n: ReceivedNotice): WithheldNotice {
  const base = {
    sender: n.sender,
    senderKey: n.senderKey,
    fromDevice: n.fromDevice,
    reason: n.reason,
    receivedAt: n.receivedAt,
    verdict: n.verdict,
    encrypted: n.encrypted,
  };
  if (n.kind === 'no_olm') return { kind: 'no_olm', code: 'm.no_olm', ...base };
  return { kind: 'room', code: n.code, roomId: n.roomId ?? '', sessionId: n.sessionId ?? '', ...base };
}
