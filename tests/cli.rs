//! The command line, run as the real binary.

mod common;

use common::*;
use std::path::Path;

#[tokio::test]
async fn no_arguments_serves_the_embedded_defaults_on_7070() {
    let cwd = tempfile::tempdir().unwrap();
    let mut relay = Proc::spawn_in(Some(cwd.path()), &[]);
    assert_eq!(relay.addr.to_string(), "127.0.0.1:7070");
    let (status, body) = http_get(relay.addr, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    // Loopback defaults to anonymous write: a push works without a token.
    let mut c = Client::native(relay.addr).await;
    let ack = c.put("home", "n1", serde_json::json!({"a": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // The default data dir is ./outpost-data.
    assert!(cwd.path().join("outpost-data/outpost.redb").is_file());
    // SIGTERM: a clean exit with status 0.
    let status = relay.terminate().expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn check_config_accepts_the_documented_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/outpost.toml");
    let (code, out, err) = run_cli(&["check-config", "--config", example.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[server]") && out.contains("listen"), "{out}");
}

#[test]
fn check_config_names_the_bad_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[server]\nlisten = \"127.0.0.1:1\"\nbogus_key = 3\n",
            "bogus_key",
        ),
        ("[storage]\ndurability = \"sometimes\"\n", "durability"),
        ("[storage]\nretention = \"ten days\"\n", "retention"),
        ("[auth]\njwt_secret = \"short\"\n", "jwt_secret"),
        (
            "[server]\nlisten = \"0.0.0.0:7070\"\n[auth]\njwt_secret = \"0123456789abcdef0123\"\n",
            "",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&f, text).unwrap();
        let (code, out, err) = run_cli(&["check-config", "--config", f.to_str().unwrap()]);
        if key.is_empty() {
            // A non-loopback listener with a secret and no anonymous access is fine.
            assert_eq!(code, 0, "case {i}: {err}");
            assert!(out.contains("anonymous = \"none\""), "case {i}: {out}");
            assert!(
                !out.contains("0123456789abcdef0123"),
                "secret redacted: {out}"
            );
        } else {
            assert_eq!(code, 1, "case {i} should fail: {out}");
            assert!(
                err.contains(key),
                "case {i}: error should name {key}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn token_mints_a_jwt_the_relay_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("outpost.toml");
    std::fs::write(
        &cfg,
        format!("[auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"none\"\n"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let (code, token, err) = run_cli(&[
        "token", "--config", cfg, "--scope", "write", "--space", "home", "--ttl", "1h", "--sub",
        "tablet",
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let data = dir.path().join("data");
    let relay = Proc::spawn(&[
        "serve",
        "--config",
        cfg,
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(handshake_status(relay.addr, "/ws", None).await, 401);
    assert_eq!(
        handshake_status(relay.addr, "/ws", Some("garbage")).await,
        401
    );
    assert_eq!(handshake_status(relay.addr, "/ws", Some(token)).await, 101);
    let mut c = Client::connect(relay.addr, &format!("/ws?token={token}")).await;
    assert_eq!(c.recv().await["type"], "welcome");
    let ack = c.put("home", "n1", serde_json::json!({"a": 1})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    // The token is limited to space "home".
    c.send(
        serde_json::json!({"type": "push", "rid": 9, "space": "elsewhere",
        "changes": [{"collection": "c", "id": "x", "op": "put", "fields": {}}]}),
    )
    .await;
    let ack = c.recv().await;
    assert_eq!(ack["type"], "error", "{ack}");
    assert_eq!(ack["rid"], 9);
    assert_eq!(ack["code"], 403, "{ack}");

    // A config without a secret cannot mint.
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, "").unwrap();
    let (code, _, err) = run_cli(&[
        "token",
        "--config",
        bare.to_str().unwrap(),
        "--scope",
        "read",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("jwt_secret"), "{err}");
}
