//! Small jobs the two-node tests run on either guest through a shell
//! (`kchat-vmtest job ...`), so the same command works here and on the
//! other machine: load the module, create a room, write numbered
//! messages, dump what a room holds with origins.

use anyhow::{bail, Context, Result};
use kchat_uapi::abi;
use serde_json::json;
use std::{
    io::{ErrorKind, Read, Write},
    os::unix::fs::OpenOptionsExt,
    process::ExitCode,
};

/// Runs `kchat-vmtest job NAME ARGS...` if that is what was asked.
pub fn run_if_requested() -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("job") {
        return None;
    }
    Some(match job(&args[1..]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("job {:?}: {err:#}", &args[1..]);
            ExitCode::FAILURE
        }
    })
}

fn job(args: &[String]) -> Result<()> {
    let arg = |n: usize| args.get(n).map(String::as_str).context("missing argument");
    match arg(0)? {
        // release HOST:PORT: tells the other guest's agent the tests are done
        "release" => {
            crate::agent::Node::connect(arg(1)?, std::time::Duration::from_secs(5))?.release();
            Ok(())
        }
        // rmroom NAME
        "rmroom" => Ok(kchat_client::Control::open()?.delete(arg(1)?)?),
        // mkroom NAME drop|block RING_BYTES [MAX_MSG]
        "mkroom" => {
            crate::module::ensure_loaded()?;
            let mut spec = kchat_client::spec(arg(1)?);
            spec.policy = match arg(2)? {
                "drop" => abi::POLICY_DROP,
                "block" => abi::POLICY_BLOCK,
                other => bail!("policy {other:?}"),
            };
            spec.ring_bytes = arg(3)?.parse()?;
            if let Some(max_msg) = args.get(4) {
                spec.max_msg = max_msg.parse()?;
            }
            kchat_client::Control::open()?.create(&spec)?;
            Ok(())
        }
        // send ROOM TAG FIRST COUNT: writes "TAG n" for n in FIRST..FIRST+COUNT
        "send" => {
            let mut room = std::fs::OpenOptions::new()
                .write(true)
                .open(kchat_client::room_path(arg(1)?))?;
            let first: u64 = arg(3)?.parse()?;
            let count: u64 = arg(4)?.parse()?;
            for n in first..first + count {
                room.write_all(format!("{} {n}\n", arg(2)?).as_bytes())?;
            }
            Ok(())
        }
        // dump ROOM: every retained message, one JSON line each
        "dump" => {
            let mut room = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(kchat_client::room_path(arg(1)?))?;
            kchat_client::set_read_mode(&room, abi::READ_FRAMED_ORIGIN)?;
            nix::unistd::lseek(&room, 0, nix::unistd::Whence::SeekSet)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut out = std::io::stdout().lock();
            loop {
                let n = match room.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(err) => return Err(err.into()),
                };
                let frames = kchat_client::split_origin_frames(&buf[..n]).context("torn frames")?;
                for (header, origin, payload) in frames {
                    let node = abi::field_name(&origin.node).unwrap_or_default();
                    writeln!(
                        out,
                        "{}",
                        json!({
                            "seq": header.seq,
                            "pid": header.pid,
                            "uid": header.uid,
                            "relayed": origin.flags & abi::ORIGIN_RELAYED != 0,
                            "node": String::from_utf8_lossy(node),
                            "origin_seq": origin.seq,
                            "origin_pid": origin.pid,
                            "origin_uid": origin.uid,
                            "origin_gid": origin.gid,
                            "payload": String::from_utf8_lossy(payload),
                        })
                    )?;
                }
            }
        }
        other => bail!("no job {other:?}"),
    }
}
