//! The withheld results that need a shape of their own at the N-API boundary (the notices of a
//! sync are with the sync result, in `events.rs`), and the `OlmMachine` class's withheld
//! settings and queries (their own `#[napi] impl NativeMachine`).
//!
//! Everything else the withheld layer returns crosses as the layer's own structs and enums:
//! they carry napi's `object` / `string_enum` attributes when the `node` feature is on (records,
//! share summary, key-request answers, `WithheldSource`/`WithheldVerdict`/`WithheldScope`), so
//! their TypeScript declarations are generated from the one Rust definition and re-exported by
//! `src/withheld.ts`. The layer has no other N-API code, and its unit tests build without it.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::{
    errors,
    ids,
    machine::NativeMachine,
    withheld::{
        records,
        records::MetricsSnapshot,
        no_olm::DeviceEntry,
        policy::{SendCodes, SendPolicy},
        received::{NoOlmRecord, WithheldRecord},
    },
};

/// The withheld policy in force, every field set (`src/machine.ts` returns it as the
/// `WithheldPolicy` the application configures).
#[napi(object)]
pub struct ActiveWithheldPolicy {
    /// `all`, `none`, or the codes that are sent.
    #[napi(ts_type = "'all' | 'none' | Array<string>")]
    pub send: Either<String, Vec<String>>,
    /// The `reason` text per code; codes without an entry get the default sentence.
    pub reasons: std::collections::BTreeMap<String, String>,
}

impl From<SendPolicy> for ActiveWithheldPolicy {
    fn from(policy: SendPolicy) -> Self {
        let send = match policy.send {
            SendCodes::Word(word) => Either::A(word),
            SendCodes::Only(codes) => Either::B(codes.into_iter().collect()),
        };
        ActiveWithheldPolicy { send, reasons: policy.reasons }
    }
}

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

    /// Replace the machine-wide withheld policy.
    #[napi(catch_unwind)]
    pub fn set_withheld_policy(&self, #[napi(ts_arg_type = "{ send?: 'all' | 'none' | Array<string>; reasons?: Partial<Record<string, string>> }")] policy: serde_json::Value) -> Result<()> {
        self.machine()?;
        self.withheld.set_policy(SendPolicy::from_input("policy", policy).map_err(errors::input)?);
        Ok(())
    }

    /// The machine-wide withheld policy.
    #[napi(catch_unwind)]
    pub fn withheld_policy(&self) -> ActiveWithheldPolicy {
        self.withheld.policy().into()
    }

    /// The withheld records of a session (one per sender and source).
    #[napi]
    pub async fn withheld_records(&self, room_id: String, session_id: String) -> Result<Vec<WithheldRecord>> {
        let machine = self.machine()?;
        let room = ids::room_id("roomId", &room_id)?;
        records::room_records(&machine, room.as_str(), &session_id).await.map_err(Into::into)
    }

    /// The `m.no_olm` notices received from a user's devices (with `deviceId`, that device's,
    /// by `withheld::explain::is_from_device`).
    #[napi]
    pub async fn no_olm_notices(&self, user_id: String, device_id: Option<String>) -> Result<Vec<NoOlmRecord>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let mut list = records::no_olm_records(&machine, user.as_str()).await?;
        if let Some(device_id) = device_id {
            let device = ids::device_id("deviceId", &device_id)?;
            let known = machine.get_device(&user, &device, None).await.map_err(errors::store)?;
            let key = known.and_then(|d| d.curve25519_key()).map(|k| k.to_base64());
            list.retain(|n| crate::withheld::explain::is_from_device(n, Some(device.as_str()), key.as_deref()));
        }
        Ok(list)
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
        let entry = self.withheld.no_olm_state(&machine, user.as_str(), device.as_str()).await?;
        Ok(entry.as_ref().map(Into::into))
    }
}
