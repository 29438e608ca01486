//! How kchat messages travel over NATS. A `drop` room's bridge sends what
//! one local read returned as one NATS message, a *batch*: the origin
//! (node, incarnation, run, the first record's number) in headers, then
//! one binary record per message (its kernel stamp and payload). A
//! `block` room's bridge sends one message per NATS message, its stamp in
//! headers, the payload as the body (JetStream de-duplicates per
//! message). Pure, so every case is a host test.

use async_nats::HeaderMap;
use kchat_uapi::abi;

const NODE: &str = "Kchat-Node";
const SEQ: &str = "Kchat-Seq";
const TIME: &str = "Kchat-Time";
const PID: &str = "Kchat-Pid";
const UID: &str = "Kchat-Uid";
const GID: &str = "Kchat-Gid";
/// The origin room's incarnation (`RoomInfo::incarnation` there): its
/// sequence numbers start over when the room is created again, and it
/// changes then.
const INCARNATION: &str = "Kchat-Incarnation";
/// `drop` rooms: the publishing bridge's run (random, chosen when it
/// starts bridging the room) and its own count of what it published in
/// that run, 1, 2, 3...: numbers without the holes relayed messages leave
/// in the room's sequence numbers.
const RUN: &str = "Kchat-Run";
const NUM: &str = "Kchat-Num";
/// A batch: its format's version. Its `Kchat-Num` is the first record's
/// number; the others are numbered on from it, one each.
const BATCH: &str = "Kchat-Batch";
const BATCH_VERSION: &str = "1";

/// Bytes of a batch record's header: `seq`, `time_ns` (u64), `pid`,
/// `uid`, `gid`, `len` (u32), little-endian, then `len` bytes of payload.
pub const RECORD_HEADER: usize = 32;

/// Appends one message (its stamp `header` and `payload`) to a batch body.
pub fn push_record(body: &mut Vec<u8>, header: &abi::FrameHeader, payload: &[u8]) {
    body.reserve(RECORD_HEADER + payload.len());
    body.extend_from_slice(&header.seq.to_le_bytes());
    body.extend_from_slice(&header.time_ns.to_le_bytes());
    body.extend_from_slice(&header.pid.to_le_bytes());
    body.extend_from_slice(&header.uid.to_le_bytes());
    body.extend_from_slice(&header.gid.to_le_bytes());
    // A room's messages are at most 1 MiB: the length always fits.
    body.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    body.extend_from_slice(payload);
}

/// The headers of a batch of a `drop` room's messages written on `node` in
/// the room's `incarnation` there, published in this bridge's `run`, the
/// first numbered `first`.
pub fn batch_headers(node: &str, incarnation: u64, run: u64, first: u64) -> HeaderMap {
    let mut map = unnumbered_batch_headers(node, incarnation);
    map.insert(RUN, run.to_string().as_str());
    map.insert(NUM, first.to_string().as_str());
    map
}

fn unnumbered_batch_headers(node: &str, incarnation: u64) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(NODE, node);
    map.insert(INCARNATION, incarnation.to_string().as_str());
    map.insert(BATCH, BATCH_VERSION);
    map
}

/// The headers of a batch of a JetStream room's messages, room sequence
/// numbers `first..=last` (those the batch holds, with holes where
/// relayed messages took numbers): no numbering (a `block` room counts no
/// gaps), and the id the server de-duplicates by. The id names both ends:
/// a restarted bridge publishes again from the message after the last one
/// acknowledged, and the read there may return more or fewer messages
/// than before; an id of the first alone would then drop the longer batch
/// as a copy of the shorter and lose the rest. With both ends a batch cut
/// the same is dropped by the server, one cut otherwise is stored, and
/// receivers skip what they already relayed, message by message.
pub fn durable_batch_headers(
    node: &str,
    room: &str,
    incarnation: u64,
    first: u64,
    last: u64,
) -> HeaderMap {
    let mut map = unnumbered_batch_headers(node, incarnation);
    map.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{node}.{room}.{incarnation}.{first}-{last}").as_str(),
    );
    map
}

/// Whether a received message is a batch (else one message, stamped in
/// headers).
pub fn is_batch(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|map| map.get(BATCH).is_some())
}

/// One message of a received batch: its origin, as the kernel's relay
/// header takes it, its run and number (`drop` rooms), and its payload.
pub struct Record<'a> {
    pub origin: abi::OriginHeader,
    pub numbering: Option<(u64, u64)>,
    pub payload: &'a [u8],
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

/// The records of a received batch, all or none: a batch of another
/// version, a record cut short or with no payload, or no record at all is
/// refused whole (its sender is broken, and what it says cannot be
/// trusted in part).
pub fn batch<'a>(headers: Option<&HeaderMap>, body: &'a [u8]) -> Result<Vec<Record<'a>>, Refused> {
    let map = headers.ok_or(Refused::NoHeaders)?;
    if map.get(BATCH).map(|v| v.as_str()) != Some(BATCH_VERSION) {
        return Err(Refused::Field(BATCH));
    }
    let node = map
        .get(NODE)
        .map(|v| v.as_str())
        .ok_or(Refused::Field(NODE))?;
    let field = abi::name_field(node)
        .filter(|_| kchat_uapi::name::validate(node.as_bytes()).is_ok())
        .ok_or_else(|| Refused::Node(node.to_owned()))?;
    let incarnation = optional(headers, INCARNATION)?.ok_or(Refused::Field(INCARNATION))?;
    let numbering = numbering(headers)?;
    let mut records = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (header, after) = rest
            .split_at_checked(RECORD_HEADER)
            .ok_or(Refused::Record)?;
        let len = le_u32(&header[28..]) as usize;
        let (payload, after) = after.split_at_checked(len).ok_or(Refused::Record)?;
        if payload.is_empty() {
            return Err(Refused::Empty);
        }
        let mut origin = abi::OriginHeader {
            node: field,
            seq: le_u64(header),
            time_ns: le_u64(&header[8..]),
            pid: le_u32(&header[16..]),
            uid: le_u32(&header[20..]),
            gid: le_u32(&header[24..]),
            ..abi::OriginHeader::default()
        };
        origin.set_incarnation(incarnation);
        let nth = records.len() as u64;
        records.push(Record {
            origin,
            numbering: numbering.map(|(run, first)| (run, first.wrapping_add(nth))),
            payload,
        });
        rest = after;
    }
    if records.is_empty() {
        return Err(Refused::Empty);
    }
    Ok(records)
}

/// The headers of a message written on `node` in the room's `incarnation`
/// there, stamped `header`: the one-message form bridges from before
/// batches publish, which receivers still take.
#[cfg(test)]
pub fn headers(node: &str, incarnation: u64, header: &abi::FrameHeader) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(NODE, node);
    map.insert(INCARNATION, incarnation.to_string().as_str());
    map.insert(SEQ, header.seq.to_string().as_str());
    map.insert(TIME, header.time_ns.to_string().as_str());
    map.insert(PID, header.pid.to_string().as_str());
    map.insert(UID, header.uid.to_string().as_str());
    map.insert(GID, header.gid.to_string().as_str());
    map
}

/// The headers of a message of a `drop` room: the stamp, and this
/// bridge's `run` and number `num` in it. What a bridge from before
/// batches sent; receivers still take it.
#[cfg(test)]
pub fn numbered_headers(
    node: &str,
    incarnation: u64,
    run: u64,
    num: u64,
    header: &abi::FrameHeader,
) -> HeaderMap {
    let mut map = headers(node, incarnation, header);
    map.insert(RUN, run.to_string().as_str());
    map.insert(NUM, num.to_string().as_str());
    map
}

/// The headers of a message of a JetStream room as bridges from before
/// batches published it: the stamp, and the id
/// the server de-duplicates by (origin node, room, incarnation, sequence),
/// so publishing it again after a restart stores nothing. Room sequence
/// numbers, holes and all, are its numbers: they are the same after a
/// restart, which the id needs.
#[cfg(test)]
pub fn durable_headers(
    node: &str,
    room: &str,
    incarnation: u64,
    header: &abi::FrameHeader,
) -> HeaderMap {
    let mut map = headers(node, incarnation, header);
    map.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{node}.{room}.{incarnation}.{}", header.seq).as_str(),
    );
    map
}

/// A number header that may be absent (a bridge from before it): `None`
/// then; present, it must be a number.
fn optional(headers: Option<&HeaderMap>, name: &'static str) -> Result<Option<u64>, Refused> {
    match headers.and_then(|map| map.get(name)) {
        None => Ok(None),
        Some(value) => value
            .as_str()
            .parse()
            .map(Some)
            .map_err(|_| Refused::Field(name)),
    }
}

/// A `drop` room message's run and number in it, if it states them.
pub fn numbering(headers: Option<&HeaderMap>) -> Result<Option<(u64, u64)>, Refused> {
    match (optional(headers, RUN)?, optional(headers, NUM)?) {
        (Some(run), Some(num)) => Ok(Some((run, num))),
        (None, None) => Ok(None),
        (None, Some(_)) => Err(Refused::Field(RUN)),
        (Some(_), None) => Err(Refused::Field(NUM)),
    }
}

/// Why a NATS message is not relayed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no kchat headers (not published by a kchat bridge)")]
    NoHeaders,
    #[error("header {0} is missing or not a number")]
    Field(&'static str),
    #[error("origin node {0:?} is not a valid node name")]
    Node(String),
    #[error("empty message")]
    Empty,
    #[error("a batch record is cut short")]
    Record,
}

/// The origin a received message states, as the kernel's relay header
/// takes it.
pub fn origin(
    headers: Option<&HeaderMap>,
    payload_len: usize,
) -> Result<abi::OriginHeader, Refused> {
    let map = headers.ok_or(Refused::NoHeaders)?;
    if payload_len == 0 {
        return Err(Refused::Empty);
    }
    let text = |name: &'static str| {
        map.get(name)
            .map(|v| v.as_str())
            .ok_or(Refused::Field(name))
    };
    let number = |name: &'static str| -> Result<u64, Refused> {
        text(name)?.parse().map_err(|_| Refused::Field(name))
    };
    let small = |name: &'static str| -> Result<u32, Refused> {
        u32::try_from(number(name)?).map_err(|_| Refused::Field(name))
    };
    let node = text(NODE)?;
    let field = abi::name_field(node)
        .filter(|_| kchat_uapi::name::validate(node.as_bytes()).is_ok())
        .ok_or_else(|| Refused::Node(node.to_owned()))?;
    let mut origin = abi::OriginHeader {
        node: field,
        seq: number(SEQ)?,
        time_ns: number(TIME)?,
        pid: small(PID)?,
        uid: small(UID)?,
        gid: small(GID)?,
        ..abi::OriginHeader::default()
    };
    // 0 from a bridge from before incarnations: one more incarnation.
    origin.set_incarnation(optional(headers, INCARNATION)?.unwrap_or(0));
    Ok(origin)
}

/// The node a received message says it came from, if any.
pub fn node(headers: Option<&HeaderMap>) -> Option<&str> {
    headers?.get(NODE).map(|v| v.as_str())
}

/// Per origin node, what a `drop` room's receiver last got from it: a jump
/// in a run's numbers is messages that node published and this one never
/// got. Numbers count per (incarnation, run), so a new run or
/// incarnation starts with no gap; at most
/// [`crate::trust::INCARNATIONS_KEPT`] runs per node are remembered.
#[derive(Debug, Default)]
pub struct Gaps {
    nodes: std::collections::HashMap<[u8; abi::NAME_FIELD], NodeGaps>,
}

#[derive(Debug, Default)]
struct NodeGaps {
    /// What the room held from the node when this bridge started: its
    /// incarnation and sequence number. The node's first message after it
    /// counts its gap in room sequence numbers (its run and numbers in it
    /// are not in the room), then is forgotten.
    seeded: Option<(u64, u64)>,
    /// (incarnation, run, last number), least recently seen first.
    runs: Vec<(u64, u64, u64)>,
}

impl Gaps {
    /// Starts from what the room already holds from `node` (after a
    /// restart, what went by meanwhile is then counted).
    pub fn seed(&mut self, node: [u8; abi::NAME_FIELD], incarnation: u64, seq: u64) {
        self.nodes.entry(node).or_default().seeded = Some((incarnation, seq));
    }

    /// Whether `node` (named `name`) may be noted: a node already known, or
    /// one more while fewer than `max` are.
    pub fn admit(
        &self,
        node: &[u8; abi::NAME_FIELD],
        name: &str,
        max: usize,
    ) -> Result<(), crate::trust::Untrusted> {
        if self.nodes.contains_key(node) || self.nodes.len() < max {
            Ok(())
        } else {
            Err(crate::trust::Untrusted::TooManyNodes {
                node: name.to_owned(),
                max,
            })
        }
    }

    /// Notes a message from `node` (its `origin` header: incarnation and
    /// room sequence number) numbered `numbering` (run, number); returns
    /// how many of the node's messages were skipped before it. A message
    /// without numbers (a bridge from before them) is counted by its room
    /// sequence number under run 0.
    pub fn note(
        &mut self,
        node: [u8; abi::NAME_FIELD],
        origin: &abi::OriginHeader,
        numbering: Option<(u64, u64)>,
    ) -> u64 {
        let incarnation = origin.incarnation();
        let (run, num) = numbering.unwrap_or((0, origin.seq));
        let gaps = self.nodes.entry(node).or_default();
        let at = gaps
            .runs
            .iter()
            .position(|&(inc, r, _)| inc == incarnation && r == run);
        let (skipped, last) = match at {
            Some(i) => {
                let (_, _, last) = gaps.runs.remove(i);
                (num.saturating_sub(last).saturating_sub(1), last.max(num))
            }
            None => {
                let skipped = match gaps.seeded.take() {
                    Some((inc, seq)) if inc == incarnation && origin.seq > seq => {
                        origin.seq - seq - 1
                    }
                    _ => 0,
                };
                (skipped, num)
            }
        };
        gaps.runs.push((incarnation, run, last));
        while gaps.runs.len() > crate::trust::INCARNATIONS_KEPT {
            gaps.runs.remove(0);
        }
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> abi::FrameHeader {
        abi::FrameHeader {
            seq: 7,
            time_ns: 1_700_000_000_000_000_000,
            lost: 0,
            len: 2,
            pid: 4242,
            uid: 1000,
            gid: 100,
        }
    }

    #[test]
    fn a_stamp_survives_the_trip() {
        let map = headers("node-a", u64::MAX - 1, &stamp());
        let origin = origin(Some(&map), 2).unwrap();
        assert_eq!(origin.incarnation(), u64::MAX - 1);
        assert_eq!(abi::field_name(&origin.node), Some(&b"node-a"[..]));
        assert_eq!(
            (origin.seq, origin.pid, origin.uid, origin.gid),
            (7, 4242, 1000, 100)
        );
        assert_eq!(origin.time_ns, stamp().time_ns);
        assert_eq!(node(Some(&map)), Some("node-a"));
    }

    #[test]
    fn a_durable_message_carries_its_incarnation_and_id() {
        let map = durable_headers("node-a", "lobby", 0xfeed, &stamp());
        assert_eq!(origin(Some(&map), 1).unwrap().incarnation(), 0xfeed);
        assert_eq!(
            map.get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some("node-a.lobby.65261.7")
        );
        assert_eq!(
            map.get("Kchat-Incarnation").map(|v| v.as_str()),
            Some("65261")
        );
        assert_eq!(numbering(Some(&map)), Ok(None));
        // No incarnation (a bridge from before them): 0.
        let mut old = HeaderMap::new();
        for (name, value) in [
            (NODE, "node-a"),
            (SEQ, "1"),
            (TIME, "1"),
            (PID, "1"),
            (UID, "0"),
            (GID, "0"),
        ] {
            old.insert(name, value);
        }
        assert_eq!(origin(Some(&old), 1).unwrap().incarnation(), 0);
        let mut bad = map.clone();
        bad.insert(INCARNATION, "x");
        assert_eq!(origin(Some(&bad), 1), Err(Refused::Field(INCARNATION)));
    }

    #[test]
    fn a_drop_room_message_carries_its_run_and_number() {
        let map = numbered_headers("node-a", 3, 0xabc, 12, &stamp());
        assert_eq!(numbering(Some(&map)), Ok(Some((0xabc, 12))));
        assert_eq!(origin(Some(&map), 1).unwrap().seq, 7);
        let mut half = headers("node-a", 3, &stamp());
        half.insert(RUN, "5");
        assert_eq!(numbering(Some(&half)), Err(Refused::Field(NUM)));
        let mut bad = map.clone();
        bad.insert(RUN, "-1");
        assert_eq!(numbering(Some(&bad)), Err(Refused::Field(RUN)));
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        assert_eq!(origin(None, 3), Err(Refused::NoHeaders));
        let mut map = headers("node-a", 1, &stamp());
        assert_eq!(origin(Some(&map), 0), Err(Refused::Empty));
        map.insert(PID, "-1");
        assert_eq!(origin(Some(&map), 1), Err(Refused::Field(PID)));
        let bad_node = headers("a/b", 1, &stamp());
        assert_eq!(origin(Some(&bad_node), 1), Err(Refused::Node("a/b".into())));
    }

    fn from(incarnation: u64, seq: u64) -> abi::OriginHeader {
        let mut origin = abi::OriginHeader {
            seq,
            ..abi::OriginHeader::default()
        };
        origin.set_incarnation(incarnation);
        origin
    }

    #[test]
    fn gaps_count_what_never_came() {
        let mut gaps = Gaps::default();
        let a = abi::name_field("a").unwrap();
        let b = abi::name_field("b").unwrap();
        // Numbers in a run, whatever the room's sequence numbers (holes
        // where relayed messages took them are no gap).
        assert_eq!(gaps.note(a, &from(1, 10), Some((7, 1))), 0);
        assert_eq!(gaps.note(a, &from(1, 15), Some((7, 2))), 0);
        assert_eq!(gaps.note(a, &from(1, 40), Some((7, 5))), 2);
        assert_eq!(gaps.note(b, &from(9, 100), Some((3, 50))), 0);
        // A duplicate or a late one is no gap.
        assert_eq!(gaps.note(a, &from(1, 40), Some((7, 5))), 0);
        assert_eq!(gaps.note(a, &from(1, 30), Some((7, 4))), 0);
        // A new run (the publisher restarted) or incarnation (the room
        // created again) starts afresh: no gap, whatever its numbers.
        assert_eq!(gaps.note(a, &from(1, 41), Some((8, 1))), 0);
        assert_eq!(gaps.note(a, &from(2, 0), Some((8, 2))), 0);
        assert_eq!(gaps.note(a, &from(2, 1), Some((8, 4))), 1);
        // Back in the first run: its count goes on.
        assert_eq!(gaps.note(a, &from(1, 50), Some((7, 7))), 1);
        // Two nodes known: a third is refused at a bound of two.
        let c = abi::name_field("c").unwrap();
        assert!(gaps.admit(&a, "a", 2).is_ok());
        assert!(gaps.admit(&c, "c", 2).is_err());
        assert!(gaps.admit(&c, "c", 3).is_ok());
    }

    #[test]
    fn a_restarted_receiver_counts_from_what_the_room_holds() {
        let mut gaps = Gaps::default();
        let a = abi::name_field("a").unwrap();
        // The room held a's message 100 of incarnation 1; a sent 200 more
        // while this bridge was away.
        gaps.seed(a, 1, 100);
        assert_eq!(gaps.note(a, &from(1, 301), Some((7, 900))), 200);
        assert_eq!(gaps.note(a, &from(1, 302), Some((7, 901))), 0);
        // A seed of another incarnation counts nothing.
        let b = abi::name_field("b").unwrap();
        gaps.seed(b, 1, 100);
        assert_eq!(gaps.note(b, &from(2, 5000), Some((1, 1))), 0);
    }

    #[test]
    fn many_runs_keep_memory_bounded() {
        let mut gaps = Gaps::default();
        let a = abi::name_field("a").unwrap();
        for run in 0..1000 {
            gaps.note(a, &from(1, run), Some((run, 1)));
        }
        assert_eq!(gaps.nodes[&a].runs.len(), crate::trust::INCARNATIONS_KEPT);
    }

    #[test]
    fn a_batch_carries_each_record_with_its_stamp_and_number() {
        let mut body = Vec::new();
        let mut second = stamp();
        second.seq = 9;
        second.pid = 1;
        push_record(&mut body, &stamp(), b"hi");
        push_record(&mut body, &second, &[7u8; 300]);
        let map = batch_headers("node-a", 0xfeed, 5, 41);
        assert!(is_batch(Some(&map)));
        assert!(!is_batch(Some(&headers("node-a", 1, &stamp()))));
        let records = batch(Some(&map), &body).unwrap();
        assert_eq!(records.len(), 2);
        let (one, two) = (&records[0], &records[1]);
        assert_eq!(one.payload, b"hi");
        assert_eq!(two.payload, &[7u8; 300][..]);
        assert_eq!(
            (one.numbering, two.numbering),
            (Some((5, 41)), Some((5, 42)))
        );
        assert_eq!(
            (one.origin.seq, one.origin.time_ns, one.origin.pid),
            (7, stamp().time_ns, 4242)
        );
        assert_eq!((one.origin.uid, one.origin.gid), (1000, 100));
        assert_eq!((two.origin.seq, two.origin.pid), (9, 1));
        assert_eq!(two.origin.incarnation(), 0xfeed);
        assert_eq!(abi::field_name(&two.origin.node), Some(&b"node-a"[..]));
        assert_eq!(two.origin.flags, 0);
    }

    #[test]
    fn a_durable_batch_is_unnumbered_and_named_by_both_ends() {
        let mut body = Vec::new();
        push_record(&mut body, &stamp(), b"hi");
        let map = durable_batch_headers("node-a", "lobby", 9, 7, 12);
        assert_eq!(
            map.get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some("node-a.lobby.9.7-12")
        );
        let records = batch(Some(&map), &body).unwrap();
        assert_eq!(records[0].numbering, None);
        assert_eq!(records[0].origin.incarnation(), 9);
    }

    #[test]
    fn a_bad_batch_is_refused_whole() {
        let mut body = Vec::new();
        push_record(&mut body, &stamp(), b"hi");
        let map = batch_headers("node-a", 1, 5, 1);
        // Cut anywhere: inside the header or the payload.
        for cut in [1, RECORD_HEADER - 1, RECORD_HEADER, body.len() - 1] {
            let mut longer = body.clone();
            longer.extend_from_slice(&body[..cut]);
            assert_eq!(batch(Some(&map), &longer).err(), Some(Refused::Record));
        }
        assert_eq!(batch(Some(&map), &[]).err(), Some(Refused::Empty));
        let mut empty_record = Vec::new();
        push_record(&mut empty_record, &stamp(), b"");
        assert_eq!(batch(Some(&map), &empty_record).err(), Some(Refused::Empty));
        let mut other_version = map.clone();
        other_version.insert(BATCH, "2");
        assert_eq!(
            batch(Some(&other_version), &body).err(),
            Some(Refused::Field(BATCH))
        );
        let mut half = unnumbered_batch_headers("node-a", 1);
        half.insert(RUN, "5");
        assert_eq!(batch(Some(&half), &body).err(), Some(Refused::Field(NUM)));
        let bad_node = batch_headers("a/b", 1, 5, 1);
        assert_eq!(
            batch(Some(&bad_node), &body).err(),
            Some(Refused::Node("a/b".into()))
        );
        // A length past the body.
        let mut long = body.clone();
        long[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(batch(Some(&map), &long).err(), Some(Refused::Record));
    }

    #[test]
    fn a_relay_frame_is_header_then_payload() {
        let frame = kchat_client::relay_frame(abi::OriginHeader::default(), b"hi");
        assert_eq!(frame.len(), size_of::<abi::RelayHeader>() + 2);
        assert_eq!(
            &frame[..4],
            &(size_of::<abi::RelayHeader>() as u32).to_ne_bytes()
        );
        assert_eq!(&frame[frame.len() - 2..], b"hi");
    }
}
