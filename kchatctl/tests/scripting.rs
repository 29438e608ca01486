//! kchatctl's contract with scripts, against a stand-in for kchatd on a
//! real unix socket: bounded waits, exit codes by kind, JSON errors.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixListener,
    process::{Command, Output},
    time::{Duration, Instant},
};

fn kchatctl(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kchatctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running kchatctl")
}

/// A socket whose "kchatd" answers every request with `reply` (or, with
/// `None`, accepts and never answers), until the test ends.
fn stand_in(reply: Option<&'static str>) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kchatd.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            let Some(reply) = reply else {
                held.push(stream);
                continue;
            };
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            if reader.read_line(&mut line).is_ok() {
                let _ = (&stream).write_all(reply.as_bytes());
            }
        }
    });
    (dir, path)
}

#[test]
fn a_kchatd_that_does_not_answer_fails_in_time_with_exit_3() {
    let (_dir, socket) = stand_in(None);
    let start = Instant::now();
    let out = kchatctl(&socket, &["--timeout", "1", "status"]);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "kchatctl waited {:?}",
        start.elapsed()
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer within"),
        "{out:?}"
    );
}

#[test]
fn each_kind_of_failure_has_its_exit_code_and_json_error() {
    for (kind, code) in [
        ("not-found", 4),
        ("denied", 5),
        ("invalid", 6),
        ("already-exists", 1),
        ("unavailable", 3),
    ] {
        let reply: &'static str = Box::leak(
            format!("{{\"reply\":\"error\",\"data\":{{\"kind\":\"{kind}\",\"message\":\"because {kind}\"}}}}\n")
                .into_boxed_str(),
        );
        let (_dir, socket) = stand_in(Some(reply));
        let out = kchatctl(&socket, &["--json", "info", "lobby"]);
        assert_eq!(out.status.code(), Some(code), "{kind}: {out:?}");
        let error: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|err| panic!("{kind}: {err}: {out:?}"));
        assert_eq!(error["error"]["kind"], kind, "{error}");
        assert_eq!(
            error["error"]["message"],
            format!("because {kind}"),
            "{error}"
        );
    }
}

#[test]
fn man_pages_go_into_a_directory_that_did_not_exist() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().join("new/man1");
    let out = Command::new(env!("CARGO_BIN_EXE_kchatctl"))
        .args(["man", "--out-dir"])
        .arg(&out_dir)
        .output()
        .expect("running kchatctl");
    assert!(out.status.success(), "{out:?}");
    assert!(out_dir.join("kchatctl.1").is_file());
}
