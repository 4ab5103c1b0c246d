//! Store choice: the embedded SQLite store (default, optionally encrypted at rest) or memory.
//!
//! A SQLite store is opened by one machine at a time. SQLite itself would let two processes
//! share the file, but two `OlmMachine`s on one account each keep the account, the Olm sessions
//! and the one-time keys in memory: both would ratchet and upload on their own and the store
//! would end up holding whichever wrote last. So the folder carries an exclusive lock file
//! (`flock`/`LockFileEx`, released by the kernel when the process dies, even by `SIGKILL`), and a
//! second opener gets the typed `StoreLocked` error instead.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::Arc,
};

use matrix_sdk_crypto::store::{DynCryptoStore, IntoCryptoStore, MemoryStore};
use matrix_sdk_sqlite::{OpenStoreError, SqliteCryptoStore};
use serde_json::json;

use crate::errors::{code, invalid, typed};

/// Where the machine keeps its keys, as chosen by the caller.
pub enum StoreConfig {
    Memory,
    Sqlite { path: PathBuf, passphrase: Option<String> },
}

/// The file that marks a SQLite store folder as open.
pub const LOCK_FILE: &str = "matrix-crypto-node.lock";

/// The exclusive lock on a store folder; dropping it (on `close()` or garbage collection of
/// the machine) lets the next opener in.
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// Wait (at most five seconds) until SQLite's `-wal` and `-shm` files in the store folder are
    /// gone, which happens when the last connection to each database closes.
    ///
    /// The crate's `close()` returns once its connection pool reports no connections, but the
    /// pool drops the connections themselves on a blocking thread, later. A connection closed
    /// after the folder was deleted and a new store created there would delete the new store's
    /// write-ahead log by name; so `close()` waits for the files, not for the pool's count.
    pub async fn wait_released(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sidecar_files(&self.path) && std::time::Instant::now() < deadline {
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

/// An open store, and its lock when it is a SQLite store.
pub struct Opened {
    pub store: Arc<DynCryptoStore>,
    pub lock: Option<StoreLock>,
}

/// Open the configured store. Errors name the field and never modify an existing database.
pub async fn open(config: &StoreConfig) -> napi::Result<Opened> {
    match config {
        StoreConfig::Memory => Ok(Opened { store: MemoryStore::new().into_crypto_store(), lock: None }),
        StoreConfig::Sqlite { path, passphrase } => {
            if path.as_os_str().is_empty() {
                return Err(invalid("store.path", "must not be empty"));
            }
            let lock = lock(path)?;
            let store = SqliteCryptoStore::open(path, passphrase.as_deref())
                .await
                .map_err(|e| open_error(path, e))?;
            Ok(Opened { store: store.into_crypto_store(), lock: Some(lock) })
        }
    }
}

/// Take the store folder's lock, or fail with `StoreLocked` naming the holder's process id.
fn lock(path: &Path) -> napi::Result<StoreLock> {
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
            Ok(StoreLock { _file: file, path: path.to_path_buf() })
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
