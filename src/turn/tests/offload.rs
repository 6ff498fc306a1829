//! Offload commands for the kernel fast path: which bindings are installed and removed, at
//! which tick, and how kernel-relayed traffic reaches the allocation's reports.

use super::*;
use crate::turn::{DeleteReason, OffloadCommand, Traffic, Transport};
use crate::xdp::ChannelOffload;

fn world() -> World {
    World::with(|c| c.offload = true)
}

fn commands(w: &mut World) -> Vec<OffloadCommand> {
    std::iter::from_fn(|| w.server.poll_offload()).collect()
}

/// An allocation for a client at 203.0.113.5:40000 with channel 0x4001 bound to [`PEER`];
/// returns the client, its relay address and the Install it caused.
fn bound(w: &mut World) -> (Client, SocketAddr, ChannelOffload) {
    let mut c = Client::new("203.0.113.5:40000");
    let relay = c.allocate(w);
    let peer: SocketAddr = PEER.parse().unwrap();
    assert_eq!(error_code(&c.bind_channel(w, 0x4001, peer)), None);
    let cmds = commands(w);
    let [OffloadCommand::Install(b)] = cmds[..] else {
        panic!("one install expected: {cmds:?}")
    };
    (c, relay, b)
}

fn traffic(packets: u64) -> Traffic {
    let mut t = Traffic::default();
    t.client.rcvp = packets;
    t.client.rcvb = packets * 104;
    t.peer.sentp = packets;
    t.peer.sentb = packets * 100;
    t
}

#[test]
fn bind_installs_the_binding_and_a_refresh_emits_nothing() {
    let mut w = world();
    let (mut c, relay, b) = bound(&mut w);
    let info = w
        .server
        .allocation_info(relay_id(&w, relay))
        .unwrap()
        .clone();
    assert_eq!(
        b,
        ChannelOffload {
            client: c.addr,
            server: w.local,
            channel: 0x4001,
            relay,
            peer: PEER.parse().unwrap(),
            allocation: info.id,
        }
    );
    w.advance(100);
    assert_eq!(error_code(&c.bind_channel(&mut w, 0x4001, b.peer)), None);
    assert_eq!(error_code(&c.permit(&mut w, &[b.peer])), None);
    assert_eq!(commands(&mut w), []);
}

#[test]
fn without_offload_no_command() {
    let mut w = World::new();
    let mut c = Client::new("203.0.113.5:40000");
    c.allocate(&mut w);
    c.bind_channel(&mut w, 0x4001, PEER.parse().unwrap());
    w.advance(700);
    assert_eq!(commands(&mut w), []);
}

#[test]
fn permission_expiry_removes_at_the_tick_user_space_starts_dropping() {
    let mut w = world();
    let (_c, relay, b) = bound(&mut w);
    let id = relay_id(&w, relay);
    // Permission 300 s, channel 600 s: the permission ends the kernel path first.
    w.advance(299);
    assert_eq!(commands(&mut w), []);
    assert!(w.peer(id, b.peer, b"still relayed").is_some());
    w.advance(1);
    assert_eq!(commands(&mut w), [OffloadCommand::Remove(b)]);
    assert_eq!(w.peer(id, b.peer, b"too late"), None);
}

#[test]
fn refreshed_permission_keeps_it_until_the_channel_expires() {
    let mut w = world();
    let (mut c, relay, b) = bound(&mut w);
    let id = relay_id(&w, relay);
    w.advance(200);
    assert_eq!(error_code(&c.permit(&mut w, &[b.peer])), None);
    // Permission now until 500 s.
    w.advance(299);
    assert_eq!(commands(&mut w), []);
    w.advance(1);
    assert_eq!(commands(&mut w), [OffloadCommand::Remove(b)]);
    // A new permission while the channel lives (until 600 s): offloaded again...
    w.advance(50);
    assert_eq!(error_code(&c.permit(&mut w, &[b.peer])), None);
    assert_eq!(commands(&mut w), [OffloadCommand::Install(b)]);
    // ...until the channel itself expires.
    w.advance(49);
    assert_eq!(commands(&mut w), []);
    assert!(w
        .peer(id, b.peer, b"bound")
        .unwrap()
        .starts_with(&[0x40, 0x01]));
    w.advance(1);
    assert_eq!(commands(&mut w), [OffloadCommand::Remove(b)]);
}

#[test]
fn rebind_after_expiry_installs_again() {
    let mut w = World::with(|c| {
        c.offload = true;
        c.channel_lifetime = Duration::from_secs(60);
    });
    let (mut c, _relay, b) = bound(&mut w);
    w.advance(60);
    assert_eq!(commands(&mut w), [OffloadCommand::Remove(b)]);
    assert_eq!(error_code(&c.bind_channel(&mut w, 0x4001, b.peer)), None);
    assert_eq!(commands(&mut w), [OffloadCommand::Install(b)]);
}

#[test]
fn delete_removes_and_holds_the_final_events_for_the_kernel_counts() {
    let mut w = world();
    let (mut c, _relay, b) = bound(&mut w);
    w.events();
    let tuple = w.tuple(c.addr, w.local);
    w.server
        .offloaded_traffic(w.now, tuple, 0x4001, traffic(10));
    c.authed(&mut w, Method::REFRESH, |m| {
        m.add_u32(stun::LIFETIME, 0);
    });
    assert_eq!(commands(&mut w), [OffloadCommand::Remove(b)]);
    let events = w.events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::AllocationDeleted { .. })),
        "deleted before the kernel's last counts: {events:?}"
    );
    assert_eq!(w.server.closing_count(), 1);
    w.server.offload_removed(w.now, &b, traffic(5));
    let events = w.events();
    let [Event::AllocationDeleted {
        reason,
        last,
        totals,
        ..
    }] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(*reason, DeleteReason::Deleted);
    assert_eq!(*last, traffic(15));
    assert_eq!(*totals, traffic(15));
    assert_eq!(w.server.closing_count(), 0);
}

#[test]
fn allocation_expiry_and_shutdown_remove() {
    let mut w = World::with(|c| {
        c.offload = true;
        c.default_lifetime = Duration::from_secs(100);
    });
    let (_c, _relay, b) = bound(&mut w);
    w.advance(100);
    assert_eq!(commands(&mut w), [OffloadCommand::Remove(b)]);
    w.server.offload_removed(w.now, &b, Traffic::default());
    assert!(w.events().iter().any(|e| matches!(
        e,
        Event::AllocationDeleted {
            reason: DeleteReason::Expired,
            ..
        }
    )));

    let (_c, _relay, b) = bound(&mut w);
    w.server.shutdown(w.now, &mut w.sockets);
    assert_eq!(commands(&mut w), [OffloadCommand::Remove(b)]);
    w.server.offload_removed(w.now, &b, Traffic::default());
    assert!(w.events().iter().any(|e| matches!(
        e,
        Event::AllocationDeleted {
            reason: DeleteReason::Shutdown,
            ..
        }
    )));
}

#[test]
fn bandwidth_limited_allocations_stay_in_user_space() {
    let mut w = World::with(|c| {
        c.offload = true;
        c.max_bps = 1_000_000;
    });
    let mut c = Client::new("203.0.113.5:40000");
    c.allocate(&mut w);
    let peer: SocketAddr = PEER.parse().unwrap();
    assert_eq!(error_code(&c.bind_channel(&mut w, 0x4001, peer)), None);
    assert_eq!(commands(&mut w), []);

    // A cap set by a reload takes offloaded bindings back.
    let mut w = world();
    let (_c, _relay, b) = bound(&mut w);
    w.server.set_max_bps(1000);
    assert_eq!(commands(&mut w), [OffloadCommand::Remove(b)]);
}

#[test]
fn tcp_clients_are_never_offloaded() {
    let mut w = world();
    w.transport = Transport::Tcp;
    let mut c = Client::new("203.0.113.5:40000");
    c.allocate(&mut w);
    let peer: SocketAddr = PEER.parse().unwrap();
    assert_eq!(error_code(&c.bind_channel(&mut w, 0x4001, peer)), None);
    assert_eq!(commands(&mut w), []);
    c.authed(&mut w, Method::REFRESH, |m| {
        m.add_u32(stun::LIFETIME, 0);
    });
    assert_eq!(commands(&mut w), []);
    assert!(w
        .events()
        .iter()
        .any(|e| matches!(e, Event::AllocationDeleted { .. })));
}

#[test]
fn kernel_traffic_counts_toward_the_packet_trigger() {
    let mut w = world();
    let (c, _relay, _b) = bound(&mut w);
    w.events();
    let tuple = w.tuple(c.addr, w.local);
    w.server
        .offloaded_traffic(w.now, tuple, 0x4001, traffic(4000));
    assert_eq!(w.events(), []);
    w.server
        .offloaded_traffic(w.now, tuple, 0x4001, traffic(96));
    let events = w.events();
    let [Event::Traffic { delta, .. }] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(*delta, traffic(4096));
}

#[test]
fn mixed_families_stay_in_user_space() {
    // An IPv6 client on an IPv4 relay: the program rewrites headers in place, one family.
    let mut w = world();
    let mut c = Client::new("[2001:db8::5]:40000");
    c.allocate(&mut w);
    let peer: SocketAddr = PEER.parse().unwrap();
    assert_eq!(error_code(&c.bind_channel(&mut w, 0x4001, peer)), None);
    assert_eq!(commands(&mut w), []);
}

#[test]
fn every_channel_number_the_core_accepts_is_offloaded() {
    // RFC 8656's range and RFC 5766's above it (coturn's clients pick from 0x4000–0x7FFF).
    let mut w = world();
    let peer: SocketAddr = PEER.parse().unwrap();
    for (i, channel) in [0x4000u16, 0x4fff, 0x5000, 0x7fff].into_iter().enumerate() {
        let mut c = Client::new(&format!("203.0.113.5:{}", 40000 + i));
        c.allocate(&mut w);
        assert_eq!(error_code(&c.bind_channel(&mut w, channel, peer)), None);
        let cmds = commands(&mut w);
        assert!(
            matches!(cmds[..], [OffloadCommand::Install(b)] if b.channel == channel),
            "{channel:#x}: {cmds:?}"
        );
    }
}
