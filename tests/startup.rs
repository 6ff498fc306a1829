//! Starting under traffic: clients that Allocate from before the server starts keep their
//! allocation on the shard the kernel hashes them to. Every shard's SO_REUSEPORT members
//! are bound before any shard answers; were one shard to answer while the others were still
//! joining, their joining would re-hash some clients away from the shard holding their
//! allocation (437 on the next request, `no_allocation` counted).

mod common;
use common::{free_listen_port, free_port_block, loopback_config, round_trip, EchoPeer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uturn::client::Client;
use uturn::config::Backend;

const CLIENTS: usize = 64;
const SHARDS: usize = 4;

/// `CLIENTS` clients, each on its own thread, retrying Allocate against `server` with a
/// short per-attempt timeout until one succeeds or `deadline`; each thread returns its
/// client once allocated, or `None` if `quit` was set first.
fn allocating_clients(
    server: SocketAddr,
    deadline: Instant,
    quit: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Option<Client>>> {
    (0..CLIENTS)
        .map(|_| {
            let quit = quit.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(server, "alice", "secret").unwrap();
                c.set_timeout(Duration::from_millis(20));
                while Instant::now() < deadline && !quit.load(Ordering::Relaxed) {
                    if c.allocate(Some(600)).is_ok() {
                        return Some(c);
                    }
                }
                None
            })
        })
        .collect()
}

#[test]
fn clients_allocating_while_the_io_uring_server_starts_keep_relaying() {
    allocating_while_starting(Backend::Auto);
}

#[test]
fn clients_allocating_while_the_portable_server_starts_keep_relaying() {
    allocating_while_starting(Backend::Portable);
}

fn allocating_while_starting(backend: Backend) {
    let peer = EchoPeer::start(true);
    let (min, max) = free_port_block(CLIENTS as u16 * 2);
    for _attempt in 0..10 {
        let mut config = loopback_config(SHARDS, |c| c.backend = backend);
        config.listening_port = free_listen_port();
        (config.min_port, config.max_port) = (min, max);
        let server = SocketAddr::from(([127, 0, 0, 1], config.listening_port));
        let quit = Arc::new(AtomicBool::new(false));
        let clients = allocating_clients(server, Instant::now() + Duration::from_secs(60), &quit);
        let running = match uturn::shard::start(&config, uturn::observer_from_config(&config), None)
        {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                quit.store(true, Ordering::Relaxed);
                clients.into_iter().for_each(|t| drop(t.join()));
                continue;
            }
            Err(e) => panic!("start: {e}"),
        };
        assert_eq!(running.shard_count(), SHARDS);
        let mut clients: Vec<Client> = clients
            .into_iter()
            .map(|t| t.join().unwrap().expect("a client never got an allocation"))
            .collect();
        let mut refused = Vec::new();
        let mut lost = 0;
        for (i, c) in clients.iter_mut().enumerate() {
            c.set_timeout(Duration::from_secs(2));
            match c.channel_bind(0x4000, peer.addr) {
                Ok(()) => {
                    if !round_trip(c, 0x4000, i as u64, Duration::from_secs(5)) {
                        lost += 1;
                    }
                }
                Err(e) => refused.push(format!("{e:?}")),
            }
        }
        let reports = running.stop();
        let no_allocation = common::sum(&reports, |c| c.no_allocation);
        assert!(
            refused.is_empty() && no_allocation == 0,
            "{} of {CLIENTS} clients lost their allocation to a re-hash (first: {:?}); \
             no_allocation counted: {no_allocation}",
            refused.len(),
            refused.first()
        );
        assert_eq!(
            lost, 0,
            "round trips lost through allocations made at startup"
        );
        return;
    }
    panic!("no free listening port");
}
