//! The DynamoDB `Store`: one table, keys `pk`/`sk`, a `version` number guarded by condition expressions, the
//! sparse GSIs `due` and `repair`, and the TTL attribute `expires_at` (epoch seconds). DynamoDB deletes expired
//! items late (moto never), so `expires_at_ms` is also checked on every read and condition.
//! `ConditionalCheckFailedException` and a cancelled transaction become the domain's `Conflict`.
//!
//! **Conditional writes are idempotent under the SDK's retries.** The SDK retries a request whose answer it did
//! not get (a timeout, a dropped connection, a 5xx); when the first attempt had in fact been applied, the retry
//! meets its own write and its condition fails. So every write carries a write id `w` (random, one per `put` or
//! `transact` call, the same in every retry of it) and asks for `ReturnValuesOnConditionCheckFailure = ALL_OLD`
//! (per item in a transaction). On a failed condition the item DynamoDB returns is compared with what we wrote:
//! the same write id, the same body and, for `Condition::Version(v)`, version `v + 1` — then the write was ours
//! and succeeded on an earlier attempt, and `put` answers with that version instead of `Conflict`. A transaction
//! is ours when any of its written items carries its write id (transactions are all or nothing; DynamoDB also
//! deduplicates them by the SDK's `ClientRequestToken` for 10 minutes, which moto does not). Comparing the write
//! id and not only the bytes matters: two writers that write the same body over the same version (the rate-limit
//! governor's counters do) are different writes, and the second must still see `Conflict`. What stays `Conflict`:
//! a delete (an absent item does not say who deleted it), and a write of ours already overwritten by someone
//! else before the retry arrived — both safe, the caller reads again.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TransactWriteItem, Update,
};

use crate::clock::{Clock, Millis};
use crate::ids::random_id;
use crate::store::*;

pub struct DynamoStore {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
    /// Tests: send every conditional write twice, as an SDK retry after a lost answer does.
    #[cfg(any(test, feature = "test-hooks"))]
    send_twice: std::sync::atomic::AtomicBool,
}

type Attrs = HashMap<String, AttributeValue>;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(anyhow::anyhow!("dynamodb: {e}"))
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}
fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key_attrs(key: &Key) -> Attrs {
    HashMap::from([("pk".to_string(), s(&key.pk)), ("sk".to_string(), s(&key.sk))])
}

/// The `#name` placeholders an expression uses (DynamoDB refuses unused ones).
fn names_for(exprs: &[Option<&str>]) -> HashMap<String, String> {
    [
        ("#pk", "pk"),
        ("#v", "version"),
        ("#b", "body"),
        ("#e", "expires_at"),
        ("#em", "expires_at_ms"),
        ("#dp", "due_pk"),
        ("#ds", "due_sk"),
        ("#rp", "repair_pk"),
        ("#rs", "repair_sk"),
        ("#w", "w"),
    ]
    .into_iter()
    .filter(|(a, _)| {
        exprs.iter().flatten().any(|e| {
            e.match_indices(a).any(|(i, _)| !e[i + a.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_'))
        })
    })
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

/// The condition expression of a `Condition`, and the values it uses.
fn condition(c: Condition, now: Millis) -> (Option<String>, Attrs) {
    let live = "(attribute_not_exists(#em) OR #em > :now)";
    match c {
        Condition::None => (None, Attrs::new()),
        Condition::Absent => {
            (Some("attribute_not_exists(#pk) OR #em <= :now".into()), HashMap::from([(":now".into(), n(now))]))
        }
        Condition::Exists => {
            (Some(format!("attribute_exists(#pk) AND {live}")), HashMap::from([(":now".into(), n(now))]))
        }
        Condition::Version(v) => (
            Some(format!("#v = :ver AND {live}")),
            HashMap::from([(":now".into(), n(now)), (":ver".into(), n(v as i64))]),
        ),
    }
}

/// The update expression that writes a whole item and bumps its version.
/// `write_id` is the call's write id (see the module comment).
fn put_expression(p: &Put, write_id: &str) -> (String, Attrs) {
    let mut set =
        vec!["#v = if_not_exists(#v, :zero) + :one".to_string(), "#b = :b".to_string(), "#w = :w".to_string()];
    let mut remove = Vec::new();
    let mut values: Attrs = HashMap::from([
        (":zero".into(), n(0)),
        (":one".into(), n(1)),
        (":b".into(), AttributeValue::B(Blob::new(p.body.clone()))),
        (":w".into(), s(write_id)),
    ]);
    match p.expires_at_ms {
        Some(t) => {
            set.push("#em = :em".into());
            set.push("#e = :e".into());
            values.insert(":em".into(), n(t));
            values.insert(":e".into(), n(t.div_euclid(1000) + 1));
        }
        None => remove.extend(["#em", "#e"]),
    }
    for (ik, pk_name, sk_name, pv, sv) in
        [(&p.due, "#dp", "#ds", ":dp", ":ds"), (&p.repair, "#rp", "#rs", ":rp", ":rs")]
    {
        match ik {
            Some(ik) => {
                set.push(format!("{pk_name} = {pv}"));
                set.push(format!("{sk_name} = {sv}"));
                values.insert(pv.into(), s(&ik.pk));
                values.insert(sv.into(), s(&ik.sk));
            }
            None => remove.extend([pk_name, sk_name]),
        }
    }
    let mut expr = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        expr.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    (expr, values)
}

/// The version of our own earlier write, when `old` (the item a failed condition returned) is that write: the
/// same write id and body, and for `Condition::Version(v)` version `v + 1`.
fn own_earlier_write(p: &Put, write_id: &str, old: Option<&Attrs>) -> Option<Version> {
    let old = old?;
    let item = to_item(old).ok()?;
    let same_write = old.get("w").and_then(|w| w.as_s().ok()).is_some_and(|w| w == write_id);
    let same_attrs =
        item.body == p.body && item.expires_at_ms == p.expires_at_ms && item.due == p.due && item.repair == p.repair;
    let expected = match p.condition {
        Condition::Version(v) => item.version == v + 1,
        Condition::Absent | Condition::Exists | Condition::None => item.version >= 1,
    };
    (same_write && same_attrs && expected).then_some(item.version)
}

fn to_item(a: &Attrs) -> Result<Item, StoreError> {
    let text = |k: &str| a.get(k).and_then(|v| v.as_s().ok()).cloned();
    let num = |k: &str| a.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse::<i64>().ok());
    let index = |p: &str, s: &str| match (text(p), text(s)) {
        (Some(pk), Some(sk)) => Some(IndexKey { pk, sk }),
        _ => None,
    };
    Ok(Item {
        key: Key {
            pk: text("pk").ok_or_else(|| unavailable("item without pk"))?,
            sk: text("sk").ok_or_else(|| unavailable("item without sk"))?,
        },
        version: num("version").unwrap_or(0) as u64,
        body: a.get("body").and_then(|v| v.as_b().ok()).map(|b| b.as_ref().to_vec()).unwrap_or_default(),
        expires_at_ms: num("expires_at_ms"),
        due: index("due_pk", "due_sk"),
        repair: index("repair_pk", "repair_sk"),
    })
}

impl DynamoStore {
    pub fn new(client: Client, table: String, clock: Arc<dyn Clock>) -> Self {
        Self {
            client,
            table,
            clock,
            #[cfg(any(test, feature = "test-hooks"))]
            send_twice: Default::default(),
        }
    }

    /// Tests: from now on send every `put` and `transact` twice (the first answer is dropped), as the SDK does
    /// when it retries a request whose answer was lost although DynamoDB had applied it.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn send_every_write_twice(&self, on: bool) {
        self.send_twice.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn sent_twice(&self) -> bool {
        #[cfg(any(test, feature = "test-hooks"))]
        return self.send_twice.load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(any(test, feature = "test-hooks")))]
        false
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn live(&self, item: Item) -> Option<Item> {
        let now = self.clock.now_ms();
        item.expires_at_ms.is_none_or(|t| t > now).then_some(item)
    }

    /// Creates the table as the SAM template does (for tests against a local stand-in).
    pub async fn create_table(&self) -> anyhow::Result<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
        };
        let key = |name: &str, t: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(t).build();
        let gsi = |name: &str, pk: &str, sk: &str| -> anyhow::Result<GlobalSecondaryIndex> {
            Ok(GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(pk, KeyType::Hash)?)
                .key_schema(key(sk, KeyType::Range)?)
                .projection(Projection::builder().projection_type(ProjectionType::All).build())
                .build()?)
        };
        self.client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk")?)
            .attribute_definitions(attr("sk")?)
            .attribute_definitions(attr("due_pk")?)
            .attribute_definitions(attr("due_sk")?)
            .attribute_definitions(attr("repair_pk")?)
            .attribute_definitions(attr("repair_sk")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(gsi("due", "due_pk", "due_sk")?)
            .global_secondary_indexes(gsi("repair", "repair_pk", "repair_sk")?)
            .send()
            .await?;
        Ok(())
    }

    /// Runs a query page after page until `limit` live items are found or the results end.
    async fn pages(&self, req: QueryFluentBuilder, limit: usize) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let res = req
                .clone()
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable(e.into_service_error()))?;
            for a in res.items() {
                if let Some(item) = self.live(to_item(a)?) {
                    out.push(item);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            match res.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    fn update_of(&self, p: &Put, now: Millis, write_id: &str) -> Result<Update, StoreError> {
        let (expr, mut values) = put_expression(p, write_id);
        let (cond, cond_values) = condition(p.condition, now);
        values.extend(cond_values);
        let names = names_for(&[Some(&expr), cond.as_deref()]);
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_attrs(&p.key)))
            .update_expression(expr)
            .set_condition_expression(cond)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(unavailable)
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable(e.into_service_error()))?;
        match out.item {
            Some(a) => Ok(self.live(to_item(&a)?)),
            None => Ok(None),
        }
    }

    async fn put(&self, put: Put) -> Result<Version, StoreError> {
        let now = self.clock.now_ms();
        let write_id = random_id();
        let (expr, mut values) = put_expression(&put, &write_id);
        let (cond, cond_values) = condition(put.condition, now);
        values.extend(cond_values);
        let names = names_for(&[Some(&expr), cond.as_deref()]);
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(&put.key)))
            .update_expression(expr)
            .set_condition_expression(cond)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if self.sent_twice() {
            let _ = req.clone().send().await;
        }
        match req.send().await {
            Ok(out) => Ok(out
                .attributes
                .as_ref()
                .and_then(|a| a.get("version"))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)),
            Err(e) => match e.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    match own_earlier_write(&put, &write_id, failed.item()) {
                        Some(version) => {
                            tracing::debug!(version, "a retried conditional write had succeeded: ours");
                            Ok(version)
                        }
                        None => Err(StoreError::Conflict),
                    }
                }
                e => Err(unavailable(e)),
            },
        }
    }

    async fn delete(&self, key: &Key, condition_: Condition) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let (cond, values) = condition(condition_, now);
        let mut req = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(key)))
            .set_condition_expression(cond.clone());
        if cond.is_some() {
            req = req
                .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                .set_expression_attribute_names(Some(names_for(&[cond.as_deref()])))
                .set_expression_attribute_values(Some(values));
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_conditional_check_failed_exception() { Err(StoreError::Conflict) } else { Err(unavailable(e)) }
            }
        }
    }

    async fn query(&self, pk: &str, sk_prefix: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        let req =
            self.client.query().table_name(&self.table).consistent_read(true).expression_attribute_values(":pk", s(pk));
        // DynamoDB refuses an empty string as a key value, so "every sort key" is a query on pk alone.
        let req = if sk_prefix.is_empty() {
            req.key_condition_expression("pk = :pk")
        } else {
            req.key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", s(sk_prefix))
        };
        self.pages(req, limit).await
    }

    async fn query_back(&self, pk: &str, before: Option<&str>, limit: usize) -> Result<Vec<Item>, StoreError> {
        let req = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .scan_index_forward(false)
            .expression_attribute_values(":pk", s(pk));
        let req = match before {
            Some(b) => {
                req.key_condition_expression("pk = :pk AND sk < :before").expression_attribute_values(":before", s(b))
            }
            None => req.key_condition_expression("pk = :pk"),
        };
        self.pages(req, limit).await
    }

    async fn query_index(
        &self,
        index: Index,
        pk: &str,
        sk_max: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let (name, pk_attr, sk_attr) = match index {
            Index::Due => ("due", "due_pk", "due_sk"),
            Index::Repair => ("repair", "repair_pk", "repair_sk"),
        };
        // Secondary indexes are eventually consistent (see the Store contract).
        let req =
            self.client.query().table_name(&self.table).index_name(name).expression_attribute_values(":pk", s(pk));
        let req = match sk_max {
            Some(max) => req
                .key_condition_expression(format!("{pk_attr} = :pk AND {sk_attr} <= :max"))
                .expression_attribute_values(":max", s(max)),
            None => req.key_condition_expression(format!("{pk_attr} = :pk")),
        };
        self.pages(req, limit).await
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let write_id = random_id();
        let mut items = Vec::with_capacity(ops.len());
        for op in &ops {
            let item = match op {
                WriteOp::Put(p) => TransactWriteItem::builder().update(self.update_of(p, now, &write_id)?).build(),
                WriteOp::Delete { key, condition: c } => {
                    let (cond, values) = condition(*c, now);
                    let mut d = Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_attrs(key)))
                        .set_condition_expression(cond.clone());
                    if cond.is_some() {
                        d = d
                            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                            .set_expression_attribute_names(Some(names_for(&[cond.as_deref()])))
                            .set_expression_attribute_values(Some(values));
                    }
                    TransactWriteItem::builder().delete(d.build().map_err(unavailable)?).build()
                }
                WriteOp::Check { key, condition: c } => {
                    let (cond, values) = condition(*c, now);
                    let Some(cond) = cond else { continue };
                    let check = ConditionCheck::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_attrs(key)))
                        .set_expression_attribute_names(Some(names_for(&[Some(&cond)])))
                        .condition_expression(cond)
                        .set_expression_attribute_values(Some(values))
                        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                        .build()
                        .map_err(unavailable)?;
                    TransactWriteItem::builder().condition_check(check).build()
                }
            };
            items.push(item);
        }
        if items.is_empty() {
            return Ok(());
        }
        let req = self.client.transact_write_items().set_transact_items(Some(items));
        if self.sent_twice() {
            let _ = req.clone().send().await;
        }
        match req.send().await {
            Ok(_) => Ok(()),
            Err(e) => match e.into_service_error() {
                TransactWriteItemsError::TransactionCanceledException(cancelled) => {
                    // All or nothing: an item carrying this call's write id means the whole transaction was
                    // applied by an earlier attempt.
                    let ours = cancelled
                        .cancellation_reasons()
                        .iter()
                        .any(|r| r.item().and_then(|a| a.get("w")).and_then(|w| w.as_s().ok()) == Some(&write_id));
                    if ours {
                        tracing::debug!("a retried transaction had succeeded: ours");
                        Ok(())
                    } else {
                        Err(StoreError::Conflict)
                    }
                }
                e => Err(unavailable(e)),
            },
        }
    }
}
