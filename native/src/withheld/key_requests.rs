//! Answers to incoming `m.room_key_request`s (MSC2399 sender rule 4).
//!
//! The crate's own forwarding is switched off: it refuses silently, cannot attach `withheld`,
//! and has no rate limit. We forward a session only to our own verified devices, from the first
//! index we hold, and refuse everyone else with a withheld notice:
//! - a device we do not know (its keys were never queried or never published), of any user: no
//!   answer. We cannot tell who asks, a notice to it would cost a message and tell a stranger
//!   that this device exists, and a device that has not published keys has no room key to lose;
//! - another user's known device: `m.unauthorised` (whether we hold the session is not revealed);
//! - our own device that is not verified: `m.unverified`;
//! - our own verified device, session not held: `m.unavailable`.
//!
//! Whether refusals are sent at all follows the withheld policy. Answers are bounded: at most
//! one per (requesting device, session) per [`ANSWER_WINDOW_MS`], and at most
//! [`BURST_PER_DEVICE`] answers per requesting device per [`BURST_WINDOW_MS`]; the rest are
//! dropped and counted.

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value};

use super::codes;

/// One answer per (requesting device, session) in this window.
pub const ANSWER_WINDOW_MS: u64 = 10 * 60_000;
/// Answers per requesting device per burst window.
pub const BURST_PER_DEVICE: usize = 50;
/// The burst window.
pub const BURST_WINDOW_MS: u64 = 60_000;
/// Entries the limiter remembers before forgetting the oldest.
const MAX_TRACKED: usize = 100_000;

/// A parsed room-key request or cancellation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRequest {
    pub sender: String,
    pub requesting_device: String,
    pub request_id: String,
    /// `None` for a cancellation.
    pub body: Option<RequestedKey>,
}

/// The session a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedKey {
    pub algorithm: String,
    pub room_id: String,
    pub session_id: String,
    pub sender_key: Option<String>,
}

/// Parse the content of an `m.room_key_request` sent by `sender`.
pub fn parse(sender: &str, content: &Map<String, Value>) -> Option<KeyRequest> {
    let requesting_device = codes::str_field(content, "requesting_device_id")?.to_owned();
    let request_id = codes::str_field(content, "request_id")?.to_owned();
    let body = match codes::str_field(content, "action")? {
        "request_cancellation" => None,
        "request" => {
            let b = content.get("body")?.as_object()?;
            Some(RequestedKey {
                algorithm: codes::str_field(b, "algorithm")?.to_owned(),
                room_id: codes::str_field(b, "room_id")?.to_owned(),
                session_id: codes::str_field(b, "session_id")?.to_owned(),
                sender_key: codes::str_field(b, "sender_key").map(str::to_owned),
            })
        }
        _ => return None,
    };
    Some(KeyRequest { sender: sender.to_owned(), requesting_device, request_id, body })
}

/// What we know about the requester and the session.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestFacts {
    pub from_own_user: bool,
    pub from_this_device: bool,
    pub device_known: bool,
    pub device_verified: bool,
    pub session_held: bool,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Forward the session from its first known index.
    Forward,
    /// Send a withheld notice with this code.
    Refuse(&'static str),
    /// Do not answer.
    Ignore,
}

/// Decide the answer (see the module documentation).
pub fn decide(f: RequestFacts) -> Answer {
    if f.from_this_device || !f.device_known {
        Answer::Ignore
    } else if !f.from_own_user {
        Answer::Refuse(codes::UNAUTHORISED)
    } else if !f.device_verified {
        Answer::Refuse(codes::UNVERIFIED)
    } else if !f.session_held {
        Answer::Refuse(codes::UNAVAILABLE)
    } else {
        Answer::Forward
    }
}

/// Bounds the answers a flood of requests can cause.
#[derive(Default, Debug)]
pub struct Limiter {
    answered: HashMap<(String, String, String), u64>,
    order: VecDeque<(String, String, String)>,
    bursts: HashMap<(String, String), VecDeque<u64>>,
}

impl Limiter {
    /// Whether `user`/`device` may get an answer about `session_id` at `now`; records it if so.
    pub fn admit(&mut self, user: &str, device: &str, session_id: &str, now: u64) -> bool {
        let key = (user.to_owned(), device.to_owned(), session_id.to_owned());
        if self.answered.get(&key).is_some_and(|t| now.saturating_sub(*t) < ANSWER_WINDOW_MS) {
            return false;
        }
        let burst = self.bursts.entry((user.to_owned(), device.to_owned())).or_default();
        while burst.front().is_some_and(|t| now.saturating_sub(*t) >= BURST_WINDOW_MS) {
            burst.pop_front();
        }
        if burst.len() >= BURST_PER_DEVICE {
            return false;
        }
        burst.push_back(now);
        if self.answered.insert(key.clone(), now).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > MAX_TRACKED {
            if let Some(old) = self.order.pop_front() {
                self.answered.remove(&old);
            }
        }
        if self.bursts.len() > MAX_TRACKED {
            self.bursts.retain(|_, b| b.back().is_some_and(|t| now.saturating_sub(*t) < BURST_WINDOW_MS));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts(own: bool, known: bool, verified: bool, held: bool) -> RequestFacts {
        RequestFacts { from_own_user: own, from_this_device: false, device_known: known, device_verified: verified, session_held: held }
    }

    #[test]
    fn own_verified_devices_get_the_session() {
        assert_eq!(decide(facts(true, true, true, true)), Answer::Forward);
    }

    #[test]
    fn refusals_follow_the_msc_codes() {
        assert_eq!(decide(facts(false, true, true, true)), Answer::Refuse(codes::UNAUTHORISED));
        assert_eq!(decide(facts(true, true, false, true)), Answer::Refuse(codes::UNVERIFIED));
        assert_eq!(decide(facts(true, true, false, false)), Answer::Refuse(codes::UNVERIFIED), "do not reveal to unverified");
        assert_eq!(decide(facts(true, true, true, false)), Answer::Refuse(codes::UNAVAILABLE));
    }

    #[test]
    fn unknown_devices_of_any_user_and_ourselves_get_no_answer() {
        assert_eq!(decide(facts(true, false, false, true)), Answer::Ignore);
        assert_eq!(decide(facts(false, false, false, false)), Answer::Ignore, "another user's never-published device");
        assert_eq!(decide(facts(false, false, false, true)), Answer::Ignore);
        assert_eq!(decide(RequestFacts { from_this_device: true, ..facts(true, true, true, true) }), Answer::Ignore);
    }

    #[test]
    fn parse_request_and_cancellation() {
        let r = parse("@a:x", json!({"action":"request","requesting_device_id":"D","request_id":"R",
            "body":{"algorithm":"m.megolm.v1.aes-sha2","room_id":"!r:x","session_id":"S","sender_key":"K"}}).as_object().unwrap()).unwrap();
        assert_eq!(r.body.unwrap().session_id, "S");
        let c = parse("@a:x", json!({"action":"request_cancellation","requesting_device_id":"D","request_id":"R"}).as_object().unwrap()).unwrap();
        assert!(c.body.is_none());
        assert!(parse("@a:x", json!({"action":"request","requesting_device_id":"D","request_id":"R"}).as_object().unwrap()).is_none());
        assert!(parse("@a:x", json!({"action":"other","requesting_device_id":"D","request_id":"R"}).as_object().unwrap()).is_none());
    }

    #[test]
    fn one_answer_per_device_and_session_per_window() {
        let mut l = Limiter::default();
        assert!(l.admit("@a:x", "D", "S", 0));
        assert!(!l.admit("@a:x", "D", "S", 1_000));
        assert!(l.admit("@a:x", "D", "S2", 1_000), "another session");
        assert!(l.admit("@a:x", "E", "S", 1_000), "another device");
        assert!(l.admit("@a:x", "D", "S", ANSWER_WINDOW_MS + 1));
    }

    #[test]
    fn a_flood_from_one_device_is_capped_per_burst_window() {
        let mut l = Limiter::default();
        let admitted = (0..5_000).filter(|i| l.admit("@a:x", "D", &format!("S{i}"), 10)).count();
        assert_eq!(admitted, BURST_PER_DEVICE);
        assert!(l.admit("@a:x", "D", "fresh", 10 + BURST_WINDOW_MS));
    }
}
