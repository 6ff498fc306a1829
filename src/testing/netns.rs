//! Root, commands and network namespaces for the tests that need them. A test that cannot
//! run for want of root fails saying NOT RUN; it is never reported as passed.

use std::process::Command;

/// Fails the calling test unless the process runs as root; `needs` says for what.
pub fn require_root(needs: &str) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1));
    assert_eq!(euid, Some("0"), "NOT RUN: this test needs root ({needs})");
}

/// Runs `cmd args…` (iproute2's `ip`, `tc`) and fails the test with its stderr unless it
/// succeeds.
pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (this test needs iproute2)"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `test` on a thread of its own in a fresh, unnamed network namespace with its
/// loopback up (only that thread and the commands and threads it starts are in it; the
/// kernel deletes it when they and their sockets are gone, also when the test fails).
/// Fails loudly without root.
pub fn in_own_netns<T: Send + 'static>(test: impl FnOnce() -> T + Send + 'static) -> T {
    require_root("a network namespace of its own");
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) (this test needs root)");
        run("ip", &["link", "set", "lo", "up"]);
        test()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}
