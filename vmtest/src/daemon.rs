//! kchatd and kchatctl against the real module: readiness, reconcile,
//! runtime rooms, restarts, module reloads, metrics, authorisation and bad
//! configs. The daemon runs from the same target directory as this suite,
//! with its socket, state and config in a scratch directory per test.

use crate::{
    client::{open, Control},
    helper::{bin, wait_for, NOBODY, PATIENCE},
    module, Test,
};
use anyhow::{bail, ensure, Context, Result};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde_json::Value;
use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::MetadataExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU16, Ordering},
};

pub const TESTS: &[Test] = &[
    (
        "daemon::starts_ready_and_creates_config_rooms",
        starts_ready_and_creates_config_rooms,
    ),
    (
        "daemon::tells_systemd_about_reloads_stops_and_the_watchdog",
        tells_systemd_about_reloads_stops_and_the_watchdog,
    ),
    (
        "daemon::create_chat_list_limit_delete",
        create_chat_list_limit_delete,
    ),
    (
        "daemon::events_follow_rooms_and_throttling",
        events_follow_rooms_and_throttling,
    ),
    (
        "daemon::restart_mid_traffic_loses_nothing",
        restart_mid_traffic_loses_nothing,
    ),
    (
        "daemon::module_reload_restores_rooms",
        module_reload_restores_rooms,
    ),
    (
        "daemon::metrics_match_the_traffic",
        metrics_match_the_traffic,
    ),
    (
        "daemon::unprivileged_callers_may_read_not_change",
        unprivileged_callers_may_read_not_change,
    ),
    (
        "daemon::dashboards_use_only_real_metrics",
        dashboards_use_only_real_metrics,
    ),
    (
        "daemon::the_admin_group_may_change_rooms",
        the_admin_group_may_change_rooms,
    ),
    (
        "daemon::bad_configs_are_refused_and_reload_keeps_the_old",
        bad_configs_are_refused_and_reload_keeps_the_old,
    ),
    (
        "daemon::apply_shows_then_makes_the_diff",
        apply_shows_then_makes_the_diff,
    ),
    (
        "daemon::bad_requests_get_errors_and_kchatd_keeps_serving",
        bad_requests_get_errors_and_kchatd_keeps_serving,
    ),
    (
        "daemon::admin_rights_follow_the_groups_a_caller_holds",
        admin_rights_follow_the_groups_a_caller_holds,
    ),
    (
        "daemon::idle_connections_from_one_user_do_not_lock_out_admins",
        idle_connections_from_one_user_do_not_lock_out_admins,
    ),
    (
        "daemon::a_reload_keeps_the_locked_state_dir",
        a_reload_keeps_the_locked_state_dir,
    ),
    (
        "daemon::partial_limit_changes_at_once_both_land",
        partial_limit_changes_at_once_both_land,
    ),
    (
        "daemon::kchatctl_gives_up_on_a_full_backlog_within_its_timeout",
        kchatctl_gives_up_on_a_full_backlog_within_its_timeout,
    ),
    (
        "daemon::module_limits_are_reconciled_every_pass",
        module_limits_are_reconciled_every_pass,
    ),
    (
        "daemon::config_rooms_come_back_with_reset",
        config_rooms_come_back_with_reset,
    ),
    (
        "daemon::a_second_kchatd_on_the_same_state_is_refused",
        a_second_kchatd_on_the_same_state_is_refused,
    ),
    (
        "daemon::a_client_that_never_reads_is_hung_up_on",
        a_client_that_never_reads_is_hung_up_on,
    ),
    (
        "daemon::a_manager_that_reads_no_notifications_holds_up_nothing",
        a_manager_that_reads_no_notifications_holds_up_nothing,
    ),
    (
        "daemon::a_reload_that_cannot_be_applied_is_not_successful",
        a_reload_that_cannot_be_applied_is_not_successful,
    ),
];

/// Each daemon gets its own metrics port, so a restart never waits for the
/// old one's socket to go.
static NEXT_PORT: AtomicU16 = AtomicU16::new(19477);

/// A kchatd of this test, killed when dropped.
pub struct Kchatd {
    child: Child,
    dir: PathBuf,
    port: u16,
    /// Where kchatd sends its sd_notify datagrams.
    notify: UnixDatagram,
}

impl Kchatd {
    fn config_path(dir: &Path) -> PathBuf {
        dir.join("kchatd.toml")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("kchatd.sock")
    }

    /// A fresh scratch directory with a config: the common keys plus `rooms`
    /// (TOML appended as is).
    pub fn prepare(name: &str, rooms: &str) -> Result<PathBuf> {
        let dir = PathBuf::from("/run/kchat-test").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Self::write_config(&dir, rooms)?;
        Ok(dir)
    }

    fn write_config(dir: &Path, rooms: &str) -> Result<()> {
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let text = format!(
            "socket = \"{dir}/kchatd.sock\"\nstate_dir = \"{dir}/state\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{rooms}",
            dir = dir.display()
        );
        std::fs::write(Self::config_path(dir), text)?;
        Ok(())
    }

    fn port_of(dir: &Path) -> Result<u16> {
        let text = std::fs::read_to_string(Self::config_path(dir))?;
        let line = text
            .lines()
            .find(|l| l.starts_with("listen"))
            .context("config without listen")?;
        let port = line.trim_end_matches('"').rsplit(':').next().unwrap_or("");
        port.parse().context("port in config")
    }

    /// Starts kchatd on `dir` and waits until it tells systemd (here: this
    /// test, on a NOTIFY_SOCKET) that it is ready.
    pub fn start(dir: &Path) -> Result<Kchatd> {
        Self::start_with(dir, &[])
    }

    fn start_with(dir: &Path, env: &[(&str, &str)]) -> Result<Kchatd> {
        let notify_path = dir.join("notify");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        // Generous: on the KASAN kernel under TCG, with the soak's dozens of
        // busy clients sharing two vCPUs, exec and start-up alone took over
        // 30 s once.
        notify.set_read_timeout(Some(PATIENCE))?;
        // Through a shell that execs kchatd, so WATCHDOG_PID can name
        // kchatd's pid as systemd sets it (the watchdog is off without it).
        let child = Command::new("sh")
            .args(["-c", "export WATCHDOG_PID=$$; exec \"$@\"", "sh"])
            .arg(bin("kchatd")?)
            .arg("--config")
            .arg(Self::config_path(dir))
            .args(["--interval", "0.2"])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(File::create(dir.join("kchatd.log"))?)
            .spawn()
            .context("starting kchatd")?;
        let mut daemon = Kchatd {
            child,
            dir: dir.to_owned(),
            port: Self::port_of(dir)?,
            notify,
        };
        daemon.wait_notify("READY=1")?;
        Ok(daemon)
    }

    /// Waits for a notification datagram with the line `want`.
    /// Waits for a notification line that starts with `want`.
    fn wait_notify(&mut self, want: &str) -> Result<()> {
        self.wait_notify_all(&[want])
    }

    /// Waits (at most `PATIENCE` in all) for one notification datagram with
    /// a line starting with each of `wanted`.
    fn wait_notify_all(&mut self, wanted: &[&str]) -> Result<()> {
        let want = wanted.join(" + ");
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut buf = [0u8; 256];
        loop {
            // Other notifications (the watchdog's) keep coming: bound the
            // whole wait, not each read.
            if std::time::Instant::now() > deadline {
                bail!(
                    "kchatd did not notify {want} within {PATIENCE:?}; its log:\n{}",
                    self.log()
                );
            }
            let n = self.notify.recv(&mut buf).with_context(|| {
                format!(
                    "kchatd did not notify {want}; its log:\n{}\nwhere its threads are:\n{}",
                    self.log(),
                    self.threads()
                )
            })?;
            let text = String::from_utf8_lossy(&buf[..n]);
            if wanted
                .iter()
                .all(|want| text.lines().any(|l| l.starts_with(want)))
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("kchatd exited with {status}:\n{}", self.log());
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kchatd.log")).unwrap_or_default()
    }

    /// Each thread's state and kernel stack, to tell a stuck kchatd (a
    /// stack in kchat.ko) from a starved one (running or runnable).
    fn threads(&self) -> String {
        let tasks = format!("/proc/{}/task", self.child.id());
        let mut out = String::new();
        for task in std::fs::read_dir(&tasks).into_iter().flatten().flatten() {
            let path = task.path();
            let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default();
            let state = read("status")
                .lines()
                .filter(|l| l.starts_with("Name:") || l.starts_with("State:"))
                .collect::<Vec<_>>()
                .join(" ");
            out += &format!("{} {state}\n{}", path.display(), read("stack"));
        }
        out
    }

    fn ctl_output(&self, args: &[&str]) -> Result<Output> {
        Command::new(bin("kchatctl")?)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .context("running kchatctl")
    }

    /// Runs kchatctl; fails with its stderr unless it exits 0.
    fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = self.ctl_output(args)?;
        if !out.status.success() {
            bail!(
                "kchatctl {args:?} exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ctl(&all)?;
        serde_json::from_str(&text).with_context(|| format!("kchatctl printed {text}"))
    }

    /// `kchatctl --json status`, whose exit says attached (0) or not (3).
    fn status(&self) -> Result<Value> {
        let out = self.ctl_output(&["--json", "status"])?;
        let status: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("kchatctl status printed {out:?}"))?;
        let want = if status["attached"] == true { 0 } else { 3 };
        ensure!(
            out.status.code() == Some(want),
            "kchatctl status exited {} for {status}",
            out.status
        );
        Ok(status)
    }

    pub fn room(&self, name: &str) -> Result<Value> {
        self.ctl_json(&["info", name])
    }

    fn get(&self, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut reply = ureq::get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        Ok(reply.body_mut().read_to_string()?)
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), signal)?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        self.signal(Signal::SIGTERM)?;
        let status = self.child.wait()?;
        ensure!(
            status.success(),
            "kchatd exited {status} on SIGTERM:\n{}",
            self.log()
        );
        Ok(())
    }
}

impl Drop for Kchatd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes rooms a test made, whoever made them.
struct Cleanup<Name: AsRef<str>>(Vec<Name>);

impl<Name: AsRef<str>> Drop for Cleanup<Name> {
    fn drop(&mut self) {
        if let Ok(control) = Control::open() {
            for room in &self.0 {
                let _ = control.delete(room.as_ref());
            }
        }
    }
}

/// The value of one sample line `name{labels} value` in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

fn mode_of(path: &str) -> Result<u32> {
    Ok(std::fs::metadata(path)?.mode() & 0o7777)
}

fn starts_ready_and_creates_config_rooms() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["cfg-ops"]);
    let dir = Kchatd::prepare(
        "ready",
        "[rooms.cfg-ops]\npolicy = \"block\"\nmode = 0o640\nring_bytes = 8192\nmax_wait = 2500\n[rooms.cfg-ops.rate_limit]\nmsgs_per_sec = 50\nmsg_burst = 100\n",
    )?;
    let daemon = Kchatd::start(&dir)?;
    ensure!(mode_of("/dev/kchat/cfg-ops")? == 0o640, "node mode");
    let ops = daemon.room("cfg-ops")?;
    ensure!(ops["origin"] == "config", "origin: {ops}");
    ensure!(ops["settings"]["policy"] == "block", "policy: {ops}");
    ensure!(ops["settings"]["ring_bytes"] == 8192, "ring: {ops}");
    ensure!(ops["settings"]["max_wait"] == 2500, "max_wait: {ops}");
    ensure!(ops["mode_octal"] == "0o640", "mode_octal: {ops}");
    ensure!(
        daemon.ctl(&["list"])?.contains("root:root"),
        "list shows owners as numbers"
    );
    let kernel = crate::client::Control::open()?.info("cfg-ops")?;
    ensure!(
        kernel.max_wait_ms == 2500,
        "the kernel's room has max_wait_ms {}",
        kernel.max_wait_ms
    );
    ensure!(
        ops["settings"]["rate_limit"]["msgs_per_sec"] == 50,
        "limit: {ops}"
    );
    // The module's default room is adopted, not owned.
    let lobby = daemon.room("lobby")?;
    ensure!(lobby["origin"] == "adopted", "lobby: {lobby}");
    let status = daemon.ctl_json(&["status"])?;
    ensure!(status["attached"] == true, "status: {status}");
    // A new bound in the config changes the live room in place: readers
    // stay, nothing is reported as drift.
    let _reader = crate::client::open(Path::new("/dev/kchat/cfg-ops"), true, false, true)?;
    let config = std::fs::read_to_string(Kchatd::config_path(&dir))?;
    std::fs::write(
        Kchatd::config_path(&dir),
        config.replace("max_wait = 2500", "max_wait = \"forever\""),
    )?;
    daemon.signal(Signal::SIGHUP)?;
    wait_for("the new bound on the live room", PATIENCE, || {
        Ok(crate::client::Control::open()?.info("cfg-ops")?.max_wait_ms
            == kchat_uapi::abi::MAX_WAIT_FOREVER)
    })?;
    let ops = daemon.room("cfg-ops")?;
    ensure!(
        ops["settings"]["max_wait"] == "forever"
            && ops["drift"].as_array().is_some_and(Vec::is_empty),
        "after the reload: {ops}"
    );
    ensure!(
        crate::client::Control::open()?.info("cfg-ops")?.readers == 1,
        "the change cost the room its reader"
    );
    let scrape = daemon.get("/metrics")?;
    ensure!(
        sample(
            &scrape,
            "kchat_room_laggard_evictions_total{room=\"cfg-ops\"}"
        ) == Some(0.0),
        "no laggard evictions series for cfg-ops:\n{scrape}"
    );
    daemon.stop()?;
    // Stopping kchatd leaves the rooms to the kernel.
    ensure!(
        Path::new("/dev/kchat/cfg-ops").exists(),
        "room gone with the daemon"
    );
    Ok(())
}

fn tells_systemd_about_reloads_stops_and_the_watchdog() -> Result<()> {
    module::ensure_loaded()?;
    let dir = Kchatd::prepare("notify", "")?;
    // As systemd sets them for a unit with WatchdogSec=1s.
    let mut daemon = Kchatd::start_with(&dir, &[("WATCHDOG_USEC", "1000000")])?;
    daemon.wait_notify("WATCHDOG=1")?;
    daemon.wait_notify("WATCHDOG=1")?;
    daemon.signal(Signal::SIGHUP)?;
    daemon.wait_notify("RELOADING=1")?;
    // With what `systemctl status` shows.
    daemon.wait_notify_all(&["READY=1", "STATUS=attached, "])?;
    daemon.signal(Signal::SIGTERM)?;
    daemon.wait_notify("STOPPING=1")?;
    let status = daemon.child.wait()?;
    ensure!(status.success(), "kchatd exited {status} on SIGTERM");
    // A watchdog of one microsecond (a typo in WatchdogSec) is clamped,
    // not a crash.
    // And a JOURNAL_STREAM inherited from elsewhere (stderr is a file
    // here) does not send the log to the journal.
    let dir = Kchatd::prepare("tiny-watchdog", "")?;
    let mut daemon = Kchatd::start_with(
        &dir,
        &[("WATCHDOG_USEC", "1"), ("JOURNAL_STREAM", "8:12345")],
    )?;
    daemon.wait_notify("WATCHDOG=1")?;
    ensure!(
        daemon.child.try_wait()?.is_none(),
        "kchatd died with WATCHDOG_USEC=1:\n{}",
        daemon.log()
    );
    let log = daemon.log();
    ensure!(
        log.contains("kchatd ready"),
        "a stale JOURNAL_STREAM took the log away from stderr: {log:?}"
    );
    ensure!(
        !log.contains('\x1b'),
        "colour codes in a log written to a file: {log:?}"
    );
    daemon.stop()
}

fn create_chat_list_limit_delete() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["rt-chat"]);
    let daemon = Kchatd::start(&Kchatd::prepare("chat", "")?)?;
    let out = daemon.ctl(&[
        "create-room",
        "rt-chat",
        "--policy",
        "block",
        "--mode",
        "660",
    ])?;
    ensure!(out.contains("created room rt-chat"), "create said {out}");
    ensure!(mode_of("/dev/kchat/rt-chat")? == 0o660, "node mode");
    // A second create of the same name is an error, exit 1.
    let again = daemon.ctl_output(&["create-room", "rt-chat"])?;
    ensure!(
        again.status.code() == Some(1),
        "duplicate create: {again:?}"
    );
    ensure!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );

    let mut reader = open(Path::new("/dev/kchat/rt-chat"), true, false, false)?;
    let mut writer = open(Path::new("/dev/kchat/rt-chat"), false, true, true)?;
    writer.write_all(b"hello\n")?;
    let mut buf = [0u8; 64];
    let n = reader.read(&mut buf)?;
    ensure!(&buf[..n] == b"hello\n", "read {:?}", &buf[..n]);

    let list = daemon.ctl_json(&["list"])?;
    let room = list
        .as_array()
        .and_then(|rooms| rooms.iter().find(|r| r["name"] == "rt-chat"))
        .context("rt-chat not listed")?;
    ensure!(
        room["origin"] == "runtime" && room["counters"]["readers"] == 1,
        "{room}"
    );
    ensure!(
        daemon.ctl(&["list"])?.contains("rt-chat"),
        "table lacks the room"
    );

    daemon.ctl(&[
        "set-limit",
        "rt-chat",
        "--msgs-per-sec",
        "1",
        "--burst",
        "1",
    ])?;
    writer.write_all(b"one\n")?;
    let Err(err) = writer.write_all(b"two\n") else {
        bail!("a second write within a second of the first went through");
    };
    ensure!(
        err.raw_os_error() == Some(nix::libc::EAGAIN),
        "throttled write gave {err}"
    );
    let stats = daemon.ctl_json(&["stats", "rt-chat"])?;
    ensure!(
        stats[0]["counters"]["throttled"].as_u64() >= Some(1),
        "{stats}"
    );
    ensure!(
        stats[0]["settings"]["rate_limit"]["msg_burst"] == 1,
        "{stats}"
    );
    // Who reads it, and how far behind: this test's own reader, which has
    // not read "one" yet.
    let readers = daemon.ctl_json(&["readers", "rt-chat"])?;
    ensure!(
        readers.as_array().is_some_and(|r| r.len() == 1)
            && readers[0]["pid"] == std::process::id()
            && readers[0]["lag_msgs"] == 1,
        "kchatctl readers: {readers}"
    );
    ensure!(
        daemon.ctl(&["readers", "rt-chat"])?.contains("UNREAD"),
        "no readers table"
    );
    // Only the fields given change: a burst alone keeps the rate.
    daemon.ctl(&["set-limit", "rt-chat", "--burst", "5"])?;
    let limit = crate::client::Control::open()?.info("rt-chat")?;
    ensure!(
        limit.msgs_per_sec == 1 && limit.msg_burst == 5,
        "--burst alone left {} msg/s, burst {}",
        limit.msgs_per_sec,
        limit.msg_burst
    );
    // A change the kernel would not take as meant (a byte burst without a
    // byte rate) is refused, naming why, and changes nothing.
    let bad = daemon.ctl_output(&["set-limit", "rt-chat", "--byte-burst", "500"])?;
    ensure!(
        bad.status.code() == Some(6)
            && String::from_utf8_lossy(&bad.stderr).contains("byte_burst needs"),
        "a byte burst without a byte rate: {bad:?}"
    );
    let empty = daemon.ctl_output(&["set-limit", "rt-chat"])?;
    ensure!(
        empty.status.code() == Some(6)
            && String::from_utf8_lossy(&empty.stderr).contains("nothing to change"),
        "set-limit without flags: {empty:?}"
    );
    let kept = crate::client::Control::open()?.info("rt-chat")?;
    ensure!(
        kept.msgs_per_sec == 1 && kept.msg_burst == 5 && kept.byte_burst == 0,
        "a refused change changed the limit"
    );

    daemon.ctl(&["delete-room", "rt-chat"])?;
    ensure!(
        !Path::new("/dev/kchat/rt-chat").exists(),
        "node left after delete"
    );
    // The reader drains what was left, then sees end of file.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    ensure!(rest == b"one\n", "drained {rest:?}");
    let missing = daemon.ctl_output(&["info", "rt-chat"])?;
    ensure!(
        missing.status.code() == Some(4),
        "info on a deleted room: {missing:?}"
    );
    // The state file forgot it: a restart does not bring it back.
    daemon.stop()?;
    let daemon = Kchatd::start(&PathBuf::from("/run/kchat-test/chat"))?;
    ensure!(
        !Path::new("/dev/kchat/rt-chat").exists(),
        "deleted room came back"
    );
    daemon.stop()
}

fn events_follow_rooms_and_throttling() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["ev-room"]);
    let daemon = Kchatd::start(&Kchatd::prepare("events", "")?)?;
    // `timeout` bounds every read below: a follower that hears nothing
    // ends, and its pipes with it.
    let mut follow = Command::new("timeout")
        .arg(PATIENCE.as_secs().to_string())
        .arg(bin("kchatctl")?)
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--json", "events", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = follow.stdout.take().context("events stdout")?;
    // Everything after this line on stderr reaches the follower.
    let mut said = String::new();
    BufReader::new(follow.stderr.take().context("events stderr")?).read_line(&mut said)?;
    ensure!(
        said.trim() == "kchatctl: listening for events",
        "kchatctl events said {said:?}"
    );
    daemon.ctl(&[
        "create-room",
        "ev-room",
        "--msgs-per-sec",
        "1",
        "--burst",
        "1",
    ])?;
    let mut writer = open(Path::new("/dev/kchat/ev-room"), false, true, true)?;
    let _ = writer.write_all(b"a");
    let _ = writer.write_all(b"b");
    let _ = writer.write_all(b"c");
    drop(writer);
    let mut kinds = Vec::new();
    let mut throttled = 0;
    let mut deleting = false;
    // The room is deleted once both throttles were reported (kchatd reports
    // them from its next look at the counters), so the order is known.
    for line in BufReader::new(stdout).lines() {
        let event: Value = serde_json::from_str(&line?)?;
        if event["room"] != "ev-room" {
            continue;
        }
        let kind = event["kind"].as_str().unwrap_or("").to_owned();
        if kind == "throttled" {
            // kchatctl's number, checked below: garbage must not overflow.
            throttled = event["count"]
                .as_u64()
                .map_or(throttled, |n| n.saturating_add(throttled));
        }
        kinds.push(kind);
        if kinds.last().map(String::as_str) == Some("room-deleted") {
            break;
        }
        if throttled >= 2 && !deleting {
            deleting = true;
            daemon.ctl(&["delete-room", "ev-room"])?;
        }
    }
    // SIGTERM, which `timeout` passes on to kchatctl.
    let _ = kill(Pid::from_raw(follow.id() as i32), Signal::SIGTERM);
    let _ = follow.wait();
    ensure!(
        kinds.first().map(String::as_str) == Some("room-created"),
        "events {kinds:?}"
    );
    ensure!(
        throttled == 2,
        "throttled events counted {throttled}, not 2: {kinds:?}"
    );
    daemon.stop()
}

/// Writes `count` numbered messages into a `block` room while kchatd is
/// killed (-9) and started again; the reader gets every one, in order.
fn restart_mid_traffic_loses_nothing() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["rt-block"]);
    let dir = Kchatd::prepare("restart", "")?;
    let daemon = Kchatd::start(&dir)?;
    daemon.ctl(&[
        "create-room",
        "rt-block",
        "--policy",
        "block",
        "--ring-size",
        "4096",
        "--max-msg",
        "64",
    ])?;
    let before = daemon.room("rt-block")?;
    let count = 3000u32;
    let mut reader = open(Path::new("/dev/kchat/rt-block"), true, false, false)?;
    let writer = std::thread::spawn(move || -> Result<()> {
        let mut room = open(Path::new("/dev/kchat/rt-block"), false, true, false)?;
        for n in 0..count {
            room.write_all(format!("{n:06}\n").as_bytes())?;
        }
        Ok(())
    });
    let mut got = Vec::new();
    let mut restarted = None;
    let mut daemon = Some(daemon);
    let mut buf = [0u8; 4096];
    while got.len() < count as usize * 7 {
        let n = reader.read(&mut buf)?;
        ensure!(n > 0, "end of file after {} bytes", got.len());
        got.extend_from_slice(&buf[..n]);
        if got.len() > 1000 * 7
            && let Some(running) = daemon.take()
        {
            running.signal(Signal::SIGKILL)?;
            drop(running);
            restarted = Some(Kchatd::start(&dir)?);
        }
    }
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let expected: Vec<u8> = (0..count)
        .flat_map(|n| format!("{n:06}\n").into_bytes())
        .collect();
    ensure!(
        got == expected,
        "the reader did not get every message in order"
    );
    let restarted = restarted.context("kchatd was never restarted")?;
    let after = restarted.room("rt-block")?;
    ensure!(
        after["settings"] == before["settings"],
        "settings changed: {before} -> {after}"
    );
    ensure!(after["origin"] == "runtime", "{after}");
    ensure!(after["counters"]["lost"] == 0, "{after}");
    restarted.stop()
}

fn module_reload_restores_rooms() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["cfg-keep", "rt-keep"]);
    let dir = Kchatd::prepare("reload", "[rooms.cfg-keep]\nmode = 0o600\n")?;
    let daemon = Kchatd::start(&dir)?;
    daemon.ctl(&["create-room", "rt-keep", "--policy", "block"])?;
    daemon.ctl(&["set-limit", "rt-keep", "--msgs-per-sec", "7"])?;
    // kchatd keeps no file of the module open, so it can be unloaded. It
    // does open the control node for a moment each pass; an unload that
    // lands in that moment is refused (EAGAIN) and is retried, as an admin
    // would. Under KASAN that moment is long enough to hit.
    let mut tries = 0;
    wait_for("kchatd to let the module go", PATIENCE, || {
        tries += 1;
        Ok(module::try_unload().is_ok())
    })?;
    ensure!(
        tries < 50,
        "the unload needed {tries} tries: kchatd holds the module too long"
    );
    wait_for("kchatd to notice the module left", PATIENCE, || {
        Ok(daemon.status()?["attached"] == false)
    })?;
    let status = daemon.status()?;
    let reason = status["detached_reason"].as_str().unwrap_or("");
    ensure!(reason.contains("not loaded"), "reason: {reason}");
    ensure!(
        sample(&daemon.get("/metrics")?, "kchat_up") == Some(0.0),
        "kchat_up while away"
    );
    let unavailable = daemon.ctl_output(&["list"])?;
    ensure!(
        unavailable.status.code() == Some(3),
        "list without the module: {unavailable:?}"
    );

    module::ensure_loaded()?;
    wait_for("kchatd to restore the rooms", PATIENCE, || {
        Ok(Path::new("/dev/kchat/rt-keep").exists() && Path::new("/dev/kchat/cfg-keep").exists())
    })?;
    let room = daemon.room("rt-keep")?;
    ensure!(room["settings"]["policy"] == "block", "{room}");
    ensure!(
        room["settings"]["rate_limit"]["msgs_per_sec"] == 7,
        "{room}"
    );
    ensure!(mode_of("/dev/kchat/cfg-keep")? == 0o600, "config room mode");
    ensure!(
        sample(&daemon.get("/metrics")?, "kchat_up") == Some(1.0),
        "kchat_up after reload"
    );
    daemon.stop()
}

fn metrics_match_the_traffic() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["m-room"]);
    let daemon = Kchatd::start(&Kchatd::prepare(
        "metrics",
        "[rooms.m-room]\nring_bytes = 8192\n",
    )?)?;
    let mut readers = [
        open(Path::new("/dev/kchat/m-room"), true, false, true)?,
        open(Path::new("/dev/kchat/m-room"), true, false, true)?,
    ];
    let mut writer = open(Path::new("/dev/kchat/m-room"), false, true, false)?;
    for n in 0..7 {
        writer.write_all(format!("message {n}\n").as_bytes())?;
    }
    let mut buf = [0u8; 4096];
    for reader in &mut readers {
        let n = reader.read(&mut buf)?;
        ensure!(n == 70, "a reader got {n} bytes, not 70");
    }
    let scrape = daemon.get("/metrics")?;
    for (series, want) in [
        ("kchat_up", 1.0),
        ("kchat_room_messages_total{room=\"m-room\"}", 7.0),
        ("kchat_room_written_bytes_total{room=\"m-room\"}", 70.0),
        ("kchat_room_deliveries_total{room=\"m-room\"}", 14.0),
        ("kchat_room_readers{room=\"m-room\"}", 2.0),
        ("kchat_room_writers{room=\"m-room\"}", 1.0),
        ("kchat_room_ring_size_bytes{room=\"m-room\"}", 8192.0),
        ("kchat_room_lost_messages_total{room=\"m-room\"}", 0.0),
        (
            "kchat_room_info{room=\"m-room\",policy=\"drop\",origin=\"config\"}",
            1.0,
        ),
    ] {
        let got = sample(&scrape, series);
        ensure!(
            got == Some(want),
            "{series} is {got:?}, not {want}; scrape:\n{scrape}"
        );
    }
    ensure!(
        scrape.contains("# TYPE kchat_room_messages counter"),
        "types missing:\n{scrape}"
    );
    ensure!(
        scrape.trim_end().ends_with("# EOF"),
        "not OpenMetrics:\n{scrape}"
    );
    ensure!(
        sample(&scrape, "kchat_daemon_reconciles_total").is_some_and(|n| n >= 1.0),
        "{scrape}"
    );
    // Capacity against the module's limits, and the process's own health.
    let limits = crate::client::Control::open()?.limits()?;
    for (series, want) in [
        ("kchat_module_max_rooms", f64::from(limits.max_rooms)),
        (
            "kchat_module_max_readers_per_room",
            f64::from(limits.max_readers),
        ),
        (
            "kchat_module_max_total_ring_bytes",
            limits.max_total_ring_bytes as f64,
        ),
        ("kchat_rooms_unlabelled", 0.0),
    ] {
        let got = sample(&scrape, series);
        ensure!(got == Some(want), "{series} is {got:?}, not {want}");
    }
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        ensure!(
            sample(&scrape, series).is_some_and(|v| v > 0.0),
            "{series} missing or zero:\n{scrape}"
        );
    }
    ensure!(daemon.get("/healthz")?.starts_with("ok"), "healthz");
    daemon.stop()?;
    // Past the label cap a room gets no series at all (a shared "_other"
    // series would go up and down as rooms come and go), only a count.
    let dir = Kchatd::prepare("labels", "[rooms.m-room]\nring_bytes = 8192\n")?;
    let config = Kchatd::config_path(&dir);
    let text = std::fs::read_to_string(&config)?
        .replace("[metrics]\n", "[metrics]\nmax_room_labels = 1\n");
    std::fs::write(&config, text)?;
    let daemon = Kchatd::start(&dir)?;
    let scrape = daemon.get("/metrics")?;
    let rooms = sample(&scrape, "kchat_rooms").unwrap_or(0.0);
    ensure!(
        rooms >= 2.0
            && sample(&scrape, "kchat_rooms_unlabelled") == Some(rooms - 1.0)
            && !scrape.contains("_other")
            && scrape.matches("kchat_room_readers{").count() == 1,
        "with max_room_labels = 1:\n{scrape}"
    );
    daemon.stop()
}

fn unprivileged_callers_may_read_not_change() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["nobodys"]);
    let daemon = Kchatd::start(&Kchatd::prepare("auth", "")?)?;
    let as_nobody = |args: &[&str]| -> Result<Output> {
        Command::new("setpriv")
            .args(NOBODY)
            .arg("--")
            .arg(bin("kchatctl")?)
            .arg("--socket")
            .arg(daemon.socket())
            .args(args)
            .output()
            .context("running kchatctl as nobody")
    };
    let list = as_nobody(&["list"])?;
    ensure!(list.status.success(), "nobody cannot list: {list:?}");
    for args in [
        &["create-room", "nobodys"][..],
        &["delete-room", "lobby"],
        &["set-limit", "lobby", "--msgs-per-sec", "1"],
        // Who listens where is an admin's business.
        &["readers", "lobby"],
    ] {
        let out = as_nobody(args)?;
        ensure!(out.status.code() == Some(5), "{args:?} as nobody: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(stderr.contains("permission denied"), "{args:?}: {stderr}");
    }
    ensure!(
        !Path::new("/dev/kchat/nobodys").exists(),
        "nobody made a room"
    );
    let lobby = daemon.room("lobby")?;
    ensure!(
        lobby["settings"]["rate_limit"]["msgs_per_sec"] == 0,
        "nobody set a limit: {lobby}"
    );
    let scrape = daemon.get("/metrics")?;
    ensure!(
        sample(&scrape, "kchat_daemon_denied_requests_total") == Some(4.0),
        "{scrape}"
    );
    daemon.stop()
}

/// `admin_group` lets its members (here by primary group) change rooms.
fn the_admin_group_may_change_rooms() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["by-admin"]);
    let dir = Kchatd::prepare("admins", "")?;
    let config = Kchatd::config_path(&dir);
    let text = std::fs::read_to_string(&config)?;
    // Debian's `daemon` group (gid 1) stands in for a `kchat` admin group.
    std::fs::write(&config, format!("admin_group = \"daemon\"\n{text}"))?;
    let daemon = Kchatd::start(&dir)?;
    let as_member = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=1", "--clear-groups", "--"])
        .arg(bin("kchatctl")?)
        .arg("--socket")
        .arg(daemon.socket())
        .args(["create-room", "by-admin"])
        .output()?;
    ensure!(
        as_member.status.success(),
        "a member of admin_group was refused: {as_member:?}"
    );
    ensure!(
        Path::new("/dev/kchat/by-admin").exists(),
        "the room was not made"
    );
    daemon.stop()
}

fn bad_configs_are_refused_and_reload_keeps_the_old() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["hup-a", "hup-b"]);
    let dir = Kchatd::prepare("badconfig", "[rooms.hup-a]\n")?;
    // A bad file: kchatd refuses to start, naming key and line.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[rooms.x]\npolicy = \"block\"\nmode = 0o1777\n")?;
    let out = Command::new(bin("kchatd")?)
        .arg("--config")
        .arg(&bad)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "kchatd started on a bad config: {out:?}"
    );
    ensure!(
        stderr.contains("line 3: mode = 0o1777") && stderr.matches("has bits beyond").count() == 1,
        "message: {stderr}"
    );
    ensure!(
        !Path::new("/dev/kchat/x").exists(),
        "a bad config made a room"
    );
    let check = Command::new(bin("kchatd")?)
        .arg("--check")
        .arg("--config")
        .arg(&bad)
        .output()?;
    ensure!(check.status.code() == Some(1), "--check passed a bad file");

    let daemon = Kchatd::start(&dir)?;
    ensure!(Path::new("/dev/kchat/hup-a").exists(), "hup-a");
    // Reload with a broken file: the old config keeps running.
    let good = std::fs::read_to_string(Kchatd::config_path(&dir))?;
    std::fs::write(
        Kchatd::config_path(&dir),
        format!("{good}\n[rooms.hup-b]\nsize = 1\n"),
    )?;
    daemon.signal(Signal::SIGHUP)?;
    wait_for("the reload to be refused", PATIENCE, || {
        Ok(sample(&daemon.get("/metrics")?, "kchat_daemon_reload_errors_total") == Some(1.0))
    })?;
    ensure!(
        sample(
            &daemon.get("/metrics")?,
            "kchat_config_last_reload_successful"
        ) == Some(0.0),
        "a refused reload is not shown as such"
    );
    ensure!(
        daemon.log().contains("unknown field `size`"),
        "log lacks the reason:\n{}",
        daemon.log()
    );
    ensure!(
        !Path::new("/dev/kchat/hup-b").exists(),
        "half of a bad config applied"
    );
    ensure!(
        daemon.ctl_json(&["status"])?["attached"] == true,
        "daemon unwell after a bad reload"
    );
    // A good reload applies.
    std::fs::write(
        Kchatd::config_path(&dir),
        format!("{good}\n[rooms.hup-b]\n"),
    )?;
    daemon.signal(Signal::SIGHUP)?;
    wait_for("hup-b after a good reload", PATIENCE, || {
        Ok(Path::new("/dev/kchat/hup-b").exists())
    })?;
    let scrape = daemon.get("/metrics")?;
    ensure!(
        sample(&scrape, "kchat_config_last_reload_successful") == Some(1.0)
            && sample(
                &scrape,
                "kchat_config_last_reload_success_timestamp_seconds"
            )
            .is_some_and(|t| t > 1.7e9),
        "a good reload is not shown as such:\n{scrape}"
    );
    // Dropping a room from the config deletes it: kchatd made it.
    std::fs::write(Kchatd::config_path(&dir), format!("{good}\n"))?;
    daemon.signal(Signal::SIGHUP)?;
    wait_for("hup-b to go", PATIENCE, || {
        Ok(!Path::new("/dev/kchat/hup-b").exists())
    })?;
    ensure!(Path::new("/dev/kchat/hup-a").exists(), "hup-a went too");
    daemon.stop()
}

fn apply_shows_then_makes_the_diff() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["ap-one", "ap-two"]);
    let dir = Kchatd::prepare("apply", "")?;
    let daemon = Kchatd::start(&dir)?;
    let file = dir.join("rooms.toml");
    std::fs::write(
        &file,
        "[rooms.ap-one]\n[rooms.ap-two]\npolicy = \"block\"\n",
    )?;
    let file = file.to_str().context("path")?;
    let plan = daemon.ctl(&["apply", file, "--dry-run"])?;
    ensure!(
        plan.contains("+ create") && plan.contains("ap-two"),
        "plan: {plan}"
    );
    ensure!(
        !Path::new("/dev/kchat/ap-one").exists(),
        "dry run changed something"
    );
    daemon.ctl(&["apply", file])?;
    ensure!(
        Path::new("/dev/kchat/ap-one").exists() && Path::new("/dev/kchat/ap-two").exists(),
        "apply"
    );
    std::fs::write(
        file,
        "[rooms.ap-two]\npolicy = \"block\"\n[rooms.ap-two.rate_limit]\nmsgs_per_sec = 3\n",
    )?;
    let plan = daemon.ctl_json(&["apply", file, "--dry-run"])?;
    let actions: Vec<(&str, &str)> = plan
        .as_array()
        .context("plan")?
        .iter()
        .map(|c| {
            (
                c["room"].as_str().unwrap_or(""),
                c["action"].as_str().unwrap_or(""),
            )
        })
        .collect();
    ensure!(
        actions == [("ap-two", "set-limit"), ("ap-one", "delete")],
        "plan {actions:?}"
    );
    daemon.ctl(&["apply", file])?;
    ensure!(
        !Path::new("/dev/kchat/ap-one").exists(),
        "ap-one survived apply"
    );
    ensure!(
        daemon.room("ap-two")?["settings"]["rate_limit"]["msgs_per_sec"] == 3,
        "limit"
    );
    // A bad file changes nothing and says where.
    std::fs::write(file, "[rooms.ap-two]\npolicy = \"sometimes\"\n")?;
    let out = daemon.ctl_output(&["apply", file])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(6) && stderr.contains("line 2"),
        "{out:?}"
    );
    // Scripts get the failure as JSON on stdout, with its kind.
    let out = daemon.ctl_output(&["--json", "apply", file])?;
    let error: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("--json apply of a bad file printed {out:?}"))?;
    ensure!(
        out.status.code() == Some(6)
            && error["error"]["kind"] == "invalid"
            && error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("line 2")),
        "--json error: {error}"
    );
    ensure!(
        Path::new("/dev/kchat/ap-two").exists(),
        "a bad apply deleted a room"
    );
    daemon.stop()
}

fn bad_requests_get_errors_and_kchatd_keeps_serving() -> Result<()> {
    module::ensure_loaded()?;
    let daemon = Kchatd::start(&Kchatd::prepare("badreq", "")?)?;
    let socket = daemon.socket();
    let ask = |request: &[u8]| -> Result<String> {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.write_all(request)?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply)?;
        Ok(reply)
    };
    // A client that connects and says nothing holds nobody up.
    let _silent = std::os::unix::net::UnixStream::connect(&socket)?;
    for (request, needle) in [
        (&b"not json\n"[..], "bad request"),
        (b"{\"op\":\"reboot\"}\n", "unknown variant"),
        (
            b"{\"op\":\"info\",\"room\":\"../etc\"}\n",
            "invalid room name",
        ),
        (
            b"{\"op\":\"create-room\",\"room\":\"x\",\"settings\":{\"mode\":4095}}\n",
            "beyond 0o777",
        ),
    ] {
        let reply = ask(request)?;
        ensure!(
            reply.contains("\"error\"") && reply.contains(needle),
            "{request:?} -> {reply}"
        );
    }
    let huge = vec![b'x'; kchat_proto_max() + 10];
    let reply = ask(&huge)?;
    ensure!(
        reply.contains("longer than"),
        "oversized request -> {reply}"
    );
    ensure!(
        !Path::new("/dev/kchat/x").exists(),
        "a bad request made a room"
    );
    ensure!(
        daemon.ctl_json(&["status"])?["attached"] == true,
        "kchatd stopped serving"
    );
    daemon.stop()
}

fn kchat_proto_max() -> usize {
    kchat_proto::api::MAX_REQUEST_BYTES
}

/// Every `kchat_*` name the Grafana dashboard and the alert rules use is a
/// series a real kchatd serves (`kchat_bridge_*`: a real bridge, in
/// `bridge::`), so they cannot drift apart.
fn dashboards_use_only_real_metrics() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["dash-drop", "dash-block"]);
    let daemon = Kchatd::start(&Kchatd::prepare(
        "dashboards",
        "[rooms.dash-drop]\n[rooms.dash-block]\npolicy = \"block\"\n",
    )?)?;
    let scrape = daemon.get("/metrics")?;
    let served: std::collections::BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for (file, used) in crate::helper::dashboard_metric_names("kchat_")? {
        // The bridge's names: `bridge::dashboards_use_only_real_bridge_metrics`.
        for name in used
            .iter()
            .filter(|name| !name.starts_with("kchat_bridge_"))
        {
            ensure!(
                served.contains(name.as_str()),
                "{file} uses {name}, which kchatd does not serve"
            );
        }
    }
    daemon.stop()
}

/// kchatctl as `setpriv` makes the caller; returns its output.
fn ctl_as(daemon: &Kchatd, setpriv_args: &[&str], args: &[&str]) -> Result<Output> {
    Command::new("timeout")
        .arg(PATIENCE.as_secs().to_string())
        .arg("setpriv")
        .args(setpriv_args)
        .arg("--")
        .arg(bin("kchatctl")?)
        .arg("--socket")
        .arg(daemon.socket())
        .args(args)
        .output()
        .context("running kchatctl under setpriv")
}

/// The kernel's rule, as for the room nodes: the groups a process holds,
/// not the ones the user database lists.
fn admin_rights_follow_the_groups_a_caller_holds() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["by-suppl", "by-listed"]);
    let dir = Kchatd::prepare("groups", "")?;
    let config = Kchatd::config_path(&dir);
    let text = std::fs::read_to_string(&config)?;
    // Debian's `daemon` group (gid 1) stands in for a `kchat` admin group.
    std::fs::write(&config, format!("admin_group = \"daemon\"\n{text}"))?;
    let daemon = Kchatd::start(&dir)?;
    // A process started with the group as a supplementary one (systemd's
    // SupplementaryGroups=, sg) is an admin.
    let with_group = ctl_as(
        &daemon,
        &["--reuid=65534", "--regid=65534", "--groups=1"],
        &["create-room", "by-suppl"],
    )?;
    ensure!(
        with_group.status.success(),
        "a caller holding admin_group as a supplementary group was refused: {with_group:?}"
    );
    // nobody listed in the group (the guest's /etc is a throwaway overlay),
    // running with its groups cleared: not an admin.
    let group_file = std::fs::read_to_string("/etc/group")?;
    let listed = group_file
        .lines()
        .map(|line| {
            if line.starts_with("daemon:") {
                let sep = if line.ends_with(':') { "" } else { "," };
                format!("{line}{sep}nobody")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write("/etc/group", format!("{listed}\n"))?;
    let cleared = ctl_as(&daemon, &NOBODY, &["create-room", "by-listed"]);
    std::fs::write("/etc/group", &group_file)?;
    let cleared = cleared?;
    ensure!(
        cleared.status.code() == Some(5)
            && String::from_utf8_lossy(&cleared.stderr).contains("permission denied"),
        "a caller the group file lists but who holds no admin group was not denied: {cleared:?}"
    );
    ensure!(
        !Path::new("/dev/kchat/by-listed").exists(),
        "the room was made"
    );
    daemon.stop()
}

/// The socket is open to everyone: one user holding connections must not
/// exhaust kchatd's descriptors and lock out admins.
fn idle_connections_from_one_user_do_not_lock_out_admins() -> Result<()> {
    module::ensure_loaded()?;
    let dir = Kchatd::prepare("fdcap", "")?;
    let daemon = Kchatd::start(&dir)?;
    // 2,000 idle connections from nobody, held until we are done.
    let mut holder = crate::helper::hold_connections_as(&NOBODY, &daemon.socket(), 2000)?;
    // Under kchatd's 10 s request timeout: a kchatd out of descriptors
    // answers only once idle connections time out.
    let admin = Command::new("timeout")
        .arg("8")
        .arg(bin("kchatctl")?)
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--json", "status"])
        .output();
    let scrape = daemon.get("/metrics");
    holder.kill().ok();
    holder.wait().ok();
    let admin = admin?;
    ensure!(
        admin.status.success(),
        "an admin request failed within 8 s while one user held 2,000 connections: {admin:?}\n{}",
        daemon.log()
    );
    let status: Value = serde_json::from_slice(&admin.stdout)?;
    ensure!(
        status["attached"] == true,
        "kchatd lost the module to the connections: {status}"
    );
    let refused = sample(&scrape?, "kchat_daemon_refused_connections_total").unwrap_or(0.0);
    ensure!(
        refused >= 1000.0,
        "only {refused} of 2,000 connections were refused"
    );
    daemon.stop()
}

/// A reload whose file names another `state_dir` keeps saving into the
/// one kchatd locked at start (another kchatd may use the new one), and
/// says the change waits for a restart.
fn a_reload_keeps_the_locked_state_dir() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["moved-state"]);
    let dir = Kchatd::prepare("statedir", "")?;
    let daemon = Kchatd::start(&dir)?;
    let config = std::fs::read_to_string(Kchatd::config_path(&dir))?;
    let started = dir.join("state");
    let moved = dir.join("elsewhere");
    std::fs::write(
        Kchatd::config_path(&dir),
        config.replace(
            &format!("state_dir = \"{}\"", started.display()),
            &format!("state_dir = \"{}\"", moved.display()),
        ),
    )?;
    daemon.signal(Signal::SIGHUP)?;
    wait_for("the reload", PATIENCE, || {
        Ok(daemon
            .log()
            .contains("a state_dir change takes effect when kchatd restarts"))
    })?;
    daemon.ctl(&["create-room", "moved-state"])?;
    let saved = std::fs::read_to_string(started.join("state.json"))
        .context("no state.json in the state_dir kchatd started with")?;
    ensure!(
        saved.contains("moved-state"),
        "the change was not saved in the locked state_dir: {saved}"
    );
    ensure!(
        !moved.join("state.json").exists(),
        "kchatd saved into {}, which it does not hold the lock of",
        moved.display()
    );
    daemon.stop()
}

/// Two `set-limit`s at once, each changing a different field: each reads
/// the limit it changes under kchatd's lock, so neither undoes the other
/// (read before the lock, the second wrote the first's field back).
fn partial_limit_changes_at_once_both_land() -> Result<()> {
    module::ensure_loaded()?;
    let dir = Kchatd::prepare("limitrace", "")?;
    let daemon = Kchatd::start(&dir)?;
    daemon.ctl(&["create-room", "both-limits"])?;
    let outcome = (|| -> Result<()> {
        for round in 0..20u32 {
            let (msgs, bytes) = (100 + round, 10_000 + round);
            let spawn = |flag: &str, value: u32| -> Result<Child> {
                Command::new(bin("kchatctl")?)
                    .arg("--socket")
                    .arg(daemon.socket())
                    .args(["set-limit", "both-limits", flag, &value.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .context("running kchatctl")
            };
            let changes = [
                spawn("--msgs-per-sec", msgs)?,
                spawn("--bytes-per-sec", bytes)?,
            ];
            for change in changes {
                let out = change.wait_with_output()?;
                ensure!(
                    out.status.success(),
                    "set-limit in round {round}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let info = Control::open()?.info("both-limits")?;
            ensure!(
                info.msgs_per_sec == msgs && info.bytes_per_sec == bytes,
                "round {round}: --msgs-per-sec {msgs} and --bytes-per-sec {bytes} at once \
                 left {} msg/s and {} B/s: one change undid the other",
                info.msgs_per_sec,
                info.bytes_per_sec
            );
        }
        Ok(())
    })();
    let _ = daemon.ctl(&["delete-room", "both-limits"]);
    outcome?;
    daemon.stop()
}

/// A stuck kchatd (stopped here) whose connection backlog is full: a
/// blocking `connect()` would wait for it forever, so `--timeout` must
/// cover the connect too: kchatctl says "unavailable" (exit 3) in about
/// its timeout.
fn kchatctl_gives_up_on_a_full_backlog_within_its_timeout() -> Result<()> {
    use nix::{
        errno::Errno,
        sys::{
            resource::{getrlimit, setrlimit, Resource},
            socket::{self, AddressFamily, SockFlag, SockType, UnixAddr},
        },
    };
    use std::os::fd::AsRawFd;
    module::ensure_loaded()?;
    let dir = Kchatd::prepare("backlog", "")?;
    let daemon = Kchatd::start(&dir)?;
    // tokio listens with a backlog of 1024 (capped by somaxconn).
    const MOST: usize = 8192;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let need = (MOST + 64) as u64;
    if soft < need {
        setrlimit(Resource::RLIMIT_NOFILE, need.max(soft), need.max(hard))?;
    }
    let pid = Pid::from_raw(daemon.child.id() as i32);
    kill(pid, Signal::SIGSTOP)?;
    let outcome = (|| -> Result<()> {
        let address = UnixAddr::new(&daemon.socket())?;
        let mut queued = Vec::new();
        let full = loop {
            ensure!(
                queued.len() < MOST,
                "the backlog took {MOST} connections and was not full"
            );
            let fd = socket::socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            match socket::connect(fd.as_raw_fd(), &address) {
                Ok(()) => queued.push(fd),
                Err(Errno::EAGAIN) => break queued.len(),
                Err(err) => bail!("connecting to the stopped kchatd: {err}"),
            }
        };
        let started = std::time::Instant::now();
        let out = Command::new("timeout")
            .arg(PATIENCE.as_secs().to_string())
            .arg(bin("kchatctl")?)
            .arg("--socket")
            .arg(daemon.socket())
            .args(["--timeout", "2", "--json", "status"])
            .output()?;
        let took = started.elapsed();
        ensure!(
            out.status.code() == Some(3),
            "kchatctl --timeout 2 against a stuck kchatd with a full backlog ({full} queued) \
             exited {:?} after {took:.1?}, not 3 (unavailable): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Its timeout plus the slowest guest's start-up, far below the
        // `timeout` that ends a hung kchatctl.
        ensure!(
            took < PATIENCE / 2,
            "kchatctl --timeout 2 took {took:.1?} to give up"
        );
        Ok(())
    })();
    kill(pid, Signal::SIGCONT)?;
    outcome?;
    daemon.stop()
}

fn a_second_kchatd_on_the_same_state_is_refused() -> Result<()> {
    module::ensure_loaded()?;
    let dir = Kchatd::prepare("statelock", "")?;
    let daemon = Kchatd::start(&dir)?;
    // Its own socket and port, the same state directory.
    let second = dir.join("second.toml");
    let text = std::fs::read_to_string(Kchatd::config_path(&dir))?
        .replace("kchatd.sock", "second.sock")
        .replace("listen = \"127.0.0.1:", "listen = \"127.0.0.2:");
    std::fs::write(&second, text)?;
    let out = Command::new("timeout")
        .arg(PATIENCE.as_secs().to_string())
        .arg(bin("kchatd")?)
        .arg("--config")
        .arg(&second)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && stderr.contains("another kchatd"),
        "a second kchatd on the same state directory: {out:?}"
    );
    ensure!(
        stderr.contains(&daemon.child.id().to_string()),
        "the refusal does not name the holder's pid: {stderr}"
    );
    daemon.stop()
}

/// `[limits]` are declared state like rooms: changed behind kchatd's back
/// (or by a module reload, or a reload within one tick), they come back.
fn module_limits_are_reconciled_every_pass() -> Result<()> {
    module::ensure_loaded()?;
    let control = crate::client::Control::open()?;
    let before = control.limits()?;
    let dir = Kchatd::prepare("limits", "[limits]\nmax_readers = 777\n")?;
    let daemon = Kchatd::start(&dir)?;
    let outcome = (|| -> Result<()> {
        wait_for("max_readers 777", PATIENCE, || {
            Ok(control.limits()?.max_readers == 777)
        })?;
        control.set_limits(&kchat_uapi::abi::GlobalLimits {
            max_readers: 10,
            ..control.limits()?
        })?;
        wait_for("kchatd to put max_readers back to 777", PATIENCE, || {
            Ok(control.limits()?.max_readers == 777)
        })?;
        // A limit the config leaves alone stays as set; reaching it is
        // named as that limit, not as the ring total.
        let (_, rooms_now) = control.list(0)?;
        control.set_limits(&kchat_uapi::abi::GlobalLimits {
            max_rooms: rooms_now,
            ..control.limits()?
        })?;
        let full = daemon.ctl_output(&["create-room", "one-too-many"])?;
        let stderr = String::from_utf8_lossy(&full.stderr);
        ensure!(
            full.status.code() == Some(1) && stderr.contains("max_rooms"),
            "a create over max_rooms: {full:?}"
        );
        Ok(())
    })();
    daemon.stop()?;
    control.set_limits(&before)?;
    outcome
}

/// A config room deleted with kchatctl, or given another limit, is not
/// lost for good: `reset` brings back what the config declares, and
/// `status` and `list` show what differs from it meanwhile.
fn config_rooms_come_back_with_reset() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["cfg-rs", "rt-rs"]);
    let dir = Kchatd::prepare(
        "reset",
        "[rooms.cfg-rs]\n[rooms.cfg-rs.rate_limit]\nmsgs_per_sec = 50\n",
    )?;
    let daemon = Kchatd::start(&dir)?;
    let kernel_rate =
        || -> Result<u32> { Ok(crate::client::Control::open()?.info("cfg-rs")?.msgs_per_sec) };
    daemon.ctl(&["delete-room", "cfg-rs"])?;
    let status = daemon.ctl_json(&["status"])?;
    ensure!(
        status["deleted_config_rooms"] == serde_json::json!(["cfg-rs"]),
        "status does not show the deleted config room: {status}"
    );
    ensure!(
        daemon
            .ctl(&["status"])?
            .contains("deleted config rooms: cfg-rs"),
        "human status lacks the deleted room"
    );
    // Deleted stays deleted: the reconcile does not bring it back.
    ensure!(
        !Path::new("/dev/kchat/cfg-rs").exists(),
        "a deleted config room came back by itself"
    );
    daemon.ctl(&["reset", "cfg-rs"])?;
    wait_for("cfg-rs back after reset", PATIENCE, || {
        Ok(Path::new("/dev/kchat/cfg-rs").exists())
    })?;
    wait_for("the declared limit", PATIENCE, || Ok(kernel_rate()? == 50))?;
    // A limit set over the config's is shown as such, and reset undoes it.
    daemon.ctl(&["set-limit", "cfg-rs", "--msgs-per-sec", "7"])?;
    let room = daemon.room("cfg-rs")?;
    ensure!(room["limit_overridden"] == true, "info: {room}");
    ensure!(
        daemon.ctl(&["list"])?.contains("limit-set"),
        "list does not flag the override"
    );
    ensure!(
        daemon.ctl_json(&["status"])?["overridden_rooms"] == serde_json::json!(["cfg-rs"]),
        "status does not list the override"
    );
    daemon.ctl(&["reset", "cfg-rs"])?;
    wait_for("the config's limit again", PATIENCE, || {
        Ok(kernel_rate()? == 50)
    })?;
    ensure!(
        daemon.room("cfg-rs")?["limit_overridden"] == false,
        "still flagged after reset"
    );
    // Nothing to reset to: a kchatctl room, or no room at all.
    daemon.ctl(&["create-room", "rt-rs"])?;
    for (room, why) in [
        ("rt-rs", "created with kchatctl"),
        ("no-such", "nothing declares it"),
    ] {
        let out = daemon.ctl_output(&["reset", room])?;
        ensure!(
            out.status.code() == Some(6) && String::from_utf8_lossy(&out.stderr).contains(why),
            "reset {room}: {out:?}"
        );
    }
    daemon.stop()
}

/// A client that asks for something and never reads what comes back is
/// hung up on within kchatd's reply timeout and gives its places back: one
/// user's 32 event streams (its whole share) that stopped reading, their
/// socket buffers full, no longer lock that user out. With unbounded
/// writes each stuck stream held its task and its place for ever.
fn a_client_that_never_reads_is_hung_up_on() -> Result<()> {
    use std::os::unix::net::UnixStream;
    module::ensure_loaded()?;
    let dir = Kchatd::prepare("unread", "")?;
    // Debug: the log says when and why each connection ended.
    let daemon = Kchatd::start_with(&dir, &[("RUST_LOG", "debug")])?;
    // kchatd's MAX_CONNECTIONS_PER_UID.
    const SHARE: usize = 32;
    const EVENTS: &str = "{\"op\":\"events\"}\n";
    let mut holder =
        crate::helper::hold_connections_sending_as(&NOBODY, &daemon.socket(), SHARE, Some(EVENTS))?;
    let names: Vec<String> = (0..100).map(|n| format!("unread-{n}")).collect();
    let outcome = (|| -> Result<()> {
        let list_as_nobody = || -> Result<Output> { ctl_as(&daemon, &NOBODY, &["list"]) };
        wait_for("nobody's 32 event streams to be admitted", PATIENCE, || {
            Ok(!list_as_nobody()?.status.success())
        })
        .with_context(|| daemon.log())?;
        // Events enough to fill every stuck stream's socket buffer, each
        // burst seen by a stream that reads (so kchatd has sent it).
        let mut reader = UnixStream::connect(daemon.socket())?;
        reader.set_read_timeout(Some(PATIENCE))?;
        reader.write_all(EVENTS.as_bytes())?;
        let mut lines = BufReader::new(reader.try_clone()?).lines();
        let first = lines
            .next()
            .context("no reply to the events request")?
            .with_context(|| {
                format!(
                    "no reply to the events request; kchatd's log:\n{}",
                    daemon.log()
                )
            })?;
        ensure!(first.contains("done"), "events began with {first}");
        let control = Control::open()?;
        let mut seen = 0usize;
        // Rooms are reported in name order: the last name's event ends a
        // burst.
        let mut until = |kind: &str| -> Result<()> {
            loop {
                let line = lines
                    .next()
                    .context("the event stream ended")?
                    .with_context(|| {
                        format!(
                            "no {kind} event for unread-99 after {seen} events; kchatd's log:\n{}\nits threads:\n{}",
                            daemon.log(),
                            daemon.threads()
                        )
                    })?;
                seen += 1;
                if line.contains("\"unread-99\"") && line.contains(kind) {
                    return Ok(());
                }
            }
        };
        let mut churn = |round: usize| -> Result<()> {
            for name in &names {
                control
                    .create(&crate::client::spec(name))
                    .with_context(|| format!("creating {name} in round {round}"))?;
            }
            until("room-created")?;
            for name in &names {
                control.delete(name)?;
            }
            until("room-deleted")
        };
        for round in 0..4 {
            churn(round)?;
        }
        // The reply timeout (10 s) after the buffers filled, and the slowest
        // guest's kchatctl on top.
        wait_for(
            "nobody to be let in again once its stuck streams are hung up on",
            PATIENCE,
            || Ok(list_as_nobody()?.status.success()),
        )
        .with_context(|| {
            format!(
                "nobody still refused after {PATIENCE:?} ({}); its log:\n{}",
                list_as_nobody()
                    .map(|out| String::from_utf8_lossy(&out.stderr).into_owned())
                    .unwrap_or_default(),
                daemon.log()
            )
        })?;
        Ok(())
    })();
    holder.kill().ok();
    holder.wait().ok();
    if let Ok(control) = Control::open() {
        for name in &names {
            let _ = control.delete(name);
        }
    }
    outcome?;
    daemon.stop()
}

/// A service manager that stops reading notifications must not stop
/// kchatd. Its socket holds `net.unix.max_dgram_qlen` datagrams (10 by
/// default) and a send to a full one blocks: kchatd sent its status from the
/// reconcile loop, which then stopped, and with it the events (seen on the
/// KASAN guest, in the test above, whose harness read notifications only
/// between rounds). Here nothing reads while every room created changes the
/// status; each room's event must still come, and once the manager reads,
/// the newest status.
fn a_manager_that_reads_no_notifications_holds_up_nothing() -> Result<()> {
    use std::os::unix::net::UnixStream;
    module::ensure_loaded()?;
    let queue: usize = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")?
        .trim()
        .parse()
        .context("net.unix.max_dgram_qlen")?;
    let names: Vec<String> = (0..queue + 20).map(|n| format!("unheard-{n}")).collect();
    let _cleanup = Cleanup(names.clone());
    let dir = Kchatd::prepare("notify-full", "")?;
    let mut daemon = Kchatd::start(&dir)?;
    let stream = UnixStream::connect(daemon.socket())?;
    stream.set_read_timeout(Some(PATIENCE))?;
    (&stream).write_all(b"{\"op\":\"events\"}\n")?;
    let mut lines = BufReader::new(&stream).lines();
    let first = lines.next().context("no reply to the events request")??;
    ensure!(first.contains("done"), "events began with {first}");
    let control = Control::open()?;
    for name in &names {
        control.create(&crate::client::spec(name))?;
        // Waited for, so each room is a reconcile pass with a new status.
        let quoted = format!("\"{name}\"");
        loop {
            let line = lines
                .next()
                .context("the event stream ended")?
                .with_context(|| {
                    format!(
                        "no room-created event for {name} while nothing read kchatd's notifications; its log:\n{}\nits threads:\n{}",
                        daemon.log(),
                        daemon.threads()
                    )
                })?;
            if line.contains(&quoted) && line.contains("room-created") {
                break;
            }
        }
    }
    let rooms = daemon.status()?["rooms"]
        .as_u64()
        .context("status without rooms")?;
    // Read from the oldest on: what was queued, then the newest status.
    daemon.wait_notify(&format!("STATUS=attached, {rooms} room(s)"))?;
    daemon.stop()
}

/// A reload whose file is good but whose apply fails (here: the new room is
/// created, but kchatd cannot save that it owns it, its state file's path
/// being a directory) reports 0 in `kchat_config_last_reload_successful`,
/// counts as a reload error, and says in the log what failed; the next
/// reload that applies cleanly reports 1 again. (Set before the reconcile,
/// the gauge said 1 for any file that parsed.)
fn a_reload_that_cannot_be_applied_is_not_successful() -> Result<()> {
    module::ensure_loaded()?;
    let _cleanup = Cleanup(vec!["unsaved-room"]);
    let dir = Kchatd::prepare("badapply", "")?;
    let daemon = Kchatd::start(&dir)?;
    let state = dir.join("state/state.json");
    let reload_ok = || -> Result<Option<f64>> {
        Ok(sample(
            &daemon.get("/metrics")?,
            "kchat_config_last_reload_successful",
        ))
    };
    ensure!(
        reload_ok()? == Some(1.0),
        "a fresh kchatd reports its last reload failed"
    );
    let _ = std::fs::remove_file(&state);
    std::fs::create_dir(&state)
        .with_context(|| format!("making {} a directory", state.display()))?;
    let config = std::fs::read_to_string(Kchatd::config_path(&dir))?;
    std::fs::write(
        Kchatd::config_path(&dir),
        format!("{config}\n[rooms.unsaved-room]\n"),
    )?;
    daemon.signal(Signal::SIGHUP)?;
    wait_for("the reload to be reported failed", PATIENCE, || {
        Ok(reload_ok()? == Some(0.0))
    })
    .with_context(|| {
        format!(
            "kchat_config_last_reload_successful stayed 1; log:\n{}",
            daemon.log()
        )
    })?;
    let scrape = daemon.get("/metrics")?;
    ensure!(
        sample(&scrape, "kchat_daemon_reload_errors_total") == Some(1.0),
        "the failed apply was not counted as a reload error:\n{scrape}"
    );
    let log = daemon.log();
    let said = log
        .lines()
        .find(|line| line.contains("config reloaded, but not applied in full"))
        .with_context(|| format!("the log does not say the reload failed:\n{log}"))?;
    ensure!(
        said.contains("state") && !log.contains("config reloaded\n"),
        "the log does not say what failed: {said}"
    );
    // The room the file declares is there all the same (the file is in
    // force); once the cause is gone, a reload that applies is a success.
    daemon.room("unsaved-room")?;
    std::fs::remove_dir(&state)?;
    daemon.signal(Signal::SIGHUP)?;
    wait_for(
        "the next reload to be reported successful",
        PATIENCE,
        || Ok(reload_ok()? == Some(1.0)),
    )
    .with_context(|| format!("log:\n{}", daemon.log()))?;
    daemon.stop()
}
