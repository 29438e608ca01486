//! Who may speak for a node: each node publishes a room's messages on its
//! own subject (`<prefix>.<room>.<node>`), so the NATS server's
//! permissions can say who publishes as whom, and a receiver believes a
//! message's `Kchat-Node` only when it matches the subject's last token.
//! Also the rules that keep one bad message from muting a node for good
//! (epochs) or growing the bridge's memory without bound (nodes). Pure,
//! so every case is a host test.

use crate::state::Position;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// How many origin nodes a room's state holds by default
/// (`max_nodes` in bridge.toml).
pub const DEFAULT_MAX_NODES: usize = 64;

/// How far an origin's epoch may move forward in one step. An epoch grows
/// by one each time that node's bridge starts and finds its room created
/// again: a million such starts between two messages is no real bridge,
/// while `u64::MAX` (which would make every later message look old) is
/// refused.
pub const MAX_EPOCH_STEP: u64 = 1 << 20;

/// A node's name as one subject token: node names may hold '.', which
/// separates tokens, and never hold '~' (the stream name's trick too).
pub fn node_token(node: &str) -> String {
    node.replace('.', "~")
}

/// The subject `node` publishes a room's messages on.
pub fn node_subject(room_subject: &str, node: &str) -> String {
    format!("{room_subject}.{}", node_token(node))
}

/// What a bridge subscribes to (or a stream covers) for a room: every
/// node's subject.
pub fn room_wildcard(room_subject: &str) -> String {
    format!("{room_subject}.*")
}

/// Why a message is not believed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("subject {subject:?} is not one node's subject of {room_subject}.*")]
    Subject {
        subject: String,
        room_subject: String,
    },
    #[error("no Kchat-Node header on {subject}")]
    NoNode { subject: String },
    #[error("Kchat-Node {node:?} published on {subject}, another node's subject")]
    Forged { node: String, subject: String },
    #[error("epoch {epoch} from {node} jumps past {seen} by more than {MAX_EPOCH_STEP}")]
    Epoch { node: String, epoch: u64, seen: u64 },
    #[error("{node} would be origin node number {} of the room (max_nodes = {max})", max + 1)]
    TooManyNodes { node: String, max: usize },
}

/// Every `reason` of `kchat_bridge_refused_total`: each room's series
/// start at 0, so `increase()` (and the alert on it) sees the first one.
pub const REFUSAL_REASONS: [&str; 3] = ["forged_node", "epoch", "too_many_nodes"];

impl Untrusted {
    /// The `reason` label of `kchat_bridge_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Untrusted::Subject { .. } | Untrusted::NoNode { .. } | Untrusted::Forged { .. } => {
                "forged_node"
            }
            Untrusted::Epoch { .. } => "epoch",
            Untrusted::TooManyNodes { .. } => "too_many_nodes",
        }
    }
}

/// Checks that a message received on `subject` (under the room's
/// `room_subject`) states the node whose subject it is: the server's
/// permissions decide who may publish there, so the header is believed
/// only then.
pub fn check_sender(
    room_subject: &str,
    subject: &str,
    node: Option<&str>,
) -> Result<(), Untrusted> {
    let token = subject
        .strip_prefix(room_subject)
        .and_then(|rest| rest.strip_prefix('.'))
        .filter(|token| !token.is_empty() && !token.contains('.'))
        .ok_or_else(|| Untrusted::Subject {
            subject: subject.to_owned(),
            room_subject: room_subject.to_owned(),
        })?;
    let node = node.ok_or_else(|| Untrusted::NoNode {
        subject: subject.to_owned(),
    })?;
    if node_token(node) != token {
        return Err(Untrusted::Forged {
            node: node.to_owned(),
            subject: subject.to_owned(),
        });
    }
    Ok(())
}

/// What to do with a message at `position` from `node`, given the last
/// one relayed from it.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: relay it and move the node's place to it.
    Relay {
        /// Messages of the same epoch skipped before it.
        gap: u64,
    },
    /// Already in the room (or of an older incarnation of the origin's
    /// room, all of which came before the newer one in the stream).
    Duplicate,
}

/// The epoch rule. Within an epoch, sequence numbers only grow; a lower
/// epoch is an older incarnation of the origin's room; a higher one is
/// accepted only within [`MAX_EPOCH_STEP`] of the last (from 0 for a node
/// never seen), so that no message can set a node's epoch so high that
/// all its later messages look old. A refused jump is neither relayed nor
/// saved.
pub fn judge(node: &str, seen: Option<Position>, position: Position) -> Result<Verdict, Untrusted> {
    let (epoch, seq) = position;
    let (seen_epoch, seen_seq) = match seen {
        Some(seen) => seen,
        None if epoch <= MAX_EPOCH_STEP => return Ok(Verdict::Relay { gap: 0 }),
        None => (0, 0),
    };
    if epoch == seen_epoch {
        return Ok(if seq <= seen_seq {
            Verdict::Duplicate
        } else {
            Verdict::Relay {
                gap: seq.saturating_sub(seen_seq).saturating_sub(1),
            }
        });
    }
    if epoch < seen_epoch {
        return Ok(Verdict::Duplicate);
    }
    if epoch - seen_epoch > MAX_EPOCH_STEP {
        return Err(Untrusted::Epoch {
            node: node.to_owned(),
            epoch,
            seen: seen_epoch,
        });
    }
    Ok(Verdict::Relay { gap: 0 })
}

/// Whether a room that knows `known` origin nodes may take note of one
/// more, `node`.
pub fn admit<V>(known: &BTreeMap<String, V>, node: &str, max: usize) -> Result<(), Untrusted> {
    if known.contains_key(node) || known.len() < max {
        Ok(())
    } else {
        Err(Untrusted::TooManyNodes {
            node: node.to_owned(),
            max,
        })
    }
}

/// Cuts saved per-node positions down to `max` nodes (a file from before
/// the bound, or a smaller bound since); returns the nodes dropped.
pub fn bound_nodes<V>(known: &mut BTreeMap<String, V>, max: usize) -> Vec<String> {
    let dropped: Vec<String> = known.keys().skip(max).cloned().collect();
    for node in &dropped {
        known.remove(node);
    }
    dropped
}

/// Logs at most once per interval: a peer sending bad messages as fast as
/// it can must not flood the journal. What was not logged is counted in
/// the metrics anyway, and the next line says how many it stands for.
pub struct Quiet {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Quiet {
    pub fn new(every: Duration) -> Quiet {
        Quiet {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` when a line is due now, standing for `n` events held back
    /// since the last one; `None` to stay quiet.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

impl Default for Quiet {
    fn default() -> Quiet {
        Quiet::new(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_publishes_on_its_own_token() {
        assert_eq!(node_subject("kchat.lobby", "node-a"), "kchat.lobby.node-a");
        assert_eq!(node_subject("kchat.lobby", "eu.n1"), "kchat.lobby.eu~n1");
        assert_eq!(room_wildcard("kchat.lobby"), "kchat.lobby.*");
        assert_eq!(
            check_sender("kchat.lobby", "kchat.lobby.node-a", Some("node-a")),
            Ok(())
        );
        assert_eq!(
            check_sender("kchat.lobby", "kchat.lobby.eu~n1", Some("eu.n1")),
            Ok(())
        );
    }

    #[test]
    fn a_forged_or_missing_node_is_refused() {
        let forged = check_sender("kchat.lobby", "kchat.lobby.node-a", Some("node-b"));
        assert!(
            matches!(forged, Err(Untrusted::Forged { .. })),
            "{forged:?}"
        );
        assert_eq!(forged.unwrap_err().reason(), "forged_node");
        assert!(check_sender("kchat.lobby", "kchat.lobby.a~b", Some("a-b")).is_err());
        assert_eq!(
            check_sender("kchat.lobby", "kchat.lobby.node-a", None),
            Err(Untrusted::NoNode {
                subject: "kchat.lobby.node-a".into()
            })
        );
        // The room's bare subject (an old bridge), another room's, or more
        // tokens: no node's subject.
        for subject in [
            "kchat.lobby",
            "kchat.lobby.",
            "kchat.lobbyx.node-a",
            "kchat.lobby.a.b",
            "kchat.other.node-a",
        ] {
            assert!(
                matches!(
                    check_sender("kchat.lobby", subject, Some("node-a")),
                    Err(Untrusted::Subject { .. })
                ),
                "{subject}"
            );
        }
    }

    #[test]
    fn epochs_move_on_by_bounded_steps() {
        let n = "node-b";
        // Within an epoch: new, gap, duplicate.
        assert_eq!(
            judge(n, Some((2, 10)), (2, 11)),
            Ok(Verdict::Relay { gap: 0 })
        );
        assert_eq!(
            judge(n, Some((2, 10)), (2, 14)),
            Ok(Verdict::Relay { gap: 3 })
        );
        assert_eq!(judge(n, Some((2, 10)), (2, 10)), Ok(Verdict::Duplicate));
        assert_eq!(judge(n, Some((2, 10)), (2, 3)), Ok(Verdict::Duplicate));
        // An older incarnation: already handled.
        assert_eq!(judge(n, Some((2, 10)), (1, 500)), Ok(Verdict::Duplicate));
        // The next incarnation starts over at any number.
        assert_eq!(
            judge(n, Some((2, 10)), (3, 0)),
            Ok(Verdict::Relay { gap: 0 })
        );
        assert_eq!(
            judge(n, Some((2, 10)), (2 + MAX_EPOCH_STEP, 1)),
            Ok(Verdict::Relay { gap: 0 })
        );
        // A node never seen: from wherever it is.
        assert_eq!(judge(n, None, (0, 0)), Ok(Verdict::Relay { gap: 0 }));
        assert_eq!(judge(n, None, (7, 123)), Ok(Verdict::Relay { gap: 0 }));
    }

    #[test]
    fn a_huge_epoch_is_refused_and_mutes_nothing() {
        let n = "node-b";
        let refused = judge(n, Some((0, 41)), (u64::MAX, 1));
        assert_eq!(
            refused,
            Err(Untrusted::Epoch {
                node: n.into(),
                epoch: u64::MAX,
                seen: 0
            })
        );
        assert_eq!(refused.unwrap_err().reason(), "epoch");
        assert!(judge(n, None, (u64::MAX, 1)).is_err());
        assert!(judge(n, None, (MAX_EPOCH_STEP + 1, 1)).is_err());
        assert!(judge(n, Some((5, 1)), (6 + MAX_EPOCH_STEP, 1)).is_err());
        // Nothing was saved, so the node's next genuine message goes in.
        assert_eq!(
            judge(n, Some((0, 41)), (0, 42)),
            Ok(Verdict::Relay { gap: 0 })
        );
        // No overflow at the top of the range.
        assert_eq!(
            judge(n, Some((u64::MAX, 1)), (u64::MAX, 2)),
            Ok(Verdict::Relay { gap: 0 })
        );
        assert_eq!(
            judge(n, Some((u64::MAX, u64::MAX)), (u64::MAX, 0)),
            Ok(Verdict::Duplicate)
        );
    }

    #[test]
    fn the_number_of_nodes_is_bounded() {
        let mut known: BTreeMap<String, Position> =
            (0..3).map(|i| (format!("n{i}"), (0, 1))).collect();
        assert_eq!(admit(&known, "n1", 3), Ok(()));
        let refused = admit(&known, "n9", 3);
        assert_eq!(
            refused,
            Err(Untrusted::TooManyNodes {
                node: "n9".into(),
                max: 3
            })
        );
        assert_eq!(refused.unwrap_err().reason(), "too_many_nodes");
        assert_eq!(admit(&known, "n9", 4), Ok(()));
        assert_eq!(bound_nodes(&mut known, 2), vec!["n2".to_owned()]);
        assert_eq!(known.len(), 2);
        assert!(bound_nodes(&mut known, 2).is_empty());
    }

    #[test]
    fn logging_is_held_back_and_says_how_much() {
        let mut quiet = Quiet::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(quiet.due(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(quiet.due(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(quiet.due(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(quiet.due(t0 + Duration::from_secs(11)), None);
    }
}
