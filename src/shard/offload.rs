//! The shard's side of the kernel fast path: applies the core's offload commands to its
//! handle on the XDP maps at the end of a loop turn (never per packet), reads the counters of
//! its installed bindings once a second and at removal, and hands the differences back to the
//! core so the allocation's traffic (Redis, observer, metrics) includes what the kernel
//! relayed.
//!
//! Must not decide what to offload (the core does) or retry a refused install: a refusal is
//! counted and the channel stays in user space.

use crate::turn::{FiveTuple, OffloadCommand, Server, Transport};
use crate::xdp::{ChannelOffload, Counters, Maps, OffloadTraffic};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often installed bindings' counters are read.
const READ_EVERY: Duration = Duration::from_secs(1);

/// What the shard did to the maps, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadCounters {
    pub installs: u64,
    pub removes: u64,
    /// Installs the kernel refused (map full, conflicting entry); relayed in user space.
    pub refusals: u64,
    /// Map reads or removals that failed (their traffic is lost to the counters).
    pub errors: u64,
    /// Datagrams the kernel relayed, both directions, as of the last read.
    pub packets: u64,
    /// Bindings installed now.
    pub installed: u64,
}

/// Shard `index`'s own handle on the maps of `offload`, if there is an offload.
pub(super) fn shard_maps(offload: Option<&crate::xdp::Offload>, index: usize) -> Option<Maps> {
    offload?
        .maps()
        .try_clone()
        .map_err(|e| tracing::warn!(shard = index, "XDP offload off on this shard: {e}"))
        .ok()
}

pub(crate) struct ShardOffload {
    maps: Maps,
    /// Installed bindings and their counters at the last read.
    installed: HashMap<ChannelOffload, OffloadTraffic>,
    read_at: Instant,
    pub counters: OffloadCounters,
}

impl ShardOffload {
    pub fn new(maps: Maps, now: Instant) -> Self {
        ShardOffload {
            maps,
            installed: HashMap::new(),
            read_at: now,
            counters: OffloadCounters::default(),
        }
    }

    /// Applies every pending command, then (once a second) reads the installed counters.
    pub fn apply(&mut self, now: Instant, server: &mut Server) {
        while let Some(command) = server.poll_offload() {
            match command {
                OffloadCommand::Install(b) => self.install(b),
                OffloadCommand::Remove(b) => {
                    let delta = self.remove(&b);
                    server.offload_removed(now, &b, delta.to_turn());
                }
            }
        }
        if now.saturating_duration_since(self.read_at) >= READ_EVERY {
            self.read_at = now;
            self.read_all(now, server);
        }
        self.counters.installed = self.installed.len() as u64;
    }

    fn install(&mut self, b: ChannelOffload) {
        match self.maps.install(&b) {
            Ok(()) => {
                self.installed.insert(b, OffloadTraffic::default());
                self.counters.installs += 1;
            }
            Err(e) => {
                self.counters.refusals += 1;
                if self.counters.refusals.is_power_of_two() {
                    tracing::warn!(
                        refusals = self.counters.refusals,
                        "XDP offload refused a channel binding, relaying it in user space: {e}"
                    );
                }
            }
        }
    }

    /// Removes `b` and returns its traffic since the last read (zero if never installed).
    fn remove(&mut self, b: &ChannelOffload) -> OffloadTraffic {
        let Some(last) = self.installed.remove(b) else {
            return OffloadTraffic::default();
        };
        self.counters.removes += 1;
        match self.maps.remove(b) {
            Ok(total) => self.count(since(&total, &last)),
            Err(e) => {
                self.counters.errors += 1;
                tracing::warn!("cannot remove an offloaded channel binding: {e}");
                OffloadTraffic::default()
            }
        }
    }

    fn read_all(&mut self, now: Instant, server: &mut Server) {
        let mut deltas = Vec::new();
        for (b, last) in self.installed.iter_mut() {
            match self.maps.read_counters(b) {
                Ok(total) => {
                    let delta = since(&total, last);
                    *last = total;
                    if delta != OffloadTraffic::default() {
                        deltas.push((*b, delta));
                    }
                }
                Err(_) => self.counters.errors += 1,
            }
        }
        for (b, delta) in deltas {
            let delta = self.count(delta);
            let tuple = FiveTuple {
                client: b.client,
                server: b.server,
                transport: Transport::Udp,
            };
            server.offloaded_traffic(now, tuple, b.channel, delta.to_turn());
        }
    }

    fn count(&mut self, delta: OffloadTraffic) -> OffloadTraffic {
        self.counters.packets += delta.to_peer.packets + delta.to_client.packets;
        delta
    }
}

/// Counter differences; the kernel's counters only grow while an entry lives.
fn since(now: &OffloadTraffic, last: &OffloadTraffic) -> OffloadTraffic {
    let d = |a: &Counters, b: &Counters| Counters {
        packets: a.packets.saturating_sub(b.packets),
        rx_bytes: a.rx_bytes.saturating_sub(b.rx_bytes),
        tx_bytes: a.tx_bytes.saturating_sub(b.tx_bytes),
    };
    OffloadTraffic {
        to_peer: d(&now.to_peer, &last.to_peer),
        to_client: d(&now.to_client, &last.to_client),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn traffic(p: u64) -> OffloadTraffic {
        let c = Counters {
            packets: p,
            rx_bytes: 10 * p,
            tx_bytes: 20 * p,
        };
        OffloadTraffic {
            to_peer: c,
            to_client: Counters {
                packets: 2 * p,
                ..c
            },
        }
    }

    /// Needs root (it loads the program): fails, saying so, without it.
    #[test]
    fn refusals_are_counted_and_removals_release_held_deletions() {
        use crate::stun::{self, Method};
        use crate::testing::{error_code, Client, World};
        use crate::turn::Event;
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let root = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0");
        assert!(
            root,
            "NOT RUN: this test loads the XDP program and needs root"
        );
        // Room for one binding: the second install is refused.
        let offload = crate::xdp::Offload::load(1).expect("load the XDP program");
        let mut w = World::with(|c| c.offload = true);
        let mut shard = ShardOffload::new(offload.maps().try_clone().unwrap(), w.now);
        let peer: SocketAddr = "203.0.114.7:9000".parse().unwrap();
        let mut clients = [
            Client::new("203.0.113.5:40000"),
            Client::new("203.0.113.6:40000"),
        ];
        for c in &mut clients {
            c.allocate(&mut w);
            assert_eq!(error_code(&c.bind_channel(&mut w, 0x4001, peer)), None);
        }
        shard.apply(w.now, &mut w.server);
        let c = shard.counters;
        assert_eq!((c.installs, c.refusals, c.installed), (1, 1, 1));
        assert_eq!(offload.maps().len(), (1, 1));

        w.events();
        for c in &mut clients {
            c.authed(&mut w, Method::REFRESH, |m| {
                m.add_u32(stun::LIFETIME, 0);
            });
        }
        let deleted = |events: &[Event]| {
            events
                .iter()
                .filter(|e| matches!(e, Event::AllocationDeleted { .. }))
                .count()
        };
        assert_eq!(deleted(&w.events()), 0, "held for the kernel's last counts");
        shard.apply(w.now, &mut w.server);
        assert_eq!(deleted(&w.events()), 2);
        assert_eq!(w.server.closing_count(), 0);
        assert_eq!((shard.counters.removes, shard.counters.installed), (1, 0));
        assert_eq!(offload.maps().len(), (0, 0));
    }

    #[test]
    fn since_is_the_difference_and_never_wraps() {
        assert_eq!(since(&traffic(7), &traffic(3)), traffic(4));
        assert_eq!(since(&traffic(3), &traffic(3)), OffloadTraffic::default());
        // A binding removed and installed again starts from zero: no huge delta.
        assert_eq!(since(&traffic(1), &traffic(5)), OffloadTraffic::default());
    }
}
