//! Withheld metadata in server-side key backups (`m.megolm_backup.v1.curve25519-aes-sha2`): the
//! gap MSC2399 names, closed by an extension beyond the spec.
//!
//! The crate encrypts each backed-up session from its typed `BackedUpRoomKey`, which has no room
//! for extra fields. For a session we hold only from index k > 0 and whose missing start we can
//! explain, we encrypt the session data ourselves to the same backup key: the crate's JSON plus
//! [`EXPORT_FIELD`] (as in key exports). The field sits inside the encrypted `session_data`, so
//! the homeserver never sees it, and clients that do not know it ignore it after decryption.
//! Every other session keeps the crate's payload.
//!
//! Restoring walks the `GET /room_keys/keys` response, decrypts each session with the backup
//! decryption key and hands back key-export JSON (room and session ids added), so the import and
//! the restore of withheld records are the same as for a key export.

use matrix_sdk_crypto::{
    store::types::BackupDecryptionKey, types::requests::KeysBackupRequest, OlmMachine,
};
use ruma::{
    api::client::backup::{EncryptedSessionDataInit, KeyBackupData},
    serde::{Base64, Raw},
    RoomId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use vodozemac::{pk_encryption::PkEncryption, Curve25519PublicKey};

use super::{export, WithheldError};

/// The backup we encrypt to: the public key and version given to `enable_backup_v1`, which the
/// crate keeps to itself.
const ACTIVE_BACKUP_KEY: &str = "matrix-crypto-node.backup.v1.active";

/// The public key and version of the enabled backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveBackup {
    pub public_key: String,
    pub version: String,
}

/// Remember the backup the crate was just told to use.
pub async fn remember(machine: &OlmMachine, backup: &ActiveBackup) -> Result<(), WithheldError> {
    machine.store().set_value(ACTIVE_BACKUP_KEY, backup).await.map_err(WithheldError::Store)
}

/// Forget it, after the crate's backup was disabled.
pub async fn forget(machine: &OlmMachine) -> Result<(), WithheldError> {
    machine.store().remove_custom_value(ACTIVE_BACKUP_KEY).await.map_err(WithheldError::Store)
}

async fn active(machine: &OlmMachine) -> Result<Option<ActiveBackup>, WithheldError> {
    machine.store().get_value(ACTIVE_BACKUP_KEY).await.map_err(WithheldError::Store)
}

/// Encrypt `plaintext` to a backup public key (`m.megolm_backup.v1.curve25519-aes-sha2`,
/// vodozemac's implementation, the one the crate uses).
pub fn encrypt_session_data(key: Curve25519PublicKey, plaintext: &[u8]) -> Result<EncryptedSessionDataInit, WithheldError> {
    let message = PkEncryption::from_key(key).encrypt(plaintext).map_err(WithheldError::BackupEncryption)?;
    Ok(EncryptedSessionDataInit {
        ephemeral: Base64::new(message.ephemeral_key.to_bytes().to_vec()),
        ciphertext: Base64::new(message.ciphertext),
        mac: Base64::new(message.mac),
    })
}

/// Rewrite, in a `keys_backup` request the crate made, the session data of every partially
/// withheld session we have a record for. Returns how many were rewritten.
///
/// Does nothing if the request is not for the backup we remembered: we cannot know its key.
pub async fn annotate_request(machine: &OlmMachine, request: &mut KeysBackupRequest) -> Result<usize, WithheldError> {
    let Some(backup) = active(machine).await?.filter(|b| b.version == request.version) else {
        return Ok(0);
    };
    let key = Curve25519PublicKey::from_base64(&backup.public_key).map_err(WithheldError::Key)?;
    let mut rewritten = 0;
    for (room_id, room) in request.rooms.iter_mut() {
        for (session_id, raw) in room.sessions.iter_mut() {
            let mut data: KeyBackupData = raw.deserialize().map_err(WithheldError::Json)?;
            if data.first_message_index == 0u32.into() {
                continue;
            }
            if let Some(session_data) = annotated_session_data(machine, key, room_id, session_id).await? {
                data.session_data = session_data.into();
                *raw = Raw::new(&data).map_err(WithheldError::Json)?;
                rewritten += 1;
            }
        }
    }
    Ok(rewritten)
}

/// The crate's backed-up JSON of a session plus the withheld field, encrypted; `None` if the
/// session is not partially withheld or nothing explains why.
async fn annotated_session_data(
    machine: &OlmMachine,
    key: Curve25519PublicKey,
    room_id: &RoomId,
    session_id: &str,
) -> Result<Option<EncryptedSessionDataInit>, WithheldError> {
    let Some(session) = machine.store().get_inbound_group_session(room_id, session_id).await.map_err(WithheldError::Store)? else {
        return Ok(None);
    };
    let Some(field) = export::withheld_field(machine, &session).await? else {
        return Ok(None);
    };
    let mut plaintext = serde_json::to_value(session.to_backup().await).map_err(WithheldError::Json)?;
    plaintext[export::EXPORT_FIELD] = field;
    let bytes = serde_json::to_vec(&plaintext).map_err(WithheldError::Json)?;
    encrypt_session_data(key, &bytes).map(Some)
}

/// Caller input that cannot be a backup, with the field at fault (`backup.rooms["!r:x"]...`).
#[derive(Debug, PartialEq, Eq)]
pub struct BackupInputError {
    pub field: String,
    pub message: String,
}

impl BackupInputError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// A session of the backup that did not decrypt to a room key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Undecryptable {
    pub room_id: String,
    pub session_id: String,
    pub error: String,
}

/// The decrypted sessions of a backup, as key-export JSON, and those that did not decrypt.
#[derive(Debug, Default)]
pub struct DecryptedBackup {
    pub keys: Vec<Value>,
    pub undecryptable: Vec<Undecryptable>,
}

fn object<'a>(value: &'a Value, field: &str, what: &str) -> Result<&'a Map<String, Value>, BackupInputError> {
    value.as_object().ok_or_else(|| BackupInputError::new(field, format!("must be {what}")))
}

/// Decrypt every session of a `GET /room_keys/keys` response (`{ "rooms": { room: { "sessions":
/// { session: KeyBackupData } } } }`, the body of a `keys_backup` request too). `field` names the
/// argument in errors.
///
/// Malformed structure is the caller's error. A well-formed session that does not decrypt to a
/// room key is skipped and listed (anyone who knows the public key can write to a backup, so one
/// bad entry must not block the restore), unless none decrypts: then the key is wrong.
pub fn decrypt_backup(key: &BackupDecryptionKey, backup: &Value, field: &str, key_field: &str) -> Result<DecryptedBackup, BackupInputError> {
    let top = object(backup, field, "an object: the response of GET /room_keys/keys")?;
    let rooms_field = format!("{field}.rooms");
    let rooms = object(top.get("rooms").unwrap_or(&Value::Null), &rooms_field, "an object of rooms by room id")?;
    let mut out = DecryptedBackup::default();
    let mut total = 0usize;
    let mut first_error = None;
    for (room_id, room) in rooms {
        let room_field = format!("{rooms_field}[{room_id:?}]");
        RoomId::parse(room_id).map_err(|e| BackupInputError::new(&room_field, format!("{room_id:?} is not a valid Matrix room id ({e})")))?;
        let sessions_field = format!("{room_field}.sessions");
        let room = object(room, &room_field, "an object with `sessions`")?;
        let sessions = object(room.get("sessions").unwrap_or(&Value::Null), &sessions_field, "an object of sessions by session id")?;
        for (session_id, data) in sessions {
            total += 1;
            let data_field = format!("{sessions_field}[{session_id:?}].session_data");
            let parts = session_data_parts(data, &data_field)?;
            match decrypt_one(key, parts, room_id, session_id) {
                Ok(k) => out.keys.push(k),
                Err(error) => {
                    first_error.get_or_insert_with(|| error.clone());
                    out.undecryptable.push(Undecryptable { room_id: room_id.clone(), session_id: session_id.clone(), error });
                }
            }
        }
    }
    if total > 0 && out.keys.is_empty() {
        let error = first_error.unwrap_or_default();
        return Err(BackupInputError::new(
            key_field,
            format!("decrypts none of the {total} backed-up sessions: not the key of this backup? ({error})"),
        ));
    }
    Ok(out)
}

/// The `ephemeral`, `mac` and `ciphertext` strings of a session's `session_data`.
fn session_data_parts<'a>(data: &'a Value, field: &str) -> Result<[&'a str; 3], BackupInputError> {
    let session_data = object(data.get("session_data").unwrap_or(&Value::Null), field, "an object { ephemeral, ciphertext, mac }")?;
    let part = |name: &str| {
        session_data
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| BackupInputError::new(format!("{field}.{name}"), "must be a base64 string"))
    };
    Ok([part("ephemeral")?, part("mac")?, part("ciphertext")?])
}

/// One session's key-export JSON, or why it could not be had.
fn decrypt_one(key: &BackupDecryptionKey, [ephemeral, mac, ciphertext]: [&str; 3], room_id: &str, session_id: &str) -> Result<Value, String> {
    let plaintext = key.decrypt_v1(ephemeral, mac, ciphertext).map_err(|e| e.to_string())?;
    let mut value: Value = serde_json::from_str(&plaintext).map_err(|e| format!("the decrypted session data is not JSON ({e})"))?;
    let Some(map) = value.as_object_mut() else {
        return Err("the decrypted session data is not a JSON object".to_owned());
    };
    map.insert("room_id".to_owned(), Value::String(room_id.to_owned()));
    map.insert("session_id".to_owned(), Value::String(session_id.to_owned()));
    // Checked here so a bad entry is listed as undecryptable instead of failing the restore;
    // deserialising from a borrowed value checks it without copying it.
    matrix_sdk_crypto::olm::ExportedRoomKey::deserialize(&value)
        .map_err(|e| format!("the decrypted session data is not a backed-up room key ({e})"))?;
    Ok(value)
}

/// A base64 backup decryption key, or why it is not one.
pub fn decryption_key(base64: &str) -> Result<BackupDecryptionKey, String> {
    BackupDecryptionKey::from_base64(base64).map_err(|e| format!("not a base64 backup decryption key ({e})"))
}

/// The base64 public key of a backup, or why it is not one.
pub fn public_key(base64: &str) -> Result<Curve25519PublicKey, String> {
    Curve25519PublicKey::from_base64(base64).map_err(|e| format!("not a base64 Curve25519 backup public key ({e})"))
}

/// The public half of a decryption key, base64.
pub fn public_key_of(key: &BackupDecryptionKey) -> String {
    key.megolm_v1_public_key().to_base64()
}

#[cfg(test)]
mod tests {
    use matrix_sdk_crypto::olm::ExportedRoomKey;
    use ruma::{api::client::backup::EncryptedSessionData, device_id, room_id, user_id};
    use serde_json::json;
    use vodozemac::{
        base64_encode,
        megolm::{GroupSession, InboundGroupSession, SessionConfig},
        Curve25519SecretKey, Ed25519SecretKey,
    };

    use super::*;
    use crate::withheld::{
        records,
        received::{WithheldRecord, Source},
    };

    const ROOM: &str = "!room:example.org";

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    /// A room key of a made-up sender, exported at `index`.
    fn exported_key(index: u32) -> (ExportedRoomKey, String) {
        let mut outbound = GroupSession::new(SessionConfig::version_1());
        for _ in 0..index {
            outbound.encrypt("skipped");
        }
        let mut inbound = InboundGroupSession::new(&outbound.session_key(), SessionConfig::version_1());
        let session_key = inbound.export_at(index).expect("exportable at its own index");
        let sender = Curve25519PublicKey::from(&Curve25519SecretKey::new());
        let signing = Ed25519SecretKey::new().public_key();
        let key = json!({
            "algorithm": "m.megolm.v1.aes-sha2",
            "room_id": ROOM,
            "sender_key": sender.to_base64(),
            "session_id": outbound.session_id(),
            "session_key": session_key.to_base64(),
            "sender_claimed_keys": { "ed25519": signing.to_base64() },
            "forwarding_curve25519_key_chain": [],
        });
        (serde_json::from_value(key).expect("an exported room key"), outbound.session_id())
    }

    fn record(session_id: &str, sender_key: &str) -> WithheldRecord {
        WithheldRecord {
            code: "m.unverified".into(),
            reason: Some("verify first".into()),
            room_id: ROOM.into(),
            session_id: session_id.into(),
            sender: "@bob:example.org".into(),
            sender_key: sender_key.into(),
            from_device: None,
            received_at: 0,
            source: Source::ForwardedKey,
        }
    }

    /// A machine holding a session from index 0 and one from index 2 with a withheld record,
    /// backing up to a new key; returns the machine, the key and the two session ids.
    async fn machine_with_backup() -> (OlmMachine, BackupDecryptionKey, String, String) {
        let machine = OlmMachine::new(user_id!("@alice:example.org"), device_id!("ALICE")).await;
        let (full, full_id) = exported_key(0);
        let (partial, partial_id) = exported_key(2);
        let partial_sender = partial.sender_key.to_base64();
        machine.store().import_exported_room_keys(vec![full, partial], |_, _| {}).await.expect("import");
        records::put_room_record(&machine, &record(&partial_id, &partial_sender), true).await.expect("record");

        let key = BackupDecryptionKey::new();
        let public = key.megolm_v1_public_key();
        public.set_version("1".into());
        machine.backup_machine().enable_backup_v1(public.clone()).await.expect("enable");
        remember(&machine, &ActiveBackup { public_key: public.to_base64(), version: "1".into() }).await.expect("remember");
        (machine, key, full_id, partial_id)
    }

    fn session_data(request: &KeysBackupRequest, session_id: &str) -> EncryptedSessionData {
        let raw = &request.rooms[room_id!("!room:example.org")].sessions[session_id];
        raw.deserialize().expect("key backup data").session_data
    }

    fn decrypt_v1(key: &BackupDecryptionKey, data: &EncryptedSessionData) -> Value {
        let plaintext = key
            .decrypt_v1(&base64_encode(data.ephemeral.as_bytes()), &base64_encode(data.mac.as_bytes()), &base64_encode(data.ciphertext.as_bytes()))
            .expect("decrypts with the crate");
        serde_json::from_str(&plaintext).expect("JSON")
    }

    #[test]
    fn partially_withheld_sessions_carry_the_field_and_the_crate_decrypts_them() {
        runtime().block_on(async {
            let (machine, key, full_id, partial_id) = machine_with_backup().await;
            let (_, mut request) = machine.backup_machine().backup().await.expect("backup").expect("a request");
            let before = session_data(&request, &full_id);
            assert_eq!(annotate_request(&machine, &mut request).await.expect("annotate"), 1);

            let full = session_data(&request, &full_id);
            assert_eq!(full.ciphertext, before.ciphertext, "a fully held session keeps the crate's payload");
            assert!(decrypt_v1(&key, &full).get(export::EXPORT_FIELD).is_none());

            let partial = session_data(&request, &partial_id);
            let plaintext = decrypt_v1(&key, &partial);
            assert_eq!(
                plaintext[export::EXPORT_FIELD],
                json!({ "code": "m.unverified", "reason": "verify first", "first_known_index": 2 })
            );
            // The crate's typed decryption reads it as an ordinary backed-up key.
            let typed = key.decrypt_session_data(partial).expect("the crate decrypts our session data");
            let restored = ExportedRoomKey::from_backed_up_room_key(ROOM.try_into().unwrap(), partial_id.clone(), typed);
            assert_eq!(restored.session_id, partial_id);
            let data: KeyBackupData = request.rooms[room_id!("!room:example.org")].sessions[&partial_id].deserialize().unwrap();
            assert_eq!(data.first_message_index, 2u32.into(), "the crate's metadata is kept");
        });
    }

    #[test]
    fn a_request_for_another_backup_is_left_alone() {
        runtime().block_on(async {
            let (machine, _, _, partial_id) = machine_with_backup().await;
            let (_, mut request) = machine.backup_machine().backup().await.unwrap().unwrap();
            let before = session_data(&request, &partial_id);
            forget(&machine).await.unwrap();
            assert_eq!(annotate_request(&machine, &mut request).await.unwrap(), 0);
            remember(&machine, &ActiveBackup { public_key: key_b64(), version: "2".into() }).await.unwrap();
            assert_eq!(annotate_request(&machine, &mut request).await.unwrap(), 0, "another version: not our key");
            assert_eq!(session_data(&request, &partial_id).ciphertext, before.ciphertext);
        });
    }

    fn key_b64() -> String {
        public_key_of(&BackupDecryptionKey::new())
    }

    #[test]
    fn restore_decrypts_our_backup_with_the_field_and_the_crates_without_it() {
        runtime().block_on(async {
            let (machine, key, full_id, partial_id) = machine_with_backup().await;
            let (_, mut request) = machine.backup_machine().backup().await.unwrap().unwrap();
            let crate_body = json!({ "rooms": request.rooms });
            annotate_request(&machine, &mut request).await.unwrap();
            let ours = json!({ "rooms": request.rooms });

            let decrypted = decrypt_backup(&key, &ours, "backup", "decryptionKey").expect("decrypts");
            assert!(decrypted.undecryptable.is_empty());
            let partial = decrypted.keys.iter().find(|k| k["session_id"] == partial_id.as_str()).expect("the partial session");
            let record = export::extract(partial, "@alice:example.org", Source::KeyBackup).expect("the field is read");
            assert_eq!((record.code.as_str(), record.room_id.as_str(), record.source), ("m.unverified", ROOM, Source::KeyBackup));

            let plain = decrypt_backup(&key, &crate_body, "backup", "decryptionKey").expect("the crate's backup decrypts");
            assert_eq!(plain.keys.len(), 2);
            assert!(plain.keys.iter().all(|k| export::extract(k, "@a:x", Source::KeyBackup).is_none()));
            assert!(plain.keys.iter().any(|k| k["session_id"] == full_id.as_str() && k["room_id"] == ROOM));
        });
    }

    #[test]
    fn a_wrong_key_a_bad_entry_and_bad_structure_are_told_apart() {
        runtime().block_on(async {
            let (machine, key, full_id, _) = machine_with_backup().await;
            let (_, request) = machine.backup_machine().backup().await.unwrap().unwrap();
            let body = json!({ "rooms": request.rooms });

            let wrong = decrypt_backup(&BackupDecryptionKey::new(), &body, "backup", "decryptionKey").unwrap_err();
            assert_eq!(wrong.field, "decryptionKey");
            assert!(wrong.message.contains("none of the 2"), "{}", wrong.message);

            let mut one_bad = body.clone();
            let other = encrypt_session_data(public_key(&public_key_of(&key)).unwrap(), b"not json").unwrap();
            one_bad["rooms"][ROOM]["sessions"][&full_id]["session_data"] = serde_json::to_value(EncryptedSessionData::from(other)).unwrap();
            let partly = decrypt_backup(&key, &one_bad, "backup", "decryptionKey").expect("the other session restores");
            assert_eq!(partly.keys.len(), 1);
            assert_eq!(partly.undecryptable.len(), 1);
            assert_eq!(partly.undecryptable[0].session_id, full_id);
            assert!(partly.undecryptable[0].error.contains("not JSON"), "{}", partly.undecryptable[0].error);

            let field = |v: Value| decrypt_backup(&key, &v, "backup", "decryptionKey").unwrap_err().field;
            assert_eq!(field(json!([])), "backup");
            assert_eq!(field(json!({})), "backup.rooms");
            assert_eq!(field(json!({ "rooms": { "not a room": { "sessions": {} } } })), r#"backup.rooms["not a room"]"#);
            assert_eq!(field(json!({ "rooms": { ROOM: {} } })), r#"backup.rooms["!room:example.org"].sessions"#);
            assert_eq!(
                field(json!({ "rooms": { ROOM: { "sessions": { "S": { "session_data": { "ephemeral": "x", "mac": 1 } } } } } })),
                r#"backup.rooms["!room:example.org"].sessions["S"].session_data.mac"#
            );
            assert!(decrypt_backup(&key, &json!({ "rooms": {} }), "backup", "decryptionKey").unwrap().keys.is_empty(), "an empty backup is fine");
        });
    }
}
