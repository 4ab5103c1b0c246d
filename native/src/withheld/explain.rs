//! Which withheld record explains a decryption failure (MSC2399 recipient rules 1-3).
//!
//! - No session at all: a room record for the session (`scope: session`).
//! - Session held from index k, message index below k: a room record or a forwarded key's
//!   `withheld` (`scope: before_first_index`).
//! - Either case, with no room record: an `m.no_olm` from the sender's device explains messages
//!   that device sent before we received the notice (`scope: no_olm`). The event's
//!   `origin_server_ts` must not be later than the notice's arrival plus [`CLOCK_SKEW_MS`]
//!   (the homeserver's clock and ours differ); an event without a timestamp is covered. When
//!   the event or the session names the sending device's key, only that device's notice counts.

use serde::Serialize;

use super::received::{NoOlmRecord, WithheldRecord};

/// Tolerance between the homeserver's timestamps and our clock.
pub const CLOCK_SKEW_MS: u64 = 60_000;

// `WithheldScope` in JavaScript: the binding generates its TypeScript union from this enum.
/// How much of a session a withheld explanation covers.
#[cfg_attr(feature = "node", napi_derive::napi(string_enum = "snake_case", js_name = "WithheldScope"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// We have no key for the session at all; a room record covers it.
    Session,
    /// We hold the session from a later index; the messages before it were withheld.
    BeforeFirstIndex,
    /// The sender's device had no Olm channel to us when it sent the message.
    NoOlm,
}

/// The explanation attached to a decryption error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub code: String,
    pub reason: Option<String>,
    pub scope: Scope,
}

/// The failed event, as far as it matters here.
#[derive(Debug, Default)]
pub struct FailedEvent<'a> {
    pub sender: &'a str,
    pub origin_server_ts: Option<u64>,
    /// The sending device's Curve25519 key, from the session we hold or the event's
    /// (deprecated) `sender_key`.
    pub sender_key: Option<&'a str>,
    /// The sending device, from the event's (deprecated) `device_id`.
    pub device_id: Option<&'a str>,
    /// True when we hold the session but only from a later index.
    pub below_first_index: bool,
}

/// Whether an `m.no_olm` record is from the device `device_id` with Curve25519 key
/// `device_key` (either may be unknown): nothing known contradicts it, i.e. the record's key is
/// the device's key when that is known, and its `from_device` is the device when both are known.
/// The one rule for "this device's `m.no_olm`", used by explanations and `getNoOlmNotices`.
pub fn is_from_device(record: &NoOlmRecord, device_id: Option<&str>, device_key: Option<&str>) -> bool {
    device_key.is_none_or(|k| k == record.sender_key)
        && match (device_id, record.from_device.as_deref()) {
            (Some(d), Some(f)) => d == f,
            _ => true,
        }
}

/// Pick the explanation. `room` must already be validated for this event's sender.
pub fn explain(event: &FailedEvent<'_>, room: Option<&WithheldRecord>, no_olm: &[NoOlmRecord]) -> Option<Explanation> {
    if let Some(r) = room {
        let scope = if event.below_first_index { Scope::BeforeFirstIndex } else { Scope::Session };
        return Some(Explanation { code: r.code.clone(), reason: r.reason.clone(), scope });
    }
    no_olm
        .iter()
        .filter(|n| n.sender == event.sender)
        .filter(|n| is_from_device(n, event.device_id, event.sender_key))
        .filter(|n| event.origin_server_ts.is_none_or(|ts| ts <= n.received_at.saturating_add(CLOCK_SKEW_MS)))
        .max_by_key(|n| n.received_at)
        .map(|n| Explanation { code: super::codes::NO_OLM.to_owned(), reason: n.reason.clone(), scope: Scope::NoOlm })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::withheld::received::Source;

    fn room(code: &str) -> WithheldRecord {
        WithheldRecord {
            code: code.into(),
            reason: Some("why".into()),
            room_id: "!r:x".into(),
            session_id: "S".into(),
            sender: "@a:x".into(),
            sender_key: "KA".into(),
            from_device: None,
            received_at: 1_000,
            source: Source::Notice,
        }
    }

    fn no_olm(key: &str, device: Option<&str>, at: u64) -> NoOlmRecord {
        NoOlmRecord { sender: "@a:x".into(), sender_key: key.into(), from_device: device.map(Into::into), reason: Some("no channel".into()), received_at: at }
    }

    #[test]
    fn a_room_record_explains_a_missing_session() {
        let e = FailedEvent { sender: "@a:x", ..Default::default() };
        let x = explain(&e, Some(&room("m.unverified")), &[]).unwrap();
        assert_eq!((x.code.as_str(), x.scope), ("m.unverified", Scope::Session));
        assert_eq!(x.reason.as_deref(), Some("why"));
    }

    #[test]
    fn below_the_first_index_the_scope_says_so() {
        let e = FailedEvent { sender: "@a:x", below_first_index: true, ..Default::default() };
        assert_eq!(explain(&e, Some(&room("m.unverified")), &[]).unwrap().scope, Scope::BeforeFirstIndex);
    }

    #[test]
    fn nothing_known_explains_nothing() {
        let e = FailedEvent { sender: "@a:x", origin_server_ts: Some(5), ..Default::default() };
        assert_eq!(explain(&e, None, &[]), None);
    }

    #[test]
    fn no_olm_covers_earlier_messages_of_the_same_device_only() {
        let notices = [no_olm("KA", Some("A"), 10_000)];
        let before = FailedEvent { sender: "@a:x", origin_server_ts: Some(9_000), sender_key: Some("KA"), ..Default::default() };
        assert_eq!(explain(&before, None, &notices).unwrap().scope, Scope::NoOlm);
        let long_after = FailedEvent { sender: "@a:x", origin_server_ts: Some(10_000 + CLOCK_SKEW_MS + 1), ..Default::default() };
        assert_eq!(explain(&long_after, None, &notices), None);
        let other_device = FailedEvent { sender: "@a:x", origin_server_ts: Some(9_000), sender_key: Some("KB"), ..Default::default() };
        assert_eq!(explain(&other_device, None, &notices), None);
        let other_device_id = FailedEvent { sender: "@a:x", device_id: Some("B"), ..Default::default() };
        assert_eq!(explain(&other_device_id, None, &notices), None);
        let other_user = FailedEvent { sender: "@b:x", origin_server_ts: Some(9_000), ..Default::default() };
        assert_eq!(explain(&other_user, None, &notices), None);
    }

    #[test]
    fn a_device_s_no_olm_is_what_nothing_known_contradicts() {
        let named = no_olm("KA", Some("A"), 1);
        let anonymous = no_olm("KA", None, 1);
        assert!(is_from_device(&named, Some("A"), Some("KA")));
        assert!(is_from_device(&named, Some("A"), None), "device key unknown");
        assert!(!is_from_device(&named, Some("B"), None), "names another device");
        assert!(!is_from_device(&named, Some("A"), Some("KB")), "another key");
        assert!(is_from_device(&anonymous, Some("A"), Some("KA")), "no from_device, the device's key");
        assert!(is_from_device(&anonymous, Some("A"), None), "nothing known contradicts it");
        assert!(!is_from_device(&anonymous, Some("A"), Some("KB")));
    }

    #[test]
    fn a_room_record_wins_over_no_olm() {
        let e = FailedEvent { sender: "@a:x", origin_server_ts: Some(1), ..Default::default() };
        assert_eq!(explain(&e, Some(&room("m.blacklisted")), &[no_olm("KA", None, 10)]).unwrap().code, "m.blacklisted");
    }
}
