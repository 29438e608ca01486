//! The VM runner: boots the test kernel in QEMU with the host's filesystem as
//! a read-only root (under a throwaway overlay), runs a command, and judges
//! the run by the command's exit status *and* the guest kernel's log.
//!
//! Console layout: the kernel console is the serial port, written to
//! `console.log`; the command's stdin/stdout is a virtio console (`hvc0`),
//! which is this process's stdio. A second 9p share, the run folder, carries
//! the command in and the exit status, `dmesg` and kmemleak's report out.

use crate::{
    bootstrap, kernel,
    kernel::Kernel,
    kmod,
    logcheck::{self, Finding},
    paths,
    process::show,
};
use anyhow::{bail, Context, Result};
use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

#[derive(clap::Args, Clone)]
pub struct VmArgs {
    /// Use KVM instead of TCG software emulation (needs a working /dev/kvm).
    #[arg(long)]
    pub kvm: bool,
    /// Boot the KASAN kernel (about ten times slower under TCG).
    #[arg(long)]
    pub kasan: bool,
    /// The kernel line to boot.
    #[arg(long, value_enum, default_value_t = kernel::Line::DEFAULT)]
    pub line: kernel::Line,
    /// Virtual CPUs (at least 2, so SMP races can happen).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=64))]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
    /// Boot with systemd as PID 1 (and udev); the command runs as
    /// kchat-vm.service once sysinit is done.
    #[arg(long)]
    pub systemd: bool,
    /// Kill the guest after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Shell command to run in the guest, from the checkout's root; without
    /// one, an interactive shell.
    #[arg(last = true)]
    pub command: Vec<String>,
    /// A network card linked to another guest booted with the ports
    /// swapped: `--link 7001:7002` here, `--link 7002:7001` there (UDP on
    /// the host's loopback; the card is eth0, unconfigured).
    #[arg(long, value_name = "LOCAL_PORT:PEER_PORT", value_parser = parse_link)]
    pub link: Option<Link>,
    /// Keep the TSC as the guest's clock (`tsc=reliable`). Under TCG the
    /// clocksource watchdog sees the emulated TSC drift against the
    /// emulated HPET and switches to the HPET some 20 s after boot, after
    /// which every clock read (the kernel's stamps, the vDSO's) traps to
    /// QEMU: measurements would change cost halfway through a run.
    #[arg(long)]
    pub tsc_reliable: bool,
}

/// One end of a point-to-point link between two guests: QEMU's UDP socket
/// netdev between two ports of the host's loopback, so the host's network
/// sees nothing but loopback datagrams and neither guest can reach beyond
/// the other.
#[derive(Clone, Copy)]
pub struct Link {
    pub local_port: u16,
    pub peer_port: u16,
    /// Last byte of the card's MAC address (one per guest).
    pub mac: u8,
}

fn parse_link(text: &str) -> Result<Link, String> {
    let (local, peer) = text.split_once(':').ok_or("give LOCAL_PORT:PEER_PORT")?;
    let port = |p: &str| p.parse::<u16>().map_err(|err| format!("{p:?}: {err}"));
    let local_port = port(local)?;
    Ok(Link {
        local_port,
        peer_port: port(peer)?,
        mac: local_port as u8,
    })
}

impl VmArgs {
    /// Defaults for a scripted run.
    pub fn scripted(timeout: Duration) -> Self {
        VmArgs {
            kvm: std::env::var_os("KCHAT_KVM").is_some_and(|v| v == "1"),
            kasan: false,
            line: kernel::Line::DEFAULT,
            cpus: 2,
            memory: 2048,
            systemd: false,
            timeout: timeout.as_secs(),
            command: Vec::new(),
            link: None,
            tsc_reliable: false,
        }
    }
}

/// How a VM run ended.
pub struct VmRun {
    /// The run folder: console.log, output.log, dmesg.log, kmemleak.log.
    pub dir: PathBuf,
    /// The guest command's exit status; `None` if the guest never reported
    /// one (it crashed, panicked or was killed).
    pub exit_status: Option<i32>,
    /// What the command printed.
    pub output: String,
    /// Problems the guest kernel reported.
    pub findings: Vec<Finding>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl VmRun {
    /// Whether the command succeeded and the kernel stayed silent.
    pub fn passed(&self) -> bool {
        self.exit_status == Some(0) && self.findings.is_empty() && !self.timed_out
    }

    /// A paragraph saying what went wrong, for people.
    pub fn verdict(&self, limit: usize) -> String {
        let mut text = String::new();
        if self.timed_out {
            text.push_str(&format!(
                "the guest did not finish within its timeout and was killed after {:.0?}\n",
                self.elapsed
            ));
        }
        match self.exit_status {
            Some(0) => {}
            Some(code) => text.push_str(&format!("the guest command exited with status {code}\n")),
            None if !self.timed_out => {
                text.push_str("the guest stopped without reporting an exit status\n")
            }
            None => {}
        }
        if !self.findings.is_empty() {
            text.push_str(&format!(
                "the guest kernel log shows {} problem line(s):\n",
                self.findings.len()
            ));
            for finding in self.findings.iter().take(limit) {
                text.push_str(&format!("  {finding}\n"));
            }
        }
        text.push_str(&format!("logs: {}\n", self.dir.display()));
        text
    }
}

/// `cargo xtask vm`: builds what is needed, then boots.
pub fn command(args: VmArgs) -> Result<ExitCode> {
    bootstrap::ensure()?;
    let variant = if args.kasan {
        kernel::Variant::Kasan
    } else {
        kernel::Variant::Debug
    };
    let kernel = kernel::ensure_line(args.line, variant)?;
    kmod::build(&kernel)?;
    let script = (!args.command.is_empty()).then(|| args.command.join(" "));
    let run = run(&kernel, &args, script.as_deref(), true)?;
    if run.passed() {
        return Ok(ExitCode::SUCCESS);
    }
    eprint!("xtask vm: {}", run.verdict(20));
    Ok(match run.exit_status {
        Some(code) if code != 0 && run.findings.is_empty() => {
            ExitCode::from(code.clamp(1, 255) as u8)
        }
        _ => ExitCode::FAILURE,
    })
}

/// Boots the kernel and runs `script` (bash) in the guest, or an interactive
/// shell when `script` is `None`. With `echo`, the guest's output is shown
/// as it comes.
pub fn run(kernel: &Kernel, args: &VmArgs, script: Option<&str>, echo: bool) -> Result<VmRun> {
    let root = paths::root();
    let root_str = root.to_str().context("the checkout path is not UTF-8")?;
    if root_str.contains(char::is_whitespace) {
        bail!("the checkout path {root_str:?} has white space, which the kernel command line cannot carry");
    }
    let dir = new_run_dir()?;
    if let Some(script) = script {
        fs::write(dir.join("cmd.sh"), format!("set -o pipefail\n{script}\n"))?;
    }

    let mut qemu = Command::new("qemu-system-x86_64");
    if args.kvm {
        if fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            bail!("--kvm: /dev/kvm is missing or not usable here; run without --kvm for TCG");
        }
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]);
    }
    let init = format!("init={root_str}/xtask/vm/init.sh");
    let kchat_root = format!("kchat_root={root_str}");
    let mut append = vec![
        "console=ttyS0",
        "root=/dev/root",
        "rootfstype=9p",
        "rootflags=trans=virtio,version=9p2000.L,msize=512000,cache=loose",
        "ro",
        &init,
        &kchat_root,
        "panic=-1",
        "log_buf_len=4M",
        "printk.devkmsg=on",
        "pci=noacpi",
    ];
    if args.systemd {
        append.push("kchat_init=systemd");
    }
    if args.tsc_reliable {
        append.push("tsc=reliable");
    }
    let append = append.join(" ");
    qemu.args([
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-monitor",
        "none",
    ])
    .args(["-machine", "pc"])
    .args([
        "-smp",
        &args.cpus.to_string(),
        "-m",
        &args.memory.to_string(),
    ])
    .arg("-kernel")
    .arg(kernel.bzimage())
    .args(["-append", &append])
    .arg("-serial")
    .arg(format!("file:{}", dir.join("console.log").display()))
    .args([
        "-fsdev",
        "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
    ])
    .args(["-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root"])
    .arg("-fsdev")
    .arg(format!(
        "local,id=run,path={},security_model=none",
        dir.display()
    ))
    .args(["-device", "virtio-9p-pci,fsdev=run,mount_tag=kchatrun"])
    .args(["-device", "virtio-serial-pci"])
    .args(["-chardev", "stdio,id=hvc0,signal=off"])
    .args(["-device", "virtconsole,chardev=hvc0"]);
    if let Some(link) = args.link {
        qemu.arg("-netdev")
            .arg(format!(
                "socket,id=link,udp=127.0.0.1:{},localaddr=127.0.0.1:{}",
                link.peer_port, link.local_port
            ))
            .arg("-device")
            .arg(format!(
                "virtio-net-pci,netdev=link,mac=52:54:00:77:00:{:02x}",
                link.mac
            ));
    }

    let started = Instant::now();
    let timeout = Duration::from_secs(args.timeout);
    let interactive = script.is_none();
    if interactive {
        qemu.stdin(Stdio::inherit()).stdout(Stdio::inherit());
    } else {
        qemu.stdin(Stdio::null()).stdout(Stdio::piped());
    }
    let mut child = qemu
        .spawn()
        .with_context(|| format!("could not start `{}`", show(&qemu)))?;
    let reader = child.stdout.take().map(|stdout| {
        let log = dir.join("output.log");
        thread::spawn(move || copy_output(stdout, &log, echo))
    });

    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if !interactive && started.elapsed() > timeout {
            timed_out = true;
            eprintln!(
                "xtask vm: guest still running after {}s: killing it",
                args.timeout
            );
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let output = match reader {
        Some(handle) => handle.join().unwrap_or_default(),
        None => String::new(),
    };
    if interactive {
        // QEMU leaves the terminal as the guest set it.
        let _ = Command::new("stty").arg("sane").status();
    }

    let read = |name: &str| fs::read_to_string(dir.join(name)).unwrap_or_default();
    let exit_status = read("exit-status").trim().parse().ok();
    let mut findings = Vec::new();
    for log in ["console.log", "dmesg.log"] {
        findings.extend(logcheck::scan(log, &read(log)));
    }
    findings.extend(logcheck::scan_kmemleak(
        "kmemleak.log",
        &read("kmemleak.log"),
    ));
    // The console and dmesg carry the same kernel lines; report each once.
    dedup_by_line(&mut findings);
    Ok(VmRun {
        dir,
        exit_status,
        output,
        findings,
        timed_out,
        elapsed: started.elapsed(),
    })
}

/// The two guests' addresses on their link (eth0, a /24).
pub const PAIR_ADDRESSES: [&str; 2] = ["10.77.0.1", "10.77.0.2"];

/// Boots two guests joined by a link, each running its script (bash, from
/// the checkout's root) once its end of the link is up; the first's output
/// is shown as it comes. Returns both runs once both have ended. (Two
/// guests share the host's cores; each keeps 2 vCPUs so SMP races stay
/// possible on each side.) `tsc_reliable` as in [`VmArgs`]: for
/// measurements, which must not change clocks mid-run.
pub fn run_pair(
    kernel: &Kernel,
    script_a: &str,
    script_b: &str,
    timeout: Duration,
    tsc_reliable: bool,
) -> Result<(VmRun, VmRun)> {
    let (port_a, port_b) = (free_udp_port()?, free_udp_port()?);
    let net = |address: &str| {
        format!("ip link set lo up && ip addr add {address}/24 dev eth0 && ip link set eth0 up && ")
    };
    let guest = |port: u16, peer: u16, mac: u8| VmArgs {
        link: Some(Link {
            local_port: port,
            peer_port: peer,
            mac,
        }),
        tsc_reliable,
        ..VmArgs::scripted(timeout)
    };
    let (args_a, args_b) = (guest(port_a, port_b, 1), guest(port_b, port_a, 2));
    let script_a = format!("{}{script_a}", net(PAIR_ADDRESSES[0]));
    let script_b = format!("{}{script_b}", net(PAIR_ADDRESSES[1]));
    let (run_a, run_b) = thread::scope(|scope| {
        let other = scope.spawn(|| run(kernel, &args_b, Some(&script_b), false));
        let run_a = run(kernel, &args_a, Some(&script_a), true);
        let run_b = other
            .join()
            .map_err(|_| anyhow::anyhow!("the second guest's runner panicked"));
        (run_a, run_b)
    });
    Ok((run_a?, run_b??))
}

/// A UDP port of the loopback free now (the kernel picks it; QEMU binds it
/// a moment later).
fn free_udp_port() -> Result<u16> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(socket.local_addr()?.port())
}

fn dedup_by_line(findings: &mut Vec<Finding>) {
    let mut seen = std::collections::HashSet::new();
    findings.retain(|f| seen.insert(f.line.clone()));
}

fn copy_output(mut stdout: impl Read, log: &Path, echo: bool) -> String {
    let mut file = fs::File::create(log).ok();
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stdout.read(&mut buf) {
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        all.extend_from_slice(chunk);
        if let Some(file) = file.as_mut() {
            let _ = file.write_all(chunk);
        }
        if echo {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(chunk);
            let _ = out.flush();
        }
    }
    // The virtio console turns "\n" into "\r\n".
    String::from_utf8_lossy(&all).replace("\r\n", "\n")
}

fn new_run_dir() -> Result<PathBuf> {
    let base = paths::target().join("vm");
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // Two guests may start in the same millisecond (the two-node tests).
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = base.join(format!("run-{stamp}-{}-{run}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let last = base.join("last");
    let _ = fs::remove_file(&last);
    let _ = std::os::unix::fs::symlink(&dir, &last);
    Ok(dir)
}
