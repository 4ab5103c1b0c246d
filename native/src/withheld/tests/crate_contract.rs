//! What the withheld layer relies on in matrix-sdk-crypto, pinned against the crate itself (no
//! layer of ours in between), so that a crate upgrade that changes it fails here first:
//!
//! - the content of the crate's `m.room_key.withheld` notices (`share.rs` filters and rewrites
//!   them field by field);
//! - the crate's own `m.no_olm` list: a device without a one-time key is named once, in a notice
//!   without room or session, and not again once the request was marked as sent (the no-olm
//!   ledger builds on that once-only flag, `DeviceData::withheld_code_sent`);
//! - the room-key forwarding switch, which the machine turns off so that key requests reach our
//!   answering layer instead of the crate's;
//! - the `identity_based` strategy's answer for a user without a cross-signing identity: since
//!   0.19 a `m.unverified` notice per device (0.18 panicked in `share_room_key`).

use std::{collections::BTreeSet, sync::Mutex};

use matrix_sdk_crypto::{CollectStrategy, EncryptionSettings};
use ruma::{api::client::keys::claim_keys, RoomId, UserId};
use serde_json::Value;

use super::{response, Device, Server, ALICE, BOB};

const ROOM: &str = "!contract:example.org";

/// The crate's own share (no withheld layer): its `m.room_key.withheld` contents for `user`'s devices.
async fn crate_withheld_for(alice: &Device, server: &Mutex<Server>, strategy: CollectStrategy, user: &str) -> Vec<Value> {
    let bob = UserId::parse(user).expect("user id");
    if let Some((id, claim)) = alice.machine.get_missing_sessions([bob.as_ref()].into_iter()).await.expect("missing sessions") {
        let wanted = serde_json::to_value(&claim.one_time_keys).expect("claim");
        let body = server.lock().unwrap().claim(alice.user(), alice.device(), &wanted);
        let parsed: claim_keys::v3::Response = response(&body);
        alice.machine.mark_request_as_sent(&id, &parsed).await.expect("mark claim");
    }
    let settings = EncryptionSettings { sharing_strategy: strategy, ..Default::default() };
    let room = RoomId::parse(ROOM).expect("room id");
    let requests = alice.machine.share_room_key(&room, [bob.as_ref()].into_iter(), settings).await.expect("share");
    let mut out = Vec::new();
    for r in &requests {
        if r.event_type.to_string() == "m.room_key.withheld" {
            for devices in r.messages.values() {
                for content in devices.values() {
                    out.push(serde_json::from_str::<Value>(content.json().get()).expect("content"));
                }
            }
        }
        alice
            .machine
            .mark_request_as_sent(&r.txn_id, &ruma::api::client::to_device::send_event_to_device::v3::Response::new())
            .await
            .expect("mark share");
    }
    out
}

/// Alice, who has queried Bob's device (Bob's machine is not needed once his keys are uploaded).
async fn alice_knowing_bob(server: &Mutex<Server>) -> Device {
    let alice = Device::new(server, ALICE, "ALICE").await;
    let _bob = Device::new(server, BOB, "BOB").await;
    alice.track(server, &[ALICE, BOB]).await;
    alice
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object().expect("object").keys().map(String::as_str).collect()
}

#[tokio::test]
async fn the_crates_room_notice_has_the_fields_the_layer_rewrites() {
    let server = Mutex::new(Server::default());
    let alice = alice_knowing_bob(&server).await;

    let notices = crate_withheld_for(&alice, &server, CollectStrategy::OnlyTrustedDevices, BOB).await;
    assert_eq!(notices.len(), 1, "one notice for Bob's unverified device: {notices:?}");
    let n = &notices[0];
    assert_eq!(keys(n), BTreeSet::from(["algorithm", "code", "from_device", "reason", "room_id", "sender_key", "session_id"]));
    assert_eq!(n["code"], "m.unverified");
    assert_eq!(n["room_id"], ROOM);
    assert_eq!(n["algorithm"], "m.megolm.v1.aes-sha2");
    assert_eq!(n["from_device"], "ALICE");
    assert_eq!(n["sender_key"], alice.curve25519());
}

#[tokio::test]
async fn the_crate_names_a_device_without_one_time_keys_once_in_a_no_olm_notice() {
    let server = Mutex::new(Server::default());
    let alice = alice_knowing_bob(&server).await;
    server.lock().unwrap().exhaust(BOB, "BOB");

    let first = crate_withheld_for(&alice, &server, CollectStrategy::AllDevices, BOB).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["code"], "m.no_olm");
    assert_eq!(keys(&first[0]), BTreeSet::from(["algorithm", "code", "from_device", "reason", "sender_key"]), "no room, no session");

    // A new session for the room: the crate's once-only flag, set when the notice was marked as
    // sent, keeps Bob's device off its list.
    let room = RoomId::parse(ROOM).expect("room id");
    alice.machine.discard_room_key(&room).await.expect("discard");
    let second = crate_withheld_for(&alice, &server, CollectStrategy::AllDevices, BOB).await;
    assert!(second.iter().all(|n| n["code"] != "m.no_olm"), "{second:?}");
}

#[tokio::test]
async fn the_forwarding_switch_holds_its_setting() {
    let server = Mutex::new(Server::default());
    let alice = Device::new(&server, ALICE, "ALICE").await;
    assert!(alice.machine.is_room_key_forwarding_enabled(), "on by default with the automatic-room-key-forwarding feature");
    alice.machine.set_room_key_forwarding_enabled(false);
    assert!(!alice.machine.is_room_key_forwarding_enabled());
}

#[tokio::test]
async fn the_identity_based_strategy_withholds_the_devices_of_a_user_without_an_identity() {
    let server = Mutex::new(Server::default());
    let alice = alice_knowing_bob(&server).await;
    // The strategy requires the sender's own identity; Bob has none.
    alice.machine.bootstrap_cross_signing(false).await.expect("bootstrap");

    let notices = crate_withheld_for(&alice, &server, CollectStrategy::IdentityBasedStrategy, BOB).await;
    assert_eq!(notices.len(), 1, "one notice for Bob's device: {notices:?}");
    assert_eq!(notices[0]["code"], "m.unverified");
    assert_eq!(notices[0]["room_id"], ROOM);
}
