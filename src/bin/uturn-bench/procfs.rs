//! CPU and memory readings from /proc: a process's utime+stime and RSS, the whole machine's
//! busy time (all cores, from /proc/stat), which counts the kernel's delivery work wherever
//! it ran, and the CPU a run can account to its own processes.

/// utime + stime of a process, in seconds (USER_HZ is 100 on Linux).
pub fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub fn process_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy time of the whole machine (all cores) in seconds: every /proc/stat `cpu` field
/// except idle and iowait (guest time is already inside user).
pub fn machine_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy: u64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(busy as f64 / 100.0)
}

/// The kernel's softirq threads (`ksoftirqd/N`) and threaded NAPI pollers (`napi/DEV-ID`):
/// network receive work the kernel defers from the context that raised it, or that a
/// device with threaded NAPI always runs in its own thread, runs there.
pub fn softirq_threads() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/") || c.starts_with("napi/"))
        })
        .collect()
}

/// CPU seconds of `pids` together (utime+stime; a process's covers all its threads); `None`
/// if one of them cannot be read.
///
/// With tick-based accounting (no IRQ time accounting), softirq work, such as a veth's
/// receive path and an XDP program run from it, is charged to the task it interrupted:
/// the sender on a veth, or a softirq thread. So the load generator's process, the server's
/// and the softirq threads together hold a run's whole cost, and none of the unrelated
/// processes that /proc/stat's machine total also counts.
pub fn processes_cpu(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| process_cpu(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::softirq_threads;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn run(args: &[&str]) -> bool {
        Command::new(args[0])
            .args(&args[1..])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Deletes the namespace, and with it the veth, whatever the test's outcome.
    struct Netns(String);

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// The threads of `/proc` whose name starts with `prefix`.
    fn threads_named(prefix: &str) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.starts_with(prefix))
            })
            .collect()
    }

    /// A veth with threaded NAPI receives in a kernel thread of its own (`napi/DEV-ID`):
    /// that work belongs to the run as much as ksoftirqd's does.
    #[test]
    fn napi_threads_are_counted_with_the_softirq_threads() {
        let ns = Netns(format!("uturn-procfs-{}", std::process::id()));
        if !run(&["ip", "netns", "add", &ns.0]) {
            eprintln!("NOT RUN: cannot create a network namespace (needs root and iproute2)");
            return;
        }
        let dev = format!("np{}", std::process::id() % 100_000);
        let sysfs = format!("echo 1 > /sys/class/net/{dev}/threaded");
        assert!(run(&[
            "ip", "-n", &ns.0, "link", "add", &dev, "type", "veth", "peer", "name", "np-peer"
        ]));
        assert!(run(&["ip", "-n", &ns.0, "link", "set", &dev, "up"]));
        assert!(run(&["ip", "-n", &ns.0, "link", "set", "np-peer", "up"]));
        // GRO gives the veth NAPI; threaded NAPI then gives it a thread.
        if !run(&[
            "ip", "netns", "exec", &ns.0, "ethtool", "-K", &dev, "gro", "on",
        ]) || !run(&["ip", "netns", "exec", &ns.0, "sh", "-c", &sysfs])
        {
            eprintln!("NOT RUN: no ethtool, or this kernel has no threaded NAPI on veth");
            return;
        }
        let prefix = format!("napi/{dev}-");
        let deadline = Instant::now() + Duration::from_secs(10);
        let napi = loop {
            let found = threads_named(&prefix);
            if !found.is_empty() {
                break found;
            }
            assert!(Instant::now() < deadline, "no {prefix}* thread appeared");
            std::thread::sleep(Duration::from_millis(20));
        };
        let counted = softirq_threads();
        for pid in napi {
            assert!(
                counted.contains(&pid),
                "{prefix}* ({pid}) not counted: {counted:?}"
            );
        }
    }
}
