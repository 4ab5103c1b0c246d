//! What a `shareRoomKey` call sends: the crate's room-key messages, its withheld notices
//! filtered through the policy, and our own `m.no_olm` notices; plus a summary of who got what.

use std::collections::{BTreeMap, BTreeSet};

use matrix_sdk_crypto::{
    olm::ShareInfo,
    store::DynCryptoStore,
    types::requests::ToDeviceRequest,
    OlmMachine,
};
use ruma::{
    events::AnyToDeviceEventContent, serde::Raw, to_device::DeviceIdOrAllDevices, OwnedDeviceId,
    OwnedUserId, RoomId, TransactionId, UserId,
};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{codes, policy::SendPolicy, WithheldError};

/// A device that did not get the room key in a share, and the notice it gets.
#[cfg_attr(feature = "node", napi_derive::napi(object))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WithheldRecipient {
    /// The owner.
    pub user_id: String,
    /// The device id.
    pub device_id: String,
    /// The code of the notice (a `WithheldCode`).
    pub code: String,
    /// False when the policy suppressed the notice: the device was refused silently.
    pub sent: bool,
}

/// A device, by owner and id.
#[cfg_attr(feature = "node", napi_derive::napi(object))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRef {
    /// The owner.
    pub user_id: String,
    /// The device id.
    pub device_id: String,
}

/// The result of filtering one of the crate's `m.room_key.withheld` requests.
#[derive(Debug)]
pub struct Filtered {
    /// What to send, under the crate's transaction id; `None` when nothing is left.
    pub request: Option<ToDeviceRequest>,
    pub recipients: Vec<WithheldRecipient>,
    /// Devices the crate wanted to send `m.no_olm`: the no-olm ledger decides instead.
    pub crate_no_olm: Vec<(OwnedUserId, OwnedDeviceId)>,
}

fn device_key(d: &DeviceIdOrAllDevices) -> String {
    match d {
        DeviceIdOrAllDevices::DeviceId(id) => id.to_string(),
        DeviceIdOrAllDevices::AllDevices => "*".to_owned(),
    }
}

/// Apply the policy to one of the crate's withheld requests: drop disabled codes and all
/// `m.no_olm`, and set the configured reason.
pub fn filter_crate_request(request: &ToDeviceRequest, policy: &SendPolicy) -> Result<Filtered, WithheldError> {
    let mut messages: BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<AnyToDeviceEventContent>>> =
        BTreeMap::new();
    let mut recipients = Vec::new();
    let mut crate_no_olm = Vec::new();
    for (user, devices) in &request.messages {
        for (device, raw) in devices {
            let mut content: Map<String, Value> = raw.deserialize_as_unchecked().map_err(WithheldError::Json)?;
            let code = codes::str_field(&content, "code").unwrap_or_default().to_owned();
            if code == codes::NO_OLM {
                if let DeviceIdOrAllDevices::DeviceId(id) = device {
                    crate_no_olm.push((user.clone(), id.clone()));
                }
                continue;
            }
            let sent = policy.allows(&code);
            recipients.push(WithheldRecipient {
                user_id: user.to_string(),
                device_id: device_key(device),
                code: code.clone(),
                sent,
            });
            if sent {
                content.insert("reason".to_owned(), Value::String(policy.reason(&code).to_owned()));
                let raw = Raw::new(&content).map_err(WithheldError::Json)?.cast_unchecked();
                messages.entry(user.clone()).or_default().insert(device.clone(), raw);
            }
        }
    }
    let request = (!messages.is_empty()).then(|| ToDeviceRequest {
        event_type: request.event_type.clone(),
        txn_id: request.txn_id.clone(),
        messages,
    });
    Ok(Filtered { request, recipients, crate_no_olm })
}

/// Devices that receive the room key in these requests (the `m.room.encrypted` ones).
pub fn key_recipients(requests: &[&ToDeviceRequest]) -> Vec<DeviceRef> {
    let mut out = BTreeSet::new();
    for r in requests.iter().filter(|r| r.event_type.to_string() == "m.room.encrypted") {
        for (user, devices) in &r.messages {
            for device in devices.keys() {
                out.insert(DeviceRef { user_id: user.to_string(), device_id: device_key(device) });
            }
        }
    }
    out.into_iter().collect()
}

/// The devices a crate `m.room_key.withheld` request names with `m.no_olm`.
pub fn crate_no_olm_devices(request: &ToDeviceRequest) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>, WithheldError> {
    let mut out = Vec::new();
    for (user, devices) in &request.messages {
        for (device, raw) in devices {
            let DeviceIdOrAllDevices::DeviceId(id) = device else { continue };
            let content: Map<String, Value> = raw.deserialize_as_unchecked().map_err(WithheldError::Json)?;
            if codes::str_field(&content, "code") == Some(codes::NO_OLM) {
                out.push((user.clone(), id.clone()));
            }
        }
    }
    Ok(out)
}

/// Recipient devices that have no Olm session and no share record in the room's session: the
/// devices the MSC says get `m.no_olm`.
///
/// The crate already decided this for every recipient while sharing: it names a device without
/// a session in its own `m.no_olm` notice (`crate_no_olm`) unless its once-only flag for that
/// device is set. The flag is set only after we handled such a notice, so the ledger knows the
/// device; it can need a new notice only if the ledger re-armed it since. So instead of looking
/// up every recipient's devices and sessions again (two store reads per device: about 2 s for
/// 10,000 devices on SQLite), this checks only the crate's list and the `rearmed` devices.
pub async fn devices_without_olm(
    machine: &OlmMachine,
    room_id: &RoomId,
    crate_no_olm: Vec<(OwnedUserId, OwnedDeviceId)>,
    rearmed: Vec<(OwnedUserId, OwnedDeviceId)>,
    just_shared: &[DeviceRef],
) -> Result<Vec<(OwnedUserId, OwnedDeviceId)>, WithheldError> {
    let mut out: BTreeSet<(OwnedUserId, OwnedDeviceId)> = crate_no_olm.into_iter().collect();
    let shared: BTreeSet<(&str, &str)> = just_shared.iter().map(|d| (d.user_id.as_str(), d.device_id.as_str())).collect();
    let rearmed: Vec<_> =
        rearmed.into_iter().filter(|(u, d)| !out.contains(&(u.clone(), d.clone())) && !shared.contains(&(u.as_str(), d.as_str()))).collect();
    if rearmed.is_empty() {
        return Ok(out.into_iter().collect());
    }
    // Read-only access to the store backend: the crate keeps these lookups private.
    let backend: &DynCryptoStore = &**machine.store();
    let records = match backend.get_outbound_group_session(room_id).await.map_err(WithheldError::Store)? {
        Some(session) => {
            let pickle = session.pickle().await;
            let mut seen: BTreeSet<(OwnedUserId, OwnedDeviceId)> = BTreeSet::new();
            let infos = pickle.shared_with_set.iter().chain(pickle.requests.values().flat_map(|(_, infos)| infos.iter()));
            for (user, devices) in infos {
                for (device, info) in devices {
                    if !matches!(info, ShareInfo::Withheld(c) if c.as_str() == codes::NO_OLM) {
                        seen.insert((user.clone(), device.clone()));
                    }
                }
            }
            seen
        }
        None => BTreeSet::new(),
    };
    let own_user: &UserId = machine.user_id();
    for (u, d) in rearmed {
        if (u == own_user && d == machine.device_id()) || records.contains(&(u.clone(), d.clone())) {
            continue;
        }
        let Some(device) = backend.get_device(&u, &d).await.map_err(WithheldError::Store)? else { continue };
        if device.is_deleted() || device.is_dehydrated() {
            continue;
        }
        let Some(curve) = device.curve25519_key() else { continue };
        let sessions = backend.get_sessions(&curve.to_base64()).await.map_err(WithheldError::Store)?;
        if sessions.is_none_or(|s| s.is_empty()) {
            out.insert((u, d));
        }
    }
    Ok(out.into_iter().collect())
}

/// Our `m.no_olm` notices, batched like the crate batches to-device messages.
pub fn no_olm_requests(
    devices: &[(OwnedUserId, OwnedDeviceId)],
    reason: &str,
    sender_key: &str,
    from_device: &str,
) -> Result<Vec<ToDeviceRequest>, WithheldError> {
    const MAX_MESSAGES: usize = 250;
    let content = codes::no_olm_notice(reason, sender_key, from_device);
    let raw: Raw<AnyToDeviceEventContent> = Raw::new(&content).map_err(WithheldError::Json)?.cast_unchecked();
    Ok(devices
        .chunks(MAX_MESSAGES)
        .map(|chunk| {
            let mut messages: BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<AnyToDeviceEventContent>>> =
                BTreeMap::new();
            for (u, d) in chunk {
                messages.entry(u.clone()).or_default().insert(DeviceIdOrAllDevices::DeviceId(d.clone()), raw.clone());
            }
            ToDeviceRequest {
                event_type: codes::WITHHELD_EVENT_TYPE.into(),
                txn_id: TransactionId::new(),
                messages,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crate_request(entries: &[(&str, &str, &str)]) -> ToDeviceRequest {
        let mut messages: BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Raw<AnyToDeviceEventContent>>> =
            BTreeMap::new();
        for (u, d, code) in entries {
            let mut content = json!({ "algorithm": codes::MEGOLM_V1, "code": code, "sender_key": "K", "from_device": "A" });
            if *code != codes::NO_OLM {
                content["room_id"] = json!("!r:x");
                content["session_id"] = json!("S");
                content["reason"] = json!("crate text");
            }
            messages
                .entry(UserId::parse(*u).unwrap())
                .or_default()
                .insert(DeviceIdOrAllDevices::DeviceId((*d).into()), Raw::new(&content).unwrap().cast_unchecked());
        }
        ToDeviceRequest { event_type: codes::WITHHELD_EVENT_TYPE.into(), txn_id: TransactionId::new(), messages }
    }

    fn policy(json: &str) -> SendPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_policy_keeps_room_codes_with_our_reason_and_drops_crate_no_olm() {
        let r = crate_request(&[("@b:x", "B1", codes::UNVERIFIED), ("@b:x", "B2", codes::NO_OLM)]);
        let f = filter_crate_request(&r, &SendPolicy::default()).unwrap();
        let kept = f.request.expect("a request");
        assert_eq!(kept.txn_id, r.txn_id, "the crate's id, so marking it sent reaches the crate");
        let msg: Value = kept.messages.values().next().unwrap().values().next().unwrap().deserialize_as_unchecked().unwrap();
        assert_eq!(msg["reason"], codes::default_reason(codes::UNVERIFIED));
        assert_eq!(kept.messages.values().map(|d| d.len()).sum::<usize>(), 1);
        assert_eq!(f.crate_no_olm.len(), 1);
        assert_eq!(f.recipients, vec![WithheldRecipient { user_id: "@b:x".into(), device_id: "B1".into(), code: codes::UNVERIFIED.into(), sent: true }]);
    }

    #[test]
    fn disabled_codes_are_reported_but_not_sent() {
        let r = crate_request(&[("@b:x", "B1", codes::BLACKLISTED), ("@c:x", "C1", codes::UNVERIFIED)]);
        let f = filter_crate_request(&r, &policy(r#"{"send":["m.unverified"]}"#)).unwrap();
        let kept = f.request.unwrap();
        assert!(kept.messages.contains_key(&UserId::parse("@c:x").unwrap()));
        assert!(!kept.messages.contains_key(&UserId::parse("@b:x").unwrap()));
        assert!(f.recipients.iter().any(|r| r.code == codes::BLACKLISTED && !r.sent));
    }

    #[test]
    fn nothing_left_means_no_request() {
        let r = crate_request(&[("@b:x", "B1", codes::BLACKLISTED)]);
        let f = filter_crate_request(&r, &policy(r#"{"send":"none"}"#)).unwrap();
        assert!(f.request.is_none());
        assert_eq!(f.recipients.len(), 1);
    }

    #[test]
    fn custom_reasons_replace_the_crate_text() {
        let r = crate_request(&[("@b:x", "B1", codes::BLACKLISTED)]);
        let f = filter_crate_request(&r, &policy(r#"{"reasons":{"m.blacklisted":"go away"}}"#)).unwrap();
        let kept = f.request.unwrap();
        let msg: Value = kept.messages.values().next().unwrap().values().next().unwrap().deserialize_as_unchecked().unwrap();
        assert_eq!(msg["reason"], "go away");
    }

    #[test]
    fn no_olm_requests_are_batched_by_250_without_room_or_session() {
        let devices: Vec<_> = (0..600).map(|i| (UserId::parse(format!("@u{i}:x")).unwrap(), OwnedDeviceId::from("D"))).collect();
        let reqs = no_olm_requests(&devices, "r", "K", "A").unwrap();
        assert_eq!(reqs.iter().map(|r| r.messages.len()).collect::<Vec<_>>(), vec![250, 250, 100]);
        let msg: Value = reqs[0].messages.values().next().unwrap().values().next().unwrap().deserialize_as_unchecked().unwrap();
        assert_eq!(msg["code"], codes::NO_OLM);
        assert!(msg.get("room_id").is_none());
    }
}
