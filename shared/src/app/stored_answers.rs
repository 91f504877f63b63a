//! The query proxy's cache kept in the store, for profiles with `cache_in_store = true`: what one process or
//! Lambda instance fetched, another serves for the rest of the cache time without calling the provider.
//!
//! One item per container and cache key (`records::stored_answer_key`, the key's SHA-256 as sort key), expiring
//! with the cache time (an older item reads as absent; SQLite's purge and DynamoDB's TTL remove it). The status,
//! headers and body are sealed with the organisation's key, bound to the container and the field
//! `cached_answer`, like every other secret-bearing record; the cache key is sealed with them and checked on
//! reading, so an item moved to another key does not answer. Answers above [`STORED_ANSWER_MAX_BYTES`] stay in
//! memory only (a DynamoDB item holds at most 400 KB). Identical reads are coalesced within a process, not
//! across processes. The cache is an optimisation: a store or key failure here is a miss, never an error.

use std::sync::Arc;

use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::ids::ContainerRef;
use crate::keys::{ContainerFields, Field, Vault};
use crate::records::{self, StoredAnswerRecord};
use crate::store::{Condition, Put, Store};

/// The largest answer (cache key, headers and body) kept in the store: sealing adds a third (base64), and a
/// DynamoDB item holds at most 400 KB.
pub const STORED_ANSWER_MAX_BYTES: usize = 256 * 1024;

/// An answer as the cache keeps it.
pub struct StoredAnswer {
    pub at_ms: Millis,
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// What is sealed before the body (one JSON line, then `\n`, then the body's bytes).
#[derive(Serialize, Deserialize)]
struct Head {
    key: String,
    status: u16,
    headers: Vec<(String, String)>,
}

#[derive(Clone)]
pub struct StoredAnswers {
    store: Arc<dyn Store>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl StoredAnswers {
    pub fn new(store: Arc<dyn Store>, vault: Arc<Vault>, clock: Arc<dyn Clock>) -> Self {
        Self { store, vault, clock }
    }

    /// The answer stored for `key` of `c` less than `ttl_ms` ago, if any.
    pub async fn get(&self, c: &ContainerRef, key: &str, ttl_ms: Millis) -> Option<StoredAnswer> {
        let item = match self.store.get(&records::stored_answer_key(c, &sha256_hex(key))).await {
            Ok(item) => item?,
            Err(e) => {
                tracing::warn!(error = %e, "the stored cache could not be read; asking the provider");
                return None;
            }
        };
        let record: StoredAnswerRecord = records::decode(&item).ok()?;
        if self.clock.now_ms() - record.stored_at_ms >= ttl_ms {
            return None;
        }
        let fields = ContainerFields::of(c);
        let plain = match self.vault.open(&fields.context(Field::CachedAnswer), &record.sealed_answer).await {
            Ok(plain) => plain,
            Err(e) => {
                tracing::warn!(error = %e, "a stored cached answer does not open; asking the provider");
                return None;
            }
        };
        let split = plain.iter().position(|b| *b == b'\n')?;
        let head: Head = serde_json::from_slice(&plain[..split]).ok()?;
        if head.key != key {
            return None;
        }
        let headers = head
            .headers
            .into_iter()
            .filter_map(|(k, v)| Some((HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(&v).ok()?)))
            .collect();
        Some(StoredAnswer {
            at_ms: record.stored_at_ms,
            status: StatusCode::from_u16(head.status).ok()?,
            headers,
            body: Bytes::copy_from_slice(&plain[split + 1..]),
        })
    }

    /// Keeps `answer` for `key` of `c` until `ttl_ms` after it was fetched; too large an answer is not kept.
    pub async fn put(&self, c: &ContainerRef, key: &str, ttl_ms: Millis, answer: &StoredAnswer) {
        let head = Head {
            key: key.to_string(),
            status: answer.status.as_u16(),
            headers: answer
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
        };
        let mut plain = zeroize::Zeroizing::new(serde_json::to_vec(&head).expect("a head serializes"));
        if plain.len() + 1 + answer.body.len() > STORED_ANSWER_MAX_BYTES {
            return;
        }
        plain.push(b'\n');
        plain.extend_from_slice(&answer.body);
        let fields = ContainerFields::of(c);
        let sealed_answer = match self.vault.seal(&fields.context(Field::CachedAnswer), &plain).await {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::warn!(error = %e, "a cached answer could not be sealed; kept in memory only");
                return;
            }
        };
        let record = StoredAnswerRecord { stored_at_ms: answer.at_ms, sealed_answer };
        let put = Put::new(records::stored_answer_key(c, &sha256_hex(key)), records::encode(&record), Condition::None)
            .expires_at(Some(answer.at_ms + ttl_ms));
        if let Err(e) = self.store.put(put).await {
            tracing::warn!(error = %e, "a cached answer could not be stored; kept in memory only");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::CacheLimits;
    use crate::store::memory::MemoryStore;

    fn container(alias: &str) -> ContainerRef {
        ContainerRef {
            org: crate::ids::OrgId::parse("acme").unwrap(),
            db: crate::ids::DbName::parse("finance").unwrap(),
            alias: crate::ids::Alias::parse(alias).unwrap(),
        }
    }

    #[tokio::test]
    async fn a_stored_answer_is_sealed_bound_to_its_key_and_gone_after_its_time() {
        let clock = ManualClock::new(1_700_000_000_000);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new(Arc::new(clock.clone())));
        let keys = Arc::new(crate::keys::local::LocalKeys::new(store.clone(), [3u8; 32]));
        crate::keys::Keys::create_org_key(&*keys, "acme").await.unwrap();
        let vault = Arc::new(Vault::new(keys, Arc::new(clock.clone()), CacheLimits::default()));
        let answers = StoredAnswers::new(store.clone(), vault, Arc::new(clock.clone()));
        let c = container("eol");
        let body = Bytes::from_static(b"{\"d\":{\"results\":[{\"Name\":\"ROW-TEXT\"}]}}\n2nd line");
        let answer = StoredAnswer {
            at_ms: clock.now_ms(),
            status: StatusCode::OK,
            headers: vec![(reqwest::header::ETAG, HeaderValue::from_static("\"e1\""))],
            body: body.clone(),
        };
        answers.put(&c, "acme#finance/eol#url", 60_000, &answer).await;

        let item = store.get(&records::stored_answer_key(&c, &sha256_hex("acme#finance/eol#url"))).await.unwrap();
        let raw = String::from_utf8_lossy(&item.unwrap().body).to_string();
        assert!(!raw.contains("ROW-TEXT") && !raw.contains("eol#url"), "sealed: {raw}");

        let got = answers.get(&c, "acme#finance/eol#url", 60_000).await.expect("a hit");
        assert_eq!((got.status, got.body, got.headers.len()), (StatusCode::OK, body, 1));
        assert!(answers.get(&c, "acme#finance/eol#other", 60_000).await.is_none());
        assert!(answers.get(&container("yuki"), "acme#finance/eol#url", 60_000).await.is_none(), "per container");

        // Moved to another key's place (or another container's), it does not answer.
        let moved = store.get(&records::stored_answer_key(&c, &sha256_hex("acme#finance/eol#url"))).await.unwrap();
        let moved = moved.unwrap();
        for (to, key) in [(&c, "k2"), (&container("yuki"), "acme#finance/eol#url")] {
            let put = Put::new(records::stored_answer_key(to, &sha256_hex(key)), moved.body.clone(), Condition::None);
            store.put(put).await.unwrap();
            assert!(answers.get(to, key, 60_000).await.is_none(), "{key}");
        }

        clock.advance(std::time::Duration::from_secs(30));
        assert!(answers.get(&c, "acme#finance/eol#url", 30_000).await.is_none(), "a shorter cache time now");
        assert!(answers.get(&c, "acme#finance/eol#url", 60_000).await.is_some());
        clock.advance(std::time::Duration::from_secs(31));
        assert!(answers.get(&c, "acme#finance/eol#url", 60_000).await.is_none(), "after the cache time");

        let big =
            StoredAnswer { body: Bytes::from(vec![b'x'; STORED_ANSWER_MAX_BYTES]), at_ms: clock.now_ms(), ..answer };
        answers.put(&c, "big", 60_000, &big).await;
        assert!(answers.get(&c, "big", 60_000).await.is_none(), "too large for a store item");
    }
}
