//! Small jobs the two-node tests run on either guest through a shell
//! (`kchat-vmtest job ...`), so the same command works here and on the
//! other machine: load the module, create a room, write numbered
//! messages, dump what a room holds with origins or check it against
//! what was sent.

use anyhow::{bail, ensure, Context, Result};
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
        // burst ROOM TAG FIRST COUNT: writes "TAG n" for n in
        // FIRST..FIRST+COUNT in one framed write
        "burst" => {
            let mut room = std::fs::OpenOptions::new()
                .write(true)
                .open(kchat_client::room_path(arg(1)?))?;
            kchat_client::set_write_mode(&room, abi::WRITE_FRAMED)?;
            let first: u64 = arg(3)?.parse()?;
            let count: u64 = arg(4)?.parse()?;
            let mut records = Vec::new();
            for n in first..first + count {
                kchat_client::push_record(&mut records, format!("{} {n}\n", arg(2)?).as_bytes())
                    .context("a record too long")?;
            }
            let took = room.write(&records)?;
            ensure!(
                took == records.len(),
                "the room took {took} of {} bytes",
                records.len()
            );
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
        // prefix ROOM NODE TAG FIRST COUNT: checks that what the room holds
        // relayed from NODE is, in order, a prefix of "TAG n" for n in
        // FIRST..FIRST+COUNT; prints how long the prefix is, or fails
        // naming the first message that breaks it
        "prefix" => {
            let (node, tag) = (arg(2)?, arg(3)?);
            let first: u64 = arg(4)?.parse()?;
            let count: u64 = arg(5)?.parse()?;
            let mut held = 0u64;
            for frame in retained(arg(1)?)? {
                let (_, origin, payload) = &frame;
                if origin.flags & abi::ORIGIN_RELAYED == 0
                    || abi::field_name(&origin.node) != Some(node.as_bytes())
                {
                    continue;
                }
                let want = format!("{tag} {}\n", first + held);
                if held >= count || payload.as_slice() != want.as_bytes() {
                    bail!(
                        "message {held} relayed from {node} is {:?}, not {want:?} \
                         (a duplicate, a loss or a reordering)",
                        String::from_utf8_lossy(payload)
                    );
                }
                held += 1;
            }
            println!("{held}");
            Ok(())
        }
        // dump ROOM: every retained message, one JSON line each
        "dump" => {
            let mut out = std::io::stdout().lock();
            for (header, origin, payload) in retained(arg(1)?)? {
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
                        "payload": String::from_utf8_lossy(&payload),
                    })
                )?;
            }
            Ok(())
        }
        other => bail!("no job {other:?}"),
    }
}

/// Every message `room` retains, oldest first, with its origin.
fn retained(room: &str) -> Result<Vec<(abi::FrameHeader, abi::OriginHeader, Vec<u8>)>> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(kchat_client::room_path(room))?;
    kchat_client::set_read_mode(&file, abi::READ_FRAMED_ORIGIN)?;
    nix::unistd::lseek(&file, 0, nix::unistd::Whence::SeekSet)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut all = Vec::new();
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(all),
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(all),
            Err(err) => return Err(err.into()),
        };
        let frames = kchat_client::split_origin_frames(&buf[..n]).context("torn frames")?;
        all.extend(frames.into_iter().map(|(h, o, p)| (h, o, p.to_vec())));
    }
}
