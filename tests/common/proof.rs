//! Helpers of the figure-producing proofs: they print `| test | figure | value |` rows for
//! SECURITY.md, take turns on the machine, and check the resources they need.

use std::sync::{Mutex, MutexGuard};

/// The flood and expiry tests each load both cores; they take turns so that each proves
/// its point on a machine that is not also running the others.
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn figure(test: &str, name: &str, value: impl std::fmt::Display) {
    println!("| {test} | {name} | {value} |");
}

/// Raises the soft open file limit to the hard limit; fails clearly if that is not enough.
pub fn need_files(needed: u64) {
    let got = rlimit::increase_nofile_limit(u64::MAX).expect("raise RLIMIT_NOFILE");
    assert!(
        got >= needed,
        "this test needs {needed} open files but RLIMIT_NOFILE allows {got}: raise the hard limit (ulimit -Hn {needed}, or LimitNOFILE= in a systemd unit) and run again"
    );
}

pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    super::number_after(&status, "VmRSS:").expect("VmRSS in /proc/<pid>/status")
}
