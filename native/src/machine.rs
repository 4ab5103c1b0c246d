//! The `OlmMachine` class: lifecycle, sync, requests, sharing, encryption and decryption.
//!
//! Every method that touches crypto or the store is `async`: napi-rs runs it on its tokio
//! runtime, off the JS thread. The class holds the crate's machine behind a lock so `close()`
//! can release the store while calls already running finish on their own handle.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use matrix_sdk_crypto::{
    types::requests::ToDeviceRequest, CollectStrategy, EncryptionSettings, EncryptionSyncChanges, OlmMachine,
};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::{
    events::{room::history_visibility::HistoryVisibility, AnyMessageLikeEventContent},
    serde::Raw,
    TransactionId, UserId,
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    errors::{self, code, internal, invalid, parse_json, typed, DecryptionCode},
    events, ids, keys,
    requests::{self, NativeRequest, OwnedResponse},
    store::{self, StoreConfig},
    withheld::{inbound, ledger, outgoing::Queued, policy::SendPolicy, Withheld, WithheldError},
};

/// Identity keys of this device.
#[napi(object)]
pub struct IdentityKeys {
    pub curve25519: String,
    pub ed25519: String,
}

/// What `open` needs: the account and where to keep it.
#[napi(object)]
pub struct OpenOptions {
    pub user_id: String,
    pub device_id: String,
    /// `sqlite` or `memory`.
    pub store_kind: String,
    pub store_path: Option<String>,
    pub store_passphrase: Option<String>,
    /// The machine-wide withheld policy as JSON (`{ send, reasons }`); default: send all codes.
    pub withheld_policy: Option<String>,
    /// React to `m.no_olm` notices with a new Olm session and an `m.dummy`; default true.
    pub react_to_no_olm: Option<bool>,
}

/// What `shareRoomKey` returns: the requests and a JSON summary of who got what.
#[napi(object)]
pub struct ShareResult {
    pub requests: Vec<NativeRequest>,
    /// `{ sharedWith: [{userId, deviceId}], withheld: [{userId, deviceId, code, sent}] }`
    pub summary: String,
}

/// Borrowed ids; a named function keeps the iterator's lifetimes simple for async code.
fn refs(users: &[ruma::OwnedUserId]) -> Vec<&UserId> {
    users.iter().map(|u| u.as_ref()).collect()
}

fn parse_policy(field: &str, json: &str) -> Result<SendPolicy> {
    let policy: SendPolicy = parse_json(field, json)?;
    policy.validate(field).map_err(|e| invalid(&e.field, e.message))?;
    Ok(policy)
}

fn withheld_error(err: WithheldError) -> Error {
    match err {
        WithheldError::Store(e) => errors::store(e),
        WithheldError::Json(e) => internal(e),
        WithheldError::Crate(e) => typed(code::ENCRYPTION, e, json!(null)),
    }
}

/// The native machine. Private: users reach it through `src/machine.ts`.
#[napi]
pub struct NativeMachine {
    inner: RwLock<Option<OlmMachine>>,
    /// Requests handed out and not yet marked as sent: id -> type. Lets `markRequestAsSent`
    /// reject unknown ids and mismatched types instead of silently ignoring them.
    pending: Arc<Mutex<HashMap<String, String>>>,
    user_id: String,
    device_id: String,
    identity_keys: (String, String),
    withheld: Arc<Withheld>,
    /// The SQLite store folder's lock, held until `close()` or garbage collection.
    store_lock: Mutex<Option<store::StoreLock>>,
    /// Calls holding a handle to the machine (see [`InFlight`]).
    in_flight: Arc<AtomicUsize>,
}

/// A handle to the crate's machine held by one running call; dereferences to the machine.
pub(crate) struct InFlight {
    machine: OlmMachine,
    count: Arc<AtomicUsize>,
}

impl std::ops::Deref for InFlight {
    type Target = OlmMachine;
    fn deref(&self) -> &OlmMachine {
        &self.machine
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Open (or create) the account of `userId`/`deviceId` in the chosen store.
#[napi]
pub async fn open_machine(options: OpenOptions) -> Result<NativeMachine> {
    let user_id = ids::user_id("userId", &options.user_id)?;
    let device_id = ids::device_id("deviceId", &options.device_id)?;
    let policy = match &options.withheld_policy {
        Some(json) => parse_policy("withheld", json)?,
        None => SendPolicy::default(),
    };
    let config = match options.store_kind.as_str() {
        "memory" => StoreConfig::Memory,
        "sqlite" => StoreConfig::Sqlite {
            path: PathBuf::from(options.store_path.ok_or_else(|| invalid("store.path", "is required for a sqlite store"))?),
            passphrase: options.store_passphrase,
        },
        other => return Err(invalid("store.kind", format!("{other:?} is not one of sqlite, memory"))),
    };
    let opened = store::open(&config).await?;
    let machine = OlmMachine::with_store(&user_id, &device_id, opened.store, None).await.map_err(|e| match e {
        matrix_sdk_crypto::CryptoStoreError::MismatchedAccount { expected, got } => typed(
            code::STORE_MISMATCHED_ACCOUNT,
            format!("userId/deviceId: the store belongs to {} {}, not {} {}", expected.0, expected.1, got.0, got.1),
            json!({ "field": "userId" }),
        ),
        other => store_open_error(other),
    })?;
    // Key requests are answered by our withheld layer (refusals, rate limits, `withheld`).
    machine.set_room_key_forwarding_enabled(false);
    let keys = machine.identity_keys();
    Ok(NativeMachine {
        user_id: machine.user_id().to_string(),
        device_id: machine.device_id().to_string(),
        identity_keys: (keys.curve25519.to_base64(), keys.ed25519.to_base64()),
        inner: RwLock::new(Some(machine)),
        pending: Arc::new(Mutex::new(HashMap::new())),
        withheld: Arc::new(Withheld::new(policy, options.react_to_no_olm.unwrap_or(true))),
        store_lock: Mutex::new(opened.lock),
        in_flight: Arc::new(AtomicUsize::new(0)),
    })
}

fn store_open_error(err: matrix_sdk_crypto::CryptoStoreError) -> Error {
    if errors::is_store_cipher_error(&err) {
        errors::for_field(
            code::STORE_PASSPHRASE,
            "store.passphrase",
            format!("store.passphrase: cannot read the store: wrong passphrase? ({err})"),
        )
    } else {
        errors::store(err)
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
    withheld: Option<serde_json::Value>,
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

impl NativeMachine {
    /// A handle to the crate's machine, or the typed "closed" error. The handle counts as a
    /// call in flight until dropped, so that `close()` can let running calls finish.
    pub(crate) fn machine(&self) -> Result<InFlight> {
        let machine = crate::locks::read(&self.inner)
            .clone()
            .ok_or_else(|| typed(code::MACHINE_CLOSED, "the machine is closed; open it again to use it", json!(null)))?;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok(InFlight { machine, count: self.in_flight.clone() })
    }

    pub(crate) fn remember(&self, requests: &[NativeRequest]) {
        let mut pending = crate::locks::lock(&self.pending);
        for r in requests {
            pending.insert(r.id.clone(), r.kind.clone());
        }
    }

    /// `remember` for a request made later, in a future that cannot borrow the machine.
    pub(crate) fn remember_fn(&self) -> impl Fn(&NativeRequest) + Send + 'static {
        let pending = Arc::clone(&self.pending);
        move |r| {
            crate::locks::lock(&pending).insert(r.id.clone(), r.kind.clone());
        }
    }

    fn to_device_requests<'a>(&self, list: impl IntoIterator<Item = &'a ToDeviceRequest>) -> Result<Vec<NativeRequest>> {
        let out = list.into_iter().map(requests::to_device).collect::<Result<Vec<_>>>()?;
        self.remember(&out);
        Ok(out)
    }
}

#[napi]
impl NativeMachine {
    #[napi(getter)]
    pub fn user_id(&self) -> String {
        self.user_id.clone()
    }

    #[napi(getter)]
    pub fn device_id(&self) -> String {
        self.device_id.clone()
    }

    #[napi(getter)]
    pub fn identity_keys(&self) -> IdentityKeys {
        IdentityKeys { curve25519: self.identity_keys.0.clone(), ed25519: self.identity_keys.1.clone() }
    }

    #[napi(getter)]
    pub fn is_closed(&self) -> bool {
        crate::locks::read(&self.inner).is_none()
    }

    /// Release the store. Calls already running finish; later calls reject with `MachineClosed`.
    #[napi]
    pub async fn close(&self) -> Result<()> {
        let machine = crate::locks::write(&self.inner).take();
        crate::locks::lock(&self.pending).clear();
        if let Some(m) = &machine {
            // Let the calls already running finish, then close the store's connections: once
            // this resolves the files are released (deleting the folder and creating a new
            // store there works; SQLite's write-ahead log is folded back in).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while self.in_flight.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let backend: &matrix_sdk_crypto::store::DynCryptoStore = &**m.store();
            backend.close().await.map_err(errors::store)?;
        }
        release(machine);
        // Keep the folder locked until SQLite's files are released (see `wait_released`).
        let lock = crate::locks::lock(&self.store_lock).take();
        if let Some(lock) = &lock {
            lock.wait_released().await;
        }
        drop(lock);
        Ok(())
    }

    /// Release the store now, without waiting for running calls or for the store's connections
    /// to close (the official bindings' synchronous `close()`, for the compat layer).
    #[napi(catch_unwind)]
    pub fn close_sync(&self) {
        release(crate::locks::write(&self.inner).take());
        crate::locks::lock(&self.pending).clear();
        crate::locks::lock(&self.store_lock).take();
    }

    /// Process the encryption-relevant parts of a sync response (JSON, see `SyncChanges`).
    #[napi]
    pub async fn receive_sync_changes(&self, changes_json: String) -> Result<String> {
        let machine = self.machine()?;
        let changes: events::SyncChanges = parse_json("changes", &changes_json)?;
        let (to_device_events, skipped) = events::split_events(changes.to_device_events);
        for _ in &skipped {
            ledger::Metrics::count(&self.withheld.metrics.skipped_to_device_events);
        }
        let lists = changes.changed_devices.to_ruma();
        let sync = EncryptionSyncChanges {
            to_device_events,
            changed_devices: &lists,
            one_time_keys_counts: &changes.one_time_key_counts,
            unused_fallback_keys: changes.unused_fallback_keys.as_deref(),
            next_batch_token: changes.next_batch_token,
        };
        let (processed, keys) =
            machine.receive_sync_changes(sync, &events::decryption_settings()).await.map_err(errors::olm)?;
        let outcome = self.withheld.after_sync(&machine, &processed, &keys).await.map_err(withheld_error)?;
        events::sync_result(
            &processed,
            &keys,
            outcome.notices.iter().map(|n| n.to_json()).collect(),
            outcome.answers.iter().map(|a| serde_json::to_value(a).unwrap_or_default()).collect(),
            &skipped,
        )
    }

    /// Requests the machine wants sent now: key uploads, key queries, to-device messages.
    #[napi]
    pub async fn outgoing_requests(&self) -> Result<Vec<NativeRequest>> {
        let machine = self.machine()?;
        let list = machine.outgoing_requests().await.map_err(errors::store)?;
        let mut out = list.iter().map(requests::outgoing).collect::<Result<Vec<_>>>()?;
        for q in self.withheld.queued() {
            out.push(match q {
                Queued::ToDevice(r) => requests::to_device(&r)?,
                Queued::Claim { id, body, .. } => NativeRequest {
                    id,
                    kind: "keys_claim".to_owned(),
                    body,
                    event_type: None,
                    txn_id: None,
                    room_id: None,
                    version: None,
                },
            });
        }
        self.remember(&out);
        Ok(out)
    }

    /// Feed the homeserver's response to request `id` (of type `kind`) back into the machine.
    /// With `foreign_ids` (the compat layer, as the official bindings do), an id the machine
    /// never handed out is accepted and its response processed (a program may build its own
    /// keys/query or keys/claim and feed the answer in).
    #[napi]
    pub async fn mark_request_as_sent(&self, id: String, kind: String, response: String, foreign_ids: Option<bool>) -> Result<()> {
        let machine = self.machine()?;
        let known = crate::locks::lock(&self.pending).get(&id).cloned();
        match known {
            None if foreign_ids == Some(true) => {}
            None => {
                return Err(invalid("id", format!("{id:?} is not a request this machine handed out (or it was already marked as sent)")))
            }
            Some(k) if k != kind => {
                return Err(invalid("type", format!("request {id:?} is of type {k:?}, not {kind:?}")))
            }
            Some(_) => {}
        }
        let parsed = OwnedResponse::parse(&kind, &response)?;
        if !self.withheld.is_own_request(&id) {
            let txn: &TransactionId = id.as_str().into();
            machine.mark_request_as_sent(txn, parsed.as_incoming()).await.map_err(errors::olm)?;
        }
        let claim = match &parsed {
            OwnedResponse::KeysClaim(claim) => Some(claim),
            _ => None,
        };
        self.withheld.after_request_sent(&machine, &id, claim).await.map_err(withheld_error)?;
        crate::locks::lock(&self.pending).remove(&id);
        Ok(())
    }

    /// Start tracking the device lists of these users (members of encrypted rooms).
    #[napi]
    pub async fn update_tracked_users(&self, users: Vec<String>) -> Result<()> {
        let machine = self.machine()?;
        let users = ids::user_ids("users", &users)?;
        machine.update_tracked_users(refs(&users)).await.map_err(errors::store)
    }

    /// A keys/claim request for the devices of `users` that have no Olm session yet.
    #[napi]
    pub async fn get_missing_sessions(&self, users: Vec<String>) -> Result<Option<NativeRequest>> {
        let machine = self.machine()?;
        let users = ids::user_ids("users", &users)?;
        let request = machine.get_missing_sessions(refs(&users).into_iter()).await.map_err(errors::store)?;
        match request {
            None => Ok(None),
            Some((id, claim)) => {
                let out = requests::keys_claim(id.to_string(), &claim)?;
                self.remember(std::slice::from_ref(&out));
                Ok(Some(out))
            }
        }
    }

    /// Share the room's current Megolm session with the devices of `users`, applying the
    /// withheld policy; returns the requests and who got the key or which notice.
    #[napi]
    pub async fn share_room_key(&self, room_id: String, users: Vec<String>, settings_json: String) -> Result<ShareResult> {
        let machine = self.machine()?;
        let room_id = ids::room_id("roomId", &room_id)?;
        let users = ids::user_ids("users", &users)?;
        let mut settings: ShareSettings = parse_json("settings", &settings_json)?;
        let policy = settings.withheld.take().map(|v| parse_policy("settings.withheld", &v.to_string())).transpose()?;
        let settings = encryption_settings(settings)?;
        let outcome = self
            .withheld
            .share_room_key(&machine, &room_id, &users, settings, policy)
            .await
            .map_err(withheld_error)?;
        let requests = self.to_device_requests(outcome.requests.iter())?;
        let summary = json!({ "sharedWith": outcome.shared_with, "withheld": outcome.withheld }).to_string();
        Ok(ShareResult { requests, summary })
    }

    /// Turn the reaction to `m.no_olm` notices on or off.
    #[napi(catch_unwind)]
    pub fn set_react_to_no_olm(&self, on: bool) {
        self.withheld.set_react_to_no_olm(on);
    }

    /// Whether the machine reacts to `m.no_olm` notices.
    #[napi(catch_unwind)]
    pub fn react_to_no_olm(&self) -> bool {
        self.withheld.react_to_no_olm_enabled()
    }

    /// Replace the machine-wide withheld policy (JSON `{ send, reasons }`).
    #[napi(catch_unwind)]
    pub fn set_withheld_policy(&self, policy_json: String) -> Result<()> {
        self.machine()?;
        self.withheld.set_policy(parse_policy("policy", &policy_json)?);
        Ok(())
    }

    /// The machine-wide withheld policy as JSON.
    #[napi(catch_unwind)]
    pub fn withheld_policy(&self) -> Result<String> {
        serde_json::to_string(&self.withheld.policy()).map_err(internal)
    }

    /// The withheld records of a session (one per sender and source), as a JSON array.
    #[napi]
    pub async fn withheld_records(&self, room_id: String, session_id: String) -> Result<String> {
        let machine = self.machine()?;
        let room = ids::room_id("roomId", &room_id)?;
        let records = ledger::room_records(&machine, room.as_str(), &session_id).await.map_err(withheld_error)?;
        serde_json::to_string(&records).map_err(internal)
    }

    /// The `m.no_olm` notices received from a user's devices (with `deviceId`, that device's,
    /// by `withheld::explain::is_from_device`), as a JSON array.
    #[napi]
    pub async fn no_olm_notices(&self, user_id: String, device_id: Option<String>) -> Result<String> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let mut list = ledger::no_olm_records(&machine, user.as_str()).await.map_err(withheld_error)?;
        if let Some(device_id) = device_id {
            let device = ids::device_id("deviceId", &device_id)?;
            let known = machine.get_device(&user, &device, None).await.map_err(errors::store)?;
            let key = known.and_then(|d| d.curve25519_key()).map(|k| k.to_base64());
            list.retain(|n| crate::withheld::explain::is_from_device(n, Some(device.as_str()), key.as_deref()));
        }
        serde_json::to_string(&list).map_err(internal)
    }

    /// Counters of received withheld notices.
    #[napi(catch_unwind)]
    pub fn withheld_metrics(&self) -> crate::withheld_js::WithheldMetrics {
        self.withheld.metrics.snapshot().into()
    }

    /// The `m.no_olm` state of a recipient device, or null if it was never notified.
    #[napi]
    pub async fn no_olm_state(&self, user_id: String, device_id: String) -> Result<Option<crate::withheld_js::NoOlmState>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let device = ids::device_id("deviceId", &device_id)?;
        let entry = self.withheld.no_olm_state(&machine, user.as_str(), device.as_str()).await.map_err(withheld_error)?;
        Ok(entry.as_ref().map(Into::into))
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

    /// Decrypt an `m.room.encrypted` room event.
    #[napi]
    pub async fn decrypt_room_event(&self, event_json: String, room_id: String) -> Result<String> {
        let machine = self.machine()?;
        let room_id = ids::room_id("roomId", &room_id)?;
        let raw: Raw<matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent> =
            parse_json("event", &event_json)?;
        let result = machine.decrypt_room_event(&raw, &room_id, &events::decryption_settings()).await;
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
                        inbound::explain_failure(&machine, &room_id, &event).await.map_err(withheld_error)?;
                    kind = if below_first_index { DecryptionCode::UnknownMessageIndex } else { DecryptionCode::MissingRoomKey };
                    withheld = explanation.map(|e| serde_json::to_value(e).unwrap_or_default());
                }
                let message = events::decryption_message(kind, &err, session_id.as_deref(), withheld.as_ref());
                // The crate logged its own view of this failure, which may quote a forged code
                // (it believes any notice naming the session's sender key); ours states our verdict.
                tracing::warn!(
                    target: "matrix_crypto_node::decryption",
                    room_id = %room_id,
                    session_id = session_id.as_deref().unwrap_or_default(),
                    code = ?kind,
                    withheld = withheld.as_ref().and_then(|w| w["code"].as_str()).unwrap_or("none"),
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
            Some(sid) => ledger::forwarding_chain(&machine, room_id.as_str(), sid).await.map_err(withheld_error)?,
            None => Vec::new(),
        };
        events::decrypted_room_event(decrypted.event.json(), info, sender_device_id.as_deref(), sender_device_verified, &chain)
    }

    /// Export room keys as a JSON array (the Matrix key-export format, unencrypted).
    /// `progress(done, total)` is called as keys are exported, last with `done == total`.
    #[napi]
    pub async fn export_room_keys(
        &self,
        room_id: Option<String>,
        session_id: Option<String>,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<keys::ProgressCallback>,
    ) -> Result<String> {
        let machine = self.machine()?;
        let room = room_id.map(|r| ids::room_id("roomId", &r)).transpose()?;
        keys::export(&machine, room, session_id, progress.as_ref()).await
    }

    /// Import room keys from a JSON array; returns `{ imported, total, keys }` as JSON.
    /// `progress(done, total)` is called as keys are imported, last with `done == total`.
    #[napi]
    pub async fn import_room_keys(
        &self,
        keys_json: String,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<keys::ProgressCallback>,
    ) -> Result<String> {
        let machine = self.machine()?;
        keys::import(&machine, &keys_json, progress.as_ref()).await
    }

    /// Export room keys as an encrypted key-export file (armored text).
    #[napi]
    pub async fn export_room_keys_file(
        &self,
        passphrase: String,
        rounds: Option<u32>,
        room_id: Option<String>,
        session_id: Option<String>,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<keys::ProgressCallback>,
    ) -> Result<String> {
        let machine = self.machine()?;
        if passphrase.is_empty() {
            return Err(invalid("passphrase", "must not be empty"));
        }
        let rounds = rounds.unwrap_or(crate::key_file::DEFAULT_ROUNDS);
        if rounds == 0 {
            return Err(invalid("rounds", "must be positive"));
        }
        let room = room_id.map(|r| ids::room_id("roomId", &r)).transpose()?;
        keys::export_file(&machine, room, session_id, passphrase, rounds, progress.as_ref()).await
    }

    /// Import an encrypted key-export file; returns `{ imported, total, keys }` as JSON.
    #[napi]
    pub async fn import_room_keys_file(
        &self,
        text: String,
        passphrase: String,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<keys::ProgressCallback>,
    ) -> Result<String> {
        let machine = self.machine()?;
        keys::import_file(&machine, text, passphrase, progress.as_ref()).await
    }
}

/// Drop a machine inside a tokio runtime: the SQLite pool hands its connections to
/// `spawn_blocking` on drop, which panics (and aborts Node) outside a runtime. `close()` and the
/// JS garbage collector both run on the JS thread, and at process exit the finalizers of
/// machines never closed run after napi-rs has shut its runtime down, so drops get a small
/// runtime of their own that lives as long as the process.
fn release(machine: Option<OlmMachine>) {
    static DROP_RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(m) = machine {
        let runtime = DROP_RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .max_blocking_threads(2)
                .thread_name("mcn-release")
                .enable_all()
                .build()
                .expect("tokio runtime for releasing machines")
        });
        let _guard = runtime.enter();
        drop(m);
    }
}

impl Drop for NativeMachine {
    fn drop(&mut self) {
        release(crate::locks::write(&self.inner).take());
    }
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
