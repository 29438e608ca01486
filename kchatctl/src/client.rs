//! Talking to kchatd (through `kchat_proto::client`), with failures turned
//! into kchatctl's exit codes.

use kchat_proto::{
    api::{ApiError, ErrorKind, Event, Reply, Request, SUBSCRIBED},
    client::{ClientError, Exchange},
};
use std::path::PathBuf;

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

impl From<ClientError> for Failure {
    fn from(err: ClientError) -> Failure {
        let code = match err {
            ClientError::Connect { .. } => EXIT_UNAVAILABLE,
            _ => EXIT_FAILED,
        };
        Failure {
            code,
            message: err.to_string(),
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

    pub fn call(&self, request: &Request) -> Result<Reply, Failure> {
        Ok(kchat_proto::client::call(&self.socket, request)?)
    }

    /// Calls `subscribed` once kchatd has the subscription in place, then
    /// `each` for every event; stops after `limit` events if given.
    pub fn events(
        &self,
        limit: Option<usize>,
        subscribed: impl FnOnce(),
        mut each: impl FnMut(Event) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let mut exchange = Exchange::start(&self.socket, &Request::Events)?;
        match exchange.next_reply()? {
            Some(Reply::Done(ack)) if ack == SUBSCRIBED => subscribed(),
            Some(Reply::Error(err)) => return Err(Failure::from_api(err)),
            _ => {
                return Err(Failure::failed(
                    "kchatd did not confirm the subscription (is it older than kchatctl?)".into(),
                ));
            }
        }
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
