//! Hostile-input harness: feeds untrusted bytes to everything that parses network data, without
//! N-API, so the same code runs under `cargo fuzz` (`fuzz/`) and in a bounded randomized unit
//! test (`cargo test --no-default-features`).
//!
//! A real peer device ("bob") is set up against the target machine ("alice") at start: Olm
//! session, shared room key, an encrypted room event, the homeserver's responses. Fuzz inputs
//! are turned into *mutations* of those valid templates (replace, delete, truncate, retype or
//! inflate any JSON node), so most inputs get past the JSON parser into Olm and Megolm
//! decryption, signature checks, the withheld ledger and the key-request answers, and a few are
//! fed in raw. Every input exercises one of:
//! - a sync batch (to-device events including withheld notices and key requests, device-list
//!   changes, one-time-key counts) through `receive_sync_changes` and the withheld layer;
//! - an encrypted room event through `decrypt_room_event` and the withheld explanation;
//! - a homeserver response (keys/query, keys/claim, keys/upload, to-device, signatures);
//! - the pure parsers: withheld notices, key requests, sending policies, share filtering.
//!
//! A panic anywhere is the failure the fuzzer looks for. [`Harness::run`] also reports whether
//! the input was rejected, so callers can check that rejected input changed nothing.
//!
//! # What one input costs
//! The target is prepared once per process. Its store is the project's own engine over a
//! database in memory ([`snapshot`]): when an input wrote anything, the next input starts from
//! a copy of the prepared rows, in a new `OlmMachine` and withheld layer (a reset, not a new set-up:
//! no keys are made, no peer is involved), so every input meets the same state and a crash
//! reproduces from its own input. Profiling the old harness (one machine for the whole run,
//! never reset) showed where a sync batch's time went: the crate deep-clones the account on
//! every store commit (a pickle round trip that recomputes the public key of every one-time
//! key, a Curve25519 base-point multiplication each), and the account held 50 to 100 one-time
//! keys. The target's account is therefore made with the one one-time key the peer claims;
//! inputs that ask for more keys (a key count below 50) still make them, and pay for it.

mod snapshot;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use matrix_sdk_crypto::{
    types::{
        events::room::encrypted::EncryptedEvent,
        requests::{AnyOutgoingRequest, ToDeviceRequest},
    },
    olm::PickledAccount,
    store::{types::PendingChanges, CryptoStore, IntoCryptoStore},
    vodozemac, Account, EncryptionSettings, EncryptionSyncChanges, OlmMachine, OlmMachineBuilder,
};
use ruma::{
    api::client::sync::sync_events::DeviceLists,
    events::{AnyMessageLikeEventContent, AnyToDeviceEvent, AnyToDeviceEventContent},
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
    MilliSecondsSinceUnixEpoch, OneTimeKeyAlgorithm, OwnedUserId, RoomId, TransactionId, UInt, UserId,
};
use serde_json::{json, Map, Value};

use self::snapshot::{MemoryBackend, Rows};
use crate::core_machine::{self, ChangedDevices, CoreError, OwnedResponse, RequestType, SyncChanges};
use crate::store::engine::{AccountKey, Engine};
use crate::withheld::{
    codes, explain, inbound, key_requests,
    policy::SendPolicy,
    received::{self, Facts, Notice, Verdict},
    share, Withheld,
};

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const ROOM: &str = "!room:example.org";

/// Largest string an input may inflate a node to: big enough to hit size limits in parsers,
/// small enough to keep a fuzzing run fast.
const MAX_INFLATE: usize = 64 * 1024;

/// What one input did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The call under test returned an error (the input was refused as a whole).
    pub rejected: bool,
    /// The input reached a machine call (not only a pure parser).
    pub reached_machine: bool,
}

/// Valid inputs made by a real peer, for the mutations to start from.
struct Templates {
    to_device: Vec<Value>,
    room_event: Value,
    keys_query: Value,
    keys_claim: Value,
    keys_upload: Value,
    signature_upload: Value,
    policy: Value,
    facts: Value,
}

/// The machine under attack, as restored from the prepared rows: the project's own machine, so
/// inputs go through the glue users run (sync runs, response parsing, the withheld steps).
type Target = core_machine::Machine;

/// The machine under attack and what it needs.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    backend: Arc<MemoryBackend>,
    /// The target's rows once prepared: what every input starts from.
    prepared: Rows,
    target: Mutex<Target>,
    templates: Templates,
    resets: AtomicU64,
}

/// A homeserver response of the set-up, parsed as the machine parses them.
fn response(kind: RequestType, body: &Value) -> OwnedResponse {
    OwnedResponse::parse(kind.as_str(), &body.to_string()).expect("a valid response of the set-up")
}

/// Upload a machine's keys, the homeserver then reporting `count` one-time keys (50 or more makes
/// the crate generate none); returns its signed device keys and one-time keys as JSON.
async fn upload(machine: &OlmMachine, count: usize) -> (Value, Map<String, Value>) {
    let mut device_keys = Value::Null;
    let mut one_time_keys = Map::new();
    for r in machine.outgoing_requests().await.expect("outgoing requests") {
        if let AnyOutgoingRequest::KeysUpload(u) = r.request() {
            device_keys = serde_json::to_value(&u.device_keys).expect("device keys");
            for (id, key) in &u.one_time_keys {
                one_time_keys.insert(id.to_string(), serde_json::to_value(key).expect("one-time key"));
            }
            let counts = json!({ "one_time_key_counts": { "signed_curve25519": count.max(u.one_time_keys.len()) } });
            let parsed = response(RequestType::KeysUpload, &counts);
            machine.mark_request_as_sent(r.request_id(), parsed.as_incoming()).await.expect("mark upload");
        }
    }
    (device_keys, one_time_keys)
}

fn to_device_events(sender: &str, requests: &[std::sync::Arc<ToDeviceRequest>]) -> Vec<Value> {
    let mut out = Vec::new();
    for r in requests {
        for devices in r.messages.values() {
            for content in devices.values() {
                let content: Value = content.deserialize_as_unchecked().expect("request content");
                out.push(json!({ "type": r.event_type.to_string(), "sender": sender, "content": content }));
            }
        }
    }
    out
}

impl Harness {
    /// Set up alice (the target, on the project's store engine) and bob (a real peer, on the
    /// crate's memory store), then keep alice's rows as the state every input starts from.
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        let backend = Arc::new(MemoryBackend::default());
        let (machine, templates) = rt.block_on(Self::setup(backend.clone()));
        rt.block_on(async { drop(machine) });
        let prepared = backend.snapshot();
        let target = rt.block_on(Self::restore(&backend, &prepared));
        Self { rt, backend, prepared, target: Mutex::new(target), templates, resets: AtomicU64::new(0) }
    }

    fn account_key() -> AccountKey {
        AccountKey { user_id: ALICE.into(), device_id: "ALICE".into() }
    }

    /// A new machine and withheld layer over a copy of the prepared rows.
    async fn restore(backend: &Arc<MemoryBackend>, prepared: &Rows) -> Target {
        backend.restore(prepared);
        let engine = Engine::open(backend.clone(), Self::account_key(), None).await.expect("open the prepared store");
        let alice = UserId::parse(ALICE).expect("id");
        let machine = OlmMachineBuilder::new(&alice, "ALICE".into()).with_crypto_store(engine.into_crypto_store()).build()
            .await
            .expect("the prepared machine opens");
        // Opening wrote nothing that matters; count only what inputs write.
        backend.restore(prepared);
        core_machine::Machine::new(machine, Arc::new(Withheld::new(SendPolicy::default(), true)))
    }

    /// How many times an input's writes were undone (a measurement for the README).
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Undo what the last input wrote, if anything. [`Harness::run`] does it first; tests call
    /// it before they look at the store, so that what they see before an input is the state the
    /// input meets.
    pub fn prepare(&self) {
        let mut target = self.target.lock().unwrap_or_else(|e| e.into_inner());
        if self.backend.dirty() {
            self.resets.fetch_add(1, Ordering::Relaxed);
            let fresh = self.rt.block_on(Self::restore(&self.backend, &self.prepared));
            let old = std::mem::replace(&mut *target, fresh);
            self.rt.block_on(async { drop(old) });
        }
    }

    /// Alice's account, with a single one-time key (the one bob claims): see the module's notes
    /// on what one input costs.
    async fn alice(backend: Arc<MemoryBackend>, alice_id: &UserId) -> OlmMachine {
        let engine = Engine::open(backend, Self::account_key(), None).await.expect("open the store");
        let mut olm = vodozemac::olm::Account::new();
        olm.generate_one_time_keys(1);
        let account = Account::from_pickle(PickledAccount {
            user_id: alice_id.to_owned(),
            device_id: "ALICE".into(),
            pickle: olm.pickle(),
            shared: false,
            dehydrated: false,
            uploaded_signed_key_count: 0,
            creation_local_time: MilliSecondsSinceUnixEpoch::now(),
            fallback_key_creation_timestamp: None,
        })
        .expect("account");
        engine.save_pending_changes(PendingChanges { account: Some(account) }).await.expect("save the account");
        OlmMachineBuilder::new(alice_id, "ALICE".into()).with_crypto_store(engine.into_crypto_store()).build().await.expect("alice")
    }

    async fn setup(backend: Arc<MemoryBackend>) -> (OlmMachine, Templates) {
        let (alice_id, bob_id) = (UserId::parse(ALICE).expect("id"), UserId::parse(BOB).expect("id"));
        let room = RoomId::parse(ROOM).expect("room id");
        let alice = Self::alice(backend, &alice_id).await;
        let bob = OlmMachine::new(&bob_id, "BOB".into()).await;
        let (alice_keys, alice_otks) = upload(&alice, 50).await;
        let (bob_keys, _) = upload(&bob, 0).await;

        let keys_query = json!({
            "device_keys": { ALICE: { "ALICE": alice_keys }, BOB: { "BOB": bob_keys } },
            "failures": {},
        });
        for m in [&alice, &bob] {
            m.update_tracked_users([alice_id.as_ref(), bob_id.as_ref()]).await.expect("track");
            for r in m.outgoing_requests().await.expect("outgoing") {
                if let AnyOutgoingRequest::KeysQuery(_) = r.request() {
                    let parsed = response(RequestType::KeysQuery, &keys_query);
                    m.mark_request_as_sent(r.request_id(), parsed.as_incoming()).await.expect("mark query");
                }
            }
        }

        let (otk_id, otk) = alice_otks.iter().next().expect("alice uploaded one-time keys");
        let keys_claim = json!({ "one_time_keys": { ALICE: { "ALICE": { otk_id.clone(): otk } } }, "failures": {} });
        let (claim_id, _) = bob.get_missing_sessions([alice_id.as_ref()].into_iter()).await.expect("claim").expect("a claim");
        let parsed = response(RequestType::KeysClaim, &keys_claim);
        bob.mark_request_as_sent(&claim_id, parsed.as_incoming()).await.expect("mark claim");

        let shared = bob
            .share_room_key(&room, [alice_id.as_ref(), bob_id.as_ref()].into_iter(), EncryptionSettings::default())
            .await
            .expect("share");
        let mut to_device = to_device_events(BOB, &shared);
        for r in &shared {
            bob.mark_request_as_sent(&r.txn_id, &ruma::api::client::to_device::send_event_to_device::v3::Response::new()).await.expect("mark share");
        }
        let content: Raw<AnyMessageLikeEventContent> =
            Raw::new(&json!({ "msgtype": "m.text", "body": "hello" })).expect("content").cast_unchecked();
        let encrypted = bob.encrypt_room_event_raw(&room, "m.room.message", &content).await.expect("encrypt");
        let encrypted: Value = encrypted.content.deserialize_as_unchecked().expect("encrypted content");
        let session_id = encrypted["session_id"].clone();
        let room_event = json!({
            "type": "m.room.encrypted", "sender": BOB, "event_id": "$event:example.org",
            "origin_server_ts": 1_700_000_000_000u64, "room_id": ROOM, "content": encrypted,
        });

        // Alice receives the room key once, so the room event decrypts before it is mutated.
        let events: Vec<Raw<AnyToDeviceEvent>> =
            to_device.iter().map(|e| Raw::new(e).expect("event").cast_unchecked()).collect();
        let lists = DeviceLists::new();
        let counts = BTreeMap::new();
        alice
            .receive_sync_changes(
                EncryptionSyncChanges {
                    to_device_events: events,
                    changed_devices: &lists,
                    one_time_keys_counts: &counts,
                    unused_fallback_keys: None,
                    next_batch_token: None,
                },
                &core_machine::decryption_settings(),
            )
            .await
            .expect("alice receives the room key");
        let room_event_raw: Raw<EncryptedEvent> = Raw::new(&room_event).expect("event").cast_unchecked();
        alice.decrypt_room_event(&room_event_raw, &room, &core_machine::decryption_settings()).await.expect("the template decrypts");

        let bob_curve = bob.identity_keys().curve25519.to_base64();
        to_device.extend([
            json!({ "type": codes::WITHHELD_EVENT_TYPE, "sender": BOB, "content": codes::room_notice(
                codes::UNVERIFIED, "verify first", ROOM, session_id.as_str().unwrap_or_default(), &bob_curve, "BOB") }),
            json!({ "type": codes::WITHHELD_EVENT_TYPE, "sender": BOB, "content": codes::no_olm_notice("no channel", &bob_curve, "BOB") }),
            json!({ "type": "m.room_key_request", "sender": BOB, "content": {
                "action": "request", "requesting_device_id": "BOB", "request_id": "r1",
                "body": { "algorithm": codes::MEGOLM_V1, "room_id": ROOM, "session_id": session_id, "sender_key": bob_curve } } }),
            json!({ "type": "m.room_key_request", "sender": ALICE, "content": {
                "action": "request_cancellation", "requesting_device_id": "OTHER", "request_id": "r2" } }),
            json!({ "type": "m.dummy", "sender": BOB, "content": {} }),
        ]);
        let templates = Templates {
            to_device,
            room_event,
            keys_query,
            keys_claim,
            keys_upload: json!({ "one_time_key_counts": { "signed_curve25519": 50, "curve25519": 0 } }),
            signature_upload: json!({ "failures": { BOB: { "BOB": { "errcode": "M_INVALID_SIGNATURE", "error": "bad" } } } }),
            policy: json!({ "send": ["m.unverified", "com.example.code"], "reasons": { "m.unverified": "verify" } }),
            facts: json!({ "creator": [bob_curve, BOB], "devices": [["BOB", bob_curve]], "own": ALICE }),
        };
        (alice, templates)
    }

    /// Number of to-device templates (for seed corpora: one seed per template).
    pub fn to_device_templates(&self) -> usize {
        self.templates.to_device.len()
    }

    /// Feed one input. Panics only if the code under test panics.
    pub fn run(&self, data: &[u8]) -> Outcome {
        self.prepare();
        let target = self.target.lock().unwrap_or_else(|e| e.into_inner());
        let t = &*target;
        let mut input = Input { data, pos: 0 };
        match input.byte() % 6 {
            0 => self.rt.block_on(self.sync(t, &mut input)),
            1 => self.rt.block_on(self.raw_sync(t, input.rest())),
            2 => self.rt.block_on(self.decrypt(t, &mut input)),
            3 => self.rt.block_on(self.response(t, &mut input)),
            4 => self.parsers(&mut input),
            _ => self.policy(&mut input),
        }
    }

    async fn process(&self, t: &Target, changes: SyncChanges) -> Outcome {
        let rejected = t.receive_sync_changes(changes).await.is_err();
        // Drain what the answers queued, as an application would send it.
        let _ = t.withheld().queued();
        Outcome { rejected, reached_machine: true }
    }

    async fn sync(&self, t: &Target, input: &mut Input<'_>) -> Outcome {
        let count = 1 + usize::from(input.byte() % 4);
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            let template = &self.templates.to_device[usize::from(input.byte()) % self.templates.to_device.len()];
            let event = mutate(template, input);
            events.push(Raw::new(&event).expect("a JSON value serialises").cast_unchecked());
        }
        let mut lists = ChangedDevices::default();
        for _ in 0..input.byte() % 3 {
            if let Ok(u) = OwnedUserId::try_from(input.string()) {
                if input.byte() % 2 == 0 { lists.changed.push(u) } else { lists.left.push(u) }
            }
        }
        // Not on a zero byte (what an input reads past its end): a count below 50 makes the
        // crate generate keys, which short inputs would otherwise all pay for.
        let counts = (input.byte() % 4 == 3)
            .then(|| BTreeMap::from([(OneTimeKeyAlgorithm::SignedCurve25519, UInt::new_saturating(input.u64()))]));
        let fallback = match input.byte() % 3 {
            0 => None,
            1 => Some(vec![]),
            _ => Some(vec![OneTimeKeyAlgorithm::SignedCurve25519]),
        };
        let changes = SyncChanges {
            to_device_events: events,
            changed_devices: lists,
            one_time_key_counts: counts,
            unused_fallback_keys: fallback,
            next_batch_token: None,
        };
        self.process(t, changes).await
    }

    async fn raw_sync(&self, t: &Target, bytes: &[u8]) -> Outcome {
        // Entries that are not event objects are the machine's to skip (`split_events`).
        let Ok(events) = serde_json::from_slice::<Vec<Raw<AnyToDeviceEvent>>>(bytes) else { return Outcome::default() };
        let changes = SyncChanges {
            to_device_events: events,
            changed_devices: ChangedDevices::default(),
            one_time_key_counts: None,
            unused_fallback_keys: None,
            next_batch_token: None,
        };
        self.process(t, changes).await
    }

    async fn decrypt(&self, t: &Target, input: &mut Input<'_>) -> Outcome {
        let event = mutate(&self.templates.room_event, input);
        let room = RoomId::parse(ROOM).expect("room id");
        let Ok(raw) = serde_json::from_value::<Raw<EncryptedEvent>>(event.clone()) else { return Outcome::default() };
        match t.olm().decrypt_room_event(&raw, &room, &core_machine::decryption_settings()).await {
            Ok(_) => Outcome { rejected: false, reached_machine: true },
            Err(_) => {
                let _ = inbound::explain_failure(t.olm(), &room, &event).await;
                Outcome { rejected: true, reached_machine: true }
            }
        }
    }

    async fn response(&self, t: &Target, input: &mut Input<'_>) -> Outcome {
        let kind = input.byte() % 5;
        let template = match kind {
            0 => &self.templates.keys_query,
            1 => &self.templates.keys_claim,
            2 => &self.templates.keys_upload,
            3 => &self.templates.signature_upload,
            _ => &Value::Object(Map::new()),
        };
        let mut body = mutate(template, input);
        // `cargo fuzz` builds with `cfg(fuzzing)`, under which vodozemac skips Ed25519
        // verification: a mutated entry for our own device would be taken as signed by us (and
        // a stripped one makes the crate's memory store panic on the next Olm message). Outside
        // fuzzing its self-signature refuses it, so keep that entry genuine in fuzz builds.
        if kind == 0 && cfg!(feature = "fuzzing") {
            if let Some(own) = body.pointer_mut(&format!("/device_keys/{ALICE}/ALICE")) {
                *own = self.templates.keys_query["device_keys"][ALICE]["ALICE"].clone();
            }
        }
        let kind = [RequestType::KeysQuery, RequestType::KeysClaim, RequestType::KeysUpload, RequestType::SignatureUpload][usize::from(kind)..]
            .first()
            .copied()
            .unwrap_or(RequestType::ToDevice);
        let body = serde_json::to_string(&body).expect("a JSON value serialises");
        // As a response to a request the harness made up: the machine's own parsing, the crate
        // and the withheld steps see it, and nothing is left pending.
        let txn = TransactionId::new();
        match t.mark_request_as_sent(txn.as_str(), kind.as_str(), &body, true).await {
            Ok(()) => Outcome { rejected: false, reached_machine: true },
            Err(CoreError::Input(_)) => Outcome { rejected: true, reached_machine: false },
            Err(_) => Outcome { rejected: true, reached_machine: true },
        }
    }

    fn parsers(&self, input: &mut Input<'_>) -> Outcome {
        let template = &self.templates.to_device[usize::from(input.byte()) % self.templates.to_device.len()];
        let event = mutate(template, input);
        let sender = event.get("sender").and_then(Value::as_str).unwrap_or_default();
        let Some(content) = event.get("content").and_then(Value::as_object) else { return Outcome { rejected: true, reached_machine: false } };
        let facts = facts(&mutate(&self.templates.facts, input));
        let mut rejected = true;
        if let Some(notice) = received::parse(sender, content, input.u64()) {
            rejected = false;
            let verdict = received::validate(&notice, &facts);
            if let (Notice::NoOlm(n), Verdict::Trusted | Verdict::Unconfirmed) = (&notice, verdict) {
                let failed = explain::FailedEvent {
                    sender,
                    origin_server_ts: Some(input.u64()),
                    sender_key: Some(&n.sender_key),
                    device_id: n.from_device.as_deref(),
                    below_first_index: input.byte() % 2 == 0,
                };
                let _ = explain::explain(&failed, None, std::slice::from_ref(n));
            }
        }
        if let Some(request) = key_requests::parse(sender, content) {
            rejected = false;
            let f = key_requests::RequestFacts {
                from_own_user: input.byte() % 2 == 0,
                from_this_device: input.byte() % 2 == 0,
                device_known: input.byte() % 2 == 0,
                device_verified: input.byte() % 2 == 0,
                session_held: input.byte() % 2 == 0,
            };
            let _ = key_requests::decide(f);
            let mut limiter = key_requests::Limiter::default();
            if let Some(body) = &request.body {
                limiter.admit(&request.sender, &request.requesting_device, &body.session_id, input.u64());
            }
        }
        // The share filter reads the crate's withheld requests: give it this content as one.
        if let Ok(user) = OwnedUserId::try_from(sender) {
            if let Ok(raw) = Raw::new(content).map(Raw::cast_unchecked::<AnyToDeviceEventContent>) {
                let mut messages = BTreeMap::new();
                messages.insert(user, BTreeMap::from([(DeviceIdOrAllDevices::AllDevices, raw)]));
                let request = ToDeviceRequest {
                    event_type: codes::WITHHELD_EVENT_TYPE.into(),
                    txn_id: TransactionId::new(),
                    messages,
                };
                let _ = share::filter_crate_request(&request, &SendPolicy::default());
            }
        }
        Outcome { rejected, reached_machine: false }
    }

    fn policy(&self, input: &mut Input<'_>) -> Outcome {
        let value = mutate(&self.templates.policy, input);
        let Ok(policy) = serde_json::from_value::<SendPolicy>(value) else { return Outcome { rejected: true, reached_machine: false } };
        let valid = policy.validate("withheld").is_ok();
        if valid {
            for code in codes::SENDABLE {
                let _ = (policy.allows(code), policy.reason(code));
            }
        }
        Outcome { rejected: !valid, reached_machine: false }
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

fn facts(v: &Value) -> Facts {
    let s = |v: &Value| v.as_str().map(str::to_owned);
    Facts {
        session_creator: v.get("creator").and_then(|c| Some((s(c.get(0)?)?, c.get(1).and_then(s)))),
        sender_devices: v
            .get("devices")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(|d| Some((s(d.get(0)?)?, s(d.get(1)?)?))).collect())
            .unwrap_or_default(),
        own_user: v.get("own").and_then(s).unwrap_or_default(),
    }
}

/// Reads fuzz bytes as decisions; past the end it reads zeros, so every input is complete.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn u64(&mut self) -> u64 {
        let mut out = 0u64;
        for _ in 0..8 {
            out = (out << 8) | u64::from(self.byte());
        }
        out
    }

    /// A length-prefixed string (lossy UTF-8).
    fn string(&mut self) -> String {
        let len = usize::from(self.byte() % 64);
        let start = self.pos.min(self.data.len());
        let end = (self.pos + len).min(self.data.len());
        self.pos += len;
        String::from_utf8_lossy(&self.data[start..end]).into_owned()
    }

    fn rest(&self) -> &[u8] {
        &self.data[self.pos.min(self.data.len())..]
    }
}

/// Every node of a JSON value, as paths of object keys and array indices.
fn paths(v: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                prefix.push(Step::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(list) => {
            for (i, child) in list.iter().enumerate() {
                prefix.push(Step::Index(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn node_mut<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |node, step| match step {
        Step::Key(k) => node.get_mut(k.as_str()),
        Step::Index(i) => node.get_mut(*i),
    })
}

/// Apply up to eight input-chosen mutations to a copy of `template`.
fn mutate(template: &Value, input: &mut Input<'_>) -> Value {
    let mut v = template.clone();
    for _ in 0..input.byte() % 9 {
        let mut all = Vec::new();
        paths(&v, &mut Vec::new(), &mut all);
        let path = all[usize::from(input.byte()) % all.len()].clone();
        let op = input.byte() % 12;
        if op == 0 {
            // Delete the node from its parent.
            if let Some((last, parent)) = path.split_last() {
                match (node_mut(&mut v, parent), last) {
                    (Some(Value::Object(m)), Step::Key(k)) => {
                        m.remove(k);
                    }
                    (Some(Value::Array(a)), Step::Index(i)) if *i < a.len() => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
            continue;
        }
        let replacement = match op {
            1 => Value::String(input.string()),
            2 => Value::Null,
            3 => json!(input.u64()),
            4 => json!(-(i64::from(input.byte())) - 1),
            5 => Value::Bool(input.byte() % 2 == 0),
            6 => json!([]),
            7 => json!({}),
            8 => {
                // Truncate or corrupt a string (base64 ciphertexts, keys, signatures, ids).
                let Some(Value::String(s)) = node_mut(&mut v, &path).map(|n| n.clone()) else { continue };
                let mut bytes = s.into_bytes();
                if !bytes.is_empty() {
                    let at = usize::from(input.byte()) % bytes.len();
                    if input.byte() % 2 == 0 {
                        bytes.truncate(at);
                    } else {
                        bytes[at] = input.byte();
                    }
                }
                Value::String(String::from_utf8_lossy(&bytes).into_owned())
            }
            9 => {
                // Inflate: a very long string, to find size assumptions.
                let len = (usize::from(input.byte()) * 257).min(MAX_INFLATE);
                Value::String("A".repeat(len))
            }
            10 => {
                // Move another node here (right type, wrong place).
                let other = &all[usize::from(input.byte()) % all.len()];
                node_mut(&mut v.clone(), other).cloned().unwrap_or(Value::Null)
            }
            _ => {
                // Add an unexpected key to an object.
                if let Some(Value::Object(m)) = node_mut(&mut v, &path) {
                    m.insert(input.string(), Value::String(input.string()));
                }
                continue;
            }
        };
        if let Some(node) = node_mut(&mut v, &path) {
            *node = replacement;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: a fixed-seed generator, so a failure names an input that reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn store_snapshot(h: &Harness) -> (usize, usize) {
        let t = h.target.lock().expect("target");
        h.rt.block_on(async {
            let sessions = t.olm().store().get_inbound_group_sessions().await.expect("sessions").len();
            let room = ledger_len(t.olm()).await;
            (sessions, room)
        })
    }

    async fn ledger_len(machine: &OlmMachine) -> usize {
        crate::withheld::records::no_olm_records(machine, BOB).await.expect("records").len()
    }

    #[test]
    fn the_templates_are_valid_input() {
        let h = Harness::new();
        // Zero mutations of each template (the mutation count byte is 0 past the input's end).
        for i in 0..h.to_device_templates() {
            let out = h.run(&[0, 0, i as u8]);
            assert!(out.reached_machine && !out.rejected, "to-device template {i}: {out:?}");
        }
        assert!(!h.run(&[2]).rejected, "the room event decrypts");
        for kind in 0..5u8 {
            let out = h.run(&[3, kind]);
            assert!(out.reached_machine, "response template {kind} parses: {out:?}");
        }
        assert!(!h.run(&[5]).rejected, "the policy template is valid");
    }

    #[test]
    fn random_mutations_never_panic_and_rejected_calls_change_nothing() {
        let h = Harness::new();
        let mut rng = Rng(0x5EED_0F_C0FFEE);
        let (mut tried, mut rejected) = (0u32, 0u32);
        for _ in 0..2_000 {
            let len = (rng.next() % 96) as usize;
            let input = rng.bytes(len);
            h.prepare();
            let before = store_snapshot(&h);
            let out = h.run(&input);
            tried += 1;
            if out.rejected && out.reached_machine {
                rejected += 1;
                assert_eq!(store_snapshot(&h), before, "a rejected input changed the store: {input:?}");
            }
        }
        assert_eq!(tried, 2_000);
        assert!(rejected > 0, "the inputs must include rejected ones for the property to mean anything");
    }

    /// CPU seconds this process used so far (user + system, from `/proc/self/stat`; 0 where
    /// that file does not exist): the machine is shared, so wall-clock rates depend on the load.
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
        ticks / 100.0
    }

    /// A volume run, not a test: `HOSTILE_VOLUME=n cargo test --lib --no-default-features
    /// hostile::tests::volume -- --ignored --nocapture` feeds n random inputs (default
    /// 1,000,000; up to 4,096 bytes, the entry points in turn, seed `HOSTILE_SEED`) and prints
    /// progress every 50,000. Not coverage-guided (that is `fuzz/`); a panic fails it.
    #[test]
    #[ignore]
    fn volume() {
        let h = Harness::new();
        let seed = std::env::var("HOSTILE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x0F_A11_0F_1u64);
        let total: u64 = std::env::var("HOSTILE_VOLUME").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
        let mut rng = Rng(seed);
        let (start, cpu) = (std::time::Instant::now(), cpu_seconds());
        let (mut rejected, mut reached) = (0u64, 0u64);
        for i in 0..total {
            let len = 1 + (rng.next() % 4096) as usize;
            let mut input = rng.bytes(len);
            input[0] = (i % 6) as u8;
            let out = h.run(&input);
            rejected += u64::from(out.rejected);
            reached += u64::from(out.reached_machine);
            if (i + 1) % 50_000 == 0 || i + 1 == total {
                let (wall, used) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
                println!(
                    "{} inputs in {wall:.0} s ({:.0}/s; {used:.0} CPU s, {:.0} per CPU second): {rejected} rejected, {reached} reached the machine, {} resets, 0 panics",
                    i + 1,
                    (i + 1) as f64 / wall,
                    (i + 1) as f64 / used.max(0.01),
                    h.resets()
                );
            }
        }
    }

    /// A measurement, not a test: `cargo test --lib --no-default-features [--release]
    /// hostile::tests::throughput -- --ignored --nocapture` prints how many inputs per second
    /// each entry point takes (random inputs up to 4,096 bytes, libFuzzer's default maximum).
    #[test]
    #[ignore]
    fn throughput() {
        let h = Harness::new();
        let mut rng = Rng(0x7EA5_0F_BEEF);
        let per_kind: u32 = std::env::var("HOSTILE_INPUTS").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000);
        let names = ["sync", "raw sync", "decrypt", "response", "parsers", "policy"];
        let mut total = (0u32, std::time::Duration::ZERO);
        for (kind, name) in names.iter().enumerate() {
            let resets = h.resets();
            let cpu = cpu_seconds();
            let start = std::time::Instant::now();
            for _ in 0..per_kind {
                let len = 1 + (rng.next() % 4096) as usize;
                let mut input = rng.bytes(len);
                input[0] = kind as u8;
                h.run(&input);
            }
            let spent = start.elapsed();
            total = (total.0 + per_kind, total.1 + spent);
            let cpu = cpu_seconds() - cpu;
            println!(
                "{name:>9}: {per_kind} inputs in {:.2} s = {:.0} inputs/s ({:.2} CPU s = {:.0} inputs per CPU second), {} resets",
                spent.as_secs_f64(),
                f64::from(per_kind) / spent.as_secs_f64(),
                cpu,
                f64::from(per_kind) / cpu.max(0.01),
                h.resets() - resets
            );
        }
        println!("      all: {} inputs in {:.2} s = {:.0} inputs/s", total.0, total.1.as_secs_f64(), f64::from(total.0) / total.1.as_secs_f64());
    }
}
