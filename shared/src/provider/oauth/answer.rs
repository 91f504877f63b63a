//! The token response type `oauth2` reads a `200` into: RFC 6749 5.1 as providers really send it.
//!
//! `oauth2`'s `StandardTokenResponse` wants `expires_in` as a number and `token_type` present; Exact sends
//! `"expires_in": "600"`, and some providers leave `token_type` out. A wrong `token_type` is not worth losing a
//! rotated refresh token over, so it reads as `bearer`; an `expires_in` that is not a finite, non-negative number
//! reads as "not given" (the profile's lifetime applies).

use std::time::Duration;

use oauth2::basic::BasicTokenType;
use oauth2::{AccessToken, RefreshToken, Scope, TokenResponse};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::TokenSet;

#[derive(Debug, Deserialize, Serialize)]
pub(crate) struct ProviderTokenResponse {
    access_token: AccessToken,
    #[serde(default = "bearer", deserialize_with = "any_token_type")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "number_or_string", skip_serializing_if = "Option::is_none")]
    expires_in: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<RefreshToken>,
    #[serde(rename = "scope", default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "oauth2::helpers::deserialize_space_delimited_vec")]
    #[serde(serialize_with = "oauth2::helpers::serialize_space_delimited_vec")]
    scopes: Option<Vec<Scope>>,
}

impl ProviderTokenResponse {
    /// The tokens, moved into `SecretString`s.
    pub(crate) fn into_token_set(self) -> TokenSet {
        TokenSet {
            access_token: SecretString::from(self.access_token.into_secret()),
            refresh_token: self.refresh_token.map(|t| SecretString::from(t.into_secret())),
            expires_in: self.expires_in,
            scope: self.scopes.map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
        }
    }
}

impl TokenResponse for ProviderTokenResponse {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in.and_then(|s| Duration::try_from_secs_f64(s).ok())
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

fn any_token_type<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BasicTokenType, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "bearer" => BasicTokenType::Bearer,
            "mac" => BasicTokenType::Mac,
            other => BasicTokenType::Extension(other.to_string()),
        },
        _ => BasicTokenType::Bearer,
    })
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        N(f64),
        S(String),
    }
    Ok(match Option::<NumOrStr>::deserialize(d)? {
        None => None,
        Some(NumOrStr::N(n)) => Some(n),
        Some(NumOrStr::S(s)) => s.trim().parse().ok(),
    }
    // "NaN", "inf" and negative lifetimes read as "not given".
    .filter(|n: &f64| n.is_finite() && *n >= 0.0))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn read(json: &str) -> ProviderTokenResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn expires_in_may_be_a_string_or_a_number() {
        assert_eq!(read(r#"{"access_token":"a","expires_in":"600"}"#).expires_in, Some(600.0));
        assert_eq!(read(r#"{"access_token":"a","expires_in":3599}"#).expires_in, Some(3599.0));
        assert_eq!(read(r#"{"access_token":"a"}"#).expires_in, None);
        assert_eq!(read(r#"{"access_token":"a","expires_in":"-1"}"#).expires_in, None, "negative: not given");
        let r = read(r#"{"access_token":"a","token_type":"bearer","expires_in":" 600 "}"#);
        assert_eq!(TokenResponse::expires_in(&r), Some(Duration::from_secs(600)));
    }

    #[test]
    fn token_type_may_be_missing_or_odd() {
        assert_eq!(read(r#"{"access_token":"a"}"#).token_type, BasicTokenType::Bearer);
        assert_eq!(read(r#"{"access_token":"a","token_type":"Bearer"}"#).token_type, BasicTokenType::Bearer);
        assert_eq!(read(r#"{"access_token":"a","token_type":7}"#).token_type, BasicTokenType::Bearer);
        assert!(serde_json::from_str::<ProviderTokenResponse>(r#"{"token_type":"bearer"}"#).is_err(), "no token");
    }

    #[test]
    fn the_token_set_keeps_tokens_and_scopes() {
        let set =
            read(r#"{"access_token":"AT","refresh_token":"RT","scope":"openid  offline_access"}"#).into_token_set();
        assert_eq!(set.access_token.expose_secret(), "AT");
        assert_eq!(set.refresh_token.as_ref().map(|t| t.expose_secret()), Some("RT"));
        assert_eq!(set.scope.as_deref(), Some("openid  offline_access"), "the provider's words, as sent");
    }
}
