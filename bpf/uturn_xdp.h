/* Map layouts shared by the XDP program (bpf/uturn_xdp.c) and its loader (src/xdp/maps.rs).
 *
 * The Rust side declares the same structs with #[repr(C)]; a unit test there checks every
 * size and offset against the numbers written here, so a change on one side without the
 * other fails the build's tests.
 *
 * Conventions:
 * - Addresses are 16 bytes; an IPv4 address is stored IPv4-mapped (::ffff:a.b.c.d), so one
 *   key type serves both families and a v4 key never equals a v6 one.
 * - Addresses, ports and the channel number are in network byte order, exactly as on the wire.
 * - Every pad field is zero (keys are hashed bytewise).
 */
#ifndef UTURN_XDP_H
#define UTURN_XDP_H

#include <linux/types.h>

/* Forward (client -> peer): the client's 5-tuple plus the channel it sends on.
 * size 40: client_addr 0, server_addr 16, client_port 32, server_port 34, channel 36, pad 38 */
struct forward_key {
	__u8 client_addr[16];
	__u8 server_addr[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
};

/* Per-CPU packet/byte counters of one entry. rx_bytes: UDP payload bytes received (for the
 * forward direction the whole ChannelData datagram, header and padding included); tx_bytes:
 * UDP payload bytes sent. size 24: packets 0, rx_bytes 8, tx_bytes 16 */
struct counters {
	__u64 packets;
	__u64 rx_bytes;
	__u64 tx_bytes;
};

/* The entry's next hop as bpf_fib_lookup last found it, kept per CPU and trusted until
 * `expires` (bpf_ktime_get_coarse_ns) or for datagrams up to `mtu` bytes (IP length).
 * User space installs it zeroed (expired). size 32: expires 0, ifindex 8, mtu 12, smac 14,
 * dmac 20, pad 26 */
struct next_hop {
	__u64 expires;
	__u32 ifindex;
	__u16 mtu;
	__u8 smac[6];
	__u8 dmac[6];
	__u8 pad[6];
};

/* What to send a forwarded datagram as. allocation: the core's allocation id, for user space.
 * size 104: relay_addr 0, peer_addr 16, relay_port 32, peer_port 34, pad 36, allocation 40,
 * counters 48, hop 72 */
struct forward_value {
	__u8 relay_addr[16];
	__u8 peer_addr[16];
	__be16 relay_port;
	__be16 peer_port;
	__u32 pad;
	__u64 allocation;
	struct counters counters;
	struct next_hop hop;
};

/* Reverse (peer -> client): the peer's transport address and the relay address it sent to.
 * size 36: peer_addr 0, relay_addr 16, peer_port 32, relay_port 34 */
struct reverse_key {
	__u8 peer_addr[16];
	__u8 relay_addr[16];
	__be16 peer_port;
	__be16 relay_port;
};

/* size 104: client_addr 0, server_addr 16, client_port 32, server_port 34, channel 36, pad 38,
 * allocation 40, counters 48, hop 72 */
struct reverse_value {
	__u8 client_addr[16];
	__u8 server_addr[16];
	__be16 client_port;
	__be16 server_port;
	__be16 channel;
	__u16 pad;
	__u64 allocation;
	struct counters counters;
	struct next_hop hop;
};

#endif
