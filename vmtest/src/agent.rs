//! The second machine's hands in the two-node tests. `xtask test` boots two
//! guests joined by a QEMU link; the second runs this binary as an agent
//! (`KCHAT_VMTEST_AGENT=PORT`), and the tests on the first run commands on
//! it over TCP across that link: one JSON request per line (a shell script
//! and its time limit), one JSON answer (exit status, stdout, stderr).
//! Nothing but the two guests takes part; the host only carries the link.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    process::{Command, ExitCode, Stdio},
    time::Duration,
};

pub const AGENT_VAR: &str = "KCHAT_VMTEST_AGENT";

/// Serves requests until one says `exit`, or until no request came for
/// `IDLE` (the first guest died): the guest then powers off.
pub fn serve(port: u16) -> ExitCode {
    const IDLE: Duration = Duration::from_secs(300);
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("agent: cannot listen on port {port}: {err}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("agent: listening on port {port}");
    // SAFETY: alarm only schedules SIGALRM, whose default action ends this
    // process; every request sets it afresh.
    unsafe { nix::libc::alarm(IDLE.as_secs() as u32) };
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        match session(stream) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => {}
            Err(err) => eprintln!("agent: {err:#}"),
        }
    }
    ExitCode::FAILURE
}

/// One connection's requests; `true` once told to exit.
fn session(stream: TcpStream) -> Result<bool> {
    let mut out = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let request: Value = serde_json::from_str(&line?)?;
        // SAFETY: as in `serve`.
        unsafe { nix::libc::alarm(300) };
        if request["exit"].as_bool() == Some(true) {
            writeln!(out, "{}", json!({"status": 0}))?;
            return Ok(true);
        }
        let script = request["sh"].as_str().context("a request without `sh`")?;
        let limit = request["timeout_s"].as_u64().unwrap_or(60);
        let output = Command::new("timeout")
            .args(["-k", "5", &limit.to_string(), "bash", "-c", script])
            .stdin(Stdio::null())
            .output()?;
        let answer = json!({
            "status": output.status.code(),
            "stdout": String::from_utf8_lossy(&output.stdout),
            "stderr": String::from_utf8_lossy(&output.stderr),
        });
        writeln!(out, "{answer}")?;
    }
    Ok(false)
}

/// A guest the tests run commands on: this one, or the other over the link.
pub enum Node {
    Local,
    Remote(TcpStream, BufReader<TcpStream>),
}

impl Node {
    /// Connects to the agent at `addr`, waiting up to `limit` for the other
    /// guest to boot.
    pub fn connect(addr: &str, limit: Duration) -> Result<Node> {
        let mut stream = None;
        crate::helper::wait_for(
            &format!("the other guest's agent at {addr} to answer"),
            limit,
            || {
                stream = TcpStream::connect(addr).ok();
                Ok(stream.is_some())
            },
        )?;
        let stream = stream.context("no connection")?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Node::Remote(stream, reader))
    }

    /// Runs `script` (bash) with a time limit; its stdout, or an error with
    /// its stderr if it failed.
    pub fn sh(&mut self, script: &str, limit: Duration) -> Result<String> {
        let (status, stdout, stderr) = match self {
            Node::Local => {
                let output = Command::new("timeout")
                    .args([
                        "-k",
                        "5",
                        &limit.as_secs().to_string(),
                        "bash",
                        "-c",
                        script,
                    ])
                    .stdin(Stdio::null())
                    .output()?;
                (
                    output.status.code(),
                    String::from_utf8_lossy(&output.stdout).into_owned(),
                    String::from_utf8_lossy(&output.stderr).into_owned(),
                )
            }
            Node::Remote(stream, reader) => {
                stream.set_read_timeout(Some(limit + Duration::from_secs(10)))?;
                writeln!(
                    stream,
                    "{}",
                    json!({"sh": script, "timeout_s": limit.as_secs()})
                )?;
                let mut line = String::new();
                reader
                    .read_line(&mut line)
                    .context("no answer from the other guest")?;
                let answer: Value = serde_json::from_str(&line)
                    .with_context(|| format!("a bad answer from the other guest: {line:?}"))?;
                (
                    answer["status"].as_i64().map(|s| s as i32),
                    answer["stdout"].as_str().unwrap_or_default().to_owned(),
                    answer["stderr"].as_str().unwrap_or_default().to_owned(),
                )
            }
        };
        if status != Some(0) {
            bail!(
                "`{script}` on {} exited with {status:?} (124: timed out after {limit:?})\nstdout: {stdout}\nstderr: {stderr}",
                self.name()
            );
        }
        Ok(stdout)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Node::Local => "this guest",
            Node::Remote(..) => "the other guest",
        }
    }

    /// Tells a remote agent to stop (its guest then powers off).
    pub fn release(&mut self) {
        if let Node::Remote(stream, reader) = self {
            let _ = writeln!(stream, "{}", json!({"exit": true}));
            let _ = reader.read_line(&mut String::new());
        }
    }
}
