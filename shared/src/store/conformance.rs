//! One conformance suite for every `Store` adapter: the SQLite store, the in-memory fake, and (with the `aws`
//! feature) DynamoDB. Each check panics with a message naming the rule it broke.

use std::sync::Arc;

use super::*;
use crate::clock::{Clock, ManualClock};

fn put(pk: &str, sk: &str, body: &str, condition: Condition) -> Put {
    Put::new(Key::new(pk, sk), body.as_bytes().to_vec(), condition)
}

/// Runs every check. `clock` must be the clock the store was built with; `ns` keeps runs apart on a shared
/// backend.
pub async fn run(store: Arc<dyn Store>, clock: ManualClock, ns: &str) {
    let pk = |s: &str| format!("{ns}#{s}");

    // Versions start at 1 and grow by one per write.
    let v1 = store.put(put(&pk("a"), "x", "one", Condition::Absent)).await.expect("create");
    assert_eq!(v1, 1, "a new item has version 1");
    let item = store.get(&Key::new(pk("a"), "x")).await.unwrap().expect("item written");
    assert_eq!(item.body, b"one");
    assert_eq!(item.version, 1);

    // Absent refuses an existing item.
    assert!(
        matches!(store.put(put(&pk("a"), "x", "two", Condition::Absent)).await, Err(StoreError::Conflict)),
        "Absent on an existing item must conflict"
    );
    // Version guards.
    let v2 = store.put(put(&pk("a"), "x", "two", Condition::Version(1))).await.expect("version 1 holds");
    assert_eq!(v2, 2);
    assert!(
        matches!(store.put(put(&pk("a"), "x", "stale", Condition::Version(1))).await, Err(StoreError::Conflict)),
        "a stale version must conflict"
    );
    assert_eq!(store.get(&Key::new(pk("a"), "x")).await.unwrap().unwrap().body, b"two", "a conflict changes nothing");
    assert!(matches!(store.put(put(&pk("none"), "x", "b", Condition::Exists)).await, Err(StoreError::Conflict)));
    assert!(matches!(store.put(put(&pk("none"), "x", "b", Condition::Version(1))).await, Err(StoreError::Conflict)));
    assert_eq!(store.put(put(&pk("a"), "x", "three", Condition::None)).await.unwrap(), 3);

    // Delete with conditions.
    assert!(matches!(store.delete(&Key::new(pk("a"), "x"), Condition::Version(1)).await, Err(StoreError::Conflict)));
    store.delete(&Key::new(pk("a"), "x"), Condition::Version(3)).await.expect("delete at version");
    assert!(store.get(&Key::new(pk("a"), "x")).await.unwrap().is_none());
    store.delete(&Key::new(pk("a"), "x"), Condition::None).await.expect("deleting nothing is fine");

    // Query by prefix, in order, limited.
    for sk in ["c#2", "c#1", "c#3", "d#1"] {
        store.put(put(&pk("q"), sk, sk, Condition::None)).await.unwrap();
    }
    let got: Vec<String> = store.query(&pk("q"), "c#", 10).await.unwrap().into_iter().map(|i| i.key.sk).collect();
    assert_eq!(got, ["c#1", "c#2", "c#3"], "query returns the prefix in sort-key order");
    assert_eq!(store.query(&pk("q"), "c#", 2).await.unwrap().len(), 2, "query honours the limit");

    // Query back: below a sort key, newest first, limited.
    let back = |before: Option<&'static str>, limit| {
        let (store, pk) = (store.clone(), pk("q"));
        async move {
            let items = store.query_back(&pk, before, limit).await.unwrap();
            items.into_iter().map(|i| i.key.sk).collect::<Vec<String>>()
        }
    };
    assert_eq!(back(None, 10).await, ["d#1", "c#3", "c#2", "c#1"], "query_back returns every key, descending");
    assert_eq!(back(Some("c#3"), 10).await, ["c#2", "c#1"], "query_back starts below `before`");
    assert_eq!(back(None, 2).await, ["d#1", "c#3"], "query_back honours the limit");
    assert!(back(Some("c#1"), 10).await.is_empty());

    // Several items read together: in the order asked, `None` for an absent one.
    let (c1, c3, missing) = (Key::new(pk("q"), "c#1"), Key::new(pk("q"), "c#3"), Key::new(pk("q"), "c#9"));
    let many = store.get_many(&[&c3, &missing, &c1]).await.unwrap();
    let bodies: Vec<Option<Vec<u8>>> = many.into_iter().map(|i| i.map(|i| i.body)).collect();
    assert_eq!(bodies, [Some(b"c#3".to_vec()), None, Some(b"c#1".to_vec())], "get_many keeps the order asked");
    assert!(store.get_many(&[]).await.unwrap().is_empty());

    // Expiry: an expired item reads as absent and may be created again.
    let now = clock.now_ms();
    store.put(put(&pk("ttl"), "x", "short", Condition::None).expires_at(Some(now + 1_000))).await.unwrap();
    assert!(store.get(&Key::new(pk("ttl"), "x")).await.unwrap().is_some());
    clock.advance(std::time::Duration::from_secs(2));
    assert!(store.get(&Key::new(pk("ttl"), "x")).await.unwrap().is_none(), "expired items read as absent");
    let ttl_x = Key::new(pk("ttl"), "x");
    assert!(store.get_many(&[&ttl_x]).await.unwrap()[0].is_none(), "get_many reads expired items as absent too");
    assert!(store.query(&pk("ttl"), "", 10).await.unwrap().is_empty(), "expired items are not listed");
    store.put(put(&pk("ttl"), "x", "again", Condition::Absent)).await.expect("Absent holds for an expired item");
    store.put(put(&pk("ttl"), "y", "gone", Condition::None).expires_at(Some(clock.now_ms() + 1_000))).await.unwrap();
    clock.advance(std::time::Duration::from_secs(2));
    assert!(store.purge_expired().await.unwrap() <= 1, "purging is optional, but never removes live items");
    assert!(store.get(&Key::new(pk("ttl"), "x")).await.unwrap().is_some(), "a live item survives a purge");

    // Transactions: all or nothing.
    let ok = store
        .transact(vec![
            WriteOp::Put(put(&pk("t"), "1", "a", Condition::Absent)),
            WriteOp::Put(put(&pk("t"), "2", "b", Condition::Absent)),
        ])
        .await;
    assert!(ok.is_ok(), "independent creates commit together");
    let failed = store
        .transact(vec![
            WriteOp::Put(put(&pk("t"), "3", "c", Condition::Absent)),
            WriteOp::Check { key: Key::new(pk("t"), "1"), condition: Condition::Version(99) },
        ])
        .await;
    assert!(matches!(failed, Err(StoreError::Conflict)), "a failed check cancels the transaction");
    assert!(
        store.get(&Key::new(pk("t"), "3")).await.unwrap().is_none(),
        "nothing of a cancelled transaction is written"
    );
    store
        .transact(vec![
            WriteOp::Delete { key: Key::new(pk("t"), "1"), condition: Condition::Exists },
            WriteOp::Put(put(&pk("t"), "2", "b2", Condition::Version(1))),
        ])
        .await
        .expect("delete and update together");
    assert!(store.get(&Key::new(pk("t"), "1")).await.unwrap().is_none());

    // Sparse indexes.
    let due_pk = pk("due");
    for (sk, at) in [("x1", "0000000300"), ("x2", "0000000100"), ("x3", "0000000200")] {
        let mut p = put(&pk("idx"), sk, sk, Condition::None);
        p.due = Some(IndexKey { pk: due_pk.clone(), sk: at.into() });
        store.put(p).await.unwrap();
    }
    store.put(put(&pk("idx"), "x4", "not indexed", Condition::None)).await.unwrap();
    let due: Vec<String> = store
        .query_index(Index::Due, &due_pk, Some("0000000250"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.key.sk)
        .collect();
    assert_eq!(due, ["x2", "x3"], "index query is ordered by index key and bounded by sk_max");
    // Rewriting without the index key removes the item from the index.
    store.put(put(&pk("idx"), "x2", "x2", Condition::None)).await.unwrap();
    let due = store.query_index(Index::Due, &due_pk, None, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert!(store.query_index(Index::Repair, &due_pk, None, 10).await.unwrap().is_empty(), "indexes are separate");

    sharded_index(&store, ns).await;

    // Concurrency: of 32 writers racing on one version, exactly one wins.
    store.put(put(&pk("race"), "x", "0", Condition::None)).await.unwrap();
    let seen = store.get(&Key::new(pk("race"), "x")).await.unwrap().unwrap().version;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let store = store.clone();
        let key = pk("race");
        tasks.push(tokio::spawn(async move {
            store.put(put(&key, "x", &i.to_string(), Condition::Version(seen))).await.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as usize;
    }
    assert_eq!(wins, 1, "exactly one of the racing conditional writes wins");
}

/// A sharded index key (the `Due` index's `due#0..N`): what the sweep's reads of every shard must see.
async fn sharded_index(store: &Arc<dyn Store>, ns: &str) {
    const SHARDS: u32 = 4;
    let legacy = format!("{ns}#olddue");
    let shard_pk = |s: u32| format!("{ns}#due#{s}");
    let shards: Vec<String> = (0..SHARDS).map(shard_pk).collect();
    let write = |item_pk: String, due_pk: String, at: i64| {
        let store = store.clone();
        async move {
            let mut p = put(&item_pk, "chain", "c", Condition::None);
            p.due = Some(IndexKey { pk: due_pk, sk: format!("{at:015}") });
            store.put(p).await.unwrap();
        }
    };
    // Twenty items spread by the stable hash of their key: every one found, once, in due order.
    let mut expected = Vec::new();
    for n in 0..20i64 {
        let item_pk = format!("{ns}#sharded#{n}");
        write(item_pk.clone(), shard_pk(shard_of(&item_pk, SHARDS)), 1_000 + (n * 7) % 20).await;
        expected.push(((1_000 + (n * 7) % 20), item_pk));
    }
    expected.sort();
    let used: std::collections::BTreeSet<u32> = expected.iter().map(|(_, pk)| shard_of(pk, SHARDS)).collect();
    assert!(used.len() > 1, "the hash spreads items over several shards");
    let found = query_index_partitions(store, Index::Due, &shards, None, 100).await.unwrap();
    let found: Vec<String> = found.into_iter().map(|i| i.key.pk).collect();
    let expected_pks: Vec<String> = expected.iter().map(|(_, pk)| pk.clone()).collect();
    assert_eq!(found, expected_pks, "the shard reads find every item once, merged in index order");
    let due_by =
        query_index_partitions(store, Index::Due, &shards, Some(&format!("{:015}", 1_004)), 100).await.unwrap();
    assert_eq!(due_by.len(), 5, "sk_max bounds every shard");

    // An item moved from one due time to another is in exactly one place.
    let moved = format!("{ns}#sharded#3");
    write(moved.clone(), shard_pk(shard_of(&moved, SHARDS)), 5_000).await;
    let all = query_index_partitions(store, Index::Due, &shards, None, 100).await.unwrap();
    let entries: Vec<&Item> = all.iter().filter(|i| i.key.pk == moved).collect();
    assert_eq!(entries.len(), 1, "a rewritten item has one index entry");
    assert_eq!(entries[0].due.as_ref().unwrap().sk, format!("{:015}", 5_000), "at its new due time");
    assert_eq!(all.last().unwrap().key.pk, moved, "and sorts there");

    // An item of the legacy (unsharded) partition rewritten with its shard key leaves the legacy partition.
    let old = format!("{ns}#sharded#legacy");
    write(old.clone(), legacy.clone(), 900).await;
    let mut with_legacy = shards.clone();
    with_legacy.push(legacy.clone());
    let first = query_index_partitions(store, Index::Due, &with_legacy, None, 100).await.unwrap();
    assert_eq!(first.first().unwrap().key.pk, old, "the legacy partition is read with the shards");
    write(old.clone(), shard_pk(shard_of(&old, SHARDS)), 950).await;
    assert!(store.query_index(Index::Due, &legacy, None, 10).await.unwrap().is_empty(), "moved out of `due`");
    let after = query_index_partitions(store, Index::Due, &with_legacy, None, 100).await.unwrap();
    assert_eq!(after.iter().filter(|i| i.key.pk == old).count(), 1, "and into exactly one shard");

    // Fairness: a crowded partition does not take a small read's whole budget.
    let crowded = format!("{ns}#crowded");
    for n in 0..30 {
        write(format!("{ns}#crowd#{n}"), crowded.clone(), 10 + n).await;
    }
    let quiet: Vec<String> = (0..3).map(|s| format!("{ns}#quiet#{s}")).collect();
    for (s, q) in quiet.iter().enumerate() {
        write(format!("{ns}#calm#{s}"), q.clone(), 500 + s as i64).await;
    }
    let mut mixed = vec![crowded.clone()];
    mixed.extend(quiet.iter().cloned());
    let read = query_index_partitions(store, Index::Due, &mixed, None, 8).await.unwrap();
    for s in 0..3 {
        let calm = format!("{ns}#calm#{s}");
        assert!(read.iter().any(|i| i.key.pk == calm), "each quiet partition's item comes along ({calm})");
    }
    assert_eq!(read.len(), 8, "the quiet partitions' unused share goes to the crowded one");
    assert_eq!(read[0].key.pk, format!("{ns}#crowd#0"), "merged by index order: the crowded oldest first");
}
