//! The forwarding path allocates nothing: a counting global allocator watches 100,000
//! ChannelData packets (50,000 each way) relayed through a real server on loopback, after a
//! warm-up, for each backend. This binary holds a single test so that no other test's
//! allocations are counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use uturn::client::Client;
use uturn::config::Backend;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const PACKETS_EACH_WAY: usize = 50_000;
const WARM_UP: usize = 2_000;
const WINDOW: usize = 16;

fn relay(backend: Backend) -> u64 {
    let mut config = common::loopback_config(1, |c| c.backend = backend);
    config.listening_port = common::free_listen_port();
    (config.min_port, config.max_port) = common::free_port_block(20);
    let running =
        uturn::shard::start(&config, uturn::observer_from_config(&config), None).expect("start");
    let server = running.local_addrs()[0];
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut client = Client::connect(server, "alice", "secret").unwrap();
    let relayed = client.allocate(None).unwrap();
    client
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .unwrap();
    let socket = client.socket().try_clone().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    let mut channel_data = [0x5au8; 4 + 160];
    channel_data[..4].copy_from_slice(&[0x40, 0x00, 0, 160]);
    let payload = [0x5au8; 160];
    let mut buf = [0u8; 2048];
    // Windows of 16 packets each way, so the shard sees batches as under real load.
    let mut round_trip = |count: usize| {
        for _ in 0..count / WINDOW {
            for _ in 0..WINDOW {
                socket.send_to(&channel_data, server).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
                assert_eq!((n, from), (160, relayed));
            }
            for _ in 0..WINDOW {
                peer.send_to(&payload, relayed).unwrap();
            }
            for _ in 0..WINDOW {
                let (n, _) = socket.recv_from(&mut buf).expect("client receives");
                assert_eq!(&buf[..n], &channel_data[..]);
            }
        }
    };
    round_trip(WARM_UP);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    round_trip(PACKETS_EACH_WAY);
    let after = ALLOCATIONS.load(Ordering::SeqCst);
    running.stop();
    after - before
}

#[test]
fn forwarding_allocates_nothing_on_either_backend() {
    let uring = relay(Backend::IoUring);
    let portable = relay(Backend::Portable);
    assert_eq!(
        (uring, portable),
        (0, 0),
        "heap allocations while relaying {} ChannelData packets (io_uring, portable)",
        2 * PACKETS_EACH_WAY
    );
}
