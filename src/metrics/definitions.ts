/**
 * Every metric this library records: name, type, help text, labels (each with its closed set of
 * values, so that no user, room or device id can become a label value) and histogram buckets.
 * `docs/metrics.md` documents the same list; `test/metrics.test.ts` ties the two.
 *
 * @module
 */
import { codeLists } from '../errors';

/** The withheld codes of the spec, the values of every `withheld`/`code` label about notices. */
const WITHHELD_CODES = ['m.blacklisted', 'm.unverified', 'm.unauthorised', 'm.unavailable', 'm.no_olm', 'm.history_not_shared'] as const;

/** A label's allowed values; anything else is recorded as `other`. */
type LabelValues = readonly string[] | ((value: string) => boolean);

interface Definition {
  readonly type: 'counter' | 'gauge' | 'histogram';
  readonly help: string;
  readonly labels: Readonly<Record<string, LabelValues>>;
  readonly buckets?: readonly number[];
}

/** Machine calls, in seconds: a decryption from memory takes well under a millisecond, a store write many. */
const CALL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The bounded endpoint templates of {@link HomeserverTransport} calls (see `endpointOf` in transport.ts). */
export const ENDPOINTS = [
  '/keys/upload',
  '/keys/query',
  '/keys/claim',
  '/keys/signatures/upload',
  '/keys/device_signing/upload',
  '/sendToDevice/{eventType}/{txnId}',
  '/rooms/{roomId}/send/{eventType}/{txnId}',
  '/rooms/{roomId}/joined_members',
  '/rooms/{roomId}/messages',
  '/rooms/{roomId}/state/{eventType}/{stateKey}',
  '/room_keys/keys',
  '/room_keys/version',
  '/sync',
  '/createRoom',
  '/join/{roomIdOrAlias}',
  '/account/whoami',
  '/user/{userId}/account_data/{type}',
  '/devices/{deviceId}',
  '/register',
] as const;

/** The operations timed by `matrix_crypto_machine_operation_duration_seconds`. */
export const OPERATIONS = [
  'open',
  'close',
  'receive_sync_changes',
  'outgoing_requests',
  'mark_request_as_sent',
  'update_tracked_users',
  'get_missing_sessions',
  'share_room_key',
  'encrypt_room_event',
  'decrypt_room_event',
] as const;

/** One of {@link OPERATIONS}. */
export type MachineOperation = (typeof OPERATIONS)[number];

const isStatus = (v: string): boolean => v === 'network_error' || /^[1-5]\d\d$/.test(v);

/** The name of a histogram this library records (see docs/metrics.md). */
export type HistogramMetricName =
  | 'matrix_crypto_room_key_delay_seconds'
  | 'matrix_crypto_machine_operation_duration_seconds'
  | 'matrix_crypto_homeserver_request_duration_seconds'
  | 'matrix_crypto_appservice_transaction_duration_seconds'
  | 'matrix_crypto_appservice_transaction_devices';

/** The name of a counter or gauge this library records (see docs/metrics.md). */
export type ValueMetricName =
  | 'matrix_crypto_decryptions_total'
  | 'matrix_crypto_decryption_errors_total'
  | 'matrix_crypto_late_room_keys_total'
  | 'matrix_crypto_undecryptable_events_waiting'
  | 'matrix_crypto_to_device_events_total'
  | 'matrix_crypto_room_key_shares_total'
  | 'matrix_crypto_room_key_share_devices_total'
  | 'matrix_crypto_room_key_withheld_total'
  | 'matrix_crypto_room_key_share_request_bytes_total'
  | 'matrix_crypto_olm_sessions_created_total'
  | 'matrix_crypto_one_time_keys_uploaded_total'
  | 'matrix_crypto_one_time_keys_left'
  | 'matrix_crypto_open_machines'
  | 'matrix_crypto_homeserver_requests_total'
  | 'matrix_crypto_appservice_transactions_total'
  | 'matrix_crypto_appservice_machine_evictions_total';

/** The name of a metric this library records. */
export type MetricName = HistogramMetricName | ValueMetricName;

/** The metrics, by name (tsc rejects a name missing from, or extra to, the two unions). */
export const DEFINITIONS = {
  matrix_crypto_decryptions_total: {
    type: 'counter',
    help: 'Room events decrypted (outcome="decrypted") or not (outcome="undecryptable").',
    labels: { outcome: ['decrypted', 'undecryptable'] },
  },
  matrix_crypto_decryption_errors_total: {
    type: 'counter',
    help: 'Room events that could not be decrypted, by DecryptionError code and the withheld code that explains it ("none" when no notice does).',
    labels: { code: codeLists.decryptionErrorCodes, withheld: ['none', ...WITHHELD_CODES] },
  },
  matrix_crypto_late_room_keys_total: {
    type: 'counter',
    help: 'Room keys that arrived after an event of their session had failed to decrypt for want of them.',
    labels: {},
  },
  matrix_crypto_room_key_delay_seconds: {
    type: 'histogram',
    help: 'How late a late room key was: from the first failed decryption of an event of its session to its arrival.',
    labels: {},
    buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 21600],
  },
  matrix_crypto_undecryptable_events_waiting: {
    type: 'gauge',
    help: 'Events that failed to decrypt for want of their room key (MissingRoomKey, UnknownMessageIndex) and whose key has not arrived yet.',
    labels: {},
  },
  matrix_crypto_to_device_events_total: {
    type: 'counter',
    help: 'To-device events received, by what the machine made of them; outcome="skipped" counts entries that were not event objects.',
    labels: { outcome: ['decrypted', 'plaintext', 'undecryptable', 'invalid', 'skipped'] },
  },
  matrix_crypto_room_key_shares_total: {
    type: 'counter',
    help: 'Room-key shares (shareRoomKey calls that completed).',
    labels: {},
  },
  matrix_crypto_room_key_share_devices_total: {
    type: 'counter',
    help: 'Devices that received a room key from a share.',
    labels: {},
  },
  matrix_crypto_room_key_withheld_total: {
    type: 'counter',
    help: 'Devices refused a room key in a share, by withheld code (whether or not the policy sent the notice).',
    labels: { code: WITHHELD_CODES },
  },
  matrix_crypto_room_key_share_request_bytes_total: {
    type: 'counter',
    help: 'Bytes of the to-device request bodies (room keys and withheld notices) that shares produced.',
    labels: {},
  },
  matrix_crypto_olm_sessions_created_total: {
    type: 'counter',
    help: 'Olm sessions created: direction="outbound" counts the one-time and fallback keys claims returned (one session each); direction="inbound" the decrypted pre-key messages with a base key not seen before (one per session).',
    labels: { direction: ['outbound', 'inbound'] },
  },
  matrix_crypto_one_time_keys_uploaded_total: {
    type: 'counter',
    help: 'One-time keys uploaded (in key uploads the homeserver accepted).',
    labels: {},
  },
  matrix_crypto_one_time_keys_left: {
    type: 'gauge',
    help: "Unclaimed signed_curve25519 one-time keys on the homeserver, summed over the open machines (each machine's latest count).",
    labels: {},
  },
  matrix_crypto_open_machines: {
    type: 'gauge',
    help: 'OlmMachines open now.',
    labels: {},
  },
  matrix_crypto_machine_operation_duration_seconds: {
    type: 'histogram',
    help: 'Duration of calls into the native machine (the crate and its store), by operation.',
    labels: { operation: OPERATIONS },
    buckets: CALL_BUCKETS,
  },
  matrix_crypto_homeserver_requests_total: {
    type: 'counter',
    help: 'HTTP requests to the homeserver (every attempt, retries included), by endpoint template, method and status ("network_error" when no answer came).',
    labels: { endpoint: ENDPOINTS, method: ['GET', 'POST', 'PUT', 'DELETE'], status: isStatus },
  },
  matrix_crypto_homeserver_request_duration_seconds: {
    type: 'histogram',
    help: 'Duration of HTTP requests to the homeserver (each attempt), by endpoint template.',
    labels: { endpoint: ENDPOINTS },
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
  },
  matrix_crypto_appservice_transactions_total: {
    type: 'counter',
    help: 'Appservice transactions, by outcome: processed, duplicate (already processed) or failed (answered with an error so the homeserver retries).',
    labels: { outcome: ['processed', 'duplicate', 'failed'] },
  },
  matrix_crypto_appservice_transaction_duration_seconds: {
    type: 'histogram',
    help: 'Duration of processing an appservice transaction (every outcome).',
    labels: {},
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  },
  matrix_crypto_appservice_transaction_devices: {
    type: 'histogram',
    help: 'Bridged devices fed per processed appservice transaction.',
    labels: {},
    buckets: [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
  },
  matrix_crypto_appservice_machine_evictions_total: {
    type: 'counter',
    help: 'Idle machines an AppserviceCrypto closed to stay within limits.maxOpenMachines.',
    labels: {},
  },
} as const satisfies { [K in MetricName]: Definition & { type: K extends HistogramMetricName ? 'histogram' : 'counter' | 'gauge' } };

/** A metric's definition. */
export function definitionOf(name: MetricName): Definition {
  return DEFINITIONS[name];
}
