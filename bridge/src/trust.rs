//! Who may speak for a node: each node publishes a room's messages on its
//! own subject (`<prefix>.<room>.<node>`), so the NATS server's
//! permissions can say who publishes as whom, and a receiver believes a
//! message's `Kchat-Node` only when it matches the subject's last token.
//! Also the rules that keep one bad message from muting a node for good
//! (incarnations) or growing the bridge's memory without bound (nodes).
//! Pure, so every case is a host test.

use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// How many origin nodes a room's state holds by default
/// (`max_nodes` in bridge.toml).
pub const DEFAULT_MAX_NODES: usize = 64;

/// How many incarnations of each origin node's room a receiver remembers
/// (the least recently seen is forgotten first): a room created again
/// a few times, or a forged incarnation or two, never push out the one a
/// node is speaking in.
pub const INCARNATIONS_KEPT: usize = 8;

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
    #[error("{node} would be origin node number {} of the room (max_nodes = {max})", max + 1)]
    TooManyNodes { node: String, max: usize },
}

/// Every `reason` of `kchat_bridge_refused_total`: each room's series
/// start at 0, so `increase()` (and the alert on it) sees the first one.
pub const REFUSAL_REASONS: [&str; 2] = ["forged_node", "too_many_nodes"];

impl Untrusted {
    /// The `reason` label of `kchat_bridge_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Untrusted::Subject { .. } | Untrusted::NoNode { .. } | Untrusted::Forged { .. } => {
                "forged_node"
            }
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

/// What to do with a message from a node.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: relay it, then [`Seen::note`] it.
    Relay,
    /// Already in the room: its incarnation's last relayed sequence number
    /// is not below it.
    Duplicate,
}

/// Per origin node, the last sequence number relayed in each of the last
/// [`INCARNATIONS_KEPT`] incarnations of its room seen, least recently
/// seen first. There is no order between incarnations (they are random),
/// so nothing a message says can make a node's later messages look old: a
/// forged incarnation only adds an entry, and the genuine one is relayed
/// by its own numbers. Saved as `[[incarnation, seq], ...]`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seen(Vec<(u64, u64)>);

impl Seen {
    /// The rule: a known incarnation is relayed if `seq` is past its last
    /// one; an unknown one is a new incarnation of the origin's room (or
    /// one forgotten), relayed from any number.
    pub fn judge(&self, incarnation: u64, seq: u64) -> Verdict {
        match self.last(incarnation) {
            Some(last) if seq <= last => Verdict::Duplicate,
            _ => Verdict::Relay,
        }
    }

    /// The last sequence number relayed in `incarnation`, if remembered.
    pub fn last(&self, incarnation: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|(inc, _)| *inc == incarnation)
            .map(|(_, seq)| *seq)
    }

    /// The incarnation seen last, and its last sequence number.
    pub fn latest(&self) -> Option<(u64, u64)> {
        self.0.last().copied()
    }

    /// Notes `seq` of `incarnation` as relayed (never moving back), as the
    /// most recently seen; forgets the least recently seen past
    /// [`INCARNATIONS_KEPT`].
    pub fn note(&mut self, incarnation: u64, seq: u64) {
        let before = self.0.iter().position(|(inc, _)| *inc == incarnation);
        let seq = match before {
            Some(i) => self.0.remove(i).1.max(seq),
            None => seq,
        };
        self.0.push((incarnation, seq));
        while self.0.len() > INCARNATIONS_KEPT {
            self.0.remove(0);
        }
    }

    /// Cuts a loaded list to the bound (a file written with another).
    pub fn bound(&mut self) {
        let excess = self.0.len().saturating_sub(INCARNATIONS_KEPT);
        self.0.drain(..excess);
    }
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
    fn each_incarnation_goes_by_its_own_numbers() {
        let mut seen = Seen::default();
        // A node never seen: from wherever it is.
        assert_eq!(seen.judge(7, 123), Verdict::Relay);
        seen.note(7, 123);
        assert_eq!(seen.judge(7, 124), Verdict::Relay);
        assert_eq!(seen.judge(7, 130), Verdict::Relay);
        assert_eq!(seen.judge(7, 123), Verdict::Duplicate);
        assert_eq!(seen.judge(7, 3), Verdict::Duplicate);
        // Another incarnation (the room created again): from any number,
        // its own count; the first one's still holds.
        assert_eq!(seen.judge(99, 0), Verdict::Relay);
        seen.note(99, 0);
        assert_eq!(seen.judge(99, 0), Verdict::Duplicate);
        assert_eq!(seen.judge(99, 1), Verdict::Relay);
        assert_eq!(seen.judge(7, 123), Verdict::Duplicate);
        // Notes never move a place back.
        seen.note(7, 5);
        assert_eq!(seen.last(7), Some(123));
        assert_eq!(seen.latest(), Some((7, 123)));
    }

    #[test]
    fn no_incarnation_mutes_a_node() {
        let mut seen = Seen::default();
        seen.note(5, 41);
        // Forged incarnations, the largest there is and others, with the
        // largest numbers: each only adds an entry.
        for forged in [u64::MAX, 0, 1, 6, 4] {
            assert_eq!(seen.judge(forged, u64::MAX), Verdict::Relay);
            seen.note(forged, u64::MAX);
        }
        // The genuine incarnation goes on by its own numbers.
        assert_eq!(seen.judge(5, 42), Verdict::Relay);
        seen.note(5, 42);
        // Flooded with more forged ones than are kept, the node's own
        // incarnation is forgotten at worst: then its next message is
        // relayed as a new incarnation's, never skipped.
        for forged in 1000..1000 + 3 * INCARNATIONS_KEPT as u64 {
            seen.note(forged, u64::MAX);
        }
        assert_eq!(seen.judge(5, 43), Verdict::Relay);
        assert_eq!(seen.0.len(), INCARNATIONS_KEPT);
    }

    #[test]
    fn the_least_recently_seen_incarnation_is_forgotten() {
        let mut seen = Seen::default();
        for inc in 0..INCARNATIONS_KEPT as u64 {
            seen.note(inc, 10);
        }
        // Seeing incarnation 0 again makes it the most recent: 1 goes.
        seen.note(0, 11);
        seen.note(100, 1);
        assert_eq!(seen.last(1), None);
        assert_eq!(seen.last(0), Some(11));
        assert_eq!(seen.latest(), Some((100, 1)));
        assert_eq!(seen.0.len(), INCARNATIONS_KEPT);
        // A loaded list longer than the bound keeps its most recent.
        let mut long = Seen((0..20).map(|i| (i, i)).collect());
        long.bound();
        assert_eq!(long.0.len(), INCARNATIONS_KEPT);
        assert_eq!(long.latest(), Some((19, 19)));
        assert_eq!(long.last(11), None);
        assert_eq!(long.last(12), Some(12));
    }

    #[test]
    fn the_number_of_nodes_is_bounded() {
        let mut known: BTreeMap<String, Seen> =
            (0..3).map(|i| (format!("n{i}"), Seen::default())).collect();
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
