//! kchatd's messages to its service manager (sd_notify), sent from a thread
//! of their own.
//!
//! A notification is a datagram on a unix socket with a short queue
//! (`net.unix.max_dgram_qlen`), and a send to a full queue blocks until the
//! manager reads. Sent from the reconcile loop, one status line to a manager
//! that has stopped reading would stop reconciling, reloads and the event
//! streams with it. Here only the sending thread waits: the loop queues and
//! goes on. While it waits, a newer status replaces the one queued (the
//! manager wants to show the present, not the history) and a queued
//! watchdog ping stands for any number of them, so the queue stays short
//! and the newest status goes out as soon as the manager reads again.

use sd_notify::NotifyState;
use std::{
    collections::VecDeque,
    os::{
        linux::net::SocketAddrExt,
        unix::{
            ffi::OsStrExt,
            net::{SocketAddr, UnixDatagram},
        },
    },
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// Notifications queued beyond this are dropped, with a warning. Statuses and
/// pings are merged, so only READY/RELOADING pairs (one per SIGHUP) can pile
/// up, and a manager that has read none of 32 has stopped listening.
const MAX_QUEUED: usize = 32;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Only a `STATUS=` line: the newest replaces any queued.
    Status,
    /// Only `WATCHDOG=1`: one queued is enough.
    Ping,
    /// Anything else (READY, RELOADING, STOPPING): sent in order, each.
    Event,
}

struct Message {
    kind: Kind,
    /// The datagram's lines.
    text: String,
}

#[derive(Default)]
struct Outbox {
    queued: VecDeque<Message>,
    /// The sender thread holds a message it is sending (maybe blocked).
    sending: bool,
    /// Drops have been logged once: a manager that stopped listening would
    /// otherwise fill the log.
    warned: bool,
}

struct Shared {
    outbox: Mutex<Outbox>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Outbox> {
        // Nothing panics while holding it; and a queue is still a queue.
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Queues notifications for a thread that sends them; a no-op when kchatd
/// was not started with `NOTIFY_SOCKET` (no thread then).
pub struct Notifier {
    shared: Option<Arc<Shared>>,
}

impl Notifier {
    /// Starts the sending thread if there is a service manager to tell
    /// (`NOTIFY_SOCKET`: a path, or `@` and an abstract name).
    pub fn start() -> std::io::Result<Notifier> {
        let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Notifier { shared: None });
        };
        let address = match socket.as_bytes() {
            [b'@', name @ ..] => SocketAddr::from_abstract_name(name)?,
            path => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))?,
        };
        Self::to(address)
    }

    /// Starts the sending thread, to the manager listening at `address`.
    pub fn to(address: SocketAddr) -> std::io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        let shared = Arc::new(Shared {
            outbox: Mutex::new(Outbox::default()),
            changed: Condvar::new(),
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || send_forever(&theirs, &socket, &address))?;
        Ok(Notifier {
            shared: Some(shared),
        })
    }

    /// Queues one datagram with `states`; never waits for the manager.
    pub fn send(&self, states: &[NotifyState<'_>]) {
        let Some(shared) = &self.shared else {
            return;
        };
        let kind = if states.iter().all(|s| matches!(s, NotifyState::Status(_))) {
            Kind::Status
        } else if states.iter().all(|s| matches!(s, NotifyState::Watchdog)) {
            Kind::Ping
        } else {
            Kind::Event
        };
        let text: String = states.iter().map(|s| format!("{s}\n")).collect();
        let mut outbox = shared.lock();
        match kind {
            Kind::Status => outbox.queued.retain(|m| m.kind != Kind::Status),
            Kind::Ping if outbox.queued.iter().any(|m| m.kind == Kind::Ping) => return,
            _ => {}
        }
        if outbox.queued.len() >= MAX_QUEUED {
            if !std::mem::replace(&mut outbox.warned, true) {
                tracing::warn!(
                    dropped = %text,
                    "the service manager reads no notifications (NOTIFY_SOCKET full); dropping them"
                );
            }
            return;
        }
        outbox.queued.push_back(Message { kind, text });
        drop(outbox);
        shared.changed.notify_all();
    }

    /// Waits until everything queued has been sent, at most `within`: for
    /// STOPPING before exit, without hanging on a manager that does not read.
    pub fn flush(&self, within: Duration) {
        let Some(shared) = &self.shared else {
            return;
        };
        let deadline = Instant::now() + within;
        let mut outbox = shared.lock();
        while !outbox.queued.is_empty() || outbox.sending {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::debug!("exiting with notifications unsent");
                return;
            };
            outbox = shared
                .changed
                .wait_timeout(outbox, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

fn send_forever(shared: &Shared, socket: &UnixDatagram, address: &SocketAddr) {
    let mut outbox = shared.lock();
    loop {
        let Some(message) = outbox.queued.pop_front() else {
            outbox = shared
                .changed
                .wait(outbox)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        outbox.sending = true;
        drop(outbox);
        // A manager that is gone or restarting is not kchatd's failure.
        if let Err(err) = socket.send_to_addr(message.text.as_bytes(), address) {
            tracing::debug!(%err, "sd_notify failed");
        }
        outbox = shared.lock();
        outbox.sending = false;
        if outbox.queued.is_empty() {
            outbox.warned = false;
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manager that reads nothing until told to: kchatd's side must not
    /// wait, and once it reads, the newest status is what arrives last.
    #[test]
    fn a_manager_that_does_not_read_holds_up_nothing_and_gets_the_newest_status() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::to(SocketAddr::from_pathname(&path).unwrap()).unwrap();
        let started = Instant::now();
        // Far more than any default datagram queue holds.
        for n in 0..5_000 {
            notifier.send(&[NotifyState::Status(&format!("attached, {n} room(s)"))]);
            notifier.send(&[NotifyState::Watchdog]);
        }
        notifier.send(&[NotifyState::Ready, NotifyState::Status("ready now")]);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "queueing waited for the manager"
        );
        manager
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !seen.last().is_some_and(|s: &String| s.contains("READY=1")) {
            let n = manager.recv(&mut buf).expect("the notifications stopped");
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(seen.last().unwrap(), "READY=1\nSTATUS=ready now\n");
        // Merged while the manager did not read: what its queue held (the
        // kernel lets in one more than max_dgram_qlen), the one being sent,
        // and one each of status, ping and event.
        let queue: usize = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            seen.len() <= queue + 5,
            "{} datagrams for a queue of {queue}: not merged",
            seen.len()
        );
        notifier.flush(Duration::from_secs(60));
        assert!(notifier.shared.as_ref().unwrap().lock().queued.is_empty());
    }
}
