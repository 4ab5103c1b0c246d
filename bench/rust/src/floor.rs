//! The floor: what each phase must cost at least, as the cryptographic primitives alone, with the
//! crates vodozemac builds Olm and Megolm from, on inputs shaped like the real ones.
//!
//! Per device and phase:
//! - keys_query: one Ed25519 verification of the device keys (~400 B canonical JSON), including
//!   decompressing the public key;
//! - olm_sessions: Ed25519 verification of the one-time key, 2 X25519 key generations (base key,
//!   ratchet key), 3 X25519 Diffie-Hellman, HKDF-SHA-256 of the root key;
//! - share_new, share_existing: HKDF-SHA-256 of the message keys, AES-256-CBC and HMAC-SHA-256 of
//!   a ~1.1 KB `m.room_key` plaintext;
//! - share_withheld: the same for the 80% of devices that get the key;
//! - encrypt_decrypt: one Megolm message (HKDF, AES-256-CBC, HMAC, Ed25519 sign) and its
//!   decryption (verify, HMAC, AES), shown per device like the other rows.
//!
//! Each phase runs once on one thread and once split over every core.

use std::{
    hint::black_box,
    thread,
    time::{Duration, Instant},
};

use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use rand::{rng, Rng};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::{rss, summarise, Run};

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// Sizes of the real messages: signed device keys, a signed one-time key, an `m.room_key`
/// plaintext with the sender's device keys, a short room message.
const DEVICE_KEYS_BYTES: usize = 400;
const ONE_TIME_KEY_BYTES: usize = 60;
const ROOM_KEY_PLAINTEXT_BYTES: usize = 1_100;
const ROOM_MESSAGE_BYTES: usize = 200;

struct Device {
    ed25519: [u8; 32],
    device_keys: Vec<u8>,
    device_keys_signature: ed25519_dalek::Signature,
    one_time_key: Vec<u8>,
    one_time_key_signature: ed25519_dalek::Signature,
    identity: PublicKey,
    one_time: PublicKey,
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng().fill_bytes(&mut v);
    v
}

fn device() -> Device {
    let mut seed = [0u8; 32];
    rng().fill_bytes(&mut seed);
    let signing = SigningKey::from_bytes(&seed);
    let device_keys = random_bytes(DEVICE_KEYS_BYTES);
    let one_time_key = random_bytes(ONE_TIME_KEY_BYTES);
    Device {
        ed25519: signing.verifying_key().to_bytes(),
        device_keys_signature: signing.sign(&device_keys),
        device_keys,
        one_time_key_signature: signing.sign(&one_time_key),
        one_time_key,
        identity: PublicKey::from(&StaticSecret::random_from_rng(&mut rng())),
        one_time: PublicKey::from(&StaticSecret::random_from_rng(&mut rng())),
    }
}

fn verify(key: &[u8; 32], message: &[u8], signature: &ed25519_dalek::Signature) {
    let key = VerifyingKey::from_bytes(key).expect("a valid key");
    key.verify_strict(message, signature).expect("a valid signature");
}

fn keys_query(d: &Device) {
    verify(&d.ed25519, &d.device_keys, &d.device_keys_signature);
}

fn olm_session(ours: &StaticSecret, d: &Device) {
    verify(&d.ed25519, &d.one_time_key, &d.one_time_key_signature);
    let base = StaticSecret::random_from_rng(&mut rng());
    black_box(PublicKey::from(&base));
    let ratchet = StaticSecret::random_from_rng(&mut rng());
    black_box(PublicKey::from(&ratchet));
    let mut secret = [0u8; 96];
    secret[..32].copy_from_slice(ours.diffie_hellman(&d.one_time).as_bytes());
    secret[32..64].copy_from_slice(base.diffie_hellman(&d.identity).as_bytes());
    secret[64..].copy_from_slice(base.diffie_hellman(&d.one_time).as_bytes());
    let mut root = [0u8; 64];
    Hkdf::<Sha256>::new(Some(&[0]), &secret).expand(b"OLM_ROOT", &mut root).expect("64 bytes");
    black_box(root);
}

/// Message keys, AES-256-CBC and HMAC-SHA-256: encrypting one payload with an existing key.
fn encrypt(message_key: &[u8; 32], info: &[u8], plaintext: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let mut keys = [0u8; 80];
    Hkdf::<Sha256>::new(Some(&[0]), message_key).expand(info, &mut keys).expect("80 bytes");
    let (aes_key, rest) = keys.split_at(32);
    let (mac_key, iv) = rest.split_at(32);
    let ciphertext = Aes256CbcEnc::new_from_slices(aes_key, iv).expect("32 and 16 bytes").encrypt_padded_vec::<Pkcs7>(plaintext);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(mac_key).expect("any key length");
    mac.update(&ciphertext);
    (ciphertext, mac.finalize().into_bytes().into())
}

fn share(message_key: &[u8; 32], plaintext: &[u8]) {
    black_box(encrypt(message_key, b"OLM_KEYS", plaintext));
}

fn megolm_round_trip(signing: &SigningKey, message_key: &[u8; 32], plaintext: &[u8]) {
    let (ciphertext, mac) = encrypt(message_key, b"MEGOLM_KEYS", plaintext);
    let signature = signing.sign(&ciphertext);
    verify(&signing.verifying_key().to_bytes(), &ciphertext, &signature);
    let mut keys = [0u8; 80];
    Hkdf::<Sha256>::new(Some(&[0]), message_key).expand(b"MEGOLM_KEYS", &mut keys).expect("80 bytes");
    let (aes_key, rest) = keys.split_at(32);
    let (mac_key, iv) = rest.split_at(32);
    let mut check = <Hmac<Sha256> as KeyInit>::new_from_slice(mac_key).expect("any key length");
    check.update(&ciphertext);
    check.verify_slice(&mac).expect("the MAC matches");
    let plain = Aes256CbcDec::new_from_slices(aes_key, iv).expect("32 and 16 bytes").decrypt_padded_vec::<Pkcs7>(&ciphertext).expect("decrypts");
    black_box(plain);
}

/// Run `work` over every device, split over `threads` threads; returns the wall time.
fn timed(devices: &[Device], threads: usize, work: &(dyn Fn(usize, &Device) + Sync)) -> Duration {
    let chunk = devices.len().div_ceil(threads).max(1);
    let start = Instant::now();
    if threads == 1 {
        for (i, d) in devices.iter().enumerate() {
            work(i, d);
        }
        return start.elapsed();
    }
    thread::scope(|s| {
        for (c, part) in devices.chunks(chunk).enumerate() {
            s.spawn(move || {
                for (i, d) in part.iter().enumerate() {
                    work(c * chunk + i, d);
                }
            });
        }
    });
    start.elapsed()
}

pub fn run(n: usize, reps: usize, devices_per_user: usize) -> Vec<Run> {
    // The scenario shares with the N fixture devices and one real recipient.
    let count = n + 1;
    let base = rss::current_mb();
    let devices: Vec<Device> = (0..count).map(|_| device()).collect();
    let ours = StaticSecret::random_from_rng(&mut rng());
    let message_key: [u8; 32] = random_bytes(32).try_into().expect("32 bytes");
    let room_key_plaintext = random_bytes(ROOM_KEY_PLAINTEXT_BYTES);
    let room_message = random_bytes(ROOM_MESSAGE_BYTES);
    let signing = SigningKey::from_bytes(&message_key);
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let phases: Vec<(&'static str, Box<dyn Fn(usize, &Device) + Sync>)> = vec![
        ("keys_query", Box::new(|_, d| keys_query(d))),
        ("olm_sessions", Box::new(|_, d| olm_session(&ours, d))),
        ("share_new", Box::new(|_, _| share(&message_key, &room_key_plaintext))),
        ("share_existing", Box::new(|_, _| share(&message_key, &room_key_plaintext))),
        (
            "encrypt_decrypt",
            Box::new(|i, _| {
                if i == 0 {
                    megolm_round_trip(&signing, &message_key, &room_message)
                }
            }),
        ),
        (
            "share_withheld",
            Box::new(|i, _| {
                if i % 10 >= 2 {
                    share(&message_key, &room_key_plaintext)
                }
            }),
        ),
    ];

    let mut runs = Vec::new();
    for threads in [1, cores] {
        for (phase, work) in &phases {
            rss::reset_peak();
            let times: Vec<Duration> = (0..reps).map(|_| timed(&devices, threads, work.as_ref())).collect();
            let (median, min, max) = summarise(&times);
            runs.push(Run {
                implementation: "floor",
                store: "none".into(),
                n,
                devices_per_user,
                phase,
                wall_ms: median,
                us_per_device: median * 1e3 / count as f64,
                peak_rss_mb: rss::peak_mb(),
                rss_base_mb: base,
                to_device_bytes: 0,
                max_event_loop_delay_ms: None,
                reps,
                min_ms: min,
                max_ms: max,
                rep_ms: times.iter().map(|t| t.as_secs_f64() * 1e3).collect(),
                devices: count,
                cores: threads,
            });
        }
        if cores == 1 {
            break;
        }
    }
    runs
}
