//! JSON the TypeScript layer serialised from the caller's objects, parsed with every failure
//! named in JavaScript terms: the path of the bad value from the argument's name
//! (`changes.changedDevices.changed`, `policy.reasons["m.unverified"]`) and what was expected
//! (`an array`, `an object`, `a string`), never serde's vocabulary or a JSON position.

use serde::de::DeserializeOwned;

/// `field` followed by the path serde reached, in JavaScript notation.
fn js_path(field: &str, path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = field.to_owned();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                let plain = !key.is_empty()
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                    && !key.starts_with(|c: char| c.is_ascii_digit());
                if plain {
                    out.push('.');
                    out.push_str(key);
                } else {
                    out.push_str(&format!("[{}]", serde_json::to_string(key).unwrap_or_default()));
                }
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// serde's name of a JSON value or expectation, as a JavaScript programmer says it.
fn js_kind(serde: &str) -> String {
    let s = serde.trim();
    let word = |w: &str| s == w || s.starts_with(&format!("{w} "));
    if word("a sequence") || word("sequence") || s.starts_with("an array") || s.starts_with("a tuple") || s.starts_with("a list") || s.starts_with("a set") {
        "an array".to_owned()
    } else if word("map") || word("a map") || s.starts_with("struct ") || s.starts_with("a struct") || s.starts_with("an object") || s.starts_with("a JSON object") {
        "an object".to_owned()
    } else if s == "unit value" || s == "null" || s == "unit" {
        "null".to_owned()
    } else if let Some(v) = s.strip_prefix("string ") {
        format!("the string {v}")
    } else if let Some(v) = s.strip_prefix("integer `").or_else(|| s.strip_prefix("floating point `")) {
        format!("the number {}", v.trim_end_matches('`'))
    } else if let Some(v) = s.strip_prefix("boolean `") {
        format!("{}", v.trim_end_matches('`'))
    } else if s.starts_with('u') && s[1..].chars().all(|c| c.is_ascii_digit()) && s.len() > 1 {
        "a non-negative integer".to_owned()
    } else if s.starts_with('i') && s[1..].chars().all(|c| c.is_ascii_digit()) && s.len() > 1 {
        "an integer".to_owned()
    } else if s.starts_with('f') && s[1..].chars().all(|c| c.is_ascii_digit()) && s.len() > 1 {
        "a number".to_owned()
    } else {
        s.to_owned()
    }
}

/// The message of a serde_json error without its position, in JavaScript terms.
pub fn js_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let text = match text.rfind(" at line ") {
        Some(at) if err.line() != 0 => text[..at].to_owned(),
        _ => text,
    };
    if err.is_syntax() || err.is_eof() {
        return format!("is not valid JSON ({text})");
    }
    js_text(text)
}

/// A serde message already turned into text (e.g. inside another library's error), in
/// JavaScript terms and without its position.
pub fn js_text(text: String) -> String {
    let text = match text.rfind(" at line ") {
        Some(at) if text[at..].contains(" column ") => text[..at].to_owned(),
        _ => text,
    };
    if let Some(at) = text.find("invalid type: ").or_else(|| text.find("invalid value: ")) {
        let (prefix, rest) = text.split_at(at);
        let rest = rest.trim_start_matches("invalid type: ").trim_start_matches("invalid value: ");
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return format!("{prefix}must be {}, got {}", js_kind(expected), js_kind(got));
        }
    }
    if let Some(at) = text.find("missing field `") {
        let (prefix, rest) = text.split_at(at);
        return format!("{prefix}{} is required", rest.trim_start_matches("missing field `").trim_end_matches('`'));
    }
    if let Some(rest) = text.strip_prefix("unknown field `") {
        if let Some((name, expected)) = rest.split_once("`, expected ") {
            let expected = expected.replace("` or `", "`, `").replace('`', "").replace("one of ", "");
            return format!("has an unknown property {name:?}; the known ones are {expected}");
        }
        if let Some((name, _)) = rest.split_once('`') {
            return format!("has an unknown property {name:?}; it takes none");
        }
    }
    if let Some(rest) = text.strip_prefix("invalid length ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return format!("must have {expected} (it has {got})");
        }
    }
    text
}

/// Where a parse failed and why, in JavaScript terms.
#[derive(Debug, PartialEq, Eq)]
pub struct InputError {
    /// The path of the bad value, from the argument's name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Parse `text` (the JSON form of argument `field`), naming the bad value on failure.
pub fn parse<T: DeserializeOwned>(field: &str, text: &str) -> Result<T, InputError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| InputError { field: js_path(field, e.path()), message: js_message(e.inner()) })?;
    de.end().map_err(|e| InputError { field: field.to_owned(), message: js_message(&e) })?;
    Ok(value)
}

/// [`parse`] for a value napi-rs already converted from the caller's object (an option typed in
/// TypeScript that crosses without a JSON string): the same paths and messages.
pub fn from_value<T: DeserializeOwned>(field: &str, value: serde_json::Value) -> Result<T, InputError> {
    serde_path_to_error::deserialize(value).map_err(|e| InputError { field: js_path(field, e.path()), message: js_message(e.inner()) })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    #[allow(dead_code)]
    struct Changes {
        #[serde(default)]
        changed_devices: Lists,
        #[serde(default)]
        one_time_key_counts: BTreeMap<String, u32>,
    }

    #[derive(Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Lists {
        #[serde(default)]
        changed: Vec<String>,
    }

    fn err(text: &str) -> InputError {
        parse::<Changes>("changes", text).unwrap_err()
    }

    #[test]
    fn names_the_path_and_says_what_was_expected_in_javascript_terms() {
        assert_eq!(
            err(r#"{"changedDevices":{"changed":"not an array"}}"#),
            InputError { field: "changes.changedDevices.changed".into(), message: "must be an array, got the string \"not an array\"".into() }
        );
        assert_eq!(err(r#"{"changedDevices":{"changed":[1]}}"#).field, "changes.changedDevices.changed[0]");
        assert_eq!(err(r#"{"changedDevices":{"changed":[1]}}"#).message, "must be a string, got the number 1");
        let e = err(r#"{"oneTimeKeyCounts":{"signed_curve25519":-1}}"#);
        assert_eq!(e.field, "changes.oneTimeKeyCounts.signed_curve25519");
        assert_eq!(e.message, "must be a non-negative integer, got the number -1");
        let e = err(r#"{"oneTimeKeyCounts":{"m.weird":true}}"#);
        assert_eq!(e.field, r#"changes.oneTimeKeyCounts["m.weird"]"#);
        assert_eq!(e.message, "must be a non-negative integer, got true");
        assert_eq!(err(r#"{"changedDevices":"x"}"#).message, "must be an object, got the string \"x\"");
    }

    #[test]
    fn unknown_properties_and_broken_json() {
        let e = err(r#"{"toDevice":[]}"#);
        assert_eq!(e.field, "changes.toDevice");
        assert!(e.message.starts_with("has an unknown property \"toDevice\"; the known ones are changedDevices, oneTimeKeyCounts"), "{}", e.message);
        let e = err("{");
        assert_eq!(e.field, "changes");
        assert!(e.message.starts_with("is not valid JSON"), "{}", e.message);
        assert!(!e.message.contains("line 1"), "{}", e.message);
    }

    #[test]
    fn text_from_other_libraries_is_translated_too() {
        assert_eq!(
            js_text("deserialization failed: invalid type: integer `7`, expected a map at line 1 column 15".into()),
            "deserialization failed: must be an object, got the number 7"
        );
        assert_eq!(js_text("JSON: missing field `device_keys` at line 1 column 2".into()), "JSON: device_keys is required");
    }

    #[test]
    fn from_value_names_the_path_like_parse() {
        let text = r#"{"changedDevices":{"changed":[1]}}"#;
        let from_text = parse::<Changes>("changes", text).unwrap_err();
        let from_value = from_value::<Changes>("changes", serde_json::from_str(text).unwrap()).unwrap_err();
        assert_eq!(from_value, from_text);
        assert_eq!(from_value.field, "changes.changedDevices.changed[0]");
    }
}
