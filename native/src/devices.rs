//! Devices and their local trust, as plain JSON for the TypeScript layer.

use matrix_sdk_crypto::{Device, LocalTrust};
use serde::Serialize;

use crate::errors::invalid;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceInfo {
    user_id: String,
    device_id: String,
    display_name: Option<String>,
    curve25519_key: Option<String>,
    ed25519_key: Option<String>,
    local_trust: &'static str,
    is_verified: bool,
    is_cross_signed_by_owner: bool,
    is_blacklisted: bool,
    is_deleted: bool,
    first_time_seen_ts: u64,
}

pub fn trust_name(trust: LocalTrust) -> &'static str {
    match trust {
        LocalTrust::Verified => "verified",
        LocalTrust::BlackListed => "blacklisted",
        LocalTrust::Ignored => "ignored",
        LocalTrust::Unset => "unset",
    }
}

pub fn parse_trust(field: &str, value: &str) -> napi::Result<LocalTrust> {
    Ok(match value {
        "verified" => LocalTrust::Verified,
        "blacklisted" => LocalTrust::BlackListed,
        "ignored" => LocalTrust::Ignored,
        "unset" => LocalTrust::Unset,
        other => {
            return Err(invalid(field, format!("{other:?} is not one of verified, blacklisted, ignored, unset")))
        }
    })
}

pub fn info(device: &Device) -> DeviceInfo {
    DeviceInfo {
        user_id: device.user_id().to_string(),
        device_id: device.device_id().to_string(),
        display_name: device.display_name().map(str::to_owned),
        curve25519_key: device.curve25519_key().map(|k| k.to_base64()),
        ed25519_key: device.ed25519_key().map(|k| k.to_base64()),
        local_trust: trust_name(device.local_trust_state()),
        is_verified: device.is_verified(),
        is_cross_signed_by_owner: device.is_cross_signed_by_owner(),
        is_blacklisted: device.is_blacklisted(),
        is_deleted: device.is_deleted(),
        first_time_seen_ts: device.first_time_seen_ts().get().into(),
    }
}
