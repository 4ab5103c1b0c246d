//! The Matrix key-export file format ("MEGOLM SESSION DATA"), as the spec defines it:
//! `0x01 | salt (16) | IV (16) | rounds (u32 BE) | AES-256-CTR(JSON) | HMAC-SHA-256`, keys from
//! PBKDF2-HMAC-SHA-512(passphrase, salt, rounds) (first 32 bytes AES, last 32 HMAC), base64
//! between a header and a footer line.
//!
//! Implemented here rather than through the crate's typed helpers so the JSON keeps every field
//! of the exported keys (our withheld extension among them). Files from other clients and the
//! crate read the same way; see the tests, which check both directions against the crate.

use aes::{cipher::KeyIvInit, cipher::StreamCipher, Aes256};
use base64::{engine::general_purpose, Engine};
use hmac::{Hmac, KeyInit, Mac};
use rand::{rng, Rng};
use sha2::{Sha256, Sha512};

const HEADER: &str = "-----BEGIN MEGOLM SESSION DATA-----";
const FOOTER: &str = "-----END MEGOLM SESSION DATA-----";
const VERSION: u8 = 1;
const SALT_LEN: usize = 16;
const IV_LEN: usize = 16;
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = 1 + SALT_LEN + IV_LEN + 4;

/// PBKDF2 rounds when the caller does not choose (the value common clients use).
pub const DEFAULT_ROUNDS: u32 = 500_000;

type Aes256Ctr = ctr::Ctr128BE<Aes256>;

/// Why a key-export file could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyFileError {
    /// Not base64 between the header and footer, or too short.
    Malformed(&'static str),
    /// A version other than 1.
    UnsupportedVersion(u8),
    /// The MAC does not match: wrong passphrase, or a damaged file.
    WrongPassphrase,
}

impl std::fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Malformed(why) => write!(f, "not a key-export file: {why}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported key-export version {v}"),
            Self::WrongPassphrase => write!(f, "wrong passphrase, or the file is damaged"),
        }
    }
}

fn derive(passphrase: &str, salt: &[u8], rounds: u32) -> ([u8; 32], [u8; 32]) {
    let mut key = [0u8; 64];
    pbkdf2::pbkdf2::<Hmac<Sha512>>(passphrase.as_bytes(), salt, rounds, &mut key).expect("HMAC accepts any key length");
    let (aes, mac) = key.split_at(32);
    (aes.try_into().expect("32 bytes"), mac.try_into().expect("32 bytes"))
}

/// Encrypt `plaintext` (the JSON array of exported keys) into the armored file text.
pub fn encrypt(plaintext: &[u8], passphrase: &str, rounds: u32) -> String {
    let mut salt = [0u8; SALT_LEN];
    let mut iv = [0u8; IV_LEN];
    let mut random = rng();
    random.fill_bytes(&mut salt);
    random.fill_bytes(&mut iv);
    // The spec clears bit 63 of the counter block so the counter cannot wrap into the nonce.
    iv[8] &= 0x7f;
    let (aes_key, mac_key) = derive(passphrase, &salt, rounds);

    let mut payload = Vec::with_capacity(HEADER_LEN + plaintext.len() + MAC_LEN);
    payload.push(VERSION);
    payload.extend_from_slice(&salt);
    payload.extend_from_slice(&iv);
    payload.extend_from_slice(&rounds.to_be_bytes());
    let start = payload.len();
    payload.extend_from_slice(plaintext);
    Aes256Ctr::new(&aes_key.into(), &iv.into()).apply_keystream(&mut payload[start..]);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&mac_key).expect("HMAC accepts any key length");
    mac.update(&payload);
    payload.extend_from_slice(&mac.finalize().into_bytes());

    let encoded = general_purpose::STANDARD.encode(&payload);
    let mut lines = vec![HEADER.to_owned()];
    lines.extend(encoded.as_bytes().chunks(96).map(|c| String::from_utf8_lossy(c).into_owned()));
    lines.push(FOOTER.to_owned());
    lines.join("\n") + "\n"
}

/// Decrypt the armored file text; returns the plaintext JSON.
pub fn decrypt(text: &str, passphrase: &str) -> Result<Vec<u8>, KeyFileError> {
    let body: String = text
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != HEADER)
        .skip(1)
        .take_while(|l| *l != FOOTER)
        .collect();
    if body.is_empty() {
        return Err(KeyFileError::Malformed("no data between the BEGIN and END lines"));
    }
    let payload = general_purpose::STANDARD
        .decode(body.trim_end_matches('='))
        .or_else(|_| general_purpose::STANDARD_NO_PAD.decode(body.trim_end_matches('=')))
        .map_err(|_| KeyFileError::Malformed("not base64"))?;
    if payload.len() < HEADER_LEN + MAC_LEN {
        return Err(KeyFileError::Malformed("too short"));
    }
    if payload[0] != VERSION {
        return Err(KeyFileError::UnsupportedVersion(payload[0]));
    }
    let salt = &payload[1..1 + SALT_LEN];
    let iv: [u8; IV_LEN] = payload[1 + SALT_LEN..1 + SALT_LEN + IV_LEN].try_into().expect("16 bytes");
    let rounds = u32::from_be_bytes(payload[HEADER_LEN - 4..HEADER_LEN].try_into().expect("4 bytes"));
    let (aes_key, mac_key) = derive(passphrase, salt, rounds);
    let (signed, tag) = payload.split_at(payload.len() - MAC_LEN);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&mac_key).expect("HMAC accepts any key length");
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| KeyFileError::WrongPassphrase)?;
    let mut plaintext = signed[HEADER_LEN..].to_vec();
    Aes256Ctr::new(&aes_key.into(), &iv.into()).apply_keystream(&mut plaintext);
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use matrix_sdk_crypto::{decrypt_room_key_export, encrypt_room_key_export, olm::ExportedRoomKey};
    use serde_json::{json, Value};

    fn sample_keys() -> Value {
        // A real exported key, made by the crate from a fresh outbound session.
        let session = vodozemac::megolm::GroupSession::new(Default::default());
        let mut inbound = vodozemac::megolm::InboundGroupSession::new(&session.session_key(), Default::default());
        let exported = inbound.export_at(0).unwrap();
        json!([{
            "algorithm": "m.megolm.v1.aes-sha2",
            "room_id": "!r:example.org",
            "sender_key": vodozemac::Curve25519PublicKey::from_bytes([7u8; 32]).to_base64(),
            "session_id": session.session_id(),
            "session_key": exported.to_base64(),
            "sender_claimed_keys": { "ed25519": vodozemac::Ed25519SecretKey::new().public_key().to_base64() },
            "forwarding_curve25519_key_chain": [],
            "io.github.matrix_crypto_node.withheld": { "code": "m.unverified", "reason": "why", "first_known_index": 0 }
        }])
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let keys = sample_keys();
        let text = encrypt(keys.to_string().as_bytes(), "pass", 10);
        assert!(text.starts_with(HEADER));
        let back: Value = serde_json::from_slice(&decrypt(&text, "pass").unwrap()).unwrap();
        assert_eq!(back, keys);
    }

    #[test]
    fn the_crate_reads_our_files() {
        let keys = sample_keys();
        let text = encrypt(keys.to_string().as_bytes(), "pass", 10);
        let read = decrypt_room_key_export(text.as_bytes(), "pass").unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].session_id, keys[0]["session_id"]);
    }

    #[test]
    fn we_read_the_crates_files() {
        let keys: Vec<ExportedRoomKey> = serde_json::from_value(sample_keys()).unwrap();
        let text = encrypt_room_key_export(&keys, "pass", 10).unwrap();
        let back: Value = serde_json::from_slice(&decrypt(&text, "pass").unwrap()).unwrap();
        assert_eq!(back[0]["session_id"], keys[0].session_id);
    }

    #[test]
    fn a_wrong_passphrase_or_damage_is_detected() {
        let text = encrypt(b"[]", "pass", 10);
        assert_eq!(decrypt(&text, "other"), Err(KeyFileError::WrongPassphrase));
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let mid = lines[1].len() / 2;
        let flipped = if &lines[1][mid..mid + 1] == "A" { "B" } else { "A" };
        lines[1].replace_range(mid..mid + 1, flipped);
        assert_eq!(decrypt(&lines.join("\n"), "pass"), Err(KeyFileError::WrongPassphrase));
        assert!(matches!(decrypt("hello", "pass"), Err(KeyFileError::Malformed(_))));
    }
}
