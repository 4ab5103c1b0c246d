//! Reacting to what arrives: answering room-key requests (with `withheld` in forwarded keys) and
//! repairing the Olm channel after an `m.no_olm` notice.

use matrix_sdk_common::deserialized_responses::ProcessedToDeviceEvent;
use matrix_sdk_crypto::{store::DynCryptoStore, OlmMachine};
use ruma::{DeviceId, OwnedDeviceId, RoomId, UserId};
use serde::Serialize;
use serde_json::{json, Value};

use super::{
    codes,
    key_requests::{self, Answer, KeyRequest, RequestFacts},
    records,
    outgoing::{self, Deferred, Queued},
    received::NoOlmRecord,
    Withheld, WithheldError,
};

/// At most one reaction (new Olm session + `m.dummy`) per device per hour: the spec's limit on
/// unwedging a broken Olm channel.
pub const REACTION_INTERVAL_MS: u64 = 60 * 60_000;
// Persisted under this key since the first release: the value stays, whatever the name says.
const REACTIONS_KEY: &str = "matrix-crypto-node.withheld.v1.unwedged";

/// What the machine did with one incoming room-key request (see `SyncResult.keyRequestAnswers`).
#[cfg_attr(feature = "node", napi_derive::napi(object))]
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRequestAnswer {
    /// The requesting user.
    pub sender: String,
    /// The requesting device.
    pub requesting_device: String,
    /// The room of the requested session.
    pub room_id: String,
    /// The requested session.
    pub session_id: String,
    /// `forwarded` (our own verified device gets the session from our first known index),
    /// the withheld code of the refusal (`m.unauthorised` for other users, `m.unverified` for
    /// our unverified devices, `m.unavailable` when we do not hold the session), `ignored` (an
    /// unknown device, or ourselves), or `rate_limited` (over the bounds; nothing is sent).
    pub answer: String,
    /// False when nothing was queued: ignored, rate limited, or a refusal the policy suppresses.
    pub sent: bool,
}

fn backend(machine: &OlmMachine) -> &DynCryptoStore {
    &**machine.store()
}

/// The `m.forwarded_room_key` content for a session, from its first known index, with the
/// `withheld` property when part of it was withheld from us.
async fn forwarded_content(machine: &OlmMachine, room_id: &RoomId, session_id: &str) -> Result<Option<Value>, WithheldError> {
    let Some(session) = backend(machine).get_inbound_group_session(room_id, session_id).await.map_err(WithheldError::Store)? else {
        return Ok(None);
    };
    let first = session.first_known_index();
    let export = session.export_at_index(first).await;
    let mut content = json!({
        "algorithm": export.algorithm.to_string(),
        "room_id": export.room_id,
        "sender_key": export.sender_key.to_base64(),
        "session_id": export.session_id,
        "session_key": export.session_key.to_base64(),
        "sender_claimed_ed25519_key": export.sender_claimed_keys.get(&ruma::DeviceKeyAlgorithm::Ed25519).map(|k| k.to_base64()),
        "forwarding_curve25519_key_chain": [],
    });
    if first > 0 {
        let records = records::room_records(machine, room_id.as_str(), session_id).await?;
        if let Some(r) = super::export::best_record(&records, &session.sender_key().to_base64()) {
            content["withheld"] = json!({ "code": r.code, "reason": r.reason.clone().unwrap_or_else(|| codes::default_reason(&r.code).to_owned()) });
        }
    }
    Ok(Some(content))
}

impl Withheld {
    /// Answer the room-key requests (and honour cancellations) in a sync batch.
    pub async fn answer_key_requests(
        &self,
        machine: &OlmMachine,
        events: &[ProcessedToDeviceEvent],
    ) -> Result<Vec<KeyRequestAnswer>, WithheldError> {
        let mut requests = Vec::new();
        for e in events {
            let raw = match e {
                ProcessedToDeviceEvent::Decrypted { raw, .. } | ProcessedToDeviceEvent::PlainText(raw) => raw,
                _ => continue,
            };
            let Ok(v) = raw.deserialize_as_unchecked::<Value>() else { continue };
            if v.get("type").and_then(Value::as_str) != Some("m.room_key_request") {
                continue;
            }
            let sender = v.get("sender").and_then(Value::as_str).unwrap_or_default();
            if let Some(r) = v.get("content").and_then(Value::as_object).and_then(|c| key_requests::parse(sender, c)) {
                requests.push(r);
            }
        }
        let cancelled: Vec<(String, String, String)> = requests
            .iter()
            .filter(|r| r.body.is_none())
            .map(|r| (r.sender.clone(), r.requesting_device.clone(), r.request_id.clone()))
            .collect();
        self.cancel_answers(&cancelled);

        let policy = self.policy();
        let mut out = Vec::new();
        for r in requests {
            let Some(body) = &r.body else { continue };
            if cancelled.contains(&(r.sender.clone(), r.requesting_device.clone(), r.request_id.clone())) {
                continue;
            }
            let answer = self.answer_one(machine, &r, body, &policy).await?;
            out.push(answer);
        }
        Ok(out)
    }

    async fn answer_one(
        &self,
        machine: &OlmMachine,
        r: &KeyRequest,
        body: &key_requests::RequestedKey,
        policy: &super::policy::SendPolicy,
    ) -> Result<KeyRequestAnswer, WithheldError> {
        let report = |answer: &str, sent: bool| KeyRequestAnswer {
            sender: r.sender.clone(),
            requesting_device: r.requesting_device.clone(),
            room_id: body.room_id.clone(),
            session_id: body.session_id.clone(),
            answer: answer.to_owned(),
            sent,
        };
        let (Ok(user), Ok(room)) = (UserId::parse(&r.sender), RoomId::parse(&body.room_id)) else {
            return Ok(report("ignored", false));
        };
        let device_id: OwnedDeviceId = r.requesting_device.as_str().into();
        let device = machine.get_device(&user, &device_id, None).await.map_err(WithheldError::Store)?;
        let session_held = body.algorithm == codes::MEGOLM_V1
            && backend(machine).get_inbound_group_session(&room, &body.session_id).await.map_err(WithheldError::Store)?.is_some();
        let from_own_user = user == machine.user_id();
        let facts = RequestFacts {
            from_own_user,
            from_this_device: from_own_user && device_id == machine.device_id(),
            device_known: device.is_some(),
            device_verified: device.as_ref().is_some_and(|d| d.is_verified()),
            session_held,
        };
        let answer = key_requests::decide(facts);
        if answer == Answer::Ignore {
            return Ok(report("ignored", false));
        }
        if !self.limiter.lock().expect("limiter").admit(&r.sender, &r.requesting_device, &body.session_id, self.now()) {
            records::Metrics::count(&self.metrics.rate_limited);
            return Ok(report("rate_limited", false));
        }
        match answer {
            Answer::Refuse(code) => {
                if !policy.allows(code) {
                    return Ok(report(code, false));
                }
                let content = codes::room_notice(
                    code,
                    policy.reason(code),
                    &body.room_id,
                    &body.session_id,
                    &machine.identity_keys().curve25519.to_base64(),
                    machine.device_id().as_str(),
                );
                let request = outgoing::plain(&user, &device_id, codes::WITHHELD_EVENT_TYPE, &content)?;
                self.enqueue_answer(Queued::ToDevice(request), (&r.sender, &r.requesting_device, &r.request_id));
                Ok(report(code, true))
            }
            Answer::Forward => {
                let Some(content) = forwarded_content(machine, &room, &body.session_id).await? else {
                    return Ok(report("ignored", false));
                };
                let deferred = Deferred::Encrypted { event_type: "m.forwarded_room_key".to_owned(), content };
                let queued = match outgoing::encrypt_for(machine, &user, &device_id, &deferred).await? {
                    Some(request) => Queued::ToDevice(request),
                    None => outgoing::claim(&r.sender, &r.requesting_device, vec![deferred]),
                };
                self.enqueue_answer(queued, (&r.sender, &r.requesting_device, &r.request_id));
                Ok(report("forwarded", true))
            }
            Answer::Ignore => Ok(report("ignored", false)),
        }
    }

    /// React to a trusted `m.no_olm` notice: claim a one-time key of the sender device, create
    /// an Olm session and send it an encrypted `m.dummy`, at most once per device per hour.
    ///
    /// The hourly limit is about our own reactions, not about whether some Olm session with the
    /// device exists: a session the sender has not been shown to use (no message from it
    /// arrived since the notice; [`Withheld::after_sync`] checks the batch) repairs nothing,
    /// e.g. one we created for a share that then withheld the key from that device.
    pub async fn react_to_no_olm(&self, machine: &OlmMachine, notice: &NoOlmRecord) -> Result<bool, WithheldError> {
        if !self.react_to_no_olm_enabled() {
            return Ok(false);
        }
        let Ok(user) = UserId::parse(&notice.sender) else { return Ok(false) };
        let devices = machine.get_user_devices(&user, None).await.map_err(WithheldError::Store)?;
        let Some(device) = devices.devices().find(|d| {
            d.curve25519_key().is_some_and(|k| k.to_base64() == notice.sender_key)
                && notice.from_device.as_deref().is_none_or(|f| f == d.device_id().as_str())
        }) else {
            return Ok(false);
        };
        let device_id = device.device_id().to_owned();
        let now = self.now();
        let _guard = self.reaction_lock.lock().await;
        let key = format!("{REACTIONS_KEY}:{user}");
        let mut last: std::collections::BTreeMap<String, u64> =
            machine.store().get_value(&key).await.map_err(WithheldError::Store)?.unwrap_or_default();
        if last.get(device_id.as_str()).is_some_and(|t| now.saturating_sub(*t) < REACTION_INTERVAL_MS) {
            return Ok(false);
        }
        last.insert(device_id.to_string(), now);
        machine.store().set_value(&key, &last).await.map_err(WithheldError::Store)?;
        let dummy = Deferred::Encrypted { event_type: "m.dummy".to_owned(), content: json!({}) };
        self.enqueue(outgoing::claim(user.as_str(), device_id.as_str(), vec![dummy]));
        Ok(true)
    }

    /// After our one-device claim was answered (and the crate made the session): encrypt what
    /// waited for it.
    pub async fn after_claim(&self, machine: &OlmMachine, user: &str, device: &str, then: Vec<Deferred>) -> Result<(), WithheldError> {
        let (Ok(user_id), device_id) = (UserId::parse(user), <&DeviceId>::from(device)) else { return Ok(()) };
        for d in then {
            if let Some(request) = outgoing::encrypt_for(machine, &user_id, device_id, &d).await? {
                self.enqueue(Queued::ToDevice(request));
            }
        }
        Ok(())
    }
}
