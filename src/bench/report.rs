//! The readable table, the budget of issue 7 and the pass/fail summary.

use super::stats::Latency;
use serde_json::{json, Value};
use std::fmt::Write;

/// Whether a scenario ran and its relay-side exactly-once checks passed
/// (the floor's own check is reported but is not the relay's result).
pub fn checks_pass(v: &Value) -> bool {
    if v.get("error").is_some() {
        return false;
    }
    [&v["relay"]["check"], &v["live"]["check"]]
        .iter()
        .all(|c| c.is_null() || c["ok"] == true)
}

fn item(target: &str, figure: Option<f64>, limit: f64, at_least: bool) -> Value {
    let met = figure.map(|f| if at_least { f >= limit } else { f <= limit });
    json!({"target": target, "figure": figure, "limit": limit, "met": met})
}

/// Issue 7's budget against this run's figures (`met` is null when the
/// scenario did not run).
pub fn budget(results: &Value, fsync: &Latency) -> Value {
    let fan = &results["fanout"];
    let ack_limit = 3.0 * fsync.p99_us as f64 + 2000.0;
    let idle = &results["idle"];
    let check = &fan["relay"]["check"];
    let exact = (!check.is_null()).then(|| {
        let n = |k: &str| check[k].as_u64().unwrap_or(u64::MAX);
        (n("missing") + n("duplicated").min(1 << 40) + n("reordered").min(1 << 40)) as f64
    });
    json!([
        item(
            "fan-out deliveries/s ≥ 0.6 × floor",
            fan["ratio"]["deliveries_per_s"].as_f64(),
            0.6,
            true
        ),
        item(
            "fan-out ack p99 (µs) ≤ 3 × fsync p99 + 2 ms",
            fan["relay"]["ack"]["p99_us"].as_f64(),
            ack_limit,
            false
        ),
        item(
            "missing + duplicated + reordered deliveries = 0",
            exact,
            0.0,
            false
        ),
        item(
            "fan-out relay CPU per delivery ≤ 2 × floor (#16)",
            fan["ratio"]["cpu_us_per_delivery"].as_f64(),
            2.0,
            false
        ),
        item(
            "disk bytes written per ~256 B change ≤ 1 KB (#16)",
            fan["relay_usage"]["written_bytes_per_change"].as_f64(),
            1024.0,
            false
        ),
        item(
            "bytes written by the idle relay = 0 (#16)",
            fan["relay_usage"]["idle_written_bytes"].as_f64(),
            0.0,
            false
        ),
        item(
            "RSS at rest (KiB) ≤ 15 MB",
            idle["rss_rest_kib"].as_f64(),
            15.0 * 1024.0,
            false
        ),
        item(
            "RSS with idle clients (KiB) ≤ 60 MB",
            idle["rss_idle_kib"].as_f64(),
            60.0 * 1024.0,
            false
        ),
    ])
}

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

fn f3(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(us) => format!("{:.2}", us / 1000.0),
        None => "-".into(),
    }
}

fn check_text(c: &Value) -> String {
    if c.is_null() {
        return "-".into();
    }
    let ok = if c["ok"] == true { "ok" } else { "FAILED" };
    format!(
        "{ok} (missing {}, dup {}, reordered {}, resyncs {})",
        c["missing"], c["duplicated"], c["reordered"], c["resyncs"]
    )
}

fn load_rows(out: &mut String, name: &str, v: &Value) {
    let _ = writeln!(
        out,
        "  {name:<6} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
        f(&v["deliveries_per_s"]),
        f(&v["acked_writes_per_s"]),
        ms(&v["e2e"]["p50_us"]),
        ms(&v["e2e"]["p99_us"]),
        ms(&v["e2e"]["max_us"]),
        ms(&v["ack"]["p50_us"]),
        ms(&v["ack"]["p99_us"]),
        check_text(&v["check"]),
    );
}

/// The human-readable table.
pub fn table(doc: &Value) -> String {
    let mut out = String::new();
    let m = &doc["machine"];
    let p = &doc["params"];
    let _ = writeln!(
        out,
        "outpost bench {}: {} cores, {}, disk {}",
        doc["version"].as_str().unwrap_or(""),
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["disk"].as_str().unwrap_or("?")
    );
    let fs = &doc["fsync"];
    let _ = writeln!(
        out,
        "fsync (256 B write + fdatasync): p50 {} ms, p99 {} ms, max {} ms",
        ms(&fs["p50_us"]),
        ms(&fs["p99_us"]),
        ms(&fs["max_us"])
    );
    let sc = &doc["scenarios"];
    for (key, label) in [
        ("fanout", "fan-out, 1 writer"),
        ("writers", "fan-out, many writers"),
    ] {
        let v = &sc[key];
        if v.is_null() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n{label}: S={} M={} W={}",
            p["subscribers"], p["changes"], p["window"]
        );
        if let Some(e) = v["error"].as_str() {
            let _ = writeln!(out, "  ERROR: {e}");
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<6} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}  check",
            "", "deliveries/s", "acked/s", "e2e p50", "e2e p99", "e2e max", "ack p50", "ack p99"
        );
        let _ = writeln!(
            out,
            "  {:<6} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "", "", "ms", "ms", "ms", "ms", "ms"
        );
        load_rows(&mut out, "relay", &v["relay"]);
        load_rows(&mut out, "floor", &v["floor"]);
        let r = &v["ratio"];
        let _ = writeln!(
            out,
            "  ratio  {:>12} {:>10} {:>9} {:>9}   (relay / floor; e2e p99: relay / floor)",
            f(&r["deliveries_per_s"]),
            f(&r["acked_writes_per_s"]),
            "",
            f(&r["e2e_p99"])
        );
        let (u, fu) = (&v["relay_usage"], &v["floor_usage"]);
        if !u.is_null() {
            let _ = writeln!(
                out,
                "  CPU per delivery: relay {} µs, floor {} µs (ratio {}); relay disk writes {} B per change ({} B in all), {} B while idle for 3 s after",
                f3(&u["cpu_us_per_delivery"]),
                f3(&fu["cpu_us_per_delivery"]),
                f(&r["cpu_us_per_delivery"]),
                f(&u["written_bytes_per_change"]),
                u["written_bytes"],
                u["idle_written_bytes"],
            );
        }
        let _ = writeln!(
            out,
            "  bench clients' CPU per delivery: relay run {} µs, floor run {} µs (same cores as the servers)",
            f3(&v["relay"]["client_cpu_us_per_delivery"]),
            f3(&v["floor"]["client_cpu_us_per_delivery"]),
        );
        let rss = &v["relay_rss_kib"];
        let _ = writeln!(
            out,
            "  relay RSS KiB: before {}, after {}, peak {}",
            rss["before"], rss["after"], rss["peak"]
        );
    }
    let v = &sc["idle"];
    if !v.is_null() {
        let _ = writeln!(out, "\nidle connections:");
        match v["error"].as_str() {
            Some(e) => {
                let _ = writeln!(out, "  ERROR: {e}");
            }
            None => {
                let _ = writeln!(
                    out,
                    "  RSS at rest {} KiB; with {} idle subscribed clients {} KiB ({} KiB per client; connected in {} s)",
                    v["rss_rest_kib"], v["clients"], v["rss_idle_kib"], f(&v["kib_per_client"]), f(&v["connect_s"])
                );
            }
        }
    }
    let v = &sc["replication"];
    if !v.is_null() {
        let _ = writeln!(out, "\nreplication (two relays, QUIC on loopback):");
        match v["error"].as_str() {
            Some(e) => {
                let _ = writeln!(out, "  ERROR: {e}");
            }
            None => {
                let l = &v["live"];
                let _ = writeln!(
                    out,
                    "  live: {} changes/s A→B, A write → B receipt p50 {} ms, p99 {} ms, max {} ms; check {}",
                    f(&l["changes_per_s"]), ms(&l["a_to_b"]["p50_us"]), ms(&l["a_to_b"]["p99_us"]),
                    ms(&l["a_to_b"]["max_us"]), check_text(&l["check"])
                );
                let c = &v["catchup"];
                let _ =
                    writeln!(
                    out,
                    "  catch-up: {} changes in {} s after B restarted ({} changes/s; B up in {} s)",
                    c["changes"], f(&c["catchup_s"]), f(&c["changes_per_s"]), f(&c["b_start_s"])
                );
            }
        }
    }
    let _ = writeln!(out, "\nbudget (issues 7 and 16):");
    for b in doc["budget"].as_array().into_iter().flatten() {
        let met = match b["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        };
        let _ = writeln!(
            out,
            "  {:<50} figure {:>10}  limit {:>10}  {met}",
            b["target"].as_str().unwrap_or(""),
            f(&b["figure"]),
            f(&b["limit"])
        );
    }
    out
}
