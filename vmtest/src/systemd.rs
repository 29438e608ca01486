//! kchat as an operator installs it, under the real init: the guest boots
//! with systemd as PID 1 and udev (`cargo xtask vm --systemd`), and kchatd
//! is run by `systemctl` from the shipped unit.
//!
//! kchat is installed as packages (`cargo xtask deb`): the userspace, and
//! the module as `kchat-dkms`, which the real DKMS builds in the guest
//! against the test kernel's build tree, or (on the KASAN kernel, too slow
//! to compile under emulation) as `kchat-modules-RELEASE`, the package of
//! what the real DKMS built on the host.
//!
//! These tests run only in that boot (`cargo xtask test` makes it after the
//! suite); anywhere else they are ignored. They run in order and build on
//! each other: installed and started, rooms made, reloaded, stopped.

use crate::{
    client::open,
    helper::{wait_for, PATIENCE},
    Test,
};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::{
    io::{Read, Write},
    os::unix::fs::MetadataExt,
    path::Path,
    process::Command,
};

pub const TESTS: &[Test] = &[
    (
        "systemd::kchatd_comes_and_goes_with_the_module",
        kchatd_comes_and_goes_with_the_module,
    ),
    ("systemd::the_sandbox_is_in_force", the_sandbox_is_in_force),
    (
        "systemd::room_nodes_get_owner_group_and_mode_through_udev",
        room_nodes_get_owner_group_and_mode_through_udev,
    ),
    (
        "systemd::reload_applies_a_changed_config",
        reload_applies_a_changed_config,
    ),
    (
        "systemd::stop_leaves_the_rooms_working",
        stop_leaves_the_rooms_working,
    ),
    (
        "systemd::the_bridge_runs_sandboxed_from_its_shipped_unit",
        the_bridge_runs_sandboxed_from_its_shipped_unit,
    ),
    (
        "systemd::an_upgrade_keeps_an_admins_disable",
        an_upgrade_keeps_an_admins_disable,
    ),
    (
        "systemd::removing_the_module_package_leaves_nothing_behind",
        removing_the_module_package_leaves_nothing_behind,
    ),
];

/// Whether systemd is PID 1 here (what `sd_booted()` checks).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

const CONFIG: &str = "/etc/kchat/kchatd.toml";
const INSTALLED: &str = "/run/kchat-vmtest-installed";

/// Runs a command; fails with its output unless it exits 0.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?} exited {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One property of a unit, as `systemctl show` gives it.
fn property(unit: &str, name: &str) -> Result<String> {
    Ok(run("systemctl", &["show", unit, "--value", "-p", name])?
        .trim()
        .to_owned())
}

/// Where DKMS installs the module for the running kernel.
fn dkms_module() -> Result<String> {
    let release = run("uname", &["-r"])?;
    Ok(format!(
        "/lib/modules/{}/updates/dkms/kchat.ko",
        release.trim()
    ))
}

/// The package of the module DKMS built on the host (`KCHAT_MODULES_DEB`),
/// when the guest installs that instead of having DKMS build in it.
fn modules_deb() -> Option<String> {
    std::env::var("KCHAT_MODULES_DEB").ok()
}

/// Installs kchat as an admin would, both packages in one `dpkg -i` (as
/// `apt install ./kchat-dkms_*.deb ./kchat.deb` in the README; each dpkg
/// run reads its whole database, minutes on the emulated KASAN guest): the
/// module's, then the userspace's, whose maintainer scripts make the
/// group, reload udev and systemd, and enable kchatd. Once per boot. The
/// module comes with the `kchat-dkms` package (its postinst has DKMS
/// build and install it for the running kernel, whose build tree
/// `/lib/modules/$(uname -r)/build` is, as a headers package would make
/// it), or with the `kchat-modules` package of what DKMS built elsewhere.
fn install() -> Result<()> {
    if Path::new(INSTALLED).exists() {
        return Ok(());
    }
    ensure!(booted(), "systemd is not PID 1 here");
    let deb = std::env::var("KCHAT_DEB").context("KCHAT_DEB must name kchat.deb")?;
    // man-db's dpkg trigger would reindex every man page on the host's
    // disk, minutes under emulation; it skips when this flag is gone.
    let _ = std::fs::remove_file("/var/lib/man-db/auto-update");
    let mut dpkg = Command::new("dpkg");
    let module_package = match modules_deb() {
        Some(modules) => modules,
        None => {
            let dkms_deb = std::env::var("KCHAT_DKMS_DEB")
                .context("KCHAT_DKMS_DEB must name kchat-dkms's .deb")?;
            let kdir = std::env::var("KCHAT_KDIR")
                .context("KCHAT_KDIR must name the kernel's build tree")?;
            // The kernel's own rustc, as a user without it on PATH names it.
            let rustc =
                std::env::var("KCHAT_RUSTC").context("KCHAT_RUSTC must name the kernel's rustc")?;
            let release = run("uname", &["-r"])?;
            let modules = format!("/lib/modules/{}", release.trim());
            std::fs::create_dir_all(&modules)?;
            let build = format!("{modules}/build");
            let _ = std::fs::remove_file(&build);
            std::os::unix::fs::symlink(&kdir, &build)?;
            dpkg.env("RUSTC", &rustc);
            dkms_deb
        }
    };
    let out = dpkg.args(["-i", &module_package, &deb]).output()?;
    ensure!(
        out.status.success() && Path::new(&dkms_module()?).exists(),
        "installing {module_package} and {deb} did not install {}: {}\n{}{}",
        dkms_module()?,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let found = run("modinfo", &["-F", "filename", "kchat"])?;
    ensure!(
        found.trim() == dkms_module()?,
        "modprobe would load {found:?}, not the installed {}",
        dkms_module()?
    );
    ensure!(
        !Path::new("/sys/module/kchat").exists(),
        "installing the packages loaded the module"
    );
    std::fs::write(INSTALLED, "")?;
    Ok(())
}

fn start() -> Result<()> {
    install()?;
    // Type=notify: this returns once kchatd has said READY=1.
    run("systemctl", &["start", "kchatd"])?;
    Ok(())
}

fn kchatctl(args: &[&str]) -> Result<String> {
    run("kchatctl", args)
}

fn group_id(name: &str) -> Result<u32> {
    let line = run("getent", &["group", name])?;
    line.split(':')
        .nth(2)
        .and_then(|gid| gid.parse().ok())
        .with_context(|| format!("no gid in {line:?}"))
}

/// Installing the package (the module not loaded, as with a package that
/// ships none) enables kchatd bound to the module's control node: nothing
/// starts then; loading the module starts it, attached, with no restart
/// (DeviceAllow= is resolved once the node exists); unloading stops it;
/// loading again starts it again. The unit is a watchdog-armed
/// Type=notify service.
fn kchatd_comes_and_goes_with_the_module() -> Result<()> {
    install()?;
    let status = run("dpkg-query", &["-W", "-f=${Status}", "kchat"])?;
    ensure!(
        status == "install ok installed",
        "dpkg says kchat is {status:?}"
    );
    ensure!(
        run("systemctl", &["is-enabled", "kchatd"])?.trim() == "enabled",
        "the package did not enable kchatd"
    );
    ensure!(
        property("kchatd.service", "ActiveState")? == "inactive",
        "kchatd runs without the module"
    );
    group_id("kchat").context("the package did not make the kchat group")?;
    let active = |want: &str| -> Result<()> {
        wait_for(&format!("kchatd.service to be {want}"), PATIENCE, || {
            Ok(property("kchatd.service", "ActiveState")? == want)
        })
    };
    run("modprobe", &["kchat"])?;
    active("active")?;
    for (name, want) in [
        ("SubState", "running"),
        ("Type", "notify"),
        ("WatchdogUSec", "30s"),
        // Above what kchatd lets callers hold, so they cannot starve it.
        ("LimitNOFILE", "8192"),
    ] {
        let have = property("kchatd.service", name)?;
        ensure!(have == want, "kchatd.service {name}={have}, want {want}");
    }
    let status: Value = serde_json::from_str(&kchatctl(&["--json", "status"])?)?;
    ensure!(
        status["attached"] == true,
        "kchatd started by the module is not attached: {status}"
    );
    // kchatd opens the node for a moment each pass: rmmod may meet it.
    wait_for("rmmod kchat", PATIENCE, || {
        Ok(Command::new("rmmod").arg("kchat").status()?.success())
    })?;
    active("inactive")?;
    run("modprobe", &["kchat"])?;
    active("active")?;
    let status: Value = serde_json::from_str(&kchatctl(&["--json", "status"])?)?;
    ensure!(status["attached"] == true, "after the reload: {status}");
    Ok(())
}

/// What the unit asks for is what the running kchatd has: only
/// CAP_SYS_ADMIN in its bounding set, no new privileges, a seccomp filter.
fn the_sandbox_is_in_force() -> Result<()> {
    start()?;
    let pid = property("kchatd.service", "MainPID")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("no {name} in kchatd's status"))
    };
    // Bit 21 is CAP_SYS_ADMIN.
    ensure!(
        field("CapBnd:")? == format!("{:016x}", 1u64 << 21),
        "kchatd's bounding set is {}",
        field("CapBnd:")?
    );
    ensure!(field("NoNewPrivs:")? == "1", "kchatd may gain privileges");
    ensure!(
        field("Seccomp:")? == "2",
        "kchatd runs without a seccomp filter"
    );
    let exposure = run(
        "systemd-analyze",
        &["security", "--no-pager", "kchatd.service"],
    )?;
    let score = exposure
        .lines()
        .find_map(|l| l.strip_prefix("→ Overall exposure level for kchatd.service: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|score| score.parse::<f64>().ok())
        .with_context(|| format!("no overall exposure in:\n{exposure}"))?;
    eprintln!("systemd: systemd-analyze security kchatd.service (running): {score}");
    ensure!(score <= 2.5, "kchatd.service exposure {score} is above 2.5");
    Ok(())
}

/// The config room and a room made with kchatctl get their nodes with the
/// owner, group and mode asked for, processed by udev (tagged for systemd,
/// so each has a .device unit); the control node stays root's alone.
fn room_nodes_get_owner_group_and_mode_through_udev() -> Result<()> {
    start()?;
    let kchat = group_id("kchat")?;
    kchatctl(&[
        "create-room",
        "sd-room",
        "--group",
        "kchat",
        "--mode",
        "0640",
    ])?;
    run(
        "udevadm",
        &["settle", &format!("--timeout={}", PATIENCE.as_secs())],
    )?;
    for (node, gid, mode) in [
        ("/dev/kchat/ops", kchat, 0o660),
        ("/dev/kchat/sd-room", kchat, 0o640),
        ("/dev/kchat/control", 0, 0o600),
    ] {
        let meta = std::fs::metadata(node).with_context(|| format!("no {node}"))?;
        ensure!(
            meta.uid() == 0 && meta.gid() == gid && meta.mode() & 0o7777 == mode,
            "{node} is {}:{} {:o}, want 0:{gid} {mode:o}",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        );
    }
    let unit = run(
        "systemd-escape",
        &["--path", "--suffix=device", "/dev/kchat/sd-room"],
    )?;
    wait_for("the room's .device unit", PATIENCE, || {
        Ok(property(unit.trim(), "ActiveState")? == "active")
    })?;
    let db = run(
        "udevadm",
        &["info", "--query=property", "/dev/kchat/sd-room"],
    )?;
    ensure!(
        db.contains("TAGS=") && db.contains(":systemd:"),
        "udev: {db}"
    );
    Ok(())
}

/// A room added to kchatd.toml appears after `systemctl reload kchatd`,
/// and the unit stays active throughout.
fn reload_applies_a_changed_config() -> Result<()> {
    start()?;
    let mut config = std::fs::read_to_string(CONFIG)?;
    config.push_str("\n[rooms.sd-reloaded]\npolicy = \"block\"\n");
    std::fs::write(CONFIG, config)?;
    run("systemctl", &["reload", "kchatd"])?;
    wait_for("the reloaded room", PATIENCE, || {
        Ok(Path::new("/dev/kchat/sd-reloaded").exists())
    })?;
    let info: Value = serde_json::from_str(&kchatctl(&["--json", "info", "sd-reloaded"])?)?;
    ensure!(
        info["origin"] == "config" && info["settings"]["policy"] == "block",
        "kchatctl info: {info}"
    );
    ensure!(
        property("kchatd.service", "ActiveState")? == "active",
        "kchatd is not active after the reload"
    );
    let journal = run("journalctl", &["-u", "kchatd", "--no-pager", "-o", "cat"])?;
    ensure!(
        journal.contains("config reloaded"),
        "the journal does not show the reload:\n{journal}"
    );
    // Structured fields under the names the docs give.
    let fields = run(
        "journalctl",
        &["-u", "kchatd", "--no-pager", "-o", "verbose"],
    )?;
    ensure!(
        fields.contains("ROOM=sd-reloaded") && !fields.contains("F_ROOM="),
        "the journal lacks ROOM= for the reloaded room:\n{fields}"
    );
    let status = property("kchatd.service", "StatusText")?;
    ensure!(
        status.starts_with("attached, "),
        "systemctl status shows {status:?}"
    );
    // A bad config fails the reload where the admin sees it; the old
    // config keeps running.
    let good = std::fs::read_to_string(CONFIG)?;
    std::fs::write(CONFIG, format!("{good}\n[rooms.sd-bad]\nsize = 1\n"))?;
    let refused = Command::new("systemctl")
        .args(["reload", "kchatd"])
        .output();
    std::fs::write(CONFIG, &good)?;
    let refused = refused?;
    ensure!(
        !refused.status.success(),
        "systemctl reload of a bad config succeeded"
    );
    ensure!(
        property("kchatd.service", "ActiveState")? == "active",
        "kchatd is not active after a refused reload"
    );
    Ok(())
}

/// `systemctl stop kchatd` ends the daemon, not the rooms: chat still
/// flows, kchatctl says the daemon is away (exit 3), and a new start
/// adopts the rooms as they are.
fn stop_leaves_the_rooms_working() -> Result<()> {
    start()?;
    let room = Path::new("/dev/kchat/sd-room");
    let mut reader = open(room, true, false, true)?;
    run("systemctl", &["stop", "kchatd"])?;
    ensure!(
        property("kchatd.service", "ActiveState")? == "inactive",
        "kchatd did not stop"
    );
    open(room, false, true, true)?.write_all(b"still here\n")?;
    let mut got = [0u8; 64];
    let n = reader.read(&mut got)?;
    ensure!(&got[..n] == b"still here\n", "read {:?}", &got[..n]);
    let away = Command::new("kchatctl").arg("status").output()?;
    ensure!(
        away.status.code() == Some(3),
        "kchatctl status with kchatd stopped exited {}",
        away.status
    );
    start()?;
    let list: Value = serde_json::from_str(&kchatctl(&["--json", "list"])?)?;
    for room in ["sd-room", "ops", "sd-reloaded"] {
        if !list
            .as_array()
            .is_some_and(|rooms| rooms.iter().any(|r| r["name"] == room))
        {
            bail!("{room} is not among the rooms after the restart: {list}");
        }
    }
    Ok(())
}

/// kchat-bridge as shipped: installed but not enabled; started with
/// `systemctl` against a local nats-server (JetStream on), it runs with
/// only CAP_SYS_ADMIN under seccomp, reaches rooms created after it
/// started (DeviceAllow=char-kchat), bridges a drop room over core NATS and
/// a block room over JetStream, keeps its place in its StateDirectory, and
/// `kchat-bridge status --json` reports it all.
fn the_bridge_runs_sandboxed_from_its_shipped_unit() -> Result<()> {
    start()?;
    let enabled = Command::new("systemctl")
        .args(["is-enabled", "kchat-bridge"])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&enabled.stdout).trim() == "disabled",
        "the package enabled kchat-bridge: {}",
        String::from_utf8_lossy(&enabled.stdout)
    );
    let mut nats = Command::new("nats-server")
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            "4222",
            "-js",
            "-sd",
            "/tmp/sd-nats",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting nats-server")?;
    let outcome =
        (|| -> Result<()> {
            wait_for("nats-server to listen", PATIENCE, || {
                Ok(std::net::TcpStream::connect(("127.0.0.1", 4222)).is_ok())
            })?;
            kchatctl(&["create-room", "sd-fed"])?;
            std::fs::write(
                "/etc/kchat/bridge.toml",
                "node = \"vm\"\n[nats]\nservers = [\"nats://127.0.0.1:4222\"]\n\
             [rooms.sd-fed]\n[rooms.sd-ledger]\n",
            )?;
            run("systemctl", &["start", "kchat-bridge"])?;
            // Created after the bridge started: still within its device rule.
            kchatctl(&["create-room", "sd-ledger", "--policy", "block"])?;
            let pid = property("kchat-bridge.service", "MainPID")?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            ensure!(
                status.contains(&format!("CapBnd:\t{:016x}", 1u64 << 21))
                    && status.contains("Seccomp:\t2")
                    && status.contains("NoNewPrivs:\t1"),
                "kchat-bridge is not sandboxed as its unit says:\n{status}"
            );
            let bridged = |json: &Value| {
                json["rooms"]["sd-fed"]["up"] == true
                    && json["rooms"]["sd-fed"]["delivery"] == "core"
                    && json["rooms"]["sd-ledger"]["up"] == true
                    && json["rooms"]["sd-ledger"]["delivery"] == "jetstream"
            };
            let mut json = Value::Null;
            wait_for("both rooms bridged", PATIENCE, || {
                json = serde_json::from_str(&run("kchat-bridge", &["status", "--json"])?)?;
                Ok(bridged(&json))
            })
            .with_context(|| format!("kchat-bridge status: {json}"))?;
            open(Path::new("/dev/kchat/sd-ledger"), false, true, false)?.write_all(b"kept\n")?;
            wait_for(
                "the block room's message published and its place saved",
                PATIENCE,
                || {
                    json = serde_json::from_str(&run("kchat-bridge", &["status", "--json"])?)?;
                    let state = std::fs::read_to_string("/var/lib/kchat-bridge/sd-ledger.json")
                        .unwrap_or_default();
                    Ok(json["rooms"]["sd-ledger"]["published"] == 1
                        && state.contains("\"published\":"))
                },
            )
            .with_context(|| format!("kchat-bridge status: {json}"))?;
            run("systemctl", &["stop", "kchat-bridge"])?;
            let away = Command::new("kchat-bridge").arg("status").output()?;
            ensure!(
                away.status.code() == Some(3),
                "kchat-bridge status with the bridge stopped exited {}",
                away.status
            );
            Ok(())
        })();
    let _ = nats.kill();
    let _ = nats.wait();
    outcome
}

/// Upgrading (here: installing the package again) neither re-enables a
/// kchatd an admin disabled nor starts it; a running, enabled one is
/// restarted and stays enabled.
fn an_upgrade_keeps_an_admins_disable() -> Result<()> {
    start()?;
    let deb = std::env::var("KCHAT_DEB").context("KCHAT_DEB must name kchat.deb")?;
    // The image this guest shares may forbid maintainer scripts to touch
    // services (a policy-rc.d answering 101, as container images do); the
    // guest's root is a throwaway overlay, so set it aside, as a machine
    // that runs services has none.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    if policy.exists() {
        std::fs::rename(policy, "/usr/sbin/policy-rc.d.kchat-test")?;
    }
    let before = property("kchatd.service", "MainPID")?;
    run("dpkg", &["-i", &deb])?;
    ensure!(
        run("systemctl", &["is-enabled", "kchatd"])?.trim() == "enabled",
        "an upgrade disabled kchatd"
    );
    ensure!(
        property("kchatd.service", "ActiveState")? == "active"
            && property("kchatd.service", "MainPID")? != before,
        "an upgrade did not restart the running kchatd"
    );
    run("systemctl", &["disable", "--now", "kchatd"])?;
    run("dpkg", &["-i", &deb])?;
    let enabled = Command::new("systemctl")
        .args(["is-enabled", "kchatd"])
        .output()?;
    let state = String::from_utf8_lossy(&enabled.stdout).trim().to_owned();
    let active = property("kchatd.service", "ActiveState")?;
    // Leave it as the next boot of this test expects: enabled, running.
    run("systemctl", &["enable", "--now", "kchatd"])?;
    ensure!(
        state == "disabled" && active == "inactive",
        "after an upgrade, the kchatd an admin disabled is {state} and {active}"
    );
    Ok(())
}

/// Removing the module's package (the module unloaded first, as an admin
/// would) takes it away: `kchat-dkms` every DKMS build of it (the
/// installed module, DKMS's state and the sources), `kchat-modules` the
/// module; `modprobe` no longer finds kchat.
fn removing_the_module_package_leaves_nothing_behind() -> Result<()> {
    install()?;
    run("systemctl", &["stop", "kchatd"])?;
    // kchatd may still hold the node for a moment: rmmod may meet it.
    wait_for("rmmod kchat", PATIENCE, || {
        Ok(!Path::new("/sys/module/kchat").exists()
            || Command::new("rmmod").arg("kchat").status()?.success())
    })?;
    let package = match modules_deb() {
        Some(_) => format!("kchat-modules-{}", run("uname", &["-r"])?.trim()),
        None => "kchat-dkms".to_owned(),
    };
    run("dpkg", &["-r", &package])?;
    let version = env!("CARGO_PKG_VERSION");
    for left in [
        dkms_module()?,
        "/var/lib/dkms/kchat".to_owned(),
        format!("/usr/src/kchat-{version}"),
    ] {
        ensure!(
            !Path::new(&left).exists(),
            "{left} is left after dpkg -r {package}"
        );
    }
    let found = Command::new("modinfo").arg("kchat").output()?;
    ensure!(
        !found.status.success(),
        "modinfo still finds kchat after dpkg -r {package}: {}",
        String::from_utf8_lossy(&found.stdout)
    );
    Ok(())
}
