//! Rust errors -> typed JS errors.
//!
//! napi-rs turns every `napi::Error` into a JS `Error` whose `code` is a napi status. We want a
//! stable, documented `code` and structured details (the bad field, the withheld notice that
//! explains a decryption failure), so the reason string carries a tagged JSON payload that the
//! TypeScript layer (`src/errors.ts`) turns into `MatrixCryptoError` / `DecryptionError`.

use std::fmt::Display;

use napi::{Error, Status};
use serde_json::{json, Value};

/// Prefix that marks a reason string as a structured error payload.
pub const ERROR_TAG: &str = "\u{1}mcn-error:";

/// Stable error codes shared with `src/errors.ts`.
pub mod code {
    pub const INVALID_ARGUMENT: &str = "InvalidArgument";
    pub const MACHINE_CLOSED: &str = "MachineClosed";
    pub const STORE: &str = "StoreError";
    pub const STORE_PASSPHRASE: &str = "StorePassphrase";
    pub const STORE_LOCKED: &str = "StoreLocked";
    pub const STORE_MISMATCHED_ACCOUNT: &str = "StoreMismatchedAccount";
    pub const ENCRYPTION: &str = "EncryptionError";
    pub const INTERNAL: &str = "InternalError";
    pub const DECRYPTION: &str = "DecryptionError";
    pub const CROSS_SIGNING_KEY_MISSING: &str = "CrossSigningKeyMissing";
    pub const SECRET_STORAGE_KEY_MISMATCH: &str = "SecretStorageKeyMismatch";
    pub const SECRET_STORAGE_CORRUPT: &str = "SecretStorageCorrupt";
}

/// Build a JS error with a stable `code`, a message, and optional structured details.
pub fn typed(code: &str, message: impl Display, details: Value) -> Error {
    let payload = json!({ "code": code, "message": message.to_string(), "details": details });
    Error::new(Status::GenericFailure, format!("{ERROR_TAG}{payload}"))
}

/// A rejected argument: names the field so the caller can fix it.
pub fn invalid(field: &str, message: impl Display) -> Error {
    typed(code::INVALID_ARGUMENT, format!("{field}: {message}"), json!({ "field": field }))
}

/// Any store failure that is not a more specific case.
pub fn store(err: impl Display) -> Error {
    typed(code::STORE, format!("crypto store error: {err}"), Value::Null)
}

/// Failures inside the crate that are not the caller's input.
pub fn internal(err: impl Display) -> Error {
    typed(code::INTERNAL, err, Value::Null)
}

/// Parse JSON supplied by the caller, naming the field on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(field: &str, text: &str) -> napi::Result<T> {
    serde_json::from_str(text).map_err(|e| invalid(field, format!("not valid JSON for this field ({e})")))
}

/// Map `OlmError` to a typed error. Store errors keep their own code.
pub fn olm(err: matrix_sdk_crypto::OlmError) -> Error {
    use matrix_sdk_crypto::OlmError;
    match err {
        OlmError::Store(e) => store(e),
        OlmError::JsonError(e) => invalid("response", e),
        other => typed(code::ENCRYPTION, other, Value::Null),
    }
}
