//! Trust: what makes today's clients trust our device and what tells us whom to trust.
//!
//! - `cross_signing`: our own identity (master, self-signing, user-signing keys), its bootstrap
//!   and the signatures of our devices.
//! - `secret_storage`: `m.secret_storage.v1.aes-hmac-sha2` (4S): the key, the recovery key, and
//!   our cross-signing and backup keys as encrypted account data.
//! - `identity`: other users' identities: verified, pinned, changed.

pub mod cross_signing;
pub mod identity;
pub mod secret_storage;
pub mod verification;

use ruma::TransactionId;

use crate::{errors::internal, requests::NativeRequest};

/// The request object for a signature upload body.
pub(crate) fn signature_upload(signed_keys: &impl serde::Serialize) -> napi::Result<NativeRequest> {
    Ok(NativeRequest::SignatureUpload { id: TransactionId::new().to_string(), body: serde_json::to_string(signed_keys).map_err(internal)? })
}
