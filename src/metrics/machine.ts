/**
 * What one {@link OlmMachine} reports into its recorder: one call per event (a decryption, a
 * sync batch, a share, a request marked sent), each turning the event into the metrics' figures.
 *
 * @module
 */
import { DecryptionError } from '../errors';
import type { OutgoingRequest } from '../requests';
import type { MatrixEvent, SyncChanges, SyncResult } from '../types';
import type { MachineOperation } from './definitions';
import type { MetricsRecorder } from './recorder';

/** How many sessions with undecryptable events are remembered, oldest forgotten first. */
const MAX_WAITING_SESSIONS = 10_000;
/** How many inbound Olm sessions' base keys are remembered, oldest forgotten first. */
const MAX_BASE_KEYS = 10_000;

const OLM = 'm.olm.v1.curve25519-aes-sha2';

/** The figures of one machine. @internal */
export class MachineMetrics {
  /**
   * Events that failed for want of their room key, by `roomId|sessionId`: when the first failed,
   * and the failed events' ids (an event decrypted again is counted once).
   */
  private readonly waiting = new Map<string, { since: number; events: Set<string> }>();
  /** The one-time-key counts of keys_upload requests handed out, by request id. */
  private readonly uploads = new Map<string, number>();
  /** The latest one-time-key count the homeserver reported for this machine. */
  private keysLeft = 0;
  /**
   * The base keys of the pre-key messages decrypted: each inbound Olm session has its own, and a
   * sender repeats pre-key messages of one session until it hears back.
   */
  private readonly baseKeys = new Set<string>();

  /**
   * @param trackDecryptions - whether decryptions, undecryptable events and late keys are
   *   counted here; an AppserviceCrypto counts them per event handed to the bridge instead,
   *   since it may try one event on several of its machines.
   */
  constructor(
    readonly recorder: MetricsRecorder,
    private readonly trackDecryptions = true,
  ) {}

  /** Times a native call. */
  async time<T>(operation: MachineOperation, call: () => Promise<T>): Promise<T> {
    const start = performance.now();
    try {
      return await call();
    } finally {
      this.recorder.observe('matrix_crypto_machine_operation_duration_seconds', { operation }, (performance.now() - start) / 1000);
    }
  }

  opened(): void {
    this.recorder.add('matrix_crypto_open_machines', {}, 1);
  }

  closed(): void {
    this.recorder.add('matrix_crypto_open_machines', {}, -1);
    this.setKeysLeft(0);
    if (this.trackDecryptions) {
      let events = 0;
      for (const w of this.waiting.values()) events += w.events.size;
      this.recorder.add('matrix_crypto_undecryptable_events_waiting', {}, -events);
    }
    this.waiting.clear();
  }

  /** A decryption's outcome: `error` is the thrown error, `undefined` when it decrypted. */
  decryption(roomId: string, event: MatrixEvent | string, error: unknown): void {
    if (!this.trackDecryptions) return;
    if (error !== undefined && !(error instanceof DecryptionError)) return;
    const parsed = typeof event === 'string' ? safeParse(event) : event;
    const eventId = typeof parsed?.event_id === 'string' ? parsed.event_id : '';
    const sessionId = typeof parsed?.content?.session_id === 'string' ? parsed.content.session_id : '';
    const key = `${roomId}|${sessionId}`;
    if (error === undefined) {
      this.recorder.add('matrix_crypto_decryptions_total', { outcome: 'decrypted' });
      const w = this.waiting.get(key);
      if (w?.events.delete(eventId)) {
        this.recorder.add('matrix_crypto_undecryptable_events_waiting', {}, -1);
        if (w.events.size === 0) this.waiting.delete(key);
      }
      return;
    }
    recordDecryptionError(this.recorder, error);
    if ((error.code === 'MissingRoomKey' || error.code === 'UnknownMessageIndex') && eventId !== '') {
      this.wait(key, eventId);
    }
  }

  /** A sync batch: to-device outcomes, inbound Olm sessions, late room keys, key counts. */
  sync(changes: SyncChanges, result: SyncResult, ourCurveKey: string): void {
    const r = this.recorder;
    for (const e of result.toDeviceEvents) r.add('matrix_crypto_to_device_events_total', { outcome: e.kind });
    r.add('matrix_crypto_to_device_events_total', { outcome: 'skipped' }, result.skippedToDeviceEvents.length);
    // The result lists the batch's event objects in order, without the skipped entries.
    const objects = (changes.toDeviceEvents ?? []).filter((e) => e !== null && typeof e === 'object' && !Array.isArray(e));
    if (objects.length === result.toDeviceEvents.length) {
      let inbound = 0;
      objects.forEach((e, i) => {
        const baseKey = result.toDeviceEvents[i]!.kind === 'decrypted' ? preKeyBaseKey(e, ourCurveKey) : undefined;
        if (baseKey === undefined || this.baseKeys.has(baseKey)) return;
        if (this.baseKeys.size >= MAX_BASE_KEYS) this.baseKeys.delete(this.baseKeys.values().next().value!);
        this.baseKeys.add(baseKey);
        inbound++;
      });
      r.add('matrix_crypto_olm_sessions_created_total', { direction: 'inbound' }, inbound);
    }
    if (this.trackDecryptions) {
      const now = Date.now();
      for (const k of result.roomKeyUpdates) {
        const key = `${k.roomId}|${k.sessionId}`;
        const w = this.waiting.get(key);
        if (!w) continue;
        this.waiting.delete(key);
        r.add('matrix_crypto_late_room_keys_total', {});
        r.observe('matrix_crypto_room_key_delay_seconds', {}, (now - w.since) / 1000);
        r.add('matrix_crypto_undecryptable_events_waiting', {}, -w.events.size);
      }
    }
    const count = changes.oneTimeKeyCounts?.signed_curve25519;
    if (typeof count === 'number') this.setKeysLeft(count);
  }

  /** Requests handed out: remembers how many one-time keys each key upload carries. */
  handedOut(requests: OutgoingRequest[]): void {
    for (const req of requests) {
      if (req.type !== 'keys_upload') continue;
      const body = safeParse(req.body) as { one_time_keys?: Record<string, unknown> } | undefined;
      this.uploads.set(req.id, Object.keys(body?.one_time_keys ?? {}).length);
    }
  }

  /** A request marked sent with the homeserver's response. */
  sent(id: string, type: string, response: string): void {
    if (type === 'keys_upload') {
      this.recorder.add('matrix_crypto_one_time_keys_uploaded_total', {}, this.uploads.get(id) ?? 0);
      this.uploads.delete(id);
      const counts = (safeParse(response) as { one_time_key_counts?: Record<string, unknown> } | undefined)?.one_time_key_counts;
      if (typeof counts?.signed_curve25519 === 'number') this.setKeysLeft(counts.signed_curve25519);
    } else if (type === 'keys_claim') {
      this.recorder.add('matrix_crypto_olm_sessions_created_total', { direction: 'outbound' }, claimedKeys(response));
    }
  }

  /** A completed room-key share. */
  share(result: { requests: OutgoingRequest[]; sharedWith: unknown[]; withheld: Array<{ code: string }> }): void {
    const r = this.recorder;
    r.add('matrix_crypto_room_key_shares_total', {});
    r.add('matrix_crypto_room_key_share_devices_total', {}, result.sharedWith.length);
    // Summed per code first: a share to 10,000 devices must not cost 10,000 label lookups.
    const byCode = new Map<string, number>();
    for (const w of result.withheld) byCode.set(w.code, (byCode.get(w.code) ?? 0) + 1);
    for (const [code, n] of byCode) r.add('matrix_crypto_room_key_withheld_total', { code }, n);
    let bytes = 0;
    for (const req of result.requests) bytes += Buffer.byteLength(req.body);
    r.add('matrix_crypto_room_key_share_request_bytes_total', {}, bytes);
  }

  private wait(key: string, eventId: string): void {
    let w = this.waiting.get(key);
    if (!w) {
      if (this.waiting.size >= MAX_WAITING_SESSIONS) {
        const [oldest, old] = this.waiting.entries().next().value as [string, { events: Set<string> }];
        this.waiting.delete(oldest);
        this.recorder.add('matrix_crypto_undecryptable_events_waiting', {}, -old.events.size);
      }
      w = { since: Date.now(), events: new Set() };
      this.waiting.set(key, w);
    }
    if (w.events.has(eventId)) return;
    w.events.add(eventId);
    this.recorder.add('matrix_crypto_undecryptable_events_waiting', {}, 1);
  }

  private setKeysLeft(count: number): void {
    this.recorder.add('matrix_crypto_one_time_keys_left', {}, count - this.keysLeft);
    this.keysLeft = count;
  }
}

/** Counts an undecryptable event by its code and withheld code. @internal */
export function recordDecryptionError(recorder: MetricsRecorder, error: DecryptionError): void {
  recorder.add('matrix_crypto_decryptions_total', { outcome: 'undecryptable' });
  recorder.add('matrix_crypto_decryption_errors_total', { code: error.code, withheld: error.withheld?.code ?? 'none' });
}

/**
 * The base key of an Olm pre-key message to us (the sender's ephemeral key, one per session), or
 * `undefined` for any other event. The message is version byte 3, then protobuf fields:
 * 1 one-time key, 2 base key, 3 identity key, 4 the message.
 */
function preKeyBaseKey(event: MatrixEvent, ourCurveKey: string): string | undefined {
  const content = event.content as { algorithm?: unknown; ciphertext?: Record<string, { type?: unknown; body?: unknown }> } | undefined;
  const ciphertext = content?.ciphertext?.[ourCurveKey];
  if (event.type !== 'm.room.encrypted' || content?.algorithm !== OLM || ciphertext?.type !== 0 || typeof ciphertext.body !== 'string') return undefined;
  const bytes = Buffer.from(ciphertext.body, 'base64');
  if (bytes[0] !== 3) return undefined;
  for (let i = 1; i + 1 < bytes.length; ) {
    const field = bytes[i]! >> 3;
    if ((bytes[i]! & 7) !== 2) return undefined;
    let length = 0;
    let shift = 0;
    for (i++; i < bytes.length; i++, shift += 7) {
      length |= (bytes[i]! & 0x7f) << shift;
      if (bytes[i]! < 0x80) break;
    }
    i++;
    if (field === 2) return bytes.subarray(i, i + length).toString('base64');
    i += length;
  }
  return undefined;
}

/**
 * The keys in a `keys/claim` answer: the occurrences of a `"signed_curve25519:<key id>"` name
 * (the only algorithm the crate claims). Counted in the text rather than parsed: at 10,000
 * devices the answer is megabytes, which the native side parses already.
 */
function claimedKeys(response: string): number {
  const needle = '"signed_curve25519:';
  let n = 0;
  for (let at = response.indexOf(needle); at !== -1; at = response.indexOf(needle, at + needle.length)) n++;
  return n;
}

function safeParse(text: string): Record<string, any> | undefined {
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === 'object' ? (v as Record<string, any>) : undefined;
  } catch {
    return undefined;
  }
}
