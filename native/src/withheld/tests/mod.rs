//! Machine-level tests of the withheld layer: real `OlmMachine`s ("alice", "bob", ...) on
//! memory stores, each with its own [`Withheld`], talking through [`Server`], an in-memory
//! homeserver. Each device reads the time from its own clock, which tests move forward.

mod crate_contract;
mod no_olm;
mod store_batch;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use matrix_sdk_crypto::{
    types::requests::{AnyOutgoingRequest, ToDeviceRequest},
    DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, OlmMachine, OlmMachineBuilder, TrustRequirement,
};
use ruma::{
    api::{
        client::{
            keys::{claim_keys, get_keys, upload_keys, upload_signatures},
            sync::sync_events::DeviceLists,
            to_device::send_event_to_device,
        },
        IncomingResponse, IncomingResponseExt,
    },
    events::{AnyMessageLikeEventContent, AnyToDeviceEvent},
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
    OwnedUserId, RoomId, TransactionId, UserId,
};
use serde_json::{json, Map, Value};

use super::{outgoing::Queued, policy::SendPolicy, sync::SyncOutcome, ShareOutcome, Withheld};

pub const ALICE: &str = "@alice:example.org";
pub const BOB: &str = "@bob:example.org";

pub fn response<R: IncomingResponse>(body: &Value) -> R {
    let bytes = serde_json::to_vec(body).expect("json");
    let http = http::Response::builder().status(200).body(bytes.as_slice()).expect("http response");
    R::try_from_http_response(http).map_err(|e| e.to_string()).expect("a valid response")
}

fn settings() -> DecryptionSettings {
    DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted }
}

type DeviceKey = (String, String);

/// An in-memory homeserver: device keys, one-time keys, to-device inboxes, and a log of claims.
#[derive(Default)]
pub struct Server {
    device_keys: BTreeMap<DeviceKey, Value>,
    one_time_keys: BTreeMap<DeviceKey, Vec<(String, Value)>>,
    inbox: BTreeMap<DeviceKey, Vec<Value>>,
    /// (claimer user, claimer device, claimed user, claimed device, whether a key was given).
    pub claims: Vec<(String, String, String, String, bool)>,
}

/// One device: the crate's machine, its withheld layer and its clock.
pub struct Device {
    pub machine: OlmMachine,
    pub withheld: Withheld,
    pub clock: Arc<AtomicU64>,
}

impl Device {
    pub async fn new(server: &Mutex<Server>, user: &str, device: &str) -> Device {
        let clock = Arc::new(AtomicU64::new(1_800_000_000_000));
        let read = clock.clone();
        let machine = OlmMachine::new(&UserId::parse(user).expect("user id"), device.into()).await;
        let withheld = Withheld::with_clock(SendPolicy::default(), true, Arc::new(move || read.load(Ordering::SeqCst)));
        let d = Device { machine, withheld, clock };
        d.flush(server).await;
        d
    }

    /// A device whose machine keeps its state in `store` (the other constructor: memory).
    pub async fn on_store(server: &Mutex<Server>, user: &str, device: &str, store: impl matrix_sdk_crypto::store::IntoCryptoStore) -> Device {
        let clock = Arc::new(AtomicU64::new(1_800_000_000_000));
        let read = clock.clone();
        let device_id: ruma::OwnedDeviceId = device.into();
        let machine = OlmMachineBuilder::new(&UserId::parse(user).expect("user id"), &device_id).with_crypto_store(store).build().await.expect("machine");
        let withheld = Withheld::with_clock(SendPolicy::default(), true, Arc::new(move || read.load(Ordering::SeqCst)));
        let d = Device { machine, withheld, clock };
        d.flush(server).await;
        d
    }

    pub fn user(&self) -> &str {
        self.machine.user_id().as_str()
    }

    pub fn device(&self) -> &str {
        self.machine.device_id().as_str()
    }

    pub fn curve25519(&self) -> String {
        self.machine.identity_keys().curve25519.to_base64()
    }

    /// Move this device's clock forward.
    pub fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::SeqCst);
    }

    /// Send every request the machine and its withheld layer hand out, until none is left.
    pub async fn flush(&self, server: &Mutex<Server>) {
        for _ in 0..10 {
            let crate_requests = self.machine.outgoing_requests().await.expect("outgoing requests");
            let ours = self.withheld.queued();
            if crate_requests.is_empty() && ours.is_empty() {
                return;
            }
            for r in crate_requests {
                let id = r.request_id().to_owned();
                let mut claim = None;
                match r.request() {
                    AnyOutgoingRequest::KeysUpload(u) => {
                        let otks: Map<String, Value> = u
                            .one_time_keys
                            .iter()
                            .map(|(id, key)| (id.to_string(), serde_json::to_value(key).expect("one-time key")))
                            .collect();
                        let upload = json!({ "device_keys": serde_json::to_value(&u.device_keys).expect("device keys"), "one_time_keys": otks });
                        let body = server.lock().unwrap().upload(self.user(), self.device(), upload);
                        let parsed: upload_keys::v3::Response = response(&body);
                        self.machine.mark_request_as_sent(&id, &parsed).await.expect("mark upload");
                    }
                    AnyOutgoingRequest::KeysQuery(q) => {
                        let users: Vec<String> = q.device_keys.keys().map(|u| u.to_string()).collect();
                        let body = server.lock().unwrap().query(&users);
                        let parsed: get_keys::v3::Response = response(&body);
                        self.machine.mark_request_as_sent(&id, &parsed).await.expect("mark query");
                    }
                    AnyOutgoingRequest::KeysClaim(c) => {
                        let wanted = serde_json::to_value(&c.one_time_keys).expect("claim");
                        let body = server.lock().unwrap().claim(self.user(), self.device(), &wanted);
                        let parsed: claim_keys::v3::Response = response(&body);
                        self.machine.mark_request_as_sent(&id, &parsed).await.expect("mark claim");
                        claim = Some(parsed);
                    }
                    AnyOutgoingRequest::ToDeviceRequest(t) => {
                        server.lock().unwrap().deliver(self.user(), t);
                        self.machine.mark_request_as_sent(&id, &send_event_to_device::v3::Response::new()).await.expect("mark to-device");
                    }
                    AnyOutgoingRequest::SignatureUpload(_) => {
                        let parsed: upload_signatures::v3::Response = response(&json!({ "failures": {} }));
                        self.machine.mark_request_as_sent(&id, &parsed).await.expect("mark signatures");
                    }
                    _ => continue,
                }
                self.withheld.after_request_sent(&self.machine, id.as_str(), claim.as_ref()).await.expect("after request");
            }
            for q in ours {
                match q {
                    Queued::ToDevice(t) => {
                        server.lock().unwrap().deliver(self.user(), &t);
                        self.withheld.after_request_sent(&self.machine, t.txn_id.as_str(), None).await.expect("after to-device");
                    }
                    Queued::Claim { id, body, .. } => {
                        let body: Value = serde_json::from_str(&body).expect("claim body");
                        let answer = server.lock().unwrap().claim(self.user(), self.device(), &body["one_time_keys"]);
                        let parsed: claim_keys::v3::Response = response(&answer);
                        let txn: &TransactionId = id.as_str().into();
                        self.machine.mark_request_as_sent(txn, &parsed).await.expect("mark our claim");
                        self.withheld.after_request_sent(&self.machine, &id, Some(&parsed)).await.expect("after our claim");
                    }
                }
            }
        }
        panic!("outgoing requests did not settle");
    }

    /// Track `users` and learn their devices.
    pub async fn track(&self, server: &Mutex<Server>, users: &[&str]) {
        let ids: Vec<OwnedUserId> = users.iter().map(|u| UserId::parse(*u).expect("user id")).collect();
        self.machine.update_tracked_users(ids.iter().map(|u| u.as_ref())).await.expect("track");
        self.flush(server).await;
    }

    /// Receive the inbox (with `extra` events appended) and run the withheld steps.
    pub async fn sync_with(&self, server: &Mutex<Server>, extra: Vec<Value>) -> SyncOutcome {
        let mut events = server.lock().unwrap().take_inbox(self.user(), self.device());
        events.extend(extra);
        let raw: Vec<Raw<AnyToDeviceEvent>> = events.iter().map(|e| Raw::new(e).expect("event").cast_unchecked()).collect();
        let lists = DeviceLists::new();
        let counts = BTreeMap::new();
        let changes = EncryptionSyncChanges {
            to_device_events: raw,
            changed_devices: &lists,
            one_time_keys_counts: &counts,
            unused_fallback_keys: None,
            next_batch_token: None,
        };
        let (processed, keys) = self.machine.receive_sync_changes(changes, &settings()).await.expect("sync");
        let outcome = self.withheld.after_sync(&self.machine, &processed, &keys).await.expect("after sync");
        self.flush(server).await;
        outcome
    }

    pub async fn sync(&self, server: &Mutex<Server>) -> SyncOutcome {
        self.sync_with(server, Vec::new()).await
    }

    /// Claim sessions with the members' devices, share the room key and send what the share made.
    pub async fn share(&self, server: &Mutex<Server>, room: &str, members: &[&str], settings: EncryptionSettings) -> ShareOutcome {
        self.track(server, members).await;
        let ids: Vec<OwnedUserId> = members.iter().map(|u| UserId::parse(*u).expect("user id")).collect();
        if let Some((id, c)) = self.machine.get_missing_sessions(ids.iter().map(|u| u.as_ref())).await.expect("missing sessions") {
            let wanted = serde_json::to_value(&c.one_time_keys).expect("claim");
            let body = server.lock().unwrap().claim(self.user(), self.device(), &wanted);
            let parsed: claim_keys::v3::Response = response(&body);
            self.machine.mark_request_as_sent(&id, &parsed).await.expect("mark claim");
            self.withheld.after_request_sent(&self.machine, id.as_str(), Some(&parsed)).await.expect("after claim");
        }
        let room = RoomId::parse(room).expect("room id");
        let outcome = self.withheld.share_room_key(&self.machine, &room, &ids, settings, None).await.expect("share");
        for r in &outcome.requests {
            server.lock().unwrap().deliver(self.user(), r);
            let id = r.txn_id.as_str();
            if !self.withheld.is_own_request(id) {
                self.machine.mark_request_as_sent(&r.txn_id, &send_event_to_device::v3::Response::new()).await.expect("mark share");
            }
            self.withheld.after_request_sent(&self.machine, id, None).await.expect("after share");
        }
        outcome
    }

    /// Encrypt a text message for the room, as the homeserver would deliver it.
    pub async fn encrypt(&self, room: &str, body: &str) -> Value {
        let room_id = RoomId::parse(room).expect("room id");
        let content: Raw<AnyMessageLikeEventContent> = Raw::new(&json!({ "msgtype": "m.text", "body": body })).expect("content").cast_unchecked();
        let encrypted = self.machine.encrypt_room_event_raw(&room_id, "m.room.message", &content).await.expect("encrypt");
        let content: Value = encrypted.content.deserialize_as_unchecked().expect("content");
        json!({ "type": "m.room.encrypted", "sender": self.user(), "event_id": format!("${}", TransactionId::new()),
                "origin_server_ts": self.clock.load(Ordering::SeqCst), "room_id": room, "content": content })
    }

    /// The decrypted body of a room event, or the crate's error text.
    pub async fn decrypt(&self, event: &Value) -> Result<String, String> {
        let room = RoomId::parse(event["room_id"].as_str().expect("room id")).expect("room id");
        let raw = Raw::new(event).expect("event").cast_unchecked();
        let d = self.machine.decrypt_room_event(&raw, &room, &settings()).await.map_err(|e| e.to_string())?;
        let v: Value = d.event.deserialize_as_unchecked().expect("decrypted");
        Ok(v["content"]["body"].as_str().unwrap_or_default().to_owned())
    }
}

impl Server {
    fn upload(&mut self, user: &str, device: &str, body: Value) -> Value {
        let k = (user.to_owned(), device.to_owned());
        if let Some(keys) = body.get("device_keys").filter(|v| !v.is_null()) {
            self.device_keys.insert(k.clone(), keys.clone());
        }
        let otks = self.one_time_keys.entry(k.clone()).or_default();
        if let Some(map) = body.get("one_time_keys").and_then(Value::as_object) {
            otks.extend(map.iter().map(|(id, key)| (id.clone(), key.clone())));
        }
        json!({ "one_time_key_counts": { "signed_curve25519": otks.len() } })
    }

    fn query(&self, users: &[String]) -> Value {
        let mut out = Map::new();
        for ((u, d), keys) in &self.device_keys {
            if users.contains(u) {
                out.entry(u.clone()).or_insert_with(|| json!({}))[d] = keys.clone();
            }
        }
        json!({ "device_keys": out, "failures": {} })
    }

    pub fn claim(&mut self, claimer: &str, claimer_device: &str, wanted: &Value) -> Value {
        let mut out = Map::new();
        for (u, devices) in wanted.as_object().into_iter().flatten() {
            for d in devices.as_object().into_iter().flatten().map(|(d, _)| d) {
                let key = self.one_time_keys.get_mut(&(u.clone(), d.clone())).and_then(|l| l.pop());
                self.claims.push((claimer.to_owned(), claimer_device.to_owned(), u.clone(), d.clone(), key.is_some()));
                if let Some((id, key)) = key {
                    out.entry(u.clone()).or_insert_with(|| json!({}))[d] = json!({ id: key });
                }
            }
        }
        json!({ "one_time_keys": out, "failures": {} })
    }

    fn deliver(&mut self, sender: &str, request: &ToDeviceRequest) {
        for (user, devices) in &request.messages {
            for (device, content) in devices {
                let DeviceIdOrAllDevices::DeviceId(device) = device else { continue };
                let content: Value = content.deserialize_as_unchecked().expect("content");
                self.inbox
                    .entry((user.to_string(), device.to_string()))
                    .or_default()
                    .push(json!({ "type": request.event_type.to_string(), "sender": sender, "content": content }));
            }
        }
    }

    fn take_inbox(&mut self, user: &str, device: &str) -> Vec<Value> {
        self.inbox.remove(&(user.to_owned(), device.to_owned())).unwrap_or_default()
    }

    /// Drop every one-time key of a device (an exhausted device).
    pub fn exhaust(&mut self, user: &str, device: &str) {
        self.one_time_keys.insert((user.to_owned(), device.to_owned()), Vec::new());
    }

    /// The events waiting for a device, without taking them.
    pub fn pending(&self, user: &str, device: &str) -> Vec<Value> {
        self.inbox.get(&(user.to_owned(), device.to_owned())).cloned().unwrap_or_default()
    }

    /// How many keys `claimer` claimed from `user`/`device` and got.
    pub fn claims_of(&self, claimer: &str, user: &str, device: &str) -> usize {
        self.claims.iter().filter(|c| c.0 == claimer && c.2 == user && c.3 == device && c.4).count()
    }
}
