//! The web console's sign-in and sessions: single-use sign-in links (`chainkeeper console-link`), OpenID Connect
//! sign-in (`console_oidc`), sessions kept in the store under the SHA-256 of their cookie's id (the id itself is
//! never stored), with an idle and an absolute expiry, and a CSRF token each. A session carries claims like an
//! API token's (organisation or platform, scopes): the console's pages check them with `auth::allows`, exactly as
//! the API checks a token's.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::Ports;
use super::audit::AuditLog;
use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::ids::{OrgId, random_id};
use crate::records::{ConsoleLinkRecord, ConsoleSessionRecord, console_link_key, console_session_key, decode, encode};
use crate::store::{Condition, Put, Store, StoreError};

/// The longest a sign-in link may live.
pub const MAX_LINK_MINUTES: u32 = 60;
const MAX_LINK_S: u32 = MAX_LINK_MINUTES * 60;
/// A session's last-seen time is written at most this often (not on every page).
const TOUCH_EVERY_MS: Millis = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the sign-in link is unknown or has expired")]
    LinkInvalid,
    #[error("the sign-in link was already used")]
    LinkUsed,
    #[error("a sign-in link lives 1 to {MAX_LINK_MINUTES} minutes")]
    LinkMinutes,
    #[error("a sign-in link needs at least one scope")]
    NoScopes,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A live session, as the console's pages see it.
#[derive(Clone, Debug)]
pub struct Session {
    pub sub: String,
    pub name: String,
    /// `None`: a platform session.
    pub org: Option<String>,
    pub scopes: Vec<String>,
    pub csrf: String,
    pub expires_at_ms: Millis,
}

/// A session just made: its cookie value (the raw id, shown to nobody but the browser) and when it ends.
pub struct NewSession {
    pub id: String,
    pub session: Session,
}

/// Who a new session is for.
pub struct Grant {
    pub sub: String,
    pub name: String,
    pub org: Option<String>,
    pub scopes: Vec<String>,
}

#[derive(Clone)]
pub struct ConsoleSessions {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    audit: AuditLog,
}

/// The store never sees a session id or link token, only this.
pub fn digest(raw: &str) -> String {
    Sha256::digest(raw.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl ConsoleSessions {
    pub fn new(p: &Ports, audit: AuditLog) -> Self {
        Self { store: p.store.clone(), clock: p.clock.clone(), config: p.config.clone(), audit }
    }

    /// A single-use sign-in link's token, valid for `ttl_s` seconds (at most an hour); the operator prints the
    /// link.
    pub async fn create_link(
        &self,
        sub: &str,
        org: Option<&OrgId>,
        scopes: Vec<String>,
        ttl_s: u32,
    ) -> Result<(String, Millis), ConsoleError> {
        if !(1..=MAX_LINK_S).contains(&ttl_s) {
            return Err(ConsoleError::LinkMinutes);
        }
        if scopes.iter().all(|s| s.trim().is_empty()) {
            return Err(ConsoleError::NoScopes);
        }
        let token = format!("{}{}", random_id(), random_id());
        let expires_at_ms = self.clock.now_ms() + i64::from(ttl_s) * 1000;
        let rec = ConsoleLinkRecord {
            sub: sub.to_string(),
            org: org.map(|o| o.to_string()),
            scopes,
            expires_at_ms,
            used_at_ms: None,
        };
        // Kept a day past its expiry once used, so that a second use says "already used".
        let put = Put::new(console_link_key(&digest(&token)), encode(&rec), Condition::Absent)
            .expires_at(Some(expires_at_ms));
        self.store.put(put).await?;
        Ok((token, expires_at_ms))
    }

    /// Uses a sign-in link: once. A session follows.
    pub async fn redeem_link(&self, token: &str) -> Result<NewSession, ConsoleError> {
        if token.is_empty() || token.len() > 200 {
            return Err(ConsoleError::LinkInvalid);
        }
        let key = console_link_key(&digest(token));
        let item = self.store.get(&key).await?.ok_or(ConsoleError::LinkInvalid)?;
        let mut rec: ConsoleLinkRecord = decode(&item)?;
        if rec.used_at_ms.is_some() {
            return Err(ConsoleError::LinkUsed);
        }
        let now = self.clock.now_ms();
        if rec.expires_at_ms <= now {
            return Err(ConsoleError::LinkInvalid);
        }
        rec.used_at_ms = Some(now);
        // Marked used (kept until a day after its expiry) by whoever writes first.
        let put = Put::new(key, encode(&rec), Condition::Version(item.version))
            .expires_at(Some(rec.expires_at_ms + 86_400_000));
        match self.store.put(put).await {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(ConsoleError::LinkUsed),
            Err(e) => return Err(e.into()),
        }
        let grant = Grant { name: rec.sub.clone(), sub: format!("link:{}", rec.sub), org: rec.org, scopes: rec.scopes };
        self.start(grant, "console.signin.link").await
    }

    /// Starts a session for `grant` (audited in the organisation's log).
    pub async fn start(&self, grant: Grant, action: &str) -> Result<NewSession, ConsoleError> {
        let now = self.clock.now_ms();
        let id = format!("{}{}", random_id(), random_id());
        let rec = ConsoleSessionRecord {
            sub: grant.sub,
            name: grant.name,
            org: grant.org,
            scopes: grant.scopes,
            csrf: random_id(),
            created_at_ms: now,
            last_seen_ms: now,
        };
        let expires_at_ms = self.expiry(&rec);
        let put = Put::new(console_session_key(&digest(&id)), encode(&rec), Condition::Absent)
            .expires_at(Some(expires_at_ms));
        self.store.put(put).await?;
        if let Some(org) = rec.org.as_deref().and_then(|o| OrgId::parse(o).ok()) {
            let detail = Some(format!("scopes {}", rec.scopes.join(" ")));
            self.audit.record(&org, &rec.sub, action, None, "ok", detail).await;
        }
        Ok(NewSession { id, session: view(rec, expires_at_ms) })
    }

    fn expiry(&self, rec: &ConsoleSessionRecord) -> Millis {
        let c = &self.config.console;
        let idle = rec.last_seen_ms + c.session_idle_s as i64 * 1000;
        let absolute = rec.created_at_ms + c.session_absolute_s as i64 * 1000;
        idle.min(absolute)
    }

    /// The live session whose cookie holds `id`, its last-seen time moved on; `None` when there is none (unknown,
    /// signed out or expired).
    pub async fn session(&self, id: &str) -> Result<Option<Session>, ConsoleError> {
        if id.is_empty() || id.len() > 200 {
            return Ok(None);
        }
        let key = console_session_key(&digest(id));
        let Some(item) = self.store.get(&key).await? else { return Ok(None) };
        let mut rec: ConsoleSessionRecord = decode(&item)?;
        let now = self.clock.now_ms();
        if self.expiry(&rec) <= now {
            return Ok(None);
        }
        if now - rec.last_seen_ms >= TOUCH_EVERY_MS {
            rec.last_seen_ms = now;
            let at = self.expiry(&rec);
            let put = Put::new(key, encode(&rec), Condition::Version(item.version)).expires_at(Some(at));
            // Another request touched it at the same time: either write is as good.
            match self.store.put(put).await {
                Ok(_) | Err(StoreError::Conflict) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let at = self.expiry(&rec);
        Ok(Some(view(rec, at)))
    }

    /// Ends the session whose cookie holds `id`.
    pub async fn sign_out(&self, id: &str) -> Result<(), ConsoleError> {
        if id.is_empty() || id.len() > 200 {
            return Ok(());
        }
        self.store.delete(&console_session_key(&digest(id)), Condition::None).await?;
        Ok(())
    }
}

fn view(rec: ConsoleSessionRecord, expires_at_ms: Millis) -> Session {
    Session { sub: rec.sub, name: rec.name, org: rec.org, scopes: rec.scopes, csrf: rec.csrf, expires_at_ms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::local::LocalKeys;
    use crate::secrets::LocalSecrets;
    use crate::store::memory::MemoryStore;

    fn app(clock: &ManualClock) -> Arc<super::super::App> {
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let keys = Arc::new(LocalKeys::new(store.clone(), [7u8; 32]));
        let secrets = Arc::new(LocalSecrets::new(Default::default(), [9u8; 32]));
        super::super::App::new(store, keys, secrets, Arc::new(clock.clone()), Config::built_in())
    }

    #[tokio::test]
    async fn a_link_signs_in_once_and_the_session_expires_when_idle() {
        let clock = ManualClock::new(1_700_000_000_000);
        let app = app(&clock);
        let c = &app.console;
        let (token, _) = c.create_link("ops", None, vec!["admin".into()], 600).await.unwrap();
        let new = c.redeem_link(&token).await.unwrap();
        assert!(matches!(c.redeem_link(&token).await, Err(ConsoleError::LinkUsed)));
        let s = c.session(&new.id).await.unwrap().unwrap();
        assert_eq!(s.scopes, vec!["admin".to_string()]);
        assert!(c.session("other").await.unwrap().is_none());
        clock.advance(std::time::Duration::from_millis(8 * 3600 * 1000 + 1));
        assert!(c.session(&new.id).await.unwrap().is_none(), "idle for 8 h");
        let (late, _) = c.create_link("ops", None, vec!["admin".into()], 60).await.unwrap();
        clock.advance(std::time::Duration::from_secs(61));
        assert!(matches!(c.redeem_link(&late).await, Err(ConsoleError::LinkInvalid)));
        assert!(matches!(c.create_link("ops", None, vec!["admin".into()], 3601).await, Err(ConsoleError::LinkMinutes)));
    }

    #[tokio::test]
    async fn sign_out_ends_the_session_and_the_store_never_holds_the_id() {
        let clock = ManualClock::new(1_700_000_000_000);
        let app = app(&clock);
        let (token, _) = app.console.create_link("ops", None, vec!["admin".into()], 600).await.unwrap();
        let new = app.console.redeem_link(&token).await.unwrap();
        assert!(app.store.get(&console_session_key(&new.id)).await.unwrap().is_none());
        assert!(app.store.get(&console_session_key(&digest(&new.id))).await.unwrap().is_some());
        app.console.sign_out(&new.id).await.unwrap();
        assert!(app.console.session(&new.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_busy_session_still_ends_twelve_hours_after_sign_in() {
        let clock = ManualClock::new(1_700_000_000_000);
        let app = app(&clock);
        let (token, _) = app.console.create_link("ops", None, vec!["admin".into()], 600).await.unwrap();
        let new = app.console.redeem_link(&token).await.unwrap();
        for _ in 0..(12 * 60 - 1) {
            clock.advance(std::time::Duration::from_secs(60));
            assert!(app.console.session(&new.id).await.unwrap().is_some());
        }
        clock.advance(std::time::Duration::from_secs(61));
        assert!(app.console.session(&new.id).await.unwrap().is_none(), "absolute expiry");
    }
}
