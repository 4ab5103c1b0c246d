//! The store engine: the crate's `CryptoStore` over any [`Backend`], with every read answered
//! from memory.
//!
//! # Why a full write-through cache
//! Counting the engine's calls in the benchmark's Rust scenario (`bench/rust`, N = 1,000
//! recipient devices) shows what the crate asks of a store. The keys/query response: per device
//! one `get_device`, one `get_user_devices`, one `get_user_identity` and one
//! `get_inbound_group_sessions_for_device_batch` (1,001 of each), and 5 `save_changes`. The
//! keys/claim response: per device `get_device`, `get_own_device`, `get_sessions` and
//! `get_user_devices`, and 2 `save_changes`. Each share: per user `get_user_devices` and
//! `get_user_identity`, and 6 or 7 `save_changes`. On the crate's SQLite store each of those reads
//! is a query on a pooled connection, run on the blocking thread pool (its keys/query took 10x
//! the memory store's in that run). So the engine keeps the whole account in memory, in the crate's own [`MemoryStore`]
//! (the reference the targets are measured against, and a store that passes the crate's
//! conformance suite), and the database only ever sees:
//! - one scan of the account's rows when the store opens (and when [`Engine::reload`] is asked
//!   to drop what another process may have changed);
//! - one transaction per `save_changes` (and per the few other writing calls), committed
//!   *before* the cache is updated: a failed write leaves the cache as it was, and a write
//!   the caller saw succeed is on disk.
//!
//! The costs: memory (the account's rows are held in memory as the memory store holds them,
//! pickles as JSON, which is what a machine on the memory store holds too), and every saved Olm
//! session and inbound group session is pickled twice, once for the database and once more by
//! the memory store, which takes sessions only as objects. Outbound group sessions, which the
//! crate saves whole after every message and every sent request of a share, are written in
//! parts (see [`outbound`]), so each save costs what changed.
//!
//! # Where the memory store's behaviour is not a persistent store's
//! `MemoryStore::save_changes` replaces the private cross-signing identity with whatever the
//! changes carry, `None` included, and `save_pending_changes` replaces the account with `None`
//! when none is given; a persistent store keeps what it has. The engine passes the current
//! values on in those cases, so the cache always equals what a reload would read.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use async_trait::async_trait;
use matrix_sdk_common::cross_process_lock::CrossProcessLockGeneration;
use matrix_sdk_crypto::{
    olm::{
        InboundGroupSession, OlmMessageHash, OutboundGroupSession, PickledAccount,
        PickledCrossSigningIdentity, PickledInboundGroupSession, PickledOutboundGroupSession, PickledSession,
        PrivateCrossSigningIdentity, SenderDataType, Session, StaticAccountData,
    },
    store::{
        types::{
            BackupDecryptionKey, BackupKeys, Changes, DehydratedDeviceKey, PendingChanges,
            RoomKeyCounts, RoomKeyWithheldEntry, RoomPendingKeyBundleDetails, RoomSettings,
            SecretsInboxItem, StoredRoomKeyBundleData, TrackedUser,
        },
        CryptoStore, MemoryStore,
    },
    vodozemac::Curve25519PublicKey,
    Account, DeviceData, GossipRequest, SecretInfo, UserIdentityData,
};
use matrix_sdk_store_encryption::StoreCipher;
use ruma::{
    events::secret::request::SecretName, DeviceId, OwnedDeviceId, OwnedRoomId,
    RoomId, TransactionId, UserId,
};
use zeroize::Zeroizing;

use super::{
    backend::{Backend, Op},
    batch,
    codec::{custom_value, parse_custom_value, Codec, Kind},
    error::{Result, StoreError},
    outbound::{self, Part, Parts, WrittenMap},
};

/// The account a store is opened for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountKey {
    pub user_id: String,
    pub device_id: String,
}

/// `a` and `b` as one unambiguous key: `a`'s length, `a`, then `b`.
pub(super) fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + a.len() + b.len());
    out.extend_from_slice(&(a.len() as u32).to_le_bytes());
    out.extend_from_slice(a.as_bytes());
    out.extend_from_slice(b.as_bytes());
    out
}

/// The writes of one call, at most one per `(kind, key)` (the last one wins, as it would in
/// the cache).
struct Batch<'a> {
    codec: &'a Codec,
    ops: BTreeMap<(Kind, Vec<u8>), Option<Vec<u8>>>,
}

impl<'a> Batch<'a> {
    fn new(codec: &'a Codec) -> Self {
        Self { codec, ops: BTreeMap::new() }
    }

    fn put(&mut self, kind: Kind, key: &[u8], value: Vec<u8>) {
        self.ops.insert((kind, self.codec.key(kind, key)), Some(value));
    }

    fn delete(&mut self, kind: Kind, key: &[u8]) {
        self.ops.insert((kind, self.codec.key(kind, key)), None);
    }

    fn into_ops(self) -> Vec<Op> {
        self.ops
            .into_iter()
            .map(|((kind, key), value)| match value {
                Some(value) => Op::Put { kind, key, value },
                None => Op::Delete { kind, key },
            })
            .collect()
    }
}

/// How an account's passphrase is turned into a stored cipher. Tests export with few KDF
/// rounds; the conformance suites open hundreds of stores.
fn export_cipher(cipher: &StoreCipher, passphrase: &str) -> Result<Vec<u8>> {
    #[cfg(test)]
    let exported = cipher._insecure_export_fast_for_testing(passphrase);
    #[cfg(not(test))]
    let exported = cipher.export(passphrase);
    exported.map_err(|e| StoreError::Encode(e.to_string()))
}

/// A `CryptoStore` for one account of a [`Backend`].
pub struct Engine {
    backend: Arc<dyn Backend>,
    account: i64,
    key: AccountKey,
    codec: Codec,
    cache: RwLock<Arc<MemoryStore>>,
    /// Orders writes: the database and the cache see them in the same order.
    write_lock: tokio::sync::Mutex<()>,
    /// The account's static data (ids and identity keys) once an account is stored.
    static_account: RwLock<Option<StaticAccountData>>,
    /// Set when this process lost the account's lease to another (PostgreSQL): from then on
    /// every write is refused, so two processes never both write one account.
    lease_lost: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Whether this engine counts as a user of the backend (between `open`/`reopen` and `close`).
    attached: std::sync::atomic::AtomicBool,
    /// Names this engine's custom values held by [`batch::batched`].
    id: u64,
    /// What the database holds of each room's outbound group session (see [`outbound`]).
    outbound: std::sync::Mutex<WrittenMap>,
}

/// The next engine's [`Engine::id`].
static NEXT_ENGINE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("account", &self.key).finish_non_exhaustive()
    }
}

impl Engine {
    /// Open (or create) `key`'s account in `backend`.
    ///
    /// A new account is encrypted when a passphrase is given. An existing one must be opened the
    /// way it was created: a wrong passphrase, a passphrase for an unencrypted account or none
    /// for an encrypted one is [`StoreError::Passphrase`], and nothing is written.
    pub async fn open(backend: Arc<dyn Backend>, key: AccountKey, passphrase: Option<&str>) -> Result<Self> {
        backend.attach().await?;
        match Self::open_attached(backend.clone(), key, passphrase).await {
            Ok(engine) => Ok(engine),
            Err(e) => {
                let _ = backend.detach().await;
                Err(e)
            }
        }
    }

    async fn open_attached(backend: Arc<dyn Backend>, key: AccountKey, passphrase: Option<&str>) -> Result<Self> {
        let row = match backend.find_account(&key.user_id, &key.device_id).await? {
            Some(row) => row,
            None => {
                let exported = match passphrase {
                    Some(p) => Some(export_cipher(&StoreCipher::new().map_err(|e| StoreError::Encode(e.to_string()))?, p)?),
                    None => None,
                };
                backend.create_account(&key.user_id, &key.device_id, exported).await?
            }
        };
        let who = format!("{} {}", key.user_id, key.device_id);
        let cipher = match (&row.cipher, passphrase) {
            (Some(exported), Some(p)) => Some(StoreCipher::import(p, exported).map_err(|_| {
                StoreError::Passphrase(format!("wrong passphrase for the account of {who}"))
            })?),
            (None, None) => None,
            (Some(_), None) => {
                return Err(StoreError::Passphrase(format!("the account of {who} is encrypted: a passphrase is required")))
            }
            (None, Some(_)) => {
                return Err(StoreError::Passphrase(format!(
                    "the account of {who} is not encrypted: open it without a passphrase"
                )))
            }
        };
        let engine = Engine {
            backend,
            account: row.id,
            key,
            codec: Codec::new(cipher),
            cache: RwLock::new(Arc::new(MemoryStore::new())),
            write_lock: tokio::sync::Mutex::new(()),
            attached: std::sync::atomic::AtomicBool::new(true),
            static_account: RwLock::new(None),
            lease_lost: None,
            id: NEXT_ENGINE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            outbound: std::sync::Mutex::new(WrittenMap::new()),
        };
        engine.reload().await?;
        Ok(engine)
    }

    /// The account this store belongs to.
    pub fn account(&self) -> &AccountKey {
        &self.key
    }

    /// The account's id in the database.
    pub fn account_id(&self) -> i64 {
        self.account
    }

    /// Replace the cache with what the database holds now. A process that takes over a device
    /// from another (PostgreSQL) calls this before acting: the other one may have ratcheted
    /// Olm sessions and used one-time keys since this cache was filled.
    pub async fn reload(&self) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let rows = self.backend.load(self.account).await?;
        let fresh = Arc::new(MemoryStore::new());
        let (statics, written) = fill(&self.codec, &fresh, rows).await?;
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        *self.outbound.lock().unwrap_or_else(|e| e.into_inner()) = written;
        *self.static_account.write().unwrap_or_else(|e| e.into_inner()) = statics;
        Ok(())
    }

    /// The stored account's ids and identity keys, without unpickling it (what the crate's
    /// SQLite store offers under the same name; the conformance suite checks it).
    pub fn get_static_account(&self) -> Option<StaticAccountData> {
        self.static_account.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn cache(&self) -> Arc<MemoryStore> {
        self.cache.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Refuse every write once `lost` is set (see [`StoreError::LeaseLost`]).
    pub fn with_lease(mut self, lost: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.lease_lost = Some(lost);
        self
    }

    /// Add `session`'s full save (at message `index`) to `batch`: its own row and the parts
    /// that changed (see [`outbound`]); returns what the database holds once `batch` commits.
    async fn save_outbound_whole(&self, session: &OutboundGroupSession, index: u32, batch: &mut Batch<'_>) -> Result<outbound::Written> {
        let codec = &self.codec;
        let pickle = session.pickle().await;
        let room = session.room_id();
        let (row, parts, mut after) = {
            let written = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
            outbound::split(pickle, session.session_id(), index, written.get(room))
        };
        batch.put(Kind::OutboundGroupSession, room.as_bytes(), codec.seal_json(&row)?);
        after.keep_row(row);
        for part in parts {
            let kind = part.kind();
            match part {
                Part::Shared(chunk) => batch.put(kind, &outbound::shared_key(room.as_str(), chunk.index), codec.seal_json(&chunk)?),
                Part::Request(r) => batch.put(kind, &outbound::request_key(room.as_str(), r.request_id.as_str()), codec.seal_json(&r)?),
                Part::DeleteShared(index) => batch.delete(kind, &outbound::shared_key(room.as_str(), index)),
                Part::DeleteRequest(id) => batch.delete(kind, &outbound::request_key(room.as_str(), id.as_str())),
            }
        }
        Ok(after)
    }

    /// Write whole every session whose stored row is a marker (a clean close: the next open
    /// keeps these sessions instead of rotating them). The caller holds the write lock.
    async fn write_behind_sessions(&self) -> Result<()> {
        if self.lease_lost.as_ref().is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst)) {
            // Another process holds the account now: its next open rotates these sessions.
            return Ok(());
        }
        let behind: Vec<(OwnedRoomId, String)> = {
            let written = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
            written.iter().filter(|(_, w)| w.behind()).map(|(room, w)| (room.clone(), w.session_id().to_owned())).collect()
        };
        if behind.is_empty() {
            return Ok(());
        }
        let cache = self.cache();
        let mut batch = Batch::new(&self.codec);
        let mut after = Vec::new();
        for (room, session_id) in behind {
            let Some(session) = infallible(cache.get_outbound_group_session(&room).await) else { continue };
            if session.session_id() != session_id {
                continue;
            }
            let index = session.message_index().await;
            after.push((room, self.save_outbound_whole(&session, index, &mut batch).await?));
        }
        self.write(batch).await?;
        self.outbound.lock().unwrap_or_else(|e| e.into_inner()).extend(after);
        Ok(())
    }

    async fn write(&self, batch: Batch<'_>) -> Result<()> {
        if self.lease_lost.as_ref().is_some_and(|l| l.load(std::sync::atomic::Ordering::SeqCst)) {
            return Err(StoreError::LeaseLost);
        }
        let ops = batch.into_ops();
        if ops.is_empty() {
            return Ok(());
        }
        self.backend.write(self.account, ops).await
    }
}

/// What a save leaves stored of an outbound session: the whole of it, or, for a message-only
/// save, the message index and whether the row is a marker now.
enum OutboundAfter {
    Full(outbound::Written),
    Message(u32, bool),
}

/// Decode an account's rows into a fresh memory store.
async fn fill(codec: &Codec, cache: &MemoryStore, rows: Vec<(Kind, Vec<u8>)>) -> Result<(Option<StaticAccountData>, WrittenMap)> {
    let mut changes = Changes::default();
    let mut account = None;
    let mut sessions: Vec<PickledSession> = Vec::new();
    let mut outbound: Vec<Vec<u8>> = Vec::new();
    let mut parts = Parts::default();
    let mut inbound: HashMap<(OwnedRoomId, String), InboundGroupSession> = HashMap::new();
    let mut backed_up: HashMap<(OwnedRoomId, String), String> = HashMap::new();
    let mut tracked = Vec::new();
    let mut custom = Vec::new();
    let mut written = WrittenMap::new();
    for (kind, value) in rows {
        match kind {
            Kind::Account => {
                let pickle: PickledAccount = codec.open(&value)?;
                account = Some(Account::from_pickle(pickle).map_err(|e| StoreError::Decode(e.to_string()))?);
            }
            Kind::PrivateIdentity => {
                let pickle: PickledCrossSigningIdentity = codec.open(&value)?;
                changes.private_identity =
                    Some(PrivateCrossSigningIdentity::from_pickle(pickle).map_err(|e| StoreError::Decode(e.to_string()))?);
            }
            Kind::Session => sessions.push(codec.open(&value)?),
            Kind::InboundGroupSession => {
                let pickle: PickledInboundGroupSession = codec.open(&value)?;
                let session = InboundGroupSession::from_pickle(pickle).map_err(|e| StoreError::Decode(e.to_string()))?;
                inbound.insert((session.room_id().to_owned(), session.session_id().to_owned()), session);
            }
            Kind::BackedUpTo => {
                let (room, session, version): (OwnedRoomId, String, String) = codec.open(&value)?;
                backed_up.insert((room, session), version);
            }
            Kind::OutboundGroupSession => outbound.push(value),
            Kind::OutboundShared => parts.add_shared(codec.open_json(&value)?),
            Kind::OutboundRequest => parts.add_request(codec.open_json(&value)?),
            Kind::Device => {
                let device: DeviceData = codec.open(&value)?;
                changes.devices.new.push(device);
            }
            Kind::Identity => {
                let identity: UserIdentityData = codec.open(&value)?;
                changes.identities.new.push(identity);
            }
            Kind::OlmHash => {
                let hash: OlmMessageHash = codec.open(&value)?;
                changes.message_hashes.push(hash);
            }
            Kind::KeyRequest => {
                let request: GossipRequest = codec.open(&value)?;
                changes.key_requests.push(request);
            }
            Kind::Withheld => {
                let (room, session, entry): (OwnedRoomId, String, RoomKeyWithheldEntry) = codec.open_json(&value)?;
                changes.withheld_session_info.entry(room).or_default().insert(session, entry);
            }
            Kind::RoomSettings => {
                let (room, settings): (OwnedRoomId, RoomSettings) = codec.open(&value)?;
                changes.room_settings.insert(room, settings);
            }
            Kind::SecretsInbox => {
                let (name, secrets): (String, Vec<String>) = codec.open_json(&value)?;
                for secret in secrets {
                    changes.secrets.push(SecretsInboxItem {
                        secret_name: SecretName::from(name.as_str()),
                        secret: Zeroizing::new(secret),
                    });
                }
            }
            Kind::TrackedUser => {
                let user: TrackedUser = codec.open(&value)?;
                tracked.push(user);
            }
            Kind::Custom => custom.push(parse_custom_value(&codec.open_bytes(&value)?)?),
            Kind::BackupDecryptionKey => changes.backup_decryption_key = Some(codec.open::<BackupDecryptionKey>(&value)?),
            Kind::BackupVersion => changes.backup_version = Some(codec.open(&value)?),
            Kind::DehydratedPickleKey => {
                changes.dehydrated_device_pickle_key = Some(codec.open::<DehydratedDeviceKey>(&value)?)
            }
            Kind::NextBatchToken => changes.next_batch_token = Some(codec.open(&value)?),
            Kind::ReceivedRoomKeyBundle => {
                let bundle: StoredRoomKeyBundleData = codec.open(&value)?;
                changes.received_room_key_bundles.push(bundle);
            }
            Kind::RoomKeysFullyDownloaded => {
                let room: OwnedRoomId = codec.open(&value)?;
                changes.room_key_backups_fully_downloaded.insert(room);
            }
            Kind::RoomPendingKeyBundle => {
                let details: RoomPendingKeyBundleDetails = codec.open(&value)?;
                changes.rooms_pending_key_bundle.insert(details.room_id.clone(), Some(details));
            }
        }
    }

    if let Some(account) = &account {
        let statics = account.static_data();
        // Sessions carry our own device keys as the store knows them (with their signatures);
        // the account's keys stand in when the own device was never saved.
        let own_keys = changes
            .devices
            .new
            .iter()
            .find(|d| d.user_id() == statics.user_id && d.device_id() == statics.device_id)
            .map(|d| d.as_device_keys().clone())
            .unwrap_or_else(|| account.device_keys());
        for pickle in sessions {
            changes
                .sessions
                .push(Session::from_pickle(own_keys.clone(), pickle).map_err(|e| StoreError::Decode(e.to_string()))?);
        }
        for value in outbound {
            let restore = |pickle| {
                OutboundGroupSession::from_pickle(statics.device_id.clone(), statics.identity_keys.clone(), pickle)
                    .map_err(|e| StoreError::Decode(e.to_string()))
            };
            // The session id is inside the vodozemac pickle: unpickle once to learn it, then
            // again with the parts of that session put back.
            let mut pickle: PickledOutboundGroupSession = codec.open_json(&value)?;
            if outbound::is_marker(&pickle) {
                // Messages went out after this row was written and the process never closed:
                // the ratchet here may be behind them. The room is left without a session (its
                // parts are orphans, replaced by the next session's), so the next share
                // creates a new one.
                tracing::info!(
                    room_id = %pickle.room_id,
                    "the room's outbound group session was used after it was last saved whole and not closed cleanly: it is dropped, the next share rotates the room key"
                );
                continue;
            }
            let session_id = restore(codec.open_json(&value)?)?.session_id().to_owned();
            let stored = parts.assemble(&mut pickle, &session_id);
            let session = restore(pickle)?;
            written.insert(session.room_id().to_owned(), stored);
            changes.outbound_group_sessions.push(session);
        }
    } else if !sessions.is_empty() || !outbound.is_empty() {
        return Err(StoreError::Decode("Olm or outbound group sessions are stored without an account".into()));
    }

    written.extend(parts.orphans().filter(|(room, _)| !written.contains_key(room)).collect::<Vec<_>>());
    let statics = account.as_ref().map(|a| a.static_data().clone());
    if let Some(account) = account {
        infallible(cache.save_pending_changes(PendingChanges { account: Some(account) }).await);
    }
    infallible(cache.save_changes(changes).await);
    let mut by_version: HashMap<Option<String>, Vec<InboundGroupSession>> = HashMap::new();
    for (id, session) in inbound {
        by_version.entry(backed_up.remove(&id)).or_default().push(session);
    }
    for (version, sessions) in by_version {
        infallible(cache.save_inbound_group_sessions(sessions, version.as_deref()).await);
    }
    let tracked: Vec<(&UserId, bool)> = tracked.iter().map(|t| (t.user_id.as_ref(), t.dirty)).collect();
    infallible(cache.save_tracked_users(&tracked).await);
    for (key, value) in custom {
        infallible(cache.set_custom_value(&key, value).await);
    }
    Ok((statics, written))
}

/// The memory store's calls cannot fail.
fn infallible<T>(r: std::result::Result<T, std::convert::Infallible>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => match e {},
    }
}

#[async_trait]
impl CryptoStore for Engine {
    type Error = StoreError;

    async fn load_account(&self) -> Result<Option<Account>> {
        Ok(infallible(self.cache().load_account().await))
    }

    async fn load_identity(&self) -> Result<Option<PrivateCrossSigningIdentity>> {
        Ok(infallible(self.cache().load_identity().await))
    }

    async fn save_changes(&self, mut changes: Changes) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let cache = self.cache();
        let codec = &self.codec;
        let mut batch = Batch::new(codec);
        // Whether the changes are one outbound session and nothing else (see
        // `outbound::message_only`), told before the private identity is filled in below.
        let outbound_alone = {
            let sessions = std::mem::take(&mut changes.outbound_group_sessions);
            let alone = sessions.len() == 1 && changes.is_empty();
            changes.outbound_group_sessions = sessions;
            alone
        };

        match &changes.private_identity {
            Some(identity) => batch.put(Kind::PrivateIdentity, b"", codec.seal(&identity.pickle().await)?),
            None => changes.private_identity = infallible(cache.load_identity().await),
        }
        if let Some(key) = &changes.backup_decryption_key {
            batch.put(Kind::BackupDecryptionKey, b"", codec.seal(key)?);
        }
        if let Some(version) = &changes.backup_version {
            batch.put(Kind::BackupVersion, b"", codec.seal(version)?);
        }
        if let Some(key) = &changes.dehydrated_device_pickle_key {
            batch.put(Kind::DehydratedPickleKey, b"", codec.seal(key)?);
        }
        if let Some(token) = &changes.next_batch_token {
            batch.put(Kind::NextBatchToken, b"", codec.seal(token)?);
        }
        for session in &changes.sessions {
            batch.put(Kind::Session, session.session_id().as_bytes(), codec.seal(&session.pickle().await)?);
        }
        for hash in &changes.message_hashes {
            batch.put(Kind::OlmHash, &pair(&hash.sender_key, &hash.hash), codec.seal(hash)?);
        }
        for session in &changes.inbound_group_sessions {
            batch.put(
                Kind::InboundGroupSession,
                &pair(session.room_id().as_str(), session.session_id()),
                codec.seal(&session.pickle().await)?,
            );
        }
        let mut outbound_after = Vec::new();
        for session in &changes.outbound_group_sessions {
            let room = session.room_id();
            let seen = outbound::Seen {
                session_id: session.session_id(),
                index: session.message_index().await,
                shared: session.shared(),
                invalidated: session.invalidated(),
            };
            let marker = {
                let mut written = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
                match written.get_mut(room).filter(|w| outbound::message_only(Some(&**w), &seen, outbound_alone)) {
                    Some(w) => Some(w.mark_behind().map(|row| codec.seal_json(row)).transpose()?),
                    None => None,
                }
            };
            let after = match marker {
                Some(marker) => {
                    let behind = marker.is_some();
                    if let Some(marker) = marker {
                        batch.put(Kind::OutboundGroupSession, room.as_bytes(), marker);
                    }
                    OutboundAfter::Message(seen.index, behind)
                }
                None => OutboundAfter::Full(self.save_outbound_whole(session, seen.index, &mut batch).await?),
            };
            outbound_after.push((room.to_owned(), after));
        }
        // One outgoing request per key or secret, as matrix-sdk-crypto 0.19's stores keep them: a
        // new request replaces the one stored for the same info (in the cache the memory store
        // does it; here the replaced row is deleted so that a reopen does not bring it back).
        let mut batch_ids: BTreeMap<String, &TransactionId> = BTreeMap::new();
        for request in &changes.key_requests {
            let replaced = match batch_ids.insert(request.info.as_key(), &request.request_id) {
                Some(earlier) => Some(earlier.to_owned()),
                None => infallible(cache.get_secret_request_by_info(&request.info).await).map(|old| old.request_id),
            };
            if let Some(old) = replaced.filter(|old| *old != request.request_id) {
                batch.delete(Kind::KeyRequest, old.as_bytes());
            }
            batch.put(Kind::KeyRequest, request.request_id.as_bytes(), codec.seal(request)?);
        }
        for identity in changes.identities.new.iter().chain(&changes.identities.changed) {
            batch.put(Kind::Identity, identity.user_id().as_bytes(), codec.seal(identity)?);
        }
        for device in changes.devices.new.iter().chain(&changes.devices.changed) {
            batch.put(Kind::Device, &pair(device.user_id().as_str(), device.device_id().as_str()), codec.seal(device)?);
        }
        for device in &changes.devices.deleted {
            batch.delete(Kind::Device, &pair(device.user_id().as_str(), device.device_id().as_str()));
        }
        for (room, entries) in &changes.withheld_session_info {
            for (session, entry) in entries {
                batch.put(Kind::Withheld, &pair(room.as_str(), session), codec.seal_json(&(room, session, entry))?);
            }
        }
        for (room, settings) in &changes.room_settings {
            batch.put(Kind::RoomSettings, room.as_bytes(), codec.seal(&(room, settings))?);
        }
        if !changes.secrets.is_empty() {
            let mut inboxes: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for secret in &changes.secrets {
                let name = secret.secret_name.to_string();
                if !inboxes.contains_key(&name) {
                    let current = infallible(cache.get_secrets_from_inbox(&secret.secret_name).await);
                    inboxes.insert(name.clone(), current.iter().map(|s| s.to_string()).collect());
                }
                inboxes.get_mut(&name).expect("inserted above").push(secret.secret.to_string());
            }
            for (name, secrets) in &inboxes {
                batch.put(Kind::SecretsInbox, name.as_bytes(), codec.seal_json(&(name, secrets))?);
            }
        }
        for bundle in &changes.received_room_key_bundles {
            batch.put(
                Kind::ReceivedRoomKeyBundle,
                &pair(bundle.bundle_data.room_id.as_str(), bundle.sender_user.as_str()),
                codec.seal(bundle)?,
            );
        }
        for room in &changes.room_key_backups_fully_downloaded {
            batch.put(Kind::RoomKeysFullyDownloaded, room.as_bytes(), codec.seal(room)?);
        }
        for (room, details) in &changes.rooms_pending_key_bundle {
            match details {
                Some(details) => batch.put(Kind::RoomPendingKeyBundle, room.as_bytes(), codec.seal(details)?),
                None => batch.delete(Kind::RoomPendingKeyBundle, room.as_bytes()),
            }
        }

        // The custom values a batched call of the withheld layer set: in this transaction.
        let held = batch::take(self.id);
        let written = async {
            for e in &held {
                match &e.value {
                    Some(v) => batch.put(Kind::Custom, e.key.as_bytes(), codec.seal_bytes(custom_value(&e.key, v))?),
                    None => batch.delete(Kind::Custom, e.key.as_bytes()),
                }
            }
            self.write(batch).await
        }
        .await;
        if let Err(e) = written {
            batch::restore(held);
            return Err(e);
        }
        {
            let mut written = self.outbound.lock().unwrap_or_else(|e| e.into_inner());
            for (room, after) in outbound_after {
                match after {
                    OutboundAfter::Full(w) => {
                        written.insert(room, w);
                    }
                    OutboundAfter::Message(index, behind) => {
                        if let Some(w) = written.get_mut(&room) {
                            w.messaged(index, behind);
                        }
                    }
                }
            }
        }
        infallible(cache.save_changes(changes).await);
        for e in held {
            match e.value {
                Some(v) => infallible(cache.set_custom_value(&e.key, v).await),
                None => infallible(cache.remove_custom_value(&e.key).await),
            }
        }
        Ok(())
    }

    async fn save_pending_changes(&self, changes: PendingChanges) -> Result<()> {
        let Some(account) = changes.account else { return Ok(()) };
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new(&self.codec);
        batch.put(Kind::Account, b"", self.codec.seal(&account.pickle())?);
        self.write(batch).await?;
        *self.static_account.write().unwrap_or_else(|e| e.into_inner()) = Some(account.static_data().clone());
        infallible(self.cache().save_pending_changes(PendingChanges { account: Some(account) }).await);
        Ok(())
    }

    async fn save_inbound_group_sessions(
        &self,
        sessions: Vec<InboundGroupSession>,
        backed_up_to_version: Option<&str>,
    ) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new(&self.codec);
        for session in &sessions {
            let id = pair(session.room_id().as_str(), session.session_id());
            batch.put(Kind::InboundGroupSession, &id, self.codec.seal(&session.pickle().await)?);
            if let Some(version) = backed_up_to_version {
                batch.put(Kind::BackedUpTo, &id, self.codec.seal(&(session.room_id(), session.session_id(), version))?);
            }
        }
        self.write(batch).await?;
        infallible(self.cache().save_inbound_group_sessions(sessions, backed_up_to_version).await);
        Ok(())
    }

    async fn get_sessions(&self, sender_key: &str) -> Result<Option<Vec<Session>>> {
        Ok(infallible(self.cache().get_sessions(sender_key).await))
    }

    async fn get_inbound_group_session(&self, room_id: &RoomId, session_id: &str) -> Result<Option<InboundGroupSession>> {
        Ok(infallible(self.cache().get_inbound_group_session(room_id, session_id).await))
    }

    async fn get_withheld_info(&self, room_id: &RoomId, session_id: &str) -> Result<Option<RoomKeyWithheldEntry>> {
        Ok(infallible(self.cache().get_withheld_info(room_id, session_id).await))
    }

    async fn get_withheld_sessions_by_room_id(&self, room_id: &RoomId) -> Result<Vec<RoomKeyWithheldEntry>> {
        Ok(infallible(self.cache().get_withheld_sessions_by_room_id(room_id).await))
    }

    async fn get_inbound_group_sessions(&self) -> Result<Vec<InboundGroupSession>> {
        Ok(infallible(self.cache().get_inbound_group_sessions().await))
    }

    async fn inbound_group_session_counts(&self, backup_version: Option<&str>) -> Result<RoomKeyCounts> {
        Ok(infallible(self.cache().inbound_group_session_counts(backup_version).await))
    }

    async fn get_inbound_group_sessions_by_room_id(&self, room_id: &RoomId) -> Result<Vec<InboundGroupSession>> {
        Ok(infallible(self.cache().get_inbound_group_sessions_by_room_id(room_id).await))
    }

    async fn get_inbound_group_sessions_for_device_batch(
        &self,
        curve_key: Curve25519PublicKey,
        sender_data_type: SenderDataType,
        after_session_id: Option<String>,
        limit: usize,
    ) -> Result<Vec<InboundGroupSession>> {
        Ok(infallible(
            self.cache()
                .get_inbound_group_sessions_for_device_batch(curve_key, sender_data_type, after_session_id, limit)
                .await,
        ))
    }

    async fn inbound_group_sessions_for_backup(&self, backup_version: &str, limit: usize) -> Result<Vec<InboundGroupSession>> {
        Ok(infallible(self.cache().inbound_group_sessions_for_backup(backup_version, limit).await))
    }

    async fn mark_inbound_group_sessions_as_backed_up(
        &self,
        backup_version: &str,
        room_and_session_ids: &[(&RoomId, &str)],
    ) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let cache = self.cache();
        let mut batch = Batch::new(&self.codec);
        for &(room_id, session_id) in room_and_session_ids {
            let Some(session) = infallible(cache.get_inbound_group_session(room_id, session_id).await) else { continue };
            session.mark_as_backed_up();
            let id = pair(room_id.as_str(), session_id);
            batch.put(Kind::InboundGroupSession, &id, self.codec.seal(&session.pickle().await)?);
            batch.put(Kind::BackedUpTo, &id, self.codec.seal(&(room_id, session_id, backup_version))?);
        }
        self.write(batch).await?;
        infallible(cache.mark_inbound_group_sessions_as_backed_up(backup_version, room_and_session_ids).await);
        Ok(())
    }

    async fn reset_backup_state(&self) -> Result<()> {
        // Backed-up state is kept per backup version (`Kind::BackedUpTo`), so a new version
        // needs nothing reset: sessions not marked for it are due for it.
        Ok(())
    }

    async fn load_backup_keys(&self) -> Result<BackupKeys> {
        Ok(infallible(self.cache().load_backup_keys().await))
    }

    async fn load_dehydrated_device_pickle_key(&self) -> Result<Option<DehydratedDeviceKey>> {
        Ok(infallible(self.cache().load_dehydrated_device_pickle_key().await))
    }

    async fn delete_dehydrated_device_pickle_key(&self) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new(&self.codec);
        batch.delete(Kind::DehydratedPickleKey, b"");
        self.write(batch).await?;
        infallible(self.cache().delete_dehydrated_device_pickle_key().await);
        Ok(())
    }

    async fn get_outbound_group_session(&self, room_id: &RoomId) -> Result<Option<OutboundGroupSession>> {
        Ok(infallible(self.cache().get_outbound_group_session(room_id).await))
    }

    async fn load_tracked_users(&self) -> Result<Vec<TrackedUser>> {
        Ok(infallible(self.cache().load_tracked_users().await))
    }

    async fn save_tracked_users(&self, users: &[(&UserId, bool)]) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new(&self.codec);
        for &(user_id, dirty) in users {
            let user = TrackedUser { user_id: user_id.to_owned(), dirty };
            batch.put(Kind::TrackedUser, user_id.as_bytes(), self.codec.seal(&user)?);
        }
        self.write(batch).await?;
        infallible(self.cache().save_tracked_users(users).await);
        Ok(())
    }

    async fn get_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<DeviceData>> {
        Ok(infallible(self.cache().get_device(user_id, device_id).await))
    }

    async fn get_user_devices(&self, user_id: &UserId) -> Result<HashMap<OwnedDeviceId, DeviceData>> {
        Ok(infallible(self.cache().get_user_devices(user_id).await))
    }

    async fn get_own_device(&self) -> Result<DeviceData> {
        Ok(infallible(self.cache().get_own_device().await))
    }

    async fn get_user_identity(&self, user_id: &UserId) -> Result<Option<UserIdentityData>> {
        Ok(infallible(self.cache().get_user_identity(user_id).await))
    }

    async fn is_message_known(&self, message_hash: &OlmMessageHash) -> Result<bool> {
        Ok(infallible(self.cache().is_message_known(message_hash).await))
    }

    async fn get_outgoing_secret_requests(&self, request_id: &TransactionId) -> Result<Option<GossipRequest>> {
        Ok(infallible(self.cache().get_outgoing_secret_requests(request_id).await))
    }

    async fn get_secret_request_by_info(&self, secret_info: &SecretInfo) -> Result<Option<GossipRequest>> {
        Ok(infallible(self.cache().get_secret_request_by_info(secret_info).await))
    }

    async fn get_unsent_secret_requests(&self) -> Result<Vec<GossipRequest>> {
        Ok(infallible(self.cache().get_unsent_secret_requests().await))
    }

    async fn delete_outgoing_secret_requests(&self, request_id: &TransactionId) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new(&self.codec);
        batch.delete(Kind::KeyRequest, request_id.as_bytes());
        self.write(batch).await?;
        infallible(self.cache().delete_outgoing_secret_requests(request_id).await);
        Ok(())
    }

    async fn get_secrets_from_inbox(&self, secret_name: &SecretName) -> Result<Vec<Zeroizing<String>>> {
        Ok(infallible(self.cache().get_secrets_from_inbox(secret_name).await))
    }

    async fn delete_secrets_from_inbox(&self, secret_name: &SecretName) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new(&self.codec);
        batch.delete(Kind::SecretsInbox, secret_name.as_str().as_bytes());
        self.write(batch).await?;
        infallible(self.cache().delete_secrets_from_inbox(secret_name).await);
        Ok(())
    }

    async fn get_room_settings(&self, room_id: &RoomId) -> Result<Option<RoomSettings>> {
        Ok(infallible(self.cache().get_room_settings(room_id).await))
    }

    async fn get_received_room_key_bundle_data(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<StoredRoomKeyBundleData>> {
        Ok(infallible(self.cache().get_received_room_key_bundle_data(room_id, user_id).await))
    }

    async fn get_pending_key_bundle_details_for_room(&self, room_id: &RoomId) -> Result<Option<RoomPendingKeyBundleDetails>> {
        Ok(infallible(self.cache().get_pending_key_bundle_details_for_room(room_id).await))
    }

    async fn get_all_rooms_pending_key_bundles(&self) -> Result<Vec<RoomPendingKeyBundleDetails>> {
        Ok(infallible(self.cache().get_all_rooms_pending_key_bundles().await))
    }

    async fn has_downloaded_all_room_keys(&self, room_id: &RoomId) -> Result<bool> {
        Ok(infallible(self.cache().has_downloaded_all_room_keys(room_id).await))
    }

    async fn get_custom_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        if let Some(held) = batch::held(self.id, key) {
            return Ok(held);
        }
        Ok(infallible(self.cache().get_custom_value(key).await))
    }

    async fn set_custom_value(&self, key: &str, value: Vec<u8>) -> Result<()> {
        let Some(value) = batch::hold_set(self.id, key, value) else { return Ok(()) };
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new(&self.codec);
        batch.put(Kind::Custom, key.as_bytes(), self.codec.seal_bytes(custom_value(key, &value))?);
        self.write(batch).await?;
        infallible(self.cache().set_custom_value(key, value).await);
        Ok(())
    }

    async fn remove_custom_value(&self, key: &str) -> Result<()> {
        if batch::hold_remove(self.id, key) {
            return Ok(());
        }
        let _guard = self.write_lock.lock().await;
        let mut batch = Batch::new(&self.codec);
        batch.delete(Kind::Custom, key.as_bytes());
        self.write(batch).await?;
        infallible(self.cache().remove_custom_value(key).await);
        Ok(())
    }

    async fn try_take_leased_lock(
        &self,
        lease_duration_ms: u32,
        key: &str,
        holder: &str,
    ) -> Result<Option<CrossProcessLockGeneration>> {
        self.backend.try_take_lease(self.account, key, holder, lease_duration_ms).await
    }

    async fn next_batch_token(&self) -> Result<Option<String>> {
        Ok(infallible(self.cache().next_batch_token().await))
    }

    async fn close(&self) -> Result<()> {
        let _guard = self.write_lock.lock().await;
        let flushed = self.write_behind_sessions().await;
        if self.attached.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.backend.detach().await?;
        }
        flushed
    }

    async fn reopen(&self) -> Result<()> {
        if !self.attached.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.backend.attach().await?;
        }
        Ok(())
    }

    async fn get_size(&self) -> Result<Option<usize>> {
        self.backend.size().await
    }
}
