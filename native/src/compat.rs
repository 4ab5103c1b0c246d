//! Native pieces of `matrix-crypto-node/compat` (`src/compat/`), the drop-in layer for code
//! written against `@matrix-org/matrix-sdk-crypto-nodejs` 0.6: what the main API does not
//! expose (identifier parsing as ruma does it, key backup, signing, secret storage, media
//! attachments). The TypeScript layer shapes the results into the official classes.

use std::{io::Read, sync::Arc, time::Duration};

use matrix_sdk_crypto::{
    secret_storage::SecretStorageKey, store::types::BackupDecryptionKey,
    types::RoomKeyBackupInfo, AttachmentDecryptor, AttachmentEncryptor, CrossSigningKeyExport, MediaEncryptionInfo,
};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::{
    events::{secret::request::SecretName, secret_storage::key::SecretStorageKeyEventContent, EventContentFromType},
    DeviceKeyAlgorithm, OwnedDeviceKeyId,
};
use serde_json::{json, value::RawValue};

use crate::{
    errors::{self, internal, invalid},
    ids,
    machine::NativeMachine,
    requests::NativeRequest,
};

/// The parts of a user id, as ruma parses it.
#[napi(object)]
pub struct CompatUserIdParts {
    pub localpart: String,
    pub server_name: String,
    pub is_historical: bool,
}

/// Parse and validate a user id.
#[napi]
pub fn compat_parse_user_id(id: String) -> Result<CompatUserIdParts> {
    let user = ruma::UserId::parse(id.as_str()).map_err(|e| invalid("userId", format!("{id:?} is not a valid user id ({e})")))?;
    Ok(CompatUserIdParts {
        localpart: user.localpart().to_owned(),
        server_name: user.server_name().to_string(),
        is_historical: user.is_historical(),
    })
}

/// Validate a room id.
#[napi]
pub fn compat_parse_room_id(id: String) -> Result<()> {
    ids::room_id("roomId", &id).map(|_| ())
}

/// The parts of a server name.
#[napi(object)]
pub struct CompatServerNameParts {
    pub host: String,
    pub port: Option<u32>,
    pub is_ip_literal: bool,
}

/// Parse and validate a server name.
#[napi]
pub fn compat_parse_server_name(name: String) -> Result<CompatServerNameParts> {
    let server = ruma::ServerName::parse(name.as_str())
        .map_err(|e| invalid("serverName", format!("{name:?} is not a valid server name ({e})")))?;
    Ok(CompatServerNameParts {
        host: server.host().to_owned(),
        port: server.port().map(u32::from),
        is_ip_literal: server.is_ip_literal(),
    })
}

/// The parts of a device key id (`algorithm:DEVICEID`).
#[napi(object)]
pub struct CompatDeviceKeyIdParts {
    /// `ed25519`, `curve25519` or the unknown algorithm's name.
    pub algorithm: String,
    /// 0 = Ed25519, 1 = Curve25519, 2 = unknown (the official `DeviceKeyAlgorithmName`).
    pub algorithm_name: u32,
    pub device_id: String,
}

/// Parse and validate a device key id.
#[napi]
pub fn compat_parse_device_key_id(id: String) -> Result<CompatDeviceKeyIdParts> {
    let key_id = OwnedDeviceKeyId::try_from(id.as_str())
        .map_err(|e| invalid("deviceKeyId", format!("{id:?} is not a valid device key id ({e})")))?;
    let algorithm = key_id.algorithm();
    let algorithm_name = match algorithm {
        DeviceKeyAlgorithm::Ed25519 => 0,
        DeviceKeyAlgorithm::Curve25519 => 1,
        _ => 2,
    };
    Ok(CompatDeviceKeyIdParts { algorithm: algorithm.to_string(), algorithm_name, device_id: key_id.key_name().to_string() })
}

/// Versions of the Rust libraries in this build (read from Cargo.lock by build.rs).
#[napi(object)]
pub struct CompatVersions {
    pub vodozemac: String,
    pub matrix_sdk_crypto: String,
}

/// The versions of vodozemac and matrix-sdk-crypto compiled into the addon.
#[napi]
pub fn compat_versions() -> CompatVersions {
    CompatVersions {
        vodozemac: env!("MCN_VODOZEMAC_VERSION").to_owned(),
        matrix_sdk_crypto: env!("MCN_MATRIX_SDK_CRYPTO_VERSION").to_owned(),
    }
}

/// An encrypted attachment: the ciphertext and its media encryption info as JSON.
#[napi(object)]
pub struct CompatEncryptedAttachment {
    pub data: Buffer,
    pub media_encryption_info: String,
}

/// Encrypt a file for upload (AES-CTR, SHA-256, the `v2` media encryption format).
#[napi]
pub fn compat_attachment_encrypt(data: Buffer) -> Result<CompatEncryptedAttachment> {
    let mut input: &[u8] = &data;
    let mut encryptor = AttachmentEncryptor::new(&mut input);
    let mut out = Vec::with_capacity(data.len());
    encryptor.read_to_end(&mut out).map_err(internal)?;
    let info = encryptor.finish();
    Ok(CompatEncryptedAttachment { data: out.into(), media_encryption_info: serde_json::to_string(&info).map_err(internal)? })
}

/// Decrypt an attachment, checking its hash and format against the media encryption info.
#[napi]
pub fn compat_attachment_decrypt(data: Buffer, media_encryption_info: String) -> Result<Buffer> {
    let info: MediaEncryptionInfo = errors::parse_json("mediaEncryptionInfo", &media_encryption_info)?;
    let mut input: &[u8] = &data;
    let mut decryptor = AttachmentDecryptor::new(&mut input, info)
        .map_err(|e| invalid("mediaEncryptionInfo", format!("cannot decrypt with it ({e})")))?;
    let mut out = Vec::with_capacity(data.len());
    decryptor
        .read_to_end(&mut out)
        .map_err(|e| invalid("encryptedData", format!("does not match its media encryption info ({e})")))?;
    Ok(out.into())
}

fn backup_key(field: &str, base64: &str) -> Result<BackupDecryptionKey> {
    BackupDecryptionKey::from_base64(base64).map_err(|e| invalid(field, format!("not a backup decryption key ({e})")))
}

/// A new random backup decryption key, as base64.
#[napi]
pub fn compat_backup_key_random() -> String {
    BackupDecryptionKey::new().to_base64()
}

/// The public half of a backup decryption key.
#[napi(object)]
pub struct CompatBackupPublicKey {
    pub public_key_base64: String,
    pub algorithm: String,
}

/// Validate a base64 backup decryption key and derive its public key.
#[napi]
pub fn compat_backup_public_key(key_base64: String) -> Result<CompatBackupPublicKey> {
    let public = backup_key("key", &key_base64)?.megolm_v1_public_key();
    Ok(CompatBackupPublicKey { public_key_base64: public.to_base64(), algorithm: public.backup_algorithm().to_owned() })
}

/// Decrypt a message encrypted to the public half of a backup key.
#[napi]
pub fn compat_backup_decrypt_v1(key_base64: String, ephemeral_key: String, mac: String, ciphertext: String) -> Result<String> {
    backup_key("key", &key_base64)?
        .decrypt_v1(&ephemeral_key, &mac, &ciphertext)
        .map_err(|e| invalid("ciphertext", format!("cannot decrypt it with this key ({e})")))
}

/// A secret storage key. The secret stays in Rust; JS holds this handle.
#[napi]
pub struct CompatSecretStorageKey {
    inner: Arc<SecretStorageKey>,
}

fn secret_name(name: &str) -> SecretName {
    SecretName::from(name)
}

#[napi]
impl CompatSecretStorageKey {
    /// A new random key.
    #[napi(factory)]
    pub fn random() -> Self {
        Self { inner: Arc::new(SecretStorageKey::new()) }
    }

    /// A new key derived from a passphrase (PBKDF2, new random salt).
    #[napi(factory)]
    pub fn from_passphrase(passphrase: String) -> Self {
        Self { inner: Arc::new(SecretStorageKey::new_from_passphrase(&passphrase)) }
    }

    /// Restore a key from a passphrase or base58 recovery key, checked against the key's
    /// account-data description (`m.secret_storage.key.<id>`).
    #[napi(factory)]
    pub fn from_account_data(input: String, event_type: String, content: String) -> Result<Self> {
        let raw = RawValue::from_string(content).map_err(|e| invalid("content", format!("not valid JSON ({e})")))?;
        let description = SecretStorageKeyEventContent::from_parts(&event_type, &raw)
            .map_err(|e| invalid("content", format!("not a secret storage key description ({e})")))?;
        let key = SecretStorageKey::from_account_data(&input, description)
            .map_err(|e| invalid("input", format!("does not unlock this secret storage key ({e})")))?;
        Ok(Self { inner: Arc::new(key) })
    }

    /// The key as a base58 recovery key.
    #[napi]
    pub fn to_base58(&self) -> String {
        self.inner.to_base58()
    }

    /// Encrypt a secret; returns the account-data content `{ encrypted: { <key id>: ... } }`.
    #[napi]
    pub fn encrypt(&self, plaintext: String, secret_name_str: String) -> Result<String> {
        let data = self.inner.encrypt(plaintext.into_bytes(), &secret_name(&secret_name_str));
        serde_json::to_string(&json!({ "encrypted": { self.inner.key_id(): data } })).map_err(internal)
    }

    /// Decrypt a secret from its account-data content.
    #[napi]
    pub fn decrypt(&self, account_data_content_json: String, secret_name_str: String) -> Result<String> {
        decrypt_secret(&self.inner, &account_data_content_json, &secret_name_str)
    }

    /// The key's description for account data, as JSON.
    #[napi]
    pub fn account_data_content(&self) -> Result<String> {
        serde_json::to_string(self.inner.event_content()).map_err(internal)
    }

    /// The key's id.
    #[napi]
    pub fn key_id(&self) -> String {
        self.inner.key_id().to_owned()
    }

    /// The account-data event type of the key's description.
    #[napi]
    pub fn event_type(&self) -> String {
        self.inner.event_type().to_string()
    }
}

fn decrypt_secret(key: &SecretStorageKey, content_json: &str, name: &str) -> Result<String> {
    let content: serde_json::Value = errors::parse_json("accountDataContent", content_json)?;
    let data = content
        .get("encrypted")
        .and_then(|e| e.get(key.key_id()))
        .ok_or_else(|| invalid("accountDataContent", format!("has no secret encrypted with key {}", key.key_id())))?;
    let data = serde_json::from_value(data.clone())
        .map_err(|e| invalid("accountDataContent", format!("not an encrypted secret ({e})")))?;
    let plain = key
        .decrypt(&data, &secret_name(name))
        .map_err(|e| invalid("accountDataContent", format!("does not decrypt with this key as {name} ({e})")))?;
    String::from_utf8(plain).map_err(internal)
}

/// Backup keys saved in the store.
#[napi(object)]
pub struct CompatBackupKeys {
    pub decryption_key_base64: Option<String>,
    pub backup_version: Option<String>,
}

/// The result of checking a backup's signatures (`SignatureState` numbers of the official API).
#[napi(object)]
pub struct CompatSignatureVerification {
    pub device_state: u32,
    pub user_state: u32,
    pub trusted: bool,
}

fn signature_state(s: matrix_sdk_crypto::backups::SignatureState) -> u32 {
    use matrix_sdk_crypto::backups::SignatureState as S;
    match s {
        S::Missing => 0,
        S::Invalid => 1,
        S::ValidButNotTrusted => 2,
        S::ValidAndTrusted => 3,
    }
}

/// The cross-signing secrets encrypted for secret storage, as account-data contents.
#[napi(object)]
pub struct CompatSecretStorageItems {
    pub master_key: String,
    pub user_signing_key: String,
    pub self_signing_key: String,
}

/// How far we trust a device.
#[napi(object)]
pub struct CompatDeviceTrust {
    pub is_verified: bool,
    pub is_cross_signing_trusted: bool,
    pub is_cross_signed_by_owner: bool,
}

fn encrypt_secret(key: &SecretStorageKey, secret: &str, name: SecretName) -> Result<String> {
    let data = key.encrypt(secret.as_bytes().to_vec(), &name);
    serde_json::to_string(&json!({ "encrypted": { key.key_id(): data } })).map_err(internal)
}

#[napi]
impl NativeMachine {
    /// An out-of-band keys/query request for `users`.
    #[napi]
    pub fn compat_query_keys_for_users(&self, users: Vec<String>) -> Result<NativeRequest> {
        let machine = self.machine()?;
        let users = ids::user_ids("users", &users)?;
        let (id, request) = machine.query_keys_for_users(users.iter().map(|u| u.as_ref()));
        #[derive(serde::Serialize)]
        struct Body<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            timeout: Option<u128>,
            device_keys: &'a std::collections::BTreeMap<ruma::OwnedUserId, Vec<ruma::OwnedDeviceId>>,
        }
        let body = serde_json::to_string(&Body { timeout: request.timeout.map(|t| t.as_millis()), device_keys: &request.device_keys })
            .map_err(internal)?;
        let out = NativeRequest::KeysQuery { id: id.to_string(), body };
        self.remember(std::slice::from_ref(&out));
        Ok(out)
    }

    /// Sign `message` with our device key (and the master key, if we hold it); returns the
    /// signatures as JSON `{ user: { key id: signature } }`.
    #[napi]
    pub async fn compat_sign(&self, message: String) -> Result<String> {
        let machine = self.machine()?;
        let signatures = machine.sign(&message).await.map_err(errors::store)?;
        serde_json::to_string(&signatures).map_err(internal)
    }

    /// Save the backup decryption key (base64) and its backup version in the store.
    #[napi]
    pub async fn compat_save_backup_decryption_key(&self, key_base64: String, version: String) -> Result<()> {
        let machine = self.machine()?;
        let key = backup_key("decryptionKey", &key_base64)?;
        machine.backup_machine().save_decryption_key(Some(key), Some(version)).await.map_err(errors::store)
    }

    /// The backup keys saved in the store.
    #[napi]
    pub async fn compat_get_backup_keys(&self) -> Result<CompatBackupKeys> {
        let machine = self.machine()?;
        let keys = machine.backup_machine().get_backup_keys().await.map_err(errors::store)?;
        Ok(CompatBackupKeys { decryption_key_base64: keys.decryption_key.map(|k| k.to_base64()), backup_version: keys.backup_version })
    }

    /// Check the signatures on a backup version (JSON of `GET /room_keys/version`).
    #[napi]
    pub async fn compat_verify_backup(&self, backup_info: String) -> Result<CompatSignatureVerification> {
        let machine = self.machine()?;
        let info: RoomKeyBackupInfo = errors::parse_json("backupInfo", &backup_info)?;
        let v = machine.backup_machine().verify_backup(info, false).await.map_err(errors::store)?;
        Ok(CompatSignatureVerification {
            device_state: signature_state(v.device_signature),
            user_state: signature_state(v.user_identity_signature),
            trusted: v.trusted(),
        })
    }

    /// Start backing up room keys to `version`, encrypted to this public key.
    #[napi]
    pub async fn compat_enable_backup_v1(&self, public_key_base64: String, version: String) -> Result<()> {
        crate::backup::enable(&*self.machine()?, &public_key_base64, &version, "publicKeyBase64").await
    }

    /// Whether room-key backup is enabled.
    #[napi]
    pub async fn compat_is_backup_enabled(&self) -> Result<bool> {
        Ok(self.machine()?.backup_machine().enabled().await)
    }

    /// How far we trust a device, or null if we do not know it. `timeout_secs` waits that long
    /// for a key query in flight.
    #[napi]
    pub async fn compat_device_trust(&self, user_id: String, device_id: String, timeout_secs: Option<f64>) -> Result<Option<CompatDeviceTrust>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let device = ids::device_id("deviceId", &device_id)?;
        let timeout = timeout_secs.filter(|t| t.is_finite() && *t > 0.0).map(Duration::from_secs_f64);
        let found = machine.get_device(&user, &device, timeout).await.map_err(errors::store)?;
        Ok(found.map(|d| CompatDeviceTrust {
            is_verified: d.is_verified(),
            is_cross_signing_trusted: d.is_cross_signing_trusted(),
            is_cross_signed_by_owner: d.is_cross_signed_by_owner(),
        }))
    }

    /// Our private cross-signing keys, encrypted with `key` for secret storage.
    #[napi(ts_return_type = "Promise<CompatSecretStorageItems>")]
    pub fn compat_export_secrets_for_secret_storage<'env>(
        &self,
        env: &'env Env,
        key: &CompatSecretStorageKey,
    ) -> Result<PromiseRaw<'env, CompatSecretStorageItems>> {
        let machine = self.machine()?;
        let key = Arc::clone(&key.inner);
        env.spawn_future(async move {
            let bundle = machine.store().export_secrets_bundle().await.map_err(|e| invalid("machine", format!("{e}")))?;
            let keys = &bundle.cross_signing;
            Ok(CompatSecretStorageItems {
                master_key: encrypt_secret(&key, &keys.master_key, SecretName::CrossSigningMasterKey)?,
                user_signing_key: encrypt_secret(&key, &keys.user_signing_key, SecretName::CrossSigningUserSigningKey)?,
                self_signing_key: encrypt_secret(&key, &keys.self_signing_key, SecretName::CrossSigningSelfSigningKey)?,
            })
        })
    }

    /// Import our cross-signing keys from secret storage and sign our device with them; returns
    /// the signature upload request. The crate needs no response for it (it tracks no pending
    /// signature uploads of its own), so it is not registered for `markRequestAsSent`.
    #[napi(ts_return_type = "Promise<NativeRequest>")]
    pub fn compat_import_secrets_from_secret_storage<'env>(
        &self,
        env: &'env Env,
        key: &CompatSecretStorageKey,
        master_key: String,
        self_signing_key: String,
        user_signing_key: String,
    ) -> Result<PromiseRaw<'env, NativeRequest>> {
        let machine = self.machine()?;
        let key = Arc::clone(&key.inner);
        let export = CrossSigningKeyExport {
            master_key: Some(decrypt_secret(&key, &master_key, SecretName::CrossSigningMasterKey.as_str())?),
            self_signing_key: Some(decrypt_secret(&key, &self_signing_key, SecretName::CrossSigningSelfSigningKey.as_str())?),
            user_signing_key: Some(decrypt_secret(&key, &user_signing_key, SecretName::CrossSigningUserSigningKey.as_str())?),
        };
        env.spawn_future(async move {
            machine
                .import_cross_signing_keys(export)
                .await
                .map_err(|e| invalid("items", format!("cannot import these cross-signing keys ({e})")))?;
            let status = machine.cross_signing_status().await;
            if !(status.has_master && status.has_self_signing && status.has_user_signing) {
                return Err(invalid("items", "the keys do not match our public cross-signing identity; query our own keys first"));
            }
            let own = machine
                .get_device(machine.user_id(), machine.device_id(), None)
                .await
                .map_err(errors::store)?
                .ok_or_else(|| internal("our own device is missing from the store"))?;
            let request = own.verify().await.map_err(|e| internal(format!("cannot sign our device: {e}")))?;
            crate::trust::signature_upload(&request.signed_keys)
        })
    }
}
