//! The withheld layer's writes ride in the crate's transactions on our store engine, so a
//! crash cannot leave one without the other.
//!
//! The case: Alice shares with a device that has no Olm session while her policy sends no
//! `m.no_olm`. The crate sets its once-only flag on the device (it never names it again) and
//! the ledger records the suppressed notice (so it knows the device and can re-arm it). The
//! test "crashes" the process before each of the share's transactions in turn (the backend
//! refuses that one and every later one), reopens the database, and checks that the flag and
//! the ledger entry are either both there or both missing.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use async_trait::async_trait;
use matrix_sdk_crypto::{store::CryptoStore, EncryptionSettings, OlmMachineBuilder};
use ruma::{OwnedUserId, RoomId, UserId};

use super::{Device, Server, ALICE, BOB};
use crate::{
    store::{
        backend::{AccountRow, AccountSummary, Backend, Op},
        codec::Kind,
        engine::{AccountKey, Engine},
        error::{Result, StoreError},
        sqlite::SqliteBackend,
    },
    withheld::{policy::SendPolicy, Withheld},
};

/// A backend whose process dies before transaction number `crash_at`: that write and every
/// later one never reach the database.
struct Crashing {
    inner: Arc<dyn Backend>,
    done: AtomicUsize,
    crash_at: AtomicUsize,
    /// The kinds written by each transaction that committed.
    log: Mutex<Vec<Vec<Kind>>>,
}

#[async_trait]
impl Backend for Crashing {
    async fn find_account(&self, user_id: &str, device_id: &str) -> Result<Option<AccountRow>> {
        self.inner.find_account(user_id, device_id).await
    }
    async fn create_account(&self, user_id: &str, device_id: &str, cipher: Option<Vec<u8>>) -> Result<AccountRow> {
        self.inner.create_account(user_id, device_id, cipher).await
    }
    async fn load(&self, account: i64) -> Result<Vec<(Kind, Vec<u8>)>> {
        self.inner.load(account).await
    }
    async fn write(&self, account: i64, ops: Vec<Op>) -> Result<()> {
        if self.done.load(Ordering::SeqCst) >= self.crash_at.load(Ordering::SeqCst) {
            return Err(StoreError::Pool("the process died here (test)".into()));
        }
        let kinds = ops.iter().map(|op| match op {
            Op::Put { kind, .. } | Op::Delete { kind, .. } => *kind,
        });
        let kinds: Vec<Kind> = kinds.collect();
        self.inner.write(account, ops).await?;
        self.log.lock().unwrap().push(kinds);
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn try_take_lease(&self, account: i64, key: &str, holder: &str, lease_ms: u32) -> Result<Option<u64>> {
        self.inner.try_take_lease(account, key, holder, lease_ms).await
    }
    async fn list_accounts(&self) -> Result<Vec<AccountSummary>> {
        self.inner.list_accounts().await
    }
    async fn delete_account(&self, user_id: &str, device_id: &str) -> Result<bool> {
        self.inner.delete_account(user_id, device_id).await
    }
    async fn attach(&self) -> Result<()> {
        self.inner.attach().await
    }
    async fn detach(&self) -> Result<()> {
        self.inner.detach().await
    }
    async fn size(&self) -> Result<Option<usize>> {
        self.inner.size().await
    }
}

fn alice_key() -> AccountKey {
    AccountKey { user_id: ALICE.into(), device_id: "ALICE".into() }
}

fn database(name: &str) -> std::path::PathBuf {
    let path = crate::store::tests::scratch(&format!("{name}.sqlite3"));
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    path
}

/// What the database holds after the share: the crate's flag on Bob's device, and whether the
/// ledger has Bob's device.
async fn stored_state(path: &std::path::Path) -> (bool, bool) {
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(path.to_path_buf()).await.expect("reopen"));
    let engine = Engine::open(backend, alice_key(), None).await.expect("reopen the engine");
    let bob = UserId::parse(BOB).unwrap();
    let flag = engine.get_device(&bob, "BOB".into()).await.expect("device").expect("Bob's device is stored").was_withheld_code_sent();
    let machine = OlmMachineBuilder::new(&UserId::parse(ALICE).unwrap(), "ALICE".into()).with_crypto_store(engine).build().await.expect("machine");
    let withheld = Withheld::new(SendPolicy::default(), true);
    let ledger = withheld.no_olm_state(&machine, BOB, "BOB").await.expect("ledger").is_some();
    (flag, ledger)
}

/// Alice (on the engine, SQLite) shares with Bob's device, which has no one-time keys left, her
/// policy sending no notices; the process dies before the share's transaction number
/// `crash_at` (none: it lives). Returns the transactions the share committed and the kinds
/// each one wrote.
async fn share(path: &std::path::Path, crash_at: Option<usize>) -> (usize, Vec<Vec<Kind>>) {
    let sqlite: Arc<dyn Backend> = Arc::new(SqliteBackend::open(path.to_path_buf()).await.expect("open"));
    let backend = Arc::new(Crashing { inner: sqlite, done: AtomicUsize::new(0), crash_at: AtomicUsize::new(usize::MAX), log: Mutex::new(Vec::new()) });
    let engine = Engine::open(backend.clone(), alice_key(), None).await.expect("engine");
    let server = Mutex::new(Server::default());
    let alice = Device::on_store(&server, ALICE, "ALICE", engine).await;
    let _bob = Device::new(&server, BOB, "BOB").await;
    alice.track(&server, &[ALICE, BOB]).await;
    server.lock().unwrap().exhaust(BOB, "BOB");
    alice.withheld.set_policy(serde_json::from_str(r#"{"send":"none"}"#).expect("policy"));

    let before = backend.done.load(Ordering::SeqCst);
    let logged = backend.log.lock().unwrap().len();
    if let Some(k) = crash_at {
        backend.crash_at.store(before + k, Ordering::SeqCst);
    }
    let room = RoomId::parse("!room:example.org").unwrap();
    let users: Vec<OwnedUserId> = [ALICE, BOB].iter().map(|u| UserId::parse(*u).unwrap()).collect();
    let outcome = alice.withheld.share_room_key(&alice.machine, &room, &users, EncryptionSettings::default(), None).await;
    if crash_at.is_none() {
        let outcome = outcome.unwrap_or_else(|e| panic!("share: {e}"));
        assert!(outcome.withheld.iter().any(|w| w.user_id == BOB && w.code == "m.no_olm" && !w.sent), "Bob's m.no_olm is suppressed");
    }
    let log = backend.log.lock().unwrap()[logged..].to_vec();
    (backend.done.load(Ordering::SeqCst) - before, log)
}

#[tokio::test]
async fn the_ledger_and_the_crates_no_olm_flag_are_saved_in_one_transaction() {
    let path = database("batch-share");
    let (transactions, log) = share(&path, None).await;
    assert_eq!(stored_state(&path).await, (true, true), "both saved when nothing crashes");
    // The ledger's two values (Bob's entry and the index of users) are in the transaction that
    // saves Bob's device with the flag, not in one of their own.
    let custom: Vec<&Vec<Kind>> = log.iter().filter(|k| k.contains(&Kind::Custom)).collect();
    assert_eq!(custom.len(), 1, "one transaction writes custom values: {log:?}");
    assert!(custom[0].contains(&Kind::Device), "together with the device: {log:?}");

    for k in 0..transactions {
        let path = database(&format!("batch-share-crash-{k}"));
        share(&path, Some(k)).await;
        let (flag, ledger) = stored_state(&path).await;
        assert_eq!(flag, ledger, "crash before transaction {k} of {transactions}: crate flag {flag}, ledger entry {ledger}");
    }
}

#[tokio::test]
async fn a_batched_value_is_read_back_before_it_is_written_and_dropped_with_a_failed_call() {
    let path = database("batch-held");
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(path.clone()).await.expect("open"));
    let engine = Engine::open(backend.clone(), alice_key(), None).await.expect("engine");

    // Held: read back in the task, not in the database until the batch ends.
    let dyn_store = matrix_sdk_crypto::store::IntoCryptoStore::into_crypto_store(engine);
    let seen = crate::store::batch::batched(
        &*dyn_store,
        async {
            dyn_store.set_custom_value("k", b"v".to_vec()).await.map_err(|e| StoreError::Encode(e.to_string()))?;
            let fresh = Engine::open(backend.clone(), alice_key(), None).await?;
            assert_eq!(fresh.get_custom_value("k").await?, None, "not written while held");
            Ok::<_, StoreError>(dyn_store.get_custom_value("k").await.map_err(|e| StoreError::Encode(e.to_string()))?)
        },
        |e| StoreError::Encode(e.to_string()),
    )
    .await
    .unwrap();
    assert_eq!(seen, Some(b"v".to_vec()), "read back inside the batch");
    let fresh = Engine::open(backend.clone(), alice_key(), None).await.unwrap();
    assert_eq!(fresh.get_custom_value("k").await.unwrap(), Some(b"v".to_vec()), "written when the batch ended");

    // A batch that fails writes nothing it held, and the cache does not pretend it did.
    let failed = crate::store::batch::batched(
        &*dyn_store,
        async {
            dyn_store.set_custom_value("gone", b"x".to_vec()).await.map_err(|e| StoreError::Encode(e.to_string()))?;
            Err::<(), _>(StoreError::Encode("the call failed".into()))
        },
        |e| StoreError::Encode(e.to_string()),
    )
    .await;
    assert!(failed.is_err());
    assert_eq!(dyn_store.get_custom_value("gone").await.unwrap(), None);
    let fresh = Engine::open(backend, alice_key(), None).await.unwrap();
    assert_eq!(fresh.get_custom_value("gone").await.unwrap(), None);
}

/// The kinds each transaction of a share wrote, Bob's device having an Olm session: through the
/// withheld layer, or straight through the crate.
async fn share_with_session(name: &str, through_layer: bool) -> Vec<Vec<Kind>> {
    let path = database(name);
    let sqlite: Arc<dyn Backend> = Arc::new(SqliteBackend::open(path).await.expect("open"));
    let backend = Arc::new(Crashing { inner: sqlite, done: AtomicUsize::new(0), crash_at: AtomicUsize::new(usize::MAX), log: Mutex::new(Vec::new()) });
    let engine = Engine::open(backend.clone(), alice_key(), None).await.expect("engine");
    let server = Mutex::new(Server::default());
    let alice = Device::on_store(&server, ALICE, "ALICE", engine).await;
    let _bob = Device::new(&server, BOB, "BOB").await;
    // A first share claims Bob's one-time key and makes the Olm session.
    alice.share(&server, "!first:example.org", &[ALICE, BOB], EncryptionSettings::default()).await;
    let logged = backend.log.lock().unwrap().len();
    let room = RoomId::parse("!room:example.org").unwrap();
    let users: Vec<OwnedUserId> = [ALICE, BOB].iter().map(|u| UserId::parse(*u).unwrap()).collect();
    let requests = if through_layer {
        alice.withheld.share_room_key(&alice.machine, &room, &users, EncryptionSettings::default(), None).await.expect("share").requests
    } else {
        let r = alice.machine.share_room_key(&room, users.iter().map(|u| u.as_ref()), EncryptionSettings::default()).await.expect("share");
        r.iter().map(|r| (**r).clone()).collect()
    };
    assert_eq!(requests.len(), 1, "the room key for Bob");
    let log = backend.log.lock().unwrap()[logged..].to_vec();
    log
}

#[tokio::test]
async fn a_share_over_olm_sessions_writes_what_the_crate_writes_and_nothing_more() {
    let layer = share_with_session("batch-layer", true).await;
    let bare = share_with_session("batch-bare", false).await;
    assert_eq!(layer, bare, "the withheld layer adds no transaction and no row kind to such a share");
    assert!(layer.iter().all(|k| !k.contains(&Kind::Custom)), "{layer:?}");
}
