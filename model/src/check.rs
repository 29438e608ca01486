//! Runs a case on the model and on another system step by step, and stops
//! at the first answer that differs.

use crate::{
    ops::{framed, payload, Api, Case, Op},
    room::{frame_header_bytes, Limit, Model, Outcome, Step},
};
use kchat_uapi::abi;
use std::{
    fmt,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// The system under test: executes a step and says what it returned.
pub trait System {
    fn apply(&mut self, step: &Step) -> Outcome;
}

/// Rate budgets refill one token a second; a case stops before a write
/// once one could have refilled, since the model's budgets never do.
const REFILL_HORIZON: Duration = Duration::from_millis(900);

/// How far a frame's time stamp may be from the case's wall-clock window.
const CLOCK_SLACK_NS: u64 = 5_000_000_000;

/// The first difference between the model and the system.
#[derive(Debug)]
pub struct Mismatch {
    /// Index of the operation in the case, and of the step within the run.
    pub op_index: usize,
    pub step_index: usize,
    pub step: Step,
    pub expected: Outcome,
    pub actual: Outcome,
    /// The steps run before it, oldest first.
    pub history: Vec<Step>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "step {} (operation {}): {:?}",
            self.step_index, self.op_index, self.step
        )?;
        writeln!(f, "  model:  {:?}", self.expected)?;
        writeln!(f, "  kernel: {:?}", self.actual)?;
        writeln!(f, "steps before it:")?;
        for (i, step) in self.history.iter().enumerate() {
            writeln!(f, "  {i}: {step:?}")?;
        }
        Ok(())
    }
}

/// What a case that matched did.
#[derive(Debug, Default, Clone, Copy)]
pub struct CaseReport {
    pub ops: usize,
    pub steps: usize,
    /// Stopped early because a rate budget could have refilled.
    pub truncated: bool,
}

/// Runs `case` on a fresh model (of a room whose writers' pid the readers
/// see as `pid`) and on `real`, comparing every outcome. The case's first
/// operation that differs is the error.
pub fn run_case(
    case: &Case,
    pid: u32,
    real: &mut impl System,
) -> Result<CaseReport, Box<Mismatch>> {
    let mut model = Model::new(case.settings, pid);
    let mut history = Vec::new();
    let mut report = CaseReport::default();
    let mut limit_since: Option<Instant> = None;
    let window_start = realtime_ns();
    for (op_index, op) in case.ops.iter().enumerate() {
        let steps = resolve(op, op_index, &model);
        let writes = steps.iter().any(|s| matches!(s, Step::Write { .. }));
        if writes && model.limited() && limit_since.is_some_and(|t| t.elapsed() >= REFILL_HORIZON) {
            report.truncated = true;
            break;
        }
        for mut step in steps {
            if model.would_block(&step) {
                nowait(&mut step);
            }
            let framed = match &step {
                Step::Read { fd, .. } => model
                    .mode(*fd)
                    .filter(|mode| matches!(*mode, abi::READ_FRAMED | abi::READ_FRAMED_ORIGIN)),
                _ => None,
            };
            let expected = model.apply(&step);
            let mut actual = real.apply(&step);
            if let Some(mode) = framed {
                actual = normalise_frames(actual, window_start, mode == abi::READ_FRAMED_ORIGIN);
            }
            if let Step::SetLimit(_) = step {
                limit_since = Some(Instant::now());
            }
            if expected != actual {
                return Err(Box::new(Mismatch {
                    op_index,
                    step_index: history.len(),
                    step,
                    expected,
                    actual,
                    history,
                }));
            }
            history.push(step);
            report.steps += 1;
        }
        report.ops += 1;
    }
    // Whatever the case did, the counters must agree at its end.
    let expected = model.apply(&Step::Info);
    let actual = real.apply(&Step::Info);
    if expected != actual {
        return Err(Box::new(Mismatch {
            op_index: case.ops.len(),
            step_index: history.len(),
            step: Step::Info,
            expected,
            actual,
            history,
        }));
    }
    Ok(report)
}

/// The steps an operation stands for, with files and data resolved against
/// the model's state (an operation on a file when none is open does
/// nothing).
fn resolve(op: &Op, op_index: usize, model: &Model) -> Vec<Step> {
    let open = model.open_files();
    let fd = |fd: &usize| fd % open.max(1);
    let needs_file = !matches!(
        op,
        Op::Open { .. } | Op::Info | Op::SetLimit { .. } | Op::ClearLimit | Op::Delete
    );
    if needs_file && open == 0 {
        return Vec::new();
    }
    let n = op_index as u64;
    let step = match op {
        Op::Open {
            who,
            read,
            write,
            direct,
            nonblock,
        } => Step::Open {
            who: *who,
            read: *read,
            write: *write,
            direct: *direct,
            nonblock: *nonblock,
        },
        Op::Close { fd: f } => Step::Close { fd: fd(f) },
        Op::Write { fd: f, len, api } => Step::Write {
            fd: fd(f),
            data: payload(n * 1000, *len),
            api: *api,
        },
        Op::Burst { fd: f, count, len } => {
            return (0..u64::from(*count))
                .map(|i| Step::Write {
                    fd: fd(f),
                    data: payload(n * 1000 + i, *len),
                    api: Api::NoWait,
                })
                .collect();
        }
        Op::Read { fd: f, space, api } => Step::Read {
            fd: fd(f),
            space: *space,
            api: *api,
        },
        Op::SetMode { fd: f, mode } => Step::SetMode {
            fd: fd(f),
            mode: *mode,
        },
        Op::SetWriteMode { fd: f, mode } => Step::SetWriteMode {
            fd: fd(f),
            mode: *mode,
        },
        Op::WriteFramed {
            fd: f,
            records,
            cut,
            api,
        } => Step::Write {
            fd: fd(f),
            data: framed(n * 1000, records, *cut),
            api: *api,
        },
        Op::TakeLost { fd: f } => Step::TakeLost { fd: fd(f) },
        Op::Lseek {
            fd: f,
            offset,
            whence,
        } => Step::Lseek {
            fd: fd(f),
            offset: *offset,
            whence: *whence,
        },
        Op::SeekSeq {
            fd: f,
            from_next,
            delta,
        } => {
            let base = if *from_next {
                model.next_seq()
            } else {
                model.first_seq()
            };
            Step::SeekSeq {
                fd: fd(f),
                seq: base.wrapping_add_signed(i64::from(*delta)),
            }
        }
        Op::Poll { fd: f } => Step::Poll { fd: fd(f) },
        Op::MapRead { fd: f, max } => Step::MapRead {
            fd: fd(f),
            max: usize::from(*max),
        },
        Op::Info => Step::Info,
        Op::SetLimit {
            per_file,
            bytes,
            burst,
        } => Step::SetLimit(if *bytes {
            Limit {
                per_file: *per_file,
                bytes_per_sec: 1,
                byte_burst: *burst,
                ..Limit::NONE
            }
        } else {
            Limit {
                per_file: *per_file,
                msgs_per_sec: 1,
                msg_burst: *burst,
                ..Limit::NONE
            }
        }),
        Op::ClearLimit => Step::SetLimit(Limit::NONE),
        Op::Delete => Step::Delete,
    };
    vec![step]
}

fn nowait(step: &mut Step) {
    match step {
        Step::Read { api, .. } | Step::Write { api, .. } => *api = Api::NoWait,
        _ => {}
    }
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Zeroes the time stamps of a real framed read, after checking that each
/// lies in the case's wall-clock window: the one field the model cannot
/// know. Bytes that do not parse as frames are left for the comparison to
/// report.
fn normalise_frames(outcome: Outcome, window_start: u64, with_origin: bool) -> Outcome {
    let Outcome::Bytes(Ok(bytes)) = &outcome else {
        return outcome;
    };
    let origin_len = if with_origin {
        size_of::<abi::OriginHeader>()
    } else {
        0
    };
    let Some(frames) = kchat_client::split_frames_after(bytes, origin_len) else {
        return outcome;
    };
    let now = realtime_ns();
    let mut out = Vec::with_capacity(bytes.len());
    for (mut header, origin, payload) in frames {
        let plausible = header.time_ns + CLOCK_SLACK_NS >= window_start
            && header.time_ns <= now + CLOCK_SLACK_NS;
        if plausible {
            header.time_ns = 0;
        }
        out.extend_from_slice(&frame_header_bytes(&header));
        out.extend_from_slice(origin);
        out.extend_from_slice(payload);
    }
    Outcome::Bytes(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ops::{case, Settings, Who},
        room::Policy,
    };
    use proptest::prelude::*;

    /// The model run against itself: a sanity check of the runner (every
    /// case matches, nothing panics) on the host.
    struct Itself(Model);

    impl System for Itself {
        fn apply(&mut self, step: &Step) -> Outcome {
            self.0.apply(step)
        }
    }

    proptest! {
        #[test]
        fn the_model_agrees_with_itself(case in case(120)) {
            let mut twin = Itself(Model::new(case.settings, 7));
            prop_assert!(run_case(&case, 7, &mut twin).is_ok());
        }
    }

    /// The sequence that panicked the module: a reader 10 bytes into a
    /// message, the ring moves past it, a loss query, a read. The model
    /// says the reader resumes at the start of the oldest message.
    #[test]
    fn a_loss_query_after_a_partial_read_restarts_at_a_message() {
        let settings = Settings {
            policy: Policy::Drop,
            ring_bytes: abi::MIN_RING_BYTES,
            max_msg: 500,
        };
        let mut model = Model::new(settings, 1);
        let steps = [
            Step::Open {
                who: Who::Root,
                read: true,
                write: true,
                direct: false,
                nonblock: true,
            },
            Step::Write {
                fd: 0,
                data: vec![b'a'; 100],
                api: Api::NoWait,
            },
            Step::Read {
                fd: 0,
                space: 10,
                api: Api::NoWait,
            },
        ];
        for step in &steps {
            model.apply(step);
        }
        for i in 0..100 {
            model.apply(&Step::Write {
                fd: 0,
                data: vec![i as u8],
                api: Api::NoWait,
            });
        }
        let lost = model.apply(&Step::TakeLost { fd: 0 });
        let first = model.first_seq();
        // 63 one-byte records fill 4 KiB; everything before them is lost.
        assert_eq!(first, 38);
        assert_eq!(lost, Outcome::Value(Ok(first as i64)));
        let read = model.apply(&Step::Read {
            fd: 0,
            space: 4096,
            api: Api::NoWait,
        });
        // Every whole message held, from the oldest on.
        let expected: Vec<u8> = (first - 1..100).map(|i| i as u8).collect();
        assert_eq!(read, Outcome::Bytes(Ok(expected)));
    }
}
