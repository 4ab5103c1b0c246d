/**
 * Room-key bundles (MSC4268, "sharing encrypted history", in the Matrix spec since v1.19): the
 * member who invites a user uploads an encrypted file of the room's keys and sends the invitee
 * an Olm-encrypted `m.room_key_bundle` event naming it. The file's `withheld` list says which
 * sessions were not shared (code `m.history_not_shared`); this library keeps those entries as
 * withheld records (`source: 'key_bundle'`) and explains decryption failures with them.
 *
 * @module
 */
import type { WithheldCode, WithheldVerdict } from './withheld';

/** An encrypted room-key bundle, ready to upload (see {@link OlmMachine.buildRoomKeyBundle}). */
export interface RoomKeyBundleUpload {
  /** The encrypted file: upload it to the media repository as `application/octet-stream`. */
  ciphertext: Uint8Array;
  /** How it is encrypted (JSON); pass it to {@link OlmMachine.shareRoomKeyBundle} with the upload's `mxc://` URI. */
  mediaEncryptionInfo: string;
  /** Room keys in the bundle (the sessions whose history may be shared). */
  roomKeys: number;
  /** Sessions listed as withheld (`m.history_not_shared`). */
  withheld: number;
}

/** An `m.room_key_bundle` event we received (see {@link OlmMachine.getReceivedRoomKeyBundle}). */
export interface ReceivedRoomKeyBundle {
  /** The room. */
  roomId: string;
  /** The user who sent it. */
  sender: string;
  /** The Curve25519 key of the device that sent it (checked by Olm). */
  senderKey: string;
  /** Where to download the encrypted bundle file (`mxc://`). */
  url: string;
}

/** One `withheld` entry of a received bundle. */
export interface RoomKeyBundleWithheldEntry {
  /** Discriminant, as for room notices. */
  kind: 'room';
  /** Usually `m.history_not_shared`. */
  code: WithheldCode;
  /** The entry's reason text, kept (up to 1,024 bytes, as for notices). */
  reason: string | null;
  /** The room of the session. */
  roomId: string;
  /** The Megolm session id. */
  sessionId: string;
  /** The member who shared the bundle (not the session's creator). */
  sender: string;
  /** The Curve25519 key the entry claims for the session's creator. */
  senderKey: string;
  /** The device the entry names (MSC3735 `from_device`): the sharer's, or an earlier sharer's. */
  fromDevice: string | null;
  /** When we received it, ms since the epoch. */
  receivedAt: number;
  /**
   * `trusted`: recorded, and explains failures. `unconfirmed`: the sharer's device is not one the
   * crate accepts for a bundle (not cross-signed by its owner), so nothing of the bundle was kept.
   * `spoofed`: contradicts what we know (another room, or another creator key than the session's).
   */
  verdict: WithheldVerdict;
  /** Always `key_bundle`. */
  source: 'key_bundle';
}

/** What {@link OlmMachine.receiveRoomKeyBundle} did. */
export interface RoomKeyBundleResult {
  /** The room. */
  roomId: string;
  /** The member who shared it. */
  sender: string;
  /** The Curve25519 key of the sharer's device. */
  senderKey: string;
  /** The sharer's device, when known. */
  senderDevice: string | null;
  /**
   * Whether the sharer's device is one the crate accepts for a bundle: cross-signed by its owner
   * (trusted on first use, or verified). When false, no key and no withheld entry was kept.
   */
  sharerTrusted: boolean;
  /** Room keys in the bundle for its room. */
  roomKeys: number;
  /** Of those, the sessions that we did not hold (or now hold from an earlier index). */
  imported: number;
  /** Room keys for another room: ignored. */
  otherRoomKeys: number;
  /** Entries of `room_keys` that are not valid room keys (a missing field, a bad key): skipped, the rest imported. */
  invalidRoomKeys: number;
  /** The withheld entries, in the bundle's order. */
  withheld: RoomKeyBundleWithheldEntry[];
  /** Withheld entries skipped as malformed (not an object, a required field missing or too long, or `m.no_olm`). */
  malformed: number;
}
