//! How kchatd and kchat-bridge log, one way for both: to stderr (in
//! colour only at a terminal), or, when stderr is the journal stream
//! systemd connected, to the journal with each event's fields as journal
//! fields (`ROOM`, `NODE`, `ERROR`, `ACTION`, ...: `journalctl -u UNIT
//! ROOM=lobby`). `RUST_LOG` filters, `info` by default.

use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter};

/// Installs the global subscriber; call once, first thing.
pub fn init() {
    init_with_fields(&[]);
}

/// [`init`], with `fields` (name, value) added to every journal entry
/// (the bridge's `NODE`): `journalctl NODE=node-a` finds one node's
/// entries among several bridges', or in journals gathered from many
/// machines. Not shown on stderr, where the process is known.
pub fn init_with_fields(fields: &[(&str, &str)]) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    // Under systemd, stderr is the journal already; the journald layer adds
    // the structured fields to each entry.
    if stderr_is_the_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        let journald = journald
            .with_field_prefix(None)
            .with_custom_fields(fields.iter().copied());
        registry.with(journald).init();
        return;
    }
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(terminal),
        )
        .init();
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM`
/// names its device and inode, as sd_journal_stream_fd(3) says to check): an
/// inherited variable with stderr redirected elsewhere is not. A handful of
/// lines, so no crate for them.
pub fn stderr_is_the_journal() -> bool {
    use std::os::fd::AsFd;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    device.parse() == Ok(stat.st_dev) && inode.parse() == Ok(stat.st_ino)
}
