//! A blocking client of the control socket, for kchatctl and the chat
//! client: one request per connection, reply lines back.

use crate::api::{Reply, Request};
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// How long a caller waits for kchatd's answer by default: a wedged
/// kchatd must not hang a script or a chat client's UI.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach kchatd at {socket}: {source} (is it running? systemctl status kchatd)")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot talk to kchatd: {0}")]
    Io(#[from] std::io::Error),
    #[error("kchatd sent a reply this program cannot read ({0}); are their versions the same?")]
    Decode(#[from] serde_json::Error),
    #[error("kchatd closed the connection without a reply")]
    Closed,
    #[error("kchatd did not answer within {0:?} (is it stuck? systemctl status kchatd)")]
    Timeout(Duration),
}

/// Connects to `socket`, waiting at most `timeout` for room in kchatd's
/// backlog: a blocking connect to a unix socket whose backlog is full waits
/// until kchatd accepts, forever if kchatd is stuck. Non-blocking, such a
/// connect fails with `EAGAIN` at once, so it is tried again, with pauses
/// growing to 50 ms, until the deadline.
fn connect(socket: &Path, timeout: Option<Duration>) -> std::io::Result<UnixStream> {
    use nix::{
        errno::Errno,
        sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr},
    };
    let Some(limit) = timeout else {
        return UnixStream::connect(socket);
    };
    let deadline = Instant::now() + limit;
    let address = UnixAddr::new(socket)?;
    let mut pause = Duration::from_millis(1);
    loop {
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        match socket::connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream.set_nonblocking(false)?;
                return Ok(stream);
            }
            Err(Errno::EAGAIN) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "kchatd's connection backlog stayed full",
                    ));
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// An open exchange: the request is sent, replies can be read.
pub struct Exchange {
    stream: BufReader<UnixStream>,
    timeout: Option<Duration>,
}

impl Exchange {
    /// Connects and sends `request`; every read and write waits at most
    /// `timeout` (`None`: forever).
    pub fn start(
        socket: &Path,
        request: &Request,
        timeout: Option<Duration>,
    ) -> Result<Exchange, ClientError> {
        let stream = connect(socket, timeout).map_err(|source| match (source.kind(), timeout) {
            (std::io::ErrorKind::TimedOut, Some(limit)) => ClientError::Timeout(limit),
            _ => ClientError::Connect {
                socket: socket.to_owned(),
                source,
            },
        })?;
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        let mut exchange = Exchange {
            stream: BufReader::new(stream),
            timeout,
        };
        let sent = exchange.stream.get_mut().write_all(&line);
        sent.map_err(|err| exchange.io_error(err))?;
        Ok(exchange)
    }

    /// Changes how long reads wait (an event stream waits for events
    /// forever once subscribed).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.stream.get_ref().set_read_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    fn io_error(&self, err: std::io::Error) -> ClientError {
        match (err.kind(), self.timeout) {
            (std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut, Some(limit)) => {
                ClientError::Timeout(limit)
            }
            _ => ClientError::Io(err),
        }
    }

    /// The next reply; `None` when kchatd hung up.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let mut line = String::new();
        let read = self.stream.read_line(&mut line);
        if read.map_err(|err| self.io_error(err))? == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&line)?))
    }
}

/// Sends `request` and returns the one reply, waiting at most
/// [`DEFAULT_TIMEOUT`].
pub fn call(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    call_within(socket, request, Some(DEFAULT_TIMEOUT))
}

/// Sends `request` and returns the one reply, waiting at most `timeout`.
pub fn call_within(
    socket: &Path,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Reply, ClientError> {
    Exchange::start(socket, request, timeout)?
        .next_reply()?
        .ok_or(ClientError::Closed)
}
