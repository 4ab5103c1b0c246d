//! Server-side key backup (`m.megolm_backup.v1.curve25519-aes-sha2`) on the main API: a new
//! backup key, enabling and disabling, the upload batches and the restore. Batches carry the
//! withheld extension for partially withheld sessions and the restore reads it back
//! (`withheld/backup.rs`); the compat layer's backup goes through the same functions.

use std::collections::BTreeMap;

use matrix_sdk_crypto::{backups::MegolmV1BackupKey, store::types::BackupDecryptionKey, OlmMachine};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::{api::client::backup::RoomKeyBackup, OwnedRoomId};
use serde::Serialize;
use serde_json::Value;

use crate::{
    errors::{self, internal, invalid},
    keys,
    machine::NativeMachine,
    requests::NativeRequest,
    withheld::{
        backup::{self as withheld_backup, ActiveBackup, BackupInputError},
        received::Source,
        WithheldError,
    },
};

fn backup_error(err: WithheldError) -> Error {
    match err {
        WithheldError::Store(e) => errors::store(e),
        other => internal(other),
    }
}

/// Start backing up to `version`, encrypted to `public_key` (`key_field` names it in errors).
pub(crate) async fn enable(machine: &OlmMachine, public_key: &str, version: &str, key_field: &str) -> Result<()> {
    withheld_backup::public_key(public_key).map_err(|e| invalid(key_field, e))?;
    if version.is_empty() {
        return Err(invalid("version", "must not be empty"));
    }
    let key = MegolmV1BackupKey::from_base64(public_key).map_err(|e| invalid(key_field, e))?;
    key.set_version(version.to_owned());
    // Remembered first, so a batch made right after enabling finds the key to encrypt to.
    let active = ActiveBackup { public_key: public_key.to_owned(), version: version.to_owned() };
    withheld_backup::remember(machine, &active).await.map_err(backup_error)?;
    machine.backup_machine().enable_backup_v1(key).await.map_err(errors::store)
}

/// The crate's next `keys_backup` batch, with the withheld extension added, or `None`.
async fn next_request(machine: &OlmMachine) -> Result<Option<NativeRequest>> {
    #[derive(Serialize)]
    struct Body<'a> {
        rooms: &'a BTreeMap<OwnedRoomId, RoomKeyBackup>,
    }
    let Some((id, mut request)) = machine.backup_machine().backup().await.map_err(errors::store)? else {
        return Ok(None);
    };
    withheld_backup::annotate_request(machine, &mut request).await.map_err(backup_error)?;
    let body = serde_json::to_string(&Body { rooms: &request.rooms }).map_err(internal)?;
    Ok(Some(NativeRequest::KeysBackup { id: id.to_string(), body, version: request.version }))
}

/// A new backup key.
#[napi(object)]
pub struct NativeBackupKey {
    /// The private key, unpadded base64.
    pub decryption_key: String,
    /// The public key, unpadded base64.
    pub public_key: String,
    /// The signed `POST /room_keys/version` body, `{ algorithm, auth_data }`, as JSON.
    pub version_body: String,
}

/// How many room keys we hold and how many are backed up to the enabled backup.
#[napi(object)]
pub struct NativeRoomKeyCounts {
    pub total: u32,
    pub backed_up: u32,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[napi]
impl NativeMachine {
    /// A new random backup key, and the body that creates a backup version for it, signed by
    /// this device (and our master key, if we hold it).
    #[napi]
    pub async fn create_backup_key(&self) -> Result<NativeBackupKey> {
        let machine = self.machine()?;
        let key = BackupDecryptionKey::new();
        let mut info = key.to_backup_info();
        machine
            .backup_machine()
            .sign_backup(&mut info)
            .await
            .map_err(|e| internal(format!("cannot sign the backup version: {e}")))?;
        Ok(NativeBackupKey {
            decryption_key: key.to_base64(),
            public_key: withheld_backup::public_key_of(&key),
            version_body: serde_json::to_string(&info).map_err(internal)?,
        })
    }

    /// Back up room keys to `version`, encrypted to `public_key` (base64).
    #[napi]
    pub async fn enable_backup(&self, public_key: String, version: String) -> Result<()> {
        enable(&*self.machine()?, &public_key, &version, "publicKey").await
    }

    /// Stop backing up and forget which keys were backed up.
    #[napi]
    pub async fn disable_backup(&self) -> Result<()> {
        let machine = self.machine()?;
        machine.backup_machine().disable_backup().await.map_err(errors::store)?;
        withheld_backup::forget(&machine).await.map_err(backup_error)
    }

    /// The version of the enabled backup, or null.
    #[napi]
    pub async fn backup_version(&self) -> Result<Option<String>> {
        Ok(self.machine()?.backup_machine().backup_version().await)
    }

    /// The next batch of room keys to back up, as a `keys_backup` request, or null.
    #[napi]
    pub async fn backup_room_keys(&self) -> Result<Option<NativeRequest>> {
        let request = next_request(&*self.machine()?).await?;
        if let Some(r) = &request {
            self.remember(std::slice::from_ref(r));
        }
        Ok(request)
    }

    /// How many room keys we hold and how many are backed up.
    #[napi]
    pub async fn backup_room_key_counts(&self) -> Result<NativeRoomKeyCounts> {
        let counts = self.machine()?.backup_machine().room_key_counts().await.map_err(errors::store)?;
        Ok(NativeRoomKeyCounts { total: count(counts.total), backed_up: count(counts.backed_up) })
    }

    /// Restore room keys from a `GET /room_keys/keys` response (JSON) of backup `version`.
    #[napi]
    pub async fn import_backed_up_room_keys(
        &self,
        backup: String,
        decryption_key: String,
        version: String,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<keys::ProgressCallback>,
    ) -> Result<BackupImportResult> {
        let machine = self.machine()?;
        let key = withheld_backup::decryption_key(&decryption_key).map_err(|e| invalid("decryptionKey", e))?;
        if version.is_empty() {
            return Err(invalid("version", "must not be empty"));
        }
        // One Curve25519 agreement and AES per session: keep thousands of them off the async workers.
        let decrypted = tokio::task::spawn_blocking(move || {
            let value: Value = serde_json::from_str(&backup)
                .map_err(|e| BackupInputError { field: "backup".to_owned(), message: format!("not valid JSON ({e})") })?;
            withheld_backup::decrypt_backup(&key, &value, "backup", "decryptionKey")
        })
        .await
        .map_err(internal)?
        .map_err(|e| invalid(&e.field, e.message))?;
        let failed = decrypted.undecryptable.len();
        let result =
            keys::import_values(&machine, decrypted.keys, "backup", Source::KeyBackup, Some(&version), progress.as_ref()).await?;
        Ok(BackupImportResult {
            imported: result.imported,
            total: result.total + failed as u32,
            keys: result.keys,
            withheld_records: result.withheld_records,
            undecryptable: decrypted
                .undecryptable
                .into_iter()
                .map(|u| UndecryptableBackupKey { room_id: u.room_id, session_id: u.session_id, error: u.error })
                .collect(),
        })
    }
}

/// What restoring from a backup did (`BackupImportResult` in TypeScript): an import result plus
/// the backed-up keys that were skipped.
#[napi(object)]
pub struct BackupImportResult {
    /// Keys that were new or better than what we had.
    pub imported: u32,
    /// Keys in the backup, the undecryptable ones included.
    pub total: u32,
    /// The imported session ids by room and sender key.
    pub keys: std::collections::HashMap<String, std::collections::HashMap<String, Vec<String>>>,
    /// Withheld records restored from the backup's `withheld` fields.
    pub withheld_records: u32,
    /// Backed-up keys that did not decrypt with the key (or decrypted to something that is not
    /// a room key) and were skipped; the others are imported. `total` counts them too.
    pub undecryptable: Vec<UndecryptableBackupKey>,
}

/// A backed-up key that was skipped.
#[napi(object)]
pub struct UndecryptableBackupKey {
    /// The room.
    pub room_id: String,
    /// The session.
    pub session_id: String,
    /// Why it was skipped.
    pub error: String,
}
