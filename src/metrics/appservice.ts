/**
 * What an {@link AppserviceCrypto} reports into its recorder, besides what its machines and
 * transports report: transactions, the events it hands to the bridge, the events waiting for
 * their room key, evictions.
 *
 * @module
 */
import type { AppserviceTimelineEvent } from '../appservice/manager';
import { recordDecryptionError } from './machine';
import type { MetricsRecorder } from './recorder';

/** The appservice's figures. @internal */
export class AppserviceMetrics {
  constructor(readonly recorder: MetricsRecorder) {}

  /** A transaction ended: `devices` is how many devices' machines processed a part of it (processed ones only). */
  transaction(startedAt: number, outcome: 'processed' | 'duplicate' | 'failed', devices: number): void {
    this.recorder.add('matrix_crypto_appservice_transactions_total', { outcome });
    this.recorder.observe('matrix_crypto_appservice_transaction_duration_seconds', {}, (performance.now() - startedAt) / 1000);
    if (outcome === 'processed') this.recorder.observe('matrix_crypto_appservice_transaction_devices', {}, devices);
  }

  /** Events handed to the bridge: each encrypted one counts once, however many devices tried it. */
  handedOver(items: AppserviceTimelineEvent[]): void {
    for (const item of items) {
      if (item.kind === 'decrypted') this.recorder.add('matrix_crypto_decryptions_total', { outcome: 'decrypted' });
      else if (item.kind === 'undecryptable') recordDecryptionError(this.recorder, item.error);
    }
  }

  /** Events started (positive) or stopped (negative) waiting for their room key. */
  waiting(delta: number): void {
    this.recorder.add('matrix_crypto_undecryptable_events_waiting', {}, delta);
  }

  /** A room key came for waiting events, the first of which failed at `since` (ms since the epoch). */
  lateKey(since: number, now: number = Date.now()): void {
    this.recorder.add('matrix_crypto_late_room_keys_total', {});
    this.recorder.observe('matrix_crypto_room_key_delay_seconds', {}, (now - since) / 1000);
  }

  evicted(): void {
    this.recorder.add('matrix_crypto_appservice_machine_evictions_total', {});
  }
}
