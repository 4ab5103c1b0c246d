//! Outgoing requests as ready-to-send JSON bodies, and homeserver responses back into the crate.
//!
//! Bodies are serialised once here and handed to JS as strings: they go to the homeserver
//! unchanged, so JS never parses them on the hot path.

use std::collections::BTreeMap;

use matrix_sdk_crypto::types::requests::{
    AnyIncomingResponse, AnyOutgoingRequest, OutgoingRequest, ToDeviceRequest,
    UploadSigningKeysRequest,
};
use napi_derive::napi;
use ruma::api::{
    client::{
        backup::add_backup_keys::v3::Response as KeysBackupResponse,
        keys::{
            claim_keys::v3::{Request as KeysClaimRequest, Response as KeysClaimResponse},
            get_keys::v3::Response as KeysQueryResponse,
            upload_keys::v3::Response as KeysUploadResponse,
            upload_signatures::v3::Response as SignatureUploadResponse,
            upload_signing_keys::v3::Response as SigningKeysUploadResponse,
        },
        message::send_message_event::v3::Response as RoomMessageResponse,
        to_device::send_event_to_device::v3::Response as ToDeviceResponse,
    },
    IncomingResponse, IncomingResponseExt,
};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::errors::{internal, invalid};

/// One request for the application to send; `type` selects the endpoint.
#[napi(object, object_to_js = false)]
pub struct NativeRequest {
    pub id: String,
    #[napi(js_name = "type")]
    pub kind: String,
    pub body: String,
    pub event_type: Option<String>,
    pub txn_id: Option<String>,
    pub room_id: Option<String>,
    pub version: Option<String>,
}

impl NativeRequest {
    /// A request of `kind` with only an id and a body (every type but to-device, room messages
    /// and backups, which carry more).
    pub(crate) fn plain(id: String, kind: RequestType, body: String) -> Self {
        Self { id, kind: kind.as_str().to_owned(), body, event_type: None, txn_id: None, room_id: None, version: None }
    }
}

/// The type of an outgoing request, as `OutgoingRequest.type` names it in TypeScript. The names
/// are spelled here and nowhere else in Rust ([`RequestType::as_str`]); the enum is exported
/// to JavaScript, and `test/requests.test.ts` ties the TypeScript union to it.
#[napi(string_enum = "snake_case")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// `POST /keys/upload`.
    KeysUpload,
    /// `POST /keys/query`.
    KeysQuery,
    /// `POST /keys/claim`.
    KeysClaim,
    /// `PUT /sendToDevice/{type}/{txnId}`.
    ToDevice,
    /// `POST /keys/signatures/upload`.
    SignatureUpload,
    /// `POST /keys/device_signing/upload` (cross-signing keys, with user-interactive auth).
    SigningKeysUpload,
    /// `PUT /rooms/{roomId}/send/{type}/{txnId}`.
    RoomMessage,
    /// `PUT /room_keys/keys?version=`.
    KeysBackup,
}

impl RequestType {
    /// Every request type.
    pub const ALL: [Self; 8] = [
        Self::KeysUpload,
        Self::KeysQuery,
        Self::KeysClaim,
        Self::ToDevice,
        Self::SignatureUpload,
        Self::SigningKeysUpload,
        Self::RoomMessage,
        Self::KeysBackup,
    ];

    /// The name JavaScript sees (`request.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeysUpload => "keys_upload",
            Self::KeysQuery => "keys_query",
            Self::KeysClaim => "keys_claim",
            Self::ToDevice => "to_device",
            Self::SignatureUpload => "signature_upload",
            Self::SigningKeysUpload => "signing_keys_upload",
            Self::RoomMessage => "room_message",
            Self::KeysBackup => "keys_backup",
        }
    }

    /// The type named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
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

impl napi::bindgen_prelude::ToNapiValue for NativeRequest {
    unsafe fn to_napi_value(env: napi::sys::napi_env, val: Self) -> napi::Result<napi::sys::napi_value> {
        let mut obj = napi::bindgen_prelude::Object::new(&napi::Env::from_raw(env))?;
        obj.set("id", val.id)?;
        obj.set("type", val.kind)?;
        obj.set("body", body_to_js(env, val.body)?)?;
        let optional = [("eventType", val.event_type), ("txnId", val.txn_id), ("roomId", val.room_id), ("version", val.version)];
        for (name, value) in optional {
            if let Some(value) = value {
                obj.set(name, value)?;
            }
        }
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
    Ok(NativeRequest {
        id: txn.clone(),
        kind: RequestType::ToDevice.as_str().to_owned(),
        body,
        event_type: Some(request.event_type.to_string()),
        txn_id: Some(txn),
        room_id: None,
        version: None,
    })
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
    Ok(NativeRequest::plain(id, RequestType::KeysClaim, body))
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
            Ok(NativeRequest::plain(id, RequestType::KeysUpload, body))
        }
        AnyOutgoingRequest::KeysQuery(r) => {
            #[derive(Serialize)]
            struct Body<'a> {
                #[serde(skip_serializing_if = "Option::is_none")]
                timeout: Option<u128>,
                device_keys: &'a BTreeMap<ruma::OwnedUserId, Vec<ruma::OwnedDeviceId>>,
            }
            let body = to_json(&Body { timeout: r.timeout.map(|t| t.as_millis()), device_keys: &r.device_keys })?;
            Ok(NativeRequest::plain(id, RequestType::KeysQuery, body))
        }
        AnyOutgoingRequest::KeysClaim(r) => keys_claim(id, r),
        AnyOutgoingRequest::ToDeviceRequest(r) => {
            let mut out = to_device(r)?;
            out.id = id;
            Ok(out)
        }
        AnyOutgoingRequest::SignatureUpload(r) => {
            Ok(NativeRequest::plain(id, RequestType::SignatureUpload, to_json(&r.signed_keys)?))
        }
        AnyOutgoingRequest::RoomMessage(r) => {
            let content = to_json(&r.content)?;
            let event_type = {
                use ruma::events::MessageLikeEventContent;
                r.content.event_type().to_string()
            };
            Ok(NativeRequest {
                id,
                kind: RequestType::RoomMessage.as_str().to_owned(),
                body: content,
                event_type: Some(event_type),
                txn_id: Some(r.txn_id.to_string()),
                room_id: Some(r.room_id.to_string()),
                version: None,
            })
        }
    }
}

/// A parsed homeserver response, owned so it can be borrowed as `AnyIncomingResponse`.
pub enum OwnedResponse {
    KeysUpload(KeysUploadResponse),
    KeysQuery(KeysQueryResponse),
    KeysClaim(KeysClaimResponse),
    ToDevice(ToDeviceResponse),
    SignatureUpload(SignatureUploadResponse),
    SigningKeysUpload(SigningKeysUploadResponse),
    RoomMessage(RoomMessageResponse),
    KeysBackup(KeysBackupResponse),
}

impl OwnedResponse {
    /// Parse `body` as the 200 response of a request of type `kind`.
    pub fn parse(kind: &str, body: &str) -> napi::Result<Self> {
        fn read<R: IncomingResponse>(body: &str) -> napi::Result<R> {
            // Fail with a field-named error before ruma's less specific message.
            serde_json::from_str::<&RawValue>(body)
                .map_err(|e| invalid("response", format!("not valid JSON ({e})")))?;
            let response = http::Response::builder()
                .status(200)
                .body(body.as_bytes())
                .map_err(internal)?;
            R::try_from_http_response(response)
                .map_err(|e| invalid("response", format!("is not a valid homeserver response for this request ({})", crate::json_input::js_text(e.to_string()))))
        }
        let Some(request_type) = RequestType::parse(kind) else {
            let names: Vec<&str> = RequestType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(invalid("type", format!("unknown request type {kind:?}; expected one of {}", names.join(", "))));
        };
        Ok(match request_type {
            RequestType::KeysUpload => Self::KeysUpload(read(body)?),
            RequestType::KeysQuery => Self::KeysQuery(read(body)?),
            RequestType::KeysClaim => Self::KeysClaim(read(body)?),
            RequestType::ToDevice => Self::ToDevice(read(body)?),
            RequestType::SignatureUpload => Self::SignatureUpload(read(body)?),
            RequestType::SigningKeysUpload => Self::SigningKeysUpload(read(body)?),
            RequestType::RoomMessage => Self::RoomMessage(read(body)?),
            RequestType::KeysBackup => Self::KeysBackup(read(body)?),
        })
    }

    pub fn as_incoming(&self) -> AnyIncomingResponse<'_> {
        match self {
            Self::KeysUpload(r) => AnyIncomingResponse::KeysUpload(r),
            Self::KeysQuery(r) => AnyIncomingResponse::KeysQuery(r),
            Self::KeysClaim(r) => AnyIncomingResponse::KeysClaim(r),
            Self::ToDevice(r) => AnyIncomingResponse::ToDevice(r),
            Self::SignatureUpload(r) => AnyIncomingResponse::SignatureUpload(r),
            Self::SigningKeysUpload(r) => AnyIncomingResponse::SigningKeysUpload(r),
            Self::RoomMessage(r) => AnyIncomingResponse::RoomMessage(r),
            Self::KeysBackup(r) => AnyIncomingResponse::KeysBackup(r),
        }
    }
}
