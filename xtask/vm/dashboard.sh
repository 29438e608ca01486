#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
# Traffic for the dashboard picture (`cargo xtask dashboard`), run in the
# test VM from the checkout's root: kchatd and kchat-bridge (with a local
# nats-server), Debian's Prometheus scraping them every second, and three phases of chat of several kinds (steady rooms, a
# throttled writer, a slow reader losing messages, readers joining, a room
# made and deleted). Then kchat-dashplot evaluates every panel's query over
# that window into $KCHAT_OUT; it fails if a panel has no data.
set -euo pipefail
bin=${KCHAT_BIN:?KCHAT_BIN must name the directory of kchatd, kchatctl, kchat-bridge and kchat-dashplot}
out=${KCHAT_OUT:?KCHAT_OUT must name the recording to write}
phase=${KCHAT_PHASE_SECONDS:-30}
work=/run/kchat-dashboard
mkdir -p "$work"

insmod kmod/kchat.ko default_room=
cat >"$work/kchatd.toml" <<CONFIG
socket = "$work/kchatd.sock"
state_dir = "$work/state"

[metrics]
listen = "127.0.0.1:9477"

[rooms.lobby]

[rooms.ops]
policy = "block"

[rooms.ops.rate_limit]
msgs_per_sec = 5
msg_burst = 5

[rooms.alerts]
ring_bytes = 8192
CONFIG
"$bin/kchatd" --config "$work/kchatd.toml" 2>"$work/kchatd.log" &
export KCHAT_SOCKET=$work/kchatd.sock
for _ in $(seq 200); do
	"$bin/kchatctl" status >/dev/null 2>&1 && break
	sleep 0.1
done

# A bridge of lobby (a drop room: core NATS) and ops (a block room:
# JetStream) for the bridge's panels, through a local nats-server.
nats-server -a 127.0.0.1 -p 4222 -js -sd "$work/js" >"$work/nats.log" 2>&1 &
cat >"$work/bridge.toml" <<CONFIG
node = "node-a"
state_dir = "$work/bridge-state"

[nats]
servers = ["nats://127.0.0.1:4222"]

[metrics]
listen = "127.0.0.1:9478"

[rooms.lobby]

[rooms.ops]
CONFIG
"$bin/kchat-bridge" --config "$work/bridge.toml" 2>"$work/bridge.log" &

cat >"$work/prometheus.yml" <<CONFIG
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: kchatd
    static_configs:
      - targets: ["127.0.0.1:9477"]
  - job_name: kchat-bridge
    static_configs:
      - targets: ["127.0.0.1:9478"]
CONFIG
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
	--web.listen-address=127.0.0.1:9090 >"$work/prometheus.log" 2>&1 &
for _ in $(seq 600); do
	curl -sf http://127.0.0.1:9090/-/ready >/dev/null && break
	sleep 0.1
done
echo "dashboard: kchatd and Prometheus up; ${phase}s phases of traffic"

# Bursts of echo (a builtin) between sleeps: under emulation a sleep costs
# a process, so a sleep per message would be a trickle.
writer() { # ROOM BURST PAUSE
	while :; do
		for _ in $(seq "$2"); do
			echo "message $RANDOM to $1"
		done
		sleep "$3"
	done >"/dev/kchat/$1" 2>/dev/null
}
start=$(date +%s)
for _ in 1 2 3 4 5; do cat /dev/kchat/lobby >/dev/null & done
for _ in 1 2; do cat /dev/kchat/ops >/dev/null & done
# A reader that takes a message every two seconds: the small ring moves on
# and it loses the rest, which the drops panel shows.
(
	exec 7</dev/kchat/alerts
	while :; do
		head -c 1 <&7 >/dev/null
		sleep 2
	done
) &
writer lobby 10 0.2 &
writer ops 20 0.2 &
writer alerts 20 0.2 &
sleep "$phase"

echo "dashboard: more readers, and a room comes"
for _ in 1 2 3 4 5; do cat /dev/kchat/lobby >/dev/null & done
"$bin/kchatctl" create-room standup
cat /dev/kchat/standup >/dev/null &
writer standup 5 0.5 &
sleep "$phase"

echo "dashboard: the room goes"
"$bin/kchatctl" delete-room standup
sleep "$phase"
end=$(date +%s)
# Let the last scrape land before asking.
sleep 2
"$bin/kchat-dashplot" query --dashboard dashboards/kchat.json \
	--start "$start" --end "$end" --step 2 --out "$out"
echo "dashboard: every panel has data"
kill $(jobs -p) 2>/dev/null || true
