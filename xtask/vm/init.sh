#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# PID 1 of the kchat test VM.
#
# Stage 1 runs on the host's root filesystem, shared read-only over 9p: it
# stacks a tmpfs overlay on it so the guest can write anywhere without
# touching the host, and makes that the root (switch_root: moved to /, not
# a chroot, which the kernel would hold against user namespaces: unshare
# --user gives EPERM in a chroot). Stage 2 mounts the kernel's
# filesystems, runs the command xtask left in the run folder (or a shell),
# records its exit status, the kernel log and kmemleak's findings, and powers
# off. Any output here goes to the serial console, beside the kernel log.
#
# With kchat_init=systemd on the kernel command line (`cargo xtask vm
# --systemd`), stage 1 instead moves the overlay to / and hands PID 1 to
# systemd, with a target that starts udev and the rest of sysinit and then
# kchat-vm.service, which runs this script as `unit`: the same command, run
# folder and records, under the real init.
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
	# Wait up to 30 s for the power to go with builtins only: the power-off
	# takes the 9p root away, and a `sleep` run from it failed there (EIO),
	# init went on to exit, and the kernel panicked ("Attempted to kill
	# init"), which the log check rightly reports.
	local until=$((SECONDS + 30))
	while ((SECONDS < until)); do
		read -r -t 1 _ </dev/console || :
	done
}

# Runs the command (or a shell), records its status, kmemleak's findings and
# the kernel log in the run folder.
run_and_record() {
	local run=/run/kchat-vm status
	mkdir -p $run
	if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 kchatrun $run; then
		echo "kchat-vm: cannot mount the run folder" >&2
		poweroff_now
	fi
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

	# kmemleak reports an object only when two scans, at least five seconds
	# after its allocation, both find it unreferenced.
	if [ -w /sys/kernel/debug/kmemleak ]; then
		echo scan >/sys/kernel/debug/kmemleak
		echo scan >/sys/kernel/debug/kmemleak
		cat /sys/kernel/debug/kmemleak >"$run/kmemleak.log"
	fi
	stamp "kmemleak scanned"
	dmesg >"$run/dmesg.log"
	poweroff_now
}

# Stage 1 for systemd: the overlay goes under /mnt (not /run, which systemd
# mounts afresh), gets the units that make this a test boot, and becomes /.
boot_systemd() {
	local new=/mnt/root units=/mnt/root/etc/systemd/system
	mount -t tmpfs -o mode=0755 tmpfs /mnt
	mkdir -p /mnt/upper /mnt/work $new
	if ! mount -t overlay overlay \
		-o lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work $new; then
		echo "kchat-vm: cannot mount the overlay root" >&2
		poweroff_now
	fi
	# The host's fstab names the host's disks.
	: >$new/etc/fstab
	mkdir -p $units
	# Boot-time tmpfiles would empty /tmp ("D /tmp"), where the checkout
	# may live, and walk the host's trees for a minute; the tests run
	# systemd-tmpfiles for kchat's own file, as a package install does.
	ln -sf /dev/null $units/systemd-tmpfiles-setup.service
	ln -sf /dev/null $units/systemd-tmpfiles-clean.timer
	cat >$units/kchat-vm.target <<-EOF
		[Unit]
		Description=kchat test VM: sysinit (udev, tmpfiles, sysusers) and the command
		Requires=basic.target kchat-vm.service
		After=basic.target kchat-vm.service
		AllowIsolate=yes
	EOF
	cat >$units/kchat-vm.service <<-EOF
		[Unit]
		Description=kchat test VM command
		After=basic.target systemd-udevd.service systemd-udev-trigger.service
		[Service]
		Type=oneshot
		Environment=kchat_root=${kchat_root:-/}
		ExecStart=/bin/bash $0 unit
		TimeoutStartSec=infinity
	EOF
	stamp "overlay root ready, starting systemd"
	exec switch_root $new /lib/systemd/systemd --unit=kchat-vm.target --show-status=false
}

if [ "${1:-}" = unit ]; then
	run_and_record
fi

if [ "${1:-}" != stage2 ]; then
	mount -t proc proc /proc
	if [ "${kchat_init:-}" = systemd ]; then
		boot_systemd
	fi
	mount -t tmpfs -o mode=0755 tmpfs /mnt
	mkdir -p /mnt/upper /mnt/work /mnt/root
	if ! mount -t overlay overlay \
		-o lowerdir=/,upperdir=/mnt/upper,workdir=/mnt/work /mnt/root; then
		echo "kchat-vm: cannot mount the overlay root" >&2
		poweroff_now
	fi
	stamp "overlay root ready"
	exec switch_root /mnt/root "$0" stage2
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
run_and_record
