//! The control socket: JSON lines over a unix socket, callers identified by
//! the kernel (SO_PEERCRED). See `kchat_proto::api` for the protocol.
//!
//! Each connection is its own task with a read limit and an idle timeout,
//! so a client that sends garbage, too much, or nothing at all costs one
//! task for a while and never holds up anyone else.

use crate::{auth, daemon::Daemon};
use kchat_proto::api::{ApiError, ErrorKind, Reply, Request, MAX_REQUEST_BYTES, SUBSCRIBED};
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::broadcast::error::RecvError,
};

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
    stream.write_all(&line).await
}

fn invalid(message: String) -> Reply {
    Reply::Error(ApiError {
        kind: ErrorKind::Invalid,
        message,
    })
}

async fn connection(stream: UnixStream, daemon: &Daemon) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let admin_gid = daemon.with_config(|c| c.admin_group.as_ref().map(|g| g.gid));
    let admin = auth::is_admin(cred.uid(), cred.gid(), admin_gid);
    let (read, mut write) = stream.into_split();
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
        return events(daemon, reader, &mut write).await;
    }
    // Requests do blocking ioctls and file writes: keep them off the
    // runtime's worker threads' hot path.
    let reply = tokio::task::block_in_place(|| daemon.handle(request, admin));
    send(&mut write, &reply).await
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
