//! Room encryption on the `OlmMachine` class: sharing the room key (through the withheld
//! layer's policy), encrypting, decrypting (with our explanation of a failure) and discarding
//! the outbound session.

use std::time::Duration;

use matrix_sdk_crypto::{CollectStrategy, DecryptionSettings, EncryptionSettings, OlmMachine, TrustRequirement};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::{
    events::{room::history_visibility::HistoryVisibility, AnyMessageLikeEventContent},
    serde::Raw,
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    errors::{self, code, invalid, parse_json, typed, DecryptionCode},
    events, ids,
    machine::NativeMachine,
    requests::NativeRequest,
    withheld::{inbound, records},
};

/// What `shareRoomKey` returns: the requests to send and who got the key or which notice.
#[napi(object)]
pub struct ShareResult {
    /// The to-device requests (room keys and withheld notices); send every one before the event.
    pub requests: Vec<NativeRequest>,
    /// The devices that get the room key from this share.
    pub shared_with: Vec<crate::withheld::share::DeviceRef>,
    /// The devices that do not get it, and the notice each gets.
    pub withheld: Vec<crate::withheld::share::WithheldRecipient>,
}

#[napi]
impl NativeMachine {
    /// Share the room's current Megolm session with the devices of `users`, applying the
    /// withheld policy; returns the requests and who got the key or which notice.
    #[napi]
    pub async fn share_room_key(&self, room_id: String, users: Vec<String>, settings_json: String) -> Result<ShareResult> {
        let machine = self.machine()?;
        let room_id = ids::room_id("roomId", &room_id)?;
        let users = ids::user_ids("users", &users)?;
        let mut settings: ShareSettings = parse_json("settings", &settings_json)?;
        let policy = settings.withheld.take();
        if let Some(policy) = &policy {
            policy.validate("settings.withheld").map_err(|e| invalid(&e.field, e.message))?;
        }
        let settings = encryption_settings(settings)?;
        let outcome = self
            .withheld
            .share_room_key(&machine, &room_id, &users, settings, policy)
            .await
            ?;
        let requests = self.to_device_requests(outcome.requests.iter())?;
        Ok(ShareResult {
            requests,
            shared_with: outcome.shared_with,
            withheld: outcome.withheld,
        })
    }

    /// Forget the room's outbound session so the next share creates a new one.
    #[napi]
    pub async fn discard_room_key(&self, room_id: String) -> Result<bool> {
        let machine = self.machine()?;
        let room_id = ids::room_id("roomId", &room_id)?;
        machine.discard_room_key(&room_id).await.map_err(errors::store)
    }

    /// Encrypt a room event's content; returns the `m.room.encrypted` content as JSON.
    #[napi]
    pub async fn encrypt_room_event(&self, room_id: String, event_type: String, content_json: String) -> Result<String> {
        let machine = self.machine()?;
        let room_id = ids::room_id("roomId", &room_id)?;
        if event_type.is_empty() {
            return Err(invalid("eventType", "must not be empty"));
        }
        let content: Raw<AnyMessageLikeEventContent> = parse_json("content", &content_json)?;
        if !content.json().get().trim_start().starts_with('{') {
            return Err(invalid("content", "must be a JSON object"));
        }
        // The crate asserts (panics) instead of returning an error when the room has no
        // outbound session or its session reached the rotation period; run it as its own task
        // so such a panic becomes a typed error that says what to do.
        let crate_machine = (*machine).clone();
        let (room, kind) = (room_id.clone(), event_type.clone());
        let task = tokio::spawn(async move { crate_machine.encrypt_room_event_raw(&room, &kind, &content).await });
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(join) => return Err(encrypt_panic(&machine, &room_id, join).await),
        };
        let result = outcome.map_err(|e| match e {
            matrix_sdk_crypto::MegolmError::Store(s) => errors::store(s),
            other => typed(
                code::ENCRYPTION,
                format!("roomId: cannot encrypt for {room_id}: {other}; share the room key first"),
                json!({ "field": "roomId" }),
            ),
        })?;
        Ok(result.content.json().get().to_owned())
    }

    /// Decrypt an `m.room.encrypted` room event. `options_json` is the JSON of
    /// `{ trustRequirement? }` (the trust in the sender's device required to decrypt).
    #[napi]
    pub async fn decrypt_room_event(
        &self,
        event_json: String,
        room_id: String,
        options_json: Option<String>,
    ) -> Result<events::NativeDecryptedRoomEvent> {
        let machine = self.machine()?;
        let room_id = ids::room_id("roomId", &room_id)?;
        let raw: Raw<matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent> =
            parse_json("event", &event_json)?;
        let settings = match options_json {
            Some(json) => decryption_settings(parse_json("options", &json)?)?,
            None => events::decryption_settings(),
        };
        let result = machine.decrypt_room_event(&raw, &room_id, &settings).await;
        let decrypted = match result {
            Ok(d) => d,
            Err(matrix_sdk_crypto::MegolmError::Store(e)) => return Err(errors::store(e)),
            Err(err) => {
                let event: serde_json::Value = serde_json::from_str(&event_json).unwrap_or_default();
                let session_id = event.pointer("/content/session_id").and_then(|v| v.as_str()).map(str::to_owned);
                let mut kind = DecryptionCode::of(&err);
                let mut withheld = None;
                if matches!(kind, DecryptionCode::MissingRoomKey | DecryptionCode::UnknownMessageIndex) {
                    let (below_first_index, explanation) =
                        inbound::explain_failure(&machine, &room_id, &event).await?;
                    kind = if below_first_index { DecryptionCode::UnknownMessageIndex } else { DecryptionCode::MissingRoomKey };
                    withheld = explanation;
                }
                let message = events::decryption_message(kind, &err, session_id.as_deref(), withheld.as_ref());
                // The crate logged its own view of this failure, which may quote a forged code
                // (it believes any notice naming the session's sender key); ours states our verdict.
                tracing::warn!(
                    target: "matrix_crypto_node::decryption",
                    room_id = %room_id,
                    session_id = session_id.as_deref().unwrap_or_default(),
                    code = ?kind,
                    withheld = withheld.as_ref().map_or("none", |w| w.code.as_str()),
                    "{message}"
                );
                return Err(events::decryption_error(kind, message, session_id.as_deref(), withheld));
            }
        };
        let info = &decrypted.encryption_info;
        let sender_device = match &info.sender_device {
            Some(d) => machine.get_device(&info.sender, d, None).await.map_err(errors::store)?,
            // A forwarded key does not name the device; the sender's known device whose keys
            // are the session's (both the Curve25519 and the claimed Ed25519 key) is it.
            None => match &info.algorithm_info {
                matrix_sdk_common::deserialized_responses::AlgorithmInfo::MegolmV1AesSha2 { curve25519_key, sender_claimed_keys, .. } => {
                    let ed = sender_claimed_keys.get(&ruma::DeviceKeyAlgorithm::Ed25519).cloned();
                    let devices = machine.get_user_devices(&info.sender, None).await.map_err(errors::store)?;
                    let found = devices.devices().find(|d| {
                        d.curve25519_key().is_some_and(|k| k.to_base64() == *curve25519_key)
                            && d.ed25519_key().is_some_and(|k| Some(k.to_base64()) == ed)
                    });
                    found
                }
                _ => None,
            },
        };
        let sender_device_verified = sender_device.as_ref().map(|d| d.is_verified());
        let sender_device_id = match &info.sender_device {
            Some(d) => Some(d.to_string()),
            None => sender_device.as_ref().map(|d| d.device_id().to_string()),
        };
        let chain = match info.session_id() {
            Some(sid) => records::forwarding_chain(&machine, room_id.as_str(), sid).await?,
            None => Vec::new(),
        };
        Ok(events::decrypted_room_event(decrypted.event.json(), info, sender_device_id, sender_device_verified, chain))
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ShareSettings {
    algorithm: Option<String>,
    rotation_period_ms: Option<u64>,
    rotation_period_messages: Option<u64>,
    history_visibility: Option<String>,
    sharing_strategy: Option<String>,
    withheld: Option<crate::withheld::policy::SendPolicy>,
}

fn encryption_settings(settings: ShareSettings) -> Result<EncryptionSettings> {
    let mut out = EncryptionSettings::default();
    if let Some(a) = settings.algorithm {
        if a != "m.megolm.v1.aes-sha2" {
            return Err(invalid("settings.algorithm", format!("{a:?} is not supported; use m.megolm.v1.aes-sha2")));
        }
        out.algorithm = matrix_sdk_crypto::types::EventEncryptionAlgorithm::MegolmV1AesSha2;
    }
    if let Some(ms) = settings.rotation_period_ms {
        if ms == 0 {
            return Err(invalid("settings.rotationPeriodMs", "must be positive"));
        }
        out.rotation_period = Duration::from_millis(ms);
    }
    if let Some(n) = settings.rotation_period_messages {
        if n == 0 {
            return Err(invalid("settings.rotationPeriodMessages", "must be positive"));
        }
        out.rotation_period_msgs = n;
    }
    if let Some(h) = settings.history_visibility {
        out.history_visibility = match h.as_str() {
            "invited" => HistoryVisibility::Invited,
            "joined" => HistoryVisibility::Joined,
            "shared" => HistoryVisibility::Shared,
            "world_readable" => HistoryVisibility::WorldReadable,
            other => {
                return Err(invalid("settings.historyVisibility", format!("{other:?} is not one of invited, joined, shared, world_readable")))
            }
        };
    }
    if let Some(s) = settings.sharing_strategy {
        out.sharing_strategy = match s.as_str() {
            "all_devices" => CollectStrategy::AllDevices,
            "only_trusted_devices" => CollectStrategy::OnlyTrustedDevices,
            "identity_based" => CollectStrategy::IdentityBasedStrategy,
            "error_on_verified_user_problem" => CollectStrategy::ErrorOnVerifiedUserProblem,
            other => {
                return Err(invalid(
                    "settings.sharingStrategy",
                    format!("{other:?} is not one of all_devices, only_trusted_devices, identity_based, error_on_verified_user_problem"),
                ))
            }
        };
    }
    Ok(out)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DecryptOptions {
    trust_requirement: Option<String>,
}

/// The crate's settings for one decryption; without a requirement, [`events::decryption_settings`].
fn decryption_settings(options: DecryptOptions) -> Result<DecryptionSettings> {
    let mut out = events::decryption_settings();
    if let Some(t) = options.trust_requirement {
        out.sender_device_trust_requirement = match t.as_str() {
            "untrusted" => TrustRequirement::Untrusted,
            "cross_signed_or_legacy" => TrustRequirement::CrossSignedOrLegacy,
            "cross_signed" => TrustRequirement::CrossSigned,
            other => {
                return Err(invalid(
                    "options.trustRequirement",
                    format!("{other:?} is not one of untrusted, cross_signed_or_legacy, cross_signed"),
                ))
            }
        };
    }
    Ok(out)
}

/// The typed error for a panic of the crate's `encrypt_room_event_raw`. Its asserts fire for a
/// room without an outbound session or with one due for rotation; which of the two is read from
/// the store, not from the panic's text.
async fn encrypt_panic(machine: &OlmMachine, room_id: &ruma::RoomId, join: tokio::task::JoinError) -> napi::Error {
    let text = errors::panic_text(join);
    let backend: &matrix_sdk_crypto::store::DynCryptoStore = &**machine.store();
    let message = match backend.get_outbound_group_session(room_id).await {
        Ok(None) => format!("roomId: no room key exists for {room_id}; call shareRoomKey before encrypting"),
        Ok(Some(session)) if session.expired() => format!(
            "roomId: the room key of {room_id} reached its rotation period (messages or time); call shareRoomKey before encrypting, it rotates the key"
        ),
        _ => format!("roomId: cannot encrypt for {room_id}: {text}"),
    };
    errors::for_field(code::ENCRYPTION, "roomId", message)
}
