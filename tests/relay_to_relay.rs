//! Two allocations of one io_uring server talking to each other's relay address (both ends
//! of a call on this server): the datagram is handed over in process, on one shard
//! directly and between two shards through the target shard's queue, and the receiving
//! allocation applies its permissions exactly as if it had come through the kernel from
//! the sender's relay address. Real loopback sockets and clients.

mod common;
use common::{
    free_listen_port, free_port_block, loopback_config, number_after, start_in_process, uclient,
    wait_for, Peer,
};
use std::net::SocketAddr;
use std::time::Duration;
use uturn::client::{Client, Incoming};
use uturn::config::Backend;
use uturn::shard::{Running, ShardReport, TestKnobs};
use uturn::turn::Dropped;

fn next(client: &mut Client) -> Incoming {
    client
        .recv(Duration::from_secs(5))
        .expect("a relayed datagram")
}

/// A (channel 0x4000 bound to B's relay) and B (relay address `ra` of A not yet
/// permitted): B permits A's relay, then a ChannelData of A reaches B as a Data
/// indication, over B's channel 0x4001 as ChannelData, and B's Send indication back
/// reaches A on its channel: three datagrams handed over, one each way at least.
fn after_permission(a: &mut Client, b: &mut Client, ra: SocketAddr) {
    b.create_permission(&[ra]).unwrap();
    a.send_channel_data(0x4000, b"after permission").unwrap();
    assert_eq!(
        next(b),
        Incoming::Data {
            peer: ra,
            data: b"after permission".to_vec()
        }
    );
    b.channel_bind(0x4001, ra).unwrap();
    a.send_channel_data(0x4000, b"over a channel").unwrap();
    assert_eq!(
        next(b),
        Incoming::ChannelData {
            channel: 0x4001,
            data: b"over a channel".to_vec()
        }
    );
    b.send_indication(ra, b"back to a").unwrap();
    assert_eq!(
        next(a),
        Incoming::ChannelData {
            channel: 0x4000,
            data: b"back to a".to_vec()
        }
    );
}

#[test]
fn allocations_of_one_shard_relay_to_each_other_in_process() {
    let config = loopback_config(1, |c| c.backend = Backend::IoUring);
    let running = start_in_process(&config, None, None, 20);
    let server = running.local_addrs()[0];
    let mut a = Client::connect(server, "alice", "secret").unwrap();
    let mut b = Client::connect(server, "alice", "secret").unwrap();
    let ra = a.allocate(None).unwrap();
    let rb = b.allocate(None).unwrap();
    assert_ne!(ra, rb);

    // B has no permission for A's relay address yet: this one must be dropped by B's
    // allocation (the check a datagram through the kernel would meet).
    a.channel_bind(0x4000, rb).unwrap();
    a.send_channel_data(0x4000, b"before permission").unwrap();
    // In order on one shard: had the first arrived, it would come first.
    after_permission(&mut a, &mut b, ra);

    let reports = running.stop();
    let io = &reports[0].io;
    assert_eq!(
        io.relayed_in_process, 4,
        "every datagram between the two relays was handed over in process: {io:?}"
    );
    let c = &reports[0].counters;
    // Counted as with peers through the kernel: A relayed 3 and B 1 towards a peer; B's
    // allocation dropped the first for want of a permission; 3 reached a client.
    assert_eq!(c.relayed_to_peer, 4, "{c:?}");
    assert_eq!(c.dropped(Dropped::NoPermission), 1, "{c:?}");
    assert_eq!(c.relayed_to_client, 3, "{c:?}");
}

/// The shard whose relay port slice holds `relay` (a shard takes from its own slice while
/// it has free ports, which these tests' ranges ensure).
fn shard_of(running: &Running, relay: SocketAddr) -> usize {
    running
        .port_slices()
        .iter()
        .position(|&(lo, hi)| (lo..=hi).contains(&relay.port()))
        .expect("a relay port of the range")
}

/// Two clients whose allocations live on different shards: new clients (new source
/// ports, which SO_REUSEPORT hashes anew) until one lands on another shard than the first.
fn clients_on_two_shards(running: &Running) -> ((Client, SocketAddr), (Client, SocketAddr)) {
    let server = running.local_addrs()[0];
    let mut a = Client::connect(server, "alice", "secret").unwrap();
    let ra = a.allocate(None).unwrap();
    for _ in 0..30 {
        let mut b = Client::connect(server, "alice", "secret").unwrap();
        let rb = b.allocate(None).unwrap();
        if shard_of(running, rb) != shard_of(running, ra) {
            return ((a, ra), (b, rb));
        }
        // Not kept: its allocation stays until the server stops.
    }
    panic!("30 clients in a row landed on the first client's shard");
}

/// A two-shard io_uring server in process with `knobs`, on free ports.
fn start_two_shards(knobs: TestKnobs) -> Running {
    let config = loopback_config(2, |c| c.backend = Backend::IoUring);
    for _ in 0..20 {
        let mut c = config.clone();
        c.listening_port = free_listen_port();
        (c.min_port, c.max_port) = free_port_block(80);
        let observer = uturn::observer_from_config(&c);
        match uturn::shard::start_with(&c, observer, None, knobs.clone()) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("start: {e}"),
        }
    }
    panic!("no free ports");
}

fn io_sum(reports: &[ShardReport], f: impl Fn(&uturn::shard::IoCounters) -> u64) -> u64 {
    reports.iter().map(|r| f(&r.io)).sum()
}

#[test]
fn allocations_of_two_shards_relay_to_each_other_through_the_shards_queue() {
    let running = start_two_shards(TestKnobs::default());
    assert_eq!(running.shard_count(), 2);
    let ((mut a, ra), (mut b, rb)) = clients_on_two_shards(&running);
    let sb = shard_of(&running, rb);
    let dropped_at_b = |running: &Running| {
        let i = Dropped::ALL
            .iter()
            .position(|d| *d == Dropped::NoPermission)
            .unwrap();
        running.metrics()[sb].snapshot().dropped[i]
    };
    let before = dropped_at_b(&running);

    // B has no permission for A's relay address yet: B's shard drops it (the check a
    // datagram through the kernel would meet). Waited for, as it crosses shards.
    a.channel_bind(0x4000, rb).unwrap();
    a.send_channel_data(0x4000, b"before permission").unwrap();
    wait_for(
        "B's shard to drop the datagram",
        Duration::from_secs(5),
        || dropped_at_b(&running) == before + 1,
    );
    after_permission(&mut a, &mut b, ra);
    // The metrics endpoint's view, per shard, before the stop.
    wait_for(
        "the metrics of the last turn",
        Duration::from_secs(5),
        || {
            let m = running.metrics();
            let sum = |i: usize| m.iter().map(|s| s.snapshot().handoff[i]).sum::<u64>();
            (sum(1), sum(2)) == (4, 4)
        },
    );
    let names: Vec<&str> = uturn::metrics::HANDOFF_METRICS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(names[1], "uturn_relayed_cross_shard_total");

    let reports = running.stop();
    let sent = io_sum(&reports, |io| io.relayed_cross_shard);
    let taken = io_sum(&reports, |io| io.cross_shard_received);
    let fallbacks = io_sum(&reports, |io| io.cross_shard_fallbacks);
    let dropped = io_sum(&reports, |io| io.cross_shard_dropped);
    let local = io_sum(&reports, |io| io.relayed_in_process);
    assert_eq!(
        (sent, taken, fallbacks, dropped, local),
        (4, 4, 0, 0, 0),
        "every datagram between the two relays crossed through a queue: {reports:?}"
    );
    // Per side: 3 queued by A's shard and taken by B's, 1 the other way.
    let sa = 1 - sb;
    assert_eq!(reports[sa].io.relayed_cross_shard, 3);
    assert_eq!(reports[sb].io.cross_shard_received, 3);
    assert_eq!(reports[sb].io.relayed_cross_shard, 1);
    assert_eq!(reports[sa].io.cross_shard_received, 1);
    // Counted as with peers through the kernel: 4 relayed towards a peer, B's allocation
    // dropped the first for want of a permission, 3 reached a client.
    let sum = |f: fn(&uturn::turn::ServerCounters) -> u64| common::sum(&reports, f);
    assert_eq!(sum(|c| c.relayed_to_peer), 4);
    assert_eq!(sum(|c| c.dropped(Dropped::NoPermission)), 1);
    assert_eq!(sum(|c| c.relayed_to_client), 3);
    assert_eq!(reports[sb].counters.dropped(Dropped::NoPermission), 1);
}

#[test]
fn a_full_queue_or_a_large_datagram_goes_through_the_kernel_and_nothing_is_lost() {
    // One slot per queue: within one turn of the sender, the second datagram finds it full.
    let running = start_two_shards(TestKnobs {
        handoff_slots: Some(1),
        ..TestKnobs::default()
    });
    let ((mut a, ra), (mut b, rb)) = clients_on_two_shards(&running);
    a.channel_bind(0x4000, rb).unwrap();
    b.channel_bind(0x4001, ra).unwrap();
    // Within what a client socket's default receive buffer holds.
    const BURST: usize = 100;
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < BURST + 1 {
            match b.recv(Duration::from_secs(5)) {
                Ok(Incoming::ChannelData { channel, data }) => {
                    assert_eq!(channel, 0x4001);
                    got.push(data.len());
                }
                other => panic!("after {} datagrams: {other:?}", got.len()),
            }
        }
        got
    });
    for i in 0..BURST {
        a.send_channel_data(0x4000, &[i as u8; 100]).unwrap();
    }
    // Larger than a queue slot (2,048 bytes): through the kernel whatever the queue.
    a.send_channel_data(0x4000, &[7; 3000]).unwrap();
    let got = receiver.join().unwrap();
    assert_eq!(got.len(), BURST + 1, "every datagram arrived");
    assert_eq!(got.iter().filter(|&&n| n == 3000).count(), 1);
    let reports = running.stop();
    let queued = io_sum(&reports, |io| io.relayed_cross_shard);
    let fallbacks = io_sum(&reports, |io| io.cross_shard_fallbacks);
    assert_eq!(
        queued + fallbacks,
        BURST as u64 + 1,
        "each datagram either queued or sent through the kernel: {reports:?}"
    );
    println!(
        "queued {queued}, through the kernel {fallbacks} of {}",
        BURST + 1
    );
    assert_eq!(io_sum(&reports, |io| io.cross_shard_received), queued);
    assert!(queued >= 1, "{reports:?}");
    assert!(
        fallbacks >= 2,
        "the large one and at least one burst datagram found the queue full: {reports:?}"
    );
    assert_eq!(
        common::sum(&reports, |c| c.relayed_to_client),
        BURST as u64 + 1
    );
}

/// coturn's client-to-client load (`turnutils_uclient -y`: every client's peer is another
/// client's relay address) at the server's defaults with two shards: nothing lost, and the
/// pairs on different shards cross in process.
#[test]
fn uclient_client_to_client_loses_nothing_across_two_shards() {
    let running = start_two_shards(TestKnobs::default());
    let port = running.local_addrs()[0].port();
    let peer = Peer::start();
    let (code, out) = uclient(
        port,
        peer.port,
        &["-y", "-m", "10", "-n", "200", "-l", "170"],
        Duration::from_secs(90),
    );
    let reports = running.stop();
    assert_eq!(code, Some(0), "uclient failed:\n{out}");
    let sent = number_after(&out, "tot_send_msgs=").expect("a total");
    assert!(sent >= 2000, "{out}");
    assert_eq!(number_after(&out, "tot_recv_msgs="), Some(sent), "{out}");
    assert_eq!(number_after(&out, "Total lost packets"), Some(0), "{out}");
    let queued = io_sum(&reports, |io| io.relayed_cross_shard);
    let local = io_sum(&reports, |io| io.relayed_in_process);
    let fallbacks = io_sum(&reports, |io| io.cross_shard_fallbacks);
    println!("{sent} messages; relayed: {queued} between shards, {local} on one shard, {fallbacks} through the kernel");
    assert!(queued > 0, "some pairs crossed shards: {reports:?}");
    assert_eq!(io_sum(&reports, |io| io.cross_shard_received), queued);
    assert_eq!(io_sum(&reports, |io| io.cross_shard_dropped), 0);
    // Every relayed datagram went between two relays of this server, none through the
    // kernel's relay sockets except queue fallbacks.
    assert_eq!(
        queued + local + fallbacks,
        common::sum(&reports, |c| c.relayed_to_peer),
        "{reports:?}"
    );
}
