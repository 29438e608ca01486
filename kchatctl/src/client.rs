//! Talking to kchatd (through `kchat_proto::client`), with failures turned
//! into kchatctl's exit codes.

use kchat_proto::{
    api::{ApiError, ErrorKind, Event, Reply, Request, SUBSCRIBED},
    client::{ClientError, Exchange},
};
use std::{path::PathBuf, time::Duration};

/// What went wrong, and the exit code that says so.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    /// As the API names it (`not-found`, ...), for `--json` errors.
    pub kind: &'static str,
    /// Empty when the output already said it (a detached `status`).
    pub message: String,
}

/// Exit codes; the man page lists them (`cli::EXIT_CODES`).
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_UNAVAILABLE: u8 = 3;
pub const EXIT_NOT_FOUND: u8 = 4;
pub const EXIT_DENIED: u8 = 5;
pub const EXIT_INVALID: u8 = 6;

impl Failure {
    pub fn failed(message: String) -> Failure {
        Failure {
            code: EXIT_FAILED,
            kind: "failed",
            message,
        }
    }

    pub fn not_found(message: String) -> Failure {
        Failure {
            code: EXIT_NOT_FOUND,
            kind: "not-found",
            message,
        }
    }

    /// Exit 3 with nothing more to say: the output said why.
    pub fn unavailable_quietly() -> Failure {
        Failure {
            code: EXIT_UNAVAILABLE,
            kind: "unavailable",
            message: String::new(),
        }
    }

    pub fn from_api(err: ApiError) -> Failure {
        let (code, kind) = match err.kind {
            ErrorKind::Unavailable => (EXIT_UNAVAILABLE, "unavailable"),
            ErrorKind::NotFound => (EXIT_NOT_FOUND, "not-found"),
            ErrorKind::Denied => (EXIT_DENIED, "denied"),
            ErrorKind::Invalid => (EXIT_INVALID, "invalid"),
            ErrorKind::AlreadyExists => (EXIT_FAILED, "already-exists"),
            ErrorKind::Conflict => (EXIT_FAILED, "conflict"),
            ErrorKind::Failed => (EXIT_FAILED, "failed"),
        };
        Failure {
            code,
            kind,
            message: err.message,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Failure {
        let code = match err {
            ClientError::Connect { .. } | ClientError::Timeout(_) => EXIT_UNAVAILABLE,
            _ => EXIT_FAILED,
        };
        Failure {
            code,
            kind: if code == EXIT_UNAVAILABLE {
                "unavailable"
            } else {
                "failed"
            },
            message: err.to_string(),
        }
    }
}

pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    /// A client that waits at most `timeout` for each answer.
    pub fn new(socket: PathBuf, timeout: Option<Duration>) -> Client {
        Client { socket, timeout }
    }

    pub fn call(&self, request: &Request) -> Result<Reply, Failure> {
        Ok(kchat_proto::client::call_within(
            &self.socket,
            request,
            self.timeout,
        )?)
    }

    /// Calls `subscribed` once kchatd has the subscription in place, then
    /// `each` for every event; stops after `limit` events if given. Only
    /// the subscription is bounded by the timeout: events may be rare.
    pub fn events(
        &self,
        limit: Option<usize>,
        subscribed: impl FnOnce(),
        mut each: impl FnMut(Event) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let mut exchange = Exchange::start(&self.socket, &Request::Events, self.timeout)?;
        match exchange.next_reply()? {
            Some(Reply::Done(ack)) if ack == SUBSCRIBED => subscribed(),
            Some(Reply::Error(err)) => return Err(Failure::from_api(err)),
            _ => {
                return Err(Failure::failed(
                    "kchatd did not confirm the subscription (is it older than kchatctl?)".into(),
                ));
            }
        }
        exchange.set_timeout(None)?;
        let mut seen = 0;
        while limit.is_none_or(|limit| seen < limit) {
            match exchange.next_reply()? {
                Some(Reply::Event(event)) => {
                    each(event)?;
                    seen += 1;
                }
                Some(Reply::Error(err)) => return Err(Failure::from_api(err)),
                Some(_) => {
                    return Err(Failure::failed(
                        "kchatd sent something other than an event".into(),
                    ));
                }
                None => {
                    return Err(Failure::failed(
                        "kchatd ended the event stream (did it stop?)".into(),
                    ));
                }
            }
        }
        Ok(())
    }
}
