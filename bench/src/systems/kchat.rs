//! kchat: a room, one fd per writer and per reader, read by one of four
//! engines: a blocking thread per reader, one epoll loop for all readers,
//! one io_uring (tokio-uring) thread for all readers, or a thread per
//! reader reading the mapped ring in place (no copy per reader). Deleting
//! the room ends the readers: they drain what is left and see the end.

use crate::{
    message,
    system::{join_all, MakeSender, Ready, ReadyHandle, Sender, Started, System, Workload},
    tally::{Progress, Tally},
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

/// Writes a burst in one `write`: the room's `max_msg` is the message
/// size, so the kernel stores each message whole and apart, and wakes
/// waiting readers once for the burst.
struct Writer {
    fd: File,
    size: usize,
    buf: Vec<u8>,
}

impl Sender for Writer {
    fn burst(&mut self, count: usize, fill: &mut dyn FnMut(&mut [u8])) -> Result<()> {
        self.buf.resize(count * self.size, 0);
        for message in self.buf.chunks_exact_mut(self.size) {
            fill(message);
        }
        self.fd.write_all(&self.buf)?;
        Ok(())
    }
}

/// Creates the bench room afresh.
pub fn create_room(policy: u32, size: usize) -> Result<()> {
    let control = Control::open().context("opening /dev/kchat/control (load kchat.ko first)")?;
    let _ = control.delete(ROOM);
    let spec = abi::RoomSpec {
        policy,
        ring_bytes: RING_BYTES,
        max_msg: size as u32,
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

fn thread_reader(mut fd: File, mut tally: Tally, progress: Arc<Progress>) -> Result<Tally> {
    let mut buf = vec![0u8; READ_BYTES];
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
/// is nothing new.
fn mapped_reader(mut room: MappedRoom, mut tally: Tally, progress: Arc<Progress>) -> Result<Tally> {
    let size = tally.size();
    loop {
        let mut got = 0;
        loop {
            match room.read(|m| (message::check(m.payload, size), m.payload.len()))? {
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
    let mut buf = vec![0u8; READ_BYTES];
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
    let size = tally.size();
    tokio_uring::start(async move {
        let tasks: Vec<_> = fds
            .into_iter()
            .map(|fd| {
                let progress = progress.clone();
                let mut tally = Tally::new(size, &progress);
                tokio_uring::spawn(async move {
                    let file = tokio_uring::fs::File::from_std(fd);
                    let mut buf = vec![0u8; READ_BYTES];
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
        create_room(self.policy, workload.size)?;
        let readers = (0..workload.readers)
            .map(|_| open_reader(self.engine == Engine::Epoll))
            .collect::<Result<Vec<_>>>()?;
        let senders = (0..workload.writers)
            .map(|_| {
                let (fd, size) = (open_writer()?, workload.size);
                Ok(Box::new(move || {
                    Ok(Box::new(Writer {
                        fd,
                        size,
                        buf: Vec::new(),
                    }) as Box<dyn Sender>)
                }) as MakeSender)
            })
            .collect::<Result<Vec<_>>>()?;
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
            finish: Box::new(move || {
                delete_room()?;
                join_all(handles)
            }),
        })
    }
}
