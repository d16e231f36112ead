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
