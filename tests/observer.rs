//! The observer API against a real server on loopback: asynchronous authentication that
//! never stalls the shard, 401 and 486 answers, quotas across shards, TURN REST API
//! credentials (with coturn's `turnutils_uclient -W`), bandwidth limits, and lifecycle
//! callbacks exactly once per allocation.

mod common;
use common::*;
use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use uturn::auth::{AuthDecision, AuthRequest, Observer, RestApiSecret, StaticUsers};
use uturn::client::Client;
use uturn::config::Config;
use uturn::shard::Running;
use uturn::stun::long_term_key;
use uturn::turn::{AllocationInfo, Traffic};

fn config(shards: usize, tweak: impl FnOnce(&mut Config)) -> Config {
    loopback_config(shards, tweak)
}

fn start(config: Config, observer: Arc<dyn Observer>) -> Running {
    start_in_process(&config, Some(observer), None, 200)
}

/// Users: alice answered at once; `slow` answered after 50 ms from another thread;
/// `full` over quota; everyone else unknown. Counts lifecycle callbacks per allocation.
struct TestObserver {
    users: StaticUsers,
    slow_tx: Mutex<mpsc::Sender<uturn::Ticket>>,
    created: Mutex<HashMap<u64, usize>>,
    removed: Mutex<HashMap<u64, (usize, Traffic)>>,
    asked: AtomicUsize,
}

impl TestObserver {
    fn new() -> Arc<TestObserver> {
        let mut users = StaticUsers::new();
        users.add("alice", "secret", "example.org");
        let (tx, rx) = mpsc::channel::<uturn::Ticket>();
        std::thread::spawn(move || {
            for ticket in rx {
                // The observer under test is slow on purpose: a decision 50 ms later.
                std::thread::sleep(Duration::from_millis(50));
                ticket.resolve(AuthDecision::Authorized(long_term_key(
                    "slow",
                    "example.org",
                    "later",
                )));
            }
        });
        Arc::new(TestObserver {
            users,
            slow_tx: Mutex::new(tx),
            created: Mutex::default(),
            removed: Mutex::default(),
            asked: AtomicUsize::new(0),
        })
    }
}

impl Observer for TestObserver {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        self.asked.fetch_add(1, Ordering::SeqCst);
        match request.username {
            "slow" => match request.defer() {
                Some(ticket) => {
                    self.slow_tx.lock().unwrap().send(ticket).unwrap();
                    AuthDecision::Pending
                }
                None => AuthDecision::NotAuthorized,
            },
            "full" => AuthDecision::QuotaReached,
            _ => self.users.authenticate(request),
        }
    }

    fn on_allocation_created(&self, info: &AllocationInfo) {
        *self.created.lock().unwrap().entry(info.id).or_default() += 1;
    }

    fn on_allocation_removed(&self, info: &AllocationInfo, totals: &Traffic) {
        let mut removed = self.removed.lock().unwrap();
        let entry = removed.entry(info.id).or_default();
        entry.0 += 1;
        entry.1 = *totals;
    }
}

fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

#[test]
fn async_authentication_does_not_stall_the_shard() {
    let observer = TestObserver::new();
    let running = start(config(1, |_| {}), observer.clone());
    let server = running.local_addrs()[0];
    let peer = peer();
    let mut alice = Client::connect(server, "alice", "secret").unwrap();
    let relayed = alice.allocate(None).unwrap();
    alice
        .channel_bind(0x4000, peer.local_addr().unwrap())
        .unwrap();

    // Ten slow allocations in parallel, each answered 50 ms later on another thread.
    let slow: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(server, "slow", "later").unwrap();
                let t = Instant::now();
                let r = c.allocate(None);
                (r.map(|_| ()).map_err(|e| e.to_string()), t.elapsed())
            })
        })
        .collect();
    // Meanwhile alice's relaying goes on, round trip after round trip.
    let mut slow_trips = 0;
    let mut trips = 0;
    let socket = alice.socket().try_clone().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 256];
    let begin = Instant::now();
    while !slow.iter().all(|h| h.is_finished()) || trips < 20 {
        let t = Instant::now();
        alice.send_channel_data(0x4000, b"ping").unwrap();
        let (n, from) = peer.recv_from(&mut buf).expect("relayed while others wait");
        assert_eq!((&buf[..n], from), (&b"ping"[..], relayed));
        peer.send_to(b"pong", relayed).unwrap();
        let n = socket
            .recv(&mut buf)
            .expect("relayed back while others wait");
        assert_eq!(&buf[4..n], b"pong");
        // A shard blocked on an answer would hold a round trip for the observer's 50 ms.
        if t.elapsed() >= Duration::from_millis(50) {
            slow_trips += 1;
        }
        trips += 1;
        assert!(begin.elapsed() < Duration::from_secs(10));
    }
    for h in slow {
        let (result, took) = h.join().unwrap();
        assert_eq!(
            result,
            Ok(()),
            "the asynchronous answer lets the allocation through"
        );
        assert!(
            took >= Duration::from_millis(50),
            "answered after the observer's delay: {took:?}"
        );
    }
    assert!(trips >= 20, "{trips} round trips");
    assert!(
        slow_trips <= 2,
        "{slow_trips} of {trips} relay round trips waited 50 ms or more: the shard stalled"
    );
    drop(alice);
    running.stop();
}

#[test]
fn not_authorized_is_401_and_quota_reached_is_486() {
    let observer = TestObserver::new();
    let running = start(config(1, |_| {}), observer.clone());
    let server = running.local_addrs()[0];
    let mut mallory = Client::connect(server, "mallory", "guess").unwrap();
    assert_eq!(mallory.allocate(None).unwrap_err().code(), Some(401));
    let mut wrong = Client::connect(server, "alice", "wrong").unwrap();
    assert_eq!(wrong.allocate(None).unwrap_err().code(), Some(401));
    let mut full = Client::connect(server, "full", "whatever").unwrap();
    assert_eq!(full.allocate(None).unwrap_err().code(), Some(486));
    assert!(observer.created.lock().unwrap().is_empty());
    running.stop();
}

#[test]
fn uclient_gets_401_for_an_unknown_user() {
    let server = Uturn::start("io-uring", &["--allow-loopback-peers"]);
    let peer = Peer::start();
    let (_, out) = uclient(
        server.port,
        peer.port,
        &[
            "-m", "1", "-n", "5", "-l", "100", "-u", "mallory", "-w", "guess",
        ],
        Duration::from_secs(30),
    );
    assert!(out.contains("Cannot complete Allocation"), "{out}");
    let log = server.log_text();
    let refusals = log
        .lines()
        .filter(|l| l.contains("error response") && l.contains("code=401"))
        .count();
    // Each attempt: a challenge (no credentials) and a refusal (mallory is unknown).
    assert!(refusals >= 2, "{log}");
    assert!(!log.contains("code=486"));
}

#[test]
fn user_quota_holds_across_shards() {
    let observer = TestObserver::new();
    let running = start(config(2, |c| c.user_quota = 1), observer.clone());
    let server = running.local_addrs()[0];
    let mut first = Client::connect(server, "alice", "secret").unwrap();
    let relayed = first.allocate(None).unwrap();
    let slices = running.port_slices().to_vec();
    let home = slices
        .iter()
        .position(|(lo, hi)| (*lo..=*hi).contains(&relayed.port()))
        .unwrap();
    for _ in 0..16 {
        let mut other = Client::connect(server, "alice", "secret").unwrap();
        assert_eq!(other.allocate(None).unwrap_err().code(), Some(486));
    }
    // Once the first allocation is gone, the user may allocate again.
    first.refresh(0).unwrap();
    let mut again = Client::connect(server, "alice", "secret").unwrap();
    again.allocate(None).expect("quota released");
    let reports = running.stop();
    let refused_elsewhere: u64 = reports
        .iter()
        .filter(|r| r.index != home)
        .map(|r| r.counters.quota_refused)
        .sum();
    assert!(
        refused_elsewhere > 0,
        "some refusals came from the other shard: {reports:?}"
    );
}

#[test]
fn rest_api_credentials_with_uclient_and_expired_ones_refused() {
    let secret = "north-wind";
    let server = Uturn::start(
        "io-uring",
        &[
            "--allow-loopback-peers",
            "--use-auth-secret",
            "--static-auth-secret",
            secret,
        ],
    );
    let peer = Peer::start();
    let (code, out) = uclient(
        server.port,
        peer.port,
        &[
            "-m", "1", "-n", "50", "-l", "100", "-u", "bob", "-W", secret,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(100), "{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let valid = format!("{}:carol", now + 3600);
    let mut c = Client::connect(
        server.addr(),
        &valid,
        &RestApiSecret::password(secret, &valid),
    )
    .unwrap();
    c.allocate(None).expect("valid REST credentials");
    let expired = format!("{}:carol", now - 60);
    let mut c = Client::connect(
        server.addr(),
        &expired,
        &RestApiSecret::password(secret, &expired),
    )
    .unwrap();
    assert_eq!(c.allocate(None).unwrap_err().code(), Some(401));
    let forged = format!("{}:carol", now + 3600);
    let mut c = Client::connect(
        server.addr(),
        &forged,
        &RestApiSecret::password("other", &forged),
    )
    .unwrap();
    assert_eq!(c.allocate(None).unwrap_err().code(), Some(401));
}

#[test]
fn max_bps_holds_a_flood_to_the_limit() {
    const LIMIT: u64 = 200_000;
    let observer = TestObserver::new();
    let running = start(config(1, |c| c.max_bps = LIMIT), observer);
    let server = running.local_addrs()[0];
    let peer = peer();
    let peer_addr = peer.local_addr().unwrap();
    let mut client = Client::connect(server, "alice", "secret").unwrap();
    client.allocate(None).unwrap();
    client.channel_bind(0x4000, peer_addr).unwrap();
    let counted = std::thread::spawn(move || {
        peer.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let mut bytes = 0u64;
        while let Ok(n) = peer.recv(&mut buf) {
            bytes += n as u64 + 4; // the limit counts the ChannelData header too
        }
        bytes
    });
    let socket = client.socket().try_clone().unwrap();
    let mut datagram = vec![0u8; 4 + 996];
    datagram[..4].copy_from_slice(&[0x40, 0x00, 0x03, 0xe4]);
    let begin = Instant::now();
    let mut sent = 0u64;
    while begin.elapsed() < Duration::from_secs(5) {
        // About 4x the limit.
        for _ in 0..8 {
            socket.send_to(&datagram, server).unwrap();
            sent += datagram.len() as u64;
        }
        // Pacing of the offered load (a rate, not a wait for an event).
        std::thread::sleep(Duration::from_millis(10));
    }
    let relayed = counted.join().unwrap();
    let expected = LIMIT * 5;
    assert!(sent > 2 * expected, "the client must flood: sent {sent}");
    let ratio = relayed as f64 / expected as f64;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "relayed {relayed} bytes in 5 s, limit allows {expected} (ratio {ratio:.3})"
    );
    let reports = running.stop();
    assert!(reports[0].counters.rate_limited > 0);
}

#[test]
fn lifecycle_callbacks_fire_exactly_once() {
    let observer = TestObserver::new();
    let running = start(config(2, |_| {}), observer.clone());
    let server = running.local_addrs()[0];
    let peer = peer();
    let mut clients: Vec<Client> = (0..12)
        .map(|_| {
            let mut c = Client::connect(server, "alice", "secret").unwrap();
            c.allocate(None).unwrap();
            c.channel_bind(0x4000, peer.local_addr().unwrap()).unwrap();
            c.send_channel_data(0x4000, b"0123456789").unwrap();
            c
        })
        .collect();
    let mut buf = [0u8; 64];
    for _ in 0..12 {
        peer.recv_from(&mut buf).unwrap();
    }
    // Half deleted by the client, half at shutdown.
    for c in clients.iter_mut().take(6) {
        c.refresh(0).unwrap();
    }
    running.stop();
    let created = observer.created.lock().unwrap().clone();
    let removed = observer.removed.lock().unwrap().clone();
    assert_eq!(created.len(), 12);
    assert!(created.values().all(|&n| n == 1), "{created:?}");
    assert_eq!(
        removed.keys().collect::<std::collections::BTreeSet<_>>(),
        created.keys().collect()
    );
    for (id, (n, totals)) in removed {
        assert_eq!(n, 1, "allocation {id} removed {n} times");
        assert_eq!(
            (totals.client.rcvp, totals.client.rcvb),
            (1, 14),
            "allocation {id}: {totals:?}"
        );
        assert_eq!(
            (totals.peer.sentp, totals.peer.sentb),
            (1, 10),
            "allocation {id}: {totals:?}"
        );
    }
}
