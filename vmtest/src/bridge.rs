//! kchat-bridge on the real module and a real nats-server (Debian's), in one
//! guest: two bridges with their own node names, each on its own room, on
//! one subject, stand in for two machines. (Two guests, each with its own
//! kernel, are the next step; the relay semantics are the same.)

use crate::{
    client::{spec, Control, TempRoom},
    helper::{bin, wait_for, PATIENCE},
    module, Test,
};
use anyhow::{ensure, Context, Result};
use kchat_uapi::abi;
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub const TESTS: &[Test] = &[
    (
        "bridge::two_nodes_chat_exactly_once_and_nothing_loops",
        two_nodes_chat_exactly_once_and_nothing_loops,
    ),
    (
        "bridge::a_failing_state_save_is_an_error_state",
        a_failing_state_save_is_an_error_state,
    ),
    (
        "bridge::a_second_bridge_on_a_room_leaves_it_alone",
        a_second_bridge_on_a_room_leaves_it_alone,
    ),
    (
        "bridge::a_taken_metrics_address_stops_the_bridge",
        a_taken_metrics_address_stops_the_bridge,
    ),
    (
        "bridge::dashboards_use_only_real_bridge_metrics",
        dashboards_use_only_real_bridge_metrics,
    ),
    (
        "bridge::under_journald_entries_carry_room_node_and_error",
        under_journald_entries_carry_room_node_and_error,
    ),
    (
        "bridge::tls_with_client_certificates_carries_a_room_and_nothing_falls_back_to_clear",
        tls_with_client_certificates_carries_a_room_and_nothing_falls_back_to_clear,
    ),
];

const NATS_PORT: u16 = 14222;

/// Processes killed when the test ends, pass or fail.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn bridge(dir: &Path, node: &str, room: &str, metrics_port: u16) -> Result<Child> {
    bridge_on(dir, node, room, "fed", NATS_PORT, metrics_port)
}

/// A bridge `node` of `room` on `subject`, through the nats-server on
/// `nats_port`, its state under `dir/state-<node>`, its log `dir/<node>.log`.
fn bridge_on(
    dir: &Path,
    node: &str,
    room: &str,
    subject: &str,
    nats_port: u16,
    metrics_port: u16,
) -> Result<Child> {
    let nats = format!("servers = [\"nats://127.0.0.1:{nats_port}\"]");
    bridge_config(dir, node, room, subject, metrics_port, &nats)
}

fn bridge_config(
    dir: &Path,
    node: &str,
    room: &str,
    subject: &str,
    metrics_port: u16,
    nats: &str,
) -> Result<Child> {
    let config = dir.join(format!("{node}.toml"));
    std::fs::write(
        &config,
        format!(
            "node = \"{node}\"\nstate_dir = \"{}/state-{node}\"\n[nats]\n{nats}\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[rooms.{room}]\nsubject = \"{subject}\"\n",
            dir.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join(format!("{node}.log")))?;
    Command::new(bin("kchat-bridge")?)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting kchat-bridge")
}

fn metric(port: u16, series: &str) -> Result<f64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
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

/// Every frame a room fd in `READ_FRAMED_ORIGIN` has now.
fn origin_frames(
    room: &mut std::fs::File,
) -> Result<Vec<(abi::FrameHeader, abi::OriginHeader, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match room.read(&mut buf) {
            Ok(n) => {
                let frames = kchat_client::split_origin_frames(&buf[..n]).context("torn frames")?;
                out.extend(frames.into_iter().map(|(h, o, p)| (h, o, p.to_vec())));
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
            Err(err) => return Err(err.into()),
        }
    }
}

/// Writes probes into one room until one is relayed into the other (`way`
/// names the direction). A probe sent before the other bridge subscribed is
/// gone for good (core NATS): send another unless this one crosses soon.
fn probe_until_relayed(
    writer: &mut std::fs::File,
    reader: &mut std::fs::File,
    way: &str,
) -> Result<()> {
    wait_for(&format!("a probe to cross {way}"), PATIENCE, || {
        writer.write_all(b"probe")?;
        let crossed = wait_for("the probe", Duration::from_secs(2), || {
            Ok(origin_frames(reader)?
                .iter()
                .any(|(_, o, _)| o.flags & abi::ORIGIN_RELAYED != 0))
        });
        Ok(crossed.is_ok())
    })
}

fn two_nodes_chat_exactly_once_and_nothing_loops() -> Result<()> {
    module::ensure_loaded()?;
    let dir = Path::new("/run/kchat-test/bridge");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let a = TempRoom::create(spec("fed-a"))?;
    let b = TempRoom::create(spec("fed-b"))?;
    let mut running = Running(Vec::new());
    running.0.push(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &NATS_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (Debian's nats-server package)")?,
    );
    wait_for("nats-server to listen", PATIENCE, || {
        Ok(TcpStream::connect(("127.0.0.1", NATS_PORT)).is_ok())
    })?;
    running.0.push(bridge(dir, "node-a", "fed-a", 19478)?);
    running.0.push(bridge(dir, "node-b", "fed-b", 19479)?);
    let mut on_a = a.open_read_nonblock()?;
    kchat_client::set_read_mode(&on_a, abi::READ_FRAMED_ORIGIN)?;
    let mut on_b = b.open_read_nonblock()?;
    kchat_client::set_read_mode(&on_b, abi::READ_FRAMED_ORIGIN)?;
    // Both bridges are up once a probe crosses each way (core NATS drops
    // what is published before a subscriber is there).
    let mut writer_a = a.open_write()?;
    let mut writer_b = b.open_write()?;
    let logs = || {
        format!(
            "node-a: {}\nnode-b: {}",
            std::fs::read_to_string(dir.join("node-a.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("node-b.log")).unwrap_or_default()
        )
    };
    probe_until_relayed(&mut writer_a, &mut on_b, "a to b").with_context(logs)?;
    probe_until_relayed(&mut writer_b, &mut on_a, "b to a").with_context(logs)?;
    // Probes still in flight land before the count starts: everything one
    // bridge published, the other relayed.
    let published_a = || metric(19478, "kchat_bridge_published_total{room=\"fed-a\"}");
    let published_b = || metric(19479, "kchat_bridge_published_total{room=\"fed-b\"}");
    let relayed_in_a = || metric(19478, "kchat_bridge_relayed_total{room=\"fed-a\"}");
    let relayed_in_b = || metric(19479, "kchat_bridge_relayed_total{room=\"fed-b\"}");
    // A probe published before the other bridge subscribed is gone for
    // good (core NATS), so the counts need not ever match; one marker
    // each way, sent now that both are subscribed, lands after every probe
    // still in flight (one publisher to one subscriber keeps order).
    for (writer, reader, marker) in [
        (&mut writer_a, &mut on_b, &b"settled from a"[..]),
        (&mut writer_b, &mut on_a, &b"settled from b"[..]),
    ] {
        writer.write_all(marker)?;
        wait_for("a marker after the probes", PATIENCE, || {
            Ok(origin_frames(reader)?
                .iter()
                .any(|(_, o, payload)| o.flags & abi::ORIGIN_RELAYED != 0 && payload == marker))
        })
        .with_context(logs)?;
    }
    let _ = origin_frames(&mut on_a)?;
    let _ = origin_frames(&mut on_b)?;
    let before_a = Control::open()?.info("fed-a")?.msgs_in;
    let before_b = Control::open()?.info("fed-b")?.msgs_in;
    let (relayed_a, relayed_b) = (relayed_in_a()?, relayed_in_b()?);
    let (sent_a, sent_b) = (published_a()?, published_b()?);

    // Traffic both ways at once.
    const N: u64 = 500;
    for n in 0..N {
        writer_a.write_all(format!("from a {n}\n").as_bytes())?;
        writer_b.write_all(format!("from b {n}\n").as_bytes())?;
    }
    wait_for("every message to cross", PATIENCE, || {
        Ok(relayed_in_a()? >= relayed_a + N as f64 && relayed_in_b()? >= relayed_b + N as f64)
    })
    .with_context(logs)?;
    // On b: a's messages, relayed, from node-a with a's stamp, each once.
    let frames = origin_frames(&mut on_b)?;
    let relayed: Vec<_> = frames
        .iter()
        .filter(|(_, o, _)| o.flags & abi::ORIGIN_RELAYED != 0)
        .collect();
    ensure!(
        relayed.len() as u64 == N,
        "b got {} relayed messages, not {N}",
        relayed.len()
    );
    for (n, (header, origin, payload)) in relayed.iter().enumerate() {
        ensure!(
            *payload == format!("from a {n}\n").as_bytes()
                && abi::field_name(&origin.node) == Some(&b"node-a"[..])
                && origin.pid == std::process::id()
                && origin.uid == 0,
            "relayed message {n} on b: {origin:?} {payload:?}"
        );
        // The local stamp is the bridge's, never the remote writer's.
        ensure!(
            header.pid != std::process::id(),
            "a relayed message stamped as its remote writer"
        );
    }
    // Nothing looped: each room holds its own N and the other's N, and no
    // bridge published a relayed message. (Signed: a counter that went back
    // must show as such, not overflow.)
    let msgs_a = Control::open()?
        .info("fed-a")?
        .msgs_in
        .wrapping_sub(before_a) as i64;
    let msgs_b = Control::open()?
        .info("fed-b")?
        .msgs_in
        .wrapping_sub(before_b) as i64;
    ensure!(
        msgs_a == 2 * N as i64 && msgs_b == 2 * N as i64,
        "rooms took {msgs_a} and {msgs_b} messages, not {}",
        2 * N
    );
    ensure!(
        published_a()? - sent_a == N as f64 && published_b()? - sent_b == N as f64,
        "the bridges published {} and {} messages, not {N} each: relayed ones went out again",
        published_a()? - sent_a,
        published_b()? - sent_b
    );
    // A message no bridge sent (no headers) is refused, counted, and the
    // bridges go on.
    let mut raw = TcpStream::connect(("127.0.0.1", NATS_PORT))?;
    raw.write_all(b"CONNECT {\"verbose\":false}\r\nPUB kchat.fed.stray 5\r\nhello\r\nPING\r\n")?;
    wait_for("the stray message to be refused", PATIENCE, || {
        Ok(metric(
            19479,
            "kchat_bridge_dropped_total{room=\"fed-b\",reason=\"malformed\"}",
        )? >= 1.0)
    })?;
    writer_a.write_all(b"after the stray one\n")?;
    wait_for("traffic after a bad message", PATIENCE, || {
        Ok(origin_frames(&mut on_b)?
            .iter()
            .any(|(_, _, p)| p == b"after the stray one\n"))
    })?;
    drop(a);
    drop(b);
    Ok(())
}

fn fresh_dir(name: &str) -> Result<std::path::PathBuf> {
    let dir = Path::new("/run/kchat-test").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// nats-server on `port`, with JetStream (its store in `dir/js`) if `js`.
fn nats_server(dir: &Path, port: u16, js: bool) -> Result<Child> {
    let mut command = Command::new("nats-server");
    command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    if js {
        command.arg("-js").arg("-sd").arg(dir.join("js"));
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nats.log"))?)
        .spawn()
        .context("starting nats-server (Debian's nats-server package)")?;
    wait_for("nats-server to listen", PATIENCE, || {
        Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
    })?;
    Ok(child)
}

fn log_of(dir: &Path, node: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{node}.log"))).unwrap_or_default()
}

/// `kchat-bridge status --json` of the bridge `node` in `dir`.
fn status_json(dir: &Path, node: &str) -> Result<serde_json::Value> {
    let out = Command::new("timeout")
        .arg(PATIENCE.as_secs().to_string())
        .arg(bin("kchat-bridge")?)
        .arg("--config")
        .arg(dir.join(format!("{node}.toml")))
        .args(["status", "--json"])
        .output()?;
    ensure!(
        out.status.success(),
        "kchat-bridge status exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("status printed {}", String::from_utf8_lossy(&out.stdout)))
}

/// A JetStream room whose state file cannot be saved (its path is a
/// directory: renaming over it fails, as root too) is in an error state:
/// `kchat_bridge_state_save_failing` is 1 and the failures are counted,
/// `status` says so, and the log says it once, not on every 200 ms
/// checkpoint; once saves work again, all of it clears and the log says
/// that once.
fn a_failing_state_save_is_an_error_state() -> Result<()> {
    module::ensure_loaded()?;
    const PORT: u16 = 14231;
    const METRICS: u16 = 19481;
    let dir = fresh_dir("savefail")?;
    let room = TempRoom::create(abi::RoomSpec {
        policy: abi::POLICY_BLOCK,
        ..spec("save-fail")
    })?;
    let mut running = Running(vec![nats_server(&dir, PORT, true)?]);
    running.0.push(bridge_on(
        &dir,
        "node-s",
        "save-fail",
        "savefail",
        PORT,
        METRICS,
    )?);
    let logs = || log_of(&dir, "node-s");
    let series = |name: &str| format!("kchat_bridge_{name}{{room=\"save-fail\"}}");
    let file = dir.join("state-node-s/save-fail.json");
    wait_for("the room's first state save", PATIENCE, || {
        Ok(file.is_file())
    })
    .with_context(logs)?;
    let mut writer = room.open_write()?;
    writer.write_all(b"before")?;
    wait_for("a message to be published", PATIENCE, || {
        Ok(metric(METRICS, &series("published_total"))? >= 1.0)
    })
    .with_context(logs)?;
    ensure!(
        metric(METRICS, &series("state_save_failing"))? == 0.0,
        "saves fail before anything was done to them:\n{}",
        logs()
    );
    std::fs::remove_file(&file)?;
    std::fs::create_dir(&file)?;
    // Checkpoints come every 200 ms, traffic or not.
    wait_for("five failed saves", PATIENCE, || {
        Ok(metric(METRICS, &series("state_save_failures_total"))? >= 5.0)
    })
    .with_context(|| format!("no failed saves counted; log:\n{}", logs()))?;
    ensure!(
        metric(METRICS, &series("state_save_failing"))? == 1.0,
        "failing saves do not show in kchat_bridge_state_save_failing"
    );
    let status = status_json(&dir, "node-s")?;
    ensure!(
        status["rooms"]["save-fail"]["state_save_failing"] == true,
        "status does not show the failing saves: {status}"
    );
    let said = |what: &str| logs().lines().filter(|l| l.contains(what)).count();
    let failed = "cannot save the room's state";
    ensure!(
        said(failed) == 1,
        "the log says {failed:?} {} times over five failed saves, not once:\n{}",
        said(failed),
        logs()
    );
    std::fs::remove_dir(&file)?;
    wait_for("saves to work again", PATIENCE, || {
        Ok(metric(METRICS, &series("state_save_failing"))? == 0.0 && file.is_file())
    })
    .with_context(logs)?;
    ensure!(
        said(failed) == 1 && said("the room's state is saved again") == 1,
        "the log does not say the failure and the recovery once each:\n{}",
        logs()
    );
    let status = status_json(&dir, "node-s")?;
    ensure!(
        status["rooms"]["save-fail"]["state_save_failing"] == false,
        "status still shows failing saves: {status}"
    );
    drop(running);
    drop(room);
    Ok(())
}

/// Two bridges on one machine bridging one room: the second leaves it alone
/// (`kchat_bridge_room_locked`, `status`, one log line), so what another
/// node sends lands once and what is written here is published once;
/// when the first bridge goes, the second takes the room over. Here
/// `dup-far` with its bridge stands in for the other machine.
fn a_second_bridge_on_a_room_leaves_it_alone() -> Result<()> {
    module::ensure_loaded()?;
    const PORT: u16 = 14232;
    let (first, second, far) = (19482, 19483, 19484);
    let dir = fresh_dir("duplock")?;
    let here = TempRoom::create(spec("dup-here"))?;
    let there = TempRoom::create(spec("dup-far"))?;
    let mut running = Running(vec![nats_server(&dir, PORT, false)?]);
    running
        .0
        .push(bridge_on(&dir, "node-x", "dup-here", "dup", PORT, first)?);
    running
        .0
        .push(bridge_on(&dir, "node-far", "dup-far", "dup", PORT, far)?);
    let logs = || {
        ["node-x", "node-y", "node-far"]
            .iter()
            .map(|node| format!("{node}:\n{}", log_of(&dir, node)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let up = |port: u16, room: &str| -> Result<bool> {
        Ok(metric(port, &format!("kchat_bridge_room_up{{room=\"{room}\"}}"))? == 1.0)
    };
    let answers =
        |port: u16| -> Result<bool> { Ok(TcpStream::connect(("127.0.0.1", port)).is_ok()) };
    wait_for("the first bridge's metrics", PATIENCE, || answers(first)).with_context(logs)?;
    wait_for("the first bridge to bridge dup-here", PATIENCE, || {
        up(first, "dup-here")
    })
    .with_context(logs)?;
    running
        .0
        .push(bridge_on(&dir, "node-y", "dup-here", "dup", PORT, second)?);
    let locked = || metric(second, "kchat_bridge_room_locked{room=\"dup-here\"}");
    wait_for("the second bridge's metrics", PATIENCE, || answers(second)).with_context(logs)?;
    wait_for(
        "the second bridge to leave dup-here alone",
        PATIENCE,
        || Ok(locked()? == 1.0),
    )
    .with_context(|| {
        format!(
            "the second bridge does not say the room is held; logs:\n{}",
            logs()
        )
    })?;
    let status = status_json(&dir, "node-y")?;
    ensure!(
        status["rooms"]["dup-here"]["locked_elsewhere"] == true
            && status["rooms"]["dup-here"]["up"] == false,
        "the second bridge's status: {status}"
    );
    let mut on_here = here.open_read_nonblock()?;
    kchat_client::set_read_mode(&on_here, abi::READ_FRAMED_ORIGIN)?;
    let mut on_far = there.open_read_nonblock()?;
    kchat_client::set_read_mode(&on_far, abi::READ_FRAMED_ORIGIN)?;
    let mut writer_here = here.open_write()?;
    let mut writer_far = there.open_write()?;
    // Both ways up: a probe crosses each way (core NATS drops what is sent
    // before a subscriber is there).
    probe_until_relayed(&mut writer_far, &mut on_here, "far to here").with_context(logs)?;
    probe_until_relayed(&mut writer_here, &mut on_far, "here to far").with_context(logs)?;
    const N: usize = 200;
    for n in 0..N {
        writer_far.write_all(format!("far {n}").as_bytes())?;
        writer_here.write_all(format!("here {n}").as_bytes())?;
    }
    // Each side's last message closes its count; copies relayed by a
    // second bridge would come with the first's, each subscriber getting
    // every message.
    writer_far.write_all(b"far end")?;
    writer_here.write_all(b"here end")?;
    let mut got_here = Vec::new();
    let mut got_far = Vec::new();
    wait_for("both ends to cross", PATIENCE, || {
        got_here.extend(origin_frames(&mut on_here)?);
        got_far.extend(origin_frames(&mut on_far)?);
        let seen = |got: &[(abi::FrameHeader, abi::OriginHeader, Vec<u8>)], end: &[u8]| {
            got.iter().any(|(_, _, p)| p == end)
        };
        Ok(seen(&got_here, b"far end") && seen(&got_far, b"here end"))
    })
    .with_context(logs)?;
    let count = |got: &[(abi::FrameHeader, abi::OriginHeader, Vec<u8>)], prefix: &str| {
        got.iter()
            .filter(|(_, o, p)| {
                o.flags & abi::ORIGIN_RELAYED != 0 && p.starts_with(prefix.as_bytes())
            })
            .count()
    };
    ensure!(
        count(&got_here, "far ") == N + 1 && count(&got_far, "here ") == N + 1,
        "dup-here got {} of far's {} messages relayed, dup-far {} of here's: a second bridge doubled them\n{}",
        count(&got_here, "far "),
        N + 1,
        count(&got_far, "here "),
        logs()
    );
    let relayed_by_second = metric(second, "kchat_bridge_relayed_total{room=\"dup-here\"}")?;
    let published_by_second = metric(second, "kchat_bridge_published_total{room=\"dup-here\"}")?;
    ensure!(
        relayed_by_second == 0.0 && published_by_second == 0.0,
        "the second bridge relayed {relayed_by_second} and published {published_by_second} messages"
    );
    let refused = log_of(&dir, "node-y")
        .lines()
        .filter(|l| l.contains("another kchat-bridge on this machine"))
        .count();
    ensure!(
        refused == 1,
        "the second bridge said {refused} times that the room is held, not once:\n{}",
        logs()
    );
    // The first bridge goes: the second takes the room over.
    let first_bridge = &mut running.0[1];
    first_bridge.kill()?;
    first_bridge.wait()?;
    wait_for("the second bridge to take dup-here over", PATIENCE, || {
        Ok(locked()? == 0.0 && up(second, "dup-here")?)
    })
    .with_context(logs)?;
    drop(running);
    drop(here);
    drop(there);
    Ok(())
}

/// A bridge whose metrics address is taken does not run unwatched: it
/// exits non-zero at once, naming the address and what to do.
fn a_taken_metrics_address_stops_the_bridge() -> Result<()> {
    const PORT: u16 = 19485;
    let dir = fresh_dir("metricsbind")?;
    let _taken = std::net::TcpListener::bind(("127.0.0.1", PORT))?;
    let mut running = Running(vec![bridge_on(
        &dir,
        "node-m",
        "metrics-taken",
        "metrics",
        // No server here: the bind comes first.
        14239,
        PORT,
    )?]);
    let child = &mut running.0[0];
    let mut status = None;
    wait_for("the bridge to exit", PATIENCE, || {
        status = child.try_wait()?;
        Ok(status.is_some())
    })
    .with_context(|| {
        format!(
            "a bridge with its metrics address taken still runs; log:\n{}",
            log_of(&dir, "node-m")
        )
    })?;
    let log = log_of(&dir, "node-m");
    ensure!(
        status.is_some_and(|s| !s.success()),
        "the bridge exited {status:?}: {log}"
    );
    ensure!(
        log.contains(&format!("127.0.0.1:{PORT}")) && log.contains("[metrics] listen"),
        "the bridge's error does not name the address and what to do: {log}"
    );
    Ok(())
}

/// Every `kchat_bridge_*` name the Grafana dashboard and the alert rules
/// use is a series a real bridge serves: a family the bridge registers (a
/// counter's samples end in `_total`), whether or not it has a sample yet
/// (refusals, say, appear with their first one).
fn dashboards_use_only_real_bridge_metrics() -> Result<()> {
    const METRICS: u16 = 19486;
    let dir = fresh_dir("bridgedash")?;
    // No NATS server: the metrics are served all the same.
    let mut running = Running(vec![bridge_on(
        &dir,
        "node-d",
        "dash-room",
        "dash",
        14238,
        METRICS,
    )?]);
    wait_for("the bridge's metrics", PATIENCE, || {
        Ok(TcpStream::connect(("127.0.0.1", METRICS)).is_ok())
    })
    .with_context(|| log_of(&dir, "node-d"))?;
    let mut stream = TcpStream::connect(("127.0.0.1", METRICS))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut scrape = String::new();
    stream.read_to_string(&mut scrape)?;
    let mut served = std::collections::BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split(' ');
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            served.insert(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            });
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next()
        {
            served.insert(name.to_owned());
        }
    }
    ensure!(
        served.contains("kchat_bridge_connected"),
        "the scrape has no kchat_bridge_connected:\n{scrape}"
    );
    for (file, used) in crate::helper::dashboard_metric_names("kchat_bridge_")? {
        for name in &used {
            ensure!(
                served.contains(name.as_str()),
                "{file} uses {name}, which kchat-bridge does not serve:\n{scrape}"
            );
        }
    }
    let bridge = &mut running.0[0];
    ensure!(
        bridge.try_wait()?.is_none(),
        "the bridge exited:\n{}",
        log_of(&dir, "node-d")
    );
    Ok(())
}

/// The fields of one entry in the journal's native protocol: `NAME=value`
/// lines, or `NAME`, a newline, a 64-bit little-endian length, the value
/// and a newline (systemd.io/JOURNAL_NATIVE_PROTOCOL).
fn journal_fields(mut data: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some(end) = data.iter().position(|&b| b == b'\n') {
        let line = &data[..end];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            ));
            data = &data[end + 1..];
            continue;
        }
        let rest = &data[end + 1..];
        let Some(len) = rest
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .and_then(|len| usize::try_from(len).ok())
        else {
            break;
        };
        let Some(value) = rest.get(8..8 + len) else {
            break;
        };
        fields.push((
            String::from_utf8_lossy(line).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
        data = rest.get(8 + len + 1..).unwrap_or_default();
    }
    fields
}

/// Under systemd (stderr is the journal stream `JOURNAL_STREAM` names) the
/// bridge sends its entries to the journal in the journal's native
/// protocol with their fields: `ROOM`, `NODE` and `ERROR`, as kchatd does.
/// The plain guest runs no journald: the test binds the journal's socket
/// itself and reads what the bridge sends there.
fn under_journald_entries_carry_room_node_and_error() -> Result<()> {
    use std::os::unix::{fs::MetadataExt, net::UnixDatagram};
    const SOCKET: &str = "/run/systemd/journal/socket";
    ensure!(
        !Path::new(SOCKET).exists(),
        "{SOCKET} exists: a journald runs here (run this test in the plain guest)"
    );
    let dir = fresh_dir("journald")?;
    std::fs::create_dir_all("/run/systemd/journal")?;
    let journal = UnixDatagram::bind(SOCKET)?;
    journal.set_read_timeout(Some(PATIENCE))?;
    let outcome = (|| -> Result<()> {
        let config = dir.join("node-j.toml");
        std::fs::write(
            &config,
            "node = \"node-j\"\n[nats]\nservers = [\"nats://127.0.0.1:14237\"]\n\
             [metrics]\nlisten = \"127.0.0.1:19487\"\n[rooms.no-such-room]\n",
        )?;
        let stderr = std::fs::File::create(dir.join("node-j.log"))?;
        let meta = stderr.metadata()?;
        let mut running = Running(vec![Command::new(bin("kchat-bridge")?)
            .arg("--config")
            .arg(&config)
            .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("starting kchat-bridge")?]);
        // The room does not exist: "room not bridged", with its error.
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut buf = vec![0u8; 1 << 16];
        let entry = loop {
            ensure!(
                std::time::Instant::now() < deadline,
                "no journal entry with ROOM, NODE and ERROR within {PATIENCE:?}; got:\n{}\nstderr:\n{}",
                seen.join("\n---\n"),
                log_of(&dir, "node-j")
            );
            let n = journal.recv(&mut buf).with_context(|| {
                format!(
                    "nothing sent to the journal; got:\n{}\nstderr:\n{}",
                    seen.join("\n---\n"),
                    log_of(&dir, "node-j")
                )
            })?;
            let fields = journal_fields(&buf[..n]);
            let has = |name: &str, value: &dyn Fn(&str) -> bool| {
                fields.iter().any(|(n, v)| n == name && value(v))
            };
            if has("ROOM", &|v| v == "no-such-room")
                && has("NODE", &|v| v == "node-j")
                && has("ERROR", &|v| v.contains("no-such-room"))
            {
                break fields;
            }
            seen.push(format!("{fields:?}"));
        };
        ensure!(
            entry
                .iter()
                .any(|(n, v)| n == "MESSAGE" && v.starts_with("room not bridged")),
            "the entry: {entry:?}"
        );
        // Stderr is the journal's: nothing is written there twice.
        ensure!(
            log_of(&dir, "node-j").is_empty(),
            "the bridge also wrote to stderr: {}",
            log_of(&dir, "node-j")
        );
        running.0[0].kill()?;
        Ok(())
    })();
    let _ = std::fs::remove_file(SOCKET);
    outcome
}

/// A CA, a server certificate for 127.0.0.1 and client certificates, made
/// for the test (PEM files in `dir`: ca.pem, server.pem/.key, NAME.pem/.key).
fn make_certificates(dir: &Path, clients: &[&str]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "kchat test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let mut leaves = vec![(
        "server",
        vec!["127.0.0.1".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )];
    leaves.extend(clients.iter().map(|name| {
        (
            *name,
            vec![format!("{name}.kchat.test")],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }));
    for (name, names, usage) in leaves {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

/// A nats-server that speaks only TLS and wants a client certificate from
/// the test's CA and a token; two bridges with certificates (and the
/// token, which goes only inside TLS) carry a room between them. A bridge
/// given the CA but pointed at a plain server refuses to talk in clear
/// (the CA alone did not turn TLS on before: it connected in clear), and
/// `--check` refuses a token bound for another machine without TLS.
fn tls_with_client_certificates_carries_a_room_and_nothing_falls_back_to_clear() -> Result<()> {
    const TLS_PORT: u16 = 14322;
    const PLAIN_PORT: u16 = 14323;
    module::ensure_loaded()?;
    let dir = &fresh_dir("bridge-tls")?;
    make_certificates(dir, &["node-a", "node-b"])?;
    let d = dir.display();
    std::fs::write(
        dir.join("nats-tls.conf"),
        format!(
            "listen: 127.0.0.1:{TLS_PORT}\n\
             tls {{\n  cert_file: \"{d}/server.pem\"\n  key_file: \"{d}/server.key\"\n  \
             ca_file: \"{d}/ca.pem\"\n  verify: true\n  timeout: 10\n}}\n\
             authorization {{ token: \"s3cret\" }}\n"
        ),
    )?;
    let a = TempRoom::create(spec("tls-a"))?;
    let b = TempRoom::create(spec("tls-b"))?;
    let c = TempRoom::create(spec("tls-c"))?;
    let mut running = Running(vec![Command::new("nats-server")
        .arg("-c")
        .arg(dir.join("nats-tls.conf"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nats-tls.log"))?)
        .spawn()
        .context("starting nats-server (Debian's nats-server package)")?]);
    running.0.push(nats_server(dir, PLAIN_PORT, false)?);
    wait_for("the TLS nats-server to listen", PATIENCE, || {
        Ok(TcpStream::connect(("127.0.0.1", TLS_PORT)).is_ok())
    })?;
    let tls = |node: &str| {
        format!(
            "servers = [\"nats://127.0.0.1:{TLS_PORT}\"]\ntoken = \"s3cret\"\n\
             tls_ca = \"{d}/ca.pem\"\ntls_cert = \"{d}/{node}.pem\"\ntls_key = \"{d}/{node}.key\""
        )
    };
    running.0.push(bridge_config(
        dir,
        "node-a",
        "tls-a",
        "fed",
        19578,
        &tls("node-a"),
    )?);
    running.0.push(bridge_config(
        dir,
        "node-b",
        "tls-b",
        "fed",
        19579,
        &tls("node-b"),
    )?);
    // The CA given, the server plain: no connection in clear.
    running.0.push(bridge_config(
        dir,
        "node-c",
        "tls-c",
        "fed",
        19580,
        &format!("servers = [\"nats://127.0.0.1:{PLAIN_PORT}\"]\ntls_ca = \"{d}/ca.pem\""),
    )?);
    let logs = || {
        ["node-a", "node-b", "node-c", "nats-tls"]
            .iter()
            .map(|name| format!("{name}: {}\n", log_of(dir, name)))
            .collect::<String>()
    };
    let mut on_b = b.open_read_nonblock()?;
    kchat_client::set_read_mode(&on_b, abi::READ_FRAMED_ORIGIN)?;
    let mut writer_a = a.open_write()?;
    wait_for("a message to cross over TLS", PATIENCE, || {
        writer_a.write_all(b"over tls\n")?;
        let crossed = wait_for("this one", Duration::from_secs(2), || {
            Ok(origin_frames(&mut on_b)?.iter().any(|(_, o, p)| {
                o.flags & abi::ORIGIN_RELAYED != 0
                    && abi::field_name(&o.node) == Some(&b"node-a"[..])
                    && p == b"over tls\n"
            }))
        });
        Ok(crossed.is_ok())
    })
    .with_context(logs)?;
    ensure!(
        metric(19578, "kchat_bridge_connected")? == 1.0
            && metric(19579, "kchat_bridge_connected")? == 1.0,
        "the TLS bridges do not report themselves connected"
    );
    // node-c: up (its metrics answer) but never connected, and it says why.
    wait_for("node-c to say it wants TLS", PATIENCE, || {
        Ok(log_of(dir, "node-c").to_lowercase().contains("tls"))
    })
    .with_context(logs)?;
    ensure!(
        metric(19580, "kchat_bridge_connected")? == 0.0,
        "a bridge given a CA connected to a plain server in clear\n{}",
        logs()
    );
    // A token for another machine without TLS: refused before it runs.
    let config = dir.join("clear.toml");
    std::fs::write(
        &config,
        "node = \"node-d\"\n[nats]\nservers = [\"nats://10.0.0.5:4222\"]\ntoken = \"s3cret\"\n[rooms.tls-c]\n",
    )?;
    let check = Command::new(bin("kchat-bridge")?)
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()?;
    let said = String::from_utf8_lossy(&check.stderr);
    ensure!(
        !check.status.success() && said.contains("in clear to nats://10.0.0.5:4222"),
        "kchat-bridge --check took a token bound for another machine in clear: {:?} {said}",
        check.status
    );
    drop((a, b, c));
    Ok(())
}
