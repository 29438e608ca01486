//! A blocking client of the control socket, for kchatctl and the chat
//! client: one request per connection, reply lines back.

use crate::api::{Reply, Request};
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

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
}

/// An open exchange: the request is sent, replies can be read.
pub struct Exchange(BufReader<UnixStream>);

impl Exchange {
    pub fn start(socket: &Path, request: &Request) -> Result<Exchange, ClientError> {
        let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line)?;
        Ok(Exchange(BufReader::new(stream)))
    }

    /// The next reply; `None` when kchatd hung up.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        let mut line = String::new();
        if self.0.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&line)?))
    }
}

/// Sends `request` and returns the one reply.
pub fn call(socket: &Path, request: &Request) -> Result<Reply, ClientError> {
    Exchange::start(socket, request)?
        .next_reply()?
        .ok_or(ClientError::Closed)
}
