//! Store choice: the embedded SQLite store (default, optionally encrypted at rest) or memory.

use std::{path::PathBuf, sync::Arc};

use matrix_sdk_crypto::store::{DynCryptoStore, IntoCryptoStore, MemoryStore};
use matrix_sdk_sqlite::{OpenStoreError, SqliteCryptoStore};
use serde_json::json;

use crate::errors::{code, invalid, typed};

/// Where the machine keeps its keys, as chosen by the caller.
pub enum StoreConfig {
    Memory,
    Sqlite { path: PathBuf, passphrase: Option<String> },
}

/// Open the configured store. Errors name the field and never modify an existing database.
pub async fn open(config: &StoreConfig) -> napi::Result<Arc<DynCryptoStore>> {
    match config {
        StoreConfig::Memory => Ok(MemoryStore::new().into_crypto_store()),
        StoreConfig::Sqlite { path, passphrase } => {
            if path.as_os_str().is_empty() {
                return Err(invalid("store.path", "must not be empty"));
            }
            let store = SqliteCryptoStore::open(path, passphrase.as_deref())
                .await
                .map_err(|e| open_error(path, e))?;
            Ok(store.into_crypto_store())
        }
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
