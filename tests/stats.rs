//! Redis statistics in coturn's schema, against a redis-server the tests start on a free
//! port, with allocations driven by coturn's `turnutils_uclient`: byte-exact formats, exact
//! totals, Redis killed and restarted under load, Redis absent at start.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const PATTERN: &str = "turn/realm/*/user/*/allocation/*";

/// Messages grouped by allocation base (`turn/realm/…/allocation/<id>`), each as
/// (suffix after the base, payload), in arrival order.
fn by_allocation(messages: &[(String, String)]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (channel, payload) in messages {
        let at = channel.find("/allocation/").expect("allocation channel") + "/allocation/".len();
        let id_end = at + channel[at..].find('/').expect("suffix");
        let id = &channel[at..id_end];
        assert_eq!(id.len(), 18, "id printed as %018u: {channel}");
        assert!(id.bytes().all(|b| b.is_ascii_digit()), "{channel}");
        assert!(
            channel.starts_with("turn/realm/example.org/user/alice/allocation/"),
            "{channel}"
        );
        out.entry(channel[..id_end].to_owned())
            .or_default()
            .push((channel[id_end + 1..].to_owned(), payload.clone()));
    }
    out
}

/// Checks a status payload is exactly coturn's text; returns (word, lifetime).
fn check_status(payload: &str, listen_port: u16) -> (String, u32) {
    if payload == "deleted" {
        return ("deleted".into(), 0);
    }
    let (word, rest) = payload.split_once(" lifetime=").expect(payload);
    let (lifetime, rest) = rest.split_once(", ").expect(payload);
    let remote = rest
        .strip_prefix(&format!("type=UDP, local=127.0.0.1:{listen_port}, remote="))
        .and_then(|r| r.strip_suffix(", ssl=NONE, cipher=NONE"))
        .unwrap_or_else(|| panic!("not coturn's status format: {payload}"));
    let remote: SocketAddr = remote.parse().expect(payload);
    let lifetime: u32 = lifetime.parse().expect(payload);
    assert_eq!(
        payload,
        format!("{word} lifetime={lifetime}, type=UDP, local=127.0.0.1:{listen_port}, remote={remote}, ssl=NONE, cipher=NONE")
    );
    assert!(word == "new" || word == "refreshed", "{payload}");
    (word.to_owned(), lifetime)
}

fn traffic(rcvp: u64, rcvb: u64, sentp: u64, sentb: u64) -> String {
    format!("rcvp={rcvp}, rcvb={rcvb}, sentp={sentp}, sentb={sentb}")
}

fn parse_traffic(s: &str) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (i, (part, key)) in s
        .split(", ")
        .zip(["rcvp=", "rcvb=", "sentp=", "sentb="])
        .enumerate()
    {
        out[i] = part.strip_prefix(key).expect(s).parse().expect(s);
    }
    assert_eq!(s, traffic(out[0], out[1], out[2], out[3]), "exact format");
    out
}

/// The end of a deleted allocation's messages, in coturn's order: optional last
/// traffic + traffic/peer, status deleted, total_traffic, total_traffic/peer. Returns
/// (total client side, total peer side) after checking the deltas add up to them.
fn check_deleted(msgs: &[(String, String)]) -> (String, String) {
    let n = msgs.len();
    assert!(n >= 4, "{msgs:?}");
    assert_eq!(msgs[n - 3], ("status".into(), "deleted".into()), "{msgs:?}");
    assert_eq!(msgs[n - 2].0, "total_traffic", "{msgs:?}");
    assert_eq!(msgs[n - 1].0, "total_traffic/peer", "{msgs:?}");
    let mut sum = [[0u64; 4]; 2];
    for (suffix, payload) in &msgs[..n - 3] {
        let side = match suffix.as_str() {
            "traffic" => 0,
            "traffic/peer" => 1,
            _ => continue,
        };
        for (s, v) in sum[side].iter_mut().zip(parse_traffic(payload)) {
            *s += v;
        }
    }
    assert_eq!(
        sum[0],
        parse_traffic(&msgs[n - 2].1),
        "deltas add up to the client total: {msgs:?}"
    );
    assert_eq!(
        sum[1],
        parse_traffic(&msgs[n - 1].1),
        "deltas add up to the peer total: {msgs:?}"
    );
    (msgs[n - 2].1.clone(), msgs[n - 1].1.clone())
}

fn status_keys(redis: &RedisServer) -> Vec<(String, i64)> {
    let Some(mut conn) = redis.connection() else {
        return Vec::new();
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("turn/*/status")
        .query(&mut conn)
        .unwrap_or_default();
    keys.into_iter()
        .map(|k| {
            let ttl: i64 = redis::cmd("TTL").arg(&k).query(&mut conn).unwrap_or(-3);
            (k, ttl)
        })
        .collect()
}

#[test]
fn coturn_schema_byte_exact_for_a_uclient_allocation() {
    let redis = RedisServer::start();
    let sub = Subscriber::start(redis.url(), PATTERN);
    let mut server = Uturn::start(
        "io-uring",
        &["--allow-loopback-peers", "--redis-url", &redis.url()],
    );
    let peer = Peer::start();
    let (code, out) = uclient(
        server.port,
        peer.port,
        &["-m", "1", "-n", "300", "-l", "170"],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    // The allocations uclient left behind are deleted, with totals, at shutdown.
    assert_eq!(server.stop(), Some(0));
    let messages = sub.wait_for("every allocation deleted", Duration::from_secs(10), |m| {
        let news = m.iter().filter(|(_, p)| p.starts_with("new ")).count();
        let totals = m
            .iter()
            .filter(|(c, _)| c.ends_with("/total_traffic/peer"))
            .count();
        news > 0 && totals == news
    });
    let mut seen = std::collections::BTreeSet::new();
    let mut data_allocations = 0;
    for (base, msgs) in by_allocation(&messages) {
        let (word, lifetime) = check_status(&msgs[0].1, server.port);
        assert_eq!(
            (msgs[0].0.as_str(), word.as_str()),
            ("status", "new"),
            "{base}: {msgs:?}"
        );
        assert!(lifetime > 0);
        for (suffix, payload) in &msgs {
            if suffix == "status" {
                let (word, lifetime) = check_status(payload, server.port);
                seen.insert(format!(
                    "{word}{}",
                    if word == "refreshed" && lifetime == 0 {
                        "0"
                    } else {
                        ""
                    }
                ));
            } else {
                seen.insert(suffix.clone());
            }
        }
        let (client, peer_side) = check_deleted(&msgs);
        if client != traffic(0, 0, 0, 0) {
            data_allocations += 1;
            // 300 ChannelData messages of 170 bytes each way: 174 bytes on the client side.
            assert_eq!(client, traffic(300, 300 * 174, 300, 300 * 174), "{base}");
            assert_eq!(peer_side, traffic(300, 300 * 170, 300, 300 * 170), "{base}");
        }
    }
    assert_eq!(
        data_allocations, 2,
        "uclient -m 1 relays on two allocations (RTP, RTCP)"
    );
    for kind in [
        "new",
        "refreshed",
        "refreshed0",
        "deleted",
        "traffic",
        "traffic/peer",
        "total_traffic",
        "total_traffic/peer",
    ] {
        assert!(seen.contains(kind), "no {kind} message seen: {seen:?}");
    }
    assert!(
        status_keys(&redis).is_empty(),
        "status keys of deleted allocations are removed"
    );
}

#[test]
fn redis_restart_under_load_loses_nothing() {
    let mut redis = RedisServer::start();
    let sub = Subscriber::start(redis.url(), PATTERN);
    let mut server = Uturn::start(
        "io-uring",
        &["--allow-loopback-peers", "--redis-url", &redis.url()],
    );
    let peer = Peer::start();
    let (port, peer_port) = (server.port, peer.port);
    let load = std::thread::spawn(move || {
        uclient(
            port,
            peer_port,
            &["-m", "10", "-n", "400", "-l", "170"],
            Duration::from_secs(90),
        )
    });
    wait_for(
        "status keys SET while Redis is up",
        Duration::from_secs(20),
        || status_keys(&redis).len() >= 10,
    );
    redis.kill();
    // Down long enough that events queue: a write failed and a reconnect attempt failed.
    wait_for(
        "uturn to notice Redis is gone",
        Duration::from_secs(20),
        || {
            let log = server.log_text();
            log.contains("Redis write failed") && log.contains("Redis unavailable")
        },
    );
    redis.restart();
    let mut keys = Vec::new();
    wait_until(within(Duration::from_secs(10)), || {
        keys = status_keys(&redis);
        keys.len() >= 10
    });
    assert!(
        !load.is_finished(),
        "the load must still run after Redis is back (lengthen -n)"
    );
    assert!(
        keys.len() >= 10,
        "live allocations' status SET again after reconnect: {keys:?}"
    );
    assert!(
        keys.iter().all(|(_, ttl)| *ttl > 0 && *ttl <= 3600),
        "status keys carry EX: {keys:?}"
    );
    sub.wait_subscribed(2);
    let (code, out) = load.join().unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(4000), "{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    let messages = sub.wait_for(
        "totals of the 10 data allocations",
        Duration::from_secs(15),
        |m| {
            m.iter()
                .filter(|(c, p)| c.ends_with("/total_traffic") && p != &traffic(0, 0, 0, 0))
                .count()
                >= 10
        },
    );
    for (base, msgs) in by_allocation(&messages) {
        if !msgs.iter().any(|(s, _)| s == "total_traffic") {
            continue;
        }
        let (client, peer_side) = check_deleted(&msgs);
        if client != traffic(0, 0, 0, 0) {
            assert_eq!(client, traffic(400, 400 * 174, 400, 400 * 174), "{base}");
            assert_eq!(peer_side, traffic(400, 400 * 170, 400, 400 * 170), "{base}");
        }
    }
    assert!(
        server.log_text().contains("Redis reconnected"),
        "{}",
        server.log_text()
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn redis_absent_at_start_then_connects() {
    let mut redis = RedisServer::start();
    redis.kill();
    let started = Instant::now();
    let mut server = Uturn::start(
        "io-uring",
        &[
            "--allow-loopback-peers",
            "--redis-statsdb",
            &format!(
                "ip=127.0.0.1 port={} dbname=0 connect_timeout=1",
                redis.port
            ),
        ],
    );
    let peer = Peer::start();
    let (code, out) = uclient(
        server.port,
        peer.port,
        &["-m", "1", "-n", "50", "-l", "100"],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        number_after(&out, "Total lost packets"),
        Some(0),
        "relaying does not wait for Redis: {out}"
    );
    wait_for(
        "a failed connection attempt",
        Duration::from_secs(10),
        || server.log_text().contains("Redis unavailable"),
    );
    let log = server.log_text();
    let failures = log.matches("Redis unavailable").count();
    let secs = started.elapsed().as_secs_f64();
    // Backoff from 0.2 s doubling to 2 s: one line per attempt, not one per batch.
    assert!(failures >= 1, "the failure is logged:\n{log}");
    assert!(
        (failures as f64) <= 4.0 + secs / 2.0,
        "{failures} failures logged in {secs:.1} s:\n{log}"
    );
    redis.restart();
    let sub = Subscriber::start(redis.url(), PATTERN);
    assert!(
        wait_until(within(Duration::from_secs(10)), || server
            .log_text()
            .contains("Redis connected")),
        "did not connect:\n{}",
        server.log_text()
    );
    let (code, out) = uclient(
        server.port,
        peer.port,
        &["-m", "1", "-n", "50", "-l", "100"],
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "{out}");
    sub.wait_for(
        "status and totals after connecting",
        Duration::from_secs(10),
        |m| {
            m.iter().any(|(_, p)| p.starts_with("new "))
                && m.iter().any(|(c, p)| {
                    c.ends_with("/total_traffic") && p == &traffic(50, 50 * 104, 50, 50 * 104)
                })
        },
    );
    assert_eq!(server.stop(), Some(0));
}
