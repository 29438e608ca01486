// SPDX-License-Identifier: GPL-2.0
//! `Registry`: kchat's devices and rooms. Owns the major, the class, the
//! control node, and one slot per minor holding a room and its node.
//!
//! Lock order: `Registry::inner` before any room's lock (see `room.rs`).

use crate::{
    abi,
    compat::{
        chrdev::{Major, Router},
        device::{Class, Node, NodePerms},
        file::{File, OpeningFile},
        fops::{into_foreign_mut, open_as},
    },
    control::Control,
    name,
    room::{LimitConfig, Policy, RingCharge, Room, Scope, Settings},
    room_file::RoomFile,
};
use core::{
    ptr,
    sync::atomic::{AtomicPtr, AtomicU64, Ordering},
};
use kernel::{
    alloc::KVVec,
    c_str, ffi, new_mutex,
    prelude::*,
    str::CStr,
    sync::{Arc, Mutex},
    types::ForeignOwnable,
};

/// Most rooms at once: every minor but the control node's.
const MAX_ROOMS: u32 = abi::MAX_MINORS - 1;
/// Default for the ring memory all rooms may reserve together.
const DEFAULT_TOTAL_RING_BYTES: u64 = 256 * 1024 * 1024;
/// Default for the read-mode opens per room.
const DEFAULT_MAX_READERS: u32 = 1024;

struct RoomEntry {
    room: Arc<Room>,
    _node: Node,
}

struct RegistryInner {
    /// Indexed by minor; slot 0 (the control node) stays empty.
    rooms: KVec<Option<RoomEntry>>,
    /// The minor after the last one handed out: minors go round, so a
    /// deleted room's number is not reused soon (a stale node made with
    /// `mknod` would reach whichever room got it).
    next_minor: usize,
    /// The control node, made once everything else is ready; dropped after
    /// the rooms.
    control_node: Option<Node>,
    limits: abi::GlobalLimits,
}

impl RegistryInner {
    /// The first free room minor from `next_minor` on, going round.
    fn free_minor(&self) -> Option<usize> {
        let count = self.rooms.len();
        (0..count)
            .filter_map(|step| (self.next_minor + step).checked_rem(count))
            .find(|&minor| {
                minor != abi::CONTROL_MINOR as usize && matches!(self.rooms.get(minor), Some(None))
            })
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        self.rooms.iter().position(|slot| {
            slot.as_ref()
                .is_some_and(|entry| entry.room.settings.name() == name)
        })
    }
}

/// Fields drop top to bottom: rooms and their nodes, then the control node
/// (both in `inner`), the class, and the major last.
#[pin_data]
pub(crate) struct Registry {
    #[pin]
    inner: Mutex<RegistryInner>,
    /// Ring bytes of every room whose memory is still there (deleted ones
    /// included until their last close); checked under `inner`.
    ring_total: Arc<AtomicU64>,
    class: Class,
    major: Major<MinorRouter>,
}

/// The registry, for the open router (which has no other way to reach it).
/// Set once it exists, cleared at unload.
static REGISTRY: AtomicPtr<ffi::c_void> = AtomicPtr::new(ptr::null_mut());

impl Registry {
    /// Registers the major and the class. Nothing opens yet: the open
    /// router answers `ENXIO` until [`Registry::publish`], and there is no
    /// control node until [`Registry::add_control_node`].
    pub(crate) fn new() -> Result<Arc<Registry>> {
        let major = Major::<MinorRouter>::register(c_str!("kchat"), abi::MAX_MINORS)?;
        let class = Class::register()?;
        let mut rooms = KVec::with_capacity(abi::MAX_MINORS as usize, GFP_KERNEL)?;
        for _ in 0..abi::MAX_MINORS {
            rooms.push(None, GFP_KERNEL)?;
        }
        let inner = RegistryInner {
            rooms,
            next_minor: 1,
            control_node: None,
            limits: abi::GlobalLimits {
                size: core::mem::size_of::<abi::GlobalLimits>() as u32,
                flags: 0,
                max_rooms: MAX_ROOMS,
                max_readers: DEFAULT_MAX_READERS,
                max_total_ring_bytes: DEFAULT_TOTAL_RING_BYTES,
            },
        };
        let ring_total = Arc::new(AtomicU64::new(0), GFP_KERNEL)?;
        Arc::pin_init(
            pin_init!(Registry {
                inner <- new_mutex!(inner, "Registry::inner"),
                ring_total,
                class,
                major,
            }),
            GFP_KERNEL,
        )
    }

    /// Makes `/dev/kchat/control`: the last thing that can fail at load.
    pub(crate) fn add_control_node(&self) -> Result {
        let control_perms = NodePerms {
            mode: 0o600,
            uid: 0,
            gid: 0,
        };
        let node = Node::new(
            &self.class,
            self.major.devt(abi::CONTROL_MINOR),
            c_str!("control"),
            control_perms,
        )?;
        self.inner.lock().control_node = Some(node);
        Ok(())
    }

    /// Hands the registry to the open router; from now on opens work. Call
    /// once loading can no longer fail: a file opened before a failed load
    /// would keep pointers into the freed module.
    pub(crate) fn publish(registry: &Arc<Registry>) {
        REGISTRY.store(into_foreign_mut(registry.clone()), Ordering::Release);
    }

    /// Withdraws the registry from the open router (at unload).
    pub(crate) fn unpublish() {
        let raw = REGISTRY.swap(ptr::null_mut(), Ordering::AcqRel);
        if !raw.is_null() {
            // SAFETY: `publish` stored a pointer from `into_foreign`, and the
            // swap above hands it back exactly once.
            drop(unsafe { <Arc<Registry> as ForeignOwnable>::from_foreign(raw) });
        }
    }

    /// Creates a room from a caller's spec.
    pub(crate) fn create(&self, spec: &abi::RoomSpec) -> Result {
        let settings = validate(spec)?;
        let mut inner = self.inner.lock();
        if inner.find(settings.name()).is_some() {
            return Err(EEXIST);
        }
        let in_use = inner.rooms.iter().flatten().count();
        let bytes = u64::from(settings.ring_bytes);
        // Only creates add to the total, under this lock; last closes only
        // take away, so the check cannot be overtaken.
        let ring_bytes = self.ring_total.load(Ordering::Relaxed) + bytes;
        let limits = &inner.limits;
        // Distinct answers, so the caller can say which limit to raise: a
        // count of rooms as inotify's count of instances (EMFILE), bytes as
        // its watches (ENOSPC).
        if in_use >= limits.max_rooms as usize {
            return Err(EMFILE);
        }
        if ring_bytes > limits.max_total_ring_bytes {
            return Err(ENOSPC);
        }
        let minor = inner.free_minor().ok_or(EMFILE)?;
        let room = Room::new(
            settings,
            minor as u32,
            RingCharge::new(&self.ring_total, bytes),
        )?;
        let name_len = settings.name().len();
        let name = CStr::from_bytes_with_nul(&settings.name[..=name_len]).map_err(|_| EINVAL)?;
        let perms = NodePerms {
            mode: settings.mode,
            uid: settings.uid,
            gid: settings.gid,
        };
        let node = Node::new(&self.class, self.major.devt(minor as u32), name, perms)?;
        inner.rooms[minor] = Some(RoomEntry { room, _node: node });
        inner.next_minor = minor + 1;
        Ok(())
    }

    /// Deletes a room: its node goes now, its memory at the last close.
    pub(crate) fn delete(&self, name: &[u8]) -> Result {
        let mut inner = self.inner.lock();
        let index = inner.find(name).ok_or(ENOENT)?;
        let entry = inner.rooms[index].take().ok_or(ENOENT)?;
        let RoomEntry { room, _node } = entry;
        // The node goes while the lock still keeps its minor and name from
        // a concurrent create: until `device_del` is done, a new device
        // with either would collide with the old one's sysfs entries (found
        // by the ioctl fuzzer). Removing it before `mark_deleted` also means
        // no new open finds the room.
        drop(_node);
        drop(inner);
        room.mark_deleted();
        Ok(())
    }

    /// The module-wide limits.
    pub(crate) fn limits(&self) -> abi::GlobalLimits {
        self.inner.lock().limits
    }

    /// Replaces the module-wide limits, all or nothing.
    pub(crate) fn set_limits(&self, limits: &abi::GlobalLimits) -> Result {
        let valid = limits.flags == 0
            && (1..=MAX_ROOMS).contains(&limits.max_rooms)
            && (1..=abi::MAX_READERS_LIMIT).contains(&limits.max_readers)
            && (u64::from(abi::MIN_RING_BYTES)..=abi::MAX_TOTAL_RING_LIMIT)
                .contains(&limits.max_total_ring_bytes);
        if !valid {
            return Err(EINVAL);
        }
        let mut inner = self.inner.lock();
        inner.limits = abi::GlobalLimits {
            size: core::mem::size_of::<abi::GlobalLimits>() as u32,
            ..*limits
        };
        Ok(())
    }

    fn find_room(&self, name: &[u8]) -> Result<Arc<Room>> {
        let inner = self.inner.lock();
        let index = inner.find(name).ok_or(ENOENT)?;
        Ok(inner.rooms[index].as_ref().ok_or(ENOENT)?.room.clone())
    }

    /// Sets a room's rate limit.
    pub(crate) fn set_limit(&self, request: &abi::RateLimit) -> Result {
        if request.flags != 0 || request.reserved != 0 {
            return Err(EINVAL);
        }
        let scope = match request.scope {
            abi::LIMIT_PER_UID => Scope::Uid,
            abi::LIMIT_PER_FILE => Scope::File,
            _ => return Err(EINVAL),
        };
        let name = abi::field_name(&request.name).ok_or(EINVAL)?;
        self.find_room(name)?.set_limit(LimitConfig {
            scope,
            msgs_per_sec: request.msgs_per_sec,
            msg_burst: request.msg_burst,
            bytes_per_sec: request.bytes_per_sec,
            byte_burst: request.byte_burst,
        });
        Ok(())
    }

    /// A room's readers, as `caller` sees them; fills `list.count`.
    pub(crate) fn readers(
        &self,
        caller: &File,
        list: &mut abi::ReaderList,
    ) -> Result<KVVec<abi::ReaderInfo>> {
        if list.flags != 0 {
            return Err(EINVAL);
        }
        let name = abi::field_name(&list.name).ok_or(EINVAL)?;
        let room = self.find_room(name)?;
        let (infos, total) = room.reader_infos(caller, list.capacity as usize)?;
        list.count = total as u32;
        Ok(infos)
    }

    /// Changes a `block` room's bound on laggards.
    pub(crate) fn set_max_wait(&self, request: &abi::MaxWait) -> Result {
        if request.flags != 0 || request.reserved != 0 {
            return Err(EINVAL);
        }
        let name = abi::field_name(&request.name).ok_or(EINVAL)?;
        let room = self.find_room(name)?;
        if room.settings.policy != Policy::Block {
            return Err(EINVAL);
        }
        room.set_max_wait(max_wait(Policy::Block, request.max_wait_ms)?);
        Ok(())
    }

    /// Fills `info` (whose `name` says which room) with settings, fill and
    /// counters; the owner as `caller` (the control file asking) sees it,
    /// as `readers` shows readers' ids.
    pub(crate) fn info(&self, caller: &File, info: &mut abi::RoomInfo) -> Result {
        let name = abi::field_name(&info.name).ok_or(EINVAL)?;
        let room = self.find_room(name)?;
        let settings = &room.settings;
        info.policy = match settings.policy {
            Policy::Drop => abi::POLICY_DROP,
            Policy::Block => abi::POLICY_BLOCK,
        };
        info.ring_bytes = settings.ring_bytes;
        info.max_msg = settings.max_msg;
        (info.uid, info.gid) = caller.ids_as_seen(settings.uid, settings.gid);
        info.mode = u32::from(settings.mode);
        info.minor = room.minor;
        info.incarnation = room.incarnation;
        {
            let inner = room.inner.lock();
            info.max_wait_ms = inner.max_wait_ms;
            info.readers = inner.reader_count() as u32;
            info.ring_used_bytes = inner.ring.bytes() as u64;
            info.ring_msgs = inner.ring.len() as u64;
            info.first_seq = inner.ring.first_seq();
            info.next_seq = inner.ring.next_seq();
            let limit = &inner.limit;
            info.limit_scope = match limit.scope {
                Scope::Uid => abi::LIMIT_PER_UID,
                Scope::File => abi::LIMIT_PER_FILE,
            };
            info.msgs_per_sec = limit.msgs_per_sec;
            info.msg_burst = limit.msg_burst;
            info.bytes_per_sec = limit.bytes_per_sec;
            info.byte_burst = limit.byte_burst;
        }
        let stats = &room.stats;
        let load = |counter: &core::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        info.writers = stats.writers.load(Ordering::Relaxed);
        info.msgs_in = load(&stats.msgs_in);
        info.bytes_in = load(&stats.bytes_in);
        info.deliveries = load(&stats.deliveries);
        info.lost = load(&stats.lost);
        info.throttled = load(&stats.throttled);
        info.writer_waits = load(&stats.writer_waits);
        info.laggard_evictions = load(&stats.laggard_evictions) as u32;
        Ok(())
    }

    /// Calls `each` with every room's name field, in minor order; returns
    /// how many rooms there are.
    pub(crate) fn for_each_name(
        &self,
        mut each: impl FnMut(&[u8; abi::NAME_FIELD]) -> Result,
    ) -> Result<u32> {
        let mut names = KVec::new();
        {
            let inner = self.inner.lock();
            for entry in inner.rooms.iter().flatten() {
                names.push(entry.room.settings.name, GFP_KERNEL)?;
            }
        }
        // Copied out after the lock: `each` writes to user memory.
        for name in names.iter() {
            each(name)?;
        }
        Ok(names.len() as u32)
    }

    /// The room on `minor`, and how many readers a room may have now.
    fn lookup(&self, minor: u32) -> Option<(Arc<Room>, usize)> {
        let inner = self.inner.lock();
        let entry = inner.rooms.get(minor as usize)?.as_ref()?;
        Some((entry.room.clone(), inner.limits.max_readers as usize))
    }
}

/// Checks a create request and fills in defaults.
fn validate(spec: &abi::RoomSpec) -> Result<Settings> {
    if spec.flags != 0 || spec.reserved != 0 || spec.mode & !0o777 != 0 {
        return Err(EINVAL);
    }
    let policy = match spec.policy {
        abi::POLICY_DROP => Policy::Drop,
        abi::POLICY_BLOCK => Policy::Block,
        _ => return Err(EINVAL),
    };
    let name = abi::field_name(&spec.name).ok_or(EINVAL)?;
    name::validate(name).map_err(|_| EINVAL)?;
    let ring_bytes = match spec.ring_bytes {
        0 => abi::DEFAULT_RING_BYTES,
        n if (abi::MIN_RING_BYTES..=abi::MAX_RING_BYTES).contains(&n) => n,
        _ => return Err(EINVAL),
    };
    let max_msg = match spec.max_msg {
        0 => abi::DEFAULT_MAX_MSG.min(ring_bytes - abi::RECORD_OVERHEAD),
        n if n <= abi::MAX_MAX_MSG && n + abi::RECORD_OVERHEAD <= ring_bytes => n,
        _ => return Err(EINVAL),
    };
    let max_wait_ms = max_wait(policy, spec.max_wait_ms)?;
    Ok(Settings {
        name: spec.name,
        policy,
        ring_bytes,
        max_msg,
        max_wait_ms,
        uid: spec.uid,
        gid: spec.gid,
        mode: spec.mode as u16,
    })
}

/// A requested bound on laggards as the room keeps it: `EINVAL` for a
/// `drop` room (it has none), 0 is the default.
fn max_wait(policy: Policy, requested_ms: u32) -> Result<u32> {
    match (policy, requested_ms) {
        (Policy::Drop, 0) => Ok(0),
        (Policy::Drop, _) => Err(EINVAL),
        (Policy::Block, 0) => Ok(abi::DEFAULT_MAX_WAIT_MS),
        (Policy::Block, ms) => Ok(ms),
    }
}

/// Routes an open of one of kchat's minors to the right kind of file.
pub(crate) struct MinorRouter;

impl Router for MinorRouter {
    fn open(file: &OpeningFile, minor: u32) -> Result {
        let raw = REGISTRY.load(Ordering::Acquire);
        if raw.is_null() {
            return Err(ENXIO);
        }
        // SAFETY: `raw` came from `into_foreign` in `publish`. It stays valid
        // while this runs: `unpublish` runs at module unload, and the VFS
        // holds a reference on this module for as long as an open is in
        // progress (the file operations name it as owner).
        let registry = unsafe { <Arc<Registry> as ForeignOwnable>::borrow(raw) };
        if minor == abi::CONTROL_MINOR {
            return open_as::<Control>(file, registry.into());
        }
        let room = registry.lookup(minor).ok_or(ENXIO)?;
        open_as::<RoomFile>(file, room)
    }
}
