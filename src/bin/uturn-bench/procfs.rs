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
