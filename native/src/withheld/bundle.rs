//! Room-key bundles (MSC4268, "sharing encrypted history", in the spec since v1.19): a member who
//! invites us uploads an encrypted file of the room's keys, with a `withheld` list (in
//! `m.room_key.withheld` content format, code `m.history_not_shared`) for the sessions it will
//! not share, and sends us an Olm-encrypted `m.room_key_bundle` event naming the file.
//!
//! The crate receives the event ([`OlmMachine::receive_sync_changes`] stores it), builds bundles
//! (`Store::build_room_key_bundle`), sends the event (`share_room_key_bundle_data`) and imports a
//! downloaded, decrypted bundle (`Store::receive_room_key_bundle`). This module adds what the
//! crate leaves out: the decryption of the downloaded file with the key the event carries,
//! typed records of the `withheld` entries (keeping their `reason` and `from_device`, checked
//! for spoofing), and their use in explaining decryption failures.
//!
//! # Who may say that a session's history was not shared
//! A bundle's withheld entries come from the member who shared the history (the *sharer*),
//! not from the sessions' creators, so the rule for notices (only the creator's notice counts)
//! cannot apply as it is. An entry is `trusted` (recorded, explains failures) when:
//! - the bundle came, Olm-encrypted, from the user the application names as the one who
//!   invited us, and the crate accepts that user's device for the bundle (it is cross-signed by
//!   its owner: TOFU or verified; otherwise the crate imports none of the bundle's keys and we
//!   record none of its entries: they are reported `unconfirmed`);
//! - the entry is about the bundle's room;
//! - if we hold the session, the entry's `sender_key` is the session creator's key;
//! - if the entry quotes the sharer's own device key (the sharer created the session), its
//!   `from_device`, when present, is the sharer's device.
//!
//! Anything else is `spoofed` (counted, not recorded). When a decryption fails, a bundle record
//! explains it only if the session is missing (or held from a later index), and nothing known
//! contradicts its `sender_key`: the session's creator key when we hold the session, else the
//! failed event's sender's known devices (or the event's own `sender_key`).

use std::io::Read;

use matrix_sdk_crypto::{
    olm::{InboundGroupSession, SenderData},
    store::types::StoredRoomKeyBundleData,
    types::room_history::{HistoricRoomKey, RoomKeyBundle},
    AttachmentDecryptor, MediaEncryptionInfo, OlmMachine,
};
use ruma::{RoomId, UserId};
use serde_json::Value;

use super::{
    records::{self, Metrics},
    received::{self, Notice, WithheldRecord, Source, Verdict},
    WithheldError,
};

/// The bundle's sharer, as far as we know its device.
#[derive(Clone, Debug, Default)]
pub struct Sharer {
    pub user: String,
    pub device: Option<String>,
    /// The Curve25519 key of the device that sent the `m.room_key_bundle` event (Olm-checked).
    pub key: String,
    /// Whether the crate accepts the device for a bundle (cross-signed by its owner).
    pub trusted: bool,
}

/// What we know when judging one withheld entry.
#[derive(Clone, Debug, Default)]
pub struct EntryFacts {
    pub bundle_room: String,
    pub sharer: Sharer,
    /// The Curve25519 key of the session's creator, if we hold the session.
    pub session_creator_key: Option<String>,
}

/// The verdict on one withheld entry of a bundle (see the module's notes).
pub fn validate(record: &WithheldRecord, facts: &EntryFacts) -> Verdict {
    if record.room_id != facts.bundle_room {
        return Verdict::Spoofed;
    }
    if facts.session_creator_key.as_deref().is_some_and(|k| k != record.sender_key) {
        return Verdict::Spoofed;
    }
    if record.sender_key == facts.sharer.key {
        if let (Some(named), Some(device)) = (&record.from_device, &facts.sharer.device) {
            if named != device {
                return Verdict::Spoofed;
            }
        }
    }
    if facts.sharer.trusted {
        Verdict::Trusted
    } else {
        Verdict::Unconfirmed
    }
}

/// The reasons a bundle cannot be received.
#[derive(Debug)]
pub enum BundleError {
    /// No `m.room_key_bundle` event from that user for that room was received.
    NotReceived,
    /// The file does not decrypt with the event's key, or fails its hash.
    Decrypt(String),
    /// The decrypted file is not a room-key bundle.
    Format(String),
    Withheld(WithheldError),
}

impl From<WithheldError> for BundleError {
    fn from(e: WithheldError) -> Self {
        Self::Withheld(e)
    }
}

/// One withheld entry of a received bundle, as reported: its record (the sharer is `sender`,
/// the key it claims for the session's creator is `senderKey`) with the verdict on it.
#[cfg_attr(feature = "node", napi_derive::napi(object, js_name = "NativeRoomKeyBundleEntry"))]
#[derive(Clone, Debug)]
pub struct BundleEntry {
    /// The entry as the withheld record it becomes (`source: 'key_bundle'`).
    pub record: WithheldRecord,
    /// Whether it is kept (see the module's notes).
    #[cfg_attr(feature = "node", napi(ts_type = "WithheldVerdict"))]
    pub verdict: Verdict,
}

/// What receiving a bundle did.
#[cfg_attr(feature = "node", napi_derive::napi(object, use_nullable = true, js_name = "NativeRoomKeyBundleOutcome"))]
#[derive(Clone, Debug)]
pub struct BundleOutcome {
    /// The room.
    pub room_id: String,
    /// The member who shared it.
    pub sender: String,
    /// The Curve25519 key of the sharer's device.
    pub sender_key: String,
    /// The sharer's device, when known.
    pub sender_device: Option<String>,
    /// Whether the sharer's device is one the crate accepts for a bundle: cross-signed by its
    /// owner (trusted on first use, or verified). When false, no key and no withheld entry was
    /// kept.
    pub sharer_trusted: bool,
    /// Room keys in the bundle for its room.
    pub room_keys: u32,
    /// Of those, the sessions that we did not hold (or now hold from an earlier index).
    pub imported: u32,
    /// Room keys for another room: ignored.
    pub other_room_keys: u32,
    /// Entries of `room_keys` that are not valid room keys (a missing field, a bad key):
    /// skipped, the rest imported.
    pub invalid_room_keys: u32,
    /// The withheld entries, in the bundle's order.
    pub withheld: Vec<BundleEntry>,
    /// Withheld entries skipped as malformed (not an object, a required field missing or too
    /// long, or `m.no_olm`, which names no session).
    pub malformed: u32,
}

/// A count for a report (a bundle cannot hold 2^32 entries; saturate rather than wrap).
pub fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The sharer's device and whether the crate accepts it, as `receive_room_key_bundle` decides.
async fn sharer(machine: &OlmMachine, info: &StoredRoomKeyBundleData) -> Result<Sharer, WithheldError> {
    let key = info.sender_key;
    let device = machine
        .get_user_devices(&info.sender_user, None)
        .await
        .map_err(WithheldError::Store)?
        .devices()
        .find(|d| d.curve25519_key() == Some(key));
    let data = match (&device, info.sender_data.should_recalculate()) {
        (Some(d), true) => SenderData::from_device(d),
        _ => info.sender_data.clone(),
    };
    let trusted = matches!(data, SenderData::SenderUnverified(_) | SenderData::SenderVerified(_));
    let device_id = device.map(|d| d.device_id().to_string()).or_else(|| match &data {
        SenderData::SenderUnverified(k) | SenderData::SenderVerified(k) | SenderData::VerificationViolation(k) => {
            k.device_id.as_ref().map(|d| d.to_string())
        }
        SenderData::DeviceInfo { device_keys, .. } => Some(device_keys.device_id.to_string()),
        SenderData::UnknownDevice { .. } => None,
    });
    Ok(Sharer { user: info.sender_user.to_string(), device: device_id, key: key.to_base64(), trusted })
}

/// The stored `m.room_key_bundle` event of `inviter` for `room`.
pub async fn received(machine: &OlmMachine, room: &RoomId, inviter: &UserId) -> Result<Option<StoredRoomKeyBundleData>, WithheldError> {
    machine.store().get_received_room_key_bundle_data(room, inviter).await.map_err(WithheldError::Store)
}

/// Decrypt a downloaded bundle file with the key its event carried.
pub fn decrypt(info: &StoredRoomKeyBundleData, encrypted: &[u8]) -> Result<Vec<u8>, BundleError> {
    let media = MediaEncryptionInfo::from(info.bundle_data.file.clone());
    let mut input = encrypted;
    let mut decryptor = AttachmentDecryptor::new(&mut input, media).map_err(|e| BundleError::Decrypt(e.to_string()))?;
    let mut out = Vec::with_capacity(encrypted.len());
    decryptor.read_to_end(&mut out).map_err(|e| BundleError::Decrypt(e.to_string()))?;
    Ok(out)
}

async fn first_index(machine: &OlmMachine, room: &RoomId, session_id: &str) -> Result<Option<u32>, WithheldError> {
    let store: &matrix_sdk_crypto::store::DynCryptoStore = &**machine.store();
    Ok(store.get_inbound_group_session(room, session_id).await.map_err(WithheldError::Store)?.map(|s| s.first_known_index()))
}

fn list<'a>(value: &'a Value, field: &str) -> Result<&'a [Value], BundleError> {
    match value.get(field) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(BundleError::Format(format!("`{field}` is not an array"))),
    }
}

/// The bundle as the crate takes it, entry by entry: one entry the crate cannot read (a custom
/// code, a bad key) must not cost the rest of the bundle, as it would if the whole file were
/// deserialised at once. Returns it and the number of room keys left out.
fn crate_bundle(value: &Value) -> Result<(RoomKeyBundle, usize), BundleError> {
    if !value.is_object() {
        return Err(BundleError::Format("the file is not a JSON object".into()));
    }
    let keys = list(value, "room_keys")?;
    let room_keys: Vec<HistoricRoomKey> = keys.iter().filter_map(|k| serde_json::from_value(k.clone()).ok()).collect();
    let withheld = list(value, "withheld")?.iter().filter_map(|w| serde_json::from_value(w.clone()).ok()).collect();
    let invalid = keys.len() - room_keys.len();
    Ok((RoomKeyBundle { room_keys, withheld }, invalid))
}

/// Receive a downloaded, still encrypted bundle file from `inviter` for `room`: import its keys
/// through the crate, and record its withheld entries (see the module's notes).
pub async fn receive(
    machine: &OlmMachine,
    metrics: &Metrics,
    room: &RoomId,
    inviter: &UserId,
    encrypted: &[u8],
    now: u64,
    progress: impl Fn(usize, usize),
) -> Result<BundleOutcome, BundleError> {
    let info = received(machine, room, inviter).await?.ok_or(BundleError::NotReceived)?;
    let plain = decrypt(&info, encrypted)?;
    let value: Value = serde_json::from_slice(&plain).map_err(|e| BundleError::Format(e.to_string()))?;
    let (bundle, invalid_room_keys) = crate_bundle(&value)?;
    let sharer = sharer(machine, &info).await?;

    let ours: Vec<String> = bundle.room_keys.iter().filter(|k| k.room_id == room).map(|k| k.session_id.clone()).collect();
    let mut before = Vec::with_capacity(ours.len());
    for id in &ours {
        before.push(first_index(machine, room, id).await?);
    }
    let other_room_keys = bundle.room_keys.len() - ours.len();
    machine.store().receive_room_key_bundle(&info, bundle, progress).await.map_err(WithheldError::Store)?;
    let mut imported = 0;
    for (id, was) in ours.iter().zip(before) {
        let now_held = first_index(machine, room, id).await?;
        if matches!((was, now_held), (None, Some(_))) || matches!((was, now_held), (Some(a), Some(b)) if b < a) {
            imported += 1;
        }
    }

    let mut withheld = Vec::new();
    let mut malformed = 0;
    for entry in list(&value, "withheld")? {
        let notice = entry.as_object().and_then(|content| received::parse(&sharer.user, content, now));
        let Some(Notice::Room(mut record)) = notice else {
            Metrics::count(&metrics.malformed);
            malformed += 1;
            continue;
        };
        record.source = Source::KeyBundle;
        let session_creator_key = match RoomId::parse(&record.room_id) {
            Ok(r) => {
                let store: &matrix_sdk_crypto::store::DynCryptoStore = &**machine.store();
                store
                    .get_inbound_group_session(&r, &record.session_id)
                    .await
                    .map_err(WithheldError::Store)?
                    .map(|s| s.sender_key().to_base64())
            }
            Err(_) => None,
        };
        let facts = EntryFacts { bundle_room: room.to_string(), sharer: sharer.clone(), session_creator_key };
        let verdict = validate(&record, &facts);
        match verdict {
            Verdict::Trusted => {
                Metrics::count(&metrics.accepted);
                records::put_room_record(machine, &record, true).await?;
            }
            Verdict::Spoofed => Metrics::count(&metrics.spoofed),
            _ => Metrics::count(&metrics.unconfirmed),
        }
        withheld.push(BundleEntry { record, verdict });
    }
    Ok(BundleOutcome {
        room_id: room.to_string(),
        sender: sharer.user.clone(),
        sender_key: sharer.key.clone(),
        sender_device: sharer.device.clone(),
        sharer_trusted: sharer.trusted,
        room_keys: count(ours.len()),
        imported: count(imported),
        other_room_keys: count(other_room_keys),
        invalid_room_keys: count(invalid_room_keys),
        withheld,
        malformed: count(malformed),
    })
}

/// Whether a bundle record explains a failed event of `event_sender` (see the module's notes).
/// `session` is the session we hold, if any; `below_first_index` whether the event's index is
/// below its first known index.
pub async fn explains(
    machine: &OlmMachine,
    record: &WithheldRecord,
    event_sender: &str,
    event_sender_key: Option<&str>,
    session: Option<&InboundGroupSession>,
    below_first_index: bool,
) -> Result<bool, WithheldError> {
    if let Some(s) = session {
        return Ok(below_first_index && s.sender_key().to_base64() == record.sender_key);
    }
    let known: Vec<String> = match UserId::parse(event_sender) {
        Ok(user) => machine
            .get_user_devices(&user, None)
            .await
            .map_err(WithheldError::Store)?
            .devices()
            .filter_map(|d| d.curve25519_key().map(|k| k.to_base64()))
            .collect(),
        Err(_) => Vec::new(),
    };
    if !known.is_empty() {
        return Ok(known.contains(&record.sender_key));
    }
    Ok(event_sender_key.is_none_or(|k| k == record.sender_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::withheld::codes;

    fn record(room: &str, key: &str, from_device: Option<&str>) -> WithheldRecord {
        WithheldRecord {
            code: codes::HISTORY_NOT_SHARED.into(),
            reason: Some("not shared".into()),
            room_id: room.into(),
            session_id: "S".into(),
            sender: "@sharer:x".into(),
            sender_key: key.into(),
            from_device: from_device.map(Into::into),
            received_at: 1,
            source: Source::KeyBundle,
        }
    }

    fn facts(trusted: bool, creator: Option<&str>) -> EntryFacts {
        EntryFacts {
            bundle_room: "!r:x".into(),
            sharer: Sharer { user: "@sharer:x".into(), device: Some("SD".into()), key: "KS".into(), trusted },
            session_creator_key: creator.map(Into::into),
        }
    }

    #[test]
    fn an_authorised_sharers_entry_about_another_creators_session_is_trusted() {
        assert_eq!(validate(&record("!r:x", "KC", Some("SD")), &facts(true, None)), Verdict::Trusted);
        assert_eq!(validate(&record("!r:x", "KC", None), &facts(true, Some("KC"))), Verdict::Trusted);
        // Passed on from an earlier bundle: the device named is that earlier sharer's.
        assert_eq!(validate(&record("!r:x", "KC", Some("EARLIER")), &facts(true, None)), Verdict::Trusted);
    }

    #[test]
    fn an_entry_for_another_room_or_another_creator_is_spoofed() {
        assert_eq!(validate(&record("!other:x", "KC", None), &facts(true, None)), Verdict::Spoofed);
        assert_eq!(validate(&record("!r:x", "KX", None), &facts(true, Some("KC"))), Verdict::Spoofed);
    }

    #[test]
    fn the_sharers_own_key_must_come_with_the_sharers_device() {
        assert_eq!(validate(&record("!r:x", "KS", Some("SD")), &facts(true, None)), Verdict::Trusted);
        assert_eq!(validate(&record("!r:x", "KS", Some("OTHER")), &facts(true, None)), Verdict::Spoofed);
    }

    #[test]
    fn a_sharer_the_crate_does_not_accept_leaves_entries_unconfirmed() {
        assert_eq!(validate(&record("!r:x", "KC", None), &facts(false, None)), Verdict::Unconfirmed);
        assert_eq!(validate(&record("!other:x", "KC", None), &facts(false, None)), Verdict::Spoofed);
    }
}
