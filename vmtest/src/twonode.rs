//! Rooms across two machines: two guests, each with its own kernel and
//! module, joined by a QEMU link (`-netdev socket` over the host's
//! loopback), a real `nats-server` (JetStream on) on the first, a
//! `kchat-bridge` on each. `xtask test` boots the pair; these tests run on
//! the first guest and drive the second through its agent (`agent.rs`).
//! The plain suite lists them as ignored.

use crate::{
    agent::Node,
    helper::{wait_for, PATIENCE},
    Test,
};
use anyhow::{ensure, Context, Result};
use serde_json::Value;
use std::{
    sync::{Mutex, OnceLock},
    time::Duration,
};

pub const TESTS: &[Test] = &[
    (
        "twonode::echo_on_one_machine_is_read_by_cat_on_the_other_exactly_once",
        echo_on_one_machine_is_read_by_cat_on_the_other_exactly_once,
    ),
    (
        "twonode::a_block_room_loses_and_duplicates_nothing_across_restarts",
        a_block_room_loses_and_duplicates_nothing_across_restarts,
    ),
    (
        "twonode::incarnations_tell_a_room_created_again_while_its_bridge_is_away",
        incarnations_tell_a_room_created_again_while_its_bridge_is_away,
    ),
    (
        "twonode::incarnations_keep_relayed_history_apart_across_a_restart",
        incarnations_keep_relayed_history_apart_across_a_restart,
    ),
    (
        "twonode::incarnations_keep_a_node_whose_state_is_lost_heard",
        incarnations_keep_a_node_whose_state_is_lost_heard,
    ),
    (
        "twonode::incarnations_and_runs_number_a_two_way_drop_room_without_holes",
        incarnations_and_runs_number_a_two_way_drop_room_without_holes,
    ),
    (
        "twonode::a_burst_crosses_in_a_few_nats_messages",
        a_burst_crosses_in_a_few_nats_messages,
    ),
    (
        "twonode::a_burst_crosses_a_block_room_in_a_few_stream_messages",
        a_burst_crosses_a_block_room_in_a_few_stream_messages,
    ),
    (
        "twonode::a_stream_made_anew_is_read_from_its_first_message",
        a_stream_made_anew_is_read_from_its_first_message,
    ),
    (
        "twonode::a_stream_has_the_configured_limits",
        a_stream_has_the_configured_limits,
    ),
    (
        "twonode::a_drop_room_accounts_for_every_message_across_restarts",
        a_drop_room_accounts_for_every_message_across_restarts,
    ),
    (
        "twonode::bad_input_is_counted_and_the_other_rooms_go_on",
        bad_input_is_counted_and_the_other_rooms_go_on,
    ),
    (
        "twonode::a_node_named_by_another_is_refused_and_counted",
        a_node_named_by_another_is_refused_and_counted,
    ),
    (
        "twonode::incarnations_forged_mute_no_node",
        incarnations_forged_mute_no_node,
    ),
    (
        "twonode::the_shipped_nats_config_lets_each_node_speak_only_for_itself",
        the_shipped_nats_config_lets_each_node_speak_only_for_itself,
    ),
];

/// Where the other guest's agent listens (set by `xtask test`).
pub const PEER_VAR: &str = "KCHAT_PEER";
const THIS_ADDR: &str = "10.77.0.1";
const NATS: &str = "nats://10.77.0.1:4222";
/// The bound on one step a node runs (`Node::sh`): longer than `PATIENCE`,
/// so that a step's own wait (`poll_sh`) runs out first and says what.
const STEP: Duration = Duration::from_secs(PATIENCE.as_secs() + 30);
const DIR: &str = "/run/kchat-test/twonode";

pub fn configured() -> bool {
    std::env::var_os(PEER_VAR).is_some()
}

/// The two machines: `a` is this guest, `b` the other. Both are set up once
/// (module, nats-server) and shared by the tests, as one boot is.
struct Pair {
    a: Node,
    b: Node,
}

fn pair() -> Result<std::sync::MutexGuard<'static, Pair>> {
    static PAIR: OnceLock<Mutex<Pair>> = OnceLock::new();
    if PAIR.get().is_none() {
        let peer = std::env::var(PEER_VAR).context("KCHAT_PEER is not set")?;
        let mut pair = Pair {
            a: Node::Local,
            b: Node::connect(&peer, Duration::from_secs(180))?,
        };
        let vmtest = vmtest()?;
        for node in [&mut pair.a, &mut pair.b] {
            node.sh(
                &format!("mkdir -p {DIR} && {vmtest} job mkroom probe drop 65536"),
                STEP,
            )?;
        }
        start_nats(&mut pair.a)?;
        let _ = PAIR.set(Mutex::new(pair));
    }
    PAIR.get()
        .context("no pair")?
        .lock()
        .map_err(|_| anyhow::anyhow!("an earlier test panicked holding the pair"))
}

fn vmtest() -> Result<String> {
    Ok(std::env::current_exe()?.display().to_string())
}

fn bridge_bin() -> Result<String> {
    Ok(crate::helper::bin("kchat-bridge")?.display().to_string())
}

/// Bash that checks `condition` every 0.1 s until it holds (then exits 0),
/// for at most `PATIENCE`: what it waits for (a process starting, a port
/// opening) scales with the guest's speed. Runs `otherwise` and exits 1 if
/// the condition never held.
fn poll_sh(condition: &str, otherwise: &str) -> String {
    format!(
        "while [ $SECONDS -lt {} ]; do {condition} && exit 0; sleep 0.1; done; {otherwise}; exit 1",
        PATIENCE.as_secs()
    )
}

/// (Re)starts nats-server with JetStream, its store kept across restarts.
fn start_nats(a: &mut Node) -> Result<()> {
    a.sh(
        &format!(
            "setsid nats-server -a {THIS_ADDR} -p 4222 -js -sd {DIR}/js >>{DIR}/nats.log 2>&1 </dev/null & {}",
            poll_sh(
                &format!("(exec 3<>/dev/tcp/{THIS_ADDR}/4222) 2>/dev/null"),
                &format!("echo nats-server did not listen; cat {DIR}/nats.log"),
            )
        ),
        STEP,
    )
    .map(drop)
}

fn kill_nats(a: &mut Node) -> Result<()> {
    a.sh(
        "pkill -9 -x nats-server; while pgrep -x nats-server >/dev/null; do sleep 0.05; done",
        STEP,
    )
    .map(drop)
}

/// Starts this node's bridge with `rooms` (TOML `[rooms.*]` tables) and
/// waits until its metrics answer.
fn start_bridge(node: &mut Node, name: &str, rooms: &str) -> Result<()> {
    start_bridge_with(node, name, rooms, &format!("servers = [\"{NATS}\"]"))
}

/// [`start_bridge`] with its own `[nats]` table (servers, credentials).
fn start_bridge_with(node: &mut Node, name: &str, rooms: &str, nats: &str) -> Result<()> {
    let bridge = bridge_bin()?;
    node.sh(
        &format!(
            "cat >{DIR}/{name}.toml <<'EOF'\nnode = \"{name}\"\nstate_dir = \"{DIR}/state-{name}\"\n\
             [nats]\n{nats}\n[metrics]\nlisten = \"127.0.0.1:9478\"\n{rooms}\nEOF\n\
             RUST_LOG=info setsid {bridge} --config {DIR}/{name}.toml >>{DIR}/{name}.log 2>&1 </dev/null &\n{}",
            poll_sh(
                "curl -sf http://127.0.0.1:9478/metrics >/dev/null",
                &format!("echo the bridge did not come up; cat {DIR}/{name}.log"),
            )
        ),
        STEP,
    )
    .map(drop)
}

/// Waits until the node's bridge (`name`) reports `room` bridged.
fn until_up(node: &mut Node, name: &str, room: &str) -> Result<()> {
    wait_for("the room bridged", PATIENCE, || {
        Ok(metric(node, &format!("kchat_bridge_room_up{{room=\"{room}\"}}"))? == 1.0)
    })
    .with_context(|| logs(node, name))
}

fn kill_bridge(node: &mut Node) -> Result<()> {
    node.sh(
        "pkill -9 -x kchat-bridge; while pgrep -x kchat-bridge >/dev/null; do sleep 0.05; done",
        STEP,
    )
    .map(drop)
}

/// A series of the node's bridge, 0 when absent.
fn metric(node: &mut Node, series: &str) -> Result<f64> {
    let text = node.sh("curl -sf http://127.0.0.1:9478/metrics", STEP)?;
    Ok(text
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}

/// Every message the node's room retains, oldest first.
fn dump(node: &mut Node, room: &str) -> Result<Vec<Value>> {
    let text = node.sh(&format!("{} job dump {room}", vmtest()?), STEP)?;
    text.lines()
        .map(|line| serde_json::from_str(line).context("a bad dump line"))
        .collect()
}

/// The payloads relayed into the node's room from `origin`, in order.
fn relayed_from(node: &mut Node, room: &str, origin: &str) -> Result<Vec<String>> {
    Ok(dump(node, room)?
        .into_iter()
        .filter(|m| m["relayed"] == true && m["node"] == origin)
        .map(|m| m["payload"].as_str().unwrap_or_default().to_owned())
        .collect())
}

fn logs(node: &mut Node, name: &str) -> String {
    node.sh(&format!("tail -n 40 {DIR}/{name}.log"), STEP)
        .unwrap_or_default()
}

/// Sends probes from one machine until one is relayed into the other's
/// room (core NATS drops what is published before the other side
/// subscribed).
fn until_crossed(pair: &mut Pair, a_to_b: bool, room: &str) -> Result<()> {
    let tag = if a_to_b { "probe-a" } else { "probe-b" };
    send_until_one_crosses(pair, a_to_b, room, tag)
}

/// Sends `TAG n` from one machine, each given 3 s to be relayed into the
/// other's room before the next goes, until one is. Numbers are never
/// reused in a run, so what an earlier test left in a room never counts.
fn send_until_one_crosses(pair: &mut Pair, a_to_b: bool, room: &str, tag: &str) -> Result<()> {
    let vmtest = vmtest()?;
    let from_name = if a_to_b { "node-a" } else { "node-b" };
    static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    wait_for(
        &format!("a message from {from_name} to cross"),
        PATIENCE,
        || {
            let (from, to) = if a_to_b {
                (&mut pair.a, &mut pair.b)
            } else {
                (&mut pair.b, &mut pair.a)
            };
            let n = SENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            from.sh(&format!("{vmtest} job send {room} {tag} {n} 1"), STEP)?;
            let want = format!("{tag} {n}\n");
            let crossed = wait_for("this one to cross", Duration::from_secs(3), || {
                Ok(relayed_from(to, room, from_name)?.contains(&want))
            });
            Ok(crossed.is_ok())
        },
    )
}

fn echo_on_one_machine_is_read_by_cat_on_the_other_exactly_once() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let rooms = "[rooms.probe]\n";
    start_bridge(&mut pair.a, "node-a", rooms)?;
    start_bridge(&mut pair.b, "node-b", rooms)?;
    until_crossed(pair, true, "probe")?;
    until_crossed(pair, false, "probe")?;
    // cat on each side, then echo on the other, once cat holds the room
    // open (a reader starts at the end).
    for node in [&mut pair.a, &mut pair.b] {
        node.sh(&format!("setsid cat /dev/kchat/probe >{DIR}/cat.out 2>&1 </dev/null & echo $! >{DIR}/cat.pid"), STEP)?;
        node.sh(
            &poll_sh(
                &format!("ls -l /proc/$(cat {DIR}/cat.pid)/fd 2>/dev/null | grep -q kchat/probe"),
                "echo cat did not open the room",
            ),
            STEP,
        )?;
    }
    pair.a.sh("echo 'hello from a' >/dev/kchat/probe", STEP)?;
    pair.b.sh("echo 'hello from b' >/dev/kchat/probe", STEP)?;
    for (node, line) in [(&mut pair.b, "hello from a"), (&mut pair.a, "hello from b")] {
        wait_for(
            &format!("cat on {} to print {line:?}", node.name()),
            PATIENCE,
            || {
                Ok(node
                    .sh(&format!("grep -c '^{line}$' {DIR}/cat.out || true"), STEP)?
                    .trim()
                    == "1")
            },
        )?;
    }
    // Framed readers on b: marked as relayed from node-a, with a's stamp
    // (a's uid 0 and the pid of a's shell), the local stamp the bridge's.
    let echo_pid = pair
        .a
        .sh("echo 'stamped' >/dev/kchat/probe; echo $$", STEP)?;
    wait_for("the stamped message on b", PATIENCE, || {
        Ok(relayed_from(&mut pair.b, "probe", "node-a")?
            .iter()
            .any(|p| p == "stamped\n"))
    })?;
    let bridge_pid = pair.b.sh("pgrep -x kchat-bridge", STEP)?;
    let held = dump(&mut pair.b, "probe")?;
    let stamped: Vec<_> = held
        .iter()
        .filter(|m| m["payload"] == "stamped\n")
        .collect();
    ensure!(
        stamped.len() == 1,
        "b holds {} copies of the stamped message",
        stamped.len()
    );
    let m = stamped[0];
    ensure!(
        m["relayed"] == true
            && m["node"] == "node-a"
            && m["origin_uid"] == 0
            && m["origin_pid"].as_u64().map(|p| p.to_string()) == Some(echo_pid.trim().to_owned())
            && m["pid"].as_u64().map(|p| p.to_string()) == Some(bridge_pid.trim().to_owned()),
        "b's framed view of a's message: {m} (a's shell {echo_pid:?}, b's bridge {bridge_pid:?})"
    );
    // The chat client on b names the machine and the remote uid, never a
    // local user.
    let kchat = crate::helper::bin("kchat")?.display().to_string();
    pair.b.sh(
        &format!("setsid {kchat} --listen --count 1 probe >{DIR}/kchat.out 2>&1 </dev/null &"),
        STEP,
    )?;
    // kchat is up once it holds the room open: then a's line is new to it.
    pair.b.sh(
        &poll_sh(
            "ls -l /proc/$(pgrep -x kchat)/fd 2>/dev/null | grep -q kchat/probe",
            "echo kchat did not open the room",
        ),
        STEP,
    )?;
    pair.a.sh("echo 'seen by kchat' >/dev/kchat/probe", STEP)?;
    wait_for("kchat on b to show a's line", PATIENCE, || {
        Ok(pair
            .b
            .sh(&format!("cat {DIR}/kchat.out"), STEP)?
            .contains("] uid 0@node-a: seen by kchat"))
    })
    .with_context(|| {
        pair.b
            .sh(&format!("cat {DIR}/kchat.out"), STEP)
            .unwrap_or_default()
    })?;
    for node in [&mut pair.a, &mut pair.b] {
        node.sh(&format!("kill $(cat {DIR}/cat.pid)"), STEP)?;
        kill_bridge(node)?;
    }
    Ok(())
}

/// Waits until `node`'s room holds exactly "TAG 0".."TAG count-1" relayed
/// from `origin`, in order; fails at once on a duplicate, a loss or a
/// reordering (checked in that guest: `job prefix`).
fn expect_exactly(
    node: &mut Node,
    room: &str,
    origin: &str,
    tag: &str,
    count: u64,
    limit: Duration,
) -> Result<()> {
    let vmtest = vmtest()?;
    let mut held = 0;
    wait_for(
        &format!("{count} messages from {origin} on {}", node.name()),
        limit,
        || {
            held = node
                .sh(
                    &format!("{vmtest} job prefix {room} {origin} {tag} 0 {count}"),
                    STEP,
                )?
                .trim()
                .parse()?;
            Ok(held == count)
        },
    )
    .with_context(|| format!("{room} on {} holds {held} of {count}", node.name()))
}

/// Waits until `node`'s room holds each of "TAG 0".."TAG count-1" relayed
/// from `origin` exactly once, whatever else it holds from there (probes,
/// a rogue's messages); fails at once on one held twice.
fn expect_each(
    node: &mut Node,
    room: &str,
    origin: &str,
    tag: &str,
    count: u64,
    limit: Duration,
) -> Result<()> {
    let mut missing = count;
    let name = node.name().to_owned();
    wait_for(
        &format!("{count} messages {tag} from {origin} on {name}"),
        limit,
        || {
            let mut seen = vec![0u32; count as usize];
            for payload in relayed_from(node, room, origin)? {
                let n = payload
                    .strip_suffix('\n')
                    .and_then(|p| p.strip_prefix(tag))
                    .and_then(|p| p.strip_prefix(' '))
                    .and_then(|p| p.parse::<usize>().ok());
                if let Some(held) = n.and_then(|n| seen.get_mut(n)) {
                    *held += 1;
                }
            }
            if let Some(n) = seen.iter().position(|&held| held > 1) {
                anyhow::bail!("{room} on {name} holds \"{tag} {n}\" from {origin} twice");
            }
            missing = seen.iter().filter(|&&held| held == 0).count() as u64;
            Ok(missing == 0)
        },
    )
    .with_context(|| format!("{room} on {name} lacks {missing} of {count}"))
}

/// How many messages from `origin` the node's room holds.
fn held_from(node: &mut Node, room: &str, origin: &str, tag: &str) -> Result<u64> {
    let vmtest = vmtest()?;
    Ok(node
        .sh(
            &format!("{vmtest} job prefix {room} {origin} {tag} 0 1000000"),
            STEP,
        )?
        .trim()
        .parse()?)
}

/// Creates `room` (1 MiB ring) on both machines and starts both bridges on
/// it (alone: any bridge still running is stopped first); returns the
/// bridges' `[rooms]` table.
fn both_bridge_a_new_room(pair: &mut Pair, room: &str, policy: &str) -> Result<String> {
    let vmtest = vmtest()?;
    for node in [&mut pair.a, &mut pair.b] {
        // A test that failed left its bridges running: they would hold the
        // metrics port and fail this test for another reason.
        kill_bridge(node)?;
        node.sh(
            &format!("{vmtest} job mkroom {room} {policy} 1048576"),
            STEP,
        )?;
    }
    let rooms = format!("[rooms.{room}]\n");
    start_bridge(&mut pair.a, "node-a", &rooms)?;
    start_bridge(&mut pair.b, "node-b", &rooms)?;
    Ok(rooms)
}

/// [`both_bridge_a_new_room`], then waits until each bridge has the room up.
fn both_bridge_a_new_room_up(pair: &mut Pair, room: &str, policy: &str) -> Result<String> {
    let rooms = both_bridge_a_new_room(pair, room, policy)?;
    for (node, name) in [(&mut pair.a, "node-a"), (&mut pair.b, "node-b")] {
        until_up(node, name, room)?;
    }
    Ok(rooms)
}

fn a_block_room_loses_and_duplicates_nothing_across_restarts() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    // Rings that hold what is written while a bridge is away.
    let rooms = both_bridge_a_new_room(pair, "ledger", "block")?;
    // Both consumers exist once each bridge has bridged the room.
    for (node, name) in [(&mut pair.a, "node-a"), (&mut pair.b, "node-b")] {
        wait_for("the room bridged", PATIENCE, || {
            Ok(metric(node, "kchat_bridge_room_delivery{room=\"ledger\",delivery=\"jetstream\",direction=\"both\"}")? == 1.0
                && metric(node, "kchat_bridge_room_up{room=\"ledger\"}")? == 1.0)
        })
        .with_context(|| logs(node, name))?;
    }
    let per_round = 1000;
    // Round 1: both ways at once, nothing failing.
    pair.b.sh(
        &format!("setsid {vmtest} job send ledger b 0 {per_round} </dev/null >/dev/null 2>&1 &"),
        STEP,
    )?;
    pair.a
        .sh(&format!("{vmtest} job send ledger a 0 {per_round}"), STEP)?;
    expect_exactly(
        &mut pair.b,
        "ledger",
        "node-a",
        "a",
        per_round,
        Duration::from_secs(120),
    )
    .with_context(|| logs(&mut pair.b, "node-b"))?;
    expect_exactly(
        &mut pair.a,
        "ledger",
        "node-b",
        "b",
        per_round,
        Duration::from_secs(120),
    )
    .with_context(|| logs(&mut pair.a, "node-a"))?;

    // Round 2: the server is killed and started again mid-stream.
    pair.a.sh(&format!("setsid {vmtest} job send ledger a {per_round} {per_round} </dev/null >/dev/null 2>&1 &"), STEP)?;
    wait_for("some of round 2 to cross", PATIENCE, || {
        Ok(held_from(&mut pair.b, "ledger", "node-a", "a")? > per_round + 50)
    })?;
    kill_nats(&mut pair.a)?;
    start_nats(&mut pair.a)?;
    expect_exactly(
        &mut pair.b,
        "ledger",
        "node-a",
        "a",
        2 * per_round,
        Duration::from_secs(180),
    )
    .with_context(|| logs(&mut pair.b, "node-b") + &logs(&mut pair.a, "node-a"))?;

    // Round 3: b's bridge is killed (SIGKILL) mid-stream while both write,
    // then started again: what b wrote meanwhile goes out, what a wrote
    // comes in, each once.
    pair.a.sh(
        &format!(
            "setsid {vmtest} job send ledger a {} {per_round} </dev/null >/dev/null 2>&1 &",
            2 * per_round
        ),
        STEP,
    )?;
    wait_for("some of round 3 to cross", PATIENCE, || {
        Ok(held_from(&mut pair.b, "ledger", "node-a", "a")? > 2 * per_round + 50)
    })?;
    kill_bridge(&mut pair.b)?;
    pair.b.sh(
        &format!("{vmtest} job send ledger b {per_round} {per_round}"),
        STEP,
    )?;
    start_bridge(&mut pair.b, "node-b", &rooms)?;
    expect_exactly(
        &mut pair.b,
        "ledger",
        "node-a",
        "a",
        3 * per_round,
        Duration::from_secs(180),
    )
    .with_context(|| logs(&mut pair.b, "node-b"))?;
    expect_exactly(
        &mut pair.a,
        "ledger",
        "node-b",
        "b",
        2 * per_round,
        Duration::from_secs(180),
    )
    .with_context(|| logs(&mut pair.a, "node-a") + &logs(&mut pair.b, "node-b"))?;
    // Nothing looped: each bridge published only its own node's messages.
    ensure!(
        metric(&mut pair.a, "kchat_bridge_published_total{room=\"ledger\"}")?
            <= (3 * per_round) as f64,
        "node-a published more than its own messages"
    );
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// b's room is deleted and created again while b's bridge is away, and
/// written to past the sequence number the bridge last published: the
/// bridge tells the new room by its incarnation and publishes every
/// message of the new room; a holds all, once.
fn incarnations_tell_a_room_created_again_while_its_bridge_is_away() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    let rooms = both_bridge_a_new_room_up(pair, "again", "block")?;
    pair.b.sh(&format!("{vmtest} job send again m 0 3"), STEP)?;
    expect_exactly(&mut pair.a, "again", "node-b", "m", 3, PATIENCE)?;
    kill_bridge(&mut pair.b)?;
    pair.b.sh(
        &format!("{vmtest} job rmroom again && {vmtest} job mkroom again block 1048576 && {vmtest} job send again m 3 10"),
        STEP,
    )?;
    start_bridge(&mut pair.b, "node-b", &rooms)?;
    expect_exactly(&mut pair.a, "again", "node-b", "m", 13, PATIENCE)
        .with_context(|| logs(&mut pair.b, "node-b"))?;
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// Deletes and creates `room` again on `node` (its bridge running).
fn recreate(node: &mut Node, room: &str) -> Result<()> {
    let vmtest = vmtest()?;
    node.sh(
        &format!("{vmtest} job rmroom {room} && {vmtest} job mkroom {room} block 1048576"),
        STEP,
    )
    .map(drop)
}

/// Issue #23, item 2. a writes 50, its room is created again (its bridge
/// running) and a writes 10 more, then b's bridge restarts while b's ring
/// still holds a's first 50, and a writes 10 more: all 70 arrive at b,
/// once, in order. Relayed history in a ring now says which incarnation
/// of a's room each message came from, so b's restarted bridge moves only
/// that incarnation's place. Under epochs the ring said none, b took a's
/// message 49 of the old room for the new epoch's and skipped the new
/// room's 10..49: 60 arrived.
fn incarnations_keep_relayed_history_apart_across_a_restart() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    let rooms = both_bridge_a_new_room_up(pair, "history", "block")?;
    pair.a
        .sh(&format!("{vmtest} job send history m 0 50"), STEP)?;
    expect_exactly(&mut pair.b, "history", "node-a", "m", 50, PATIENCE)?;
    recreate(&mut pair.a, "history")?;
    pair.a
        .sh(&format!("{vmtest} job send history m 50 10"), STEP)?;
    expect_exactly(&mut pair.b, "history", "node-a", "m", 60, PATIENCE)
        .with_context(|| logs(&mut pair.a, "node-a"))?;
    kill_bridge(&mut pair.b)?;
    start_bridge(&mut pair.b, "node-b", &rooms)?;
    until_up(&mut pair.b, "node-b", "history")?;
    pair.a
        .sh(&format!("{vmtest} job send history m 60 10"), STEP)?;
    expect_exactly(&mut pair.b, "history", "node-a", "m", 70, PATIENCE)
        .with_context(|| logs(&mut pair.b, "node-b"))?;
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// Issue #23, item 1. a's room is created again once (b has seen a newer
/// incarnation of it), then a's bridge loses its state (the directory
/// wiped) and the room is created again: a's later messages still arrive
/// at b. Under epochs, a's bridge started over at epoch 0 and b, holding
/// epoch 1 for a, took every one of them for an old one: a was muted for
/// good.
fn incarnations_keep_a_node_whose_state_is_lost_heard() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    let rooms = both_bridge_a_new_room_up(pair, "reborn", "block")?;
    pair.a
        .sh(&format!("{vmtest} job send reborn m 0 5"), STEP)?;
    expect_exactly(&mut pair.b, "reborn", "node-a", "m", 5, PATIENCE)?;
    recreate(&mut pair.a, "reborn")?;
    pair.a
        .sh(&format!("{vmtest} job send reborn m 5 5"), STEP)?;
    expect_exactly(&mut pair.b, "reborn", "node-a", "m", 10, PATIENCE)
        .with_context(|| logs(&mut pair.a, "node-a"))?;
    kill_bridge(&mut pair.a)?;
    let state = format!("{DIR}/state-node-a");
    pair.a.sh(&format!("rm -rf {state}"), STEP)?;
    recreate(&mut pair.a, "reborn")?;
    start_bridge(&mut pair.a, "node-a", &rooms)?;
    // A bridge without state joins its room from now: once it has saved
    // its place (right after taking it), what a writes must all arrive.
    pair.a.sh(
        &poll_sh(
            &format!("[ -s {state}/reborn.json ]"),
            "echo the bridge saved no place",
        ),
        STEP,
    )?;
    pair.a
        .sh(&format!("{vmtest} job send reborn m 10 5"), STEP)?;
    expect_exactly(&mut pair.b, "reborn", "node-a", "m", 15, PATIENCE)
        .with_context(|| logs(&mut pair.b, "node-b") + &logs(&mut pair.a, "node-a"))?;
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// Issue #23, item 4. Both machines write a `drop` room in turns, each
/// turn relayed into the other's room before the other writes, so each
/// room's sequence numbers interleave both nodes' messages: everything
/// arrives and neither bridge counts a gap. Each bridge numbers what it
/// publishes without holes; before, receivers counted by the origin's
/// room numbers, whose holes (the other node's relayed messages) they
/// took for losses: 10 per turn.
fn incarnations_and_runs_number_a_two_way_drop_room_without_holes() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    both_bridge_a_new_room(pair, "duplex", "drop")?;
    until_crossed(pair, true, "duplex")?;
    until_crossed(pair, false, "duplex")?;
    let gaps = "kchat_bridge_gaps_total{room=\"duplex\"}";
    let before = (metric(&mut pair.a, gaps)?, metric(&mut pair.b, gaps)?);
    let turn = 10;
    for round in 0..8 {
        pair.a.sh(
            &format!("{vmtest} job send duplex a {} {turn}", round * turn),
            STEP,
        )?;
        expect_each(
            &mut pair.b,
            "duplex",
            "node-a",
            "a",
            (round + 1) * turn,
            PATIENCE,
        )
        .with_context(|| logs(&mut pair.b, "node-b"))?;
        pair.b.sh(
            &format!("{vmtest} job send duplex b {} {turn}", round * turn),
            STEP,
        )?;
        expect_each(
            &mut pair.a,
            "duplex",
            "node-b",
            "b",
            (round + 1) * turn,
            PATIENCE,
        )
        .with_context(|| logs(&mut pair.a, "node-a"))?;
    }
    let after = (metric(&mut pair.a, gaps)?, metric(&mut pair.b, gaps)?);
    ensure!(
        after == before,
        "gaps counted on a room that lost nothing: a {} -> {}, b {} -> {}",
        before.0,
        after.0,
        before.1,
        after.1
    );
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// 1,000 messages waiting in a room cross in one batch: the publishing
/// bridge reads what the room holds (reads on past one buffer) into one NATS
/// message, relayed in with one write, every message once and no gap
/// counted. Before batches each message was a NATS message of its own;
/// before the bridge read on to the end of what was there, each read was
/// (63).
fn a_burst_crosses_in_a_few_nats_messages() -> Result<()> {
    burst_crosses(&mut *pair()?, "bursts", "drop")
}

/// The same through JetStream: one stream message (and acknowledgement)
/// per batch, each message once.
fn a_burst_crosses_a_block_room_in_a_few_stream_messages() -> Result<()> {
    burst_crosses(&mut *pair()?, "bursts-js", "block")
}

fn burst_crosses(pair: &mut Pair, room: &str, policy: &str) -> Result<()> {
    let vmtest = vmtest()?;
    both_bridge_a_new_room_up(pair, room, policy)?;
    if policy == "drop" {
        until_crossed(pair, true, room)?;
    }
    let received = format!("kchat_bridge_received_total{{room=\"{room}\"}}");
    let before = metric(&mut pair.b, &received)?;
    // Written while a's bridge is stopped, so the whole burst waits in the
    // room when it reads again.
    let count = 1000;
    pair.a.sh(
        &format!(
            "pkill -STOP -x kchat-bridge && ( {vmtest} job burst {room} burst 0 {count}; \
             wrote=$?; pkill -CONT -x kchat-bridge; exit $wrote )"
        ),
        STEP,
    )?;
    expect_each(&mut pair.b, room, "node-a", "burst", count, PATIENCE)
        .with_context(|| logs(&mut pair.b, "node-b"))?;
    let messages = metric(&mut pair.b, &received)? - before;
    ensure!(
        messages <= 2.0,
        "{count} messages waiting in the room crossed in {messages} NATS messages (at most 2)"
    );
    let gaps = metric(
        &mut pair.b,
        &format!("kchat_bridge_gaps_total{{room=\"{room}\"}}"),
    )?;
    ensure!(
        gaps == 0.0,
        "{gaps} gaps counted on a room that lost nothing"
    );
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// Deletes a JetStream stream as an admin would (the test server has no
/// permissions), waiting for the server's answer.
fn delete_stream(name: &str) -> Result<()> {
    let said = js_api(&format!("STREAM.DELETE.{name}"), "MSG _INBOX.kchat-js")?;
    ensure!(
        said.contains("\"success\":true"),
        "nats-server did not delete the stream {name}: {said}"
    );
    Ok(())
}

/// The room's stream is deleted while b's bridge is away and made anew by
/// a's, which then publishes more than b's saved place in the old stream
/// (then, a second time, fewer): b reads the new stream from its first
/// message and gets every message once. Before b saved when its stream was
/// made, it started after its old number in the longer new stream
/// (skipping that many of a's messages) and with what comes next in the
/// shorter one (skipping all that waited).
fn a_stream_made_anew_is_read_from_its_first_message() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    let rooms = both_bridge_a_new_room_up(pair, "anew", "block")?;
    pair.a.sh(&format!("{vmtest} job send anew s 0 20"), STEP)?;
    expect_exactly(&mut pair.b, "anew", "node-a", "s", 20, PATIENCE)
        .with_context(|| logs(&mut pair.b, "node-b"))?;
    // (a's first number and count while b is away, b's total then)
    for (from, count, total) in [(20, 50, 70), (70, 5, 75)] {
        // b has relayed everything: its place is the stream's last message
        // (a batch holds many of the room's, so ask the server which).
        let in_stream = stream_last_seq("kchat~anew")?;
        let state = format!("{DIR}/state-node-b/anew.json");
        wait_for("b to save its place", PATIENCE, || {
            Ok(pair
                .b
                .sh(&format!("cat {state} 2>/dev/null || true"), STEP)?
                .contains(&format!("\"stream_seq\":{in_stream}")))
        })
        .with_context(|| logs(&mut pair.b, "node-b"))?;
        kill_bridge(&mut pair.b)?;
        delete_stream("kchat~anew")?;
        // a's bridge finds the stream gone and makes it anew.
        pair.a
            .sh(&format!("{vmtest} job send anew s {from} {count}"), STEP)?;
        wait_for("a to publish into the new stream", PATIENCE, || {
            Ok(metric(&mut pair.a, "kchat_bridge_published_total{room=\"anew\"}")? >= total as f64)
        })
        .with_context(|| logs(&mut pair.a, "node-a"))?;
        start_bridge(&mut pair.b, "node-b", &rooms)?;
        expect_exactly(&mut pair.b, "anew", "node-a", "s", total, PATIENCE)
            .with_context(|| logs(&mut pair.b, "node-b") + &logs(&mut pair.a, "node-a"))?;
    }
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// The sequence number of the stream's last message, as the server says.
fn stream_last_seq(name: &str) -> Result<u64> {
    // The protocol's lines around it; the answer is the line of JSON.
    let text = js_api(&format!("STREAM.INFO.{name}"), "\"last_seq\"")?;
    let info: Value = text
        .lines()
        .find(|line| line.starts_with('{'))
        .and_then(|line| serde_json::from_str(line).ok())
        .with_context(|| format!("no JSON in the server's STREAM.INFO of {name}: {text}"))?;
    info["state"]["last_seq"]
        .as_u64()
        .with_context(|| format!("no state.last_seq in the STREAM.INFO of {name}: {info}"))
}

/// The stream's configuration as the server reports it (JSON).
fn stream_info(name: &str) -> Result<String> {
    // What the server writes after the limits.
    js_api(&format!("STREAM.INFO.{name}"), "\"storage\"")
}

/// Asks the test server's JetStream API `api` (`$JS.API.<api>`, no
/// payload) as a plain client, until its answer holds `until`.
fn js_api(api: &str, until: &str) -> Result<String> {
    raw_nats(
        4222,
        "",
        &format!("SUB _INBOX.kchat-js 1\r\nPUB $JS.API.{api} _INBOX.kchat-js 0\r\n\r\n"),
        Some(until),
    )
}

/// A room's stream made with the default limits (no byte bound, a day)
/// takes the ones `[jetstream]`
/// gives when its bridge starts again with them; a room whose messages
/// would be larger than the stream takes is not bridged, and its bridge
/// says what to change. Before `[jetstream]`, streams had no limit but a
/// day's age, and the table was refused as an unknown field.
fn a_stream_has_the_configured_limits() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    pair.a
        .sh(&format!("{vmtest} job mkroom limited block 1048576"), STEP)?;
    start_bridge(&mut pair.a, "node-a", "[rooms.limited]\n")?;
    let up = |node: &mut Node, room: &str| {
        metric(node, &format!("kchat_bridge_room_up{{room=\"{room}\"}}"))
    };
    until_up(&mut pair.a, "node-a", "limited")?;
    let info = stream_info("kchat~limited")?;
    ensure!(
        info.contains("\"max_bytes\":-1") && info.contains("\"max_age\":86400000000000"),
        "the stream does not have the default limits (no byte bound, a day): {info}"
    );
    kill_bridge(&mut pair.a)?;
    pair.a.sh(
        &format!("{vmtest} job mkroom toolarge block 1048576 65536"),
        STEP,
    )?;
    start_bridge(
        &mut pair.a,
        "node-a",
        "[jetstream]\nmax_bytes = 10000000\nmax_msgs = 5000\nmax_msg_size = 65536\n\
         max_age_secs = 3600\n[rooms.limited]\n[rooms.toolarge]\n",
    )?;
    until_up(&mut pair.a, "node-a", "limited")?;
    let info = stream_info("kchat~limited")?;
    for field in [
        "\"max_bytes\":10000000",
        "\"max_msgs\":5000",
        "\"max_msg_size\":65536",
        "\"max_age\":3600000000000",
    ] {
        ensure!(info.contains(field), "the stream lacks {field}: {info}");
    }
    wait_for("the oversized room to be refused", PATIENCE, || {
        Ok(pair
            .a
            .sh(
                &format!(
                    "grep -c 'raise jetstream.max_msg_size to at least' {DIR}/node-a.log || true"
                ),
                STEP,
            )?
            .trim()
            != "0")
    })
    .with_context(|| logs(&mut pair.a, "node-a"))?;
    ensure!(
        up(&mut pair.a, "toolarge")? == 0.0,
        "a room with messages larger than its stream takes is bridged"
    );
    kill_bridge(&mut pair.a)?;
    Ok(())
}

/// What `node`'s room holds relayed from node-a after a's sequence number
/// `after`: how many, and the last sequence number.
fn held_after(node: &mut Node, room: &str, after: u64) -> Result<(u64, u64)> {
    let seqs: Vec<u64> = dump(node, room)?
        .iter()
        .filter(|m| m["relayed"] == true && m["node"] == "node-a")
        .filter_map(|m| m["origin_seq"].as_u64())
        .filter(|&seq| seq > after)
        .collect();
    Ok((
        seqs.len() as u64,
        seqs.iter().copied().max().unwrap_or(after),
    ))
}

/// Sends closing messages from a until one crosses; then every message a
/// wrote after `after` has arrived at b or is counted in b's gaps.
/// Returns (arrived, counted, the closing message's sequence number).
fn close_books(
    pair: &mut Pair,
    room: &str,
    tag: &str,
    after: u64,
    gaps_before: f64,
) -> Result<(u64, u64, u64)> {
    send_until_one_crosses(pair, true, room, tag)?;
    let (arrived, close) = held_after(&mut pair.b, room, after)?;
    let counted = (metric(
        &mut pair.b,
        &format!("kchat_bridge_gaps_total{{room=\"{room}\"}}"),
    )? - gaps_before) as u64;
    ensure!(
        arrived + counted == close - after,
        "of the {} messages a wrote after its message {after}, {arrived} arrived and {counted} are counted as gaps: \
         the books do not close",
        close - after
    );
    Ok((arrived, counted, close))
}

fn a_drop_room_accounts_for_every_message_across_restarts() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    let rooms = both_bridge_a_new_room(pair, "chatter", "drop")?;
    until_crossed(pair, true, "chatter")?;
    let gaps = "kchat_bridge_gaps_total{room=\"chatter\"}";
    let (_, start) = held_after(&mut pair.b, "chatter", 0)?;
    let gaps_before = metric(&mut pair.b, gaps)?;
    // a writes while its server dies and comes back.
    pair.a.sh(
        &format!("setsid {vmtest} job send chatter a 0 3000 </dev/null >/dev/null 2>&1 &"),
        STEP,
    )?;
    wait_for("some to cross", PATIENCE, || {
        Ok(held_after(&mut pair.b, "chatter", start)?.0 > 100)
    })?;
    kill_nats(&mut pair.a)?;
    start_nats(&mut pair.a)?;
    pair.a.sh(
        "while pgrep -f 'job send chatte[r]' >/dev/null; do sleep 0.1; done",
        STEP,
    )?;
    let (arrived, counted, close) = close_books(pair, "chatter", "close-1", start, gaps_before)?;
    eprintln!("drop room across a server restart: {arrived} arrived, {counted} counted lost");
    // b's bridge away: what a writes meanwhile is lost to b, and counted
    // by b's next bridge from what the room holds.
    kill_bridge(&mut pair.b)?;
    pair.a
        .sh(&format!("{vmtest} job send chatter gone 0 200"), STEP)?;
    start_bridge(&mut pair.b, "node-b", &rooms)?;
    let (arrived, counted, _) = close_books(pair, "chatter", "close-2", close, 0.0)?;
    ensure!(
        counted >= 200,
        "b's bridge was away for 200 messages but counts {counted} lost ({arrived} arrived)"
    );
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// Speaks the NATS text protocol to the server at `port` on this guest,
/// as a plain client would (no NATS tool in the guest, none needed):
/// `CONNECT` with `auth` (extra JSON fields: user and password), then
/// `commands`, then `PING`; reads until the `PONG` and, if given, `until`
/// (a reply that comes later). Returns all the server said.
fn raw_nats(port: u16, auth: &str, commands: &str, until: Option<&str>) -> Result<String> {
    use std::io::{Read, Write};
    let mut raw = std::net::TcpStream::connect((THIS_ADDR, port))?;
    raw.set_read_timeout(Some(PATIENCE))?;
    write!(
        raw,
        "CONNECT {{\"verbose\":false,\"headers\":true{auth}}}\r\n{commands}PING\r\n"
    )?;
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("PONG") || until.is_some_and(|until| !seen.contains(until)) {
        let n = raw
            .read(&mut buf)
            .with_context(|| format!("nats-server did not answer: {seen}"))?;
        ensure!(n > 0, "nats-server closed the connection: {seen}");
        seen += &String::from_utf8_lossy(&buf[..n]);
    }
    Ok(seen)
}

/// An `HPUB` of `payload` on `subject` with `headers` (`Name: value` lines).
fn hpub(subject: &str, headers: &[String], payload: &str) -> String {
    let head = format!(
        "NATS/1.0\r\n{}\r\n",
        headers
            .iter()
            .map(|h| format!("{h}\r\n"))
            .collect::<String>()
    );
    format!(
        "HPUB {subject} {} {}\r\n{head}{payload}\r\n",
        head.len(),
        head.len() + payload.len()
    )
}

/// The headers a bridge of `node` would send, stamped uid 0.
fn stamp_of(node: &str, seq: u64) -> Vec<String> {
    vec![
        format!("Kchat-Node: {node}"),
        format!("Kchat-Seq: {seq}"),
        "Kchat-Time: 1700000000000000000".into(),
        "Kchat-Pid: 1".into(),
        "Kchat-Uid: 0".into(),
        "Kchat-Gid: 0".into(),
    ]
}

/// Publishes, as no bridge would, a message without kchat headers and one
/// naming a node that cannot be.
fn stray_messages() -> Result<()> {
    let headers = ["Kchat-Node: a/b".to_owned(), "Kchat-Seq: 1".to_owned()];
    // On a node's subject of the room, where bridges listen.
    let said = raw_nats(
        4222,
        "",
        &format!(
            "PUB kchat.probe.stray 5\r\nhello\r\n{}",
            hpub("kchat.probe.stray", &headers, "hi")
        ),
        None,
    )?;
    ensure!(
        !said.contains("-ERR"),
        "nats-server refused the stray messages: {said}"
    );
    Ok(())
}

fn bad_input_is_counted_and_the_other_rooms_go_on() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    // b's room takes shorter messages than a's: a long one is refused there.
    pair.a
        .sh(&format!("{vmtest} job mkroom small drop 65536"), STEP)?;
    pair.b
        .sh(&format!("{vmtest} job mkroom small drop 65536 64"), STEP)?;
    // b bridges a room that does not exist yet.
    let rooms = "[rooms.probe]\n[rooms.small]\n[rooms.later]\n";
    start_bridge(&mut pair.a, "node-a", rooms)?;
    start_bridge(&mut pair.b, "node-b", rooms)?;
    wait_for("the missing room to be counted", PATIENCE, || {
        Ok(metric(
            &mut pair.b,
            "kchat_bridge_room_errors_total{room=\"later\"}",
        )? >= 1.0
            && metric(&mut pair.b, "kchat_bridge_room_up{room=\"later\"}")? == 0.0)
    })?;
    until_crossed(pair, true, "probe")?;
    // A message without kchat headers, one with a bad node, one too long
    // for b's room: each counted, none stops the room.
    stray_messages()?;
    wait_for("the stray messages to be refused", PATIENCE, || {
        Ok(metric(
            &mut pair.b,
            "kchat_bridge_dropped_total{room=\"probe\",reason=\"malformed\"}",
        )? >= 2.0)
    })
    .with_context(|| logs(&mut pair.b, "node-b"))?;
    until_crossed(pair, true, "small")?;
    pair.a
        .sh("head -c 100 /dev/zero | tr '\\0' x >/dev/kchat/small", STEP)?;
    wait_for("the long message to be refused on b", PATIENCE, || {
        Ok(metric(
            &mut pair.b,
            "kchat_bridge_dropped_total{room=\"small\",reason=\"oversize\"}",
        )? >= 1.0)
    })
    .with_context(|| logs(&mut pair.b, "node-b"))?;
    // The room appears: it is bridged without a restart.
    pair.b
        .sh(&format!("{vmtest} job mkroom later drop 65536"), STEP)?;
    pair.a
        .sh(&format!("{vmtest} job mkroom later drop 65536"), STEP)?;
    wait_for("the new room to be bridged", PATIENCE, || {
        Ok(metric(&mut pair.b, "kchat_bridge_room_up{room=\"later\"}")? == 1.0)
    })?;
    until_crossed(pair, true, "later")?;
    // A room deleted under the bridge: counted, and the others go on.
    let errors = metric(
        &mut pair.b,
        "kchat_bridge_room_errors_total{room=\"small\"}",
    )?;
    pair.b.sh(&format!("{vmtest} job rmroom small"), STEP)?;
    wait_for("the deleted room to be counted", PATIENCE, || {
        Ok(metric(
            &mut pair.b,
            "kchat_bridge_room_errors_total{room=\"small\"}",
        )? > errors)
    })?;
    pair.a.sh("echo 'still here' >/dev/kchat/probe", STEP)?;
    wait_for("traffic after the bad input", PATIENCE, || {
        Ok(relayed_from(&mut pair.b, "probe", "node-a")?
            .iter()
            .any(|p| p == "still here\n"))
    })?;
    ensure!(
        pair.b.sh("pgrep -x kchat-bridge", STEP).is_ok(),
        "b's bridge died on bad input"
    );
    // Credentials refused: a server that wants a token, a bridge with the
    // wrong one: it says so, stays up and reports itself disconnected.
    pair.a.sh(
        &format!(
            "setsid nats-server -a {THIS_ADDR} -p 4223 --auth right >>{DIR}/nats-auth.log 2>&1 </dev/null & {}",
            poll_sh(
                &format!("(exec 3<>/dev/tcp/{THIS_ADDR}/4223) 2>/dev/null"),
                &format!("echo nats-server did not listen; cat {DIR}/nats-auth.log"),
            )
        ),
        STEP,
    )?;
    kill_bridge(&mut pair.b)?;
    let bridge = bridge_bin()?;
    pair.b.sh(
        &format!(
            "cat >{DIR}/wrong.toml <<'EOF'\nnode = \"node-b\"\nstate_dir = \"{DIR}/state-wrong\"\n[nats]\n\
             servers = [\"nats://{THIS_ADDR}:4223\"]\ntoken = \"wrong\"\nallow_plaintext_auth = true\n[metrics]\nlisten = \"127.0.0.1:9478\"\n[rooms.probe]\nEOF\n\
             RUST_LOG=info setsid {bridge} --config {DIR}/wrong.toml >{DIR}/wrong.log 2>&1 </dev/null &"
        ),
        STEP,
    )?;
    wait_for("the refusal to be logged", PATIENCE, || {
        Ok(pair
            .b
            .sh(
                &format!("grep -ci 'authorization' {DIR}/wrong.log || true"),
                STEP,
            )?
            .trim()
            != "0")
    })
    .with_context(|| logs(&mut pair.b, "wrong"))?;
    ensure!(
        pair.b.sh("pgrep -x kchat-bridge", STEP).is_ok(),
        "the bridge exited on refused credentials"
    );
    pair.a.sh("pkill -f 'nats-serve[r].*4223'", STEP)?;
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// Every message `node`'s room holds with `payload`, relayed or not.
fn holding(node: &mut Node, room: &str, payload: &str) -> Result<Vec<Value>> {
    Ok(dump(node, room)?
        .into_iter()
        .filter(|m| m["payload"] == payload)
        .collect())
}

/// A plain client (no bridge, no credentials: the test server has no
/// permissions) publishes as node-b, uid 0, on node-a's subject of the
/// room, and on the room's bare subject (where bridges listened before
/// each node had its own): neither is relayed on either machine, the
/// first is counted as refused on both. Before per-node subjects, b's and
/// a's bridges relayed the bare one as "uid 0@node-b" and there was no
/// refused counter.
fn a_node_named_by_another_is_refused_and_counted() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    both_bridge_a_new_room(pair, "guarded", "drop")?;
    until_crossed(pair, true, "guarded")?;
    until_crossed(pair, false, "guarded")?;
    let forged = stamp_of("node-b", 1_000_000);
    let said = raw_nats(
        4222,
        "",
        &(hpub("kchat.guarded.node-a", &forged, "forged on a's subject\n")
            + &hpub("kchat.guarded", &forged, "forged on the bare subject\n")),
        None,
    )?;
    ensure!(
        !said.contains("-ERR"),
        "nats-server refused the rogue: {said}"
    );
    let refused = "kchat_bridge_refused_total{room=\"guarded\",reason=\"forged_node\"}";
    for (node, name) in [(&mut pair.a, "node-a"), (&mut pair.b, "node-b")] {
        wait_for(
            &format!("{name} to count the forged message"),
            PATIENCE,
            || Ok(metric(node, refused)? >= 1.0),
        )
        .with_context(|| logs(node, name))?;
    }
    // Genuine traffic still crosses, both ways, after the rogue's.
    until_crossed(pair, true, "guarded")?;
    until_crossed(pair, false, "guarded")?;
    for node in [&mut pair.a, &mut pair.b] {
        for payload in ["forged on a's subject\n", "forged on the bare subject\n"] {
            let held = holding(node, "guarded", payload)?;
            ensure!(
                held.is_empty(),
                "{} relayed a rogue's message as node-b: {held:?}",
                node.name()
            );
        }
    }
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// On a JetStream room, a plain client publishes as node-a on a's
/// subject (the test server lets anyone: the NATS account is the trust
/// boundary) with the largest incarnation there is and random ones, each
/// with the largest sequence numbers: a's genuine messages still arrive
/// at b, before and after b's bridge restarts. Incarnations have no
/// order, so a forged one only adds an entry to what b remembers of a.
/// Under epochs, the forged message (no `Kchat-Epoch`: a's own epoch 0)
/// set a's place to that sequence number and every later message of a's
/// looked old.
fn incarnations_forged_mute_no_node() -> Result<()> {
    let mut guard = pair()?;
    let pair = &mut *guard;
    let vmtest = vmtest()?;
    let rooms = both_bridge_a_new_room_up(pair, "sealed", "block")?;
    pair.a
        .sh(&format!("{vmtest} job send sealed m 0 3"), STEP)?;
    expect_each(&mut pair.b, "sealed", "node-a", "m", 3, PATIENCE)?;
    let mut rogue = String::new();
    for incarnation in [u64::MAX, fastrand::u64(1..), fastrand::u64(1..)] {
        let mut forged = stamp_of("node-a", u64::MAX - 1);
        forged.push(format!("Kchat-Incarnation: {incarnation}"));
        rogue += &hpub("kchat.sealed.node-a", &forged, "muted?\n");
    }
    let said = raw_nats(4222, "", &rogue, None)?;
    ensure!(
        !said.contains("-ERR"),
        "nats-server refused the rogue: {said}"
    );
    // The forged messages are believed (a's subject): b relays them.
    wait_for("b to take the forged messages in", PATIENCE, || {
        Ok(!holding(&mut pair.b, "sealed", "muted?\n")?.is_empty())
    })
    .with_context(|| logs(&mut pair.b, "node-b"))?;
    pair.a
        .sh(&format!("{vmtest} job send sealed m 3 3"), STEP)?;
    expect_each(&mut pair.b, "sealed", "node-a", "m", 6, PATIENCE)
        .with_context(|| logs(&mut pair.b, "node-b"))?;
    // What b saved of the forged incarnations mutes nothing either.
    kill_bridge(&mut pair.b)?;
    start_bridge(&mut pair.b, "node-b", &rooms)?;
    pair.a
        .sh(&format!("{vmtest} job send sealed m 6 3"), STEP)?;
    expect_each(&mut pair.b, "sealed", "node-a", "m", 9, PATIENCE)
        .with_context(|| logs(&mut pair.b, "node-b"))?;
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    Ok(())
}

/// deploy/nats/nats-server.conf, as shipped (its store moved under the
/// test's directory, on another port): node-a's user may not publish on
/// node-b's subject nor create a stream; with the stream made by the admin
/// user, two bridges logged in as their nodes bridge a `block` room
/// through it, both ways, and on after the server restarts: the
/// permissions are all a bridge needs.
fn the_shipped_nats_config_lets_each_node_speak_only_for_itself() -> Result<()> {
    const PORT: u16 = 4224;
    const SHIPPED: &str = include_str!("../../deploy/nats/nats-server.conf");
    let mut guard = pair()?;
    let pair = &mut *guard;
    let config = SHIPPED.replace(
        "store_dir: /var/lib/nats",
        &format!("store_dir: {DIR}/js-perm"),
    );
    ensure!(
        config != SHIPPED,
        "the shipped config no longer names /var/lib/nats"
    );
    pair.a.sh(
        &format!("cat >{DIR}/nats-perm.conf <<'EOF'\n{config}\nEOF"),
        STEP,
    )?;
    let start_server = |a: &mut Node| {
        a.sh(
            &format!(
                "setsid nats-server -c {DIR}/nats-perm.conf -a {THIS_ADDR} -p {PORT} >>{DIR}/nats-perm.log 2>&1 </dev/null & {}",
                poll_sh(
                    &format!("(exec 3<>/dev/tcp/{THIS_ADDR}/{PORT}) 2>/dev/null"),
                    &format!("echo nats-server did not listen; cat {DIR}/nats-perm.log"),
                )
            ),
            STEP,
        )
    };
    let stop_server = |a: &mut Node| {
        a.sh(
            &format!(
                "pkill -9 -f 'nats-serve[r] -c {DIR}/nats-perm.conf'; \
                 while pgrep -f 'nats-serve[r] -c {DIR}/nats-perm.conf' >/dev/null; do sleep 0.05; done"
            ),
            STEP,
        )
    };
    start_server(&mut pair.a)?;
    let as_user = |user: &str| format!(",\"user\":\"{user}\",\"pass\":\"change-me-{user}\"");
    // Refused by the server, before any bridge sees it.
    let forged = stamp_of("node-b", 1);
    let said = raw_nats(
        PORT,
        &as_user("node-a"),
        &hpub("kchat.perm.node-b", &forged, "x\n"),
        None,
    )?;
    ensure!(
        said.contains("Permissions Violation for Publish to \"kchat.perm.node-b\""),
        "node-a's user published on node-b's subject: {said}"
    );
    let stream = "{\"name\":\"kchat~perm\",\"subjects\":[\"kchat.perm.*\"],\"storage\":\"file\",\
                  \"duplicate_window\":120000000000,\"max_age\":86400000000000}";
    let create = format!(
        "SUB _INBOX.kchat-test 1\r\nPUB $JS.API.STREAM.CREATE.kchat~perm _INBOX.kchat-test {}\r\n{stream}\r\n",
        stream.len()
    );
    let said = raw_nats(PORT, &as_user("node-a"), &create, None)?;
    ensure!(
        said.contains("Permissions Violation for Publish to \"$JS.API.STREAM.CREATE"),
        "node-a's user may create streams: {said}"
    );
    let said = raw_nats(
        PORT,
        &as_user("admin"),
        &create,
        Some("MSG _INBOX.kchat-test"),
    )?;
    ensure!(
        !said.contains("-ERR") && !said.contains("\"error\""),
        "the admin could not create the stream: {said}"
    );
    // Two bridges through it, each as its own user.
    let vmtest = vmtest()?;
    for node in [&mut pair.a, &mut pair.b] {
        node.sh(&format!("{vmtest} job mkroom perm block 1048576"), STEP)?;
    }
    let rooms = "[rooms.perm]\n";
    // Both started before either is waited for: a bridge whose stream
    // limits differ from its settings waits out a refused update.
    for (node, name) in [(&mut pair.a, "node-a"), (&mut pair.b, "node-b")] {
        start_bridge_with(
            node,
            name,
            rooms,
            &format!(
                "servers = [\"nats://{THIS_ADDR}:{PORT}\"]\nuser = \"{name}\"\npassword = \"change-me-{name}\"\n\
                 allow_plaintext_auth = true"
            ),
        )?;
    }
    for (node, name) in [(&mut pair.a, "node-a"), (&mut pair.b, "node-b")] {
        until_up(node, name, "perm")?;
    }
    let both_ways = |pair: &mut Pair, first: u64| -> Result<()> {
        pair.a
            .sh(&format!("{vmtest} job send perm a {first} 5"), STEP)?;
        pair.b
            .sh(&format!("{vmtest} job send perm b {first} 5"), STEP)?;
        expect_exactly(&mut pair.b, "perm", "node-a", "a", first + 5, PATIENCE)
            .with_context(|| logs(&mut pair.b, "node-b") + &logs(&mut pair.a, "node-a"))?;
        expect_exactly(&mut pair.a, "perm", "node-b", "b", first + 5, PATIENCE)
            .with_context(|| logs(&mut pair.a, "node-a") + &logs(&mut pair.b, "node-b"))
    };
    both_ways(pair, 0)?;
    // After the server restarts, the client makes each ordered consumer
    // again, this time named: the permissions must allow that too, or the
    // room stops at the restart.
    stop_server(&mut pair.a)?;
    start_server(&mut pair.a)?;
    both_ways(pair, 5)
        .context("after the NATS server restarted")
        .with_context(|| {
            pair.a
                .sh(&format!("tail -n 20 {DIR}/nats-perm.log"), STEP)
                .unwrap_or_default()
        })?;
    for node in [&mut pair.a, &mut pair.b] {
        kill_bridge(node)?;
    }
    stop_server(&mut pair.a)?;
    Ok(())
}
