//! The physical reference in the same guest: how fast memory copies and
//! how much an empty system call costs. Every message costs at least a
//! system call to write and one to read, and a copy in and out.

use serde::{Deserialize, Serialize};
use std::{hint::black_box, time::Instant};

#[derive(Serialize, Deserialize)]
pub struct Reference {
    /// memcpy of 64 MiB buffers, bytes per second.
    pub memcpy_bytes_per_sec: f64,
    /// getppid(2), nanoseconds per call.
    pub syscall_ns: f64,
}

pub fn measure() -> Reference {
    const BYTES: usize = 64 << 20;
    const ROUNDS: usize = 8;
    let source = vec![0x5au8; BYTES];
    let mut dest = vec![0u8; BYTES];
    dest.copy_from_slice(&source);
    let started = Instant::now();
    for _ in 0..ROUNDS {
        dest.copy_from_slice(black_box(&source));
        black_box(&mut dest);
    }
    let memcpy_bytes_per_sec = (BYTES * ROUNDS) as f64 / started.elapsed().as_secs_f64();

    const CALLS: u32 = 200_000;
    let started = Instant::now();
    for _ in 0..CALLS {
        // SAFETY: getppid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    let syscall_ns = started.elapsed().as_nanos() as f64 / f64::from(CALLS);
    Reference {
        memcpy_bytes_per_sec,
        syscall_ns,
    }
}
