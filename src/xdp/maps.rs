//! The offload maps as user space sees them: the `#[repr(C)]` mirrors of the structs in
//! `bpf/uturn_xdp.h` (same fields, sizes and offsets; a test below pins them), a
//! [`ChannelOffload`] that builds both entries of one channel binding, and [`Maps`], the
//! handle that installs, removes and reads them.
//!
//! Owns the byte layout of keys and values and the rules an entry must satisfy (one address
//! family throughout, a channel in 0x4000–0x7FFF). Must not decide *when* a channel is
//! offloaded: that is the TURN core's call (RFC 8656 §12: bindings, expiry, permissions).

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

use aya::maps::{IterableMap, Map, MapData, MapError, PerCpuHashMap, PerCpuValues};
use aya::Pod;

use super::Error;

/// Channel numbers the program forwards: exactly those the TURN core accepts, RFC 8656 §12's
/// 0x4000–0x4FFF and RFC 5766's up to 0x7FFF (`CHANNEL_MIN`/`CHANNEL_MAX` in the program).
pub const CHANNELS: std::ops::RangeInclusive<u16> =
    crate::stun::MIN_CHANNEL..=crate::stun::MAX_CHANNEL;

/// `struct forward_key`: a ChannelData datagram's client 5-tuple and channel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardKey {
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    /// Network byte order, as every port and the channel here.
    pub client_port: u16,
    pub server_port: u16,
    pub channel: u16,
    pub pad: u16,
}

/// `struct counters`: one CPU's share of an entry's traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    /// UDP payload bytes received (forward: the whole ChannelData datagram).
    pub rx_bytes: u64,
    /// UDP payload bytes sent (reverse: ChannelData header included).
    pub tx_bytes: u64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_bytes += other.tx_bytes;
    }
}

/// `struct next_hop`: the program's per-CPU cache of its route lookup; installed zeroed
/// (expired), owned by the program afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub expires: u64,
    pub ifindex: u32,
    pub mtu: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub pad: [u8; 6],
}

/// `struct forward_value`: what a forwarded datagram is sent as.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardValue {
    pub relay_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    pub relay_port: u16,
    pub peer_port: u16,
    pub pad: u32,
    pub allocation: u64,
    pub counters: Counters,
    pub hop: NextHop,
}

/// `struct reverse_key`: a peer datagram's source and the relay address it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseKey {
    pub peer_addr: [u8; 16],
    pub relay_addr: [u8; 16],
    pub peer_port: u16,
    pub relay_port: u16,
}

/// `struct reverse_value`: the client 5-tuple and channel a peer datagram goes to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReverseValue {
    pub client_addr: [u8; 16],
    pub server_addr: [u8; 16],
    pub client_port: u16,
    pub server_port: u16,
    pub channel: u16,
    pub pad: u16,
    pub allocation: u64,
    pub counters: Counters,
    pub hop: NextHop,
}

// SAFETY: plain `#[repr(C)]` structs of integers and byte arrays with explicit padding
// fields (no implicit padding: the layout test checks size = sum of fields), so every bit
// pattern is a valid value and no uninitialised byte reaches the kernel.
unsafe impl Pod for ForwardKey {}
// SAFETY: as above.
unsafe impl Pod for ForwardValue {}
// SAFETY: as above.
unsafe impl Pod for ReverseKey {}
// SAFETY: as above.
unsafe impl Pod for ReverseValue {}
// SAFETY: as above.
unsafe impl Pod for NextHop {}

/// The map form of an address: IPv6 as is, IPv4 IPv4-mapped (`::ffff:a.b.c.d`).
fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// One channel binding to offload: the client's 5-tuple (UDP), its channel, the allocation's
/// relay address and the peer bound to the channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelOffload {
    pub client: SocketAddr,
    /// The server address the client sends to (the 5-tuple's local side).
    pub server: SocketAddr,
    pub channel: u16,
    pub relay: SocketAddr,
    pub peer: SocketAddr,
    /// The core's allocation id, carried in both entries for user space's benefit.
    pub allocation: u64,
}

impl ChannelOffload {
    /// Refuses what the program cannot forward: it rewrites headers in place, so all four
    /// addresses share one family; and it only matches the channel numbers the core accepts.
    pub fn validate(&self) -> Result<(), Error> {
        // An IPv4 client seen through a dual-stack socket (::ffff:a.b.c.d) is IPv4.
        let v4 = |a: &SocketAddr| a.ip().to_canonical().is_ipv4();
        if [self.server, self.relay, self.peer]
            .iter()
            .any(|a| v4(a) != v4(&self.client))
        {
            return Err(Error::Unsupported("addresses of more than one family"));
        }
        if !CHANNELS.contains(&self.channel) {
            return Err(Error::Unsupported("channel number outside 0x4000-0x7FFF"));
        }
        Ok(())
    }

    pub fn forward_key(&self) -> ForwardKey {
        ForwardKey {
            client_addr: addr_bytes(self.client.ip()),
            server_addr: addr_bytes(self.server.ip()),
            client_port: self.client.port().to_be(),
            server_port: self.server.port().to_be(),
            channel: self.channel.to_be(),
            pad: 0,
        }
    }

    pub fn forward_value(&self) -> ForwardValue {
        ForwardValue {
            relay_addr: addr_bytes(self.relay.ip()),
            peer_addr: addr_bytes(self.peer.ip()),
            relay_port: self.relay.port().to_be(),
            peer_port: self.peer.port().to_be(),
            pad: 0,
            allocation: self.allocation,
            counters: Counters::default(),
            hop: NextHop::default(),
        }
    }

    pub fn reverse_key(&self) -> ReverseKey {
        ReverseKey {
            peer_addr: addr_bytes(self.peer.ip()),
            relay_addr: addr_bytes(self.relay.ip()),
            peer_port: self.peer.port().to_be(),
            relay_port: self.relay.port().to_be(),
        }
    }

    pub fn reverse_value(&self) -> ReverseValue {
        ReverseValue {
            client_addr: addr_bytes(self.client.ip()),
            server_addr: addr_bytes(self.server.ip()),
            client_port: self.client.port().to_be(),
            server_port: self.server.port().to_be(),
            channel: self.channel.to_be(),
            pad: 0,
            allocation: self.allocation,
            counters: Counters::default(),
            hop: NextHop::default(),
        }
    }
}

/// What the kernel relayed for one channel, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadTraffic {
    /// client -> peer (forward entry).
    pub to_peer: Counters,
    /// peer -> client (reverse entry).
    pub to_client: Counters,
}

impl OffloadTraffic {
    /// The same traffic in the core's terms (coturn's rcv/sent, client and peer side), ready
    /// to add to the allocation's counters.
    pub fn to_turn(&self) -> crate::turn::Traffic {
        let mut t = crate::turn::Traffic::default();
        t.client.rcvp = self.to_peer.packets;
        t.client.rcvb = self.to_peer.rx_bytes;
        t.peer.sentp = self.to_peer.packets;
        t.peer.sentb = self.to_peer.tx_bytes;
        t.peer.rcvp = self.to_client.packets;
        t.peer.rcvb = self.to_client.rx_bytes;
        t.client.sentp = self.to_client.packets;
        t.client.sentb = self.to_client.tx_bytes;
        t
    }
}

/// The program's two maps. Every method is a bpf(2) call or two; none is for a hot path
/// (the core calls them on ChannelBind, expiry and once a second per offloaded channel).
pub struct Maps {
    forward: PerCpuHashMap<MapData, ForwardKey, ForwardValue>,
    reverse: PerCpuHashMap<MapData, ReverseKey, ReverseValue>,
    cpus: usize,
}

/// `bpf_map_update_elem` flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;

impl Maps {
    pub(super) fn new(
        forward: PerCpuHashMap<MapData, ForwardKey, ForwardValue>,
        reverse: PerCpuHashMap<MapData, ReverseKey, ReverseValue>,
    ) -> Result<Maps, Error> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| Error::Io(e))?;
        Ok(Maps {
            forward,
            reverse,
            cpus,
        })
    }

    /// Installs both directions of `binding` with zeroed counters. Installing the same
    /// binding again is a no-op that keeps its counters; a different binding on the same
    /// client 5-tuple and channel, or the same peer and relay address, is refused
    /// ([`Error::Conflict`]): remove the old one first, so its counters are not lost.
    pub fn install(&mut self, binding: &ChannelOffload) -> Result<(), Error> {
        binding.validate()?;
        let (fk, fv) = (binding.forward_key(), binding.forward_value());
        let (rk, rv) = (binding.reverse_key(), binding.reverse_value());
        self.check_same(binding)?;
        let fwd = PerCpuValues::try_from(vec![fv; self.cpus]).map_err(Error::Io)?;
        match self.forward.insert(fk, fwd, BPF_NOEXIST) {
            Ok(()) => {}
            Err(e) if is_exists(&e) => {}
            Err(e) => return Err(e.into()),
        }
        let rev = PerCpuValues::try_from(vec![rv; self.cpus]).map_err(Error::Io)?;
        match self.reverse.insert(rk, rev, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => {
                // Never leave half a binding: a forward entry alone would relay one way.
                let _ = self.forward.remove(&fk);
                Err(e.into())
            }
        }
    }

    /// Refuses an install whose keys exist with other values (the program's own fields,
    /// counters and next hop, aside).
    fn check_same(&self, binding: &ChannelOffload) -> Result<(), Error> {
        let fwd = binding.forward_value();
        if let Some(old) = get(&self.forward, &binding.forward_key())? {
            let installed = |v: &ForwardValue| ForwardValue {
                counters: fwd.counters,
                hop: fwd.hop,
                ..*v
            };
            if old.iter().any(|v| installed(v) != fwd) {
                return Err(Error::Conflict);
            }
        }
        let rev = binding.reverse_value();
        if let Some(old) = get(&self.reverse, &binding.reverse_key())? {
            let installed = |v: &ReverseValue| ReverseValue {
                counters: rev.counters,
                hop: rev.hop,
                ..*v
            };
            if old.iter().any(|v| installed(v) != rev) {
                return Err(Error::Conflict);
            }
        }
        Ok(())
    }

    /// Removes both directions and returns their traffic since install, each entry read
    /// and deleted in one bpf(2) call (only a datagram being relayed on another CPU at that
    /// instant can escape the count). Removing what is not installed returns zero traffic.
    pub fn remove(&mut self, binding: &ChannelOffload) -> Result<OffloadTraffic, Error> {
        let mut t = OffloadTraffic::default();
        let fwd = super::take::take(&mut self.forward, &binding.forward_key(), self.cpus)
            .map_err(Error::Remove)?;
        fwd.iter()
            .flatten()
            .for_each(|v| t.to_peer.add(&v.counters));
        let rev = super::take::take(&mut self.reverse, &binding.reverse_key(), self.cpus)
            .map_err(Error::Remove)?;
        rev.iter()
            .flatten()
            .for_each(|v| t.to_client.add(&v.counters));
        Ok(t)
    }

    /// Traffic since install, summed over CPUs (zero for a binding not installed). The
    /// counters keep running: the caller reports differences between two reads.
    pub fn read_counters(&self, binding: &ChannelOffload) -> Result<OffloadTraffic, Error> {
        let mut t = OffloadTraffic::default();
        if let Some(values) = get(&self.forward, &binding.forward_key())? {
            values.iter().for_each(|v| t.to_peer.add(&v.counters));
        }
        if let Some(values) = get(&self.reverse, &binding.reverse_key())? {
            values.iter().for_each(|v| t.to_client.add(&v.counters));
        }
        Ok(t)
    }

    /// Another handle on the same two maps (duplicated descriptors), e.g. one per shard:
    /// the kernel serialises updates, so handles need no lock between them.
    pub fn try_clone(&self) -> Result<Maps, Error> {
        fn dup<K: Pod, V: Pod>(
            map: &PerCpuHashMap<MapData, K, V>,
        ) -> Result<PerCpuHashMap<MapData, K, V>, Error> {
            let fd = map
                .map()
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(Error::Io)?;
            let data = MapData::from_fd(fd)?;
            Ok(PerCpuHashMap::try_from(Map::from_map_data(data)?)?)
        }
        Ok(Maps {
            forward: dup(&self.forward)?,
            reverse: dup(&self.reverse)?,
            cpus: self.cpus,
        })
    }

    /// Number of entries in each map (forward, reverse); walks the maps, for tests and
    /// diagnostics only.
    pub fn len(&self) -> (usize, usize) {
        (self.forward.keys().count(), self.reverse.keys().count())
    }
}

fn get<K: Pod, V: Pod>(
    map: &PerCpuHashMap<MapData, K, V>,
    key: &K,
) -> Result<Option<PerCpuValues<V>>, Error> {
    match map.get(key, 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn errno(e: &MapError) -> Option<i32> {
    match e {
        MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

fn is_exists(e: &MapError) -> bool {
    errno(e) == Some(libc::EEXIST)
}

fn is_not_found(e: &MapError) -> bool {
    errno(e) == Some(libc::ENOENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// The numbers written in bpf/uturn_xdp.h; the program was compiled against them.
    #[test]
    fn layouts_match_the_c_header() {
        assert_eq!(size_of::<ForwardKey>(), 40);
        assert_eq!(offset_of!(ForwardKey, client_addr), 0);
        assert_eq!(offset_of!(ForwardKey, server_addr), 16);
        assert_eq!(offset_of!(ForwardKey, client_port), 32);
        assert_eq!(offset_of!(ForwardKey, server_port), 34);
        assert_eq!(offset_of!(ForwardKey, channel), 36);
        assert_eq!(offset_of!(ForwardKey, pad), 38);

        assert_eq!(size_of::<Counters>(), 24);
        assert_eq!(offset_of!(Counters, packets), 0);
        assert_eq!(offset_of!(Counters, rx_bytes), 8);
        assert_eq!(offset_of!(Counters, tx_bytes), 16);

        assert_eq!(size_of::<NextHop>(), 32);
        assert_eq!(offset_of!(NextHop, expires), 0);
        assert_eq!(offset_of!(NextHop, ifindex), 8);
        assert_eq!(offset_of!(NextHop, mtu), 12);
        assert_eq!(offset_of!(NextHop, smac), 14);
        assert_eq!(offset_of!(NextHop, dmac), 20);
        assert_eq!(offset_of!(NextHop, pad), 26);

        assert_eq!(size_of::<ForwardValue>(), 104);
        assert_eq!(offset_of!(ForwardValue, relay_addr), 0);
        assert_eq!(offset_of!(ForwardValue, peer_addr), 16);
        assert_eq!(offset_of!(ForwardValue, relay_port), 32);
        assert_eq!(offset_of!(ForwardValue, peer_port), 34);
        assert_eq!(offset_of!(ForwardValue, pad), 36);
        assert_eq!(offset_of!(ForwardValue, allocation), 40);
        assert_eq!(offset_of!(ForwardValue, counters), 48);
        assert_eq!(offset_of!(ForwardValue, hop), 72);

        assert_eq!(size_of::<ReverseKey>(), 36);
        assert_eq!(offset_of!(ReverseKey, peer_addr), 0);
        assert_eq!(offset_of!(ReverseKey, relay_addr), 16);
        assert_eq!(offset_of!(ReverseKey, peer_port), 32);
        assert_eq!(offset_of!(ReverseKey, relay_port), 34);

        assert_eq!(size_of::<ReverseValue>(), 104);
        assert_eq!(offset_of!(ReverseValue, client_addr), 0);
        assert_eq!(offset_of!(ReverseValue, server_addr), 16);
        assert_eq!(offset_of!(ReverseValue, client_port), 32);
        assert_eq!(offset_of!(ReverseValue, server_port), 34);
        assert_eq!(offset_of!(ReverseValue, channel), 36);
        assert_eq!(offset_of!(ReverseValue, pad), 38);
        assert_eq!(offset_of!(ReverseValue, allocation), 40);
        assert_eq!(offset_of!(ReverseValue, counters), 48);
        assert_eq!(offset_of!(ReverseValue, hop), 72);
    }

    fn binding() -> ChannelOffload {
        ChannelOffload {
            client: "192.0.2.10:40000".parse().unwrap(),
            server: "192.0.2.1:3478".parse().unwrap(),
            channel: 0x4001,
            relay: "198.51.100.1:50000".parse().unwrap(),
            peer: "198.51.100.20:7000".parse().unwrap(),
            allocation: 7,
        }
    }

    #[test]
    fn keys_are_in_wire_order_with_mapped_ipv4() {
        let b = binding();
        let k = b.forward_key();
        assert_eq!(
            k.client_addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 10]
        );
        assert_eq!(k.client_port.to_ne_bytes(), 40000u16.to_be_bytes());
        assert_eq!(k.channel.to_ne_bytes(), [0x40, 0x01]);
        let r = b.reverse_key();
        assert_eq!(r.peer_port.to_ne_bytes(), 7000u16.to_be_bytes());
        assert_eq!(r.relay_addr[12..], [198, 51, 100, 1]);
    }

    #[test]
    fn refuses_what_the_program_cannot_forward() {
        let mut b = binding();
        assert!(b.validate().is_ok());
        b.peer = "[2001:db8::1]:7000".parse().unwrap();
        assert!(b.validate().is_err());
        let mut b = binding();
        // The core's whole range, RFC 5766's numbers included, and nothing beyond.
        for channel in [0x4000, 0x4fff, 0x5000, 0x7fff] {
            b.channel = channel;
            assert!(b.validate().is_ok(), "{channel:#x}");
        }
        for channel in [0x3fff, 0x8000, 0xffff] {
            b.channel = channel;
            assert!(b.validate().is_err(), "{channel:#x}");
        }
        // IPv4-mapped addresses are IPv4, with the same key bytes.
        let mut b = binding();
        b.client = "[::ffff:192.0.2.10]:40000".parse().unwrap();
        assert!(b.validate().is_ok());
        assert_eq!(b.forward_key(), binding().forward_key());
    }

    #[test]
    fn traffic_maps_to_the_core_counters() {
        let t = OffloadTraffic {
            to_peer: Counters {
                packets: 2,
                rx_bytes: 208,
                tx_bytes: 200,
            },
            to_client: Counters {
                packets: 3,
                rx_bytes: 300,
                tx_bytes: 312,
            },
        }
        .to_turn();
        assert_eq!((t.client.rcvp, t.client.rcvb), (2, 208));
        assert_eq!((t.peer.sentp, t.peer.sentb), (2, 200));
        assert_eq!((t.peer.rcvp, t.peer.rcvb), (3, 300));
        assert_eq!((t.client.sentp, t.client.sentb), (3, 312));
    }
}
