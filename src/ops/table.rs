//! `outpost status` as text: the overview, then one table per section.
//! Pure: the status document and the time in, text out.

use serde_json::Value;
use std::fmt::Write;

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

fn ago(at_ms: &Value, now_ms: u64) -> String {
    match at_ms.as_u64() {
        Some(t) => format!("{} ago", duration(now_ms.saturating_sub(t) / 1000)),
        None => "-".into(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<width$}  ", width = w[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

pub fn render_status(s: &Value, now_ms: u64) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "outpost {}  node {}  up {}  listening on {}",
        text(&s["version"]),
        text(&s["node_id"]),
        duration(s["uptime_s"].as_u64().unwrap_or(0)),
        text(&s["listen"])
    );
    let d = &s["data"];
    let _ = writeln!(
        o,
        "data      {} in store, {} free ({})",
        bytes(d["store_bytes"].as_u64().unwrap_or(0)),
        d["free_bytes"].as_u64().map_or("?".into(), bytes),
        text(&d["dir"])
    );
    let r = &s["rates"];
    let _ = writeln!(
        o,
        "rates     {} changes/s written, {} deliveries/s",
        r["written_per_s"].as_f64().unwrap_or(0.0),
        r["delivered_per_s"].as_f64().unwrap_or(0.0)
    );
    let per: Vec<String> = s["connections"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64() != Some(0))
                .map(|(k, n)| format!("{k} {n}"))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "clients   {}{}",
        s["clients"].as_u64().unwrap_or(0),
        if per.is_empty() {
            String::new()
        } else {
            format!(" ({})", per.join(", "))
        }
    );
    let l = &s["log"];
    let _ = writeln!(
        o,
        "log       {} entries, last seq {}, horizon {}, durability {}",
        text(&l["entries"]),
        text(&l["last_seq"]),
        text(&l["horizon"]),
        text(&s["durability"])
    );
    let empty = Vec::new();
    let spaces = s["spaces"].as_array().unwrap_or(&empty);
    o.push('\n');
    if spaces.is_empty() {
        o.push_str("no spaces yet\n");
    } else {
        let rows: Vec<Vec<String>> = spaces
            .iter()
            .map(|sp| {
                vec![
                    text(&sp["name"]),
                    text(&sp["entities"]),
                    text(&sp["changes"]),
                    text(&sp["subscribers"]),
                    ago(&sp["last_write_ms"], now_ms),
                ]
            })
            .collect();
        o.push_str(&table(
            &["SPACE", "ENTITIES", "CHANGES", "SUBSCRIBERS", "LAST WRITE"],
            &rows,
        ));
    }
    let mut peers: Vec<&Value> = s["peers"].as_array().unwrap_or(&empty).iter().collect();
    peers.extend(s["peers_gone"].as_array().unwrap_or(&empty));
    o.push('\n');
    if peers.is_empty() {
        let _ = writeln!(
            o,
            "no peers{}",
            if s["mesh"]["enabled"] == true {
                ""
            } else {
                " (mesh off)"
            }
        );
    } else {
        let rows: Vec<Vec<String>> = peers
            .iter()
            .map(|p| {
                vec![
                    text(&p["addr"]),
                    text(&p["kind"]),
                    text(&p["node_id"]),
                    text(&p["found"]),
                    if p["connected"] == false {
                        "disconnected".into()
                    } else {
                        "connected".into()
                    },
                    p["rtt_ms"]
                        .as_f64()
                        .map_or("-".into(), |r| format!("{r} ms")),
                    text(&p["backlog"]),
                    ago(&p["last_contact_ms"], now_ms),
                ]
            })
            .collect();
        o.push_str(&table(
            &[
                "PEER",
                "KIND",
                "NODE",
                "FOUND",
                "STATE",
                "RTT",
                "BEHIND",
                "LAST CONTACT",
            ],
            &rows,
        ));
    }
    let u = &s["upstream"];
    o.push('\n');
    if u.is_null() {
        o.push_str("no upstream\n");
    } else {
        let _ = writeln!(
            o,
            "upstream  {}  {}",
            text(&u["url"]),
            if u["connected"] == true {
                "connected"
            } else {
                "NOT connected"
            }
        );
        let _ = writeln!(
            o,
            "          backlog {} (oldest {}), last contact {}, last error {}",
            text(&u["changes_waiting"]),
            u["oldest_waiting_age_s"]
                .as_u64()
                .map_or("-".into(), duration),
            ago(&u["last_contact_ms"], now_ms),
            text(&u["last_error"])
        );
    }
    if !s["jetstream"].is_null() {
        let _ = writeln!(o, "jetstream {}", s["jetstream"]);
    }
    let warns: Vec<&Value> = s["recent_log"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .rev()
        .take(5)
        .collect();
    if !warns.is_empty() {
        o.push_str("\nrecent warnings and errors (newest first):\n");
        for w in warns {
            let _ = writeln!(
                o,
                "  {} {:<5} {}",
                ago(&w["at_ms"], now_ms),
                text(&w["level"]),
                text(&w["text"])
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_every_section() {
        let s = json!({
            "version": "0.1.0", "node_id": "00000000000000ab", "uptime_s": 3700,
            "listen": "127.0.0.1:7070", "clients": 2, "connections": {"/ws": 2, "/api/ws": 0},
            "data": {"store_bytes": 3 << 20, "free_bytes": 5u64 << 30, "dir": "/var/lib/outpost"},
            "rates": {"written_per_s": 1.5, "delivered_per_s": 3.0},
            "log": {"entries": 10, "last_seq": 10, "horizon": 1}, "durability": "immediate",
            "spaces": [{"name": "home", "entities": 4, "changes": 10, "subscribers": 1, "last_write_ms": 990_000}],
            "mesh": {"enabled": true},
            "peers": [{"addr": "10.0.0.2:7071", "kind": "mesh", "node_id": "cd", "found": "mdns",
                       "connected": true, "rtt_ms": 0.4, "backlog": 0, "last_contact_ms": 999_000}],
            "peers_gone": [{"addr": "10.0.0.3:7071", "kind": "mesh", "node_id": "ef", "found": "static",
                            "connected": false, "backlog": 3, "last_contact_ms": 900_000}],
            "upstream": {"url": "wss://hub/ws/replicate", "connected": false, "changes_waiting": 7,
                         "oldest_waiting_age_s": 120, "last_contact_ms": null, "last_error": "refused"},
            "recent_log": [{"at_ms": 995_000, "level": "warn", "text": "mesh peer refused"}],
        });
        let t = render_status(&s, 1_000_000);
        for want in [
            "node 00000000000000ab  up 1h 1m",
            "3.0 MiB in store, 5.0 GiB free",
            "clients   2 (/ws 2)",
            "home   4         10       1            10s ago",
            "0.4 ms",
            "disconnected",
            "NOT connected",
            "backlog 7 (oldest 2m 0s)",
            "last error refused",
            "5s ago warn  mesh peer refused",
        ] {
            assert!(t.contains(want), "{want:?} missing:\n{t}");
        }
    }
}
