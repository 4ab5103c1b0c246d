//! The `OlmMachine` class: opening it, its lifecycle, sync and the request cycle. Its other
//! methods live with their concern, each file with its own `#[napi] impl NativeMachine`: room
//! encryption in `rooms.rs`, the withheld layer's settings and state in `withheld_js.rs`, key
//! export and import in `keys.rs`, backups in `backup.rs`, devices and trust in `trust/`, the
//! compat layer's extras in `compat.rs`.
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
};

use matrix_sdk_crypto::{types::requests::ToDeviceRequest, EncryptionSyncChanges, OlmMachine, OlmMachineBuilder};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::{TransactionId, UserId};
use serde_json::json;

use crate::{
    errors::{self, code, internal, invalid, parse_json, typed},
    events, ids,
    requests::{self, NativeRequest, OwnedResponse},
    store::{self, StoreConfig},
    withheld::{records, outgoing::Queued, policy::SendPolicy, Withheld, WithheldError},
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
    /// `sqlite`, `sqlite-crate`, `postgres` or `memory`.
    pub store_kind: String,
    pub store_path: Option<String>,
    pub store_passphrase: Option<String>,
    /// `postgres`: where the database is.
    pub store_postgres: Option<store::StorePostgres>,
    /// The machine-wide withheld policy as JSON (`{ send, reasons }`); default: send all codes.
    pub withheld_policy: Option<String>,
    /// React to `m.no_olm` notices with a new Olm session and an `m.dummy`; default true.
    pub react_to_no_olm: Option<bool>,
}

/// Borrowed ids; a named function keeps the iterator's lifetimes simple for async code.
fn refs(users: &[ruma::OwnedUserId]) -> Vec<&UserId> {
    users.iter().map(|u| u.as_ref()).collect()
}

pub(crate) fn parse_policy(field: &str, json: &str) -> Result<SendPolicy> {
    let policy: SendPolicy = parse_json(field, json)?;
    policy.validate(field).map_err(|e| invalid(&e.field, e.message))?;
    Ok(policy)
}

pub(crate) fn withheld_error(err: WithheldError) -> Error {
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
    pub(crate) withheld: Arc<Withheld>,
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
        "sqlite-crate" => StoreConfig::SqliteCrate {
            path: PathBuf::from(options.store_path.ok_or_else(|| invalid("store.path", "is required for a sqlite-crate store"))?),
            passphrase: options.store_passphrase,
        },
        "postgres" => store::postgres_config(options.store_postgres.as_ref(), options.store_passphrase)?,
        other => return Err(invalid("store.kind", format!("{other:?} is not one of sqlite, sqlite-crate, postgres, memory"))),
    };
    let opened = store::open(&config, user_id.as_str(), device_id.as_str()).await?;
    let machine = OlmMachineBuilder::new(&user_id, &device_id).with_crypto_store(opened.store).build().await.map_err(|e| match e {
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

    pub(crate) fn to_device_requests<'a>(&self, list: impl IntoIterator<Item = &'a ToDeviceRequest>) -> Result<Vec<NativeRequest>> {
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
        let mut lock = crate::locks::lock(&self.store_lock).take();
        if let Some(lock) = &mut lock {
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
    pub async fn receive_sync_changes(&self, changes_json: String) -> Result<events::NativeSyncResult> {
        let machine = self.machine()?;
        let changes: events::SyncChanges = parse_json("changes", &changes_json)?;
        let (to_device_events, skipped) = events::split_events(changes.to_device_events);
        for _ in &skipped {
            records::Metrics::count(&self.withheld.metrics.skipped_to_device_events);
        }
        let lists = changes.changed_devices.to_ruma();
        // One crate call per run (see `to_device::olm_sender_runs`); the device lists, key counts
        // and the sync token go with the last, so the token is stored once all is processed.
        let runs = crate::to_device::olm_sender_runs(to_device_events);
        let last = runs.len() - 1;
        let (no_lists, no_counts) = (ruma::api::client::sync::sync_events::DeviceLists::new(), std::collections::BTreeMap::new());
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
            let settings = events::decryption_settings();
            // The crate's /sync call reads a missing count as zero keys on the server and makes
            // new ones to upload. Without the server's counts (a run before the last, a caller
            // that gave none, such as an appservice transaction without counts for this device)
            // use its MSC4186 reading instead, in which a missing count means "unchanged":
            // otherwise every such call would queue another 50 keys, until Synapse refuses the
            // upload (over 500 keys a device), and the response it is part of fails.
            let result = if counts.is_some() {
                machine.receive_sync_changes(sync, &settings).await
            } else {
                machine.receive_sync_changes_msc4186(sync, &settings).await
            };
            let (p, k) = result.map_err(errors::olm)?;
            processed.extend(p);
            keys.extend(k);
        }
        let outcome = self.withheld.after_sync(&machine, &processed, &keys).await.map_err(withheld_error)?;
        events::sync_result(
            &processed,
            &keys,
            outcome.notices.iter().map(Into::into).collect(),
            outcome.answers,
            skipped,
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
                Queued::Claim { id, body, .. } => NativeRequest::plain(id, crate::requests::RequestType::KeysClaim, body),
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

