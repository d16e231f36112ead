//! Store behaviour seen from outside: retention with snapshot catch-up, and
//! refusal of a data file written by a newer outpost.

mod common;

use common::*;
use outpost::engine::EngineError;
use outpost::model::Op;
use outpost::store::{Expect, LocalWrite, StoreError};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn after_retention_a_subscriber_behind_the_horizon_gets_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::native(relay.addr).await;
    a.put("home", "n1", json!({"v": 1})).await;
    a.put("home", "n1", json!({"v": 2})).await;
    a.put("home", "n2", json!({"v": 3})).await;
    a.put("other", "x", json!({"v": 0})).await;
    // A retention pass keeping nothing older than now.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let trimmed = relay.state.engine.trim(Duration::ZERO).await.unwrap();
    assert_eq!(trimmed, 4);
    assert_eq!(relay.state.engine.horizon(), 5);

    // From seq 0 the changes are gone: current states instead, then synced.
    let mut b = Client::native(relay.addr).await;
    let (frames, synced) = b.subscribe("home", 0).await;
    let got: Vec<_> = frames
        .iter()
        .map(|f| (f["type"].clone(), f["id"].clone(), f["fields"].clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (json!("entity"), json!("n1"), json!({"v": 2})),
            (json!("entity"), json!("n2"), json!({"v": 3})),
        ]
    );
    assert_eq!(synced["seq"], 4);
    // New changes continue live after the snapshot.
    a.put("home", "n3", json!({"v": 4})).await;
    let live = b.recv().await;
    assert_eq!(
        (live["type"].clone(), live["seq"].clone()),
        (json!("change"), json!(5))
    );

    // A subscriber already at the head gets nothing from before.
    let mut c = Client::native(relay.addr).await;
    let (frames, synced) = c.subscribe("home", 5).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(synced["seq"], 5);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pinned_cursor_holds_retention_back() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let e = relay.state.engine.clone();
    e.pin_cursor("upstream");
    let mut a = Client::native(relay.addr).await;
    for n in 0..4 {
        a.put("home", &format!("n{n}"), json!({"n": n})).await;
    }
    e.set_cursor("upstream", 2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(e.trim(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(e.horizon(), 3);
    // A log read says the last seq of its own transaction: a replication
    // link behind a trim tells the trimmed range from an empty log by it.
    let cap = outpost::store::Cap::items(10);
    let page = e.log_after_page(0, cap).unwrap();
    assert_eq!(page.seq, 4, "read with the page");
    assert_eq!(page.items.first().map(|(s, _)| *s), Some(3));
    let page = e.log_after_page(4, cap).unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.seq, 4, "an empty read past the end says it too");
    let (frames, _) = Client::native(relay.addr).await.subscribe("home", 2).await;
    let seqs: Vec<_> = frames.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![3, 4]);
    relay.shutdown().await.unwrap();
}

#[test]
fn a_data_file_from_a_newer_outpost_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // Create a store, then mark it as written by a future schema.
    let mut relay = Proc::spawn(&["serve", "--listen", "127.0.0.1:0", "--data", data]);
    relay.terminate().expect("clean exit");
    {
        let db = redb::Database::create(dir.path().join("outpost.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            let mut t = tx.open_table(meta).unwrap();
            t.insert("schema_version", 99u32.to_le_bytes().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let (code, _, err) = run_cli(&["serve", "--listen", "127.0.0.1:0", "--data", data]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("schema") && err.contains("99"), "{err}");
}

fn doc_write(id: &str, fields: serde_json::Value, expect: Option<Expect>) -> LocalWrite {
    LocalWrite {
        collection: "doc".into(),
        id: id.into(),
        op: Op::Put,
        fields: serde_json::from_value(fields).unwrap(),
        client_us: None,
        expect,
    }
}

fn expect_fields(v: serde_json::Value) -> Option<Expect> {
    Some(Expect::Fields(serde_json::from_value(v).unwrap()))
}

#[tokio::test]
async fn a_failed_precondition_applies_nothing_of_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let e = relay.state.engine.clone();
    // `null` expects the field absent: true of an entity never written.
    let first = vec![
        doc_write("d", json!({"rev": 1}), expect_fields(json!({"rev": null}))),
        doc_write("log1", json!({"n": 1}), None),
    ];
    let outs = e.push("s", "t", None, first).await.unwrap();
    assert_eq!(outs.len(), 2);
    // The same expectation now fails: neither write of the job lands.
    let again = vec![
        doc_write("log2", json!({"n": 2}), None),
        doc_write("d", json!({"rev": 2}), expect_fields(json!({"rev": null}))),
    ];
    let err = e.push("s", "t", None, again).await.unwrap_err();
    assert_eq!(err.class(), outpost::engine::ErrorClass::Precondition);
    match err {
        EngineError::Store(StoreError::PreconditionFailed { index, found }) => {
            assert_eq!(index, 1);
            assert_eq!(found, json!({"rev": 1}));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(e.entity("s", "doc", "log2").unwrap().is_none());
    assert_eq!(e.last_seq(), 2);
    // Version preconditions compare the entity's change count.
    let v = vec![doc_write("d", json!({"rev": 2}), Some(Expect::Version(1)))];
    e.push("s", "t", None, v).await.unwrap();
    let stale = vec![doc_write("d", json!({"rev": 3}), Some(Expect::Version(1)))];
    let err = e.push("s", "t", None, stale).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Store(StoreError::PreconditionFailed { ref found, .. }) if *found == json!(2)),
        "{err:?}"
    );
    let d = e.entity("s", "doc", "d").unwrap().unwrap();
    assert_eq!(d.state.visible()["rev"], 2);
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_compare_and_swap_lets_exactly_one_through() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let e = relay.state.engine.clone();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let w = doc_write(
                "d",
                json!({"rev": 1, "by": i}),
                expect_fields(json!({"rev": null})),
            );
            e.push("s", "t", None, vec![w]).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(err) => assert_eq!(
                err.class(),
                outpost::engine::ErrorClass::Precondition,
                "{err}"
            ),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(e.entity("s", "doc", "d").unwrap().unwrap().version, 1);
    relay.shutdown().await.unwrap();
}

/// A schema-1 data dir (before per-type versions) is migrated at open:
/// every entity gets a per-type version in the order of its newest change,
/// and the relay goes on counting from there.
#[tokio::test]
async fn a_schema_1_store_gets_per_type_versions_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let relay = start(config(dir.path())).await;
        let e = relay.state.engine.clone();
        for (id, v) in [("b", 1), ("a", 2), ("b", 3), ("c", 4)] {
            e.push("s", "t", None, vec![doc_write(id, json!({"v": v}), None)])
                .await
                .unwrap();
        }
        relay.shutdown().await.unwrap();
    }
    // Make it look like schema 1: no per-type tables, no versions.
    {
        let db = redb::Database::create(dir.path().join("outpost.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
            let mut t = tx.open_table(meta).unwrap();
            t.insert("schema_version", 1u32.to_le_bytes().as_slice())
                .unwrap();
        }
        let v: redb::TableDefinition<(&str, &str), u64> =
            redb::TableDefinition::new("type_versions");
        let i: redb::TableDefinition<(&str, &str, u64), &str> =
            redb::TableDefinition::new("type_index");
        tx.delete_table(v).unwrap();
        tx.delete_table(i).unwrap();
        tx.commit().unwrap();
    }
    let relay = start(config(dir.path())).await;
    let e = relay.state.engine.clone();
    let (latest, ents) = e.type_changes("s", "doc", 0, 100).unwrap();
    let got: Vec<(String, u64)> = ents
        .iter()
        .map(|(id, x)| (id.clone(), x.type_version))
        .collect();
    assert_eq!(latest, 3);
    assert_eq!(got, vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]);
    let outs = e
        .push("s", "t", None, vec![doc_write("a", json!({"v": 5}), None)])
        .await
        .unwrap();
    assert_eq!(outs[0].type_version, 4);
    let (_, since2) = e.type_changes("s", "doc", 2, 100).unwrap();
    let ids: Vec<&str> = since2.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["c", "a"]);
    relay.shutdown().await.unwrap();
}

/// Bug: a subscription's catch-up pages never looked at the trim point, so
/// a retention pass between two pages deleted entries the next page would
/// have read, and the subscriber went live without them (no dialect could
/// notice). Now the catch-up goes back to the current states.
#[tokio::test]
async fn a_catch_up_overtaken_by_retention_falls_back_to_states() {
    use outpost::engine::{CatchUp, ConnLink, ConnSignal, Filter};
    use std::collections::BTreeSet;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let engine = relay.state.engine.clone();
    for chunk in 0..6 {
        let writes = (0..100)
            .map(|n| doc_write(&format!("e{}", chunk * 100 + n), json!({"n": n}), None))
            .collect();
        engine.push("s", "t", None, writes).await.unwrap();
    }
    let link = ConnLink {
        conn: 1,
        outbox: outpost::engine::Outbox::new(64, usize::MAX),
        signal: Arc::new(ConnSignal::default()),
    };
    let filter = Filter {
        collections: None,
        events: false,
    };
    let mut sub = engine.start_subscription("s", 0, filter, link).unwrap();
    let mut seen = BTreeSet::new();
    let take = |seen: &mut BTreeSet<String>, page: Vec<CatchUp>| {
        for item in page {
            match item {
                CatchUp::Change(c) => seen.insert(c.entry.change.id.clone()),
                CatchUp::Snapshot { id, .. } => seen.insert(id),
            };
        }
    };
    take(&mut seen, engine.next_page(&mut sub).unwrap().unwrap());
    assert_eq!(seen.len(), 256, "one page of the log");
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(engine.trim(Duration::ZERO).await.unwrap(), 600);
    while let Some(page) = engine.next_page(&mut sub).unwrap() {
        take(&mut seen, page);
    }
    assert_eq!(seen.len(), 600, "every entity reached the subscriber");
    relay.shutdown().await.unwrap();
}
