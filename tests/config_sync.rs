//! Seed 002 on /ws/config, driven over real WebSockets against a relay on
//! 127.0.0.1:0: every message, every error path, shapes field by field.

mod common;

use common::*;
use outpost::auth::Scope;
use outpost::model::{Change, NodeId, Op, Stamp};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const HASH_A: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const HASH_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";
const HASH_C: &str = "fd61a03af4f77d870fc21e05e7e80678095c92d808cfb3b5c279ee04c74aca13";
const QUIET: Duration = Duration::from_millis(300);

/// The seed's field names of each message, plus `type`.
const CHECK_STATUS: &[&str] = &[
    "lastModified",
    "lastModifiedBy",
    "needsSync",
    "remoteVersion",
    "syncDirection",
    "timestamp",
    "type",
];
const UPLOAD_RESPONSE: &[&str] = &["error", "newVersion", "success", "timestamp", "type"];
const DOWNLOAD_RESPONSE: &[&str] = &[
    "configHash",
    "encryptedConfig",
    "encryption",
    "lastModified",
    "metadata",
    "timestamp",
    "type",
    "version",
];
const CONFLICT: &[&str] = &[
    "conflictingPaths",
    "localVersion",
    "remoteVersion",
    "requiresManualResolution",
    "timestamp",
    "type",
];
const SYNC_EVENT: &[&str] = &[
    "changeType",
    "changedPaths",
    "deviceId",
    "deviceName",
    "timestamp",
    "type",
    "userId",
    "version",
];
const ERROR: &[&str] = &["error", "message", "requestType", "timestamp", "type"];

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

fn shape(v: &Value, ty: &str, fields: &[&str]) {
    assert_eq!(v["type"], ty, "{v}");
    assert_eq!(keys(v), fields, "{v}");
    assert!(v["timestamp"].as_u64().unwrap() > 1_600_000_000_000, "{v}");
}

fn check(user: &str, device: &str, local: u64) -> Value {
    json!({"type": "check-status-request", "userId": user, "deviceId": device,
           "localVersion": local, "timestamp": 1})
}

fn download(user: &str, device: &str, local: u64) -> Value {
    json!({"type": "download-config-request", "userId": user, "deviceId": device,
           "localVersion": local, "timestamp": 1})
}

fn upload(
    user: &str,
    device: &str,
    version: u64,
    prev: u64,
    hash: &str,
    modified: &[&str],
) -> Value {
    let modified: serde_json::Map<String, Value> =
        modified.iter().map(|p| (p.to_string(), json!(1))).collect();
    json!({"type": "upload-config-request", "userId": user, "deviceId": device,
           "version": version, "previousVersion": prev,
           "encryptedConfig": "ZW5jcnlwdGVkLWJsb2I=", "configHash": hash,
           "metadata": {"projectCount": 2, "groupCount": 1, "activeProject": "web", "activeGroup": "g"},
           "delta": {"added": {}, "modified": modified, "deleted": []},
           "timestamp": 1})
}

fn resolve(user: &str, device: &str, version: u64) -> Value {
    json!({"type": "resolve-conflict-request", "userId": user, "deviceId": device,
           "strategy": "merge", "resolvedConfig": "bWVyZ2Vk", "resolvedVersion": version,
           "timestamp": 1})
}

async fn ask(c: &mut Client, msg: Value) -> Value {
    c.send(msg).await;
    c.recv().await
}

async fn quiet(c: &mut Client) {
    if let Some(v) = c.try_recv(QUIET).await {
        panic!("unexpected frame {v}");
    }
}

#[tokio::test]
async fn two_devices_upload_download_conflict_and_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::connect(relay.addr, "/ws/config?space=cfg").await;
    // B listens before its first request, via the query.
    let mut b = Client::connect(relay.addr, "/ws/config?space=cfg&userId=alice&deviceId=B").await;
    // Another user's device hears nothing of alice's.
    let mut other = Client::connect(relay.addr, "/ws/config?space=cfg&userId=bob&deviceId=X").await;

    // Nothing stored yet.
    let st = ask(&mut a, check("alice", "A", 0)).await;
    shape(&st, "check-status-response", CHECK_STATUS);
    assert_eq!(st["remoteVersion"], 0);
    assert_eq!(st["lastModified"], Value::Null);
    assert_eq!(st["lastModifiedBy"], Value::Null);
    assert_eq!(st["needsSync"], false);
    assert_eq!(st["syncDirection"], "none");
    let st = ask(&mut a, check("alice", "A", 2)).await;
    assert_eq!(
        (st["needsSync"].clone(), st["syncDirection"].clone()),
        (json!(true), json!("upload"))
    );
    let dl = ask(&mut a, download("alice", "A", 0)).await;
    shape(&dl, "download-config-response", DOWNLOAD_RESPONSE);
    assert_eq!(dl["version"], 0);
    assert_eq!(dl["encryptedConfig"], Value::Null);

    // A uploads version 1: accepted; B hears a sync-event, A does not.
    let mut up = upload("alice", "A", 1, 0, HASH_A, &["theme", "projects.web"]);
    up["deviceName"] = json!("laptop");
    let r = ask(&mut a, up).await;
    shape(&r, "upload-config-response", UPLOAD_RESPONSE);
    assert_eq!(r["success"], true);
    assert_eq!(r["newVersion"], 1);
    assert_eq!(r["error"], Value::Null);
    let ev = b.recv().await;
    shape(&ev, "sync-event", SYNC_EVENT);
    assert_eq!(ev["userId"], "alice");
    assert_eq!(ev["deviceId"], "A");
    assert_eq!(ev["deviceName"], "laptop");
    assert_eq!(ev["version"], 1);
    assert_eq!(ev["changeType"], "create");
    assert_eq!(ev["changedPaths"], json!(["projects.web", "theme"]));
    quiet(&mut a).await;
    quiet(&mut other).await;

    // B is behind: download.
    let st = ask(&mut b, check("alice", "B", 0)).await;
    assert_eq!(st["remoteVersion"], 1);
    assert_eq!(st["lastModifiedBy"], "A");
    assert!(st["lastModified"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(
        (st["needsSync"].clone(), st["syncDirection"].clone()),
        (json!(true), json!("download"))
    );
    let mut cs = check("alice", "B", 0);
    cs["hasLocalChanges"] = json!(true);
    assert_eq!(ask(&mut b, cs).await["syncDirection"], "bidirectional");
    let dl = ask(&mut b, download("alice", "B", 0)).await;
    shape(&dl, "download-config-response", DOWNLOAD_RESPONSE);
    assert_eq!(dl["version"], 1);
    assert_eq!(dl["encryptedConfig"], "ZW5jcnlwdGVkLWJsb2I=");
    assert_eq!(dl["configHash"], HASH_A);
    assert_eq!(
        dl["metadata"],
        json!({"projectCount": 2, "groupCount": 1, "activeProject": "web", "activeGroup": "g"})
    );
    assert_eq!(dl["lastModified"], st["lastModified"]);

    // B uploads version 2 from 1: accepted; A hears it.
    let r = ask(
        &mut b,
        upload("alice", "B", 2, 1, HASH_B, &["theme", "font"]),
    )
    .await;
    assert_eq!(
        (r["success"].clone(), r["newVersion"].clone()),
        (json!(true), json!(2))
    );
    let ev = a.recv().await;
    shape(&ev, "sync-event", SYNC_EVENT);
    assert_eq!(
        (ev["deviceId"].clone(), ev["deviceName"].clone()),
        (json!("B"), json!("B"))
    );
    assert_eq!(
        (ev["version"].clone(), ev["changeType"].clone()),
        (json!(2), json!("update"))
    );
    quiet(&mut b).await;

    // A uploads from the stale version 1: refused, and told what collides.
    a.send(upload(
        "alice",
        "A",
        2,
        1,
        HASH_C,
        &["theme", "projects.web"],
    ))
    .await;
    let r = a.recv().await;
    shape(&r, "upload-config-response", UPLOAD_RESPONSE);
    assert_eq!(r["success"], false);
    assert_eq!(r["error"], "version-conflict");
    assert_eq!(r["newVersion"], Value::Null);
    let n = a.recv().await;
    shape(&n, "conflict-notification", CONFLICT);
    assert_eq!(n["localVersion"], 2);
    assert_eq!(n["remoteVersion"], 2);
    assert_eq!(n["conflictingPaths"], json!(["theme"]));
    assert_eq!(n["requiresManualResolution"], true);
    quiet(&mut b).await; // nothing was stored
                         // A stale upload whose paths do not collide merges automatically.
    a.send(upload("alice", "A", 2, 1, HASH_C, &["keybindings"]))
        .await;
    assert_eq!(a.recv().await["error"], "version-conflict");
    let n = a.recv().await;
    assert_eq!(n["conflictingPaths"], json!([]));
    assert_eq!(n["requiresManualResolution"], false);

    // A resolves: a new version, a merge event for B.
    let r = ask(&mut a, resolve("alice", "A", 3)).await;
    shape(&r, "resolve-conflict-response", UPLOAD_RESPONSE);
    assert_eq!(
        (
            r["success"].clone(),
            r["newVersion"].clone(),
            r["error"].clone()
        ),
        (json!(true), json!(3), Value::Null)
    );
    let ev = b.recv().await;
    shape(&ev, "sync-event", SYNC_EVENT);
    assert_eq!(
        (ev["version"].clone(), ev["changeType"].clone()),
        (json!(3), json!("merge"))
    );
    // What it reconciled: the revisions since A last synced (1).
    assert_eq!(ev["changedPaths"], json!(["font", "theme"]));
    let dl = ask(&mut b, download("alice", "B", 2)).await;
    assert_eq!(
        (dl["version"].clone(), dl["encryptedConfig"].clone()),
        (json!(3), json!("bWVyZ2Vk"))
    );
    // Metadata carries over when the resolution names none.
    assert_eq!(dl["metadata"]["activeProject"], "web");
    quiet(&mut other).await;

    // Storage: engine entities of the space.
    let e = &relay.state.engine;
    let doc = e
        .entity("cfg", "config", "alice")
        .unwrap()
        .unwrap()
        .state
        .visible();
    assert_eq!(doc["version"], 3);
    assert_eq!(doc["lastModifiedBy"], "A");
    let hist = e
        .entities("cfg", Some("config_history"), None, 100)
        .unwrap();
    let versions: Vec<(u64, String, String)> = hist
        .iter()
        .map(|(_, _, h)| {
            let f = h.state.visible();
            (
                f["version"].as_u64().unwrap(),
                f["deviceId"].as_str().unwrap().into(),
                f["changeType"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        vec![
            (1, "A".into(), "create".into()),
            (2, "B".into(), "update".into()),
            (3, "A".into(), "merge".into())
        ]
    );
    let h1 = hist[0].2.state.visible();
    assert_eq!(
        h1["delta"]["modified"],
        json!({"theme": 1, "projects.web": 1})
    );
    assert!(h1["timestamp"].as_u64().is_some());
    let devices = e
        .entities("cfg", Some("config_devices"), None, 100)
        .unwrap();
    let ds: Vec<(String, u64, String)> = devices
        .iter()
        .map(|(_, id, d)| {
            let f = d.state.visible();
            assert!(f["lastSyncAt"].as_u64().is_some());
            (
                id.clone(),
                f["lastSyncVersion"].as_u64().unwrap(),
                f["lastSyncDirection"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        ds,
        vec![
            ("alice:A".into(), 3, "bidirectional".into()),
            ("alice:B".into(), 3, "download".into())
        ]
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_with_a_code_and_the_connection_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::connect(relay.addr, "/ws/config").await;

    let mut up = upload("alice", "A", 1, 0, HASH_A, &["x"]);
    up["encryptedConfig"] = json!("this is not base64!");
    let r = ask(&mut a, up).await;
    shape(&r, "upload-config-response", UPLOAD_RESPONSE);
    assert_eq!(
        (
            r["success"].clone(),
            r["error"].clone(),
            r["newVersion"].clone()
        ),
        (json!(false), json!("invalid-encrypted-config"), Value::Null)
    );
    for bad_hash in ["abc", &HASH_A.replace('9', "x"), &format!("{HASH_A}00")] {
        let r = ask(&mut a, upload("alice", "A", 1, 0, bad_hash, &["x"])).await;
        assert_eq!(
            (r["success"].clone(), r["error"].clone()),
            (json!(false), json!("invalid-config-hash")),
            "{bad_hash}"
        );
    }
    let mut up = upload("alice", "A", 1, 0, HASH_A, &["x"]);
    up.as_object_mut().unwrap().remove("configHash");
    assert_eq!(ask(&mut a, up).await["error"], "invalid-request");
    let mut rs = resolve("alice", "A", 1);
    rs["resolvedConfig"] = json!("%%%");
    let r = ask(&mut a, rs).await;
    shape(&r, "resolve-conflict-response", UPLOAD_RESPONSE);
    assert_eq!(
        (r["success"].clone(), r["error"].clone()),
        (json!(false), json!("invalid-encrypted-config"))
    );
    let mut rs = resolve("alice", "A", 1);
    rs["configHash"] = json!("nothex");
    assert_eq!(ask(&mut a, rs).await["error"], "invalid-config-hash");

    // Requests without an error field in their response: error frames.
    let e = ask(
        &mut a,
        json!({"type": "check-status-request", "deviceId": "A"}),
    )
    .await;
    shape(&e, "error", ERROR);
    assert_eq!(
        (e["error"].clone(), e["requestType"].clone()),
        (json!("invalid-request"), json!("check-status-request"))
    );
    assert!(e["message"].as_str().unwrap().contains("userId"), "{e}");
    let e = ask(
        &mut a,
        json!({"type": "download-config-request", "userId": "", "deviceId": "A"}),
    )
    .await;
    assert_eq!(
        (e["error"].clone(), e["requestType"].clone()),
        (json!("invalid-request"), json!("download-config-request"))
    );
    let e = ask(&mut a, json!({"type": "sync-everything"})).await;
    assert_eq!(
        (e["error"].clone(), e["requestType"].clone()),
        (json!("unknown-type"), json!("sync-everything"))
    );
    a.send_raw(Message::Text("{not json".into())).await;
    let e = a.recv().await;
    shape(&e, "error", ERROR);
    assert_eq!(
        (e["error"].clone(), e["requestType"].clone()),
        (json!("invalid-request"), Value::Null)
    );
    a.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(a.recv().await["error"], "invalid-request");

    // Nothing was stored, and the connection still serves.
    let st = ask(&mut a, check("alice", "A", 0)).await;
    assert_eq!(st["remoteVersion"], 0);
    let r = ask(
        &mut a,
        upload("alice", "A", 1, 0, &HASH_A.to_uppercase(), &["x"]),
    )
    .await;
    assert_eq!(r["success"], true);
    // Requests are served in order: a download sent right behind an
    // upload, without waiting, reads what the upload stored.
    a.send(upload("alice", "A", 2, 1, HASH_B, &["x"])).await;
    a.send(download("alice", "A", 1)).await;
    assert_eq!(a.recv().await["newVersion"], 2);
    let dl = a.recv().await;
    assert_eq!(
        (dl["version"].clone(), dl["configHash"].clone()),
        (json!(2), json!(HASH_B))
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_auth_the_user_is_the_token_subject() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    assert_eq!(handshake_status(relay.addr, "/ws/config", None).await, 401);
    let alice = token("alice", Scope::Write, None);
    let q = format!("/ws/config?userId=bob&token={alice}");
    assert_eq!(handshake_status(relay.addr, &q, None).await, 403);

    let mut a = Client::connect(relay.addr, &format!("/ws/config?token={alice}")).await;
    let e = ask(&mut a, check("bob", "A", 0)).await;
    shape(&e, "error", ERROR);
    assert_eq!(
        (e["error"].clone(), e["requestType"].clone()),
        (json!("user-mismatch"), json!("check-status-request"))
    );
    let e = ask(&mut a, download("bob", "A", 0)).await;
    assert_eq!(e["error"], "user-mismatch");
    let r = ask(&mut a, upload("bob", "A", 1, 0, HASH_A, &["x"])).await;
    assert_eq!(
        (r["type"].clone(), r["success"].clone(), r["error"].clone()),
        (
            json!("upload-config-response"),
            json!(false),
            json!("user-mismatch")
        )
    );
    let r = ask(&mut a, resolve("bob", "A", 1)).await;
    assert_eq!(
        (r["type"].clone(), r["error"].clone()),
        (json!("resolve-conflict-response"), json!("user-mismatch"))
    );
    assert!(relay
        .state
        .engine
        .entity("default", "config", "bob")
        .unwrap()
        .is_none());

    // Alice's own: accepted; her other device (token only) hears it.
    let mut a2 = Client::connect(relay.addr, &format!("/ws/config?token={alice}")).await;
    let r = ask(&mut a, upload("alice", "A", 1, 0, HASH_A, &["x"])).await;
    assert_eq!(r["success"], true);
    let ev = a2.recv().await;
    assert_eq!(
        (
            ev["type"].clone(),
            ev["userId"].clone(),
            ev["deviceId"].clone()
        ),
        (json!("sync-event"), json!("alice"), json!("A"))
    );

    // Read scope: may check and download, not upload or resolve.
    let reader = token("alice", Scope::Read, None);
    let mut r = Client::connect(relay.addr, &format!("/ws/config?token={reader}")).await;
    assert_eq!(
        ask(&mut r, check("alice", "R", 0)).await["remoteVersion"],
        1
    );
    assert_eq!(ask(&mut r, download("alice", "R", 0)).await["version"], 1);
    let up = ask(&mut r, upload("alice", "R", 2, 1, HASH_B, &["x"])).await;
    assert_eq!(
        (up["success"].clone(), up["error"].clone()),
        (json!(false), json!("forbidden"))
    );
    assert_eq!(
        ask(&mut r, resolve("alice", "R", 2)).await["error"],
        "forbidden"
    );
    // A read-only download records no device.
    assert!(relay
        .state
        .engine
        .entity("default", "config_devices", "alice:R")
        .unwrap()
        .is_none());
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_uploads_from_one_version_let_exactly_one_through() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        clients
            .push(Client::connect(relay.addr, &format!("/ws/config?userId=u&deviceId=d{i}")).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(upload("u", &format!("d{i}"), 1, 0, HASH_A, &["p"]))
            .await;
    }
    let (mut won, mut lost) = (0, 0);
    for c in clients.iter_mut() {
        // Frames other than this device's answer are sync-events.
        let (_, r) = c.until("upload-config-response").await;
        if r["success"] == true {
            assert_eq!(r["newVersion"], 1);
            won += 1;
        } else {
            assert_eq!(r["error"], "version-conflict");
            let (_, n) = c.until("conflict-notification").await;
            assert_eq!(
                (n["remoteVersion"].clone(), n["conflictingPaths"].clone()),
                (json!(1), json!(["p"]))
            );
            lost += 1;
        }
    }
    assert_eq!((won, lost), (1, 7));
    let hist = relay
        .state
        .engine
        .entities("default", Some("config_history"), None, 100)
        .unwrap();
    assert_eq!(hist.len(), 1);
    relay.shutdown().await.unwrap();
}

/// Two relays accepted version 1 from different devices; the other relay's
/// revision arrives here (as replication delivers it) and wins by
/// last-writer-wins. The local device's revision lost: it is told so, its
/// next upload from that base is refused, and a resolve settles it.
#[tokio::test]
async fn a_revision_that_lost_to_a_relay_concurrent_one_is_a_conflict_until_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::connect(relay.addr, "/ws/config").await;
    let mut b = Client::connect(relay.addr, "/ws/config?userId=alice&deviceId=B").await;
    let r = ask(
        &mut a,
        upload("alice", "A", 1, 0, HASH_A, &["theme", "font"]),
    )
    .await;
    assert_eq!(r["success"], true);
    assert_eq!(b.recv().await["deviceId"], "A");

    let peer = NodeId(0x5eed);
    let later = Stamp {
        ms: outpost::engine::now_ms() + 2_000,
        counter: 0,
        node: peer,
    };
    let change = |seq: u64, collection: &str, id: &str, fields: Value| Change {
        space: "default".into(),
        collection: collection.into(),
        id: id.into(),
        op: Op::Put,
        fields: serde_json::from_value(fields).unwrap(),
        stamp: later,
        origin: peer,
        seq,
        actor: "C".into(),
    };
    let e = relay.state.engine.clone();
    e.apply_remote(
        vec![
            change(1, "config", "alice", json!({"userId": "alice", "version": 1, "encryptedConfig": "Yw==",
                "configHash": HASH_C, "metadata": {}, "lastModified": later.ms, "lastModifiedBy": "C",
                "deviceName": "desktop", "changeType": "create"})),
            change(2, "config_history", &format!("alice:{:020}:{peer}", 1), json!({"userId": "alice",
                "version": 1, "previousVersion": 0, "deviceId": "C", "deviceName": "desktop",
                "delta": {"added": {}, "modified": {"theme": 2}, "deleted": []}, "changeType": "create",
                "changedPaths": ["theme"], "configHash": HASH_C, "timestamp": later.ms})),
        ],
        None,
    )
    .await
    .unwrap();
    // Replicated revisions reach the user's devices too.
    let ev = b.recv().await;
    assert_eq!(
        (
            ev["deviceId"].clone(),
            ev["deviceName"].clone(),
            ev["version"].clone()
        ),
        (json!("C"), json!("desktop"), json!(1))
    );
    let ev = a.recv().await;
    assert_eq!(ev["deviceId"], "C");

    // Same version number, other content: A must merge.
    a.send(check("alice", "A", 1)).await;
    let st = a.recv().await;
    assert_eq!(
        (st["remoteVersion"].clone(), st["lastModifiedBy"].clone()),
        (json!(1), json!("C"))
    );
    assert_eq!(
        (st["needsSync"].clone(), st["syncDirection"].clone()),
        (json!(true), json!("bidirectional"))
    );
    let n = a.recv().await;
    shape(&n, "conflict-notification", CONFLICT);
    assert_eq!(
        (n["localVersion"].clone(), n["remoteVersion"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(n["conflictingPaths"], json!(["theme"]));
    assert_eq!(n["requiresManualResolution"], true);
    // Building on the lost revision is refused.
    a.send(upload("alice", "A", 2, 1, HASH_B, &["keybindings"]))
        .await;
    assert_eq!(a.recv().await["error"], "version-conflict");
    let n = a.recv().await;
    assert_eq!(n["conflictingPaths"], json!(["theme"]));
    // B, which never synced, simply downloads the winner.
    let st = ask(&mut b, check("alice", "B", 0)).await;
    assert_eq!(st["syncDirection"], "download");
    quiet(&mut b).await;

    let r = ask(&mut a, resolve("alice", "A", 2)).await;
    assert_eq!(
        (r["success"].clone(), r["newVersion"].clone()),
        (json!(true), json!(2))
    );
    let ev = b.recv().await;
    assert_eq!(
        (ev["changeType"].clone(), ev["changedPaths"].clone()),
        (json!("merge"), json!(["font", "theme"]))
    );
    let st = ask(&mut a, check("alice", "A", 2)).await;
    assert_eq!(
        (st["needsSync"].clone(), st["syncDirection"].clone()),
        (json!(false), json!("none"))
    );
    quiet(&mut a).await;
    // Both revisions of version 1 are kept in the history.
    let hist = e
        .entities("default", Some("config_history"), None, 100)
        .unwrap();
    let v: Vec<(u64, String)> = hist
        .iter()
        .map(|(_, _, h)| {
            let f = h.state.visible();
            (
                f["version"].as_u64().unwrap(),
                f["deviceId"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(v.len(), 3);
    assert!(
        v.contains(&(1, "A".into()))
            && v.contains(&(1, "C".into()))
            && v.contains(&(2, "A".into()))
    );
    relay.shutdown().await.unwrap();
}

/// Bug: an upload with version 18446744073709551615 was accepted and the
/// next upload got version 2 (`+ 1` wrapped; with overflow checks, a panic).
/// Versions that cannot grow are refused with a clear error.
#[tokio::test]
async fn a_version_that_cannot_grow_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut a = Client::connect(relay.addr, "/ws/config").await;
    for v in [u64::MAX, 1 << 53] {
        let r = ask(&mut a, upload("alice", "A", v, 0, HASH_A, &["x"])).await;
        shape(&r, "upload-config-response", UPLOAD_RESPONSE);
        assert_eq!(
            (r["success"].clone(), r["error"].clone()),
            (json!(false), json!("invalid-request")),
            "version {v}"
        );
    }
    let r = ask(&mut a, resolve("alice", "A", u64::MAX)).await;
    assert_eq!(r["success"], false, "{r}");
    // Nothing was stored: the next upload is version 1, and versions grow.
    let r = ask(&mut a, upload("alice", "A", 1, 0, HASH_A, &["x"])).await;
    assert_eq!(
        (r["success"].clone(), r["newVersion"].clone()),
        (json!(true), json!(1))
    );
    let big = (1u64 << 53) - 2;
    let r = ask(&mut a, upload("alice", "A", big, 1, HASH_B, &["x"])).await;
    assert_eq!(
        (r["success"].clone(), r["newVersion"].clone()),
        (json!(true), json!(big))
    );
    let r = ask(&mut a, upload("alice", "A", 0, big, HASH_A, &["y"])).await;
    assert_eq!(
        (r["success"].clone(), r["newVersion"].clone()),
        (json!(true), json!(big + 1))
    );
    // At the limit: refused, not wrapped.
    let r = ask(&mut a, upload("alice", "A", 0, big + 1, HASH_B, &["z"])).await;
    assert_eq!(
        (r["success"].clone(), r["error"].clone()),
        (json!(false), json!("invalid-request"))
    );
    relay.shutdown().await.unwrap();
}
