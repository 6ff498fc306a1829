//! Embedding uturn with an observer that authenticates asynchronously, the way an
//! application backed by an HTTP auth service would: `authenticate` hands the request's
//! ticket to a worker thread and returns `Pending`; the worker answers 50 ms later and the
//! shard, never blocked meanwhile, finishes the Allocate.
//!
//! Run: `cargo run --example async_observer` (serves on 127.0.0.1:3479, allocates once with
//! its own client to show the round trip, then keeps serving until Ctrl-C; `--once` stops
//! after the demonstration).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uturn::auth::{AuthDecision, AuthRequest, Observer, Ticket};
use uturn::config::Config;
use uturn::stun::long_term_key;
use uturn::turn::{AllocationInfo, Traffic};

/// What the application's backend would be asked: may `username` use the relay, and
/// with which password?
struct Lookup {
    username: String,
    realm: String,
    ticket: Ticket,
}

struct HttpBackedObserver {
    lookups: Mutex<mpsc::Sender<Lookup>>,
}

impl HttpBackedObserver {
    fn start() -> Arc<HttpBackedObserver> {
        let (tx, rx) = mpsc::channel::<Lookup>();
        std::thread::spawn(move || {
            for lookup in rx {
                // Stands in for an HTTP round trip to the application's user service.
                std::thread::sleep(Duration::from_millis(50));
                let decision = match lookup.username.as_str() {
                    "alice" => {
                        AuthDecision::Authorized(long_term_key("alice", &lookup.realm, "secret"))
                    }
                    "over-quota" => AuthDecision::QuotaReached,
                    _ => AuthDecision::NotAuthorized,
                };
                lookup.ticket.resolve(decision);
            }
        });
        Arc::new(HttpBackedObserver {
            lookups: Mutex::new(tx),
        })
    }
}

impl Observer for HttpBackedObserver {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        let Some(ticket) = request.defer() else {
            // The shard cannot park more requests right now: refuse rather than block.
            return AuthDecision::NotAuthorized;
        };
        let lookup = Lookup {
            username: request.username.to_owned(),
            realm: request.realm.to_owned(),
            ticket,
        };
        match self.lookups.lock().map(|tx| tx.send(lookup)) {
            Ok(Ok(())) => AuthDecision::Pending,
            _ => AuthDecision::NotAuthorized,
        }
    }

    fn on_allocation_created(&self, info: &AllocationInfo) {
        println!(
            "created: {} for {} from {}",
            info.relay, info.username, info.five_tuple.client
        );
    }

    fn on_allocation_removed(&self, info: &AllocationInfo, totals: &Traffic) {
        println!(
            "removed: {} ({} packets from the client, {} to it)",
            info.relay, totals.client.rcvp, totals.client.sentp
        );
    }
}

fn main() {
    let once = std::env::args().any(|a| a == "--once");
    let config = Config {
        listening_ips: vec!["127.0.0.1".parse().unwrap()],
        listening_port: 3479,
        relay_ips: vec!["127.0.0.1".parse().unwrap()],
        realm: "example.org".into(),
        min_port: 49152,
        max_port: 49999,
        ..Config::default()
    };
    let running = match uturn::shard::start(&config, HttpBackedObserver::start(), None) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start: {e}");
            std::process::exit(1);
        }
    };
    let server = running.local_addrs()[0];
    println!("serving on {server} ({} shards)", running.shard_count());

    let mut client =
        uturn::client::Client::connect(server, "alice", "secret").expect("client socket");
    let t = Instant::now();
    match client.allocate(None) {
        Ok(relayed) => println!("alice allocated {relayed} in {:?}", t.elapsed()),
        Err(e) => println!("alice: {e}"),
    }
    let mut mallory =
        uturn::client::Client::connect(server, "mallory", "guess").expect("client socket");
    println!("mallory: {}", mallory.allocate(None).unwrap_err());
    let _ = client.refresh(0);

    if !once {
        println!("Ctrl-C to stop");
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
        ])
        .expect("signal handler");
        signals.forever().next();
    }
    running.stop();
}
