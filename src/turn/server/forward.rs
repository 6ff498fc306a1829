//! Forwarding (RFC 8656 §11, §12.4–12.5): ChannelData and Send indications from clients,
//! datagrams from peers, through ONE check (`Server::pass`): allocation → expiry →
//! channel → permission (and, on the server's own addresses, relay ports only) → size →
//! bandwidth → counters.
//!
//! Owns: the hot path. Must not: allocate, hash more than the 5-tuple, or log per packet.

use super::{ClientAction, PeerAction, RelayId, Server, PEER_HEADROOM};
use crate::stun::{self, ChannelData, Message};
use crate::turn::{Dropped, Event, FiveTuple};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

/// How a datagram names its peer, which also says which way it goes.
#[derive(Copy, Clone)]
enum Leg {
    /// ChannelData from the client on this channel number.
    Channel(u16),
    /// A Send indication from the client to this peer.
    Send(SocketAddr),
    /// From this peer, received on the allocation's relay socket.
    FromPeer(SocketAddr),
}

/// A datagram at the forwarding check: the allocation it names (if any), how it names its
/// peer, its size as received and its application data's size.
#[derive(Copy, Clone)]
struct Hop {
    slot: Option<u32>,
    leg: Leg,
    received: usize,
    payload: usize,
}

/// Where a datagram that passed goes.
struct Route {
    peer: SocketAddr,
    /// The channel bound to the peer (peer → client: ChannelData, else a Data indication).
    channel: Option<u16>,
    tuple: FiveTuple,
}

impl Server {
    /// The one forwarding check. `received` is the datagram as it arrived, `payload` the
    /// application data in it. Counts the drop and returns `None` when it fails.
    // Inlined into its three callers: passed out of line, `Hop` and `Route` go through
    // the stack and the peer path measured 2-3x slower (benches/core.rs).
    #[inline(always)]
    fn pass(&mut self, now: Instant, hop: Hop) -> Option<Route> {
        self.check(now, hop)
            .map_err(|cause| self.counters.count_drop(cause))
            .ok()
    }

    #[inline(always)]
    fn check(&mut self, now: Instant, hop: Hop) -> Result<Route, Dropped> {
        let Hop {
            slot,
            leg,
            received,
            payload,
        } = hop;
        let slot = slot.ok_or(Dropped::NoAllocation)?;
        let max_bps = self.config.max_bps;
        let alloc = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.allocation.as_mut())
            .ok_or(Dropped::NoAllocation)?;
        if alloc.expires <= now {
            return Err(Dropped::NoAllocation);
        }
        let (peer, channel) = match leg {
            Leg::Channel(number) => {
                let c = alloc
                    .channel_by_number(number, now)
                    .ok_or(Dropped::NoChannel)?;
                (c.peer, Some(number))
            }
            Leg::Send(peer) => (peer, None),
            Leg::FromPeer(peer) => (peer, alloc.channel_by_peer(peer, now).map(|c| c.number)),
        };
        let own = alloc
            .permission(peer.ip(), now)
            .ok_or(Dropped::NoPermission)?
            .own;
        if own && !self.config.relay_range.contains(&peer.port()) {
            return Err(Dropped::OwnAddressPort);
        }
        let from_peer = matches!(leg, Leg::FromPeer(_));
        // What leaves: the payload toward a peer, the framed payload toward the client.
        let stream = alloc.info.five_tuple.transport.is_stream();
        let sent = if from_peer {
            framed_len(peer, channel, payload, stream).ok_or(Dropped::Malformed)?
        } else {
            payload
        };
        let (bucket, spent) = if from_peer {
            (alloc.bucket_out.as_mut(), sent)
        } else {
            (alloc.bucket_in.as_mut(), received)
        };
        if let Some(bucket) = bucket {
            if !bucket.take(now, max_bps, spent) {
                return Err(Dropped::RateLimited);
            }
        }
        let (client, peer_side) = (&mut alloc.unreported.client, &mut alloc.unreported.peer);
        if from_peer {
            peer_side.rcvp += 1;
            peer_side.rcvb += payload as u64;
            client.sentp += 1;
            client.sentb += sent as u64;
            self.counters.relayed_to_client += 1;
        } else {
            client.rcvp += 1;
            client.rcvb += received as u64;
            peer_side.sentp += 1;
            peer_side.sentb += payload as u64;
            self.counters.relayed_to_peer += 1;
        }
        let tuple = alloc.info.five_tuple;
        self.maybe_report(slot);
        Ok(Route {
            peer,
            channel,
            tuple,
        })
    }

    pub(super) fn client_channel_data(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        buf: &[u8],
    ) -> ClientAction {
        let Ok(cd) = ChannelData::parse(buf) else {
            self.counters.count_drop(Dropped::Malformed);
            return ClientAction::None;
        };
        let slot = self.by_tuple.get(&tuple).copied();
        let len = cd.payload.len();
        match (
            slot,
            self.pass(
                now,
                Hop {
                    slot,
                    leg: Leg::Channel(cd.number),
                    received: buf.len(),
                    payload: len,
                },
            ),
        ) {
            (Some(slot), Some(route)) => ClientAction::ToPeer {
                relay: RelayId(slot),
                peer: route.peer,
                payload: stun::CHANNEL_DATA_HEADER_LEN..stun::CHANNEL_DATA_HEADER_LEN + len,
            },
            _ => ClientAction::None,
        }
    }

    pub(super) fn send_indication(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        msg: &Message<'_>,
    ) -> ClientAction {
        let Some(slot) = self.by_tuple.get(&tuple).copied() else {
            self.counters.count_drop(Dropped::NoAllocation);
            return ClientAction::None;
        };
        let (Ok(Some(peer)), Some(data)) = (msg.xor_address(stun::XOR_PEER_ADDRESS), msg.data())
        else {
            self.counters.count_drop(Dropped::Malformed);
            return ClientAction::None;
        };
        let received = msg.as_bytes().len();
        let hop = Hop {
            slot: Some(slot),
            leg: Leg::Send(peer),
            received,
            payload: data.value.len(),
        };
        match self.pass(now, hop) {
            Some(route) => {
                let start = data.value_offset();
                ClientAction::ToPeer {
                    relay: RelayId(slot),
                    peer: route.peer,
                    payload: start..start + data.value.len(),
                }
            }
            None => ClientAction::None,
        }
    }

    /// A datagram from `peer` received on relay socket `relay`. The payload is
    /// `buf[payload]`; `payload.start >= PEER_HEADROOM` and
    /// `buf.len() >= payload.end + PEER_TAILROOM` must hold, else the datagram is dropped.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        relay: RelayId,
        peer: SocketAddr,
        buf: &mut [u8],
        payload: Range<usize>,
    ) -> PeerAction {
        if payload.start < PEER_HEADROOM
            || payload.start > payload.end
            || payload.end.saturating_add(super::PEER_TAILROOM) > buf.len()
        {
            self.counters.count_drop(Dropped::Malformed);
            return PeerAction::Drop;
        }
        let tid_seed = self.random();
        let len = payload.len();
        let hop = Hop {
            slot: Some(relay.0),
            leg: Leg::FromPeer(peer),
            received: len,
            payload: len,
        };
        let Some(route) = self.pass(now, hop) else {
            return PeerAction::Drop;
        };
        let range = match route.channel {
            Some(number) => {
                let start = payload.start - stun::CHANNEL_DATA_HEADER_LEN;
                // `pass` checked that the length fits in 16 bits.
                let header = ChannelData::header(number, len as u16);
                buf[start..payload.start].copy_from_slice(&header);
                // Over TCP and TLS, ChannelData is padded to 4 (RFC 8656 §12.5).
                let pad = if route.tuple.transport.is_stream() {
                    (4 - len % 4) % 4
                } else {
                    0
                };
                buf[payload.end..payload.end + pad].fill(0);
                start..payload.end + pad
            }
            None => {
                let mut tid = [0u8; 12];
                tid[..8].copy_from_slice(&tid_seed.to_le_bytes());
                tid[8..].copy_from_slice(&(tid_seed >> 17).to_le_bytes()[..4]);
                let mut prefix = [0u8; PEER_HEADROOM];
                let n = stun::data_indication_prefix(&mut prefix, &tid, peer, len);
                let start = payload.start - n;
                buf[start..payload.start].copy_from_slice(&prefix[..n]);
                let pad = (4 - len % 4) % 4;
                buf[payload.end..payload.end + pad].fill(0);
                start..payload.end + pad
            }
        };
        PeerAction::ToClient {
            local: route.tuple.server,
            client: route.tuple.client,
            transport: route.tuple.transport,
            range,
        }
    }

    /// Reports traffic when the client-side packet count reaches the trigger (coturn: 4096).
    pub(super) fn maybe_report(&mut self, slot: u32) {
        let trigger = self.config.stats_packet_trigger;
        if trigger == 0 {
            return;
        }
        if let Some(alloc) = self.allocation_mut(slot) {
            let c = &alloc.unreported.client;
            if c.rcvp + c.sentp >= trigger {
                let delta = alloc.take_unreported();
                let info = alloc.info.clone();
                self.events.push_back(Event::Traffic { info, delta });
            }
        }
    }
}

/// Bytes sent to the client for a peer payload of `len` bytes: ChannelData on a bound
/// channel (padded to 4 on a `stream` transport), else a Data indication (always padded).
/// `None` when the frame's length field cannot hold it.
fn framed_len(peer: SocketAddr, channel: Option<u16>, len: usize, stream: bool) -> Option<usize> {
    let pad = (4 - len % 4) % 4;
    match channel {
        Some(_) => {
            u16::try_from(len).ok()?;
            Some(stun::CHANNEL_DATA_HEADER_LEN + len + if stream { pad } else { 0 })
        }
        None => {
            // A Data indication's length field counts the padded DATA attribute.
            if len > usize::from(u16::MAX) - PEER_HEADROOM {
                return None;
            }
            let addr_len = if peer.is_ipv4() { 8 } else { 20 };
            let header = stun::HEADER_LEN + 4 + addr_len + 4;
            Some(header + len + pad)
        }
    }
}
