//! Requests this layer creates itself: key-request refusals and forwards, one-device key
//! claims, `m.dummy` messages. They are handed out by `outgoingRequests()` until marked sent,
//! like the crate's own; a claim, once answered, runs what waited for the new Olm session.

use std::collections::BTreeMap;

use matrix_sdk_crypto::{types::requests::ToDeviceRequest, CollectStrategy, OlmError, OlmMachine};
use ruma::{events::AnyToDeviceEventContent, serde::Raw, to_device::DeviceIdOrAllDevices, DeviceId, OwnedUserId, TransactionId, UserId};
use serde_json::{json, Value};

use super::WithheldError;

/// What to do once an Olm session with a device exists.
#[derive(Clone, Debug)]
pub enum Deferred {
    /// Send an encrypted event (a forwarded room key, or `m.dummy`).
    Encrypted { event_type: String, content: Value },
}

/// A request we created, waiting to be sent.
#[derive(Clone, Debug)]
pub enum Queued {
    ToDevice(ToDeviceRequest),
    /// A keys/claim for one device, and what to send over the new session.
    Claim { id: String, body: String, user: String, device: String, then: Vec<Deferred> },
}

impl Queued {
    pub fn id(&self) -> String {
        match self {
            Queued::ToDevice(r) => r.txn_id.to_string(),
            Queued::Claim { id, .. } => id.clone(),
        }
    }
}

/// A plain (unencrypted) to-device request for one device.
pub fn plain(user: &UserId, device: &DeviceId, event_type: &str, content: &Value) -> Result<ToDeviceRequest, WithheldError> {
    let raw: Raw<AnyToDeviceEventContent> = Raw::new(content).map_err(WithheldError::Json)?.cast_unchecked();
    let mut messages = BTreeMap::new();
    messages.insert(
        user.to_owned(),
        BTreeMap::from([(DeviceIdOrAllDevices::DeviceId(device.to_owned()), raw)]),
    );
    Ok(ToDeviceRequest { event_type: event_type.into(), txn_id: TransactionId::new(), messages })
}

/// A keys/claim for one device's one-time key.
pub fn claim(user: &str, device: &str, then: Vec<Deferred>) -> Queued {
    let body = json!({ "one_time_keys": { user: { device: "signed_curve25519" } }, "timeout": 10_000 }).to_string();
    Queued::Claim { id: TransactionId::new().to_string(), body, user: user.to_owned(), device: device.to_owned(), then }
}

/// Olm-encrypt `content` for one device. `Ok(None)` when there is no Olm session yet.
pub async fn encrypt_for(
    machine: &OlmMachine,
    user: &UserId,
    device: &DeviceId,
    deferred: &Deferred,
) -> Result<Option<ToDeviceRequest>, WithheldError> {
    let Deferred::Encrypted { event_type, content } = deferred;
    let Some(d) = machine.get_device(user, device, None).await.map_err(WithheldError::Store)? else {
        return Ok(None);
    };
    match d.encrypt_event_raw(event_type, content, CollectStrategy::AllDevices).await {
        Ok(raw) => {
            let mut messages = BTreeMap::new();
            messages.insert(
                OwnedUserId::from(user),
                BTreeMap::from([(DeviceIdOrAllDevices::DeviceId(device.to_owned()), raw.cast_unchecked())]),
            );
            Ok(Some(ToDeviceRequest { event_type: "m.room.encrypted".into(), txn_id: TransactionId::new(), messages }))
        }
        Err(OlmError::MissingSession) => Ok(None),
        Err(e) => Err(WithheldError::Crate(e)),
    }
}
