// SPDX-License-Identifier: GPL-2.0
//! ioctl numbers, device names and ABI version of kchat.
//!
//! Shared verbatim with the kernel module (`#[path]`), so it uses `core` only
//! and names nothing outside this file.

/// Version of the ioctl ABI. Bumped only for incompatible changes; compatible
/// growth happens through size-prefixed structs instead.
pub const ABI_VERSION: u32 = 1;

/// The ioctl type byte; unused in the kernel's ioctl-number registry.
pub const IOC_MAGIC: u8 = 0xB9;

/// Name of the device class, and of the `/dev` directory the nodes live in.
pub const DEV_DIR: &str = "kchat";

/// Name of the control node, `/dev/kchat/control`. Reserved as a room name.
pub const CONTROL_NAME: &str = "control";

/// Minor number of the control node; rooms take the minors after it.
pub const CONTROL_MINOR: u32 = 0;

/// Highest number of minors the module asks for under its one major.
pub const MAX_MINORS: u32 = 256;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Encodes an ioctl number the way `<asm-generic/ioctl.h>` does (x86, arm64,
/// riscv). A size that does not fit the 14-bit field fails the build.
const fn ioc_typed(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZEBITS));
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

const fn ioc(dir: u32, nr: u8, size: usize) -> u32 {
    ioc_typed(dir, IOC_MAGIC, nr, size)
}

/// `_IOR(IOC_MAGIC, nr, T)`: the kernel writes a `T` to the caller.
pub const fn ior<T>(nr: u8) -> u32 {
    ioc(IOC_READ, nr, core::mem::size_of::<T>())
}

/// `_IOW(IOC_MAGIC, nr, T)`: the caller passes a `T` to the kernel.
pub const fn iow<T>(nr: u8) -> u32 {
    ioc(IOC_WRITE, nr, core::mem::size_of::<T>())
}

/// `_IOWR(IOC_MAGIC, nr, T)`: both ways.
pub const fn iowr<T>(nr: u8) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, core::mem::size_of::<T>())
}

/// Decoded number of an ioctl (its `nr` byte), if it is one of kchat's.
pub const fn ioc_nr(cmd: u32) -> Option<u8> {
    if (cmd >> IOC_TYPESHIFT) & 0xff == IOC_MAGIC as u32 {
        Some((cmd & 0xff) as u8)
    } else {
        None
    }
}

/// Control ioctl: the kernel writes [`ABI_VERSION`] as a `u32`. Never changes,
/// so any tool can ask any module what it speaks.
pub const IOC_VERSION: u32 = ior::<u32>(0x00);

/// Longest room name plus its NUL, the size of name fields.
pub const NAME_FIELD: usize = 32;

/// Largest size an extensible struct may claim; a bigger `size` is `E2BIG`.
pub const MAX_STRUCT_SIZE: u32 = 4096;

/// Slow-reader policy `drop` (the default): writers never wait; a reader that
/// falls a whole ring behind skips ahead and is told how many it lost.
pub const POLICY_DROP: u32 = 0;
/// Slow-reader policy `block`: lossless; writers wait for the slowest reader.
pub const POLICY_BLOCK: u32 = 1;

/// Default ring budget of a room, in bytes.
pub const DEFAULT_RING_BYTES: u32 = 256 * 1024;
/// Smallest and largest ring budget of a room.
pub const MIN_RING_BYTES: u32 = 4 * 1024;
pub const MAX_RING_BYTES: u32 = 64 * 1024 * 1024;
/// Default largest message.
pub const DEFAULT_MAX_MSG: u32 = 4096;
/// Largest `max_msg` a room may have.
pub const MAX_MAX_MSG: u32 = 1024 * 1024;
/// What each retained message costs against the ring budget besides its
/// payload: the kernel's record header and bookkeeping.
pub const RECORD_OVERHEAD: u32 = 64;

/// `IOC_CREATE_ROOM` argument. Extensible: `size` is the size the caller
/// knows; the kernel accepts larger structs whose extra bytes are zero, and
/// smaller ones down to [`ROOM_SPEC_V1_SIZE`], whose missing fields it reads
/// as zero (their defaults).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomSpec {
    /// `size_of::<RoomSpec>()` as compiled into the caller.
    pub size: u32,
    /// `POLICY_DROP` or `POLICY_BLOCK`.
    pub policy: u32,
    /// The room name, NUL-padded (see `name::validate`).
    pub name: [u8; NAME_FIELD],
    /// Ring budget in bytes (payloads plus `RECORD_OVERHEAD` each); 0 means
    /// `DEFAULT_RING_BYTES`.
    pub ring_bytes: u32,
    /// Largest message in bytes; 0 means `DEFAULT_MAX_MSG`. Longer writes
    /// are split into messages of this size.
    pub max_msg: u32,
    /// Owner and group of `/dev/kchat/<name>`.
    pub uid: u32,
    pub gid: u32,
    /// Permission bits of the node (at most 0o777).
    pub mode: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    // --- v2 (72 bytes) ---
    /// `block` rooms: how long a reader may hold writers back, in
    /// milliseconds. A writer that has waited this long for space (or a
    /// non-blocking one that finds the room held this long) evicts what the
    /// laggards have not read; they learn it as a loss. 0 means
    /// [`DEFAULT_MAX_WAIT_MS`], [`MAX_WAIT_FOREVER`] no bound. Must be 0 for
    /// `drop` rooms.
    pub max_wait_ms: u32,
    /// Reserved; must be zero.
    pub reserved: u32,
}

/// Size of the first `RoomSpec` (up to `flags`); the ioctl number keeps it.
pub const ROOM_SPEC_V1_SIZE: u32 = 64;

/// Default bound on how long a `block` room's slowest reader may hold
/// writers back.
pub const DEFAULT_MAX_WAIT_MS: u32 = 10_000;
/// `max_wait_ms` that never evicts a laggard (the room is strictly
/// lossless, and one stopped reader can hold every writer).
pub const MAX_WAIT_FOREVER: u32 = u32::MAX;

impl RoomSpec {
    /// A request for a room like the module's default one: `drop`, default
    /// sizes, root's, everyone may chat (0o666).
    pub const fn chat_room(name: [u8; NAME_FIELD]) -> RoomSpec {
        RoomSpec {
            size: core::mem::size_of::<RoomSpec>() as u32,
            policy: POLICY_DROP,
            name,
            ring_bytes: 0,
            max_msg: 0,
            uid: 0,
            gid: 0,
            mode: 0o666,
            flags: 0,
            max_wait_ms: 0,
            reserved: 0,
        }
    }
}

/// `IOC_DELETE_ROOM` argument. Extensible like [`RoomSpec`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomName {
    pub size: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    pub name: [u8; NAME_FIELD],
}

/// Control ioctl: creates a room. Errors: `EINVAL` (bad name, sizes, policy,
/// mode or flags), `EEXIST` (name taken), `ENOSPC` (room or memory limit),
/// `E2BIG` (unknown non-zero trailing bytes), `EFAULT`.
pub const IOC_CREATE_ROOM: u32 = ioc(IOC_WRITE, 0x01, ROOM_SPEC_V1_SIZE as usize);
/// Control ioctl: deletes a room. Its node goes at once; open readers drain
/// what is left, then read end-of-file; writers get `EIDRM`.
/// Errors: `ENOENT`, `EINVAL`, `E2BIG`, `EFAULT`.
pub const IOC_DELETE_ROOM: u32 = iow::<RoomName>(0x02);

/// `IOC_ROOM_INFO` argument: the caller fills `size` and `name`; the kernel
/// fills the rest. Counters are cumulative since the room was created.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    pub size: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    pub name: [u8; NAME_FIELD],
    pub policy: u32,
    pub ring_bytes: u32,
    pub max_msg: u32,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub minor: u32,
    /// Open read-mode and write-mode files now.
    pub readers: u32,
    pub writers: u32,
    /// `block` rooms: the bound on a laggard (`RoomSpec::max_wait_ms`, the
    /// default filled in); 0 for `drop` rooms.
    pub max_wait_ms: u32,
    /// Ring fill now: bytes (payload plus overhead) and messages.
    pub ring_used_bytes: u64,
    pub ring_msgs: u64,
    /// Oldest retained and next sequence numbers.
    pub first_seq: u64,
    pub next_seq: u64,
    /// Messages and payload bytes written.
    pub msgs_in: u64,
    pub bytes_in: u64,
    /// Messages delivered to readers (one per reader per message).
    pub deliveries: u64,
    /// Messages readers lost because the ring moved on (`drop` rooms).
    pub lost: u64,
    /// Writes refused or delayed by the rate limit.
    pub throttled: u64,
    /// Times a writer had to wait for a slow reader (`block` rooms).
    pub writer_waits: u64,
    /// The room's rate limit, as `IOC_SET_RATE_LIMIT` set it.
    pub limit_scope: u32,
    pub msgs_per_sec: u32,
    pub msg_burst: u32,
    pub bytes_per_sec: u32,
    pub byte_burst: u32,
    /// `block` rooms: times a writer evicted what laggards held, having
    /// waited `max_wait_ms` (their losses count in `lost`).
    pub laggard_evictions: u32,
    // --- v3 (192 bytes) ---
    /// The room's incarnation: a random nonzero number the kernel chose when
    /// it created the room, new for a room deleted and created again under
    /// the same name (whose sequence numbers start over), unique across
    /// module reloads and boots without trusting any clock. 0 from a module
    /// older than v3 (it writes back only the 184 bytes it knows).
    pub incarnation: u64,
}

/// Size of `RoomInfo` up to `laggard_evictions` (v1 and v2); the ioctl
/// number keeps it. A caller passing this size gets those fields only.
pub const ROOM_INFO_V1_SIZE: u32 = 184;

/// Rate-limit scopes: one budget per writing uid (the default: opening more
/// fds does not help), or one per open file.
pub const LIMIT_PER_UID: u32 = 0;
pub const LIMIT_PER_FILE: u32 = 1;

/// `IOC_SET_RATE_LIMIT` argument. Rates are per second, bursts the most a
/// quiet writer may send at once (0: one second's worth); a rate of 0 lifts
/// that limit. Over the limit a blocking writer sleeps, a non-blocking one
/// gets `EAGAIN`; both count in `throttled`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub size: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    pub name: [u8; NAME_FIELD],
    /// `LIMIT_PER_UID` or `LIMIT_PER_FILE`.
    pub scope: u32,
    pub msgs_per_sec: u32,
    pub msg_burst: u32,
    pub bytes_per_sec: u32,
    pub byte_burst: u32,
    /// Reserved; must be zero.
    pub reserved: u32,
}

/// Control ioctl: sets a room's rate limit. Errors: `ENOENT`, `EINVAL`,
/// `E2BIG`, `EFAULT`.
pub const IOC_SET_RATE_LIMIT: u32 = iow::<RateLimit>(0x05);

/// `IOC_SET_MAX_WAIT` argument: a `block` room's new bound on laggards
/// (as [`RoomSpec::max_wait_ms`]: 0 means [`DEFAULT_MAX_WAIT_MS`],
/// [`MAX_WAIT_FOREVER`] no bound). It applies at once, to writers already
/// waiting too, and counts from when the readers began to hold them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxWait {
    pub size: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    pub name: [u8; NAME_FIELD],
    pub max_wait_ms: u32,
    /// Reserved; must be zero.
    pub reserved: u32,
}

/// Control ioctl: changes a `block` room's bound on laggards. Errors:
/// `ENOENT`, `EINVAL` (a `drop` room, or reserved bits set), `E2BIG`,
/// `EFAULT`.
pub const IOC_SET_MAX_WAIT: u32 = iow::<MaxWait>(0x08);

/// One reader of a room (a read-mode open), as `IOC_ROOM_READERS` reports
/// it to an admin looking for the one that holds a room back.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReaderInfo {
    /// The opening process as the caller's pid namespace sees it (0 if it
    /// is not visible there).
    pub pid: u32,
    /// The opening file's uid and gid, mapped into the caller's user
    /// namespace (the overflow id if unmapped).
    pub uid: u32,
    pub gid: u32,
    /// Reserved; zero.
    pub flags: u32,
    /// Retained messages it has not read, and what they cost of the ring.
    pub lag_msgs: u64,
    pub lag_bytes: u64,
    /// Messages it lost (evicted before it read them) and was not told of.
    pub lost: u64,
    /// How old the oldest message it has not read is, in nanoseconds (0
    /// when it has read everything).
    pub behind_ns: u64,
}

/// `IOC_ROOM_READERS` argument: the caller fills `size`, `name`,
/// `capacity` and `readers`; the kernel writes up to `capacity` entries
/// there and sets `count` to the room's number of readers.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReaderList {
    pub size: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    pub name: [u8; NAME_FIELD],
    pub capacity: u32,
    pub count: u32,
    /// User address of `[ReaderInfo; capacity]`.
    pub readers: u64,
}

/// Control ioctl: a room's readers and how far behind each is. Errors:
/// `ENOENT`, `EINVAL`, `E2BIG`, `EFAULT`.
pub const IOC_ROOM_READERS: u32 = iowr::<ReaderList>(0x09);

/// `IOC_LIST_ROOMS` argument: `names` points at `capacity` name fields; the
/// kernel fills up to that many and sets `count` to the number of rooms.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomList {
    pub size: u32,
    pub capacity: u32,
    pub count: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    /// User address of `[[u8; NAME_FIELD]; capacity]`.
    pub names: u64,
}

/// Control ioctl: a room's settings, fill and counters. Errors: `ENOENT`,
/// `EINVAL`, `E2BIG`, `EFAULT`.
pub const IOC_ROOM_INFO: u32 = ioc(IOC_READ | IOC_WRITE, 0x03, ROOM_INFO_V1_SIZE as usize);
/// Control ioctl: the rooms' names. Errors: `EINVAL`, `E2BIG`, `EFAULT`.
pub const IOC_LIST_ROOMS: u32 = iowr::<RoomList>(0x04);

/// Module-wide limits (`IOC_SET_LIMITS`, `IOC_GET_LIMITS`). Lowering one
/// below what is in use refuses new rooms or readers; nothing open is cut.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalLimits {
    pub size: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    /// Rooms at once: 1 to `MAX_MINORS - 1` (default 255).
    pub max_rooms: u32,
    /// Read-mode opens per room: 1 to `MAX_READERS_LIMIT` (default 1024).
    pub max_readers: u32,
    /// Ring budgets of all rooms together: `MIN_RING_BYTES` to
    /// `MAX_TOTAL_RING_LIMIT` (default 256 MiB).
    pub max_total_ring_bytes: u64,
}

/// Highest `max_readers` that may be set.
pub const MAX_READERS_LIMIT: u32 = 65536;
/// Highest `max_total_ring_bytes` that may be set.
pub const MAX_TOTAL_RING_LIMIT: u64 = 16 << 30;

/// Control ioctl: sets the module-wide limits. Errors: `EINVAL`, `E2BIG`,
/// `EFAULT`.
pub const IOC_SET_LIMITS: u32 = iow::<GlobalLimits>(0x06);
/// Control ioctl: reads them (`size` in, the rest out).
pub const IOC_GET_LIMITS: u32 = iowr::<GlobalLimits>(0x07);

/// Read modes of a room fd (`IOC_SET_READ_MODE`).
/// Stream: as many whole messages as fit, a too large one in parts (`cat`).
pub const READ_STREAM: u32 = 0;
/// Packet: one message per read; a too small buffer gets `EMSGSIZE` and the
/// message stays unread. Opening with `O_DIRECT` selects it, as for pipes.
pub const READ_PACKET: u32 = 1;
/// Framed: each message behind a [`FrameHeader`], as many whole frames as
/// fit; a too small buffer for the first gets `EMSGSIZE`.
pub const READ_FRAMED: u32 = 2;
/// Framed with origin: each message behind a [`FrameHeader`] and an
/// [`OriginHeader`], which says whether the message was relayed from
/// another machine and, if so, who wrote it there. Readers of
/// `READ_FRAMED` see a relayed message as written by the relay (the local
/// bridge process): a remote uid is never presented as a local one.
pub const READ_FRAMED_ORIGIN: u32 = 3;

/// `OriginHeader::flags`: the message came through a relay fd.
pub const ORIGIN_RELAYED: u32 = 1;

/// Where a message came from, after its [`FrameHeader`] in
/// `READ_FRAMED_ORIGIN` reads. All zero for a message written here.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OriginHeader {
    /// `ORIGIN_RELAYED` or 0.
    pub flags: u32,
    /// The high 32 bits of the origin room's incarnation (its
    /// `RoomInfo::incarnation` on the node it was written on), as the relay
    /// stated it; see [`OriginHeader::incarnation`]. Two words apart so the
    /// header keeps the layout it had when they were reserved.
    pub incarnation_hi: u32,
    /// The node it was written on, NUL-padded (a room name's rules).
    pub node: [u8; NAME_FIELD],
    /// Its sequence number in the room there, and when it was written
    /// there (`CLOCK_REALTIME` ns of that node).
    pub seq: u64,
    pub time_ns: u64,
    /// Its writer as that node's kernel stamped it: that node's pid, uid,
    /// gid (not this machine's).
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The low 32 bits of the origin room's incarnation.
    pub incarnation_lo: u32,
}

impl OriginHeader {
    /// The origin room's incarnation (0: not stated, a relay from before
    /// incarnations, or a local message).
    pub const fn incarnation(&self) -> u64 {
        ((self.incarnation_hi as u64) << 32) | self.incarnation_lo as u64
    }

    /// Sets the origin room's incarnation.
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation_hi = (incarnation >> 32) as u32;
        self.incarnation_lo = incarnation as u32;
    }
}

/// What a relay writes: one message per `write`, this header then the
/// payload (1 to `max_msg` bytes). The kernel keeps the origin it states
/// beside its own stamp of the relay process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RelayHeader {
    /// `size_of::<RelayHeader>()`.
    pub size: u32,
    /// Reserved; must be zero.
    pub flags: u32,
    /// The origin, as `OriginHeader` reports it (its `flags` must be zero;
    /// the kernel sets `ORIGIN_RELAYED`).
    pub origin: OriginHeader,
}

/// The kernel's stamp on each message in framed reads. Senders cannot forge
/// it: the ids are those of the writing fd (`f_cred`), the pid the writer's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrameHeader {
    /// The message's sequence number in its room.
    pub seq: u64,
    /// When it was written, `CLOCK_REALTIME` nanoseconds.
    pub time_ns: u64,
    /// Messages this reader lost just before this one (drop rooms).
    pub lost: u64,
    /// Payload bytes following the header.
    pub len: u32,
    /// Sender's process id, and the writing fd's effective uid and gid.
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A message as the kernel lays it out in its room's ring: this header,
/// then an [`OriginHeader`] if `flags` has `RING_ORIGIN`, then `len` bytes
/// of payload; the next record starts at the next multiple of 8. A record
/// never crosses the ring's end: where one would, the rest of the ring is
/// padding (a header with `RING_PAD`, or fewer bytes than a header) and it
/// starts at the ring's beginning. Ids are as the initial namespaces see
/// them (mapping is refused in any other).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingRecord {
    pub seq: u64,
    pub time_ns: u64,
    pub len: u32,
    pub flags: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Reserved; zero.
    pub reserved: u32,
}

/// `RingRecord::flags`: padding to the ring's end; no message.
pub const RING_PAD: u32 = 1;
/// `RingRecord::flags`: an `OriginHeader` follows (a relayed message).
pub const RING_ORIGIN: u32 = 2;

/// The first page of a mapped room (`mmap` of a room fd opened for
/// reading): where the ring stands. The records follow at
/// `records_offset`, `area_len` bytes of them; a record's *position* counts
/// bytes from the area's first byte ever, so its offset in the area is
/// `pos % area_len`. See docs/kernel-abi.md, "Mapped readers".
///
/// `first_*` (the oldest retained record) and `next_*` (where the next one
/// will be) change together under `seqcount`: odd while the kernel updates
/// them; a reader retries until it reads the same even value before and
/// after. `next_seq` alone may be read at any time (acquire) to learn
/// whether anything is new. The kernel moves `first_*` past records before
/// it reuses their bytes, so a reader that still finds `first_seq <= seq`
/// after reading record `seq` read it whole.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RingControl {
    /// `RING_MAGIC`.
    pub magic: u32,
    /// `RING_VERSION`.
    pub version: u32,
    /// Where the records start in the mapping (one page).
    pub records_offset: u32,
    /// `RING_DELETED` once the room is deleted: nothing more will come.
    pub flags: u32,
    /// Bytes of records area.
    pub area_len: u64,
    pub seqcount: u32,
    /// Reserved; zero.
    pub reserved: u32,
    pub first_seq: u64,
    pub first_pos: u64,
    pub next_seq: u64,
    pub next_pos: u64,
}

/// `RingControl::magic`: "kchr".
pub const RING_MAGIC: u32 = 0x6b63_6872;
/// `RingControl::version` of this layout.
pub const RING_VERSION: u32 = 1;
/// `RingControl::flags`: the room is deleted.
pub const RING_DELETED: u32 = 1;

/// Room ioctl: sets this fd's read mode (`READ_*`); `EINVAL` otherwise.
pub const IOC_SET_READ_MODE: u32 = iow::<u32>(0x10);
/// Room ioctl: how many messages this reader has lost since it last asked
/// (or a framed header told it); resets the count.
pub const IOC_TAKE_LOST: u32 = ior::<u64>(0x11);

/// Room ioctl: moves this reader to sequence number `seq`, which must be
/// retained or the next one (`ERANGE` otherwise). `lseek` does the same in
/// message units: `SEEK_SET` counts from the oldest retained message,
/// `SEEK_END` from the end (`-N`: the last N), `SEEK_CUR` from here, clamped
/// to what is retained; it returns the new sequence number.
pub const IOC_SEEK_SEQ: u32 = iow::<u64>(0x12);

/// Room ioctl: makes this writable fd a relay (the argument must be 1):
/// from then on each write is a [`RelayHeader`] and one message, and its
/// messages say they were relayed. Only a process with `CAP_SYS_ADMIN` may
/// do it (kchatd's control plane: a bridge is given such an fd, or runs
/// with the capability); it cannot be undone. Errors: `EPERM`, `EBADF`
/// (not open for writing), `EINVAL`.
pub const IOC_SET_RELAY: u32 = iow::<u32>(0x13);

/// Write modes of a room fd (`IOC_SET_WRITE_MODE`).
/// Plain (the default): each `write` of up to `max_msg` bytes is one
/// message; a longer one is split into `max_msg` pieces.
pub const WRITE_PLAIN: u32 = 0;
/// Framed: each `write` is a run of records, each a [`WriteFrame`] and
/// then its body, one message per record (of any size up to `max_msg`),
/// whole records only: many messages of different sizes in one call. On
/// a relay fd a record's body is what one plain relay write would be (a
/// [`RelayHeader`] and the payload). See docs/kernel-abi.md, "Framed
/// writes".
pub const WRITE_FRAMED: u32 = 1;

/// The header of one record of a framed write; its body (`len` bytes)
/// follows at once, and the next record's header right after the body
/// (no padding). Native byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WriteFrame {
    /// Bytes of body: 1 to `max_msg` (a relay's: its `RelayHeader` and 1
    /// to `max_msg` bytes of payload).
    pub len: u32,
    /// Reserved; must be zero.
    pub flags: u32,
}

/// Room ioctl: sets this fd's write mode (`WRITE_PLAIN` or
/// `WRITE_FRAMED`); `EINVAL` otherwise, `EBADF` on an fd not open for
/// writing.
pub const IOC_SET_WRITE_MODE: u32 = iow::<u32>(0x14);

/// Copies a room name into a NUL-padded field; `None` if it does not fit.
pub fn name_field(name: &str) -> Option<[u8; NAME_FIELD]> {
    let bytes = name.as_bytes();
    if bytes.len() >= NAME_FIELD {
        return None;
    }
    let mut field = [0u8; NAME_FIELD];
    field[..bytes.len()].copy_from_slice(bytes);
    Some(field)
}

/// The name in a NUL-padded field: the bytes before the first NUL, or
/// `None` if there is none (an unterminated field).
pub fn field_name(field: &[u8; NAME_FIELD]) -> Option<&[u8]> {
    let end = field.iter().position(|&b| b == 0)?;
    Some(&field[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_the_c_macros() {
        // TIOCGPTN is _IOR('T', 0x30, unsigned int) in the C headers; same
        // formula, different magic.
        let tiocgptn = ioc_typed(IOC_READ, b'T', 0x30, 4);
        assert_eq!(tiocgptn as libc::Ioctl, libc::TIOCGPTN);
        // TIOCSPTLCK is _IOW('T', 0x31, int).
        let tiocsptlck = ioc_typed(IOC_WRITE, b'T', 0x31, 4);
        assert_eq!(tiocsptlck as libc::Ioctl, libc::TIOCSPTLCK);
    }

    #[test]
    fn version_ioctl_is_stable() {
        // Old tools hard-code this number; it must never move.
        assert_eq!(IOC_VERSION, 0x8004_b900);
        assert_eq!(ioc_nr(IOC_VERSION), Some(0));
        assert_eq!(ioc_nr(libc::TIOCGPTN as u32), None);
    }

    #[test]
    fn struct_layouts_are_fixed() {
        // The C view: no implicit padding, sizes every ABI user relies on.
        assert_eq!(core::mem::size_of::<RoomSpec>(), 72);
        assert_eq!(
            core::mem::offset_of!(RoomSpec, max_wait_ms),
            ROOM_SPEC_V1_SIZE as usize
        );
        assert_eq!(core::mem::align_of::<RoomSpec>(), 4);
        assert_eq!(core::mem::offset_of!(RoomSpec, name), 8);
        assert_eq!(core::mem::offset_of!(RoomSpec, flags), 60);
        assert_eq!(core::mem::size_of::<RoomName>(), 40);
        assert_eq!(core::mem::size_of::<FrameHeader>(), 40);
        assert_eq!(core::mem::size_of::<WriteFrame>(), 8);
        assert_eq!(core::mem::size_of::<RingRecord>(), 40);
        assert_eq!(core::mem::size_of::<RingControl>(), 64);
        assert_eq!(core::mem::size_of::<RoomInfo>(), 192);
        assert_eq!(
            core::mem::offset_of!(RoomInfo, incarnation),
            ROOM_INFO_V1_SIZE as usize
        );
        // The number keeps the first version's size.
        assert_eq!(IOC_ROOM_INFO, 0xc0b8_b903);
        assert_eq!(core::mem::offset_of!(OriginHeader, incarnation_hi), 4);
        assert_eq!(core::mem::offset_of!(OriginHeader, incarnation_lo), 68);
        assert_eq!(core::mem::size_of::<RateLimit>(), 64);
        assert_eq!(core::mem::size_of::<GlobalLimits>(), 24);
        assert_eq!(core::mem::size_of::<MaxWait>(), 48);
        assert_eq!(core::mem::size_of::<ReaderInfo>(), 48);
        assert_eq!(core::mem::size_of::<OriginHeader>(), 72);
        assert_eq!(core::mem::size_of::<RelayHeader>(), 80);
        assert_eq!(IOC_SET_RELAY, 0x4004_b913);
        assert_eq!(core::mem::size_of::<ReaderList>(), 56);
        assert_eq!(IOC_ROOM_READERS, 0xc038_b909);
        assert_eq!(IOC_SET_MAX_WAIT, 0x4030_b908);
        assert_eq!(core::mem::offset_of!(RoomInfo, ring_used_bytes), 80);
        assert_eq!(core::mem::size_of::<RoomList>(), 24);
        assert_eq!(core::mem::offset_of!(FrameHeader, len), 24);
        assert_eq!(IOC_SET_READ_MODE, 0x4004_b910);
        assert_eq!(IOC_TAKE_LOST, 0x8008_b911);
        assert_eq!(IOC_SEEK_SEQ, 0x4008_b912);
        assert_eq!(IOC_CREATE_ROOM, 0x4040_b901);
        assert_eq!(IOC_DELETE_ROOM, 0x4028_b902);
    }

    #[test]
    fn an_incarnation_is_split_into_the_two_words() {
        let mut origin = OriginHeader::default();
        origin.set_incarnation(0x0123_4567_89ab_cdef);
        assert_eq!(
            (origin.incarnation_hi, origin.incarnation_lo),
            (0x0123_4567, 0x89ab_cdef)
        );
        assert_eq!(origin.incarnation(), 0x0123_4567_89ab_cdef);
        assert_eq!(OriginHeader::default().incarnation(), 0);
    }

    #[test]
    fn name_fields_round_trip() {
        let field = name_field("lobby").unwrap();
        assert_eq!(field_name(&field), Some(&b"lobby"[..]));
        assert_eq!(name_field(&"x".repeat(32)), None);
        assert!(name_field(&"x".repeat(31)).is_some());
        assert_eq!(field_name(&[b'x'; NAME_FIELD]), None);
    }

    #[test]
    fn directions_differ() {
        assert_ne!(ior::<u64>(1), iow::<u64>(1));
        assert_ne!(iow::<u64>(1), iowr::<u64>(1));
        assert_eq!((ior::<[u8; 24]>(3) >> IOC_SIZESHIFT) & 0x3fff, 24);
    }
}
