//! The seeds' real, published clients against a running relay (issue 13):
//! each test replays the exact frames and HTTP calls a real client sends
//! (taken from its source, named at each test) over real sockets on
//! loopback, and checks what that client does with the reply.
//!
//! The clients themselves, run unchanged outside this repository, are in
//! docs/compat.md.

mod common;

use common::*;
use outpost::auth::Scope;
use serde_json::{json, Value};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(300);

// ---- seed 002: TeldridgeLDN/Orchestrator_Project -----------------------------

/// `lib/cloud/cloud-sync-manager.js` keeps `encryption: {algorithm, iv,
/// authTag, keyId}` beside the AES-256-GCM blob made by `encryptConfig`
/// (`lib/utils/sync-encryption.js`: 16-byte IV, separate tag, base64), and
/// `decryptConfig` needs `iv` and `authTag` back with the blob. The values
/// below are a real `encryptConfig({theme:"dark"}, key)` output.
#[tokio::test]
async fn seed002_encryption_parameters_come_back_with_the_blob() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let enc = json!({"algorithm": "aes-256-gcm", "iv": "q6W1rY0yMCd8PqK9+1l6pA==",
                     "authTag": "2Kf4vL0c8pO3X9yW1nB5Qw==", "keyId": "alice-1735000000000"});
    let mut laptop = Client::connect(relay.addr, "/ws/config?space=cfg").await;
    laptop
        .send(
            json!({"type": "upload-config-request", "userId": "alice", "deviceId": "laptop",
            "version": 1, "previousVersion": 0, "encryptedConfig": "Zm9vYmFyYmF6cXV4",
            "configHash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "metadata": {"projectCount": 1}, "encryption": enc, "timestamp": 1}),
        )
        .await;
    let up = laptop.recv().await;
    assert_eq!(
        (up["success"].clone(), up["newVersion"].clone()),
        (json!(true), json!(1)),
        "{up}"
    );

    // Another device downloads: what `decryptConfig` is given.
    let mut desk = Client::connect(relay.addr, "/ws/config?space=cfg").await;
    desk.send(
        json!({"type": "download-config-request", "userId": "alice", "deviceId": "desk",
        "localVersion": 0, "timestamp": 2}),
    )
    .await;
    let dl = desk.recv().await;
    assert_eq!(dl["type"], "download-config-response");
    assert_eq!(dl["encryptedConfig"], "Zm9vYmFyYmF6cXV4");
    assert_eq!(
        dl["encryption"], enc,
        "the parameters come back exactly: {dl}"
    );

    // And in the revision's history entry (read natively).
    let mut n = Client::native(relay.addr).await;
    n.send(json!({"type": "subscribe", "space": "cfg", "collections": ["config_history"]}))
        .await;
    let (items, _) = n.until("synced").await;
    let hist: Vec<&Value> = items.iter().filter(|v| v["type"] == "change").collect();
    assert_eq!(hist.len(), 1, "{items:?}");
    assert_eq!(hist[0]["fields"]["encryption"], enc);

    // A revision without parameters has none (not the old ones).
    laptop
        .send(
            json!({"type": "upload-config-request", "userId": "alice", "deviceId": "laptop",
            "version": 2, "previousVersion": 1, "encryptedConfig": "YmFy",
            "configHash": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
            "timestamp": 3}),
        )
        .await;
    assert_eq!(laptop.recv().await["success"], true);
    desk.send(
        json!({"type": "download-config-request", "userId": "alice", "deviceId": "desk",
        "localVersion": 1, "timestamp": 4}),
    )
    .await;
    let dl = loop {
        let v = desk.recv().await;
        if v["type"] == "download-config-response" {
            break v;
        }
    };
    assert_eq!(
        (dl["version"].clone(), dl["encryption"].clone()),
        (json!(2), Value::Null)
    );

    // A parameter block that is not an object is refused.
    laptop
        .send(
            json!({"type": "upload-config-request", "userId": "alice", "deviceId": "laptop",
            "version": 3, "previousVersion": 2, "encryptedConfig": "YmFy",
            "configHash": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752",
            "encryption": "aes", "timestamp": 5}),
        )
        .await;
    let bad = laptop.recv().await;
    assert_eq!(
        (bad["success"].clone(), bad["error"].clone()),
        (json!(false), json!("invalid-request")),
        "{bad}"
    );
    let _ = Scope::Read;
    let _ = QUIET;
}

// ---- seed 003: bneb/etherply ------------------------------------------------------

/// `packages/sdk-js/src/client.ts` connects to `/v1/sync/{ws}?token=&userId=`,
/// sends `{type:"op", payload:{key, value, timestamp}}` and every 30 s the
/// heartbeat `{type:"ping", timestamp: Date.now()}`; `validation.ts` drops
/// any frame it cannot parse with a warning. The Go and Python SDKs send
/// `time.Now().UnixMicro()`, which must come back exactly, and order two
/// writes in one millisecond.
#[tokio::test]
async fn seed003_microseconds_kept_and_heartbeat_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let tok = token("alice", Scope::Write, None);
    let path = format!("/v1/sync/workspace-123?token={tok}&userId=alice");
    let mut sdk = Client::connect(relay.addr, &path).await;
    assert_eq!(sdk.recv().await["type"], "init");

    // The heartbeat gets no answer (the real server ignores it).
    sdk.send(json!({"type": "ping", "timestamp": 1_795_607_927_827u64}))
        .await;
    assert!(
        sdk.try_recv(QUIET).await.is_none(),
        "nothing answers a ping"
    );

    // Two writes in one millisecond, the later one (by microseconds) sent first.
    let late = 1_795_607_927_827_456u64;
    let early = 1_795_607_927_827_123u64;
    for (v, ts) in [("late", late), ("early", early)] {
        sdk.send(json!({"type": "op", "payload": {"key": "color", "value": v, "timestamp": ts}}))
            .await;
    }
    let a = sdk.recv().await;
    let b = sdk.recv().await;
    assert_eq!(
        a["payload"],
        json!({"key": "color", "value": "late", "timestamp": late})
    );
    // The earlier write lost: the broadcast carries the value that stays.
    assert_eq!(
        b["payload"],
        json!({"key": "color", "value": "late", "timestamp": late})
    );
    sdk.send(json!({"type": "op", "payload": {"key": "size", "value": 3, "timestamp": early}}))
        .await;
    assert_eq!(sdk.recv().await["payload"]["timestamp"], early);

    // A reloaded client's init, and history, keep them too.
    let mut again = Client::connect(relay.addr, &path).await;
    let init = again.recv().await;
    assert_eq!(init["data"], json!({"color": "late", "size": 3}));
    let (status, body) = http(
        relay.addr,
        "GET",
        "/v1/history/workspace-123",
        &[("Authorization", &format!("Bearer {tok}"))],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    let times: Vec<u64> = h["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["timestamp"].as_u64().unwrap())
        .collect();
    assert_eq!(times, vec![late, early, early]);
}
