//! The operator commands against real relay processes: `status` (live,
//! down, with and without a token), `export` -> `import` (identical state
//! on a fresh relay), `backup` under a write load -> `restore` (every write
//! acked before the backup began, the store's checks pass), and the
//! config-mistake warnings of `check-config` and `serve`.

mod common;

use common::{run_cli, Client, Proc, SECRET, WAIT};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn url(p: &Proc) -> String {
    format!("http://{}", p.addr)
}

fn serve(data: &std::path::Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&args)
}

/// Entity lines of an export, keyed by (space, collection, id).
fn entities(export: &str) -> BTreeMap<(String, String, String), Value> {
    let mut out = BTreeMap::new();
    for l in export.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["type"] == "entity" {
            let k = |f: &str| v[f].as_str().unwrap().to_string();
            out.insert((k("space"), k("collection"), k("id")), v);
        }
    }
    out
}

async fn push(c: &mut Client, space: &str, changes: Value) {
    c.send(json!({"type": "push", "rid": 1, "space": space, "changes": changes}))
        .await;
    let (_, ack) = c.until("ack").await;
    assert!(ack["results"].is_array(), "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_live_relay_a_down_one_and_a_guarded_one() {
    let dir = tempfile::tempdir().unwrap();
    let relay = serve(&dir.path().join("a"), &[]);
    let mut c = Client::native(relay.addr).await;
    push(
        &mut c,
        "home",
        json!([{"collection": "lights", "id": "l1", "op": "put", "fields": {"on": true}}]),
    )
    .await;
    let u = url(&relay);
    let (code, out, err) = tokio::task::spawn_blocking(move || run_cli(&["status", "--url", &u]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    for want in [
        "outpost 0.",
        "node ",
        "SPACE",
        "home",
        "clients   1 (/ws 1)",
        "no peers (mesh off)",
        "no upstream",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    let u = url(&relay);
    let (code, out, _) =
        tokio::task::spawn_blocking(move || run_cli(&["status", "--url", &u, "--json"]))
            .await
            .unwrap();
    assert_eq!(code, 0);
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["spaces"][0]["name"], "home");
    assert_eq!(st["spaces"][0]["entities"], 1);
    assert_eq!(st["connections"]["/ws"], 1);
    assert!(st["data"]["store_bytes"].as_u64().unwrap() > 0);
    assert!(st["data"]["free_bytes"].as_u64().unwrap() > 0);

    // A relay that is down: a clear error and exit code 1.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = format!("http://127.0.0.1:{port}");
    let (code, out, err) = run_cli(&["status", "--url", &down]);
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains(&format!("cannot reach the relay at {down}")),
        "{err}"
    );

    // Auth on, anonymous off: no token is refused (exit 1, the relay's
    // answer shown); --config mints an admin token from the secret.
    let cfg = dir.path().join("auth.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndir = \"{}\"\n[auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"none\"\n",
            dir.path().join("b").display()),
    )
    .unwrap();
    let guarded = Proc::spawn(&["serve", "--config", cfg.to_str().unwrap()]);
    let u = url(&guarded);
    let (code, _, err) = run_cli(&["status", "--url", &u]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let reader = common::token("r", outpost::auth::Scope::Read, None);
    let (code, _, err) = run_cli(&["status", "--url", &u, "--token", &reader]);
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
    let (code, out, err) = run_cli(&["status", "--url", &u, "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no spaces yet"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_reproduces_every_entity_on_a_fresh_relay() {
    let dir = tempfile::tempdir().unwrap();
    let a = serve(&dir.path().join("a"), &[]);
    let mut c = Client::native(a.addr).await;
    for i in 0..300 {
        push(&mut c, if i % 3 == 0 { "work" } else { "home" }, json!([
            {"collection": "notes", "id": format!("n{i}"), "op": "put", "fields": {"title": format!("note {i}"), "n": i}},
        ])).await;
    }
    // Patches, removed fields, deletes and a revival: stamps and versions
    // of every kind of state.
    push(&mut c, "home", json!([
        {"collection": "notes", "id": "n1", "op": "patch", "fields": {"title": "renamed", "n": null}},
        {"collection": "notes", "id": "n2", "op": "delete"},
        {"collection": "notes", "id": "n4", "op": "delete"},
    ])).await;
    push(&mut c, "home", json!([
        {"collection": "notes", "id": "n4", "op": "patch", "fields": {"back": true}},
        {"collection": "todo", "id": "t1", "op": "put", "fields": {"text": "ünïcødé ✓", "nested": {"a": [1, 2]}}},
    ])).await;

    let file = dir.path().join("export.jsonl");
    let (ua, f) = (url(&a), file.to_str().unwrap().to_string());
    let (code, _, err) =
        tokio::task::spawn_blocking(move || run_cli(&["export", "--url", &ua, "--output", &f]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("exported 301 entities"), "{err}");
    let exported = std::fs::read_to_string(&file).unwrap();
    let first: Value = serde_json::from_str(exported.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "header");
    let want = entities(&exported);
    assert_eq!(want.len(), 301);
    assert_eq!(
        want[&("home".into(), "notes".into(), "n1".into())]["version"],
        2
    );

    let b = serve(&dir.path().join("b"), &[]);
    for round in 0..2 {
        // The second round shows that importing again changes nothing.
        let (ub, f) = (url(&b), file.to_str().unwrap().to_string());
        let (code, _, err) =
            tokio::task::spawn_blocking(move || run_cli(&["import", "--url", &ub, &f]))
                .await
                .unwrap();
        assert_eq!(code, 0, "round {round}: {err}");
        let ub = url(&b);
        let (code, again, err) =
            tokio::task::spawn_blocking(move || run_cli(&["export", "--url", &ub]))
                .await
                .unwrap();
        assert_eq!(code, 0, "{err}");
        let got = entities(&again);
        assert_eq!(got.len(), want.len());
        for (k, v) in &want {
            let g = &got[k];
            // Identical field by field: state (every field's value and
            // stamp, tombstones, resets) and version.
            assert_eq!(g["state"], v["state"], "{k:?}");
            assert_eq!(g["version"], v["version"], "{k:?}");
        }
    }
    // And what clients read is the same.
    let mut cb = Client::native(b.addr).await;
    for id in ["n1", "n2", "n4", "n7"] {
        c.send(json!({"type": "get", "rid": id, "space": "home", "collection": "notes", "id": id}))
            .await;
        cb.send(
            json!({"type": "get", "rid": id, "space": "home", "collection": "notes", "id": id}),
        )
        .await;
        let (x, y) = (c.recv().await, cb.recv().await);
        assert_eq!(x["fields"], y["fields"], "{id}: {x} vs {y}");
        assert_eq!(x["deleted"], y["deleted"], "{id}");
        assert_eq!(x["version"], y["version"], "{id}");
    }

    // A truncated export is refused with the line it stopped at.
    let cut: String = exported
        .lines()
        .take(10)
        .map(|l| format!("{l}\n"))
        .collect();
    let part = dir.path().join("part.jsonl");
    std::fs::write(&part, cut).unwrap();
    let (code, _, err) = run_cli(&["import", "--url", &url(&b), part.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("no end line"), "{err}");
    let (code, _, err) = run_cli(&["import", "--url", &url(&b), "/dev/null"]);
    assert_eq!(code, 1);
    assert!(err.contains("400"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_every_write_acked_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a");
    let mut relay = serve(&data, &[]);
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (addr, acked, stop) = (relay.addr, acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut c = Client::native(addr).await;
            for n in 0..20_000u64 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let id = format!("w{w}-{n}");
                c.send(json!({"type": "push", "rid": id, "space": "load",
                    "changes": [{"collection": "c", "id": id, "op": "put", "fields": {"n": n, "pad": "x".repeat(100)}}]}))
                    .await;
                let (_, ack) = c.until("ack").await;
                assert!(ack["results"][0]["seq"].as_u64().is_some(), "{ack}");
                acked.lock().unwrap().insert(id);
            }
        }));
    }
    // Let the load build up, then take the backup while it goes on.
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked.lock().unwrap().len() < 500 {
        assert!(tokio::time::Instant::now() < deadline, "writers too slow");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = acked.lock().unwrap().clone();
    let file = dir.path().join("relay.backup");
    let (u, f) = (url(&relay), file.to_str().unwrap().to_string());
    let (code, _, err) = tokio::task::spawn_blocking(move || run_cli(&["backup", "--url", &u, &f]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let during = acked.lock().unwrap().len() - before.len();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    eprintln!(
        "{} writes acked before the backup, {during} while it ran",
        before.len()
    );

    // Restoring over the running relay's store is refused.
    let (code, _, err) = run_cli(&[
        "restore",
        file.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("a relay is running"), "{err}");

    // A damaged backup is refused, and nothing is left behind.
    let bytes = std::fs::read(&file).unwrap();
    let bad = dir.path().join("cut.backup");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let target = dir.path().join("bad");
    let (code, _, err) = run_cli(&[
        "restore",
        bad.to_str().unwrap(),
        "--data",
        target.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("truncated") || err.contains("damaged"),
        "{err}"
    );
    assert!(!target.join("outpost.redb").exists());

    let restored = dir.path().join("b");
    let (code, _, err) = run_cli(&[
        "restore",
        file.to_str().unwrap(),
        "--data",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("checks passed"), "{err}");
    // Again onto the same dir: refused without --force.
    let (code, _, err) = run_cli(&[
        "restore",
        file.to_str().unwrap(),
        "--data",
        restored.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--force"), "{err}");

    let node_a = {
        let (_, b) = common::http_get(relay.addr, "/v1/status").await;
        serde_json::from_str::<Value>(&b).unwrap()["node_id"].clone()
    };
    relay.terminate();
    let b = serve(&restored, &[]);
    let mut c = Client::native(b.addr).await;
    let (catch_up, _) = c.subscribe("load", 0).await;
    let held: BTreeSet<String> = catch_up
        .iter()
        .filter(|v| v["type"] == "change" || v["type"] == "entity")
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = before.difference(&held).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} acked writes missing, e.g. {missing:?}",
        before.difference(&held).count()
    );
    // The same relay: same node id, and it takes writes again.
    let (_, st) = common::http_get(b.addr, "/v1/status").await;
    assert_eq!(
        serde_json::from_str::<Value>(&st).unwrap()["node_id"],
        node_a
    );
    push(
        &mut c,
        "load",
        json!([{"collection": "c", "id": "after", "op": "put", "fields": {}}]),
    )
    .await;
}

#[test]
fn settings_that_take_no_effect_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("o.toml");
    std::fs::write(
        &cfg,
        format!("[storage]\ndir = \"{}\"\n[mesh]\nsecret = \"{SECRET}\"\npeers = [\"10.0.0.2:7071\"]\n[webhook]\ntimeout = \"5s\"\n",
            dir.path().join("d").display()),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (code, out, err) = run_cli(&["check-config", "--config", c]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[server]"), "{out}");
    assert!(
        err.contains("warning: [mesh] sets mesh.peers, mesh.secret but not `enabled = true`"),
        "{err}"
    );
    assert!(
        err.contains("warning: [webhook] sets webhook.timeout but no `url`"),
        "{err}"
    );
    let (code, _, _) = run_cli(&["check-config", "--config", c, "--strict"]);
    assert_eq!(code, 2);

    // `serve` logs the same warning at start.
    let mut child = Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["serve", "--config", c, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("outpost listening on"), "{line}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("WARN") && log.contains("config: [mesh] sets"),
        "{log}"
    );

    // A section switched on, or left out, is not reported.
    std::fs::write(
        &cfg,
        format!("[mesh]\nenabled = true\nsecret = \"{SECRET}\"\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", c, "--strict"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
}
