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
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use matrix_sdk_crypto::{types::requests::ToDeviceRequest, OlmMachine, OlmMachineBuilder};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::UserId;
use serde_json::json;

use crate::{
    errors::{self, code, invalid, parse_json, typed},
    events, ids,
    core_machine,
    requests::{self, NativeRequest},
    store::{self, StoreConfig},
    withheld::{outgoing::Queued, policy::SendPolicy, Withheld},
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
    /// The machine-wide withheld policy; default: send all codes.
    #[napi(ts_type = "{ send?: 'all' | 'none' | Array<string>; reasons?: Partial<Record<string, string>> }")]
    pub withheld_policy: Option<serde_json::Value>,
    /// React to `m.no_olm` notices with a new Olm session and an `m.dummy`; default true.
    pub react_to_no_olm: Option<bool>,
}

/// Borrowed ids; a named function keeps the iterator's lifetimes simple for async code.
fn refs(users: &[ruma::OwnedUserId]) -> Vec<&UserId> {
    users.iter().map(|u| u.as_ref()).collect()
}

/// The native machine. Private: users reach it through `src/machine.ts`.
#[napi]
pub struct NativeMachine {
    /// The machine (`None` once closed); it holds the crate's machine, the withheld layer and
    /// the requests handed out.
    inner: RwLock<Option<core_machine::Machine>>,
    user_id: String,
    device_id: String,
    identity_keys: (String, String),
    /// The machine's withheld layer (its settings outlive `close()`).
    pub(crate) withheld: Arc<Withheld>,
    /// The SQLite store folder's lock, held until `close()` or garbage collection.
    store_lock: Mutex<Option<store::StoreLock>>,
    /// Calls holding a handle to the machine (see [`InFlight`]).
    in_flight: Arc<AtomicUsize>,
}

/// A handle to the crate's machine held by one running call; dereferences to the machine.
pub(crate) struct InFlight {
    machine: core_machine::Machine,
    count: Arc<AtomicUsize>,
}

impl InFlight {
    /// The plain-Rust machine, for the calls it offers.
    pub(crate) fn core(&self) -> &core_machine::Machine {
        &self.machine
    }
}

impl std::ops::Deref for InFlight {
    type Target = OlmMachine;
    fn deref(&self) -> &OlmMachine {
        self.machine.olm()
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
    let policy = match options.withheld_policy {
        Some(value) => SendPolicy::from_input("withheld", value).map_err(errors::input)?,
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
    let withheld = Arc::new(Withheld::new(policy, options.react_to_no_olm.unwrap_or(true)));
    Ok(NativeMachine {
        user_id: machine.user_id().to_string(),
        device_id: machine.device_id().to_string(),
        identity_keys: (keys.curve25519.to_base64(), keys.ed25519.to_base64()),
        inner: RwLock::new(Some(core_machine::Machine::new(machine, Arc::clone(&withheld)))),
        withheld,
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

    pub(crate) fn remember<'a>(&self, requests: impl IntoIterator<Item = &'a NativeRequest>) {
        if let Some(machine) = &*crate::locks::read(&self.inner) {
            for r in requests {
                machine.remember(r.id(), r.kind());
            }
        }
    }

    /// `remember` for a request made later, in a future that cannot borrow the machine.
    pub(crate) fn remember_fn(&self) -> impl Fn(&NativeRequest) + Send + 'static {
        let remember = crate::locks::read(&self.inner).as_ref().map(core_machine::Machine::remember_fn);
        move |r| {
            if let Some(remember) = &remember {
                remember(r.id(), r.kind());
            }
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
        if let Some(m) = &machine {
            m.forget_requests();
            // Let the calls already running finish, then close the store's connections: once
            // this resolves the files are released (deleting the folder and creating a new
            // store there works; SQLite's write-ahead log is folded back in).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while self.in_flight.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            let backend: &matrix_sdk_crypto::store::DynCryptoStore = &**m.olm().store();
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
        let machine = crate::locks::write(&self.inner).take();
        if let Some(m) = &machine {
            m.forget_requests();
        }
        release(machine);
        crate::locks::lock(&self.store_lock).take();
    }

    /// Process the encryption-relevant parts of a sync response (JSON, see `SyncChanges`).
    #[napi]
    pub async fn receive_sync_changes(&self, changes_json: String) -> Result<events::NativeSyncResult> {
        let machine = self.machine()?;
        let changes: core_machine::SyncChanges = parse_json("changes", &changes_json)?;
        let out = machine.core().receive_sync_changes(changes).await?;
        events::sync_result(
            &out.processed,
            &out.keys,
            out.withheld.notices.iter().map(Into::into).collect(),
            out.withheld.answers,
            out.skipped,
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
                Queued::Claim { id, body, .. } => NativeRequest::KeysClaim { id, body },
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
        machine.core().mark_request_as_sent(&id, &kind, &response, foreign_ids == Some(true)).await?;
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
fn release(machine: Option<core_machine::Machine>) {
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

