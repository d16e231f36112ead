//! Issue 12, disclosure and protocol hygiene: operator endpoints need an
//! admin token under `anonymous = "none"`, invalid UTF-8 closes with 1007 on
//! every WebSocket endpoint, a subscribed writer's push -> ack does not wait
//! for Nagle, and `check-config` names out-of-range keys and bad log
//! filters.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use outpost::auth::Scope;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn status_and_metrics_need_an_admin_token_when_anonymous_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let admin = token("ops", Scope::Admin, None);
    let writer = token("app", Scope::Write, None);
    for path in ["/v1/status", "/metrics"] {
        let (code, body) = http_get(relay.addr, path).await;
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert!(!body.contains("node_id"), "{body}");
        let bearer = format!("Bearer {writer}");
        let (code, _) = http(relay.addr, "GET", path, &[("Authorization", &bearer)], None).await;
        assert_eq!(code, 403, "{path} with a write token");
        let bearer = format!("Bearer {admin}");
        let (code, body) = http(relay.addr, "GET", path, &[("Authorization", &bearer)], None).await;
        assert_eq!(code, 200, "{path} with an admin token: {body}");
        let (code, _) = http_get(relay.addr, &format!("{path}?token={admin}")).await;
        assert_eq!(code, 200, "{path}?token=");
    }
    let (code, body) = http_get(relay.addr, "/v1/status").await;
    assert_eq!(code, 401, "{body}");
    // /healthz stays open and says only healthy or not.
    let (code, body) = http_get(relay.addr, "/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    relay.shutdown().await.unwrap();
}

/// A text frame whose payload is not UTF-8 (the client library would not
/// build one, so it is sent as a raw frame).
fn bad_text() -> Message {
    Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    ))
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_on_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(auth_config(dir.path())).await;
    let admin = token("ops", Scope::Admin, None);
    let paths = [
        "/ws",
        "/ws/sync?space=s",
        "/ws/atome-sync?space=s&clientId=A",
        "/ws/config?space=s",
        "/v1/sync/w",
        "/api/ws?space=s",
        "/api/sync/ws?space=s",
        "/api/field-sync/ws?space=s",
        "/ws/replicate",
    ];
    for path in paths {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut c = Client::connect(relay.addr, &format!("{path}{sep}token={admin}")).await;
        c.ws.send(bad_text()).await.expect("send");
        let code = tokio::time::timeout(WAIT, async {
            while let Some(m) = c.ws.next().await {
                match m {
                    Ok(Message::Close(Some(f))) => return Some(u16::from(f.code)),
                    Ok(Message::Close(None)) | Err(_) => return None,
                    Ok(_) => continue,
                }
            }
            None
        })
        .await
        .unwrap_or_else(|_| panic!("{path}: no close in time"));
        assert_eq!(code, Some(1007), "{path}");
    }
    // The relay keeps serving.
    let mut c = Client::connect(relay.addr, &format!("/ws?token={admin}")).await;
    assert_eq!(c.recv().await["type"], "welcome");
    relay.shutdown().await.unwrap();
}

/// A writer subscribed to the space it writes gets an ack and its change
/// back per push: two small frames in a row, the second of which Nagle
/// holds until the client's delayed ACK (about 40 ms) without TCP_NODELAY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_writer_does_not_wait_for_delayed_acks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    // Relaxed durability: the figure measured is the network path, not fsync.
    cfg.storage.durability = outpost::store::Durability::Relaxed;
    let relay = start(cfg).await;
    let mut c = Client::native(relay.addr).await;
    c.subscribe("rt", 0).await;
    let mut took = Vec::new();
    for i in 0..40 {
        let t = Instant::now();
        c.send(json!({"type": "push", "rid": i, "space": "rt",
                      "changes": [{"collection": "n", "id": format!("k{i}"), "op": "patch", "fields": {"i": i}}]}))
            .await;
        let (mut ack, mut change) = (false, false);
        while !(ack && change) {
            let v = c.recv().await;
            match v["type"].as_str() {
                Some("ack") => ack = true,
                Some("change") => change = true,
                _ => {}
            }
        }
        took.push(t.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "push -> ack + change: median {median:?}, max {:?}",
        took.last().unwrap()
    );
    assert!(
        median < Duration::from_millis(20),
        "median round trip {median:?}: Nagle and delayed ACKs (no TCP_NODELAY?)"
    );
    relay.shutdown().await.unwrap();
}

#[test]
fn check_config_names_out_of_range_keys_and_bad_log_filters() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[storage]\nmin_free_mb = 18446744073709551615\n",
            "storage.min_free_mb",
        ),
        (
            "[storage]\ncache_mb = 18446744073709551615\n",
            "storage.cache_mb",
        ),
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        ("[log]\nlevel = \"loud==\"\n", "log.level"),
    ];
    for (text, key) in cases {
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let (code, _, err) = run_cli(&["check-config", "--config", file.to_str().unwrap()]);
        assert_eq!(code, 1, "{text}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
    }
}
