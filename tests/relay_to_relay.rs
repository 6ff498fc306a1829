//! Two allocations of one io_uring shard talking to each other's relay address (both ends
//! of a call on this server): the datagram is handed over in process, and the receiving
//! allocation applies its permissions exactly as if it had come through the kernel from
//! the sender's relay address. Real loopback sockets and clients.

mod common;
use common::{loopback_config, start_in_process};
use std::time::Duration;
use uturn::client::{Client, Incoming};
use uturn::config::Backend;
use uturn::turn::Dropped;

fn next(client: &mut Client) -> Incoming {
    client
        .recv(Duration::from_secs(5))
        .expect("a relayed datagram")
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
    b.create_permission(&[ra]).unwrap();
    a.send_channel_data(0x4000, b"after permission").unwrap();
    // In order on one shard: had the first arrived, it would come first.
    assert_eq!(
        next(&mut b),
        Incoming::Data {
            peer: ra,
            data: b"after permission".to_vec()
        }
    );
    // With a channel, as ChannelData; and the other way, a Send indication to A's relay.
    b.channel_bind(0x4001, ra).unwrap();
    a.send_channel_data(0x4000, b"over a channel").unwrap();
    assert_eq!(
        next(&mut b),
        Incoming::ChannelData {
            channel: 0x4001,
            data: b"over a channel".to_vec()
        }
    );
    b.send_indication(ra, b"back to a").unwrap();
    assert_eq!(
        next(&mut a),
        Incoming::ChannelData {
            channel: 0x4000,
            data: b"back to a".to_vec()
        }
    );

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
