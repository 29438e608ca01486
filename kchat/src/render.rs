//! How a received message is shown: the kernel's stamp (time, sender uid),
//! never anything the sender wrote about itself, and text made safe for a
//! terminal. A message relayed from another machine shows that machine's
//! stamp and name (`uid 1000@node-a`): a remote uid is never looked up as
//! a local user.

use crate::room::Received;
use chrono::{DateTime, Local};
use kchat_uapi::abi;
use std::collections::HashMap;

/// Sender names by uid, looked up once each.
#[derive(Default)]
pub struct Names(HashMap<u32, String>);

impl Names {
    pub fn of(&mut self, uid: u32) -> &str {
        self.0.entry(uid).or_insert_with(|| {
            match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                Ok(Some(user)) => user.name,
                _ => format!("uid {uid}"),
            }
        })
    }
}

/// Text safe to print: control characters (which could move the cursor,
/// recolour the screen or retitle the terminal, so one user could fake
/// another's lines) are shown in caret or `\u{..}` notation instead.
pub fn sanitize(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            '\u{7f}' => out.push_str("^?"),
            '\u{80}'..='\u{9f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            _ => out.push(c),
        }
    }
    out
}

/// `HH:MM:SS` in local time of a `CLOCK_REALTIME` nanosecond stamp.
pub fn clock(time_ns: u64) -> String {
    let secs = i64::try_from(time_ns / 1_000_000_000).unwrap_or(i64::MAX);
    let nanos = (time_ns % 1_000_000_000) as u32;
    DateTime::from_timestamp(secs, nanos)
        .map(|t| t.with_timezone(&Local).format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "??:??:??".into())
}

/// The marker shown where messages were lost.
pub fn lost(count: u64) -> String {
    format!("-- {count} message(s) lost: this reader fell behind --")
}

/// The lines one message shows as: the first stamped, later ones indented
/// under it. A trailing newline ends the message, not a line.
pub fn message(received: &Received, names: &mut Names) -> Vec<String> {
    let (name, time_ns) = match &received.origin {
        Some(origin) => (
            format!(
                "uid {}@{}",
                origin.uid,
                sanitize(abi::field_name(&origin.node).unwrap_or(b"?"))
            ),
            origin.time_ns,
        ),
        None => (
            names.of(received.header.uid).to_owned(),
            received.header.time_ns,
        ),
    };
    let stamp = format!("[{}] {name}:", clock(time_ns));
    let payload = &received.payload;
    let body = payload.strip_suffix(b"\n").unwrap_or(payload);
    let mut lines = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        let text = sanitize(line);
        if n == 0 {
            lines.push(format!("{stamp} {text}"));
        } else {
            lines.push(format!("{:width$} {text}", "", width = stamp.len()));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_cannot_reach_the_terminal() {
        assert_eq!(sanitize(b"hi\x1b[2J\x07there"), "hi^[[2J^Gthere");
        assert_eq!(sanitize(b"tab\tok"), "tab\tok");
        assert_eq!(sanitize(b"\x7f"), "^?");
        assert_eq!(sanitize("\u{9b}31m".as_bytes()), "\\u{9b}31m");
        assert_eq!(sanitize("a\u{202e}b".as_bytes()), "a\\u{202e}b");
        assert_eq!(sanitize(b"\xff ok"), "\u{fffd} ok");
    }

    fn local(payload: &[u8]) -> Received {
        Received {
            header: abi::FrameHeader::default(),
            origin: None,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn the_sender_is_the_kernels_not_the_texts() {
        let mut names = Names::default();
        let lines = message(&local(b"nobody: I am not root\n"), &mut names);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].ends_with("] root: nobody: I am not root"),
            "{lines:?}"
        );
        let lines = message(&local(b"one\ntwo\n"), &mut names);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].ends_with(" two") && lines[1].starts_with("   "),
            "{lines:?}"
        );
    }

    #[test]
    fn a_relayed_message_names_its_machine_not_a_local_user() {
        let mut names = Names::default();
        let mut received = local(b"hi from afar\n");
        received.origin = Some(abi::OriginHeader {
            flags: abi::ORIGIN_RELAYED,
            node: abi::name_field("node-a").expect("a node name"),
            uid: 0,
            ..Default::default()
        });
        let lines = message(&received, &mut names);
        assert!(
            lines[0].ends_with("] uid 0@node-a: hi from afar"),
            "{lines:?}"
        );
    }
}
