//! Helpers for tests that run several relays and compare them: writes,
//! per-relay state, and waiting for convergence.

use super::{http_get, Client};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub async fn status(addr: SocketAddr) -> Value {
    let (code, body) = http_get(addr, "/v1/status").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

/// Push patches to `notes` in space "s": (id, fields).
pub async fn write_all(addr: SocketAddr, writes: &[(String, Value)]) {
    let mut c = Client::native(addr).await;
    for chunk in writes.chunks(100) {
        let changes: Vec<_> = chunk
            .iter()
            .map(|(id, f)| json!({"collection": "notes", "id": id, "op": "patch", "fields": f}))
            .collect();
        c.send(json!({"type": "push", "rid": 1, "space": "s", "changes": changes}))
            .await;
        let (_, ack) = c.until("ack").await;
        assert_eq!(ack["results"].as_array().unwrap().len(), chunk.len());
    }
}

/// The visible state of the given entities on one relay.
pub async fn state(addr: SocketAddr, ids: &[String]) -> BTreeMap<String, Value> {
    let mut c = Client::native(addr).await;
    let mut out = BTreeMap::new();
    for id in ids {
        c.send(json!({"type": "get", "rid": id, "space": "s", "collection": "notes", "id": id}))
            .await;
        let e = c.recv().await;
        assert_eq!(e["type"], "entity", "{e}");
        out.insert(
            id.clone(),
            json!({"fields": e["fields"], "deleted": e["deleted"]}),
        );
    }
    out
}

pub fn writes(prefix: &str, n: usize, by: &str) -> Vec<(String, Value)> {
    (0..n)
        .map(|i| (format!("{prefix}{i}"), json!({"by": by, "i": i})))
        .collect()
}

/// Wait until every relay holds the same version vector and `changes` log
/// entries (never more), then compare the states of `ids`.
pub async fn converge(addrs: &[SocketAddr], changes: u64, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let mut sts = Vec::new();
        for a in addrs {
            sts.push(status(*a).await);
        }
        let same_vv = sts
            .windows(2)
            .all(|w| w[0]["version_vector"] == w[1]["version_vector"]);
        let counts: Vec<_> = sts
            .iter()
            .map(|s| s["log"]["entries"].as_u64().unwrap())
            .collect();
        if same_vv && counts.iter().all(|&c| c == changes) {
            break;
        }
        assert!(
            counts.iter().all(|&c| c <= changes),
            "a change was applied twice: {counts:?} > {changes}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: log entries {counts:?} of {changes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = state(addrs[0], ids).await;
    for a in &addrs[1..] {
        assert_eq!(state(*a, ids).await, first, "relays hold different states");
    }
}

pub fn ids(ws: &[&[(String, Value)]]) -> Vec<String> {
    let mut v: Vec<String> = ws
        .iter()
        .flat_map(|w| w.iter().map(|(id, _)| id.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}
