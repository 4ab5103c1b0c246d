/**
 * Interactive verification: SAS (emoji and decimals) and QR codes, over to-device messages or
 * in a room (a DM), every state change reported, and a policy for bots that run unattended.
 *
 * The {@link OlmMachine} holds each flow's state; {@link VerificationTracker} (behind
 * {@link EncryptedClient.on}) watches the flows that syncs touch, reports each change of
 * phase once, and applies the {@link VerificationPolicy}.
 *
 * @module
 */
import type { MatrixEvent } from '../types';
import type { VerificationMethodKind } from '../../native/index';
import type { RoomMessageRequest, SignatureUploadRequest, ToDeviceRequest } from '../requests';
import type { VerificationInfo } from '../../native/index';

export type { VerificationInfo, VerificationPhase, SasEmoji, VerificationCancelInfo, VerificationMethodKind } from '../../native/index';

/**
 * A cancel code: `m.user` (cancelled by the user) and `m.mismatched_sas` (the SAS did not
 * match) are the ones to send; others come from the other side or from the crate (`m.timeout`,
 * `m.unknown_transaction`, `m.unexpected_message`, `m.key_mismatch`, `m.user_mismatch`,
 * `m.invalid_message`, `m.accepted`, `m.unknown_method`, `m.mismatched_commitment`).
 */
export type VerificationCancelCode = 'm.user' | 'm.mismatched_sas' | (string & {});

/** What a verification action returns. */
export interface VerificationStep {
  /**
   * Send these now, in order: to-device messages (a to-device flow) or room messages (an
   * in-room flow: encrypt them in an encrypted room), and a signature upload once verified.
   */
  requests: Array<ToDeviceRequest | RoomMessageRequest | SignatureUploadRequest>;
  /** The flow after the action. */
  verification: VerificationInfo;
}

/** A QR code a flow shows ({@link OlmMachine.showQrCode}). */
export interface VerificationQrCode {
  /**
   * The bytes to encode in a QR code (byte mode), as the spec lays them out; render them with
   * any QR encoder for the other user to scan.
   */
  bytes: Uint8Array;
  /** The flow, in phase `qr_shown`. */
  verification: VerificationInfo;
}

/**
 * How an unattended bot answers verification. Nothing is automatic by default: every request
 * is reported with `on('verification')` and waits for the application.
 */
export interface VerificationPolicy {
  /**
   * Accept requests from these users (ours included, for our other devices) and the SAS they
   * start; requests from anyone else wait for the application. Default: none.
   */
  acceptFrom?: string[];
  /**
   * Confirm the SAS without comparing it, for flows with users in `acceptFrom`. Only for bots
   * whose operator decided that the homeserver and those users' devices are trusted: an
   * automatic confirmation verifies whoever answers. Default `false`.
   */
  autoConfirmSas?: boolean;
  /**
   * The methods offered in requests and when accepting one: `'sas'`, `'qr_show'` (the bot can
   * show a QR code: {@link EncryptedClient.showQrCode}) and `'qr_scan'` (the application can
   * give the bot the bytes of the other side's QR code: {@link EncryptedClient.scanQrCode}).
   * Default `['sas']`.
   */
  methods?: VerificationMethodKind[];
  /**
   * Confirm that the other side scanned the bot's QR code (phase `qr_scanned`) without asking
   * the application, for flows with users in `acceptFrom`. The scan itself proves that the
   * scanner read the code the bot showed; confirming says that the person who scanned it is
   * the one the bot meant to show it to. Default `false`.
   */
  autoConfirmQrScan?: boolean;
}

/** Events the tracker needs from each sync. */
export interface VerificationSource {
  /** The sender and flow id of a verification event. */
  sender: string;
  /** The flow id (`transaction_id`). */
  flowId: string;
}

/** The flow a to-device event belongs to, if it is a verification event. */
export function verificationFlowOf(event: MatrixEvent): VerificationSource | undefined {
  const sender = event.sender;
  if (typeof sender !== 'string' || typeof event.type !== 'string' || !event.type.startsWith('m.key.verification.')) return undefined;
  const content = (event.content ?? {}) as Record<string, unknown>;
  return typeof content.transaction_id === 'string' ? { sender, flowId: content.transaction_id } : undefined;
}

/**
 * The flow a room event belongs to, if it is a verification event of another user: an
 * `m.room.message` with `msgtype: m.key.verification.request` (the flow id is its event id) or
 * an `m.key.verification.*` event relating to one.
 */
export function roomVerificationFlowOf(event: MatrixEvent): VerificationSource | undefined {
  const sender = event.sender;
  if (typeof sender !== 'string' || typeof event.type !== 'string') return undefined;
  const content = (event.content ?? {}) as Record<string, unknown>;
  if (event.type === 'm.room.message' && content.msgtype === 'm.key.verification.request') {
    return typeof event.event_id === 'string' ? { sender, flowId: event.event_id } : undefined;
  }
  if (!event.type.startsWith('m.key.verification.')) return undefined;
  const relatesTo = content['m.relates_to'] as Record<string, unknown> | undefined;
  return typeof relatesTo?.event_id === 'string' ? { sender, flowId: relatesTo.event_id } : undefined;
}

/** Whether the phase ends the flow. */
function finished(v: VerificationInfo): boolean {
  return v.phase === 'done' || v.phase === 'cancelled';
}

/**
 * Watches verification flows: remembers each flow a sync or an action touched, reports every
 * change of phase once to the listeners, and forgets flows that ended.
 */
export class VerificationTracker {
  readonly #flows = new Map<string, { userId: string; flowId: string; last: string | null }>();
  readonly #listeners = new Set<(v: VerificationInfo) => void>();

  /** Starts watching a flow. */
  track(userId: string, flowId: string): void {
    const key = `${userId}\u0000${flowId}`;
    if (!this.#flows.has(key)) this.#flows.set(key, { userId, flowId, last: null });
  }

  /** Adds a listener; returns a function that removes it. */
  listen(listener: (v: VerificationInfo) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Reports the flows whose phase changed since the last report (through `read`, which returns
   * a flow's current state) and returns them.
   */
  report(read: (userId: string, flowId: string) => VerificationInfo | null): VerificationInfo[] {
    const changed: VerificationInfo[] = [];
    for (const [key, flow] of this.#flows) {
      const now = read(flow.userId, flow.flowId);
      if (!now) {
        this.#flows.delete(key);
        continue;
      }
      // The flow id of a to-device request is known before the request is, so the same flow
      // can be tracked under a SAS-only view first: the phase decides what counts as a change.
      const signature = `${now.phase}|${now.otherDeviceId ?? ''}`;
      if (signature !== flow.last) {
        flow.last = signature;
        changed.push(now);
        for (const l of this.#listeners) {
          try {
            l(now);
          } catch (err) {
            queueMicrotask(() => {
              throw err;
            });
          }
        }
      }
      if (finished(now)) this.#flows.delete(key);
    }
    return changed;
  }
}
