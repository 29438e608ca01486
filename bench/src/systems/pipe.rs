//! The baseline anyone could build without kchat: one pipe per reader, and
//! every writer writes every message into every pipe (a tee), tuned as a
//! careful author would: each pipe holds as many bytes as kchat's ring
//! (`F_SETPIPE_SZ`), a lone writer writes each burst whole in one `write`
//! per pipe (nobody else writes, so nothing can interleave), and several
//! writers write as many whole messages as fit `PIPE_BUF` (atomic, so
//! they do not tear each other's messages). Mixed sizes go back to back
//! the same way; readers find each message's end from its stamp.

use crate::{
    message::Stamper,
    system::{join_all, Sender, Started, System, Workload},
    systems::kchat::RING_BYTES,
    tally::{Progress, Reassembler, Tally},
    writers::{self, SenderSpec},
};
use anyhow::{Context, Result};
use nix::fcntl::{fcntl, FcntlArg};
use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    os::fd::OwnedFd,
    sync::Arc,
    thread,
};

pub struct PipeTee;

/// Bytes a pipe write keeps whole, however many writers share the pipe.
const PIPE_BUF: usize = 4096;

pub struct Tee {
    pipes: Vec<File>,
    /// Most bytes of whole messages per `write` (at least one message).
    per_write: usize,
    buf: Vec<u8>,
}

impl Tee {
    /// A writer into every one of `pipes` (its own copies of them).
    pub fn new(pipes: &[OwnedFd], per_write: usize) -> Result<Self> {
        Ok(Tee {
            pipes: writers::files(pipes)?,
            per_write,
            buf: Vec::new(),
        })
    }
}

impl Sender for Tee {
    fn burst(&mut self, count: usize, messages: &mut Stamper) -> Result<()> {
        let mut left = count;
        while left > 0 {
            // Whole messages while the next still fits the write.
            let (mut used, mut batch) = (0, 0);
            while batch < left {
                let len = messages.next_len();
                if batch > 0 && used + len > self.per_write {
                    break;
                }
                if self.buf.len() < used + len {
                    self.buf.resize(used + len, 0);
                }
                messages.fill(&mut self.buf[used..used + len]);
                used += len;
                batch += 1;
            }
            for pipe in &mut self.pipes {
                pipe.write_all(&self.buf[..used])?;
            }
            left -= batch;
        }
        Ok(())
    }
}

fn reader(mut pipe: File, mut tally: Tally, progress: Arc<Progress>) -> Result<Tally> {
    let mut joiner = Reassembler::new(tally.sizes());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return Ok(tally),
            Ok(n) => progress.add(joiner.feed(&buf[..n], &mut tally)),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
}

impl System for PipeTee {
    fn name(&self) -> &'static str {
        "pipe-tee"
    }

    fn lossless(&self) -> bool {
        true
    }

    fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started> {
        let mut write_ends = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..workload.readers {
            let (read_end, write_end) = std::io::pipe()?;
            let write_end = OwnedFd::from(write_end);
            // Past /proc/sys/fs/pipe-max-size (1 MiB by default) this
            // needs CAP_SYS_RESOURCE, which root in the guest has.
            fcntl(&write_end, FcntlArg::F_SETPIPE_SZ(RING_BYTES as i32)).with_context(|| {
                format!(
                    "F_SETPIPE_SZ to {RING_BYTES} bytes (kchat's ring): run as root with \
                     CAP_SYS_RESOURCE, or raise /proc/sys/fs/pipe-max-size"
                )
            })?;
            write_ends.push(write_end);
            let pipe = File::from(OwnedFd::from(read_end));
            let (tally, progress) = (Tally::new(workload.size, &progress), progress.clone());
            handles.push(thread::spawn(move || reader(pipe, tally, progress)));
        }
        let per_write = if workload.writers == 1 {
            usize::MAX
        } else {
            PIPE_BUF
        };
        // The harness hands the write ends to the writers' process and
        // closes its own: when that process ends, the readers see
        // end-of-file. Readers need no set-up beyond their pipe: ready as
        // it exists.
        Ok(Started {
            senders: vec![SenderSpec::PipeTee { per_write }; workload.writers],
            fds: write_ends,
            finish: Box::new(move || join_all(handles)),
        })
    }
}
