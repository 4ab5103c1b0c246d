//! Interactive verification: requests, SAS (emoji and decimals) and QR codes (`m.qr_code.show.v1`,
//! `m.qr_code.scan.v1`, `m.reciprocate.v1`), over to-device messages or in a room.
//!
//! The crate's verification machine receives the `m.key.verification.*` to-device events
//! through `receive_sync_changes`, and the room events (a request is an `m.room.message` with
//! `msgtype: m.key.verification.request`; the rest relate to it with `m.relates_to`) through
//! `receive_room_verification_event`, once decrypted. It queues most of its answers in
//! `outgoing_requests`; the calls here read a flow's state as one typed snapshot and return the
//! requests a user action produces. A flow is named by the other user and its flow id: the
//! transaction id of a to-device flow, the event id of the request of an in-room flow. Room
//! answers come out as `room_message` requests in the clear: encrypting them in an encrypted
//! room is the caller's part (the crate leaves it to its caller too).

use matrix_sdk_crypto::{
    matrix_sdk_qrcode::QrVerificationData,
    types::requests::{OutgoingRequest, OutgoingVerificationRequest},
    OlmMachine, QrVerification, QrVerificationState, Sas, SasState, ScanError, UserIdentity, Verification, VerificationRequest,
    VerificationRequestState,
};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::events::{
    key::verification::{cancel::CancelCode, VerificationMethod},
    room::message::RoomMessageEventContent,
    AnyMessageLikeEvent,
};

use crate::{
    errors::{self, invalid},
    ids,
    machine::NativeMachine,
    requests::{self, NativeRequest},
    trust::signature_upload,
};

/// Where a verification flow is.
#[napi(string_enum = "snake_case")]
pub enum VerificationPhase {
    /// We sent a request; waiting for the other side to accept it.
    Created,
    /// The other side sent a request; accept or cancel it.
    Requested,
    /// Both sides accepted; either may start SAS, show a QR code or scan the other's.
    Ready,
    /// We show a QR code (`showQrCode`); waiting for the other side to scan it.
    QrShown,
    /// The other side says it scanned our QR code (`m.reciprocate.v1`): confirm with
    /// `confirmQrScan` once its user confirms on their screen, or cancel.
    QrScanned,
    /// We scanned the other side's QR code and told it so; waiting for its confirmation.
    Reciprocated,
    /// SAS was started; waiting for the other side to accept it (or for us to).
    Started,
    /// SAS was accepted; the keys are being exchanged.
    Accepted,
    /// The short authentication string is ready to compare: confirm it or cancel as a mismatch.
    KeysExchanged,
    /// We confirmed; waiting for the other side's confirmation.
    Confirmed,
    /// Both confirmed: the other device (or user) is verified.
    Done,
    /// The flow was cancelled; `cancel` says by whom and why.
    Cancelled,
}

/// One emoji of the SAS.
#[napi(object)]
pub struct SasEmoji {
    /// The emoji, e.g. `🐶`.
    pub symbol: String,
    /// Its English name from the spec's table, e.g. `Dog`.
    pub description: String,
}

/// Why a flow was cancelled.
#[napi(object)]
pub struct VerificationCancelInfo {
    /// The cancel code, e.g. `m.user`, `m.mismatched_sas`, `m.timeout`.
    pub code: String,
    /// A human-readable reason.
    pub reason: String,
    /// Whether we cancelled it.
    pub by_us: bool,
}

/// A verification method to offer, in a request or when accepting one.
#[napi(string_enum = "snake_case")]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum VerificationMethodKind {
    /// SAS: compare emoji or decimals (`m.sas.v1`).
    Sas,
    /// We can show a QR code for the other side to scan (`m.qr_code.show.v1`, `m.reciprocate.v1`).
    QrShow,
    /// We can scan the other side's QR code, given its bytes (`m.qr_code.scan.v1`, `m.reciprocate.v1`).
    QrScan,
}

/// The spec's method names for `kinds` (SAS alone when none are given).
fn methods_of(kinds: Option<Vec<VerificationMethodKind>>) -> Result<Vec<VerificationMethod>> {
    let kinds = kinds.unwrap_or_else(|| vec![VerificationMethodKind::Sas]);
    if kinds.is_empty() {
        return Err(invalid("methods", "must name at least one method"));
    }
    let mut out = Vec::new();
    for kind in kinds {
        let add: &[VerificationMethod] = match kind {
            VerificationMethodKind::Sas => &[VerificationMethod::SasV1],
            VerificationMethodKind::QrShow => &[VerificationMethod::QrCodeShowV1, VerificationMethod::ReciprocateV1],
            VerificationMethodKind::QrScan => &[VerificationMethod::QrCodeScanV1, VerificationMethod::ReciprocateV1],
        };
        for m in add {
            if !out.contains(m) {
                out.push(m.clone());
            }
        }
    }
    Ok(out)
}

/// A verification flow, as of now.
#[napi(object)]
pub struct VerificationInfo {
    /// The flow id: the transaction id of a to-device flow, the event id of the request of an
    /// in-room flow.
    pub flow_id: String,
    /// The room of an in-room flow; null for a to-device flow.
    pub room_id: Option<String>,
    /// The other user (our own user when verifying another of our devices).
    pub other_user_id: String,
    /// The other device, once known.
    pub other_device_id: Option<String>,
    /// Whether we sent the request.
    pub we_started: bool,
    /// Whether the other side is another device of our own user.
    pub is_self_verification: bool,
    /// Where the flow is.
    pub phase: VerificationPhase,
    /// The seven SAS emoji in phase `keys_exchanged` (when both sides support emoji); later
    /// phases may leave them out.
    pub emoji: Option<Vec<SasEmoji>>,
    /// The three SAS numbers in phase `keys_exchanged`; later phases may leave them out.
    pub decimals: Option<Vec<u32>>,
    /// Set in phase `cancelled`.
    pub cancel: Option<VerificationCancelInfo>,
    /// The methods the other side offered, as the spec names them (e.g. `m.sas.v1`,
    /// `m.qr_code.scan.v1`), once known.
    pub their_methods: Option<Vec<String>>,
}

fn cancel_info(info: &matrix_sdk_crypto::CancelInfo) -> VerificationCancelInfo {
    VerificationCancelInfo {
        code: info.cancel_code().as_str().to_owned(),
        reason: info.reason().to_owned(),
        by_us: info.cancelled_by_us(),
    }
}

fn sas_phase(sas: &Sas) -> (VerificationPhase, Option<VerificationCancelInfo>) {
    match sas.state() {
        SasState::Created { .. } | SasState::Started { .. } => (VerificationPhase::Started, None),
        SasState::Accepted { .. } => (VerificationPhase::Accepted, None),
        SasState::KeysExchanged { .. } => (VerificationPhase::KeysExchanged, None),
        SasState::Confirmed => (VerificationPhase::Confirmed, None),
        SasState::Done { .. } => (VerificationPhase::Done, None),
        SasState::Cancelled(info) => (VerificationPhase::Cancelled, Some(cancel_info(&info))),
    }
}

fn sas_strings(sas: &Sas) -> (Option<Vec<SasEmoji>>, Option<Vec<u32>>) {
    let emoji = sas.emoji().map(|list| {
        list.iter().map(|e| SasEmoji { symbol: e.symbol.to_owned(), description: e.description.to_owned() }).collect()
    });
    let decimals = sas.decimals().map(|(a, b, c)| vec![a.into(), b.into(), c.into()]);
    (emoji, decimals)
}

/// The snapshot of a request (and the SAS it turned into, if any).
fn request_info(request: &VerificationRequest) -> VerificationInfo {
    let mut info = VerificationInfo {
        flow_id: request.flow_id().as_str().to_owned(),
        room_id: request.room_id().map(|r| r.to_string()),
        other_user_id: request.other_user().to_string(),
        other_device_id: request.other_device_id().map(|d| d.to_string()),
        we_started: request.we_started(),
        is_self_verification: request.is_self_verification(),
        phase: VerificationPhase::Created,
        emoji: None,
        decimals: None,
        cancel: None,
        their_methods: request.their_supported_methods().map(|list| list.iter().map(|m| m.as_str().to_owned()).collect()),
    };
    match request.state() {
        VerificationRequestState::Created { .. } => {}
        VerificationRequestState::Requested { .. } => info.phase = VerificationPhase::Requested,
        VerificationRequestState::Ready { .. } => info.phase = VerificationPhase::Ready,
        VerificationRequestState::Transitioned { verification, .. } => match verification {
            Verification::SasV1(sas) => sas_into(&mut info, &sas),
            Verification::QrV1(qr) => qr_into(&mut info, &qr),
            // The enum is non-exhaustive; a later method would show as started.
            _ => info.phase = VerificationPhase::Started,
        },
        VerificationRequestState::Done => info.phase = VerificationPhase::Done,
        VerificationRequestState::Cancelled(c) => {
            info.phase = VerificationPhase::Cancelled;
            info.cancel = Some(cancel_info(&c));
        }
    }
    info
}

fn sas_into(info: &mut VerificationInfo, sas: &Sas) {
    let (phase, cancel) = sas_phase(sas);
    info.phase = phase;
    info.cancel = cancel;
    info.other_device_id = Some(sas.other_device_id().to_string());
    if matches!(info.phase, VerificationPhase::KeysExchanged | VerificationPhase::Confirmed | VerificationPhase::Done) {
        (info.emoji, info.decimals) = sas_strings(sas);
    }
}

fn qr_into(info: &mut VerificationInfo, qr: &QrVerification) {
    info.other_device_id = Some(qr.other_device_id().to_string());
    info.phase = match qr.state() {
        QrVerificationState::Started => VerificationPhase::QrShown,
        QrVerificationState::Scanned => VerificationPhase::QrScanned,
        QrVerificationState::Confirmed => VerificationPhase::Confirmed,
        QrVerificationState::Reciprocated => VerificationPhase::Reciprocated,
        QrVerificationState::Done { .. } => VerificationPhase::Done,
        QrVerificationState::Cancelled(c) => {
            info.cancel = Some(cancel_info(&c));
            VerificationPhase::Cancelled
        }
    };
}

/// The snapshot of a SAS flow started without a request (the legacy `m.key.verification.start`).
fn sas_info(sas: &Sas) -> VerificationInfo {
    let mut info = VerificationInfo {
        flow_id: sas.flow_id().as_str().to_owned(),
        room_id: sas.room_id().map(|r| r.to_string()),
        other_user_id: sas.other_user_id().to_string(),
        other_device_id: Some(sas.other_device_id().to_string()),
        we_started: sas.we_started(),
        is_self_verification: sas.is_self_verification(),
        phase: VerificationPhase::Started,
        emoji: None,
        decimals: None,
        cancel: None,
        their_methods: None,
    };
    sas_into(&mut info, sas);
    info
}

fn to_native(request: OutgoingVerificationRequest) -> Result<NativeRequest> {
    requests::outgoing(&OutgoingRequest::from(request))
}

fn unknown_flow(user: &str, flow_id: &str) -> Error {
    invalid("flowId", format!("no verification {flow_id:?} with {user} is known (finished long ago, never started, or another device's)"))
}

/// A request plus the SAS or QR verification it turned into.
struct Flow {
    request: Option<VerificationRequest>,
    sas: Option<Sas>,
    qr: Option<QrVerification>,
}

fn find(machine: &OlmMachine, user: &ruma::UserId, flow_id: &str) -> Result<Flow> {
    let request = machine.get_verification_request(user, flow_id);
    let (sas, qr) = match machine.get_verification(user, flow_id) {
        Some(Verification::SasV1(sas)) => (Some(*sas), None),
        Some(Verification::QrV1(qr)) => (None, Some(*qr)),
        _ => (None, None),
    };
    if request.is_none() && sas.is_none() {
        return Err(unknown_flow(user.as_str(), flow_id));
    }
    Ok(Flow { request, sas, qr })
}

fn flow_info(flow: &Flow) -> VerificationInfo {
    match (&flow.request, &flow.sas) {
        (Some(r), _) => request_info(r),
        (None, Some(s)) => sas_info(s),
        (None, None) => unreachable!("find() returns a request or a SAS"),
    }
}

/// The QR code a flow shows, and the flow.
#[napi(object, object_from_js = false)]
pub struct VerificationQrCode {
    /// The bytes to encode in the QR code (byte mode), as the spec lays them out.
    pub bytes: Buffer,
    /// The flow, in phase `qr_shown`.
    pub verification: VerificationInfo,
}

/// The other user's identity, for an in-room request.
async fn other_identity(machine: &OlmMachine, user: &ruma::UserId) -> Result<matrix_sdk_crypto::OtherUserIdentity> {
    match machine.get_identity(user, None).await.map_err(errors::store)? {
        Some(UserIdentity::Other(identity)) => Ok(identity),
        Some(UserIdentity::Own(_)) => Err(invalid("userId", "is our own user: verify our other devices with requestVerification(userId, deviceId) (to-device)")),
        None => Err(invalid("userId", format!("{user} has no cross-signing identity we know of (in-room verification verifies a user's identity; query their keys first, or verify a device with requestVerification)"))),
    }
}

/// What a verification action returns: the requests to send now and the flow afterwards.
#[napi(object, object_from_js = false)]
pub struct VerificationAction {
    /// Send these (to-device messages or room messages, and a signature upload once verified),
    /// in order.
    pub requests: Vec<NativeRequest>,
    /// The flow after the action.
    pub verification: VerificationInfo,
}

impl NativeMachine {
    fn action(&self, requests: Vec<NativeRequest>, flow: &Flow) -> VerificationAction {
        self.remember(&requests);
        VerificationAction { requests, verification: flow_info(flow) }
    }
}

#[napi]
impl NativeMachine {
    /// A verification flow with `userId`, or null when none by that id is known.
    #[napi]
    pub fn get_verification(&self, user_id: String, flow_id: String) -> Result<Option<VerificationInfo>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        Ok(find(&machine, &user, &flow_id).ok().map(|f| flow_info(&f)))
    }

    /// Every verification request with `userId` the machine knows (any phase).
    #[napi]
    pub fn get_verifications(&self, user_id: String) -> Result<Vec<VerificationInfo>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        Ok(machine.get_verification_requests(&user).iter().map(request_info).collect())
    }

    /// Ask a device to verify (to-device): another device of ours or another user's device,
    /// offering `methods` (default: SAS).
    #[napi]
    pub async fn request_device_verification(
        &self,
        user_id: String,
        device_id: String,
        methods: Option<Vec<VerificationMethodKind>>,
    ) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let device_id = ids::device_id("deviceId", &device_id)?;
        let device = machine
            .get_device(&user, &device_id, None)
            .await
            .map_err(errors::store)?
            .ok_or_else(|| invalid("deviceId", format!("no known device {device_id} of {user}; query their keys first")))?;
        let (request, outgoing) = device.request_verification_with_methods(methods_of(methods)?);
        let flow = Flow { request: Some(request), sas: None, qr: None };
        Ok(self.action(vec![to_native(outgoing)?], &flow))
    }

    /// The content of an in-room verification request to `userId` (an `m.room.message` with
    /// `msgtype: m.key.verification.request`, as JSON), offering `methods` (default: SAS).
    /// Send it to a room shared with the user (encrypted in an encrypted room), then call
    /// `requestVerificationInRoom` with the event id. In-room verification verifies the other
    /// user's identity, so it needs their cross-signing identity (query their keys first).
    #[napi]
    pub async fn verification_request_content(&self, user_id: String, methods: Option<Vec<VerificationMethodKind>>) -> Result<String> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let identity = other_identity(&machine, &user).await?;
        let content = RoomMessageEventContent::new(identity.verification_request_content(Some(methods_of(methods)?)));
        serde_json::to_string(&content).map_err(errors::internal)
    }

    /// Starts tracking the in-room request that `verificationRequestContent` made, once sent as
    /// event `eventId` in `roomId`; resolves in phase `created` with the event id as flow id.
    /// `methods` must be the ones the content offered.
    #[napi]
    pub async fn request_verification_in_room(
        &self,
        user_id: String,
        room_id: String,
        event_id: String,
        methods: Option<Vec<VerificationMethodKind>>,
    ) -> Result<VerificationInfo> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let room = ids::room_id("roomId", &room_id)?;
        let event = ruma::OwnedEventId::try_from(event_id.as_str()).map_err(|e| invalid("eventId", format!("is not an event id ({e})")))?;
        let identity = other_identity(&machine, &user).await?;
        let request = identity.request_verification(&room, &event, Some(methods_of(methods)?));
        Ok(request_info(&request))
    }

    /// Feeds a room event of the verification flows (decrypted, or as received in an
    /// unencrypted room) to the machine: an `m.room.message` with `msgtype:
    /// m.key.verification.request` or an `m.key.verification.*` event relating to one. Other
    /// events are ignored. The sender's devices must be known before a request arrives (the
    /// crate ignores a request from a device it does not know). Returns the flow the event
    /// belongs to, when the machine knows it.
    #[napi]
    pub async fn receive_room_verification_event(&self, room_id: String, event_json: String) -> Result<Option<VerificationInfo>> {
        let machine = self.machine()?;
        let room = ids::room_id("roomId", &room_id)?;
        let mut value: serde_json::Value = errors::parse_json("event", &event_json)?;
        let Some(object) = value.as_object_mut() else {
            return Err(invalid("event", "must be a JSON object"));
        };
        // Timeline events from /sync carry no room id.
        object.insert("room_id".to_owned(), room.as_str().into());
        let sender = match object.get("sender").and_then(|v| v.as_str()) {
            Some(s) => ids::user_id("event.sender", s)?,
            None => return Err(invalid("event.sender", "must be a user id")),
        };
        let flow_id = match (object.get("type").and_then(|t| t.as_str()), object.get("content")) {
            (Some("m.room.message"), Some(c)) if c.get("msgtype").and_then(|m| m.as_str()) == Some("m.key.verification.request") => {
                object.get("event_id").and_then(|e| e.as_str()).map(str::to_owned)
            }
            (Some(t), Some(c)) if t.starts_with("m.key.verification.") => {
                c.pointer("/m.relates_to/event_id").and_then(|e| e.as_str()).map(str::to_owned)
            }
            _ => None,
        };
        let Some(flow_id) = flow_id else { return Ok(None) };
        let event: AnyMessageLikeEvent = match serde_json::from_value(value) {
            Ok(e) => e,
            // A verification event the crate cannot read is no flow's event: it is dropped here,
            // as the crate drops those it reads but does not expect.
            Err(e) => {
                tracing::warn!(target: "matrix_crypto_node::verification", %room, %flow_id, "ignored a malformed verification event: {e}");
                return Ok(None);
            }
        };
        machine.receive_verification_event(&event).await.map_err(errors::store)?;
        Ok(find(&machine, &sender, &flow_id).ok().map(|f| flow_info(&f)))
    }

    /// Shows a QR code in a `ready` flow whose other side can scan (`m.qr_code.scan.v1`) and
    /// where we offered `qr_show`: returns the bytes to encode in the QR code (byte mode) and
    /// the flow, now in phase `qr_shown`. Both users need cross-signing identities (for a flow
    /// with another user: ours with its private keys, and theirs). Sends nothing.
    #[napi]
    pub async fn show_qr_code(&self, user_id: String, flow_id: String) -> Result<VerificationQrCode> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let mut flow = find(&machine, &user, &flow_id)?;
        let qr = match &flow.qr {
            Some(qr) if matches!(qr.state(), QrVerificationState::Started) => qr.clone(),
            _ => {
                let request = flow.request.clone().ok_or_else(|| unknown_flow(&user_id, &flow_id))?;
                request.generate_qr_code().await.map_err(errors::store)?.ok_or_else(|| {
                    invalid(
                        "flowId",
                        format!(
                            "verification {flow_id:?} cannot show a QR code ({}; it needs phase ready, qr_show among our methods, m.qr_code.scan.v1 among theirs, and cross-signing identities on both sides)",
                            phase_name(&flow)
                        ),
                    )
                })?
            }
        };
        let bytes = qr.to_bytes().map_err(|e| invalid("flowId", format!("the QR code of {flow_id:?} cannot be encoded ({e})")))?;
        flow.qr = Some(qr);
        Ok(VerificationQrCode { bytes: bytes.into(), verification: flow_info(&flow) })
    }

    /// Scans the other side's QR code (its bytes, as decoded from the image) in a `ready` flow:
    /// checks the keys it carries against the ones we know and sends `m.reciprocate.v1`; the
    /// flow is then `reciprocated` until the other side confirms (`done`). A code for another
    /// flow, or with keys that do not match the ones we know, is refused and the flow stays as
    /// it was (cancel it if a mismatch means someone interferes).
    #[napi]
    pub async fn scan_qr_code(&self, user_id: String, flow_id: String, data: Buffer) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let mut flow = find(&machine, &user, &flow_id)?;
        let request = flow.request.clone().ok_or_else(|| unknown_flow(&user_id, &flow_id))?;
        let data = QrVerificationData::from_bytes(&data[..]).map_err(|e| invalid("qrCode", format!("is not a Matrix verification QR code ({e})")))?;
        let qr = match request.scan_qr_code(data).await {
            Ok(Some(qr)) => qr,
            Ok(None) => return Err(invalid("flowId", format!("verification {flow_id:?} is not ready to scan a QR code ({})", phase_name(&flow)))),
            Err(ScanError::Store(e)) => return Err(errors::store(e)),
            Err(e) => return Err(invalid("qrCode", format!("does not match this verification ({e})"))),
        };
        let out = qr.reciprocate().into_iter().map(to_native).collect::<Result<Vec<_>>>()?;
        flow.qr = Some(qr);
        Ok(self.action(out, &flow))
    }

    /// Confirms that the other side scanned our QR code (phase `qr_scanned`): sends
    /// `m.key.verification.done`; the flow is done once the other side's arrives, and the
    /// signature of the verified device or user comes out of `outgoingRequests` then.
    #[napi]
    pub fn confirm_qr_scan(&self, user_id: String, flow_id: String) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let flow = find(&machine, &user, &flow_id)?;
        let qr = flow.qr.as_ref().filter(|q| q.has_been_scanned()).ok_or_else(|| {
            invalid("flowId", format!("nobody scanned a QR code of verification {flow_id:?} ({})", phase_name(&flow)))
        })?;
        let out = qr.confirm_scanning().into_iter().map(to_native).collect::<Result<Vec<_>>>()?;
        Ok(self.action(out, &flow))
    }

    /// Accept a request (phase `requested`), offering `methods` (default: SAS).
    #[napi]
    pub fn accept_verification(&self, user_id: String, flow_id: String, methods: Option<Vec<VerificationMethodKind>>) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let flow = find(&machine, &user, &flow_id)?;
        let request = flow.request.as_ref().ok_or_else(|| unknown_flow(&user_id, &flow_id))?;
        let out = request
            .accept_with_methods(methods_of(methods)?)
            .ok_or_else(|| invalid("flowId", format!("verification {flow_id:?} is not waiting to be accepted ({})", phase_name(&flow))))?;
        Ok(self.action(vec![to_native(out)?], &flow))
    }

    /// Start SAS on a ready request, or accept the SAS the other side started.
    #[napi]
    pub async fn start_sas(&self, user_id: String, flow_id: String) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let mut flow = find(&machine, &user, &flow_id)?;
        if let Some(sas) = &flow.sas {
            if !sas.we_started() && !sas.has_been_accepted() {
                let out = sas.accept().into_iter().map(to_native).collect::<Result<Vec<_>>>()?;
                return Ok(self.action(out, &flow));
            }
            return Err(invalid("flowId", format!("SAS of {flow_id:?} was already started and accepted")));
        }
        let request = flow.request.clone().ok_or_else(|| unknown_flow(&user_id, &flow_id))?;
        let (sas, out) = request
            .start_sas()
            .await
            .map_err(errors::store)?
            .ok_or_else(|| invalid("flowId", format!("verification {flow_id:?} is not ready for SAS ({})", phase_name(&flow))))?;
        flow.sas = Some(sas);
        Ok(self.action(vec![to_native(out)?], &flow))
    }

    /// Confirm that the SAS matches (phase `keys_exchanged`). Returns the MAC and, once both
    /// sides confirmed, the signature of the verified device or user to upload.
    #[napi]
    pub async fn confirm_sas(&self, user_id: String, flow_id: String) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let flow = find(&machine, &user, &flow_id)?;
        let sas = flow.sas.as_ref().ok_or_else(|| invalid("flowId", format!("verification {flow_id:?} has no SAS to confirm")))?;
        if !sas.can_be_presented() {
            return Err(invalid("flowId", format!("the SAS of {flow_id:?} is not ready to compare ({})", phase_name(&flow))));
        }
        let (out, signatures) = sas.confirm().await.map_err(errors::store)?;
        let mut list = out.into_iter().map(to_native).collect::<Result<Vec<_>>>()?;
        if let Some(s) = signatures {
            list.push(signature_upload(&s.signed_keys)?);
        }
        Ok(self.action(list, &flow))
    }

    /// Cancel a flow with a cancel code: `m.user` (default), `m.mismatched_sas` (the SAS did not
    /// match) or any other `m.*` code.
    #[napi]
    pub fn cancel_verification(&self, user_id: String, flow_id: String, code: Option<String>) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let flow = find(&machine, &user, &flow_id)?;
        let code = CancelCode::from(code.as_deref().unwrap_or("m.user"));
        let out = match (&flow.sas, &flow.qr, &flow.request) {
            (Some(sas), _, _) => sas.cancel_with_code(code),
            (None, Some(qr), _) => qr.cancel_with_code(code),
            (None, None, Some(r)) if code == CancelCode::User => r.cancel(),
            (None, None, Some(_)) => {
                return Err(invalid("code", "a request without SAS or QR code can only be cancelled with m.user"));
            }
            (None, None, None) => None,
        };
        let list = out.into_iter().map(to_native).collect::<Result<Vec<_>>>()?;
        Ok(self.action(list, &flow))
    }
}

fn phase_name(flow: &Flow) -> String {
    let info = flow_info(flow);
    format!("it is {}", match info.phase {
        VerificationPhase::Created => "created",
        VerificationPhase::Requested => "requested",
        VerificationPhase::Ready => "ready",
        VerificationPhase::QrShown => "qr_shown",
        VerificationPhase::QrScanned => "qr_scanned",
        VerificationPhase::Reciprocated => "reciprocated",
        VerificationPhase::Started => "started",
        VerificationPhase::Accepted => "accepted",
        VerificationPhase::KeysExchanged => "keys_exchanged",
        VerificationPhase::Confirmed => "confirmed",
        VerificationPhase::Done => "done",
        VerificationPhase::Cancelled => "cancelled",
    })
}
