//! Benchmark fixtures: N recipient devices with real, self-signed device keys and one signed
//! one-time key each, generated natively and in parallel so 10,000 devices take seconds.
//!
//! Bench-only: `bench/` loads it from the generated module directly; the TypeScript API does not
//! export it. The keys come from the crate's own `Account`, so they verify exactly like keys a
//! real client uploads.

use std::{collections::BTreeMap, num::NonZeroUsize, thread};

use matrix_sdk_crypto::{
    olm::{Account, PickledAccount},
    vodozemac::{self, PickleError},
};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::{MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedUserId};
use serde_json::value::RawValue;

use crate::errors::{internal, invalid};

/// One user's devices as fragments of the homeserver responses, ready to splice into a
/// keys/query or keys/claim response body.
#[napi(object)]
pub struct BenchUser {
    pub user_id: String,
    /// `{ deviceId: signedDeviceKeys, ... }`: the user's entry in `device_keys` of keys/query.
    pub device_keys: String,
    /// `{ deviceId: { "signed_curve25519:ID": signedKey }, ... }`: the user's entry in
    /// `one_time_keys` of keys/claim.
    pub one_time_keys: String,
}

/// The fixtures of one benchmark size.
#[napi(object)]
pub struct BenchFixtures {
    pub users: Vec<BenchUser>,
    /// How many devices were generated (the last user may have fewer than `devicesPerUser`).
    pub devices: u32,
}

/// A new account without the 50 one-time keys `Account::with_device_id` pre-generates (and
/// would sign on every `signed_one_time_keys` call): a recipient only needs one.
fn fresh_account(user_id: &OwnedUserId, device_id: &OwnedDeviceId) -> std::result::Result<Account, PickleError> {
    Account::from_pickle(PickledAccount {
        user_id: user_id.clone(),
        device_id: device_id.clone(),
        pickle: vodozemac::olm::Account::new().pickle(),
        shared: true,
        dehydrated: false,
        uploaded_signed_key_count: 0,
        creation_local_time: MilliSecondsSinceUnixEpoch::now(),
        fallback_key_creation_timestamp: None,
    })
}

fn user_fixture(server: &str, user_index: usize, device_count: usize) -> std::result::Result<BenchUser, String> {
    let user_id: OwnedUserId = format!("@bench{user_index}:{server}").try_into().map_err(|e| format!("{e}"))?;
    let mut device_keys: BTreeMap<OwnedDeviceId, Box<RawValue>> = BTreeMap::new();
    let mut one_time_keys: BTreeMap<OwnedDeviceId, Box<RawValue>> = BTreeMap::new();
    for d in 0..device_count {
        let device_id: OwnedDeviceId = format!("BENCHDEV{d}").into();
        let mut account = fresh_account(&user_id, &device_id).map_err(|e| e.to_string())?;
        account.generate_one_time_keys(1);
        let keys = serde_json::value::to_raw_value(&account.device_keys()).map_err(|e| e.to_string())?;
        let otk = serde_json::value::to_raw_value(&account.signed_one_time_keys()).map_err(|e| e.to_string())?;
        device_keys.insert(device_id.clone(), keys);
        one_time_keys.insert(device_id, otk);
    }
    Ok(BenchUser {
        user_id: user_id.to_string(),
        device_keys: serde_json::to_string(&device_keys).map_err(|e| e.to_string())?,
        one_time_keys: serde_json::to_string(&one_time_keys).map_err(|e| e.to_string())?,
    })
}

fn generate(devices: usize, devices_per_user: usize, server: &str) -> std::result::Result<Vec<BenchUser>, String> {
    let users = devices.div_ceil(devices_per_user);
    let per_user = |u: usize| devices_per_user.min(devices - u * devices_per_user);
    let threads = thread::available_parallelism().map(NonZeroUsize::get).unwrap_or(1).min(users.max(1));
    let chunk = users.div_ceil(threads).max(1);
    thread::scope(|s| {
        let handles: Vec<_> = (0..users)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(users))
                        .map(|u| user_fixture(server, u, per_user(u)))
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(users);
        for h in handles {
            out.extend(h.join().map_err(|_| "fixture thread panicked".to_owned())??);
        }
        Ok(out)
    })
}

/// Generate `devices` recipient devices, `devicesPerUser` per user, on `server`, on every core.
#[napi]
pub async fn generate_bench_fixtures(devices: u32, devices_per_user: u32, server: String) -> Result<BenchFixtures> {
    if devices == 0 || devices_per_user == 0 {
        return Err(invalid("devices", "devices and devicesPerUser must be positive"));
    }
    let users = tokio::task::spawn_blocking(move || generate(devices as usize, devices_per_user as usize, &server))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    Ok(BenchFixtures { users, devices })
}
