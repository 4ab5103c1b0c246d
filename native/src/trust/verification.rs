//! Interactive verification over to-device messages: requests and SAS (emoji and decimals).
//!
//! The crate's verification machine receives the `m.key.verification.*` to-device events
//! through `receive_sync_changes` and queues most of its answers in `outgoing_requests`; the
//! calls here read a flow's state as one typed snapshot and return the requests a user action
//! produces. A flow is named by the other user and its flow id (the transaction id).
//! In-room verification is not offered: its events would need encrypting in encrypted rooms,
//! which the crate leaves to the caller.

use matrix_sdk_crypto::{
    types::requests::{OutgoingRequest, OutgoingVerificationRequest},
    OlmMachine, Sas, SasState, Verification, VerificationRequest, VerificationRequestState,
};
use napi::bindgen_prelude::*;
use napi_derive::napi;
use ruma::events::key::verification::cancel::CancelCode;

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
    /// Both sides accepted; either may start SAS.
    Ready,
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

/// A verification flow, as of now.
#[napi(object)]
pub struct VerificationInfo {
    /// The flow id: the request's transaction id.
    pub flow_id: String,
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
        other_user_id: request.other_user().to_string(),
        other_device_id: request.other_device_id().map(|d| d.to_string()),
        we_started: request.we_started(),
        is_self_verification: request.is_self_verification(),
        phase: VerificationPhase::Created,
        emoji: None,
        decimals: None,
        cancel: None,
    };
    match request.state() {
        VerificationRequestState::Created { .. } => {}
        VerificationRequestState::Requested { .. } => info.phase = VerificationPhase::Requested,
        VerificationRequestState::Ready { .. } => info.phase = VerificationPhase::Ready,
        VerificationRequestState::Transitioned { verification, .. } => match verification {
            Verification::SasV1(sas) => sas_into(&mut info, &sas),
            // QR codes need the crate's `qrcode` feature, which this build leaves out.
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

/// The snapshot of a SAS flow started without a request (the legacy `m.key.verification.start`).
fn sas_info(sas: &Sas) -> VerificationInfo {
    let mut info = VerificationInfo {
        flow_id: sas.flow_id().as_str().to_owned(),
        other_user_id: sas.other_user_id().to_string(),
        other_device_id: Some(sas.other_device_id().to_string()),
        we_started: sas.we_started(),
        is_self_verification: sas.is_self_verification(),
        phase: VerificationPhase::Started,
        emoji: None,
        decimals: None,
        cancel: None,
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

/// A request plus the SAS it turned into.
struct Flow {
    request: Option<VerificationRequest>,
    sas: Option<Sas>,
}

fn find(machine: &OlmMachine, user: &ruma::UserId, flow_id: &str) -> Result<Flow> {
    let request = machine.get_verification_request(user, flow_id);
    let sas = match machine.get_verification(user, flow_id) {
        Some(Verification::SasV1(sas)) => Some(*sas),
        _ => None,
    };
    if request.is_none() && sas.is_none() {
        return Err(unknown_flow(user.as_str(), flow_id));
    }
    Ok(Flow { request, sas })
}

fn flow_info(flow: &Flow) -> VerificationInfo {
    match (&flow.request, &flow.sas) {
        (Some(r), _) => request_info(r),
        (None, Some(s)) => sas_info(s),
        (None, None) => unreachable!("find() returns a request or a SAS"),
    }
}

/// What a verification action returns: the requests to send now and the flow afterwards.
#[napi(object, object_from_js = false)]
pub struct VerificationAction {
    /// Send these (to-device messages, and a signature upload once verified), in order.
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

    /// Ask a device to verify (to-device): another device of ours or another user's device.
    #[napi]
    pub async fn request_device_verification(&self, user_id: String, device_id: String) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let device_id = ids::device_id("deviceId", &device_id)?;
        let device = machine
            .get_device(&user, &device_id, None)
            .await
            .map_err(errors::store)?
            .ok_or_else(|| invalid("deviceId", format!("no known device {device_id} of {user}; query their keys first")))?;
        let (request, outgoing) = device.request_verification();
        let flow = Flow { request: Some(request), sas: None };
        Ok(self.action(vec![to_native(outgoing)?], &flow))
    }

    /// Accept a request (phase `requested`), advertising SAS.
    #[napi]
    pub fn accept_verification(&self, user_id: String, flow_id: String) -> Result<VerificationAction> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let flow = find(&machine, &user, &flow_id)?;
        let request = flow.request.as_ref().ok_or_else(|| unknown_flow(&user_id, &flow_id))?;
        let out = request
            .accept_with_methods(vec![ruma::events::key::verification::VerificationMethod::SasV1])
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
        let out = match (&flow.sas, &flow.request) {
            (Some(sas), _) => sas.cancel_with_code(code),
            (None, Some(r)) if code == CancelCode::User => r.cancel(),
            (None, Some(_)) => {
                return Err(invalid("code", "a request without SAS can only be cancelled with m.user"));
            }
            (None, None) => None,
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
        VerificationPhase::Started => "started",
        VerificationPhase::Accepted => "accepted",
        VerificationPhase::KeysExchanged => "keys_exchanged",
        VerificationPhase::Confirmed => "confirmed",
        VerificationPhase::Done => "done",
        VerificationPhase::Cancelled => "cancelled",
    })
}
