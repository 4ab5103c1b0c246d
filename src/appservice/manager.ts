/**
 * {@link AppserviceCrypto}: end-to-end encryption for an application service that speaks for
 * many users, one device each, fed by the homeserver's transactions instead of `/sync`.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import type { SendEncryptedResult, TimelineEvent } from '../client';
import { DecryptionError, MatrixCryptoError } from '../errors';
import type { LoggerLike } from '../logging';
import { openUncountedDecryptions, OlmMachine, type ShareResult, type StoreOptions } from '../machine';
import { AppserviceMetrics } from '../metrics/appservice';
import { internalMetrics, recorderFor, type MetricsOptions, type MetricsSnapshot, type PrometheusRegistry } from '../metrics/recorder';
import { SerialQueues } from '../queues';
import { deleteAccount, nativeStoreOptions, type PostgresConnection, type StoreDatabase } from '../store';
import { HomeserverError, HomeserverTransport, type HomeserverTransportOptions, type RoomEvent } from '../transport';
import type { ShareSettings, SyncChanges, SyncResult } from '../types';
import type { WithheldPolicy } from '../withheld';
import { BridgeCrossSigning } from './cross-signing';
import { BridgedDevice } from './device';
import { AppserviceError } from './errors';
import { drainDevice, inboxFilter, toDeviceDigest, type InboxDrainOptions, type InboxDrainResult, type InboxHost } from './inbox';
import { AppserviceState, LEASE_MS, type DeviceRecord } from './state';
import { deviceKey, routeTransaction, type DeviceShare, type MalformedTransactionPart } from './transaction';
import { TrustSettings, type BridgedUserTrust } from './trust';

/** The parts of an appservice registration file the crypto layer reads. */
export interface AppserviceRegistration {
  /** The token the appservice uses to call the homeserver. */
  as_token: string;
  /** The token the homeserver uses to call the appservice (checked by {@link serveAppservice}). */
  hs_token: string;
  /** The localpart of the appservice's own user. */
  sender_localpart: string;
  /** The namespaces; only `users` is read. */
  namespaces?: {
    /** Regular expressions (full user ids) of the users the appservice may act as. */
    users?: Array<{
      /** A regular expression over full user ids, e.g. `@bridge_.*:example\\.org`. */
      regex: string;
      /** Whether the namespace is exclusive (not read here). */
      exclusive?: boolean;
    }>;
  };
}

/** Limits of {@link AppserviceCrypto}; every field has a default. */
export interface AppserviceLimits {
  /**
   * How many machines stay open at once. Beyond it, the least recently used idle machine is
   * closed (its state is in its store; it reopens on the next need). Machines busy with an
   * operation are never closed, so the count can exceed the cap while they run. Default 100.
   */
  maxOpenMachines?: number;
  /** How many HTTP requests to the homeserver run at once, across all devices. Default 8. */
  requestConcurrency?: number;
  /** How many devices of one transaction are processed at once. Default 8. */
  transactionConcurrency?: number;
  /**
   * A closed machine is opened to upload one-time keys when a transaction reports fewer than
   * this many `signed_curve25519` keys left on the server for its device (an open machine sees
   * every count). Default 25 (the machine keeps 50 uploaded).
   */
  oneTimeKeyRefillBelow?: number;
  /**
   * How many of the room's bridged members {@link AppserviceCrypto.processTransaction} tries in
   * turn to decrypt an event when none of them is known to hold its room key. Default 3.
   */
  decryptionCandidates?: number;
  /**
   * How many times in a row one device's part of a transaction may fail before its share is
   * set aside (persisted, replayed when the device works again) and the transaction is answered
   * 200 without it, so one broken device (e.g. a corrupt store) cannot hold back the others.
   * Failures a retry can fix for every device (the appservice's state cannot be written, another
   * process holds a device's store) are never set aside. Default 3.
   */
  deviceAttempts?: number;
}

/**
 * The database of an appservice: its state (devices, processed transactions, ...) and, unless
 * {@link AppserviceCryptoOptions.deviceStore} says otherwise, every device's keys.
 */
export type AppserviceStore =
  | {
      /** Our SQLite engine in `<storeRoot>/matrix-crypto-node.sqlite3`, locked to one process. */
      kind: 'sqlite';
    }
  | ({
      /**
       * PostgreSQL: several processes may open the appservice; one serves, the others wait in
       * {@link AppserviceCrypto.open} until its lease is free (see docs/appservice.md).
       */
      kind: 'postgres';
    } & PostgresConnection);

/** Options of {@link AppserviceCrypto.open}. */
export interface AppserviceCryptoOptions {
  /** The homeserver's client-server API base URL, e.g. `https://matrix.example.org`. */
  homeserverUrl: string;
  /** The appservice registration (tokens, sender, user namespace). */
  registration: AppserviceRegistration;
  /**
   * The folder of the appservice's crypto state: with the default `store`, one SQLite database
   * (`matrix-crypto-node.sqlite3`) holding the appservice's state and every device's keys.
   * Created if missing. A folder of the previous layout (a folder per device under `devices/`
   * and `appservice-state.jsonl`) is migrated into `store` on the first open.
   */
  storeRoot: string;
  /**
   * The database of the appservice's state and its devices' keys. Default
   * `{ kind: 'sqlite' }`: one SQLite database in `storeRoot`.
   */
  store?: AppserviceStore;
  /** Encrypts the appservice's state and the default device stores at rest. Must be the same on every open. */
  storePassphrase?: string;
  /**
   * Where the machine of a bridged device keeps its keys. Default: its account in `store`
   * (with `storePassphrase`).
   */
  deviceStore?: (userId: string, deviceId: string) => StoreOptions;
  /**
   * Called once when {@link AppserviceCrypto.open} starts waiting because another process
   * serves the appservice (PostgreSQL), e.g. to log that this process is the standby.
   */
  onStandby?: () => void;
  /** Limits (open machines, concurrency); see {@link AppserviceLimits} for the defaults. */
  limits?: AppserviceLimits;
  /** The withheld policy of a bridged user's machine; default: every code, with default reasons. */
  withheldPolicy?: (userId: string) => WithheldPolicy | undefined;
  /** Default settings of every room-key share; per-call settings override them field by field. */
  shareSettings?: ShareSettings;
  /**
   * What a bridged user's device requires of the devices it talks to (room-key sharing strategy,
   * decryption trust requirement): one value for every user, or a function of the user. The
   * defaults work with every client in use today; see {@link BridgedUserTrust}.
   */
  trust?: BridgedUserTrust | ((userId: string) => BridgedUserTrust | undefined);
  /** The display name of new devices. Default `matrix-crypto-node bridge`. */
  deviceDisplayName?: (userId: string) => string;
  /** Further transport options (retries, back-off, a custom `fetch`, ...), for every device. */
  transport?: Omit<HomeserverTransportOptions, 'baseUrl' | 'accessToken' | 'masquerade' | 'metrics'>;
  /**
   * Metrics of the manager, its machines and their requests: `{ registry }` to register them in
   * a prom-client `Registry` (shared with everything else opened with it; {@link serveAppservice}
   * then serves it at `GET /metrics`). Either way {@link AppserviceCrypto.metrics} returns the
   * figures; see docs/metrics.md.
   */
  metrics?: MetricsOptions;
  /**
   * When each device's pending to-device events are drained from the homeserver (at start, after
   * a failed transaction, every 30 minutes; see {@link InboxDrainOptions}); `false` turns the
   * automatic drains off. Default: all on.
   */
  inboxDrain?: InboxDrainOptions | false;
  /**
   * Receives the manager's own log lines: skipped malformed parts of transactions, set-aside
   * shares, to-device events for unknown devices, inbox drain progress (`console` works).
   * Default: none.
   */
  logger?: LoggerLike;
  /** How long events wait for a missing room key before the manager gives up on it; see {@link KeyWaitOptions}. */
  keyWait?: KeyWaitOptions;
  /**
   * Called once with the events whose room key never came: they waited
   * {@link KeyWaitOptions.giveUpAfterMs} and a last decryption attempt failed; they are dropped
   * from the waiting list (see {@link TransactionResult.lateDecryptions}). An error it throws is
   * logged, and the events stay dropped. Default: none (they are dropped and counted only).
   */
  onKeyNeverCame?: (events: KeyNeverCame[]) => void | Promise<void>;
  /** The clock of the key wait, ms since the epoch. Default `Date.now`. @internal */
  now?: () => number;
}

/** How long events wait for their missing room key (see {@link AppserviceCryptoOptions.onKeyNeverCame}). */
export interface KeyWaitOptions {
  /**
   * How long after the first event of a room key (room, session) failed for want of it the
   * manager gives up on the key, in milliseconds. Checked at each transaction and on a timer
   * (every minute, or every `giveUpAfterMs` when shorter). Default 600,000 (10 minutes).
   */
  giveUpAfterMs?: number;
}

/** An event whose room key never came (see {@link AppserviceCryptoOptions.onKeyNeverCame}). */
export interface KeyNeverCame {
  /** The room of the event. */
  roomId: string;
  /** The Megolm session id of the missing room key (empty when the event names none). */
  sessionId: string;
  /** The encrypted event, as the homeserver sent it. */
  event: RoomEvent;
  /** How long the manager waited for the key, in milliseconds (counted in this process). */
  waitedMs: number;
}

/** To-device events of a transaction for a recipient the manager does not serve: reported, never stored. */
export interface UnroutedToDeviceEvents extends BridgedDeviceInfo {
  /** How many. */
  count: number;
  /**
   * `not-in-namespace`: the user is neither the appservice's sender nor in its namespace;
   * `unknown-device`: the user has no device of that id created by this manager.
   */
  reason: 'not-in-namespace' | 'unknown-device';
}

/** A device whose share of a transaction was set aside after {@link AppserviceLimits.deviceAttempts} failures. */
export interface SetAsideDevice extends BridgedDeviceInfo {
  /** The last failure. */
  error: unknown;
}

/** Counters of how transactions and inbox drains went, since the manager opened. */
export interface AppserviceDeliveryCounters {
  /** Malformed parts of transactions skipped. */
  malformedParts: number;
  /** To-device events for users outside the namespace or unknown devices, not stored. */
  unroutedToDeviceEvents: number;
  /** To-device events skipped because their device had processed them already. */
  duplicateToDeviceEvents: number;
  /** Device shares set aside after repeated failures. */
  setAsideShares: number;
  /** Set-aside shares replayed to their recovered device. */
  replayedShares: number;
  /** Inbox drains run (each over many devices). */
  drains: number;
  /** Devices whose inbox drain failed. */
  failedDeviceDrains: number;
  /** New to-device events that inbox drains fed to machines. */
  drainedToDeviceEvents: number;
  /** Events given up on because their room key never came (see {@link AppserviceCryptoOptions.onKeyNeverCame}). */
  keysNeverCame: number;
}

/** A bridged user's device. */
export interface BridgedDeviceInfo {
  /** The bridged user. */
  userId: string;
  /** Their device id. */
  deviceId: string;
}

/** A room event of a transaction, decrypted when it was encrypted; switch on `kind`. */
export type AppserviceTimelineEvent = TimelineEvent & {
  /**
   * The bridged user whose device decrypted the event (or, for `undecryptable`, whose error is
   * reported); `null` for plaintext events and when no bridged user of the room has a device.
   */
  decryptedBy: string | null;
};

/** One bridged device's part of a {@link TransactionResult}. */
export interface TransactionDeviceResult extends BridgedDeviceInfo {
  /** What the device's machine made of its to-device events and key counts (room keys, withheld notices, ...). */
  result: SyncResult;
}

/** What {@link AppserviceCrypto.processTransaction} returns. */
export interface TransactionResult {
  /** The transaction id. */
  txnId: string;
  /** The transaction was processed before: nothing was done again and `events` is empty. */
  duplicate: boolean;
  /** The transaction's room events in order, encrypted ones decrypted where possible. */
  events: AppserviceTimelineEvent[];
  /**
   * Events of earlier transactions that were `undecryptable` for want of their room key and
   * decrypt now, with a key this transaction brought (the homeserver may push the event before
   * the key). The manager keeps up to 1,000 such events in its store, oldest dropped first,
   * across restarts.
   */
  lateDecryptions: AppserviceTimelineEvent[];
  /** What each bridged device's machine made of its to-device events and key counts. */
  devices: TransactionDeviceResult[];
  /** To-device events for devices this manager does not know (not created by it), left unread. */
  unroutedToDeviceEvents: number;
  /** The same, per recipient and reason. */
  unrouted: UnroutedToDeviceEvents[];
  /** To-device events skipped because their device had processed them already (e.g. through an inbox drain). */
  duplicateToDeviceEvents: number;
  /** Parts of the body that were malformed and skipped; the rest was processed. */
  malformed: MalformedTransactionPart[];
  /**
   * Devices whose share was set aside after failing {@link AppserviceLimits.deviceAttempts}
   * times: it is persisted and replayed when the device works again (on its next share or inbox
   * drain).
   */
  setAside: SetAsideDevice[];
  /**
   * This transaction was handed to the bridge before (its `onResult` was called, by this
   * process or one that stopped since) and not recorded as processed: the bridge may have acted
   * on these events already.
   */
  redelivery: boolean;
}

/** Options of {@link AppserviceCrypto.processTransaction}. */
export interface ProcessTransactionOptions {
  /**
   * Called with the result before the transaction is recorded as processed. If it throws, the
   * transaction is not recorded, `processTransaction` rejects, and the homeserver's retry hands
   * the events to it again (room keys received are kept either way).
   */
  onResult?: (result: TransactionResult) => void | Promise<void>;
}

/** Options of {@link AppserviceCrypto.encrypt} and {@link AppserviceCrypto.sendEncrypted}. */
export interface AppserviceEncryptOptions {
  /** Share settings for this call, over the manager's defaults. */
  shareSettings?: ShareSettings;
}

/** What {@link AppserviceCrypto.encrypt} returns. */
export interface AppserviceEncryptResult {
  /** The `m.room.encrypted` content to send in the room as the bridged user. */
  content: Record<string, unknown>;
  /** The room-key share that preceded it (who got the key, who got a withheld notice). */
  share: ShareResult;
}

/** A counting semaphore. */
class Limiter {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  constructor(private readonly max: number) {}
  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.active >= this.max) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    try {
      return await task();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}

/** The least time between two drains asked for by successful transactions while recovering. */
const RECOVERY_DRAIN_GAP_MS = 5_000;
/**
 * How long after the start or a failed transaction a drain that finds nothing new ends the
 * recovery (before, the homeserver may still be sending the transactions it queued, which carry
 * no to-device events).
 */
const RECOVERY_MS = 30_000;

/** Whether a failure is one a retry of the transaction can fix for every device, so its share must not be set aside. */
function retryFixes(err: unknown): boolean {
  if (err instanceof AppserviceError) return err.code === 'Closed';
  // Another process holds the device's store (its lease): that process serves the device.
  return err instanceof MatrixCryptoError && err.code === 'StoreLocked';
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function positiveInt(field: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1) {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be a positive integer`, field);
  }
  return value;
}

function nonEmpty(field: string, value: unknown): string {
  if (typeof value !== 'string' || value === '') {
    throw new MatrixCryptoError('InvalidArgument', `${field}: must be a non-empty string`, field);
  }
  return value;
}

/**
 * Whether the machine's device keys were uploaded: it has no key upload pending that carries
 * them (the crate adds them to its upload until the homeserver took them once).
 */
async function keysUploaded(machine: OlmMachine): Promise<boolean> {
  for (const r of await machine.outgoingRequests()) {
    if (r.type === 'keys_upload' && (JSON.parse(r.body) as { device_keys?: unknown }).device_keys !== undefined) return false;
  }
  return true;
}

/** A device id for a new bridged device: `MCN` and ten capital letters. */
function newDeviceId(): string {
  const bytes = randomBytes(10);
  return `MCN${Array.from(bytes, (b) => String.fromCharCode(65 + (b % 26))).join('')}`;
}

/**
 * The default store of a bridged device: its account in the appservice's one SQLite database
 * in `storeRoot` (the device's user and id name the account).
 */
export function defaultDeviceStore(storeRoot: string, _userId: string, _deviceId: string, passphrase?: string): StoreOptions {
  return passphrase === undefined ? { kind: 'sqlite', path: storeRoot } : { kind: 'sqlite', path: storeRoot, passphrase };
}

/** The database of `options.store`, checked field by field. */
function storeDatabase(options: AppserviceCryptoOptions): StoreDatabase {
  const store = options.store ?? { kind: 'sqlite' };
  if (store === null || typeof store !== 'object') {
    throw new MatrixCryptoError('InvalidArgument', 'options.store: must be an object such as { kind: "sqlite" }', 'options.store');
  }
  if (store.kind === 'sqlite') {
    for (const key of Object.keys(store)) {
      if (key !== 'kind') {
        throw new MatrixCryptoError('InvalidArgument', `options.store.${key}: a sqlite store lives in options.storeRoot and takes no ${key}`, `options.store.${key}`);
      }
    }
    return { kind: 'sqlite', path: options.storeRoot };
  }
  if (store.kind !== 'postgres') {
    throw new MatrixCryptoError('InvalidArgument', `options.store.kind: ${JSON.stringify((store as { kind?: unknown }).kind)} is not one of sqlite, postgres`, 'options.store.kind');
  }
  try {
    nativeStoreOptions(store);
  } catch (err) {
    if (err instanceof MatrixCryptoError && err.field) {
      throw new MatrixCryptoError('InvalidArgument', `options.${err.message}`, `options.${err.field}`);
    }
    throw err;
  }
  if (store.url === undefined && store.user === undefined) {
    throw new MatrixCryptoError('InvalidArgument', 'options.store.user: is required without url', 'options.store.user');
  }
  return store;
}

/**
 * End-to-end encryption for an application service: one device per bridged user, each with
 * its own {@link OlmMachine}, created on first need with MSC4190 and driven by the homeserver's
 * transactions (MSC4203 to-device events, MSC3202 key counts and device lists).
 *
 * Every request a device's machine produces is sent as that user and device (`user_id` and
 * `device_id` query parameters, MSC3202 masquerading with the stable MSC4326 parameter),
 * through a {@link HomeserverTransport} (retries, back-off), with at most
 * {@link AppserviceLimits.requestConcurrency} requests in flight. At most
 * {@link AppserviceLimits.maxOpenMachines} machines are open; the others wait in their stores.
 *
 * @example An echo bridge (see examples/echo-bridge.ts)
 * ```ts
 * const crypto = await AppserviceCrypto.open({ homeserverUrl, registration, storeRoot: './crypto' });
 * await serveAppservice(crypto, {
 *   port: 9000,
 *   onEvents: async ({ events }) => {
 *     for (const e of events) {
 *       if (e.kind === 'decrypted' && e.decryptedBy) {
 *         await crypto.sendEncrypted(e.decryptedBy, e.roomId, 'm.room.message', { msgtype: 'm.text', body: 'echo' });
 *       }
 *     }
 *   },
 * });
 * ```
 */
export class AppserviceCrypto {
  private readonly homeserverUrl: string;
  private readonly registration: AppserviceRegistration;
  private readonly storeFor: (userId: string, deviceId: string) => StoreOptions;
  private readonly maxOpen: number;
  private readonly txnConcurrency: number;
  private readonly otkRefillBelow: number;
  private readonly decryptionCandidates: number;
  private readonly withheldPolicy: ((userId: string) => WithheldPolicy | undefined) | undefined;
  private readonly shareSettings: ShareSettings;
  private readonly trust: TrustSettings;
  private readonly crossSigning = new BridgeCrossSigning();
  private readonly displayName: (userId: string) => string;
  private readonly transportOptions: Omit<HomeserverTransportOptions, 'baseUrl' | 'accessToken' | 'masquerade'>;
  private readonly metricsOf: AppserviceMetrics;
  /** When the homeserver last answered one of our requests (status below 500), ms since the epoch. */
  private answeredAt: number | null = null;
  private readonly namespace: RegExp[];
  private readonly appTransport: HomeserverTransport;
  /** Open devices, least recently used first. */
  private readonly open = new Map<string, BridgedDevice>();
  /** Machines being closed by the LRU, by user id (reopening waits for the close). */
  private readonly closing = new Map<string, Promise<void>>();
  /** Operations running or waiting on each user's device; the LRU never closes a pinned one. */
  private readonly pins = new Map<string, number>();
  /** Users whose device keys this process has seen uploaded (or had nothing to upload). */
  private readonly uploaded = new Set<string>();
  /** Devices being opened, by user id. */
  private readonly opening = new Map<string, Promise<BridgedDevice>>();
  /** Device creations in flight, by user id. */
  private readonly creating = new Map<string, Promise<BridgedDeviceInfo>>();
  /** Bridged users known to hold a room key, by `roomId|sessionId` (this process only). */
  private readonly holders = new Map<string, Set<string>>();
  /**
   * When the first event of each waiting entry (`roomId|sessionId`, see
   * {@link AppserviceState.waiting}) failed, ms since the epoch; in this process only, for the
   * late-key metric (entries of an earlier process count from when this one first saw them).
   */
  private readonly waitingSince = new Map<string, number>();
  private transactions: Promise<void> = Promise.resolve();
  private readonly deviceAttempts: number;
  private readonly drainOptions: InboxDrainOptions | false;
  private readonly logger: LoggerLike | undefined;
  /** Each device's deliveries (transaction shares, inbox drains), one at a time. */
  private readonly deliveries = new SerialQueues();
  /** Failed attempts of a device's part of a transaction, by `txnId\ndeviceKey`. */
  private readonly attempts = new Map<string, number>();
  /** Late decryptions of background drains, for the next transaction when no callback takes them. */
  private pendingLate: AppserviceTimelineEvent[] = [];
  /** The running background drain, and whether another was asked for meanwhile. */
  private drainRunning: Promise<void> | undefined;
  private drainAgain = false;
  /**
   * After the start and after a failed transaction, until a transaction brings to-device events
   * again or a drain finds nothing new `RECOVERY_MS` after: the homeserver may still send
   * transactions it queued while we failed, which carry no to-device events, so successes are
   * followed by drains (at most one every `RECOVERY_DRAIN_GAP_MS`).
   */
  private recovering = true;
  /** When the manager last started recovering (at open, or at a failed transaction). */
  private recoveringSince = Date.now();
  /** When the last drain after a successful transaction started, and the timer of the next. */
  private lastRecoveryDrain = 0;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private drainTimer: NodeJS.Timeout | undefined;
  private readonly counters: AppserviceDeliveryCounters = {
    malformedParts: 0,
    unroutedToDeviceEvents: 0,
    duplicateToDeviceEvents: 0,
    setAsideShares: 0,
    replayedShares: 0,
    drains: 0,
    failedDeviceDrains: 0,
    drainedToDeviceEvents: 0,
    keysNeverCame: 0,
  };
  private readonly giveUpAfterMs: number;
  private readonly onKeyNeverCame: ((events: KeyNeverCame[]) => void | Promise<void>) | undefined;
  private readonly now: () => number;
  private keyWaitTimer: NodeJS.Timeout | undefined;
  /** Users whose device is being created in this process (its keys are not uploaded yet when it first opens). */
  private readonly fresh = new Set<string>();
  private deviceResetCount = 0;
  /** No new public call is accepted. */
  private closed = false;
  /** The machines were closed: not even running calls may open one. */
  private machinesClosed = false;

  /** The persisted state; set by {@link open} once the options are checked. */
  private state!: AppserviceState;

  private constructor(
    options: AppserviceCryptoOptions,
    private readonly database: StoreDatabase,
  ) {
    this.homeserverUrl = options.homeserverUrl;
    this.registration = options.registration;
    const passphrase = options.storePassphrase;
    const shared: StoreOptions = passphrase === undefined ? database : { ...database, passphrase };
    const chosen = options.deviceStore ?? (() => shared);
    // A device whose keys stayed in a folder of the crate's store (see `DeviceRecord.folder`).
    this.storeFor = (u, d) => {
      const folder = this.state.devices.get(u)?.folder;
      if (folder === undefined) return chosen(u, d);
      return passphrase === undefined ? { kind: 'sqlite', path: folder } : { kind: 'sqlite', path: folder, passphrase };
    };
    const limits = options.limits ?? {};
    this.maxOpen = positiveInt('options.limits.maxOpenMachines', limits.maxOpenMachines, 100);
    const requestConcurrency = positiveInt('options.limits.requestConcurrency', limits.requestConcurrency, 8);
    this.txnConcurrency = positiveInt('options.limits.transactionConcurrency', limits.transactionConcurrency, 8);
    this.otkRefillBelow = positiveInt('options.limits.oneTimeKeyRefillBelow', limits.oneTimeKeyRefillBelow, 25);
    this.decryptionCandidates = positiveInt('options.limits.decryptionCandidates', limits.decryptionCandidates, 3);
    this.deviceAttempts = positiveInt('options.limits.deviceAttempts', limits.deviceAttempts, 3);
    this.drainOptions = options.inboxDrain ?? {};
    this.logger = options.logger;
    this.giveUpAfterMs = positiveInt('options.keyWait.giveUpAfterMs', options.keyWait?.giveUpAfterMs, 600_000);
    this.onKeyNeverCame = options.onKeyNeverCame;
    this.now = options.now ?? Date.now;
    this.withheldPolicy = options.withheldPolicy;
    this.shareSettings = options.shareSettings ?? {};
    this.trust = new TrustSettings(options.trust);
    this.displayName = options.deviceDisplayName ?? (() => 'matrix-crypto-node bridge');
    const requests = new Limiter(requestConcurrency);
    const baseFetch = options.transport?.fetch ?? globalThis.fetch.bind(globalThis);
    // One limiter around every device's fetch: back-off waits happen outside it.
    const limitedFetch: typeof fetch = (input, init) =>
      requests.run(async () => {
        const res = await baseFetch(input, init);
        if (res.status < 500) this.answeredAt = Date.now();
        return res;
      });
    this.metricsOf = new AppserviceMetrics(recorderFor(options.metrics, 'options.metrics'));
    this.transportOptions = { ...options.transport, fetch: limitedFetch, metrics: internalMetrics(this.metricsOf.recorder) };
    this.namespace = (options.registration.namespaces?.users ?? []).map((ns, i) => {
      try {
        return new RegExp(`^(?:${ns.regex})$`);
      } catch (err) {
        throw new MatrixCryptoError(
          'InvalidArgument',
          `options.registration.namespaces.users[${i}].regex: not a valid regular expression (${(err as Error).message})`,
          `options.registration.namespaces.users[${i}].regex`,
        );
      }
    });
    this.appTransport = this.masquerading();
  }

  /**
   * Opens the manager on its store (reading which devices exist and which transactions were
   * processed), migrating a store root of the previous layout first. Makes no request and opens
   * no machine. On PostgreSQL, resolves once this process holds the appservice's lease: at once
   * when no other process serves it, else when the other closes or stops (its lease runs out
   * 15 s after its last renewal); call {@link serveAppservice} after it.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming the bad option, e.g.
   *   `options.registration.as_token: must be a non-empty string`.
   */
  static async open(options: AppserviceCryptoOptions): Promise<AppserviceCrypto> {
    if (options === null || typeof options !== 'object') {
      throw new MatrixCryptoError('InvalidArgument', 'options: must be an object', 'options');
    }
    nonEmpty('options.homeserverUrl', options.homeserverUrl);
    if (options.registration === null || typeof options.registration !== 'object') {
      throw new MatrixCryptoError('InvalidArgument', 'options.registration: must be an object', 'options.registration');
    }
    nonEmpty('options.registration.as_token', options.registration.as_token);
    nonEmpty('options.registration.hs_token', options.registration.hs_token);
    nonEmpty('options.registration.sender_localpart', options.registration.sender_localpart);
    nonEmpty('options.storeRoot', options.storeRoot);
    if (options.storePassphrase !== undefined) nonEmpty('options.storePassphrase', options.storePassphrase);
    if (options.keyWait !== undefined && (options.keyWait === null || typeof options.keyWait !== 'object')) {
      throw new MatrixCryptoError('InvalidArgument', 'options.keyWait: must be an object', 'options.keyWait');
    }
    for (const f of ['deviceStore', 'withheldPolicy', 'deviceDisplayName', 'onStandby', 'onKeyNeverCame', 'now'] as const) {
      if (options[f] !== undefined && typeof options[f] !== 'function') {
        throw new MatrixCryptoError('InvalidArgument', `options.${f}: must be a function`, `options.${f}`);
      }
    }
    recorderFor(options.metrics, 'options.metrics');
    const drain = options.inboxDrain;
    if (drain !== undefined && drain !== false) {
      if (drain === null || typeof drain !== 'object') {
        throw new MatrixCryptoError('InvalidArgument', 'options.inboxDrain: must be an object or false', 'options.inboxDrain');
      }
      if (drain.intervalMs !== undefined && (!Number.isInteger(drain.intervalMs) || drain.intervalMs < 0)) {
        throw new MatrixCryptoError('InvalidArgument', 'options.inboxDrain.intervalMs: must be a non-negative integer', 'options.inboxDrain.intervalMs');
      }
      if (drain.atStart !== undefined && typeof drain.atStart !== 'boolean') {
        throw new MatrixCryptoError('InvalidArgument', 'options.inboxDrain.atStart: must be a boolean', 'options.inboxDrain.atStart');
      }
      for (const f of ['onLateDecryptions', 'onProgress'] as const) {
        if (drain[f] !== undefined && typeof drain[f] !== 'function') {
          throw new MatrixCryptoError('InvalidArgument', `options.inboxDrain.${f}: must be a function`, `options.inboxDrain.${f}`);
        }
      }
    }
    if (options.logger !== undefined) {
      for (const m of ['error', 'warn', 'info', 'debug'] as const) {
        if (typeof options.logger?.[m] !== 'function') {
          throw new MatrixCryptoError('InvalidArgument', `options.logger: must have an ${m}() method`, 'options.logger');
        }
      }
    }
    const database = storeDatabase(options);
    // Every option is checked before the store is opened (or, on PostgreSQL, waited for).
    const crypto = new AppserviceCrypto(options, database);
    crypto.state = await AppserviceState.open({
      root: options.storeRoot,
      store: database,
      name: options.registration.sender_localpart,
      ...(options.storePassphrase !== undefined ? { passphrase: options.storePassphrase } : {}),
      importAccounts: options.deviceStore === undefined,
      ...(options.onStandby ? { onStandby: options.onStandby } : {}),
    });
    crypto.startDrains();
    crypto.keyWaitTimer = setInterval(() => crypto.scheduleKeyWaitCheck(), Math.min(crypto.giveUpAfterMs, 60_000));
    crypto.keyWaitTimer.unref();
    return crypto;
  }

  /** Starts the automatic inbox drains: one now, then every `intervalMs`. */
  private startDrains(): void {
    if (this.drainOptions === false) {
      this.recovering = false;
      return;
    }
    if (this.drainOptions.atStart ?? true) this.scheduleDrain('start');
    const every = this.drainOptions.intervalMs ?? 1_800_000;
    if (every > 0) {
      this.drainTimer = setInterval(() => this.scheduleDrain('periodic'), every);
      this.drainTimer.unref();
    }
  }

  /** Counters of malformed parts, set-aside shares, duplicates and drains since the manager opened. */
  get deliveryCounters(): AppserviceDeliveryCounters {
    return { ...this.counters };
  }

  /** Whether other processes may open this appservice's store (PostgreSQL). @internal */
  get sharesStore(): boolean {
    return this.database.kind === 'postgres';
  }

  /** Resolves when another process took the appservice's lease over (never on SQLite). @internal */
  whenLeaseLost(): Promise<Error> {
    return this.state.whenLeaseLost;
  }

  /** The hs_token of the registration (what {@link serveAppservice} checks). */
  get hsToken(): string {
    return this.registration.hs_token;
  }

  /**
   * The metrics of the manager, its machines and their requests (see docs/metrics.md): with
   * `metrics: { registry }` at {@link open}, the figures of everything recording into that registry.
   */
  metrics(): MetricsSnapshot {
    return this.metricsOf.recorder.snapshot();
  }

  /** The prom-client registry given as `metrics.registry` at {@link open}, or `null`. */
  get metricsRegistry(): PrometheusRegistry | null {
    return this.metricsOf.recorder.registry;
  }

  /** Whether {@link close} was called (the store root and the machines are then closed). */
  get isClosed(): boolean {
    return this.closed;
  }

  /**
   * When the homeserver last answered a request of this manager (any device, any status below
   * 500), in milliseconds since the epoch; `null` if it never did in this process.
   */
  get homeserverAnsweredAt(): number | null {
    return this.answeredAt;
  }

  /**
   * Asks the homeserver who the appservice is (`GET /account/whoami` with the `as_token`) and
   * resolves whether it answered (any status below 500) within `timeoutMs` (default 5,000), retries
   * included. An answer updates {@link homeserverAnsweredAt}.
   */
  async pingHomeserver(timeoutMs = 5000): Promise<boolean> {
    positiveInt('timeoutMs', timeoutMs, 5000);
    try {
      await this.appTransport.whoami({ signal: AbortSignal.timeout(timeoutMs) });
      return true;
    } catch (err) {
      return err instanceof HomeserverError && err.status < 500;
    }
  }

  /**
   * How many bridged users' cross-signing identities this manager replaced because their
   * device's store held no private keys of the published identity (the store was lost, or the
   * identity was created elsewhere), since it opened. Each is also logged as a warning.
   */
  get crossSigningResets(): number {
    return this.crossSigning.resets;
  }

  /**
   * How many bridged users' devices this manager replaced, since it opened, because the
   * homeserver no longer listed the device's keys when the device first opened in this process
   * (it was deleted, or the server lost its keys). Each is also logged as a warning.
   */
  get deviceResets(): number {
    return this.deviceResetCount;
  }

  /** How many machines are open now. */
  get openMachineCount(): number {
    return this.open.size;
  }

  /** Every bridged user with a device, and the device. */
  get devices(): BridgedDeviceInfo[] {
    return [...this.state.devices.values()].map((d) => ({ userId: d.userId, deviceId: d.deviceId }));
  }

  /** The device id of a bridged user, or `null` when they have none yet. */
  deviceIdOf(userId: string): string | null {
    return this.state.devices.get(userId)?.deviceId ?? null;
  }

  /** Whether the appservice may act as `userId` (its sender, or a user in its namespace). */
  isBridgedUser(userId: string): boolean {
    if (typeof userId !== 'string') return false;
    const localpart = /^@([^:]+):/.exec(userId)?.[1];
    return localpart === this.registration.sender_localpart || this.namespace.some((r) => r.test(userId));
  }

  /**
   * Registers a user in the appservice's namespace (`POST /register`,
   * `m.login.application_service`, no login). Resolves `false` when the user already exists.
   */
  async registerUser(localpart: string): Promise<boolean> {
    nonEmpty('localpart', localpart);
    this.assertOpen();
    return this.appTransport.registerAppserviceUser(localpart);
  }

  /**
   * The device of a bridged user, created on first need: a new device id is recorded, the
   * device is created on the homeserver with MSC4190 (`PUT /_matrix/client/v3/devices/{id}`
   * as the user, no login), its machine is opened and its keys uploaded as the device, and it
   * is cross-signed by the user: the user's cross-signing identity is created (or replaced, when
   * the published one's private keys are not in the device's store), kept in the device's store
   * and published, and the device's signature uploaded. Later calls (and later processes on the
   * same store root) return the same device.
   *
   * @throws {@link AppserviceError} `NotInNamespace` for a user the appservice may not act as;
   *   `DeviceManagementUnsupported` when the homeserver does not support MSC4190 (nothing is
   *   uploaded; the call can be retried once the homeserver is upgraded).
   *   `CrossSigningFailed` when the homeserver demands user-interactive auth to publish the
   *   user's cross-signing keys or does not keep the device's signature.
   * @throws {@link HomeserverError} when the homeserver refuses the creation or the key upload
   *   otherwise (the call can be retried).
   */
  async deviceFor(userId: string): Promise<BridgedDeviceInfo> {
    this.assertBridged(userId);
    const rec = this.state.devices.get(userId);
    if (rec?.created && this.uploaded.has(userId)) return { userId, deviceId: rec.deviceId };
    let pending = this.creating.get(userId);
    if (!pending) {
      pending = this.create(userId).finally(() => this.creating.delete(userId));
      this.creating.set(userId, pending);
    }
    return pending;
  }

  private async create(userId: string): Promise<BridgedDeviceInfo> {
    let rec = this.state.devices.get(userId);
    if (rec?.created) {
      // Created by an earlier process: upload whatever is still pending (usually nothing).
      await this.using(userId, async (d) => {
        await d.drain();
        await this.crossSigning.ensure(d);
      });
      this.uploaded.add(userId);
      // The device may have been replaced on open (its keys were gone from the server).
      return { userId, deviceId: this.state.devices.get(userId)?.deviceId ?? rec.deviceId };
    }
    if (!rec) {
      // Recorded before the homeserver hears of it, so a crash in between reuses the same id.
      await this.state.recordDevice(userId, newDeviceId(), false);
      rec = this.state.devices.get(userId)!;
    }
    const deviceId = rec.deviceId;
    const asUser = this.masquerading({ userId });
    try {
      await asUser.putDevice(deviceId, { display_name: this.displayName(userId) });
    } catch (err) {
      if (err instanceof HomeserverError && (err.status === 404 || err.errcode === 'M_UNRECOGNIZED' || err.errcode === 'M_NOT_FOUND')) {
        throw new AppserviceError(
          'DeviceManagementUnsupported',
          `the homeserver does not let the appservice create a device for ${userId} (MSC4190): PUT /_matrix/client/v3/devices/${deviceId} ` +
            `answered ${err.status} ${err.errcode ?? ''}. The homeserver must support MSC4190 (on Synapse, also set ` +
            `"io.element.msc4190: true" in the appservice registration)`,
          { userId, cause: err },
        );
      }
      throw err;
    }
    await this.state.recordDevice(userId, deviceId, true);
    this.fresh.add(userId);
    try {
      await this.using(userId, async (d) => {
        await d.drain();
        await this.crossSigning.ensure(d);
      });
    } finally {
      this.fresh.delete(userId);
    }
    this.uploaded.add(userId);
    return { userId, deviceId };
  }

  /**
   * Deletes a bridged user's device: on the homeserver (`DELETE /devices/{id}` as the user,
   * MSC4190, no user-interactive auth), then its machine, then its account in its store
   * (`sqlite` and `postgres` stores, through the store's account deletion), then the record. Resolves `false` when the user had no device. The next {@link deviceFor} creates a
   * new device.
   */
  async deleteDevice(userId: string): Promise<boolean> {
    this.assertBridged(userId);
    await this.creating.get(userId)?.catch(() => undefined);
    const rec = this.state.devices.get(userId);
    if (!rec) return false;
    const asUser = this.masquerading({ userId });
    try {
      await asUser.deleteDevice(rec.deviceId);
    } catch (err) {
      if (!(err instanceof HomeserverError && err.status === 404)) throw err;
    }
    await this.closing.get(userId);
    const device = this.open.get(userId) ?? (await this.opening.get(userId)?.catch(() => undefined));
    if (device) {
      await device.idle();
      this.open.delete(userId);
      await device.machine.close();
    }
    const store = this.storeFor(userId, rec.deviceId);
    if (rec.folder !== undefined) {
      await rm(rec.folder, { recursive: true, force: true });
    } else if (store.kind === 'sqlite' || store.kind === 'postgres') {
      await deleteAccount(store, userId, rec.deviceId);
    }
    await this.state.recordDeleted(userId);
    this.uploaded.delete(userId);
    this.crossSigning.forget(userId);
    return true;
  }

  /**
   * Runs `task` with the open machine of a bridged user's device (opened if needed, kept open
   * while `task` runs), e.g. to set local trust or read devices. Creates the device if needed.
   */
  async withMachine<T>(userId: string, task: (machine: OlmMachine) => Promise<T>): Promise<T> {
    await this.deviceFor(userId);
    return this.using(userId, (d) => task(d.machine));
  }

  /**
   * Processes the body of `PUT /_matrix/app/v1/transactions/{txnId}`: routes each to-device
   * event, one-time-key count and unused fallback key list to its (user, device) machine
   * (stable and unstable field names, see the `transaction` module), hands the device-list
   * changes to every machine, sends what the machines then want sent (key uploads, key queries,
   * Olm sessions), and decrypts the room events.
   *
   * A transaction id processed before resolves at once with `duplicate: true`. Transactions run
   * one at a time. When a part fails (a store error, the homeserver refusing an upload), the
   * other parts still run, and the call rejects with {@link AppserviceError} `TransactionFailed`:
   * answer the homeserver with an error status, and its retry redoes only the failed parts. No
   * received room key is lost: the to-device events of a failed part are kept in the store root
   * and fed on the retry of that transaction id when the retry comes without them (Synapse's
   * retries carry the room events only). A device whose part fails
   * {@link AppserviceLimits.deviceAttempts} times has its share set aside (kept, replayed when
   * the device works again) and the transaction succeeds without it (`setAside`).
   *
   * Malformed parts of `body` (a body that is not an object, lists of the wrong type, entries
   * that are not events, values nested too deep) are skipped and reported in `malformed`; the
   * rest is processed. To-device events for users outside the namespace or for unknown devices
   * are reported in `unrouted`, never stored; those a device processed already (e.g. through an
   * inbox drain) are skipped (`duplicateToDeviceEvents`).
   *
   * Encrypted events are decrypted by a bridged user of the room whose device got the room key
   * in this process, else by up to {@link AppserviceLimits.decryptionCandidates} bridged members
   * of the room in turn (membership is learnt from the transactions' `m.room.member` events);
   * a failure comes back as `undecryptable` with the typed {@link DecryptionError}, withheld
   * explanation included. Decrypt as a given user with {@link decryptRoomEvent}.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` for an empty `txnId`.
   * @throws {@link AppserviceError} `TransactionFailed` when a part failed (see above).
   */
  async processTransaction(txnId: string, body: unknown, options: ProcessTransactionOptions = {}): Promise<TransactionResult> {
    nonEmpty('txnId', txnId);
    this.assertOpen();
    const run = this.transactions.then(() => this.timed(txnId, body, options));
    this.transactions = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** {@link process}, counted and timed. */
  private async timed(txnId: string, body: unknown, options: ProcessTransactionOptions): Promise<TransactionResult> {
    const start = performance.now();
    try {
      const result = await this.process(txnId, body, options);
      this.metricsOf.transaction(start, result.duplicate ? 'duplicate' : 'processed', result.devices.length);
      return result;
    } catch (err) {
      this.metricsOf.transaction(start, 'failed', 0);
      throw err;
    }
  }

  private async process(txnId: string, body: unknown, options: ProcessTransactionOptions): Promise<TransactionResult> {
    const lost = this.state.leaseLost;
    if (lost) throw new AppserviceError('LeaseLost', `transaction ${txnId}: ${lost.message}; close this manager`);
    if (this.state.isTransactionDone(txnId)) {
      return {
        txnId,
        duplicate: true,
        events: [],
        lateDecryptions: [],
        devices: [],
        unroutedToDeviceEvents: 0,
        unrouted: [],
        duplicateToDeviceEvents: 0,
        malformed: [],
        setAside: [],
        redelivery: false,
      };
    }
    try {
      const brought = { toDevice: false };
      const result = await this.processOnce(txnId, body, options, brought);
      if (this.recovering) {
        // Transactions queued while we failed come without to-device events; one that brings
        // some again means the homeserver pushes live. Either way, drain what the queued missed.
        if (brought.toDevice) this.recovering = false;
        this.scheduleDrain('recovery');
      }
      return result;
    } catch (err) {
      if (this.drainOptions !== false && !this.recovering) {
        this.recovering = true;
        this.recoveringSince = Date.now();
      }
      throw err;
    }
  }

  private async processOnce(
    txnId: string,
    body: unknown,
    options: ProcessTransactionOptions,
    brought: { toDevice: boolean },
  ): Promise<TransactionResult> {
    const routed = routeTransaction(body);
    const malformed = routed.malformed;
    brought.toDevice = [...routed.devices.values()].some((d) => d.toDeviceEvents.length > 0);
    if (routed.changed.length > 0 || routed.left.length > 0) {
      if (!this.state.isPartDone(txnId, 'device_lists')) {
        await this.state.recordListChangesOf(txnId, routed.changed, routed.left);
      }
    }
    // Shares of devices whose part failed in an earlier attempt: a retry may come without them
    // (Synapse resends only the room events), and their room keys must not be lost.
    const held = this.state.heldShares(txnId);
    const shares = new Map(routed.devices);
    for (const [key, h] of held) {
      const again = shares.get(key);
      if (again && again.toDeviceEvents.length > 0) continue;
      shares.set(key, {
        userId: h.userId,
        deviceId: h.deviceId,
        toDeviceEvents: h.toDeviceEvents,
        ...((again?.oneTimeKeyCounts ?? h.oneTimeKeyCounts) ? { oneTimeKeyCounts: again?.oneTimeKeyCounts ?? h.oneTimeKeyCounts } : {}),
        ...((again?.unusedFallbackKeys ?? h.unusedFallbackKeys) ? { unusedFallbackKeys: again?.unusedFallbackKeys ?? h.unusedFallbackKeys } : {}),
      });
    }
    let unroutedCount = 0;
    const unrouted: UnroutedToDeviceEvents[] = [];
    let duplicates = 0;
    const work: Array<{ rec: DeviceRecord; share: DeviceShare | undefined }> = [];
    for (const share of shares.values()) {
      const rec = this.state.devices.get(share.userId);
      if (!rec || rec.deviceId !== share.deviceId || !rec.created) {
        if (share.toDeviceEvents.length > 0) {
          const reason = this.isBridgedUser(share.userId) ? 'unknown-device' : 'not-in-namespace';
          unrouted.push({ userId: share.userId, deviceId: share.deviceId, count: share.toDeviceEvents.length, reason });
          unroutedCount += share.toDeviceEvents.length;
        }
        continue;
      }
      if (this.state.isPartDone(txnId, deviceKey(share.userId, share.deviceId))) continue;
      // What an inbox drain already fed the device is not fed again.
      const fresh = share.toDeviceEvents.filter((e) => !this.state.hasDigest(share.userId, toDeviceDigest(e)));
      duplicates += share.toDeviceEvents.length - fresh.length;
      const own = fresh.length === share.toDeviceEvents.length ? share : { ...share, toDeviceEvents: fresh };
      if (this.open.has(share.userId) || this.needsMachine(own) || this.state.asideShares(share.userId).length > 0) work.push({ rec, share: own });
    }
    // Open machines outside the transaction still have to see the device-list changes.
    for (const userId of this.open.keys()) {
      const rec = this.state.devices.get(userId);
      if (rec && rec.listSeq < this.state.listSeq && !shares.has(deviceKey(userId, rec.deviceId))) {
        work.push({ rec, share: undefined });
      }
    }
    this.counters.malformedParts += malformed.length;
    this.counters.unroutedToDeviceEvents += unroutedCount;
    this.counters.duplicateToDeviceEvents += duplicates;
    if (malformed.length > 0) {
      this.logger?.warn(
        `appservice transaction ${txnId}: skipped ${malformed.length} malformed part(s): ` +
          malformed.slice(0, 5).map((m) => `${m.field} ${m.reason}`).join('; ') + (malformed.length > 5 ? '; ...' : ''),
      );
    }
    for (const u of unrouted) {
      this.logger?.warn(`appservice transaction ${txnId}: ${u.count} to-device event(s) for ${u.userId} ${u.deviceId} not stored (${u.reason})`);
    }
    const devices: TransactionResult['devices'] = [];
    const setAside: SetAsideDevice[] = [];
    const failures: unknown[] = [];
    const queue = [...work];
    const worker = async (): Promise<void> => {
      for (let item = queue.shift(); item; item = queue.shift()) {
        const { rec, share } = item;
        const key = deviceKey(rec.userId, rec.deviceId);
        const attemptKey = `${txnId}\n${key}`;
        try {
          const result = await this.deliveries.run(rec.userId, () => this.feed(rec, share));
          this.attempts.delete(attemptKey);
          if (share) {
            await this.state.recordPart(txnId, key);
            devices.push({ userId: rec.userId, deviceId: rec.deviceId, result });
          }
        } catch (err) {
          const attempts = (this.attempts.get(attemptKey) ?? 0) + 1;
          if (this.attempts.size >= 10_000) this.attempts.delete(this.attempts.keys().next().value as string);
          this.attempts.set(attemptKey, attempts);
          try {
            if (share && attempts >= this.deviceAttempts && !retryFixes(err)) {
              // This device has failed on every attempt: its share waits in the store for it, the others move on.
              if (share.toDeviceEvents.length > 0 || share.oneTimeKeyCounts || share.unusedFallbackKeys) {
                await this.state.recordAside({
                  userId: rec.userId,
                  deviceId: rec.deviceId,
                  toDeviceEvents: share.toDeviceEvents,
                  ...(share.oneTimeKeyCounts ? { oneTimeKeyCounts: share.oneTimeKeyCounts } : {}),
                  ...(share.unusedFallbackKeys ? { unusedFallbackKeys: share.unusedFallbackKeys } : {}),
                });
              }
              await this.state.recordPart(txnId, key);
              this.attempts.delete(attemptKey);
              this.counters.setAsideShares++;
              setAside.push({ userId: rec.userId, deviceId: rec.deviceId, error: err });
              this.logger?.warn(
                `appservice transaction ${txnId}: set aside the share of ${rec.userId} ${rec.deviceId} after ${attempts} failed attempts ` +
                  `(${share.toDeviceEvents.length} to-device event(s), replayed when the device works again): ${errorText(err)}`,
              );
              continue;
            }
            failures.push(err);
            if (share && share.toDeviceEvents.length > 0 && !held.has(key)) await this.state.recordHeld(txnId, key, share);
          } catch (e) {
            failures.push(e);
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.txnConcurrency, work.length) }, worker));
    if (failures.length > 0) {
      throw new AppserviceError(
        'TransactionFailed',
        `transaction ${txnId}: ${failures.length} of ${work.length} devices failed; answer with an error so the homeserver retries (first: ${errorText(failures[0])})`,
        { cause: failures[0] },
      );
    }
    await this.learnMembership(routed.events);
    const events: AppserviceTimelineEvent[] = [];
    for (const [i, event] of routed.events.entries()) {
      const roomId = typeof event.room_id === 'string' ? event.room_id : undefined;
      if (event.type !== 'm.room.encrypted' || roomId === undefined) {
        events.push({ kind: 'plaintext', roomId: roomId ?? '', event, decryptedBy: null });
        continue;
      }
      try {
        events.push(await this.decryptForBridge(roomId, event));
      } catch (err) {
        // An event the machine cannot even read (not a failure a retry can fix): reported, left out.
        if (!(err instanceof MatrixCryptoError && err.code === 'InvalidArgument')) throw err;
        const part = { field: `body.events[${routed.eventIndexes[i]}]`, reason: err.message };
        malformed.push(part);
        this.counters.malformedParts++;
        this.logger?.warn(`appservice transaction ${txnId}: skipped ${part.field}: ${part.reason}`);
      }
    }
    const late = await this.retryWaiting(devices);
    const fromDrains = this.pendingLate;
    const redelivery = this.state.wasHanded(txnId);
    const result: TransactionResult = {
      txnId,
      duplicate: false,
      events,
      lateDecryptions: [...fromDrains, ...late.items],
      devices,
      unroutedToDeviceEvents: unroutedCount,
      unrouted,
      duplicateToDeviceEvents: duplicates,
      malformed,
      setAside,
      redelivery,
    };
    if (options.onResult) {
      // Recorded first: a process that dies before recording the transaction leaves the mark
      // for the next attempt (here or in a standby) to say it is a redelivery.
      await this.state.recordHanded(txnId);
      await options.onResult(result);
    }
    await this.state.recordTransaction(txnId);
    // Only once the transaction is done: a retry hands the same events over again.
    await late.commit();
    this.metricsOf.handedOver([...fromDrains, ...events, ...late.items]);
    this.pendingLate = this.pendingLate.filter((e) => !fromDrains.includes(e));
    await this.wait(events);
    await this.giveUpOnKeys();
    return result;
  }

  /** Whether a closed machine must open for this share. */
  private needsMachine(share: DeviceShare): boolean {
    if (share.toDeviceEvents.length > 0) return true;
    const otks = share.oneTimeKeyCounts?.signed_curve25519;
    if (share.oneTimeKeyCounts && (otks === undefined || otks < this.otkRefillBelow)) return true;
    return share.unusedFallbackKeys !== undefined && !share.unusedFallbackKeys.includes('signed_curve25519');
  }

  /**
   * Hands one device its share (of a transaction or an inbox drain), after the shares set aside
   * for it, with the device-list changes it has not seen; records the digests of its to-device
   * events. Runs in the device's delivery turn.
   */
  private async feed(rec: DeviceRecord, share: DeviceShare | undefined): Promise<SyncResult> {
    const seq = this.state.listSeq;
    const aside = this.state.asideShares(rec.userId);
    const result = await this.using(rec.userId, async (d) => {
      const changes: SyncChanges = {};
      const toDevice = [...aside.flatMap((a) => a.toDeviceEvents), ...(share?.toDeviceEvents ?? [])];
      if (toDevice.length) changes.toDeviceEvents = toDevice;
      const latest = [...aside].reverse();
      const counts = share?.oneTimeKeyCounts ?? latest.find((a) => a.oneTimeKeyCounts)?.oneTimeKeyCounts;
      if (counts) changes.oneTimeKeyCounts = counts;
      const fallback = share?.unusedFallbackKeys ?? latest.find((a) => a.unusedFallbackKeys)?.unusedFallbackKeys;
      if (fallback) changes.unusedFallbackKeys = fallback;
      const lists = rec.listSeq < seq ? this.state.listChangesSince(rec.listSeq) : { changed: [], left: [] };
      if (share?.changedDevices) {
        lists.changed = [...new Set([...lists.changed, ...share.changedDevices.changed])];
        lists.left = [...new Set([...lists.left, ...share.changedDevices.left])];
      }
      if (lists.changed.length || lists.left.length) changes.changedDevices = lists;
      return d.receive(changes);
    });
    await this.state.recordSeen(rec.userId, seq);
    if (aside.length > 0) {
      await this.state.recordAsideReplayed(rec.userId, aside.length);
      this.counters.replayedShares += aside.length;
      this.logger?.info(`appservice: replayed ${aside.length} set-aside share(s) to ${rec.userId} ${rec.deviceId}`);
    }
    if (share?.toDeviceEvents.length) await this.state.recordDigests(rec.userId, share.toDeviceEvents.map(toDeviceDigest));
    for (const k of result.roomKeyUpdates) this.noteHolder(k.roomId, k.sessionId, rec.userId);
    return result;
  }

  /** Asks for a background drain of every device; one runs at a time, and one more if asked meanwhile. */
  private scheduleDrain(reason: 'start' | 'recovery' | 'periodic'): void {
    if (this.drainOptions === false || this.closed) return;
    if (reason === 'recovery') {
      // A burst of transactions (the homeserver catching up) asks for a drain each: at most
      // one every RECOVERY_DRAIN_GAP_MS.
      const wait = this.lastRecoveryDrain + RECOVERY_DRAIN_GAP_MS - Date.now();
      if (wait > 0) {
        this.recoveryTimer ??= setTimeout(() => {
          this.recoveryTimer = undefined;
          this.scheduleDrain('recovery');
        }, wait).unref();
        return;
      }
      this.lastRecoveryDrain = Date.now();
    }
    if (this.drainRunning) {
      this.drainAgain = true;
      return;
    }
    const run = async (): Promise<void> => {
      do {
        this.drainAgain = false;
        try {
          const result = await this.drainAll(undefined, reason);
          // Nothing left behind long after the start or the failure: the homeserver pushes live again.
          if (reason === 'recovery' && result.toDeviceEvents === 0 && result.failed.length === 0 && Date.now() - this.recoveringSince >= RECOVERY_MS) {
            this.recovering = false;
          }
          if (result.lateDecryptions.length > 0) {
            const take = this.drainOptions === false ? undefined : this.drainOptions.onLateDecryptions;
            if (take) {
              await take(result.lateDecryptions);
              this.metricsOf.handedOver(result.lateDecryptions);
            } else this.pendingLate = [...this.pendingLate, ...result.lateDecryptions].slice(-1000);
          }
        } catch (err) {
          this.logger?.error(`appservice: inbox drain (${reason}) failed: ${errorText(err)}`);
        }
      } while (this.drainAgain && !this.closed);
    };
    this.drainRunning = run().finally(() => (this.drainRunning = undefined));
  }

  /**
   * Drains the inboxes of bridged devices now: each device's pending to-device events are
   * fetched from the homeserver as that device (`/sync` with a filter that keeps only to-device
   * events, `timeout=0`), fed to its machine (skipping those it processed already, e.g. from a
   * transaction), and acknowledged so that the homeserver deletes them. Devices are drained
   * {@link AppserviceLimits.transactionConcurrency} at a time, their requests within
   * {@link AppserviceLimits.requestConcurrency}. A device whose drain fails is reported in
   * `failed` and tried again in the next drain. The manager runs drains by itself (see
   * {@link AppserviceCryptoOptions.inboxDrain}); call this to drain on demand.
   *
   * @param userIds the bridged users whose devices to drain; default every device created.
   */
  async drainInboxes(userIds?: string[]): Promise<InboxDrainResult> {
    this.assertOpen();
    if (userIds !== undefined && (!Array.isArray(userIds) || userIds.some((u) => typeof u !== 'string'))) {
      throw new MatrixCryptoError('InvalidArgument', 'userIds: must be an array of user ids', 'userIds');
    }
    return this.drainAll(userIds, 'on demand');
  }

  private async drainAll(userIds: string[] | undefined, reason: string): Promise<InboxDrainResult> {
    const recs = [...this.state.devices.values()].filter((r) => r.created && (userIds === undefined || userIds.includes(r.userId)));
    const result: InboxDrainResult = { devices: recs.length, toDeviceEvents: 0, duplicates: 0, malformed: 0, failed: [], lateDecryptions: [] };
    const onProgress = this.drainOptions === false ? undefined : this.drainOptions.onProgress;
    const host: InboxHost = {
      state: this.state,
      sync: (rec, since) =>
        this.masquerading({ userId: rec.userId, deviceId: rec.deviceId }).sync({
          ...(since === undefined ? {} : { since }),
          timeoutMs: 0,
          filter: inboxFilter(),
          setPresence: 'offline',
        }),
      serial: (userId, task) => this.deliveries.run(userId, task),
      needsMachine: (share) => this.needsMachine(share),
      feed: (rec, share) => this.feed(rec, share),
    };
    this.counters.drains++;
    const started = Date.now();
    const fed: TransactionDeviceResult[] = [];
    let done = 0;
    const step = Math.max(1, Math.ceil(recs.length / 10));
    const queue = [...recs];
    const worker = async (): Promise<void> => {
      for (let rec = queue.shift(); rec; rec = queue.shift()) {
        // A drain stops early when the manager closes; a deleted device is skipped.
        if (this.closed || this.state.devices.get(rec.userId) !== rec) continue;
        try {
          const d = await drainDevice(host, rec);
          result.toDeviceEvents += d.toDeviceEvents;
          result.duplicates += d.duplicates;
          result.malformed += d.malformed;
          for (const r of d.results) fed.push({ userId: rec.userId, deviceId: rec.deviceId, result: r });
        } catch (err) {
          result.failed.push({ userId: rec.userId, deviceId: rec.deviceId, error: err });
          this.counters.failedDeviceDrains++;
        }
        done++;
        onProgress?.({ done, total: recs.length, toDeviceEvents: result.toDeviceEvents, duplicates: result.duplicates, failed: result.failed.length });
        if (recs.length >= 100 && (done % step === 0 || done === recs.length)) {
          this.logger?.info(`appservice: inbox drain (${reason}): ${done}/${recs.length} devices, ${result.toDeviceEvents} new to-device event(s)`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.txnConcurrency, recs.length) }, worker));
    this.counters.drainedToDeviceEvents += result.toDeviceEvents;
    this.counters.duplicateToDeviceEvents += result.duplicates;
    const late = await this.retryWaiting(fed);
    await late.commit();
    result.lateDecryptions = late.items;
    if (recs.length > 0) {
      this.logger?.info(
        `appservice: inbox drain (${reason}) of ${recs.length} device(s) in ${Date.now() - started} ms: ${result.toDeviceEvents} new to-device event(s), ` +
          `${result.duplicates} duplicate(s), ${result.malformed} malformed, ${result.failed.length} device(s) failed` +
          (result.failed.length ? ` (first: ${result.failed[0]!.userId}: ${errorText(result.failed[0]!.error)})` : ''),
      );
    }
    return result;
  }

  /** Keeps the events that lack their room key (in the store, in one write), to decrypt them when the key comes. */
  private async wait(items: AppserviceTimelineEvent[]): Promise<void> {
    const waiting: Array<{ key: string; event: RoomEvent }> = [];
    for (const item of items) {
      if (item.kind !== 'undecryptable' || typeof item.event.event_id !== 'string') continue;
      if (item.error.code !== 'MissingRoomKey' && item.error.code !== 'UnknownMessageIndex') continue;
      waiting.push({ key: `${item.roomId}|${item.error.sessionId ?? ''}`, event: item.event });
    }
    const before = this.state.waitingTotal;
    await this.state.recordWaiting(waiting);
    for (const { key } of waiting) if (!this.waitingSince.has(key) && this.state.waiting.has(key)) this.waitingSince.set(key, this.now());
    this.metricsOf.waiting(this.state.waitingTotal - before);
  }

  /**
   * Decrypts the waiting events whose room key one of these devices just received; `commit`
   * forgets them (called once the transaction is recorded).
   */
  private async retryWaiting(devices: TransactionDeviceResult[]): Promise<{ items: AppserviceTimelineEvent[]; commit: () => Promise<void> }> {
    const items: AppserviceTimelineEvent[] = [];
    const decrypted = new Set<RoomEvent>();
    const keys = new Set<string>();
    for (const d of devices) {
      for (const key of d.result.roomKeyUpdates) {
        const k = `${key.roomId}|${key.sessionId}`;
        for (const event of this.state.waiting.get(k) ?? []) {
          if (decrypted.has(event)) continue;
          const item = await this.decryptRoomEvent(d.userId, key.roomId, event);
          if (item.kind !== 'decrypted') continue;
          items.push(item);
          decrypted.add(event);
          keys.add(k);
        }
      }
    }
    const commit = async (): Promise<void> => {
      if (decrypted.size === 0) return;
      const before = this.state.waitingTotal;
      await this.state.recordWoken([...decrypted].map((e) => e.event_id as string));
      this.metricsOf.waiting(this.state.waitingTotal - before);
      for (const k of keys) {
        this.metricsOf.lateKey(this.waitingSince.get(k) ?? this.now(), this.now());
        if (!this.state.waiting.has(k)) this.waitingSince.delete(k);
      }
    };
    return { items, commit };
  }

  /** The timer's check of the key wait, in the transactions' turn (never alongside one). */
  private scheduleKeyWaitCheck(): void {
    if (this.closed) return;
    this.transactions = this.transactions.then(
      () => this.giveUpOnKeys().catch((err: unknown) => this.logger?.error(`appservice: key wait check failed: ${errorText(err)}`)),
      () => undefined,
    );
  }

  /**
   * Gives up on the room keys events waited for longer than `giveUpAfterMs`: tries their events
   * once more (a key may have come by a way that named no waiting event, e.g. an import), hands
   * those that decrypt to the bridge as late decryptions (with the next transaction), and drops
   * the others from the waiting list, reporting them once through `onKeyNeverCame`.
   */
  private async giveUpOnKeys(): Promise<void> {
    if (this.closed) return;
    const now = this.now();
    const expired: Array<{ key: string; events: RoomEvent[]; waitedMs: number }> = [];
    for (const [key, events] of this.state.waiting) {
      let since = this.waitingSince.get(key);
      // An entry of an earlier process counts from when this one first saw it.
      if (since === undefined) this.waitingSince.set(key, (since = now));
      if (now - since >= this.giveUpAfterMs) expired.push({ key, events: [...events], waitedMs: now - since });
    }
    if (expired.length === 0) return;
    const woken: AppserviceTimelineEvent[] = [];
    const lost: KeyNeverCame[] = [];
    for (const { key, events, waitedMs } of expired) {
      const cut = key.lastIndexOf('|');
      const roomId = key.slice(0, cut);
      const sessionId = key.slice(cut + 1);
      for (const event of events) {
        const item = await this.decryptForBridge(roomId, event);
        if (item.kind === 'decrypted') woken.push(item);
        else lost.push({ roomId, sessionId, event, waitedMs });
      }
    }
    const before = this.state.waitingTotal;
    await this.state.recordWoken([...woken.map((i) => i.event), ...lost.map((l) => l.event)].map((e) => e.event_id as string));
    this.metricsOf.waiting(this.state.waitingTotal - before);
    for (const { key } of expired) if (!this.state.waiting.has(key)) this.waitingSince.delete(key);
    if (woken.length > 0) this.pendingLate = [...this.pendingLate, ...woken].slice(-1000);
    if (lost.length === 0) return;
    this.counters.keysNeverCame += lost.length;
    this.logger?.warn(`appservice: gave up on ${lost.length} event(s) whose room key never came (waited ${this.giveUpAfterMs} ms or more)`);
    try {
      await this.onKeyNeverCame?.(lost);
    } catch (err) {
      this.logger?.error(`appservice: onKeyNeverCame threw: ${errorText(err)}`);
    }
  }

  private noteHolder(roomId: string, sessionId: string, userId: string): void {
    const k = `${roomId}|${sessionId}`;
    let set = this.holders.get(k);
    if (!set) {
      // Bounded: forget the oldest session beyond 100,000 (decryption then falls back to members).
      if (this.holders.size >= 100_000) this.holders.delete(this.holders.keys().next().value as string);
      set = new Set();
      this.holders.set(k, set);
    }
    set.add(userId);
  }

  private async learnMembership(events: RoomEvent[]): Promise<void> {
    const changes: Array<{ roomId: string; userId: string; joined: boolean }> = [];
    for (const e of events) {
      if (e.type !== 'm.room.member' || typeof e.state_key !== 'string' || typeof e.room_id !== 'string') continue;
      if (!this.isBridgedUser(e.state_key)) continue;
      changes.push({ roomId: e.room_id, userId: e.state_key, joined: (e.content as { membership?: unknown })?.membership === 'join' });
    }
    await this.state.recordMembership(changes);
  }

  private async decryptForBridge(roomId: string, event: RoomEvent): Promise<AppserviceTimelineEvent> {
    const sessionId = typeof event.content?.session_id === 'string' ? event.content.session_id : '';
    const withDevice = (u: string): boolean => this.state.devices.get(u)?.created === true;
    const known = [...(this.holders.get(`${roomId}|${sessionId}`) ?? [])].filter(withDevice);
    const members = [...(this.state.members.get(roomId) ?? [])].filter((u) => withDevice(u) && !known.includes(u));
    // Open machines first: trying them costs no store open.
    members.sort((a, b) => Number(this.open.has(b)) - Number(this.open.has(a)));
    const candidates = [...known, ...members.slice(0, this.decryptionCandidates)];
    let failure: AppserviceTimelineEvent | undefined;
    for (const userId of candidates) {
      const item = await this.decryptRoomEvent(userId, roomId, event);
      if (item.kind === 'decrypted') return item;
      if (item.kind === 'undecryptable' && (!failure || (failure.kind === 'undecryptable' && !failure.error.withheld && item.error.withheld))) {
        failure = item;
      }
    }
    if (failure) return failure;
    const error = new DecryptionError('MissingRoomKey', `no bridged user of ${roomId} has a device to decrypt the event`, sessionId || null, null);
    return { kind: 'undecryptable', roomId, event, error, decryptedBy: null };
  }

  /**
   * Discards the outbound room key of every bridged device that is a member of the room (as
   * learnt from the transactions' `m.room.member` events), opening closed machines for it, so
   * the next message each sends in the room uses a new room key (e.g. after a leak, or to stop
   * sharing with devices that should no longer read the room). Each discard waits for an
   * encryption running in the room on that device. Resolves to the bridged users whose device
   * had a room key for the room to discard.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming `roomId` when it is not a non-empty string.
   */
  async discardRoomKey(roomId: string): Promise<string[]> {
    nonEmpty('roomId', roomId);
    this.assertOpen();
    const users = [...(this.state.members.get(roomId) ?? [])].filter((u) => this.state.devices.get(u)?.created === true);
    const discarded: string[] = [];
    await Promise.all(
      users.map(async (u) => {
        if (await this.using(u, (d) => d.discardRoomKey(roomId))) discarded.push(u);
      }),
    );
    return discarded.sort();
  }

  /**
   * Decrypts a room event as a given bridged user. Events that are not `m.room.encrypted` come
   * back as `plaintext`; a failure as `undecryptable` with the typed {@link DecryptionError}
   * (e.g. `MissingRoomKey`, with the withheld notice that explains it if one arrived). Creates
   * the user's device if they have none (it then holds no room key yet).
   *
   * @throws {@link AppserviceError} `NotInNamespace`; {@link MatrixCryptoError} for failures that
   *   are not about the event (e.g. a store error).
   */
  async decryptRoomEvent(userId: string, roomId: string, event: RoomEvent): Promise<AppserviceTimelineEvent> {
    nonEmpty('roomId', roomId);
    if (event === null || typeof event !== 'object') {
      throw new MatrixCryptoError('InvalidArgument', 'event: must be an event object', 'event');
    }
    if (event.type !== 'm.room.encrypted') return { kind: 'plaintext', roomId, event, decryptedBy: null };
    await this.deviceFor(userId);
    const trustRequirement = this.trust.of(userId).decryptionTrustRequirement;
    return this.using(userId, async (d) => {
      try {
        const decrypted = await d.machine.decryptRoomEvent(event, roomId, trustRequirement ? { trustRequirement } : undefined);
        return { kind: 'decrypted', roomId, event, decrypted, decryptedBy: userId };
      } catch (err) {
        if (err instanceof DecryptionError) return { kind: 'undecryptable', roomId, event, error: err, decryptedBy: userId };
        throw err;
      }
    });
  }

  /**
   * Encrypts an event as a bridged user for a room: fetches the joined members (as the user),
   * tracks them, queries their devices, claims one-time keys for devices without an Olm session,
   * shares the room key under the user's withheld policy and sends every to-device message, then
   * encrypts. Serialised per room and device. Send the returned content as `m.room.encrypted`
   * as the user (or use {@link sendEncrypted}).
   */
  async encrypt(
    userId: string,
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    options: AppserviceEncryptOptions = {},
  ): Promise<AppserviceEncryptResult> {
    nonEmpty('roomId', roomId);
    nonEmpty('type', type);
    if (content === null || typeof content !== 'object') {
      throw new MatrixCryptoError('InvalidArgument', 'content: must be an object', 'content');
    }
    await this.deviceFor(userId);
    const { sharingStrategy } = this.trust.of(userId);
    const settings = { ...this.shareSettings, ...(sharingStrategy ? { sharingStrategy } : {}), ...options.shareSettings };
    return this.using(userId, (d) => d.encrypt(roomId, type, content, settings));
  }

  /**
   * {@link encrypt}, then sends the event in the room as the bridged user and device.
   * `options.txnId` is the transaction id of the send (generated when omitted); reuse it to
   * retry a send without duplicating it.
   */
  async sendEncrypted(
    userId: string,
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    options: AppserviceEncryptOptions & { txnId?: string } = {},
  ): Promise<SendEncryptedResult> {
    const encrypted = await this.encrypt(userId, roomId, type, content, options);
    const { event_id } = await this.using(userId, (d) =>
      d.transport.sendRoomEvent(roomId, 'm.room.encrypted', encrypted.content, options.txnId),
    );
    return { eventId: event_id, share: encrypted.share };
  }

  /**
   * A transport with the appservice's token: as the appservice itself, or, with `masquerade`,
   * as a bridged user (and device) through the `user_id` / `device_id` query parameters.
   */
  private masquerading(masquerade?: { userId: string; deviceId?: string }): HomeserverTransport {
    return new HomeserverTransport({
      ...this.transportOptions,
      baseUrl: this.homeserverUrl,
      accessToken: this.registration.as_token,
      ...(masquerade ? { masquerade } : {}),
    });
  }

  /** A transport that acts as a bridged user's device (for joins, sends, ...). */
  async transportFor(userId: string): Promise<HomeserverTransport> {
    const { deviceId } = await this.deviceFor(userId);
    return this.masquerading({ userId, deviceId });
  }

  /**
   * Waits for running transactions and operations, then closes every machine and the store
   * (giving up the appservice's lease on PostgreSQL, so a standby takes over at once). The
   * manager cannot be used afterwards; open a new one on the same store to continue.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.drainTimer);
    clearInterval(this.keyWaitTimer);
    clearTimeout(this.recoveryTimer);
    await this.transactions;
    await this.drainRunning;
    await Promise.allSettled([...this.creating.values(), ...this.opening.values(), ...this.closing.values()]);
    this.machinesClosed = true;
    const devices = [...this.open.values()];
    this.open.clear();
    await Promise.all(
      devices.map(async (d) => {
        await d.idle();
        await d.machine.close();
      }),
    );
    await this.state.close();
  }

  /** Runs `task` on the user's open device, opening it (and closing idle ones beyond the cap). */
  private async using<T>(userId: string, task: (d: BridgedDevice) => Promise<T>): Promise<T> {
    if (this.machinesClosed) throw new AppserviceError('Closed', 'the AppserviceCrypto was closed; open a new one on the same store root');
    // Pinned from before the open until the task ends, so the LRU cannot close it in between.
    this.pins.set(userId, (this.pins.get(userId) ?? 0) + 1);
    try {
      let device = this.open.get(userId);
      if (device) {
        // Most recently used last.
        this.open.delete(userId);
        this.open.set(userId, device);
      } else {
        let pending = this.opening.get(userId);
        if (!pending) {
          pending = this.openDevice(userId).finally(() => this.opening.delete(userId));
          this.opening.set(userId, pending);
        }
        device = await pending;
      }
      return await task(device);
    } finally {
      const n = this.pins.get(userId)! - 1;
      if (n === 0) this.pins.delete(userId);
      else this.pins.set(userId, n);
      void this.evict();
    }
  }

  private async openDevice(userId: string): Promise<BridgedDevice> {
    const rec = this.state.devices.get(userId);
    if (!rec) throw new AppserviceError('NotInNamespace', `${userId} has no device; call deviceFor first`, { userId });
    await this.closing.get(userId);
    const policy = this.withheldPolicy?.(userId);
    const options = {
      userId,
      deviceId: rec.deviceId,
      store: this.storeFor(userId, rec.deviceId),
      ...(policy ? { withheld: policy } : {}),
      metrics: internalMetrics(this.metricsOf.recorder),
    };
    let machine: OlmMachine;
    for (let attempt = 0; ; attempt++) {
      try {
        machine = await openUncountedDecryptions(options);
        break;
      } catch (err) {
        // On PostgreSQL, after taking over from a process that died, its machines' leases on
        // the accounts run out at most one lease after the appservice's did: wait for them.
        if (!(err instanceof MatrixCryptoError && err.code === 'StoreLocked' && options.store.kind === 'postgres') || attempt >= LEASE_MS / 500) throw err;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    const transport = this.masquerading({ userId, deviceId: rec.deviceId });
    const device = new BridgedDevice(machine, transport);
    // Device-list changes that came while the machine was closed: its tracked users whose
    // devices changed are queried again on the next drain.
    const seq = this.state.listSeq;
    if (rec.listSeq < seq) {
      try {
        await machine.receiveSyncChanges({ changedDevices: this.state.listChangesSince(rec.listSeq) });
        await this.state.recordSeen(userId, seq);
      } catch (err) {
        await machine.close();
        throw err;
      }
    }
    // A device of an older store root (created before devices were signed) is signed now; a
    // device whose keys the homeserver no longer lists is replaced.
    if (rec.created && (await this.crossSigning.onOpen(device, !this.fresh.has(userId) && (await keysUploaded(machine)))) === 'keys-gone') {
      return this.replaceDevice(userId, rec, machine);
    }
    this.open.set(userId, device);
    return device;
  }

  /**
   * Replaces a device whose keys are gone from the homeserver (it was deleted there, or the
   * server lost them; nobody can encrypt to it any more): deletes it on the homeserver (if it
   * is still there), closes its machine and deletes its account, then creates a new device
   * (MSC4190), uploads its keys and cross-signs it. Logged as a warning and counted in
   * {@link deviceResets}. Runs inside the open of the device.
   */
  private async replaceDevice(userId: string, rec: DeviceRecord, machine: OlmMachine): Promise<BridgedDevice> {
    const asUser = this.masquerading({ userId });
    try {
      try {
        await asUser.deleteDevice(rec.deviceId);
      } catch (err) {
        if (!(err instanceof HomeserverError && err.status === 404)) throw err;
      }
    } finally {
      await machine.close();
    }
    const store = this.storeFor(userId, rec.deviceId);
    if (rec.folder !== undefined) await rm(rec.folder, { recursive: true, force: true });
    else if (store.kind === 'sqlite' || store.kind === 'postgres') await deleteAccount(store, userId, rec.deviceId);
    await this.state.recordDeleted(userId);
    this.uploaded.delete(userId);
    this.crossSigning.forget(userId);
    const deviceId = newDeviceId();
    await this.state.recordDevice(userId, deviceId, false);
    await asUser.putDevice(deviceId, { display_name: this.displayName(userId) });
    await this.state.recordDevice(userId, deviceId, true);
    this.deviceResetCount++;
    this.logger?.warn(
      `appservice: replaced the device ${rec.deviceId} of ${userId} with ${deviceId}: the homeserver no longer lists its keys (deleted, or lost by the server)`,
    );
    this.fresh.add(userId);
    try {
      const device = await this.openDevice(userId);
      await device.drain();
      await this.crossSigning.ensure(device);
      return device;
    } finally {
      this.fresh.delete(userId);
    }
  }

  /** Closes least recently used idle machines while more than the cap are open. */
  private async evict(): Promise<void> {
    if (this.open.size <= this.maxOpen) return;
    for (const [userId, device] of this.open) {
      if (this.open.size <= this.maxOpen) break;
      if (this.pins.has(userId) || this.closing.has(userId)) continue;
      this.open.delete(userId);
      this.metricsOf.evicted();
      const done = device.machine.close().finally(() => this.closing.delete(userId));
      this.closing.set(userId, done);
      await done.catch(() => undefined);
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new AppserviceError('Closed', 'the AppserviceCrypto was closed; open a new one on the same store root');
  }

  private assertBridged(userId: string): void {
    this.assertOpen();
    nonEmpty('userId', userId);
    if (!this.isBridgedUser(userId)) {
      throw new AppserviceError('NotInNamespace', `${userId} is neither the appservice's sender nor in its user namespace`, { userId });
    }
  }
}
