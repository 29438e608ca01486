//! kchat: a room, one fd per writer and per reader, read by one of four
//! engines: a blocking thread per reader, one epoll loop for all readers,
//! one io_uring (tokio-uring) thread for all readers, or a thread per
//! reader reading the mapped ring in place (no copy per reader). Deleting
//! the room ends the readers: they drain what is left and see the end.
//! Messages of one size go as plain writes; a mix goes as framed writes
//! (one record per message), and stream readers find each message's end
//! from its stamp.

use crate::{
    message::{self, Sizes, Stamper},
    system::{join_all, Ready, ReadyHandle, Sender, Started, System, Workload},
    tally::{Progress, Tally},
    writers::SenderSpec,
};
use anyhow::{anyhow, Context, Result};
use kchat_client::{
    mapped::{MappedRoom, Next},
    room_path, spec, Control,
};
use kchat_uapi::abi;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::{
    fs::File,
    io::{ErrorKind, Read, Write},
    os::{fd::AsFd, unix::fs::OpenOptionsExt},
    sync::Arc,
    thread,
};

const ROOM: &str = "bench";
/// Room for 4096 messages of 1 KiB: slack enough that a `block` room's
/// writers rarely wait on a reader that is merely descheduled.
pub const RING_BYTES: u32 = 4 << 20;
/// What one read asks for: many whole messages.
const READ_BYTES: usize = 64 * 1024;
/// Bytes of a framed write's record header (`abi::WriteFrame`).
const FRAME: usize = std::mem::size_of::<abi::WriteFrame>();

#[derive(Clone, Copy, PartialEq)]
pub enum Engine {
    Threads,
    Epoll,
    Uring,
    Mapped,
}

pub struct Kchat {
    pub policy: u32,
    pub engine: Engine,
}

impl Kchat {
    pub fn all() -> Vec<Kchat> {
        vec![
            Kchat {
                policy: abi::POLICY_DROP,
                engine: Engine::Threads,
            },
            Kchat {
                policy: abi::POLICY_BLOCK,
                engine: Engine::Threads,
            },
            Kchat {
                policy: abi::POLICY_DROP,
                engine: Engine::Epoll,
            },
            Kchat {
                policy: abi::POLICY_DROP,
                engine: Engine::Uring,
            },
            Kchat {
                policy: abi::POLICY_DROP,
                engine: Engine::Mapped,
            },
        ]
    }
}

/// Writes a burst in one `write`. Of one size, plainly: the room's
/// `max_msg` is the message size, so the kernel stores each message whole
/// and apart. A mix, framed (the fd is in `WRITE_FRAMED` mode): a record
/// per message, each its own length. Either way the kernel wakes waiting
/// readers once for the burst.
pub struct Writer {
    fd: File,
    sizes: Sizes,
    buf: Vec<u8>,
}

impl Writer {
    /// Opens the bench room for writing, framed for a mix.
    pub fn open(sizes: Sizes) -> Result<Self> {
        let fd = open_writer()?;
        if sizes.is_mixed() {
            kchat_client::set_write_mode(&fd, abi::WRITE_FRAMED)
                .context("setting the writer's fd to framed writes")?;
        }
        Ok(Writer {
            fd,
            sizes,
            buf: Vec::new(),
        })
    }
}

/// Writes the `WriteFrame` of a `len`-byte body into `frame` (`FRAME`
/// bytes), laid out as `kchat_client::push_record` lays it out, but in
/// place, so the body is stamped where it goes rather than copied there.
fn put_frame(frame: &mut [u8], len: usize) -> Result<()> {
    let frame_of = abi::WriteFrame {
        len: u32::try_from(len).context("a record longer than its u32 length can say")?,
        flags: 0,
    };
    frame[..4].copy_from_slice(&frame_of.len.to_ne_bytes());
    frame[4..FRAME].copy_from_slice(&frame_of.flags.to_ne_bytes());
    Ok(())
}

impl Sender for Writer {
    fn burst(&mut self, count: usize, messages: &mut Stamper) -> Result<()> {
        let end = match self.sizes {
            Sizes::Fixed(size) => {
                self.buf.resize(count * size, 0);
                for message in self.buf.chunks_exact_mut(size) {
                    messages.fill(message);
                }
                self.buf.len()
            }
            Sizes::Mixed { max, .. } => {
                // Room for the burst at its longest, made once: records
                // are placed back to back without clearing it first.
                let most = count * (FRAME + max);
                if self.buf.len() < most {
                    self.buf.resize(most, 0);
                }
                let mut at = 0;
                for _ in 0..count {
                    let (len, body) = (messages.next_len(), at + FRAME);
                    put_frame(&mut self.buf[at..body], len)?;
                    messages.fill(&mut self.buf[body..body + len]);
                    at = body + len;
                }
                at
            }
        };
        // A framed write that stops early returns at a record boundary
        // (whole records only), and the next write starting there goes on
        // or gets the error that stopped it: `write_all`'s loop is the
        // right one for both modes.
        self.fd.write_all(&self.buf[..end])?;
        Ok(())
    }
}

/// Creates the bench room afresh, for messages of up to `max_msg` bytes.
pub fn create_room(policy: u32, max_msg: usize) -> Result<()> {
    let control = Control::open().context("opening /dev/kchat/control (load kchat.ko first)")?;
    let _ = control.delete(ROOM);
    let spec = abi::RoomSpec {
        policy,
        ring_bytes: RING_BYTES,
        max_msg: u32::try_from(max_msg).context("a message size past u32")?,
        ..spec(ROOM)
    };
    control.create(&spec).context("creating the bench room")
}

pub fn delete_room() -> Result<()> {
    Control::open()?
        .delete(ROOM)
        .context("deleting the bench room")
}

pub fn open_reader(nonblocking: bool) -> Result<File> {
    let flags = if nonblocking { libc::O_NONBLOCK } else { 0 };
    Ok(File::options()
        .read(true)
        .custom_flags(flags)
        .open(room_path(ROOM))?)
}

pub fn open_writer() -> Result<File> {
    Ok(File::options().write(true).open(room_path(ROOM))?)
}

/// A read buffer of many whole messages, at least one of the longest (a
/// stream read cuts a message longer than the buffer into parts, which
/// the readers here would count as damage).
fn read_buffer(sizes: Sizes) -> Vec<u8> {
    vec![0u8; READ_BYTES.max(sizes.max())]
}

fn thread_reader(mut fd: File, mut tally: Tally, progress: Arc<Progress>) -> Result<Tally> {
    let mut buf = read_buffer(tally.sizes());
    loop {
        match fd.read(&mut buf) {
            Ok(0) => return Ok(tally),
            Ok(n) => progress.add(tally.record_chunk(&buf[..n])),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err.into()),
        }
    }
}

/// Reads the mapped ring in place: checks every byte of each message
/// where it lies (no copy), and counts the message once it is known to
/// have been read whole. Reports its place and sleeps in poll when there
/// is nothing new. The ring keeps each message's length, so a mix needs
/// nothing more: the check holds the length to what the stamp says.
fn mapped_reader(mut room: MappedRoom, mut tally: Tally, progress: Arc<Progress>) -> Result<Tally> {
    let sizes = tally.sizes();
    loop {
        let mut got = 0;
        loop {
            match room.read(|m| (message::check(m.payload, sizes), m.payload.len()))? {
                Next::Message((checked, len)) => {
                    tally.record_checked(checked, len);
                    got += 1;
                    if got % 256 == 0 {
                        progress.add(256);
                    }
                }
                Next::Empty => break,
                Next::Ended => {
                    progress.add(got % 256);
                    return Ok(tally);
                }
            }
        }
        progress.add(got % 256);
        room.wait(std::time::Duration::from_millis(100))?;
    }
}

fn epoll_set(fds: &[File]) -> Result<Epoll> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (n, fd) in fds.iter().enumerate() {
        epoll.add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, n as u64))?;
    }
    Ok(epoll)
}

fn epoll_loop(
    epoll: Epoll,
    fds: Vec<File>,
    mut tally: Tally,
    progress: Arc<Progress>,
) -> Result<Tally> {
    let mut buf = read_buffer(tally.sizes());
    let mut open = fds.len();
    let mut fds: Vec<Option<File>> = fds.into_iter().map(Some).collect();
    let mut events = vec![EpollEvent::empty(); 64];
    while open > 0 {
        let ready = epoll.wait(&mut events, EpollTimeout::NONE)?;
        for event in &events[..ready] {
            let n = event.data() as usize;
            let Some(fd) = fds[n].as_mut() else { continue };
            // Level-triggered: one read per wake-up is enough, and fair.
            match fd.read(&mut buf) {
                Ok(0) => {
                    epoll.delete(fd.as_fd())?;
                    fds[n] = None;
                    open -= 1;
                }
                Ok(got) => progress.add(tally.record_chunk(&buf[..got])),
                Err(err)
                    if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
    Ok(tally)
}

/// One tokio-uring runtime on this thread; one task per reader keeps one
/// read in flight on its fd. The offset is ignored by kchat (each file
/// has its own cursor).
fn uring_loop(
    fds: Vec<File>,
    tally: &Tally,
    progress: Arc<Progress>,
    ready: ReadyHandle,
) -> Result<Tally> {
    let sizes = tally.sizes();
    tokio_uring::start(async move {
        let tasks: Vec<_> = fds
            .into_iter()
            .map(|fd| {
                let progress = progress.clone();
                let mut tally = Tally::new(sizes, &progress);
                tokio_uring::spawn(async move {
                    let file = tokio_uring::fs::File::from_std(fd);
                    let mut buf = read_buffer(sizes);
                    loop {
                        let (result, back) = file.read_at(buf, 0).await;
                        buf = back;
                        match result {
                            Ok(0) => return Ok::<_, anyhow::Error>(tally),
                            Ok(n) => progress.add(tally.record_chunk(&buf[..n])),
                            Err(err) if err.kind() == ErrorKind::Interrupted => {}
                            Err(err) => return Err(err.into()),
                        }
                    }
                })
            })
            .collect();
        // The runtime runs and every reader task exists; each submits its
        // first read as soon as this task yields.
        ready.report(Ok(()))?;
        let mut total = Tally::default();
        for task in tasks {
            total.merge(
                task.await
                    .map_err(|err| anyhow!("a reader task failed: {err}"))??,
            )?;
        }
        Ok(total)
    })
}

impl System for Kchat {
    fn name(&self) -> &'static str {
        match (self.policy, self.engine) {
            (abi::POLICY_BLOCK, _) => "kchat-block",
            (_, Engine::Threads) => "kchat",
            (_, Engine::Epoll) => "kchat-epoll",
            (_, Engine::Uring) => "kchat-uring",
            (_, Engine::Mapped) => "kchat-mmap",
        }
    }

    fn lossless(&self) -> bool {
        self.policy == abi::POLICY_BLOCK
    }

    fn start(&mut self, workload: Workload, progress: Arc<Progress>) -> Result<Started> {
        let sizes = workload.size;
        // A mix's longest message is the room's largest: a record of up
        // to `max_msg` goes whole (framed writes never split one).
        create_room(self.policy, sizes.max())?;
        let readers = (0..workload.readers)
            .map(|_| open_reader(self.engine == Engine::Epoll))
            .collect::<Result<Vec<_>>>()?;
        // Each writer opens the room itself, in the writers' process.
        let senders = vec![SenderSpec::Kchat; workload.writers];
        let tally = || Tally::new(workload.size, &progress);
        // Every fd is open (and, for mapped readers, mapped) before the
        // clock starts; the reader threads run before `start` returns.
        let handles = match self.engine {
            Engine::Threads => readers
                .into_iter()
                .map(|fd| {
                    let (tally, progress) = (tally(), progress.clone());
                    thread::spawn(move || thread_reader(fd, tally, progress))
                })
                .collect(),
            Engine::Epoll => {
                let epoll = epoll_set(&readers)?;
                let (tally, progress) = (tally(), progress.clone());
                vec![thread::spawn(move || {
                    epoll_loop(epoll, readers, tally, progress)
                })]
            }
            Engine::Uring => {
                let ready = Ready::new();
                let (handle, tally, progress) = (ready.handle(), tally(), progress.clone());
                let thread = thread::spawn(move || uring_loop(readers, &tally, progress, handle));
                ready.wait(1)?;
                vec![thread]
            }
            Engine::Mapped => readers
                .into_iter()
                .map(|fd| {
                    let room = MappedRoom::map(fd).context("mapping the bench room")?;
                    let (tally, progress) = (tally(), progress.clone());
                    Ok(thread::spawn(move || mapped_reader(room, tally, progress)))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        Ok(Started {
            senders,
            fds: Vec::new(),
            finish: Box::new(move || {
                delete_room()?;
                join_all(handles)
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_put_in_place_is_the_clients_record_header() {
        for len in [1, 20, 64, 1024, 65_536] {
            let body = vec![0x5a; len];
            let mut theirs = Vec::new();
            kchat_client::push_record(&mut theirs, &body).expect("a record");
            let mut ours = vec![0u8; FRAME];
            put_frame(&mut ours, len).expect("a frame");
            ours.extend_from_slice(&body);
            assert_eq!(ours, theirs, "{len} B");
        }
    }
}
