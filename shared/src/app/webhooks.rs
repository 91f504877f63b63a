//! Webhooks: an organisation registers a URL, and chainkeeper posts a signed JSON event when one of its chains
//! needs repair, when it recovered, and when auto-recovery credentials are about to expire.
//!
//! Signature: header `X-Chainkeeper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! with the secret chainkeeper generated when the webhook was registered (shown once). Receivers check the
//! HMAC and that `t` is recent. Delivery runs in the background (never delays the caller), three tries.

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

/// Why a webhook URL is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    NotAbsolute,
    /// Not `http(s)://host/path`, or with credentials in it.
    Form,
    /// Loopback, private or internal, and this deployment does not allow those.
    PrivateAddress,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error("the webhook URL is refused: {0:?}")]
    InvalidUrl(UrlRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// A registered webhook: its URL, and the signing secret (shown once).
pub struct Registered {
    pub url: String,
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
    pub database: String,
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
    http: reqwest::Client,
    audit: AuditLog,
    /// `server.webhook_allow_private_networks`.
    allow_private_networks: bool,
}

impl Webhooks {
    pub fn new(p: &Ports, audit: AuditLog) -> Self {
        Self {
            store: p.store.clone(),
            vault: p.vault.clone(),
            clock: p.clock.clone(),
            http: p.http.clone(),
            audit,
            allow_private_networks: p.config.server.webhook_allow_private_networks,
        }
    }

    /// Registers (or replaces) the organisation's webhook; the signing secret is returned once.
    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn register(&self, org: &OrgId, actor: &str, url: &str) -> Result<Registered, WebhookError> {
        let url = url::Url::parse(url).map_err(|_| WebhookError::InvalidUrl(UrlRefusal::NotAbsolute))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() || !url.username().is_empty() {
            return Err(WebhookError::InvalidUrl(UrlRefusal::Form));
        }
        if !self.allow_private_networks && is_private_host(&url) {
            return Err(WebhookError::InvalidUrl(UrlRefusal::PrivateAddress));
        }
        let (mut rec, version) = lookup::org(&*self.store, org).await?;
        use base64::Engine;
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        rec.sealed_webhook_secret =
            Some(self.vault.seal(&org_context(org, Field::WebhookSecret), secret.as_bytes()).await?);
        rec.webhook_url = Some(url.to_string());
        self.store.put(Put::new(org_key(org), encode(&rec), Condition::Version(version))).await?;
        self.audit.record(org, actor, "webhook.set", None, "ok", Some(url.to_string())).await;
        Ok(Registered { url: url.to_string(), secret: secret.into() })
    }

    #[tracing::instrument(skip_all, fields(org = %org))]
    pub async fn remove(&self, org: &OrgId, actor: &str) -> Result<(), WebhookError> {
        let (mut rec, version) = lookup::org(&*self.store, org).await?;
        rec.webhook_url = None;
        rec.sealed_webhook_secret = None;
        self.store.put(Put::new(org_key(org), encode(&rec), Condition::Version(version))).await?;
        self.audit.record(org, actor, "webhook.delete", None, "ok", None).await;
        Ok(())
    }

    /// A chain event (`chain.needs_repair` with its code, `chain.recovered`), delivered in the background.
    pub fn chain_event(&self, kind: &'static str, c: &ContainerRef, code: Option<RepairCode>) {
        let remediation = code.map(RepairCode::remediation);
        self.send(self.event(kind, c, code.map(RepairCode::code), remediation));
    }

    /// Auto-recovery credentials of a container expire soon.
    pub fn expiring_event(&self, c: &ContainerRef, expires_at: String) {
        let remediation = format!(
            "The auto-recovery credentials expire at {expires_at}. Store them again (PUT …/auto-recovery) to keep auto-recovery."
        );
        self.send(self.event("auto_recovery.expiring", c, None, Some(remediation)));
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

    fn send(&self, event: Event) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.deliver(&event).await {
                tracing::warn!(error = %e, event = event.kind, org = %event.organisation, "webhook not delivered");
            }
        });
    }

    async fn deliver(&self, event: &Event) -> anyhow::Result<()> {
        let org = OrgId::parse(&event.organisation)?;
        let Some(item) = self.store.get(&org_key(&org)).await? else { return Ok(()) };
        let rec: OrgRecord = decode(&item)?;
        let (Some(url), Some(sealed)) = (rec.webhook_url, rec.sealed_webhook_secret) else { return Ok(()) };
        let secret = self.vault.open_string(&org_context(&org, Field::WebhookSecret), &sealed).await?;
        let body = serde_json::to_vec(event)?;
        let mut last = String::new();
        for attempt in 0..3u32 {
            let t = self.clock.now_ms() / 1000;
            let res = self
                .http
                .post(&url)
                .timeout(Duration::from_secs(10))
                .header("content-type", "application/json")
                .header("x-chainkeeper-event", event.kind)
                .header("x-chainkeeper-signature", signature(secret.expose_secret().as_bytes(), t, &body))
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        anyhow::bail!("webhook {url} failed three times: {last}")
    }
}

fn is_private_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified() || (ip.segments()[0] & 0xfe00) == 0xfc00,
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") || d.ends_with(".internal")
        }
        None => true,
    }
}
