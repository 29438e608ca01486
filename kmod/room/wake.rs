// SPDX-License-Identifier: GPL-2.0
//! `Room`'s wake-ups: who sleeps on a room, and the wake-ups a write owes
//! its readers, given once per burst.

use super::{Room, RoomInner};
use crate::compat::poll::events;

/// Who waits on a room, as seen under its lock. Wakers skip `notify_all`
/// when no reader or writer sleeps (the common case, where it would take
/// the wait queue's spinlock for nobody), and a message wakes pollers only
/// if one of them had found nothing to read since the last message did.
#[derive(Clone, Copy)]
pub(crate) struct Asleep {
    pub(crate) readers: bool,
    pub(crate) writers: bool,
    pub(crate) pollers: bool,
}

impl Asleep {
    /// For wakers that do not know (deletion wakes everyone).
    pub(crate) const ANY: Asleep = Asleep {
        readers: true,
        writers: true,
        pollers: true,
    };
    /// For a wake-up only pollers wait for (a loss: `EPOLLPRI`).
    pub(super) const POLLERS: Asleep = Asleep {
        readers: false,
        writers: false,
        pollers: true,
    };
    const NONE: Asleep = Asleep {
        readers: false,
        writers: false,
        pollers: false,
    };

    fn or(self, other: Asleep) -> Asleep {
        Asleep {
            readers: self.readers || other.readers,
            writers: self.writers || other.writers,
            pollers: self.pollers || other.pollers,
        }
    }
}

/// The wake-ups one `write` owes for the messages it stored so far: given
/// once, when the call ends, before it sleeps, or once it stored half a
/// ring (so readers of a `drop` room are not lapped before they hear of
/// it). A burst written in one call wakes a waiting reader once.
pub(super) struct Wakes {
    events: u32,
    asleep: Asleep,
    pub(super) bytes: usize,
}

impl Wakes {
    pub(super) const NONE: Wakes = Wakes {
        events: 0,
        asleep: Asleep::NONE,
        bytes: 0,
    };

    pub(super) fn add(&mut self, events: u32, asleep: Asleep, cost: usize) {
        self.events |= events;
        self.asleep = self.asleep.or(asleep);
        self.bytes += cost;
    }

    pub(super) fn flush(&mut self, room: &Room) {
        if self.events != 0 {
            room.changed(self.events, self.asleep);
        }
        *self = Wakes::NONE;
    }
}

impl RoomInner {
    /// Who sleeps on the room now.
    pub(crate) fn asleep(&self) -> Asleep {
        Asleep {
            readers: self.sleeping_readers > 0,
            writers: self.sleeping_writers > 0,
            pollers: true,
        }
    }

    /// A reader found nothing to read: the next message wakes pollers.
    pub(crate) fn park(&mut self) {
        self.parked = self.parked.saturating_add(1);
    }

    /// Who a new message wakes, and forgets the parked readers it wakes.
    pub(super) fn asleep_for_message(&mut self, loss: bool) -> Asleep {
        let pollers = self.parked > 0 || (loss && self.pri_watched);
        self.parked = 0;
        Asleep {
            pollers,
            ..self.asleep()
        }
    }
}

impl Room {
    /// Tells whoever waits on the room what changed, after the room lock
    /// is dropped: `events` says what (`IN`: a message to read, `PRI`: a
    /// loss, `OUT`: room to write or budget back, `HUP`: deleted). Sleeping
    /// readers and writers are woken only for what they wait for, and only
    /// if the caller saw any asleep (`asleep`, counted under the lock);
    /// pollers get the events as epoll's key.
    pub(crate) fn changed(&self, events: u32, asleep: Asleep) {
        if events & (events::IN | events::HUP) != 0 && asleep.readers {
            self.readable.notify_all();
        }
        if events & (events::OUT | events::HUP) != 0 && asleep.writers {
            self.writable.notify_all();
        }
        if asleep.pollers {
            self.poll.wake(events);
        }
    }
}
