//! The withheld layer's small results as napi-rs objects: their TypeScript declarations are
//! generated from these structs (and re-exported by `src/withheld.ts`), so the two cannot drift.
//! The layer itself (`withheld/`) stays free of N-API. The `OlmMachine` class's withheld
//! settings and queries are here too, in their own `#[napi] impl NativeMachine`.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::{
    errors::{self, internal},
    ids,
    machine::{parse_policy, withheld_error, NativeMachine},
    withheld::{ledger, ledger::MetricsSnapshot, no_olm::DeviceEntry},
};

/// The `m.no_olm` state of a recipient device (see `OlmMachine.getNoOlmState`).
#[napi(object)]
pub struct NoOlmState {
    /// When the last `m.no_olm` notice was sent (or suppressed), ms since the epoch.
    pub notified_at: f64,
    /// True if the policy suppressed that notice.
    pub suppressed: bool,
    /// True once an Olm session with the device was established after the notice: the next
    /// failure to set up a session sends one new notice.
    pub rearmed: bool,
}

impl From<&DeviceEntry> for NoOlmState {
    fn from(e: &DeviceEntry) -> Self {
        Self { notified_at: e.notified_at as f64, suppressed: e.suppressed, rearmed: e.rearmed }
    }
}

/// Counters of received notices (and skipped sync entries) since the machine was opened.
#[napi(object)]
pub struct WithheldMetrics {
    /// Notices accepted: trusted, or answers to our key requests.
    pub accepted_notices: f64,
    /// Notices ignored because they contradict the session's creator or the sender's devices.
    pub spoofed_notices: f64,
    /// Notices with `verdict: 'unconfirmed'`: nothing to compare them with (we do not hold the
    /// session and do not know the sender's devices). Stored, but they explain only the same
    /// sender's events, re-checked when a decryption fails.
    pub unconfirmed_notices: f64,
    /// Notices ignored because required fields were missing or too long.
    pub malformed_notices: f64,
    /// Incoming room-key requests dropped by the flood bounds.
    pub rate_limited_key_requests: f64,
    /// Entries of sync batches that were not event objects: skipped (each listed in
    /// `SyncResult.skippedToDeviceEvents` and logged), the rest of their batch processed.
    pub skipped_to_device_events: f64,
}

impl From<MetricsSnapshot> for WithheldMetrics {
    fn from(m: MetricsSnapshot) -> Self {
        Self {
            accepted_notices: m.accepted_notices as f64,
            spoofed_notices: m.spoofed_notices as f64,
            unconfirmed_notices: m.unconfirmed_notices as f64,
            malformed_notices: m.malformed_notices as f64,
            rate_limited_key_requests: m.rate_limited_key_requests as f64,
            skipped_to_device_events: m.skipped_to_device_events as f64,
        }
    }
}

/// The withheld layer's settings and state, as the `OlmMachine` class exposes them.
#[napi]
impl NativeMachine {
    /// Turn the reaction to `m.no_olm` notices on or off.
    #[napi(catch_unwind)]
    pub fn set_react_to_no_olm(&self, on: bool) {
        self.withheld.set_react_to_no_olm(on);
    }

    /// Whether the machine reacts to `m.no_olm` notices.
    #[napi(catch_unwind)]
    pub fn react_to_no_olm(&self) -> bool {
        self.withheld.react_to_no_olm_enabled()
    }

    /// Replace the machine-wide withheld policy (JSON `{ send, reasons }`).
    #[napi(catch_unwind)]
    pub fn set_withheld_policy(&self, policy_json: String) -> Result<()> {
        self.machine()?;
        self.withheld.set_policy(parse_policy("policy", &policy_json)?);
        Ok(())
    }

    /// The machine-wide withheld policy as JSON.
    #[napi(catch_unwind)]
    pub fn withheld_policy(&self) -> Result<String> {
        serde_json::to_string(&self.withheld.policy()).map_err(internal)
    }

    /// The withheld records of a session (one per sender and source), as a JSON array.
    #[napi]
    pub async fn withheld_records(&self, room_id: String, session_id: String) -> Result<String> {
        let machine = self.machine()?;
        let room = ids::room_id("roomId", &room_id)?;
        let records = ledger::room_records(&machine, room.as_str(), &session_id).await.map_err(withheld_error)?;
        serde_json::to_string(&records).map_err(internal)
    }

    /// The `m.no_olm` notices received from a user's devices (with `deviceId`, that device's,
    /// by `withheld::explain::is_from_device`), as a JSON array.
    #[napi]
    pub async fn no_olm_notices(&self, user_id: String, device_id: Option<String>) -> Result<String> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let mut list = ledger::no_olm_records(&machine, user.as_str()).await.map_err(withheld_error)?;
        if let Some(device_id) = device_id {
            let device = ids::device_id("deviceId", &device_id)?;
            let known = machine.get_device(&user, &device, None).await.map_err(errors::store)?;
            let key = known.and_then(|d| d.curve25519_key()).map(|k| k.to_base64());
            list.retain(|n| crate::withheld::explain::is_from_device(n, Some(device.as_str()), key.as_deref()));
        }
        serde_json::to_string(&list).map_err(internal)
    }

    /// Counters of received withheld notices.
    #[napi(catch_unwind)]
    pub fn withheld_metrics(&self) -> crate::withheld_js::WithheldMetrics {
        self.withheld.metrics.snapshot().into()
    }

    /// The `m.no_olm` state of a recipient device, or null if it was never notified.
    #[napi]
    pub async fn no_olm_state(&self, user_id: String, device_id: String) -> Result<Option<crate::withheld_js::NoOlmState>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let device = ids::device_id("deviceId", &device_id)?;
        let entry = self.withheld.no_olm_state(&machine, user.as_str(), device.as_str()).await.map_err(withheld_error)?;
        Ok(entry.as_ref().map(Into::into))
    }
}
