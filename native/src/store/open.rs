//! Store choice, as made in `OlmMachine.open`: our engine on SQLite (the default) or on
//! PostgreSQL, the crate's own matrix-sdk-sqlite store, or memory.
//!
//! # One machine per account
//! Two `OlmMachine`s on one account each keep the account, the Olm sessions and the one-time
//! keys in memory: both would ratchet and upload on their own and the store would end up holding
//! whichever wrote last. So an account is open in at most one machine:
//! - within a process, a registry of open accounts refuses a second opener (`StoreLocked`);
//! - across processes on SQLite, the folder carries an exclusive lock file (`flock`/`LockFileEx`,
//!   released by the kernel when the process dies, even by `SIGKILL`); machines of one process
//!   share the folder's database, one account each;
//! - across processes on PostgreSQL, the opener holds the crate's leased lock on the account
//!   (`try_take_leased_lock`, kept in the database), renewing it while open; another process gets
//!   `StoreLocked` until the lease expires, which is how a standby takes over from a holder that
//!   died. It then reads the account afresh from the database: nothing it acts on is older than
//!   the holder's last write.
//!
//! # Folders written by matrix-sdk-sqlite
//! A `sqlite` folder that holds the crate's `matrix-sdk-crypto.sqlite3` and not our
//! `matrix-crypto-node.sqlite3` (a store from before our engine, or matrix-bot-sdk's) is opened
//! with the crate's store, as kind `sqlite-crate` does explicitly: nothing is converted, so
//! nothing can be lost, and the folder keeps working with the software that wrote it.

use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use matrix_sdk_crypto::store::{DynCryptoStore, IntoCryptoStore, MemoryStore};
use matrix_sdk_sqlite::{OpenStoreError, SqliteCryptoStore};
use serde_json::json;

use super::{
    backend::Backend,
    engine::{AccountKey, Engine},
    error::StoreError,
    postgres::PostgresBackend,
    postgres_connect::{self, Origin, PostgresTarget, SettingError, SslSettings},
    sqlite::SqliteBackend,
};
use crate::errors::{code, invalid, typed};

/// Where the machine keeps its keys, as chosen by the caller.
pub enum StoreConfig {
    Memory,
    /// Our engine in `path/matrix-crypto-node.sqlite3`, or the crate's store for folders it wrote.
    Sqlite { path: PathBuf, passphrase: Option<String> },
    /// The crate's matrix-sdk-sqlite store in `path`.
    SqliteCrate { path: PathBuf, passphrase: Option<String> },
    /// Our engine on PostgreSQL. `shown` names the server in messages (no password);
    /// `tls_field` is the field that TLS failures name (`store.sslmode` or `store.url`).
    Postgres { target: PostgresTarget, shown: String, passphrase: Option<String>, max_connections: usize, tls_field: String },
}

/// The file that marks a SQLite store folder as open.
pub const LOCK_FILE: &str = "matrix-crypto-node.lock";
/// Our engine's database in a `sqlite` folder.
pub const ENGINE_FILE: &str = "matrix-crypto-node.sqlite3";
/// The crate's database in a folder it wrote.
pub const CRATE_FILE: &str = "matrix-sdk-crypto.sqlite3";
/// How long a PostgreSQL holder's lease lasts without renewal; renewed every third of it.
pub const LEASE_MS: u32 = 15_000;
/// The lease key of an open account.
const LEASE_KEY: &str = "matrix-crypto-node-open";

/// The exclusive lock on a store folder, and the folder's database when our engine uses it.
pub(super) struct Folder {
    _file: File,
    path: PathBuf,
    backend: Option<Arc<SqliteBackend>>,
}

/// Open folders of this process, by canonical path.
static FOLDERS: tokio::sync::Mutex<Option<HashMap<PathBuf, Weak<Folder>>>> = tokio::sync::Mutex::const_new(None);
/// PostgreSQL backends of this process, by connection string: machines share the pool.
static DATABASES: tokio::sync::Mutex<Option<HashMap<String, Weak<PostgresBackend>>>> = tokio::sync::Mutex::const_new(None);
/// Accounts open in this process: (database, user, device).
static OPEN_ACCOUNTS: Mutex<Option<HashSet<(String, String, String)>>> = Mutex::new(None);

/// An account marked open in this process until dropped.
struct AccountGuard(Option<(String, String, String)>);

impl AccountGuard {
    fn take(database: &str, user_id: &str, device_id: &str, shown: &str, field: &str) -> napi::Result<Self> {
        let key = (database.to_owned(), user_id.to_owned(), device_id.to_owned());
        let mut open = OPEN_ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        if !open.get_or_insert_with(HashSet::new).insert(key.clone()) {
            return Err(typed(
                code::STORE_LOCKED,
                format!("{field}: the account of {user_id} {device_id} in {shown} is already open by another machine in this process; close it first"),
                json!({ "field": field }),
            ));
        }
        Ok(Self(Some(key)))
    }
}

impl Drop for AccountGuard {
    fn drop(&mut self) {
        if let Some(key) = self.0.take() {
            if let Some(open) = OPEN_ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                open.remove(&key);
            }
        }
    }
}

/// What keeps an open store exclusive: the folder lock, the in-process account mark, the
/// renewal of the PostgreSQL lease. Dropping it (on `close()` or garbage collection of the
/// machine) lets the next opener in.
pub struct StoreLock {
    folder: Option<Arc<Folder>>,
    _account: Option<AccountGuard>,
    lease: Option<tokio::task::JoinHandle<()>>,
    /// The PostgreSQL lease to give up on `close()`: the backend (attached for it), the account
    /// id and the holder.
    release: Option<(Arc<PostgresBackend>, i64, String)>,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(task) = self.lease.take() {
            task.abort();
        }
    }
}

impl StoreLock {
    /// Wait (at most five seconds) until SQLite's `-wal` and `-shm` files in the store folder are
    /// gone, which happens when the last connection to each database closes; only when this
    /// machine is the folder's last one (others keep the database open).
    ///
    /// The crate's `close()` returns once its connection pool reports no connections, but the
    /// pool drops the connections themselves on a blocking thread, later. A connection closed
    /// after the folder was deleted and a new store created there would delete the new store's
    /// write-ahead log by name; so `close()` waits for the files, not for the pool's count.
    pub async fn wait_released(&mut self) {
        if let Some(task) = self.lease.take() {
            task.abort();
        }
        if let Some((backend, id, holder)) = self.release.take() {
            // Let a standby in now rather than when the lease runs out.
            let _ = backend.release_lease(id, LEASE_KEY, &holder).await;
            let _ = backend.detach().await;
        }
        let Some(folder) = &self.folder else { return };
        if Arc::strong_count(folder) > 1 {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sidecar_files(&folder.path) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// Whether the folder holds a SQLite write-ahead log or shared-memory file.
fn sidecar_files(path: &Path) -> bool {
    std::fs::read_dir(path).map(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with("-wal") || name.ends_with("-shm")
        })
    }).unwrap_or(false)
}

/// An open store, and what keeps it exclusive.
pub struct Opened {
    pub store: Arc<DynCryptoStore>,
    pub lock: Option<StoreLock>,
}

/// Open the configured store for `user_id`/`device_id`. Errors name the field and never modify
/// an existing database.
pub async fn open(config: &StoreConfig, user_id: &str, device_id: &str) -> napi::Result<Opened> {
    let key = AccountKey { user_id: user_id.to_owned(), device_id: device_id.to_owned() };
    match config {
        StoreConfig::Memory => Ok(Opened { store: MemoryStore::new().into_crypto_store(), lock: None }),
        StoreConfig::Sqlite { path, passphrase } => open_folder(path, passphrase.as_deref(), key, false).await,
        StoreConfig::SqliteCrate { path, passphrase } => open_folder(path, passphrase.as_deref(), key, true).await,
        StoreConfig::Postgres { target, shown, passphrase, max_connections, tls_field } => {
            open_postgres(target, shown, tls_field, passphrase.as_deref(), *max_connections, key).await
        }
    }
}

async fn open_folder(path: &Path, passphrase: Option<&str>, key: AccountKey, force_crate: bool) -> napi::Result<Opened> {
    if path.as_os_str().is_empty() {
        return Err(invalid("store.path", "must not be empty"));
    }
    let shown = path.display().to_string();
    std::fs::create_dir_all(path)
        .map_err(|e| invalid("store.path", format!("cannot create the store folder {shown}: {e}")))?;
    let canonical = path
        .canonicalize()
        .map_err(|e| invalid("store.path", format!("cannot resolve the store folder {shown}: {e}")))?;
    let mut folders = FOLDERS.lock().await;
    let folders = folders.get_or_insert_with(HashMap::new);
    let existing = folders.get(&canonical).and_then(Weak::upgrade);
    let crate_kind = force_crate || (path.join(CRATE_FILE).exists() && !path.join(ENGINE_FILE).exists());
    let folder = match existing {
        Some(folder) if folder.backend.is_some() && !crate_kind => folder,
        Some(_) => {
            return Err(typed(
                code::STORE_LOCKED,
                format!("store.path: {shown} is already open by another machine in this process; close it first"),
                json!({ "field": "store.path" }),
            ))
        }
        None => {
            let file = lock(path)?;
            let backend = if crate_kind {
                None
            } else {
                let backend = SqliteBackend::open(path.join(ENGINE_FILE)).await.map_err(|e| engine_error("store", &shown, e))?;
                Some(Arc::new(backend))
            };
            let folder = Arc::new(Folder { _file: file, path: path.to_path_buf(), backend });
            folders.insert(canonical.clone(), Arc::downgrade(&folder));
            folder
        }
    };
    let Some(backend) = folder.backend.clone() else {
        let store = SqliteCryptoStore::open(path, passphrase).await.map_err(|e| open_error(path, e))?;
        return Ok(Opened { store: store.into_crypto_store(), lock: Some(StoreLock { folder: Some(folder), _account: None, lease: None, release: None }) });
    };
    let account = AccountGuard::take(&canonical.to_string_lossy(), &key.user_id, &key.device_id, &shown, "store.path")?;
    let backend: Arc<dyn Backend> = backend;
    let engine = Engine::open(backend, key, passphrase).await.map_err(|e| engine_error("store", &shown, e))?;
    Ok(Opened {
        store: engine.into_crypto_store(),
        lock: Some(StoreLock { folder: Some(folder), _account: Some(account), lease: None, release: None }),
    })
}

async fn open_postgres(
    target: &PostgresTarget,
    shown: &str,
    tls_field: &str,
    passphrase: Option<&str>,
    max_connections: usize,
    key: AccountKey,
) -> napi::Result<Opened> {
    let registry_key = format!("{target:?}");
    let backend = {
        let mut databases = DATABASES.lock().await;
        let databases = databases.get_or_insert_with(HashMap::new);
        match databases.get(&registry_key).and_then(Weak::upgrade) {
            Some(backend) => backend,
            None => {
                let backend = Arc::new(
                    PostgresBackend::connect(target.clone(), max_connections)
                        .await
                        .map_err(|e| connect_error(tls_field, shown, e))?,
                );
                databases.insert(registry_key.clone(), Arc::downgrade(&backend));
                backend
            }
        }
    };
    let account = AccountGuard::take(&registry_key, &key.user_id, &key.device_id, shown, "store")?;
    let account_id = match backend.find_account(&key.user_id, &key.device_id).await.map_err(|e| engine_error("store", shown, e))? {
        Some(row) => Some(row.id),
        None => None,
    };
    // The lease is taken before the account is read, so what is read is the last holder's.
    let holder = format!("{}-{}", std::process::id(), rand::random::<u64>());
    let lease = |account: i64| {
        let backend = backend.clone();
        let holder = holder.clone();
        async move { backend.try_take_lease(account, LEASE_KEY, &holder, LEASE_MS).await }
    };
    let locked = |user: &str, device: &str| {
        typed(
            code::STORE_LOCKED,
            format!(
                "store: the account of {user} {device} in {shown} is open by another process; it is released when that process closes it or {} s after it stops",
                LEASE_MS / 1000
            ),
            json!({ "field": "store" }),
        )
    };
    // The lease (its renewal, its release on close) uses the pool whether or not an engine is
    // open on it: attach for it first, so a refused open below cannot close the pool under it.
    backend.attach().await.map_err(|e| engine_error("store", shown, e))?;
    let give_up = |id: Option<i64>| {
        let backend = backend.clone();
        let holder = holder.clone();
        async move {
            if let Some(id) = id {
                let _ = backend.release_lease(id, LEASE_KEY, &holder).await;
            }
            let _ = backend.detach().await;
        }
    };
    if let Some(id) = account_id {
        match lease(id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                give_up(None).await;
                return Err(locked(&key.user_id, &key.device_id));
            }
            Err(e) => {
                give_up(None).await;
                return Err(engine_error("store", shown, e));
            }
        }
    }
    let dyn_backend: Arc<dyn Backend> = backend.clone();
    let engine = match Engine::open(dyn_backend, key.clone(), passphrase).await {
        Ok(engine) => engine,
        Err(e) => {
            // A refused open (wrong passphrase, …) must not keep others out for a lease.
            give_up(account_id).await;
            return Err(engine_error("store", shown, e));
        }
    };
    let id = engine.account_id();
    if account_id.is_none() {
        match lease(id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                drop(engine);
                give_up(None).await;
                return Err(locked(&key.user_id, &key.device_id));
            }
            Err(e) => {
                give_up(None).await;
                return Err(engine_error("store", shown, e));
            }
        }
    }
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let engine = engine.with_lease(lost.clone());
    let renew = {
        let backend = backend.clone();
        let holder = holder.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(LEASE_MS / 3))).await;
                // A failed renewal is retried (the lease outlives two missed renewals); a lease
                // another process holds now means this one stops writing.
                if let Ok(None) = backend.try_take_lease(id, LEASE_KEY, &holder, LEASE_MS).await {
                    lost.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
            }
        })
    };
    Ok(Opened {
        store: engine.into_crypto_store(),
        lock: Some(StoreLock { folder: None, _account: Some(account), lease: Some(renew), release: Some((backend, id, holder)) }),
    })
}

/// Map an engine error to the typed error a JS caller sees.
pub(super) fn engine_error(field: &str, shown: &str, err: StoreError) -> napi::Error {
    match err {
        StoreError::Passphrase(text) => typed(
            code::STORE_PASSPHRASE,
            format!("store.passphrase: cannot open the store at {shown}: {text}"),
            json!({ "field": "store.passphrase" }),
        ),
        StoreError::Schema(text) | StoreError::Tls(text) => {
            typed(code::STORE, format!("{field}: cannot open the store at {shown}: {text}"), json!({ "field": field }))
        }
        other => typed(code::STORE, format!("cannot open the store at {shown}: {other}"), json!({ "field": field })),
    }
}

/// A failure to connect to PostgreSQL: TLS failures name the field that chose the TLS mode.
fn connect_error(tls_field: &str, shown: &str, err: StoreError) -> napi::Error {
    let field = if matches!(err, StoreError::Tls(_)) { tls_field } else { "store" };
    engine_error(field, shown, err)
}

/// Take the store folder's lock, or fail with `StoreLocked` naming the holder's process id.
fn lock(path: &Path) -> napi::Result<File> {
    let shown = path.display();
    std::fs::create_dir_all(path)
        .map_err(|e| invalid("store.path", format!("cannot create the store folder {shown}: {e}")))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path.join(LOCK_FILE))
        .map_err(|e| invalid("store.path", format!("cannot create the lock file in {shown}: {e}")))?;
    match file.try_lock() {
        Ok(()) => {
            // The pid is only for the message a second opener gets; the lock is what counts.
            let _ = file.set_len(0).and_then(|_| write!(file, "{}", std::process::id())).and_then(|_| file.flush());
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.seek(SeekFrom::Start(0)).and_then(|_| file.read_to_string(&mut holder));
            let holder = holder.trim();
            let who = if holder == std::process::id().to_string() {
                "another machine in this process; close it first".to_owned()
            } else if holder.is_empty() {
                "another process".to_owned()
            } else {
                format!("process {holder}")
            };
            Err(typed(
                code::STORE_LOCKED,
                format!("store.path: {shown} is already open by {who}"),
                json!({ "field": "store.path" }),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(typed(
            code::STORE,
            format!("cannot open the store at {shown}: cannot lock it ({e})"),
            json!({ "field": "store.path" }),
        )),
    }
}

fn open_error(path: &std::path::Path, err: OpenStoreError) -> napi::Error {
    let shown = path.display();
    match &err {
        OpenStoreError::CreateDir(e) => {
            invalid("store.path", format!("cannot create the store folder {shown}: {e}"))
        }
        OpenStoreError::LoadCipher(_) | OpenStoreError::InitCipher(_) => typed(
            code::STORE_PASSPHRASE,
            format!("store.passphrase: cannot open the store at {shown}: wrong passphrase, or the store is not encrypted with one ({err})"),
            json!({ "field": "store.passphrase" }),
        ),
        _ => {
            let text = err.to_string();
            if text.contains("locked") || text.contains("busy") {
                typed(code::STORE_LOCKED, format!("store.path: {shown} is in use by another process ({text})"), json!({ "field": "store.path" }))
            } else if text.contains("readonly") || text.contains("unable to open") || text.contains("permission") {
                invalid("store.path", format!("cannot open {shown} for writing: {text}"))
            } else {
                typed(code::STORE, format!("cannot open the store at {shown}: {text}"), json!({ "field": "store.path" }))
            }
        }
    }
}

/// PostgreSQL connection options from `OlmMachine.open` (`store: { kind: 'postgres', … }`).
#[napi_derive::napi(object)]
pub struct StorePostgres {
    /// A libpq connection string or `postgresql://` URL; excludes the other fields.
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    /// Connections the process opens to this database at most; default 8.
    pub max_connections: Option<u32>,
    /// libpq's `sslmode`: `disable`, `prefer` (default), `require`, `verify-ca`, `verify-full`.
    pub sslmode: Option<String>,
    /// PEM file of the certificate authorities to check the server against, or `system`.
    pub sslrootcert: Option<String>,
    /// PEM file of a client certificate to present.
    pub sslcert: Option<String>,
    /// PEM file of the client certificate's private key (unencrypted).
    pub sslkey: Option<String>,
}

/// A refused connection setting as the error of the field it was given in.
fn setting_error(e: SettingError) -> napi::Error {
    match e.origin {
        Origin::Url if e.setting == "url" => invalid("store.url", e.message),
        Origin::Url => invalid("store.url", format!("{}: {}", e.setting, e.message)),
        Origin::Field => invalid(&format!("store.{}", e.setting), e.message),
    }
}

/// The `postgres` store choice, checked field by field.
pub fn postgres_config(options: Option<&StorePostgres>, passphrase: Option<String>) -> napi::Result<StoreConfig> {
    let options = options.ok_or_else(|| invalid("store.url", "a postgres store needs url, or host and user"))?;
    let max_connections = match options.max_connections {
        None => 8,
        Some(0) => return Err(invalid("store.maxConnections", "must be at least 1")),
        Some(n) => n as usize,
    };
    let has_fields = options.host.is_some() || options.port.is_some() || options.user.is_some() || options.password.is_some() || options.database.is_some();
    let (config, from_url) = match &options.url {
        Some(_) if has_fields => {
            return Err(invalid("store.url", "give either url or host/port/user/password/database, not both"))
        }
        Some(url) => postgres_connect::parse_connection_string(url).map_err(setting_error)?,
        None => {
            let mut config = tokio_postgres::Config::new();
            config.host(options.host.as_deref().unwrap_or("localhost"));
            if let Some(port) = options.port {
                let port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| invalid("store.port", "must be 1-65535"))?;
                config.port(port);
            }
            config.user(options.user.as_deref().ok_or_else(|| invalid("store.user", "is required without url"))?);
            if let Some(password) = &options.password {
                config.password(password);
            }
            if let Some(database) = &options.database {
                config.dbname(database);
            }
            (config, SslSettings::default())
        }
    };
    if config.get_user().is_none() {
        return Err(invalid("store.url", "names no user"));
    }
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let shown = format!("PostgreSQL {}/{}", hosts.join(","), config.get_dbname().unwrap_or(config.get_user().unwrap_or("")));
    let from_fields = SslSettings {
        sslmode: options.sslmode.clone(),
        sslrootcert: options.sslrootcert.clone(),
        sslcert: options.sslcert.clone(),
        sslkey: options.sslkey.clone(),
    };
    let target = postgres_connect::resolve(config, from_url, from_fields, postgres_connect::home().as_deref()).map_err(setting_error)?;
    let tls_field = match target.tls_origin {
        Origin::Url => "store.url",
        Origin::Field => "store.sslmode",
    }
    .to_owned();
    Ok(StoreConfig::Postgres { target, shown, passphrase, max_connections, tls_field })
}

/// An account kept in a store database, as `OlmMachine.listAccounts` reports it.
#[napi_derive::napi(object)]
pub struct StoreAccount {
    pub user_id: String,
    pub device_id: String,
    /// Whether its rows are encrypted with a passphrase.
    pub encrypted: bool,
    /// How many rows it has (keys, sessions, devices, …).
    pub rows: u32,
}

/// The database of a `sqlite` or `postgres` store choice, for listing and deleting accounts,
/// and what keeps it exclusive meanwhile (the folder, when no machine of this process has it).
pub(super) async fn database(config: &StoreConfig) -> napi::Result<(Arc<dyn Backend>, String, Option<Arc<Folder>>, String)> {
    match config {
        StoreConfig::Sqlite { path, .. } => {
            let shown = path.display().to_string();
            if !path.join(ENGINE_FILE).exists() {
                return Err(invalid(
                    "store.path",
                    format!("{shown} holds no matrix-crypto-node database (a folder of the crate's own store holds one account)"),
                ));
            }
            let canonical = path
                .canonicalize()
                .map_err(|e| invalid("store.path", format!("cannot resolve the store folder {shown}: {e}")))?;
            let mut folders = FOLDERS.lock().await;
            let folders = folders.get_or_insert_with(HashMap::new);
            let folder = match folders.get(&canonical).and_then(Weak::upgrade) {
                Some(folder) => folder,
                None => {
                    let file = lock(path)?;
                    let backend = SqliteBackend::open(path.join(ENGINE_FILE)).await.map_err(|e| engine_error("store", &shown, e))?;
                    let folder = Arc::new(Folder { _file: file, path: path.to_path_buf(), backend: Some(Arc::new(backend)) });
                    folders.insert(canonical.clone(), Arc::downgrade(&folder));
                    folder
                }
            };
            let backend: Arc<dyn Backend> = folder.backend.clone().ok_or_else(|| {
                typed(code::STORE_LOCKED, format!("store.path: {shown} is open by a machine on the crate's store"), json!({ "field": "store.path" }))
            })?;
            Ok((backend, shown, Some(folder), canonical.to_string_lossy().into_owned()))
        }
        StoreConfig::Postgres { target, shown, max_connections, tls_field, .. } => {
            let registry_key = format!("{target:?}");
            let mut databases = DATABASES.lock().await;
            let databases = databases.get_or_insert_with(HashMap::new);
            let backend = match databases.get(&registry_key).and_then(Weak::upgrade) {
                Some(backend) => backend,
                None => {
                    let backend = Arc::new(
                        PostgresBackend::connect(target.clone(), *max_connections).await.map_err(|e| connect_error(tls_field, shown, e))?,
                    );
                    databases.insert(registry_key.clone(), Arc::downgrade(&backend));
                    backend
                }
            };
            Ok((backend, shown.clone(), None, registry_key))
        }
        _ => Err(invalid("store.kind", "listing and deleting accounts needs a sqlite or postgres store")),
    }
}

/// Every account in the store's database.
pub async fn list_accounts(config: &StoreConfig) -> napi::Result<Vec<StoreAccount>> {
    let (backend, shown, _folder, _) = database(config).await?;
    let accounts = backend.list_accounts().await.map_err(|e| engine_error("store", &shown, e))?;
    Ok(accounts
        .into_iter()
        .map(|a| StoreAccount { user_id: a.user_id, device_id: a.device_id, encrypted: a.encrypted, rows: a.rows.min(u32::MAX as u64) as u32 })
        .collect())
}

/// Delete an account and everything stored for it; whether it existed. Refused while a machine
/// has the account open, in this process or (PostgreSQL) another.
pub async fn delete_account(config: &StoreConfig, user_id: &str, device_id: &str) -> napi::Result<bool> {
    let (backend, shown, _folder, registry_key) = database(config).await?;
    let _guard = AccountGuard::take(&registry_key, user_id, device_id, &shown, "store")?;
    let err = |e| engine_error("store", &shown, e);
    let Some(row) = backend.find_account(user_id, device_id).await.map_err(err)? else { return Ok(false) };
    if matches!(config, StoreConfig::Postgres { .. }) {
        let holder = format!("delete-{}-{}", std::process::id(), rand::random::<u64>());
        if backend.try_take_lease(row.id, LEASE_KEY, &holder, LEASE_MS).await.map_err(err)?.is_none() {
            return Err(typed(
                code::STORE_LOCKED,
                format!("store: the account of {user_id} {device_id} in {shown} is open by another process"),
                json!({ "field": "store" }),
            ));
        }
    }
    backend.delete_account(user_id, device_id).await.map_err(err)
}

/// Which database `listStoreAccounts` / `deleteStoreAccount` work on.
#[napi_derive::napi(object)]
pub struct StoreTarget {
    /// `sqlite` or `postgres`.
    pub kind: String,
    pub path: Option<String>,
    pub postgres: Option<StorePostgres>,
}

pub(super) fn target_config(target: StoreTarget) -> napi::Result<StoreConfig> {
    match target.kind.as_str() {
        "sqlite" => Ok(StoreConfig::Sqlite {
            path: PathBuf::from(target.path.ok_or_else(|| invalid("store.path", "is required for a sqlite store"))?),
            passphrase: None,
        }),
        "postgres" => postgres_config(target.postgres.as_ref(), None),
        other => Err(invalid("store.kind", format!("{other:?}: listing and deleting accounts needs sqlite or postgres"))),
    }
}

/// The accounts of a store database (`OlmMachine.listAccounts`).
#[napi_derive::napi]
pub async fn list_store_accounts(target: StoreTarget) -> napi::Result<Vec<StoreAccount>> {
    list_accounts(&target_config(target)?).await
}

/// Delete one account of a store database (`OlmMachine.deleteAccount`).
#[napi_derive::napi]
pub async fn delete_store_account(target: StoreTarget, user_id: String, device_id: String) -> napi::Result<bool> {
    let user = crate::ids::user_id("userId", &user_id)?;
    let device = crate::ids::device_id("deviceId", &device_id)?;
    delete_account(&target_config(target)?, user.as_str(), device.as_str()).await
}
