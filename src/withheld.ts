/**
 * MSC2399 withheld notices: the codes, the sending policy and what a share reports.
 *
 * @module
 */

/** The withheld codes of the Matrix spec. */
export type SpecWithheldCode =
  /** The sender blocked this device. */
  | 'm.blacklisted'
  /** The sender shares only with verified devices, and this one is not. */
  | 'm.unverified'
  /** The device is not allowed to have the key (e.g. a key request from outside the room). */
  | 'm.unauthorised'
  /** Answer to a key request: the device asked does not have the key. */
  | 'm.unavailable'
  /** No Olm session could be set up with the device; covers every session of the sender device. */
  | 'm.no_olm'
  /** The room's history was not shared (key bundles, MSC4268); never sent by this library. */
  | 'm.history_not_shared';

/**
 * A withheld code: a spec code, or a namespaced custom code such as `com.example.policy`
 * (custom codes are kept, never dropped).
 */
export type WithheldCode = SpecWithheldCode | (string & Record<never, never>);

/**
 * Which withheld notices leave the machine (sending them is optional under MSC2399).
 *
 * @example
 * ```ts
 * // Send only m.unverified, with our own wording:
 * const policy: WithheldPolicy = { send: ['m.unverified'], reasons: { 'm.unverified': 'Verify this device to read the room.' } };
 * ```
 */
export interface WithheldPolicy {
  /** `'all'` (the default), `'none'`, or the codes to send; every other code is suppressed. */
  send?: 'all' | 'none' | WithheldCode[];
  /** The `reason` text per code. Codes without an entry get a default sentence. */
  reasons?: Partial<Record<WithheldCode, string>>;
}

/** A device, by owner and id. */
export interface DeviceRef {
  /** The owner. */
  userId: string;
  /** The device id. */
  deviceId: string;
}

/** A device that did not get the room key in a share, and the notice it gets. */
export interface WithheldRecipient extends DeviceRef {
  /** The code of the notice. */
  code: WithheldCode;
  /** False when the policy suppressed the notice: the device was refused silently. */
  sent: boolean;
}

/** The `m.no_olm` state of a recipient device (see {@link OlmMachine.getNoOlmState}). */
export interface NoOlmState {
  /** When the last `m.no_olm` notice was sent (or suppressed), ms since the epoch. */
  notifiedAt: number;
  /** True if the policy suppressed that notice. */
  suppressed: boolean;
  /**
   * True once an Olm session with the device was established after the notice: the next
   * failure to set up a session sends one new notice.
   */
  rearmed: boolean;
}

/**
 * How much a notice is trusted. Only `trusted` and `unconfirmed` notices explain decryption
 * failures; `spoofed` ones are counted in {@link WithheldMetrics} and otherwise ignored.
 */
export type WithheldVerdict =
  /** Sender and key match the session's creator or the sender's known devices. */
  | 'trusted'
  /**
   * Nothing to compare it with: we do not hold the session and this machine does not know the
   * sender's devices (it knows only the users passed to `updateTrackedUsers`, once queried).
   * Stored and counted in `unconfirmedNotices`; it explains a failed event only if that event's
   * sender sent it, re-checked at that time against what we know then.
   */
  | 'unconfirmed'
  /**
   * From another of our own devices (an answer to our key request): authentic, but it explains
   * only our own user's messages, never another sender's.
   */
  | 'key_request_answer'
  /** Contradicts what we know (e.g. someone else's key, or another user's session). */
  | 'spoofed';

/** Fields every received notice has. */
interface NoticeBase {
  /** The user who sent the notice (set by the homeserver). */
  sender: string;
  /** The Curve25519 key the notice claims for the sending device. */
  senderKey: string;
  /** The sending device, when the notice names it (MSC3735). */
  fromDevice: string | null;
  /** The human-readable reason, kept for every code (shown when the code is not understood). */
  reason: string | null;
  /** When we received it, ms since the epoch. */
  receivedAt: number;
  /** The result of the spoofing checks. */
  verdict: WithheldVerdict;
  /**
   * True if it arrived Olm-encrypted. The crate rewrites the reason of encrypted notices with
   * its own text; notices sent in the clear, as the spec says, keep the sender's reason.
   */
  encrypted: boolean;
}

/** A room-scoped notice: the key of one session was withheld from us. */
export interface RoomWithheldNotice extends NoticeBase {
  /** Discriminant. */
  kind: 'room';
  /** Why; never `m.no_olm`. */
  code: WithheldCode;
  /** The room of the session. */
  roomId: string;
  /** The Megolm session id. */
  sessionId: string;
}

/** A channel notice: the sender device could not set up an Olm session with us. */
export interface NoOlmWithheldNotice extends NoticeBase {
  /** Discriminant. */
  kind: 'no_olm';
  /** Always `m.no_olm`. */
  code: 'm.no_olm';
}

/** A received `m.room_key.withheld` notice; switch on `kind`. */
export type WithheldNotice = RoomWithheldNotice | NoOlmWithheldNotice;

/** How much of a session a withheld explanation covers. */
export type WithheldScope =
  /** We have no key for the session at all; a room notice covers it. */
  | 'session'
  /** We hold the session from a later index; the messages before it were withheld. */
  | 'before-first-index'
  /** The sender's device had no Olm channel to us when it sent the message. */
  | 'no_olm';

/** Why a message cannot be decrypted, attached to {@link DecryptionError.withheld}. */
export interface WithheldExplanation {
  /** The withheld code. */
  code: WithheldCode;
  /** The sender's reason text, if it gave one. */
  reason: string | null;
  /** What the notice covers. */
  scope: WithheldScope;
}

/** A withheld record of a session (see {@link OlmMachine.getWithheldRecords}). */
export interface WithheldRecord {
  /** The withheld code. */
  code: WithheldCode;
  /** The reason text, if any. */
  reason: string | null;
  /** The room. */
  roomId: string;
  /** The session. */
  sessionId: string;
  /** Who sent it. */
  sender: string;
  /** The key it claims (the session creator's). */
  senderKey: string;
  /** The sending device, if named. */
  fromDevice: string | null;
  /** When it arrived, ms since the epoch. */
  receivedAt: number;
  /**
   * A notice from the creator, a forwarded key's `withheld` property, an imported export, or a
   * room key restored from server-side key backup.
   */
  source: 'notice' | 'forwarded_key' | 'key_export' | 'key_backup';
}

/** An `m.no_olm` notice we received from one device (see {@link OlmMachine.getNoOlmNotices}). */
export interface NoOlmRecord {
  /** The sending user. */
  sender: string;
  /** The sending device's Curve25519 key. */
  senderKey: string;
  /** The sending device, if named. */
  fromDevice: string | null;
  /** The reason, if any. */
  reason: string | null;
  /** When it arrived, ms since the epoch. */
  receivedAt: number;
}

/** Counters of received notices (and skipped sync entries) since the machine was opened. */
export interface WithheldMetrics {
  /** Notices accepted: trusted, or answers to our key requests. */
  acceptedNotices: number;
  /**
   * Notices with `verdict: 'unconfirmed'`: nothing to compare them with (we do not hold the
   * session and do not know the sender's devices). Stored, but they explain only the same
   * sender's events, re-checked when a decryption fails.
   */
  unconfirmedNotices: number;
  /** Notices ignored because they contradict the session's creator or the sender's devices. */
  spoofedNotices: number;
  /** Notices ignored because required fields were missing. */
  malformedNotices: number;
  /** Incoming room-key requests dropped by the flood bounds. */
  rateLimitedKeyRequests: number;
  /**
   * Entries of sync batches that were not event objects: skipped (each listed in
   * {@link SyncResult.skippedToDeviceEvents} and logged), the rest of their batch processed.
   */
  skippedToDeviceEvents: number;
}

/** What the machine did with one incoming room-key request (see {@link SyncResult.keyRequestAnswers}). */
export interface KeyRequestAnswer {
  /** The requesting user. */
  sender: string;
  /** The requesting device. */
  requestingDevice: string;
  /** The room of the requested session. */
  roomId: string;
  /** The requested session. */
  sessionId: string;
  /**
   * `forwarded` (our own verified device gets the session from our first known index),
   * the withheld code of the refusal (`m.unauthorised` for other users, `m.unverified` for our
   * unverified devices, `m.unavailable` when we do not hold the session), `ignored` (an unknown
   * device, or ourselves), or `rate_limited` (over the bounds; nothing is sent).
   */
  answer: 'forwarded' | 'ignored' | 'rate_limited' | WithheldCode;
  /** False when nothing was queued: ignored, rate limited, or a refusal the policy suppresses. */
  sent: boolean;
}
