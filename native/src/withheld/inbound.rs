//! Receiving side glue: turn processed to-device events into typed notices (validated and
//! recorded), record the `withheld` property of forwarded keys, and explain decryption failures.

use matrix_sdk_common::deserialized_responses::ProcessedToDeviceEvent;
use matrix_sdk_crypto::{
    olm::{InboundGroupSession, SenderData},
    store::{types::RoomKeyInfo, DynCryptoStore},
    OlmMachine,
};
use ruma::{RoomId, UserId};
use serde_json::{Map, Value};

use super::{
    codes,
    explain::{self, Explanation, FailedEvent},
    records::{self, Metrics},
    received::{self, Facts, Notice, WithheldRecord, Source, Verdict},
    WithheldError,
};

/// A notice as reported to the application.
pub struct Reported {
    /// Its position in the processed batch.
    pub position: usize,
    pub notice: Notice,
    pub verdict: Verdict,
    pub encrypted: bool,
}

fn backend(machine: &OlmMachine) -> &DynCryptoStore {
    &**machine.store()
}

/// The session's creator key and user, if we hold the session.
pub fn creator(session: &InboundGroupSession) -> (String, Option<String>) {
    let user = match &session.sender_data {
        SenderData::DeviceInfo { device_keys, .. } => Some(device_keys.user_id.to_string()),
        SenderData::VerificationViolation(k) | SenderData::SenderUnverified(k) | SenderData::SenderVerified(k) => {
            Some(k.user_id.to_string())
        }
        SenderData::UnknownDevice { .. } => None,
    };
    (session.sender_key().to_base64(), user)
}

async fn inbound_session(machine: &OlmMachine, room_id: &str, session_id: &str) -> Result<Option<InboundGroupSession>, WithheldError> {
    let Ok(room) = RoomId::parse(room_id) else { return Ok(None) };
    backend(machine).get_inbound_group_session(&room, session_id).await.map_err(WithheldError::Store)
}

/// What we know about the notice's sender and session.
pub async fn facts(machine: &OlmMachine, notice: &Notice) -> Result<Facts, WithheldError> {
    let session_creator = match notice {
        Notice::Room(r) => inbound_session(machine, &r.room_id, &r.session_id).await?.map(|s| creator(&s)),
        Notice::NoOlm(_) => None,
    };
    let sender_devices = match UserId::parse(notice.sender()) {
        Ok(user) => machine
            .get_user_devices(&user, None)
            .await
            .map_err(WithheldError::Store)?
            .devices()
            .filter_map(|d| d.curve25519_key().map(|k| (d.device_id().to_string(), k.to_base64())))
            .collect(),
        Err(_) => Vec::new(),
    };
    Ok(Facts { session_creator, sender_devices, own_user: machine.user_id().to_string() })
}

fn event_parts(raw: &ruma::serde::Raw<ruma::events::AnyToDeviceEvent>) -> Option<(String, String, Map<String, Value>)> {
    let v: Value = raw.deserialize_as_unchecked().ok()?;
    let kind = v.get("type")?.as_str()?.to_owned();
    let sender = v.get("sender").and_then(Value::as_str).unwrap_or_default().to_owned();
    let content = v.get("content")?.as_object()?.clone();
    Some((kind, sender, content))
}

/// Validate and record every withheld notice in a sync batch, and the `withheld` property of
/// forwarded keys the crate imported. Returns the notices to report, and the trusted `m.no_olm`
/// notices the caller may react to.
pub async fn process(
    machine: &OlmMachine,
    metrics: &Metrics,
    events: &[ProcessedToDeviceEvent],
    room_keys: &[RoomKeyInfo],
    now: u64,
) -> Result<Vec<Reported>, WithheldError> {
    let mut out = Vec::new();
    for (position, e) in events.iter().enumerate() {
        let (raw, encrypted, olm_sender_key) = match e {
            ProcessedToDeviceEvent::Decrypted { raw, encryption_info } => {
                let key = match &encryption_info.algorithm_info {
                    matrix_sdk_common::deserialized_responses::AlgorithmInfo::OlmV1Curve25519AesSha2 {
                        curve25519_public_key_base64,
                    } => Some(curve25519_public_key_base64.clone()),
                    _ => None,
                };
                (raw, true, key)
            }
            ProcessedToDeviceEvent::PlainText(raw) | ProcessedToDeviceEvent::Invalid(raw) => (raw, false, None),
            ProcessedToDeviceEvent::UnableToDecrypt { .. } => continue,
        };
        let Some((kind, sender, content)) = event_parts(raw) else { continue };
        if kind == codes::WITHHELD_EVENT_TYPE {
            let Some(notice) = received::parse(&sender, &content, now) else {
                Metrics::count(&metrics.malformed);
                continue;
            };
            let verdict = received::validate(&notice, &facts(machine, &notice).await?);
            match (&notice, verdict) {
                (_, Verdict::Spoofed) => Metrics::count(&metrics.spoofed),
                (Notice::Room(r), Verdict::Trusted | Verdict::Unconfirmed) => {
                    Metrics::count(if verdict == Verdict::Trusted { &metrics.accepted } else { &metrics.unconfirmed });
                    records::put_room_record(machine, r, verdict == Verdict::Trusted).await?;
                }
                (Notice::NoOlm(n), Verdict::Trusted | Verdict::Unconfirmed) => {
                    Metrics::count(if verdict == Verdict::Trusted { &metrics.accepted } else { &metrics.unconfirmed });
                    records::put_no_olm_record(machine, n).await?;
                }
                (Notice::Room(r), Verdict::KeyRequestAnswer) => {
                    Metrics::count(&metrics.accepted);
                    records::put_room_record(machine, r, true).await?;
                }
                (Notice::NoOlm(_), Verdict::KeyRequestAnswer) => Metrics::count(&metrics.accepted),
            }
            out.push(Reported { position, notice, verdict, encrypted });
        } else if kind == "m.forwarded_room_key" && encrypted && sender == machine.user_id().as_str() {
            record_forwarded_withheld(machine, &sender, &content, room_keys, now).await?;
            if let Some(forwarder) = olm_sender_key {
                record_forwarding_chain(machine, &content, &forwarder, room_keys).await?;
            }
        }
    }
    Ok(out)
}

/// The crate does not keep the forwarding chain of a forwarded key: record it (the chain the
/// forwarder reports, then the forwarder's own key) for the keys it imported in this batch.
async fn record_forwarding_chain(
    machine: &OlmMachine,
    content: &Map<String, Value>,
    forwarder_key: &str,
    room_keys: &[RoomKeyInfo],
) -> Result<(), WithheldError> {
    let (Some(room_id), Some(session_id)) = (codes::str_field(content, "room_id"), codes::str_field(content, "session_id")) else {
        return Ok(());
    };
    if !room_keys.iter().any(|k| k.room_id.as_str() == room_id && k.session_id == session_id) {
        return Ok(());
    }
    let mut chain: Vec<String> = content
        .get("forwarding_curve25519_key_chain")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    chain.push(forwarder_key.to_owned());
    records::put_forwarding_chain(machine, room_id, session_id, &chain).await
}

/// A forwarded key from our own (verified) device may say why its earlier part is missing.
/// Trust it only if the crate imported the key in this same batch.
async fn record_forwarded_withheld(
    machine: &OlmMachine,
    sender: &str,
    content: &Map<String, Value>,
    room_keys: &[RoomKeyInfo],
    now: u64,
) -> Result<(), WithheldError> {
    let Some(withheld) = content.get("withheld").and_then(Value::as_object) else { return Ok(()) };
    let (Some(room_id), Some(session_id), Some(sender_key), Some(code)) = (
        codes::str_field(content, "room_id"),
        codes::str_field(content, "session_id"),
        codes::str_field(content, "sender_key"),
        codes::str_field(withheld, "code"),
    ) else {
        return Ok(());
    };
    let imported = room_keys.iter().any(|k| k.room_id.as_str() == room_id && k.session_id == session_id);
    if !imported {
        return Ok(());
    }
    let record = WithheldRecord {
        code: code.to_owned(),
        reason: codes::str_field(withheld, "reason").map(str::to_owned),
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        sender: sender.to_owned(),
        sender_key: sender_key.to_owned(),
        from_device: None,
        received_at: now as i64,
        source: Source::ForwardedKey,
    };
    records::put_room_record(machine, &record, true).await?;
    Ok(())
}

/// Why an event could not be decrypted: whether the session is held from a later index, and
/// the withheld record that explains it (validated for this event's sender).
pub async fn explain_failure(
    machine: &OlmMachine,
    room_id: &RoomId,
    event: &Value,
) -> Result<(bool, Option<Explanation>), WithheldError> {
    let sender = event.get("sender").and_then(Value::as_str).unwrap_or_default();
    let content = event.get("content").and_then(Value::as_object);
    let field = |name: &str| content.and_then(|c| c.get(name)).and_then(Value::as_str);
    let Some(session_id) = field("session_id") else { return Ok((false, None)) };
    let message_index = field("ciphertext")
        .and_then(|c| vodozemac::megolm::MegolmMessage::from_base64(c).ok())
        .map(|m| m.message_index());
    let session = inbound_session(machine, room_id.as_str(), session_id).await?;
    let below_first_index = match (&session, message_index) {
        (Some(s), Some(i)) => i < s.first_known_index(),
        _ => false,
    };
    let creator_key = session.as_ref().map(|s| s.sender_key().to_base64());

    // Only the event sender's own notice (re-validated with what we know now), or a record that
    // came with the key (forwarded or exported), explains the event. A record about the whole
    // session cannot explain a failure below the first index of a session we hold, unless it
    // came with the key.
    let mut room = None;
    for r in records::room_records(machine, room_id.as_str(), session_id).await?.into_iter().rev() {
        let counts = match r.source {
            Source::ForwardedKey | Source::KeyExport | Source::KeyBackup => true,
            Source::KeyBundle => {
                super::bundle::explains(machine, &r, sender, field("sender_key"), session.as_ref(), below_first_index).await?
            }
            Source::Notice => {
                let notice = Notice::Room(r.clone());
                let verdict = received::validate(&notice, &facts(machine, &notice).await?);
                r.sender == sender
                    && (session.is_none() || below_first_index)
                    && match verdict {
                        Verdict::Trusted | Verdict::Unconfirmed => true,
                        // Our own device's notice counts for our own messages while we lack the
                        // session; once we hold it, only its creator's notice counts.
                        Verdict::KeyRequestAnswer => session.is_none(),
                        Verdict::Spoofed => false,
                    }
            }
        };
        if counts && room.as_ref().is_none_or(|best: &WithheldRecord| best.source != Source::Notice) {
            room = Some(r);
        }
    }
    let no_olm = records::no_olm_records(machine, sender).await?;
    let sender_key = creator_key.as_deref().or_else(|| field("sender_key"));
    let failed = FailedEvent {
        sender,
        origin_server_ts: event.get("origin_server_ts").and_then(Value::as_u64),
        sender_key,
        device_id: field("device_id"),
        below_first_index,
    };
    Ok((below_first_index, explain::explain(&failed, room.as_ref(), &no_olm)))
}
