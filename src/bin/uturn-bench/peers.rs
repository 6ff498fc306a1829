//! Echo peers: sockets that send every datagram back where it came from, in batches
//! (`recvmmsg`/`sendmmsg`), so they stay far from being the load's bottleneck.

use crate::load::pin;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Echo peers: sockets that send every datagram back where it came from.
pub struct Peers {
    pub addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peers {
    pub fn start(ip: IpAddr, count: usize, core: Option<usize>) -> io::Result<Peers> {
        let sockets: Vec<UdpSocket> = (0..count.max(1))
            .map(|_| {
                let s = bind(SocketAddr::new(ip, 0))?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .collect::<io::Result<_>>()?;
        let addrs = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<io::Result<_>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-peers".into())
            .spawn(move || {
                pin(core);
                let mut poll = Poll::new().expect("epoll");
                for (i, s) in sockets.iter().enumerate() {
                    poll.registry()
                        .register(&mut SourceFd(&s.as_raw_fd()), Token(i), Interest::READABLE)
                        .expect("register");
                }
                let mut events = Events::with_capacity(256);
                let mut echo = Echo::new();
                while !flag.load(Ordering::Relaxed) {
                    let _ = poll.poll(&mut events, Some(Duration::from_millis(50)));
                    for e in events.iter() {
                        let fd = sockets[e.token().0].as_raw_fd();
                        while echo.batch(fd) > 0 {}
                    }
                }
            })?;
        Ok(Peers {
            addrs,
            stop,
            thread: Some(thread),
        })
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
                iovs.iter_mut().map(|v| &*v),
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
