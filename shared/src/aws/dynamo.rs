//! The DynamoDB `Store`: one table, keys `pk`/`sk`, a `version` number guarded by condition expressions, the
//! sparse GSIs `due` and `repair`, and the TTL attribute `expires_at` (epoch seconds). DynamoDB deletes expired
//! items late (moto never), so `expires_at_ms` is also checked on every read and condition.
//! `ConditionalCheckFailedException` and a cancelled transaction become the domain's `Conflict`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType, TransactWriteItem, Update,
};

use crate::clock::{Clock, Millis};
use crate::store::*;

pub struct DynamoStore {
    client: Client,
    table: String,
    clock: Arc<dyn Clock>,
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
fn put_expression(p: &Put) -> (String, Attrs) {
    let mut set = vec!["#v = if_not_exists(#v, :zero) + :one".to_string(), "#b = :b".to_string()];
    let mut remove = Vec::new();
    let mut values: Attrs = HashMap::from([
        (":zero".into(), n(0)),
        (":one".into(), n(1)),
        (":b".into(), AttributeValue::B(Blob::new(p.body.clone()))),
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
        Self { client, table, clock }
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

    fn update_of(&self, p: &Put, now: Millis) -> Result<Update, StoreError> {
        let (expr, mut values) = put_expression(p);
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
        let (expr, mut values) = put_expression(&put);
        let (cond, cond_values) = condition(put.condition, now);
        values.extend(cond_values);
        let names = names_for(&[Some(&expr), cond.as_deref()]);
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(&put.key)))
            .update_expression(expr)
            .set_condition_expression(cond)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match res {
            Ok(out) => Ok(out
                .attributes
                .as_ref()
                .and_then(|a| a.get("version"))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_conditional_check_failed_exception() { Err(StoreError::Conflict) } else { Err(unavailable(e)) }
            }
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
        let mut items = Vec::with_capacity(ops.len());
        for op in &ops {
            let item = match op {
                WriteOp::Put(p) => TransactWriteItem::builder().update(self.update_of(p, now)?).build(),
                WriteOp::Delete { key, condition: c } => {
                    let (cond, values) = condition(*c, now);
                    let mut d = Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_attrs(key)))
                        .set_condition_expression(cond.clone());
                    if cond.is_some() {
                        d = d
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
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = e.into_service_error();
                if e.is_transaction_canceled_exception() { Err(StoreError::Conflict) } else { Err(unavailable(e)) }
            }
        }
    }
}
