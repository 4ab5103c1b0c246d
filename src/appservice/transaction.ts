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
 * A malformed part is skipped and reported, never thrown: the homeserver resends a transaction
 * until it is answered 200, so a body that cannot be read whole must still be answered 200.
 *
 * @module
 */
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


/**
 * A part of a transaction body that was malformed and skipped: the rest of the transaction is
 * processed, and the homeserver is answered 200 (a retry of the same body cannot fix it).
 */
export interface MalformedTransactionPart {
  /** Where it is, in JavaScript terms, e.g. `body.events[2]` or `body["de.sorunome.msc2409.to_device"][0].to_device_id`. */
  field: string;
  /** What is wrong with it, e.g. `must be an event object with a string type`. */
  reason: string;
}

/** What one (user, device) gets from a transaction. @internal */
export interface DeviceShare {
  userId: string;
  deviceId: string;
  toDeviceEvents: MatrixEvent[];
  oneTimeKeyCounts?: Record<string, number>;
  unusedFallbackKeys?: string[];
  /** Device-list changes for this device alone (from its inbox drain's `/sync`). */
  changedDevices?: { changed: string[]; left: string[] };
}

/** A transaction body, split by recipient. @internal */
export interface RoutedTransaction {
  events: RoomEvent[];
  /** The index in `body.events` of each of `events` (malformed ones are left out). */
  eventIndexes: number[];
  /** By `userId|deviceId`, in order of first appearance. */
  devices: Map<string, DeviceShare>;
  changed: string[];
  left: string[];
  /** The parts that were skipped, in body order. */
  malformed: MalformedTransactionPart[];
}

/** The key of a (user, device) pair in maps. @internal */
export function deviceKey(userId: string, deviceId: string): string {
  return `${userId}|${deviceId}`;
}

/**
 * How deep a value routed to a machine may nest. The Rust side parses events with serde_json,
 * whose recursion limit is 128, and `JSON.stringify` overflows the stack at a few thousand
 * levels; real events nest fewer than 20 levels.
 * @internal
 */
export const MAX_EVENT_DEPTH = 100;

/** Whether `value` nests deeper than `max` levels; iterative, so any depth is safe to ask about. */
export function nestsDeeperThan(value: unknown, max: number): boolean {
  const stack: Array<[unknown, number]> = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (v === null || typeof v !== 'object') continue;
    if (depth > max) return true;
    for (const child of Object.values(v as Record<string, unknown>)) {
      if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
    }
  }
  return false;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The first of `names` present in `body`, with its name. */
function pick(body: Record<string, unknown>, names: string[]): [string, unknown] | undefined {
  for (const n of names) if (body[n] !== undefined && body[n] !== null) return [n, body[n]];
  return undefined;
}

/**
 * Splits a transaction body by recipient device. Never throws: every malformed part (a body that
 * is not an object, a list that is not an array, an entry of the wrong type, a value nested
 * deeper than {@link MAX_EVENT_DEPTH}) is left out and reported in `malformed`, and the rest is
 * routed.
 */
export function routeTransaction(body: unknown): RoutedTransaction {
  const malformed: MalformedTransactionPart[] = [];
  const bad = (field: string, reason: string): void => void malformed.push({ field, reason });
  const devices = new Map<string, DeviceShare>();
  const routed: RoutedTransaction = { events: [], eventIndexes: [], devices, changed: [], left: [], malformed };
  if (!isObject(body)) {
    bad('body', 'must be a JSON object');
    return routed;
  }
  const share = (userId: string, deviceId: string): DeviceShare => {
    const k = deviceKey(userId, deviceId);
    let d = devices.get(k);
    if (!d) {
      d = { userId, deviceId, toDeviceEvents: [] };
      devices.set(k, d);
    }
    return d;
  };
  const list = (field: string, value: unknown): unknown[] => {
    if (Array.isArray(value)) return value;
    bad(field, 'must be an array');
    return [];
  };

  if (body.events !== undefined && body.events !== null) {
    list('body.events', body.events).forEach((e, i) => {
      if (!isObject(e) || typeof e.type !== 'string') bad(`body.events[${i}]`, 'must be an event object with a string type');
      else if (nestsDeeperThan(e, MAX_EVENT_DEPTH)) bad(`body.events[${i}]`, `nests deeper than ${MAX_EVENT_DEPTH} levels`);
      else {
        routed.events.push(e as RoomEvent);
        routed.eventIndexes.push(i);
      }
    });
  }

  const toDevice = pick(body, ['to_device', 'de.sorunome.msc2409.to_device']);
  if (toDevice) {
    const [name, value] = toDevice;
    const field = `body["${name}"]`;
    list(field, value).forEach((e: unknown, i) => {
      const f = `${field}[${i}]`;
      if (!isObject(e)) return bad(f, 'must be an object');
      if (typeof e.to_user_id !== 'string') return bad(`${f}.to_user_id`, 'must be a string');
      if (typeof e.to_device_id !== 'string') return bad(`${f}.to_device_id`, 'must be a string');
      if (typeof e.type !== 'string') return bad(`${f}.type`, 'must be a string');
      if (nestsDeeperThan(e, MAX_EVENT_DEPTH)) return bad(f, `nests deeper than ${MAX_EVENT_DEPTH} levels`);
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
    if (!isObject(byUser)) bad(field, 'must be an object');
    else {
      for (const [userId, byDevice] of Object.entries(byUser)) {
        if (!isObject(byDevice)) {
          bad(`${field}["${userId}"]`, 'must be an object');
          continue;
        }
        for (const [deviceId, algorithms] of Object.entries(byDevice)) {
          if (!isObject(algorithms) || Object.values(algorithms).some((n) => typeof n !== 'number' || !Number.isInteger(n) || n < 0)) {
            bad(`${field}["${userId}"]["${deviceId}"]`, 'must map algorithms to non-negative integer counts');
            continue;
          }
          share(userId, deviceId).oneTimeKeyCounts = algorithms as Record<string, number>;
        }
      }
    }
  }

  const fallback = pick(body, ['device_unused_fallback_key_types', 'org.matrix.msc3202.device_unused_fallback_key_types']);
  if (fallback) {
    const [name, byUser] = fallback;
    const field = `body["${name}"]`;
    if (!isObject(byUser)) bad(field, 'must be an object');
    else {
      for (const [userId, byDevice] of Object.entries(byUser)) {
        if (!isObject(byDevice)) {
          bad(`${field}["${userId}"]`, 'must be an object');
          continue;
        }
        for (const [deviceId, types] of Object.entries(byDevice)) {
          if (!Array.isArray(types) || types.some((t) => typeof t !== 'string')) {
            bad(`${field}["${userId}"]["${deviceId}"]`, 'must be an array of strings');
            continue;
          }
          share(userId, deviceId).unusedFallbackKeys = types as string[];
        }
      }
    }
  }

  const lists = pick(body, ['device_lists', 'org.matrix.msc3202.device_lists']);
  if (lists) {
    const [name, value] = lists;
    const field = `body["${name}"]`;
    if (!isObject(value)) bad(field, 'must be an object');
    else {
      // The strings of a list are kept: one bad entry must not hide the others' changes.
      const strings = (f: string, v: unknown): string[] => {
        if (v === undefined || v === null) return [];
        const items = list(f, v);
        items.forEach((x, i) => typeof x !== 'string' && bad(`${f}[${i}]`, 'must be a string'));
        return items.filter((x): x is string => typeof x === 'string');
      };
      routed.changed = strings(`${field}.changed`, value.changed);
      routed.left = strings(`${field}.left`, value.left);
    }
  }
  return routed;
}
