//! Sync input, processed to-device events and decrypted room events, shaped for the TS layer.
//!
//! Raw events are embedded as `RawValue`s so they are copied, never re-serialised.

use matrix_sdk_common::deserialized_responses::{
    AlgorithmInfo, EncryptionInfo as CrateEncryptionInfo, ProcessedToDeviceEvent, ShieldState as CrateShieldState,
    ShieldStateCode, ToDeviceUnableToDecryptReason, VerificationLevel, VerificationState as CrateVerificationState,
};
use matrix_sdk_crypto::{store::types::RoomKeyInfo, MegolmError};
use serde::Serialize;
use serde_json::{json, value::RawValue};

use napi_derive::napi;

use crate::{
    errors::{code, typed, DecryptionCode},
    withheld::explain::{Explanation, Scope},
    withheld::inbound::Reported,
    withheld::reactions::KeyRequestAnswer,
    withheld::received::{Notice, Verdict},
};

pub use crate::core_machine::decryption_settings;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OlmInfo<'a> {
    sender: &'a str,
    sender_device: Option<&'a str>,
    sender_curve25519_key: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
enum ProcessedOut<'a> {
    #[serde(rename = "decrypted")]
    Decrypted { event: &'a RawValue, encryption_info: OlmInfo<'a> },
    #[serde(rename = "plaintext")]
    PlainText { event: &'a RawValue },
    #[serde(rename = "undecryptable")]
    Undecryptable { event: &'a RawValue, reason: &'static str },
    #[serde(rename = "invalid")]
    Invalid { event: &'a RawValue },
}

/// A room key the machine received or imported in this sync.
#[napi(object)]
pub struct RoomKeyUpdate {
    /// The Megolm algorithm, `m.megolm.v1.aes-sha2`.
    pub algorithm: String,
    /// The room the key is for.
    pub room_id: String,
    /// Curve25519 key of the device that created the session.
    pub sender_key: String,
    /// The Megolm session id.
    pub session_id: String,
}

/// The kind of a received notice: about one room session, or about the Olm channel.
#[napi(string_enum = "snake_case")]
pub enum WithheldNoticeKind {
    /// A room-scoped notice: the key of one session was withheld from us.
    Room,
    /// A channel notice (`m.no_olm`): the sender device could not set up an Olm session with us.
    NoOlm,
}

/// A received `m.room_key.withheld` notice as the binding reports it; `src/withheld.ts` narrows
/// it to the `WithheldNotice` union by `kind`.
#[napi(object, use_nullable = true)]
pub struct ReceivedNotice {
    /// Discriminant.
    pub kind: WithheldNoticeKind,
    /// The withheld code (`m.no_olm` for channel notices).
    pub code: String,
    /// The human-readable reason, kept for every code.
    pub reason: Option<String>,
    /// The room of the session (room notices only).
    pub room_id: Option<String>,
    /// The Megolm session id (room notices only).
    pub session_id: Option<String>,
    /// The user who sent the notice (set by the homeserver).
    pub sender: String,
    /// The Curve25519 key the notice claims for the sending device.
    pub sender_key: String,
    /// The sending device, when the notice names it (MSC3735).
    pub from_device: Option<String>,
    /// When we received it, ms since the epoch.
    pub received_at: f64,
    /// The result of the spoofing checks.
    #[napi(ts_type = "WithheldVerdict")]
    pub verdict: Verdict,
    /// True if it arrived Olm-encrypted.
    pub encrypted: bool,
}

impl From<&Reported> for ReceivedNotice {
    fn from(r: &Reported) -> Self {
        let (verdict, encrypted) = (r.verdict, r.encrypted);
        match &r.notice {
            Notice::Room(x) => Self {
                kind: WithheldNoticeKind::Room,
                code: x.code.clone(),
                reason: x.reason.clone(),
                room_id: Some(x.room_id.clone()),
                session_id: Some(x.session_id.clone()),
                sender: x.sender.clone(),
                sender_key: x.sender_key.clone(),
                from_device: x.from_device.clone(),
                received_at: x.received_at as f64,
                verdict,
                encrypted,
            },
            Notice::NoOlm(n) => Self {
                kind: WithheldNoticeKind::NoOlm,
                code: crate::withheld::codes::NO_OLM.to_owned(),
                reason: n.reason.clone(),
                room_id: None,
                session_id: None,
                sender: n.sender.clone(),
                sender_key: n.sender_key.clone(),
                from_device: n.from_device.clone(),
                received_at: n.received_at as f64,
                verdict,
                encrypted,
            },
        }
    }
}

/// What `receiveSyncChanges` returns to the TypeScript layer, which parses `toDeviceEvents`.
#[napi(object)]
pub struct NativeSyncResult {
    /// The processed to-device events, a JSON array (events stay JSON: they are copied from the
    /// homeserver's bytes, never re-serialised field by field).
    pub to_device_events: String,
    /// Room keys that were received.
    pub room_key_updates: Vec<RoomKeyUpdate>,
    /// Withheld notices in this batch, with their verdict.
    pub withheld_notices: Vec<ReceivedNotice>,
    /// How each incoming room-key request in this batch was answered.
    pub key_request_answers: Vec<KeyRequestAnswer>,
    /// Entries of the batch that are not event objects: skipped.
    pub skipped_to_device_events: Vec<crate::core_machine::SkippedToDeviceEvent>,
}

fn olm_info(info: &CrateEncryptionInfo) -> OlmInfo<'_> {
    let key = match &info.algorithm_info {
        AlgorithmInfo::OlmV1Curve25519AesSha2 { curve25519_public_key_base64 } => {
            Some(curve25519_public_key_base64.as_str())
        }
        AlgorithmInfo::MegolmV1AesSha2 { curve25519_key, .. } => Some(curve25519_key.as_str()),
    };
    OlmInfo { sender: info.sender.as_str(), sender_device: info.sender_device.as_deref().map(|d| d.as_str()), sender_curve25519_key: key }
}

fn utd_reason(reason: &ToDeviceUnableToDecryptReason) -> &'static str {
    match reason {
        ToDeviceUnableToDecryptReason::DecryptionFailure => "decryption_failure",
        ToDeviceUnableToDecryptReason::UnverifiedSenderDevice => "unverified_sender_device",
        ToDeviceUnableToDecryptReason::NoOlmMachine => "no_olm_machine",
        ToDeviceUnableToDecryptReason::EncryptionIsDisabled => "encryption_is_disabled",
    }
}

/// The result of `receive_sync_changes`.
pub fn sync_result(
    events: &[ProcessedToDeviceEvent],
    keys: &[RoomKeyInfo],
    withheld_notices: Vec<ReceivedNotice>,
    key_request_answers: Vec<KeyRequestAnswer>,
    skipped_to_device_events: Vec<crate::core_machine::SkippedToDeviceEvent>,
) -> napi::Result<NativeSyncResult> {
    let to_device_events: Vec<ProcessedOut<'_>> = events
        .iter()
        .map(|e| match e {
            ProcessedToDeviceEvent::Decrypted { raw, encryption_info } => {
                ProcessedOut::Decrypted { event: raw.json(), encryption_info: olm_info(encryption_info) }
            }
            ProcessedToDeviceEvent::PlainText(raw) => ProcessedOut::PlainText { event: raw.json() },
            ProcessedToDeviceEvent::UnableToDecrypt { encrypted_event, utd_info } => {
                ProcessedOut::Undecryptable { event: encrypted_event.json(), reason: utd_reason(&utd_info.reason) }
            }
            ProcessedToDeviceEvent::Invalid(raw) => ProcessedOut::Invalid { event: raw.json() },
        })
        .collect();
    let room_key_updates = keys
        .iter()
        .map(|k| RoomKeyUpdate {
            algorithm: k.algorithm.to_string(),
            room_id: k.room_id.to_string(),
            sender_key: k.sender_key.to_base64(),
            session_id: k.session_id.clone(),
        })
        .collect();
    Ok(NativeSyncResult {
        to_device_events: serde_json::to_string(&to_device_events).map_err(crate::errors::internal)?,
        room_key_updates,
        withheld_notices,
        key_request_answers,
        skipped_to_device_events,
    })
}

/// The colour of the shield a client would show next to a message.
#[napi(string_enum = "snake_case")]
pub enum ShieldColor {
    /// A problem with the sender's authenticity.
    Red,
    /// A minor concern.
    Grey,
    /// Nothing to flag.
    None,
}

/// Why a shield is not clear (the crate's `ShieldStateCode`, by its variant names).
#[napi(string_enum)]
pub enum ShieldCode {
    /// The key came from a backup or a forward, not from its sender.
    AuthenticityNotGuaranteed,
    /// The sending device is not known (query the sender's keys).
    UnknownDevice,
    /// The sender did not cross-sign the sending device.
    UnsignedDevice,
    /// We have not verified the sender's identity (strict rules only).
    UnverifiedIdentity,
    /// The sender's identity was verified and has changed since (see
    /// `OlmMachine.withdrawVerification`).
    VerificationViolation,
    /// The event's sender is not the owner of the sending device.
    MismatchedSender,
}

/// The lock icon a client would show next to a message: `code` and `message` are set unless
/// the colour is `none`.
#[napi(object)]
pub struct ShieldState {
    /// `red` for a problem with the sender's authenticity, `grey` for a minor concern, `none`
    /// when there is nothing to flag.
    pub color: ShieldColor,
    /// Why the shield is not clear.
    pub code: Option<ShieldCode>,
    /// A short English explanation.
    pub message: Option<String>,
}

impl From<CrateShieldState> for ShieldState {
    fn from(state: CrateShieldState) -> Self {
        let (color, code, message) = match state {
            CrateShieldState::Red { code, message } => (ShieldColor::Red, code, message),
            CrateShieldState::Grey { code, message } => (ShieldColor::Grey, code, message),
            CrateShieldState::None => return ShieldState { color: ShieldColor::None, code: None, message: None },
        };
        let code = match code {
            ShieldStateCode::AuthenticityNotGuaranteed => ShieldCode::AuthenticityNotGuaranteed,
            ShieldStateCode::UnknownDevice => ShieldCode::UnknownDevice,
            ShieldStateCode::UnsignedDevice => ShieldCode::UnsignedDevice,
            ShieldStateCode::UnverifiedIdentity => ShieldCode::UnverifiedIdentity,
            ShieldStateCode::VerificationViolation => ShieldCode::VerificationViolation,
            ShieldStateCode::MismatchedSender => ShieldCode::MismatchedSender,
        };
        ShieldState { color, code: Some(code), message: Some(message.to_owned()) }
    }
}

/// The crate's verdict on the sender of a room event, from cross-signing.
#[napi(string_enum = "snake_case")]
pub enum VerificationState {
    /// The sender's identity is verified and signed the sending device.
    Verified,
    /// Not verified (the shields say how far it falls short).
    Unverified,
    /// The sender's identity was verified and has changed since.
    VerificationViolation,
}

impl From<&CrateVerificationState> for VerificationState {
    fn from(state: &CrateVerificationState) -> Self {
        match state {
            CrateVerificationState::Verified => VerificationState::Verified,
            CrateVerificationState::Unverified(VerificationLevel::VerificationViolation) => VerificationState::VerificationViolation,
            CrateVerificationState::Unverified(_) => VerificationState::Unverified,
        }
    }
}

/// Who forwarded a room key to us in an MSC4268 history bundle.
#[napi(object)]
pub struct ForwarderInfo {
    /// The user who forwarded the key.
    pub user_id: String,
    /// Their device.
    pub device_id: String,
}

/// What decryption established about a room event: who sent it, with which keys and session,
/// and how far to trust it (see `OlmMachine.decryptRoomEvent`).
#[napi(object, use_nullable = true)]
pub struct EncryptionInfo {
    /// The sender's user id.
    pub sender: String,
    /// The sender's device id, when the machine knows the device.
    pub sender_device: Option<String>,
    /// Curve25519 key of the device that created the Megolm session.
    pub sender_curve25519_key: Option<String>,
    /// Ed25519 key the session creator claimed.
    pub sender_claimed_ed25519_key: Option<String>,
    /// Set when the key reached us through an MSC4268 history bundle: who forwarded it.
    pub forwarder: Option<ForwarderInfo>,
    /// Curve25519 keys of the devices a forwarded key passed through (`m.forwarded_room_key`),
    /// oldest first, ending with the device that forwarded it to us; empty when the key came
    /// from the session's creator.
    pub forwarding_curve25519_key_chain: Vec<String>,
    /// The Megolm session id.
    pub session_id: Option<String>,
    /// The crate's verdict on the sender, from cross-signing: `verified` when the sender's
    /// identity is verified and signed the device, `verification_violation` when a previously
    /// verified identity changed.
    pub verification_state: VerificationState,
    /// Whether we trust the sender's device now, locally (`OlmMachine.setLocalTrust`) or
    /// through cross-signing; null when the device is not known (query its keys first).
    pub sender_device_verified: Option<bool>,
    /// Shield under the lax rules (unverified identities are not flagged).
    pub shield_state: ShieldState,
    /// Shield under the strict rules.
    pub shield_state_strict: ShieldState,
}

/// A decrypted room event as it crosses to the TypeScript layer, which parses `event`.
#[napi(object)]
pub struct NativeDecryptedRoomEvent {
    /// The decrypted event, JSON (copied from the decrypted bytes, never re-serialised).
    pub event: String,
    /// Who sent it and how far to trust it.
    pub encryption_info: EncryptionInfo,
}

/// A successfully decrypted room event with who sent it and how far to trust it.
pub fn decrypted_room_event(
    event: &RawValue,
    info: &CrateEncryptionInfo,
    sender_device: Option<String>,
    sender_device_verified: Option<bool>,
    forwarding_chain: Vec<String>,
) -> NativeDecryptedRoomEvent {
    let (curve, ed, session_id) = match &info.algorithm_info {
        AlgorithmInfo::MegolmV1AesSha2 { curve25519_key, sender_claimed_keys, session_id } => (
            Some(curve25519_key.clone()),
            sender_claimed_keys.get(&ruma::DeviceKeyAlgorithm::Ed25519).cloned(),
            session_id.clone(),
        ),
        AlgorithmInfo::OlmV1Curve25519AesSha2 { curve25519_public_key_base64 } => {
            (Some(curve25519_public_key_base64.clone()), None, None)
        }
    };
    NativeDecryptedRoomEvent {
        event: event.get().to_owned(),
        encryption_info: EncryptionInfo {
            sender: info.sender.to_string(),
            sender_device,
            sender_curve25519_key: curve,
            sender_claimed_ed25519_key: ed,
            forwarder: info
                .forwarder
                .as_ref()
                .map(|f| ForwarderInfo { user_id: f.user_id.to_string(), device_id: f.device_id.to_string() }),
            forwarding_curve25519_key_chain: forwarding_chain,
            session_id,
            verification_state: (&info.verification_state).into(),
            sender_device_verified,
            shield_state: info.verification_state.to_shield_state_lax().into(),
            shield_state_strict: info.verification_state.to_shield_state_strict().into(),
        },
    }
}

/// The message of a decryption error, from our own verdict: the code, our explanation (code,
/// reason, scope) and never the crate's text for a missing key, which quotes any withheld code
/// the crate accepted, forged ones included.
pub fn decryption_message(kind: DecryptionCode, err: &MegolmError, session_id: Option<&str>, withheld: Option<&Explanation>) -> String {
    let session = session_id.map(|s| format!("session {s}")).unwrap_or_else(|| "the event's session".to_owned());
    let base = match kind {
        DecryptionCode::MissingRoomKey => format!("the room key for {session} is missing"),
        DecryptionCode::UnknownMessageIndex => {
            format!("the room key for {session} is held only from a later message index than this event's")
        }
        _ => return err.to_string(),
    };
    match withheld {
        Some(w) => {
            let code = &w.code;
            let scope = match w.scope {
                Scope::BeforeFirstIndex => "the messages before the first index we hold",
                Scope::NoOlm => "the messages its device sent before it could reach ours (m.no_olm)",
                Scope::Session => "the whole session",
            };
            // A key bundle's entry comes from the member who shared the room's history.
            let who = if code == "m.history_not_shared" { "the room's history was not shared with us" } else { "the sender withheld it" };
            match &w.reason {
                Some(reason) => format!("{base}: {who} ({code}: {reason}) for {scope}"),
                None => format!("{base}: {who} ({code}) for {scope}"),
            }
        }
        None => base,
    }
}

/// A typed decryption error; `withheld` is the validated explanation, if any.
pub fn decryption_error(kind: DecryptionCode, message: String, session_id: Option<&str>, withheld: Option<Explanation>) -> napi::Error {
    let withheld_code = withheld.as_ref().map(|w| w.code.clone());
    typed(
        code::DECRYPTION,
        message,
        json!({ "decryptionCode": kind, "sessionId": session_id, "withheld": withheld, "withheldCode": withheld_code }),
    )
}
