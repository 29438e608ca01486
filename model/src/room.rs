//! The reference model: one room and the files open on it, as
//! `docs/kernel-abi.md` describes them, written as plainly as possible.
//!
//! Things the model leaves to others: time (rate budgets never refill here,
//! so the runner keeps cases shorter than a refill), blocking (the runner
//! only blocks where the model says it returns at once) and concurrency.

use crate::ops::{Api, Settings, Who};
use kchat_uapi::abi;
use libc::{c_int, EACCES, EAGAIN, EBADF, EIDRM, EINVAL, EMSGSIZE, ENOENT, ERANGE};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// What happens when the ring is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Policy {
    Drop,
    Block,
}

/// Poll events (`EPOLL*`).
pub mod events {
    pub const IN: u32 = 0x0001;
    pub const PRI: u32 = 0x0002;
    pub const OUT: u32 = 0x0004;
    pub const ERR: u32 = 0x0008;
    pub const HUP: u32 = 0x0010;
    pub const RDNORM: u32 = 0x0040;
    pub const WRNORM: u32 = 0x0100;
    /// What the runner asks `poll` for; `ERR` and `HUP` come regardless.
    pub const ASKED: u32 = IN | PRI | OUT | RDNORM | WRNORM;
}

const HEADER: usize = size_of::<abi::FrameHeader>();
/// The origin header `READ_FRAMED_ORIGIN` adds; all zero for the local
/// messages the model writes (it does not relay).
const ORIGIN: usize = size_of::<abi::OriginHeader>();

/// Bytes before a message's payload in a framed mode.
fn frame_len(mode: u32) -> usize {
    if mode == abi::READ_FRAMED_ORIGIN {
        HEADER + ORIGIN
    } else {
        HEADER
    }
}
const OVERHEAD: usize = abi::RECORD_OVERHEAD as usize;

/// A step with its file and data resolved: what both systems execute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    Open {
        who: Who,
        read: bool,
        write: bool,
        direct: bool,
        nonblock: bool,
    },
    Close {
        fd: usize,
    },
    Write {
        fd: usize,
        data: Vec<u8>,
        api: Api,
    },
    Read {
        fd: usize,
        space: usize,
        api: Api,
    },
    SetMode {
        fd: usize,
        mode: u32,
    },
    /// `IOC_SET_WRITE_MODE` (valid modes and invalid ones).
    SetWriteMode {
        fd: usize,
        mode: u32,
    },
    TakeLost {
        fd: usize,
    },
    Lseek {
        fd: usize,
        offset: i64,
        whence: u32,
    },
    SeekSeq {
        fd: usize,
        seq: u64,
    },
    Poll {
        fd: usize,
    },
    /// Up to `max` messages through a mapping of the file's room (mapped at
    /// the first such step, from the end, as `MappedRoom::map` does), then
    /// the reader's place reported (`IOC_SEEK_SEQ`, which moves the file's
    /// `read` cursor too). The outcome is each message as a frame (time
    /// zeroed) and `END` if the room ended.
    MapRead {
        fd: usize,
        max: usize,
    },
    Info,
    SetLimit(Limit),
    Delete,
}

/// A rate limit as `IOC_SET_RATE_LIMIT` takes it (rates of 0: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub per_file: bool,
    pub msgs_per_sec: u32,
    pub msg_burst: u32,
    pub bytes_per_sec: u32,
    pub byte_burst: u32,
}

impl Limit {
    pub const NONE: Limit = Limit {
        per_file: false,
        msgs_per_sec: 0,
        msg_burst: 0,
        bytes_per_sec: 0,
        byte_burst: 0,
    };

    fn is_unlimited(&self) -> bool {
        self.msgs_per_sec == 0 && self.bytes_per_sec == 0
    }
}

/// What a step returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A return value (0 for calls that return nothing) or an errno.
    Value(Result<i64, c_int>),
    /// The bytes a read returned, or its errno. Frame headers carry a
    /// `time_ns` of 0 (the runner checks the real ones and zeroes them).
    Bytes(Result<Vec<u8>, c_int>),
    /// `poll`'s events.
    Events(u32),
    Info(Result<InfoView, c_int>),
}

/// The parts of `IOC_ROOM_INFO` a model can know: the room's counters, as
/// kchatd reports them.
pub type InfoView = kchat_proto::api::Counters;

#[derive(Clone, Debug)]
struct Message {
    data: Vec<u8>,
    uid: u32,
}

/// One open file.
#[derive(Clone, Debug)]
struct OpenFile {
    id: u64,
    who: Who,
    readable: bool,
    writable: bool,
    nonblock: bool,
    mode: u32,
    /// `abi::WRITE_*`.
    write_mode: u32,
    /// Next message to read.
    seq: u64,
    /// Bytes of it stream reads already returned.
    offset: usize,
    /// Losses not reported yet.
    lost: u64,
    /// Where its mapping reads, once mapped.
    mapped: Option<MappedCursor>,
}

/// A mapped reader's own place: it reads the ring directly, apart from the
/// file's `read` cursor, which learns its place only from its reports.
#[derive(Clone, Copy, Debug)]
struct MappedCursor {
    seq: u64,
    /// Losses not reported yet (with the next message).
    lost: u64,
}

/// What a mapped read that found the room deleted and drained appends.
pub const MAPPED_END: &[u8] = b"END";

/// A token bucket that never refills (see the module documentation).
#[derive(Clone, Copy, Debug)]
struct Bucket {
    burst: i64,
    tokens: i64,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Option<Bucket> {
        let burst = i64::from(if burst == 0 { rate } else { burst });
        (rate > 0).then_some(Bucket {
            burst,
            tokens: burst,
        })
    }

    fn admits(&self, n: u64) -> bool {
        self.tokens >= (n as i64).min(self.burst)
    }
}

#[derive(Clone, Copy, Debug)]
struct Budget {
    msgs: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl Budget {
    fn admits(&self, len: u64) -> bool {
        self.msgs.is_none_or(|b| b.admits(1)) && self.bytes.is_none_or(|b| b.admits(len))
    }

    /// Takes (`sign` 1) or gives back (`sign` -1) one message of `len`.
    fn charge(&mut self, len: u64, sign: i64) {
        if let Some(b) = &mut self.msgs {
            b.tokens = (b.tokens - sign).min(b.burst);
        }
        if let Some(b) = &mut self.bytes {
            b.tokens = (b.tokens - sign * len as i64).min(b.burst);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum BudgetKey {
    Uid(u32),
    File(u64),
}

/// The model of one room.
#[derive(Clone, Debug)]
pub struct Model {
    settings: Settings,
    /// The writing process's pid, as the readers see it.
    pid: u32,
    messages: VecDeque<Message>,
    /// Sequence number of `messages[0]`.
    first: u64,
    /// What the retained messages cost against the ring.
    bytes: usize,
    deleted: bool,
    files: Vec<OpenFile>,
    next_file_id: u64,
    counters: InfoView,
    limit: Limit,
    budgets: BTreeMap<BudgetKey, Budget>,
}

impl Model {
    pub fn new(settings: Settings, pid: u32) -> Self {
        Model {
            settings,
            pid,
            messages: VecDeque::new(),
            first: 0,
            bytes: 0,
            deleted: false,
            files: Vec::new(),
            next_file_id: 0,
            counters: InfoView::default(),
            limit: Limit::NONE,
            budgets: BTreeMap::new(),
        }
    }

    /// How many files are open.
    pub fn open_files(&self) -> usize {
        self.files.len()
    }

    /// The read mode of open file `fd`.
    pub fn mode(&self, fd: usize) -> Option<u32> {
        self.files.get(fd).map(|f| f.mode)
    }

    pub fn first_seq(&self) -> u64 {
        self.first
    }

    pub fn next_seq(&self) -> u64 {
        self.first + self.messages.len() as u64
    }

    pub fn deleted(&self) -> bool {
        self.deleted
    }

    /// Whether a rate limit is in force.
    pub fn limited(&self) -> bool {
        !self.limit.is_unlimited() && !self.deleted
    }

    /// Whether `step`, issued blocking, would wait: then the runner issues
    /// it with `RWF_NOWAIT` instead.
    pub fn would_block(&self, step: &Step) -> bool {
        let nonblocking = |fd: &usize, api: &Api| {
            *api == Api::NoWait || self.files.get(*fd).is_none_or(|f| f.nonblock)
        };
        match step {
            Step::Read { fd, api, .. } | Step::Write { fd, api, .. } if nonblocking(fd, api) => {
                return false;
            }
            _ => {}
        }
        let probe = match step {
            Step::Read { fd, space, .. } => Step::Read {
                fd: *fd,
                space: *space,
                api: Api::NoWait,
            },
            Step::Write { fd, data, .. } => Step::Write {
                fd: *fd,
                data: data.clone(),
                api: Api::NoWait,
            },
            _ => return false,
        };
        // A blocking read of nothing still waits for a message; RWF_NOWAIT
        // with nothing to read returns before asking the module.
        if let Step::Read { fd, space: 0, .. } = step {
            let mut copy = self.clone();
            return copy.read(*fd, 1, true) == Err(EAGAIN);
        }
        let mut copy = self.clone();
        match (copy.apply(&probe), step) {
            (Outcome::Bytes(Err(EAGAIN)), _) => true,
            (Outcome::Value(Err(EAGAIN)), _) => true,
            // A write that went in part would wait for the rest.
            (Outcome::Value(Ok(n)), Step::Write { data, .. }) => (n as usize) < data.len(),
            _ => false,
        }
    }

    /// Executes one step.
    pub fn apply(&mut self, step: &Step) -> Outcome {
        match step {
            Step::Open {
                who,
                read,
                write,
                direct,
                nonblock,
            } => Outcome::Value(
                self.open(*who, *read, *write, *direct, *nonblock)
                    .map(|()| 0),
            ),
            Step::Close { fd } => {
                self.close(*fd);
                Outcome::Value(Ok(0))
            }
            Step::Write { fd, data, api } => {
                Outcome::Value(self.write(*fd, data, *api == Api::NoWait).map(|n| n as i64))
            }
            Step::Read { fd, space, api } => {
                let nowait = *api == Api::NoWait;
                Outcome::Bytes(self.read_call(*fd, *space, nowait))
            }
            Step::SetMode { fd, mode } => Outcome::Value(self.set_mode(*fd, *mode).map(|()| 0)),
            Step::SetWriteMode { fd, mode } => {
                Outcome::Value(self.set_write_mode(*fd, *mode).map(|()| 0))
            }
            Step::TakeLost { fd } => Outcome::Value(self.take_lost(*fd).map(|n| n as i64)),
            Step::Lseek { fd, offset, whence } => {
                Outcome::Value(self.lseek(*fd, *offset, *whence).map(|s| s as i64))
            }
            Step::SeekSeq { fd, seq } => Outcome::Value(self.seek_seq(*fd, *seq).map(|()| 0)),
            Step::Poll { fd } => {
                Outcome::Events(self.poll(*fd) & (events::ASKED | events::ERR | events::HUP))
            }
            Step::MapRead { fd, max } => Outcome::Bytes(self.map_read(*fd, *max)),
            Step::Info => Outcome::Info(self.info()),
            Step::SetLimit(limit) => Outcome::Value(self.set_limit(*limit).map(|()| 0)),
            Step::Delete => Outcome::Value(self.delete().map(|()| 0)),
        }
    }

    fn open(
        &mut self,
        who: Who,
        read: bool,
        write: bool,
        direct: bool,
        nonblock: bool,
    ) -> Result<(), c_int> {
        if self.deleted {
            // The node went with the room.
            return Err(ENOENT);
        }
        self.files.push(OpenFile {
            id: self.next_file_id,
            who,
            readable: read,
            writable: write,
            nonblock,
            mode: if direct {
                abi::READ_PACKET
            } else {
                abi::READ_STREAM
            },
            write_mode: abi::WRITE_PLAIN,
            seq: self.next_seq(),
            offset: 0,
            lost: 0,
            mapped: None,
        });
        self.next_file_id += 1;
        if read {
            self.counters.readers += 1;
        }
        if write {
            self.counters.writers += 1;
        }
        Ok(())
    }

    fn close(&mut self, fd: usize) {
        if fd >= self.files.len() {
            return;
        }
        let file = self.files.remove(fd);
        if file.readable {
            self.counters.readers -= 1;
        }
        if file.writable {
            self.counters.writers -= 1;
            self.budgets.remove(&BudgetKey::File(file.id));
        }
    }

    fn used_bytes(&self) -> usize {
        self.bytes
    }

    fn fits(&self, cost: usize) -> bool {
        self.messages.len() < self.settings.slots()
            && self.used_bytes() + cost <= self.settings.ring_bytes as usize
    }

    /// The oldest message a reader still needs (`u64::MAX`: no readers).
    fn slowest_reader(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.readable)
            .map(|f| f.seq)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn write(&mut self, fd: usize, data: &[u8], nowait: bool) -> Result<usize, c_int> {
        let file = self.files.get(fd).ok_or(EBADF)?;
        if !file.writable {
            return Err(EBADF);
        }
        let nonblock = nowait || file.nonblock;
        let (uid, id) = (file.who.uid(), file.id);
        if file.write_mode == abi::WRITE_FRAMED {
            return self.write_framed(data, uid, id, nonblock);
        }
        let max = self.settings.max_msg as usize;
        let mut written = 0;
        while written < data.len() {
            let len = max.min(data.len() - written);
            match self.write_message(&data[written..written + len], uid, id, nonblock) {
                Ok(()) => written += len,
                Err(_) if written > 0 => break,
                Err(err) => return Err(err),
            }
        }
        Ok(written)
    }

    /// A framed write: records of a `WriteFrame` and a body each, whole
    /// records only; a bad or refused record ends the write short before
    /// it, or fails it if it is the first.
    fn write_framed(
        &mut self,
        data: &[u8],
        uid: u32,
        file_id: u64,
        nonblock: bool,
    ) -> Result<usize, c_int> {
        const FRAME: usize = size_of::<abi::WriteFrame>();
        let mut written = 0;
        while written < data.len() {
            let rest = &data[written..];
            let record = match rest.split_first_chunk::<FRAME>() {
                None => Err(EINVAL),
                Some((&[l0, l1, l2, l3, f0, f1, f2, f3], body)) => {
                    let len = u32::from_ne_bytes([l0, l1, l2, l3]) as usize;
                    let flags = u32::from_ne_bytes([f0, f1, f2, f3]);
                    if flags != 0 || len == 0 || len > body.len() {
                        Err(EINVAL)
                    } else if len > self.settings.max_msg as usize {
                        Err(EMSGSIZE)
                    } else {
                        self.write_message(&body[..len], uid, file_id, nonblock)
                            .map(|()| FRAME + len)
                    }
                }
            };
            match record {
                Ok(size) => written += size,
                Err(_) if written > 0 => break,
                Err(err) => return Err(err),
            }
        }
        Ok(written)
    }

    fn write_message(
        &mut self,
        data: &[u8],
        uid: u32,
        file_id: u64,
        nonblock: bool,
    ) -> Result<(), c_int> {
        if self.deleted {
            return Err(EIDRM);
        }
        let len = data.len() as u64;
        let key = self.budget_key(uid, file_id);
        if let Some(key) = key {
            let limit = self.limit;
            let budget = self.budgets.entry(key).or_insert_with(|| Budget {
                msgs: Bucket::new(limit.msgs_per_sec, limit.msg_burst),
                bytes: Bucket::new(limit.bytes_per_sec, limit.byte_burst),
            });
            if !budget.admits(len) {
                self.counters.throttled += 1;
                // Blocking writes never get here: they would sleep.
                debug_assert!(nonblock);
                return Err(EAGAIN);
            }
            budget.charge(len, 1);
        }
        let cost = data.len() + OVERHEAD;
        if !self.could_write(cost) {
            // A refused write changes nothing: nothing evicted, and nothing
            // charged for what was not sent.
            if let Some(budget) = key.and_then(|key| self.budgets.get_mut(&key)) {
                budget.charge(len, -1);
            }
            debug_assert!(nonblock);
            return Err(EAGAIN);
        }
        while !self.fits(cost) {
            if let Some(evicted) = self.messages.pop_front() {
                self.bytes -= evicted.data.len() + OVERHEAD;
            }
            self.first += 1;
        }
        self.bytes += cost;
        self.messages.push_back(Message {
            data: data.to_vec(),
            uid,
        });
        self.counters.msgs_in += 1;
        self.counters.bytes_in += len;
        Ok(())
    }

    /// A read as the system call makes it: `preadv2` of nothing returns
    /// before it reaches the module.
    fn read_call(&mut self, fd: usize, space: usize, nowait: bool) -> Result<Vec<u8>, c_int> {
        let file = self.files.get(fd).ok_or(EBADF)?;
        if !file.readable {
            return Err(EBADF);
        }
        if nowait && space == 0 {
            return Ok(Vec::new());
        }
        let nonblock = nowait || file.nonblock;
        self.read(fd, space, nonblock)
    }

    /// Moves a reader that fell behind the ring to its oldest message,
    /// counting what it skipped.
    fn catch_up(&mut self, fd: usize) {
        let first = self.first;
        let file = &mut self.files[fd];
        if file.seq < first {
            let lost = first - file.seq;
            file.lost += lost;
            self.counters.lost += lost;
            file.seq = first;
            file.offset = 0;
        }
    }

    fn read(&mut self, fd: usize, space: usize, nonblock: bool) -> Result<Vec<u8>, c_int> {
        if !self.files.get(fd).is_some_and(|f| f.readable) {
            return Err(EBADF);
        }
        self.catch_up(fd);
        let next = self.next_seq();
        let file = &self.files[fd];
        if file.seq >= next {
            return if self.deleted {
                Ok(Vec::new())
            } else if nonblock {
                Err(EAGAIN)
            } else {
                // A blocking read would wait; the runner never asks.
                Err(EAGAIN)
            };
        }
        let (start, offset, mode) = (file.seq, file.offset, file.mode);
        // Which messages this read returns.
        let mut batch = Vec::new();
        let mut planned = 0usize;
        // As many as fit (the module plans and copies 16 at a time, which
        // only a signal or a concurrent eviction, neither modelled, can show).
        for n in 0usize.. {
            let seq = start + n as u64;
            if seq >= next {
                break;
            }
            let len = self.messages[(seq - self.first) as usize].data.len();
            let size = match mode {
                abi::READ_STREAM if n == 0 => len.saturating_sub(offset),
                abi::READ_STREAM => len,
                abi::READ_PACKET if n > 0 => break,
                abi::READ_PACKET => len,
                _ => frame_len(mode) + len,
            };
            if planned + size > space {
                if n == 0 && mode != abi::READ_STREAM {
                    return Err(EMSGSIZE);
                }
                if n > 0 {
                    break;
                }
            }
            batch.push(seq);
            planned += size;
            if planned >= space {
                break;
            }
        }
        // What it copies out.
        let mut out = Vec::new();
        let mut finished = 0u64;
        let mut partial = offset;
        let pid = self.pid;
        for seq in batch {
            let message = &self.messages[(seq - self.first) as usize];
            match mode {
                abi::READ_STREAM => {
                    let skip = if finished == 0 { offset } else { 0 };
                    let rest = message.data.get(skip..).unwrap_or(&[]);
                    let take = rest.len().min(space - out.len());
                    out.extend_from_slice(&rest[..take]);
                    if take < rest.len() {
                        partial = skip + take;
                        break;
                    }
                }
                abi::READ_PACKET => out.extend_from_slice(&message.data),
                _ => {
                    let lost = if finished == 0 {
                        std::mem::take(&mut self.files[fd].lost)
                    } else {
                        0
                    };
                    let header = abi::FrameHeader {
                        seq,
                        time_ns: 0,
                        lost,
                        len: message.data.len() as u32,
                        pid,
                        uid: message.uid,
                        gid: message.uid,
                    };
                    out.extend_from_slice(&frame_header_bytes(&header));
                    if mode == abi::READ_FRAMED_ORIGIN {
                        out.extend_from_slice(&[0; ORIGIN]);
                    }
                    out.extend_from_slice(&message.data);
                }
            }
            finished += 1;
            partial = 0;
        }
        let file = &mut self.files[fd];
        file.seq += finished;
        file.offset = partial;
        self.counters.deliveries += finished;
        Ok(out)
    }

    fn map_read(&mut self, fd: usize, max: usize) -> Result<Vec<u8>, c_int> {
        let file = self.files.get(fd).ok_or(EBADF)?;
        if !file.readable {
            return Err(EACCES);
        }
        let mut cursor = match file.mapped {
            Some(cursor) => cursor,
            None => {
                let next = self.next_seq();
                // Mapping reports the reader's place at once.
                let _ = self.seek_seq(fd, next);
                MappedCursor { seq: next, lost: 0 }
            }
        };
        let mut out = Vec::new();
        for _ in 0..max {
            if cursor.seq < self.first {
                cursor.lost += self.first - cursor.seq;
                cursor.seq = self.first;
            }
            if cursor.seq >= self.next_seq() {
                if self.deleted {
                    out.extend_from_slice(MAPPED_END);
                }
                break;
            }
            let message = &self.messages[(cursor.seq - self.first) as usize];
            let header = abi::FrameHeader {
                seq: cursor.seq,
                time_ns: 0,
                lost: std::mem::take(&mut cursor.lost),
                len: message.data.len() as u32,
                pid: self.pid,
                uid: message.uid,
                gid: message.uid,
            };
            out.extend_from_slice(&frame_header_bytes(&header));
            out.extend_from_slice(&message.data);
            cursor.seq += 1;
        }
        self.files[fd].mapped = Some(cursor);
        // A reader the ring already lapped has nothing to report.
        let _ = self.seek_seq(fd, cursor.seq);
        Ok(out)
    }

    fn reader(&mut self, fd: usize) -> Result<(), c_int> {
        match self.files.get(fd) {
            Some(file) if file.readable => Ok(()),
            _ => Err(EBADF),
        }
    }

    fn set_mode(&mut self, fd: usize, mode: u32) -> Result<(), c_int> {
        let file = self.files.get_mut(fd).ok_or(EBADF)?;
        if !matches!(
            mode,
            abi::READ_STREAM | abi::READ_PACKET | abi::READ_FRAMED | abi::READ_FRAMED_ORIGIN
        ) {
            return Err(EINVAL);
        }
        file.mode = mode;
        file.offset = 0;
        Ok(())
    }

    fn set_write_mode(&mut self, fd: usize, mode: u32) -> Result<(), c_int> {
        let file = self.files.get_mut(fd).ok_or(EBADF)?;
        if !matches!(mode, abi::WRITE_PLAIN | abi::WRITE_FRAMED) {
            return Err(EINVAL);
        }
        if !file.writable {
            return Err(EBADF);
        }
        file.write_mode = mode;
        Ok(())
    }

    fn take_lost(&mut self, fd: usize) -> Result<u64, c_int> {
        self.reader(fd)?;
        self.catch_up(fd);
        Ok(std::mem::take(&mut self.files[fd].lost))
    }

    fn lseek(&mut self, fd: usize, offset: i64, whence: u32) -> Result<u64, c_int> {
        if whence > 4 {
            // SEEK_MAX: the VFS refuses before the module sees it.
            return Err(EINVAL);
        }
        self.reader(fd)?;
        self.catch_up(fd);
        let (first, next, here) = (self.first, self.next_seq(), self.files[fd].seq);
        let base = match whence {
            0 => first,
            1 => here,
            2 => next,
            _ => return Err(EINVAL),
        };
        let target = (i128::from(base) + i128::from(offset))
            .clamp(i128::from(first), i128::from(next)) as u64;
        let file = &mut self.files[fd];
        file.seq = target;
        file.offset = 0;
        Ok(target)
    }

    fn seek_seq(&mut self, fd: usize, seq: u64) -> Result<(), c_int> {
        self.reader(fd)?;
        self.catch_up(fd);
        if !(self.first..=self.next_seq()).contains(&seq) {
            return Err(ERANGE);
        }
        let file = &mut self.files[fd];
        file.seq = seq;
        file.offset = 0;
        Ok(())
    }

    /// Whether a write of `cost` could go in without waiting.
    fn could_write(&self, cost: usize) -> bool {
        match self.settings.policy {
            Policy::Drop => cost <= self.settings.ring_bytes as usize,
            Policy::Block => {
                let keep_from = self.slowest_reader().min(self.next_seq());
                let mut messages = self.messages.iter();
                let mut seq = self.first;
                let (mut len, mut bytes) = (self.messages.len(), self.used_bytes());
                loop {
                    if len < self.settings.slots()
                        && bytes + cost <= self.settings.ring_bytes as usize
                    {
                        return true;
                    }
                    if seq >= keep_from {
                        return false;
                    }
                    let Some(message) = messages.next() else {
                        return false;
                    };
                    len -= 1;
                    bytes -= message.data.len() + OVERHEAD;
                    seq += 1;
                }
            }
        }
    }

    fn poll(&self, fd: usize) -> u32 {
        let Some(file) = self.files.get(fd) else {
            return 0;
        };
        let mut mask = 0;
        if file.readable {
            if file.seq < self.first {
                mask |= events::IN | events::RDNORM | events::PRI;
            } else if file.seq < self.next_seq() || self.deleted {
                mask |= events::IN | events::RDNORM;
            }
            // Only while there is something to read (see the module's
            // `RoomFile::poll`).
            if file.lost > 0 && mask & events::IN != 0 {
                mask |= events::PRI;
            }
        }
        // Writable: a message of any allowed size would go in now, with
        // room and budget for it.
        let max_msg = self.settings.max_msg;
        let budget = self
            .budget_key(file.who.uid(), file.id)
            .and_then(|key| self.budgets.get(&key))
            .is_none_or(|budget| budget.admits(u64::from(max_msg)));
        if file.writable && !self.deleted && budget && self.could_write(max_msg as usize + OVERHEAD)
        {
            mask |= events::OUT | events::WRNORM;
        }
        if self.deleted {
            mask |= events::HUP;
            if file.writable {
                mask |= events::ERR;
            }
        }
        mask
    }

    /// Whose budget a write by `uid` through file `file_id` spends
    /// (`None`: unlimited).
    fn budget_key(&self, uid: u32, file_id: u64) -> Option<BudgetKey> {
        if self.limit.is_unlimited() {
            None
        } else if self.limit.per_file {
            Some(BudgetKey::File(file_id))
        } else {
            Some(BudgetKey::Uid(uid))
        }
    }

    fn info(&self) -> Result<InfoView, c_int> {
        if self.deleted {
            return Err(ENOENT);
        }
        Ok(InfoView {
            ring_used_bytes: self.used_bytes() as u64,
            ring_msgs: self.messages.len() as u64,
            first_seq: self.first,
            next_seq: self.next_seq(),
            ..self.counters
        })
    }

    fn set_limit(&mut self, limit: Limit) -> Result<(), c_int> {
        if self.deleted {
            return Err(ENOENT);
        }
        self.limit = limit;
        self.budgets.clear();
        Ok(())
    }

    fn delete(&mut self) -> Result<(), c_int> {
        if self.deleted {
            return Err(ENOENT);
        }
        self.deleted = true;
        Ok(())
    }
}

/// A frame header's bytes as the kernel lays them out (`repr(C)`, native
/// byte order).
pub fn frame_header_bytes(header: &abi::FrameHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    for word in [header.seq, header.time_ns, header.lost] {
        out.extend_from_slice(&word.to_ne_bytes());
    }
    for word in [header.len, header.pid, header.uid, header.gid] {
        out.extend_from_slice(&word.to_ne_bytes());
    }
    out
}
