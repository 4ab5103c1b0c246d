/**
 * Plain data types that cross the API: sync input and results, decrypted events, devices,
 * sharing settings.
 *
 * @module
 */

/** A Matrix event as JSON (a to-device event or a room event). */
export interface MatrixEvent {
  /** The event type, e.g. `m.room.encrypted`. */
  type: string;
  /** The event content. */
  content: Record<string, unknown>;
  /** The sender's user id. */
  sender?: string;
  /** Other fields are kept as they are. */
  [key: string]: unknown;
}

/** The encryption-relevant parts of a `/sync` response. */
export interface SyncChanges {
  /** `to_device.events` of the sync response. */
  toDeviceEvents?: MatrixEvent[];
  /** `device_lists` of the sync response. */
  changedDevices?: {
    /** Users whose devices changed, or who now share an encrypted room with us. */
    changed?: string[];
    /** Users who no longer share an encrypted room with us. */
    left?: string[];
  };
  /** `device_one_time_keys_count`. */
  oneTimeKeyCounts?: Record<string, number>;
  /** `device_unused_fallback_key_types`; `undefined` when the server did not send it. */
  unusedFallbackKeys?: string[];
}

/** Who sent an Olm-encrypted to-device event. */
export interface OlmSenderInfo {
  /** The sender's user id. */
  sender: string;
  /** The sender's device id, when known. */
  senderDevice: string | null;
  /** The Curve25519 key of the sending device. */
  senderCurve25519Key: string | null;
}

/** A to-device event after the machine processed it; switch on `kind`. */
export type ProcessedToDeviceEvent =
  | {
      /** An Olm-encrypted event we decrypted. */
      kind: 'decrypted';
      /** The decrypted event. */
      event: MatrixEvent;
      /** Who sent it. */
      encryptionInfo: OlmSenderInfo;
    }
  | {
      /** An event that was not encrypted. */
      kind: 'plaintext';
      /** The event as received. */
      event: MatrixEvent;
    }
  | {
      /** An encrypted event we could not decrypt. */
      kind: 'undecryptable';
      /** The encrypted event as received. */
      event: MatrixEvent;
      /** Why the Olm message could not be decrypted. */
      reason: 'decryption_failure' | 'unverified_sender_device' | 'no_olm_machine' | 'encryption_is_disabled';
    }
  | {
      /** An event without the fields every event has; ignored by the machine. */
      kind: 'invalid';
      /** The event as received. */
      event: MatrixEvent;
    };

/** What {@link OlmMachine.receiveSyncChanges} returns. */
export interface SyncResult {
  /** Every to-device event, decrypted where possible, in arrival order. */
  toDeviceEvents: ProcessedToDeviceEvent[];
  /** Room keys that were received. */
  roomKeyUpdates: RoomKeyUpdate[];
  /** Withheld notices in this batch (plain or inside encrypted events), with their verdict. */
  withheldNotices: WithheldNotice[];
  /** How each incoming room-key request in this batch was answered. */
  keyRequestAnswers: KeyRequestAnswer[];
  /**
   * Entries of `toDeviceEvents` that are not event objects (a number, a string, `null`, ...):
   * skipped, logged and counted in `withheldMetrics().skippedToDeviceEvents`, while every other
   * entry of the batch is processed. Objects the crate cannot read are reported in
   * {@link toDeviceEvents} with `kind: 'invalid'` instead.
   */
  skippedToDeviceEvents: SkippedToDeviceEvent[];
}

/**
 * Why a message's shield is red or grey:
 * - `AuthenticityNotGuaranteed`: the key came from a backup or a forward, not from its sender;
 * - `UnknownDevice`: the sending device is not known (query the sender's keys);
 * - `UnsignedDevice`: the sender did not cross-sign the sending device;
 * - `UnverifiedIdentity`: we have not verified the sender's identity (strict rules only);
 * - `VerificationViolation`: the sender's identity was verified and has changed since
 *   (see {@link OlmMachine.withdrawVerification});
 * - `MismatchedSender`: the event's sender is not the owner of the sending device.
 */
export type ShieldCode =
  | 'AuthenticityNotGuaranteed'
  | 'UnknownDevice'
  | 'UnsignedDevice'
  | 'UnverifiedIdentity'
  | 'VerificationViolation'
  | 'MismatchedSender';

/** The lock icon a client would show next to a message. */
export type ShieldState =
  | {
      /** Nothing to flag. */
      color: 'none';
    }
  | {
      /** `red` for a problem with the sender's authenticity, `grey` for a minor concern. */
      color: 'red' | 'grey';
      /** Why the shield is not clear; see {@link ShieldCode}. */
      code: ShieldCode;
      /** A short English explanation. */
      message: string;
    };

/** A successfully decrypted room event. */
export interface DecryptedRoomEvent {
  /** The decrypted event (type, content, sender, room id, ...). */
  event: MatrixEvent;
  /** The sender's user id. */
  sender: string;
  /** The sender's device id, when the machine knows the device. */
  senderDevice: string | null;
  /** Curve25519 key of the device that created the Megolm session. */
  senderCurve25519Key: string | null;
  /** Ed25519 key the session creator claimed. */
  senderClaimedEd25519Key: string | null;
  /** Set when the key reached us through an MSC4268 history bundle: who forwarded it. */
  forwarder: {
    /** The user who forwarded the key. */
    userId: string;
    /** Their device. */
    deviceId: string;
  } | null;
  /**
   * Curve25519 keys of the devices a forwarded key passed through (`m.forwarded_room_key`),
   * oldest first, ending with the device that forwarded it to us; empty when the key came from
   * the session's creator.
   */
  forwardingCurve25519KeyChain: string[];
  /** The Megolm session id. */
  sessionId: string | null;
  /**
   * The crate's verdict on the sender, from cross-signing: `verified` when the sender's identity
   * is verified and signed the device, `verification_violation` when a previously verified
   * identity changed.
   */
  verificationState: 'verified' | 'unverified' | 'verification_violation';
  /**
   * Whether we trust the sender's device now, locally ({@link OlmMachine.setLocalTrust}) or
   * through cross-signing; `null` when the device is not known (query its keys first).
   */
  senderDeviceVerified: boolean | null;
  /** Shield under the lax rules (unverified identities are not flagged). */
  shieldState: ShieldState;
  /** Shield under the strict rules. */
  shieldStateStrict: ShieldState;
}

export type { LocalTrust, DeviceInfo, CrossSigningStatus, UserIdentityInfo } from '../native/index';

/** Which devices receive a room key. */
export type SharingStrategy =
  /** Every device that is not blacklisted (the default). */
  | 'all_devices'
  /** Only devices we verified, locally or through cross-signing; others get `m.unverified`. */
  | 'only_trusted_devices'
  /** Devices signed by their owner's identity; unsigned devices, and every device of a user without a cross-signing identity, get `m.unverified`. */
  | 'identity_based'
  /** Like `all_devices`, but fail if a verified user has unsigned devices or changed identity. */
  | 'error_on_verified_user_problem';

import type { KeyRequestAnswer, WithheldNotice, WithheldPolicy } from './withheld';
import type { RoomKeyUpdate, SkippedToDeviceEvent } from '../native/index';
// Generated by napi-rs from native/src/events.rs, keys.rs and backup.rs.
export type { BackupImportResult, ImportResult, RoomKeyUpdate, SkippedToDeviceEvent, UndecryptableBackupKey } from '../native/index';

/** Settings for {@link OlmMachine.shareRoomKey}; every field has a default. */
export interface ShareSettings {
  /** Only `m.megolm.v1.aes-sha2` is supported (the default). */
  algorithm?: 'm.megolm.v1.aes-sha2';
  /** Rotate the session after this many milliseconds. Default: one week. */
  rotationPeriodMs?: number;
  /** Rotate the session after this many messages. Default: 100. */
  rotationPeriodMessages?: number;
  /** The room's history visibility. Default: `shared`. */
  historyVisibility?: 'invited' | 'joined' | 'shared' | 'world_readable';
  /** Which devices get the key. Default: `all_devices`. */
  sharingStrategy?: SharingStrategy;
  /** Withheld policy for this call only; default: the machine's policy. */
  withheld?: WithheldPolicy;
}

/** A room key in the Matrix key-export format. */
export interface ExportedRoomKey {
  /** `m.megolm.v1.aes-sha2`. */
  algorithm: string;
  /** The room. */
  room_id: string;
  /** Curve25519 key of the session creator. */
  sender_key: string;
  /** The Megolm session id. */
  session_id: string;
  /** The exported session key. */
  session_key: string;
  /** Keys the creator claimed, `{ ed25519: ... }`. */
  sender_claimed_keys: Record<string, string>;
  /** Curve25519 keys of the devices the key passed through. */
  forwarding_curve25519_key_chain: string[];
  /**
   * Extension beyond the spec: for a session held only from a later index, why its start was
   * withheld. Clients that do not know the field ignore it; {@link OlmMachine.importRoomKeys}
   * restores it so decryption errors stay explained on the importing device.
   */
  'io.github.matrix_crypto_node.withheld'?: {
    /** The withheld code that covers the messages before `first_known_index`. */
    code: string;
    /** The sender's reason, if it gave one. */
    reason: string | null;
    /** The first message index this key decrypts. */
    first_known_index: number;
  };
  /** Other fields are kept. */
  [key: string]: unknown;
}

/** A new server-side backup key, from {@link OlmMachine.createBackupKey}. */
export interface NewBackupKey {
  /**
   * The private key, unpadded base64: the only way to restore the backup. Keep it secret and
   * safe (secret storage keeps it as the `m.megolm_backup.v1` secret).
   */
  decryptionKey: string;
  /** The public key, unpadded base64: pass it to {@link OlmMachine.enableBackup}. */
  publicKey: string;
  /**
   * The body of `POST /_matrix/client/v3/room_keys/version`, a ready-to-send JSON string:
   * `{ algorithm: 'm.megolm_backup.v1.curve25519-aes-sha2', auth_data: { public_key, signatures } }`,
   * signed by this device (and by our master cross-signing key, if this device holds it), so our
   * other devices can trust the backup. The response's `version` goes to {@link OlmMachine.enableBackup}.
   */
  versionBody: string;
}

/** What {@link OlmMachine.backupRoomKeyCounts} reports. */
export interface RoomKeyCounts {
  /** Every room key in the store. */
  total: number;
  /** The room keys backed up to the enabled backup (0 while none is enabled). */
  backedUp: number;
}

/** The encrypted `session_data` of a backed-up room key (`m.megolm_backup.v1.curve25519-aes-sha2`). */
export interface EncryptedSessionData {
  /** The ephemeral Curve25519 public key, unpadded base64. */
  ephemeral: string;
  /** The AES-256-CBC ciphertext, unpadded base64. */
  ciphertext: string;
  /** The MAC, unpadded base64. */
  mac: string;
}

/** One backed-up room key, as the homeserver stores it. */
export interface KeyBackupData {
  /** The first message index the backed-up key decrypts. */
  first_message_index: number;
  /** How many times the key was forwarded before it reached the device that backed it up. */
  forwarded_count: number;
  /** Whether the device that backed it up had verified the session's creator. */
  is_verified: boolean;
  /**
   * The room key, encrypted to the backup's public key. For a partially withheld session
   * backed up by this library, the decrypted JSON carries the extension field
   * `io.github.matrix_crypto_node.withheld` (see {@link OlmMachine.backupRoomKeys}).
   */
  session_data: EncryptedSessionData;
}

/**
 * The response of `GET /_matrix/client/v3/room_keys/keys?version=...`: every backed-up room key
 * by room and session id. The body of a `keys_backup` request has the same shape.
 */
export interface KeyBackup {
  /** Backed-up room keys by room id. */
  rooms: Record<
    string,
    {
      /** Backed-up room keys by session id. */
      sessions: Record<string, KeyBackupData>;
    }
  >;
}

