#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# The kchat demo, run in the test VM from the checkout's root.
set -euo pipefail

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Guest kernel"
uname -sr

say "Loading the module: insmod kmod/kchat.ko"
insmod kmod/kchat.ko
dmesg | grep -E 'kchat: ' | tail -n 3

say "Its nodes: the control node (root only) and the default room, lobby"
ls -l /dev/kchat/

say "Chatting with cat and echo"
listener=/tmp/kchat-demo-heard
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

say "Unloading: rmmod kchat"
rmmod kchat
if [ -e /dev/kchat/control ]; then
	echo "the control node outlived the module" >&2
	exit 1
fi
echo "module gone, /dev/kchat removed"
