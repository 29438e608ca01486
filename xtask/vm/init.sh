#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# PID 1 of the kchat test VM.
#
# Stage 1 runs on the host's root filesystem, shared read-only over 9p: it
# stacks a tmpfs overlay on it so the guest can write anywhere without
# touching the host, and chroots into that. Stage 2 mounts the kernel's
# filesystems, runs the command xtask left in the run folder (or a shell),
# records its exit status, the kernel log and kmemleak's findings, and powers
# off. Any output here goes to the serial console, beside the kernel log.
#
# /tmp gets no tmpfs of its own: the overlay already makes it writable, and a
# checkout under the host's /tmp (as CI may clone) must stay visible.
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM="${TERM:-linux}" LANG=C.UTF-8

# Marks progress on the console with the guest's uptime (a builtin: no exec).
stamp() {
	local up _
	read -r up _ </proc/uptime
	echo "kchat-vm: [$up] $*" >&2
}

poweroff_now() {
	sync
	echo o >/proc/sysrq-trigger
	sleep 30
}

if [ "${1:-}" != stage2 ]; then
	mount -t proc proc /proc
	mount -t tmpfs -o mode=0755 tmpfs /run
	mkdir -p /run/overlay/upper /run/overlay/work /run/overlay/root
	if ! mount -t overlay overlay \
		-o lowerdir=/,upperdir=/run/overlay/upper,workdir=/run/overlay/work \
		/run/overlay/root; then
		echo "kchat-vm: cannot mount the overlay root" >&2
		poweroff_now
	fi
	stamp "overlay root ready"
	exec chroot /run/overlay/root "$0" stage2
fi

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
ln -sf /proc/self/fd /dev/fd
hostname kchat-vm
ip link set lo up 2>/dev/null

stamp "filesystems mounted"
mkdir -p /run/kchat-vm
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 kchatrun /run/kchat-vm; then
	echo "kchat-vm: cannot mount the run folder" >&2
	poweroff_now
fi
run=/run/kchat-vm

stamp "run folder mounted"
cd "${kchat_root:-/}" || cd /
if [ -f "$run/cmd.sh" ]; then
	setsid bash "$run/cmd.sh" </dev/null >/dev/hvc0 2>&1
	status=$?
else
	echo "kchat test VM: the host's files read-only under a throwaway overlay." >/dev/hvc0
	echo "kchat.ko is in $PWD/kmod; 'exit' powers off." >/dev/hvc0
	setsid -c bash -l <>/dev/hvc0 >&0 2>&0
	status=$?
fi
echo "$status" >"$run/exit-status"
stamp "command exited with status $status"

# kmemleak reports an object only when two scans, at least five seconds after
# its allocation, both find it unreferenced.
if [ -w /sys/kernel/debug/kmemleak ]; then
	echo scan >/sys/kernel/debug/kmemleak
	echo scan >/sys/kernel/debug/kmemleak
	cat /sys/kernel/debug/kmemleak >"$run/kmemleak.log"
fi
stamp "kmemleak scanned"
dmesg >"$run/dmesg.log"
poweroff_now
