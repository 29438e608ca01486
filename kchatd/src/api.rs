//! The control socket: JSON lines over a unix socket, callers identified by
//! the kernel (SO_PEERCRED). See `kchat_proto::api` for the protocol.
//!
//! Each connection is its own task with a read limit and an idle timeout,
//! and every reply (each event too) must be taken within a time limit, so a
//! client that sends garbage, too much, nothing at all, or never reads what
//! it asked for costs one task for a while and never holds up anyone else.
//!
//! The socket is open to every local user, so what one user may hold is
//! capped ([`Gate`]): connections per uid and in all, and event
//! subscribers. Admins (root, the admin group) are not held to those caps,
//! so no user can lock them out by holding connections; the unit's
//! `LimitNOFILE=` stays well above the caps.

use crate::{auth::Peer, daemon::Daemon};
use kchat_proto::api::{ApiError, ErrorKind, Reply, Request, MAX_REQUEST_BYTES, SUBSCRIBED};
use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reply line (or event) may wait for the client to make room
/// for it: a client that stops reading is hung up on, and gives back its
/// place under the caps, instead of holding it (and its task) for ever.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one uid that is not an admin may hold at once.
pub const MAX_CONNECTIONS_PER_UID: usize = 32;
/// Connections all callers that are not admins may hold at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Event streams (`kchatctl events`) open at once, admins' included up to
/// `MAX_CONNECTIONS` more.
pub const MAX_SUBSCRIBERS: usize = 64;

/// Who holds how many connections; a [`Ticket`] is one of them.
#[derive(Debug, Default)]
pub struct Gate {
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    by_uid: HashMap<u32, usize>,
    /// Non-admin connections in all.
    total: usize,
    subscribers: usize,
}

/// One admitted connection; gives its place back when dropped.
pub struct Ticket<'a> {
    gate: &'a Gate,
    /// The uid counted, for callers held to the caps.
    counted: Option<u32>,
    subscriber: bool,
}

impl Gate {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Only counters live here; a panic cannot leave them half-updated.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `peer`, or says why not.
    pub fn admit(&self, peer: &Peer, admin: bool) -> Result<Ticket<'_>, String> {
        if admin {
            return Ok(Ticket {
                gate: self,
                counted: None,
                subscriber: false,
            });
        }
        let mut held = self.held();
        let mine = held.by_uid.get(&peer.uid).copied().unwrap_or(0);
        if mine >= MAX_CONNECTIONS_PER_UID {
            return Err(format!(
                "too many connections from uid {} ({MAX_CONNECTIONS_PER_UID} at once); close some and retry",
                peer.uid
            ));
        }
        if held.total >= MAX_CONNECTIONS {
            return Err(format!(
                "kchatd is serving {MAX_CONNECTIONS} connections; retry later"
            ));
        }
        *held.by_uid.entry(peer.uid).or_default() += 1;
        held.total += 1;
        Ok(Ticket {
            gate: self,
            counted: Some(peer.uid),
            subscriber: false,
        })
    }
}

impl Ticket<'_> {
    /// Turns the connection into an event stream, if there is room for one.
    fn subscribe(&mut self) -> Result<(), String> {
        let mut held = self.gate.held();
        let cap = if self.counted.is_some() {
            MAX_SUBSCRIBERS
        } else {
            MAX_SUBSCRIBERS + MAX_CONNECTIONS
        };
        if held.subscribers >= cap {
            return Err(format!(
                "kchatd is streaming events to {MAX_SUBSCRIBERS} clients; retry later"
            ));
        }
        held.subscribers += 1;
        self.subscriber = true;
        Ok(())
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut held = self.gate.held();
        if self.subscriber {
            held.subscribers -= 1;
        }
        if let Some(uid) = self.counted {
            held.total -= 1;
            if let Some(count) = held.by_uid.get_mut(&uid) {
                *count -= 1;
                if *count == 0 {
                    held.by_uid.remove(&uid);
                }
            }
        }
    }
}

/// Binds the socket: removes a stale one left by a crash, refuses to start
/// if another kchatd answers on it, and lets anyone connect (what a caller
/// may do is decided per request).
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if UnixStream::connect(path).await.is_ok() {
        anyhow::bail!(
            "another kchatd is already listening on {}; stop it first",
            path.display()
        );
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => anyhow::bail!("cannot remove stale socket {}: {err}", path.display()),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", dir.display()))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|err| anyhow::anyhow!("cannot open up {}: {err}", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    if let Err(err) = connection(stream, &daemon).await {
                        tracing::debug!(%err, "control connection ended");
                    }
                });
            }
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%err, "accept failed on the control socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(stream: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(REPLY_TIMEOUT, stream.write_all(&line)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the client took no reply for {} s; hung up on it",
                REPLY_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn invalid(message: String) -> Reply {
    Reply::Error(ApiError {
        kind: ErrorKind::Invalid,
        message,
    })
}

async fn connection(stream: UnixStream, daemon: &Daemon) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer::of(&stream, cred.uid(), cred.gid())?;
    let admin = peer.is_admin(daemon.admin_gid());
    let (read, mut write) = stream.into_split();
    let mut ticket = match daemon.gate.admit(&peer, admin) {
        Ok(ticket) => ticket,
        Err(message) => return refuse(daemon, &mut write, message).await,
    };
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let request = match read {
        Err(_) => return send(&mut write, &invalid("no request within 10 s".into())).await,
        Ok(result) => {
            result?;
            if line.len() > MAX_REQUEST_BYTES {
                let message = format!("request longer than {MAX_REQUEST_BYTES} bytes");
                return send(&mut write, &invalid(message)).await;
            }
            match serde_json::from_slice::<Request>(&line) {
                Ok(request) => request,
                Err(err) => return send(&mut write, &invalid(format!("bad request: {err}"))).await,
            }
        }
    };
    tracing::debug!(uid = cred.uid(), ?request, "request");
    if request == Request::Events {
        if let Err(message) = ticket.subscribe() {
            return refuse(daemon, &mut write, message).await;
        }
        return events(daemon, reader, &mut write).await;
    }
    // Requests do blocking ioctls and file writes: keep them off the
    // runtime's worker threads' hot path.
    let reply = tokio::task::block_in_place(|| daemon.handle(request, admin));
    send(&mut write, &reply).await
}

/// Turns a caller away over a cap: counted, and told why.
async fn refuse(
    daemon: &Daemon,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    message: String,
) -> std::io::Result<()> {
    daemon
        .health
        .refused_connections
        .fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%message, "connection refused");
    let reply = Reply::Error(ApiError {
        kind: ErrorKind::Unavailable,
        message,
    });
    send(write, &reply).await
}

/// Streams events until the client hangs up (or the daemon stops).
async fn events(
    daemon: &Daemon,
    mut reader: impl AsyncReadExt + Unpin,
    write: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut events = daemon.subscribe();
    // Tells the client that every event from now on reaches it, so a caller
    // can act and know it will see what its action causes.
    send(write, &Reply::Done(SUBSCRIBED.to_owned())).await?;
    let mut scratch = [0u8; 64];
    loop {
        let next = tokio::select! {
            next = events.recv() => next,
            // Anything read after the request, or EOF, ends the stream:
            // without this, a gone client would hold its task until the
            // next event.
            _ = reader.read(&mut scratch) => return Ok(()),
        };
        match next {
            Ok(event) => send(write, &Reply::Event(event)).await?,
            Err(RecvError::Lagged(missed)) => {
                let message = format!("{missed} events were dropped: the client read too slowly");
                send(
                    write,
                    &Reply::Error(ApiError {
                        kind: ErrorKind::Failed,
                        message,
                    }),
                )
                .await?;
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// Removes the socket file on shutdown.
pub struct SocketGuard(pub PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
