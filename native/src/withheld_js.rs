//! The withheld layer's small results as napi-rs objects: their TypeScript declarations are
//! generated from these structs (and re-exported by `src/withheld.ts`), so the two cannot drift.
//! The layer itself (`withheld/`) stays free of N-API.

use napi_derive::napi;

use crate::withheld::{ledger::MetricsSnapshot, no_olm::DeviceEntry};

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
