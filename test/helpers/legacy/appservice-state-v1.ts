// The appservice journal as matrix-crypto-node wrote it before the appservice state moved into
// the store engine (src/appservice/state.ts at commit bf8178b, unchanged below this comment
// except for the import of `MatrixEvent`): the writer of the fixture roots the migration tests
// open (test/helpers/legacy-appservice-root.ts). Not part of the library.
/**
 * The appservice's own persisted state, in `<storeRoot>/appservice-state.jsonl`: which device
 * each bridged user has, which transactions were processed (and, for one that failed half-way,
 * which of its devices were done, and the to-device events of those that failed), and the
 * device-list changes closed machines still have to see.
 *
 * An append-only journal of JSON lines, each written with one `appendFile` and fsynced before
 * the call resolves; the file is compacted (rewritten atomically through a rename) on open.
 * A torn last line (a crash mid-write) is ignored. One process owns the folder at a time
 * (the per-device SQLite stores lock themselves; this file is only ours).
 *
 * @module
 */
import { open, readFile, rename, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { MatrixEvent } from '../../../src/types';

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
}

type Entry =
  | { t: 'device'; userId: string; deviceId: string; created: boolean }
  | { t: 'deleted'; userId: string }
  | { t: 'seen'; userId: string; listSeq: number }
  | { t: 'txn'; id: string }
  | { t: 'part'; id: string; key: string }
  | { t: 'held'; id: string; key: string; share: HeldShare }
  | { t: 'lists'; seq: number; changed: string[]; left: string[] }
  | { t: 'member'; roomId: string; userId: string; joined: boolean };

/** How many completed transaction ids are remembered (the homeserver only retries its latest). */
const TXN_MEMORY = 10_000;

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
  private writing: Promise<void> = Promise.resolve();

  private constructor(private readonly file: string) {}

  /** Reads (and compacts) the journal of `root`, creating the folder if needed. */
  static async open(root: string): Promise<AppserviceState> {
    await mkdir(root, { recursive: true });
    const state = new AppserviceState(join(root, 'appservice-state.jsonl'));
    let text = '';
    try {
      text = await readFile(state.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    for (const line of text.split('\n')) {
      if (!line) continue;
      let entry: Entry;
      try {
        entry = JSON.parse(line) as Entry;
      } catch {
        continue; // a torn last line
      }
      state.apply(entry);
    }
    await state.compact();
    return state;
  }

  private apply(e: Entry): void {
    switch (e.t) {
      case 'device': {
        const old = this.devices.get(e.userId);
        this.devices.set(e.userId, {
          userId: e.userId,
          deviceId: e.deviceId,
          created: e.created,
          listSeq: old?.deviceId === e.deviceId ? old.listSeq : this.listSeq,
        });
        break;
      }
      case 'deleted':
        this.devices.delete(e.userId);
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
      case 'lists':
        this.listSeq = Math.max(this.listSeq, e.seq);
        for (const u of e.changed) this.listChanges.set(u, { seq: e.seq, left: false });
        for (const u of e.left) this.listChanges.set(u, { seq: e.seq, left: true });
        break;
    }
  }

  /** Rewrites the journal with the current state only. */
  private async compact(): Promise<void> {
    const lines: Entry[] = [];
    const bySeq = new Map<number, { changed: string[]; left: string[] }>();
    for (const [u, c] of this.listChanges) {
      if (!bySeq.has(c.seq)) bySeq.set(c.seq, { changed: [], left: [] });
      (c.left ? bySeq.get(c.seq)!.left : bySeq.get(c.seq)!.changed).push(u);
    }
    // Devices first: replaying a `device` entry starts it at the current sequence number.
    for (const d of this.devices.values()) {
      lines.push({ t: 'device', userId: d.userId, deviceId: d.deviceId, created: d.created });
      lines.push({ t: 'seen', userId: d.userId, listSeq: d.listSeq });
    }
    for (const [seq, l] of [...bySeq].sort((a, b) => a[0] - b[0])) lines.push({ t: 'lists', seq, ...l });
    if (!bySeq.has(this.listSeq) && this.listSeq > 0) lines.push({ t: 'lists', seq: this.listSeq, changed: [], left: [] });
    for (const [roomId, users] of this.members) for (const userId of users) lines.push({ t: 'member', roomId, userId, joined: true });
    for (const id of this.txns) lines.push({ t: 'txn', id });
    for (const [id, keys] of this.parts) for (const key of keys) lines.push({ t: 'part', id, key });
    for (const [id, shares] of this.held) for (const [key, share] of shares) lines.push({ t: 'held', id, key, share });
    const tmp = `${this.file}.tmp`;
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(lines.map((l) => JSON.stringify(l) + '\n').join(''));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, this.file);
  }

  /** Appends entries (applied in memory first) and resolves once they are on disk. */
  private append(entries: Entry[]): Promise<void> {
    for (const e of entries) this.apply(e);
    const text = entries.map((e) => JSON.stringify(e) + '\n').join('');
    const write = this.writing.then(async () => {
      const fh = await open(this.file, 'a');
      try {
        await fh.writeFile(text);
        await fh.sync();
      } finally {
        await fh.close();
      }
    });
    this.writing = write.catch(() => undefined);
    return write;
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

  /** Waits for pending writes. */
  async flush(): Promise<void> {
    await this.writing;
  }
}
