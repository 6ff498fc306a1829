//! Echo peers: sockets that send every datagram back where it came from, in batches
//! (`recvmmsg`/`sendmmsg`), so they stay far from being the load's bottleneck; optionally in
//! another network namespace than the clients (`--peer-netns`), so that even the direct
//! baseline crosses a link.

use crate::load::pin;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Echo peers: sockets that send every datagram back where it came from.
pub struct Peers {
    pub addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peers {
    /// `count` echo sockets on `ip` served by one thread pinned to `core`; with `netns`, that
    /// thread enters the network namespace /var/run/netns/NETNS first (it alone: the
    /// process's other threads stay where they are), so the peers' sockets live there.
    pub fn start(
        ip: IpAddr,
        count: usize,
        core: Option<usize>,
        netns: Option<&str>,
    ) -> io::Result<Peers> {
        let netns = netns.map(|n| Path::new("/var/run/netns").join(n));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready, up) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-peers".into())
            .spawn(move || {
                pin(core);
                let sockets = match open(ip, count, netns.as_deref()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let addrs = sockets.iter().map(|s| s.local_addr()).collect();
                if ready.send(addrs).is_err() {
                    return;
                }
                echo(&sockets, &flag);
            })?;
        let mut peers = Peers {
            addrs: Vec::new(),
            stop,
            thread: Some(thread),
        };
        // On failure, dropping `peers` stops and joins the thread.
        peers.addrs = up
            .recv()
            .map_err(|_| io::Error::other("the echo thread ended before its sockets were up"))??;
        Ok(peers)
    }
}

/// Binds `count` non-blocking sockets on `ip`, in `netns` when given.
fn open(ip: IpAddr, count: usize, netns: Option<&Path>) -> io::Result<Vec<UdpSocket>> {
    if let Some(path) = netns {
        let ns = File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("setns {}: {e}", path.display())))?;
    }
    (0..count.max(1))
        .map(|_| {
            let s = bind(SocketAddr::new(ip, 0))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect()
}

/// Echoes on `sockets` until `stop` is set.
fn echo(sockets: &[UdpSocket], stop: &AtomicBool) {
    let mut poll = Poll::new().expect("epoll");
    for (i, s) in sockets.iter().enumerate() {
        poll.registry()
            .register(&mut SourceFd(&s.as_raw_fd()), Token(i), Interest::READABLE)
            .expect("register");
    }
    let mut events = Events::with_capacity(256);
    let mut echo = Echo::new();
    while !stop.load(Ordering::Relaxed) {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
        for e in events.iter() {
            let fd = sockets[e.token().0].as_raw_fd();
            while echo.batch(fd) > 0 {}
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Echoes datagrams in batches: one `recvmmsg` and one `sendmmsg` for up to `ECHO_BATCH`.
const ECHO_BATCH: usize = 64;
const ECHO_BUF: usize = 2048;

struct Echo {
    recv: MultiHeaders<SockaddrStorage>,
    send: MultiHeaders<SockaddrStorage>,
    bufs: Vec<[u8; ECHO_BUF]>,
    lens: Vec<usize>,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl Echo {
    fn new() -> Echo {
        Echo {
            recv: MultiHeaders::preallocate(ECHO_BATCH, None),
            send: MultiHeaders::preallocate(ECHO_BATCH, None),
            bufs: vec![[0u8; ECHO_BUF]; ECHO_BATCH],
            lens: Vec::with_capacity(ECHO_BATCH),
            addrs: Vec::with_capacity(ECHO_BATCH),
        }
    }

    /// Receives what is queued on `fd` (up to a batch) and sends each datagram back to
    /// its source; returns how many it received.
    fn batch(&mut self, fd: std::os::fd::RawFd) -> usize {
        self.lens.clear();
        self.addrs.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                .bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let Ok(got) = recvmmsg(
                fd,
                &mut self.recv,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) else {
                return 0;
            };
            for m in got {
                self.lens.push(m.bytes.min(ECHO_BUF));
                self.addrs.push(m.address);
            }
        }
        let n = self.lens.len();
        if n > 0 {
            let iovs: Vec<[IoSlice<'_>; 1]> = self
                .bufs
                .iter()
                .zip(&self.lens)
                .map(|(b, &len)| [IoSlice::new(&b[..len])])
                .collect();
            let no_cmsgs: [ControlMessage<'_>; 0] = [];
            let _ = sendmmsg(
                fd,
                &mut self.send,
                iovs.iter(),
                &self.addrs,
                no_cmsgs,
                MsgFlags::MSG_DONTWAIT,
            );
        }
        n
    }
}

pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(1 << 20);
    let _ = s.set_send_buffer_size(1 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}
