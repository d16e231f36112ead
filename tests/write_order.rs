//! Writes of one connection are committed in the order their frames were
//! read (issue: a later push's future could reach the writer first).

mod common;

use common::*;
use futures_util::SinkExt;
use outpost::engine::{Engine, WriteOrder};
use outpost::model::Op;
use outpost::store::LocalWrite;
use serde_json::json;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;

fn patch(n: u64) -> Vec<LocalWrite> {
    vec![LocalWrite {
        collection: "c".into(),
        id: "e".into(),
        op: Op::Patch,
        fields: [("n".to_string(), json!(n))].into(),
        client_us: None,
        expect: None,
    }]
}

/// Poll a future once (its first poll queues a plain push's job).
async fn poll_once<F: std::future::Future>(
    mut f: std::pin::Pin<&mut F>,
) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx))).await
}

/// The values of field `n` in commit (log) order.
fn commit_order(e: &Engine, space: &str) -> Vec<u64> {
    e.space_log(space, 0, 100_000)
        .unwrap()
        .into_iter()
        .map(|(_, entry)| entry.change.fields["n"].as_u64().unwrap())
        .collect()
}

/// Deterministic: the second push's future is polled first. Plain pushes
/// then commit in poll order (the hazard); pushes made through one
/// `WriteOrder` commit in the order they were made.
#[tokio::test(flavor = "current_thread")]
async fn pushes_reach_the_writer_in_the_order_they_were_made() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let engine: Arc<Engine> = relay.state.engine.clone();

    let first = engine.push("plain", "t", None, patch(1));
    let second = engine.push("plain", "t", None, patch(2));
    let (first, mut second) = (Box::pin(first), Box::pin(second));
    assert!(poll_once(second.as_mut()).await.is_pending());
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(commit_order(&engine, "plain"), vec![2, 1], "the hazard");

    let mut order = WriteOrder::default();
    let first = order.push(
        engine.clone(),
        "ordered".into(),
        "t".into(),
        None,
        patch(1),
        vec![],
    );
    let second = order.push(
        engine.clone(),
        "ordered".into(),
        "t".into(),
        None,
        patch(2),
        vec![],
    );
    let (first, mut second) = (Box::pin(first), Box::pin(second));
    assert!(poll_once(second.as_mut()).await.is_pending());
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(commit_order(&engine, "ordered"), vec![1, 2]);
    let e = engine.entity("ordered", "c", "e").unwrap().unwrap();
    assert_eq!(e.state.visible()["n"], 2);
    relay.shutdown().await.unwrap();
}

/// Over a real socket: thousands of pipelined patches of one field end
/// with the last value, and the log holds them in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_patches_of_one_field_commit_in_order() {
    const N: u64 = 3000;
    let dir = tempfile::tempdir().unwrap();
    let relay = start(config(dir.path())).await;
    let mut c = Client::native(relay.addr).await;
    for n in 1..=N {
        let frame = json!({"type": "push", "rid": n, "space": "s", "changes": [
            {"collection": "c", "id": "e", "op": "patch", "fields": {"n": n}}]});
        c.ws.feed(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }
    c.ws.flush().await.unwrap();
    let mut acked = 0;
    while acked < N {
        let v = c.recv().await;
        assert_eq!(v["type"], "ack", "{v}");
        acked += 1;
        assert_eq!(v["rid"], acked, "acks in order");
    }
    let engine = relay.state.engine.clone();
    let order = commit_order(&engine, "s");
    assert_eq!(
        order,
        (1..=N).collect::<Vec<_>>(),
        "commit order = send order"
    );
    let e = engine.entity("s", "c", "e").unwrap().unwrap();
    assert_eq!(e.state.visible()["n"], N);
    relay.shutdown().await.unwrap();
}
