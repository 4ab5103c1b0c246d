//! Withheld codes: the spec's codes, validation of custom codes, default reasons, and the JSON
//! content of a withheld notice.
//!
//! Notices are built as JSON here rather than with the crate's `RoomKeyWithheldContent`, which
//! replaces the reason with its own text and cannot carry custom codes.

use serde_json::{json, Map, Value};

/// The Megolm algorithm every notice names.
pub const MEGOLM_V1: &str = "m.megolm.v1.aes-sha2";
/// The to-device event type of a withheld notice.
pub const WITHHELD_EVENT_TYPE: &str = "m.room_key.withheld";

pub const BLACKLISTED: &str = "m.blacklisted";
pub const UNVERIFIED: &str = "m.unverified";
pub const UNAUTHORISED: &str = "m.unauthorised";
pub const UNAVAILABLE: &str = "m.unavailable";
pub const NO_OLM: &str = "m.no_olm";
pub const HISTORY_NOT_SHARED: &str = "m.history_not_shared";

/// Codes a sender can emit (`m.history_not_shared` is for key bundles only, so not here).
pub const SENDABLE: [&str; 5] = [BLACKLISTED, UNVERIFIED, UNAUTHORISED, UNAVAILABLE, NO_OLM];

/// Whether `code` is a code we accept in configuration: a spec code, or a namespaced custom
/// code in Java package naming (`com.example.reason`), which must not use the reserved `m.`.
pub fn is_valid_code(code: &str) -> bool {
    if SENDABLE.contains(&code) || code == HISTORY_NOT_SHARED {
        return true;
    }
    if code.starts_with("m.") {
        return false;
    }
    let parts: Vec<&str> = code.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

/// The reason we send with a code when the application configured none.
pub fn default_reason(code: &str) -> &'static str {
    match code {
        BLACKLISTED => "The sender has blocked your device.",
        UNVERIFIED => "The sender shares keys only with verified devices, and your device is not verified.",
        UNAUTHORISED => "You are not allowed to read these messages.",
        UNAVAILABLE => "The device you asked does not have the requested key.",
        NO_OLM => "The sender could not set up a secure channel with your device.",
        HISTORY_NOT_SHARED => "The room's history was not shared with you.",
        _ => "The key was withheld.",
    }
}

/// Content of a room-scoped notice (every code except `m.no_olm`).
pub fn room_notice(
    code: &str,
    reason: &str,
    room_id: &str,
    session_id: &str,
    sender_key: &str,
    from_device: &str,
) -> Value {
    json!({
        "algorithm": MEGOLM_V1,
        "code": code,
        "reason": reason,
        "room_id": room_id,
        "session_id": session_id,
        "sender_key": sender_key,
        "from_device": from_device,
    })
}

/// Content of an `m.no_olm` notice: no room or session, it covers every session.
pub fn no_olm_notice(reason: &str, sender_key: &str, from_device: &str) -> Value {
    json!({
        "algorithm": MEGOLM_V1,
        "code": NO_OLM,
        "reason": reason,
        "sender_key": sender_key,
        "from_device": from_device,
    })
}

/// Read a string field of a JSON object.
pub fn str_field<'a>(content: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    content.get(name).and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_codes_and_namespaced_custom_codes_are_valid() {
        for c in SENDABLE {
            assert!(is_valid_code(c), "{c}");
        }
        assert!(is_valid_code("com.example.policy"));
        assert!(is_valid_code("org.example.my_reason"));
    }

    #[test]
    fn reserved_and_unnamespaced_codes_are_rejected() {
        assert!(!is_valid_code("m.made_up"));
        assert!(!is_valid_code("nodots"));
        assert!(!is_valid_code("com..example"));
        assert!(!is_valid_code(""));
        assert!(!is_valid_code("com.exa mple"));
    }

    #[test]
    fn no_olm_notice_has_no_room_or_session() {
        let n = no_olm_notice("r", "KEY", "DEV");
        assert_eq!(n["code"], NO_OLM);
        assert!(n.get("room_id").is_none());
        assert!(n.get("session_id").is_none());
        assert_eq!(n["sender_key"], "KEY");
    }

    #[test]
    fn room_notice_carries_every_required_field() {
        let n = room_notice(UNVERIFIED, "why", "!r:x", "S", "KEY", "DEV");
        for f in ["algorithm", "code", "reason", "room_id", "session_id", "sender_key", "from_device"] {
            assert!(n.get(f).is_some(), "{f}");
        }
    }
}
