//! Secret storage (4S, `m.secret_storage.v1.aes-hmac-sha2`): a key that encrypts secrets into
//! the user's account data, so that a new device (or the same bot after losing its store) can
//! fetch them with the recovery key or passphrase.
//!
//! The key itself is the crate's `SecretStorageKey` (HKDF-SHA-256 per secret name, AES-256-CTR,
//! HMAC-SHA-256; PBKDF2-SHA-512 for passphrases; the base58 recovery key with prefix `0x8B 0x01`
//! and a parity byte). This module decides which secrets go in (the three private
//! cross-signing keys and the `m.megolm_backup.v1` backup key), checks every secret before
//! anything is imported, and imports them: the cross-signing keys against our public identity,
//! the backup key against the backup version's public key.

use std::sync::Arc;

use matrix_sdk_crypto::{secret_storage::SecretStorageKey, CrossSigningKeyExport, SecretImportError};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::events::{secret::request::SecretName, secret_storage::key::SecretStorageKeyEventContent, EventContentFromType};
use serde_json::{json, value::RawValue, Value};

use crate::{
    errors::{self, code, internal, invalid, typed},
    machine::NativeMachine,
    requests::NativeRequest,
    trust::{cross_signing::{own_device, CrossSigningStatus}, signature_upload},
    withheld::backup as withheld_backup,
};

/// The names of the secrets this library stores and reads.
const MASTER: &str = "m.cross_signing.master";
const SELF_SIGNING: &str = "m.cross_signing.self_signing";
const USER_SIGNING: &str = "m.cross_signing.user_signing";
const BACKUP: &str = "m.megolm_backup.v1";

/// A secret storage key. The key material stays in Rust; JS holds this handle.
#[napi]
pub struct NativeSecretStorageKey {
    inner: Arc<SecretStorageKey>,
}

/// Create a new secret storage key: random, or derived from `passphrase` (PBKDF2-SHA-512,
/// 500,000 rounds, a new random salt; off the JS thread).
#[napi]
pub async fn create_secret_storage_key(passphrase: Option<String>) -> Result<NativeSecretStorageKey> {
    if passphrase.as_deref() == Some("") {
        return Err(invalid("passphrase", "must not be empty"));
    }
    let key = tokio::task::spawn_blocking(move || match passphrase {
        Some(p) => SecretStorageKey::new_from_passphrase(&p),
        None => SecretStorageKey::new(),
    })
    .await
    .map_err(internal)?;
    Ok(NativeSecretStorageKey { inner: Arc::new(key) })
}

/// Unlock the secret storage key `key_id` from its account-data description (the content of
/// `m.secret_storage.key.<keyId>`, JSON) with a recovery key or passphrase (`input_field`
/// names the input in errors).
#[napi]
pub async fn unlock_secret_storage_key(
    input: String,
    input_field: String,
    key_id: String,
    description: String,
) -> Result<NativeSecretStorageKey> {
    let event_type = format!("m.secret_storage.key.{key_id}");
    let field = format!("accountData[\"{event_type}\"]");
    let raw = RawValue::from_string(description).map_err(|e| corrupt(&field, format!("not valid JSON ({e})")))?;
    let content = SecretStorageKeyEventContent::from_parts(&event_type, &raw)
        .map_err(|e| corrupt(&field, format!("not a secret storage key description ({e})")))?;
    let has_passphrase = content.passphrase.is_some();
    let key = tokio::task::spawn_blocking(move || SecretStorageKey::from_account_data(&input, content))
        .await
        .map_err(internal)?
        .map_err(|e| {
            use matrix_sdk_crypto::secret_storage::DecodeError as D;
            match e {
                D::UnsupportedAlgorithm(a) => corrupt(&field, format!("uses the unsupported algorithm {a}")),
                D::KdfIterationCount(n) => corrupt(&field, format!("asks for {n} PBKDF2 rounds, more than we accept")),
                D::MacLength(..) | D::IvLength(..) => corrupt(&field, e),
                other => {
                    let what = if has_passphrase { "recovery key or passphrase" } else { "recovery key" };
                    typed(
                        code::SECRET_STORAGE_KEY_MISMATCH,
                        format!("{input_field}: this {what} does not unlock secret storage key {key_id} ({other})"),
                        json!({ "field": input_field }),
                    )
                }
            }
        })?;
    Ok(NativeSecretStorageKey { inner: Arc::new(key) })
}

#[napi]
impl NativeSecretStorageKey {
    /// The key's id.
    #[napi(getter)]
    pub fn key_id(&self) -> String {
        self.inner.key_id().to_owned()
    }

    /// The account-data type of the key's description, `m.secret_storage.key.<keyId>`.
    #[napi(getter)]
    pub fn event_type(&self) -> String {
        self.inner.event_type().to_string()
    }

    /// The key as a recovery key (base58, groups of four characters).
    #[napi(getter)]
    pub fn recovery_key(&self) -> String {
        self.inner.to_base58()
    }

    /// The key's description for account data (`{ algorithm, iv, mac, passphrase? }`), JSON.
    #[napi(getter)]
    pub fn description(&self) -> Result<String> {
        serde_json::to_string(self.inner.event_content()).map_err(internal)
    }
}

/// One secret as an account-data event: `type` and its content (JSON).
#[napi(object)]
pub struct NativeAccountDataSecret {
    /// The secret name, which is the account-data type, e.g. `m.cross_signing.master`.
    pub name: String,
    /// The account-data content `{ encrypted: { <keyId>: { iv, ciphertext, mac } } }`, JSON.
    pub content: String,
}

/// The backup version the server has, to check the stored backup key against.
#[napi(object)]
pub struct NativeBackupVersionCheck {
    /// `version` of `GET /room_keys/version`.
    pub version: String,
    /// Its `auth_data.public_key`.
    pub public_key: String,
}

/// What `importSecretsFromStorage` did.
#[napi(object, object_from_js = false)]
pub struct NativeSecretsImport {
    /// Which private cross-signing keys we hold now.
    pub cross_signing: CrossSigningStatus,
    /// The self-signing key's signature of our device, to upload; null without that key.
    pub signature_upload: Option<NativeRequest>,
    /// The backup decryption key (unpadded base64) when the storage had one that matches the
    /// backup version given; saved in the store with that version.
    pub backup_decryption_key: Option<String>,
    /// Whether the stored backup key is the key of the backup version given: null when either
    /// is missing.
    pub backup_key_matches: Option<bool>,
}

fn corrupt(field: &str, message: impl std::fmt::Display) -> Error {
    typed(code::SECRET_STORAGE_CORRUPT, format!("{field}: {message}"), json!({ "field": field }))
}

/// A cross-signing key from storage that the crate refused, named by its account-data event.
fn import_error(err: SecretImportError) -> Error {
    match err {
        SecretImportError::MismatchedPublicKeys { name } => corrupt(
            &format!("accountData[\"{name}\"]"),
            "is not the key of our published cross-signing identity: secret storage is older than the identity (it was replaced without \
             updating secret storage). Store the current keys from a device that holds them (setUpRecovery), or replace the identity \
             (bootstrap: 'reset') and set up recovery again",
        ),
        SecretImportError::Key { name, error } => corrupt(&format!("accountData[\"{name}\"]"), format!("is not a cross-signing key ({error})")),
        SecretImportError::Store(e) => errors::store(e),
    }
}

fn encrypt(key: &SecretStorageKey, name: &str, secret: &str) -> Result<NativeAccountDataSecret> {
    let data = key.encrypt(secret.as_bytes().to_vec(), &SecretName::from(name));
    let content = serde_json::to_string(&json!({ "encrypted": { key.key_id(): data } })).map_err(internal)?;
    Ok(NativeAccountDataSecret { name: name.to_owned(), content })
}

/// Decrypt one secret's account data with `key`, naming it in errors.
fn decrypt(key: &SecretStorageKey, secret: &NativeAccountDataSecret) -> Result<String> {
    let field = format!("accountData[\"{}\"]", secret.name);
    let content: Value =
        serde_json::from_str(&secret.content).map_err(|e| corrupt(&field, format!("not valid JSON ({e})")))?;
    let data = content
        .get("encrypted")
        .and_then(|e| e.get(key.key_id()))
        .ok_or_else(|| corrupt(&field, format!("holds no secret encrypted with key {}", key.key_id())))?;
    let data = serde_json::from_value(data.clone())
        .map_err(|e| corrupt(&field, format!("is not an encrypted secret ({e})")))?;
    let plain = key
        .decrypt(&data, &SecretName::from(secret.name.as_str()))
        .map_err(|e| corrupt(&field, format!("does not authenticate with key {} ({e})", key.key_id())))?;
    String::from_utf8(plain).map_err(|_| corrupt(&field, "decrypts to bytes that are not text"))
}

#[napi]
impl NativeMachine {
    /// Our private cross-signing keys and the backup key, each encrypted with `key` as the
    /// account-data event to store. The backup key is `backupDecryptionKey` when given, else the
    /// one saved in the store (if any).
    #[napi(ts_return_type = "Promise<Array<NativeAccountDataSecret>>")]
    pub fn export_secrets_for_storage<'env>(
        &self,
        env: &'env Env,
        key: &NativeSecretStorageKey,
        backup_decryption_key: Option<String>,
    ) -> Result<PromiseRaw<'env, Vec<NativeAccountDataSecret>>> {
        let machine = self.machine()?;
        let key = Arc::clone(&key.inner);
        let given = backup_decryption_key
            .map(|k| withheld_backup::decryption_key(&k).map_err(|e| invalid("backupDecryptionKey", e)))
            .transpose()?;
        env.spawn_future(async move {
            let keys = machine.export_cross_signing_keys().await.map_err(errors::store)?;
            let missing = || crate::trust::cross_signing::missing_key("master, self-signing or user-signing");
            let keys = keys.ok_or_else(missing)?;
            let (Some(m), Some(s), Some(u)) = (&keys.master_key, &keys.self_signing_key, &keys.user_signing_key) else {
                return Err(missing());
            };
            let mut out = vec![encrypt(&key, MASTER, m)?, encrypt(&key, SELF_SIGNING, s)?, encrypt(&key, USER_SIGNING, u)?];
            let backup = match given {
                Some(k) => Some(k),
                None => machine.backup_machine().get_backup_keys().await.map_err(errors::store)?.decryption_key,
            };
            if let Some(b) = backup {
                out.push(encrypt(&key, BACKUP, &b.to_base64())?);
            }
            Ok(out)
        })
    }

    /// Import our secrets from storage: every given secret is decrypted and checked first (a
    /// bad one rejects the call with nothing changed); then the cross-signing keys are imported
    /// (they must match our public identity: query our own keys first), our device is signed,
    /// and the backup key is saved with `backup.version` when it is that version's key.
    #[napi(ts_return_type = "Promise<NativeSecretsImport>")]
    pub fn import_secrets_from_storage<'env>(
        &self,
        env: &'env Env,
        key: &NativeSecretStorageKey,
        secrets: Vec<NativeAccountDataSecret>,
        backup: Option<NativeBackupVersionCheck>,
    ) -> Result<PromiseRaw<'env, NativeSecretsImport>> {
        let machine = self.machine()?;
        let key = Arc::clone(&key.inner);
        let mut plain = std::collections::HashMap::new();
        for s in &secrets {
            plain.insert(s.name.clone(), decrypt(&key, s)?);
        }
        let backup_key = plain
            .get(BACKUP)
            .map(|k| {
                withheld_backup::decryption_key(k)
                    .map_err(|e| corrupt(&format!("accountData[\"{BACKUP}\"]"), format!("is not a backup key ({e})")))
            })
            .transpose()?;
        if let Some(b) = &backup {
            withheld_backup::public_key(&b.public_key).map_err(|e| invalid("backup.publicKey", e))?;
        }
        let export = CrossSigningKeyExport {
            master_key: plain.remove(MASTER),
            self_signing_key: plain.remove(SELF_SIGNING),
            user_signing_key: plain.remove(USER_SIGNING),
        };
        let has_cross_signing = export.master_key.is_some() || export.self_signing_key.is_some() || export.user_signing_key.is_some();
        let remember = self.remember_fn();
        env.spawn_future(async move {
            if has_cross_signing {
                if machine.get_identity(machine.user_id(), None).await.map_err(errors::store)?.is_none() {
                    return Err(typed(
                        code::CROSS_SIGNING_KEY_MISSING,
                        "our public cross-signing identity is not known yet: query our own keys (sync) before importing",
                        Value::Null,
                    ));
                }
                machine.import_cross_signing_keys(export).await.map_err(import_error)?;
            }
            let status = machine.cross_signing_status().await;
            let signature_upload = if status.has_self_signing {
                let own = own_device(&machine).await?;
                let request = own.verify().await.map_err(|e| internal(format!("cannot sign our device: {e}")))?;
                let out = signature_upload(&request.signed_keys)?;
                remember(&out);
                Some(out)
            } else {
                None
            };
            let backup_key_matches = match (&backup_key, &backup) {
                (Some(k), Some(b)) => Some(withheld_backup::public_key_of(k) == b.public_key),
                _ => None,
            };
            let mut backup_decryption_key = None;
            if let (Some(true), Some(k), Some(b)) = (backup_key_matches, backup_key, backup) {
                backup_decryption_key = Some(k.to_base64());
                machine.backup_machine().save_decryption_key(Some(k), Some(b.version)).await.map_err(errors::store)?;
            }
            Ok(NativeSecretsImport { cross_signing: status.into(), signature_upload, backup_decryption_key, backup_key_matches })
        })
    }

    /// Save a backup decryption key (unpadded base64) and its version in the store, so that
    /// `exportSecretsForStorage` finds it.
    #[napi]
    pub async fn save_backup_decryption_key(&self, decryption_key: String, version: String) -> Result<()> {
        let machine = self.machine()?;
        let key = withheld_backup::decryption_key(&decryption_key).map_err(|e| invalid("decryptionKey", e))?;
        if version.is_empty() {
            return Err(invalid("version", "must not be empty"));
        }
        machine.backup_machine().save_decryption_key(Some(key), Some(version)).await.map_err(errors::store)
    }

    /// The backup decryption key saved in the store and its version, if any.
    #[napi]
    pub async fn saved_backup_decryption_key(&self) -> Result<Option<NativeSavedBackupKey>> {
        let keys = self.machine()?.backup_machine().get_backup_keys().await.map_err(errors::store)?;
        Ok(keys.decryption_key.map(|k| NativeSavedBackupKey { decryption_key: k.to_base64(), version: keys.backup_version }))
    }
}

/// A backup key saved in the store.
#[napi(object)]
pub struct NativeSavedBackupKey {
    /// The private key, unpadded base64.
    pub decryption_key: String,
    /// The backup version it was saved for.
    pub version: Option<String>,
}
