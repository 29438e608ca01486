//! What one stopped reader costs a `drop` room's writer: the writer's rate
//! with one reader draining, then with a second reader that never reads.
//! In a `drop` room nobody waits for it, so the cost should be nil.

use crate::systems::kchat;
use anyhow::{anyhow, Result};
use kchat_uapi::abi;
use std::{
    io::{Read, Write},
    thread,
    time::{Duration, Instant},
};

/// The writer's rate alone with one reader, then with a stopped one too.
pub fn measure(size: usize, duration: Duration) -> Result<(f64, f64)> {
    let mut rates = [0.0; 2];
    for (stopped, rate) in rates.iter_mut().enumerate() {
        kchat::create_room(abi::POLICY_DROP, size)?;
        let mut active = kchat::open_reader(false)?;
        let idle = (stopped == 1)
            .then(|| kchat::open_reader(false))
            .transpose()?;
        let drain = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(active.read(&mut buf), Ok(n) if n > 0) {}
        });
        let mut writer = kchat::open_writer()?;
        let message = vec![0x33; size];
        let started = Instant::now();
        let mut written = 0u64;
        while started.elapsed() < duration {
            for _ in 0..64 {
                writer.write_all(&message)?;
                written += 1;
            }
        }
        *rate = written as f64 / started.elapsed().as_secs_f64();
        kchat::delete_room()?;
        drop(idle);
        drain.join().map_err(|_| anyhow!("the reader panicked"))?;
    }
    Ok((rates[0], rates[1]))
}
