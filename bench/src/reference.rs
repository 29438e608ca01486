//! The physical reference in the same guest, measured in the same run as
//! the systems and interleaved with them: as many threads as the row has
//! readers, each doing what a copying reader's work comes to per byte at
//! the least, a copy (64 KiB at a time, out of one 4 MiB buffer all
//! threads share, as readers copy out of one ring) and a read sweep that
//! checks what it copied (as readers check every byte). And how much an
//! empty system call costs: every message costs at least one to write and
//! one to read.

use crate::{systems::kchat::RING_BYTES, writers::StartLine};
use anyhow::{anyhow, bail, Result};
use std::{
    hint::black_box,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

/// Bytes each step copies and sweeps: what one `read` of the bench asks for.
const CHUNK: usize = 64 * 1024;

/// Sum of a chunk's words: the sweep's result, checked against the
/// source's so it cannot be skipped.
fn sweep(chunk: &[u8]) -> u64 {
    chunk
        .chunks_exact(8)
        .map(|word| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            u64::from_le_bytes(bytes)
        })
        .fold(0u64, u64::wrapping_add)
}

/// The shared source and each chunk's sum.
fn source() -> (Vec<u8>, Vec<u64>) {
    let mut bytes = vec![0u8; RING_BYTES as usize];
    let mut word = 0x0123_4567_89ab_cdefu64;
    for chunk in bytes.chunks_exact_mut(8) {
        chunk.copy_from_slice(&word.to_le_bytes());
        word = word.rotate_left(7).wrapping_add(0x9E37_79B9_7F4A_7C15);
    }
    let sums = bytes.chunks_exact(CHUNK).map(sweep).collect();
    (bytes, sums)
}

/// Bytes per second that `threads` threads together copy and sweep over
/// `duration`.
pub fn memory(threads: usize, duration: Duration) -> Result<f64> {
    let (bytes, sums) = source();
    let shared = Arc::new((bytes, sums));
    let start = Arc::new(StartLine::new(threads, duration));
    let workers: Vec<_> = (0..threads)
        .map(|n| {
            let (shared, start) = (shared.clone(), start.clone());
            thread::spawn(move || -> Result<u64> {
                let (source, sums) = &*shared;
                let mut dest = vec![0u8; CHUNK];
                let chunks = sums.len();
                let mut next = n % chunks;
                let mut done = 0u64;
                let begun = start.wait(|_| {});
                while !start.over(begun) {
                    let at = next * CHUNK;
                    dest.copy_from_slice(black_box(&source[at..at + CHUNK]));
                    if sweep(black_box(&dest)) != sums[next] {
                        bail!("the memory reference read back other bytes than it copied");
                    }
                    done += CHUNK as u64;
                    next = (next + 1) % chunks;
                }
                Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker
            .join()
            .map_err(|_| anyhow!("a memory reference thread panicked"))??;
    }
    // Every thread stops at the window's end by its own clock (none
    // waits for this thread to wake up): bytes over the window.
    Ok(total as f64 / duration.as_secs_f64())
}

/// getppid(2), nanoseconds per call.
pub fn syscall_ns() -> f64 {
    const CALLS: u32 = 200_000;
    let started = Instant::now();
    for _ in 0..CALLS {
        // SAFETY: getppid takes no arguments and cannot fail.
        black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    started.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_reference_moves_bytes_on_every_thread() {
        let rate = memory(2, Duration::from_millis(50)).expect("the reference runs");
        assert!(rate > 0.0, "{rate} B/s");
    }

    #[test]
    fn the_sweep_sees_one_changed_byte() {
        let (bytes, sums) = source();
        let mut chunk = bytes[..CHUNK].to_vec();
        assert_eq!(sweep(&chunk), sums[0]);
        chunk[CHUNK / 2] ^= 1;
        assert_ne!(sweep(&chunk), sums[0]);
    }
}
