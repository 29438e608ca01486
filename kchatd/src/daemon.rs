//! The daemon's state and what it does with it: reconcile the kernel with
//! the declared rooms (on start, every tick, on SIGHUP), answer requests,
//! and turn what changed in the kernel into events.
//!
//! Everything runs under one mutex that is never held across an `.await`;
//! the ioctls under it take microseconds.

use crate::{
    config::{Config, ConfigError, RoomsFile},
    kernel::{self, Snapshot},
    plan::{self, Desired, Step},
    state::State,
};
use kchat_client::Control;
use kchat_proto::{
    api::{
        ApiError, Change, Counters, ErrorKind, Event, EventKind, Origin, ReaderView, Reply,
        Request, RoomView, Status,
    },
    room::{RoomDecl, RoomName},
};
use nix::errno::Errno;
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
    time::{SystemTime, UNIX_EPOCH},
};
use tokio::sync::broadcast;

/// kchatd's own counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct Health {
    pub reconciles: AtomicU64,
    pub reconcile_errors: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
    pub requests: AtomicU64,
    pub denied: AtomicU64,
    /// Connections turned away over a cap (`api::Gate`).
    pub refused_connections: AtomicU64,
    /// Whether the last reload applied (the start counts as one), and when
    /// the last one that did happened (seconds since the epoch).
    pub last_reload_ok: AtomicBool,
    pub last_reload_success: AtomicU64,
}

/// No admin group, in `Daemon::admin_gid`.
const NO_ADMIN_GROUP: u64 = u64::MAX;

#[derive(Debug)]
pub struct Daemon {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Event>,
    pub health: Health,
    /// Who holds connections to the control socket.
    pub gate: crate::api::Gate,
    /// What the async side needs without taking `inner`, which a request
    /// may hold across a state-file fsync: the admin group's gid
    /// (`NO_ADMIN_GROUP`: none) and whether kchatd is attached.
    admin_gid: AtomicU64,
    attached: AtomicBool,
    pub config_path: PathBuf,
    pub started: SystemTime,
}

#[derive(Debug)]
struct Inner {
    config: Config,
    state: State,
    abi_version: Option<u32>,
    detached_reason: Option<String>,
    last_error: Option<String>,
    /// The rooms as the last reconcile saw them, to report changes.
    seen: Option<Snapshot>,
    /// Drift already logged, so it is logged once, not every tick.
    drift_logged: BTreeMap<RoomName, Vec<String>>,
}

fn api_error(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError {
        kind,
        message: message.into(),
    }
}

/// An ioctl failure, in the caller's terms.
fn kernel_error(what: &str, room: &RoomName, err: Errno) -> ApiError {
    let (kind, why) = match err {
        Errno::EEXIST => (ErrorKind::AlreadyExists, "it already exists".to_owned()),
        Errno::ENOENT => (ErrorKind::NotFound, "no such room".to_owned()),
        Errno::EMFILE => (
            ErrorKind::Failed,
            "the module's room limit is reached (raise [limits] max_rooms, or delete a room)"
                .to_owned(),
        ),
        Errno::ENOSPC => (
            ErrorKind::Failed,
            "the module's ring memory limit would be exceeded (raise [limits] max_total_ring_bytes or use a smaller ring_bytes)"
                .to_owned(),
        ),
        Errno::ENOMEM => (
            ErrorKind::Failed,
            "the kernel could not allocate the ring (ENOMEM): use a smaller ring_bytes".to_owned(),
        ),
        Errno::EINVAL => (ErrorKind::Invalid, "the module refused the settings (EINVAL)".to_owned()),
        other => (ErrorKind::Failed, other.desc().to_owned()),
    };
    api_error(kind, format!("cannot {what} room {room}: {why}"))
}

fn admin_gid_of(config: &Config) -> u64 {
    config
        .admin_group
        .as_ref()
        .map_or(NO_ADMIN_GROUP, |group| u64::from(group.gid))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a reload (SIGHUP) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file is bad: nothing changed, the old config runs.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The file is in force, but the kernel did not take all of it.
    #[error("the new config is in force but applying it failed: {0}; kchatd retries on every pass, fix the cause (or the file and reload)")]
    Apply(String),
}

impl Daemon {
    pub fn new(config_path: PathBuf, config: Config, state: State) -> Daemon {
        let admin_gid = admin_gid_of(&config);
        Daemon {
            inner: Mutex::new(Inner {
                config,
                state,
                abi_version: None,
                detached_reason: Some("not attached yet".to_owned()),
                last_error: None,
                seen: None,
                drift_logged: BTreeMap::new(),
            }),
            events: broadcast::channel(1024).0,
            health: Health {
                last_reload_ok: AtomicBool::new(true),
                last_reload_success: AtomicU64::new(now()),
                ..Health::default()
            },
            gate: crate::api::Gate::default(),
            admin_gid: AtomicU64::new(admin_gid),
            attached: AtomicBool::new(false),
            config_path,
            started: SystemTime::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock would have left consistent data (no step
        // is half-written in memory), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Reads the running config without copying it.
    pub fn with_config<R>(&self, read: impl FnOnce(&Config) -> R) -> R {
        read(&self.lock().config)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, kind: EventKind, room: Option<RoomName>, count: u64) {
        // No subscriber is fine.
        let _ = self.events.send(Event {
            time: now(),
            time_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            kind,
            room,
            count,
        });
    }

    /// Whether kchatd is attached to the module now; takes no lock.
    pub fn attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    /// The admin group's gid, if the config names one; takes no lock.
    pub fn admin_gid(&self) -> Option<u32> {
        u32::try_from(self.admin_gid.load(Ordering::Relaxed)).ok()
    }

    /// Brings the kernel in line with the declared rooms. Runs at start,
    /// every tick (so a reloaded module gets its rooms back within one) and
    /// after every change.
    pub fn reconcile(&self) {
        // Each pass's failures are logged and counted where they happen.
        let _ = self.reconcile_once();
    }

    /// One reconcile pass; what failed in it, if anything (a kchatd not
    /// attached to the module has nothing to apply, which is no failure:
    /// the config is applied once the module is there).
    fn reconcile_once(&self) -> Result<(), String> {
        self.health.reconciles.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        let control = match kernel::attach() {
            Ok((control, version)) => {
                if inner.abi_version.is_none() {
                    tracing::info!(abi_version = version, "attached to the kchat module");
                    self.emit(EventKind::Attached, None, 0);
                    inner.abi_version = Some(version);
                    self.attached.store(true, Ordering::Relaxed);
                    inner.detached_reason = None;
                    inner.seen = Some(Snapshot::default());
                }
                control
            }
            Err(reason) => {
                if inner.abi_version.is_some() || inner.detached_reason.as_deref() != Some(&reason)
                {
                    tracing::warn!(%reason, "detached from the kchat module");
                    if inner.abi_version.is_some() {
                        self.emit(EventKind::Detached, None, 0);
                    }
                }
                inner.abi_version = None;
                self.attached.store(false, Ordering::Relaxed);
                inner.detached_reason = Some(reason);
                inner.seen = None;
                return Ok(());
            }
        };
        let errors = self.converge(&mut inner, &control);
        inner.last_error = errors.last().cloned();
        if errors.is_empty() {
            return Ok(());
        }
        self.health.reconcile_errors.fetch_add(1, Ordering::Relaxed);
        Err(errors.join("; "))
    }

    /// Brings the module-wide limits to what `[limits]` says, like rooms:
    /// on every pass, so a limit changed behind kchatd's back, a reload
    /// within one tick or a module reloaded is noticed, and a failed apply
    /// is retried (and counted) instead of forgotten.
    fn converge_global_limits(&self, inner: &Inner, control: &Control) -> Result<(), String> {
        let Some(limits) = inner.config.limits else {
            return Ok(());
        };
        let failed = |err: Errno| format!("cannot set the module's global limits: {err}");
        let current = control.limits().map_err(failed)?;
        let wanted = limits.merged(current);
        if wanted == current {
            return Ok(());
        }
        control.set_limits(&wanted).map_err(failed)?;
        tracing::info!(
            max_rooms = wanted.max_rooms,
            max_readers = wanted.max_readers,
            max_total_ring_bytes = wanted.max_total_ring_bytes,
            "set the module's global limits"
        );
        Ok(())
    }

    /// Plans and carries out the steps; returns what failed.
    fn converge(&self, inner: &mut Inner, control: &Control) -> Vec<String> {
        let mut errors = Vec::new();
        if let Err(err) = self.converge_global_limits(inner, control) {
            tracing::error!(error = %err, "reconcile step failed");
            errors.push(err);
        }
        let snapshot = match kernel::snapshot(control) {
            Ok(snapshot) => snapshot,
            Err(err) => {
                errors.push(format!("cannot list the module's rooms: {err}"));
                return errors;
            }
        };
        self.report_changes(inner, &snapshot);
        let actual = decls(&snapshot);
        let desired = plan::desired(&inner.config.rooms, &inner.state);
        let steps = plan::plan(&desired, &actual, &inner.state.limits, &inner.state.owned);
        let mut owned_changed = false;
        let mut drift = BTreeMap::new();
        for step in steps {
            if let Step::Drift(room, diffs) = &step {
                drift.insert(room.clone(), diffs.clone());
                continue;
            }
            match execute(control, &step) {
                Ok(()) => {
                    tracing::info!(room = %step.room(), change = %step.change().detail, action = ?step.change().action, "reconciled");
                    match &step {
                        Step::Create(room, _) => {
                            owned_changed |= inner.state.owned.insert(room.clone());
                        }
                        Step::Delete(room) => {
                            owned_changed |= inner.state.owned.remove(room);
                        }
                        _ => {}
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err.message, "reconcile step failed");
                    errors.push(err.message);
                }
            }
        }
        for (room, diffs) in &drift {
            if inner.drift_logged.get(room) != Some(diffs) {
                tracing::warn!(%room, drift = %diffs.join(", "), "room differs from its declaration in settings fixed at creation; to apply, `kchatctl delete-room` it and `kchatctl reset` it");
            }
        }
        inner.drift_logged = drift;
        if owned_changed && let Err(err) = inner.state.save(&self.state_path(inner)) {
            tracing::error!(%err, "cannot save state");
            errors.push(err.to_string());
        }
        // What the steps changed is reported on the next tick.
        errors
    }

    fn state_path(&self, inner: &Inner) -> PathBuf {
        State::path(&inner.config.state_dir)
    }

    /// Turns the difference between the last snapshot and `now` into events.
    fn report_changes(&self, inner: &mut Inner, now: &Snapshot) {
        if let Some(seen) = &inner.seen {
            for (room, info) in &now.rooms {
                match seen.rooms.get(room) {
                    None => self.emit(EventKind::RoomCreated, Some(room.clone()), 0),
                    Some(old) => {
                        let lost = info.lost.saturating_sub(old.lost);
                        if lost > 0 {
                            self.emit(EventKind::Lost, Some(room.clone()), lost);
                        }
                        let throttled = info.throttled.saturating_sub(old.throttled);
                        if throttled > 0 {
                            self.emit(EventKind::Throttled, Some(room.clone()), throttled);
                        }
                    }
                }
            }
            for room in seen.rooms.keys().filter(|r| !now.rooms.contains_key(*r)) {
                self.emit(EventKind::RoomDeleted, Some(room.clone()), 0);
            }
        }
        inner.seen = Some(now.clone());
    }

    /// Rereads the config file (SIGHUP). A bad file changes nothing: the
    /// running config stays, and the error says why. A good file is put in
    /// force and applied; the reload succeeded only if applying it did
    /// (`kchat_config_last_reload_successful`), and a failed apply is
    /// retried on every pass like any other reconcile.
    pub fn reload(&self) -> Result<(), ReloadError> {
        self.health.reloads.fetch_add(1, Ordering::Relaxed);
        let outcome = self.load_and_apply();
        let ok = outcome.is_ok();
        if !ok {
            self.health.reload_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.health.last_reload_ok.store(ok, Ordering::Relaxed);
        if ok {
            self.health
                .last_reload_success
                .store(now(), Ordering::Relaxed);
        }
        outcome
    }

    fn load_and_apply(&self) -> Result<(), ReloadError> {
        let mut config = Config::load(&self.config_path)?;
        {
            let mut inner = self.lock();
            if config.socket != inner.config.socket || config.metrics != inner.config.metrics {
                tracing::warn!("socket and [metrics] changes take effect when kchatd restarts");
            }
            // kchatd holds the lock of the state directory it started with;
            // saving into another one, unlocked, could race a second kchatd.
            if config.state_dir != inner.config.state_dir {
                tracing::warn!(
                    running = %inner.config.state_dir.display(),
                    configured = %config.state_dir.display(),
                    "a state_dir change takes effect when kchatd restarts"
                );
                config.state_dir = inner.config.state_dir.clone();
            }
            self.admin_gid
                .store(admin_gid_of(&config), Ordering::Relaxed);
            inner.config = config;
        }
        self.reconcile_once().map_err(ReloadError::Apply)
    }

    /// Every room the kernel has, as the API shows them.
    pub fn rooms(&self) -> Result<Vec<RoomView>, ApiError> {
        let inner = self.lock();
        let (_, snapshot) = attach_and_snapshot()?;
        let desired = plan::desired(&inner.config.rooms, &inner.state);
        Ok(snapshot
            .rooms
            .iter()
            .map(|(name, info)| {
                let mut room = view(name, info, desired.get(name));
                room.limit_overridden =
                    inner.config.rooms.contains_key(name) && inner.state.limits.contains_key(name);
                room
            })
            .collect())
    }

    /// The module-wide limits, if the module is there.
    pub fn module_limits(&self) -> Option<kchat_uapi::abi::GlobalLimits> {
        kernel::attach().ok()?.0.limits().ok()
    }

    /// One line for systemd's `STATUS=` (what `systemctl status` shows).
    pub fn summary(&self) -> String {
        let inner = self.lock();
        match (&inner.abi_version, &inner.detached_reason) {
            (Some(_), _) => {
                let rooms = inner.seen.as_ref().map_or(0, |s| s.rooms.len());
                let mut line = format!("attached, {rooms} room(s)");
                if let Some(err) = &inner.last_error {
                    line += &format!("; last error: {err}");
                }
                line
            }
            (None, Some(reason)) => format!("not attached: {reason}"),
            (None, None) => "not attached".to_owned(),
        }
    }

    fn status(&self) -> Status {
        let inner = self.lock();
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            attached: inner.abi_version.is_some(),
            detached_reason: inner.detached_reason.clone(),
            abi_version: inner.abi_version,
            rooms: inner.seen.as_ref().map_or(0, |s| s.rooms.len()),
            config_path: self.config_path.display().to_string(),
            state_path: self.state_path(&inner).display().to_string(),
            last_error: inner.last_error.clone(),
            deleted_config_rooms: inner
                .state
                .deleted
                .iter()
                .filter(|room| inner.config.rooms.contains_key(*room))
                .cloned()
                .collect(),
            missing_rooms: match &inner.seen {
                Some(seen) => plan::desired(&inner.config.rooms, &inner.state)
                    .into_keys()
                    .filter(|room| !seen.rooms.contains_key(room))
                    .collect(),
                // Detached: everything is missing, and the status says why.
                None => Vec::new(),
            },
            overridden_rooms: inner
                .state
                .limits
                .keys()
                .filter(|room| inner.config.rooms.contains_key(*room))
                .cloned()
                .collect(),
        }
    }

    /// Answers one request; `admin` says whether the caller may change
    /// things. `Events` is served by the socket layer.
    pub fn handle(&self, request: Request, admin: bool) -> Reply {
        self.health.requests.fetch_add(1, Ordering::Relaxed);
        if request.needs_admin() && !admin {
            self.health.denied.fetch_add(1, Ordering::Relaxed);
            return Reply::Error(api_error(
                ErrorKind::Denied,
                "permission denied: changing rooms, and seeing who reads them, needs root or the admin group (admin_group in kchatd.toml)",
            ));
        }
        let result = match request {
            Request::Status => Ok(Reply::Status(self.status())),
            Request::List => self.rooms().map(Reply::Rooms),
            Request::Info { room } => self.rooms().and_then(|rooms| {
                rooms
                    .into_iter()
                    .find(|view| view.name == room)
                    .map(Reply::Room)
                    .ok_or_else(|| api_error(ErrorKind::NotFound, format!("no room named {room}")))
            }),
            Request::CreateRoom { room, settings } => RoomDecl::try_from(settings)
                .map_err(|err| api_error(ErrorKind::Invalid, err))
                .and_then(|decl| self.create(room, decl)),
            Request::DeleteRoom { room } => self.delete(room),
            Request::SetLimit { room, limit } => self.set_limit(room, limit),
            Request::Reset { room } => self.reset(room),
            Request::Readers { room } => attach_for_request().and_then(|control| {
                let mut readers: Vec<ReaderView> = control
                    .readers(room.as_str())
                    .map_err(|err| kernel_error("list the readers of", &room, err))?
                    .iter()
                    .map(ReaderView::from_info)
                    .collect();
                // The one holding the room back first.
                readers.sort_by(|a, b| b.lag_bytes.cmp(&a.lag_bytes).then(a.pid.cmp(&b.pid)));
                Ok(Reply::Readers(readers))
            }),
            Request::Apply { config, dry_run } => self.apply(&config, dry_run),
            Request::Events => Err(api_error(
                ErrorKind::Invalid,
                "events are streamed by the socket, not answered",
            )),
        };
        result.unwrap_or_else(Reply::Error)
    }

    /// Runs `edit` on the state under the lock, with the control node;
    /// saves the state if `edit` succeeds, and undoes the kernel side with
    /// `undo` if the save fails, so a change is all or nothing.
    fn change(
        &self,
        edit: impl FnOnce(&mut State, &Control) -> Result<String, ApiError>,
        undo: impl FnOnce(&Control),
    ) -> Result<Reply, ApiError> {
        let mut inner = self.lock();
        let control = attach_for_request()?;
        let before = inner.state.clone();
        let message = edit(&mut inner.state, &control)?;
        if let Err(err) = inner.state.save(&self.state_path(&inner)) {
            undo(&control);
            inner.state = before;
            return Err(api_error(
                ErrorKind::Failed,
                format!("{err}; the change was undone"),
            ));
        }
        drop(inner);
        self.reconcile();
        Ok(Reply::Done(message))
    }

    fn create(&self, room: RoomName, decl: RoomDecl) -> Result<Reply, ApiError> {
        if self.lock().config.rooms.contains_key(&room) {
            return Err(api_error(
                ErrorKind::Conflict,
                format!(
                    "room {room} is declared in {}; change it there",
                    self.config_path.display()
                ),
            ));
        }
        let undo_room = room.clone();
        self.change(
            |state, control| {
                control
                    .create(&decl.to_abi(&room))
                    .map_err(|err| kernel_error("create", &room, err))?;
                if !decl.rate_limit.is_unlimited()
                    && let Err(err) = control.set_limit(&decl.rate_limit.to_abi(&room))
                {
                    let _ = control.delete(room.as_str());
                    return Err(kernel_error("set the rate limit of", &room, err));
                }
                state.rooms.insert(room.clone(), decl);
                state.deleted.remove(&room);
                state.limits.remove(&room);
                state.owned.insert(room.clone());
                Ok(format!(
                    "created room {room} ({})",
                    kchat_client::room_path(room.as_str()).display()
                ))
            },
            |control| {
                let _ = control.delete(undo_room.as_str());
            },
        )
    }

    fn delete(&self, room: RoomName) -> Result<Reply, ApiError> {
        let declared = self.lock().config.rooms.contains_key(&room);
        // A deleted room cannot be brought back as it was (its readers and
        // history are gone), so a failed save cannot undo it; it is then
        // recreated by the next reconcile, which the error says.
        self.change(
            |state, control| {
                control
                    .delete(room.as_str())
                    .map_err(|err| kernel_error("delete", &room, err))?;
                state.rooms.remove(&room);
                state.limits.remove(&room);
                state.owned.remove(&room);
                if declared {
                    state.deleted.insert(room.clone());
                }
                Ok(format!("deleted room {room}"))
            },
            |_| {},
        )
    }

    /// `kchatctl reset`: a config room goes back to its declaration.
    fn reset(&self, room: RoomName) -> Result<Reply, ApiError> {
        {
            let inner = self.lock();
            if !inner.config.rooms.contains_key(&room) {
                let why = if inner.state.rooms.contains_key(&room) {
                    "it was created with kchatctl; change it with set-limit or delete it"
                } else {
                    "nothing declares it"
                };
                return Err(api_error(
                    ErrorKind::Invalid,
                    format!(
                        "room {room} is not declared in {}, so there is nothing to reset it to: {why}",
                        self.config_path.display()
                    ),
                ));
            }
            if !inner.state.deleted.contains(&room) && !inner.state.limits.contains_key(&room) {
                return Ok(Reply::Done(format!(
                    "room {room} is as the config declares it; nothing to reset"
                )));
            }
        }
        self.change(
            |state, _| {
                let undeleted = state.deleted.remove(&room);
                state.limits.remove(&room);
                Ok(if undeleted {
                    format!("room {room} is declared again: kchatd creates it as the config says")
                } else {
                    format!("room {room} is back to the config's rate limit")
                })
            },
            |_| {},
        )
    }

    fn set_limit(
        &self,
        room: RoomName,
        change: kchat_proto::room::LimitChange,
    ) -> Result<Reply, ApiError> {
        if change.is_empty() {
            return Err(api_error(
                ErrorKind::Invalid,
                "nothing to change: give at least one of --msgs-per-sec, --burst, --bytes-per-sec, --byte-burst, --scope",
            ));
        }
        // What the limit was, for the undo; known once read under the lock.
        let previous = std::cell::Cell::new(None);
        let undo_room = room.clone();
        self.change(
            |state, control| {
                // The room's limit as the kernel has it now, read under
                // kchatd's lock: two partial changes at once both land.
                let info = control
                    .info(room.as_str())
                    .map_err(|err| kernel_error("read the rate limit of", &room, err))?;
                let current = RoomDecl::from_info(&info).rate_limit;
                let limit = change.apply_to(current).map_err(|err| {
                    api_error(
                        ErrorKind::Invalid,
                        format!("room {room}: {err}; nothing was changed"),
                    )
                })?;
                control
                    .set_limit(&limit.to_abi(&room))
                    .map_err(|err| kernel_error("set the rate limit of", &room, err))?;
                previous.set(Some(current));
                match state.rooms.get_mut(&room) {
                    Some(decl) => decl.rate_limit = limit,
                    None => {
                        state.limits.insert(room.clone(), limit);
                    }
                }
                Ok(format!(
                    "room {room}: rate limit {}",
                    plan::describe_limit(&limit)
                ))
            },
            |control| {
                if let Some(previous) = previous.get() {
                    let _ = control.set_limit(&previous.to_abi(&undo_room));
                }
            },
        )
    }

    /// `kchatctl apply`: the file's rooms become the runtime rooms.
    fn apply(&self, text: &str, dry_run: bool) -> Result<Reply, ApiError> {
        let file: RoomsFile = crate::config::parse_toml(text).map_err(|err| {
            api_error(
                ErrorKind::Invalid,
                format!("the rooms file is invalid: {err}"),
            )
        })?;
        let mut inner = self.lock();
        if let Some(room) = file
            .rooms
            .keys()
            .find(|r| inner.config.rooms.contains_key(*r))
        {
            return Err(api_error(
                ErrorKind::Conflict,
                format!(
                    "room {room} is declared in {}; leave it out of the applied file",
                    self.config_path.display()
                ),
            ));
        }
        let mut next = inner.state.clone();
        for room in file.rooms.keys() {
            next.limits.remove(room);
        }
        next.rooms = file.rooms;
        let (control, snapshot) = attach_and_snapshot()?;
        let desired = plan::desired(&inner.config.rooms, &next);
        let steps = plan::plan(&desired, &decls(&snapshot), &next.limits, &next.owned);
        let changes: Vec<Change> = steps.iter().map(Step::change).collect();
        if dry_run {
            return Ok(Reply::Plan(changes));
        }
        next.save(&self.state_path(&inner))
            .map_err(|err| api_error(ErrorKind::Failed, format!("{err}; nothing was changed")))?;
        inner.state = next;
        let errors = self.converge(&mut inner, &control);
        inner.last_error = errors.last().cloned();
        if !errors.is_empty() {
            return Err(api_error(ErrorKind::Failed, errors.join("; ")));
        }
        Ok(Reply::Plan(changes))
    }
}

/// The control node for a request; `Unavailable` with the reason if not.
fn attach_for_request() -> Result<Control, ApiError> {
    kernel::attach()
        .map(|(control, _)| control)
        .map_err(|reason| api_error(ErrorKind::Unavailable, reason))
}

fn attach_and_snapshot() -> Result<(Control, Snapshot), ApiError> {
    let control = attach_for_request()?;
    let snapshot = kernel::snapshot(&control).map_err(|err| {
        api_error(
            ErrorKind::Failed,
            format!("cannot list the module's rooms: {err}"),
        )
    })?;
    Ok((control, snapshot))
}

fn decls(snapshot: &Snapshot) -> BTreeMap<RoomName, RoomDecl> {
    snapshot
        .rooms
        .iter()
        .map(|(name, info)| (name.clone(), RoomDecl::from_info(info)))
        .collect()
}

fn view(name: &RoomName, info: &kchat_uapi::abi::RoomInfo, desired: Option<&Desired>) -> RoomView {
    let settings = RoomDecl::from_info(info);
    RoomView {
        name: name.clone(),
        origin: desired.map_or(Origin::Adopted, |d| d.origin),
        drift: desired.map_or_else(Vec::new, |d| d.decl.fixed_differences(&settings)),
        mode_octal: format!("{:#o}", settings.mode),
        settings,
        counters: Counters::from_info(info),
        limit_overridden: false,
    }
}

fn execute(control: &Control, step: &Step) -> Result<(), ApiError> {
    match step {
        Step::Create(room, decl) => {
            control
                .create(&decl.to_abi(room))
                .map_err(|err| kernel_error("create", room, err))?;
            if !decl.rate_limit.is_unlimited() {
                control
                    .set_limit(&decl.rate_limit.to_abi(room))
                    .map_err(|err| kernel_error("set the rate limit of", room, err))?;
            }
            Ok(())
        }
        Step::Delete(room) => control
            .delete(room.as_str())
            .map_err(|err| kernel_error("delete", room, err)),
        Step::SetLimit(room, limit) => control
            .set_limit(&limit.to_abi(room))
            .map_err(|err| kernel_error("set the rate limit of", room, err)),
        Step::SetMaxWait(room, ms) => control
            .set_max_wait(room.as_str(), *ms)
            .map_err(|err| kernel_error("set the bound on laggards of", room, err)),
        Step::Drift(..) => Ok(()),
    }
}
