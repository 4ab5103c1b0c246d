//! Benchmark fixtures: N recipient devices with real, self-signed device keys and one signed
//! one-time key each, generated in parallel on every core so 10,000 devices take seconds.
//!
//! The keys come from the crate's own `Account`, so they verify exactly like keys a real client
//! uploads. The file this writes is the one the Node workers and the `crate` scenario read:
//! `{"devices":N,"users":[{"userId":..,"deviceKeys":{deviceId: keys},"oneTimeKeys":{deviceId:
//! {"signed_curve25519:ID": key}}}]}`, the fragments spliced into keys/query and keys/claim
//! response bodies.

use std::{collections::BTreeMap, io::Write, num::NonZeroUsize, path::Path, thread};

use matrix_sdk_crypto::{
    olm::{Account, PickledAccount},
    vodozemac::{self, PickleError},
};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedUserId};
use serde_json::value::RawValue;

/// One user's devices as the JSON fragments of the homeserver responses.
struct FixtureUser {
    user_id: String,
    device_keys: String,
    one_time_keys: String,
}

/// A new account without the 50 one-time keys `Account::with_device_id` pre-generates (and
/// would sign on every `signed_one_time_keys` call): a recipient only needs one.
fn fresh_account(user_id: &OwnedUserId, device_id: &OwnedDeviceId) -> Result<Account, PickleError> {
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

fn user_fixture(server: &str, user_index: usize, device_count: usize) -> Result<FixtureUser, String> {
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
    Ok(FixtureUser {
        user_id: user_id.to_string(),
        device_keys: serde_json::to_string(&device_keys).map_err(|e| e.to_string())?,
        one_time_keys: serde_json::to_string(&one_time_keys).map_err(|e| e.to_string())?,
    })
}

fn generate(devices: usize, devices_per_user: usize, server: &str) -> Result<Vec<FixtureUser>, String> {
    let users = devices.div_ceil(devices_per_user);
    let per_user = |u: usize| devices_per_user.min(devices - u * devices_per_user);
    let threads = thread::available_parallelism().map(NonZeroUsize::get).unwrap_or(1).min(users.max(1));
    let chunk = users.div_ceil(threads).max(1);
    thread::scope(|s| {
        let handles: Vec<_> = (0..users)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(users)).map(|u| user_fixture(server, u, per_user(u))).collect::<Result<Vec<_>, _>>()
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

/// Generate `devices` recipient devices, `devices_per_user` per user, on `server`, and write
/// the fixture file to `out`.
pub fn write(devices: usize, devices_per_user: usize, server: &str, out: &Path) -> Result<(), String> {
    if devices == 0 || devices_per_user == 0 {
        return Err("--devices and --devices-per-user must be positive".to_owned());
    }
    let users = generate(devices, devices_per_user, server)?;
    let file = std::fs::File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| format!("cannot write {}: {e}", out.display());
    write!(w, "{{\"devices\":{devices},\"users\":[").map_err(io)?;
    for (i, u) in users.iter().enumerate() {
        let user_id = serde_json::to_string(&u.user_id).map_err(|e| e.to_string())?;
        let sep = if i == 0 { "" } else { "," };
        write!(w, "{sep}{{\"userId\":{user_id},\"deviceKeys\":{},\"oneTimeKeys\":{}}}", u.device_keys, u.one_time_keys).map_err(io)?;
    }
    write!(w, "]}}").map_err(io)?;
    w.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_device_with_verifiable_keys() {
        let dir = std::env::temp_dir().join(format!("mcn-fixtures-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.json");
        write(7, 3, "bench.example", &path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(v["devices"], 7);
        let users = v["users"].as_array().unwrap();
        assert_eq!(users.len(), 3);
        let per_user: Vec<usize> = users.iter().map(|u| u["deviceKeys"].as_object().unwrap().len()).collect();
        assert_eq!(per_user, vec![3, 3, 1]);
        for u in users {
            for (device, keys) in u["deviceKeys"].as_object().unwrap() {
                let keys: matrix_sdk_crypto::types::DeviceKeys = serde_json::from_value(keys.clone()).unwrap();
                assert_eq!(keys.device_id.as_str(), device);
                let otks = u["oneTimeKeys"][device].as_object().unwrap();
                assert_eq!(otks.len(), 1);
                assert!(otks.keys().all(|k| k.starts_with("signed_curve25519:")));
            }
        }
    }
}
