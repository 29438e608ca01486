//! Progress on the terminal (standard error), never in the report: one
//! line per step with a bar, the count and the time left at the pace so
//! far. The guest's console is a serial line, not a terminal that could
//! redraw a line in place, so each step is a line of its own.

use std::time::{Duration, Instant};

const WIDTH: usize = 30;

pub struct Bar {
    total: usize,
    done: usize,
    began: Instant,
    /// A guess per step before any has finished.
    step_guess: Duration,
}

impl Bar {
    pub fn new(total: usize, step_guess: Duration) -> Self {
        Bar {
            total: total.max(1),
            done: 0,
            began: Instant::now(),
            step_guess,
        }
    }

    /// Announces the next step.
    pub fn step(&mut self, what: &str) {
        eprintln!("bench: {} {what}", self.line());
        self.done += 1;
    }

    pub fn done(&self) {
        eprintln!(
            "bench: done, {} steps in {}",
            self.done,
            minutes(self.began.elapsed())
        );
    }

    fn line(&self) -> String {
        let filled = self.done * WIDTH / self.total;
        let per_step = if self.done == 0 {
            self.step_guess
        } else {
            self.began.elapsed() / self.done as u32
        };
        let left = per_step * (self.total - self.done.min(self.total)) as u32;
        format!(
            "[{}{}] {}/{} ({} left)",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.done + 1,
            self.total,
            minutes(left)
        )
    }
}

fn minutes(time: Duration) -> String {
    let secs = time.as_secs();
    if secs >= 60 {
        format!("~{} min", secs.div_ceil(60))
    } else {
        format!("~{secs} s")
    }
}
