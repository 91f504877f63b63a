//! The metrics contract: what chainkeeper emits as CloudWatch Embedded Metric Format (one JSON log line per
//! figure, no API call) and the SAM template's alarms read. `infra/README.md` ("Metrics") has the same table;
//! `infra/validate.sh` fails when an alarm reads a chainkeeper metric or dimension that is not defined here.
//! Renaming one here means changing the template's alarms with it.
//!
//! Every metric carries the dimension [`DIM_STAGE`] (the deployment, `CHAINKEEPER_STAGE`), and the alarms read
//! exactly the dimension sets listed with each metric: an EMF line must include that set (it may add others,
//! e.g. `[Stage, Outcome, Provider]` as a second dimension set).

/// CloudWatch namespace of every chainkeeper metric.
pub const NAMESPACE: &str = "chainkeeper";

/// Dimension on every metric: the deployment (`Stage` parameter of the template, env `CHAINKEEPER_STAGE`).
pub const DIM_STAGE: &str = "Stage";
/// Dimension of [`REFRESH_OUTCOME`] and [`RECOVERY_OUTCOME`]: one of the outcome values below.
pub const DIM_OUTCOME: &str = "Outcome";
/// Optional dimension: the provider profile (`exact-online-nl`, …), in an extra dimension set.
pub const DIM_PROVIDER: &str = "Provider";

/// Count, `[Stage, Outcome]`: one per refresh attempt of a chain (sweep, hand-out or proxy), by outcome:
/// [`OUTCOME_OK`], [`OUTCOME_TRANSIENT`], [`OUTCOME_RATE_LIMITED`], [`OUTCOME_NEEDS_REPAIR`], [`OUTCOME_LOST`].
pub const REFRESH_OUTCOME: &str = "RefreshOutcome";
/// Milliseconds, `[Stage]` (and `[Stage, Provider]`): duration of one token-endpoint request.
pub const PROVIDER_TOKEN_LATENCY: &str = "ProviderTokenLatency";
/// Count (a gauge, emitted once per `recover` run), `[Stage]`: chains whose status is `needs_repair`.
pub const CHAINS_NEEDING_REPAIR: &str = "ChainsNeedingRepair";
/// Seconds (a gauge, emitted once per `recover` run, 0 when none), `[Stage]`: how long the chain that has
/// needed repair longest has needed it.
pub const OLDEST_REPAIR_AGE_SECONDS: &str = "OldestRepairAgeSeconds";
/// Count, `[Stage, Outcome]`: one per auto-recovery attempt, by outcome: [`OUTCOME_RECOVERED`],
/// [`OUTCOME_CREDENTIALS_REJECTED`], [`OUTCOME_WRONG_IDENTITY`], [`OUTCOME_FAILED`].
pub const RECOVERY_OUTCOME: &str = "RecoveryOutcome";
/// Count, `[Stage]`: a broken chain that could not be handed to the recover function (the recovery queue did not
/// take it in time); its recovery waits for the `recover` schedule.
pub const RECOVERY_HANDOFF_FAILURES: &str = "RecoveryHandOffFailures";
/// Count, `[Stage]` (and `[Stage, Provider]`): requests forwarded by the data proxy.
pub const PROXY_CALLS: &str = "ProxyCalls";
/// Count, `[Stage]` (and `[Stage, Provider]`): times a caller or the sweep had to wait for a provider's rate limit
/// or minimum token interval.
pub const RATE_LIMIT_WAITS: &str = "RateLimitWaits";
/// Count (a gauge, emitted once per `refresh` schedule run), `[Stage]`: chains due and not yet refreshed: with a
/// sweep queue (AWS) those handed to the workers, without one (`serve`) those the sweep left for the next one.
pub const SWEEP_BACKLOG: &str = "SweepBacklog";
/// Seconds (a gauge, emitted once per `refresh` schedule run, 0 when none), `[Stage]`: how far past its due time
/// the most overdue chain is. The alarm `sweep-lag` reads it.
pub const OLDEST_OVERDUE_SECONDS: &str = "OldestOverdueSeconds";

/// Refresh outcome: a new access token was obtained and stored.
pub const OUTCOME_OK: &str = "ok";
/// Refresh outcome: 5xx, timeout or network failure; the chain is kept and retried.
pub const OUTCOME_TRANSIENT: &str = "transient";
/// Refresh outcome: the provider's minimum interval or rate limit applied; nothing was sent.
pub const OUTCOME_RATE_LIMITED: &str = "rate_limited";
/// Refresh outcome: the provider refused the refresh token (`invalid_grant`); a person or auto-recovery must act.
pub const OUTCOME_NEEDS_REPAIR: &str = "needs_repair";
/// Refresh outcome: the response was lost (timeout after sending) and could not be recovered.
pub const OUTCOME_LOST: &str = "lost";
/// Recovery outcome: a new chain was authorized without a person.
pub const OUTCOME_RECOVERED: &str = "recovered";
/// Recovery outcome: the provider rejected the stored username, password or TOTP secret
/// (`recovery_password_rejected`, `recovery_totp_rejected`).
pub const OUTCOME_CREDENTIALS_REJECTED: &str = "credentials_rejected";
/// Recovery outcome: the sign-in succeeded as another user than the container's.
pub const OUTCOME_WRONG_IDENTITY: &str = "wrong_identity";
/// Recovery outcome: any other failure (`recovery_verification_needed`, `recovery_unsupported_step`,
/// `recovery_provider_unreachable`, chainkeeper's own trouble).
pub const OUTCOME_FAILED: &str = "failed";
