//! Checks of what operators install, run by `cargo xtask test` on the host:
//! the systemd unit verifies and keeps its exposure score, the alert rules
//! and every dashboard query parse (promtool), and `xtask install` stages
//! every file. That the metric names they use exist is checked against a
//! real scrape in the VM suite (`daemon::dashboards_use_only_real_metrics`).

use crate::{install, kernel::Kernel, paths, process};
use anyhow::{bail, ensure, Context, Result};
use std::{fs, path::Path, process::Command};

/// `systemd-analyze security` exposure each unit must stay at or under
/// (kchatd scores 2.3 "OK" today; 0 is best, 10 worst).
const MAX_EXPOSURE: f64 = 2.5;

/// The daemons with a unit in deploy/systemd, named as their binary.
pub const UNITS: &[&str] = &["kchatd", "kchat-bridge"];

/// The unit with ExecStart pointing at the built binary, so
/// `systemd-analyze` finds an executable.
fn staged_unit(name: &str) -> Result<std::path::PathBuf> {
    let unit = fs::read_to_string(paths::root().join(format!("deploy/systemd/{name}.service")))?;
    let binary = paths::target().join("debug").join(name);
    let dir = paths::target().join("deploy-check");
    fs::create_dir_all(&dir)?;
    let staged = dir.join(format!("{name}.service"));
    fs::write(
        &staged,
        unit.replace(
            &format!("/usr/bin/{name} "),
            &format!("{} ", binary.display()),
        ),
    )?;
    Ok(staged)
}

pub fn unit_verifies(name: &str) -> Result<()> {
    let out = process::output(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(staged_unit(name)?),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys too; any complaint is a failure.
    ensure!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
    Ok(())
}

pub fn unit_exposure(name: &str) -> Result<f64> {
    let out = process::output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(staged_unit(name)?),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let score = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no exposure score in: {text}"))?;
    ensure!(
        score <= MAX_EXPOSURE,
        "{name}.service exposure is {score}, above {MAX_EXPOSURE}: a hardening option went missing"
    );
    Ok(score)
}

/// `promtool <verb> rules FILE`, its output in the error when it fails.
fn promtool_rules(verb: &str, file: &Path) -> Result<()> {
    let out = process::output(Command::new("promtool").arg(verb).arg("rules").arg(file))?;
    if !out.status.success() {
        bail!(
            "promtool {verb} rules {}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub fn alert_rules_check() -> Result<()> {
    promtool_rules("check", &paths::root().join("dashboards/kchat-alerts.yml"))
}

/// promtool's unit tests of the rules (`dashboards/kchat-alerts.test.yml`):
/// each alert fires on the series it watches, after its `for:`, with its
/// labels and text.
pub fn alert_rules_test() -> Result<()> {
    promtool_rules(
        "test",
        &paths::root().join("dashboards/kchat-alerts.test.yml"),
    )
}

/// Every `expr` in the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Result<Vec<String>> {
    let path = paths::root().join("dashboards/kchat.json");
    let dashboard: serde_json::Value = serde_json::from_str(&fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        for target in panel["targets"]
            .as_array()
            .context("panel without targets")?
        {
            let expr = target["expr"].as_str().context("target without expr")?;
            queries.push(
                expr.replace("$__rate_interval", "5m")
                    .replace("$room", ".*")
                    .replace("$job", ".*"),
            );
        }
    }
    ensure!(!queries.is_empty(), "the dashboard has no queries");
    Ok(queries)
}

/// promtool parses PromQL only in rule files, so each query becomes a
/// recording rule of a throwaway file.
pub fn dashboard_queries_parse() -> Result<()> {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, query) in dashboard_queries()?.iter().enumerate() {
        let quoted = serde_json::to_string(query)?;
        rules.push_str(&format!(
            "      - record: dashboard:query{n}\n        expr: {quoted}\n"
        ));
    }
    let file = paths::target().join("deploy-check/dashboard-queries.yml");
    fs::create_dir_all(file.parent().context("path")?)?;
    fs::write(&file, rules)?;
    promtool_rules("check", &file)
}

/// `xtask install --destdir` stages every file an operator needs.
/// Where `install_stages_everything` stages its tree.
pub fn install_check_dir() -> std::path::PathBuf {
    paths::target().join("install-check")
}

pub fn install_stages_everything(kernel: &Kernel) -> Result<()> {
    let dest = install_check_dir();
    let _ = fs::remove_dir_all(&dest);
    let installed = install::run(&install::InstallArgs {
        destdir: dest.clone(),
        kdir: Some(kernel.build_dir.clone()),
        no_module: false,
        debug: true,
    })?;
    for want in [
        "usr/bin/kchatd",
        "usr/bin/kchatctl",
        "usr/bin/kchat",
        "usr/lib/systemd/system/kchatd.service",
        "usr/bin/kchat-bridge",
        "usr/lib/systemd/system/kchat-bridge.service",
        "etc/kchat/bridge.toml",
        "usr/share/man/man8/kchat-bridge.8",
        "usr/lib/udev/rules.d/60-kchat.rules",
        "usr/lib/sysusers.d/kchat.conf",
        "usr/lib/tmpfiles.d/kchat.conf",
        "usr/lib/modules-load.d/kchat.conf",
        "etc/kchat/kchatd.toml",
        "usr/share/man/man1/kchatctl.1",
        "usr/share/man/man1/kchatctl-create-room.1",
        "usr/share/man/man8/kchatd.8",
        "usr/share/man/man5/kchatd.toml.5",
        "usr/share/bash-completion/completions/kchatctl",
        "usr/share/kchat/dashboards/kchat.json",
        "usr/share/kchat/nats/nats-server.conf",
    ] {
        ensure!(dest.join(want).is_file(), "install did not stage {want}");
    }
    ensure!(
        installed.iter().any(|p| p.ends_with("extra/kchat.ko")),
        "install did not stage the module"
    );
    // Every man page renders, and groff has nothing to say about it.
    for page in [
        "usr/share/man/man1/kchatctl.1",
        "usr/share/man/man8/kchatd.8",
        "usr/share/man/man8/kchat-bridge.8",
        "usr/share/man/man5/kchatd.toml.5",
    ] {
        let out = process::output(
            Command::new("groff")
                .args(["-man", "-ww", "-z"])
                .arg(dest.join(page)),
        )?;
        ensure!(
            out.status.success() && out.stderr.is_empty(),
            "{page} does not render cleanly: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The example config is valid as shipped.
    let out = process::output(
        Command::new(dest.join("usr/bin/kchatd"))
            .arg("--check")
            .arg("--config")
            .arg(example_config_for_check(&dest)?),
    )?;
    ensure!(
        out.status.success(),
        "the example kchatd.toml does not pass --check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = process::output(
        Command::new(dest.join("usr/bin/kchat-bridge"))
            .arg("--check")
            .arg("--config")
            .arg(dest.join("etc/kchat/bridge.toml")),
    )?;
    ensure!(
        out.status.success(),
        "the example bridge.toml does not pass --check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The example names the `kchat` group, which sysusers makes on a real
/// install but this machine may lack: check it with root's group instead.
fn example_config_for_check(dest: &Path) -> Result<std::path::PathBuf> {
    let text = fs::read_to_string(dest.join("etc/kchat/kchatd.toml"))?;
    let file = dest.join("kchatd-check.toml");
    fs::write(
        &file,
        text.replace("admin_group = \"kchat\"", "admin_group = \"root\"")
            .replace("group = \"kchat\"", "group = \"root\""),
    )?;
    Ok(file)
}
