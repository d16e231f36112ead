//! Scale-out on NATS JetStream (issue 19) with real `nats-server` and relay
//! processes on loopback: hub instances share one stream, each merging what
//! the others wrote; writes are acked after JetStream holds them; a stream
//! with other settings refuses the start.
#![cfg(feature = "jetstream")]

mod common;

use common::nats::Nats;
use common::node::*;
use common::replication::*;
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Node {
    /// A hub instance of the tier on `nats`'s stream.
    fn hub(nats: &Nats, replicas: usize, extra: &str) -> Node {
        Node::new(&format!(
            "[auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"write\"\n\
             [cluster]\nnats = {}\nack_timeout = \"30s\"\n{extra}\n\
             [cluster.stream]\nreplicas = {replicas}\n",
            nats.toml_urls()
        ))
    }
}

async fn cluster_status(addr: SocketAddr) -> Value {
    status(addr).await["jetstream"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hub_instances_share_one_stream() {
    let nats = Nats::start(1);
    let a = Node::hub(&nats, 1, "").run();
    let b = Node::hub(&nats, 1, "").run();
    for n in [&a, &b] {
        let st = cluster_status(n.http).await;
        assert_eq!(st["connected"], true, "{st}");
        assert_eq!(st["stream"]["name"], "OUTPOST", "{st}");
    }
    // Acked writes are in the stream already: the ack waited for JetStream.
    let wa = writes("a", 150, "a");
    write_all(a.http, &wa).await;
    let st = cluster_status(a.http).await;
    assert_eq!(st["changes_waiting"], 0, "{st}");
    assert!(st["stream"]["last_seq"].as_u64().unwrap() >= 150, "{st}");
    let wb = writes("b", 150, "b");
    write_all(b.http, &wb).await;
    converge(&[a.http, b.http], 300, &ids(&[&wa, &wb])).await;
    // Each instance read the whole stream; nothing was published twice.
    for n in [&a, &b] {
        wait_until(20, "lag 0", || async {
            cluster_status(n.http).await["lag"] == 0
        })
        .await;
        let st = cluster_status(n.http).await;
        assert_eq!(st["position"], 300, "{st}");
        assert_eq!(st["stream"]["last_seq"], 300, "{st}");
        assert_eq!(st["merged"], 150, "{st}");
        assert_eq!(metric(n.http, "outpost_jetstream_reachable").await, 1.0);
        assert_eq!(metric(n.http, "outpost_jetstream_lag").await, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_stream_refuses_the_start() {
    let nats = Nats::start(1);
    // The first instance creates the stream with a 2 minute window.
    let a = Node::hub(&nats, 1, "").run();
    assert_eq!(cluster_status(a.http).await["connected"], true);
    let b = Node::new(&format!(
        "[cluster]\nnats = {}\n[cluster.stream]\nreplicas = 1\nduplicate_window = \"5m\"\n",
        nats.toml_urls()
    ));
    let args = b.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run_cli(&args);
    assert_ne!(code, 0);
    assert!(
        err.contains("NATS stream OUTPOST") && err.contains("duplicate_window"),
        "{err}"
    );
}

/// As `write_all`, but an ack may take up to a minute: while a NATS node
/// is killed the stream elects a new leader and the client reconnects, and
/// acks wait for JetStream (that wait is the guarantee under test).
async fn write_all_patient(addr: SocketAddr, writes: &[(String, Value)]) {
    let mut c = Client::native(addr).await;
    for chunk in writes.chunks(100) {
        let changes: Vec<_> = chunk
            .iter()
            .map(|(id, f)| serde_json::json!({"collection": "notes", "id": id, "op": "patch", "fields": f}))
            .collect();
        c.send(serde_json::json!({"type": "push", "rid": 1, "space": "s", "changes": changes}))
            .await;
        loop {
            let f = c
                .try_recv(Duration::from_secs(60))
                .await
                .expect("an ack within a minute");
            if f["type"] == "ack" {
                assert_eq!(f["results"].as_array().unwrap().len(), chunk.len(), "{f}");
                break;
            }
            assert_ne!(f["type"], "error", "{f}");
        }
    }
}

/// An edge site forwarding to a hub instance over `/ws/replicate`.
fn ws_site(hub: SocketAddr) -> String {
    let t = token("site", outpost::auth::Scope::Admin, None);
    format!("[upstream]\nurl = \"ws://{hub}/ws/replicate\"\ntoken = \"{t}\"\n")
}

/// How many writes each writer makes per phase (more with
/// OUTPOST_JETSTREAM_LONG=1).
fn per_phase() -> usize {
    if std::env::var_os("OUTPOST_JETSTREAM_LONG").is_some() {
        2000
    } else {
        120
    }
}

async fn wait_connected(n: &Node) {
    wait_until(60, "the cluster link up", || async {
        cluster_status(n.http).await["connected"] == true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nats_nodes_three_hubs_two_sites_with_kills_and_a_move() {
    let w = per_phase();
    let mut nats = Nats::start(3);
    let mut hubs: Vec<Node> = (0..3).map(|_| Node::hub(&nats, 3, "").run()).collect();
    for h in &hubs {
        wait_connected(h).await;
    }
    let mut site1 = Node::new(&ws_site(hubs[0].http)).run();
    let site2 = Node::new(&ws_site(hubs[1].http)).run();
    let mut all: Vec<Vec<(String, Value)>> = Vec::new();

    // Phase 1: every hub instance and every site writes at once.
    let p1: Vec<_> = ["ha", "hb", "hc", "s1", "s2"]
        .iter()
        .map(|p| writes(&format!("{p}-1-"), w, p))
        .collect();
    let targets = [
        hubs[0].http,
        hubs[1].http,
        hubs[2].http,
        site1.http,
        site2.http,
    ];
    let mut tasks = Vec::new();
    for (addr, ws) in targets.iter().zip(p1.iter()) {
        let (addr, ws) = (*addr, ws.clone());
        tasks.push(tokio::spawn(async move { write_all(addr, &ws).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    all.extend(p1);

    // Phase 2: writes go on at A, B and both sites while one NATS node and
    // hub C are SIGKILLed; both come back mid-run.
    let p2: Vec<_> = ["ha", "hb", "s1", "s2"]
        .iter()
        .map(|p| writes(&format!("{p}-2-"), w, p))
        .collect();
    let targets = [hubs[0].http, hubs[1].http, site1.http, site2.http];
    let mut tasks = Vec::new();
    for (addr, ws) in targets.iter().zip(p2.iter()) {
        let (addr, ws) = (*addr, ws.clone());
        tasks.push(tokio::spawn(
            async move { write_all_patient(addr, &ws).await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.kill9(1);
    hubs[2].kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.start_node(1);
    hubs[2].start();
    for t in tasks {
        t.await.unwrap();
    }
    all.extend(p2);
    wait_connected(&hubs[2]).await;

    // Phase 3: site 1 moves from hub A to hub B (hard stop, new config),
    // and hub C writes again.
    site1.kill9();
    std::fs::write(&site1.cfg, ws_site(hubs[1].http)).unwrap();
    site1.start();
    let p3: Vec<_> = ["s1", "hc"]
        .iter()
        .map(|p| writes(&format!("{p}-3-"), w, p))
        .collect();
    write_all_patient(site1.http, &p3[0]).await;
    write_all_patient(hubs[2].http, &p3[1]).await;
    all.extend(p3);

    let total: usize = all.iter().map(Vec::len).sum();
    let refs: Vec<&[(String, Value)]> = all.iter().map(Vec::as_slice).collect();
    let addrs = [
        hubs[0].http,
        hubs[1].http,
        hubs[2].http,
        site1.http,
        site2.http,
    ];
    // Identical state everywhere, every change exactly once in every log.
    converge(&addrs, total as u64, &ids(&refs)).await;
    for h in &hubs {
        wait_until(30, "lag 0", || async {
            cluster_status(h.http).await["lag"] == 0
        })
        .await;
        let st = cluster_status(h.http).await;
        assert_eq!(st["changes_waiting"], 0, "{st}");
        assert_eq!(st["pending_gaps"], 0, "{st}");
    }
}

/// `[upstream] nats`: an edge forwards straight into JetStream. While NATS
/// is down it acks on its own fsync and keeps the backlog on disk (through
/// a SIGKILL); when NATS is up it forwards everything exactly once and
/// receives what a hub instance wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_upstream_edge_with_nats_down_then_up() {
    let mut nats = Nats::configure(1);
    let edge_cfg = format!(
        "[upstream]\nnats = {}\n[upstream.stream]\nreplicas = 1\n",
        nats.toml_urls()
    );
    let mut edge = Node::new(&edge_cfg).run();
    let w1 = writes("e1-", 200, "edge");
    write_all(edge.http, &w1).await;
    let up = status(edge.http).await["upstream"].clone();
    assert_eq!(up["transport"], "nats", "{up}");
    assert_eq!(up["connected"], false, "{up}");
    assert_eq!(up["changes_waiting"], 200, "{up}");
    assert!(up["last_error"].is_string(), "{up}");

    edge.kill9();
    edge.start();
    let w2 = writes("e2-", 50, "edge");
    write_all(edge.http, &w2).await;
    assert_eq!(status(edge.http).await["upstream"]["changes_waiting"], 250);

    nats.start_node(0);
    let hub = Node::hub(&nats, 1, "").run();
    wait_connected(&hub).await;
    let wh = writes("h-", 50, "hub");
    write_all(hub.http, &wh).await;
    converge(&[edge.http, hub.http], 300, &ids(&[&w1, &w2, &wh])).await;
    wait_until(30, "edge backlog drained", || async {
        status(edge.http).await["upstream"]["changes_waiting"] == 0
    })
    .await;
    let st = cluster_status(hub.http).await;
    assert_eq!(st["merged"], 250, "{st}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, as PEM files
/// in `dir`: (ca, cert, key).
fn ca_and_server_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, issuer.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// TLS verified against `ca_file`, and a token from `token_file`: two
/// instances share the stream; a wrong token never reaches it (the relay
/// serves, reports JetStream unreachable with the server's error, and
/// answers its writers 503 after `ack_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_and_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert(dir.path());
    let token = dir.path().join("nats.token");
    std::fs::write(&token, "s3cret-token-0123456789\n").unwrap();
    let wrong = dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let mut nats = Nats::configure_with(
        1,
        &format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\nauthorization {{ token: \"s3cret-token-0123456789\" }}",
            cert.display(),
            key.display()
        ),
    );
    nats.start_node(0);
    let url = format!("[\"tls://127.0.0.1:{}\"]", nats.nodes[0].port);
    let hub = |token: &Path, timeout: &str| {
        Node::new(&format!(
            "[cluster]\nnats = {url}\ntoken_file = \"{}\"\nca_file = \"{}\"\nack_timeout = \"{timeout}\"\n\
             [cluster.stream]\nreplicas = 1\n",
            token.display(),
            ca.display()
        ))
        .run()
    };
    good_shares_bad_is_refused(hub, &token, &wrong).await;
}

/// Two instances started by `hub` with the `good` credentials share the
/// stream; one with the `bad` ones (and a 1 s `ack_timeout`) never reaches
/// it: it serves, reports JetStream unreachable with the server's error,
/// answers its writer 503 after `ack_timeout`, and keeps the write waiting.
async fn good_shares_bad_is_refused(hub: impl Fn(&Path, &str) -> Node, good: &Path, bad: &Path) {
    let a = hub(good, "30s");
    let b = hub(good, "30s");
    wait_connected(&a).await;
    wait_connected(&b).await;
    let wa = writes("a", 50, "a");
    write_all(a.http, &wa).await;
    converge(&[a.http, b.http], 50, &ids(&[&wa])).await;

    let c = hub(bad, "1s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = cluster_status(c.http).await;
    assert_eq!(st["connected"], false, "{st}");
    assert!(st["last_error"].is_string(), "{st}");
    assert_eq!(st["changes_waiting"], 0, "{st}");
    let mut client = Client::native(c.http).await;
    client
        .send(serde_json::json!({"type": "push", "rid": 1, "space": "s",
            "changes": [{"collection": "notes", "id": "x", "op": "put", "fields": {"v": 1}}]}))
        .await;
    let (_, err) = client.until("error").await;
    assert_eq!(err["code"], 503, "{err}");
    assert_eq!(cluster_status(c.http).await["changes_waiting"], 1);
}

/// Push `n` puts to `notes` in `space`, ids `<prefix><i>`, in pushes of 10.
async fn write_space(c: &mut Client, space: &str, prefix: &str, n: usize) {
    for start in (0..n).step_by(10) {
        let changes: Vec<_> = (start..(start + 10).min(n))
            .map(|i| serde_json::json!({"collection": "notes", "id": format!("{prefix}{i}"), "op": "put", "fields": {"i": i}}))
            .collect();
        c.send(serde_json::json!({"type": "push", "rid": 1, "space": space, "changes": changes}))
            .await;
        let (_, ack) = c.until("ack").await;
        assert_eq!(
            ack["results"].as_array().unwrap().len(),
            changes.len(),
            "{ack}"
        );
    }
}

/// How many of `notes` `<prefix>0..n` in `space` exist at `addr`.
async fn held(addr: SocketAddr, space: &str, prefix: &str, n: usize) -> usize {
    let mut c = Client::native(addr).await;
    let mut found = 0;
    for i in 0..n {
        c.send(serde_json::json!({"type": "get", "rid": i, "space": space, "collection": "notes", "id": format!("{prefix}{i}")}))
            .await;
        let e = c.recv().await;
        assert_eq!(e["type"], "entity", "{e}");
        if e["deleted"] == false {
            found += 1;
        }
    }
    found
}

/// `[upstream] nats` with `spaces`, both ways.
/// - A hub instance's origin writes to a space the edge keeps and to one it
///   skips, interleaved. The edge vouches for the skipped changes as covers
///   (the replication protocol's contract), so every kept change merges
///   with no gap, the edge's version vector reaches the hub's, and the
///   skipped space stays away.
/// - The edge's own clients write to a space it forwards and to one it
///   keeps local, interleaved, with a SIGKILL and restart in between (the
///   publisher then finds what it put in the stream in its log). Each
///   forwarded change says which seqs before it were filtered
///   (`Outpost-After`), so the hub merges every one with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_upstream_with_spaces_skips_without_gaps() {
    let mut nats = Nats::configure(1);
    nats.start_node(0);
    let hub = Node::hub(&nats, 1, "").run();
    wait_connected(&hub).await;
    let mut edge = Node::new(&format!(
        "[upstream]\nnats = {}\nspaces = [\"kept\"]\n[upstream.stream]\nreplicas = 1\n",
        nats.toml_urls()
    ))
    .run();
    let mut c = Client::native(hub.http).await;
    for round in 0..6 {
        write_space(&mut c, "kept", &format!("k{round}-"), 20).await;
        write_space(&mut c, "other", &format!("o{round}-"), 20).await;
    }
    let hub_vv = status(hub.http).await["version_vector"].clone();
    wait_until(60, "the edge's version vector at the hub's", || async {
        status(edge.http).await["version_vector"] == hub_vv
    })
    .await;
    let up = status(edge.http).await["upstream"].clone();
    assert_eq!(up["pending_gaps"], 0, "{up}");
    assert_eq!(status(edge.http).await["log"]["entries"], 120);
    for round in 0..6 {
        assert_eq!(held(edge.http, "kept", &format!("k{round}-"), 20).await, 20);
        assert_eq!(held(edge.http, "other", &format!("o{round}-"), 20).await, 0);
    }

    let mut c = Client::native(edge.http).await;
    for round in 0..3 {
        write_space(&mut c, "local", &format!("l{round}-"), 20).await;
        write_space(&mut c, "kept", &format!("e{round}-"), 20).await;
    }
    write_space(&mut c, "local", "l3-", 20).await;
    drop(c);
    edge.kill9();
    edge.start();
    let mut c = Client::native(edge.http).await;
    write_space(&mut c, "local", "l4-", 20).await;
    write_space(&mut c, "kept", "e3-", 20).await;
    let edge_node = status(edge.http).await["node_id"].clone();
    let edge_last = status(edge.http).await["version_vector"][edge_node.as_str().unwrap()].clone();
    assert_eq!(edge_last, 180, "the edge's own seqs");
    wait_until(
        60,
        "the hub's version vector at the edge's own seq",
        || async {
            status(hub.http).await["version_vector"][edge_node.as_str().unwrap()] == edge_last
        },
    )
    .await;
    let st = cluster_status(hub.http).await;
    assert_eq!(st["pending_gaps"], 0, "{st}");
    for round in 0..4 {
        assert_eq!(held(hub.http, "kept", &format!("e{round}-"), 20).await, 20);
    }
    for round in 0..5 {
        assert_eq!(held(hub.http, "local", &format!("l{round}-"), 20).await, 0);
    }
}

/// A NATS JWT (`ed25519-nkey`) for `subject`, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("{name}-{iat}-{}", &subject[..8]),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!("{header}.{}", b64.encode(claims.to_string()));
    let sig = b64.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{sig}")
}

/// Decentralized auth as `nsc` sets it up, made here with the `nkeys`
/// crate: an operator, a system account and an account with JetStream
/// signed by it (preloaded in the server's memory resolver), and a user
/// signed by the account,
/// whose JWT and seed make the `.creds` file. Returns (server config,
/// creds file text, a creds file of a user the account never signed).
fn operator_mode() -> (String, String, String) {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    // JetStream needs a system account in operator mode.
    let system = nkeys::KeyPair::new_account();
    let op_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "outpost-test",
        serde_json::json!({"type": "operator", "version": 2,
            "system_account": system.public_key()}),
    );
    let sys_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let acc_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "hubs",
        serde_json::json!({"type": "account", "version": 2, "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}}),
    );
    let creds = |signer: &nkeys::KeyPair| {
        let user = nkeys::KeyPair::new_user();
        let jwt = nats_jwt(
            signer,
            &user.public_key(),
            "hub",
            serde_json::json!({"type": "user", "version": 2,
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}),
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        )
    };
    let conf = format!(
        "operator: \"{op_jwt}\"\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{\n  {}: \"{acc_jwt}\"\n  {}: \"{sys_jwt}\"\n}}\n",
        system.public_key(),
        account.public_key(),
        system.public_key()
    );
    (conf, creds(&account), creds(&nkeys::KeyPair::new_account()))
}

/// `creds_file`: two hub instances authenticate with a user `.creds` file
/// (JWT + nkey seed) against a nats-server in operator mode and share the
/// stream; a user the account never signed is refused (JetStream
/// unreachable, writes answered 503 after `ack_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creds_file_against_an_operator_mode_server() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, good, bad) = operator_mode();
    let creds = dir.path().join("hub.creds");
    std::fs::write(&creds, good).unwrap();
    let stranger = dir.path().join("stranger.creds");
    std::fs::write(&stranger, bad).unwrap();
    let mut nats = Nats::configure_with(1, &conf);
    nats.start_node(0);
    let hub = |creds: &Path, timeout: &str| {
        Node::new(&format!(
            "[cluster]\nnats = {}\ncreds_file = \"{}\"\nack_timeout = \"{timeout}\"\n\
             [cluster.stream]\nreplicas = 1\n",
            nats.toml_urls(),
            creds.display()
        ))
        .run()
    };
    good_shares_bad_is_refused(hub, &creds, &stranger).await;
}

/// The hub tier with a site that forwards only some spaces over
/// `/ws/replicate`: hub A's log lacks the site's local-space seqs (its
/// batches came with covers), so A's next forwarded change of the site
/// vouches for them (`Outpost-After`) and hub B merges every kept change
/// with no gap, its version vector reaching A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_site_leaves_no_gap_across_the_tier() {
    let nats = Nats::start(1);
    let a = Node::hub(&nats, 1, "").run();
    let b = Node::hub(&nats, 1, "").run();
    wait_connected(&a).await;
    wait_connected(&b).await;
    let site = Node::new(&format!("{}spaces = [\"kept\"]\n", ws_site(a.http))).run();
    let mut c = Client::native(site.http).await;
    for round in 0..4 {
        write_space(&mut c, "local", &format!("l{round}-"), 20).await;
        write_space(&mut c, "kept", &format!("k{round}-"), 20).await;
    }
    let node = status(site.http).await["node_id"]
        .as_str()
        .unwrap()
        .to_string();
    for hub in [&a, &b] {
        wait_until(60, "the site's last seq at the hub", || async {
            status(hub.http).await["version_vector"][node.as_str()] == 160
        })
        .await;
        assert_eq!(cluster_status(hub.http).await["pending_gaps"], 0);
        for round in 0..4 {
            assert_eq!(held(hub.http, "kept", &format!("k{round}-"), 20).await, 20);
            assert_eq!(held(hub.http, "local", &format!("l{round}-"), 20).await, 0);
        }
    }
}

/// `[cluster.bootstrap]`: a stream whose messages expire after 5 s. Hubs A
/// and B write and converge; once the stream has dropped every message, a
/// new instance N with `[cluster.bootstrap]` naming A pulls A's data over
/// `/ws/replicate`, reads the stream after A's position, and converges
/// with A and B with every change once in its log. A control instance C
/// without the key gets nothing of the trimmed part (the test would fail
/// without the bootstrap). Then N and B write: everything converges, and
/// the stream holds each change once (N did not republish what it pulled).
/// Last, B is down longer than `max_age` and bootstraps from N on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_bootstraps_from_a_peer_when_the_stream_was_trimmed() {
    let nats = Nats::start(1);
    let config = |bootstrap: &str| {
        format!(
            "[auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"write\"\n\
             [cluster]\nnats = {}\nack_timeout = \"30s\"\n{bootstrap}\n\
             [cluster.stream]\nreplicas = 1\nmax_age = \"5s\"\nduplicate_window = \"1s\"\n",
            nats.toml_urls()
        )
    };
    let hub = |bootstrap: &str| Node::new(&config(bootstrap)).run();
    let a = hub("");
    let mut b = hub("");
    wait_connected(&a).await;
    wait_connected(&b).await;
    let wa = writes("a", 100, "a");
    let wb = writes("b", 100, "b");
    write_all(a.http, &wa).await;
    write_all(b.http, &wb).await;
    converge(&[a.http, b.http], 200, &ids(&[&wa, &wb])).await;
    wait_until(30, "the stream to drop every message", || async {
        cluster_status(a.http).await["stream"]["first_seq"] == 201
    })
    .await;

    let t = token("bootstrap", outpost::auth::Scope::Admin, None);
    let from = |peer: SocketAddr| {
        format!("[cluster.bootstrap]\nurl = \"http://{peer}\"\ntoken = \"{t}\"\n")
    };
    let n = hub(&from(a.http));
    let c = hub("");
    converge(&[a.http, b.http, n.http], 200, &ids(&[&wa, &wb])).await;
    let st = cluster_status(n.http).await;
    assert!(
        st["bootstrap"].as_str().unwrap().starts_with("done"),
        "{st}"
    );
    assert_eq!(st["position"], 200, "{st}");
    wait_connected(&c).await;
    let sc = status(c.http).await;
    assert_eq!(sc["log"]["entries"], 0, "{sc}");
    assert!(sc["jetstream"]["bootstrap"].is_null(), "{sc}");

    let wn = writes("n", 50, "n");
    let wb2 = writes("b2-", 50, "b");
    write_all(n.http, &wn).await;
    write_all(b.http, &wb2).await;
    converge(&[a.http, b.http, n.http], 300, &ids(&[&wa, &wb, &wn, &wb2])).await;
    assert_eq!(cluster_status(n.http).await["changes_waiting"], 0);
    // The stream's last seq, refreshed every 2 s: 300 messages, not 500.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for h in [&a, &n] {
        let st = cluster_status(h.http).await;
        assert_eq!(st["stream"]["last_seq"], 300, "{st}");
        assert_eq!(st["pending_gaps"], 0, "{st}");
    }

    // B is down longer than max_age while A writes: restarted with its
    // data and [cluster.bootstrap] naming N (itself bootstrapped), it
    // pulls what the stream dropped and converges, nothing twice.
    b.kill9();
    let wa2 = writes("a2-", 30, "a");
    write_all(a.http, &wa2).await;
    wait_until(30, "the stream to drop A's new writes", || async {
        cluster_status(a.http).await["stream"]["first_seq"] == 331
    })
    .await;
    std::fs::write(&b.cfg, config(&from(n.http))).unwrap();
    b.start();
    converge(
        &[a.http, b.http, n.http],
        330,
        &ids(&[&wa, &wb, &wn, &wb2, &wa2]),
    )
    .await;
    let st = cluster_status(b.http).await;
    assert!(
        st["bootstrap"].as_str().unwrap().starts_with("done"),
        "{st}"
    );
    assert_eq!(st["position"], 330, "{st}");
}

/// A mesh peer of a hub instance: what it writes reaches the whole tier
/// (hub A merges it over QUIC and publishes it; hub B, with no mesh, reads
/// it from the stream), and what B writes reaches the peer through A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_peers_writes_reach_the_tier_and_back() {
    let nats = Nats::start(1);
    let mesh = |peers: &str| {
        format!(
            "[mesh]\nenabled = true\nlisten = \"127.0.0.1:0\"\nsecret = \"mesh-secret-0123456789\"\n\
             mdns = false\npeers = [{peers}]\n"
        )
    };
    let a = Node::hub(&nats, 1, &mesh("")).run();
    let b = Node::hub(&nats, 1, "").run();
    wait_connected(&a).await;
    wait_connected(&b).await;
    let a_mesh = status(a.http).await["mesh"]["listen"]
        .as_str()
        .unwrap()
        .to_string();
    let m = Node::new(&mesh(&format!("\"{a_mesh}\""))).run();
    let wm = writes("m", 60, "m");
    write_all(m.http, &wm).await;
    converge(&[a.http, b.http, m.http], 60, &ids(&[&wm])).await;
    assert_eq!(cluster_status(b.http).await["merged"], 60);
    let wb = writes("b", 40, "b");
    write_all(b.http, &wb).await;
    converge(&[a.http, b.http, m.http], 100, &ids(&[&wm, &wb])).await;
}

/// `[upstream.bootstrap]`: an `[upstream] nats` edge down longer than
/// `max_age` while a hub instance writes pulls what the stream dropped from
/// that instance on restart (its own backlog is forwarded as usual), and
/// converges with every change once in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_down_longer_than_max_age_bootstraps_from_a_hub() {
    let nats = Nats::start(1);
    let stream = "replicas = 1\nmax_age = \"5s\"\nduplicate_window = \"1s\"\n";
    let hub = Node::new(&format!(
        "[auth]\njwt_secret = \"{SECRET}\"\nanonymous = \"write\"\n\
         [cluster]\nnats = {}\n[cluster.stream]\n{stream}",
        nats.toml_urls()
    ))
    .run();
    let t = token("edge", outpost::auth::Scope::Admin, None);
    let mut edge = Node::new(&format!(
        "[upstream]\nnats = {}\n[upstream.stream]\n{stream}\
         [upstream.bootstrap]\nurl = \"http://{}\"\ntoken = \"{t}\"\n",
        nats.toml_urls(),
        hub.http
    ))
    .run();
    wait_connected(&hub).await;
    let wh = writes("h", 50, "hub");
    write_all(hub.http, &wh).await;
    converge(&[hub.http, edge.http], 50, &ids(&[&wh])).await;
    assert!(status(edge.http).await["upstream"]["bootstrap"].is_null());

    edge.kill9();
    let wh2 = writes("h2-", 40, "hub");
    write_all(hub.http, &wh2).await;
    wait_until(30, "the stream to drop the hub's new writes", || async {
        cluster_status(hub.http).await["stream"]["first_seq"] == 91
    })
    .await;
    edge.start();
    let we = writes("e", 20, "edge");
    write_all(edge.http, &we).await;
    converge(&[hub.http, edge.http], 110, &ids(&[&wh, &wh2, &we])).await;
    let up = status(edge.http).await["upstream"].clone();
    assert!(
        up["bootstrap"].as_str().unwrap().starts_with("done"),
        "{up}"
    );
    assert_eq!(up["pending_gaps"], 0, "{up}");
}
