//! mDNS discovery for real: three relays, each in its own network
//! namespace, joined by a bridge in a fourth; no static peers. They must
//! find each other by mDNS and converge. Needs root and iproute2 (the
//! README's test command installs iproute2); in CI (`CI=true`) a missing
//! prerequisite is a failure, not a skip. Everything created is removed by
//! name, and the relays are stopped by pid.

mod common;

use common::Proc;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "mdns-mesh-secret-0123456789";

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces and links of one test run; removed on drop.
struct Net {
    hub: String,
    nodes: Vec<String>,
}

impl Net {
    fn create(n: usize) -> Result<Net, String> {
        let tag = std::process::id() % 100_000;
        let net = Net {
            hub: format!("op{tag}h"),
            nodes: (0..n).map(|i| format!("op{tag}n{i}")).collect(),
        };
        sh(&["ip", "netns", "add", &net.hub])?;
        let hub = net.hub.clone();
        let in_hub = |args: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &hub];
            v.extend_from_slice(args);
            sh(&v)
        };
        in_hub(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        in_hub(&["ip", "link", "set", "br0", "up"])?;
        for (i, ns) in net.nodes.iter().enumerate() {
            sh(&["ip", "netns", "add", ns])?;
            let (inner, outer) = (format!("v{tag}n{i}"), format!("v{tag}h{i}"));
            sh(&[
                "ip", "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ])?;
            sh(&["ip", "link", "set", &inner, "netns", ns])?;
            sh(&["ip", "link", "set", &outer, "netns", &net.hub])?;
            in_hub(&["ip", "link", "set", &outer, "master", "br0"])?;
            in_hub(&["ip", "link", "set", &outer, "up"])?;
            let addr = format!("10.213.0.{}/24", i + 1);
            for args in [
                vec!["ip", "addr", "add", &addr, "dev", &inner],
                vec!["ip", "link", "set", &inner, "up"],
                vec!["ip", "link", "set", "lo", "up"],
            ] {
                let mut v = vec!["ip", "netns", "exec", ns];
                v.extend(args);
                sh(&v)?;
            }
        }
        Ok(net)
    }

    fn curl(&self, i: usize, args: &[&str]) -> String {
        let mut v = vec![
            "ip",
            "netns",
            "exec",
            &self.nodes[i],
            "curl",
            "-s",
            "-m",
            "5",
        ];
        v.extend_from_slice(args);
        sh(&v).unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends and the bridge in it.
        for ns in self.nodes.iter().chain([&self.hub]) {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

fn prerequisites() -> Result<(), String> {
    let root = sh(&["id", "-u"]).map(|u| u.trim() == "0").unwrap_or(false);
    if !root {
        return Err("needs root".into());
    }
    sh(&["ip", "-V"]).map_err(|_| "needs iproute2".to_string())?;
    sh(&["curl", "--version"]).map_err(|_| "needs curl".to_string())?;
    Ok(())
}

#[test]
fn relays_in_separate_namespaces_discover_each_other_and_converge() {
    if let Err(why) = prerequisites() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the mDNS namespace test must run in CI: {why}");
        }
        eprintln!("skipping the mDNS namespace test: {why}");
        return;
    }
    let net = Net::create(3).expect("network namespaces");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut relays = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let cfg = dir.path().join("outpost.toml");
        std::fs::write(
            &cfg,
            format!("[mesh]\nenabled = true\nlisten = \"0.0.0.0:7071\"\nsecret = \"{SECRET}\"\nmdns = true\n"),
        )
        .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &net.nodes[i],
            env!("CARGO_BIN_EXE_outpost"),
            "serve",
        ])
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "--listen",
            "127.0.0.1:7070",
        ])
        .args(["--data", dir.path().join("data").to_str().unwrap()]);
        relays.push(Proc::spawn_cmd(cmd));
    }
    // One write per relay, before they know each other.
    for i in 0..3 {
        let body = format!(r#"{{"id":"from-{i}","kind":"note","by":{i}}}"#);
        let out = net.curl(
            i,
            &[
                "-XPOST",
                "http://127.0.0.1:7070/api/atome/create",
                "-d",
                &body,
            ],
        );
        assert!(
            out.contains("\"success\":true"),
            "write on relay {i}: {out}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let counts: Vec<u64> = (0..3)
            .map(|i| {
                let out = net.curl(i, &["http://127.0.0.1:7070/api/atome?kind=note"]);
                serde_json::from_str::<Value>(&out)
                    .ok()
                    .and_then(|v| v["count"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        if counts == [3, 3, 3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence by mDNS: {counts:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Each pair found each other (both ways at once): one link per pair,
    // so every relay settles with exactly two.
    let peer_counts = || -> Vec<usize> {
        (0..3)
            .map(|i| {
                serde_json::from_str::<Value>(&net.curl(i, &["http://127.0.0.1:7070/v1/status"]))
                    .ok()
                    .and_then(|st| st["peers"].as_array().map(|p| p.len()))
                    .unwrap_or(0)
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = peer_counts();
        if counts == [2, 2, 2] {
            // Still so a moment later: no duplicate connection lingers.
            std::thread::sleep(Duration::from_secs(2));
            assert_eq!(peer_counts(), [2, 2, 2]);
            break;
        }
        assert!(Instant::now() < deadline, "links per relay: {counts:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 0..3 {
        let metrics = net.curl(i, &["http://127.0.0.1:7070/metrics"]);
        assert!(
            !metrics.contains("outpost_mesh_discovered_total 0"),
            "relay {i} discovered peers by mDNS:\n{metrics}"
        );
    }
    for mut r in relays {
        r.terminate();
    }
}
