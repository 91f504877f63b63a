//! Why the engine hands out no token: [`ChainError`], and for a chain that needs a person, the typed
//! [`RepairCode`] with what it means and what to do (one list: the API's problem pages, the container view, the
//! repairs list and the webhook events all read it from here).

use crate::clock::Millis;
use crate::keys::KeyError;
use crate::store::StoreError;

/// The code of a chain whose last refresh answer was lost and that is retried with the previous refresh token
/// (its `last_error` while it waits, and the problem callers get meanwhile).
pub const LOST_RETRYING: &str = "refresh_response_lost_retrying";

/// Why no access token could be handed out. Every variant has a stable code (see [`ChainError::code`]).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the container has no authorization yet")]
    NotAuthorized,
    #[error("the chain is broken ({}) and needs a new authorization", code.code())]
    NeedsRepair { code: RepairCode, since_ms: Millis, provider_said: String },
    #[error("the provider allows a new token in {wait_s} s")]
    RateLimited { wait_s: u64 },
    #[error("the provider is unavailable; retry in {retry_after_s} s")]
    ProviderUnavailable { retry_after_s: u64, reason: String },
    #[error("a refresh's answer was lost; the previous refresh token is tried again in {retry_after_s} s")]
    ResponseLostRetrying { retry_after_s: u64 },
    #[error("another refresh of this chain is still running")]
    RefreshInProgress,
    #[error("the provider refused chainkeeper's app registration: {0}")]
    InvalidClient(String),
    #[error("no app registration for provider {0}")]
    NoApp(String),
    #[error("unknown provider profile {0}")]
    UnknownProvider(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ChainError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotAuthorized => "not_authorized",
            Self::NeedsRepair { code, .. } => code.code(),
            Self::RateLimited { .. } => "token_rate_limited",
            Self::ProviderUnavailable { .. } => "provider_unavailable",
            Self::ResponseLostRetrying { .. } => LOST_RETRYING,
            Self::RefreshInProgress => "refresh_in_progress",
            Self::InvalidClient(_) => "invalid_client",
            Self::NoApp(_) => "app_not_configured",
            Self::UnknownProvider(_) => "unknown_provider",
            Self::Store(_) => "store_unavailable",
            Self::Keys(_) | Self::Unexpected(_) => "internal_error",
        }
    }
}

/// Why a chain needs a person: the provider killed it, or it never had what it needs. Stored as its code in the
/// chain's `last_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RepairCode {
    /// The provider no longer accepts the refresh token (authorized again elsewhere, or revoked).
    RefreshTokenSuperseded,
    /// The refresh token expired unused.
    RefreshTokenExpired,
    /// The provider refused the refresh token without saying why.
    RefreshTokenInvalid,
    /// A refresh was sent, its answer lost, and the previous token is dead.
    RefreshResponseLost,
    /// The provider never gave a refresh token.
    RefreshTokenMissing,
    /// A client-credentials or password container's own credentials were refused.
    CredentialsRejected,
    /// Auto-recovery could not sign in with the stored credentials (written by versions before the outcomes
    /// below; read back as such).
    RecoveryCredentialsInvalid,
    /// Auto-recovery signed in as another user than the container's.
    RecoveryWrongIdentity,
    /// Auto-recovery: the provider refused the stored username or password.
    RecoveryPasswordRejected,
    /// Auto-recovery: the provider refused the TOTP code (or asked for one and none is stored).
    RecoveryTotpRejected,
    /// Auto-recovery: the sign-in needs a person (captcha, a code sent by e-mail, a locked account).
    RecoveryVerificationNeeded,
    /// Auto-recovery: a sign-in step the driver does not support, or one outside the profile's login hosts.
    RecoveryUnsupportedStep,
    /// Auto-recovery: the provider's sign-in could not be reached; it tries again later, backing off.
    RecoveryProviderUnreachable,
}

impl RepairCode {
    pub const ALL: [RepairCode; 13] = [
        Self::RefreshTokenSuperseded,
        Self::RefreshTokenExpired,
        Self::RefreshTokenInvalid,
        Self::RefreshResponseLost,
        Self::RefreshTokenMissing,
        Self::CredentialsRejected,
        Self::RecoveryCredentialsInvalid,
        Self::RecoveryWrongIdentity,
        Self::RecoveryPasswordRejected,
        Self::RecoveryTotpRejected,
        Self::RecoveryVerificationNeeded,
        Self::RecoveryUnsupportedStep,
        Self::RecoveryProviderUnreachable,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::RefreshTokenSuperseded => "refresh_token_superseded",
            Self::RefreshTokenExpired => "refresh_token_expired",
            Self::RefreshTokenInvalid => "refresh_token_invalid",
            Self::RefreshResponseLost => "refresh_response_lost",
            Self::RefreshTokenMissing => "refresh_token_missing",
            Self::CredentialsRejected => "credentials_rejected",
            Self::RecoveryCredentialsInvalid => "recovery_credentials_invalid",
            Self::RecoveryWrongIdentity => "recovery_wrong_identity",
            Self::RecoveryPasswordRejected => "recovery_password_rejected",
            Self::RecoveryTotpRejected => "recovery_totp_rejected",
            Self::RecoveryVerificationNeeded => "recovery_verification_needed",
            Self::RecoveryUnsupportedStep => "recovery_unsupported_step",
            Self::RecoveryProviderUnreachable => "recovery_provider_unreachable",
        }
    }

    /// The code as stored; an unknown one (written by another version) reads as `refresh_token_invalid`.
    pub fn parse(code: &str) -> Self {
        Self::ALL.into_iter().find(|c| c.code() == code).unwrap_or(Self::RefreshTokenInvalid)
    }

    /// A short title (the problem page's).
    pub fn title(self) -> &'static str {
        match self {
            Self::RefreshTokenSuperseded => "Refresh token superseded",
            Self::RefreshTokenExpired => "Refresh token expired",
            Self::RefreshTokenInvalid => "Refresh token refused",
            Self::RefreshResponseLost => "Refresh answer lost",
            Self::RefreshTokenMissing => "No refresh token",
            Self::CredentialsRejected => "Credentials rejected",
            Self::RecoveryCredentialsInvalid => "Auto-recovery credentials refused",
            Self::RecoveryWrongIdentity => "Auto-recovery signed in as another user",
            Self::RecoveryPasswordRejected => "Auto-recovery password refused",
            Self::RecoveryTotpRejected => "Auto-recovery TOTP code refused",
            Self::RecoveryVerificationNeeded => "Auto-recovery needs a person to verify",
            Self::RecoveryUnsupportedStep => "Auto-recovery met an unsupported sign-in step",
            Self::RecoveryProviderUnreachable => "Auto-recovery could not reach the provider",
        }
    }

    /// What happened.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::RefreshTokenSuperseded => {
                "The provider no longer accepts this chain's refresh token: the same app and user were authorized again elsewhere, or the provider revoked it."
            }
            Self::RefreshTokenExpired => "The refresh token expired unused.",
            Self::RefreshTokenInvalid => "The provider refused this chain's refresh token.",
            Self::RefreshResponseLost => {
                "A token request was sent but its answer never arrived, and the provider no longer accepts the previous refresh token."
            }
            Self::RefreshTokenMissing => "The provider never gave this container a refresh token.",
            Self::CredentialsRejected => {
                "The provider refused the container's stored credentials (client id and secret, or username and password)."
            }
            Self::RecoveryCredentialsInvalid => {
                "Auto-recovery could not sign in with the stored username, password or TOTP secret."
            }
            Self::RecoveryWrongIdentity => {
                "Auto-recovery signed in as a different user than the container's own; nothing was stored."
            }
            Self::RecoveryPasswordRejected => {
                "Auto-recovery's sign-in was refused: the provider did not accept the stored username or password. Retries stopped."
            }
            Self::RecoveryTotpRejected => {
                "Auto-recovery's sign-in was refused at the two-step check: the provider did not accept the code from the stored TOTP secret (or asked for one and none is stored). Retries stopped."
            }
            Self::RecoveryVerificationNeeded => {
                "Auto-recovery's sign-in stopped where only a person can go on: a captcha or bot check, a code sent by e-mail, or a locked account. Retries stopped."
            }
            Self::RecoveryUnsupportedStep => {
                "Auto-recovery's sign-in reached a page or step its login driver does not support, or one on a host outside the provider profile's login.hosts; it stopped rather than guess, and sent no credentials there. Retries stopped."
            }
            Self::RecoveryProviderUnreachable => {
                "Auto-recovery could not reach the provider's sign-in (network, timeout or a server error). It tries again later, waiting longer after each failure."
            }
        }
    }

    /// What a person should do.
    pub fn remedy(self) -> &'static str {
        match self {
            Self::RefreshTokenSuperseded => {
                "Renew the authorization of this container, and authorize each app and user in one container only."
            }
            Self::RefreshTokenExpired => {
                "Renew the authorization of this container; chainkeeper keeps it alive from then on."
            }
            Self::RefreshTokenInvalid | Self::RefreshResponseLost => "Renew the authorization of this container.",
            Self::RefreshTokenMissing => "Renew the authorization (ask for offline access).",
            Self::CredentialsRejected => "Set correct ones with PUT …/credentials.",
            Self::RecoveryCredentialsInvalid => {
                "Store correct auto-recovery credentials, or renew the authorization by hand."
            }
            Self::RecoveryWrongIdentity => {
                "Store the auto-recovery credentials of the container's own user, or renew the authorization by hand."
            }
            Self::RecoveryPasswordRejected => {
                "Store the account's current password with PUT …/auto-recovery, or renew the authorization by hand."
            }
            Self::RecoveryTotpRejected => {
                "Store the account's current TOTP secret with PUT …/auto-recovery (after re-enrolling the authenticator), or renew the authorization by hand."
            }
            Self::RecoveryVerificationNeeded => {
                "Renew the authorization by hand (sign in once as a person: solve the check, unlock the account, or switch the account to an authenticator app), then store the credentials again with PUT …/auto-recovery."
            }
            Self::RecoveryUnsupportedStep => {
                "Renew the authorization by hand; an operator checks the provider profile's login driver and login.hosts. Store the credentials again to restart auto-recovery."
            }
            Self::RecoveryProviderUnreachable => {
                "Nothing, if it passes; to repair at once, renew the authorization by hand."
            }
        }
    }

    /// What happened and what to do, in one text (container views, repairs list, webhook events).
    pub fn remediation(self) -> String {
        format!("{} {}", self.meaning(), self.remedy())
    }

    /// Whether the repair is new credentials (`PUT …/credentials`) rather than a new authorization.
    pub fn needs_new_credentials(self) -> bool {
        self == Self::CredentialsRejected
    }

    /// The provider's words for a dead refresh token (`invalid_grant`), turned into a code.
    pub fn from_invalid_grant(description: &str) -> Self {
        let d = description.to_ascii_lowercase();
        if d.contains("expired") {
            Self::RefreshTokenExpired
        } else if d.contains("old refresh token")
            || d.contains("revoked")
            || d.contains("obsolete")
            || d.contains("superseded")
        {
            Self::RefreshTokenSuperseded
        } else {
            Self::RefreshTokenInvalid
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_ones_read_as_invalid() {
        for c in RepairCode::ALL {
            assert_eq!(RepairCode::parse(c.code()), c);
            assert!(c.remediation().len() > 30, "{c:?}");
        }
        assert_eq!(RepairCode::parse("something_new"), RepairCode::RefreshTokenInvalid);
    }

    #[test]
    fn invalid_grant_descriptions_are_classified() {
        assert_eq!(RepairCode::from_invalid_grant("Refresh token expired"), RepairCode::RefreshTokenExpired);
        assert_eq!(RepairCode::from_invalid_grant("Old refresh token used."), RepairCode::RefreshTokenSuperseded);
        assert_eq!(RepairCode::from_invalid_grant("grant request is invalid"), RepairCode::RefreshTokenInvalid);
    }
}
