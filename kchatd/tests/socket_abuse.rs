//! The real kchatd binary on its real socket, abused: random bytes, random
//! JSON, oversized and endless requests, clients that never send or never
//! read. It must answer each with an error or hang up, and keep serving
//! everyone else. Runs on the host: without the module kchatd is detached,
//! which changes nothing about how it parses and answers requests.

use kchat_proto::api::{Reply, Request};
use proptest::prelude::*;
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

struct Daemon {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kchatd of one test, killed when the test ends.
fn daemon() -> Daemon {
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("kchatd.sock");
        let config = dir.path().join("kchatd.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{}\"\nstate_dir = \"{}\"\n[metrics]\nenabled = false\n",
                socket.display(),
                dir.path().join("state").display()
            ),
        )
        .expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_kchatd"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kchatd starts");
        let start = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "kchatd never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            socket,
            _dir: dir,
        }
    }
}

fn raw_exchange(socket: &Path, bytes: &[u8]) -> Option<String> {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // kchatd may hang up before reading everything: that is allowed.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).ok()?;
    Some(reply)
}

/// kchatd answers a well-formed request: it is still serving.
fn still_serving(daemon: &Daemon) {
    let reply = kchat_proto::client::call(&daemon.socket, &Request::Status).expect("status");
    assert!(matches!(reply, Reply::Status(_)), "{reply:?}");
}

fn runner() -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64))
}

#[test]
fn random_bytes_get_an_error_or_nothing() {
    let daemon = daemon();
    runner()
        .run(&proptest::collection::vec(any::<u8>(), 0..2048), |bytes| {
            if let Some(reply) = raw_exchange(&daemon.socket, &bytes)
                && !reply.is_empty()
            {
                // Whatever the bytes were, the answer is a well-formed reply.
                prop_assert!(serde_json::from_str::<Reply>(&reply).is_ok(), "{reply}");
            }
            still_serving(&daemon);
            Ok(())
        })
        .expect("kchatd survived random bytes");
}

#[test]
fn random_json_objects_are_answered() {
    let daemon = daemon();
    let strategy = ("[a-z-]{0,12}", "\\PC{0,40}", "[a-z_]{0,8}", any::<i64>());
    runner()
        .run(&strategy, |(op, room, extra, value)| {
            let request = format!(
                "{{\"op\":{},\"room\":{},\"{}\":{}}}\n",
                serde_json::to_string(&op).unwrap(),
                serde_json::to_string(&room).unwrap(),
                extra,
                value
            );
            let reply = raw_exchange(&daemon.socket, request.as_bytes());
            prop_assert!(reply.is_some(), "no reply to {request}");
            let reply = reply.unwrap_or_default();
            prop_assert!(serde_json::from_str::<Reply>(&reply).is_ok(), "{reply}");
            still_serving(&daemon);
            Ok(())
        })
        .expect("kchatd answered random JSON");
}

#[test]
fn oversized_requests_are_refused() {
    let daemon = daemon();
    let huge = vec![b'x'; kchat_proto::api::MAX_REQUEST_BYTES + 100];
    let reply = raw_exchange(&daemon.socket, &huge).expect("a reply");
    assert!(reply.contains("longer than"), "{reply}");
    still_serving(&daemon);
}

#[test]
fn silent_and_non_reading_clients_hold_nobody_up() {
    let daemon = daemon();
    let socket = &daemon.socket;
    // Forty clients that connect and say nothing, and forty that subscribe
    // to events and never read a byte.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(UnixStream::connect(socket).expect("connect"));
        let mut follower = UnixStream::connect(socket).expect("connect");
        follower
            .write_all(b"{\"op\":\"events\"}\n")
            .expect("subscribe");
        idle.push(follower);
    }
    let start = Instant::now();
    still_serving(&daemon);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a busy kchatd answered slowly"
    );
    // A client that dribbles a request slower than the timeout is cut off.
    let mut slow = UnixStream::connect(socket).expect("connect");
    slow.write_all(b"{\"op\":").expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut reply = String::new();
    let _ = slow.read_to_string(&mut reply);
    assert!(reply.contains("no request within"), "{reply}");
    drop(idle);
    still_serving(&daemon);
}

#[test]
fn an_event_stream_opens_with_its_acknowledgement() {
    let daemon = daemon();
    let mut events = kchat_proto::client::Exchange::start(&daemon.socket, &Request::Events, None)
        .expect("subscribe");
    let first = events.next_reply().expect("a reply");
    assert_eq!(
        first,
        Some(Reply::Done(kchat_proto::api::SUBSCRIBED.to_owned()))
    );
}
