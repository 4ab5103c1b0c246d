//! How rows are encoded: one `(account, kind, key) -> value` row per stored object.
//!
//! Values are self-contained (an Olm session's pickle names its sender key, a device names its
//! user), so loading an account is one scan of its rows and keys are only ever compared, never
//! read back. That lets an encrypted store keep keys as keyed hashes: with a passphrase, keys are
//! `StoreCipher::hash_key(kind, key)` and values `StoreCipher::encrypt_value_data(value)`
//! (XChaCha20-Poly1305), the same construction matrix-sdk-sqlite uses; nothing about a room, a
//! user or a session id is readable from the file without the passphrase.
//!
//! Values are MessagePack (`rmp_serde`, named fields) except the kinds whose types the crate's
//! own SQLite store also keeps as JSON (outbound group sessions, withheld entries, secrets).

use matrix_sdk_store_encryption::StoreCipher;
use serde::{de::DeserializeOwned, Serialize};

use super::error::{Result, StoreError};

/// What a row holds. The number is stored; never renumber a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i16)]
pub enum Kind {
    Account = 1,
    PrivateIdentity = 2,
    Session = 3,
    InboundGroupSession = 4,
    BackedUpTo = 5,
    OutboundGroupSession = 6,
    Device = 7,
    Identity = 8,
    OlmHash = 9,
    KeyRequest = 10,
    Withheld = 11,
    RoomSettings = 12,
    SecretsInbox = 13,
    TrackedUser = 14,
    Custom = 15,
    BackupDecryptionKey = 16,
    BackupVersion = 17,
    DehydratedPickleKey = 18,
    NextBatchToken = 19,
    ReceivedRoomKeyBundle = 20,
    RoomKeysFullyDownloaded = 21,
    RoomPendingKeyBundle = 22,
    /// A chunk of an outbound group session's shared-with set (`store/outbound.rs`).
    OutboundShared = 23,
    /// A pending to-device request of an outbound group session's share (`store/outbound.rs`).
    OutboundRequest = 24,
}

impl Kind {
    /// Every kind, for decoding.
    pub const ALL: [Kind; 24] = [
        Kind::Account,
        Kind::PrivateIdentity,
        Kind::Session,
        Kind::InboundGroupSession,
        Kind::BackedUpTo,
        Kind::OutboundGroupSession,
        Kind::Device,
        Kind::Identity,
        Kind::OlmHash,
        Kind::KeyRequest,
        Kind::Withheld,
        Kind::RoomSettings,
        Kind::SecretsInbox,
        Kind::TrackedUser,
        Kind::Custom,
        Kind::BackupDecryptionKey,
        Kind::BackupVersion,
        Kind::DehydratedPickleKey,
        Kind::NextBatchToken,
        Kind::ReceivedRoomKeyBundle,
        Kind::RoomKeysFullyDownloaded,
        Kind::RoomPendingKeyBundle,
        Kind::OutboundShared,
        Kind::OutboundRequest,
    ];

    /// The kind stored as `n`, if this release knows it.
    pub fn from_i16(n: i16) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as i16 == n)
    }

    /// The name the key hash is domain-separated by.
    fn table(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::PrivateIdentity => "private_identity",
            Kind::Session => "session",
            Kind::InboundGroupSession => "inbound_group_session",
            Kind::BackedUpTo => "backed_up_to",
            Kind::OutboundGroupSession => "outbound_group_session",
            Kind::Device => "device",
            Kind::Identity => "identity",
            Kind::OlmHash => "olm_hash",
            Kind::KeyRequest => "key_request",
            Kind::Withheld => "withheld",
            Kind::RoomSettings => "room_settings",
            Kind::SecretsInbox => "secrets_inbox",
            Kind::TrackedUser => "tracked_user",
            Kind::Custom => "custom",
            Kind::BackupDecryptionKey => "backup_decryption_key",
            Kind::BackupVersion => "backup_version",
            Kind::DehydratedPickleKey => "dehydrated_pickle_key",
            Kind::NextBatchToken => "next_batch_token",
            Kind::ReceivedRoomKeyBundle => "received_room_key_bundle",
            Kind::RoomKeysFullyDownloaded => "room_keys_fully_downloaded",
            Kind::RoomPendingKeyBundle => "room_pending_key_bundle",
            Kind::OutboundShared => "outbound_shared",
            Kind::OutboundRequest => "outbound_request",
        }
    }
}

/// Encodes keys and values for one account: in the clear, or with the account's cipher.
pub struct Codec {
    cipher: Option<StoreCipher>,
}

impl Codec {
    /// A codec that encrypts with `cipher`, or stores in the clear without one.
    pub fn new(cipher: Option<StoreCipher>) -> Self {
        Self { cipher }
    }

    /// The stored form of a key: its keyed hash with a cipher, the bytes themselves without.
    pub fn key(&self, kind: Kind, key: &[u8]) -> Vec<u8> {
        match &self.cipher {
            Some(c) => c.hash_key(kind.table(), key).to_vec(),
            None => key.to_vec(),
        }
    }

    /// Encrypt (with a cipher) already serialized bytes.
    pub fn seal_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        match &self.cipher {
            Some(c) => {
                let encrypted = c.encrypt_value_data(bytes).map_err(|e| StoreError::Encode(e.to_string()))?;
                rmp_serde::to_vec_named(&encrypted).map_err(|e| StoreError::Encode(e.to_string()))
            }
            None => Ok(bytes),
        }
    }

    /// Decrypt (with a cipher) stored bytes.
    pub fn open_bytes(&self, stored: &[u8]) -> Result<Vec<u8>> {
        match &self.cipher {
            Some(c) => {
                let encrypted = rmp_serde::from_slice(stored).map_err(|e| StoreError::Decode(e.to_string()))?;
                c.decrypt_value_data(encrypted).map_err(|e| StoreError::Decode(e.to_string()))
            }
            None => Ok(stored.to_vec()),
        }
    }

    /// Serialize as MessagePack and seal.
    pub fn seal<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.seal_bytes(bytes)
    }

    /// Serialize as JSON and seal.
    pub fn seal_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.seal_bytes(bytes)
    }

    /// Open and deserialize MessagePack.
    pub fn open<T: DeserializeOwned>(&self, stored: &[u8]) -> Result<T> {
        let bytes = self.open_bytes(stored)?;
        rmp_serde::from_slice(&bytes).map_err(|e| StoreError::Decode(e.to_string()))
    }

    /// Open and deserialize JSON.
    pub fn open_json<T: DeserializeOwned>(&self, stored: &[u8]) -> Result<T> {
        let bytes = self.open_bytes(stored)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Decode(e.to_string()))
    }
}

/// A custom value's row: the key (needed to rebuild the cache) then the value, as
/// `[key length: u32 LE][key][value]`, so arbitrary bytes are not inflated by a serializer.
pub fn custom_value(key: &str, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len() + value.len());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    out
}

/// The inverse of [`custom_value`].
pub fn parse_custom_value(bytes: &[u8]) -> Result<(String, Vec<u8>)> {
    let bad = || StoreError::Decode("custom value row is truncated".into());
    let len = u32::from_le_bytes(bytes.get(..4).ok_or_else(bad)?.try_into().map_err(|_| bad())?) as usize;
    let key = bytes.get(4..4 + len).ok_or_else(bad)?;
    let key = String::from_utf8(key.to_vec()).map_err(|e| StoreError::Decode(e.to_string()))?;
    Ok((key, bytes[4 + len..].to_vec()))
}
