#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests
# need (as root, via apt-get), then runs every test. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v curl >/dev/null 2>&1 || need+=(curl)
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

# The cloud build (feature `jetstream`): the scale-out tests against real
# nats-server processes on loopback. Bounded (a few minutes); set
# OUTPOST_JETSTREAM_LONG=1 for the longer soak mode of the cluster test.
cargo test --locked --features jetstream --test jetstream -- --test-threads=2
