#!/usr/bin/env bash
# Dry run of the installed service without systemd, as root:
#   scripts/service-dry-run.sh [BINARY]   (default target/debug/outpost;
#   an ARM binary works too when qemu is registered with binfmt_misc)
#
# In a private mount namespace (nothing on this machine changes), with
# /etc/outpost and /var/lib/outpost bound to temp dirs: installs the .deb's
# service config, runs debian/postinst (user management stubbed) and checks
# the secrets it makes (0600, 64 hex chars, kept on upgrade), then runs the
# unit's ExecStartPre and ExecStart with exactly its arguments and a
# NOTIFY_SOCKET, expecting READY=1, WATCHDOG=1, /healthz and a clean SIGTERM
# exit. Uses port 7070 (the service config's).
set -euo pipefail
if [ "${1:-}" != "--inside" ]; then
    [ "$(id -u)" = 0 ] || { echo "run as root (mount namespace)" >&2; exit 1; }
    made=()
    for d in /etc/outpost /var/lib/outpost; do
        [ -e "$d" ] || { mkdir -p "$d"; made+=("$d"); }
    done
    rc=0
    unshare -m "$0" --inside "$@" || rc=$?
    for d in "${made[@]}"; do rmdir "$d"; done
    [ $rc = 0 ] && echo "OK: service dry run passed"
    exit $rc
fi
shift
repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$repo/target/debug/outpost}
t=$(mktemp -d)
mkdir -p $t/etc $t/var $t/stubs
mount --bind $t/etc /etc/outpost
mount --bind $t/var /var/lib/outpost
# The unit's ConfigurationDirectory content as the .deb installs it.
cp $repo/systemd/outpost.toml /etc/outpost/outpost.toml
# postinst with user management stubbed (the VM's user db stays untouched).
for c in useradd chown; do printf '#!/bin/sh\necho "$0 $*" >> %s/calls\n' $t > $t/stubs/$c; chmod +x $t/stubs/$c; done
printf '#!/bin/sh\nexit 2\n' > $t/stubs/getent; chmod +x $t/stubs/getent
PATH=$t/stubs:$PATH sh $repo/debian/postinst configure
echo "-- postinst calls:"; cat $t/calls
ls -l /etc/outpost
for f in jwt.secret mesh.secret; do
  test "$(stat -c %a /etc/outpost/$f)" = 600
  grep -Eqx '[0-9a-f]{64}' /etc/outpost/$f
done
j=$(cat /etc/outpost/jwt.secret)
PATH=$t/stubs:$PATH sh $repo/debian/postinst configure 0.1.0-1
test "$(cat /etc/outpost/jwt.secret)" = "$j" && echo "-- postinst: secrets 0600, 64 hex chars, kept on upgrade"
echo "-- ExecStartPre"
$bin check-config --config /etc/outpost/outpost.toml | head -5
echo "-- ExecStart (with NOTIFY_SOCKET, like Type=notify)"
python3 - "$bin" <<'PY'
import os, socket, subprocess, sys, tempfile, time, signal
d = tempfile.mkdtemp(); path = os.path.join(d, "notify")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(path); s.settimeout(60)
env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="2000000")
p = subprocess.Popen([sys.argv[1], "serve", "--config", "/etc/outpost/outpost.toml", "--data", "/var/lib/outpost"],
                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
msgs = [s.recv(4096).decode()]
msgs.append(s.recv(4096).decode())
print("notifications:", msgs)
assert msgs[0].startswith("READY=1") and msgs[1] == "WATCHDOG=1"
import urllib.request
print("healthz:", urllib.request.urlopen("http://127.0.0.1:7070/healthz", timeout=30).read())
p.send_signal(signal.SIGTERM); rc = p.wait(60)
print("exit", rc); assert rc == 0
print(p.stderr.read().decode())
PY
ls /var/lib/outpost
