//! Rust errors -> typed JS errors.
//!
//! Every failure this binding reports has one of the codes of [`ErrorCode`] (decryption failures
//! also one of [`DecryptionCode`]): defined here once, exported to JavaScript as generated enums
//! (`native/index.d.ts`), and tied to the TypeScript unions of `src/errors.ts` by
//! `test/errors.test.ts`. Each failure is classified by matching the crate's error *variants*,
//! never its message text.
//!
//! How the code travels: napi-rs sets a JS error's `code` from the status of `napi::Error<S>`, but
//! its promise bridge (`execute_tokio_future`) takes `Into<napi::Error<Status>>`, so an async
//! method (nearly all of ours) cannot reject with a status of our own. The reason string carries
//! the code and structured details as a tagged JSON payload ([`ErrorPayload`]) instead, and
//! `src/errors.ts` turns it into `MatrixCryptoError` / `DecryptionError` with `err.code` set.

use std::fmt::Display;

use napi::{Error, Status};
use napi_derive::napi;
use serde::Serialize;
use serde_json::Value;

/// Prefix that marks a reason string as a structured error payload.
pub const ERROR_TAG: &str = "\u{1}mcn-error:";

/// The stable `code` of every error this library throws (`MatrixCryptoError.code`).
#[napi(string_enum)]
#[derive(Debug, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    /// An argument was malformed; `field` names it.
    InvalidArgument,
    /// The machine was closed; open it again.
    MachineClosed,
    /// The crypto store failed.
    StoreError,
    /// The store passphrase is wrong, or the store is not encrypted with one.
    StorePassphrase,
    /// Another machine or process holds the store.
    StoreLocked,
    /// The store belongs to another user or device id.
    StoreMismatchedAccount,
    /// Encrypting failed, e.g. no room key was shared for the room yet.
    EncryptionError,
    /// A failure inside the library that is not the caller's input.
    InternalError,
    /// A room event could not be decrypted; the `DecryptionCode` says why.
    DecryptionError,
    /// A cross-signing operation needs a private key this device does not hold: bootstrap
    /// cross-signing, or recover the keys from secret storage.
    CrossSigningKeyMissing,
    /// The recovery key or passphrase does not unlock the secret storage key; nothing was changed.
    SecretStorageKeyMismatch,
    /// Secret storage in account data is malformed or does not authenticate; `field` names the event.
    SecretStorageCorrupt,
}

/// Why a room event could not be decrypted (`DecryptionError.code`).
#[napi(string_enum)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DecryptionCode {
    /// We have no room key for the event's session.
    MissingRoomKey,
    /// We have the session, but only from a later message index.
    UnknownMessageIndex,
    /// The event is not a well-formed `m.room.encrypted` event.
    MalformedEvent,
    /// The ciphertext did not authenticate or decrypt.
    DecryptionFailed,
    /// The session's keys do not match the device that claims to have sent it.
    MismatchedIdentityKeys,
    /// The decrypted event names a different sender than the encrypted one.
    MismatchedSender,
    /// The sender's device is not trusted enough for the configured requirement.
    SenderIdentityNotTrusted,
    /// The crypto store failed while decrypting.
    StoreError,
}

impl DecryptionCode {
    /// The code of a crate decryption error.
    pub fn of(err: &matrix_sdk_crypto::MegolmError) -> Self {
        use matrix_sdk_crypto::{vodozemac::megolm::DecryptionError as VDecryption, EventError, MegolmError};
        match err {
            MegolmError::MissingRoomKey(_) => Self::MissingRoomKey,
            MegolmError::Decryption(VDecryption::UnknownMessageIndex(_, _)) => Self::UnknownMessageIndex,
            MegolmError::Decryption(_) => Self::DecryptionFailed,
            MegolmError::MismatchedIdentityKeys(_) => Self::MismatchedIdentityKeys,
            MegolmError::EventError(EventError::MismatchedSender(..)) => Self::MismatchedSender,
            MegolmError::EventError(_) | MegolmError::Decode(_) | MegolmError::JsonError(_) => Self::MalformedEvent,
            MegolmError::SenderIdentityNotTrusted(_) => Self::SenderIdentityNotTrusted,
            MegolmError::Store(_) => Self::StoreError,
        }
    }
}

/// The codes by the names the rest of the crate has always used.
pub mod code {
    use super::ErrorCode;
    pub const INVALID_ARGUMENT: ErrorCode = ErrorCode::InvalidArgument;
    pub const MACHINE_CLOSED: ErrorCode = ErrorCode::MachineClosed;
    pub const STORE: ErrorCode = ErrorCode::StoreError;
    pub const STORE_PASSPHRASE: ErrorCode = ErrorCode::StorePassphrase;
    pub const STORE_LOCKED: ErrorCode = ErrorCode::StoreLocked;
    pub const STORE_MISMATCHED_ACCOUNT: ErrorCode = ErrorCode::StoreMismatchedAccount;
    pub const ENCRYPTION: ErrorCode = ErrorCode::EncryptionError;
    pub const INTERNAL: ErrorCode = ErrorCode::InternalError;
    pub const DECRYPTION: ErrorCode = ErrorCode::DecryptionError;
    pub const CROSS_SIGNING_KEY_MISSING: ErrorCode = ErrorCode::CrossSigningKeyMissing;
    pub const SECRET_STORAGE_KEY_MISMATCH: ErrorCode = ErrorCode::SecretStorageKeyMismatch;
    pub const SECRET_STORAGE_CORRUPT: ErrorCode = ErrorCode::SecretStorageCorrupt;
}

/// What the reason string of every error of ours carries after [`ERROR_TAG`].
#[derive(Serialize)]
struct ErrorPayload<'a> {
    code: ErrorCode,
    message: &'a str,
    details: Value,
}

/// Build a JS error with a stable `code`, a message, and optional structured details.
pub fn typed(code: ErrorCode, message: impl Display, details: Value) -> Error {
    let message = message.to_string();
    let payload = ErrorPayload { code, message: &message, details };
    let text = serde_json::to_string(&payload).unwrap_or_else(|_| {
        // Serialising an enum, a string and a `Value` cannot fail; keep the message if it ever did.
        format!("{{\"code\":\"InternalError\",\"message\":{:?},\"details\":null}}", message)
    });
    Error::new(Status::GenericFailure, format!("{ERROR_TAG}{text}"))
}

/// `typed` for an error about one argument or option: `field` names it (JS spelling, e.g. `store.path`).
pub fn for_field(code: ErrorCode, field: &str, message: impl Display) -> Error {
    typed(code, message, serde_json::json!({ "field": field }))
}

/// A rejected argument: names the field so the caller can fix it.
pub fn invalid(field: &str, message: impl Display) -> Error {
    for_field(code::INVALID_ARGUMENT, field, format!("{field}: {message}"))
}

/// Any store failure that is not a more specific case.
pub fn store(err: impl Display) -> Error {
    typed(code::STORE, format!("crypto store error: {err}"), Value::Null)
}

/// Failures inside the crate that are not the caller's input.
pub fn internal(err: impl Display) -> Error {
    typed(code::INTERNAL, err, Value::Null)
}

/// A caller's value that failed [`crate::json_input`]'s checks: `InvalidArgument` naming its path.
pub fn input(err: crate::json_input::InputError) -> Error {
    invalid(&err.field, err.message)
}

/// The withheld layer's errors, by variant: store failures keep their code, a crate operation
/// that failed is an encryption error, the rest are ours.
impl From<crate::withheld::WithheldError> for Error {
    fn from(err: crate::withheld::WithheldError) -> Self {
        use crate::withheld::WithheldError as W;
        match err {
            W::Store(e) => store(e),
            W::Crate(e) => typed(code::ENCRYPTION, e, Value::Null),
            other @ (W::Json(_) | W::Key(_) | W::BackupEncryption(_)) => internal(other),
        }
    }
}

/// The plain-Rust machine's errors, by variant.
impl From<crate::core_machine::CoreError> for Error {
    fn from(err: crate::core_machine::CoreError) -> Self {
        use crate::core_machine::CoreError as C;
        match err {
            C::Input(e) => input(e),
            C::Olm(e) => olm(e),
            C::Withheld(e) => e.into(),
        }
    }
}

/// Parse JSON supplied by the caller, naming the field on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(field: &str, text: &str) -> napi::Result<T> {
    crate::json_input::parse(field, text).map_err(|e| invalid(&e.field, e.message))
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

/// Whether a store error means the store's contents cannot be decrypted with the passphrase we
/// were given: a wrong passphrase, or a passphrase for a store that has none (or the reverse).
pub fn is_store_cipher_error(err: &matrix_sdk_crypto::CryptoStoreError) -> bool {
    use matrix_sdk_crypto::CryptoStoreError as E;
    match err {
        E::UnpicklingError | E::Pickle(_) => true,
        // matrix-sdk-sqlite reports its cipher failures as a `Backend` error of its own error
        // type, which it does not export: there is no variant to match, only its display text.
        E::Backend(inner) => {
            let text = inner.to_string();
            text.contains("cipher") || text.contains("decrypt") || text.contains("MAC")
        }
        _ => false,
    }
}

/// A panic caught from a task, as text (its `&str` or `String` payload).
pub fn panic_text(join: tokio::task::JoinError) -> String {
    if !join.is_panic() {
        return join.to_string();
    }
    let payload = join.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
