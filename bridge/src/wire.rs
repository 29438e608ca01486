//! How a kchat message travels over NATS: the payload as the message body,
//! its kernel stamp in headers. Pure, so every case is a host test.

use async_nats::HeaderMap;
use kchat_uapi::abi;

const NODE: &str = "Kchat-Node";
const SEQ: &str = "Kchat-Seq";
const TIME: &str = "Kchat-Time";
const PID: &str = "Kchat-Pid";
const UID: &str = "Kchat-Uid";
const GID: &str = "Kchat-Gid";
/// The room's incarnation on its node (JetStream rooms): sequence numbers
/// start over when a room is created again, this does not.
const EPOCH: &str = "Kchat-Epoch";

/// The headers of a message written on `node`, stamped `header` there.
pub fn headers(node: &str, header: &abi::FrameHeader) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(NODE, node);
    map.insert(SEQ, header.seq.to_string().as_str());
    map.insert(TIME, header.time_ns.to_string().as_str());
    map.insert(PID, header.pid.to_string().as_str());
    map.insert(UID, header.uid.to_string().as_str());
    map.insert(GID, header.gid.to_string().as_str());
    map
}

/// The headers of a message of a JetStream room: the stamp, the room's
/// epoch, and the id the server de-duplicates by (origin node, room,
/// epoch, sequence), so publishing it again after a restart stores nothing.
pub fn durable_headers(node: &str, room: &str, epoch: u64, header: &abi::FrameHeader) -> HeaderMap {
    let mut map = headers(node, header);
    map.insert(EPOCH, epoch.to_string().as_str());
    map.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{node}.{room}.{epoch}.{}", header.seq).as_str(),
    );
    map
}

/// A received message's epoch (0 when it has none: core NATS).
pub fn epoch(headers: Option<&HeaderMap>) -> Result<u64, Refused> {
    match headers.and_then(|map| map.get(EPOCH)) {
        None => Ok(0),
        Some(value) => value.as_str().parse().map_err(|_| Refused::Field(EPOCH)),
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
    Ok(abi::OriginHeader {
        node: field,
        seq: number(SEQ)?,
        time_ns: number(TIME)?,
        pid: small(PID)?,
        uid: small(UID)?,
        gid: small(GID)?,
        ..abi::OriginHeader::default()
    })
}

/// The node a received message says it came from, if any.
pub fn node(headers: Option<&HeaderMap>) -> Option<&str> {
    headers?.get(NODE).map(|v| v.as_str())
}

/// Per origin node, the last sequence number seen: a jump is messages that
/// node sent and this one never got.
#[derive(Debug, Default)]
pub struct Gaps {
    last: std::collections::HashMap<[u8; abi::NAME_FIELD], u64>,
}

impl Gaps {
    /// Starts from what the room already holds from `node` (after a
    /// restart, what went by meanwhile is then counted).
    pub fn seed(&mut self, node: [u8; abi::NAME_FIELD], seq: u64) {
        let last = self.last.entry(node).or_insert(seq);
        *last = (*last).max(seq);
    }

    /// Whether `node` (named `name`) may be noted: a node already known, or
    /// one more while fewer than `max` are.
    pub fn admit(
        &self,
        node: &[u8; abi::NAME_FIELD],
        name: &str,
        max: usize,
    ) -> Result<(), crate::trust::Untrusted> {
        if self.last.contains_key(node) || self.last.len() < max {
            Ok(())
        } else {
            Err(crate::trust::Untrusted::TooManyNodes {
                node: name.to_owned(),
                max,
            })
        }
    }

    /// Notes `seq` from `node`; returns how many were skipped before it.
    pub fn note(&mut self, node: [u8; abi::NAME_FIELD], seq: u64) -> u64 {
        let skipped = match self.last.get(&node) {
            Some(&last) if seq > last => seq - last - 1,
            _ => 0,
        };
        let last = self.last.entry(node).or_insert(seq);
        *last = (*last).max(seq);
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
        let map = headers("node-a", &stamp());
        let origin = origin(Some(&map), 2).unwrap();
        assert_eq!(abi::field_name(&origin.node), Some(&b"node-a"[..]));
        assert_eq!(
            (origin.seq, origin.pid, origin.uid, origin.gid),
            (7, 4242, 1000, 100)
        );
        assert_eq!(origin.time_ns, stamp().time_ns);
        assert_eq!(node(Some(&map)), Some("node-a"));
    }

    #[test]
    fn a_durable_message_carries_its_epoch_and_id() {
        let map = durable_headers("node-a", "lobby", 3, &stamp());
        assert_eq!(epoch(Some(&map)), Ok(3));
        assert_eq!(
            map.get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some("node-a.lobby.3.7")
        );
        assert_eq!(epoch(Some(&headers("node-a", &stamp()))), Ok(0));
        let mut bad = map.clone();
        bad.insert(EPOCH, "x");
        assert_eq!(epoch(Some(&bad)), Err(Refused::Field(EPOCH)));
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        assert_eq!(origin(None, 3), Err(Refused::NoHeaders));
        let mut map = headers("node-a", &stamp());
        assert_eq!(origin(Some(&map), 0), Err(Refused::Empty));
        map.insert(PID, "-1");
        assert_eq!(origin(Some(&map), 1), Err(Refused::Field(PID)));
        let bad_node = headers("a/b", &stamp());
        assert_eq!(origin(Some(&bad_node), 1), Err(Refused::Node("a/b".into())));
    }

    #[test]
    fn gaps_count_what_never_came() {
        let mut gaps = Gaps::default();
        let a = abi::name_field("a").unwrap();
        let b = abi::name_field("b").unwrap();
        assert_eq!(gaps.note(a, 5), 0);
        assert_eq!(gaps.note(a, 6), 0);
        assert_eq!(gaps.note(a, 9), 2);
        assert_eq!(gaps.note(b, 100), 0);
        // A duplicate or a late one is no gap.
        assert_eq!(gaps.note(a, 9), 0);
        assert_eq!(gaps.note(a, 8), 0);
        // Two nodes known: a third is refused at a bound of two.
        let c = abi::name_field("c").unwrap();
        assert!(gaps.admit(&a, "a", 2).is_ok());
        assert!(gaps.admit(&c, "c", 2).is_err());
        assert!(gaps.admit(&c, "c", 3).is_ok());
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
