//! The engine on PostgreSQL: the crate's conformance suites and ours, against the server
//! `scripts/postgres.sh run` started (compiled only when MCN_TEST_POSTGRES names one).
//!
//! Every test is an account of its own in one database, which is the deployment this backend
//! is for: the suites run side by side as hundreds of accounts sharing tables.
// The conformance macros test features of the crate (`experimental-push-secrets`, …) by name.
#![allow(unexpected_cfgs)]

use std::sync::Arc;

use matrix_sdk_crypto::store::{types::PendingChanges, CryptoStore};
use matrix_sdk_crypto::Account;
use ruma::{device_id, user_id};

use super::{
    backend::Backend,
    engine::{AccountKey, Engine},
    error::StoreError,
    postgres::PostgresBackend,
    postgres_connect::PostgresTarget,
};

fn config() -> PostgresTarget {
    let text = std::env::var("MCN_TEST_POSTGRES").expect("MCN_TEST_POSTGRES names the test server");
    text.parse().expect("MCN_TEST_POSTGRES is a connection string")
}

async fn backend() -> Arc<PostgresBackend> {
    Arc::new(PostgresBackend::connect(config(), 2).await.expect("connect to the test server"))
}

fn account(name: &str) -> AccountKey {
    AccountKey { user_id: "@alice:example.org".into(), device_id: format!("conformance-{name}") }
}

async fn get_store(name: &str, passphrase: Option<&str>, clear_data: bool) -> Engine {
    let backend = backend().await;
    let key = account(name);
    if clear_data {
        backend.delete_account(&key.user_id, &key.device_id).await.expect("clear the account");
    }
    Engine::open(backend, key, passphrase).await.expect("open the engine")
}

matrix_sdk_crypto::cryptostore_integration_tests!();
matrix_sdk_crypto::cryptostore_integration_tests_time!();

#[tokio::test]
async fn accounts_are_listed_deleted_and_locked_one_by_one() {
    let backend = backend().await;
    let dyn_backend: Arc<dyn Backend> = backend.clone();
    let keys: Vec<AccountKey> = (0..3).map(|i| AccountKey { user_id: format!("@many{i}:example.org"), device_id: "D".into() }).collect();
    for k in &keys {
        backend.delete_account(&k.user_id, &k.device_id).await.unwrap();
        let engine = Engine::open(dyn_backend.clone(), k.clone(), Some("p")).await.unwrap();
        let account = Account::with_device_id(&ruma::UserId::parse(k.user_id.as_str()).unwrap(), device_id!("D"));
        engine.save_pending_changes(PendingChanges { account: Some(account) }).await.unwrap();
    }
    let listed = backend.list_accounts().await.unwrap();
    for k in &keys {
        let found = listed.iter().find(|a| a.user_id == k.user_id).expect("listed");
        assert!(found.encrypted && found.rows == 1, "{found:?}");
    }
    assert!(backend.delete_account(&keys[0].user_id, "D").await.unwrap());
    let listed = backend.list_accounts().await.unwrap();
    assert!(!listed.iter().any(|a| a.user_id == keys[0].user_id));
    assert!(listed.iter().any(|a| a.user_id == keys[1].user_id));

    // Two openers of one account: the lease decides, per account.
    let a = Engine::open(dyn_backend.clone(), keys[1].clone(), Some("p")).await.unwrap();
    let b = Engine::open(dyn_backend.clone(), keys[1].clone(), Some("p")).await.unwrap();
    assert_eq!(a.try_take_leased_lock(10_000, "open", "a").await.unwrap(), Some(1));
    assert_eq!(b.try_take_leased_lock(10_000, "open", "b").await.unwrap(), None);
    let c = Engine::open(dyn_backend.clone(), keys[2].clone(), Some("p")).await.unwrap();
    assert_eq!(c.try_take_leased_lock(10_000, "open", "b").await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_wrong_passphrase_is_refused_and_changes_nothing() {
    let backend = backend().await;
    let dyn_backend: Arc<dyn Backend> = backend.clone();
    let key = AccountKey { user_id: "@passphrase:example.org".into(), device_id: "D".into() };
    backend.delete_account(&key.user_id, &key.device_id).await.unwrap();
    let engine = Engine::open(dyn_backend.clone(), key.clone(), Some("right")).await.unwrap();
    let account = Account::with_device_id(user_id!("@passphrase:example.org"), device_id!("D"));
    let curve = account.identity_keys().curve25519;
    engine.save_pending_changes(PendingChanges { account: Some(account) }).await.unwrap();
    let before = backend.list_accounts().await.unwrap();
    let err = Engine::open(dyn_backend.clone(), key.clone(), Some("wrong")).await.expect_err("refused");
    assert!(matches!(err, StoreError::Passphrase(ref t) if t.contains("wrong passphrase")), "{err}");
    assert_eq!(backend.list_accounts().await.unwrap(), before);
    let again = Engine::open(dyn_backend, key, Some("right")).await.unwrap();
    assert_eq!(again.load_account().await.unwrap().unwrap().identity_keys().curve25519, curve);
}

#[tokio::test]
async fn a_takeover_reads_what_the_previous_holder_wrote() {
    let backend = backend().await;
    let dyn_backend: Arc<dyn Backend> = backend.clone();
    let key = AccountKey { user_id: "@takeover:example.org".into(), device_id: "D".into() };
    backend.delete_account(&key.user_id, &key.device_id).await.unwrap();
    let first = Engine::open(dyn_backend.clone(), key.clone(), None).await.unwrap();
    let standby = Engine::open(dyn_backend.clone(), key.clone(), None).await.unwrap();
    assert_eq!(first.try_take_leased_lock(50, "open", "first").await.unwrap(), Some(1));
    first.set_custom_value("state", b"written by the first holder".to_vec()).await.unwrap();
    // The standby's cache predates the write; the lease runs out and it takes over.
    assert_eq!(standby.get_custom_value("state").await.unwrap(), None);
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    assert_eq!(standby.try_take_leased_lock(10_000, "open", "standby").await.unwrap(), Some(2));
    standby.reload().await.unwrap();
    assert_eq!(standby.get_custom_value("state").await.unwrap().as_deref(), Some(&b"written by the first holder"[..]));
}

#[tokio::test]
async fn a_version_1_database_is_upgraded() {
    // A database of its own, so the upgrade does not race the other tests' shared schema.
    let client_config = config();
    let name = format!("mcn_upgrade_{}", std::process::id());
    {
        let (client, conn) = client_config.config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
    }
    let mut config = client_config.clone();
    config.config.dbname(&name);
    let v1 = PostgresBackend::connect_at(config.clone(), 1, 1).await.unwrap();
    assert_eq!(v1.version().await.unwrap(), 1);
    let row = v1.create_account("@old:example.org", "D", None).await.unwrap();
    v1.write(
        row.id,
        vec![super::backend::Op::Put {
            kind: super::codec::Kind::Custom,
            key: b"k".to_vec(),
            value: super::codec::custom_value("k", b"from version 1"),
        }],
    )
    .await
    .unwrap();
    drop(v1);
    let current: Arc<dyn Backend> = Arc::new(PostgresBackend::connect(config.clone(), 1).await.unwrap());
    let engine = Engine::open(current, AccountKey { user_id: "@old:example.org".into(), device_id: "D".into() }, None).await.unwrap();
    assert_eq!(engine.get_custom_value("k").await.unwrap().as_deref(), Some(&b"from version 1"[..]));
    assert_eq!(engine.try_take_leased_lock(1000, "k", "me").await.unwrap(), Some(1));
    let check = PostgresBackend::connect(config, 1).await.unwrap();
    assert_eq!(check.version().await.unwrap(), super::schema::current() as i64);
}
