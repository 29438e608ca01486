#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The kchat demo, run in the test VM from the checkout's root, with KCHAT_BIN
# naming the directory of kchatd and kchatctl.
set -euo pipefail

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
bin=${KCHAT_BIN:?KCHAT_BIN must name the directory of kchatd and kchatctl}
demo=/run/kchat-demo
mkdir -p "$demo"

say "Guest kernel"
uname -sr

say "Loading the module: insmod kmod/kchat.ko"
insmod kmod/kchat.ko
dmesg | grep -E 'kchat: ' | tail -n 3

say "Its nodes: the control node (root only) and the default room, lobby"
ls -l /dev/kchat/

say "Chatting with cat and echo, no daemon needed"
listener=$demo/heard
cat /dev/kchat/lobby >"$listener" &
cat_pid=$!
sleep 0.5
echo "alice: hello, room" >/dev/kchat/lobby
setpriv --reuid=65534 --regid=65534 --clear-groups -- \
	sh -c 'echo "nobody: hi alice (sent as an unprivileged user)" >/dev/kchat/lobby'
sleep 0.5
kill "$cat_pid"
wait "$cat_pid" 2>/dev/null || true
echo "what cat heard:"
sed 's/^/  | /' "$listener"

say "Starting kchatd with a config that declares the room 'ops'"
cat >"$demo/kchatd.toml" <<CONFIG
socket = "$demo/kchatd.sock"
state_dir = "$demo/state"

[metrics]
listen = "127.0.0.1:9477"

[rooms.ops]
policy = "block"
mode = 0o660

[rooms.ops.rate_limit]
msgs_per_sec = 100
msg_burst = 200
CONFIG
sed 's/^/  | /' "$demo/kchatd.toml"
"$bin/kchatd" --config "$demo/kchatd.toml" 2>"$demo/kchatd.log" &
kchatd_pid=$!
export KCHAT_SOCKET=$demo/kchatd.sock
for _ in $(seq 100); do
	"$bin/kchatctl" status >/dev/null 2>&1 && break
	sleep 0.1
done
ctl() {
	echo "\$ kchatctl $*"
	"$bin/kchatctl" "$@" | sed 's/^/  /'
}
ctl status

say "An admin creates a room with kchatctl"
ctl create-room team --mode 666
ctl list
ls -l /dev/kchat/

say "Two clients chat in 'team'"
cat /dev/kchat/team >"$demo/alice" &
alice=$!
setpriv --reuid=65534 --regid=65534 --clear-groups -- cat /dev/kchat/team >"$demo/bob" &
bob=$!
sleep 0.5
echo "alice: standup in five" >/dev/kchat/team
setpriv --reuid=65534 --regid=65534 --clear-groups -- \
	sh -c 'echo "bob: on my way" >/dev/kchat/team'
sleep 0.5
kill "$alice" "$bob"
wait "$alice" "$bob" 2>/dev/null || true
echo "alice's screen:"
sed 's/^/  | /' "$demo/alice"
echo "bob's screen:"
sed 's/^/  | /' "$demo/bob"
ctl stats

say "Prometheus scrapes kchatd: curl http://127.0.0.1:9477/metrics (team's series)"
curl -fsS http://127.0.0.1:9477/metrics | grep -E '^kchat_(up|rooms) |room="team"' | sed 's/^/  /'

say "Stopping kchatd: the rooms stay in the kernel"
kill "$kchatd_pid"
wait "$kchatd_pid" || true
ls /dev/kchat/

say "Unloading: rmmod kchat (its rooms go with it)"
rmmod kchat
if [ -e /dev/kchat/control ]; then
	echo "the control node outlived the module" >&2
	exit 1
fi
echo "module gone, /dev/kchat removed"
