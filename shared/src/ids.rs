//! Names of organisations, databases and containers, validated once at the edge.
//!
//! The rule (one for all three, everywhere): names are **case-insensitive**. They are stored and compared in
//! lower case; `Eol`, `EOL` and `eol` name the same container. A name is 1–63 characters of `a-z`, `0-9`, `-`
//! and `_`, starting with a letter or digit. Case-insensitive names match how people type them in URLs and
//! connection strings, and rule out two containers that only differ in case.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error(
    "{kind} name {given:?} is not valid: use 1-63 characters a-z, 0-9, '-' or '_', starting with a letter or digit"
)]
pub struct InvalidName {
    pub kind: &'static str,
    pub given: String,
}

fn normalize(kind: &'static str, raw: &str) -> Result<String, InvalidName> {
    let lower = raw.to_ascii_lowercase();
    let ok = !lower.is_empty()
        && lower.len() <= 63
        && lower.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && lower.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(lower) } else { Err(InvalidName { kind, given: raw.chars().take(80).collect() }) }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidName> {
                normalize($kind, raw).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                Self::parse(&s)
            }
        }
        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(/// An organisation (tenant).
    OrgId, "organisation");
name_type!(/// A database: a named group of containers inside an organisation.
    DbName, "database");
name_type!(/// A container's alias, unique within its database.
    Alias, "container alias");

/// The full address of one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerRef {
    pub org: OrgId,
    pub db: DbName,
    pub alias: Alias,
}

impl ContainerRef {
    /// The container of three names, if each is valid (messages and keys carry them as text).
    pub fn parse(org: &str, db: &str, alias: &str) -> Option<Self> {
        Some(Self { org: OrgId::parse(org).ok()?, db: DbName::parse(db).ok()?, alias: Alias::parse(alias).ok()? })
    }

    /// `db/alias`, the container's name inside its organisation (used in encryption contexts and keys).
    pub fn local_name(&self) -> String {
        format!("{}/{}", self.db, self.alias)
    }
}

impl fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "container '{}' of database '{}'", self.alias, self.db)
    }
}

/// A random identifier: 128 bits, URL-safe.
pub fn random_id() -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_validated() {
        assert_eq!(Alias::parse("EOL").unwrap(), Alias::parse("eol").unwrap());
        assert_eq!(OrgId::parse("Acme-BV").unwrap().as_str(), "acme-bv");
        for bad in ["", "-x", "a b", "a/b", "..", "é", &"x".repeat(64)] {
            assert!(DbName::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(DbName::parse(&"x".repeat(63)).is_ok());
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn well_formed(n: &str) -> bool {
        (1..=63).contains(&n.len())
            && n.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any text: no panic; what passes is well formed, and normalising it again changes nothing.
        #[test]
        fn fuzz_name_normalisation_is_idempotent(raw in "[A-Za-z0-9_./ -]{0,70}|\\PC{0,80}") {
            if let Ok(n) = OrgId::parse(&raw) {
                prop_assert!(well_formed(n.as_str()), "{:?} -> {:?}", raw, n.as_str());
                let again = OrgId::parse(n.as_str()).unwrap();
                prop_assert_eq!(again.as_str(), n.as_str());
                prop_assert_eq!(n.as_str(), raw.to_ascii_lowercase());
            }
            // Case never decides: upper and lower case of one text both pass (as one name) or both fail.
            let (upper, lower) = (DbName::parse(&raw.to_ascii_uppercase()), Alias::parse(&raw.to_ascii_lowercase()));
            prop_assert_eq!(upper.is_ok(), lower.is_ok());
            if let (Ok(u), Ok(l)) = (upper, lower) {
                prop_assert_eq!(u.as_str(), l.as_str());
            }
        }

        /// Every well-formed name passes, in any case.
        #[test]
        fn fuzz_well_formed_names_pass(raw in "[A-Za-z0-9][A-Za-z0-9_-]{0,62}") {
            let n = OrgId::parse(&raw).unwrap();
            prop_assert_eq!(n.as_str(), raw.to_ascii_lowercase());
        }
    }
}
