//! The console's OpenID Connect sign-in: authorization code with PKCE (S256), `state` and `nonce`, against the
//! deployment's issuer (`[console] issuer`, discovered at `/.well-known/openid-configuration`), with the client
//! held as the app registration `console` (Secrets port). The ID token is verified (signature with the issuer's
//! JWKS, `iss`, `aud`, `exp`, `nonce`); its groups claim (`[console] groups_claim`) is mapped by
//! `[[console.groups]]` to an organisation (or the platform) and scopes. Someone whose groups map to nothing is
//! refused.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::Ports;
use super::console::{ConsoleError, ConsoleSessions, Grant, NewSession};
use crate::clock::Clock;
use crate::config::{CONSOLE_APP, Config};
use crate::ids::random_id;
use crate::provider::AppRegistration;
use crate::records::{ConsoleOidcRecord, console_oidc_key, decode, encode};
use crate::secrets::Secrets;
use crate::store::{Condition, Put, Store, StoreError};

/// How long a person may take at the IdP.
const SIGNIN_TTL_MS: i64 = 10 * 60_000;

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("no OpenID Connect issuer is configured")]
    NotConfigured,
    #[error("no app registration `console` holds the OIDC client")]
    NoClient,
    #[error("the sign-in state is unknown, expired or used")]
    StateInvalid,
    #[error("none of the person's groups is mapped to an organisation")]
    NotAllowed,
    #[error("the identity provider: {0}")]
    Provider(String),
    #[error("the ID token was refused: {0}")]
    IdToken(String),
    #[error(transparent)]
    Session(#[from] ConsoleError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Clone)]
pub struct ConsoleOidc {
    store: Arc<dyn Store>,
    secrets: Arc<dyn Secrets>,
    clock: Arc<dyn Clock>,
    config: Arc<Config>,
    http: reqwest::Client,
    sessions: ConsoleSessions,
}

impl ConsoleOidc {
    pub fn new(p: &Ports, sessions: ConsoleSessions) -> Self {
        let Ports { store, secrets, clock, config, http, .. } = p.clone();
        Self { store, secrets, clock, config, http, sessions }
    }

    async fn client(&self) -> Result<AppRegistration, OidcError> {
        self.secrets.app(CONSOLE_APP).await.map_err(|e| OidcError::Provider(e.to_string()))?.ok_or(OidcError::NoClient)
    }

    async fn discover(&self) -> Result<Discovery, OidcError> {
        let issuer = self.config.console.issuer.as_deref().ok_or(OidcError::NotConfigured)?;
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let d: Discovery = self.get_json(&url).await?;
        if d.issuer.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(OidcError::Provider("the discovery document names another issuer".into()));
        }
        Ok(d)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let res = self.http.get(url).send().await.map_err(|e| OidcError::Provider(format!("{url}: {e}")))?;
        if !res.status().is_success() {
            return Err(OidcError::Provider(format!("{url}: status {}", res.status())));
        }
        res.json().await.map_err(|e| OidcError::Provider(format!("{url}: {e}")))
    }

    /// Starts a sign-in: the IdP's authorization URL (PKCE S256, state, nonce) to send the browser to, and the
    /// state (the console binds it to the browser with a cookie).
    pub async fn start(&self) -> Result<(String, String), OidcError> {
        let d = self.discover().await?;
        let client = self.client().await?;
        let (state, nonce, verifier) = (random_id(), random_id(), format!("{}{}", random_id(), random_id()));
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let expires_at_ms = self.clock.now_ms() + SIGNIN_TTL_MS;
        let rec = ConsoleOidcRecord { nonce: nonce.clone(), pkce_verifier: verifier, expires_at_ms };
        let put = Put::new(console_oidc_key(&state), encode(&rec), Condition::Absent).expires_at(Some(expires_at_ms));
        self.store.put(put).await?;
        let scopes = std::iter::once("openid")
            .chain(self.config.console.scopes.iter().map(String::as_str).filter(|s| *s != "openid"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut url = url::Url::parse(&d.authorization_endpoint).map_err(|e| OidcError::Provider(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("scope", &scopes)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok((url.into(), state))
    }

    /// Completes a sign-in from the IdP's redirect: the state once, the code exchanged, the ID token verified,
    /// the groups mapped; a session follows.
    pub async fn complete(&self, code: &str, state: &str) -> Result<NewSession, OidcError> {
        if state.is_empty() || state.len() > 200 || code.is_empty() || code.len() > 4096 {
            return Err(OidcError::StateInvalid);
        }
        let key = console_oidc_key(state);
        let item = self.store.get(&key).await?.ok_or(OidcError::StateInvalid)?;
        match self.store.delete(&key, Condition::Version(item.version)).await {
            Ok(()) => {}
            Err(StoreError::Conflict) => return Err(OidcError::StateInvalid),
            Err(e) => return Err(e.into()),
        }
        let rec: ConsoleOidcRecord = decode(&item)?;
        if rec.expires_at_ms <= self.clock.now_ms() {
            return Err(OidcError::StateInvalid);
        }
        let d = self.discover().await?;
        let client = self.client().await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", client.redirect_uri.as_str()),
            ("code_verifier", rec.pkce_verifier.as_str()),
        ];
        let res = self
            .http
            .post(&d.token_endpoint)
            .basic_auth(&client.client_id, Some(client.client_secret.expose_secret()))
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?;
        if !res.status().is_success() {
            return Err(OidcError::Provider(format!("token endpoint: status {}", res.status())));
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: String,
        }
        let answer: TokenAnswer = res.json().await.map_err(|e| OidcError::Provider(format!("token answer: {e}")))?;
        let jwks: JwkSet = self.get_json(&d.jwks_uri).await?;
        let claims = verify_id_token(&answer.id_token, &jwks, &d.issuer, &client.client_id, &rec.nonce)?;
        let grant = self.map_groups(&claims)?;
        Ok(self.sessions.start(grant, "console.signin.oidc").await?)
    }

    /// The session a person's ID token gives, by `[[console.groups]]`: a platform group wins (with every scope of
    /// the platform groups the person is in); otherwise the first configured organisation the person has a group
    /// for, with the scopes of all its groups the person is in.
    fn map_groups(&self, claims: &serde_json::Value) -> Result<Grant, OidcError> {
        let c = &self.config.console;
        let held: BTreeSet<String> = match claims.get(&c.groups_claim) {
            Some(serde_json::Value::Array(v)) => v.iter().filter_map(|g| g.as_str().map(str::to_string)).collect(),
            Some(serde_json::Value::String(s)) => {
                s.split([' ', ',']).filter(|g| !g.is_empty()).map(str::to_string).collect()
            }
            _ => BTreeSet::new(),
        };
        let matching: Vec<_> = c.groups.iter().filter(|g| held.contains(&g.value)).collect();
        let platform: Vec<_> = matching.iter().filter(|g| g.platform).collect();
        let (org, rows): (Option<String>, Vec<_>) = if !platform.is_empty() {
            (None, platform.into_iter().copied().collect())
        } else {
            let org = matching.iter().find_map(|g| g.org.clone()).ok_or(OidcError::NotAllowed)?;
            let org = org.to_ascii_lowercase();
            let rows = matching
                .iter()
                .filter(|g| g.org.as_deref().map(str::to_ascii_lowercase).as_deref() == Some(org.as_str()))
                .copied()
                .collect();
            (Some(org), rows)
        };
        let mut scopes: Vec<String> = Vec::new();
        for row in rows {
            for s in &row.scopes {
                if !scopes.contains(s) {
                    scopes.push(s.clone());
                }
            }
        }
        let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let name = ["name", "preferred_username", "email"]
            .iter()
            .find_map(|k| claims.get(*k).and_then(|v| v.as_str()))
            .unwrap_or(&sub)
            .to_string();
        Ok(Grant { sub: format!("oidc:{sub}"), name, org, scopes })
    }
}

/// Verifies an ID token: signed by a key of the issuer's JWKS (asymmetric algorithms only), for `client_id`,
/// from `issuer`, unexpired, with our `nonce`. Returns its claims.
pub fn verify_id_token(
    token: &str,
    jwks: &JwkSet,
    issuer: &str,
    client_id: &str,
    nonce: &str,
) -> Result<serde_json::Value, OidcError> {
    let bad = |why: &str| OidcError::IdToken(why.to_string());
    let header = jsonwebtoken::decode_header(token).map_err(|_| bad("not a JWT"))?;
    let asymmetric = matches!(
        header.alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    );
    if !asymmetric {
        return Err(bad("not signed with an asymmetric key"));
    }
    let jwk = match header.kid.as_deref() {
        Some(kid) => jwks.find(kid),
        None => jwks.keys.first(),
    }
    .ok_or_else(|| bad("signed with a key the issuer does not publish"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| bad("the issuer's key is unusable"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map_err(|e| OidcError::IdToken(e.to_string()))?;
    if data.claims.get("nonce").and_then(|v| v.as_str()) != Some(nonce) {
        return Err(bad("the nonce does not match"));
    }
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::local::LocalKeys;
    use crate::secrets::LocalSecrets;
    use crate::store::memory::MemoryStore;

    fn app(config: &str) -> Arc<super::super::App> {
        let clock = ManualClock::new(1_700_000_000_000);
        let store = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let keys = Arc::new(LocalKeys::new(store.clone(), [7u8; 32]));
        let secrets = Arc::new(LocalSecrets::new(Default::default(), [9u8; 32]));
        super::super::App::new(store, keys, secrets, Arc::new(clock), Config::from_toml(config).unwrap())
    }

    const GROUPS: &str = r#"
[console]
groups_claim = "roles"
[[console.groups]]
value = "acme-read"
org = "Acme"
scopes = ["containers.read"]
[[console.groups]]
value = "acme-admin"
org = "acme"
scopes = ["admin"]
[[console.groups]]
value = "ops"
platform = true
scopes = ["admin"]
"#;

    #[test]
    fn groups_map_to_one_organisation_with_every_matching_scope_and_a_platform_group_wins() {
        let app = app(GROUPS);
        let o = &app.console_oidc;
        let g = o
            .map_groups(&serde_json::json!({"sub": "s", "name": "Ann", "roles": ["acme-read", "acme-admin", "x"]}))
            .unwrap();
        assert_eq!(
            (g.org.as_deref(), g.scopes.clone(), g.name.as_str()),
            (Some("acme"), vec!["containers.read".to_string(), "admin".into()], "Ann")
        );
        let g = o.map_groups(&serde_json::json!({"sub": "s", "roles": ["acme-read", "ops"]})).unwrap();
        assert_eq!((g.org, g.scopes), (None, vec!["admin".to_string()]));
        let g = o.map_groups(&serde_json::json!({"sub": "s", "roles": "acme-read"})).unwrap();
        assert_eq!(g.org.as_deref(), Some("acme"), "a claim given as one string");
        for nothing in
            [serde_json::json!({"sub": "s", "roles": ["other"]}), serde_json::json!({"sub": "s", "groups": ["ops"]})]
        {
            assert!(matches!(o.map_groups(&nothing), Err(OidcError::NotAllowed)), "{nothing}");
        }
    }

    #[test]
    fn an_id_token_signed_with_a_shared_secret_or_none_is_refused() {
        let claims =
            serde_json::json!({"iss": "https://idp", "aud": "ck", "sub": "s", "exp": 4_000_000_000u64, "nonce": "n"});
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        let jwks = JwkSet { keys: vec![] };
        assert!(matches!(verify_id_token(&hs, &jwks, "https://idp", "ck", "n"), Err(OidcError::IdToken(_))));
        let none =
            format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#), URL_SAFE_NO_PAD.encode(claims.to_string()));
        assert!(matches!(verify_id_token(&none, &jwks, "https://idp", "ck", "n"), Err(OidcError::IdToken(_))));
    }

    #[test]
    fn a_group_row_names_an_organisation_or_the_platform() {
        for bad in [
            "[[console.groups]]\nvalue = \"g\"\nscopes = [\"admin\"]",
            "[[console.groups]]\nvalue = \"g\"\norg = \"a\"\nplatform = true\nscopes = [\"admin\"]",
            "[[console.groups]]\nvalue = \"g\"\norg = \"a\"\nscopes = []",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
        assert!(Config::from_toml("[console]\nsession_idle_s = 100\nsession_absolute_s = 10").is_err());
    }
}
