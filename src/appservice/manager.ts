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
import { OlmMachine, type ShareResult, type StoreOptions } from '../machine';
import { deleteAccount, nativeStoreOptions, type PostgresConnection, type StoreDatabase } from '../store';
import { HomeserverError, HomeserverTransport, type HomeserverTransportOptions, type RoomEvent } from '../transport';
import type { ShareSettings, SyncChanges, SyncResult } from '../types';
import type { WithheldPolicy } from '../withheld';
import { BridgedDevice } from './device';
import { AppserviceError } from './errors';
import { AppserviceState, LEASE_MS, type DeviceRecord } from './state';
import { deviceKey, routeTransaction, type DeviceShare } from './transaction';

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
  /** The display name of new devices. Default `matrix-crypto-node bridge`. */
  deviceDisplayName?: (userId: string) => string;
  /** Further transport options (retries, back-off, a custom `fetch`, ...), for every device. */
  transport?: Omit<HomeserverTransportOptions, 'baseUrl' | 'accessToken' | 'masquerade'>;
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
  private readonly displayName: (userId: string) => string;
  private readonly transportOptions: Omit<HomeserverTransportOptions, 'baseUrl' | 'accessToken' | 'masquerade'>;
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
  private transactions: Promise<void> = Promise.resolve();
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
    this.withheldPolicy = options.withheldPolicy;
    this.shareSettings = options.shareSettings ?? {};
    this.displayName = options.deviceDisplayName ?? (() => 'matrix-crypto-node bridge');
    const requests = new Limiter(requestConcurrency);
    const baseFetch = options.transport?.fetch ?? globalThis.fetch.bind(globalThis);
    // One limiter around every device's fetch: back-off waits happen outside it.
    const limitedFetch: typeof fetch = (input, init) => requests.run(() => baseFetch(input, init));
    this.transportOptions = { ...options.transport, fetch: limitedFetch };
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
    for (const f of ['deviceStore', 'withheldPolicy', 'deviceDisplayName', 'onStandby'] as const) {
      if (options[f] !== undefined && typeof options[f] !== 'function') {
        throw new MatrixCryptoError('InvalidArgument', `options.${f}: must be a function`, `options.${f}`);
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
    return crypto;
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
   * as the user, no login), its machine is opened and its keys uploaded as the device. Later
   * calls (and later processes on the same store root) return the same device.
   *
   * @throws {@link AppserviceError} `NotInNamespace` for a user the appservice may not act as;
   *   `DeviceManagementUnsupported` when the homeserver does not support MSC4190 (nothing is
   *   uploaded; the call can be retried once the homeserver is upgraded).
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
      await this.using(userId, (d) => d.drain());
      this.uploaded.add(userId);
      return { userId, deviceId: rec.deviceId };
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
    await this.using(userId, (d) => d.drain());
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
   * retries carry the room events only).
   *
   * Encrypted events are decrypted by a bridged user of the room whose device got the room key
   * in this process, else by up to {@link AppserviceLimits.decryptionCandidates} bridged members
   * of the room in turn (membership is learnt from the transactions' `m.room.member` events);
   * a failure comes back as `undecryptable` with the typed {@link DecryptionError}, withheld
   * explanation included. Decrypt as a given user with {@link decryptRoomEvent}.
   *
   * @throws {@link MatrixCryptoError} `InvalidArgument` naming the malformed field of `body`.
   */
  async processTransaction(txnId: string, body: unknown, options: ProcessTransactionOptions = {}): Promise<TransactionResult> {
    nonEmpty('txnId', txnId);
    this.assertOpen();
    const run = this.transactions.then(() => this.process(txnId, body, options));
    this.transactions = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async process(txnId: string, body: unknown, options: ProcessTransactionOptions): Promise<TransactionResult> {
    const lost = this.state.leaseLost;
    if (lost) throw new AppserviceError('LeaseLost', `transaction ${txnId}: ${lost.message}; close this manager`);
    if (this.state.isTransactionDone(txnId)) {
      return { txnId, duplicate: true, events: [], lateDecryptions: [], devices: [], unroutedToDeviceEvents: 0, redelivery: false };
    }
    const routed = routeTransaction(body);
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
    let unrouted = 0;
    const work: Array<{ rec: DeviceRecord; share: DeviceShare | undefined }> = [];
    for (const share of shares.values()) {
      const rec = this.state.devices.get(share.userId);
      if (!rec || rec.deviceId !== share.deviceId) {
        unrouted += share.toDeviceEvents.length;
        continue;
      }
      if (this.state.isPartDone(txnId, deviceKey(share.userId, share.deviceId))) continue;
      if (this.open.has(share.userId) || this.needsMachine(share)) work.push({ rec, share });
    }
    // Open machines outside the transaction still have to see the device-list changes.
    for (const userId of this.open.keys()) {
      const rec = this.state.devices.get(userId);
      if (rec && rec.listSeq < this.state.listSeq && !shares.has(deviceKey(userId, rec.deviceId))) {
        work.push({ rec, share: undefined });
      }
    }
    const devices: TransactionResult['devices'] = [];
    const failures: unknown[] = [];
    const queue = [...work];
    const worker = async (): Promise<void> => {
      for (let item = queue.shift(); item; item = queue.shift()) {
        const { rec, share } = item;
        try {
          const result = await this.feed(rec, share);
          if (share) {
            await this.state.recordPart(txnId, deviceKey(rec.userId, rec.deviceId));
            devices.push({ userId: rec.userId, deviceId: rec.deviceId, result });
          }
        } catch (err) {
          failures.push(err);
          const key = deviceKey(rec.userId, rec.deviceId);
          if (share && share.toDeviceEvents.length > 0 && !held.has(key)) {
            await this.state.recordHeld(txnId, key, share).catch((e: unknown) => failures.push(e));
          }
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.txnConcurrency, work.length) }, worker));
    if (failures.length > 0) {
      throw new AppserviceError(
        'TransactionFailed',
        `transaction ${txnId}: ${failures.length} of ${work.length} devices failed; answer with an error so the homeserver retries (first: ${String((failures[0] as Error)?.message ?? failures[0])})`,
        { cause: failures[0] },
      );
    }
    await this.learnMembership(routed.events);
    const events: AppserviceTimelineEvent[] = [];
    for (const event of routed.events) {
      const roomId = typeof event.room_id === 'string' ? event.room_id : undefined;
      if (event.type !== 'm.room.encrypted' || roomId === undefined) {
        events.push({ kind: 'plaintext', roomId: roomId ?? '', event, decryptedBy: null });
        continue;
      }
      events.push(await this.decryptForBridge(roomId, event));
    }
    const late = await this.retryWaiting(devices);
    const redelivery = this.state.wasHanded(txnId);
    const result: TransactionResult = {
      txnId,
      duplicate: false,
      events,
      lateDecryptions: late.items,
      devices,
      unroutedToDeviceEvents: unrouted,
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
    await this.wait(events);
    return result;
  }

  /** Whether a closed machine must open for this share. */
  private needsMachine(share: DeviceShare): boolean {
    if (share.toDeviceEvents.length > 0) return true;
    const otks = share.oneTimeKeyCounts?.signed_curve25519;
    if (share.oneTimeKeyCounts && (otks === undefined || otks < this.otkRefillBelow)) return true;
    return share.unusedFallbackKeys !== undefined && !share.unusedFallbackKeys.includes('signed_curve25519');
  }

  /** Hands one device its share of a transaction, with the device-list changes it has not seen. */
  private async feed(rec: DeviceRecord, share: DeviceShare | undefined): Promise<SyncResult> {
    const seq = this.state.listSeq;
    const result = await this.using(rec.userId, async (d) => {
      const changes: SyncChanges = {};
      if (share?.toDeviceEvents.length) changes.toDeviceEvents = share.toDeviceEvents;
      if (share?.oneTimeKeyCounts) changes.oneTimeKeyCounts = share.oneTimeKeyCounts;
      if (share?.unusedFallbackKeys) changes.unusedFallbackKeys = share.unusedFallbackKeys;
      if (rec.listSeq < seq) changes.changedDevices = this.state.listChangesSince(rec.listSeq);
      return d.receive(changes);
    });
    await this.state.recordSeen(rec.userId, seq);
    for (const k of result.roomKeyUpdates) this.noteHolder(k.roomId, k.sessionId, rec.userId);
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
    await this.state.recordWaiting(waiting);
  }

  /**
   * Decrypts the waiting events whose room key one of these devices just received; `commit`
   * forgets them (called once the transaction is recorded).
   */
  private async retryWaiting(devices: TransactionDeviceResult[]): Promise<{ items: AppserviceTimelineEvent[]; commit: () => Promise<void> }> {
    const items: AppserviceTimelineEvent[] = [];
    const decrypted = new Set<RoomEvent>();
    for (const d of devices) {
      for (const key of d.result.roomKeyUpdates) {
        for (const event of this.state.waiting.get(`${key.roomId}|${key.sessionId}`) ?? []) {
          if (decrypted.has(event)) continue;
          const item = await this.decryptRoomEvent(d.userId, key.roomId, event);
          if (item.kind !== 'decrypted') continue;
          items.push(item);
          decrypted.add(event);
        }
      }
    }
    const commit = (): Promise<void> => this.state.recordWoken([...decrypted].map((e) => e.event_id as string));
    return { items, commit };
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
    return this.using(userId, async (d) => {
      try {
        return { kind: 'decrypted', roomId, event, decrypted: await d.machine.decryptRoomEvent(event, roomId), decryptedBy: userId };
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
    return this.using(userId, (d) => d.encrypt(roomId, type, content, { ...this.shareSettings, ...options.shareSettings }));
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
    await this.transactions;
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
    const options = { userId, deviceId: rec.deviceId, store: this.storeFor(userId, rec.deviceId), ...(policy ? { withheld: policy } : {}) };
    let machine: OlmMachine;
    for (let attempt = 0; ; attempt++) {
      try {
        machine = await OlmMachine.open(options);
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
    this.open.set(userId, device);
    return device;
  }

  /** Closes least recently used idle machines while more than the cap are open. */
  private async evict(): Promise<void> {
    if (this.open.size <= this.maxOpen) return;
    for (const [userId, device] of this.open) {
      if (this.open.size <= this.maxOpen) break;
      if (this.pins.has(userId) || this.closing.has(userId)) continue;
      this.open.delete(userId);
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
