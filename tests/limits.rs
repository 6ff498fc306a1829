//! Every resource limit answers with its documented error and its counter says so:
//! per-allocation permission and channel caps (in-process and from the command line), user
//! and total quotas, relay port exhaustion, the cap on parked asynchronous authentications.

mod common;
use common::*;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uturn::auth::{AuthDecision, AuthRequest, Observer, StaticUsers};
use uturn::client::Client;
use uturn::stun::long_term_key;

#[test]
fn permission_and_channel_caps_give_508() {
    let running = start_with_range(loopback_config(1, |_| {}), None, None, free_port_block(100));
    let server = running.local_addrs()[0];
    let mut a = Client::connect(server, "alice", "secret").unwrap();
    a.allocate(None).unwrap();
    let peer = |i: u16| SocketAddr::from(([127, 0, (i >> 8) as u8 + 1, i as u8], 9));
    for i in 0..32 {
        a.create_permission(&[peer(i)]).unwrap();
    }
    // Refreshing an existing permission at the cap is fine; a 33rd IP is not.
    a.create_permission(&[peer(0)]).unwrap();
    assert_eq!(
        a.create_permission(&[peer(32)]).unwrap_err().code(),
        Some(508)
    );
    // Nor can one request carry more than the cap.
    let mut b = Client::connect(server, "alice", "secret").unwrap();
    b.allocate(None).unwrap();
    let many: Vec<SocketAddr> = (100..133).map(peer).collect();
    assert_eq!(b.create_permission(&many).unwrap_err().code(), Some(508));

    let mut c = Client::connect(server, "alice", "secret").unwrap();
    c.allocate(None).unwrap();
    for i in 0..64u16 {
        c.channel_bind(0x4000 + i, SocketAddr::from(([127, 0, 0, 1], 10000 + i)))
            .unwrap();
    }
    c.channel_bind(0x4000, SocketAddr::from(([127, 0, 0, 1], 10000)))
        .unwrap();
    assert_eq!(
        c.channel_bind(0x4040, SocketAddr::from(([127, 0, 0, 1], 10064)))
            .unwrap_err()
            .code(),
        Some(508)
    );
    let reports = running.stop();
    assert_eq!(sum(&reports, |c| c.permissions_capped), 2);
    assert_eq!(sum(&reports, |c| c.channels_capped), 1);
    figure(
        "limits",
        "permissions per allocation (default)",
        "32; 33rd IP → 508, counter permissions_capped",
    );
    figure(
        "limits",
        "channels per allocation (default)",
        "64; 65th → 508, counter channels_capped",
    );
}

#[test]
fn per_allocation_caps_follow_the_command_line() {
    let mut server = Uturn::start(
        "auto",
        &[
            "--allow-loopback-peers",
            "--max-permissions-per-allocation",
            "2",
            "--max-channels-per-allocation",
            "3",
        ],
    );
    let mut a = Client::connect(server.addr(), "alice", "secret").unwrap();
    a.allocate(None).unwrap();
    a.create_permission(&[
        "127.0.0.2:1".parse().unwrap(),
        "127.0.0.3:1".parse().unwrap(),
    ])
    .unwrap();
    assert_eq!(
        a.create_permission(&["127.0.0.4:1".parse().unwrap()])
            .unwrap_err()
            .code(),
        Some(508)
    );
    let mut b = Client::connect(server.addr(), "alice", "secret").unwrap();
    b.allocate(None).unwrap();
    for i in 0..3 {
        b.channel_bind(0x4000 + i, SocketAddr::from(([127, 0, 0, 1], 20000 + i)))
            .unwrap();
    }
    assert_eq!(
        b.channel_bind(0x4003, SocketAddr::from(([127, 0, 0, 1], 20003)))
            .unwrap_err()
            .code(),
        Some(508)
    );
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert_eq!(log_counter(&log, "permissions_capped"), 1, "{log}");
    assert_eq!(log_counter(&log, "channels_capped"), 1);
}

#[test]
fn user_and_total_quotas_give_486() {
    let running = start_with_range(
        loopback_config(2, |c| {
            c.users.push(("bob".into(), "pw".into()));
            c.user_quota = 2;
            c.total_quota = 3;
        }),
        None,
        None,
        free_port_block(100),
    );
    let server = running.local_addrs()[0];
    let mut clients = Vec::new();
    for user in ["alice", "alice", "bob"] {
        let pass = if user == "bob" { "pw" } else { "secret" };
        let mut c = Client::connect(server, user, pass).unwrap();
        c.allocate(None).unwrap();
        clients.push(c);
    }
    let mut alice3 = Client::connect(server, "alice", "secret").unwrap();
    assert_eq!(
        alice3.allocate(None).unwrap_err().code(),
        Some(486),
        "user quota"
    );
    let mut bob2 = Client::connect(server, "bob", "pw").unwrap();
    assert_eq!(
        bob2.allocate(None).unwrap_err().code(),
        Some(486),
        "total quota"
    );
    // A deleted allocation gives its quota back.
    clients[2].refresh(0).unwrap();
    bob2.allocate(None).unwrap();
    let reports = running.stop();
    assert_eq!(sum(&reports, |c| c.quota_refused), 2);
    figure(
        "limits",
        "--user-quota / --total-quota",
        "exceeded → 486, counter quota_refused",
    );
}

#[test]
fn exhausted_relay_ports_give_508() {
    let range = free_port_block(5);
    let running = start_with_range(loopback_config(1, |_| {}), None, None, range);
    let server = running.local_addrs()[0];
    let mut clients: Vec<Client> = (0..5)
        .map(|_| {
            let mut c = Client::connect(server, "alice", "secret").unwrap();
            c.allocate(None).unwrap();
            c
        })
        .collect();
    let mut sixth = Client::connect(server, "alice", "secret").unwrap();
    assert_eq!(sixth.allocate(None).unwrap_err().code(), Some(508));
    clients[0].refresh(0).unwrap();
    let relay = sixth.allocate(None).unwrap();
    assert!((range.0..=range.1).contains(&relay.port()));
    let reports = running.stop();
    assert_eq!(sum(&reports, |c| c.ports_exhausted), 1);
    figure(
        "limits",
        "allocations per shard = its share of --min-port..--max-port",
        "exceeded → 508, counter ports_exhausted",
    );
}

/// Defers every `hold` user to a ticket it keeps; answers alice at once.
struct Holding {
    users: StaticUsers,
    tickets: Mutex<Vec<uturn::Ticket>>,
}

impl Observer for Holding {
    fn authenticate(&self, request: &mut AuthRequest<'_>) -> AuthDecision {
        if request.username != "hold" {
            return self.users.authenticate(request);
        }
        match request.defer() {
            Some(ticket) => {
                self.tickets.lock().unwrap().push(ticket);
                AuthDecision::Pending
            }
            None => AuthDecision::Pending,
        }
    }
}

#[test]
fn pending_authentications_beyond_the_cap_give_508() {
    const CAP: usize = 1024; // ServerConfig::max_pending_auth as the shards set it
    const SENT: usize = CAP + 76;
    let mut users = StaticUsers::new();
    users.add("alice", "secret", "example.org");
    let observer = Arc::new(Holding {
        users,
        tickets: Mutex::new(Vec::new()),
    });
    let running = start_with_range(
        loopback_config(1, |_| {}),
        Some(observer.clone()),
        None,
        free_port_block(100),
    );
    let server = running.local_addrs()[0];
    let auth = challenge(server);
    let key = long_term_key("hold", &auth.0, "whatever");
    let sockets: Vec<UdpSocket> = (0..SENT)
        .map(|i| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s.send_to(
                &authed_allocate(&tid(i as u64, 3), "hold", &auth.0, &auth.1, &key, None),
                server,
            )
            .unwrap();
            s
        })
        .collect();
    // Meanwhile the shard answers others at once.
    let mut alice = Client::connect(server, "alice", "secret").unwrap();
    alice.allocate(None).unwrap();
    let answers = |want: u16| -> usize {
        let mut buf = [0u8; 1500];
        sockets
            .iter()
            .filter(|s| matches!(s.recv(&mut buf), Ok(n) if error_code(&buf[..n]) == Some(want)))
            .count()
    };
    // Each socket gets at most one answer; the counters at stop prove there were no more.
    let mut refused = 0;
    wait_until(within(Duration::from_secs(10)), || {
        refused += answers(508);
        refused >= SENT - CAP && observer.tickets.lock().unwrap().len() >= CAP
    });
    assert_eq!(observer.tickets.lock().unwrap().len(), CAP);
    for t in observer.tickets.lock().unwrap().drain(..) {
        t.resolve(AuthDecision::NotAuthorized);
    }
    let mut answered_later = 0;
    wait_until(within(Duration::from_secs(10)), || {
        answered_later += answers(401);
        answered_later >= CAP
    });
    let reports = running.stop();
    assert_eq!(refused, SENT - CAP);
    assert_eq!(
        answered_later, CAP,
        "parked requests are answered when their ticket is"
    );
    assert_eq!(
        sum(&reports, |c| c.pending_auth_dropped),
        (SENT - CAP) as u64
    );
    figure(
        "limits",
        "pending asynchronous authentications per shard",
        format!(
            "{CAP}; beyond → 508 at once, counter pending_auth_dropped ({} of {SENT})",
            SENT - CAP
        ),
    );
}
