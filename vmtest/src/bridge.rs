//! kchat-bridge on the real module and a real nats-server (Debian's), in one
//! guest: two bridges with their own node names, each on its own room, on
//! one subject, stand in for two machines. (Two guests, each with its own
//! kernel, are the next step; the relay semantics are the same.)

use crate::{
    client::{spec, Control, TempRoom},
    helper::{bin, wait_for, PATIENCE},
    module, Test,
};
use anyhow::{ensure, Context, Result};
use kchat_uapi::abi;
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

pub const TESTS: &[Test] = &[
    (
        "bridge::two_nodes_chat_exactly_once_and_nothing_loops",
        two_nodes_chat_exactly_once_and_nothing_loops,
    ),
    (
        "bridge::tls_with_client_certificates_carries_a_room_and_nothing_falls_back_to_clear",
        tls_with_client_certificates_carries_a_room_and_nothing_falls_back_to_clear,
    ),
];

const NATS_PORT: u16 = 14222;

/// Processes killed when the test ends, pass or fail.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn bridge(dir: &Path, node: &str, room: &str, metrics_port: u16) -> Result<Child> {
    bridge_with(
        dir,
        node,
        room,
        metrics_port,
        &format!("servers = [\"nats://127.0.0.1:{NATS_PORT}\"]\nsubject_prefix = \"kchat\""),
    )
}

/// A bridge of `room` on the subject `fed` with its own `[nats]` table.
fn bridge_with(dir: &Path, node: &str, room: &str, metrics_port: u16, nats: &str) -> Result<Child> {
    let config = dir.join(format!("{node}.toml"));
    std::fs::write(
        &config,
        format!(
            "node = \"{node}\"\nstate_dir = \"{}/state-{node}\"\n[nats]\n{nats}\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n[rooms.{room}]\nsubject = \"fed\"\n",
            dir.display()
        ),
    )?;
    let log = std::fs::File::create(dir.join(format!("{node}.log")))?;
    Command::new(bin("kchat-bridge")?)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting kchat-bridge")
}

fn metric(port: u16, series: &str) -> Result<f64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0))
}

/// Every frame a room fd in `READ_FRAMED_ORIGIN` has now.
fn origin_frames(
    room: &mut std::fs::File,
) -> Result<Vec<(abi::FrameHeader, abi::OriginHeader, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match room.read(&mut buf) {
            Ok(n) => {
                let frames = kchat_client::split_origin_frames(&buf[..n]).context("torn frames")?;
                out.extend(frames.into_iter().map(|(h, o, p)| (h, o, p.to_vec())));
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
            Err(err) => return Err(err.into()),
        }
    }
}

fn two_nodes_chat_exactly_once_and_nothing_loops() -> Result<()> {
    module::ensure_loaded()?;
    let dir = Path::new("/run/kchat-test/bridge");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let a = TempRoom::create(spec("fed-a"))?;
    let b = TempRoom::create(spec("fed-b"))?;
    let mut running = Running(Vec::new());
    running.0.push(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &NATS_PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (Debian's nats-server package)")?,
    );
    wait_for("nats-server to listen", PATIENCE, || {
        Ok(TcpStream::connect(("127.0.0.1", NATS_PORT)).is_ok())
    })?;
    running.0.push(bridge(dir, "node-a", "fed-a", 19478)?);
    running.0.push(bridge(dir, "node-b", "fed-b", 19479)?);
    let mut on_a = a.open_read_nonblock()?;
    kchat_client::set_read_mode(&on_a, abi::READ_FRAMED_ORIGIN)?;
    let mut on_b = b.open_read_nonblock()?;
    kchat_client::set_read_mode(&on_b, abi::READ_FRAMED_ORIGIN)?;
    // Both bridges are up once a probe crosses each way (core NATS drops
    // what is published before a subscriber is there).
    let mut writer_a = a.open_write()?;
    let mut writer_b = b.open_write()?;
    let logs = || {
        format!(
            "node-a: {}\nnode-b: {}",
            std::fs::read_to_string(dir.join("node-a.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("node-b.log")).unwrap_or_default()
        )
    };
    for (writer, reader, way) in [
        (&mut writer_a, &mut on_b, "a to b"),
        (&mut writer_b, &mut on_a, "b to a"),
    ] {
        wait_for(&format!("a probe to cross {way}"), PATIENCE, || {
            // A probe sent before the other bridge subscribed is gone
            // for good: send another unless this one crosses soon.
            writer.write_all(b"probe")?;
            let crossed = wait_for("the probe", Duration::from_secs(2), || {
                Ok(origin_frames(reader)?
                    .iter()
                    .any(|(_, o, _)| o.flags & abi::ORIGIN_RELAYED != 0))
            });
            Ok(crossed.is_ok())
        })
        .with_context(logs)?;
    }
    // Probes still in flight land before the count starts: everything one
    // bridge published, the other relayed.
    let published_a = || metric(19478, "kchat_bridge_published_total{room=\"fed-a\"}");
    let published_b = || metric(19479, "kchat_bridge_published_total{room=\"fed-b\"}");
    let relayed_in_a = || metric(19478, "kchat_bridge_relayed_total{room=\"fed-a\"}");
    let relayed_in_b = || metric(19479, "kchat_bridge_relayed_total{room=\"fed-b\"}");
    wait_for("the probes to settle", PATIENCE, || {
        Ok(published_a()? == relayed_in_b()? && published_b()? == relayed_in_a()?)
    })
    .with_context(logs)?;
    let _ = origin_frames(&mut on_a)?;
    let _ = origin_frames(&mut on_b)?;
    let before_a = Control::open()?.info("fed-a")?.msgs_in;
    let before_b = Control::open()?.info("fed-b")?.msgs_in;
    let (relayed_a, relayed_b) = (relayed_in_a()?, relayed_in_b()?);
    let (sent_a, sent_b) = (published_a()?, published_b()?);

    // Traffic both ways at once.
    const N: u64 = 500;
    for n in 0..N {
        writer_a.write_all(format!("from a {n}\n").as_bytes())?;
        writer_b.write_all(format!("from b {n}\n").as_bytes())?;
    }
    wait_for("every message to cross", PATIENCE, || {
        Ok(relayed_in_a()? >= relayed_a + N as f64 && relayed_in_b()? >= relayed_b + N as f64)
    })
    .with_context(logs)?;
    // On b: a's messages, relayed, from node-a with a's stamp, each once.
    let frames = origin_frames(&mut on_b)?;
    let relayed: Vec<_> = frames
        .iter()
        .filter(|(_, o, _)| o.flags & abi::ORIGIN_RELAYED != 0)
        .collect();
    ensure!(
        relayed.len() as u64 == N,
        "b got {} relayed messages, not {N}",
        relayed.len()
    );
    for (n, (header, origin, payload)) in relayed.iter().enumerate() {
        ensure!(
            *payload == format!("from a {n}\n").as_bytes()
                && abi::field_name(&origin.node) == Some(&b"node-a"[..])
                && origin.pid == std::process::id()
                && origin.uid == 0,
            "relayed message {n} on b: {origin:?} {payload:?}"
        );
        // The local stamp is the bridge's, never the remote writer's.
        ensure!(
            header.pid != std::process::id(),
            "a relayed message stamped as its remote writer"
        );
    }
    // Nothing looped: each room holds its own N and the other's N, and no
    // bridge published a relayed message. (Signed: a counter that went back
    // must show as such, not overflow.)
    let msgs_a = Control::open()?
        .info("fed-a")?
        .msgs_in
        .wrapping_sub(before_a) as i64;
    let msgs_b = Control::open()?
        .info("fed-b")?
        .msgs_in
        .wrapping_sub(before_b) as i64;
    ensure!(
        msgs_a == 2 * N as i64 && msgs_b == 2 * N as i64,
        "rooms took {msgs_a} and {msgs_b} messages, not {}",
        2 * N
    );
    ensure!(
        published_a()? - sent_a == N as f64 && published_b()? - sent_b == N as f64,
        "the bridges published {} and {} messages, not {N} each: relayed ones went out again",
        published_a()? - sent_a,
        published_b()? - sent_b
    );
    // A message no bridge sent (no headers) is refused, counted, and the
    // bridges go on.
    let mut raw = TcpStream::connect(("127.0.0.1", NATS_PORT))?;
    raw.write_all(b"CONNECT {\"verbose\":false}\r\nPUB kchat.fed.stray 5\r\nhello\r\nPING\r\n")?;
    wait_for("the stray message to be refused", PATIENCE, || {
        Ok(metric(
            19479,
            "kchat_bridge_dropped_total{room=\"fed-b\",reason=\"malformed\"}",
        )? >= 1.0)
    })?;
    writer_a.write_all(b"after the stray one\n")?;
    wait_for("traffic after a bad message", PATIENCE, || {
        Ok(origin_frames(&mut on_b)?
            .iter()
            .any(|(_, _, p)| p == b"after the stray one\n"))
    })?;
    drop(a);
    drop(b);
    Ok(())
}

/// A CA, a server certificate for 127.0.0.1 and client certificates, made
/// for the test (PEM files in `dir`: ca.pem, server.pem/.key, NAME.pem/.key).
fn make_certificates(dir: &Path, clients: &[&str]) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "kchat test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    let mut leaves = vec![(
        "server",
        vec!["127.0.0.1".to_owned()],
        ExtendedKeyUsagePurpose::ServerAuth,
    )];
    leaves.extend(clients.iter().map(|name| {
        (
            *name,
            vec![format!("{name}.kchat.test")],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }));
    for (name, names, usage) in leaves {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

/// A nats-server that speaks only TLS and wants a client certificate from
/// the test's CA and a token; two bridges with certificates (and the
/// token, which goes only inside TLS) carry a room between them. A bridge
/// given the CA but pointed at a plain server refuses to talk in clear
/// (the CA alone did not turn TLS on before: it connected in clear), and
/// `--check` refuses a token bound for another machine without TLS.
fn tls_with_client_certificates_carries_a_room_and_nothing_falls_back_to_clear() -> Result<()> {
    const TLS_PORT: u16 = 14322;
    const PLAIN_PORT: u16 = 14323;
    module::ensure_loaded()?;
    let dir = Path::new("/run/kchat-test/bridge-tls");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    make_certificates(dir, &["node-a", "node-b"])?;
    let d = dir.display();
    std::fs::write(
        dir.join("nats.conf"),
        format!(
            "listen: 127.0.0.1:{TLS_PORT}\n\
             tls {{\n  cert_file: \"{d}/server.pem\"\n  key_file: \"{d}/server.key\"\n  \
             ca_file: \"{d}/ca.pem\"\n  verify: true\n  timeout: 10\n}}\n\
             authorization {{ token: \"s3cret\" }}\n"
        ),
    )?;
    let a = TempRoom::create(spec("tls-a"))?;
    let b = TempRoom::create(spec("tls-b"))?;
    let c = TempRoom::create(spec("tls-c"))?;
    let mut running = Running(Vec::new());
    for args in [
        vec!["-c".to_owned(), format!("{d}/nats.conf")],
        vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            PLAIN_PORT.to_string(),
        ],
    ] {
        running.0.push(
            Command::new("nats-server")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    dir.join(format!("nats-{}.log", running.0.len())),
                )?)
                .spawn()
                .context("starting nats-server (Debian's nats-server package)")?,
        );
    }
    for port in [TLS_PORT, PLAIN_PORT] {
        wait_for("nats-server to listen", PATIENCE, || {
            Ok(TcpStream::connect(("127.0.0.1", port)).is_ok())
        })?;
    }
    let tls = |node: &str| {
        format!(
            "servers = [\"nats://127.0.0.1:{TLS_PORT}\"]\ntoken = \"s3cret\"\n\
             tls_ca = \"{d}/ca.pem\"\ntls_cert = \"{d}/{node}.pem\"\ntls_key = \"{d}/{node}.key\""
        )
    };
    running
        .0
        .push(bridge_with(dir, "node-a", "tls-a", 19578, &tls("node-a"))?);
    running
        .0
        .push(bridge_with(dir, "node-b", "tls-b", 19579, &tls("node-b"))?);
    // The CA given, the server plain: no connection in clear.
    running.0.push(bridge_with(
        dir,
        "node-c",
        "tls-c",
        19580,
        &format!("servers = [\"nats://127.0.0.1:{PLAIN_PORT}\"]\ntls_ca = \"{d}/ca.pem\""),
    )?);
    let logs = || {
        ["node-a", "node-b", "node-c", "nats-0"]
            .iter()
            .map(|name| {
                format!(
                    "{name}: {}\n",
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
                )
            })
            .collect::<String>()
    };
    let mut on_b = b.open_read_nonblock()?;
    kchat_client::set_read_mode(&on_b, abi::READ_FRAMED_ORIGIN)?;
    let mut writer_a = a.open_write()?;
    wait_for("a message to cross over TLS", PATIENCE, || {
        writer_a.write_all(b"over tls\n")?;
        let crossed = wait_for("this one", Duration::from_secs(2), || {
            Ok(origin_frames(&mut on_b)?.iter().any(|(_, o, p)| {
                o.flags & abi::ORIGIN_RELAYED != 0
                    && abi::field_name(&o.node) == Some(&b"node-a"[..])
                    && p == b"over tls\n"
            }))
        });
        Ok(crossed.is_ok())
    })
    .with_context(logs)?;
    ensure!(
        metric(19578, "kchat_bridge_connected")? == 1.0
            && metric(19579, "kchat_bridge_connected")? == 1.0,
        "the TLS bridges do not report themselves connected"
    );
    // node-c: up (its metrics answer) but never connected, and it says why.
    wait_for("node-c to say it wants TLS", PATIENCE, || {
        let log = std::fs::read_to_string(dir.join("node-c.log")).unwrap_or_default();
        Ok(log.to_lowercase().contains("tls"))
    })
    .with_context(logs)?;
    ensure!(
        metric(19580, "kchat_bridge_connected")? == 0.0,
        "a bridge given a CA connected to a plain server in clear\n{}",
        logs()
    );
    // A token for another machine without TLS: refused before it runs.
    let config = dir.join("clear.toml");
    std::fs::write(
        &config,
        "node = \"node-d\"\n[nats]\nservers = [\"nats://10.0.0.5:4222\"]\ntoken = \"s3cret\"\n[rooms.tls-c]\n",
    )?;
    let check = Command::new(bin("kchat-bridge")?)
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()?;
    let said = String::from_utf8_lossy(&check.stderr);
    ensure!(
        !check.status.success() && said.contains("in clear to nats://10.0.0.5:4222"),
        "kchat-bridge --check took a token bound for another machine in clear: {:?} {said}",
        check.status
    );
    drop((a, b, c));
    Ok(())
}
