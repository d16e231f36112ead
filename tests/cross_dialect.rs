//! One atome, every dialect: a change written through any dialect of a
//! space is visible through all the others, each in its own shapes.
//!
//! Dialects covered here: seed 001 (`/ws/atome-sync`, `/api/atome`), seed
//! 000 (`/ws/sync`), seed 004 (`/api/ws`, entity `atome`) and the native
//! `/ws`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;

const SPACE: &str = "shared";

async fn connect(addr: SocketAddr, path: &str, first: &str) -> Client {
    let mut c = Client::connect(addr, path).await;
    let hello = c.recv().await;
    assert_eq!(hello["type"], first, "{hello}");
    c
}

async fn native_subscriber(addr: SocketAddr) -> Client {
    let mut n = Client::native(addr).await;
    let (backlog, _) = n.subscribe(SPACE, 0).await;
    assert!(backlog.is_empty());
    n
}

#[tokio::test]
async fn all_dialects_see_an_atome_created_over_atome_sync() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.addr;
    let q = format!("?space={SPACE}");
    let mut writer = connect(addr, &format!("/ws/atome-sync{q}&clientId=W"), "welcome").await;
    let mut sync = connect(addr, &format!("/ws/sync{q}"), "welcome").await;
    let mut native = native_subscriber(addr).await;
    let mut unified = Client::connect(addr, &format!("/api/ws{q}")).await;
    unified
        .send(json!({"type": "subscribe", "entities": ["atome"]}))
        .await;
    // subscribe has no reply: a ping's pong proves it was handled.
    unified.send(json!({"type": "ping"})).await;
    assert_eq!(unified.recv().await["type"], "pong");

    let atome = json!({"id": "x1", "kind": "shape", "data": {"w": 10}});
    writer
        .send(json!({"type": "atome:created", "atome": atome}))
        .await;

    let e = sync.recv().await;
    assert_eq!(e["type"], "event");
    assert_eq!(e["eventType"], "atome:created");
    assert_eq!(e["payload"]["atome"], atome);
    assert_eq!(e["payload"]["sourceClient"], "W");

    let c = native.recv().await;
    assert_eq!(c["type"], "change");
    assert_eq!(c["space"], SPACE);
    assert_eq!(c["collection"], "atome");
    assert_eq!(c["id"], "x1");
    assert_eq!(c["op"], "put");
    assert_eq!(c["fields"], json!({"kind": "shape", "data": {"w": 10}}));
    assert_eq!(c["actor"], "W");

    let u = unified.recv().await;
    assert_eq!(u["type"], "change", "{u}");
    let log = &u["change"];
    assert_eq!(log["entity"], "atome");
    assert_eq!(log["entity_id"], "x1");
    assert_eq!(log["action"], "create");
    assert_eq!(
        log["data"],
        json!({"id": "x1", "kind": "shape", "data": {"w": 10}})
    );

    // The writer is not echoed.
    assert_eq!(writer.try_recv(Duration::from_millis(300)).await, None);

    // An update through /api/ws reaches the other three.
    unified
        .send(json!({"type": "push", "entity": "atome", "entity_id": "x1",
                     "action": "update", "data": {"data": {"w": 20}}}))
        .await;
    let (_, ack) = unified.until("push_ack").await;
    assert_eq!(ack["entity_id"], "x1");
    let e = writer.recv().await;
    assert_eq!(e["type"], "atome:altered", "{e}");
    assert_eq!(
        e["atome"],
        json!({"id": "x1", "kind": "shape", "data": {"w": 20}})
    );
    let e = sync.recv().await;
    assert_eq!(e["eventType"], "atome:updated");
    assert_eq!(e["payload"]["atome"]["data"], json!({"w": 20}));
    let c = native.recv().await;
    assert_eq!(
        (c["type"].as_str(), c["op"].as_str()),
        (Some("change"), Some("patch"))
    );
    assert_eq!(c["fields"], json!({"data": {"w": 20}}));
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn native_and_rest_writes_reach_both_atome_dialects() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let addr = relay.addr;
    let q = format!("?space={SPACE}");
    let mut atome_sock = connect(addr, &format!("/ws/atome-sync{q}"), "welcome").await;
    let mut sync = connect(addr, &format!("/ws/sync{q}"), "welcome").await;
    let mut native = Client::native(addr).await;

    // A native patch creating entity atome/p1: a create for both.
    native
        .send(
            json!({"type": "push", "rid": 1, "space": SPACE, "changes": [
            {"collection": "atome", "id": "p1", "op": "patch", "fields": {"kind": "note"}}]}),
        )
        .await;
    native.until("ack").await;
    let e = atome_sock.recv().await;
    assert_eq!(e["type"], "atome:created");
    assert_eq!(e["atome"], json!({"id": "p1", "kind": "note"}));
    assert_eq!(sync.recv().await["eventType"], "atome:created");

    // A second native patch: altered for seed 001, updated for seed 000.
    native
        .send(
            json!({"type": "push", "rid": 2, "space": SPACE, "changes": [
            {"collection": "atome", "id": "p1", "op": "patch", "fields": {"title": "t"}}]}),
        )
        .await;
    native.until("ack").await;
    let e = atome_sock.recv().await;
    assert_eq!(e["type"], "atome:altered");
    assert_eq!(e["alteration"], json!({"title": "t"}));
    assert_eq!(
        e["atome"],
        json!({"id": "p1", "kind": "note", "title": "t"})
    );
    let e = sync.recv().await;
    assert_eq!(e["eventType"], "atome:updated");
    assert_eq!(
        e["payload"]["atome"],
        json!({"id": "p1", "kind": "note", "title": "t"})
    );

    // Other collections are not atomes: neither atome dialect sees them.
    native.put(SPACE, "n1", json!({"v": 1})).await;

    // A REST delete reaches both.
    let (st, _) = http(addr, "DELETE", &format!("/api/atome/p1{q}"), &[], None).await;
    assert_eq!(st, 200);
    let e: Value = atome_sock.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["atomeId"].as_str()),
        (Some("atome:deleted"), Some("p1"))
    );
    let e = sync.recv().await;
    assert_eq!(e["eventType"], "atome:deleted");
    assert_eq!(e["payload"]["atomeId"], "p1");
    relay.shutdown().await.unwrap();
}
