//! The mass-recipient scenario on the crate's `OlmMachine`, phase for phase as `bench/scenario.ts`
//! runs it through the binding: the same fixtures, the same responses, the same timed calls.
//! Each timed phase includes parsing the homeserver's JSON (a Rust client gets bytes too) and
//! serialising the request bodies it would send.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use matrix_sdk_crypto::{
    store::MemoryStore,
    types::requests::{AnyOutgoingRequest, ToDeviceRequest},
    CollectStrategy, DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, LocalTrust, OlmMachine, OlmMachineBuilder,
    TrustRequirement,
};
use matrix_sdk_sqlite::SqliteCryptoStore;
use ruma::{
    api::{
        client::{
            keys::{
                claim_keys::v3::Response as KeysClaimResponse, get_keys::v3::Response as KeysQueryResponse,
                upload_keys::v3::Response as KeysUploadResponse,
            },
            to_device::send_event_to_device::v3::Response as ToDeviceResponse,
        },
        IncomingResponse, IncomingResponseExt,
    },
    api::client::sync::sync_events::DeviceLists,
    events::AnyToDeviceEvent,
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
    OwnedUserId, RoomId, UserId,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, value::RawValue};

use crate::{rss, summarise, Run};

/// What the Node driver passes on the command line.
pub struct Setup {
    pub store: String,
    pub n: usize,
    pub devices_per_user: usize,
    pub reps: usize,
    pub work: PathBuf,
    /// Stop after this phase (to profile one phase with `perf`); the driver never sets it.
    pub until: Option<&'static str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FixtureUser<'a> {
    user_id: String,
    #[serde(borrow)]
    device_keys: &'a RawValue,
    #[serde(borrow)]
    one_time_keys: &'a RawValue,
}

#[derive(Deserialize)]
struct Fixtures<'a> {
    #[serde(borrow)]
    users: Vec<FixtureUser<'a>>,
}

const SENDER: (&str, &str) = ("@sender:bench.example", "SENDERDEVICE");
const RECIPIENT: (&str, &str) = ("@recipient:bench.example", "RECIPIENTDEVICE");
const ROOM: &str = "!bench:bench.example";
const WITHHELD_ROOM: &str = "!bench-withheld:bench.example";

pub const PHASES: [&str; 6] = ["keys_query", "olm_sessions", "share_new", "share_existing", "encrypt_decrypt", "share_withheld"];

type Error = String;

fn err(e: impl std::fmt::Display) -> Error {
    e.to_string()
}

fn parse<R: IncomingResponse>(body: &str) -> Result<R, Error> {
    let response = http::Response::builder().status(200).body(body.as_bytes()).map_err(err)?;
    R::try_from_http_response(response).map_err(err)
}

async fn open(store: &str, dir: &Path, user: &str, device: &str) -> Result<OlmMachine, Error> {
    let user = UserId::parse(user).map_err(err)?;
    let device: &ruma::DeviceId = device.into();
    match store {
        "memory" => OlmMachineBuilder::new(&user, device).with_crypto_store(MemoryStore::new()).build().await.map_err(err),
        "sqlite-crate" => {
            let store = SqliteCryptoStore::open(dir, None).await.map_err(err)?;
            OlmMachineBuilder::new(&user, device).with_crypto_store(store).build().await.map_err(err)
        }
        // Our engine (native/src/store/), as `OlmMachine.open` uses it, without the binding.
        "sqlite" | "postgres" => {
            use matrix_crypto_node::store::{backend::Backend, engine::{AccountKey, Engine}};
            let backend: std::sync::Arc<dyn Backend> = if store == "sqlite" {
                std::fs::create_dir_all(dir).map_err(err)?;
                std::sync::Arc::new(matrix_crypto_node::store::sqlite::SqliteBackend::open(dir.join("matrix-crypto-node.sqlite3")).await.map_err(err)?)
            } else {
                let url = std::env::var("MCN_BENCH_POSTGRES").map_err(|_| "MCN_BENCH_POSTGRES names no server".to_owned())?;
                let backend = matrix_crypto_node::store::postgres::PostgresBackend::connect(url.parse().map_err(err)?, 4).await.map_err(err)?;
                // Every repetition starts from a new account, as the SQLite runs start from a new folder.
                backend.delete_account(user.as_str(), device.as_str()).await.map_err(err)?;
                std::sync::Arc::new(backend)
            };
            let key = AccountKey { user_id: user.to_string(), device_id: device.to_string() };
            let engine = Engine::open(backend, key, None).await.map_err(err)?;
            OlmMachineBuilder::new(&user, device).with_crypto_store(engine).build().await.map_err(err)
        }
        other => Err(format!("unknown store {other}")),
    }
}

/// Upload the machine's keys; returns its device-keys and one-time-key fragments.
async fn upload(machine: &OlmMachine) -> Result<(String, String), Error> {
    for request in machine.outgoing_requests().await.map_err(err)? {
        if let AnyOutgoingRequest::KeysUpload(r) = request.request() {
            let device = machine.device_id().to_string();
            let keys = r.device_keys.as_ref().ok_or("no device keys to upload")?;
            let (otk_id, otk) = r.one_time_keys.iter().next().ok_or("no one-time keys to upload")?;
            let device_keys = json!({ &device: keys }).to_string();
            let one_time_keys = json!({ &device: { otk_id.to_string(): otk } }).to_string();
            let response: KeysUploadResponse =
                parse(&json!({ "one_time_key_counts": { "signed_curve25519": r.one_time_keys.len() } }).to_string())?;
            machine.mark_request_as_sent(request.request_id(), &response).await.map_err(err)?;
            return Ok((device_keys, one_time_keys));
        }
    }
    Err("the machine had no keys to upload".into())
}

fn response_body<'a>(field: &str, users: impl Iterator<Item = &'a UserId>, fragments: &HashMap<String, &str>) -> String {
    let mut body = format!("{{\"{field}\":{{");
    let mut first = true;
    for user in users {
        if let Some(fragment) = fragments.get(user.as_str()) {
            if !first {
                body.push(',');
            }
            first = false;
            body.push_str(&serde_json::to_string(user.as_str()).expect("a user id serialises"));
            body.push(':');
            body.push_str(fragment);
        }
    }
    body.push_str("},\"failures\":{}}");
    body
}

/// Answer every keys/query the machine asks for; returns the time spent processing responses.
async fn answer_key_queries(machine: &OlmMachine, device_keys: &HashMap<String, &str>) -> Result<Duration, Error> {
    let mut responses = Vec::new();
    for request in machine.outgoing_requests().await.map_err(err)? {
        if let AnyOutgoingRequest::KeysQuery(r) = request.request() {
            responses.push((request.request_id().to_owned(), response_body("device_keys", r.device_keys.keys().map(|u| u.as_ref()), device_keys)));
        }
    }
    let start = Instant::now();
    for (id, body) in &responses {
        let response: KeysQueryResponse = parse(body)?;
        machine.mark_request_as_sent(id, &response).await.map_err(err)?;
    }
    Ok(start.elapsed())
}

#[derive(Serialize)]
struct ToDeviceBody<'a> {
    messages: &'a BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<ruma::events::AnyToDeviceEventContent>>>,
}

/// The users as `&UserId`s, collected: an iterator mapping through a closure would make the
/// scenario's future not `Send` (a known rustc limitation with higher-ranked closures), and it
/// runs spawned on the runtime as the addon's calls do.
fn user_refs(users: &[OwnedUserId]) -> std::vec::IntoIter<&UserId> {
    users.iter().map(|u| -> &UserId { u }).collect::<Vec<_>>().into_iter()
}

struct Shared {
    elapsed: Duration,
    bytes: u64,
    requests: Vec<std::sync::Arc<ToDeviceRequest>>,
}

/// Share (timed together with serialising the bodies), then mark every request as sent.
async fn share(machine: &OlmMachine, room: &RoomId, users: &[OwnedUserId], strategy: CollectStrategy) -> Result<Shared, Error> {
    let settings = EncryptionSettings { sharing_strategy: strategy, ..Default::default() };
    let start = Instant::now();
    let requests = machine.share_room_key(room, user_refs(users), settings).await.map_err(err)?;
    let bodies: Vec<String> = requests
        .iter()
        .map(|r| serde_json::to_string(&ToDeviceBody { messages: &r.messages }))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let elapsed = start.elapsed();
    let bytes = bodies.iter().map(|b| b.len() as u64).sum();
    let sent = ToDeviceResponse::new();
    for r in &requests {
        machine.mark_request_as_sent(&r.txn_id, &sent).await.map_err(err)?;
    }
    Ok(Shared { elapsed, bytes, requests })
}

fn recipient_events(shared: &Shared) -> Result<Vec<Raw<AnyToDeviceEvent>>, Error> {
    let user = UserId::parse(RECIPIENT.0).map_err(err)?;
    let device = DeviceIdOrAllDevices::DeviceId(RECIPIENT.1.into());
    let mut out = Vec::new();
    for r in shared.requests.iter().filter(|r| r.event_type.to_string() == "m.room.encrypted") {
        if let Some(content) = r.messages.get(&user).and_then(|d| d.get(&device)) {
            let event = json!({ "type": "m.room.encrypted", "sender": SENDER.0, "content": content });
            out.push(Raw::new(&event).map_err(err)?.cast_unchecked());
        }
    }
    Ok(out)
}

/// One measured phase of one repetition.
#[derive(Clone, Copy, Default)]
struct Sample {
    elapsed: Duration,
    peak_mb: f64,
    bytes: u64,
}

async fn one_rep(fixtures: &Fixtures<'_>, setup: &Setup, rep: usize) -> Result<(f64, Vec<Sample>), Error> {
    let dir = setup.work.join(format!("rust-crate-{}-{rep}", setup.store));
    let _ = std::fs::remove_dir_all(&dir);
    let base = rss::current_mb();
    let sender = open(&setup.store, &dir.join("sender"), SENDER.0, SENDER.1).await?;
    let recipient = open(&setup.store, &dir.join("recipient"), RECIPIENT.0, RECIPIENT.1).await?;
    let own = upload(&sender).await?;
    let theirs = upload(&recipient).await?;

    let mut device_keys: HashMap<String, &str> =
        fixtures.users.iter().map(|u| (u.user_id.clone(), u.device_keys.get())).collect();
    let mut one_time_keys: HashMap<String, &str> =
        fixtures.users.iter().map(|u| (u.user_id.clone(), u.one_time_keys.get())).collect();
    device_keys.insert(SENDER.0.to_owned(), &own.0);
    device_keys.insert(RECIPIENT.0.to_owned(), &theirs.0);
    one_time_keys.insert(RECIPIENT.0.to_owned(), &theirs.1);
    // Settle our own user's key query before the measured one.
    answer_key_queries(&sender, &device_keys).await?;

    let mut users: Vec<OwnedUserId> =
        fixtures.users.iter().map(|u| UserId::parse(u.user_id.as_str())).collect::<Result<_, _>>().map_err(err)?;
    users.push(UserId::parse(RECIPIENT.0).map_err(err)?);
    let room = RoomId::parse(ROOM).map_err(err)?;
    let mut samples = Vec::new();

    // keys/query
    sender.update_tracked_users(user_refs(&users)).await.map_err(err)?;
    rss::reset_peak();
    let elapsed = answer_key_queries(&sender, &device_keys).await?;
    samples.push(Sample { elapsed, peak_mb: rss::peak_mb(), bytes: 0 });
    if setup.until == Some("keys_query") {
        return Ok((base, samples));
    }

    // keys/claim: Olm sessions
    let (claim_id, claim) = sender
        .get_missing_sessions(user_refs(&users))
        .await
        .map_err(err)?
        .ok_or("no sessions are missing")?;
    let body = response_body("one_time_keys", claim.one_time_keys.keys().map(|u| u.as_ref()), &one_time_keys);
    rss::reset_peak();
    let start = Instant::now();
    let response: KeysClaimResponse = parse(&body)?;
    sender.mark_request_as_sent(&claim_id, &response).await.map_err(err)?;
    samples.push(Sample { elapsed: start.elapsed(), peak_mb: rss::peak_mb(), bytes: 0 });
    if setup.until == Some("olm_sessions") {
        return Ok((base, samples));
    }

    // shareRoomKey with the new sessions, then again after rotation
    rss::reset_peak();
    let new = share(&sender, &room, &users, CollectStrategy::AllDevices).await?;
    samples.push(Sample { elapsed: new.elapsed, peak_mb: rss::peak_mb(), bytes: new.bytes });
    sender.discard_room_key(&room).await.map_err(err)?;
    rss::reset_peak();
    let existing = share(&sender, &room, &users, CollectStrategy::AllDevices).await?;
    samples.push(Sample { elapsed: existing.elapsed, peak_mb: rss::peak_mb(), bytes: existing.bytes });

    // encrypt one event; the recipient decrypts it
    let mut to_device = recipient_events(&new)?;
    to_device.extend(recipient_events(&existing)?);
    let settings = DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };
    let lists = DeviceLists::new();
    let counts = BTreeMap::new();
    recipient
        .receive_sync_changes(
            EncryptionSyncChanges {
                to_device_events: to_device,
                changed_devices: &lists,
                one_time_keys_counts: &counts,
                unused_fallback_keys: None,
                next_batch_token: None,
            },
            &settings,
        )
        .await
        .map_err(err)?;
    let content: Raw<ruma::events::AnyMessageLikeEventContent> =
        Raw::new(&json!({ "msgtype": "m.text", "body": "hello, ten thousand devices" })).map_err(err)?.cast_unchecked();
    rss::reset_peak();
    let start = Instant::now();
    let encrypted = sender.encrypt_room_event_raw(&room, "m.room.message", &content).await.map_err(err)?;
    let event = json!({
        "type": "m.room.encrypted",
        "sender": SENDER.0,
        "event_id": format!("$bench{rep}"),
        "origin_server_ts": 1,
        "room_id": ROOM,
        "content": encrypted.content,
    });
    let event: Raw<matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent> =
        Raw::from_json(serde_json::value::to_raw_value(&event).map_err(err)?);
    let decrypted = recipient.decrypt_room_event(&event, &room, &settings).await.map_err(err)?;
    let elapsed = start.elapsed();
    if !decrypted.event.json().get().contains("ten thousand devices") {
        return Err("the recipient decrypted something else".into());
    }
    samples.push(Sample { elapsed, peak_mb: rss::peak_mb(), bytes: 0 });

    // withheld: 10% blacklisted, 10% unverified, the rest verified; trusted devices only
    let mut index = 0usize;
    for user in &fixtures.users {
        let devices: BTreeMap<String, &RawValue> = serde_json::from_str(user.device_keys.get()).map_err(err)?;
        let user_id = UserId::parse(user.user_id.as_str()).map_err(err)?;
        for device_id in devices.keys() {
            let trust = match index % 10 {
                0 => LocalTrust::BlackListed,
                1 => LocalTrust::Unset,
                _ => LocalTrust::Verified,
            };
            index += 1;
            let device = sender.get_device(&user_id, device_id.as_str().into(), None).await.map_err(err)?;
            device.ok_or_else(|| format!("unknown device {user_id} {device_id}"))?.set_local_trust(trust).await.map_err(err)?;
        }
    }
    let recipient_user = UserId::parse(RECIPIENT.0).map_err(err)?;
    if let Some(d) = sender.get_device(&recipient_user, RECIPIENT.1.into(), None).await.map_err(err)? {
        d.set_local_trust(LocalTrust::Verified).await.map_err(err)?;
    }
    let withheld_room = RoomId::parse(WITHHELD_ROOM).map_err(err)?;
    rss::reset_peak();
    let withheld = share(&sender, &withheld_room, &users, CollectStrategy::OnlyTrustedDevices).await?;
    samples.push(Sample { elapsed: withheld.elapsed, peak_mb: rss::peak_mb(), bytes: withheld.bytes });

    drop(sender);
    drop(recipient);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((base, samples))
}

pub async fn run(text: &str, setup: &Setup) -> Result<Vec<Run>, Error> {
    let fixtures: Fixtures<'_> = serde_json::from_str(text).map_err(err)?;
    let devices = fixtures
        .users
        .iter()
        .map(|u| serde_json::from_str::<BTreeMap<String, &RawValue>>(u.device_keys.get()).map(|d| d.len()))
        .sum::<Result<usize, _>>()
        .map_err(err)?
        + 1;
    let mut reps: Vec<(f64, Vec<Sample>)> = Vec::new();
    for rep in 0..setup.reps {
        eprintln!("rust-crate {} n={} rep {}/{}", setup.store, setup.n, rep + 1, setup.reps);
        reps.push(one_rep(&fixtures, setup, rep).await?);
    }
    let base = reps.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    let measured = reps.iter().map(|r| r.1.len()).min().unwrap_or(0);
    Ok(PHASES[..measured]
        .iter()
        .enumerate()
        .map(|(i, phase)| {
            let samples: Vec<Sample> = reps.iter().map(|r| r.1[i]).collect();
            let (median, min, max) = summarise(&samples.iter().map(|s| s.elapsed).collect::<Vec<_>>());
            Run {
                implementation: "rust-crate",
                store: setup.store.clone(),
                n: setup.n,
                devices_per_user: setup.devices_per_user,
                phase,
                wall_ms: median,
                us_per_device: median * 1e3 / devices as f64,
                peak_rss_mb: samples.iter().map(|s| s.peak_mb).fold(0.0, f64::max),
                rss_base_mb: base,
                to_device_bytes: samples.iter().map(|s| s.bytes).max().unwrap_or(0),
                max_event_loop_delay_ms: None,
                reps: setup.reps,
                min_ms: min,
                max_ms: max,
                rep_ms: samples.iter().map(|s| s.elapsed.as_secs_f64() * 1e3).collect(),
                devices,
                cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            }
        })
        .collect())
}
