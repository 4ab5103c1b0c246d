//! Parsing caller-supplied Matrix identifiers, with errors that name the field.

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::errors::invalid;

pub fn user_id(field: &str, value: &str) -> napi::Result<OwnedUserId> {
    UserId::parse(value).map_err(|e| invalid(field, format!("{value:?} is not a valid Matrix user id ({e})")))
}

pub fn room_id(field: &str, value: &str) -> napi::Result<OwnedRoomId> {
    RoomId::parse(value).map_err(|e| invalid(field, format!("{value:?} is not a valid Matrix room id ({e})")))
}

pub fn device_id(field: &str, value: &str) -> napi::Result<OwnedDeviceId> {
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        return Err(invalid(field, format!("{value:?} is not a valid device id")));
    }
    Ok(value.into())
}

pub fn user_ids(field: &str, values: &[String]) -> napi::Result<Vec<OwnedUserId>> {
    values.iter().enumerate().map(|(i, v)| user_id(&format!("{field}[{i}]"), v)).collect()
}
