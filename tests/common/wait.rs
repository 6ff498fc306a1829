//! Waiting on conditions with a deadline, never on a guessed duration: a loaded machine
//! makes every fixed sleep too short sometimes, and every generous one too slow always.

use std::fmt::Debug;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How often conditions are polled: short against test durations, long against a syscall.
const POLL: Duration = Duration::from_millis(5);

/// `now + d`, for `wait_until(within(…), …)`.
pub fn within(d: Duration) -> Instant {
    Instant::now() + d
}

/// Polls `cond` until it holds (true) or `deadline` passes (false, after one last try).
pub fn wait_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] that panics naming `what` when the deadline passes.
pub fn wait_for(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(
        wait_until(within(limit), cond),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// Waits until `sample` stops changing: the same value for `still` in a row (the system is
/// quiescent: nothing more is arriving or being counted); returns that value. Panics after
/// `limit`. `still` must exceed the longest gap the system can pause for while busy.
pub fn wait_quiescent<T: PartialEq + Debug>(
    what: &str,
    limit: Duration,
    still: Duration,
    mut sample: impl FnMut() -> T,
) -> T {
    let deadline = within(limit);
    let mut last = sample();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(POLL);
        let now = sample();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= still {
            return last;
        }
        assert!(
            Instant::now() < deadline,
            "{what} still changing after {limit:?} (last: {last:?})"
        );
    }
}

/// Whether some process has bound UDP `addr` (binding it here fails with AddrInUse).
pub fn udp_bound(addr: SocketAddr) -> bool {
    matches!(UdpSocket::bind(addr), Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
}

/// Whether a UDP echo server answers on `addr`.
pub fn echoes(addr: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = [0u8; 64];
    sock.send_to(b"ready?", addr).is_ok()
        && matches!(sock.recv_from(&mut buf), Ok((6, from)) if from == addr && &buf[..6] == b"ready?")
}
