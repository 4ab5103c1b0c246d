//! Outbound group sessions stored in parts, so that a save costs what changed.
//!
//! The crate saves a room's outbound group session whole after every message it encrypts and
//! after every to-device request of a share is marked sent, and its pickle carries the whole
//! shared-with set (one entry per recipient device) and every pending request (the encrypted
//! to-device bodies of a share). Stored as one value, encrypting one message in a room of
//! 10,000 devices rewrites all 10,000 entries, and marking the share's requests sent one by one
//! rewrites the remaining requests each time. The engine stores instead:
//! - the session's own row ([`Kind::OutboundGroupSession`]) without the set and the requests;
//! - the shared-with set as chunks ([`Kind::OutboundShared`]): the first holds the set as it
//!   was first written, each later one what changed since; past [`MAX_CHUNKS`] the set is
//!   written again as one chunk;
//! - one row per pending request ([`Kind::OutboundRequest`]), deleted once the request is gone.
//!
//! What changed is known without comparing the set: the crate adds entries to it only when a
//! request is marked sent, and then adds exactly that request's devices. So a save's chunk is
//! the devices of the requests that were pending at the last save and are gone now, as the set
//! holds them; the set's size must then be the stored size plus at most that many devices
//! (and unchanged when no request went), or the set is written whole (a change made some
//! other way, such as the crate's public `mark_shared_with`).
//!
//! Each part carries the session id: when a room's session is replaced, the new session's
//! parts replace the old ones, and parts of another session are never read into this one.
//! A row written before this split (set and requests inside) still loads as it is, and is
//! split the next time the session is saved.
//!
//! # A message writes at most one row, once
//! Even without the set, the session's own row needs the ratchet, and the only public way to
//! read it is `OutboundGroupSession::pickle()`, which copies the whole shared-with set (12 ms
//! of a 13.5 ms message at 10,000 devices). So a save that only carries a message (see
//! [`message_only`]) does not pickle at all. What keeps a Megolm message index from being used
//! twice is that the caller gets the ciphertext only once the save returns, and by then the
//! database holds either the ratchet at or past that index (a full save, pickled after the
//! message was encrypted) or a *marker*: the first message after a full save rewrites the
//! session's row as it was last written with its message count set to [`BEHIND`] and
//! `invalidated` set ([`Written::mark_behind`]); later messages write nothing. A session whose
//! row is a marker is not loaded ([`is_marker`]): the room has no outbound session after such
//! a restart and the next share creates a new one for the same devices, so a crash costs at
//! most one rotation per room and never an index. Any other save (a share, a request marked
//! sent, an invalidation) and a clean close ([`super::engine::Engine`]'s `close`) write the row
//! whole again. An older release that reads a marker loads a session that is invalidated
//! and past its rotation period: the crate refuses to encrypt with it and rotates it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use matrix_sdk_crypto::{
    olm::{PickledOutboundGroupSession, ShareInfo},
    types::requests::ToDeviceRequest,
};
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedTransactionId, OwnedUserId};
use serde::{Deserialize, Serialize};

use super::codec::Kind;

/// Recipient devices of a session and how it reached each (the pickle's shared-with set).
pub type ShareSet = BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, ShareInfo>>;

/// A pending request of a share and the devices it carries the key to.
pub type PendingRequest = (Arc<ToDeviceRequest>, ShareSet);

/// How many chunks a shared-with set may have before it is written again as one.
pub const MAX_CHUNKS: u32 = 16;

/// One chunk of a shared-with set, as stored.
#[derive(Serialize, Deserialize)]
pub struct SharedChunk {
    pub room_id: OwnedRoomId,
    pub session_id: String,
    pub index: u32,
    pub entries: ShareSet,
}

/// One pending request, as stored.
#[derive(Serialize, Deserialize)]
pub struct StoredRequest {
    pub room_id: OwnedRoomId,
    pub session_id: String,
    pub request_id: OwnedTransactionId,
    pub request: PendingRequest,
}

/// The message count of a marker row: no session ever reaches it (the crate rotates at
/// 10,000 messages at most).
pub const BEHIND: u64 = u64::MAX;

/// Whether a stored session row is a marker (its ratchet may be behind messages already sent).
pub fn is_marker(row: &PickledOutboundGroupSession) -> bool {
    row.message_count == BEHIND
}

/// What a session looks like to a save, read without pickling it.
pub struct Seen<'a> {
    pub session_id: &'a str,
    pub index: u32,
    pub shared: bool,
    pub invalidated: bool,
}

/// Whether a save of a session may skip the pickle: the save carries this session and nothing
/// else (`alone`; the crate's `encrypt` saves exactly that, a share also saves Olm sessions or
/// the room key, a request marked sent may save devices), the session is the one whose row is
/// stored, its flags are as that row has them, and its message index moved since the last save.
/// A request marked sent alone also saves the session alone, but without a message the index
/// has not moved. Getting this wrong costs durability after a crash, never an index: a skipped
/// save leaves a marker, and a session behind a marker is rotated.
pub fn message_only(before: Option<&Written>, seen: &Seen<'_>, alone: bool) -> bool {
    alone
        && before.is_some_and(|w| {
            w.row.is_some()
                && w.session_id == seen.session_id
                && w.shared == seen.shared
                && w.invalidated == seen.invalidated
                && seen.index > w.index
        })
}

/// What the database holds of one room's session beyond its own row.
#[derive(Default)]
pub struct Written {
    /// The session the parts belong to; empty when the stored row was not split yet (the
    /// next save then writes every part).
    session_id: String,
    /// How many devices the stored shared-with set holds.
    devices: usize,
    /// Chunk rows `0..chunks` may exist (of this session or an older one).
    chunks: u32,
    /// Request rows that exist (of this session or an older one), with the devices each
    /// request carries the key to (empty for another session's).
    requests: BTreeMap<OwnedTransactionId, ShareSet>,
    /// The message index the session had at its last save, full or not.
    index: u32,
    /// Its flags as the stored row has them.
    shared: bool,
    invalidated: bool,
    /// The row as last written whole (without set and requests), to write the marker from.
    row: Option<PickledOutboundGroupSession>,
    /// The stored row is a marker ([`is_marker`]).
    behind: bool,
}

impl Written {
    /// The session's row as a marker, to write unless it is one already; `None` when it is.
    pub fn mark_behind(&mut self) -> Option<&PickledOutboundGroupSession> {
        if self.behind {
            return None;
        }
        let row = self.row.as_mut()?;
        row.message_count = BEHIND;
        row.invalidated = true;
        Some(row)
    }

    /// After a message-only save committed: its index, and whether the row is now a marker.
    pub fn messaged(&mut self, index: u32, behind: bool) {
        self.index = index;
        self.behind |= behind;
    }

    /// Whether the stored row is a marker that a clean close should replace.
    pub fn behind(&self) -> bool {
        self.behind
    }

    /// The session whose parts are stored.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }
}

fn count(set: &ShareSet) -> usize {
    set.values().map(|d| d.len()).sum()
}

/// Every room's [`Written`].
pub type WrittenMap = HashMap<OwnedRoomId, Written>;

/// A row to write or delete: `(kind, key)` and, for a put, the value to seal.
pub enum Part {
    Shared(SharedChunk),
    Request(Box<StoredRequest>),
    DeleteShared(u32),
    DeleteRequest(OwnedTransactionId),
}

impl Part {
    /// The row's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Part::Shared(_) | Part::DeleteShared(_) => Kind::OutboundShared,
            Part::Request(_) | Part::DeleteRequest(_) => Kind::OutboundRequest,
        }
    }
}

/// The key of a chunk or request row of `room`.
pub fn shared_key(room: &str, index: u32) -> Vec<u8> {
    super::engine::pair(room, &index.to_string())
}

/// The key of a request row of `room`.
pub fn request_key(room: &str, request_id: &str) -> Vec<u8> {
    super::engine::pair(room, request_id)
}

/// The entries of `now` for the devices of `sent` (requests marked sent since the last save).
fn sent_entries<'a>(sent: impl Iterator<Item = &'a ShareSet>, now: &ShareSet) -> ShareSet {
    let mut out = ShareSet::new();
    for set in sent {
        for (user, devices) in set {
            for device in devices.keys() {
                if let Some(info) = now.get(user).and_then(|d| d.get(device)) {
                    out.entry(user.clone()).or_default().insert(device.clone(), info.clone());
                }
            }
        }
    }
    out
}

/// Drop a shared-with set off the caller's thread: the crate's pickle is a copy of the whole
/// set (10,000 devices: tens of thousands of small allocations), and freeing it on the task
/// that saves would add to the latency of every message.
fn dispose(set: ShareSet) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(move || drop(set))),
        Err(_) => drop(set),
    }
}

/// Split `pickle` (of session `session_id`, at message `index`) into its own row, returned with
/// the set and the requests taken out, and the parts to write given what `before` says is
/// stored; plus what will be stored once those writes commit (without the row: the caller
/// seals it, then hands it to [`Written::keep_row`]).
pub fn split(
    mut pickle: PickledOutboundGroupSession,
    session_id: &str,
    index: u32,
    before: Option<&Written>,
) -> (PickledOutboundGroupSession, Vec<Part>, Written) {
    let mut shared = std::mem::take(&mut pickle.shared_with_set);
    let requests = std::mem::take(&mut pickle.requests);
    let room = pickle.room_id.clone();
    let empty = Written::default();
    let before = before.unwrap_or(&empty);
    let mut parts = Vec::new();

    let same_session = !before.session_id.is_empty() && before.session_id == session_id;
    let devices = count(&shared);
    let chunk = |index: u32, entries: ShareSet| {
        Part::Shared(SharedChunk { room_id: room.clone(), session_id: session_id.to_owned(), index, entries })
    };
    let delta = same_session
        .then(|| sent_entries(before.requests.iter().filter(|(id, _)| !requests.contains_key(*id)).map(|(_, s)| s), &shared))
        .filter(|d| devices >= before.devices && devices <= before.devices + count(d) && (devices == before.devices || !d.is_empty()));
    let chunks = match delta {
        Some(d) if d.is_empty() => before.chunks,
        Some(d) if before.chunks < MAX_CHUNKS => {
            parts.push(chunk(before.chunks, d));
            before.chunks + 1
        }
        _ => {
            // The whole set as chunk 0; every other chunk row goes.
            parts.extend((1..before.chunks).map(Part::DeleteShared));
            parts.push(chunk(0, std::mem::take(&mut shared)));
            1
        }
    };
    dispose(shared);

    let mut stored = BTreeMap::new();
    for (id, request) in requests {
        stored.insert(id.clone(), request.1.clone());
        if !(same_session && before.requests.contains_key(&id)) {
            parts.push(Part::Request(Box::new(StoredRequest {
                room_id: room.clone(),
                session_id: session_id.to_owned(),
                request_id: id.clone(),
                request,
            })));
        }
    }
    parts.extend(before.requests.keys().filter(|id| !stored.contains_key(*id)).cloned().map(Part::DeleteRequest));

    let written = Written {
        session_id: session_id.to_owned(),
        devices,
        chunks,
        requests: stored,
        index,
        shared: pickle.shared,
        invalidated: pickle.invalidated,
        row: None,
        behind: false,
    };
    (pickle, parts, written)
}

impl Written {
    /// Keep the row just written whole, for the next marker.
    pub fn keep_row(&mut self, row: PickledOutboundGroupSession) {
        self.row = Some(row);
    }
}

/// The parts of every room read from the database, to put back into the rooms' pickles.
#[derive(Default)]
pub struct Parts {
    shared: HashMap<OwnedRoomId, Vec<SharedChunk>>,
    requests: HashMap<OwnedRoomId, Vec<StoredRequest>>,
}

impl Parts {
    /// A chunk row as read.
    pub fn add_shared(&mut self, chunk: SharedChunk) {
        self.shared.entry(chunk.room_id.clone()).or_default().push(chunk);
    }

    /// A request row as read.
    pub fn add_request(&mut self, request: StoredRequest) {
        self.requests.entry(request.room_id.clone()).or_default().push(request);
    }

    /// Put `room`'s parts of session `session_id` back into `pickle`, and say what is stored.
    /// A pickle that still holds its set or requests (written before the split) keeps them and
    /// is marked unsplit, so that its next save writes every part.
    pub fn assemble(&mut self, pickle: &mut PickledOutboundGroupSession, session_id: &str) -> Written {
        let room = pickle.room_id.clone();
        let mut chunks = self.shared.remove(&room).unwrap_or_default();
        let requests = self.requests.remove(&room).unwrap_or_default();
        let chunk_rows = chunks.iter().map(|c| c.index + 1).max().unwrap_or(0);
        let mut request_rows: BTreeMap<OwnedTransactionId, ShareSet> =
            requests.iter().map(|r| (r.request_id.clone(), ShareSet::new())).collect();
        let unsplit = !pickle.shared_with_set.is_empty() || !pickle.requests.is_empty();

        chunks.retain(|c| c.session_id == session_id);
        chunks.sort_by_key(|c| c.index);
        for chunk in chunks {
            for (user, devices) in chunk.entries {
                pickle.shared_with_set.entry(user).or_default().extend(devices);
            }
        }
        for r in requests.into_iter().filter(|r| r.session_id == session_id) {
            request_rows.insert(r.request_id.clone(), r.request.1.clone());
            pickle.requests.insert(r.request_id, r.request);
        }
        Written {
            session_id: if unsplit { String::new() } else { session_id.to_owned() },
            devices: count(&pickle.shared_with_set),
            chunks: chunk_rows,
            requests: request_rows,
            index: 0,
            shared: pickle.shared,
            invalidated: pickle.invalidated,
            // Not kept: a session's first save after a load writes the row whole.
            row: None,
            behind: false,
        }
    }

    /// Rooms with parts but no session row (nothing to put them into): their rows, so that the
    /// next session saved for the room deletes them.
    pub fn orphans(self) -> impl Iterator<Item = (OwnedRoomId, Written)> {
        let mut rooms: HashMap<OwnedRoomId, Written> = HashMap::new();
        for (room, chunks) in self.shared {
            rooms.entry(room).or_default().chunks = chunks.iter().map(|c| c.index + 1).max().unwrap_or(0);
        }
        for (room, requests) in self.requests {
            rooms.entry(room).or_default().requests = requests.into_iter().map(|r| (r.request_id, ShareSet::new())).collect();
        }
        rooms.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use matrix_sdk_common::deserialized_responses::WithheldCode;
    use matrix_sdk_crypto::{olm::OutboundGroupSession, Account, EncryptionSettings};
    use ruma::{device_id, room_id, user_id};

    use super::*;

    fn shared_parts(parts: &[Part]) -> Vec<(u32, usize)> {
        parts.iter().filter_map(|p| if let Part::Shared(c) = p { Some((c.index, count(&c.entries))) } else { None }).collect()
    }

    /// The crate changes the set only by marking requests sent; a change made any other way
    /// (its `mark_shared_with`, test-only in the crate today) must not be lost: the set is
    /// then written whole.
    #[tokio::test]
    async fn a_change_that_no_sent_request_explains_writes_the_set_whole() {
        let account = Account::with_device_id(user_id!("@alice:example.org"), device_id!("ALICE"));
        let statics = account.static_data();
        let session = OutboundGroupSession::new(
            statics.device_id.clone(),
            statics.identity_keys.clone(),
            room_id!("!room:example.org"),
            EncryptionSettings::default(),
        )
        .expect("session");
        let (_, parts, written) = split(session.pickle().await, session.session_id(), 0, None);
        assert_eq!(shared_parts(&parts), vec![(0, 0)], "a new session writes its (empty) set as chunk 0");

        let (_, parts, written) = split(session.pickle().await, session.session_id(), 0, Some(&written));
        assert!(shared_parts(&parts).is_empty(), "nothing changed, nothing written");

        let mut changed = session.pickle().await;
        changed.shared_with_set.entry(user_id!("@bob:example.org").to_owned()).or_default().insert(
            device_id!("BOB").to_owned(),
            ShareInfo::new_withheld(WithheldCode::Blacklisted),
        );
        let (_, parts, written) = split(changed, session.session_id(), 0, Some(&written));
        assert_eq!(shared_parts(&parts), vec![(0, 1)], "an unexplained entry: the whole set again, as chunk 0");
        assert_eq!((written.devices, written.chunks), (1, 1));
    }
}
