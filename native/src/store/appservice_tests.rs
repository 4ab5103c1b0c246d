//! The appservice tables (`appservice.rs`) on SQLite and, when `MCN_TEST_POSTGRES` names a
//! server, on PostgreSQL: the journal in order across reopens, compaction, encryption at rest,
//! the lease and the writes it fences, and the copy of an account between databases.

use std::sync::Arc;

use matrix_sdk_crypto::store::CryptoStore;

use super::{
    appservice::{copy_account, StateStore},
    backend::Backend,
    engine::{AccountKey, Engine},
    error::StoreError,
    sqlite::SqliteBackend,
    tests::scratch,
};

async fn sqlite(name: &str) -> Arc<dyn Backend> {
    let path = scratch(&format!("appservice-{name}.sqlite3"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Arc::new(SqliteBackend::open(path).await.expect("open"))
}

fn texts(records: Vec<Vec<u8>>) -> Vec<String> {
    records.into_iter().map(|r| String::from_utf8(r).unwrap()).collect()
}

fn bytes(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

/// A unique appservice name per run (PostgreSQL keeps its tables between runs).
fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), rand::random::<u32>())
}

async fn journal_in_order_across_reopen(backend: Arc<dyn Backend>) {
    let name = unique("journal");
    let store = StateStore::open(backend.clone(), &name, None).await.unwrap();
    assert!(store.load().await.unwrap().is_empty());
    store.append(None, bytes(&["a", "b"])).await.unwrap();
    store.append(None, bytes(&["c"])).await.unwrap();
    let again = StateStore::open(backend.clone(), &name, None).await.unwrap();
    assert_eq!(texts(again.load().await.unwrap()), ["a", "b", "c"]);
    // Appends after a load continue after the last record, also in another opener.
    again.append(None, bytes(&["d"])).await.unwrap();
    again.replace(None, bytes(&["x", "y"])).await.unwrap();
    again.append(None, bytes(&["z"])).await.unwrap();
    let third = StateStore::open(backend.clone(), &name, None).await.unwrap();
    assert_eq!(texts(third.load().await.unwrap()), ["x", "y", "z"]);
    // Another appservice in the same database sees none of it.
    let other = StateStore::open(backend, &unique("other"), None).await.unwrap();
    assert!(other.load().await.unwrap().is_empty());
}

async fn passphrase_is_checked(backend: Arc<dyn Backend>) {
    let name = unique("secret");
    let store = StateStore::open(backend.clone(), &name, Some("pw")).await.unwrap();
    store.append(None, bytes(&["{\"t\":\"device\",\"userId\":\"@visible-user:example.org\"}"])).await.unwrap();
    let raw = backend.appservice().unwrap().log_load(&name).await.unwrap();
    assert_eq!(raw.len(), 1);
    assert!(!raw[0].1.windows(12).any(|w| w == b"visible-user"), "the record is stored in the clear");
    let wrong = StateStore::open(backend.clone(), &name, Some("nope")).await.err().expect("wrong passphrase refused");
    assert!(matches!(wrong, StoreError::Passphrase(_)), "{wrong}");
    let none = StateStore::open(backend.clone(), &name, None).await.err().expect("missing passphrase refused");
    assert!(matches!(none, StoreError::Passphrase(ref t) if t.contains("encrypted")), "{none}");
    let right = StateStore::open(backend.clone(), &name, Some("pw")).await.unwrap();
    assert_eq!(texts(right.load().await.unwrap()), ["{\"t\":\"device\",\"userId\":\"@visible-user:example.org\"}"]);
    let plain = unique("plain");
    StateStore::open(backend.clone(), &plain, None).await.unwrap();
    let err = StateStore::open(backend, &plain, Some("pw")).await.err().expect("passphrase for a clear state refused");
    assert!(matches!(err, StoreError::Passphrase(ref t) if t.contains("not encrypted")), "{err}");
}

async fn lease_fences_writes(backend: Arc<dyn Backend>) {
    let name = unique("lease");
    let store = StateStore::open(backend.clone(), &name, None).await.unwrap();
    assert!(store.lease("a", 60_000).await.unwrap());
    assert!(!store.lease("b", 60_000).await.unwrap(), "b took a lease a holds");
    assert!(store.lease("a", 60_000).await.unwrap(), "a cannot renew");
    store.append(Some("a".into()), bytes(&["by a"])).await.unwrap();
    let err = store.append(Some("b".into()), bytes(&["by b"])).await.err().expect("b's fenced write refused");
    assert!(matches!(err, StoreError::LeaseLost), "{err}");
    store.release("a").await.unwrap();
    assert!(store.lease("b", 60_000).await.unwrap(), "b cannot take a released lease");
    let err = store.replace(Some("a".into()), bytes(&["by a again"])).await.err().expect("a's fenced write refused");
    assert!(matches!(err, StoreError::LeaseLost), "{err}");
    store.append(Some("b".into()), bytes(&["by b"])).await.unwrap();
    assert_eq!(texts(store.load().await.unwrap()), ["by a", "by b"]);
    // A lease that ran out is taken by the next one asking.
    assert!(store.lease("b", 1).await.unwrap());
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(store.lease("c", 60_000).await.unwrap(), "c cannot take an expired lease");
}

async fn account_copied_as_stored(target: Arc<dyn Backend>) {
    let source = sqlite(&unique("copy-source")).await;
    let key = AccountKey { user_id: "@copied:example.org".into(), device_id: unique("DEV") };
    let engine = Engine::open(source.clone(), key.clone(), Some("pw")).await.unwrap();
    engine.set_custom_value("kept", b"value".to_vec()).await.unwrap();
    drop(engine);
    // A partial copy left by an interrupted run is replaced.
    let stale = Engine::open(target.clone(), key.clone(), Some("other")).await.unwrap();
    stale.set_custom_value("stale", b"x".to_vec()).await.unwrap();
    drop(stale);
    let tables = source.appservice().unwrap();
    assert!(copy_account(tables, target.as_ref(), &key.user_id, &key.device_id).await.unwrap());
    assert!(!copy_account(tables, target.as_ref(), "@missing:example.org", "NONE").await.unwrap());
    let copy = Engine::open(target.clone(), key.clone(), Some("pw")).await.expect("the copy opens with the account's passphrase");
    assert_eq!(copy.get_custom_value("kept").await.unwrap().as_deref(), Some(&b"value"[..]));
    assert_eq!(copy.get_custom_value("stale").await.unwrap(), None);
    drop(copy);
    target.delete_account(&key.user_id, &key.device_id).await.unwrap();
}

#[tokio::test]
async fn sqlite_journal_in_order_across_reopen() {
    journal_in_order_across_reopen(sqlite("journal").await).await;
}

#[tokio::test]
async fn sqlite_passphrase_is_checked() {
    passphrase_is_checked(sqlite("secret").await).await;
}

#[tokio::test]
async fn sqlite_lease_fences_writes() {
    lease_fences_writes(sqlite("lease").await).await;
}

#[tokio::test]
async fn sqlite_account_copied_as_stored() {
    account_copied_as_stored(sqlite("copy-target").await).await;
}

#[cfg(mcn_postgres)]
mod postgres {
    use super::*;
    use crate::store::postgres::PostgresBackend;

    async fn backend() -> Arc<dyn Backend> {
        let text = std::env::var("MCN_TEST_POSTGRES").expect("MCN_TEST_POSTGRES names the test server");
        Arc::new(PostgresBackend::connect(text.parse().unwrap(), 2).await.expect("connect to the test server"))
    }

    #[tokio::test]
    async fn postgres_journal_in_order_across_reopen() {
        journal_in_order_across_reopen(backend().await).await;
    }

    #[tokio::test]
    async fn postgres_passphrase_is_checked() {
        passphrase_is_checked(backend().await).await;
    }

    #[tokio::test]
    async fn postgres_lease_fences_writes() {
        lease_fences_writes(backend().await).await;
    }

    #[tokio::test]
    async fn postgres_account_copied_as_stored() {
        account_copied_as_stored(backend().await).await;
    }
}
