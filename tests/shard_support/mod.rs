//! In-process shards for the shard tests: a server started through the library with
//! test knobs on free ports, the events it reports, and one relaying allocation.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uturn::client::{Client, Incoming};
use uturn::config::Config;
use uturn::shard::{Running, TestKnobs};
use uturn::stats::EventSink;
use uturn::stun::{Class, MessageBuilder, Method};
use uturn::turn::{DeleteReason, Event};

/// A STUN Binding request (fixed transaction id).
pub fn binding_request() -> Vec<u8> {
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Class::Request, Method::BINDING, &[9; 12]);
    req
}

#[derive(Default)]
pub struct Events(Mutex<Vec<Event>>);

impl EventSink for Events {
    fn send(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

impl Events {
    pub fn created(&self) -> Vec<(u64, SocketAddr)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Event::AllocationCreated { info, .. } => Some((info.id, info.relay)),
                _ => None,
            })
            .collect()
    }

    pub fn deleted(&self) -> Vec<(u64, DeleteReason)> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter_map(|e| match e {
                Event::AllocationDeleted { info, reason, .. } => Some((info.id, *reason)),
                _ => None,
            })
            .collect()
    }
}

/// Held while a shard starts, so that a test can tell its own shard threads from other
/// tests' (thread names repeat across servers).
static STARTING: Mutex<()> = Mutex::new(());

/// [`start`], and the ids of the threads named `name` it started.
pub fn start_finding_threads(
    config: Config,
    events: &Arc<Events>,
    knobs: TestKnobs,
    name: &str,
) -> (Running, Vec<String>) {
    let _alone = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let earlier = thread_ids(name);
    let running = start_unlocked(config, events, knobs);
    let mut ours = thread_ids(name);
    ours.retain(|t| !earlier.contains(t));
    (running, ours)
}

/// Ids of this process's threads named `name`.
fn thread_ids(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|t| t.ok())
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .map(|t| t.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `config` with `knobs` on free ports (new ones when another process took one),
/// reporting events to `events`.
pub fn start(config: Config, events: &Arc<Events>, knobs: TestKnobs) -> Running {
    let _alone = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    start_unlocked(config, events, knobs)
}

fn start_unlocked(config: Config, events: &Arc<Events>, knobs: TestKnobs) -> Running {
    for _attempt in 0..20 {
        let mut c = config.clone();
        c.listening_port = crate::common::free_listen_port();
        (c.min_port, c.max_port) = crate::common::free_port_block(100);
        let observer = uturn::observer_from_config(&c);
        let sink = Some(events.clone() as Arc<dyn EventSink>);
        match uturn::shard::start_with(&c, observer, sink, knobs.clone()) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("start: {e}"),
        }
    }
    panic!("no free ports");
}

/// One allocation with a channel to a peer; `rounds` ChannelData round trips.
pub struct Relay {
    pub client: Client,
    pub peer: UdpSocket,
    pub relayed: SocketAddr,
}

impl Relay {
    pub fn new(server: SocketAddr) -> Relay {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut client = Client::connect(server, "alice", "secret").unwrap();
        let relayed = client.allocate(None).expect("allocate");
        let peer_addr = peer.local_addr().unwrap();
        client.create_permission(&[peer_addr]).unwrap();
        client.channel_bind(0x4000, peer_addr).unwrap();
        Relay {
            client,
            peer,
            relayed,
        }
    }

    /// A round trip with a payload no other datagram carries; earlier datagrams still
    /// queued at either end are skipped, lost ones retried, within two seconds.
    pub fn round_trip(&mut self, tag: u32) -> bool {
        let payload = format!("round trip {tag}").into_bytes();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut buf = [0u8; 4096];
        let mut at_peer = false;
        while !at_peer && Instant::now() < deadline {
            self.client.send_channel_data(0x4000, &payload).unwrap();
            while let Ok((n, _)) = self.peer.recv_from(&mut buf) {
                if buf[..n] == payload[..] {
                    at_peer = true;
                    break;
                }
            }
        }
        while at_peer && Instant::now() < deadline {
            self.peer.send_to(&payload, self.relayed).unwrap();
            while let Ok(incoming) = self.client.recv(Duration::from_millis(200)) {
                if incoming
                    == (Incoming::ChannelData {
                        channel: 0x4000,
                        data: payload.clone(),
                    })
                {
                    return true;
                }
            }
        }
        false
    }
}
