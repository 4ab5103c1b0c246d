//! `AppserviceState`'s native side: an appservice's journal in a store database, its lease, and
//! the copy of accounts out of the per-device folders of the layout before it (see
//! [`super::appservice`]).

use std::{path::PathBuf, sync::Arc};

use napi_derive::napi;
use serde_json::json;

use super::{
    appservice::{copy_account, StateStore},
    backend::Backend,
    error::StoreError,
    open::{database, engine_error, target_config, Folder, StoreTarget, ENGINE_FILE},
    sqlite::SqliteBackend,
};
use crate::errors::{code, invalid, typed};

/// An appservice's journal in a store database.
#[napi]
pub struct NativeAppserviceStore {
    store: Arc<StateStore>,
    shown: String,
    /// Keeps a `sqlite` folder locked to this process while the journal is open.
    folder: std::sync::Mutex<Option<Arc<Folder>>>,
    attached: std::sync::atomic::AtomicBool,
}

fn store_error(shown: &str, err: StoreError) -> napi::Error {
    match err {
        StoreError::LeaseLost => typed(
            code::STORE_LOCKED,
            format!("store: another process serves the appservice now (this one's lease in {shown} ran out); stop serving"),
            json!({ "field": "store" }),
        ),
        other => engine_error("store", shown, other),
    }
}

/// Open (or create) the journal of the appservice `name` in a `sqlite` folder (created if
/// missing) or a `postgres` database.
#[napi]
pub async fn open_appservice_store(target: StoreTarget, name: String, passphrase: Option<String>) -> napi::Result<NativeAppserviceStore> {
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if target.kind == "sqlite" {
        let path = PathBuf::from(target.path.clone().ok_or_else(|| invalid("store.path", "is required for a sqlite store"))?);
        std::fs::create_dir_all(&path)
            .map_err(|e| invalid("store.path", format!("cannot create the store folder {}: {e}", path.display())))?;
        if !path.join(ENGINE_FILE).exists() {
            // Creates the database file that `database` expects; it then takes the folder's lock.
            SqliteBackend::open(path.join(ENGINE_FILE)).await.map_err(|e| engine_error("store", &path.display().to_string(), e))?;
        }
    }
    let config = target_config(target)?;
    let (backend, shown, folder, _) = database(&config).await?;
    backend.attach().await.map_err(|e| store_error(&shown, e))?;
    let store = match StateStore::open(backend.clone(), &name, passphrase.as_deref()).await {
        Ok(store) => store,
        Err(e) => {
            let _ = backend.detach().await;
            return Err(store_error(&shown, e));
        }
    };
    Ok(NativeAppserviceStore {
        store: Arc::new(store),
        shown,
        folder: std::sync::Mutex::new(folder),
        attached: std::sync::atomic::AtomicBool::new(true),
    })
}

#[napi]
impl NativeAppserviceStore {
    /// Every record (JSON text), oldest first.
    #[napi]
    pub async fn load(&self) -> napi::Result<Vec<String>> {
        let records = self.store.load().await.map_err(|e| store_error(&self.shown, e))?;
        records
            .into_iter()
            .map(|r| String::from_utf8(r).map_err(|_| typed(code::STORE, format!("store: a record in {} is not text", self.shown), json!({ "field": "store" }))))
            .collect()
    }

    /// Append records in one transaction; with `fence`, only while that holder holds the lease.
    #[napi]
    pub async fn append(&self, records: Vec<String>, fence: Option<String>) -> napi::Result<()> {
        let records = records.into_iter().map(String::into_bytes).collect();
        self.store.append(fence, records).await.map_err(|e| store_error(&self.shown, e))
    }

    /// Replace every record in one transaction; with `fence`, only while that holder holds the lease.
    #[napi]
    pub async fn replace(&self, records: Vec<String>, fence: Option<String>) -> napi::Result<()> {
        let records = records.into_iter().map(String::into_bytes).collect();
        self.store.replace(fence, records).await.map_err(|e| store_error(&self.shown, e))
    }

    /// Take or renew the appservice's lease for `leaseMs`; whether `holder` holds it now.
    #[napi]
    pub async fn lease(&self, holder: String, lease_ms: u32) -> napi::Result<bool> {
        self.store.lease(&holder, lease_ms).await.map_err(|e| store_error(&self.shown, e))
    }

    /// Give up `holder`'s lease now.
    #[napi]
    pub async fn release(&self, holder: String) -> napi::Result<()> {
        self.store.release(&holder).await.map_err(|e| store_error(&self.shown, e))
    }

    /// Copy the account of `userId`/`deviceId` out of the `sqlite` folder `folder` (our engine's
    /// database, one folder per device in the layout before this one) into this database,
    /// replacing a copy already there. False when the folder holds no such account.
    #[napi]
    pub async fn import_account(&self, folder: String, user_id: String, device_id: String) -> napi::Result<bool> {
        let path = PathBuf::from(&folder).join(ENGINE_FILE);
        if !path.exists() {
            return Ok(false);
        }
        let source = SqliteBackend::open(path).await.map_err(|e| engine_error("folder", &folder, e))?;
        copy_account(&source, self.store.backend().as_ref(), &user_id, &device_id)
            .await
            .map_err(|e| store_error(&self.shown, e))?;
        source.detach().await.map_err(|e| engine_error("folder", &folder, e))?;
        Ok(true)
    }

    /// Release the database (and the folder's lock, when no machine of this process uses it).
    #[napi]
    pub async fn close(&self) -> napi::Result<()> {
        if self.attached.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let _ = self.store.backend().detach().await;
        }
        self.folder.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(())
    }
}
