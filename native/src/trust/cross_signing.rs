//! Our own cross-signing identity: bootstrap, upload and the signatures of our own devices.
//!
//! Clients that exclude insecure devices (MSC4153, Element's "only cross-signed devices")
//! share room keys only with devices their owner signed with the self-signing key. A bot
//! becomes such a device by creating its identity (`bootstrap_cross_signing`), uploading the
//! public keys (`POST /keys/device_signing/upload`, usually behind user-interactive auth, which
//! the TypeScript layer runs) and the self-signing key's signature of its device.

use matrix_sdk_crypto::OlmMachine;
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::TransactionId;

use crate::{
    errors::{self, code, internal, invalid, typed},
    ids,
    machine::NativeMachine,
    requests::{self, NativeRequest},
    trust::signature_upload,
};

/// Which private cross-signing keys this device holds.
#[napi(object)]
pub struct CrossSigningStatus {
    /// The master key (signs our other keys and, through them, our identity).
    pub has_master: bool,
    /// The self-signing key (signs our own devices).
    pub has_self_signing: bool,
    /// The user-signing key (signs other users' master keys).
    pub has_user_signing: bool,
}

impl From<matrix_sdk_crypto::CrossSigningStatus> for CrossSigningStatus {
    fn from(s: matrix_sdk_crypto::CrossSigningStatus) -> Self {
        Self { has_master: s.has_master, has_self_signing: s.has_self_signing, has_user_signing: s.has_user_signing }
    }
}

/// The requests that publish a new (or existing) cross-signing identity, in sending order.
#[napi(object, object_from_js = false)]
pub struct NativeCrossSigningBootstrap {
    /// Our device keys (`keys_upload`), when they were never uploaded.
    pub upload_keys: Option<NativeRequest>,
    /// `POST /keys/device_signing/upload` (`signing_keys_upload`), without the `auth` field.
    pub upload_signing_keys: NativeRequest,
    /// The self-signing key's signature of our device (`signature_upload`).
    pub upload_signatures: NativeRequest,
}

/// Our device as the store knows it (it always does once the machine is open).
pub(crate) async fn own_device(machine: &OlmMachine) -> Result<matrix_sdk_crypto::Device> {
    machine
        .get_device(machine.user_id(), machine.device_id(), None)
        .await
        .map_err(errors::store)?
        .ok_or_else(|| internal("our own device is missing from the store"))
}

/// The error for signing without the private key that signs.
pub(crate) fn missing_key(what: &str) -> Error {
    typed(
        code::CROSS_SIGNING_KEY_MISSING,
        format!("this device does not hold our {what} key: bootstrap cross-signing or recover it from secret storage first"),
        serde_json::Value::Null,
    )
}

impl NativeMachine {
    /// A signature request the application sends and marks as sent like any other.
    fn remembered_signature(&self, signed_keys: &impl serde::Serialize) -> Result<NativeRequest> {
        let request = signature_upload(signed_keys)?;
        self.remember(std::slice::from_ref(&request));
        Ok(request)
    }
}

#[napi]
impl NativeMachine {
    /// Which private cross-signing keys we hold.
    #[napi]
    pub async fn cross_signing_status(&self) -> Result<CrossSigningStatus> {
        Ok(self.machine()?.cross_signing_status().await.into())
    }

    /// Create cross-signing keys (new ones with `reset`, else the ones we hold) and return the
    /// requests that publish them, to send in order.
    #[napi]
    pub async fn bootstrap_cross_signing(&self, reset: bool) -> Result<NativeCrossSigningBootstrap> {
        let machine = self.machine()?;
        let r = machine.bootstrap_cross_signing(reset).await.map_err(errors::store)?;
        let upload_keys = r.upload_keys_req.as_ref().map(requests::outgoing).transpose()?;
        let upload_signing_keys = NativeRequest::SigningKeysUpload {
            id: TransactionId::new().to_string(),
            body: requests::signing_keys_upload(&r.upload_signing_keys_req)?,
        };
        let upload_signatures = signature_upload(&r.upload_signatures_req.signed_keys)?;
        self.remember([&upload_signing_keys, &upload_signatures].into_iter().chain(&upload_keys));
        Ok(NativeCrossSigningBootstrap { upload_keys, upload_signing_keys, upload_signatures })
    }

    /// Whether the self-signing key signed our device, by the public identity we know
    /// (query our own keys first).
    #[napi]
    pub async fn is_own_device_cross_signed(&self) -> Result<bool> {
        let machine = self.machine()?;
        Ok(own_device(&machine).await?.is_cross_signed_by_owner())
    }

    /// Sign one of our own devices with our self-signing key; returns the `signature_upload`
    /// request. The device must be known (query our keys first).
    #[napi]
    pub async fn sign_own_device(&self, device_id: String) -> Result<NativeRequest> {
        let machine = self.machine()?;
        let device_id = ids::device_id("deviceId", &device_id)?;
        if !machine.cross_signing_status().await.has_self_signing {
            return Err(missing_key("self-signing"));
        }
        let device = machine
            .get_device(machine.user_id(), &device_id, None)
            .await
            .map_err(errors::store)?
            .ok_or_else(|| invalid("deviceId", format!("no known device {device_id} of ours; query our own keys first")))?;
        let request = device.verify().await.map_err(|e| internal(format!("cannot sign device {device_id}: {e}")))?;
        self.remembered_signature(&request.signed_keys)
    }

    /// A `keys_query` request for our own keys, to learn our published identity and devices
    /// (with their signatures) now rather than at the next device-list change.
    #[napi]
    pub fn query_own_keys(&self) -> Result<NativeRequest> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            device_keys: &'a std::collections::BTreeMap<ruma::OwnedUserId, Vec<ruma::OwnedDeviceId>>,
        }
        let machine = self.machine()?;
        let (id, request) = machine.query_keys_for_users([machine.user_id()]);
        let body = serde_json::to_string(&Body { device_keys: &request.device_keys }).map_err(internal)?;
        let out = NativeRequest::KeysQuery { id: id.to_string(), body };
        self.remember(std::slice::from_ref(&out));
        Ok(out)
    }

    /// Our devices the self-signing key has not signed (by the keys we know), deleted ones left out.
    #[napi]
    pub async fn unsigned_own_devices(&self) -> Result<Vec<String>> {
        let machine = self.machine()?;
        let devices = machine.get_user_devices(machine.user_id(), None).await.map_err(errors::store)?;
        Ok(devices
            .devices()
            .filter(|d| !d.is_deleted() && !d.is_cross_signed_by_owner())
            .map(|d| d.device_id().to_string())
            .collect())
    }
}
