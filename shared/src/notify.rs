//! Notifications: an organisation registers a webhook URL and chainkeeper posts a signed JSON event when a
//! chain needs repair and when it recovered.
//!
//! Signature: header `X-Chainkeeper-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! with the secret chainkeeper generated when the webhook was registered (shown once). Receivers check the
//! HMAC and that `t` is recent.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::Serialize;
use sha2::Sha256;

use crate::chain::RepairCode;
use crate::clock::{Clock, rfc3339};
use crate::ids::{ContainerRef, random_id};
use crate::keys::{Field, Vault, org_context};
use crate::records::{OrgRecord, decode, org_key};
use crate::store::Store;

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

/// Signs a body the way receivers verify it.
pub fn signature(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

pub struct Notifier {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>, clock: Arc<dyn Clock>, http: reqwest::Client) -> Self {
        Self { store, vault, clock, http }
    }

    /// Auto-recovery credentials of a container expire soon.
    pub fn expiring_event(self: &Arc<Self>, c: &ContainerRef, expires_at: String) {
        self.send(self.event("auto_recovery.expiring", c, None, Some(format!("The auto-recovery credentials expire at {expires_at}. Store them again (PUT …/auto-recovery) to keep auto-recovery."))));
    }

    /// An event about a container, delivered in the background (never delays the caller).
    pub fn container_event(self: &Arc<Self>, kind: &'static str, c: &ContainerRef, code: Option<RepairCode>) {
        let remediation = code.map(RepairCode::remediation);
        self.send(self.event(kind, c, code.map(RepairCode::code), remediation));
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

    fn send(self: &Arc<Self>, event: Event) {
        let me = self.clone();
        let org = event.organisation.clone();
        tokio::spawn(async move {
            if let Err(e) = me.deliver(&org, &event).await {
                tracing::warn!(error = %e, event = event.kind, %org, "webhook not delivered");
            }
        });
    }

    async fn deliver(&self, org: &str, event: &Event) -> anyhow::Result<()> {
        let org_id = crate::ids::OrgId::parse(org)?;
        let Some(item) = self.store.get(&org_key(&org_id)).await? else { return Ok(()) };
        let rec: OrgRecord = decode(&item)?;
        let (Some(url), Some(sealed)) = (rec.webhook_url, rec.sealed_webhook_secret) else { return Ok(()) };
        let secret = self.vault.open_string(&org_context(&org_id, Field::WebhookSecret), &sealed).await?;
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
