//! The engine stores outbound group sessions in parts (`store/outbound.rs`): what a message or
//! a share writes, and that a reopened store has the whole session back.

use std::sync::{Arc, Mutex};

use matrix_sdk_crypto::{
    olm::PickledOutboundGroupSession,
    store::CryptoStore,
    EncryptionSettings,
};
use ruma::{RoomId, UserId};

use super::{
    backend::{Backend, Op},
    codec::{Codec, Kind},
    engine::{pair, AccountKey, Engine},
    outbound::{SharedChunk, StoredRequest, MAX_CHUNKS},
    sqlite::SqliteBackend,
};
use crate::withheld::tests::{Device, Server, ALICE};

const ROOM: &str = "!room:example.org";

fn alice_key() -> AccountKey {
    AccountKey { user_id: ALICE.into(), device_id: "ALICE".into() }
}

async fn backend(name: &str) -> Arc<dyn Backend> {
    let path = super::tests::scratch(&format!("{name}.sqlite3"));
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    Arc::new(SqliteBackend::open(path).await.expect("open"))
}

fn member(i: usize) -> String {
    format!("@member{i}:example.org")
}

/// Alice on the engine (no passphrase: rows are plain JSON), and `n` members with one device each.
async fn setup(backend: &Arc<dyn Backend>, n: usize) -> (Mutex<Server>, Arc<Engine>, Device, Vec<Device>) {
    let server = Mutex::new(Server::default());
    let engine = Arc::new(Engine::open(backend.clone(), alice_key(), None).await.expect("engine"));
    let alice = Device::on_store(&server, ALICE, "ALICE", engine.clone()).await;
    let mut members = Vec::new();
    for i in 0..n {
        members.push(Device::new(&server, &member(i), "PHONE").await);
    }
    (server, engine, alice, members)
}

/// The account's rows of `kind`, as JSON.
async fn rows(backend: &Arc<dyn Backend>, engine: &Engine, kind: Kind) -> Vec<serde_json::Value> {
    let all = backend.load(engine.account_id()).await.expect("load");
    all.into_iter().filter(|(k, _)| *k == kind).map(|(_, v)| serde_json::from_slice(&v).expect("plain JSON")).collect()
}

fn devices_in(set: &serde_json::Value) -> usize {
    set.as_object().map(|users| users.values().map(|d| d.as_object().map_or(0, |d| d.len())).sum()).unwrap_or(0)
}

#[tokio::test]
async fn a_message_writes_the_sessions_own_row_only() {
    let backend = backend("outbound-message").await;
    let (server, engine, alice, _members) = setup(&backend, 20).await;
    let everyone: Vec<String> = (0..20).map(member).chain([ALICE.to_owned()]).collect();
    let names: Vec<&str> = everyone.iter().map(String::as_str).collect();
    alice.share(&server, ROOM, &names, EncryptionSettings::default()).await;

    let row = &rows(&backend, &engine, Kind::OutboundGroupSession).await[0];
    assert_eq!(devices_in(&row["shared_with_set"]), 0, "the set is not in the session's row");
    assert_eq!(row["requests"], serde_json::json!({}), "the share's requests were marked sent and are gone");
    let chunks = rows(&backend, &engine, Kind::OutboundShared).await;
    assert_eq!(chunks.iter().map(|c| devices_in(&c["entries"])).sum::<usize>(), 20, "the 20 member devices are in chunks");
    assert!(rows(&backend, &engine, Kind::OutboundRequest).await.is_empty(), "no request is pending");

    let before = rows(&backend, &engine, Kind::OutboundShared).await;
    alice.encrypt(ROOM, "one message").await;
    alice.encrypt(ROOM, "two messages").await;
    assert_eq!(rows(&backend, &engine, Kind::OutboundShared).await, before, "messages write no chunk");
    let row = &rows(&backend, &engine, Kind::OutboundGroupSession).await[0];
    assert_eq!(row["message_count"], serde_json::json!(super::outbound::BEHIND), "the session's row is the marker (see the tests below)");
}

#[tokio::test]
async fn a_reopened_store_has_the_whole_set_and_shares_nothing_again() {
    let backend = backend("outbound-reopen").await;
    let (server, engine, alice, members) = setup(&backend, MAX_CHUNKS as usize + 3).await;
    // One more member per share: each share adds a chunk, until the set is written whole again.
    let mut names = vec![ALICE.to_owned()];
    for i in 0..members.len() {
        names.push(member(i));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let outcome = alice.share(&server, ROOM, &refs, EncryptionSettings::default()).await;
        assert_eq!(outcome.requests.iter().map(|r| r.message_count()).sum::<usize>(), 1, "share {i} reaches the new member only");
        let chunks = rows(&backend, &engine, Kind::OutboundShared).await;
        assert!(chunks.len() <= MAX_CHUNKS as usize, "at most {MAX_CHUNKS} chunks, got {}", chunks.len());
    }
    let stored: Vec<serde_json::Value> = rows(&backend, &engine, Kind::OutboundShared).await;
    assert!(stored.len() < members.len(), "the set was compacted on the way: {} chunks for {} shares", stored.len(), members.len());
    let event = alice.encrypt(ROOM, "before the restart").await;
    engine.close().await.expect("close");
    drop(alice);
    drop(engine);

    let engine = Arc::new(Engine::open(backend.clone(), alice_key(), None).await.expect("reopen"));
    let session = engine.get_outbound_group_session(RoomId::parse(ROOM).unwrap().as_ref()).await.unwrap().expect("session");
    let pickle: PickledOutboundGroupSession = session.pickle().await;
    assert_eq!(pickle.shared_with_set.values().map(|d| d.len()).sum::<usize>(), members.len(), "every member device is back in the set");
    assert_eq!(pickle.message_count, 1);
    let server_again = server;
    let alice = Device::on_store(&server_again, ALICE, "ALICE", engine.clone()).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let outcome = alice.share(&server_again, ROOM, &refs, EncryptionSettings::default()).await;
    assert!(outcome.requests.is_empty(), "nobody gets the key again after the restart");
    for m in &members {
        m.sync(&server_again).await;
        assert_eq!(m.decrypt(&event).await.as_deref(), Ok("before the restart"), "{} decrypts", m.user());
    }
}

#[tokio::test]
async fn pending_requests_are_rows_of_their_own_until_sent() {
    let backend = backend("outbound-pending").await;
    let (server, engine, alice, _members) = setup(&backend, 3).await;
    let names = [ALICE.to_owned(), member(0), member(1), member(2)];
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    alice.track(&server, &refs).await;
    let ids: Vec<ruma::OwnedUserId> = refs.iter().map(|u| UserId::parse(*u).unwrap()).collect();
    let (id, claim) = alice.machine.get_missing_sessions(ids.iter().map(|u| u.as_ref())).await.unwrap().expect("claim");
    let body = server.lock().unwrap().claim(ALICE, "ALICE", &serde_json::to_value(&claim.one_time_keys).unwrap());
    let parsed: ruma::api::client::keys::claim_keys::v3::Response = crate::withheld::tests::response(&body);
    alice.machine.mark_request_as_sent(&id, &parsed).await.unwrap();
    let room = RoomId::parse(ROOM).unwrap();
    let requests = alice.machine.share_room_key(&room, ids.iter().map(|u| u.as_ref()), EncryptionSettings::default()).await.unwrap();
    assert!(!requests.is_empty());

    let pending = rows(&backend, &engine, Kind::OutboundRequest).await;
    assert_eq!(pending.len(), requests.len(), "one row per pending request");
    assert_eq!(devices_in(&rows(&backend, &engine, Kind::OutboundGroupSession).await[0]["requests"]), 0);
    // Reopened before anything was sent: the pending requests are in the session again.
    {
        let fresh = Engine::open(backend.clone(), alice_key(), None).await.expect("second engine");
        let pickle = fresh.get_outbound_group_session(&room).await.unwrap().expect("session").pickle().await;
        assert_eq!(pickle.requests.len(), requests.len(), "the pending requests came back");
    }
    for r in &requests {
        alice
            .machine
            .mark_request_as_sent(&r.txn_id, &ruma::api::client::to_device::send_event_to_device::v3::Response::new())
            .await
            .unwrap();
    }
    assert!(rows(&backend, &engine, Kind::OutboundRequest).await.is_empty(), "sent requests' rows are deleted");
    let chunks = rows(&backend, &engine, Kind::OutboundShared).await;
    assert_eq!(chunks.iter().map(|c| devices_in(&c["entries"])).sum::<usize>(), 3, "the sent devices are in the set's chunks");
}

#[tokio::test]
async fn a_row_written_before_the_split_loads_whole_and_is_split_when_saved() {
    let backend = backend("outbound-legacy").await;
    let (server, engine, alice, _members) = setup(&backend, 2).await;
    let names = [ALICE.to_owned(), member(0), member(1)];
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    alice.share(&server, ROOM, &refs, EncryptionSettings::default()).await;
    let room = RoomId::parse(ROOM).unwrap();
    let whole = engine.get_outbound_group_session(&room).await.unwrap().expect("session").pickle().await;
    assert_eq!(whole.shared_with_set.values().map(|d| d.len()).sum::<usize>(), 2);
    drop(alice);
    drop(engine);

    // Put the store back as a release before the split wrote it: one row with the whole set.
    let codec = Codec::new(None);
    let account = Engine::open(backend.clone(), alice_key(), None).await.unwrap().account_id();
    let mut ops: Vec<Op> = Vec::new();
    for (kind, value) in backend.load(account).await.unwrap() {
        let key = match kind {
            Kind::OutboundShared => {
                let c: SharedChunk = serde_json::from_slice(&value).unwrap();
                pair(c.room_id.as_str(), &c.index.to_string())
            }
            Kind::OutboundRequest => {
                let r: StoredRequest = serde_json::from_slice(&value).unwrap();
                pair(r.room_id.as_str(), r.request_id.as_str())
            }
            _ => continue,
        };
        ops.push(Op::Delete { kind, key: codec.key(kind, &key) });
    }
    ops.push(Op::Put { kind: Kind::OutboundGroupSession, key: codec.key(Kind::OutboundGroupSession, ROOM.as_bytes()), value: codec.seal_json(&whole).unwrap() });
    backend.write(account, ops).await.unwrap();

    let engine = Arc::new(Engine::open(backend.clone(), alice_key(), None).await.expect("reopen"));
    assert!(rows(&backend, &engine, Kind::OutboundShared).await.is_empty());
    let pickle = engine.get_outbound_group_session(&room).await.unwrap().expect("session").pickle().await;
    assert_eq!(pickle.shared_with_set.values().map(|d| d.len()).sum::<usize>(), 2, "the old row loads with its set");
    let alice = Device::on_store(&server, ALICE, "ALICE", engine.clone()).await;
    alice.encrypt(ROOM, "after the upgrade").await;
    let row = &rows(&backend, &engine, Kind::OutboundGroupSession).await[0];
    assert_eq!(devices_in(&row["shared_with_set"]), 0, "saved again, the row is split");
    let chunks = rows(&backend, &engine, Kind::OutboundShared).await;
    assert_eq!(chunks.iter().map(|c| devices_in(&c["entries"])).sum::<usize>(), 2);
}

/// The backend's write batches, as they reach the database.
struct Recording {
    inner: Arc<dyn Backend>,
    writes: Mutex<Vec<Vec<Op>>>,
}

impl Recording {
    fn take(&self) -> Vec<Vec<Op>> {
        std::mem::take(&mut *self.writes.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Backend for Recording {
    async fn find_account(&self, user_id: &str, device_id: &str) -> super::error::Result<Option<super::backend::AccountRow>> {
        self.inner.find_account(user_id, device_id).await
    }
    async fn create_account(&self, user_id: &str, device_id: &str, cipher: Option<Vec<u8>>) -> super::error::Result<super::backend::AccountRow> {
        self.inner.create_account(user_id, device_id, cipher).await
    }
    async fn load(&self, account: i64) -> super::error::Result<Vec<(Kind, Vec<u8>)>> {
        self.inner.load(account).await
    }
    async fn write(&self, account: i64, ops: Vec<Op>) -> super::error::Result<()> {
        self.writes.lock().unwrap().push(ops.clone());
        self.inner.write(account, ops).await
    }
    async fn try_take_lease(&self, account: i64, key: &str, holder: &str, lease_ms: u32) -> super::error::Result<Option<u64>> {
        self.inner.try_take_lease(account, key, holder, lease_ms).await
    }
    async fn list_accounts(&self) -> super::error::Result<Vec<super::backend::AccountSummary>> {
        self.inner.list_accounts().await
    }
    async fn delete_account(&self, user_id: &str, device_id: &str) -> super::error::Result<bool> {
        self.inner.delete_account(user_id, device_id).await
    }
    async fn attach(&self) -> super::error::Result<()> {
        self.inner.attach().await
    }
    async fn detach(&self) -> super::error::Result<()> {
        self.inner.detach().await
    }
    async fn size(&self) -> super::error::Result<Option<usize>> {
        self.inner.size().await
    }
}

/// The Megolm message index of an encrypted room event (the ciphertext's first field).
fn megolm_index(event: &serde_json::Value) -> (String, u32) {
    use base64::Engine as _;
    let text = event["content"]["ciphertext"].as_str().expect("ciphertext");
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(text.trim_end_matches('=')).expect("base64");
    assert_eq!((bytes[0], bytes[1]), (3, 0x08), "a Megolm v1 message starts with its version and the index field");
    let (mut index, mut shift, mut at) = (0u32, 0, 2);
    loop {
        let b = bytes[at];
        index |= u32::from(b & 0x7f) << shift;
        at += 1;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    (event["content"]["session_id"].as_str().expect("session id").to_owned(), index)
}

/// The stored session row of `ROOM`, as JSON.
async fn session_row(backend: &Arc<dyn Backend>, engine: &Engine) -> serde_json::Value {
    let mut rows = rows(backend, engine, Kind::OutboundGroupSession).await;
    assert_eq!(rows.len(), 1, "one room, one session row");
    rows.remove(0)
}

fn is_marker(row: &serde_json::Value) -> bool {
    row["message_count"] == serde_json::json!(super::outbound::BEHIND)
}

/// Alice shares with `n` members through a recording backend.
async fn shared_room(name: &str, n: usize) -> (Arc<Recording>, Arc<dyn Backend>, Mutex<Server>, Arc<Engine>, Device, Vec<Device>, Vec<String>) {
    let recording = Arc::new(Recording { inner: backend(name).await, writes: Mutex::new(Vec::new()) });
    let backend: Arc<dyn Backend> = recording.clone();
    let (server, engine, alice, members) = setup(&backend, n).await;
    let names: Vec<String> = (0..n).map(member).chain([ALICE.to_owned()]).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    alice.share(&server, ROOM, &refs, EncryptionSettings::default()).await;
    (recording, backend, server, engine, alice, members, names)
}

#[tokio::test]
async fn a_message_after_a_full_save_writes_the_marker_once_and_later_messages_write_nothing() {
    let (recording, backend, _server, engine, alice, _members, _names) = shared_room("outbound-marker", 5).await;
    let full = session_row(&backend, &engine).await;
    assert!(!is_marker(&full), "the share saved the session whole");
    recording.take();

    alice.encrypt(ROOM, "first").await;
    let writes = recording.take();
    assert_eq!(writes.len(), 1, "the first message writes once");
    assert_eq!(writes[0].len(), 1, "one row: {:?}", writes[0]);
    assert!(matches!(&writes[0][0], Op::Put { kind: Kind::OutboundGroupSession, .. }));
    let marker = session_row(&backend, &engine).await;
    assert!(is_marker(&marker), "the row is now the marker");
    assert_eq!(marker["invalidated"], true, "an older release that reads it refuses the session too");
    assert_eq!(marker["pickle"], full["pickle"], "the marker is the row as last written whole");

    for i in 0..5 {
        alice.encrypt(ROOM, &format!("message {i}")).await;
    }
    assert!(recording.take().is_empty(), "later messages write nothing");
}

#[tokio::test]
async fn a_clean_close_writes_the_session_whole_and_a_reopen_keeps_it() {
    let (_recording, backend, server, engine, alice, members, names) = shared_room("outbound-close", 3).await;
    let mut events = Vec::new();
    for i in 0..4 {
        events.push(alice.encrypt(ROOM, &format!("message {i}")).await);
    }
    assert!(is_marker(&session_row(&backend, &engine).await));
    engine.close().await.expect("close");
    drop(alice);
    drop(engine);

    let engine = Arc::new(Engine::open(backend.clone(), alice_key(), None).await.expect("reopen"));
    let row = session_row(&backend, &engine).await;
    assert!(!is_marker(&row), "close replaced the marker");
    assert_eq!(row["message_count"], 4);
    let alice = Device::on_store(&server, ALICE, "ALICE", engine.clone()).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let outcome = alice.share(&server, ROOM, &refs, EncryptionSettings::default()).await;
    assert!(outcome.requests.is_empty(), "no rotation: nobody gets a new key");
    events.push(alice.encrypt(ROOM, "after the reopen").await);
    let indices: Vec<(String, u32)> = events.iter().map(megolm_index).collect();
    assert!(indices.iter().all(|(s, _)| *s == indices[0].0), "one session throughout: {indices:?}");
    assert_eq!(indices.iter().map(|(_, i)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    for m in &members {
        m.sync(&server).await;
        for e in &events {
            assert!(m.decrypt(e).await.is_ok(), "{} decrypts {}", m.user(), e["event_id"]);
        }
    }
}

#[tokio::test]
async fn after_a_crash_the_room_key_rotates_and_no_index_is_used_twice() {
    let (_recording, backend, server, engine, alice, members, names) = shared_room("outbound-crash", 3).await;
    let mut events = Vec::new();
    for i in 0..6 {
        events.push(alice.encrypt(ROOM, &format!("before {i}")).await);
    }
    // The process dies: no close, the rows stay as the messages left them.
    drop(alice);
    drop(engine);

    let engine = Arc::new(Engine::open(backend.clone(), alice_key(), None).await.expect("reopen"));
    let room = RoomId::parse(ROOM).unwrap();
    assert!(engine.get_outbound_group_session(&room).await.unwrap().is_none(), "the session behind the marker is not loaded");
    let alice = Device::on_store(&server, ALICE, "ALICE", engine.clone()).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let outcome = alice.share(&server, ROOM, &refs, EncryptionSettings::default()).await;
    assert_eq!(outcome.requests.iter().map(|r| r.message_count()).sum::<usize>(), members.len(), "the new room key goes to every member device");
    for i in 0..3 {
        events.push(alice.encrypt(ROOM, &format!("after {i}")).await);
    }
    let indices: Vec<(String, u32)> = events.iter().map(megolm_index).collect();
    let distinct: std::collections::BTreeSet<&(String, u32)> = indices.iter().collect();
    assert_eq!(distinct.len(), indices.len(), "a (session, index) pair was used twice: {indices:?}");
    assert_ne!(indices[0].0, indices[6].0, "the room key rotated");
    for m in &members {
        m.sync(&server).await;
        for e in &events {
            assert!(m.decrypt(e).await.is_ok(), "{} decrypts {}", m.user(), e["event_id"]);
        }
    }

    // The new session's share saved it whole: a second crash right after its messages loses
    // nothing more than its own rotation, and a crash before any message keeps it.
    drop(alice);
    drop(engine);
    let engine = Arc::new(Engine::open(backend.clone(), alice_key(), None).await.expect("third open"));
    assert!(engine.get_outbound_group_session(&room).await.unwrap().is_none(), "messages after the share: dropped again");
}

#[tokio::test]
async fn a_share_after_messages_saves_the_session_whole_again() {
    let (recording, backend, server, engine, alice, _members, mut names) = shared_room("outbound-share-after", 2).await;
    for i in 0..3 {
        alice.encrypt(ROOM, &format!("message {i}")).await;
    }
    assert!(is_marker(&session_row(&backend, &engine).await));
    let late = Device::new(&server, &member(9), "PHONE").await;
    names.push(member(9));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    recording.take();
    let outcome = alice.share(&server, ROOM, &refs, EncryptionSettings::default()).await;
    assert_eq!(outcome.requests.iter().map(|r| r.message_count()).sum::<usize>(), 1, "only the new member gets the key");
    let row = session_row(&backend, &engine).await;
    assert!(!is_marker(&row), "the share wrote the row whole");
    assert_eq!(row["message_count"], 3);
    let event = alice.encrypt(ROOM, "to everyone").await;
    assert!(is_marker(&session_row(&backend, &engine).await), "the next message leaves the marker again");
    drop(alice);
    drop(engine);

    // A crash now: the session rotates, and the late member still reads what was sent.
    let engine = Arc::new(Engine::open(backend.clone(), alice_key(), None).await.expect("reopen"));
    assert!(engine.get_outbound_group_session(&RoomId::parse(ROOM).unwrap()).await.unwrap().is_none());
    late.sync(&server).await;
    assert_eq!(late.decrypt(&event).await.as_deref(), Ok("to everyone"));
}

#[tokio::test]
async fn a_crash_right_after_a_share_keeps_the_session() {
    let (_recording, backend, server, engine, alice, _members, names) = shared_room("outbound-crash-after-share", 2).await;
    let session_id = engine.get_outbound_group_session(&RoomId::parse(ROOM).unwrap()).await.unwrap().expect("session").session_id().to_owned();
    drop(alice);
    drop(engine);
    let engine = Arc::new(Engine::open(backend.clone(), alice_key(), None).await.expect("reopen"));
    let alice = Device::on_store(&server, ALICE, "ALICE", engine.clone()).await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(alice.share(&server, ROOM, &refs, EncryptionSettings::default()).await.requests.is_empty(), "no message since the last full save: no rotation");
    let (used, index) = megolm_index(&alice.encrypt(ROOM, "first").await);
    assert_eq!((used.as_str(), index), (session_id.as_str(), 0));
}
