//! kchat's in-guest test suite. `cargo xtask test` builds it on the host and
//! runs it in the test VM as root, with `KCHAT_KMOD` naming `kchat.ko`. It
//! expects to be the only user of the module while it runs (one test at a
//! time: loading and unloading are global).

mod abuse;
mod agent;
mod bridge;
mod chat;
mod chatclient;
mod client;
mod control;
mod daemon;
mod faults;
mod fuzz;
mod helper;
mod jobs;
mod limits;
mod liveness;
mod mapped;
mod model;
mod modes;
mod module;
mod relay;
mod rooms;
mod soak;
mod stress;
mod systemd;
mod trust;
mod twonode;
mod writes;

use libtest_mimic::{Arguments, Trial};

/// A test: a name and a function that fails with a message.
pub type Test = (&'static str, fn() -> anyhow::Result<()>);

fn main() -> std::process::ExitCode {
    if let Some(code) = helper::run_if_requested() {
        return code;
    }
    if let Some(code) = jobs::run_if_requested() {
        return code;
    }
    if let Some(port) = std::env::var(agent::AGENT_VAR)
        .ok()
        .and_then(|p| p.parse().ok())
    {
        return agent::serve(port);
    }
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    let trials = [
        module::TESTS,
        control::TESTS,
        rooms::TESTS,
        chat::TESTS,
        modes::TESTS,
        writes::TESTS,
        mapped::TESTS,
        model::TESTS,
        trust::TESTS,
        liveness::TESTS,
        relay::TESTS,
        bridge::TESTS,
        limits::TESTS,
        stress::TESTS,
        fuzz::TESTS,
        faults::TESTS,
        abuse::TESTS,
        soak::TESTS,
        daemon::TESTS,
        chatclient::TESTS,
        systemd::TESTS,
        twonode::TESTS,
    ]
    .into_iter()
    .flatten()
    .map(|&(name, test)| {
        Trial::test(name, move || {
            test().map_err(|err| format!("{err:#}").into())
        })
        // Only a boot with systemd as PID 1, or a pair of guests, runs
        // these (`xtask test` makes both); the plain suite lists them as
        // ignored.
        .with_ignored_flag(
            (name.starts_with("systemd::") && !systemd::booted())
                || (name.starts_with("twonode::") && !twonode::configured()),
        )
    })
    .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
