//! The machine in plain Rust: the crate's `OlmMachine`, our withheld layer and the requests
//! handed out, with the glue between them that the addon, the fuzz harness (`hostile.rs`) and
//! the benchmark (`bench/rust`) all run. No N-API here: the binding (`machine.rs`, `rooms.rs`)
//! converts arguments and results, and this module's unit tests build without it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use matrix_sdk_common::deserialized_responses::ProcessedToDeviceEvent;
use matrix_sdk_crypto::{
    store::types::RoomKeyInfo,
    types::requests::AnyIncomingResponse,
    DecryptionSettings, EncryptionSyncChanges, OlmError, OlmMachine, TrustRequirement,
};
use ruma::{
    api::{
        client::{
            backup::add_backup_keys::v3::Response as KeysBackupResponse,
            keys::{
                claim_keys::v3::Response as KeysClaimResponse, get_keys::v3::Response as KeysQueryResponse,
                upload_keys::v3::Response as KeysUploadResponse, upload_signatures::v3::Response as SignatureUploadResponse,
                upload_signing_keys::v3::Response as SigningKeysUploadResponse,
            },
            message::send_message_event::v3::Response as RoomMessageResponse,
            sync::sync_events::DeviceLists,
            to_device::send_event_to_device::v3::Response as ToDeviceResponse,
        },
        IncomingResponse, IncomingResponseExt,
    },
    events::AnyToDeviceEvent,
    serde::Raw,
    OneTimeKeyAlgorithm, OwnedUserId, TransactionId, UInt,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    json_input::InputError,
    withheld::{sync::SyncOutcome, Withheld, WithheldError},
};

/// What the machine's calls fail with; the binding maps each variant to a typed JS error.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// An argument is wrong; `field` names it in JavaScript terms.
    #[error("{}: {}", .0.field, .0.message)]
    Input(InputError),
    /// The crate refused a sync batch or a response.
    #[error(transparent)]
    Olm(#[from] OlmError),
    /// The withheld layer failed.
    #[error(transparent)]
    Withheld(#[from] WithheldError),
}

impl From<InputError> for CoreError {
    fn from(err: InputError) -> Self {
        Self::Input(err)
    }
}

/// The part of a `/sync` response the machine consumes (camelCase, as the TS layer sends it).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncChanges {
    #[serde(default)]
    pub to_device_events: Vec<Raw<AnyToDeviceEvent>>,
    #[serde(default)]
    pub changed_devices: ChangedDevices,
    /// The server's one-time-key counts. `None` (the caller gave none) means "unchanged since
    /// the last call"; a given map with an algorithm missing means zero keys of it, as in /sync.
    #[serde(default)]
    pub one_time_key_counts: Option<BTreeMap<OneTimeKeyAlgorithm, UInt>>,
    #[serde(default)]
    pub unused_fallback_keys: Option<Vec<OneTimeKeyAlgorithm>>,
    #[serde(default)]
    pub next_batch_token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ChangedDevices {
    #[serde(default)]
    pub changed: Vec<OwnedUserId>,
    #[serde(default)]
    pub left: Vec<OwnedUserId>,
}

impl ChangedDevices {
    pub fn to_ruma(&self) -> DeviceLists {
        let mut lists = DeviceLists::new();
        lists.changed = self.changed.clone();
        lists.left = self.left.clone();
        lists
    }
}

/// The settings of a decryption without a trust requirement (and of every to-device
/// decryption): this library reports trust in the result instead of refusing to decrypt, so
/// applications decide what to show. `decryptRoomEvent`'s `trustRequirement` asks for more.
pub fn decryption_settings() -> DecryptionSettings {
    DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted }
}

/// What one sync batch produced.
pub struct SyncOutput {
    /// The to-device events as the crate processed them.
    pub processed: Vec<ProcessedToDeviceEvent>,
    /// Room keys received.
    pub keys: Vec<RoomKeyInfo>,
    /// The withheld layer's verdicts and answers.
    pub withheld: SyncOutcome,
    /// Entries that are not event objects, skipped.
    pub skipped: Vec<SkippedToDeviceEvent>,
}

/// The crate's machine, our withheld layer and the requests handed out and not yet marked as
/// sent. Cloning shares all three.
#[derive(Clone)]
pub struct Machine {
    olm: OlmMachine,
    withheld: Arc<Withheld>,
    /// Requests handed out and not yet marked as sent: id -> type. Lets `mark_request_as_sent`
    /// reject unknown ids and mismatched types instead of silently ignoring them.
    pending: Arc<Mutex<HashMap<String, RequestType>>>,
}

impl Machine {
    /// A machine over `olm` with the withheld layer `withheld` and no request handed out.
    pub fn new(olm: OlmMachine, withheld: Arc<Withheld>) -> Self {
        Self { olm, withheld, pending: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The crate's machine.
    pub fn olm(&self) -> &OlmMachine {
        &self.olm
    }

    /// The withheld layer.
    pub fn withheld(&self) -> &Arc<Withheld> {
        &self.withheld
    }

    /// Note that request `id` of type `kind` was handed out.
    pub fn remember(&self, id: &str, kind: RequestType) {
        crate::locks::lock(&self.pending).insert(id.to_owned(), kind);
    }

    /// [`Machine::remember`] for requests made later, in futures that do not hold the machine.
    pub fn remember_fn(&self) -> impl Fn(&str, RequestType) + Send + 'static {
        let pending = Arc::clone(&self.pending);
        move |id, kind| {
            crate::locks::lock(&pending).insert(id.to_owned(), kind);
        }
    }

    /// Forget every request handed out (the machine is closing).
    pub fn forget_requests(&self) {
        crate::locks::lock(&self.pending).clear();
    }

    /// Process a sync batch: entries that are not event objects skipped, then one crate call per
    /// run of the batch (see `to_device::olm_sender_runs`), then the withheld layer's steps.
    pub async fn receive_sync_changes(&self, changes: SyncChanges) -> Result<SyncOutput, CoreError> {
        let (to_device_events, skipped) = split_events(changes.to_device_events);
        for _ in &skipped {
            crate::withheld::records::Metrics::count(&self.withheld.metrics.skipped_to_device_events);
        }
        let lists = changes.changed_devices.to_ruma();
        // The device lists, key counts and the sync token go with the last run, so the token is
        // stored once all is processed.
        let runs = crate::to_device::olm_sender_runs(to_device_events);
        let last = runs.len() - 1;
        let (no_lists, no_counts) = (DeviceLists::new(), BTreeMap::new());
        let (mut processed, mut keys) = (Vec::new(), Vec::new());
        for (i, run) in runs.into_iter().enumerate() {
            let final_run = i == last;
            let counts = changes.one_time_key_counts.as_ref().filter(|_| final_run);
            let sync = EncryptionSyncChanges {
                to_device_events: run,
                changed_devices: if final_run { &lists } else { &no_lists },
                one_time_keys_counts: counts.unwrap_or(&no_counts),
                unused_fallback_keys: if final_run { changes.unused_fallback_keys.as_deref() } else { None },
                next_batch_token: if final_run { changes.next_batch_token.clone() } else { None },
            };
            let settings = decryption_settings();
            // The crate's /sync call reads a missing count as zero keys on the server and makes
            // new ones to upload. Without the server's counts (a run before the last, a caller
            // that gave none, such as an appservice transaction without counts for this device)
            // use its MSC4186 reading instead, in which a missing count means "unchanged":
            // otherwise every such call would queue another 50 keys, until Synapse refuses the
            // upload (over 500 keys a device), and the response it is part of fails.
            let (p, k) = if counts.is_some() {
                self.olm.receive_sync_changes(sync, &settings).await?
            } else {
                self.olm.receive_sync_changes_msc4186(sync, &settings).await?
            };
            processed.extend(p);
            keys.extend(k);
        }
        let withheld = self.withheld.after_sync(&self.olm, &processed, &keys).await?;
        Ok(SyncOutput { processed, keys, withheld, skipped })
    }

    /// Feed the homeserver's response to request `id` (of type `kind`) back in: the request
    /// must be one this machine handed out, of that type (with `foreign_ids`, an id it never
    /// handed out is accepted too), then the crate (unless the request is the withheld layer's
    /// own) and the withheld layer's steps see the response.
    pub async fn mark_request_as_sent(&self, id: &str, kind: &str, response: &str, foreign_ids: bool) -> Result<(), CoreError> {
        let known = crate::locks::lock(&self.pending).get(id).copied();
        let bad = |field: &str, message: String| CoreError::Input(InputError { field: field.to_owned(), message });
        match known {
            None if foreign_ids => {}
            None => return Err(bad("id", format!("{id:?} is not a request this machine handed out (or it was already marked as sent)"))),
            Some(k) if k.as_str() != kind => return Err(bad("type", format!("request {id:?} is of type {:?}, not {kind:?}", k.as_str()))),
            Some(_) => {}
        }
        let parsed = OwnedResponse::parse(kind, response)?;
        if !self.withheld.is_own_request(id) {
            let txn: &TransactionId = id.into();
            self.olm.mark_request_as_sent(txn, parsed.as_incoming()).await?;
        }
        let claim = match &parsed {
            OwnedResponse::KeysClaim(claim) => Some(claim),
            _ => None,
        };
        self.withheld.after_request_sent(&self.olm, id, claim).await?;
        crate::locks::lock(&self.pending).remove(id);
        Ok(())
    }
}

/// The type of an outgoing request, as `OutgoingRequest.type` names it in TypeScript. The names
/// are spelled here and nowhere else in Rust ([`RequestType::as_str`]); the enum is exported
/// to JavaScript, and `src/requests.ts` imports the generated union.
#[cfg_attr(feature = "node", napi_derive::napi(string_enum = "snake_case"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// `POST /keys/upload`.
    KeysUpload,
    /// `POST /keys/query`.
    KeysQuery,
    /// `POST /keys/claim`.
    KeysClaim,
    /// `PUT /sendToDevice/{type}/{txnId}`.
    ToDevice,
    /// `POST /keys/signatures/upload`.
    SignatureUpload,
    /// `POST /keys/device_signing/upload` (cross-signing keys, with user-interactive auth).
    SigningKeysUpload,
    /// `PUT /rooms/{roomId}/send/{type}/{txnId}`.
    RoomMessage,
    /// `PUT /room_keys/keys?version=`.
    KeysBackup,
}

impl RequestType {
    /// Every request type.
    pub const ALL: [Self; 8] = [
        Self::KeysUpload,
        Self::KeysQuery,
        Self::KeysClaim,
        Self::ToDevice,
        Self::SignatureUpload,
        Self::SigningKeysUpload,
        Self::RoomMessage,
        Self::KeysBackup,
    ];

    /// The name JavaScript sees (`request.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeysUpload => "keys_upload",
            Self::KeysQuery => "keys_query",
            Self::KeysClaim => "keys_claim",
            Self::ToDevice => "to_device",
            Self::SignatureUpload => "signature_upload",
            Self::SigningKeysUpload => "signing_keys_upload",
            Self::RoomMessage => "room_message",
            Self::KeysBackup => "keys_backup",
        }
    }

    /// The type named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }
}

/// A parsed homeserver response, owned so it can be borrowed as `AnyIncomingResponse`.
pub enum OwnedResponse {
    KeysUpload(KeysUploadResponse),
    KeysQuery(KeysQueryResponse),
    KeysClaim(KeysClaimResponse),
    ToDevice(ToDeviceResponse),
    SignatureUpload(SignatureUploadResponse),
    SigningKeysUpload(SigningKeysUploadResponse),
    RoomMessage(RoomMessageResponse),
    KeysBackup(KeysBackupResponse),
}

impl OwnedResponse {
    /// Parse `body` as the 200 response of a request of type `kind`; a bad argument is named
    /// (`type`, `response`).
    pub fn parse(kind: &str, body: &str) -> Result<Self, InputError> {
        fn read<R: IncomingResponse>(body: &str) -> Result<R, InputError> {
            let bad = |message: String| InputError { field: "response".to_owned(), message };
            // Fail with a field-named error before ruma's less specific message.
            serde_json::from_str::<&RawValue>(body).map_err(|e| bad(format!("not valid JSON ({e})")))?;
            // A status and a byte body always make a response.
            let response = http::Response::builder().status(200).body(body.as_bytes()).expect("a 200 response");
            R::try_from_http_response(response).map_err(|e| {
                bad(format!("is not a valid homeserver response for this request ({})", crate::json_input::js_text(e.to_string())))
            })
        }
        let Some(request_type) = RequestType::parse(kind) else {
            let names: Vec<&str> = RequestType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(InputError {
                field: "type".to_owned(),
                message: format!("unknown request type {kind:?}; expected one of {}", names.join(", ")),
            });
        };
        Ok(match request_type {
            RequestType::KeysUpload => Self::KeysUpload(read(body)?),
            RequestType::KeysQuery => Self::KeysQuery(read(body)?),
            RequestType::KeysClaim => Self::KeysClaim(read(body)?),
            RequestType::ToDevice => Self::ToDevice(read(body)?),
            RequestType::SignatureUpload => Self::SignatureUpload(read(body)?),
            RequestType::SigningKeysUpload => Self::SigningKeysUpload(read(body)?),
            RequestType::RoomMessage => Self::RoomMessage(read(body)?),
            RequestType::KeysBackup => Self::KeysBackup(read(body)?),
        })
    }

    pub fn as_incoming(&self) -> AnyIncomingResponse<'_> {
        match self {
            Self::KeysUpload(r) => AnyIncomingResponse::KeysUpload(r),
            Self::KeysQuery(r) => AnyIncomingResponse::KeysQuery(r),
            Self::KeysClaim(r) => AnyIncomingResponse::KeysClaim(r),
            Self::ToDevice(r) => AnyIncomingResponse::ToDevice(r),
            Self::SignatureUpload(r) => AnyIncomingResponse::SignatureUpload(r),
            Self::SigningKeysUpload(r) => AnyIncomingResponse::SigningKeysUpload(r),
            Self::RoomMessage(r) => AnyIncomingResponse::RoomMessage(r),
            Self::KeysBackup(r) => AnyIncomingResponse::KeysBackup(r),
        }
    }
}

/// An entry of a sync batch that was skipped because it is not an event object.
#[cfg_attr(feature = "node", napi_derive::napi(object))]
pub struct SkippedToDeviceEvent {
    /// Its position in `toDeviceEvents`.
    pub index: u32,
    /// Why, e.g. `toDeviceEvents[1]: must be an event object, got a number`.
    pub reason: String,
}

fn json_kind(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// Split a to-device batch into the entries the crate can process and the ones that are not
/// event objects. One bad entry must not cost the rest of the batch: the homeserver never
/// delivers a batch again once the client advanced its sync token.
pub fn split_events(events: Vec<Raw<AnyToDeviceEvent>>) -> (Vec<Raw<AnyToDeviceEvent>>, Vec<SkippedToDeviceEvent>) {
    let mut kept = Vec::with_capacity(events.len());
    let mut skipped = Vec::new();
    for (index, e) in events.into_iter().enumerate() {
        let text = e.json().get();
        if text.trim_start().starts_with('{') {
            kept.push(e);
        } else {
            let reason = format!("toDeviceEvents[{index}]: must be an event object, got {}", json_kind(text));
            tracing::warn!(target: "matrix_crypto_node::sync", index, "skipped a to-device entry: {reason}");
            skipped.push(SkippedToDeviceEvent { index: index as u32, reason });
        }
    }
    (kept, skipped)
}

#[cfg(test)]
mod tests {
    use matrix_sdk_crypto::OlmMachine;
    use ruma::{device_id, user_id};

    use super::*;
    use crate::withheld::policy::SendPolicy;

    async fn machine() -> Machine {
        let olm = OlmMachine::new(user_id!("@alice:example.org"), device_id!("ALICE")).await;
        Machine::new(olm, Arc::new(Withheld::new(SendPolicy::default(), true)))
    }

    fn input_field(err: CoreError) -> String {
        match err {
            CoreError::Input(e) => e.field,
            other => panic!("expected an input error, got {other}"),
        }
    }

    #[tokio::test]
    async fn responses_are_accepted_only_for_requests_handed_out_and_of_their_type() {
        let m = machine().await;
        let err = m.mark_request_as_sent("nope", "keys_query", "{}", false).await.unwrap_err();
        assert_eq!(input_field(err), "id");

        m.remember("r1", RequestType::KeysUpload);
        let err = m.mark_request_as_sent("r1", "keys_query", "{}", false).await.unwrap_err();
        assert_eq!(input_field(err), "type");
        let err = m.mark_request_as_sent("r1", "keys_upload", "[", false).await.unwrap_err();
        assert_eq!(input_field(err), "response");

        let body = r#"{"one_time_key_counts":{"signed_curve25519":50}}"#;
        m.mark_request_as_sent("r1", "keys_upload", body, false).await.expect("a handed-out request");
        // Marked once: the id is no longer pending.
        let err = m.mark_request_as_sent("r1", "keys_upload", body, false).await.unwrap_err();
        assert_eq!(input_field(err), "id");
    }

    #[tokio::test]
    async fn a_sync_batch_skips_entries_that_are_not_event_objects_and_counts_them() {
        let m = machine().await;
        let changes: SyncChanges = crate::json_input::parse(
            "changes",
            r#"{"toDeviceEvents":[1,{"type":"m.dummy","sender":"@bob:example.org","content":{}},"x"]}"#,
        )
        .unwrap();
        let out = m.receive_sync_changes(changes).await.expect("the batch is processed");
        let skipped: Vec<u32> = out.skipped.iter().map(|s| s.index).collect();
        assert_eq!(skipped, [0, 2]);
        assert_eq!(out.processed.len(), 1);
        assert_eq!(m.withheld().metrics.snapshot().skipped_to_device_events, 2);
    }
}
