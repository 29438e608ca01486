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

say "Its character-device major (/proc/devices)"
grep -w kchat /proc/devices

say "The control node: root only, for kchatd and kchatctl"
ls -l /dev/kchat/

say "Unloading: rmmod kchat"
rmmod kchat
if [ -e /dev/kchat/control ]; then
	echo "the control node outlived the module" >&2
	exit 1
fi
echo "module gone, /dev/kchat/control removed"
