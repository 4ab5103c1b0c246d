//! The `m.no_olm` sending ledger (MSC2399 sender rule 3).
//!
//! One notice per recipient device, across all rooms and restarts. The rule re-arms only when an
//! Olm session with that device was established successfully after the last notice (outbound
//! from a claimed one-time key, or inbound from a message it sent us). The crate's own flag is
//! set once and never reset, so this ledger replaces it: the crate's `m.no_olm` notices are
//! always dropped and ours are sent instead.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

/// What we remember about one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// When the last notice was sent (or suppressed by policy), ms since the epoch.
    pub notified_at: u64,
    /// True when the policy suppressed the notice: the episode counts as handled all the same,
    /// so enabling the code later does not send notices about old failures.
    pub suppressed: bool,
    /// Set when an Olm session was established after `notified_at`: the next failure notifies.
    pub rearmed: bool,
}

/// The ledger of one user's devices, persisted as one value in the store.
pub type UserLedger = BTreeMap<String, DeviceEntry>;

/// Decision for a device that has no Olm session during a share.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send a notice now.
    Send,
    /// Already notified and not re-armed, or a notice is on its way.
    Skip,
}

/// The ledger over all users, with the notices handed out but not yet confirmed sent.
#[derive(Default, Debug)]
pub struct NoOlmLedger {
    users: BTreeMap<String, UserLedger>,
    in_flight: HashSet<(String, String)>,
    /// The users with a persisted ledger; `None` until read from the store.
    index: Option<BTreeSet<String>>,
}

impl NoOlmLedger {
    /// The users with a persisted ledger, once read.
    pub fn index(&self) -> Option<&BTreeSet<String>> {
        self.index.as_ref()
    }

    /// Install the persisted index of users with a ledger.
    pub fn set_index(&mut self, index: BTreeSet<String>) {
        self.index = Some(index);
    }

    /// Add a user to the index; true if it was not there (the index must then be saved).
    pub fn add_to_index(&mut self, user: &str) -> bool {
        self.index.get_or_insert_with(BTreeSet::new).insert(user.to_owned())
    }

    /// Whether a user's persisted ledger has been loaded.
    pub fn is_loaded(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Install a user's persisted ledger (empty when none was stored).
    pub fn load(&mut self, user: &str, ledger: UserLedger) {
        self.users.insert(user.to_owned(), ledger);
    }

    /// The persisted form of a user's ledger.
    pub fn user(&self, user: &str) -> Option<&UserLedger> {
        self.users.get(user)
    }

    /// The entry of one device, if it was ever notified.
    pub fn entry(&self, user: &str, device: &str) -> Option<&DeviceEntry> {
        self.users.get(user).and_then(|u| u.get(device))
    }

    /// The devices of a loaded user whose rule was re-armed (the next failure notifies).
    pub fn rearmed_devices(&self, user: &str) -> Vec<ruma::OwnedDeviceId> {
        self.users.get(user).into_iter().flatten().filter(|(_, e)| e.rearmed).map(|(d, _)| d.as_str().into()).collect()
    }

    /// Decide for a device that has no Olm session; `Send` marks it in flight.
    pub fn decide(&mut self, user: &str, device: &str) -> Decision {
        let key = (user.to_owned(), device.to_owned());
        if self.in_flight.contains(&key) {
            return Decision::Skip;
        }
        match self.entry(user, device) {
            Some(e) if !e.rearmed => Decision::Skip,
            _ => {
                self.in_flight.insert(key);
                Decision::Send
            }
        }
    }

    /// The notice was delivered to the homeserver (or suppressed by policy).
    pub fn record(&mut self, user: &str, device: &str, now_ms: u64, suppressed: bool) {
        self.in_flight.remove(&(user.to_owned(), device.to_owned()));
        self.users
            .entry(user.to_owned())
            .or_default()
            .insert(device.to_owned(), DeviceEntry { notified_at: now_ms, suppressed, rearmed: false });
    }

    /// The notice could not be sent; a later share may try again.
    pub fn abandon(&mut self, user: &str, device: &str) {
        self.in_flight.remove(&(user.to_owned(), device.to_owned()));
    }

    /// An Olm session with the device was established at `at_ms`. Returns true if this re-armed
    /// the rule (so the caller persists the change).
    pub fn session_established(&mut self, user: &str, device: &str, at_ms: u64) -> bool {
        match self.users.get_mut(user).and_then(|u| u.get_mut(device)) {
            Some(e) if !e.rearmed && at_ms >= e.notified_at => {
                e.rearmed = true;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "@bob:example.org";
    const D: &str = "BOB";

    #[test]
    fn index_reports_each_new_user_once() {
        let mut l = NoOlmLedger::default();
        assert!(l.index().is_none());
        assert!(l.add_to_index(U), "a user joins the index: save it");
        assert!(!l.add_to_index(U), "already there: nothing to save");
        assert!(l.index().is_some_and(|i| i.contains(U)));
    }

    #[test]
    fn rearmed_devices_lists_only_rearmed_entries() {
        let mut l = NoOlmLedger::default();
        l.record(U, D, 10, false);
        l.record(U, "OTHER", 10, false);
        assert!(l.rearmed_devices(U).is_empty());
        assert!(l.session_established(U, D, 20));
        assert_eq!(l.rearmed_devices(U), vec![ruma::OwnedDeviceId::from(D)]);
    }

    #[test]
    fn first_failure_notifies_once() {
        let mut l = NoOlmLedger::default();
        assert_eq!(l.decide(U, D), Decision::Send);
        l.record(U, D, 10, false);
        assert_eq!(l.decide(U, D), Decision::Skip, "second failure, other room");
    }

    #[test]
    fn a_notice_in_flight_is_not_duplicated() {
        let mut l = NoOlmLedger::default();
        assert_eq!(l.decide(U, D), Decision::Send);
        assert_eq!(l.decide(U, D), Decision::Skip);
        l.abandon(U, D);
        assert_eq!(l.decide(U, D), Decision::Send, "a failed send may be retried");
    }

    #[test]
    fn session_established_after_the_notice_rearms_exactly_once() {
        let mut l = NoOlmLedger::default();
        l.decide(U, D);
        l.record(U, D, 100, false);
        assert!(l.session_established(U, D, 200));
        assert!(!l.session_established(U, D, 300), "already re-armed");
        assert_eq!(l.decide(U, D), Decision::Send);
        l.record(U, D, 400, false);
        assert_eq!(l.decide(U, D), Decision::Skip);
    }

    #[test]
    fn a_session_older_than_the_notice_does_not_rearm() {
        let mut l = NoOlmLedger::default();
        l.decide(U, D);
        l.record(U, D, 100, false);
        assert!(!l.session_established(U, D, 50));
        assert_eq!(l.decide(U, D), Decision::Skip);
    }

    #[test]
    fn sessions_with_unnotified_devices_change_nothing() {
        let mut l = NoOlmLedger::default();
        assert!(!l.session_established(U, D, 1));
        assert!(l.entry(U, D).is_none());
    }

    #[test]
    fn suppressed_notices_count_as_handled() {
        let mut l = NoOlmLedger::default();
        l.decide(U, D);
        l.record(U, D, 5, true);
        assert_eq!(l.decide(U, D), Decision::Skip);
        assert!(l.entry(U, D).unwrap().suppressed);
    }

    #[test]
    fn the_ledger_survives_a_round_trip_through_its_persisted_form() {
        let mut l = NoOlmLedger::default();
        l.decide(U, D);
        l.record(U, D, 7, false);
        let saved = serde_json::to_vec(l.user(U).unwrap()).unwrap();
        let mut restored = NoOlmLedger::default();
        restored.load(U, serde_json::from_slice(&saved).unwrap());
        assert_eq!(restored.decide(U, D), Decision::Skip);
    }
}
