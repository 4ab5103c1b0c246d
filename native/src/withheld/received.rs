//! Received withheld notices: parsing (keeping the reason the crate drops), validation against
//! the session creator and the sender's devices (spoofing), and the records we persist.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::codes;

// `WithheldSource` in JavaScript: the binding generates its TypeScript union from this enum.
// Persisted in records by these snake_case names: never rename a value.
/// Where a withheld record came from.
#[cfg_attr(feature = "node", napi_derive::napi(string_enum = "snake_case", js_name = "WithheldSource"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An `m.room_key.withheld` notice from the session's creator.
    Notice,
    /// The `withheld` property of an `m.forwarded_room_key` from one of our verified devices.
    ForwardedKey,
    /// The withheld field of an imported room-key export.
    KeyExport,
    /// The withheld field of a room key restored from server-side key backup.
    KeyBackup,
    /// A `withheld` entry of a room-key bundle (MSC4268), from the member who shared the
    /// room's history with us (see `withheld::bundle`).
    KeyBundle,
}

/// A withheld record of a session: why (part of) it is missing (see
/// `OlmMachine.getWithheldRecords`).
#[cfg_attr(feature = "node", napi_derive::napi(object, use_nullable = true))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WithheldRecord {
    /// The withheld code (a `WithheldCode`: a spec code or a namespaced custom one).
    pub code: String,
    /// The reason text, if any (cut to 1,024 bytes when received).
    pub reason: Option<String>,
    /// The room.
    pub room_id: String,
    /// The session.
    pub session_id: String,
    /// Who sent it.
    pub sender: String,
    /// The key it claims (the session creator's).
    pub sender_key: String,
    /// The sending device, if named (MSC3735 `from_device`).
    pub from_device: Option<String>,
    /// When it arrived, ms since the epoch.
    pub received_at: i64,
    /// A notice from the creator, a forwarded key's `withheld` property, an imported export, a
    /// room key restored from server-side key backup, or an entry of a room-key bundle.
    #[cfg_attr(feature = "node", napi(ts_type = "WithheldSource"))]
    pub source: Source,
}

/// An `m.no_olm` notice we received from one device of a sender (see
/// `OlmMachine.getNoOlmNotices`).
#[cfg_attr(feature = "node", napi_derive::napi(object, use_nullable = true))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NoOlmRecord {
    /// The sending user.
    pub sender: String,
    /// The sending device's Curve25519 key.
    pub sender_key: String,
    /// The sending device, if named (MSC3735 `from_device`).
    pub from_device: Option<String>,
    /// The reason, if any.
    pub reason: Option<String>,
    /// When it arrived, ms since the epoch.
    pub received_at: i64,
}

/// A notice as received, before validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Room(WithheldRecord),
    NoOlm(NoOlmRecord),
}

impl Notice {
    pub fn sender(&self) -> &str {
        match self {
            Notice::Room(r) => &r.sender,
            Notice::NoOlm(n) => &n.sender,
        }
    }
    pub fn sender_key(&self) -> &str {
        match self {
            Notice::Room(r) => &r.sender_key,
            Notice::NoOlm(n) => &n.sender_key,
        }
    }
    pub fn from_device(&self) -> Option<&str> {
        match self {
            Notice::Room(r) => r.from_device.as_deref(),
            Notice::NoOlm(n) => n.from_device.as_deref(),
        }
    }
}

/// The longest `reason` kept per notice, in bytes: a longer one is cut at a character boundary
/// and ends with `…`. Anyone can send a notice, so what one notice can make us store is bounded.
pub const MAX_REASON_BYTES: usize = 1024;
/// The longest code, key, room id, session id or device id a notice may carry, in bytes (the
/// spec's limit for ids); a notice with a longer one is malformed.
pub const MAX_FIELD_BYTES: usize = 255;

/// `reason`, cut to [`MAX_REASON_BYTES`].
pub fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_owned();
    }
    let ellipsis = '…';
    let mut end = MAX_REASON_BYTES - ellipsis.len_utf8();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &reason[..end])
}

/// Parse the content of an `m.room_key.withheld` event sent by `sender`. `None` for a notice
/// that lacks what the spec requires, or whose ids exceed [`MAX_FIELD_BYTES`] (it is counted
/// as malformed, never trusted). The reason is kept up to [`MAX_REASON_BYTES`].
pub fn parse(sender: &str, content: &Map<String, Value>, now_ms: u64) -> Option<Notice> {
    let field = |name: &str| codes::str_field(content, name).filter(|v| v.len() <= MAX_FIELD_BYTES);
    let code = codes::str_field(content, "code")?;
    let sender_key = codes::str_field(content, "sender_key")?;
    let from_device = match codes::str_field(content, "from_device") {
        Some(d) if d.len() > MAX_FIELD_BYTES => return None,
        other => other.map(str::to_owned),
    };
    if code.is_empty() || sender_key.is_empty() || code.len() > MAX_FIELD_BYTES || sender_key.len() > MAX_FIELD_BYTES {
        return None;
    }
    let (code, sender_key) = (code.to_owned(), sender_key.to_owned());
    let reason = codes::str_field(content, "reason").map(bounded_reason);
    if code == codes::NO_OLM {
        return Some(Notice::NoOlm(NoOlmRecord { sender: sender.to_owned(), sender_key, from_device, reason, received_at: now_ms as i64 }));
    }
    let room_id = field("room_id")?.to_owned();
    let session_id = field("session_id")?.to_owned();
    Some(Notice::Room(WithheldRecord {
        code,
        reason,
        room_id,
        session_id,
        sender: sender.to_owned(),
        sender_key,
        from_device,
        received_at: now_ms as i64,
        source: Source::Notice,
    }))
}

/// What we know that can confirm or contradict a notice.
#[derive(Debug, Default)]
pub struct Facts {
    /// The Curve25519 key of the session's creator, and its user when known, if we hold the session.
    pub session_creator: Option<(String, Option<String>)>,
    /// The known devices of the notice's sender: (device id, Curve25519 key). Empty when unknown.
    pub sender_devices: Vec<(String, String)>,
    /// Our own user id.
    pub own_user: String,
}

// `WithheldVerdict` in JavaScript: the binding generates its TypeScript union from this enum.
/// How much a received notice is trusted. Only `trusted` and `unconfirmed` notices explain
/// decryption failures; `spoofed` ones are counted in the withheld metrics and otherwise ignored.
#[cfg_attr(feature = "node", napi_derive::napi(string_enum = "snake_case", js_name = "WithheldVerdict"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Sender and key match what we know of the session's creator or the sender's devices.
    Trusted,
    /// Nothing to compare it with: we do not hold the session and the sender's devices are not
    /// known to this machine (it never queried them; it tracks only the users the application
    /// passes to `updateTrackedUsers`). Stored, counted apart from accepted notices, and used to
    /// explain a failure only for an event of the same sender, re-validated then against what
    /// we know at that time.
    Unconfirmed,
    /// From another of our own devices: an answer to our key request. Authentic, but it
    /// explains only our own user's messages, never another sender's.
    KeyRequestAnswer,
    /// Contradicts what we know: ignored for explanations and counted.
    Spoofed,
}

/// Validate a notice (MSC2399 security note: only the session creator's notices count).
pub fn validate(notice: &Notice, facts: &Facts) -> Verdict {
    let key = notice.sender_key();
    let key_owner = facts.sender_devices.iter().find(|(_, k)| k == key);
    let device_matches = match (notice.from_device(), key_owner) {
        (Some(dev), Some((owner, _))) => dev == owner,
        _ => true,
    };
    let key_is_senders = !facts.sender_devices.is_empty() && key_owner.is_some() && device_matches;
    if !facts.sender_devices.is_empty() && !key_is_senders {
        return Verdict::Spoofed;
    }
    if let (Notice::Room(_), Some((creator_key, creator_user))) = (notice, &facts.session_creator) {
        // When the crate does not know the creator's user, the key must be one of the notice
        // sender's own known devices: anyone can quote the creator's key.
        let creator_user_ok = match creator_user.as_deref() {
            Some(u) => u == notice.sender(),
            None => key_is_senders,
        };
        if creator_key == key && creator_user_ok {
            return Verdict::Trusted;
        }
        if notice.sender() == facts.own_user && key_is_senders {
            return Verdict::KeyRequestAnswer;
        }
        return Verdict::Spoofed;
    }
    if key_is_senders && notice.sender() == facts.own_user && matches!(notice, Notice::Room(_)) {
        // From another of our devices about a session we do not hold: an answer to our key
        // request, unless that device created the session (then it explains only our own
        // user's messages, which the explanation step checks).
        return Verdict::KeyRequestAnswer;
    }
    if key_is_senders {
        Verdict::Trusted
    } else {
        Verdict::Unconfirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn room(sender: &str, key: &str) -> Notice {
        parse(
            sender,
            &content(json!({"algorithm":"m.megolm.v1.aes-sha2","code":"m.unverified","reason":"verify!","room_id":"!r:x","session_id":"S","sender_key":key})),
            1,
        )
        .unwrap()
    }

    #[test]
    fn parse_keeps_the_reason_and_custom_codes() {
        let n = room("@a:x", "KA");
        let Notice::Room(r) = &n else { panic!() };
        assert_eq!(r.reason.as_deref(), Some("verify!"));
        let custom = parse("@a:x", &content(json!({"code":"com.example.policy","room_id":"!r:x","session_id":"S","sender_key":"K"})), 1);
        assert!(matches!(custom, Some(Notice::Room(r)) if r.code == "com.example.policy"));
    }

    #[test]
    fn parse_no_olm_needs_no_room() {
        let n = parse("@a:x", &content(json!({"code":"m.no_olm","sender_key":"KA","from_device":"A"})), 5).unwrap();
        assert_eq!(n, Notice::NoOlm(NoOlmRecord { sender: "@a:x".into(), sender_key: "KA".into(), from_device: Some("A".into()), reason: None, received_at: 5 }));
    }

    #[test]
    fn parse_bounds_what_one_notice_can_store() {
        let long = "é".repeat(600_000);
        let n = parse("@a:x", &content(json!({"code":"m.no_olm","sender_key":"KA","reason":long})), 1).unwrap();
        let Notice::NoOlm(r) = n else { panic!() };
        let reason = r.reason.unwrap();
        assert!(reason.len() <= MAX_REASON_BYTES && reason.ends_with('…'), "{}", reason.len());
        assert!(long.starts_with(reason.trim_end_matches('…')));
        let big = "x".repeat(MAX_FIELD_BYTES + 1);
        for name in ["code", "sender_key", "room_id", "session_id", "from_device"] {
            let mut c = json!({"code":"m.unverified","sender_key":"KA","room_id":"!r:x","session_id":"S","from_device":"D"});
            c[name] = json!(big);
            assert!(parse("@a:x", &content(c), 1).is_none(), "{name} too long");
        }
    }

    #[test]
    fn parse_rejects_notices_missing_required_fields() {
        assert!(parse("@a:x", &content(json!({"code":"m.unverified","sender_key":"K"})), 1).is_none(), "room code without room");
        assert!(parse("@a:x", &content(json!({"code":"m.no_olm"})), 1).is_none(), "no sender_key");
        assert!(parse("@a:x", &content(json!({"sender_key":"K"})), 1).is_none(), "no code");
    }

    fn facts(creator: Option<(&str, Option<&str>)>, devices: &[(&str, &str)]) -> Facts {
        Facts {
            session_creator: creator.map(|(k, u)| (k.to_owned(), u.map(str::to_owned))),
            sender_devices: devices.iter().map(|(d, k)| (d.to_string(), k.to_string())).collect(),
            own_user: "@me:x".into(),
        }
    }

    #[test]
    fn the_creators_notice_is_trusted() {
        assert_eq!(validate(&room("@a:x", "KA"), &facts(Some(("KA", Some("@a:x"))), &[("A", "KA")])), Verdict::Trusted);
        assert_eq!(validate(&room("@a:x", "KA"), &facts(Some(("KA", None)), &[("A", "KA")])), Verdict::Trusted);
        assert_eq!(validate(&room("@a:x", "KA"), &facts(None, &[("A", "KA")])), Verdict::Trusted);
    }

    #[test]
    fn a_third_party_claiming_the_creators_key_is_spoofed() {
        // Mallory (whose devices we know) sends a notice with Alice's key about Alice's session.
        assert_eq!(validate(&room("@mallory:x", "KA"), &facts(Some(("KA", Some("@a:x"))), &[("M", "KM")])), Verdict::Spoofed);
        // Mallory's devices unknown, but the session's creator is Alice.
        assert_eq!(validate(&room("@mallory:x", "KA"), &facts(Some(("KA", Some("@a:x"))), &[])), Verdict::Spoofed);
        // Mallory's own key on someone else's session.
        assert_eq!(validate(&room("@mallory:x", "KM"), &facts(Some(("KA", None)), &[("M", "KM")])), Verdict::Spoofed);
    }

    #[test]
    fn the_creators_key_quoted_when_the_creators_user_is_unknown_needs_the_senders_devices() {
        // The crate holds the session but not its creator's user (the key arrived before the device).
        assert_eq!(validate(&room("@mallory:x", "KA"), &facts(Some(("KA", None)), &[("M", "KM")])), Verdict::Spoofed);
        assert_eq!(validate(&room("@mallory:x", "KA"), &facts(Some(("KA", None)), &[])), Verdict::Spoofed);
    }

    #[test]
    fn a_key_that_is_not_the_senders_is_spoofed() {
        assert_eq!(validate(&room("@a:x", "KX"), &facts(None, &[("A", "KA")])), Verdict::Spoofed);
    }

    #[test]
    fn a_from_device_that_does_not_own_the_key_is_spoofed() {
        let n = parse("@a:x", &content(json!({"code":"m.no_olm","sender_key":"KA","from_device":"OTHER"})), 1).unwrap();
        assert_eq!(validate(&n, &facts(None, &[("A", "KA"), ("OTHER", "KO")])), Verdict::Spoofed);
    }

    #[test]
    fn nothing_known_leaves_it_unconfirmed() {
        assert_eq!(validate(&room("@a:x", "KA"), &facts(None, &[])), Verdict::Unconfirmed);
    }

    #[test]
    fn our_own_devices_refusals_are_key_request_answers() {
        assert_eq!(validate(&room("@me:x", "KME2"), &facts(Some(("KA", Some("@a:x"))), &[("ME2", "KME2")])), Verdict::KeyRequestAnswer);
        assert_eq!(validate(&room("@me:x", "KME2"), &facts(None, &[("ME2", "KME2")])), Verdict::KeyRequestAnswer, "session not held");
    }
}
