//! The warm path's memory: the last chain record this process decoded and the last access token it opened, per
//! chain. A warm hand-out still reads the chain from the store every time (that read is what makes a refresh in
//! another process, a repair or a deletion visible at once); what it skips is the work that gives the same answer
//! for the same bytes: decoding the record (when the stored bytes are exactly those decoded last time) and opening
//! the access token (when the sealed token is exactly the one opened last time — sealing draws a fresh nonce, so a
//! new token never looks like an old one).
//!
//! Opened tokens stay in memory as `SecretString` (zeroed when dropped) for as long as they are the chain's
//! current token, as they would in any client that uses them; both maps are bounded and emptied when full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use secrecy::SecretString;

use crate::records::{ChainRecord, decode};
use crate::store::{Item, StoreError};

/// Chains remembered at most (per map); about 6 KB each.
const MAX_ENTRIES: usize = 2_048;

/// The stored bytes of a chain and what they decode to.
type Decoded = (Vec<u8>, Arc<ChainRecord>);

#[derive(Default)]
pub(super) struct WarmChains {
    /// Chain partition key → its last decoded content.
    decoded: Mutex<HashMap<String, Decoded>>,
    /// Chain partition key → the sealed access token and its plaintext.
    opened: Mutex<HashMap<String, (String, SecretString)>>,
}

fn insert_bounded<V>(map: &mut HashMap<String, V>, key: &str, value: V) {
    if map.len() >= MAX_ENTRIES && !map.contains_key(key) {
        map.clear();
    }
    map.insert(key.to_string(), value);
}

impl WarmChains {
    /// The chain record stored in `item`, decoded once per distinct content.
    pub(super) fn decode(&self, item: Item) -> Result<Arc<ChainRecord>, StoreError> {
        if let Some((body, chain)) = self.decoded.lock().unwrap_or_else(|e| e.into_inner()).get(&item.key.pk)
            && *body == item.body
        {
            return Ok(chain.clone());
        }
        let chain = Arc::new(decode::<ChainRecord>(&item)?);
        let mut decoded = self.decoded.lock().unwrap_or_else(|e| e.into_inner());
        insert_bounded(&mut decoded, &item.key.pk, (item.body, chain.clone()));
        Ok(chain)
    }

    /// The plaintext of `sealed`, if it is the access token last opened for the chain `pk`.
    pub(super) fn opened(&self, pk: &str, sealed: &str) -> Option<SecretString> {
        let opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        opened.get(pk).filter(|(s, _)| s == sealed).map(|(_, token)| token.clone())
    }

    pub(super) fn remember_opened(&self, pk: &str, sealed: &str, token: &SecretString) {
        let mut opened = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        insert_bounded(&mut opened, pk, (sealed.to_string(), token.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::encode;
    use crate::store::Key;
    use secrecy::ExposeSecret;

    fn item(pk: &str, chain: &ChainRecord) -> Item {
        Item {
            key: Key { pk: pk.into(), sk: "chain".into() },
            version: 1,
            body: encode(chain),
            expires_at_ms: None,
            due: None,
            repair: None,
        }
    }

    #[test]
    fn the_same_bytes_decode_once_and_other_bytes_decode_again() {
        let warm = WarmChains::default();
        let mut chain: ChainRecord = serde_json::from_value(serde_json::json!({
            "provider": "p", "status": "healthy", "generation": 1
        }))
        .unwrap();
        let a = warm.decode(item("c#1", &chain)).unwrap();
        let b = warm.decode(item("c#1", &chain)).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same bytes: the same record, not decoded again");
        chain.access_expires_at_ms = Some(99);
        let c = warm.decode(item("c#1", &chain)).unwrap();
        assert_eq!(c.access_expires_at_ms, Some(99), "new bytes are decoded");
        let other = warm.decode(item("c#2", &chain)).unwrap();
        assert!(!Arc::ptr_eq(&c, &other), "per chain");
    }

    #[test]
    fn an_opened_token_is_only_given_for_the_same_sealed_text() {
        let warm = WarmChains::default();
        warm.remember_opened("c#1", "sealed-a", &SecretString::from("token-a"));
        assert_eq!(warm.opened("c#1", "sealed-a").unwrap().expose_secret(), "token-a");
        assert!(warm.opened("c#1", "sealed-b").is_none(), "another sealed token");
        assert!(warm.opened("c#2", "sealed-a").is_none(), "another chain");
    }
}
