#!/usr/bin/env bash
# Benchmark of the hub tier on NATS JetStream (docs/performance.md,
# docs/scale-out.md): acked writes/s and end-to-end latency
#   base    one hub, not clustered (acks on fsync)
#   tier-1  one hub instance on a 3-node JetStream cluster, R3 stream
#   tier-3  three hub instances on the same R3 stream; three concurrent
#           bench runs, each writing at one instance and subscribing at the
#           next, so every delivery crossed the stream
# Everything listens on 127.0.0.1 (free ports; NATS without a monitoring
# port) and is stopped by PID at the end. Needs nats-server (Debian) and the
# cloud build:  cargo build --release --features jetstream,bench
# Usage: scripts/bench-tier.sh [changes per run, default 20000] [writers, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${OUTPOST_BIN:-${CARGO_TARGET_DIR:-target}/release/outpost}
N=${1:-20000}
W=${2:-8}
command -v nats-server >/dev/null || { echo "needs nats-server (apt-get install nats-server)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "build first: cargo build --release --features jetstream,bench ($BIN)" >&2; exit 1; }
ROOT=$(mktemp -d /tmp/outpost-bench-tier.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$ROOT"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# Three NATS nodes with JetStream, clustered on loopback.
NP=(); CP=()
for i in 0 1 2; do NP+=("$(port)"); CP+=("$(port)"); done
for i in 0 1 2; do
    routes=""
    for j in 0 1 2; do [ "$j" = "$i" ] || routes="$routes\"nats-route://127.0.0.1:${CP[$j]}\", "; done
    cat > "$ROOT/n$i.conf" <<CONF
server_name: n$i
listen: "127.0.0.1:${NP[$i]}"
jetstream { store_dir: "$ROOT/n$i", max_memory_store: 64MB, max_file_store: 4GB }
cluster { name: bench, listen: "127.0.0.1:${CP[$i]}", routes: [${routes%, }] }
CONF
    nats-server -c "$ROOT/n$i.conf" >"$ROOT/n$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2; do wait_port "${NP[$i]}"; done
URLS="[\"nats://127.0.0.1:${NP[0]}\", \"nats://127.0.0.1:${NP[1]}\", \"nats://127.0.0.1:${NP[2]}\"]"

# start_hub NAME CLUSTERED(0/1) -> prints the port
start_hub() {
    local p; p=$(port)
    mkdir -p "$ROOT/$1"
    {
        printf '[storage]\ndurability = "immediate"\n[log]\nlevel = "warn"\n'
        [ "$2" = 1 ] && printf '[cluster]\nnats = %s\n[cluster.stream]\nreplicas = 3\n' "$URLS"
    } > "$ROOT/$1/outpost.toml"
    "$BIN" serve --config "$ROOT/$1/outpost.toml" --listen "127.0.0.1:$p" --data "$ROOT/$1/data" \
        >"$ROOT/$1/out.log" 2>"$ROOT/$1/err.log" &
    PIDS+=($!)
    wait_port "$p"
    if [ "$2" = 1 ]; then
        for _ in $(seq 300); do
            python3 - "$p" <<'PY' && break
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/status", timeout=5))
sys.exit(0 if (s.get("jetstream") or {}).get("connected") else 1)
PY
            sleep 0.1
        done
    fi
    echo "$p"
}

# caught_up PORT: wait (at most 120 s) until the instance has read the
# whole stream and has nothing waiting.
caught_up() {
    python3 - "$1" <<'PY'
import json, sys, time, urllib.request
deadline = time.time() + 120
while True:
    s = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/v1/status", timeout=5))["jetstream"]
    if s["read"] >= s["stream"]["last_seq"] > 0 and s["lag"] == 0 and s["pending_gaps"] == 0:
        break
    if time.time() > deadline:
        sys.exit(f"instance {sys.argv[1]} not caught up with the stream: {s}")
    time.sleep(0.2)
PY
}

# bench WRITE_PORT SUB_PORT CHANGES OUT
bench() {
    if ! "$BIN" bench --url "127.0.0.1:$1" --sub-url "127.0.0.1:$2" --scenarios writers \
        --subscribers 1 --writers "$W" --changes "$3" --fsync-samples 10 --data-root "$ROOT" \
        2>"$4.err" > "$4.all"; then
        echo "bench $1 -> $2 failed:" >&2
        tail -n 20 "$4.err" "$4.all" >&2
        return 1
    fi
    tail -1 "$4.all" > "$4"
}

summary() {
    python3 - "$@" <<'PY'
import json, sys
name, files = sys.argv[1], sys.argv[2:]
runs = [json.load(open(f))["scenarios"]["writers"]["relay"] for f in files]
w = sum(r["acked_writes_per_s"] for r in runs)
ack = max(r["ack"]["p99_us"] for r in runs) / 1000
ack50 = max(r["ack"]["p50_us"] for r in runs) / 1000
e50 = max(r["e2e"]["p50_us"] for r in runs) / 1000
e99 = max(r["e2e"]["p99_us"] for r in runs) / 1000
ok = all(r["check"]["ok"] for r in runs)
print(f"{name:8} acked writes/s {w:9.0f}   ack p50/p99 {ack50:6.1f}/{ack:6.1f} ms   e2e p50/p99 {e50:6.1f}/{e99:6.1f} ms   exactly-once {ok}")
PY
}

echo "changes per run $N, writers $W, window 64, subscriber 1; $(nproc) cores" >&2
B=$(start_hub base 0)
bench "$B" "$B" "$N" "$ROOT/base.json"
summary base "$ROOT/base.json"

A=$(start_hub a 1)
bench "$A" "$A" "$N" "$ROOT/t1.json"
summary tier-1 "$ROOT/t1.json"

Bp=$(start_hub b 1)
C=$(start_hub c 1)
# New instances read the stream from its start (tier-1's changes) first:
# measure the steady state, not that bootstrap.
for p in "$Bp" "$C"; do caught_up "$p"; done
per=$((N / 3))
# Started 0.3 s apart: a bench names its space after the millisecond (and,
# since this script, its pid); two runs in one space would count each
# other's changes as duplicates.
bench "$A" "$Bp" "$per" "$ROOT/t3a.json" &
j1=$!
sleep 0.3
bench "$Bp" "$C" "$per" "$ROOT/t3b.json" &
j2=$!
sleep 0.3
bench "$C" "$A" "$per" "$ROOT/t3c.json" &
j3=$!
wait "$j1"
wait "$j2"
wait "$j3"
summary tier-3 "$ROOT/t3a.json" "$ROOT/t3b.json" "$ROOT/t3c.json"
