#!/usr/bin/env bash
# Checks systemd/outpost.service: `systemd-analyze verify` must print
# nothing (it exits 0 on many mistakes, so any output is a failure) and
# `systemd-analyze security --offline=true` must rate it 2.0 or lower.
# Installs systemd's tools with apt-get when they are missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
unit=systemd/outpost.service
max_exposure=2.0

if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "systemd-analyze is missing; run as root to install the systemd package" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi

# verify resolves ExecStart= binaries: point it at a stand-in /usr/bin/outpost
# in a scratch root when the real one is not installed.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/bin" "$root/usr/lib/systemd"
# The targets and units it depends on (sysinit.target, ...).
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$unit" "$root/etc/systemd/system/outpost.service"
bin=/usr/bin/outpost
if [ ! -x "$bin" ]; then
    printf '#!/bin/sh\nexit 0\n' >"$root/usr/bin/outpost"
    chmod 755 "$root/usr/bin/outpost"
fi

# Documentation=man:outpost(1): verify runs man(1) on it, so give man the
# page the package installs (generated from the clap definition), unless
# it is installed already.
if ! man -w outpost >/dev/null 2>&1; then
    mkdir -p "$root/man/man1"
    cargo run --locked --quiet --example gen-docs -- "$root/gen-docs" >/dev/null 2>&1
    cp "$root"/gen-docs/man/*.1 "$root/man/man1/"
    export MANPATH="$root/man"
fi

echo "== systemd-analyze verify"
out=$(systemd-analyze verify --root="$root" /etc/systemd/system/outpost.service 2>&1 || true)
if [ -n "$out" ]; then
    echo "$out"
    echo "FAIL: systemd-analyze verify printed the above" >&2
    exit 1
fi
echo "clean"

echo "== systemd-analyze security --offline=true"
sec=$(systemd-analyze security --offline=true --root="$root" \
    --threshold=100 outpost.service 2>&1 || true)
echo "$sec" | grep -E '^✗|Overall' || true
score=$(echo "$sec" | sed -n 's/.*Overall exposure level for outpost.service: \([0-9.]*\).*/\1/p')
if [ -z "$score" ]; then
    echo "FAIL: no exposure level in the output" >&2
    exit 1
fi
if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s > m) }'; then
    echo "FAIL: exposure $score is above $max_exposure" >&2
    exit 1
fi
echo "OK: verify clean, exposure $score <= $max_exposure"
