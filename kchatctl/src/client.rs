//! Talking to kchatd: one request per connection, JSON lines back.

use kchat_proto::api::{ApiError, ErrorKind, Event, Reply, Request};
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
};

/// What went wrong, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_UNAVAILABLE: u8 = 3;

impl Failure {
    pub fn failed(message: String) -> Failure {
        Failure {
            code: EXIT_FAILED,
            message,
        }
    }

    pub fn from_api(err: ApiError) -> Failure {
        let code = match err.kind {
            ErrorKind::Unavailable => EXIT_UNAVAILABLE,
            _ => EXIT_FAILED,
        };
        Failure {
            code,
            message: err.message,
        }
    }
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    fn send(&self, request: &Request) -> Result<BufReader<UnixStream>, Failure> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|err| Failure {
            code: EXIT_UNAVAILABLE,
            message: format!(
                "cannot reach kchatd at {}: {err} (is it running? systemctl status kchatd)",
                self.socket.display()
            ),
        })?;
        let mut line = serde_json::to_vec(request)
            .map_err(|err| Failure::failed(format!("cannot encode the request: {err}")))?;
        line.push(b'\n');
        stream
            .write_all(&line)
            .map_err(|err| Failure::failed(format!("cannot send the request to kchatd: {err}")))?;
        Ok(BufReader::new(stream))
    }

    fn receive(reader: &mut BufReader<UnixStream>) -> Result<Option<Reply>, Failure> {
        let mut line = String::new();
        let read = reader
            .read_line(&mut line)
            .map_err(|err| Failure::failed(format!("cannot read kchatd's reply: {err}")))?;
        if read == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|err| Failure::failed(format!("kchatd sent a reply this kchatctl cannot read ({err}); are their versions the same?")))
    }

    pub fn call(&self, request: &Request) -> Result<Reply, Failure> {
        let mut reader = self.send(request)?;
        Self::receive(&mut reader)?
            .ok_or_else(|| Failure::failed("kchatd closed the connection without a reply".into()))
    }

    /// Calls `each` for every event; stops after `limit` events if given.
    pub fn events(
        &self,
        limit: Option<usize>,
        mut each: impl FnMut(Event) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let mut reader = self.send(&Request::Events)?;
        let mut seen = 0;
        while limit.is_none_or(|limit| seen < limit) {
            match Self::receive(&mut reader)? {
                Some(Reply::Event(event)) => {
                    each(event)?;
                    seen += 1;
                }
                Some(Reply::Error(err)) => return Err(Failure::from_api(err)),
                Some(_) => {
                    return Err(Failure::failed(
                        "kchatd sent something other than an event".into(),
                    ))
                }
                None => {
                    return Err(Failure::failed(
                        "kchatd ended the event stream (did it stop?)".into(),
                    ))
                }
            }
        }
        Ok(())
    }
}
