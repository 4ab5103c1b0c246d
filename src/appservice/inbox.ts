/**
 * The inbox drain: each bridged device's pending to-device events fetched from the homeserver
 * as that device, so that no room key is lost when a transaction did not carry it.
 *
 * Why it is needed (Synapse 1.163, `synapse/handlers/appservice.py` `_get_to_device_messages`,
 * `synapse/storage/databases/main/appservice.py` `create_appservice_txn`): to-device events are
 * read from each device's inbox (`device_inbox`) for a push, and the appservice's stream position
 * moves on whether the push succeeded or not; a failed transaction is retried with its room events
 * only. So a room key pushed while the bridge was down, or in a transaction that failed, never
 * comes again in a transaction. It does stay in the device's inbox until the device acknowledges
 * it through `/sync`: a sync with `since` = the previous `next_batch` deletes what that batch
 * returned (`synapse/handlers/sync.py`), at most 100 events per batch.
 *
 * A drain of one device: `GET /sync` as the device (the appservice's token, `user_id` and
 * `device_id` query parameters), with a filter that leaves out every room, presence and account
 * data, `timeout=0`, from the device's persisted token; the batch's new to-device events are fed
 * to the device's machine, then the batch's `next_batch` is persisted and the next sync, from it,
 * acknowledges the batch. It stops at the first batch without to-device events.
 *
 * Duplicates: every event pushed in a transaction is also in the inbox until a drain acknowledges
 * it, so a drain sees again what transactions delivered. Each device remembers digests (SHA-256
 * of the event's canonical JSON, 128 bits) of the to-device events it processed, persisted with
 * the appservice's state (at most `DIGEST_MEMORY`, 1,000, per device, oldest forgotten first); an
 * event whose digest is known is skipped. A digest the drain saw again is forgotten once the batch
 * is acknowledged (the homeserver deletes the event, so it cannot come a third time); so in steady
 * state a device remembers only what was pushed since its last drain. Should a duplicate slip
 * past the bound, the crate recognises a replayed Olm message by its own hash and ignores it.
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import type { SyncResponse } from '../transport';
import type { MatrixEvent, SyncResult } from '../types';
import type { AppserviceState, DeviceRecord } from './state';
import { MAX_EVENT_DEPTH, nestsDeeperThan, type DeviceShare } from './transaction';

/**
 * When the inbox drain runs ({@link AppserviceCryptoOptions.inboxDrain}); every field has a
 * default. Pass `inboxDrain: false` to turn the automatic drains off
 * ({@link AppserviceCrypto.drainInboxes} still works).
 */
export interface InboxDrainOptions {
  /** Drain every device when the manager opens (in the background; `open` does not wait). Default `true`. */
  atStart?: boolean;
  /**
   * Milliseconds between drains of every device while the manager is open; `0` turns the
   * periodic drain off. Default 1,800,000 (30 minutes).
   */
  intervalMs?: number;
  /**
   * Events that waited for a room key a background drain brought, decrypted now. Without this
   * callback they are handed over in the next transaction's
   * {@link TransactionResult.lateDecryptions} instead.
   */
  onLateDecryptions?: (events: import('./manager').AppserviceTimelineEvent[]) => void | Promise<void>;
  /** Called after each device of a drain, with the drain's progress so far. */
  onProgress?: (progress: InboxDrainProgress) => void;
}

/** The progress of an inbox drain. */
export interface InboxDrainProgress {
  /** Devices drained so far (failed ones included). */
  done: number;
  /** Devices in this drain. */
  total: number;
  /** New to-device events fed to machines so far. */
  toDeviceEvents: number;
  /** To-device events skipped so far because their device had processed them already. */
  duplicates: number;
  /** Devices whose drain failed so far. */
  failed: number;
}

/** One device whose drain failed (it is tried again in the next drain). */
export interface InboxDrainFailure {
  /** The bridged user. */
  userId: string;
  /** Their device. */
  deviceId: string;
  /** Why. */
  error: unknown;
}

/** What {@link AppserviceCrypto.drainInboxes} returns. */
export interface InboxDrainResult {
  /** Devices drained (failed ones included). */
  devices: number;
  /** New to-device events fed to machines. */
  toDeviceEvents: number;
  /** To-device events skipped because their device had processed them already. */
  duplicates: number;
  /** To-device events of the inboxes that were not event objects, or nested too deep: skipped. */
  malformed: number;
  /** Devices whose drain failed. */
  failed: InboxDrainFailure[];
  /** Events that waited for a room key this drain brought, decrypted now. */
  lateDecryptions: import('./manager').AppserviceTimelineEvent[];
}

/** What the drain needs from the manager. @internal */
export interface InboxHost {
  readonly state: AppserviceState;
  /** `GET /sync` as the device, with {@link inboxFilter} and `timeout=0`. */
  sync(rec: DeviceRecord, since: string | undefined): Promise<SyncResponse>;
  /** Runs `task` in the device's delivery turn (transactions feed it in the same turns). */
  serial<T>(userId: string, task: () => Promise<T>): Promise<T>;
  /** Whether a share needs the device's machine opened. */
  needsMachine(share: DeviceShare): boolean;
  /** Feeds a share to the device's machine (set-aside shares first), inside its turn. */
  feed(rec: DeviceRecord, share: DeviceShare): Promise<SyncResult>;
}

/**
 * The filter of a drain's `/sync`: no room, presence or account data (to-device events come
 * regardless). It carries a field of its own with a fresh value per request, which servers
 * ignore (filters allow unknown fields), because Synapse caches a `/sync` answer for two minutes
 * under its query parameters (`sync_response_cache_duration`): a drain repeating the previous
 * drain's `since` would get the earlier, emptier answer, and miss what arrived since.
 * @internal
 */
export function inboxFilter(): Record<string, unknown> {
  return {
    room: { rooms: [], account_data: { not_types: ['*'] }, ephemeral: { not_types: ['*'] }, state: { not_types: ['*'] }, timeline: { not_types: ['*'] } },
    presence: { not_types: ['*'] },
    account_data: { not_types: ['*'] },
    'net.matrix_crypto_node.request': randomUUID(),
  };
}

/** At most this many batches per device and drain (100 events each: 10,000 events); the next drain continues. */
const MAX_BATCHES = 100;

/** JSON with object keys sorted, so the same event pushed and synced has one digest. */
function canonical(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  const obj = value as Record<string, unknown>;
  return `{${Object.keys(obj)
    .sort()
    .filter((k) => obj[k] !== undefined)
    .map((k) => `${JSON.stringify(k)}:${canonical(obj[k])}`)
    .join(',')}}`;
}

/**
 * The digest of a to-device event: SHA-256 over the canonical JSON of its sender, type and
 * content, 128 bits in base64. Call only on events no deeper than {@link MAX_EVENT_DEPTH}.
 * @internal
 */
export function toDeviceDigest(event: MatrixEvent): string {
  const text = canonical({ sender: event.sender, type: event.type, content: event.content });
  return createHash('sha256').update(text).digest().subarray(0, 16).toString('base64');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function stringList(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/** What draining one device did. @internal */
export interface DeviceDrain {
  toDeviceEvents: number;
  duplicates: number;
  malformed: number;
  /** What the device's machine made of each batch it was fed. */
  results: SyncResult[];
}

/**
 * Drains one device's inbox (see the module comment), in the device's delivery turn.
 * @internal
 */
export function drainDevice(host: InboxHost, rec: DeviceRecord): Promise<DeviceDrain> {
  const { state } = host;
  return host.serial(rec.userId, async () => {
    const out: DeviceDrain = { toDeviceEvents: 0, duplicates: 0, malformed: 0, results: [] };
    const seenAgain: string[] = [];
    let since = state.inboxToken(rec.userId, rec.deviceId);
    let acknowledged = false;
    // Shares set aside while the device kept failing are replayed first: it may work again.
    if (state.asideShares(rec.userId).length > 0) {
      out.results.push(await host.feed(rec, { userId: rec.userId, deviceId: rec.deviceId, toDeviceEvents: [] }));
    }
    for (let batch = 0; batch < MAX_BATCHES; batch++) {
      const sync = await host.sync(rec, since);
      if (typeof sync?.next_batch !== 'string') throw new Error(`/sync as ${rec.userId} ${rec.deviceId}: the answer has no next_batch`);
      const events: unknown[] = Array.isArray(sync.to_device?.events) ? sync.to_device.events : [];
      const share: DeviceShare = { userId: rec.userId, deviceId: rec.deviceId, toDeviceEvents: [] };
      const digests: string[] = [];
      for (const e of events) {
        if (!isObject(e) || typeof e.type !== 'string' || nestsDeeperThan(e, MAX_EVENT_DEPTH)) {
          out.malformed++;
          continue;
        }
        const digest = toDeviceDigest(e as unknown as MatrixEvent);
        if (state.hasDigest(rec.userId, digest) || digests.includes(digest)) {
          out.duplicates++;
          seenAgain.push(digest);
          continue;
        }
        share.toDeviceEvents.push(e as unknown as MatrixEvent);
        digests.push(digest);
      }
      if (events.length === 0) {
        // This sync acknowledged every batch before it. A token is kept only when it moved
        // past events (or is the first): the older one acknowledges the same and stays valid.
        acknowledged = true;
        if (since === undefined) await state.recordInboxToken(rec.userId, rec.deviceId, sync.next_batch);
        break;
      }
      const counts = sync.device_one_time_keys_count;
      if (isObject(counts) && Object.values(counts).every((n) => Number.isInteger(n) && (n as number) >= 0)) {
        share.oneTimeKeyCounts = counts as Record<string, number>;
      }
      if (Array.isArray(sync.device_unused_fallback_key_types)) share.unusedFallbackKeys = stringList(sync.device_unused_fallback_key_types);
      // Device-list changes since the token: the homeserver does not resend the appservice
      // the ones it pushed while the bridge was down either.
      if (since !== undefined && isObject(sync.device_lists)) {
        const changed = stringList(sync.device_lists.changed);
        const left = stringList(sync.device_lists.left);
        if (changed.length || left.length) share.changedDevices = { changed, left };
      }
      if (share.toDeviceEvents.length > 0 || share.changedDevices || host.needsMachine(share)) {
        out.results.push(await host.feed(rec, share));
      }
      out.toDeviceEvents += share.toDeviceEvents.length;
      await state.recordDigests(rec.userId, digests);
      await state.recordInboxToken(rec.userId, rec.deviceId, sync.next_batch);
      since = sync.next_batch;
    }
    // Acknowledged events are deleted by the homeserver: their digests are no longer needed.
    if (acknowledged && seenAgain.length > 0) await state.recordDigests(rec.userId, [], seenAgain);
    return out;
  });
}
