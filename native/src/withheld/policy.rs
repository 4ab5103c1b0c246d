//! Which withheld notices leave the machine, and with what reason (MSC2399: sending is optional).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::codes;

/// Which codes are sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum SendCodes {
    /// `"all"` or `"none"`.
    Word(String),
    /// An explicit list of codes to send; every other code is suppressed.
    Only(BTreeSet<String>),
}

/// By hand, so a bad value is described in the caller's terms (not "did not match any variant").
impl<'de> Deserialize<'de> for SendCodes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SendCodes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"all\", \"none\" or an array of withheld codes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SendCodes, E> {
                Ok(SendCodes::Word(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SendCodes, A::Error> {
                let mut out = BTreeSet::new();
                while let Some(code) = seq.next_element::<String>()? {
                    out.insert(code);
                }
                Ok(SendCodes::Only(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The withheld sending policy, as the application configures it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendPolicy {
    #[serde(default = "SendPolicy::all")]
    pub send: SendCodes,
    /// Reason text per code; codes without an entry use the default sentence.
    #[serde(default)]
    pub reasons: BTreeMap<String, String>,
}

/// A policy that fails validation, with the field at fault.
#[derive(Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

impl Default for SendPolicy {
    fn default() -> Self {
        Self { send: Self::all(), reasons: BTreeMap::new() }
    }
}

impl SendPolicy {
    fn all() -> SendCodes {
        SendCodes::Word("all".to_owned())
    }

    /// Check the words and codes; `prefix` names the option in errors (e.g. `withheld`).
    pub fn validate(&self, prefix: &str) -> Result<(), PolicyError> {
        match &self.send {
            SendCodes::Word(w) if w == "all" || w == "none" => {}
            SendCodes::Word(w) => {
                return Err(PolicyError {
                    field: format!("{prefix}.send"),
                    message: format!("{w:?} is not \"all\", \"none\" or a list of codes"),
                })
            }
            SendCodes::Only(list) => {
                if let Some(bad) = list.iter().find(|c| !codes::is_valid_code(c)) {
                    return Err(PolicyError {
                        field: format!("{prefix}.send"),
                        message: format!("{bad:?} is not a withheld code (spec codes, or namespaced like com.example.code)"),
                    });
                }
            }
        }
        if let Some(bad) = self.reasons.keys().find(|c| !codes::is_valid_code(c)) {
            return Err(PolicyError {
                field: format!("{prefix}.reasons[{bad:?}]"),
                message: "is not a withheld code (spec codes, or namespaced like com.example.code)".to_owned(),
            });
        }
        Ok(())
    }

    /// The policy of option `field` (e.g. `options.withheldPolicy`), as napi-rs converted the
    /// caller's object, checked: a bad value is named by its JavaScript path.
    pub fn from_input(field: &str, value: serde_json::Value) -> Result<Self, crate::json_input::InputError> {
        let policy: Self = crate::json_input::from_value(field, value)?;
        policy.validate(field).map_err(|e| crate::json_input::InputError { field: e.field, message: e.message })?;
        Ok(policy)
    }

    /// Whether notices with `code` may be sent.
    pub fn allows(&self, code: &str) -> bool {
        match &self.send {
            SendCodes::Word(w) => w == "all",
            SendCodes::Only(list) => list.contains(code),
        }
    }

    /// The reason text to send with `code`.
    pub fn reason(&self, code: &str) -> &str {
        self.reasons.get(code).map(String::as_str).unwrap_or_else(|| codes::default_reason(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> SendPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_sends_every_code_with_default_reasons() {
        let p = SendPolicy::default();
        for c in codes::SENDABLE {
            assert!(p.allows(c));
            assert_eq!(p.reason(c), codes::default_reason(c));
        }
    }

    #[test]
    fn none_sends_nothing() {
        let p = parse(r#"{"send":"none"}"#);
        assert!(codes::SENDABLE.iter().all(|c| !p.allows(c)));
    }

    #[test]
    fn a_list_sends_only_its_codes() {
        let p = parse(r#"{"send":["m.unverified"],"reasons":{"m.unverified":"verify me"}}"#);
        assert!(p.allows("m.unverified"));
        assert!(!p.allows("m.blacklisted"));
        assert!(!p.allows("m.no_olm"));
        assert_eq!(p.reason("m.unverified"), "verify me");
    }

    #[test]
    fn validation_names_the_field() {
        let e = parse(r#"{"send":"some"}"#).validate("withheld").unwrap_err();
        assert_eq!(e.field, "withheld.send");
        let e = parse(r#"{"send":["m.bogus"]}"#).validate("withheld").unwrap_err();
        assert_eq!(e.field, "withheld.send");
        let e = parse(r#"{"reasons":{"nodots":"x"}}"#).validate("withheld").unwrap_err();
        assert_eq!(e.field, r#"withheld.reasons["nodots"]"#);
        assert!(parse(r#"{"send":["m.blacklisted","com.example.x"]}"#).validate("withheld").is_ok());
    }

    #[test]
    fn parse_errors_name_the_value_in_javascript_terms() {
        let e = crate::json_input::parse::<SendPolicy>("policy", r#"{"reasons":{"m.unverified":5}}"#).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), (r#"policy.reasons["m.unverified"]"#, "must be a string, got the number 5"));
        let e = crate::json_input::parse::<SendPolicy>("policy", r#"{"send":7}"#).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("policy.send", r#"must be "all", "none" or an array of withheld codes, got the number 7"#));
        let e = crate::json_input::parse::<SendPolicy>("policy", r#"{"send":["m.unverified",3]}"#).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("policy.send[1]", "must be a string, got the number 3"));
    }

    #[test]
    fn from_input_checks_and_names_the_javascript_path() {
        let input = |v: serde_json::Value| SendPolicy::from_input("options.withheldPolicy", v);
        let e = input(serde_json::json!({ "send": ["m.unverified", 3] })).unwrap_err();
        assert_eq!((e.field.as_str(), e.message.as_str()), ("options.withheldPolicy.send[1]", "must be a string, got the number 3"));
        let e = input(serde_json::json!({ "send": ["m.bogus"] })).unwrap_err();
        assert_eq!(e.field, "options.withheldPolicy.send");
        let p = input(serde_json::json!({ "send": ["m.unverified"], "reasons": { "m.unverified": "verify" } })).unwrap();
        assert!(p.allows("m.unverified") && !p.allows("m.blacklisted"));
        assert_eq!(p.reason("m.unverified"), "verify");
    }
}
