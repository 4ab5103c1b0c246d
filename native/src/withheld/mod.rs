//! MSC2399 withheld semantics on top of matrix-sdk-crypto: the sending policy, the `m.no_olm`
//! ledger, the share summary (and, in their own files, key-request answers, received notices and
//! forwarded-key metadata). Plain Rust, no N-API, so it is unit-tested with `cargo test`.

pub mod backup;
pub mod bundle;
pub mod codes;
pub mod export;
pub mod explain;
pub mod inbound;
pub mod key_requests;
pub mod records;
pub mod received;
pub mod no_olm;
pub mod outgoing;
pub mod policy;
pub mod reactions;
pub mod share;
pub mod sync;
#[cfg(test)]
pub(crate) mod tests;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use matrix_sdk_crypto::{types::requests::ToDeviceRequest, OlmMachine};
use ruma::{api::client::to_device::send_event_to_device::v3::Response as ToDeviceResponse, RoomId, OwnedUserId};

use self::{
    no_olm::{Decision, NoOlmLedger, UserLedger},
    outgoing::{Deferred, Queued},
    policy::SendPolicy,
    share::{DeviceRef, WithheldRecipient},
};

/// Errors of the withheld layer, each keeping its source; `errors.rs` maps them, by variant, to
/// typed JS errors.
#[derive(Debug, thiserror::Error)]
pub enum WithheldError {
    /// The crypto store failed.
    #[error("store: {0}")]
    Store(#[from] matrix_sdk_crypto::CryptoStoreError),
    /// A value of ours or of the crate did not serialise or parse.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A crate operation (sharing, encrypting to a device, marking a request as sent) failed.
    #[error(transparent)]
    Crate(#[from] matrix_sdk_crypto::OlmError),
    /// A backup public key is not a Curve25519 key.
    #[error(transparent)]
    Key(#[from] vodozemac::KeyError),
    /// Encrypting session data to the backup key failed.
    #[error(transparent)]
    BackupEncryption(#[from] vodozemac::pk_encryption::Error),
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where the withheld layer reads the time (ms since the epoch): the system clock, or a test's.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

const NO_OLM_LEDGER_KEY: &str = "matrix-crypto-node.withheld.v1.no_olm_sent";
/// The users that have a ledger value under [`NO_OLM_LEDGER_KEY`], so that looking up a user
/// without one (nearly every recipient of a large share) costs no store read.
const NO_OLM_USERS_KEY: &str = "matrix-crypto-node.withheld.v1.no_olm_users";

/// What a request we created ourselves carries, so marking it sent updates the right ledger.
enum OwnRequest {
    NoOlm(Vec<(String, String)>),
}

/// What marking one of our own requests as sent means for the caller.
pub enum OwnSent {
    /// Not ours: the crate's request.
    NotOurs,
    /// Ours, and nothing more to do.
    Done,
    /// Our one-device claim: give the response to the crate (it creates the Olm session), then
    /// call [`Withheld::after_claim`].
    Claim { user: String, device: String, then: Vec<Deferred> },
}

/// A queued request, and the key request it answers (so a cancellation can withdraw it).
struct QueueEntry {
    request: Queued,
    answers: Option<(String, String, String)>,
}

/// The result of a share: the requests to send and who got what.
pub struct ShareOutcome {
    pub requests: Vec<ToDeviceRequest>,
    pub shared_with: Vec<DeviceRef>,
    pub withheld: Vec<WithheldRecipient>,
}

/// Per-machine withheld state.
pub struct Withheld {
    /// Counters of received notices.
    pub metrics: records::Metrics,
    policy: RwLock<SendPolicy>,
    /// The crate re-issues a pending withheld request on every share until it is marked sent;
    /// remember how we filtered it so every copy is the same.
    filtered: Mutex<HashMap<String, Option<ToDeviceRequest>>>,
    no_olm: tokio::sync::Mutex<NoOlmLedger>,
    own: Mutex<HashMap<String, OwnRequest>>,
    /// Requests we created that `outgoingRequests()` hands out until they are marked sent.
    queue: Mutex<Vec<QueueEntry>>,
    limiter: Mutex<key_requests::Limiter>,
    react_to_no_olm: AtomicBool,
    reaction_lock: tokio::sync::Mutex<()>,
    clock: Clock,
}

impl Withheld {
    pub fn new(policy: SendPolicy, react_to_no_olm: bool) -> Self {
        Self::with_clock(policy, react_to_no_olm, Arc::new(now_ms))
    }

    /// Like [`Withheld::new`], reading the time from `clock` (tests move it forward).
    pub fn with_clock(policy: SendPolicy, react_to_no_olm: bool, clock: Clock) -> Self {
        Self {
            clock,
            queue: Mutex::new(Vec::new()),
            limiter: Mutex::new(key_requests::Limiter::default()),
            react_to_no_olm: AtomicBool::new(react_to_no_olm),
            reaction_lock: tokio::sync::Mutex::new(()),
            metrics: records::Metrics::default(),
            policy: RwLock::new(policy),
            filtered: Mutex::new(HashMap::new()),
            no_olm: tokio::sync::Mutex::new(NoOlmLedger::default()),
            own: Mutex::new(HashMap::new()),
        }
    }

    /// The time now, ms since the epoch.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Whether trusted `m.no_olm` notices trigger a new Olm session and an `m.dummy`.
    pub fn react_to_no_olm_enabled(&self) -> bool {
        self.react_to_no_olm.load(Ordering::Relaxed)
    }

    pub fn set_react_to_no_olm(&self, on: bool) {
        self.react_to_no_olm.store(on, Ordering::Relaxed);
    }

    /// Queue a request for `outgoingRequests()`.
    pub fn enqueue(&self, request: Queued) {
        self.queue.lock().expect("queue").push(QueueEntry { request, answers: None });
    }

    fn enqueue_answer(&self, request: Queued, answers: (&str, &str, &str)) {
        let answers = Some((answers.0.to_owned(), answers.1.to_owned(), answers.2.to_owned()));
        self.queue.lock().expect("queue").push(QueueEntry { request, answers });
    }

    /// Withdraw queued answers to requests that were cancelled before we sent them.
    fn cancel_answers(&self, cancelled: &[(String, String, String)]) {
        if !cancelled.is_empty() {
            self.queue.lock().expect("queue").retain(|e| e.answers.as_ref().is_none_or(|a| !cancelled.contains(a)));
        }
    }

    /// The requests we created that wait to be sent, oldest first.
    pub fn queued(&self) -> Vec<Queued> {
        self.queue.lock().expect("queue").iter().map(|e| e.request.clone()).collect()
    }

    pub fn policy(&self) -> SendPolicy {
        self.policy.read().expect("policy lock").clone()
    }

    pub fn set_policy(&self, policy: SendPolicy) {
        *self.policy.write().expect("policy lock") = policy;
    }

    async fn load_index(machine: &OlmMachine, ledger: &mut NoOlmLedger) -> Result<(), WithheldError> {
        if ledger.index().is_none() {
            let stored: Option<std::collections::BTreeSet<String>> = machine.store().get_value(NO_OLM_USERS_KEY).await.map_err(WithheldError::Store)?;
            ledger.set_index(stored.unwrap_or_default());
        }
        Ok(())
    }

    async fn load_user(machine: &OlmMachine, ledger: &mut NoOlmLedger, user: &str) -> Result<(), WithheldError> {
        if !ledger.is_loaded(user) {
            Self::load_index(machine, ledger).await?;
            let stored: Option<UserLedger> = if ledger.index().is_some_and(|i| i.contains(user)) {
                let key = format!("{NO_OLM_LEDGER_KEY}:{user}");
                machine.store().get_value(&key).await.map_err(WithheldError::Store)?
            } else {
                None
            };
            ledger.load(user, stored.unwrap_or_default());
        }
        Ok(())
    }

    async fn save_user(machine: &OlmMachine, ledger: &mut NoOlmLedger, user: &str) -> Result<(), WithheldError> {
        if let Some(entries) = ledger.user(user) {
            let key = format!("{NO_OLM_LEDGER_KEY}:{user}");
            machine.store().set_value(&key, entries).await.map_err(WithheldError::Store)?;
            Self::load_index(machine, ledger).await?;
            if ledger.add_to_index(user) {
                machine.store().set_value(NO_OLM_USERS_KEY, &ledger.index()).await.map_err(WithheldError::Store)?;
            }
        }
        Ok(())
    }

    /// The re-armed devices of these users (their ledgers loaded as needed; users without a
    /// ledger cost nothing).
    async fn rearmed_devices(&self, machine: &OlmMachine, users: &[OwnedUserId]) -> Result<Vec<(OwnedUserId, ruma::OwnedDeviceId)>, WithheldError> {
        let mut ledger = self.no_olm.lock().await;
        Self::load_index(machine, &mut ledger).await?;
        let mut out = Vec::new();
        for u in users {
            if ledger.index().is_some_and(|i| i.contains(u.as_str())) {
                Self::load_user(machine, &mut ledger, u.as_str()).await?;
                out.extend(ledger.rearmed_devices(u.as_str()).into_iter().map(|d| (u.clone(), d)));
            }
        }
        Ok(out)
    }

    /// Share the room key, then apply the policy and the `m.no_olm` rule to what the crate made.
    ///
    /// The ledger entries of suppressed `m.no_olm` notices are written in the transaction that
    /// saves the crate's once-only flag for the same devices (see [`crate::store::batch`]).
    pub async fn share_room_key(
        &self,
        machine: &OlmMachine,
        room_id: &RoomId,
        users: &[OwnedUserId],
        settings: matrix_sdk_crypto::EncryptionSettings,
        policy_override: Option<SendPolicy>,
    ) -> Result<ShareOutcome, WithheldError> {
        crate::store::batch::batched(
            &**machine.store(),
            async {
                let policy = policy_override.unwrap_or_else(|| self.policy());
                let crate_requests =
                    machine.share_room_key(room_id, users.iter().map(|u| -> &ruma::UserId { u }).collect::<Vec<_>>().into_iter(), settings).await.map_err(WithheldError::Crate)?;

                let mut requests = Vec::new();
                let mut withheld = Vec::new();
                let mut plain: Vec<&ToDeviceRequest> = Vec::new();
                let mut crate_no_olm = Vec::new();
                let mut suppressed_requests: Vec<ruma::OwnedTransactionId> = Vec::new();
                for r in &crate_requests {
                    if r.event_type.to_string() != codes::WITHHELD_EVENT_TYPE {
                        plain.push(r);
                        requests.push((**r).clone());
                        continue;
                    }
                    crate_no_olm.extend(share::crate_no_olm_devices(r)?);
                    let txn = r.txn_id.to_string();
                    let cached = self.filtered.lock().expect("filter cache").get(&txn).cloned();
                    let kept = match cached {
                        Some(kept) => kept,
                        None => {
                            let f = share::filter_crate_request(r, &policy)?;
                            withheld.extend(f.recipients);
                            if f.request.is_none() {
                                // Nothing to send; mark it sent (below, after the ledger's entries are
                                // held, so one transaction saves both) so the crate records the
                                // (suppressed) notices and never re-issues them when the code is
                                // enabled later.
                                suppressed_requests.push(r.txn_id.clone());
                            } else {
                                self.filtered.lock().expect("filter cache").insert(txn, f.request.clone());
                            }
                            f.request
                        }
                    };
                    if let Some(k) = kept {
                        requests.push(k);
                    }
                }
                let shared_with = share::key_recipients(&plain);

                let rearmed = self.rearmed_devices(machine, users).await?;
                let candidates = share::devices_without_olm(machine, room_id, crate_no_olm, rearmed, &shared_with).await?;
                if !candidates.is_empty() {
                    let mut ledger = self.no_olm.lock().await;
                    let mut notify = Vec::new();
                    let mut suppressed_users = Vec::new();
                    for (u, d) in candidates {
                        Self::load_user(machine, &mut ledger, u.as_str()).await?;
                        if ledger.decide(u.as_str(), d.as_str()) == Decision::Skip {
                            continue;
                        }
                        let sent = policy.allows(codes::NO_OLM);
                        withheld.push(WithheldRecipient {
                            user_id: u.to_string(),
                            device_id: d.to_string(),
                            code: codes::NO_OLM.to_owned(),
                            sent,
                        });
                        if sent {
                            notify.push((u, d));
                        } else {
                            ledger.record(u.as_str(), d.as_str(), self.now(), true);
                            suppressed_users.push(u);
                        }
                    }
                    suppressed_users.dedup();
                    for u in suppressed_users {
                        Self::save_user(machine, &mut ledger, u.as_str()).await?;
                    }
                    let keys = machine.identity_keys();
                    for r in share::no_olm_requests(&notify, policy.reason(codes::NO_OLM), &keys.curve25519.to_base64(), machine.device_id().as_str())? {
                        let devices = r
                            .messages
                            .iter()
                            .flat_map(|(u, ds)| ds.keys().map(move |d| (u.to_string(), d.to_string())))
                            .collect();
                        self.own.lock().expect("own requests").insert(r.txn_id.to_string(), OwnRequest::NoOlm(devices));
                        requests.push(r);
                    }
                }
                for txn in suppressed_requests {
                    machine.mark_request_as_sent(&txn, &ToDeviceResponse::new()).await.map_err(WithheldError::Crate)?;
                }
                Ok(ShareOutcome { requests, shared_with, withheld })
            },
            WithheldError::Store,
        )
        .await
    }

    /// Handle the "sent" of a request we created.
    pub async fn mark_own_request_sent(&self, machine: &OlmMachine, id: &str) -> Result<OwnSent, WithheldError> {
        let queued = {
            let mut queue = self.queue.lock().expect("queue");
            let at = queue.iter().position(|e| e.request.id() == id);
            at.map(|i| queue.remove(i).request)
        };
        match queued {
            Some(Queued::Claim { user, device, then, .. }) => return Ok(OwnSent::Claim { user, device, then }),
            Some(Queued::ToDevice(_)) => return Ok(OwnSent::Done),
            None => {}
        }
        let own = self.own.lock().expect("own requests").remove(id);
        match own {
            None => {
                self.filtered.lock().expect("filter cache").remove(id);
                Ok(OwnSent::NotOurs)
            }
            Some(OwnRequest::NoOlm(devices)) => {
                let mut ledger = self.no_olm.lock().await;
                let now = self.now();
                let mut users: Vec<&str> = Vec::new();
                for (u, d) in &devices {
                    Self::load_user(machine, &mut ledger, u).await?;
                    ledger.record(u, d, now, false);
                    users.push(u);
                }
                users.dedup();
                for u in users {
                    Self::save_user(machine, &mut ledger, u).await?;
                }
                Ok(OwnSent::Done)
            }
        }
    }

    /// Whether `id` names a request this layer created that the crate must not see (our
    /// one-device claims are the exception: the crate must process their response).
    pub fn is_own_request(&self, id: &str) -> bool {
        self.own.lock().expect("own requests").contains_key(id)
            || self.queue.lock().expect("queue").iter().any(|e| matches!(&e.request, Queued::ToDevice(r) if r.txn_id.as_str() == id))
    }

    /// An Olm session with a device was established now: re-arm its `m.no_olm` rule.
    pub async fn olm_session_established(&self, machine: &OlmMachine, user: &str, device: &str) -> Result<(), WithheldError> {
        let mut ledger = self.no_olm.lock().await;
        Self::load_user(machine, &mut ledger, user).await?;
        if ledger.session_established(user, device, self.now()) {
            Self::save_user(machine, &mut ledger, user).await?;
        }
        Ok(())
    }

    /// The `m.no_olm` state of a device: `None` if never notified, else (notified_at, rearmed).
    pub async fn no_olm_state(&self, machine: &OlmMachine, user: &str, device: &str) -> Result<Option<no_olm::DeviceEntry>, WithheldError> {
        let mut ledger = self.no_olm.lock().await;
        Self::load_user(machine, &mut ledger, user).await?;
        Ok(ledger.entry(user, device).cloned())
    }
}
