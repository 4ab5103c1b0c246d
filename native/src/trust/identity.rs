//! Other users' cross-signing identities: whether we verified them, whether the one we first
//! saw ("pinned") changed, and the two ways to settle a change: verify the new identity (sign
//! its master key with our user-signing key) or pin it.
//!
//! The crate shares room keys by identity under the `identity_based` strategy and fails a share
//! under `error_on_verified_user_problem` when a verified user changed identity; these calls are
//! how an application resolves what those report.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use crate::{
    errors::{self, invalid},
    ids,
    machine::NativeMachine,
    requests::NativeRequest,
    trust::cross_signing::missing_key,
};

/// A user's cross-signing identity as we know it.
#[napi(object)]
pub struct UserIdentityInfo {
    /// The user.
    pub user_id: String,
    /// Whether this is our own identity.
    pub is_own: bool,
    /// The public master key (unpadded base64).
    pub master_key: String,
    /// We verified this identity (our user-signing key signed it; for our own identity: our
    /// device trusts it).
    pub is_verified: bool,
    /// We verified an earlier identity of this user, or this one before.
    pub was_previously_verified: bool,
    /// The identity was verified and changed since: clients show a red warning until the new
    /// identity is verified or the verification requirement is withdrawn.
    pub has_verification_violation: bool,
    /// The identity changed since we first saw (pinned) it and needs the user's approval:
    /// verify or `pinIdentity` it. Always false for our own identity.
    pub needs_user_approval: bool,
}

#[napi]
impl NativeMachine {
    /// A user's cross-signing identity, or null when the user has none (or their keys were
    /// never queried).
    #[napi]
    pub async fn get_user_identity(&self, user_id: String) -> Result<Option<UserIdentityInfo>> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let Some(identity) = machine.get_identity(&user, None).await.map_err(errors::store)? else {
            return Ok(None);
        };
        let master = |k: &matrix_sdk_crypto::types::MasterPubkey| {
            k.get_first_key().map(|k| k.to_base64()).unwrap_or_default()
        };
        Ok(Some(match identity {
            matrix_sdk_crypto::UserIdentity::Own(own) => UserIdentityInfo {
                user_id: user.to_string(),
                is_own: true,
                master_key: master(own.master_key()),
                is_verified: own.is_verified(),
                was_previously_verified: own.was_previously_verified(),
                has_verification_violation: own.has_verification_violation(),
                needs_user_approval: false,
            },
            matrix_sdk_crypto::UserIdentity::Other(other) => UserIdentityInfo {
                user_id: user.to_string(),
                is_own: false,
                master_key: master(other.master_key()),
                is_verified: other.is_verified(),
                was_previously_verified: other.was_previously_verified(),
                has_verification_violation: other.has_verification_violation(),
                needs_user_approval: other.identity_needs_user_approval(),
            },
        }))
    }

    /// Verify another user's identity: sign their master key with our user-signing key.
    /// Returns the `signature_upload` request that publishes the signature.
    #[napi]
    pub async fn verify_user(&self, user_id: String) -> Result<NativeRequest> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        let identity = other_identity(&machine, &user).await?;
        if !machine.cross_signing_status().await.has_user_signing {
            return Err(missing_key("user-signing"));
        }
        let request = identity
            .verify()
            .await
            .map_err(|e| errors::internal(format!("cannot sign the identity of {user}: {e}")))?;
        let out = crate::trust::signature_upload(&request.signed_keys)?;
        self.remember(std::slice::from_ref(&out));
        Ok(out)
    }

    /// Accept another user's current identity as theirs (after it changed): clears
    /// `needsUserApproval`.
    #[napi]
    pub async fn pin_identity(&self, user_id: String) -> Result<()> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        other_identity(&machine, &user).await?.pin_current_master_key().await.map_err(errors::store)
    }

    /// Stop requiring another user's identity to be verified (clears a verification violation).
    #[napi]
    pub async fn withdraw_verification(&self, user_id: String) -> Result<()> {
        let machine = self.machine()?;
        let user = ids::user_id("userId", &user_id)?;
        other_identity(&machine, &user).await?.withdraw_verification().await.map_err(errors::store)
    }
}

async fn other_identity(
    machine: &matrix_sdk_crypto::OlmMachine,
    user: &ruma::UserId,
) -> Result<matrix_sdk_crypto::OtherUserIdentity> {
    if user == machine.user_id() {
        return Err(invalid("userId", "is our own user; our own identity is verified by recovering or bootstrapping cross-signing"));
    }
    match machine.get_identity(user, None).await.map_err(errors::store)? {
        Some(matrix_sdk_crypto::UserIdentity::Other(o)) => Ok(o),
        _ => Err(invalid("userId", format!("{user} has no known cross-signing identity; track the user and query their keys first"))),
    }
}
