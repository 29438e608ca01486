//! The guest kernel log check: any sign that the kernel found a bug fails a
//! VM run, whatever the command in the guest returned.

/// Substrings of kernel log lines that mean the kernel caught a problem.
/// Each is how the kernel starts the report it names.
const PATTERNS: &[&str] = &[
    "WARNING:",                  // WARN(), lockdep's reports, refcount misuse
    "BUG:",                      // BUG(), KASAN, sleeping in atomic context, bad page
    "Oops",                      // any oops
    "general protection fault",  // GPF before the oops line
    "Kernel panic",              // panic
    "Call Trace:",               // any stack dump, whatever printed it
    "UBSAN:",                    // undefined behaviour sanitizer
    "INFO: task ",               // hung task detector
    "rcu: INFO:",                // RCU stall
    "soft lockup",               // soft lockup detector
    "possible circular locking", // lockdep (also under WARNING:)
    "inconsistent lock state",   // lockdep
    "turning off the locking correctness validator", // lockdep gave up
    "unreferenced object",       // kmemleak
    "rust_panic",                // a Rust panic in the kernel
];

/// A line of the log that matched, with its line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub source: String,
    pub line_no: usize,
    pub line: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line_no, self.line)
    }
}

/// Scans one log; `source` names it in the findings.
pub fn scan(source: &str, text: &str) -> Vec<Finding> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| PATTERNS.iter().any(|pattern| line.contains(pattern)))
        .map(|(index, line)| Finding {
            source: source.to_owned(),
            line_no: index + 1,
            line: line.trim_end().to_owned(),
        })
        .collect()
}

/// Scans kmemleak's report, leaving out objects the kernel allocated while
/// booting (`start_kernel` in the allocation's backtrace), before any
/// module or user task existed: the kernel's own, not kchat's. (7.3 leaks
/// its first rootfs mount context once systemd takes over, 8 bytes.)
pub fn scan_kmemleak(source: &str, text: &str) -> Vec<Finding> {
    let lines: Vec<&str> = text.lines().collect();
    let mut findings = Vec::new();
    let mut start = 0;
    while start < lines.len() {
        let end = (start + 1..lines.len())
            .find(|&i| lines[i].starts_with("unreferenced object"))
            .unwrap_or(lines.len());
        let block = &lines[start..end];
        let at_boot = block.iter().any(|line| {
            let frame = line.trim_start();
            frame.starts_with("start_kernel+") || frame.starts_with("start_kernel ")
        });
        if !at_boot {
            findings.extend(
                scan(source, &block.join("\n"))
                    .into_iter()
                    .map(|f| Finding {
                        line_no: f.line_no + start,
                        ..f
                    }),
            );
        }
        start = end;
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_boot_has_no_findings() {
        let log = "[    0.000000] Linux version 6.12.117\n\
                   [    1.234567] kchat: loaded, ABI version 1\n\
                   [    2.000000] ACPI: PM: Preparing to enter system sleep state S5\n";
        assert_eq!(scan("dmesg", log), vec![]);
    }

    #[test]
    fn each_kind_of_report_is_found() {
        for report in [
            "[    3.1] WARNING: CPU: 1 PID: 80 at kmod/fixtures/kchat_fixture_warn.c:11",
            "[    3.1] BUG: sleeping function called from invalid context at kernel/time/sleep_timeout.c:302",
            "[    3.1] BUG: KASAN: slab-use-after-free in kchat_read+0x1/0x2",
            "[    3.1] WARNING: possible circular locking dependency detected",
            "[    3.1] Oops: general protection fault, probably for non-canonical address",
            "unreferenced object 0xffff888004a3c000 (size 4096):",
            "[    3.1] INFO: task cat:91 blocked for more than 60 seconds.",
            "[    3.1] rust_panic: attempt to add with overflow",
        ] {
            let found = scan("log", report);
            assert_eq!(found.len(), 1, "{report}");
            assert_eq!(found[0].line_no, 1);
        }
    }

    #[test]
    fn kmemleak_leaves_out_only_what_the_kernel_allocated_while_booting() {
        let report = "unreferenced object 0xff11000000164198 (size 8):\n\
                      \x20 comm \"swapper/0\", pid 0, jiffies 4294892318\n\
                      \x20 backtrace (crc bea23b04):\n\
                      \x20   ramfs_init_fs_context+0x1a/0x40\n\
                      \x20   init_mount_tree+0x49/0x240\n\
                      \x20   start_kernel+0x273/0x300\n\
                      unreferenced object 0xff11000004727000 (size 4096):\n\
                      \x20 comm \"insmod\", pid 63, jiffies 4294893000\n\
                      \x20 backtrace (crc 1):\n\
                      \x20   __kmalloc_noprof+0x1/0x2\n\
                      \x20   init_module+0x7/0x1000 [kchat_fixture_leak]\n\
                      unreferenced object 0xff11000004728000 (size 64):\n\
                      \x20 comm \"swapper/1\", pid 0, jiffies 4294899000\n\
                      \x20 backtrace (crc 2):\n\
                      \x20   wake_later+0x1/0x2 [kchat]\n";
        let found = scan_kmemleak("kmemleak.log", report);
        let lines: Vec<usize> = found.iter().map(|f| f.line_no).collect();
        assert_eq!(lines, vec![7, 12], "{found:#?}");
    }

    #[test]
    fn findings_name_their_line() {
        let found = scan("console", "ok\nok\n[ 1.0] Call Trace:\n");
        assert_eq!(found[0].to_string(), "console:3: [ 1.0] Call Trace:");
    }
}
