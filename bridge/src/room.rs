//! One bridged room: what is written here goes out, what others publish
//! comes in as relayed, and neither comes back.

use crate::{config::Direction, metrics::Metrics, wire};
use async_nats::Client;
use futures_util::StreamExt;
use kchat_uapi::abi;
use std::{
    io::{ErrorKind, Read, Write},
    os::unix::fs::OpenOptionsExt,
    sync::Arc,
};
use tokio::io::unix::AsyncFd;

pub struct Bridged {
    pub room: String,
    pub subject: String,
    pub node: String,
    pub direction: Direction,
}

/// Runs the room's directions until one fails for good.
pub async fn run(bridged: Bridged, client: Client, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let bridged = Arc::new(bridged);
    let out = matches!(bridged.direction, Direction::Out | Direction::Both);
    let inward = matches!(bridged.direction, Direction::In | Direction::Both);
    let publisher =
        out.then(|| tokio::spawn(publish(bridged.clone(), client.clone(), metrics.clone())));
    let relayer = inward.then(|| tokio::spawn(relay(bridged.clone(), client, metrics)));
    for task in [publisher, relayer].into_iter().flatten() {
        task.await??;
    }
    Ok(())
}

/// Reads the room with origins and publishes what was written here.
/// Relayed messages (those this or another bridge wrote in) never go out
/// again: that is what keeps two bridges from looping.
async fn publish(
    bridged: Arc<Bridged>,
    client: Client,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let path = kchat_client::room_path(&bridged.room);
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&path)
        .map_err(|err| anyhow::anyhow!("cannot open {} for reading: {err}", path.display()))?;
    kchat_client::set_read_mode(&file, abi::READ_FRAMED_ORIGIN)
        .map_err(|err| anyhow::anyhow!("{} is not a kchat room: {err}", path.display()))?;
    // SAFETY: the `File` owns its descriptor and the `AsyncFd` owns the
    // `File`: the descriptor stays open and the same until the `AsyncFd`
    // is dropped.
    let mut file = unsafe { AsyncFd::register(file) }
        .map_err(|err| anyhow::anyhow!("cannot watch the room: {err}"))?;
    let published = Metrics::room(&metrics.published, &bridged.room);
    let local_lost = Metrics::room(&metrics.local_lost, &bridged.room);
    let mut buf = vec![
        0u8;
        size_of::<abi::FrameHeader>()
            + size_of::<abi::OriginHeader>()
            + abi::MAX_MAX_MSG as usize
    ];
    loop {
        let mut ready = file.readable_mut().await?;
        let n = match ready.try_io(|inner| inner.get_mut().read(&mut buf)) {
            Ok(Ok(0)) => anyhow::bail!("room {} was deleted", bridged.room),
            Ok(Ok(n)) => n,
            Ok(Err(err)) if err.kind() == ErrorKind::Interrupted => continue,
            Ok(Err(err)) => return Err(err.into()),
            Err(_would_block) => continue,
        };
        let frames = kchat_client::split_origin_frames(&buf[..n])
            .ok_or_else(|| anyhow::anyhow!("room {} returned a torn frame", bridged.room))?;
        for (header, origin, payload) in frames {
            local_lost.inc_by(header.lost);
            if origin.flags & abi::ORIGIN_RELAYED != 0 {
                continue;
            }
            let headers = wire::headers(&bridged.node, &header);
            client
                .publish_with_headers(
                    bridged.subject.clone(),
                    headers,
                    bytes::Bytes::copy_from_slice(payload),
                )
                .await?;
            published.inc();
        }
    }
}

/// Subscribes to the room's subject and writes what other nodes published
/// into the room through a relay fd.
async fn relay(bridged: Arc<Bridged>, client: Client, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let path = kchat_client::room_path(&bridged.room);
    let mut room = std::fs::File::options()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&path)
        .map_err(|err| anyhow::anyhow!("cannot open {} for writing: {err}", path.display()))?;
    kchat_client::set_relay(&room).map_err(|err| {
        anyhow::anyhow!(
            "cannot make the {} fd a relay ({err}): kchat-bridge needs CAP_SYS_ADMIN",
            bridged.room
        )
    })?;
    let mut subscriber = client.subscribe(bridged.subject.clone()).await?;
    let received = Metrics::room(&metrics.received, &bridged.room);
    let relayed = Metrics::room(&metrics.relayed, &bridged.room);
    let gaps_seen = Metrics::room(&metrics.gaps, &bridged.room);
    let mut gaps = wire::Gaps::default();
    while let Some(message) = subscriber.next().await {
        received.inc();
        let headers = message.headers.as_ref();
        if wire::node(headers) == Some(bridged.node.as_str()) {
            // Our own publication, back from the server.
            continue;
        }
        let origin = match wire::origin(headers, message.payload.len()) {
            Ok(origin) => origin,
            Err(reason) => {
                tracing::warn!(room = %bridged.room, %reason, "not relayed");
                metrics.dropped_one(&bridged.room, "malformed");
                continue;
            }
        };
        gaps_seen.inc_by(gaps.note(origin.node, origin.seq));
        // One relay write is one message, taken whole or not at all.
        match room.write_all(&kchat_client::relay_frame(origin, &message.payload)) {
            Ok(_) => {
                relayed.inc();
            }
            Err(err) => {
                let reason = match err.raw_os_error().map(nix::errno::Errno::from_raw) {
                    Some(nix::errno::Errno::EMSGSIZE) => "oversize",
                    Some(nix::errno::Errno::EAGAIN) => "room_full_or_throttled",
                    Some(nix::errno::Errno::EIDRM) => {
                        anyhow::bail!("room {} was deleted", bridged.room)
                    }
                    _ => "write_failed",
                };
                tracing::warn!(room = %bridged.room, %err, reason, "not relayed");
                metrics.dropped_one(&bridged.room, reason);
            }
        }
    }
    anyhow::bail!("the subscription to {} ended", bridged.subject)
}
