//! Room-key export and import (the Matrix key-export JSON format), with progress reports.

use std::collections::HashMap;

use matrix_sdk_crypto::{olm::ExportedRoomKey, OlmMachine};
use napi::{
    bindgen_prelude::FnArgs,
    threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
    Status,
};
use ruma::OwnedRoomId;

use napi_derive::napi;

use crate::{
    errors::{self, internal, invalid},
    ids, key_file,
    machine::NativeMachine,
    withheld::{self, received::Source},
};

/// A JS `(done, total) => void` callback, callable from the tokio threads.
pub type ProgressCallback = ThreadsafeFunction<FnArgs<(u32, u32)>, (), FnArgs<(u32, u32)>, Status, false>;

/// Reports `done / total` to JS at most ~[`Progress::STEPS`] times plus the final call, so
/// importing 100,000 keys does not flood the JS thread with 100,000 callbacks.
pub(crate) struct Progress<'a> {
    callback: Option<&'a ProgressCallback>,
    total: usize,
    step: usize,
    last: usize,
}

impl<'a> Progress<'a> {
    const STEPS: usize = 200;

    pub(crate) fn new(callback: Option<&'a ProgressCallback>, total: usize) -> Self {
        Self { callback, total, step: total.div_ceil(Self::STEPS).max(1), last: 0 }
    }

    /// `done` items of `total` are finished. Intermediate reports are queued without waiting.
    pub(crate) fn report(&mut self, done: usize) {
        let Some(cb) = self.callback else { return };
        if done < self.total && done - self.last < self.step {
            return;
        }
        self.last = done;
        if done < self.total {
            cb.call(FnArgs::from((to_u32(done), to_u32(self.total))), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    /// The final `total / total` report. Awaited: the callback queue is FIFO, so once it returns
    /// every earlier report has run too and the promise resolves after the last callback.
    pub(crate) async fn finish(self) -> napi::Result<()> {
        if let Some(cb) = self.callback {
            let n = to_u32(self.total);
            cb.call_async(FnArgs::from((n, n))).await?;
        }
        Ok(())
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Export the inbound sessions matching the optional room and session filters.
pub async fn export(
    machine: &OlmMachine,
    room: Option<OwnedRoomId>,
    session_id: Option<String>,
    progress: Option<&ProgressCallback>,
) -> napi::Result<String> {
    let mut sessions = machine.store().get_inbound_group_sessions().await.map_err(errors::store)?;
    sessions.retain(|s| {
        room.as_deref().is_none_or(|r| s.room_id() == r) && session_id.as_deref().is_none_or(|id| s.session_id() == id)
    });
    let mut report = Progress::new(progress, sessions.len());
    let mut keys = Vec::with_capacity(sessions.len());
    for (i, session) in sessions.iter().enumerate() {
        let mut key = serde_json::to_value(session.export().await).map_err(internal)?;
        withheld::export::annotate(machine, session, &mut key).await.map_err(errors::store)?;
        keys.push(key);
        report.report(i + 1);
    }
    report.finish().await?;
    serde_json::to_string(&keys).map_err(internal)
}

/// What importing room keys did (`ImportResult` in TypeScript).
#[napi(object)]
pub struct ImportResult {
    /// Keys that were new or better than what we had.
    pub imported: u32,
    /// Keys in the input.
    pub total: u32,
    /// The imported session ids by room and sender key.
    pub keys: HashMap<String, HashMap<String, Vec<String>>>,
    /// Withheld records restored from the extension field of the export (or backup).
    pub withheld_records: u32,
}

/// Import exported keys; sessions we already hold at a better index are kept.
pub async fn import(machine: &OlmMachine, keys_json: &str, progress: Option<&ProgressCallback>) -> napi::Result<ImportResult> {
    let values: Vec<serde_json::Value> = serde_json::from_str(keys_json)
        .map_err(|e| invalid("keys", format!("must be a JSON array of exported room keys ({e})")))?;
    import_values(machine, values, "keys", Source::KeyExport, None, progress).await
}

/// Import key-export JSON values (`field` names them in errors), restoring the withheld records
/// they carry as records of `source`. Keys from a backup (`from_backup_version`) are marked as
/// backed up there.
pub async fn import_values(
    machine: &OlmMachine,
    values: Vec<serde_json::Value>,
    field: &str,
    source: Source,
    from_backup_version: Option<&str>,
    progress: Option<&ProgressCallback>,
) -> napi::Result<ImportResult> {
    let mut keys = Vec::with_capacity(values.len());
    let importer = machine.user_id().to_string();
    let withheld_records: Vec<_> = values.iter().filter_map(|v| withheld::export::extract(v, &importer, source)).collect();
    for (i, v) in values.into_iter().enumerate() {
        let key: ExportedRoomKey = serde_json::from_value(v)
            .map_err(|e| invalid(&format!("{field}[{i}]"), format!("not an exported room key ({e})")))?;
        keys.push(key);
    }
    let report = std::sync::Mutex::new(Progress::new(progress, keys.len()));
    // The crate counts from 0 and reports after each key: key `i` done means `i + 1` done.
    let result = machine
        .store()
        .import_room_keys(keys, from_backup_version, |i, total| {
            let mut report = crate::locks::lock(&report);
            report.total = total;
            report.report(i + 1);
        })
        .await
        .map_err(errors::store)?;
    crate::locks::into_inner(report).finish().await?;
    let imported: Vec<(String, String)> = result
        .keys
        .iter()
        .flat_map(|(room, by_sender)| by_sender.values().flatten().map(move |s| (room.to_string(), s.clone())))
        .collect();
    let withheld = withheld::export::restore(machine, withheld_records, &imported).await.map_err(errors::store)?;
    let keys = result
        .keys
        .into_iter()
        .map(|(room, by_sender)| (room.to_string(), by_sender.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect()))
        .collect();
    Ok(ImportResult {
        imported: result.imported_count as u32,
        total: result.total_count as u32,
        keys,
        withheld_records: withheld as u32,
    })
}

/// Export as an encrypted key-export file (the spec's format), keeping every field.
pub async fn export_file(
    machine: &OlmMachine,
    room: Option<OwnedRoomId>,
    session_id: Option<String>,
    passphrase: String,
    rounds: u32,
    progress: Option<&ProgressCallback>,
) -> napi::Result<String> {
    let json = export(machine, room, session_id, progress).await?;
    // PBKDF2 with hundreds of thousands of rounds: keep it off the async workers.
    tokio::task::spawn_blocking(move || key_file::encrypt(json.as_bytes(), &passphrase, rounds))
        .await
        .map_err(internal)
}

/// Import an encrypted key-export file.
pub async fn import_file(
    machine: &OlmMachine,
    text: String,
    passphrase: String,
    progress: Option<&ProgressCallback>,
) -> napi::Result<ImportResult> {
    let plaintext = tokio::task::spawn_blocking(move || key_file::decrypt(&text, &passphrase))
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            key_file::KeyFileError::WrongPassphrase => invalid("passphrase", e),
            other => invalid("file", other),
        })?;
    let json = String::from_utf8(plaintext).map_err(|_| invalid("file", "the decrypted file is not UTF-8 JSON"))?;
    import(machine, &json, progress).await
}

/// Room-key export and import on the `OlmMachine` class.
#[napi]
impl NativeMachine {
    /// Export room keys as a JSON array (the Matrix key-export format, unencrypted).
    /// `progress(done, total)` is called as keys are exported, last with `done == total`.
    #[napi]
    pub async fn export_room_keys(
        &self,
        room_id: Option<String>,
        session_id: Option<String>,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<ProgressCallback>,
    ) -> napi::Result<String> {
        let machine = self.machine()?;
        let room = room_id.map(|r| ids::room_id("roomId", &r)).transpose()?;
        export(&machine, room, session_id, progress.as_ref()).await
    }

    /// Import room keys from a JSON array.
    /// `progress(done, total)` is called as keys are imported, last with `done == total`.
    #[napi]
    pub async fn import_room_keys(
        &self,
        keys_json: String,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<ProgressCallback>,
    ) -> napi::Result<ImportResult> {
        let machine = self.machine()?;
        import(&machine, &keys_json, progress.as_ref()).await
    }

    /// Export room keys as an encrypted key-export file (armored text).
    #[napi]
    pub async fn export_room_keys_file(
        &self,
        passphrase: String,
        rounds: Option<u32>,
        room_id: Option<String>,
        session_id: Option<String>,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<ProgressCallback>,
    ) -> napi::Result<String> {
        let machine = self.machine()?;
        if passphrase.is_empty() {
            return Err(invalid("passphrase", "must not be empty"));
        }
        let rounds = rounds.unwrap_or(crate::key_file::DEFAULT_ROUNDS);
        if rounds == 0 {
            return Err(invalid("rounds", "must be positive"));
        }
        let room = room_id.map(|r| ids::room_id("roomId", &r)).transpose()?;
        export_file(&machine, room, session_id, passphrase, rounds, progress.as_ref()).await
    }

    /// Import an encrypted key-export file.
    #[napi]
    pub async fn import_room_keys_file(
        &self,
        text: String,
        passphrase: String,
        #[napi(ts_arg_type = "(done: number, total: number) => void")] progress: Option<ProgressCallback>,
    ) -> napi::Result<ImportResult> {
        let machine = self.machine()?;
        import_file(&machine, text, passphrase, progress.as_ref()).await
    }
}
