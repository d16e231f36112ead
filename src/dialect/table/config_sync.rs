//! Seed 002 `/ws/config`: every request, each refusal, the driver's calls.

use super::*;
use crate::dialect::{config_sync, Refusal};
use axum::http::HeaderMap;
use serde_json::json;

const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const HASH_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

fn conn(b: &Bench, device: &str) -> Conn<config_sync::ConfigProto> {
    let q = Bench::query(&[("space", "s"), ("userId", "alice"), ("deviceId", device)]);
    b.open(config_sync::accept(&b.ctx, &HeaderMap::new(), &q))
}

fn upload(device: &str, version: u64, prev: u64, hash: &str) -> Value {
    json!({"type": "upload-config-request", "userId": "alice", "deviceId": device,
           "version": version, "previousVersion": prev,
           "encryptedConfig": "ZW5jcnlwdGVkLWJsb2I=", "configHash": hash,
           "delta": {"added": {}, "modified": {"theme": 1}, "deleted": []}})
}

/// The one answer of a request (every request is answered later, in
/// order), stamped with the time the dialect was given.
fn answer(e: Effects) -> Value {
    assert!(e.now.is_empty(), "{e:?}");
    assert_eq!(e.later.len(), 1, "{e:?}");
    let v = e.later.into_iter().next().unwrap();
    assert_eq!(v["timestamp"], NOW, "{v}");
    v
}

#[test]
fn requests_in_responses_out() {
    let b = Bench::new();
    let mut a = conn(&b, "A");
    let mut other = conn(&b, "B");
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
    let check = json!({"type": "check-status-request", "userId": "alice", "deviceId": "A",
                       "localVersion": 0});
    assert_fits(
        &json!({"type": "check-status-response", "remoteVersion": 0, "needsSync": false}),
        &answer(a.json(check.clone())),
        "check, nothing stored",
    );
    assert_fits(
        &json!({"type": "upload-config-response", "success": true, "newVersion": 1, "error": null}),
        &answer(a.json(upload("A", 1, 0, HASH_A))),
        "upload",
    );
    // Device B hears A's revision as a sync-event.
    let mut out = Vec::new();
    let history = b.last_committed_in(Some("config_history"));
    b.render(&mut other.dialect, 0, &history, &mut out);
    assert_fits(
        &json!({"type": "sync-event", "userId": "alice", "deviceId": "A", "version": 1,
                "changeType": "create", "changedPaths": ["theme"]}),
        &parse(&out[0]),
        "sync-event",
    );
    let check_b = json!({"type": "check-status-request", "userId": "alice", "deviceId": "B",
                         "localVersion": 0});
    assert_fits(
        &json!({"type": "check-status-response", "remoteVersion": 1, "needsSync": true,
                "syncDirection": "download", "lastModifiedBy": "A"}),
        &answer(other.json(check_b)),
        "check, behind",
    );
    assert_fits(
        &json!({"type": "download-config-response", "version": 1, "configHash": HASH_A,
                "encryptedConfig": "ZW5jcnlwdGVkLWJsb2I="}),
        &answer(
            other.json(json!({"type": "download-config-request", "userId": "alice",
                                  "deviceId": "B", "localVersion": 0})),
        ),
        "download",
    );
    // An upload from a stale version: the compare-and-swap refuses it,
    // and the device is told what conflicts.
    let e = other.json(upload("B", 2, 0, HASH_B));
    assert_fits(
        &json!([{"type": "upload-config-response", "success": false, "newVersion": null,
                 "error": "version-conflict"},
                {"type": "conflict-notification", "localVersion": 2, "remoteVersion": 1,
                 "conflictingPaths": ["theme"], "requiresManualResolution": true}]),
        &Value::Array(e.later),
        "stale upload",
    );
    assert_fits(
        &json!({"type": "resolve-conflict-response", "success": true}),
        &answer(other.json(
            json!({"type": "resolve-conflict-request", "userId": "alice",
                                  "deviceId": "B", "strategy": "merge",
                                  "resolvedConfig": "bWVyZ2Vk", "resolvedVersion": 2}),
        )),
        "resolve",
    );
}

#[test]
fn refusals() {
    let b = Bench::new();
    let mut a = conn(&b, "A");
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
        &json!({"type": "error", "error": "invalid-request"}),
        a.text("{").reply(),
        "not JSON",
    );
    // A token speaks for its subject only.
    let tok = b.token("alice", Scope::Write);
    let q = Bench::query(&[("space", "s"), ("token", &tok)]);
    let mut t = b.open(config_sync::accept(&b.ctx, &HeaderMap::new(), &q));
    assert_fits(
        &json!({"type": "error", "error": "user-mismatch", "requestType": "check-status-request"}),
        t.json(json!({"type": "check-status-request", "userId": "bob", "deviceId": "A"}))
            .reply(),
        "another user",
    );
    let f = a.dialect.refuse(Refusal::Binary, NOW);
    assert_fits(
        &json!({"type": "error", "error": "invalid-request"}),
        &parse(&f),
        "binary",
    );
    assert_eq!(b.engine().last_seq(), 0, "nothing stored");
}
