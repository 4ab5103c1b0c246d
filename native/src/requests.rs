//! Outgoing requests as ready-to-send JSON bodies, and homeserver responses back into the crate.
//!
//! Bodies are serialised once here and handed to JS as strings: they go to the homeserver
//! unchanged, so JS never parses them on the hot path.

use std::collections::BTreeMap;

use matrix_sdk_crypto::types::requests::{AnyOutgoingRequest, OutgoingRequest, ToDeviceRequest, UploadSigningKeysRequest};
use napi_derive::napi;
use ruma::api::client::keys::claim_keys::v3::Request as KeysClaimRequest;
use serde::Serialize;

pub use crate::core_machine::RequestType;
use crate::errors::internal;

/// One request for the application to send; `type` selects the endpoint, and only the types
/// that need them carry the extra fields (a discriminated union in `index.d.ts`).
#[napi(discriminant = "type", discriminant_case = "snake_case", object_to_js = false)]
pub enum NativeRequest {
    /// `POST /keys/upload`.
    KeysUpload { id: String, body: String },
    /// `POST /keys/query`.
    KeysQuery { id: String, body: String },
    /// `POST /keys/claim`.
    KeysClaim { id: String, body: String },
    /// `PUT /sendToDevice/{eventType}/{txnId}`.
    ToDevice { id: String, body: String, event_type: String, txn_id: String },
    /// `POST /keys/signatures/upload`.
    SignatureUpload { id: String, body: String },
    /// `POST /keys/device_signing/upload` (needs user-interactive auth).
    SigningKeysUpload { id: String, body: String },
    /// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
    RoomMessage { id: String, body: String, event_type: String, txn_id: String, room_id: String },
    /// `PUT /room_keys/keys?version=`.
    KeysBackup { id: String, body: String, version: String },
}

impl NativeRequest {
    /// The request id (for `markRequestAsSent`).
    pub fn id(&self) -> &str {
        match self {
            Self::KeysUpload { id, .. }
            | Self::KeysQuery { id, .. }
            | Self::KeysClaim { id, .. }
            | Self::ToDevice { id, .. }
            | Self::SignatureUpload { id, .. }
            | Self::SigningKeysUpload { id, .. }
            | Self::RoomMessage { id, .. }
            | Self::KeysBackup { id, .. } => id,
        }
    }

    /// Its type.
    pub fn kind(&self) -> RequestType {
        match self {
            Self::KeysUpload { .. } => RequestType::KeysUpload,
            Self::KeysQuery { .. } => RequestType::KeysQuery,
            Self::KeysClaim { .. } => RequestType::KeysClaim,
            Self::ToDevice { .. } => RequestType::ToDevice,
            Self::SignatureUpload { .. } => RequestType::SignatureUpload,
            Self::SigningKeysUpload { .. } => RequestType::SigningKeysUpload,
            Self::RoomMessage { .. } => RequestType::RoomMessage,
            Self::KeysBackup { .. } => RequestType::KeysBackup,
        }
    }
}

/// Bodies from this size on reach JS as external strings. A share with 10,000 devices returns
/// ~20 MB of bodies; copying them into the JS heap would hold the event loop for ~25 ms when the
/// promise resolves, an external string hands V8 the Rust buffer instead.
const EXTERNAL_BODY_BYTES: usize = 16 * 1024;

/// A body as a JS string: external (no copy) when it is large and ASCII, which JSON from
/// serde_json is unless a string in it holds non-ASCII characters (then it is copied as UTF-8).
fn body_to_js(env: napi::sys::napi_env, body: String) -> napi::Result<napi::sys::napi_value> {
    use napi::bindgen_prelude::ToNapiValue;
    if body.len() >= EXTERNAL_BODY_BYTES && body.is_ascii() {
        let js_env = napi::Env::from_raw(env);
        let js = napi::JsStringLatin1::from_data(&js_env, body.into_bytes())?;
        // SAFETY: `env` is the live environment this conversion was called with.
        unsafe { napi::JsStringLatin1::to_napi_value(env, js) }
    } else {
        // SAFETY: as above.
        unsafe { String::to_napi_value(env, body) }
    }
}

/// By hand so that large bodies cross as external strings (see [`body_to_js`]).
impl napi::bindgen_prelude::ToNapiValue for NativeRequest {
    unsafe fn to_napi_value(env: napi::sys::napi_env, val: Self) -> napi::Result<napi::sys::napi_value> {
        let mut obj = napi::bindgen_prelude::Object::new(&napi::Env::from_raw(env))?;
        obj.set("type", val.kind().as_str())?;
        let (id, body) = match val {
            NativeRequest::KeysUpload { id, body }
            | NativeRequest::KeysQuery { id, body }
            | NativeRequest::KeysClaim { id, body }
            | NativeRequest::SignatureUpload { id, body }
            | NativeRequest::SigningKeysUpload { id, body } => (id, body),
            NativeRequest::ToDevice { id, body, event_type, txn_id } => {
                obj.set("eventType", event_type)?;
                obj.set("txnId", txn_id)?;
                (id, body)
            }
            NativeRequest::RoomMessage { id, body, event_type, txn_id, room_id } => {
                obj.set("eventType", event_type)?;
                obj.set("txnId", txn_id)?;
                obj.set("roomId", room_id)?;
                (id, body)
            }
            NativeRequest::KeysBackup { id, body, version } => {
                obj.set("version", version)?;
                (id, body)
            }
        };
        obj.set("id", id)?;
        obj.set("body", body_to_js(env, body)?)?;
        // SAFETY: `obj` was created in `env` above.
        unsafe { napi::bindgen_prelude::Object::to_napi_value(env, obj) }
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> napi::Result<String> {
    serde_json::to_string(value).map_err(internal)
}

#[derive(Serialize)]
struct ToDeviceBody<'a> {
    messages: &'a BTreeMap<
        ruma::OwnedUserId,
        BTreeMap<ruma::to_device::DeviceIdOrAllDevices, ruma::serde::Raw<ruma::events::AnyToDeviceEventContent>>,
    >,
}

/// A to-device request; `id` is the transaction id, which the crate also uses as request id.
pub fn to_device(request: &ToDeviceRequest) -> napi::Result<NativeRequest> {
    let body = to_json(&ToDeviceBody { messages: &request.messages })?;
    let txn = request.txn_id.to_string();
    Ok(NativeRequest::ToDevice { id: txn.clone(), body, event_type: request.event_type.to_string(), txn_id: txn })
}

/// A keys/claim request (from `getMissingSessions`).
pub fn keys_claim(id: String, request: &KeysClaimRequest) -> napi::Result<NativeRequest> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout: Option<u128>,
        one_time_keys: &'a BTreeMap<ruma::OwnedUserId, BTreeMap<ruma::OwnedDeviceId, ruma::OneTimeKeyAlgorithm>>,
    }
    let body = to_json(&Body {
        timeout: request.timeout.map(|t| t.as_millis()),
        one_time_keys: &request.one_time_keys,
    })?;
    Ok(NativeRequest::KeysClaim { id, body })
}

/// The cross-signing keys upload (`POST /keys/device_signing/upload`); needs user-interactive auth.
pub fn signing_keys_upload(request: &UploadSigningKeysRequest) -> napi::Result<String> {
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        master_key: Option<&'a matrix_sdk_crypto::types::CrossSigningKey>,
        #[serde(skip_serializing_if = "Option::is_none")]
        self_signing_key: Option<&'a matrix_sdk_crypto::types::CrossSigningKey>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user_signing_key: Option<&'a matrix_sdk_crypto::types::CrossSigningKey>,
    }
    to_json(&Body {
        master_key: request.master_key.as_ref(),
        self_signing_key: request.self_signing_key.as_ref(),
        user_signing_key: request.user_signing_key.as_ref(),
    })
}

/// Convert any request produced by `OlmMachine::outgoing_requests`.
pub fn outgoing(request: &OutgoingRequest) -> napi::Result<NativeRequest> {
    let id = request.request_id().to_string();
    match request.request() {
        AnyOutgoingRequest::KeysUpload(r) => {
            #[derive(Serialize)]
            struct Body<'a> {
                #[serde(skip_serializing_if = "Option::is_none")]
                device_keys: Option<&'a ruma::serde::Raw<ruma::encryption::DeviceKeys>>,
                #[serde(skip_serializing_if = "BTreeMap::is_empty")]
                one_time_keys: &'a BTreeMap<ruma::OwnedOneTimeKeyId, ruma::serde::Raw<ruma::encryption::OneTimeKey>>,
                #[serde(skip_serializing_if = "BTreeMap::is_empty")]
                fallback_keys: &'a BTreeMap<ruma::OwnedOneTimeKeyId, ruma::serde::Raw<ruma::encryption::OneTimeKey>>,
            }
            let body = to_json(&Body {
                device_keys: r.device_keys.as_ref(),
                one_time_keys: &r.one_time_keys,
                fallback_keys: &r.fallback_keys,
            })?;
            Ok(NativeRequest::KeysUpload { id, body })
        }
        AnyOutgoingRequest::KeysQuery(r) => {
            #[derive(Serialize)]
            struct Body<'a> {
                #[serde(skip_serializing_if = "Option::is_none")]
                timeout: Option<u128>,
                device_keys: &'a BTreeMap<ruma::OwnedUserId, Vec<ruma::OwnedDeviceId>>,
            }
            let body = to_json(&Body { timeout: r.timeout.map(|t| t.as_millis()), device_keys: &r.device_keys })?;
            Ok(NativeRequest::KeysQuery { id, body })
        }
        AnyOutgoingRequest::KeysClaim(r) => keys_claim(id, r),
        AnyOutgoingRequest::ToDeviceRequest(r) => {
            let body = to_json(&ToDeviceBody { messages: &r.messages })?;
            Ok(NativeRequest::ToDevice { id, body, event_type: r.event_type.to_string(), txn_id: r.txn_id.to_string() })
        }
        AnyOutgoingRequest::SignatureUpload(r) => {
            Ok(NativeRequest::SignatureUpload { id, body: to_json(&r.signed_keys)? })
        }
        AnyOutgoingRequest::RoomMessage(r) => {
            let content = to_json(&r.content)?;
            let event_type = {
                use ruma::events::MessageLikeEventContent;
                r.content.event_type().to_string()
            };
            Ok(NativeRequest::RoomMessage { id, body: content, event_type, txn_id: r.txn_id.to_string(), room_id: r.room_id.to_string() })
        }
    }
}
