//! Webhooks: an organisation registers a URL, and chainkeeper posts a signed JSON event when one of its chains
//! needs repair, when it recovered, and when auto-recovery credentials are about to expire.
//!
//! Signature: header `X-Chainkeeper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! with the secret chainkeeper generated when the webhook was registered (shown once). Receivers check the
//! HMAC and that `t` is recent. Delivery runs in the background (never delays the caller), three tries.
//!
//! Where a webhook may go (https, public addresses, the checked address only) is [`super::webhook_target`].
//! The URL is a secret of the receiver's: sealed with the organisation's key, shown masked in views and the
//! audit, never logged.

use crate::provider::request_error_text as why;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;

use crate::chain::RepairCode;
use crate::clock::{Clock, rfc3339};
use crate::ids::{ContainerRef, OrgId, random_id};
use crate::keys::{Field, KeyError, Vault, org_context};
use crate::records::{OrgRecord, decode, encode, org_key};
use crate::store::{Condition, Put, Store, StoreError};

use super::Ports;
use super::audit::AuditLog;
use super::lookup::{self, LookupError};
use super::webhook_target::{self, DeliveryRefusal};
use crate::config::WebhookConfig;

pub use super::webhook_target::UrlRefusal;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("the webhook URL is refused: {0:?}")]
    InvalidUrl(UrlRefusal),
    #[error("unknown webhook event type {0:?}")]
    UnknownEvent(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// Every event type a webhook can receive, with what it means (a person chooses among them in the console).
pub const EVENT_TYPES: &[(&str, &str)] = &[
    ("chain.needs_repair", "A container's chain broke and needs a person (or auto-recovery)."),
    ("chain.recovered", "A broken chain works again."),
    ("auto_recovery.expiring", "A container's auto-recovery credentials expire soon."),
];

/// The type of the event [`Webhooks::send_test`] delivers.
pub const TEST_EVENT: &str = "webhook.test";

/// What became of a test event.
#[derive(Debug, PartialEq, Eq)]
pub enum TestDelivery {
    /// The receiver answered 2xx.
    Delivered,
    /// The organisation has no webhook.
    NoWebhook,
    /// Not delivered, and why (the text names no part of the URL).
    Failed(String),
}

/// A registered webhook: its URL (masked), and the signing secret (shown once).
pub struct Registered {
    pub masked_url: String,
    pub secret: SecretString,
}

/// One event as receivers get it.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub occurred_at: String,
    pub organisation: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub database: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub container: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation: Option<String>,
}

/// How receivers check an event: `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

#[derive(Clone)]
pub struct Webhooks {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    /// `[webhooks]`: the hosts allowed plain http or private addresses.
    allow: Arc<WebhookConfig>,
    /// Where deliveries run (settled before a Lambda function answers).
    background: Arc<super::background::Background>,
}

impl Webhooks {
    pub fn new(p: &Ports, audit: AuditLog) -> Self {
        Self {
            store: p.store.clone(),
            vault: p.vault.clone(),
            clock: p.clock.clone(),
            audit,
            allow: Arc::new(p.config.webhooks.clone()),
            background: p.background.clone(),
        }
    }

    /// Registers (or replaces) the organisation's webhook; the signing secret is returned once.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn register(&self, org: &OrgId, actor: &str, url: &str) -> Result<Registered, WebhookError> {
        self.register_for(org, actor, url, None).await
    }

    /// [`Webhooks::register`] for some event types only (`None`: every one, as the API registers it).
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn register_for(
        &self,
        org: &OrgId,
        actor: &str,
        url: &str,
        events: Option<Vec<String>>,
    ) -> Result<Registered, WebhookError> {
        if let Some(bad) = events.iter().flatten().find(|e| !EVENT_TYPES.iter().any(|(t, _)| t == e)) {
            return Err(WebhookError::UnknownEvent(bad.chars().take(60).collect()));
        }
        let url = webhook_target::check_url(url, &self.allow).map_err(WebhookError::InvalidUrl)?;
        let masked_url = webhook_target::masked(url.as_str());
        let (mut rec, version) = lookup::org(&*self.store, org).await?;
        use base64::Engine;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        rec.sealed_webhook_secret =
            Some(self.vault.seal(&org_context(org, Field::WebhookSecret), secret.as_bytes()).await?);
        rec.sealed_webhook_url =
            Some(self.vault.seal(&org_context(org, Field::WebhookUrl), url.as_str().as_bytes()).await?);
        rec.webhook_url = Some(masked_url.clone());
        rec.webhook_events = events;
        self.store.put(Put::new(org_key(org), encode(&rec), Condition::Version(version))).await?;
        self.audit.record(org, actor, "webhook.set", None, "ok", Some(masked_url.clone())).await;
        Ok(Registered { masked_url, secret: secret.into() })
    }

    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn remove(&self, org: &OrgId, actor: &str) -> Result<(), WebhookError> {
        let (mut rec, version) = lookup::org(&*self.store, org).await?;
        rec.webhook_url = None;
        rec.sealed_webhook_url = None;
        rec.sealed_webhook_secret = None;
        rec.webhook_events = None;
        self.store.put(Put::new(org_key(org), encode(&rec), Condition::Version(version))).await?;
        self.audit.record(org, actor, "webhook.delete", None, "ok", None).await;
        Ok(())
    }

    /// Delivers a test event (`webhook.test`) now and says what became of it: for a person checking that their
    /// receiver gets and verifies events. Audited like any delivery.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn send_test(&self, org: &OrgId, actor: &str) -> Result<TestDelivery, WebhookError> {
        lookup::org(&*self.store, org).await?;
        let event = Event {
            id: random_id(),
            kind: TEST_EVENT,
            occurred_at: rfc3339(self.clock.now_ms()),
            organisation: org.to_string(),
            database: String::new(),
            container: String::new(),
            code: None,
            remediation: Some("A test event sent from the console: nothing needs doing.".into()),
        };
        let outcome = match self.deliver(org, &event).await {
            Ok(true) => TestDelivery::Delivered,
            Ok(false) => return Ok(TestDelivery::NoWebhook),
            Err(e) => TestDelivery::Failed(e.to_string()),
        };
        let (result, detail) = match &outcome {
            TestDelivery::Failed(why) => ("failed", format!("{TEST_EVENT}: {why}")),
            _ => ("ok", TEST_EVENT.to_string()),
        };
        self.audit.record(org, actor, "webhook.test", None, result, Some(detail)).await;
        Ok(outcome)
    }

    /// A chain event (`chain.needs_repair` with its code, `chain.recovered`), delivered in the background.
    pub fn chain_event(&self, kind: &'static str, c: &ContainerRef, code: Option<RepairCode>) {
        let remediation = code.map(RepairCode::remediation);
        self.send(self.event(kind, c, code.map(RepairCode::code), remediation), c.clone());
    }

    /// Auto-recovery credentials of a container expire soon.
    pub fn expiring_event(&self, c: &ContainerRef, expires_at: String) {
        let remediation = format!(
            "The auto-recovery credentials expire at {expires_at}. Store them again (PUT …/auto-recovery) to keep auto-recovery."
        );
        self.send(self.event("auto_recovery.expiring", c, None, Some(remediation)), c.clone());
    }

    fn event(&self, kind: &'static str, c: &ContainerRef, code: Option<&str>, remediation: Option<String>) -> Event {
        Event {
            id: random_id(),
            kind,
            occurred_at: rfc3339(self.clock.now_ms()),
            organisation: c.org.to_string(),
            database: c.db.to_string(),
            container: c.alias.to_string(),
            code: code.map(str::to_string),
            remediation,
        }
    }

    fn send(&self, event: Event, c: ContainerRef) {
        let me = self.clone();
        self.background.spawn(async move {
            match me.deliver(&c.org, &event).await {
                Ok(false) => {}
                Ok(true) => {
                    me.audit.record(&c.org, ACTOR, "webhook.deliver", Some(&c), "ok", Some(event.kind.into())).await
                }
                Err(e) => {
                    let reason = e.to_string();
                    tracing::warn!(reason = %reason, event = event.kind, org = %c.org, "webhook not delivered");
                    let detail = format!("{}: {reason}", event.kind);
                    me.audit.record(&c.org, ACTOR, "webhook.deliver", Some(&c), "failed", Some(detail)).await;
                }
            }
        });
    }

    /// Delivers one event; `false` when the organisation has no webhook. A refused target is not retried.
    /// Errors name no part of the URL.
    async fn deliver(&self, org: &OrgId, event: &Event) -> Result<bool, DeliveryError> {
        let Some(item) = self.store.get(&org_key(org)).await? else { return Ok(false) };
        let rec: OrgRecord = decode(&item)?;
        let (Some(url), Some(sealed)) = (rec.webhook_url, rec.sealed_webhook_secret) else { return Ok(false) };
        // A webhook for some event types only (the test event always goes).
        if event.kind != TEST_EVENT
            && rec.webhook_events.as_ref().is_some_and(|evs| !evs.iter().any(|e| e == event.kind))
        {
            return Ok(false);
        }
        let secret = self.vault.open_string(&org_context(org, Field::WebhookSecret), &sealed).await?;
        // Sealed since the URL counts as a secret; a record from before holds the URL itself.
        let url = match &rec.sealed_webhook_url {
            Some(sealed_url) => self
                .vault
                .open_string(&org_context(org, Field::WebhookUrl), sealed_url)
                .await?
                .expose_secret()
                .to_string(),
            None => url,
        };
        let target = webhook_target::vet(&url, &self.allow).await?;
        let http = webhook_target::client_for(&target).map_err(|e| DeliveryError::Failed(why(e)))?;
        let body = serde_json::to_vec(event).map_err(|e| DeliveryError::Failed(e.to_string()))?;
        let mut last = String::new();
        for attempt in 0..3u32 {
            let t = self.clock.now_ms() / 1000;
            let res = http
                .post(target.url.clone())
                .timeout(Duration::from_secs(10))
                .header("content-type", "application/json")
                .header("x-chainkeeper-event", event.kind)
                .header("x-chainkeeper-signature", signature(secret.expose_secret().as_bytes(), t, &body))
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return Ok(true),
                Ok(r) => last = format!("the receiver answered HTTP {}", r.status().as_u16()),
                Err(e) => last = why(e),
            }
            if attempt < 2 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        }
        Err(DeliveryError::Failed(format!("three tries failed, the last: {last}")))
    }
}

/// Who the audit names for deliveries.
const ACTOR: &str = "chainkeeper";

/// Why an event was not delivered. The text names no part of the URL.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("refused before sending: {0}")]
    Refused(#[from] DeliveryRefusal),
    #[error("{0}")]
    Failed(String),
    #[error("the organisation could not be read: {0}")]
    Store(#[from] StoreError),
    #[error("the signing secret could not be opened: {0}")]
    Keys(#[from] KeyError),
}
