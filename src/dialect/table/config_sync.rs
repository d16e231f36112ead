//! Seed 002 `/ws/config`: every request, each refusal, the driver's calls.
//! Pure: no engine; each request's calls (read the document and device
//! record, scan revisions, write with the compare-and-swap) are read as
//! effects and their results fed back by the test.

use super::fake;
use super::*;
use crate::dialect::{config_sync, Refusal, Scan, Scanned};
use crate::engine::EngineError;
use crate::metrics::Metrics;
use crate::model::Op;
use crate::store::{Expect, LocalWrite, StoreError, StoredEntity};
use serde_json::json;

const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const HASH_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
const BLOB: &str = "ZW5jcnlwdGVkLWJsb2I=";

fn conn_as(grant: crate::auth::Grant, device: &str) -> Conn<config_sync::ConfigProto> {
    Conn::pure(config_sync::ConfigProto::new(
        Arc::new(Metrics::default()),
        "s".into(),
        "node-7".into(),
        grant,
        Some("alice".into()),
        Some(device.into()),
    ))
}

fn conn(device: &str) -> Conn<config_sync::ConfigProto> {
    conn_as(fake::anonymous(), device)
}

fn upload(device: &str, version: u64, prev: u64, hash: &str) -> Value {
    json!({"type": "upload-config-request", "userId": "alice", "deviceId": device,
           "version": version, "previousVersion": prev,
           "encryptedConfig": BLOB, "configHash": hash,
           "delta": {"added": {}, "modified": {"theme": 1}, "deleted": []}})
}

fn check(device: &str, local: u64) -> Value {
    json!({"type": "check-status-request", "userId": "alice", "deviceId": device,
           "localVersion": local})
}

/// The read every request starts (each round) with: the document and
/// the device's record.
fn reads(e: &Effects, device: &str) -> u64 {
    let (token, call) = e.called();
    assert_eq!(
        call,
        &Call::Get {
            space: "s".into(),
            keys: vec![
                ("config".into(), "alice".into()),
                ("config_devices".into(), format!("alice:{device}")),
            ],
        }
    );
    token
}

/// The revisions scan after `after` up to `upto`.
fn scans(e: &Effects, after: u64, upto: u64) -> u64 {
    let (token, call) = e.called();
    let fields = ["userId", "version", "deviceId", "changedPaths"].map(String::from);
    assert_eq!(
        call,
        &Call::Scan(Scan {
            space: "s".into(),
            collection: "config_history".into(),
            after: format!("alice:{:020}", after + 1),
            before: format!("alice:{:020}", upto + 1),
            fields: fields.to_vec(),
        })
    );
    token
}

/// The write made: (token, actor, writes).
fn writes(e: &Effects) -> (u64, &str, &[LocalWrite]) {
    match e.called() {
        (
            token,
            Call::Write {
                space,
                actor,
                writes,
                write_ids,
            },
        ) => {
            assert_eq!(space, "s");
            assert!(write_ids.is_empty());
            (token, actor, writes)
        }
        (_, other) => panic!("a write, not {other:?}"),
    }
}

/// An entity as stored after `w` (what a read returns after it).
fn stored(w: &LocalWrite) -> StoredEntity {
    let fields = Value::Object(w.fields.clone().into_iter().collect());
    fake::entity(&[fake::change("s", &w.collection, &w.id, w.op, fields, 1)])
}

fn got(doc: Option<&StoredEntity>, dev: Option<&StoredEntity>) -> Reply {
    Reply::Got(Ok(vec![doc.cloned(), dev.cloned()]))
}

/// A history entity as a scan returns it.
fn scanned(w: &LocalWrite) -> Scanned {
    let keep = ["userId", "version", "deviceId", "changedPaths"];
    let f = w
        .fields
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (w.id.clone(), f)
}

fn written(n: u64) -> Reply {
    Reply::Written(Ok((1..=n).map(|s| fake::applied(s, 1)).collect()))
}

fn precondition() -> EngineError {
    EngineError::Store(StoreError::PreconditionFailed {
        index: 0,
        found: Value::Null,
    })
}

/// The one frame answered, stamped with the time the dialect was given.
fn answer(e: &Effects) -> &Value {
    let v = e.reply();
    assert_eq!(v["timestamp"], NOW, "{v}");
    v
}

#[test]
fn requests_in_calls_out_answers_from_their_results() {
    let mut a = conn("A");
    let mut b = conn("B");
    let open = a.open();
    assert!(open.now.is_empty());
    assert_eq!(
        open.follow,
        [(
            0,
            "s".to_string(),
            Some(vec!["config_history".into()]),
            false,
            Since::Now
        )]
    );
    assert!(
        a.dialect.ordered(),
        "each request sees what the previous stored"
    );
    assert!(!a.dialect.echo(), "a device never hears its own revisions");

    // Nothing stored: a status check reads and answers.
    let t = reads(&a.json(check("A", 0)), "A");
    assert_eq!(
        answer(&a.reply(t, got(None, None))),
        &json!({"type": "check-status-response", "remoteVersion": 0, "lastModified": null,
                "lastModifiedBy": null, "needsSync": false, "syncDirection": "none",
                "timestamp": NOW})
    );

    // An upload: read, then the revision's three writes in one call, the
    // document's guarded by the compare-and-swap on what was read.
    let t = reads(&a.json(upload("A", 1, 0, HASH_A)), "A");
    let e = a.reply(t, got(None, None));
    let (t, actor, w) = writes(&e);
    assert_eq!(actor, "A", "anonymous: the device writes");
    let ids: Vec<(&str, &str, Op)> = w
        .iter()
        .map(|w| (w.collection.as_str(), w.id.as_str(), w.op))
        .collect();
    assert_eq!(
        ids,
        [
            ("config", "alice", Op::Put),
            (
                "config_history",
                "alice:00000000000000000001:node-7",
                Op::Put
            ),
            ("config_devices", "alice:A", Op::Patch),
        ]
    );
    let cas = [("version", Value::Null), ("configHash", Value::Null)];
    assert_eq!(
        w[0].expect,
        Some(Expect::Fields(
            cas.into_iter().map(|(k, v)| (k.into(), v)).collect()
        ))
    );
    assert!(w[1].expect.is_none() && w[2].expect.is_none());
    let doc = Value::Object(w[0].fields.clone().into_iter().collect());
    assert_fits(
        &json!({"userId": "alice", "version": 1, "encryptedConfig": BLOB, "configHash": HASH_A,
                "lastModified": NOW, "lastModifiedBy": "A", "deviceName": "A",
                "changeType": "create"}),
        &doc,
        "the document",
    );
    let history = Value::Object(w[1].fields.clone().into_iter().collect());
    assert_fits(
        &json!({"version": 1, "previousVersion": 0, "deviceId": "A", "changedPaths": ["theme"],
                "timestamp": NOW, "strategy": null}),
        &history,
        "the history entry",
    );
    let device = Value::Object(w[2].fields.clone().into_iter().collect());
    assert_fits(
        &json!({"lastSyncAt": NOW, "lastSyncVersion": 1, "lastSyncHash": HASH_A,
                "lastSyncDirection": "upload"}),
        &device,
        "the device record",
    );
    let (doc_v1, history_v1) = (stored(&w[0]), w[1].clone());
    assert_eq!(
        answer(&a.reply(t, written(3))),
        &json!({"type": "upload-config-response", "success": true, "newVersion": 1,
                "error": null, "timestamp": NOW})
    );

    // Device B hears A's revision as a sync-event (A does not).
    let c = fake::committed(
        fake::change(
            "s",
            "config_history",
            &history_v1.id,
            Op::Put,
            Value::Object(history_v1.fields.clone().into_iter().collect()),
            1,
        ),
        1,
        None,
    );
    let mut out = Vec::new();
    b.dialect.change(0, &c, None, &mut out);
    assert_fits(
        &json!({"type": "sync-event", "userId": "alice", "deviceId": "A", "version": 1,
                "changeType": "create", "changedPaths": ["theme"]}),
        &parse(&out[0]),
        "sync-event",
    );
    out.clear();
    a.dialect.change(0, &c, None, &mut out);
    assert!(out.is_empty(), "its own revision");

    let t = reads(&b.json(check("B", 0)), "B");
    assert_fits(
        &json!({"type": "check-status-response", "remoteVersion": 1, "needsSync": true,
                "syncDirection": "download", "lastModified": NOW, "lastModifiedBy": "A",
                "timestamp": NOW}),
        answer(&b.reply(t, got(Some(&doc_v1), None))),
        "check, behind",
    );

    // A download by a device that may write records its sync.
    let down = json!({"type": "download-config-request", "userId": "alice", "deviceId": "B",
                      "localVersion": 0});
    let t = reads(&b.json(down), "B");
    let e = b.reply(t, got(Some(&doc_v1), None));
    let (t, _, w) = writes(&e);
    assert_eq!(
        (w.len(), w[0].id.as_str(), w[0].op),
        (1, "alice:B", Op::Patch)
    );
    assert_fits(
        &json!({"deviceName": "B", "lastSyncAt": NOW, "lastSyncVersion": 1,
                "lastSyncHash": HASH_A, "lastSyncDirection": "download"}),
        &Value::Object(w[0].fields.clone().into_iter().collect()),
        "the download's record",
    );
    let dev_b = stored(&w[0]);
    assert_eq!(
        answer(&b.reply(t, written(1))),
        &json!({"type": "download-config-response", "version": 1, "lastModified": NOW,
                "encryptedConfig": BLOB, "configHash": HASH_A, "metadata": {},
                "encryption": null, "timestamp": NOW})
    );

    // An upload from a stale version: refused after a scan of what it
    // missed, with the conflicting paths.
    let t = reads(&b.json(upload("B", 2, 0, HASH_B)), "B");
    let t = scans(&b.reply(t, got(Some(&doc_v1), Some(&dev_b))), 0, 1);
    let e = b.reply(t, Reply::Scanned(Ok(vec![scanned(&history_v1)])));
    assert!(e.call.is_none());
    assert_eq!(
        Value::Array(e.now),
        json!([{"type": "upload-config-response", "success": false, "newVersion": null,
                "error": "version-conflict", "timestamp": NOW},
               {"type": "conflict-notification", "localVersion": 2, "remoteVersion": 1,
                "conflictingPaths": ["theme"], "requiresManualResolution": true,
                "timestamp": NOW}])
    );

    // A resolution without a delta merges what the device has not synced
    // (a scan after its last synced version), then writes version 2 over
    // the version it read.
    let resolve = json!({"type": "resolve-conflict-request", "userId": "alice",
                         "deviceId": "B", "strategy": "merge",
                         "resolvedConfig": "bWVyZ2Vk", "resolvedVersion": 2});
    let t = reads(&b.json(resolve), "B");
    let t = scans(&b.reply(t, got(Some(&doc_v1), Some(&dev_b))), 1, 1);
    let e = b.reply(t, Reply::Scanned(Ok(Vec::new())));
    let (t, actor, w) = writes(&e);
    assert_eq!(actor, "B");
    let cas = [("version", json!(1)), ("configHash", json!(HASH_A))];
    assert_eq!(
        w[0].expect,
        Some(Expect::Fields(
            cas.into_iter().map(|(k, v)| (k.into(), v)).collect()
        ))
    );
    assert_fits(
        &json!({"version": 2, "changeType": "merge", "lastModifiedBy": "B"}),
        &Value::Object(w[0].fields.clone().into_iter().collect()),
        "the merged document",
    );
    assert_eq!(w[1].id, "alice:00000000000000000002:node-7");
    assert_eq!(
        answer(&b.reply(t, written(3))),
        &json!({"type": "resolve-conflict-response", "success": true, "newVersion": 2,
                "error": null, "timestamp": NOW})
    );
}

#[test]
fn a_write_that_loses_the_compare_and_swap_reads_again() {
    // A's upload read version 0; B's revision got in before A's write.
    let mut a = conn("A");
    let t = reads(&a.json(upload("A", 1, 0, HASH_A)), "A");
    let (t, _, _) = writes(&a.reply(t, got(None, None)));
    let e = a.reply(t, Reply::Written(Err(precondition())));
    let t = reads(&e, "A");
    // The new round reads B's version 1: A's base is stale now.
    let mut by_b = conn("B");
    let tb = reads(&by_b.json(upload("B", 1, 0, HASH_B)), "B");
    let e = by_b.reply(tb, got(None, None));
    let (_, _, w) = writes(&e);
    let (doc_b, history_b) = (stored(&w[0]), w[1].clone());
    let t = scans(&a.reply(t, got(Some(&doc_b), None)), 0, 1);
    let e = a.reply(t, Reply::Scanned(Ok(vec![scanned(&history_b)])));
    assert_fits(
        &json!([{"type": "upload-config-response", "success": false,
                 "error": "version-conflict"},
                {"type": "conflict-notification", "localVersion": 1, "remoteVersion": 1,
                 "conflictingPaths": ["theme"]}]),
        &Value::Array(e.now),
        "the conflict, answered after the second read",
    );

    // Losing every round: refused after the fourth.
    let mut c = conn("A");
    let mut e = c.json(upload("A", 1, 0, HASH_A));
    for round in 1..=4 {
        let t = reads(&e, "A");
        let (t, _, _) = writes(&c.reply(t, got(None, None)));
        e = c.reply(t, Reply::Written(Err(precondition())));
        if round < 4 {
            assert!(e.now.is_empty(), "round {round} reads again");
        }
    }
    assert_eq!(
        answer(&e),
        &json!({"type": "upload-config-response", "success": false, "newVersion": null,
                "error": "version-conflict", "timestamp": NOW})
    );
}

#[test]
fn a_revision_that_lost_at_another_relay_is_a_conflict() {
    // B synced version 1 with HASH_B, but the stored version 1 is A's
    // (HASH_A): B's revision lost. Its status check names the paths.
    let mut a = conn("A");
    let t = reads(&a.json(upload("A", 1, 0, HASH_A)), "A");
    let e = a.reply(t, got(None, None));
    let (_, _, w) = writes(&e);
    let (doc_a, history_a) = (stored(&w[0]), w[1].clone());
    let dev = json!({"userId": "alice", "deviceId": "B", "lastSyncVersion": 1,
                     "lastSyncHash": HASH_B});
    let dev_b = fake::entity(&[fake::change(
        "s",
        "config_devices",
        "alice:B",
        Op::Patch,
        dev,
        2,
    )]);
    let mut b = conn("B");
    let t = reads(&b.json(check("B", 1)), "B");
    let t = scans(&b.reply(t, got(Some(&doc_a), Some(&dev_b))), 0, 1);
    let e = b.reply(t, Reply::Scanned(Ok(vec![scanned(&history_a)])));
    assert_eq!(
        Value::Array(e.now),
        json!([{"type": "check-status-response", "remoteVersion": 1, "lastModified": NOW,
                "lastModifiedBy": "A", "needsSync": true, "syncDirection": "bidirectional",
                "timestamp": NOW},
               {"type": "conflict-notification", "localVersion": 1, "remoteVersion": 1,
                "conflictingPaths": [], "requiresManualResolution": false,
                "timestamp": NOW}])
    );
    // Its upload on that base is refused the same way.
    let t = reads(&b.json(upload("B", 2, 1, HASH_B)), "B");
    let t = scans(&b.reply(t, got(Some(&doc_a), Some(&dev_b))), 0, 1);
    let e = b.reply(t, Reply::Scanned(Ok(vec![scanned(&history_a)])));
    assert_fits(
        &json!([{"type": "upload-config-response", "error": "version-conflict"},
                {"type": "conflict-notification", "localVersion": 2,
                 "conflictingPaths": ["theme"], "requiresManualResolution": true}]),
        &Value::Array(e.now),
        "a lost base",
    );
}

#[test]
fn store_failures_answer_each_request_in_its_own_frame() {
    let failed = || {
        EngineError::Store(StoreError::Faulted {
            cause: "eio".into(),
        })
    };
    let mut a = conn("A");
    let t = reads(&a.json(check("A", 0)), "A");
    assert_fits(
        &json!({"type": "error", "error": "unavailable",
                "requestType": "check-status-request", "timestamp": NOW}),
        a.reply(t, Reply::Got(Err(failed()))).reply(),
        "a failed status read",
    );
    let t = reads(&a.json(upload("A", 1, 0, HASH_A)), "A");
    let (t, _, _) = writes(&a.reply(t, got(None, None)));
    assert_eq!(
        answer(&a.reply(t, Reply::Written(Err(failed())))),
        &json!({"type": "upload-config-response", "success": false, "newVersion": null,
                "error": "unavailable", "timestamp": NOW})
    );
    let resolve = json!({"type": "resolve-conflict-request", "userId": "alice",
                         "deviceId": "A", "strategy": "merge", "resolvedConfig": "bWVyZ2Vk"});
    let t = reads(&a.json(resolve), "A");
    let t = scans(&a.reply(t, got(None, None)), 0, 0);
    assert_fits(
        &json!({"type": "resolve-conflict-response", "success": false, "error": "unavailable"}),
        a.reply(t, Reply::Scanned(Err(failed()))).reply(),
        "a failed scan",
    );
    // A result nobody asked for answers nothing; the request in flight
    // still gets its own.
    let t = reads(&a.json(check("A", 0)), "A");
    assert!(a.reply(t + 1, got(None, None)).is_empty());
    assert!(
        a.reply(t, written(1)).is_empty(),
        "a result of another kind"
    );
}

#[test]
fn a_version_that_cannot_grow_is_refused() {
    // Stored before versions were bounded: one past the largest that can
    // still grow. A resolution over it is refused, never wrapped.
    let mut a = conn("A");
    let top = json!({"userId": "alice", "version": (1u64 << 53) - 1, "configHash": HASH_A});
    let doc = fake::entity(&[fake::change("s", "config", "alice", Op::Put, top, 1)]);
    let resolve = json!({"type": "resolve-conflict-request", "userId": "alice",
                         "deviceId": "A", "strategy": "local", "resolvedConfig": "bWVyZ2Vk",
                         "delta": {"added": {}, "modified": {"x": 1}, "deleted": []}});
    let t = reads(&a.json(resolve), "A");
    assert_eq!(
        answer(&a.reply(t, got(Some(&doc), None))),
        &json!({"type": "resolve-conflict-response", "success": false, "newVersion": null,
                "error": "invalid-request", "timestamp": NOW})
    );
}

#[test]
fn refusals() {
    let mut a = conn("A");
    let mut no_hash = upload("A", 1, 0, HASH_A);
    no_hash.as_object_mut().unwrap().remove("configHash");
    let table: Vec<(Value, Value)> = vec![
        (
            json!({"type": "nope"}),
            json!({"type": "error", "error": "unknown-type"}),
        ),
        (
            json!({"userId": "alice"}),
            json!({"type": "error", "error": "invalid-request"}),
        ),
        (
            no_hash,
            json!({"type": "upload-config-response", "success": false, "error": "invalid-request"}),
        ),
    ];
    for (frame, mut reply) in table {
        reply["timestamp"] = NOW.into();
        assert_fits(&reply, a.json(frame.clone()).reply(), &frame.to_string());
    }
    assert_fits(
        &json!({"type": "error", "error": "invalid-request", "timestamp": NOW}),
        a.text("{").reply(),
        "not JSON",
    );
    // A token speaks for its subject only; a read-only one cannot upload.
    let mut t = conn_as(fake::grant("alice", Scope::Read), "A");
    assert_fits(
        &json!({"type": "error", "error": "user-mismatch", "requestType": "check-status-request"}),
        t.json(json!({"type": "check-status-request", "userId": "bob", "deviceId": "A"}))
            .reply(),
        "another user",
    );
    assert_fits(
        &json!({"type": "upload-config-response", "success": false, "error": "forbidden"}),
        t.json(upload("A", 1, 0, HASH_A)).reply(),
        "read-only",
    );
    // Read-only: a download reads but records nothing.
    let down = json!({"type": "download-config-request", "userId": "alice", "deviceId": "A"});
    let tk = reads(&t.json(down), "A");
    let doc = stored(&LocalWrite {
        collection: "config".into(),
        id: "alice".into(),
        op: Op::Put,
        fields: [("version".to_string(), json!(3))].into(),
        client_us: None,
        expect: None,
    });
    assert_fits(
        &json!({"type": "download-config-response", "version": 3}),
        t.reply(tk, got(Some(&doc), None)).reply(),
        "a read-only download",
    );
    let f = a.dialect.refuse(Refusal::Binary, NOW);
    assert_fits(
        &json!({"type": "error", "error": "invalid-request", "timestamp": NOW}),
        &parse(&f),
        "binary",
    );
}
