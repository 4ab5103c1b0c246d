//! The reaction to `m.no_olm` (MSC2399 recipient rule 2): a new Olm session and an `m.dummy`,
//! at most once per device per hour, that lets the sender reach us again.

use std::sync::Mutex;

use matrix_sdk_crypto::{CollectStrategy, EncryptionSettings};
use serde_json::{json, Value};

use super::{Device, Server, ALICE, BOB};
use crate::withheld::{codes, reactions::REACTION_INTERVAL_MS, received::Verdict};

const ROOM: &str = "!room:example.org";
const OTHER_ROOM: &str = "!other:example.org";

fn trusted_only() -> EncryptionSettings {
    EncryptionSettings { sharing_strategy: CollectStrategy::OnlyTrustedDevices, ..Default::default() }
}

/// Alice and Bob know each other's devices.
async fn pair() -> (Mutex<Server>, Device, Device) {
    let server = Mutex::new(Server::default());
    let alice = Device::new(&server, ALICE, "ALICE").await;
    let bob = Device::new(&server, BOB, "BOB").await;
    alice.track(&server, &[ALICE, BOB]).await;
    bob.track(&server, &[ALICE, BOB]).await;
    (server, alice, bob)
}

/// The setup: Bob shares in a trusted-only room (claiming Alice's one-time key and
/// creating an Olm session he never uses, as her device is unverified); then Bob's one-time
/// keys run out and Alice's share sends him `m.no_olm`.
async fn unused_session_then_no_olm() -> (Mutex<Server>, Device, Device, Value) {
    let (server, alice, bob) = pair().await;
    let shared = bob.share(&server, OTHER_ROOM, &[ALICE, BOB], trusted_only()).await;
    assert!(shared.withheld.iter().any(|w| w.user_id == ALICE && w.code == codes::UNVERIFIED), "Alice is refused");
    assert_eq!(server.lock().unwrap().claims_of(BOB, ALICE, "ALICE"), 1, "Bob made an Olm session with Alice");

    server.lock().unwrap().exhaust(BOB, "BOB");
    let shared = alice.share(&server, ROOM, &[ALICE, BOB], EncryptionSettings::default()).await;
    assert!(shared.withheld.iter().any(|w| w.user_id == BOB && w.code == codes::NO_OLM && w.sent), "Bob gets m.no_olm");
    let first = alice.encrypt(ROOM, "unreachable").await;
    (server, alice, bob, first)
}

fn forged_no_olm(alice: &Device) -> Value {
    json!({ "type": codes::WITHHELD_EVENT_TYPE, "sender": ALICE,
            "content": codes::no_olm_notice("no channel", &alice.curve25519(), "ALICE") })
}

#[tokio::test]
async fn a_session_never_used_does_not_stop_the_repair() {
    let (server, alice, bob, first) = unused_session_then_no_olm().await;
    let outcome = bob.sync(&server).await;
    assert!(matches!(outcome.notices.as_slice(), [n] if n.verdict == Verdict::Trusted), "one trusted m.no_olm");
    assert_eq!(outcome.no_olm_reactions, 1, "Bob reacts although he has a recent (unused) session with Alice");
    assert_eq!(server.lock().unwrap().claims_of(BOB, ALICE, "ALICE"), 2, "a new claim for the repair");

    // Alice gets the m.dummy (and Bob's earlier m.unverified); the Olm session it came over re-arms her m.no_olm rule.
    alice.sync(&server).await;
    assert!(alice.withheld.no_olm_state(&alice.machine, BOB, "BOB").await.unwrap().is_some_and(|e| e.rearmed));
    alice.machine.discard_room_key(&ruma::RoomId::parse(ROOM).unwrap()).await.unwrap();
    let shared = alice.share(&server, ROOM, &[ALICE, BOB], EncryptionSettings::default()).await;
    assert!(shared.shared_with.iter().any(|d| d.user_id == BOB), "the repaired channel carries Alice's next key");
    let next = alice.encrypt(ROOM, "reachable now").await;
    bob.sync(&server).await;
    assert_eq!(bob.decrypt(&next).await.as_deref(), Ok("reachable now"));
    assert!(bob.decrypt(&first).await.is_err(), "the first message stays withheld");
}

#[tokio::test]
async fn the_reaction_re_arms_after_an_hour_and_not_before() {
    let (server, alice, bob, _) = unused_session_then_no_olm().await;
    assert_eq!(bob.sync(&server).await.no_olm_reactions, 1);
    alice.sync(&server).await;
    let claims = || server.lock().unwrap().claims_of(BOB, ALICE, "ALICE");
    let after_first = claims();

    bob.advance(REACTION_INTERVAL_MS - 60_000);
    let within = bob.sync_with(&server, vec![forged_no_olm(&alice)]).await;
    assert!(matches!(within.notices.as_slice(), [n] if n.verdict == Verdict::Trusted));
    assert_eq!(within.no_olm_reactions, 0, "59 minutes later: no second reaction");
    assert_eq!(claims(), after_first);

    bob.advance(2 * 60_000);
    let later = bob.sync_with(&server, vec![forged_no_olm(&alice)]).await;
    assert_eq!(later.no_olm_reactions, 1, "an hour and a minute after the first reaction: a second one");
    assert_eq!(claims(), after_first + 1);
    assert!(
        server.lock().unwrap().pending(ALICE, "ALICE").iter().any(|e| e["type"] == "m.room.encrypted" && e["sender"] == BOB),
        "a new m.dummy is on its way to Alice"
    );
}

#[tokio::test]
async fn a_later_olm_message_from_the_same_device_shows_the_channel_works() {
    let (server, alice, bob, _) = unused_session_then_no_olm().await;
    assert_eq!(bob.sync(&server).await.no_olm_reactions, 1);
    alice.sync(&server).await;
    bob.advance(2 * REACTION_INTERVAL_MS);
    // Alice, who now has a session with Bob, shares a room key over Olm after a stale notice.
    alice.machine.discard_room_key(&ruma::RoomId::parse(ROOM).unwrap()).await.unwrap();
    alice.share(&server, ROOM, &[ALICE, BOB], EncryptionSettings::default()).await;
    let mut batch = vec![forged_no_olm(&alice)];
    batch.extend(server.lock().unwrap().take_inbox(BOB, "BOB"));
    let outcome = bob.sync_with(&server, batch).await;
    assert_eq!(outcome.no_olm_reactions, 0, "the channel worked after the notice: nothing to repair");
}
