//! How people sign in at the simulated Exact Online: the switch between the simulator's original single-form
//! sign-in and Exact Online's real one (Azure AD B2C), the per-user outcomes that stop an unattended sign-in,
//! and the counters tests read. The pages and handlers are in `server/sign_in_flow.rs`, which also lists the
//! public evidence the flow is modelled on.

use serde::{Deserialize, Serialize};

/// Which sign-in the start host's authorize URL leads to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignIn {
    /// The simulator's original pages: one HTML form with `UserName` + `Password`, then `Code` (TOTP), then
    /// consent, all on the start host. Not what Exact Online serves; kept for tests of a generic HTML-form
    /// sign-in.
    Simple,
    /// Exact Online's sign-in as public client code shows it (the default): the start host's e-mail form with
    /// an anti-forgery token, then Azure AD B2C self-asserted pages on a second host (password, TOTP, …), then
    /// the form_post back to the start host's `/signin-azureb2c`.
    #[default]
    AzureB2c,
}

/// What happens when a given user signs in through the B2C pages (set per user; [`SignInOutcome::Normal`] for
/// users without an entry). Every outcome but `Normal` stops an unattended sign-in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInOutcome {
    /// Password (and TOTP when the user has a secret) lead to the app.
    #[default]
    Normal,
    /// Every password is refused (`{"status":"400","errorCode":"AADB2C90052","message":"Invalid username or
    /// password."}`), the right one too: a password changed behind the stored credentials' back.
    WrongPassword,
    /// Every TOTP code is refused: the authenticator was re-enrolled.
    WrongTotp,
    /// The sign-in page carries a Google reCAPTCHA widget and an extra field no script can answer.
    Recaptcha,
    /// As `Recaptcha`, with hCaptcha's markers.
    Hcaptcha,
    /// The B2C host answers 403 with a Cloudflare "Just a moment…" challenge page instead of the sign-in page.
    CloudflareChallenge,
    /// The password step answers "account locked" (with or without the right password).
    Locked,
    /// After the password, a code sent by e-mail is asked (`emailVerificationCode`) instead of the TOTP.
    EmailCode,
    /// The sign-in page changed shape: `$Config = {…}` instead of `var SETTINGS`, no `SA_FIELDS`, other
    /// element ids. A person can still sign in; a driver that reads `SETTINGS` cannot.
    ChangedPage,
}

/// Per-user sign-in behaviour (B2C mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignInBehaviour {
    pub outcome: SignInOutcome,
    /// A `userAgent` step between the password and the TOTP ("FetchUserAgent", seen sometimes).
    pub user_agent_step: bool,
}

/// Requests seen by one of the simulator's two hosts. "Seen" counts every request whose query string or
/// form body carries the value, under any name and on any path: tests prove with it that a user's password
/// reached the B2C host only (and the start host never, in B2C mode).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct HostSignInStats {
    /// Every request this host received (the start host's API and token calls included).
    pub requests: u64,
    /// Requests that carried a configured user's name (e-mail).
    pub username_seen: u64,
    /// Requests that carried a configured user's password.
    pub password_seen: u64,
    /// Verification codes (TOTP or e-mail) submitted to this host's B2C steps (`Simple` mode does not count its
    /// `Code` form here).
    pub code_submissions: u64,
}

/// Sign-in counters (`SimStats::sign_in`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SignInStats {
    pub start_host: HostSignInStats,
    pub b2c_host: HostSignInStats,
    /// Start pages (e-mail form) served.
    pub start_pages: u64,
    /// B2C pages served (sign-in page and every later step, form_post page excluded).
    pub b2c_pages: u64,
    /// `POST …/SelfAsserted` requests that passed the CSRF checks.
    pub self_asserted_posts: u64,
    pub password_rejected: u64,
    pub code_rejected: u64,
    pub locked_rejections: u64,
    /// reCAPTCHA/hCaptcha sign-in pages and Cloudflare challenges served.
    pub captcha_pages: u64,
    /// `emailVerificationCode` steps served.
    pub email_code_pages: u64,
    /// Sign-in pages in the changed shape served.
    pub changed_pages: u64,
    /// B2C requests refused for a missing or wrong CSRF token, transaction cookie or `X-Requested-With`.
    pub csrf_rejections: u64,
    /// Start-page posts refused for a missing or wrong anti-forgery token or cookie.
    pub antiforgery_rejections: u64,
    /// `/signin-azureb2c` posts refused (unknown state, missing correlation cookie, bad code).
    pub callback_rejections: u64,
    /// Sign-ins completed at `/signin-azureb2c` (a session cookie was set).
    pub completed: u64,
}
