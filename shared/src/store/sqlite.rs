//! The embedded `Store`: one SQLite file in WAL mode, shared safely by several processes.
//!
//! Conditional writes run inside `BEGIN IMMEDIATE` transactions, which SQLite serialises across processes,
//! so "write only if version = N" holds across every `serve` process on the same file. Commits are
//! `synchronous = FULL`: an acknowledged write survives a killed process and a power cut.
//! Reads go through a small pool of connections and run inline (WAL readers never wait for the writer);
//! writes run on the blocking pool so a busy file never stalls the async runtime.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::*;
use crate::clock::Clock;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (
    pk TEXT NOT NULL,
    sk TEXT NOT NULL,
    version INTEGER NOT NULL,
    body BLOB NOT NULL,
    expires_at INTEGER,
    due_pk TEXT, due_sk TEXT,
    repair_pk TEXT, repair_sk TEXT,
    PRIMARY KEY (pk, sk)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS items_due ON items (due_pk, due_sk) WHERE due_pk IS NOT NULL;
CREATE INDEX IF NOT EXISTS items_repair ON items (repair_pk, repair_sk) WHERE repair_pk IS NOT NULL;
";

macro_rules! columns {
    () => {
        "pk, sk, version, body, expires_at, due_pk, due_sk, repair_pk, repair_sk"
    };
}
const COLUMNS: &str = columns!();
/// The read of one item: a constant, so the warm path builds no SQL text per call.
const GET_ONE: &str = concat!("SELECT ", columns!(), " FROM items WHERE pk = ?1 AND sk = ?2");

pub struct SqliteStore {
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    writer: Arc<Mutex<Connection>>,
    clock: Arc<dyn Clock>,
}

fn unavailable(e: impl Into<anyhow::Error>) -> StoreError {
    StoreError::Unavailable(e.into())
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn row_to_item(row: &rusqlite::Row<'_>) -> rusqlite::Result<Item> {
    let index_key = |pk: Option<String>, sk: Option<String>| match (pk, sk) {
        (Some(pk), Some(sk)) => Some(IndexKey { pk, sk }),
        _ => None,
    };
    Ok(Item {
        key: Key { pk: row.get(0)?, sk: row.get(1)? },
        version: row.get::<_, i64>(2)? as u64,
        body: row.get(3)?,
        expires_at_ms: row.get(4)?,
        due: index_key(row.get(5)?, row.get(6)?),
        repair: index_key(row.get(7)?, row.get(8)?),
    })
}

impl SqliteStore {
    /// Opens (and creates) the store file.
    pub fn open(path: &Path, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let writer = open_connection(path)?;
        writer.execute_batch(SCHEMA)?;
        let readers = (0..4).map(|_| open_connection(path).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { readers, next_reader: AtomicUsize::new(0), writer: Arc::new(Mutex::new(writer)), clock })
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        // Take a free reader if there is one, else wait on the next in turn.
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..self.readers.len() {
            if let Ok(conn) = self.readers[(start + i) % self.readers.len()].try_lock() {
                return f(&conn).map_err(unavailable);
            }
        }
        let conn = self.readers[start % self.readers.len()]
            .lock()
            .map_err(|_| unavailable(anyhow::anyhow!("reader poisoned")))?;
        f(&conn).map_err(unavailable)
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<Option<Version>, StoreError> {
        let writer = self.writer.clone();
        let now = self.clock.now_ms();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().map_err(|_| unavailable(anyhow::anyhow!("writer poisoned")))?;
            write_ops(&mut conn, &ops, now)
        })
        .await
        .map_err(unavailable)?
    }
}

/// Applies `ops` in one IMMEDIATE transaction; returns the version written by the last put.
fn write_ops(conn: &mut Connection, ops: &[WriteOp], now: Millis) -> Result<Option<Version>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(unavailable)?;
    let mut last_version = None;
    for op in ops {
        let (key, condition) = match op {
            WriteOp::Put(p) => (&p.key, p.condition),
            WriteOp::Delete { key, condition } | WriteOp::Check { key, condition } => (key, *condition),
        };
        let current: Option<(i64, Option<i64>)> = tx
            .prepare_cached("SELECT version, expires_at FROM items WHERE pk = ?1 AND sk = ?2")
            .and_then(|mut s| s.query_row(params![key.pk, key.sk], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(unavailable)?;
        let live_version = current.filter(|(_, exp)| exp.is_none_or(|t| t > now)).map(|(v, _)| v as u64);
        if !condition_holds(condition, live_version) {
            return Err(StoreError::Conflict); // dropping `tx` rolls back
        }
        match op {
            WriteOp::Put(p) => {
                let version = current.map_or(1, |(v, _)| v as u64 + 1);
                tx.prepare_cached(&format!(
                    "INSERT OR REPLACE INTO items ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ))
                .and_then(|mut s| {
                    s.execute(params![
                        p.key.pk,
                        p.key.sk,
                        version as i64,
                        p.body,
                        p.expires_at_ms,
                        p.due.as_ref().map(|k| &k.pk),
                        p.due.as_ref().map(|k| &k.sk),
                        p.repair.as_ref().map(|k| &k.pk),
                        p.repair.as_ref().map(|k| &k.sk),
                    ])
                })
                .map_err(unavailable)?;
                last_version = Some(version);
            }
            WriteOp::Delete { key, .. } => {
                tx.prepare_cached("DELETE FROM items WHERE pk = ?1 AND sk = ?2")
                    .and_then(|mut s| s.execute(params![key.pk, key.sk]))
                    .map_err(unavailable)?;
            }
            WriteOp::Check { .. } => {}
        }
    }
    tx.commit().map_err(unavailable)?;
    Ok(last_version)
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        let now = self.clock.now_ms();
        self.read(|c| c.prepare_cached(GET_ONE)?.query_row(params![key.pk, key.sk], row_to_item).optional())
            .map(|i| i.filter(|i| i.expires_at_ms.is_none_or(|t| t > now)))
    }

    async fn get_many(&self, keys: &[&Key]) -> Result<Vec<Option<Item>>, StoreError> {
        let now = self.clock.now_ms();
        let items = self.read(|c| {
            // One read transaction: one snapshot, and the file's locks taken once for every item.
            c.prepare_cached("BEGIN DEFERRED")?.execute([])?;
            let read = keys
                .iter()
                .map(|key| c.prepare_cached(GET_ONE)?.query_row(params![key.pk, key.sk], row_to_item).optional())
                .collect::<rusqlite::Result<Vec<_>>>();
            // A read-only transaction: ending it any way releases the snapshot (ROLLBACK also after a failed read).
            c.prepare_cached(if read.is_ok() { "COMMIT" } else { "ROLLBACK" })?.execute([])?;
            read
        })?;
        Ok(items.into_iter().map(|i| i.filter(|i| i.expires_at_ms.is_none_or(|t| t > now))).collect())
    }

    async fn put(&self, put: Put) -> Result<Version, StoreError> {
        self.write(vec![WriteOp::Put(put)]).await.map(|v| v.unwrap_or(1))
    }

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        self.write(vec![WriteOp::Delete { key: key.clone(), condition }]).await.map(|_| ())
    }

    async fn query(&self, pk: &str, sk_prefix: &str, limit: usize) -> Result<Vec<Item>, StoreError> {
        let now = self.clock.now_ms();
        // Prefix match as a range: sk >= prefix AND sk < prefix + U+10FFFF.
        let upper = format!("{sk_prefix}\u{10FFFF}");
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM items WHERE pk = ?1 AND sk >= ?2 AND sk < ?3
                 AND (expires_at IS NULL OR expires_at > ?4) ORDER BY sk LIMIT ?5"
            ))?;
            let rows = s.query_map(params![pk, sk_prefix, upper, now, limit as i64], row_to_item)?;
            rows.collect()
        })
    }

    async fn query_back(&self, pk: &str, before: Option<&str>, limit: usize) -> Result<Vec<Item>, StoreError> {
        let now = self.clock.now_ms();
        let before = before.map(str::to_string).unwrap_or_else(|| "\u{10FFFF}".to_string());
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM items WHERE pk = ?1 AND sk < ?2
                 AND (expires_at IS NULL OR expires_at > ?3) ORDER BY sk DESC LIMIT ?4"
            ))?;
            let rows = s.query_map(params![pk, before, now, limit as i64], row_to_item)?;
            rows.collect()
        })
    }

    async fn query_index(
        &self,
        index: Index,
        pk: &str,
        sk_max: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let now = self.clock.now_ms();
        let (ipk, isk) = match index {
            Index::Due => ("due_pk", "due_sk"),
            Index::Repair => ("repair_pk", "repair_sk"),
        };
        let max = sk_max.map(str::to_string).unwrap_or_else(|| "\u{10FFFF}".to_string());
        self.read(|c| {
            let mut s = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM items WHERE {ipk} = ?1 AND {isk} <= ?2
                 AND (expires_at IS NULL OR expires_at > ?3) ORDER BY {isk}, pk, sk LIMIT ?4"
            ))?;
            let rows = s.query_map(params![pk, max, now, limit as i64], row_to_item)?;
            rows.collect()
        })
    }

    async fn transact(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        self.write(ops).await.map(|_| ())
    }

    async fn purge_expired(&self) -> Result<usize, StoreError> {
        let writer = self.writer.clone();
        let now = self.clock.now_ms();
        tokio::task::spawn_blocking(move || {
            let conn = writer.lock().map_err(|_| unavailable(anyhow::anyhow!("writer poisoned")))?;
            conn.execute("DELETE FROM items WHERE expires_at IS NOT NULL AND expires_at <= ?1", params![now])
                .map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }
}
