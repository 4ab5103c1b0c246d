//! The withheld steps after a sync batch and after a request was sent, one call each, so the
//! binding orchestrates nothing and the steps are tested at the machine level
//! (`withheld/tests/`).
//!
//! After a sync batch, in order:
//! 1. every device that sent us an Olm-encrypted event has a working Olm session: its
//!    `m.no_olm` rule re-arms (MSC2399 sender rule 3);
//! 2. withheld notices are validated and recorded, and forwarded keys' `withheld` kept;
//! 3. trusted `m.no_olm` notices are answered with a new Olm session and an `m.dummy`
//!    (recipient rule 2), unless the same device showed a working channel later in the batch;
//! 4. room-key requests are answered.

use matrix_sdk_common::deserialized_responses::{AlgorithmInfo, ProcessedToDeviceEvent};
use matrix_sdk_crypto::{store::types::RoomKeyInfo, OlmMachine};
use ruma::{api::client::keys::claim_keys::v3::Response as ClaimResponse, UserId};

use super::{
    inbound::{self, Reported},
    reactions::KeyRequestAnswer,
    received::{Notice, Verdict},
    OwnSent, Withheld, WithheldError,
};

/// What the withheld layer made of a sync batch.
pub struct SyncOutcome {
    /// Every withheld notice in the batch, with its verdict.
    pub notices: Vec<Reported>,
    /// How each room-key request was answered.
    pub answers: Vec<KeyRequestAnswer>,
    /// Trusted `m.no_olm` notices that started a new Olm session and an `m.dummy`.
    pub no_olm_reactions: usize,
}

/// The senders of Olm-encrypted events we decrypted: (position in the batch, user, device if
/// the crate names it, Curve25519 key). Each is proof of a working Olm session with that device.
pub fn olm_senders(events: &[ProcessedToDeviceEvent]) -> Vec<(usize, String, Option<String>, String)> {
    events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match e {
            ProcessedToDeviceEvent::Decrypted { encryption_info, .. } => match &encryption_info.algorithm_info {
                AlgorithmInfo::OlmV1Curve25519AesSha2 { curve25519_public_key_base64 } => Some((
                    i,
                    encryption_info.sender.to_string(),
                    encryption_info.sender_device.as_ref().map(|d| d.to_string()),
                    curve25519_public_key_base64.clone(),
                )),
                AlgorithmInfo::MegolmV1AesSha2 { .. } => None,
            },
            _ => None,
        })
        .collect()
}

impl Withheld {
    /// Run the withheld steps for a batch the crate has processed (see the module doc).
    /// Its ledger and notice records are written in as few transactions as possible (see
    /// [`crate::store::batch`]), all before it returns.
    pub async fn after_sync(
        &self,
        machine: &OlmMachine,
        processed: &[ProcessedToDeviceEvent],
        room_keys: &[RoomKeyInfo],
    ) -> Result<SyncOutcome, WithheldError> {
        crate::store::batch::batched(
            &**machine.store(),
            async {
                let senders = olm_senders(processed);
                let mut seen: Vec<(&str, &str)> = Vec::new();
                for (_, user, device, curve) in &senders {
                    if seen.contains(&(user.as_str(), curve.as_str())) {
                        continue;
                    }
                    seen.push((user, curve));
                    let device = match device {
                        Some(d) => Some(d.clone()),
                        // The crate leaves the device out for some events (m.room_key): find it by its key.
                        None => match UserId::parse(user) {
                            Ok(user_id) => machine
                                .get_user_devices(&user_id, None)
                                .await
                                .map_err(WithheldError::Store)?
                                .devices()
                                .find(|d| d.curve25519_key().is_some_and(|k| k.to_base64() == *curve))
                                .map(|d| d.device_id().to_string()),
                            Err(_) => None,
                        },
                    };
                    if let Some(device) = device {
                        self.olm_session_established(machine, user, &device).await?;
                    }
                }
                let notices = inbound::process(machine, &self.metrics, processed, room_keys, self.now()).await?;
                let mut no_olm_reactions = 0;
                for n in &notices {
                    let (Notice::NoOlm(record), Verdict::Trusted) = (&n.notice, n.verdict) else { continue };
                    // A later message over Olm from the same device shows its channel to us works.
                    let channel_shown = senders.iter().any(|(i, user, _, curve)| *i > n.position && *user == record.sender && *curve == record.sender_key);
                    if !channel_shown && self.react_to_no_olm(machine, record).await? {
                        no_olm_reactions += 1;
                    }
                }
                let answers = self.answer_key_requests(machine, processed).await?;
                Ok(SyncOutcome { notices, answers, no_olm_reactions })
            },
            WithheldError::Store,
        )
        .await
    }

    /// Run the withheld steps after request `id` was sent and, unless it is ours alone, the
    /// crate was given its response: our one-device claims send what waited for their Olm
    /// session, our `m.no_olm` notices are recorded as sent, and a keys/claim response re-arms
    /// the `m.no_olm` rule of every notified device that now has an Olm session.
    pub async fn after_request_sent(&self, machine: &OlmMachine, id: &str, claim: Option<&ClaimResponse>) -> Result<(), WithheldError> {
        crate::store::batch::batched(
            &**machine.store(),
            async {
                if let OwnSent::Claim { user, device, then } = self.mark_own_request_sent(machine, id).await? {
                    self.after_claim(machine, &user, &device, then).await?;
                }
                if let Some(claim) = claim {
                    self.after_keys_claim(machine, claim).await?;
                }
                Ok(())
            },
            WithheldError::Store,
        )
        .await
    }

    /// A claim response creates Olm sessions: re-arm the `m.no_olm` rule of each device that
    /// now has one.
    async fn after_keys_claim(&self, machine: &OlmMachine, claim: &ClaimResponse) -> Result<(), WithheldError> {
        use matrix_sdk_crypto::store::DynCryptoStore;
        let backend: &DynCryptoStore = &**machine.store();
        for (user, devices) in &claim.one_time_keys {
            for device_id in devices.keys() {
                // Only a device notified and not yet re-armed can change: ask the ledger first (one
                // store read per user) and skip the per-device store lookups for every other one.
                let entry = self.no_olm_state(machine, user.as_str(), device_id.as_str()).await?;
                if !entry.is_some_and(|e| !e.rearmed) {
                    continue;
                }
                let Some(device) = machine.get_device(user, device_id, None).await.map_err(WithheldError::Store)? else { continue };
                let Some(curve) = device.curve25519_key() else { continue };
                let has_session =
                    backend.get_sessions(&curve.to_base64()).await.map_err(WithheldError::Store)?.is_some_and(|s| !s.is_empty());
                if has_session {
                    self.olm_session_established(machine, user.as_str(), device_id.as_str()).await?;
                }
            }
        }
        Ok(())
    }
}
