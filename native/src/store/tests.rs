//! The engine on SQLite: the crate's conformance suites, then what they do not cover.
// The conformance macros test features of the crate (`experimental-push-secrets`, …) by name.
#![allow(unexpected_cfgs)]

use std::{path::PathBuf, sync::Arc};

use matrix_sdk_crypto::{
    store::{types::PendingChanges, CryptoStore, IntoCryptoStore},
    Account, OlmMachineBuilder,
};
use ruma::{device_id, user_id};

use super::{
    backend::Backend,
    codec::{Codec, Kind},
    engine::{AccountKey, Engine},
    error::StoreError,
    sqlite::{self, SqliteBackend},
};

/// A folder for this test process's databases, removed by nothing: it is under the system's
/// temporary folder and named by process id.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mcn-store-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir.join(name)
}

fn remove_db(path: &PathBuf) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

fn alice() -> AccountKey {
    AccountKey { user_id: "@alice:example.org".into(), device_id: "ALICEDEVICE".into() }
}

async fn get_store(name: &str, passphrase: Option<&str>, clear_data: bool) -> Engine {
    let path = scratch(&format!("{name}.sqlite3"));
    if clear_data {
        remove_db(&path);
    }
    let backend = SqliteBackend::open(path).await.expect("open the SQLite backend");
    Engine::open(Arc::new(backend), alice(), passphrase).await.expect("open the engine")
}

matrix_sdk_crypto::cryptostore_integration_tests!();
matrix_sdk_crypto::cryptostore_integration_tests_time!();

async fn backend(name: &str) -> Arc<dyn Backend> {
    let path = scratch(&format!("{name}.sqlite3"));
    remove_db(&path);
    Arc::new(SqliteBackend::open(path).await.expect("open"))
}

fn key(user: &str, device: &str) -> AccountKey {
    AccountKey { user_id: user.into(), device_id: device.into() }
}

/// Save a fresh account for `key` through the crate's own machine, so its own device is stored
/// the way the crate stores it; returns the machine's curve25519 key.
async fn create_machine(backend: &Arc<dyn Backend>, key: &AccountKey, passphrase: Option<&str>) -> String {
    let engine = Engine::open(backend.clone(), key.clone(), passphrase).await.expect("open");
    let user = ruma::UserId::parse(key.user_id.as_str()).unwrap();
    let device: ruma::OwnedDeviceId = key.device_id.as_str().into();
    let machine = OlmMachineBuilder::new(&user, &device).with_crypto_store(engine.into_crypto_store()).build().await.expect("machine");
    machine.identity_keys().curve25519.to_base64()
}

#[tokio::test]
async fn the_withheld_layers_ledger_survives_a_reopen() {
    let path = scratch("ledger.sqlite3");
    remove_db(&path);
    let chain = vec!["curve-a".to_owned(), "curve-b".to_owned()];
    {
        let backend = Arc::new(SqliteBackend::open(path.clone()).await.unwrap());
        let engine = Engine::open(backend, alice(), Some("pass")).await.unwrap();
        let machine = OlmMachineBuilder::new(user_id!("@alice:example.org"), device_id!("ALICEDEVICE"))
            .with_crypto_store(engine.into_crypto_store())
            .build()
            .await
            .unwrap();
        crate::withheld::records::put_forwarding_chain(&machine, "!room:example.org", "session", &chain).await.unwrap();
    }
    let backend = Arc::new(SqliteBackend::open(path).await.unwrap());
    let engine = Engine::open(backend, alice(), Some("pass")).await.unwrap();
    let machine = OlmMachineBuilder::new(user_id!("@alice:example.org"), device_id!("ALICEDEVICE"))
        .with_crypto_store(engine.into_crypto_store())
        .build()
        .await
        .unwrap();
    let read = crate::withheld::records::forwarding_chain(&machine, "!room:example.org", "session").await.unwrap();
    assert_eq!(read, chain);
}

#[tokio::test]
async fn a_wrong_passphrase_is_refused_and_changes_nothing() {
    let backend = backend("passphrase").await;
    let curve = create_machine(&backend, &alice(), Some("right")).await;
    let before = backend.list_accounts().await.unwrap();

    for (given, expected) in [(Some("wrong"), "wrong passphrase"), (None, "a passphrase is required")] {
        let err = Engine::open(backend.clone(), alice(), given).await.expect_err("must be refused");
        match err {
            StoreError::Passphrase(text) => assert!(text.contains(expected), "{text}"),
            other => panic!("expected a passphrase error, got {other}"),
        }
    }
    assert_eq!(backend.list_accounts().await.unwrap(), before);

    let engine = Engine::open(backend.clone(), alice(), Some("right")).await.unwrap();
    let account = engine.load_account().await.unwrap().expect("the account is still there");
    assert_eq!(account.identity_keys().curve25519.to_base64(), curve);

    // An unencrypted account refuses a passphrase the same way.
    let bob = key("@bob:example.org", "BOBDEVICE");
    create_machine(&backend, &bob, None).await;
    let err = Engine::open(backend.clone(), bob, Some("x")).await.expect_err("must be refused");
    assert!(matches!(err, StoreError::Passphrase(ref t) if t.contains("not encrypted")), "{err}");
}

#[tokio::test]
async fn nothing_readable_is_stored_with_a_passphrase() {
    let path = scratch("at-rest.sqlite3");
    remove_db(&path);
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(path.clone()).await.unwrap());
    let curve = create_machine(&backend, &alice(), Some("secret")).await;
    let engine = Engine::open(backend.clone(), alice(), Some("secret")).await.unwrap();
    engine.set_custom_value("visible-key", b"visible-value".to_vec()).await.unwrap();
    // The last handle on the backend closes its connection: the log is folded into the file.
    drop(engine);
    drop(backend);
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    assert!(!PathBuf::from(wal).exists());
    let bytes = std::fs::read(&path).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"visible-value"));
    assert!(!contains(b"visible-key"));
    assert!(!contains(curve.as_bytes()));
    // The account row names its user: that is what lets one database hold many accounts.
    assert!(contains(b"@alice:example.org"));
}

#[tokio::test]
async fn many_accounts_share_one_file_and_are_listed_and_deleted_one_by_one() {
    let backend = backend("many").await;
    let keys: Vec<AccountKey> = (0..5).map(|i| key(&format!("@user{i}:example.org"), &format!("DEVICE{i}"))).collect();
    let mut curves = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let passphrase = (i % 2 == 0).then_some("p");
        curves.push(create_machine(&backend, k, passphrase).await);
    }
    let listed = backend.list_accounts().await.unwrap();
    assert_eq!(listed.iter().map(|a| a.user_id.as_str()).collect::<Vec<_>>(), keys.iter().map(|k| k.user_id.as_str()).collect::<Vec<_>>());
    assert!(listed.iter().all(|a| a.rows >= 2), "{listed:?}");
    assert_eq!(listed.iter().map(|a| a.encrypted).collect::<Vec<_>>(), [true, false, true, false, true]);

    assert!(backend.delete_account(&keys[1].user_id, &keys[1].device_id).await.unwrap());
    assert!(!backend.delete_account(&keys[1].user_id, &keys[1].device_id).await.unwrap());
    let listed = backend.list_accounts().await.unwrap();
    assert_eq!(listed.len(), 4);
    assert!(!listed.iter().any(|a| a.user_id == keys[1].user_id));

    for (i, k) in keys.iter().enumerate() {
        let passphrase = (i % 2 == 0).then_some("p");
        let engine = Engine::open(backend.clone(), k.clone(), passphrase).await.unwrap();
        let account = engine.load_account().await.unwrap();
        if i == 1 {
            assert!(account.is_none(), "the deleted account starts afresh");
        } else {
            assert_eq!(account.expect("kept").identity_keys().curve25519.to_base64(), curves[i]);
        }
    }
}

/// The SQLite schema at version 1 exactly as the first release of the engine created it
/// (tables, then the version row), frozen here: the upgrade test starts from it.
const SCHEMA_V1_AS_RELEASED: &str = "CREATE TABLE mcn_schema (version INTEGER NOT NULL);
    CREATE TABLE mcn_accounts (
        id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        cipher BLOB,
        created_ms INTEGER NOT NULL,
        UNIQUE (user_id, device_id)
    );
    CREATE TABLE mcn_entries (
        account INTEGER NOT NULL REFERENCES mcn_accounts (id),
        kind INTEGER NOT NULL,
        key BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (account, kind, key)
    ) WITHOUT ROWID;
    INSERT INTO mcn_schema (version) VALUES (1);";

/// The tables of a database as SQLite describes them, whitespace folded.
fn tables(conn: &rusqlite::Connection) -> Vec<String> {
    let mut st = conn.prepare("SELECT sql FROM sqlite_master WHERE type = 'table' ORDER BY name").unwrap();
    let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(|r| r.unwrap().split_whitespace().collect::<Vec<_>>().join(" ")).collect()
}

#[test]
fn todays_migrations_create_version_1_as_it_was_released() {
    let released = rusqlite::Connection::open_in_memory().unwrap();
    released.execute_batch(SCHEMA_V1_AS_RELEASED).unwrap();
    let mut migrated = rusqlite::Connection::open_in_memory().unwrap();
    sqlite::migrate(&mut migrated, 1).unwrap();
    assert_eq!(tables(&migrated), tables(&released));
    assert_eq!(sqlite::version(&migrated).unwrap(), 1);
}

#[tokio::test]
async fn a_version_1_database_is_upgraded_and_keeps_its_rows() {
    let path = scratch("v1.sqlite3");
    remove_db(&path);
    let account = Account::with_device_id(user_id!("@alice:example.org"), device_id!("ALICEDEVICE"));
    let curve = account.identity_keys().curve25519.to_base64();
    {
        // What the first schema version wrote: an account and its rows, no leases table,
        // from the frozen copy of that release's schema (not from today's migration list).
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1_AS_RELEASED).unwrap();
        assert_eq!(sqlite::version(&conn).unwrap(), 1);
        conn.execute("INSERT INTO mcn_accounts (user_id, device_id, cipher, created_ms) VALUES ('@alice:example.org', 'ALICEDEVICE', NULL, 0)", [])
            .unwrap();
        let codec = Codec::new(None);
        conn.execute(
            "INSERT INTO mcn_entries (account, kind, key, value) VALUES (1, ?1, x'', ?2)",
            rusqlite::params![Kind::Account as i16, codec.seal(&account.pickle()).unwrap()],
        )
        .unwrap();
    }
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(path.clone()).await.unwrap());
    let engine = Engine::open(backend.clone(), alice(), None).await.unwrap();
    assert_eq!(engine.load_account().await.unwrap().unwrap().identity_keys().curve25519.to_base64(), curve);
    assert_eq!(engine.try_take_leased_lock(1000, "key", "me").await.unwrap(), Some(1));
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(sqlite::version(&conn).unwrap(), super::schema::current() as i64);
}

#[tokio::test]
async fn a_database_from_a_newer_release_is_refused_untouched() {
    let path = scratch("newer.sqlite3");
    remove_db(&path);
    {
        let backend = SqliteBackend::open(path.clone()).await.unwrap();
        let engine = Engine::open(Arc::new(backend), alice(), None).await.unwrap();
        engine.save_pending_changes(PendingChanges { account: Some(Account::with_device_id(user_id!("@alice:example.org"), device_id!("ALICEDEVICE"))) })
            .await
            .unwrap();
        engine.close().await.unwrap();
    }
    let future = super::schema::current() as i64 + 1;
    rusqlite::Connection::open(&path).unwrap().execute("UPDATE mcn_schema SET version = ?1", [future]).unwrap();
    let err = SqliteBackend::open(path.clone()).await.err().expect("must be refused");
    assert!(matches!(err, StoreError::Schema(ref t) if t.contains("newer")), "{err}");
    assert_eq!(sqlite::version(&rusqlite::Connection::open(&path).unwrap()).unwrap(), future);
}

#[tokio::test]
async fn a_failed_write_leaves_the_cache_as_the_database_is() {
    let path = scratch("failed-write.sqlite3");
    remove_db(&path);
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(path).await.unwrap());
    let engine = Engine::open(backend.clone(), alice(), None).await.unwrap();
    engine.set_custom_value("k", b"before".to_vec()).await.unwrap();
    engine.close().await.unwrap();
    assert!(matches!(engine.set_custom_value("k", b"after".to_vec()).await, Err(StoreError::Closed)));
    assert_eq!(engine.get_custom_value("k").await.unwrap().as_deref(), Some(&b"before"[..]));
    engine.reopen().await.unwrap();
    engine.reload().await.unwrap();
    assert_eq!(engine.get_custom_value("k").await.unwrap().as_deref(), Some(&b"before"[..]));
}

/// matrix-sdk-crypto 0.19 keeps one outgoing request per secret: a new request replaces the
/// older one. The conformance suite checks it on an open store; this checks that the replaced
/// request does not come back from the database after a reopen.
#[tokio::test]
async fn a_replaced_secret_request_stays_replaced_after_a_reopen() {
    use matrix_sdk_crypto::{store::types::Changes, GossipRequest};
    use ruma::events::secret::request::SecretName;

    let request = |id: &str, name: SecretName| GossipRequest {
        request_recipient: user_id!("@alice:example.org").to_owned(),
        request_id: id.into(),
        info: name.into(),
        sent_out: false,
    };
    {
        let engine = get_store("replaced-request", None, true).await;
        let mut first = Changes::default();
        first.key_requests.push(request("first", SecretName::RecoveryKey));
        first.key_requests.push(request("master", SecretName::CrossSigningMasterKey));
        engine.save_changes(first).await.unwrap();
        let mut second = Changes::default();
        second.key_requests.push(request("second", SecretName::RecoveryKey));
        engine.save_changes(second).await.unwrap();
        // Two requests for one secret within one batch: the later one is kept.
        let mut both = Changes::default();
        both.key_requests.push(request("third", SecretName::CrossSigningSelfSigningKey));
        both.key_requests.push(request("fourth", SecretName::CrossSigningSelfSigningKey));
        engine.save_changes(both).await.unwrap();
        engine.close().await.unwrap();
    }
    let engine = get_store("replaced-request", None, false).await;
    let found = |id: &'static str| {
        let engine = &engine;
        async move { engine.get_outgoing_secret_requests(id.into()).await.unwrap().is_some() }
    };
    assert!(!found("first").await, "the replaced request came back");
    assert!(found("second").await);
    assert!(found("master").await, "a request for another secret is kept");
    assert!(!found("third").await, "the earlier request of one batch came back");
    assert!(found("fourth").await);
}
