//! Received withheld records: room records per (room, session) and `m.no_olm` records per
//! sender, persisted as custom values in the crate's store (so they share its encryption at
//! rest), plus counters the application can read.

use std::sync::atomic::{AtomicU64, Ordering};

use matrix_sdk_crypto::OlmMachine;
use serde::Serialize;

use super::{
    received::{NoOlmRecord, WithheldRecord},
    WithheldError,
};

const ROOM_KEY: &str = "matrix-crypto-node.withheld.v1.room";
const CHAIN_KEY: &str = "matrix-crypto-node.forwarding.v1.chain";
const NO_OLM_KEY: &str = "matrix-crypto-node.withheld.v1.no_olm_received";

/// How many notices were received and how many were ignored, since the machine opened.
#[derive(Default, Debug)]
pub struct Metrics {
    pub rate_limited: AtomicU64,
    pub accepted: AtomicU64,
    pub spoofed: AtomicU64,
    pub unconfirmed: AtomicU64,
    pub malformed: AtomicU64,
    /// To-device entries of sync batches that were not event objects (skipped, the rest processed).
    pub skipped_to_device_events: AtomicU64,
}

/// A snapshot of [`Metrics`].
#[derive(Serialize, Debug, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSnapshot {
    pub accepted_notices: u64,
    pub spoofed_notices: u64,
    pub unconfirmed_notices: u64,
    pub malformed_notices: u64,
    pub rate_limited_key_requests: u64,
    pub skipped_to_device_events: u64,
}

impl Metrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            accepted_notices: self.accepted.load(Ordering::Relaxed),
            spoofed_notices: self.spoofed.load(Ordering::Relaxed),
            unconfirmed_notices: self.unconfirmed.load(Ordering::Relaxed),
            malformed_notices: self.malformed.load(Ordering::Relaxed),
            rate_limited_key_requests: self.rate_limited.load(Ordering::Relaxed),
            skipped_to_device_events: self.skipped_to_device_events.load(Ordering::Relaxed),
        }
    }

    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn room_key(room_id: &str, session_id: &str) -> String {
    format!("{ROOM_KEY}:{room_id}|{session_id}")
}

/// Records kept per session: one per sender and source, so a notice from someone else can
/// never shadow the creator's; the cap bounds what a flood of notices can store.
pub const MAX_RECORDS_PER_SESSION: usize = 8;

/// The room records of a session, oldest first.
pub async fn room_records(machine: &OlmMachine, room_id: &str, session_id: &str) -> Result<Vec<WithheldRecord>, WithheldError> {
    let stored: Option<Vec<WithheldRecord>> =
        machine.store().get_value(&room_key(room_id, session_id)).await.map_err(WithheldError::Store)?;
    Ok(stored.unwrap_or_default())
}

/// Store a room record, replacing the same sender's record of the same source. A confirmed
/// record is not replaced by an unconfirmed one.
pub async fn put_room_record(machine: &OlmMachine, record: &WithheldRecord, confirmed: bool) -> Result<bool, WithheldError> {
    let mut list = room_records(machine, &record.room_id, &record.session_id).await?;
    let same = |r: &WithheldRecord| r.sender == record.sender && r.source == record.source;
    if !confirmed && list.iter().any(same) {
        return Ok(false);
    }
    list.retain(|r| !same(r));
    list.push(record.clone());
    if list.len() > MAX_RECORDS_PER_SESSION {
        list.remove(0);
    }
    machine
        .store()
        .set_value(&room_key(&record.room_id, &record.session_id), &list)
        .await
        .map_err(WithheldError::Store)?;
    Ok(true)
}

/// The `m.no_olm` records received from a user's devices, newest last.
pub async fn no_olm_records(machine: &OlmMachine, user: &str) -> Result<Vec<NoOlmRecord>, WithheldError> {
    let stored: Option<Vec<NoOlmRecord>> =
        machine.store().get_value(&format!("{NO_OLM_KEY}:{user}")).await.map_err(WithheldError::Store)?;
    Ok(stored.unwrap_or_default())
}

/// `m.no_olm` records kept per sender, newest kept: one per device key, so a user's own devices
/// fit, while a flood of notices with made-up keys (unconfirmed while the sender's devices are
/// unknown) can neither grow the store nor make each new notice cost more than the last.
pub const MAX_NO_OLM_RECORDS_PER_SENDER: usize = 64;

/// Store an `m.no_olm` record, replacing the previous one from the same device key.
pub async fn put_no_olm_record(machine: &OlmMachine, record: &NoOlmRecord) -> Result<(), WithheldError> {
    let mut list = no_olm_records(machine, &record.sender).await?;
    list.retain(|r| r.sender_key != record.sender_key);
    list.push(record.clone());
    if list.len() > MAX_NO_OLM_RECORDS_PER_SENDER {
        list.drain(..list.len() - MAX_NO_OLM_RECORDS_PER_SENDER);
    }
    machine
        .store()
        .set_value(&format!("{NO_OLM_KEY}:{}", record.sender), &list)
        .await
        .map_err(WithheldError::Store)
}

/// The Curve25519 keys a forwarded session passed through, oldest first (empty if not forwarded).
pub async fn forwarding_chain(machine: &OlmMachine, room_id: &str, session_id: &str) -> Result<Vec<String>, WithheldError> {
    let stored: Option<Vec<String>> =
        machine.store().get_value(&format!("{CHAIN_KEY}:{room_id}|{session_id}")).await.map_err(WithheldError::Store)?;
    Ok(stored.unwrap_or_default())
}

/// Record the forwarding chain of an imported forwarded session.
pub async fn put_forwarding_chain(machine: &OlmMachine, room_id: &str, session_id: &str, chain: &[String]) -> Result<(), WithheldError> {
    machine
        .store()
        .set_value(&format!("{CHAIN_KEY}:{room_id}|{session_id}"), &chain)
        .await
        .map_err(WithheldError::Store)
}
