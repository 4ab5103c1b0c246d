/**
 * Reading the body of `PUT /_matrix/app/v1/transactions/{txnId}`: which to-device events, key
 * counts and fallback key types go to which (user, device), and the appservice-wide device-list
 * changes. Both the stable names and the unstable ones Synapse sends are read:
 *
 * | what | stable | unstable (Synapse 1.163 sends these) |
 * | --- | --- | --- |
 * | to-device events (MSC4203, formerly MSC2409) | `to_device` | `de.sorunome.msc2409.to_device` |
 * | one-time-key counts (MSC3202) | `device_one_time_keys_count` | `org.matrix.msc3202.device_one_time_keys_count`, `org.matrix.msc3202.device_one_time_key_counts` |
 * | unused fallback key types (MSC3202) | `device_unused_fallback_key_types` | `org.matrix.msc3202.device_unused_fallback_key_types` |
 * | device-list changes (MSC3202) | `device_lists` | `org.matrix.msc3202.device_lists` |
 *
 * When a body carries a stable and an unstable name for the same thing, the stable one wins
 * (a server in transition sends both, with the same content).
 *
 * @module
 */
import { MatrixCryptoError } from '../errors';
import type { RoomEvent } from '../transport';
import type { MatrixEvent } from '../types';

/** The body of an appservice transaction, as the homeserver sends it (typed where it matters). */
export interface TransactionBody {
  /** Room events (PDUs) for rooms and users in the appservice's namespaces. */
  events?: RoomEvent[];
  /** Ephemeral events (typing, receipts, presence), when the registration asks for them. */
  ephemeral?: MatrixEvent[];
  /** MSC4203 to-device events, each with `to_user_id` and `to_device_id`. */
  to_device?: TransactionToDeviceEvent[];
  /** Unstable name of {@link TransactionBody.to_device}. */
  'de.sorunome.msc2409.to_device'?: TransactionToDeviceEvent[];
  /** MSC3202: unclaimed one-time keys by user, device and algorithm. */
  device_one_time_keys_count?: Record<string, Record<string, Record<string, number>>>;
  /** Unstable name of {@link TransactionBody.device_one_time_keys_count}. */
  'org.matrix.msc3202.device_one_time_keys_count'?: Record<string, Record<string, Record<string, number>>>;
  /** Older unstable name of {@link TransactionBody.device_one_time_keys_count}. */
  'org.matrix.msc3202.device_one_time_key_counts'?: Record<string, Record<string, Record<string, number>>>;
  /** MSC3202: unused fallback key algorithms by user and device. */
  device_unused_fallback_key_types?: Record<string, Record<string, string[]>>;
  /** Unstable name of {@link TransactionBody.device_unused_fallback_key_types}. */
  'org.matrix.msc3202.device_unused_fallback_key_types'?: Record<string, Record<string, string[]>>;
  /** MSC3202: users whose devices changed, or who no longer share a room with the appservice's users. */
  device_lists?: TransactionDeviceLists;
  /** Unstable name of {@link TransactionBody.device_lists}. */
  'org.matrix.msc3202.device_lists'?: TransactionDeviceLists;
  /** Any other field. */
  [key: string]: unknown;
}

/** The MSC3202 device-list changes of a transaction. */
export interface TransactionDeviceLists {
  /** Users whose devices changed, or who now share an encrypted room with the appservice's users. */
  changed?: string[];
  /** Users who no longer share a room with any of the appservice's users. */
  left?: string[];
}

/** A to-device event in a transaction: the event plus its recipient. */
export interface TransactionToDeviceEvent extends MatrixEvent {
  /** The recipient user. */
  to_user_id: string;
  /** The recipient device. */
  to_device_id: string;
}

/** What one (user, device) gets from a transaction. @internal */
export interface DeviceShare {
  userId: string;
  deviceId: string;
  toDeviceEvents: MatrixEvent[];
  oneTimeKeyCounts?: Record<string, number>;
  unusedFallbackKeys?: string[];
}

/** A transaction body, split by recipient. @internal */
export interface RoutedTransaction {
  events: RoomEvent[];
  /** By `userId|deviceId`, in order of first appearance. */
  devices: Map<string, DeviceShare>;
  changed: string[];
  left: string[];
}

/** The key of a (user, device) pair in maps. @internal */
export function deviceKey(userId: string, deviceId: string): string {
  return `${userId}|${deviceId}`;
}

function bad(field: string, what: string): MatrixCryptoError {
  return new MatrixCryptoError('InvalidArgument', `${field}: ${what}`, field);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The first of `names` present in `body`, with its name. */
function pick(body: Record<string, unknown>, names: string[]): [string, unknown] | undefined {
  for (const n of names) if (body[n] !== undefined && body[n] !== null) return [n, body[n]];
  return undefined;
}

function stringArray(field: string, v: unknown): string[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw bad(field, 'must be an array of strings');
  return v as string[];
}

/**
 * Splits a transaction body by recipient device.
 *
 * @throws {@link MatrixCryptoError} `InvalidArgument` naming the malformed field, e.g.
 *   `body["de.sorunome.msc2409.to_device"][3].to_device_id`.
 */
export function routeTransaction(body: unknown): RoutedTransaction {
  if (!isObject(body)) throw bad('body', 'must be a JSON object');
  const events = body.events ?? [];
  if (!Array.isArray(events)) throw bad('body.events', 'must be an array');
  events.forEach((e, i) => {
    if (!isObject(e) || typeof e.type !== 'string') throw bad(`body.events[${i}]`, 'must be an event object with a string type');
  });
  const devices = new Map<string, DeviceShare>();
  const share = (userId: string, deviceId: string): DeviceShare => {
    const k = deviceKey(userId, deviceId);
    let d = devices.get(k);
    if (!d) {
      d = { userId, deviceId, toDeviceEvents: [] };
      devices.set(k, d);
    }
    return d;
  };

  const toDevice = pick(body, ['to_device', 'de.sorunome.msc2409.to_device']);
  if (toDevice) {
    const [name, list] = toDevice;
    const field = `body["${name}"]`;
    if (!Array.isArray(list)) throw bad(field, 'must be an array');
    list.forEach((e: unknown, i) => {
      if (!isObject(e)) throw bad(`${field}[${i}]`, 'must be an object');
      if (typeof e.to_user_id !== 'string') throw bad(`${field}[${i}].to_user_id`, 'must be a string');
      if (typeof e.to_device_id !== 'string') throw bad(`${field}[${i}].to_device_id`, 'must be a string');
      if (typeof e.type !== 'string') throw bad(`${field}[${i}].type`, 'must be a string');
      const { to_user_id, to_device_id, ...event } = e;
      share(to_user_id, to_device_id).toDeviceEvents.push(event as unknown as MatrixEvent);
    });
  }

  const counts = pick(body, [
    'device_one_time_keys_count',
    'org.matrix.msc3202.device_one_time_keys_count',
    'org.matrix.msc3202.device_one_time_key_counts',
  ]);
  if (counts) {
    const [name, byUser] = counts;
    const field = `body["${name}"]`;
    if (!isObject(byUser)) throw bad(field, 'must be an object');
    for (const [userId, byDevice] of Object.entries(byUser)) {
      if (!isObject(byDevice)) throw bad(`${field}["${userId}"]`, 'must be an object');
      for (const [deviceId, algorithms] of Object.entries(byDevice)) {
        const f = `${field}["${userId}"]["${deviceId}"]`;
        if (!isObject(algorithms) || Object.values(algorithms).some((n) => typeof n !== 'number' || !Number.isInteger(n) || n < 0)) {
          throw bad(f, 'must map algorithms to non-negative integer counts');
        }
        share(userId, deviceId).oneTimeKeyCounts = algorithms as Record<string, number>;
      }
    }
  }

  const fallback = pick(body, ['device_unused_fallback_key_types', 'org.matrix.msc3202.device_unused_fallback_key_types']);
  if (fallback) {
    const [name, byUser] = fallback;
    const field = `body["${name}"]`;
    if (!isObject(byUser)) throw bad(field, 'must be an object');
    for (const [userId, byDevice] of Object.entries(byUser)) {
      if (!isObject(byDevice)) throw bad(`${field}["${userId}"]`, 'must be an object');
      for (const [deviceId, types] of Object.entries(byDevice)) {
        share(userId, deviceId).unusedFallbackKeys = stringArray(`${field}["${userId}"]["${deviceId}"]`, types);
      }
    }
  }

  let changed: string[] = [];
  let left: string[] = [];
  const lists = pick(body, ['device_lists', 'org.matrix.msc3202.device_lists']);
  if (lists) {
    const [name, value] = lists;
    const field = `body["${name}"]`;
    if (!isObject(value)) throw bad(field, 'must be an object');
    changed = stringArray(`${field}.changed`, value.changed);
    left = stringArray(`${field}.left`, value.left);
  }
  return { events: events as RoomEvent[], devices, changed, left };
}
