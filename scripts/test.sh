#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests
# need (as root, via apt-get), then runs every test. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
# Headless browser tests (clients/js, tests/ui) drive Debian's Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# The JetStream scale-out tests run real NATS servers (Debian's package).
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "missing packages (${need[*]}); run as root to install them" >&2
        exit 1
    fi
fi

# Two test threads: the machine has two cores and several tests start relays.
cargo test --all-targets --locked -- --test-threads=2

# The JavaScript client (clients/js), against the relay binary built above
# (target/debug/outpost, or $CARGO_TARGET_DIR/debug/outpost). Needs Node
# >= 20.10 (the machine image's nodejs; its WebSocket is used by the Node
# tests) and npm; devDependencies come from the committed package-lock.json.
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a==20&&b>=10)?0:1)' || {
    echo "clients/js needs Node >= 20.10, found $(node --version 2>/dev/null || echo none)" >&2
    exit 1
}
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error && npm test && npm run test:browser)

# The relay's status page (tests/ui): headless Chromium (installed above)
# driven by playwright-core, against real relay processes on loopback.
(cd tests/ui && npm ci --no-audit --no-fund --loglevel=error && npm test)

# The cloud build (feature `jetstream`): the scale-out tests against real
# nats-server processes on loopback. Bounded (a few minutes); set
# OUTPOST_JETSTREAM_LONG=1 for the longer soak mode of the cluster test.
cargo test --locked --features jetstream --test jetstream -- --test-threads=2

# The status page's JetStream card, in Chromium against that cloud build
# (the test above left it at target/debug/outpost) and a real nats-server.
(cd tests/ui && npm run test:jetstream)

# `outpost bench` is a cargo feature (off in the edge build): its unit
# tests (src/bench/) and its smoke test (tests/bench.rs). Last: it rebuilds
# target/debug/outpost, which the card test above needs as the cloud build.
cargo test --locked --features bench --lib --test bench -- --test-threads=2 bench
