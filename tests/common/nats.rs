//! Real `nats-server` processes with JetStream for the scale-out tests:
//! each node on its own free loopback client and cluster ports, with its
//! own store dir and a config file written here; no monitoring port (off
//! unless configured); stopped by PID. Debian's `nats-server` package
//! (installed by scripts/test.sh).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct NatsNode {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    pub conf: PathBuf,
    child: Option<Child>,
}

/// One node or a cluster of `n` nodes (routes between all of them).
pub struct Nats {
    pub nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start(n: usize) -> Nats {
        let mut nats = Nats::configure(n);
        for i in 0..n {
            nats.start_node(i);
        }
        nats
    }

    /// Write the config files, start nothing (ports are chosen now).
    pub fn configure(n: usize) -> Nats {
        Nats::configure_with(n, "")
    }

    /// As `configure`, with `extra` (e.g. `tls {…}`, `authorization {…}`)
    /// in every node's config.
    pub fn configure_with(n: usize, extra: &str) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let mut conf = format!(
                "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\n\
                 jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n",
                store.display()
            );
            conf.push_str(extra);
            conf.push('\n');
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c))| format!("\"nats-route://127.0.0.1:{c}\""))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{\n  name: outpost-test\n  listen: \"127.0.0.1:{cport}\"\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let path = dir.path().join(format!("{name}.conf"));
            std::fs::write(&path, conf).unwrap();
            nodes.push(NatsNode {
                name,
                port: *port,
                cluster_port: *cport,
                conf: path,
                child: None,
            });
        }
        Nats { nodes, _dir: dir }
    }

    /// `nats://` URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The `nats = [...]` TOML value.
    pub fn toml_urls(&self) -> String {
        let u: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("[{}]", u.join(", "))
    }

    pub fn start_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&node.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", node.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not listen",
                node.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL one node.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill9(i);
        }
    }
}
