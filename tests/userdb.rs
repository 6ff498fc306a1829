//! The Redis user database (`--redis-userdb`) end to end: users and REST secrets written by
//! coturn's own `turnadmin` into a redis-server of the test's own, the real `uturn` binary,
//! coturn's `turnutils_uclient` and uturn's client; a flood of unknown names measured in
//! Redis's own counters; Redis going away and coming back.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use uturn::client::{Client, Incoming};
use uturn::stun::{self, Class, MessageBuilder, Method};

mod common;
use common::*;

fn userdb_arg(redis: &RedisServer) -> String {
    format!(
        "ip=127.0.0.1 port={} dbname=0 connect_timeout=1",
        redis.port
    )
}

fn turnadmin(args: &[&str]) {
    let (code, out) = run_bounded(
        Command::new(tool("turnadmin")).args(args),
        Duration::from_secs(10),
    );
    assert_eq!(code, Some(0), "turnadmin {args:?}: {out}");
}

fn add_user(redis: &RedisServer, user: &str, password: &str) {
    let db = userdb_arg(redis);
    turnadmin(&[
        "-a",
        "-N",
        &db,
        "-u",
        user,
        "-r",
        "example.org",
        "-p",
        password,
    ]);
}

fn allocate(server: SocketAddr, user: &str, password: &str) -> Result<Client, Option<u16>> {
    let mut c = Client::connect(server, user, password).map_err(|e| {
        eprintln!("connect as {user}: {e}");
        None
    })?;
    c.set_timeout(Duration::from_millis(500));
    match c.allocate(None) {
        Ok(_) => Ok(c),
        Err(e) => {
            eprintln!("allocate as {user}: {e}");
            Err(e.code())
        }
    }
}

/// Redis's INFO field `name` (e.g. `keyspace_misses`).
fn redis_info(redis: &RedisServer, name: &str) -> u64 {
    let mut conn = redis.connection().expect("redis connection");
    let info: String = redis::cmd("INFO").arg("all").query(&mut conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `calls=` of one command in INFO commandstats.
fn redis_calls(redis: &RedisServer, command: &str) -> u64 {
    let mut conn = redis.connection().expect("redis connection");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn turnadmin_users_allocate_through_uclient_and_unknown_ones_do_not() {
    let redis = RedisServer::start();
    add_user(&redis, "carol", "carolpw");
    let db = userdb_arg(&redis);
    let mut server = Uturn::start("auto", &["--allow-loopback-peers", "--redis-userdb", &db]);
    let peer = Peer::start();
    let (code, out) = uclient(
        server.port,
        peer.port,
        &[
            "-u", "carol", "-w", "carolpw", "-m", "2", "-n", "50", "-l", "120",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(
        code,
        Some(0),
        "uclient as a Redis user:\n{out}\n{}",
        server.log_text()
    );
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(100), "{out}");
    assert_eq!(
        allocate(server.addr(), "carol", "wrong").err(),
        Some(Some(401))
    );
    assert_eq!(
        allocate(server.addr(), "dave", "davepw").err(),
        Some(Some(401)),
        "{}",
        server.log_text()
    );
    // A user added later is found once the negative cache entry expires (10 s).
    add_user(&redis, "dave", "davepw");
    assert!(
        wait_until(within(Duration::from_secs(20)), || allocate(
            server.addr(),
            "dave",
            "davepw"
        )
        .is_ok()),
        "a user added with turnadmin never became usable"
    );
    // The static --user still works beside the database.
    assert!(allocate(server.addr(), "alice", "secret").is_ok());
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn turnadmin_rest_secret_authenticates_rest_usernames() {
    let redis = RedisServer::start();
    let db = userdb_arg(&redis);
    turnadmin(&["-s", "rotate-me", "-N", &db, "-r", "example.org"]);
    let mut server = Uturn::start("auto", &["--use-auth-secret", "--redis-userdb", &db]);
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let user = format!("{expiry}:carol");
    let password = uturn::auth::RestApiSecret::password("rotate-me", &user);
    assert!(
        allocate(server.addr(), &user, &password).is_ok(),
        "{}",
        server.log_text()
    );
    // Rotation: a second secret in the set is valid as well.
    turnadmin(&["-s", "the-new-one", "-N", &db, "-r", "example.org"]);
    let rotated = uturn::auth::RestApiSecret::password("the-new-one", &user);
    assert!(
        wait_until(within(Duration::from_secs(20)), || allocate(
            server.addr(),
            &user,
            &rotated
        )
        .is_ok()),
        "a second secret never became valid"
    );
    assert!(
        allocate(server.addr(), &user, &password).is_ok(),
        "the first secret stopped working"
    );
    let wrong = uturn::auth::RestApiSecret::password("other", &user);
    assert_eq!(
        allocate(server.addr(), &user, &wrong).err(),
        Some(Some(401))
    );
    let expired = format!("{}:carol", expiry - 7200);
    let password = uturn::auth::RestApiSecret::password("rotate-me", &expired);
    assert_eq!(
        allocate(server.addr(), &expired, &password).err(),
        Some(Some(401))
    );
    assert_eq!(server.stop(), Some(0));
}

/// Gets a nonce for `sock`'s address, then sends `count` authenticated Allocate requests
/// under random usernames without waiting; returns how many answers came back.
fn flood_unknown_users(sock: &UdpSocket, server: SocketAddr, count: usize) -> usize {
    let mut buf = vec![0u8; 2048];
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Class::Request, Method::ALLOCATE, &[9; 12])
        .add_requested_transport(stun::TRANSPORT_UDP);
    sock.send_to(&req, server).unwrap();
    let (n, _) = sock.recv_from(&mut buf).expect("401 challenge");
    let msg = stun::Message::parse(&buf[..n]).unwrap();
    let nonce = msg.nonce().unwrap().unwrap().to_owned();
    for i in 0..count {
        let user = format!("flood-{i}-{}", rand::random::<u32>());
        let key = stun::long_term_key(&user, "example.org", "x");
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let mut out = Vec::new();
        {
            let mut b = MessageBuilder::new(&mut out, Class::Request, Method::ALLOCATE, &tid);
            b.add_requested_transport(stun::TRANSPORT_UDP);
            b.add_str(stun::USERNAME, &user);
            b.add_str(stun::REALM, "example.org");
            b.add_str(stun::NONCE, &nonce);
            b.add_message_integrity(&key);
            b.add_fingerprint();
        }
        sock.send_to(&out, server).unwrap();
    }
    let mut answers = 0;
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    while sock.recv_from(&mut buf).is_ok() {
        answers += 1;
    }
    answers
}

#[test]
fn a_flood_of_unknown_usernames_does_not_flood_redis() {
    let redis = RedisServer::start();
    add_user(&redis, "carol", "carolpw");
    let db = userdb_arg(&redis);
    let server = Uturn::start("auto", &["--redis-userdb", &db]);
    // Warm the connection, then measure from here.
    assert!(allocate(server.addr(), "carol", "carolpw").is_ok());
    let misses_before = redis_info(&redis, "keyspace_misses");
    let mget_before = redis_calls(&redis, "mget");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let sent = 5_000;
    let started = Instant::now();
    let answers = flood_unknown_users(&sock, server.addr(), sent);
    let secs = started.elapsed().as_secs_f64();
    let misses = redis_info(&redis, "keyspace_misses") - misses_before;
    let mgets = redis_calls(&redis, "mget") - mget_before;
    // Two keys (`key`, `password`) per user looked up; 50 lookups per second per address.
    let users_looked_up = misses / 2;
    let bound = (50.0 * (secs.ceil() + 1.0)) as u64;
    println!(
        "flood: {sent} Allocates with unknown names in {secs:.2} s, {answers} answers; \
         Redis: {users_looked_up} users looked up in {mgets} MGET calls (bound {bound})"
    );
    assert!(
        users_looked_up <= bound,
        "{users_looked_up} Redis lookups for {sent} unknown names (bound {bound})"
    );
    assert!(answers > 0, "the server answered none of the flood");
    // A user from another address is not starved by the flood's budget.
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut c = Client::with_socket(other, server.addr(), "carol", "carolpw");
    assert!(c.allocate(None).is_ok());
}

#[test]
fn redis_away_keeps_allocations_relaying_refuses_new_users_and_recovers() {
    let mut redis = RedisServer::start();
    add_user(&redis, "carol", "carolpw");
    add_user(&redis, "dave", "davepw");
    let db = userdb_arg(&redis);
    let server = Uturn::start("auto", &["--allow-loopback-peers", "--redis-userdb", &db]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut carol = allocate(server.addr(), "carol", "carolpw").expect("carol allocates");
    carol.channel_bind(0x4000, peer_addr).unwrap();
    let relay = |carol: &mut Client, round: u32| {
        let data = format!("round {round}");
        carol.send_channel_data(0x4000, data.as_bytes()).unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!(&buf[..n], data.as_bytes());
        peer.send_to(&buf[..n], from).unwrap();
        match carol.recv(Duration::from_secs(2)).expect("carol receives") {
            Incoming::ChannelData { channel, data: got } => {
                assert_eq!(channel, 0x4000);
                assert_eq!(got, data.as_bytes());
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    relay(&mut carol, 0);

    redis.kill();
    assert!(
        wait_until(within(Duration::from_secs(10)), || server
            .log_text()
            .contains("Redis user database unavailable")),
        "no log line about Redis going away:\n{}",
        server.log_text()
    );
    for round in 1..=5 {
        relay(&mut carol, round);
    }
    carol.refresh(600).expect("refresh without Redis");
    // carol is cached: a second allocation still works; dave never was: 401 at once.
    assert!(allocate(server.addr(), "carol", "carolpw").is_ok());
    let asked = Instant::now();
    assert_eq!(
        allocate(server.addr(), "dave", "davepw").err(),
        Some(Some(401))
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "refusal was not prompt"
    );

    redis.restart();
    add_user(&redis, "dave", "davepw");
    assert!(
        wait_until(within(Duration::from_secs(20)), || allocate(
            server.addr(),
            "dave",
            "davepw"
        )
        .is_ok()),
        "no recovery after Redis returned:\n{}",
        server.log_text()
    );
    relay(&mut carol, 6);
}
