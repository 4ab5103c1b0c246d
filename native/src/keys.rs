//! Room-key export and import (the Matrix key-export JSON format).

use matrix_sdk_crypto::{olm::ExportedRoomKey, OlmMachine};
use ruma::OwnedRoomId;
use serde_json::json;

use crate::errors::{self, internal, invalid};

/// Export the inbound sessions matching the optional room and session filters.
pub async fn export(machine: &OlmMachine, room: Option<OwnedRoomId>, session_id: Option<String>) -> napi::Result<String> {
    let keys = machine
        .store()
        .export_room_keys(|s| {
            room.as_deref().is_none_or(|r| s.room_id() == r) && session_id.as_deref().is_none_or(|id| s.session_id() == id)
        })
        .await
        .map_err(errors::store)?;
    serde_json::to_string(&keys).map_err(internal)
}

/// Import exported keys; sessions we already hold at a better index are kept.
pub async fn import(machine: &OlmMachine, keys_json: &str) -> napi::Result<String> {
    let values: Vec<serde_json::Value> = serde_json::from_str(keys_json)
        .map_err(|e| invalid("keys", format!("must be a JSON array of exported room keys ({e})")))?;
    let mut keys = Vec::with_capacity(values.len());
    for (i, v) in values.into_iter().enumerate() {
        let key: ExportedRoomKey = serde_json::from_value(v)
            .map_err(|e| invalid(&format!("keys[{i}]"), format!("not an exported room key ({e})")))?;
        keys.push(key);
    }
    let result = machine.store().import_exported_room_keys(keys, |_, _| {}).await.map_err(errors::store)?;
    Ok(json!({ "imported": result.imported_count, "total": result.total_count, "keys": result.keys }).to_string())
}
