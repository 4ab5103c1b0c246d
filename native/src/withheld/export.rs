//! Withheld metadata in room-key exports: an extension beyond the spec (MSC2399 names the gap
//! for key backups). An exported session we hold only from index k > 0 carries, under
//! [`EXPORT_FIELD`], the code and reason that explain why the messages before k are missing.
//! Importers that do not know the field ignore it; exports without it import as before. Key
//! backups carry the same field inside their encrypted session data (`backup.rs`).

use matrix_sdk_crypto::{olm::InboundGroupSession, OlmMachine};
use serde_json::{json, Value};

use super::{
    records, now_ms,
    received::{WithheldRecord, Source},
    WithheldError,
};

/// The namespaced field (Java package naming, as the spec asks of extensions).
pub const EXPORT_FIELD: &str = "io.github.matrix_crypto_node.withheld";

/// The record that explains the missing start of a session: the creator's notice first, then
/// one that came with the key.
pub fn best_record<'a>(records: &'a [WithheldRecord], creator_key: &str) -> Option<&'a WithheldRecord> {
    records
        .iter()
        .rev()
        .find(|r| r.source == Source::Notice && r.sender_key == creator_key)
        .or_else(|| records.iter().rev().find(|r| r.source != Source::Notice))
}

/// The value of [`EXPORT_FIELD`] for a session: `None` unless it is partially withheld and we
/// know why.
pub async fn withheld_field(machine: &OlmMachine, session: &InboundGroupSession) -> Result<Option<Value>, WithheldError> {
    if session.first_known_index() == 0 {
        return Ok(None);
    }
    let records = records::room_records(machine, session.room_id().as_str(), session.session_id()).await?;
    Ok(best_record(&records, &session.sender_key().to_base64())
        .map(|r| json!({ "code": r.code, "reason": r.reason, "first_known_index": session.first_known_index() })))
}

/// Add the withheld field to an exported key, if the session is partially withheld and we know why.
pub async fn annotate(machine: &OlmMachine, session: &InboundGroupSession, exported: &mut Value) -> Result<(), WithheldError> {
    if let Some(field) = withheld_field(machine, session).await? {
        exported[EXPORT_FIELD] = field;
    }
    Ok(())
}

/// The withheld field of an exported (or backed-up) key, as the record to store on import;
/// `source` says which of the two it came from.
pub fn extract(key: &Value, importer: &str, source: Source) -> Option<WithheldRecord> {
    let field = key.get(EXPORT_FIELD)?.as_object()?;
    Some(WithheldRecord {
        code: field.get("code")?.as_str()?.to_owned(),
        reason: field.get("reason").and_then(Value::as_str).map(str::to_owned),
        room_id: key.get("room_id")?.as_str()?.to_owned(),
        session_id: key.get("session_id")?.as_str()?.to_owned(),
        sender: importer.to_owned(),
        sender_key: key.get("sender_key")?.as_str()?.to_owned(),
        from_device: None,
        received_at: now_ms() as i64,
        source,
    })
}

/// After an import: keep the withheld records of the keys that were imported.
pub async fn restore(machine: &OlmMachine, records: Vec<WithheldRecord>, imported: &[(String, String)]) -> Result<usize, WithheldError> {
    let mut stored = 0;
    for r in records {
        if imported.iter().any(|(room, session)| *room == r.room_id && *session == r.session_id)
            && records::put_room_record(machine, &r, true).await?
        {
            stored += 1;
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: Source, key: &str, code: &str) -> WithheldRecord {
        WithheldRecord {
            code: code.into(),
            reason: None,
            room_id: "!r:x".into(),
            session_id: "S".into(),
            sender: "@a:x".into(),
            sender_key: key.into(),
            from_device: None,
            received_at: 0,
            source,
        }
    }

    #[test]
    fn the_creators_notice_is_preferred() {
        let records = [record(Source::ForwardedKey, "KF", "m.unverified"), record(Source::Notice, "KA", "m.blacklisted")];
        assert_eq!(best_record(&records, "KA").unwrap().code, "m.blacklisted");
        assert_eq!(best_record(&records, "KZ").unwrap().code, "m.unverified", "not the creator: fall back to the forwarded record");
        assert!(best_record(&[record(Source::Notice, "KM", "x.y")], "KA").is_none(), "someone else's notice never travels");
    }

    #[test]
    fn extract_reads_the_field_and_ignores_keys_without_it() {
        let key = json!({"room_id":"!r:x","session_id":"S","sender_key":"K", EXPORT_FIELD: {"code":"m.unverified","reason":"why"}});
        let r = extract(&key, "@me:x", Source::KeyExport).unwrap();
        assert_eq!((r.code.as_str(), r.reason.as_deref(), r.source), ("m.unverified", Some("why"), Source::KeyExport));
        assert!(extract(&json!({"room_id":"!r:x","session_id":"S","sender_key":"K"}), "@me:x", Source::KeyExport).is_none());
        assert!(extract(&json!({"room_id":"!r:x","session_id":"S","sender_key":"K", EXPORT_FIELD: {"reason":"no code"}}), "@me:x", Source::KeyExport).is_none());
    }
}
