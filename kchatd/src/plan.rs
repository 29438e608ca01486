//! Reconcile planning: what the rooms should be (config plus state) against
//! what the kernel has, as a list of steps. Pure, so every case is a host
//! test; `daemon` carries the steps out.

use crate::state::State;
use kchat_proto::{
    api::{Action, Change, Origin},
    room::{describe_max_wait, Policy, RateLimit, RoomDecl, RoomName},
};
use std::collections::{BTreeMap, BTreeSet};

/// A room someone declared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub decl: RoomDecl,
    pub origin: Origin,
}

/// The rooms the config and the state file declare, with runtime rate
/// limits laid over the declared ones.
pub fn desired(
    config_rooms: &BTreeMap<RoomName, RoomDecl>,
    state: &State,
) -> BTreeMap<RoomName, Desired> {
    let config = config_rooms
        .iter()
        .filter(|(name, _)| !state.deleted.contains(*name))
        .map(|(name, decl)| (name, decl, Origin::Config));
    let runtime = state
        .rooms
        .iter()
        .map(|(name, decl)| (name, decl, Origin::Runtime));
    config
        .chain(runtime)
        .map(|(name, decl, origin)| {
            let mut decl = decl.clone();
            if let Some(limit) = state.limits.get(name) {
                decl.rate_limit = *limit;
            }
            (name.clone(), Desired { decl, origin })
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the room, then set its rate limit if it has one.
    Create(RoomName, RoomDecl),
    /// Delete a room kchatd created that nobody declares any more.
    Delete(RoomName),
    SetLimit(RoomName, RateLimit),
    /// Set a `block` room's bound on laggards (milliseconds).
    SetMaxWait(RoomName, u32),
    /// The live room's fixed settings differ from the declaration.
    Drift(RoomName, Vec<String>),
}

impl Step {
    pub fn room(&self) -> &RoomName {
        match self {
            Step::Create(name, _)
            | Step::Delete(name)
            | Step::SetLimit(name, _)
            | Step::SetMaxWait(name, _)
            | Step::Drift(name, _) => name,
        }
    }

    /// The step as the API shows it.
    pub fn change(&self) -> Change {
        let (action, detail) = match self {
            Step::Create(_, decl) => (Action::Create, {
                let mut detail = format!(
                    "{} ring_bytes={} max_msg={} owner={} group={} mode={:#o}",
                    decl.policy, decl.ring_bytes, decl.max_msg, decl.owner, decl.group, decl.mode
                );
                if decl.policy == Policy::Block {
                    detail += &format!(" max_wait={}", describe_max_wait(decl.max_wait_ms));
                }
                detail
            }),
            Step::Delete(_) => (
                Action::Delete,
                "no longer declared (readers drain, then see end of file)".to_owned(),
            ),
            Step::SetLimit(_, limit) => (Action::SetLimit, describe_limit(limit)),
            Step::SetMaxWait(_, ms) => (
                Action::SetMaxWait,
                format!("max_wait={}", describe_max_wait(*ms)),
            ),
            Step::Drift(_, diffs) => (
                Action::Drift,
                format!(
                    "{}: set at creation; to apply, delete the room and bring it back (`kchatctl delete-room ROOM`, then `kchatctl reset ROOM` for a config room), which cuts off its readers",
                    diffs.join(", ")
                ),
            ),
        };
        Change {
            room: self.room().clone(),
            action,
            detail,
        }
    }
}

pub fn describe_limit(limit: &RateLimit) -> String {
    if limit.is_unlimited() {
        return "unlimited".to_owned();
    }
    format!(
        "per {}: {} msg/s (burst {}), {} B/s (burst {})",
        limit.scope.as_str(),
        limit.msgs_per_sec,
        limit.msg_burst,
        limit.bytes_per_sec,
        limit.byte_burst
    )
}

/// The steps that take the kernel's `actual` rooms to `desired`.
///
/// Undeclared rooms are deleted only if kchatd made them (`owned`); others
/// (the module's default room, rooms made by other tools) are adopted and
/// only get the runtime rate limits an admin set on them.
pub fn plan(
    desired: &BTreeMap<RoomName, Desired>,
    actual: &BTreeMap<RoomName, RoomDecl>,
    runtime_limits: &BTreeMap<RoomName, RateLimit>,
    owned: &BTreeSet<RoomName>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for (name, want) in desired {
        let Some(have) = actual.get(name) else {
            steps.push(Step::Create(name.clone(), want.decl.clone()));
            continue;
        };
        let diffs = want.decl.fixed_differences(have);
        if !diffs.is_empty() {
            steps.push(Step::Drift(name.clone(), diffs));
        }
        if want.decl.rate_limit != have.rate_limit {
            steps.push(Step::SetLimit(name.clone(), want.decl.rate_limit));
        }
        if let Some(ms) = want.decl.max_wait_change(have) {
            steps.push(Step::SetMaxWait(name.clone(), ms));
        }
    }
    for (name, have) in actual {
        if desired.contains_key(name) {
            continue;
        }
        if owned.contains(name) {
            steps.push(Step::Delete(name.clone()));
        } else if let Some(limit) = runtime_limits.get(name)
            && *limit != have.rate_limit
        {
            steps.push(Step::SetLimit(name.clone(), *limit));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> RoomName {
        s.parse().unwrap()
    }

    fn decl(toml_text: &str) -> RoomDecl {
        toml::from_str(toml_text).unwrap()
    }

    fn rooms(list: &[(&str, &str)]) -> BTreeMap<RoomName, RoomDecl> {
        list.iter().map(|(n, d)| (name(n), decl(d))).collect()
    }

    #[test]
    fn creates_missing_keeps_matching_and_adopts_strangers() {
        let config = rooms(&[("ops", ""), ("dev", "policy = \"block\"")]);
        let state = State::default();
        let actual = rooms(&[("dev", "policy = \"block\""), ("lobby", "")]);
        let steps = plan(
            &desired(&config, &state),
            &actual,
            &state.limits,
            &state.owned,
        );
        assert_eq!(steps, vec![Step::Create(name("ops"), decl(""))]);
    }

    #[test]
    fn deletes_only_what_it_made() {
        let state = State {
            owned: [name("old")].into(),
            ..State::default()
        };
        let actual = rooms(&[("old", ""), ("lobby", "")]);
        let steps = plan(
            &desired(&BTreeMap::new(), &state),
            &actual,
            &state.limits,
            &state.owned,
        );
        assert_eq!(steps, vec![Step::Delete(name("old"))]);
    }

    #[test]
    fn limits_change_in_place_and_fixed_settings_are_reported() {
        let config = rooms(&[("ops", "ring_bytes = 8192\n[rate_limit]\nmsgs_per_sec = 5")]);
        let actual = rooms(&[("ops", "ring_bytes = 4096")]);
        let state = State::default();
        let steps = plan(
            &desired(&config, &state),
            &actual,
            &state.limits,
            &state.owned,
        );
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(
            matches!(&steps[0], Step::Drift(_, d) if d[0].starts_with("ring_bytes 4096 -> 8192"))
        );
        assert!(matches!(&steps[1], Step::SetLimit(_, l) if l.msgs_per_sec == 5));
    }

    #[test]
    fn a_block_rooms_bound_changes_in_place() {
        let config = rooms(&[("ops", "policy = \"block\"\nmax_wait = 2500")]);
        let actual = rooms(&[("ops", "policy = \"block\"\nmax_wait = \"forever\"")]);
        let state = State::default();
        let steps = plan(
            &desired(&config, &state),
            &actual,
            &state.limits,
            &state.owned,
        );
        assert_eq!(steps, vec![Step::SetMaxWait(name("ops"), 2500)]);
        assert_eq!(steps[0].change().detail, "max_wait=2500");
        // A policy that differs is drift; no bound is set on a drop room.
        let actual = rooms(&[("ops", "")]);
        let steps = plan(
            &desired(&config, &state),
            &actual,
            &state.limits,
            &state.owned,
        );
        assert!(
            matches!(&steps[..], [Step::Drift(_, d)] if d[0].starts_with("policy")),
            "{steps:?}"
        );
    }

    #[test]
    fn runtime_state_wins_over_config() {
        let config = rooms(&[("ops", "[rate_limit]\nmsgs_per_sec = 5"), ("gone", "")]);
        let mut state = State {
            deleted: [name("gone")].into(),
            rooms: rooms(&[("new", "")]),
            ..State::default()
        };
        let fast = RateLimit {
            msgs_per_sec: 100,
            ..RateLimit::default()
        };
        state.limits.insert(name("ops"), fast);
        state.limits.insert(name("lobby"), fast);
        let want = desired(&config, &state);
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            [&name("new"), &name("ops")]
        );
        assert_eq!(want[&name("new")].origin, Origin::Runtime);
        let actual = rooms(&[("ops", ""), ("new", ""), ("lobby", "")]);
        let steps = plan(&want, &actual, &state.limits, &state.owned);
        assert_eq!(
            steps,
            vec![
                Step::SetLimit(name("ops"), fast),
                Step::SetLimit(name("lobby"), fast)
            ]
        );
    }

    #[test]
    fn steps_read_well() {
        let change = Step::SetLimit(
            name("ops"),
            RateLimit {
                msgs_per_sec: 5,
                msg_burst: 10,
                ..RateLimit::default()
            },
        )
        .change();
        assert_eq!(change.action, Action::SetLimit);
        assert_eq!(
            change.detail,
            "per uid: 5 msg/s (burst 10), 0 B/s (burst 0)"
        );
    }
}
