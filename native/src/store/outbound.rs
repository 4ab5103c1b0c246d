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
//!   was first written, each later one what changed since (entries are added or replaced,
//!   never removed); past [`MAX_CHUNKS`] the set is written again as one chunk;
//! - one row per pending request ([`Kind::OutboundRequest`]), deleted once the request is gone.
//!
//! Each part carries the session id: when a room's session is replaced, the new session's
//! parts replace the old ones, and parts of another session are never read into this one.
//! A row written before this split (set and requests inside) still loads as it is, and is
//! split the next time the session is saved.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// What the database holds of one room's session beyond its own row.
#[derive(Default)]
pub struct Written {
    /// The session the parts belong to; empty when the stored row was not split yet (the
    /// next save then writes every part).
    session_id: String,
    /// The shared-with set as the chunks add up to.
    shared: ShareSet,
    /// Chunk rows `0..chunks` may exist (of this session or an older one).
    chunks: u32,
    /// Request rows that exist (of this session or an older one).
    requests: BTreeSet<OwnedTransactionId>,
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

fn same(a: &ShareInfo, b: &ShareInfo) -> bool {
    match (a, b) {
        (ShareInfo::Shared(x), ShareInfo::Shared(y)) => {
            x.sender_key == y.sender_key && x.message_index == y.message_index && x.olm_wedging_index == y.olm_wedging_index
        }
        (ShareInfo::Withheld(x), ShareInfo::Withheld(y)) => x == y,
        _ => false,
    }
}

/// The entries of `now` that `before` lacks or holds differently; `None` when `before` holds
/// an entry that `now` lacks (a delta cannot remove one: the set is then written whole).
fn delta(before: &ShareSet, now: &ShareSet) -> Option<ShareSet> {
    let mut out = ShareSet::new();
    for (user, devices) in now {
        match before.get(user) {
            Some(old) => {
                if old.keys().any(|d| !devices.contains_key(d)) {
                    return None;
                }
                for (device, info) in devices {
                    if !old.get(device).is_some_and(|o| same(o, info)) {
                        out.entry(user.clone()).or_default().insert(device.clone(), info.clone());
                    }
                }
            }
            None => {
                out.insert(user.clone(), devices.clone());
            }
        }
    }
    if before.keys().any(|u| !now.contains_key(u)) {
        return None;
    }
    Some(out)
}

/// Split `pickle` (of session `session_id`) into its own row, returned with the set and the
/// requests taken out, and the parts to write given what `before` says is stored; plus what
/// will be stored once those writes commit.
pub fn split(
    mut pickle: PickledOutboundGroupSession,
    session_id: &str,
    before: Option<&Written>,
) -> (PickledOutboundGroupSession, Vec<Part>, Written) {
    let shared = std::mem::take(&mut pickle.shared_with_set);
    let requests = std::mem::take(&mut pickle.requests);
    let room = pickle.room_id.clone();
    let empty = Written::default();
    let before = before.unwrap_or(&empty);
    let mut parts = Vec::new();

    let same_session = !before.session_id.is_empty() && before.session_id == session_id;
    let chunk = |index: u32, entries: ShareSet| {
        Part::Shared(SharedChunk { room_id: room.clone(), session_id: session_id.to_owned(), index, entries })
    };
    let chunks = match same_session.then(|| delta(&before.shared, &shared)).flatten() {
        Some(d) if d.is_empty() => before.chunks,
        Some(d) if before.chunks < MAX_CHUNKS => {
            parts.push(chunk(before.chunks, d));
            before.chunks + 1
        }
        _ => {
            // The whole set as chunk 0; every other chunk row goes.
            parts.extend((1..before.chunks).map(Part::DeleteShared));
            parts.push(chunk(0, shared.clone()));
            1
        }
    };

    let mut stored = BTreeSet::new();
    for (id, request) in requests {
        if !(same_session && before.requests.contains(&id)) {
            parts.push(Part::Request(Box::new(StoredRequest {
                room_id: room.clone(),
                session_id: session_id.to_owned(),
                request_id: id.clone(),
                request,
            })));
        }
        stored.insert(id);
    }
    parts.extend(before.requests.iter().filter(|id| !stored.contains(*id)).cloned().map(Part::DeleteRequest));

    (pickle, parts, Written { session_id: session_id.to_owned(), shared, chunks, requests: stored })
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
        let request_rows: BTreeSet<OwnedTransactionId> = requests.iter().map(|r| r.request_id.clone()).collect();
        let unsplit = !pickle.shared_with_set.is_empty() || !pickle.requests.is_empty();

        chunks.retain(|c| c.session_id == session_id);
        chunks.sort_by_key(|c| c.index);
        for chunk in chunks {
            for (user, devices) in chunk.entries {
                pickle.shared_with_set.entry(user).or_default().extend(devices);
            }
        }
        for r in requests.into_iter().filter(|r| r.session_id == session_id) {
            pickle.requests.insert(r.request_id, r.request);
        }
        Written {
            session_id: if unsplit { String::new() } else { session_id.to_owned() },
            shared: pickle.shared_with_set.clone(),
            chunks: chunk_rows,
            requests: request_rows,
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
            rooms.entry(room).or_default().requests = requests.into_iter().map(|r| r.request_id).collect();
        }
        rooms.into_iter()
    }
}
