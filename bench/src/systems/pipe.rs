//! The baseline anyone could build without kchat: one pipe per reader, and
//! every writer writes every message into every pipe (a tee). Messages up
//! to PIPE_BUF are written atomically, so several writers do not tear them;
//! a burst goes in as few writes as that allows (as many whole messages as
//! fit PIPE_BUF per write), as a careful tee would.

use crate::{
    system::{join_all, Sender, Started, System, Workload},
    tally::{Progress, Reassembler, Tally},
};
use anyhow::Result;
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

struct Tee {
    pipes: Vec<File>,
    size: usize,
    buf: Vec<u8>,
}

impl Sender for Tee {
    fn burst(&mut self, count: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        let per_write = (PIPE_BUF / self.size).max(1);
        let mut left = count;
        while left > 0 {
            let batch = left.min(per_write);
            self.buf.resize(batch * self.size, 0);
            for message in self.buf.chunks_exact_mut(self.size) {
                fill(message);
            }
            for pipe in &mut self.pipes {
                pipe.write_all(&self.buf)?;
            }
            left -= batch;
        }
        Ok(())
    }
}

fn reader(mut pipe: File, size: usize, progress: Arc<Progress>) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut joiner = Reassembler::new(size);
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
            write_ends.push(File::from(OwnedFd::from(write_end)));
            let (pipe, progress) = (File::from(OwnedFd::from(read_end)), progress.clone());
            handles.push(thread::spawn(move || reader(pipe, workload.size, progress)));
        }
        let senders = (0..workload.writers)
            .map(|_| {
                let pipes = write_ends
                    .iter()
                    .map(File::try_clone)
                    .collect::<std::io::Result<Vec<_>>>()?;
                Ok(Box::new(Tee {
                    pipes,
                    size: workload.size,
                    buf: Vec::new(),
                }) as Box<dyn Sender>)
            })
            .collect::<Result<Vec<_>>>()?;
        // The senders own the only write ends once these go: when the
        // harness drops them after writing, the readers see end-of-file.
        drop(write_ends);
        Ok(Started {
            senders,
            finish: Box::new(move || join_all(handles)),
        })
    }
}
