//! How a sync's to-device batch is handed to the crate: cut into runs in which no sender device
//! appears twice (plain Rust, so its unit tests build without the `node` feature).

use std::{borrow::Cow, collections::HashSet};

use ruma::{events::AnyToDeviceEvent, serde::Raw};
use serde::Deserialize;

/// The Olm `sender_key` of an `m.room.encrypted` event, or `None` for any other event, or one
/// that does not read as an encrypted event.
///
/// The batch reaches us as raw JSON (copied, not parsed, so that the crate reads the
/// homeserver's bytes), and the crate parses each event only inside `receive_sync_changes`,
/// too late for cutting the batch into the calls: this is the one look at the two fields
/// before that. It borrows both and skips every other field.
fn olm_sender_key(event: &Raw<AnyToDeviceEvent>) -> Option<Cow<'_, str>> {
    #[derive(Deserialize)]
    struct Outer<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow)]
        content: Option<Content<'a>>,
    }
    #[derive(Deserialize)]
    struct Content<'a> {
        #[serde(borrow)]
        sender_key: Option<Cow<'a, str>>,
    }
    let outer: Outer<'_> = serde_json::from_str(event.json().get()).ok()?;
    if outer.kind.as_deref() != Some("m.room.encrypted") {
        return None;
    }
    outer.content?.sender_key
}

/// Cut a batch of to-device events into consecutive runs in which no sender device (the Olm
/// `sender_key` of an `m.room.encrypted` event) appears twice, for one
/// `receive_sync_changes` call each. Always at least one run (an empty batch is one empty
/// run: the sync's device lists, key counts and token still need their call).
///
/// matrix-sdk-crypto merges each room key it receives with what the store holds, not with the
/// keys accepted earlier in the same call: two copies of one Megolm session in one batch (a
/// share at index 0 and the sender's re-share at a later index, which it sends after it learns
/// our new Olm session) both look new, both are saved, and the store keeps the last one, the
/// worse one; the messages before its index no longer decrypt
/// (test/reliability/room-key-batch.test.ts). A room key reaches us only in an Olm message of
/// its sender device, so one call per run lets the crate merge the second copy with the first.
/// A batch with at most one encrypted event per sender device stays one run. Events that are
/// not encrypted, or do not read as encrypted events, stay in the run they arrive in.
pub fn olm_sender_runs(events: Vec<Raw<AnyToDeviceEvent>>) -> Vec<Vec<Raw<AnyToDeviceEvent>>> {
    // Where each run after the first starts, found with the keys borrowed from the batch.
    let mut starts = Vec::new();
    let mut senders: HashSet<Cow<'_, str>> = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        let Some(key) = olm_sender_key(e) else { continue };
        if senders.contains(&key) {
            starts.push(i);
            senders.clear();
        }
        senders.insert(key);
    }
    drop(senders);
    let mut runs = Vec::with_capacity(starts.len() + 1);
    let mut rest = events;
    for start in starts.into_iter().rev() {
        runs.push(rest.split_off(start));
    }
    runs.push(rest);
    runs.reverse();
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Raw<AnyToDeviceEvent> {
        Raw::from_json(serde_json::value::RawValue::from_string(json.to_owned()).expect("test JSON"))
    }

    fn encrypted(sender_key: &str, n: u32) -> String {
        format!(
            r#"{{"type":"m.room.encrypted","sender":"@a:x","content":{{"algorithm":"m.olm.v1.curve25519-aes-sha2","sender_key":"{sender_key}","ciphertext":{{"k":{{"type":0,"body":"{n}"}}}}}}}}"#
        )
    }

    /// The runs as the JSON of their events.
    fn runs_of(batch: &[String]) -> Vec<Vec<String>> {
        olm_sender_runs(batch.iter().map(|e| raw(e)).collect())
            .into_iter()
            .map(|run| run.iter().map(|e| e.json().get().to_owned()).collect())
            .collect()
    }

    #[test]
    fn a_batch_without_a_repeated_sender_is_one_run_in_order() {
        let batch = vec![encrypted("A", 1), encrypted("B", 1), r#"{"type":"m.dummy","content":{}}"#.to_owned(), encrypted("C", 1)];
        assert_eq!(runs_of(&batch), vec![batch.clone()]);
    }

    #[test]
    fn an_empty_batch_is_one_empty_run() {
        assert_eq!(runs_of(&[]), vec![Vec::<String>::new()]);
    }

    #[test]
    fn a_repeated_sender_key_starts_a_new_run_that_forgets_the_earlier_senders() {
        let batch = vec![encrypted("A", 1), encrypted("B", 1), encrypted("A", 2), encrypted("C", 1), encrypted("B", 2), encrypted("C", 2)];
        // A repeats at 2; in the second run only A has been seen, so B at 4 stays; C repeats at 5.
        assert_eq!(
            runs_of(&batch),
            vec![batch[0..2].to_vec(), batch[2..5].to_vec(), batch[5..].to_vec()]
        );
    }

    #[test]
    fn events_that_are_not_encrypted_never_split_a_run() {
        let notice = r#"{"type":"m.room_key.withheld","content":{"code":"m.unverified","sender_key":"A","room_id":"!r:x","session_id":"s","algorithm":"m.megolm.v1.aes-sha2"}}"#;
        let batch = vec![encrypted("A", 1), notice.to_owned(), notice.to_owned(), r#"{"type":"m.dummy","content":{"sender_key":"A"}}"#.to_owned()];
        assert_eq!(runs_of(&batch), vec![batch.clone()]);
    }

    #[test]
    fn malformed_events_go_along_in_the_run_they_arrive_in() {
        let batch = vec![
            encrypted("A", 1),
            r#"{"type":5}"#.to_owned(),
            r#"{"type":"m.room.encrypted"}"#.to_owned(),
            r#"{"type":"m.room.encrypted","content":{"sender_key":7}}"#.to_owned(),
            r#"{"type":"m.room.encrypted","content":"A"}"#.to_owned(),
            encrypted("A", 2),
            r#"{"type":"m.room.encrypted","content":{}}"#.to_owned(),
        ];
        assert_eq!(runs_of(&batch), vec![batch[0..5].to_vec(), batch[5..].to_vec()]);
    }

    #[test]
    fn an_escaped_sender_key_is_compared_by_its_value() {
        // `\u0041` is `A`: the same device, however the homeserver spelled the JSON.
        let escaped = encrypted("A", 2).replace(r#""sender_key":"A""#, r#""sender_key":"\u0041""#);
        let batch = vec![encrypted("A", 1), escaped];
        assert_eq!(runs_of(&batch), vec![batch[0..1].to_vec(), batch[1..].to_vec()]);
    }
}
