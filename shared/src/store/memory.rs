//! In-memory `Store` for unit tests. It enforces the same conditions and returns the same `Conflict` as the
//! real adapters (the conformance suite checks that).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::*;
use crate::clock::Clock;

pub struct MemoryStore {
    items: Mutex<BTreeMap<Key, Item>>,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { items: Mutex::new(BTreeMap::new()), clock }
    }

    fn live<'a>(&self, item: Option<&'a Item>) -> Option<&'a Item> {
        let now = self.clock.now_ms();
        item.filter(|i| i.expires_at_ms.is_none_or(|t| t > now))
    }

    fn apply(&self, items: &mut BTreeMap<Key, Item>, op: &WriteOp) {
        match op {
            WriteOp::Put(p) => {
                let version = items.get(&p.key).map_or(1, |i| i.version + 1);
                items.insert(
                    p.key.clone(),
                    Item {
                        key: p.key.clone(),
                        version,
                        body: p.body.clone(),
                        expires_at_ms: p.expires_at_ms,
                        due: p.due.clone(),
                        repair: p.repair.clone(),
                    },
                );
            }
            WriteOp::Delete { key, .. } => {
                items.remove(key);
            }
            WriteOp::Check { .. } => {}
        }
    }

    fn check(&self, items: &BTreeMap<Key, Item>, op: &WriteOp) -> bool {
        let (key, cond) = match op {
            WriteOp::Put(p) => (&p.key, p.condition),
            WriteOp::Delete { key, condition } | WriteOp::Check { key, condition } => (key, *condition),
        };
        condition_holds(cond, self.live(items.get(key)).map(|i| i.version))
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let items = self.items.lock().unwrap();
        Ok(self.live(items.get(key)).cloned())
    }

    async fn put(&self, put: Put) -> Result<Version, StoreError> {
        let mut items = self.items.lock().unwrap();
        let key = put.key.clone();
        let op = WriteOp::Put(put);
        if !self.check(&items, &op) {
            return Err(StoreError::Conflict);
        }
        self.apply(&mut items, &op);
        Ok(items[&key].version)
    }

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.transact(vec![WriteOp::Delete { key: key.clone(), condition }]).await
    }

    async fn query(&self, pk: &str, sk_prefix: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        let items = self.items.lock().unwrap();
        let start = Key::new(pk, sk_prefix);
        Ok(items
            .range(start..)
            .take_while(|(k, _)| k.pk == pk && k.sk.starts_with(sk_prefix))
            .filter_map(|(_, i)| self.live(Some(i)).cloned())
            .take(limit)
            .collect())
    }

    async fn query_back(&self, pk: &str, before: Option<&str>, limit: usize) -> Result<Vec<Item>, StoreError> {
        let items = self.items.lock().unwrap();
        Ok(items
            .range(Key::new(pk, "")..)
            .take_while(|(k, _)| k.pk == pk)
            .filter(|(k, _)| before.is_none_or(|b| k.sk.as_str() < b))
            .filter_map(|(_, i)| self.live(Some(i)).cloned())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .take(limit)
            .collect())
    }

    async fn query_index(
        &self,
        index: Index,
        pk: &str,
        sk_max: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let items = self.items.lock().unwrap();
        let mut hits: Vec<Item> = items
            .values()
            .filter_map(|i| self.live(Some(i)))
            .filter(|i| {
                let ik = match index {
                    Index::Due => &i.due,
                    Index::Repair => &i.repair,
                };
                ik.as_ref().is_some_and(|ik| ik.pk == pk && sk_max.is_none_or(|m| ik.sk.as_str() <= m))
            })
            .cloned()
            .collect();
        let sk = |i: &Item| match index {
            Index::Due => i.due.as_ref().map(|k| k.sk.clone()),
            Index::Repair => i.repair.as_ref().map(|k| k.sk.clone()),
        };
        hits.sort_by_key(|i| (sk(i), i.key.clone()));
        hits.truncate(limit);
        Ok(hits)
    }

    async fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = self.clock.now_ms();
        let mut items = self.items.lock().unwrap();
        let before = items.len();
        items.retain(|_, i| i.expires_at_ms.is_none_or(|t| t > now));
        Ok(before - items.len())
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let mut items = self.items.lock().unwrap();
        if !ops.iter().all(|op| self.check(&items, op)) {
            return Err(StoreError::Conflict);
        }
        for op in &ops {
            self.apply(&mut items, op);
        }
        Ok(())
    }
}
