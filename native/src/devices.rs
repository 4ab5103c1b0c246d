//! Devices and our local trust in them, as generated napi types.

use matrix_sdk_crypto::Device;
use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::{
    errors::{self, invalid},
    ids,
    machine::NativeMachine,
};

/// Our local trust in a device, set with `setLocalTrust`.
#[napi(string_enum = "lowercase")]
#[derive(Debug, PartialEq, Eq)]
pub enum LocalTrust {
    /// Verified by us: receives keys under the trusted-only strategy.
    Verified,
    /// Never receives room keys (gets `m.blacklisted`).
    Blacklisted,
    /// Treated as trusted for warnings, without being verified.
    Ignored,
    /// No local decision (the default).
    Unset,
}

impl From<matrix_sdk_crypto::LocalTrust> for LocalTrust {
    fn from(trust: matrix_sdk_crypto::LocalTrust) -> Self {
        use matrix_sdk_crypto::LocalTrust as T;
        match trust {
            T::Verified => Self::Verified,
            T::BlackListed => Self::Blacklisted,
            T::Ignored => Self::Ignored,
            T::Unset => Self::Unset,
        }
    }
}

impl From<LocalTrust> for matrix_sdk_crypto::LocalTrust {
    fn from(trust: LocalTrust) -> Self {
        match trust {
            LocalTrust::Verified => Self::Verified,
            LocalTrust::Blacklisted => Self::BlackListed,
            LocalTrust::Ignored => Self::Ignored,
            LocalTrust::Unset => Self::Unset,
        }
    }
}

/// A device of some user, as the machine knows it.
#[napi(object)]
pub struct DeviceInfo {
    /// The owner.
    pub user_id: String,
    /// The device id.
    pub device_id: String,
    /// The device's display name, if it published one.
    pub display_name: Option<String>,
    /// The device's Curve25519 identity key (unpadded base64).
    pub curve25519_key: Option<String>,
    /// The device's Ed25519 fingerprint key (unpadded base64).
    pub ed25519_key: Option<String>,
    /// The trust we set locally.
    pub local_trust: LocalTrust,
    /// Verified locally or through cross-signing.
    pub is_verified: bool,
    /// Signed by its owner's self-signing key.
    pub is_cross_signed_by_owner: bool,
    /// Trusted through cross-signing: signed by its owner, whose identity we verified.
    pub is_cross_signing_trusted: bool,
    /// Blacklisted locally: never receives room keys.
    pub is_blacklisted: bool,
    /// The owner removed the device.
    pub is_deleted: bool,
    /// When the machine first saw the device (ms since the epoch).
    pub first_time_seen_ts: f64,
}

pub fn info(device: &Device) -> DeviceInfo {
    DeviceInfo {
        user_id: device.user_id().to_string(),
        device_id: device.device_id().to_string(),
        display_name: device.display_name().map(str::to_owned),
        curve25519_key: device.curve25519_key().map(|k| k.to_base64()),
        ed25519_key: device.ed25519_key().map(|k| k.to_base64()),
        local_trust: device.local_trust_state().into(),
        is_verified: device.is_verified(),
        is_cross_signed_by_owner: device.is_cross_signed_by_owner(),
        is_cross_signing_trusted: device.is_cross_signing_trusted(),
        is_blacklisted: device.is_blacklisted(),
        is_deleted: device.is_deleted(),
        first_time_seen_ts: u64::from(device.first_time_seen_ts().get()) as f64,
    }
}

pub fn parse_trust(field: &str, value: &str) -> napi::Result<LocalTrust> {
    Ok(match value {
        "verified" => LocalTrust::Verified,
        "blacklisted" => LocalTrust::Blacklisted,
        "ignored" => LocalTrust::Ignored,
        "unset" => LocalTrust::Unset,
        other => {
            return Err(invalid(field, format!("{other:?} is not one of verified, blacklisted, ignored, unset")))
        }
    })
}

#[napi]
impl NativeMachine {
    /// A device we know of, or null.
    #[napi]
    pub async fn get_device(&self, user_id: String, device_id: String) -> Result<Option<DeviceInfo>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let device = ids::device_id("deviceId", &device_id)?;
        let found = machine.get_device(&user, &device, None).await.map_err(errors::store)?;
        Ok(found.map(|d| info(&d)))
    }

    /// All known devices of a user.
    #[napi]
    pub async fn get_user_devices(&self, user_id: String) -> Result<Vec<DeviceInfo>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let list = machine.get_user_devices(&user, None).await.map_err(errors::store)?;
        Ok(list.devices().map(|d| info(&d)).collect())
    }

    /// Set our local trust in a device: verified, blacklisted, ignored or unset.
    #[napi]
    pub async fn set_local_trust(
        &self,
        user_id: String,
        device_id: String,
        #[napi(ts_arg_type = "LocalTrust")] trust: String,
    ) -> Result<()> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let device = ids::device_id("deviceId", &device_id)?;
        let trust = parse_trust("trust", &trust)?;
        let found = machine.get_device(&user, &device, None).await.map_err(errors::store)?;
        let Some(found) = found else {
            return Err(invalid("deviceId", format!("no known device {device_id} of {user_id}; query its keys first")));
        };
        found.set_local_trust(trust.into()).await.map_err(errors::store)
    }
}
