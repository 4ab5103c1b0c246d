/**
 * The appservice's own persisted state, in the store database that holds its devices' keys
 * (a `sqlite` folder or a `postgres` database): which device each bridged user has, which
 * transactions were processed (and, for one that failed half-way, which of its devices were
 * done, and the to-device events of those that failed), which were handed to the bridge without
 * being recorded, the device-list changes closed machines still have to see, membership, the
 * events waiting for their room key, and for the delivery of to-device events: each device's
 * inbox `/sync` token, digests of the to-device events it processed, and the shares set aside
 * for a device that kept failing.
 *
 * A journal of records (the `Entry` union below): each call appends its records in one database
 * transaction (`native/src/store/appservice.rs`), applied in memory first; the journal is
 * compacted (replaced by the current state, in one transaction) on open and when it has grown
 * well past that. A new kind of record is one more member of `Entry`, a `case` in `apply` and
 * its lines in `snapshot`.
 *
 * On PostgreSQL, several processes may open one appservice: {@link AppserviceState.open} waits
 * until this process holds the appservice's lease (taken when the holder closes, or once its
 * lease ran out, {@link LEASE_MS} after its last renewal), then reads the journal; every later
 * write is fenced by the lease (refused once another process took it).
 *
 * A store root written by the layout before this one (a SQLite folder per device under
 * `devices/` and the journal in `appservice-state.jsonl`) is migrated on first open: each
 * device's account is copied into the database as stored, then the journal's state and a
 * `migrated` record are written in one transaction (the commit point: until it, the old files
 * stay the truth and a later open redoes the copy), then the old files are renamed with a
 * `.migrated` suffix.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { access, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { openAppserviceStore, type NativeAppserviceStore } from '../../native/index';
import { MatrixCryptoError, native } from '../errors';
import { storeTarget, type StoreDatabase } from '../store';
import type { RoomEvent } from '../transport';
import type { MatrixEvent } from '../types';

/** How long the appservice's lease lasts without renewal (PostgreSQL); renewed every third of it. @internal */
export const LEASE_MS = 15_000;
/** How often a standby asks for the lease. */
const STANDBY_POLL_MS = 1_000;
/** How many events wait for their room key at most, oldest dropped first. */
const WAITING_MAX = 1000;

/**
 * The share of one device in a transaction whose processing failed before it was done: kept,
 * because a homeserver may retry the transaction without it (Synapse resends only the room
 * events of a transaction it retries: no to-device events, key counts or device lists).
 * @internal
 */
export interface HeldShare {
  /** The device's user. */
  userId: string;
  /** The device. */
  deviceId: string;
  /** The device's to-device events. */
  toDeviceEvents: MatrixEvent[];
  /** Its one-time key counts, if the transaction had them. */
  oneTimeKeyCounts?: Record<string, number>;
  /** Its unused fallback key types, if the transaction had them. */
  unusedFallbackKeys?: string[];
}

/** A bridged user's device as the appservice recorded it. @internal */
export interface DeviceRecord {
  /** The bridged user. */
  userId: string;
  /** Their device id. */
  deviceId: string;
  /** Whether the homeserver confirmed the device exists (the MSC4190 `PUT` succeeded). */
  created: boolean;
  /** The device-list sequence number the device's machine has seen up to. */
  listSeq: number;
  /**
   * A folder of the crate's own store (matrix-sdk-sqlite) the device's keys stay in: such a
   * folder, left by an older layout, cannot be copied into our engine's database.
   */
  folder?: string;
}

type Entry =
  | { t: 'device'; userId: string; deviceId: string; created: boolean; folder?: string }
  | { t: 'deleted'; userId: string }
  | { t: 'seen'; userId: string; listSeq: number }
  | { t: 'txn'; id: string }
  | { t: 'part'; id: string; key: string }
  | { t: 'held'; id: string; key: string; share: HeldShare }
  | { t: 'lists'; seq: number; changed: string[]; left: string[] }
  | { t: 'member'; roomId: string; userId: string; joined: boolean }
  | { t: 'inbox'; userId: string; deviceId: string; token: string }
  | { t: 'digests'; userId: string; add: string[]; drop: string[] }
  | { t: 'aside'; share: HeldShare }
  | { t: 'aside-done'; userId: string; count: number }
  | { t: 'handed'; id: string }
  | { t: 'wait'; key: string; event: RoomEvent }
  | { t: 'woken'; ids: string[] }
  | { t: 'migrated' };

/** Where {@link AppserviceState.open} finds the appservice's state. @internal */
export interface AppserviceStateOptions {
  /** The store root: the previous layout is looked for here. */
  root: string;
  /** The database of the state and (by default) of the devices' accounts. */
  store: StoreDatabase;
  /** The appservice's name in the database. */
  name: string;
  /** Encrypts the state at rest. */
  passphrase?: string;
  /** Whether old device folders are copied into `store` (false when the caller chose the devices' stores). */
  importAccounts: boolean;
  /** Called once when another process holds the lease and this one starts waiting (PostgreSQL). */
  onStandby?: () => void;
}

/** How many completed transaction ids are remembered (the homeserver only retries its latest). */
const TXN_MEMORY = 10_000;

/**
 * How many digests of processed to-device events are remembered per device, to skip the
 * duplicates an inbox drain sees (see `inbox.ts`). A drain forgets the ones it has seen again
 * and acknowledged, so in steady state a device holds only what was pushed since its last drain.
 * @internal
 */
export const DIGEST_MEMORY = 1_000;

/** @internal */
export class AppserviceState {
  readonly devices = new Map<string, DeviceRecord>();
  /** Completed transaction ids, oldest first. */
  private readonly txns = new Set<string>();
  /** Devices done within transactions that failed half-way: `txnId -> keys`. */
  private readonly parts = new Map<string, Set<string>>();
  /** Shares of devices not yet done within transactions that failed: `txnId -> key -> share`. */
  private readonly held = new Map<string, Map<string, HeldShare>>();
  /** Last device-list change per remote user: the sequence number and whether they left. */
  readonly listChanges = new Map<string, { seq: number; left: boolean }>();
  listSeq = 0;
  /** Bridged users joined to each room, as the transactions' membership events said. */
  readonly members = new Map<string, Set<string>>();
  /** The `/sync` token of each device's inbox drain, by user (with the device it belongs to). */
  private readonly inboxTokens = new Map<string, { deviceId: string; token: string }>();
  /** Digests of to-device events each user's device processed, oldest first. */
  private readonly digests = new Map<string, Set<string>>();
  /** Shares set aside for devices that kept failing, by user, oldest first. */
  private readonly aside = new Map<string, HeldShare[]>();
  /** Transactions handed to the bridge and not recorded as processed. */
  private readonly handed = new Set<string>();
  /** Undecryptable events waiting for their room key, by `roomId|sessionId`, oldest first. */
  readonly waiting = new Map<string, RoomEvent[]>();
  private waitingCount = 0;

  /** How many events are waiting for their room key, in all entries of {@link waiting}. */
  get waitingTotal(): number {
    return this.waitingCount;
  }
  private migrated = false;
  private writing: Promise<void> = Promise.resolve();
  /** Records in the database's journal, and how many the last compaction wrote. */
  private logLength = 0;
  private compactedLength = 0;
  /** Records appended since the last compaction was queued. */
  private pending = 0;
  /** The lease holder that fences every write (PostgreSQL), and its renewal. */
  private holder: string | undefined;
  private renewal: NodeJS.Timeout | undefined;
  private lost: Error | undefined;
  private tellLost!: (err: Error) => void;
  /** Resolves when another process took the lease over. */
  readonly whenLeaseLost = new Promise<Error>((resolve) => (this.tellLost = resolve));

  private constructor(private readonly db: NativeAppserviceStore) {}

  /**
   * Opens the state (on PostgreSQL once this process holds the appservice's lease), migrates a
   * store root of the previous layout, and compacts the journal.
   */
  static async open(options: AppserviceStateOptions): Promise<AppserviceState> {
    const db = await native(() => openAppserviceStore(storeTarget(options.store), options.name, options.passphrase));
    const state = new AppserviceState(db);
    try {
      if (options.store.kind === 'postgres') await state.takeLease(options.onStandby);
      for (const text of await native(() => db.load())) state.apply(JSON.parse(text) as Entry);
      await state.migrate(options.root, options.importAccounts);
      await state.compact();
    } catch (err) {
      await state.close();
      throw err;
    }
    return state;
  }

  /** Waits until this process holds the appservice's lease, then keeps renewing it. */
  private async takeLease(onStandby?: () => void): Promise<void> {
    const holder = `${process.pid}-${randomBytes(8).toString('hex')}`;
    let told = false;
    while (!(await native(() => this.db.lease(holder, LEASE_MS)))) {
      if (!told) onStandby?.();
      told = true;
      await new Promise((r) => setTimeout(r, STANDBY_POLL_MS));
    }
    this.holder = holder;
    this.renewal = setInterval(() => {
      this.db.lease(holder, LEASE_MS).then(
        (held) => {
          if (!held) this.loseLease();
        },
        () => undefined, // retried at the next tick: the lease outlives two missed renewals
      );
    }, LEASE_MS / 3);
    this.renewal.unref();
  }

  private loseLease(): void {
    if (this.lost) return;
    this.lost = new Error('another process took over the appservice (this one did not renew its lease in time)');
    clearInterval(this.renewal);
    this.renewal = undefined;
    this.tellLost(this.lost);
  }

  /** Why this process may no longer write (another took the lease over), or undefined. */
  get leaseLost(): Error | undefined {
    return this.lost;
  }

  /** Migrates a store root of the previous layout (see the module comment). */
  private async migrate(root: string, importAccounts: boolean): Promise<void> {
    const legacy = join(root, 'appservice-state.jsonl');
    const devices = join(root, 'devices');
    const exists = (p: string): Promise<boolean> => access(p).then(() => true, () => false);
    if (!(await exists(legacy))) return;
    if (!this.migrated) {
      for (const line of (await readFile(legacy, 'utf8')).split('\n')) {
        if (!line) continue;
        let entry: Entry;
        try {
          entry = JSON.parse(line) as Entry;
        } catch {
          continue; // a torn last line
        }
        this.apply(entry);
      }
      if (importAccounts) {
        for (const d of this.devices.values()) {
          const folder = join(devices, encodeURIComponent(d.userId), encodeURIComponent(d.deviceId));
          if (await native(() => this.db.importAccount(folder, d.userId, d.deviceId))) continue;
          // A folder of the crate's own store cannot be copied: the device keeps using it.
          if (await exists(join(folder, 'matrix-sdk-crypto.sqlite3'))) d.folder = folder;
        }
      }
      this.migrated = true;
      await this.compact();
    }
    // Committed: the old files are kept, renamed, for the operator to delete.
    if (importAccounts && (await exists(devices)) && ![...this.devices.values()].some((d) => d.folder)) {
      await rename(devices, `${devices}.migrated`);
    }
    await rename(legacy, `${legacy}.migrated`);
  }

  /** Waits for pending writes, gives up the lease and releases the database. */
  async close(): Promise<void> {
    await this.writing;
    clearInterval(this.renewal);
    this.renewal = undefined;
    const holder = this.holder;
    if (holder && !this.lost) await this.db.release(holder).catch(() => undefined);
    await this.db.close();
  }

  private apply(e: Entry): void {
    switch (e.t) {
      case 'device': {
        const old = this.devices.get(e.userId);
        if (old && old.deviceId !== e.deviceId) this.forgetDelivery(e.userId);
        const folder = e.folder ?? (old?.deviceId === e.deviceId ? old.folder : undefined);
        this.devices.set(e.userId, {
          userId: e.userId,
          deviceId: e.deviceId,
          created: e.created,
          listSeq: old?.deviceId === e.deviceId ? old.listSeq : this.listSeq,
          ...(folder !== undefined ? { folder } : {}),
        });
        break;
      }
      case 'deleted':
        this.devices.delete(e.userId);
        this.forgetDelivery(e.userId);
        break;
      case 'seen': {
        const d = this.devices.get(e.userId);
        if (d) d.listSeq = Math.max(d.listSeq, e.listSeq);
        break;
      }
      case 'txn':
        this.txns.add(e.id);
        this.parts.delete(e.id);
        this.held.delete(e.id);
        this.handed.delete(e.id);
        if (this.txns.size > TXN_MEMORY) this.txns.delete(this.txns.values().next().value as string);
        break;
      case 'part': {
        if (!this.parts.has(e.id)) this.parts.set(e.id, new Set());
        this.parts.get(e.id)!.add(e.key);
        this.held.get(e.id)?.delete(e.key);
        if (this.held.get(e.id)?.size === 0) this.held.delete(e.id);
        break;
      }
      case 'held': {
        if (this.txns.has(e.id) || this.parts.get(e.id)?.has(e.key)) break;
        if (!this.held.has(e.id)) this.held.set(e.id, new Map());
        this.held.get(e.id)!.set(e.key, e.share);
        break;
      }
      case 'member': {
        if (e.joined) {
          if (!this.members.has(e.roomId)) this.members.set(e.roomId, new Set());
          this.members.get(e.roomId)!.add(e.userId);
        } else {
          this.members.get(e.roomId)?.delete(e.userId);
          if (this.members.get(e.roomId)?.size === 0) this.members.delete(e.roomId);
        }
        break;
      }
      case 'inbox':
        this.inboxTokens.set(e.userId, { deviceId: e.deviceId, token: e.token });
        break;
      case 'digests': {
        let set = this.digests.get(e.userId);
        if (!set) this.digests.set(e.userId, (set = new Set()));
        for (const d of e.drop) set.delete(d);
        for (const d of e.add) {
          set.delete(d);
          set.add(d);
        }
        while (set.size > DIGEST_MEMORY) set.delete(set.values().next().value as string);
        if (set.size === 0) this.digests.delete(e.userId);
        break;
      }
      case 'aside':
        if (!this.aside.has(e.share.userId)) this.aside.set(e.share.userId, []);
        this.aside.get(e.share.userId)!.push(e.share);
        break;
      case 'aside-done': {
        const rest = (this.aside.get(e.userId) ?? []).slice(e.count);
        if (rest.length) this.aside.set(e.userId, rest);
        else this.aside.delete(e.userId);
        break;
      }
      case 'lists':
        this.listSeq = Math.max(this.listSeq, e.seq);
        for (const u of e.changed) this.listChanges.set(u, { seq: e.seq, left: false });
        for (const u of e.left) this.listChanges.set(u, { seq: e.seq, left: true });
        break;
      case 'handed':
        if (!this.txns.has(e.id)) this.handed.add(e.id);
        break;
      case 'wait': {
        if (!this.waiting.has(e.key)) this.waiting.set(e.key, []);
        this.waiting.get(e.key)!.push(e.event);
        this.waitingCount++;
        while (this.waitingCount > WAITING_MAX) {
          const [oldest, list] = this.waiting.entries().next().value as [string, RoomEvent[]];
          list.shift();
          this.waitingCount--;
          if (list.length === 0) this.waiting.delete(oldest);
        }
        break;
      }
      case 'woken': {
        const ids = new Set(e.ids);
        for (const [k, list] of this.waiting) {
          const still = list.filter((ev) => !ids.has(ev.event_id as string));
          this.waitingCount -= list.length - still.length;
          if (still.length) this.waiting.set(k, still);
          else this.waiting.delete(k);
        }
        break;
      }
      case 'migrated':
        this.migrated = true;
        break;
    }
  }


  /** The current state as records: replaying them rebuilds it. */
  private snapshot(): Entry[] {
    const lines: Entry[] = [];
    const bySeq = new Map<number, { changed: string[]; left: string[] }>();
    for (const [u, c] of this.listChanges) {
      if (!bySeq.has(c.seq)) bySeq.set(c.seq, { changed: [], left: [] });
      (c.left ? bySeq.get(c.seq)!.left : bySeq.get(c.seq)!.changed).push(u);
    }
    if (this.migrated) lines.push({ t: 'migrated' });
    // Devices first: replaying a `device` entry starts it at the current sequence number.
    for (const d of this.devices.values()) {
      lines.push({ t: 'device', userId: d.userId, deviceId: d.deviceId, created: d.created, ...(d.folder ? { folder: d.folder } : {}) });
      lines.push({ t: 'seen', userId: d.userId, listSeq: d.listSeq });
    }
    for (const [seq, l] of [...bySeq].sort((a, b) => a[0] - b[0])) lines.push({ t: 'lists', seq, ...l });
    if (!bySeq.has(this.listSeq) && this.listSeq > 0) lines.push({ t: 'lists', seq: this.listSeq, changed: [], left: [] });
    for (const [roomId, users] of this.members) for (const userId of users) lines.push({ t: 'member', roomId, userId, joined: true });
    for (const id of this.txns) lines.push({ t: 'txn', id });
    for (const [id, keys] of this.parts) for (const key of keys) lines.push({ t: 'part', id, key });
    for (const [id, shares] of this.held) for (const [key, share] of shares) lines.push({ t: 'held', id, key, share });
    for (const [userId, { deviceId, token }] of this.inboxTokens) lines.push({ t: 'inbox', userId, deviceId, token });
    for (const [userId, set] of this.digests) lines.push({ t: 'digests', userId, add: [...set], drop: [] });
    for (const shares of this.aside.values()) for (const share of shares) lines.push({ t: 'aside', share });
    for (const id of this.handed) lines.push({ t: 'handed', id });
    for (const [key, events] of this.waiting) for (const event of events) lines.push({ t: 'wait', key, event });
    return lines;
  }

  /** Replaces the journal with the current state, after the writes already queued. */
  private compact(): Promise<void> {
    const lines = this.snapshot().map((l) => JSON.stringify(l));
    return this.write(() => this.db.replace(lines, this.holder), lines.length, true);
  }

  /** Queues a write of the journal; resolves once it committed. */
  private write(run: () => Promise<void>, records: number, replace: boolean): Promise<void> {
    const write = this.writing.then(async () => {
      if (this.lost) throw new Error(`store: ${this.lost.message}`);
      try {
        await native(run);
      } catch (err) {
        // A fenced write refused: another process holds the lease now.
        if (this.holder && err instanceof MatrixCryptoError && err.code === 'StoreLocked') this.loseLease();
        throw err;
      }
      this.logLength = replace ? records : this.logLength + records;
      if (replace) this.compactedLength = records;
    });
    this.writing = write.catch(() => undefined);
    return write;
  }

  /** Appends entries (applied in memory first) and resolves once they are in the database. */
  private append(entries: Entry[]): Promise<void> {
    for (const e of entries) this.apply(e);
    const texts = entries.map((e) => JSON.stringify(e));
    this.pending += texts.length;
    const done = this.write(() => this.db.append(texts, this.holder), texts.length, false);
    // Compacted (from the state as of now, after this append) once the journal is much longer
    // than the state it holds.
    if (this.logLength + this.pending > Math.max(10_000, 4 * this.compactedLength)) {
      this.pending = 0;
      void this.compact().catch(() => undefined);
    }
    return done;
  }

  /** Records the device of a user (`created` once the homeserver confirmed it). */
  recordDevice(userId: string, deviceId: string, created: boolean): Promise<void> {
    return this.append([{ t: 'device', userId, deviceId, created }]);
  }

  /** Forgets the device of a user. */
  recordDeleted(userId: string): Promise<void> {
    return this.append([{ t: 'deleted', userId }]);
  }

  /** Records that a device's machine has seen device-list changes up to `listSeq`. */
  recordSeen(userId: string, listSeq: number): Promise<void> {
    const d = this.devices.get(userId);
    if (!d || d.listSeq >= listSeq) return Promise.resolve();
    return this.append([{ t: 'seen', userId, listSeq }]);
  }

  /** Records device-list changes; returns their sequence number. */
  async recordListChanges(changed: string[], left: string[]): Promise<number> {
    const seq = this.listSeq + 1;
    await this.append([{ t: 'lists', seq, changed, left }]);
    return seq;
  }

  /** Records device-list changes and that transaction `id` recorded them, in one write. */
  async recordListChangesOf(id: string, changed: string[], left: string[]): Promise<number> {
    const seq = this.listSeq + 1;
    await this.append([
      { t: 'lists', seq, changed, left },
      { t: 'part', id, key: 'device_lists' },
    ]);
    return seq;
  }

  /** The device-list changes a machine that has seen up to `since` has not seen yet. */
  listChangesSince(since: number): { changed: string[]; left: string[] } {
    const changed: string[] = [];
    const left: string[] = [];
    for (const [u, c] of this.listChanges) if (c.seq > since) (c.left ? left : changed).push(u);
    return { changed, left };
  }

  /** Records membership changes of bridged users (only those that change something). */
  recordMembership(changes: { roomId: string; userId: string; joined: boolean }[]): Promise<void> {
    const now = new Map<string, boolean>();
    const entries: Entry[] = [];
    for (const c of changes) {
      const k = `${c.roomId}|${c.userId}`;
      const joined = now.get(k) ?? this.members.get(c.roomId)?.has(c.userId) ?? false;
      if (joined !== c.joined) entries.push({ t: 'member', ...c });
      now.set(k, c.joined);
    }
    return entries.length ? this.append(entries) : Promise.resolve();
  }

  /** Whether the transaction was fully processed. */
  isTransactionDone(id: string): boolean {
    return this.txns.has(id);
  }

  /** Whether one part (a device's share) of a transaction was processed. */
  isPartDone(id: string, key: string): boolean {
    return this.parts.get(id)?.has(key) ?? false;
  }

  /** Records that one part of a transaction was processed. */
  recordPart(id: string, key: string): Promise<void> {
    return this.append([{ t: 'part', id, key }]);
  }

  /** The shares held for the devices of a transaction that failed before they were done. */
  heldShares(id: string): ReadonlyMap<string, HeldShare> {
    return this.held.get(id) ?? new Map();
  }

  /** Keeps the share of a device whose part of a transaction failed, until the part is done. */
  recordHeld(id: string, key: string, share: HeldShare): Promise<void> {
    return this.append([{ t: 'held', id, key, share }]);
  }

  /** Records that a transaction was fully processed. */
  recordTransaction(id: string): Promise<void> {
    return this.append([{ t: 'txn', id }]);
  }

  /** Forgets the inbox token, digests and set-aside shares of a user's previous device. */
  private forgetDelivery(userId: string): void {
    this.inboxTokens.delete(userId);
    this.digests.delete(userId);
    this.aside.delete(userId);
  }

  /** The `/sync` token the inbox drain of the user's device continues from, if it drained before. */
  inboxToken(userId: string, deviceId: string): string | undefined {
    const t = this.inboxTokens.get(userId);
    return t?.deviceId === deviceId ? t.token : undefined;
  }

  /** Records the `/sync` token the next inbox drain of the device continues from. */
  recordInboxToken(userId: string, deviceId: string, token: string): Promise<void> {
    return this.append([{ t: 'inbox', userId, deviceId, token }]);
  }

  /** Whether the user's device already processed the to-device event with this digest. */
  hasDigest(userId: string, digest: string): boolean {
    return this.digests.get(userId)?.has(digest) ?? false;
  }

  /** Remembers digests of processed to-device events (`add`) and forgets others (`drop`). */
  recordDigests(userId: string, add: string[], drop: string[] = []): Promise<void> {
    if (add.length === 0 && drop.length === 0) return Promise.resolve();
    return this.append([{ t: 'digests', userId, add, drop }]);
  }

  /** The shares set aside for the user's device because it kept failing, oldest first. */
  asideShares(userId: string): readonly HeldShare[] {
    return this.aside.get(userId) ?? [];
  }

  /** Sets a failing device's share aside, to be replayed when the device works again. */
  recordAside(share: HeldShare): Promise<void> {
    return this.append([{ t: 'aside', share }]);
  }

  /** Records that the user's device processed its oldest `count` set-aside shares. */
  recordAsideReplayed(userId: string, count: number): Promise<void> {
    return this.append([{ t: 'aside-done', userId, count }]);
  }

  /** Records that a transaction's result is being handed to the bridge, before it is recorded as processed. */
  recordHanded(id: string): Promise<void> {
    return this.handed.has(id) ? Promise.resolve() : this.append([{ t: 'handed', id }]);
  }

  /** Whether a transaction was handed to the bridge before (by this process or an earlier one) and not recorded as processed. */
  wasHanded(id: string): boolean {
    return this.handed.has(id);
  }

  /** Keeps events that lack their room key (`key`: `roomId|sessionId`) until they decrypt. */
  recordWaiting(events: Array<{ key: string; event: RoomEvent }>): Promise<void> {
    return events.length ? this.append(events.map(({ key, event }) => ({ t: 'wait' as const, key, event }))) : Promise.resolve();
  }

  /** Forgets waiting events that decrypted, by event id. */
  recordWoken(eventIds: string[]): Promise<void> {
    return eventIds.length ? this.append([{ t: 'woken', ids: eventIds }]) : Promise.resolve();
  }

  /** Waits for pending writes. */
  async flush(): Promise<void> {
    await this.writing;
  }
}
