//! Room-key bundles (MSC4268, sharing encrypted history) on the `OlmMachine` class: build, encrypt
//! and announce one (the inviter's side); find, decrypt and receive one, with its withheld
//! entries as typed records (the invitee's side). The rules are in `withheld::bundle`.

use std::io::Read;

use matrix_sdk_crypto::{types::events::room_key_bundle::RoomKeyBundleContent, AttachmentEncryptor, CollectStrategy};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use serde_json::{json, Value};

use crate::{
    errors::{self, code, internal, invalid},
    ids,
    keys::{Progress, ProgressCallback},
    machine::NativeMachine,
    requests::NativeRequest,
    withheld::{bundle, now_ms},
};

/// A built, encrypted room-key bundle (see `OlmMachine.buildRoomKeyBundle`).
#[napi(object)]
pub struct BuiltRoomKeyBundle {
    /// The encrypted bundle file, to upload to the media repository.
    pub ciphertext: Buffer,
    /// How the file is encrypted (JSON: `key`, `iv`, `hashes`, `v`), for `shareRoomKeyBundle`.
    pub media_encryption_info: String,
    /// Room keys in the bundle.
    pub room_keys: u32,
    /// Withheld entries in the bundle (`m.history_not_shared`).
    pub withheld: u32,
}

/// An `m.room_key_bundle` event we received (see `OlmMachine.getReceivedRoomKeyBundle`).
#[napi(object)]
pub struct ReceivedRoomKeyBundle {
    /// The room.
    pub room_id: String,
    /// The user who sent it.
    pub sender: String,
    /// The Curve25519 key of the device that sent it (checked by Olm).
    pub sender_key: String,
    /// Where to download the encrypted bundle file (`mxc://`).
    pub url: String,
}

fn bundle_error(err: bundle::BundleError, room: &str, inviter: &str) -> Error {
    match err {
        bundle::BundleError::NotReceived => errors::for_field(
            code::INVALID_ARGUMENT,
            "inviterUserId",
            format!("inviterUserId: no m.room_key_bundle event from {inviter} for {room} was received (sync first)"),
        ),
        bundle::BundleError::Decrypt(e) => invalid(
            "encryptedBundle",
            format!("does not decrypt with the key of the m.room_key_bundle event from {inviter} ({e})"),
        ),
        bundle::BundleError::Format(e) => invalid("encryptedBundle", format!("decrypts, but is not a room-key bundle ({e})")),
        bundle::BundleError::Withheld(e) => e.into(),
    }
}

#[napi]
impl NativeMachine {
    /// Build the room's key bundle (the sessions with shared history, and a
    /// `m.history_not_shared` entry for each other one) and encrypt it; null if it would be empty.
    #[napi]
    pub async fn build_room_key_bundle(&self, room_id: String) -> Result<Option<BuiltRoomKeyBundle>> {
        let machine = self.machine()?;
        let room = ids::room_id("roomId", &room_id)?;
        let built = machine.store().build_room_key_bundle(&room).await.map_err(errors::store)?;
        if built.is_empty() {
            return Ok(None);
        }
        let (room_keys, withheld) = (bundle::count(built.room_keys.len()), bundle::count(built.withheld.len()));
        let plain = serde_json::to_vec(&built).map_err(internal)?;
        let mut input: &[u8] = &plain;
        let mut encryptor = AttachmentEncryptor::new(&mut input);
        let mut ciphertext = Vec::with_capacity(plain.len());
        encryptor.read_to_end(&mut ciphertext).map_err(internal)?;
        let info = encryptor.finish();
        Ok(Some(BuiltRoomKeyBundle {
            ciphertext: ciphertext.into(),
            media_encryption_info: serde_json::to_string(&info).map_err(internal)?,
            room_keys,
            withheld,
        }))
    }

    /// Tell every device of `userId` where the room's uploaded bundle is (an Olm-encrypted
    /// `m.room_key_bundle` event): returns the to-device requests to send.
    #[napi]
    pub async fn share_room_key_bundle(&self, user_id: String, room_id: String, url: String, media_encryption_info: String) -> Result<Vec<NativeRequest>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let room = ids::room_id("roomId", &room_id)?;
        if !url.starts_with("mxc://") || url.len() <= "mxc://".len() {
            return Err(invalid("url", "must be the mxc:// URI of the uploaded bundle"));
        }
        let mut file: Value = errors::parse_json("mediaEncryptionInfo", &media_encryption_info)?;
        let Some(object) = file.as_object_mut() else {
            return Err(invalid("mediaEncryptionInfo", "must be the JSON object buildRoomKeyBundle returned"));
        };
        object.insert("url".into(), json!(url));
        let file = serde_json::from_value(file)
            .map_err(|e| invalid("mediaEncryptionInfo", format!("is not the media encryption info buildRoomKeyBundle returned ({e})")))?;
        let content = RoomKeyBundleContent { room_id: room, file };
        let requests = machine
            .share_room_key_bundle_data(&user, &CollectStrategy::default(), content)
            .await
            .map_err(errors::olm)?;
        self.to_device_requests(requests.iter())
    }

    /// The `m.room_key_bundle` event received from `inviter` for the room, or null.
    #[napi]
    pub async fn received_room_key_bundle(&self, room_id: String, inviter_user_id: String) -> Result<Option<ReceivedRoomKeyBundle>> {
        let machine = self.machine()?;
        let room = ids::room_id("roomId", &room_id)?;
        let inviter = ids::user_id("inviterUserId", &inviter_user_id)?;
        let Some(info) = bundle::received(&machine, &room, &inviter).await? else { return Ok(None) };
        Ok(Some(ReceivedRoomKeyBundle {
            room_id: info.bundle_data.room_id.to_string(),
            sender: info.sender_user.to_string(),
            sender_key: info.sender_key.to_base64(),
            url: info.bundle_data.file.url.to_string(),
        }))
    }

    /// Decrypt and receive the room's bundle file from `inviter` (downloaded from the event's
    /// `url`); returns what it did. `progress(done, total)` follows the key import.
    #[napi(ts_return_type = "Promise<NativeRoomKeyBundleOutcome>")]
    pub async fn receive_room_key_bundle(
        &self,
        room_id: String,
        inviter_user_id: String,
        encrypted_bundle: Buffer,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<ProgressCallback>,
    ) -> Result<bundle::BundleOutcome> {
        let machine = self.machine()?;
        let room = ids::room_id("roomId", &room_id)?;
        let inviter = ids::user_id("inviterUserId", &inviter_user_id)?;
        let data = encrypted_bundle.to_vec();
        let reports = std::sync::Mutex::new(None::<Progress<'_>>);
        let outcome = bundle::receive(&machine, &self.withheld.metrics, &room, &inviter, &data, now_ms(), |done, all| {
            crate::locks::lock(&reports).get_or_insert_with(|| Progress::new(progress.as_ref(), all)).report(done);
        })
        .await
        .map_err(|e| bundle_error(e, room.as_str(), inviter.as_str()))?;
        let report = crate::locks::lock(&reports).take();
        match report {
            Some(report) => report.finish().await?,
            None => Progress::new(progress.as_ref(), 0).finish().await?,
        }
        Ok(outcome)
    }
}
