// SPDX-License-Identifier: MIT OR GPL-2.0
/* uturn's XDP fast path: relays ChannelData of channels the TURN core installed, in the
 * driver's receive hook (RFC 8656 §12, UDP clients only).
 *
 * client -> peer: a ChannelData datagram from a bound client 5-tuple on a bound channel
 * loses its 4-byte header and leaves as plain UDP from the relay address to the peer.
 * peer -> client: a datagram from a bound peer to its relay address gains the header and
 * leaves from the server address to the client's.
 *
 * What it owns: parsing, rewriting and forwarding of those datagrams, and the per-CPU
 * counters of each map entry. What it must not do: decide anything. User space (the TURN
 * core) installs and removes entries and keeps expiry, permissions and quotas; everything
 * that does not match an entry exactly, or that this program cannot forward as it is, goes
 * to the kernel stack unchanged (XDP_PASS): STUN, unbound channels, fragments, IPv4 options,
 * IPv6 extension headers, VLAN tags, datagrams too big for the egress MTU, and routes or
 * neighbours the kernel does not know yet. The one rewritten datagram it passes up is an
 * IPv4 one for a loopback address received on loopback: the stack delivers it locally.
 *
 * The license string is GPL-compatible because bpf_fib_lookup is a GPL-only helper.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "uturn_xdp.h"

#define AF_INET 2
#define AF_INET6 10
/* The channel numbers the TURN core accepts (src/stun/channel_data.rs): RFC 8656 §12's
 * 0x4000 through 0x4FFF and RFC 5766's up to 0x7FFF, which coturn and its clients use. */
#define CHANNEL_MIN 0x4000
#define CHANNEL_MAX 0x7FFF
/* A relayed datagram is a new datagram sent by the relay, as a socket would send it. */
#define RELAY_TTL 64
/* Default capacity; the loader may change it before loading. */
#define MAX_ENTRIES 16384

/* Not preallocated: per-CPU values cost 104 bytes per possible CPU and entry, which for a
 * full map on a many-core host would be hundreds of MB held from the start. Entries are
 * only ever inserted from user space, so allocating then costs nothing per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct forward_key);
	__type(value, struct forward_value);
} forward SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct reverse_key);
	__type(value, struct reverse_value);
} reverse SEC(".maps");

/* The parts of a received IP/UDP datagram the rewrite needs. src/dst use the maps' address
 * form (IPv4-mapped for IPv4), so they can be copied into keys as they are. */
struct datagram {
	struct reverse_key tuple; /* peer_* = source, relay_* = destination */
	__u16 payload_len;        /* UDP payload bytes, host order */
	__u16 udp_check;          /* as received */
	__u8 tos;                 /* IPv4 TOS or IPv6 traffic class */
	__be16 ip_id;             /* IPv4 only */
	__be16 frag_off;          /* IPv4 only: the DF bit, the only flag left */
};

/* One's complement arithmetic on 16-bit words taken as stored (RFC 1071: byte order does not
 * matter as long as every word is taken the same way). */
static __always_inline __u32 csum_add(__u32 sum, __u16 word)
{
	return sum + word;
}

static __always_inline __u32 csum_sub(__u32 sum, __u16 word)
{
	return sum + (__u16)~word;
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u32 csum_addr(__u32 sum, const __u8 *addr, int v6, int add)
{
	const __u16 *w = (const __u16 *)addr;
	int first = v6 ? 0 : 6;
#pragma unroll
	for (int i = 0; i < 8; i++) {
		if (i < first)
			continue;
		sum = add ? csum_add(sum, w[i]) : csum_sub(sum, w[i]);
	}
	return sum;
}

/* The UDP checksum for the same payload bytes under a new pseudo-header and header:
 * removes the old addresses/ports/length (length twice: pseudo-header and UDP header) and
 * adds the new ones. The caller adjusts for payload bytes added or removed. */
static __always_inline __u32 csum_retuple(__u32 sum, const struct reverse_key *old_tuple,
					  __u16 old_udp_len, const __u8 *src, const __u8 *dst,
					  __be16 sport, __be16 dport, __u16 new_udp_len, int v6)
{
	sum = csum_addr(sum, old_tuple->peer_addr, v6, 0);
	sum = csum_addr(sum, old_tuple->relay_addr, v6, 0);
	sum = csum_sub(sum, old_tuple->peer_port);
	sum = csum_sub(sum, old_tuple->relay_port);
	sum = csum_sub(sum, bpf_htons(old_udp_len));
	sum = csum_sub(sum, bpf_htons(old_udp_len));
	sum = csum_addr(sum, src, v6, 1);
	sum = csum_addr(sum, dst, v6, 1);
	sum = csum_add(sum, sport);
	sum = csum_add(sum, dport);
	sum = csum_add(sum, bpf_htons(new_udp_len));
	sum = csum_add(sum, bpf_htons(new_udp_len));
	return sum;
}

static __always_inline __u16 csum_finish(__u32 sum)
{
	__u16 check = ~csum_fold(sum);
	/* 0 means "no checksum" in UDP; a computed 0 is sent as its other form. */
	return check ? check : 0xffff;
}

static __always_inline __u16 l3_offset(void)
{
	return sizeof(struct ethhdr);
}

static __always_inline __u16 l4_offset(int v6)
{
	return l3_offset() + (v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
}

/* Fills `d` from the frame; returns 0 when it is a plain UDP datagram this program may touch. */
static __always_inline int parse(struct xdp_md *ctx, struct datagram *d, int v6)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct udphdr *udp = data + l4_offset(v6);
	__u16 udp_len;

	if ((void *)(udp + 1) > end)
		return -1;
	if (v6) {
		struct ipv6hdr *ip6 = data + l3_offset();

		/* Any extension header (fragment, hop-by-hop, ...) goes to the stack. */
		if (ip6->nexthdr != IPPROTO_UDP)
			return -1;
		if (ip6->payload_len != udp->len)
			return -1;
		__builtin_memcpy(d->tuple.peer_addr, &ip6->saddr, 16);
		__builtin_memcpy(d->tuple.relay_addr, &ip6->daddr, 16);
		d->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		/* The UDP checksum is mandatory over IPv6; let the stack drop a datagram without. */
		if (udp->check == 0)
			return -1;
	} else {
		struct iphdr *ip = data + l3_offset();

		if (ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
			return -1;
		/* The rewrite writes a fresh header checksum: a damaged header must not be
		 * laundered into a valid one, so it goes to the stack (which drops it). */
		{
			const __u16 *w = (const __u16 *)ip;
			__u32 sum = 0;

#pragma unroll
			for (int i = 0; i < 10; i++)
				sum = csum_add(sum, w[i]);
			if (csum_fold(sum) != 0xffff)
				return -1;
		}
		/* MF set or a fragment offset: a fragment. */
		if (ip->frag_off & bpf_htons(0x3fff))
			return -1;
		if (bpf_ntohs(ip->tot_len) != sizeof(struct iphdr) + bpf_ntohs(udp->len))
			return -1;
		/* IPv4-mapped; the caller zeroed the rest. */
		d->tuple.peer_addr[10] = 0xff;
		d->tuple.peer_addr[11] = 0xff;
		__builtin_memcpy(d->tuple.peer_addr + 12, &ip->saddr, 4);
		d->tuple.relay_addr[10] = 0xff;
		d->tuple.relay_addr[11] = 0xff;
		__builtin_memcpy(d->tuple.relay_addr + 12, &ip->daddr, 4);
		d->tos = ip->tos;
		d->ip_id = ip->id;
		d->frag_off = ip->frag_off;
	}
	udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(struct udphdr))
		return -1;
	/* The whole datagram must be in this (linear) frame. */
	if (data + l4_offset(v6) + udp_len > end)
		return -1;
	d->tuple.peer_port = udp->source;
	d->tuple.relay_port = udp->dest;
	d->payload_len = udp_len - sizeof(struct udphdr);
	d->udp_check = udp->check;
	return 0;
}

/* How long a next hop found by bpf_fib_lookup is reused. The lookup is most of the
 * program's cost (IPv6 especially); a route or neighbour change reaches an offloaded
 * channel within this time. */
#define NEXT_HOP_TTL_NS 1000000000ULL

/* Next hop for a datagram from src to dst of `ip_len` bytes (IP header included), from the
 * entry's cache or a fresh lookup. Returns -1 when there is none to use: no route, no
 * neighbour yet, needs fragmenting, forwarding off on the ingress interface, ... (the
 * stack handles those, and resolves the neighbour for next time). */
static __always_inline int next_hop(struct xdp_md *ctx, struct next_hop *hop, const __u8 *src,
				    const __u8 *dst, __be16 sport, __be16 dport, __u16 ip_len,
				    __u8 tos, int v6)
{
	struct bpf_fib_lookup fib = {};
	__u64 now = bpf_ktime_get_coarse_ns();

	if (now < hop->expires && ip_len <= hop->mtu)
		return 0;
	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = sport;
	fib.dport = dport;
	fib.tot_len = ip_len;
	fib.ifindex = ctx->ingress_ifindex;
	if (v6) {
		fib.family = AF_INET6;
		fib.flowinfo = bpf_htonl((__u32)tos << 20);
		__builtin_memcpy(fib.ipv6_src, src, 16);
		__builtin_memcpy(fib.ipv6_dst, dst, 16);
	} else {
		fib.family = AF_INET;
		fib.tos = tos;
		__builtin_memcpy(&fib.ipv4_src, src + 12, 4);
		__builtin_memcpy(&fib.ipv4_dst, dst + 12, 4);
	}
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return -1;
	hop->ifindex = fib.ifindex;
	/* On success the kernel reports the path MTU in place of tot_len. */
	hop->mtu = fib.mtu_result;
	__builtin_memcpy(hop->smac, fib.smac, ETH_ALEN);
	__builtin_memcpy(hop->dmac, fib.dmac, ETH_ALEN);
	hop->expires = now + NEXT_HOP_TTL_NS;
	return 0;
}

/* An IPv4 datagram for a loopback address that arrived on loopback (peer and client on
 * this host, the offload in generic mode on `lo`) is rewritten and handed to the stack,
 * which delivers it to the destination socket: no route lookup, the frame's own MACs kept,
 * and no UDP checksum (0, legal over IPv4). A local sender leaves the checksum for the
 * receiver to finish (CHECKSUM_PARTIAL), which XDP cannot see, so no incremental update
 * could be right; over IPv6, where the checksum is mandatory, loopback is not offloaded. */
#define LOOPBACK_IFINDEX 1

static __always_inline int local_delivery(struct xdp_md *ctx, const __u8 *dst, int v6)
{
	if (ctx->ingress_ifindex != LOOPBACK_IFINDEX || v6)
		return 0;
	return dst[12] == 127;
}

/* The "next hop" of a locally delivered datagram: the MACs it came with. */
static __always_inline int same_macs(struct xdp_md *ctx, struct next_hop *hop)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memcpy(hop->smac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(hop->dmac, eth->h_dest, ETH_ALEN);
	hop->ifindex = LOOPBACK_IFINDEX;
	return 0;
}

/* Writes Ethernet, IP and UDP headers for a datagram of `payload_len` bytes at the start of
 * the (already resized) frame. Returns -1 only if the frame is shorter than the headers,
 * which the callers' length checks rule out. */
static __always_inline int write_headers(struct xdp_md *ctx, const struct next_hop *hop,
					 const struct datagram *d, const __u8 *src,
					 const __u8 *dst, __be16 sport, __be16 dport,
					 __u16 payload_len, __u16 udp_check, int v6)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp = data + l4_offset(v6);
	__u16 udp_len = payload_len + sizeof(struct udphdr);

	if ((void *)(udp + 1) > end)
		return -1;
	__builtin_memcpy(eth->h_dest, hop->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, hop->smac, ETH_ALEN);
	if (v6) {
		struct ipv6hdr *ip6 = data + l3_offset();

		eth->h_proto = bpf_htons(ETH_P_IPV6);
		ip6->version = 6;
		ip6->priority = d->tos >> 4;
		ip6->flow_lbl[0] = (d->tos & 0xf) << 4;
		ip6->flow_lbl[1] = 0;
		ip6->flow_lbl[2] = 0;
		ip6->payload_len = bpf_htons(udp_len);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = RELAY_TTL;
		__builtin_memcpy(&ip6->saddr, src, 16);
		__builtin_memcpy(&ip6->daddr, dst, 16);
	} else {
		struct iphdr *ip = data + l3_offset();
		struct iphdr h = {};
		const __u16 *w = (const __u16 *)&h;
		__u32 sum = 0;

		eth->h_proto = bpf_htons(ETH_P_IP);
		h.version = 4;
		h.ihl = 5;
		h.tos = d->tos;
		h.tot_len = bpf_htons(udp_len + sizeof(struct iphdr));
		h.id = d->ip_id;
		h.frag_off = d->frag_off;
		h.ttl = RELAY_TTL;
		h.protocol = IPPROTO_UDP;
		__builtin_memcpy(&h.saddr, src + 12, 4);
		__builtin_memcpy(&h.daddr, dst + 12, 4);
#pragma unroll
		for (int i = 0; i < 10; i++)
			sum = csum_add(sum, w[i]);
		h.check = ~csum_fold(sum);
		__builtin_memcpy(ip, &h, sizeof(h));
	}
	udp->source = sport;
	udp->dest = dport;
	udp->len = bpf_htons(udp_len);
	udp->check = udp_check;
	return 0;
}

/* Cuts whatever follows the datagram (Ethernet padding of short frames, ChannelData padding). */
static __always_inline void trim_tail(struct xdp_md *ctx, __u16 payload_len, int v6)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	int want = l4_offset(v6) + sizeof(struct udphdr) + payload_len;
	int have = end - data;

	if (have > want)
		bpf_xdp_adjust_tail(ctx, want - have);
}

static __always_inline int send(struct xdp_md *ctx, const struct next_hop *hop)
{
	if (hop->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(hop->ifindex, 0);
}

/* client -> peer. `d` is a datagram whose payload is well-formed ChannelData. Returns -1 when
 * no entry matches (the datagram may still be a peer's that happens to look like ChannelData). */
static __always_inline int to_peer(struct xdp_md *ctx, struct datagram *d, __be16 channel,
				   __u16 len, int v6)
{
	struct forward_key key = {};
	struct forward_value *v;
	__u16 pad = d->payload_len - 4 - len;
	__u16 check = 0;
	__u16 off = l4_offset(v6) + sizeof(struct udphdr) + 4 + len;
	__u16 ip_len;
	struct next_hop here = {};
	const struct next_hop *hop;
	int local;

	__builtin_memcpy(key.client_addr, d->tuple.peer_addr, 16);
	__builtin_memcpy(key.server_addr, d->tuple.relay_addr, 16);
	key.client_port = d->tuple.peer_port;
	key.server_port = d->tuple.relay_port;
	key.channel = channel;
	v = bpf_map_lookup_elem(&forward, &key);
	if (!v)
		return -1;

	ip_len = (v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr)) + sizeof(struct udphdr) + len;
	local = local_delivery(ctx, v->peer_addr, v6);
	if (local) {
		if (same_macs(ctx, &here))
			return XDP_PASS;
		hop = &here;
	} else {
		if (next_hop(ctx, &v->hop, v->relay_addr, v->peer_addr, v->relay_port, v->peer_port,
			     ip_len, d->tos, v6))
			return XDP_PASS;
		hop = &v->hop;
	}

	if (d->udp_check && !local) {
		__u32 sum = (__u16)~d->udp_check;

		sum = csum_sub(sum, channel);
		sum = csum_sub(sum, bpf_htons(len));
		/* Padding leaves too. Its first byte shares a word with the last payload byte when
		 * the length is odd: the UDP header and the ChannelData header are even-sized,
		 * so a byte's place in its word is the parity of its offset in the payload. */
#pragma unroll
		for (int i = 0; i < 3; i++) {
			union {
				__u8 b[2];
				__u16 w;
			} word = {};
			__u8 b;

			if (i >= pad)
				break;
			if (bpf_xdp_load_bytes(ctx, off + i, &b, 1))
				return XDP_PASS;
			if ((len + i) & 1)
				word.b[1] = b;
			else
				word.b[0] = b;
			sum = csum_sub(sum, word.w);
		}
		sum = csum_retuple(sum, &d->tuple, d->payload_len + sizeof(struct udphdr),
				   v->relay_addr, v->peer_addr, v->relay_port, v->peer_port,
				   len + sizeof(struct udphdr), v6);
		check = csum_finish(sum);
	}

	if (bpf_xdp_adjust_head(ctx, 4))
		return XDP_PASS;
	if (write_headers(ctx, hop, d, v->relay_addr, v->peer_addr, v->relay_port, v->peer_port, len,
			  check, v6))
		return XDP_ABORTED;
	trim_tail(ctx, len, v6);

	v->counters.packets++;
	v->counters.rx_bytes += d->payload_len;
	v->counters.tx_bytes += len;
	return local ? XDP_PASS : send(ctx, hop);
}

/* peer -> client, or XDP_PASS when the source is no bound peer of that relay address. */
static __always_inline int to_client(struct xdp_md *ctx, struct datagram *d, int v6)
{
	struct reverse_value *v;
	__u16 len = d->payload_len;
	__u16 hdr_len = v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr);
	__u16 check = 0;
	__u16 ip_len;
	void *data, *end;
	__be16 *chd;
	struct next_hop here = {};
	const struct next_hop *hop;
	int local;

	v = bpf_map_lookup_elem(&reverse, &d->tuple);
	if (!v)
		return XDP_PASS;
	/* The grown datagram must still fit the IP length field. */
	if (len > 0xffff - 4 - sizeof(struct udphdr) - hdr_len)
		return XDP_PASS;
	ip_len = hdr_len + sizeof(struct udphdr) + 4 + len;
	local = local_delivery(ctx, v->client_addr, v6);
	if (local) {
		if (same_macs(ctx, &here))
			return XDP_PASS;
		hop = &here;
	} else {
		if (next_hop(ctx, &v->hop, v->server_addr, v->client_addr, v->server_port,
			     v->client_port, ip_len, d->tos, v6))
			return XDP_PASS;
		hop = &v->hop;
	}

	if (d->udp_check && !local) {
		__u32 sum = (__u16)~d->udp_check;

		sum = csum_add(sum, v->channel);
		sum = csum_add(sum, bpf_htons(len));
		sum = csum_retuple(sum, &d->tuple, len + sizeof(struct udphdr), v->server_addr,
				   v->client_addr, v->server_port, v->client_port,
				   len + 4 + sizeof(struct udphdr), v6);
		check = csum_finish(sum);
	}

	if (bpf_xdp_adjust_head(ctx, -4))
		return XDP_PASS;
	if (write_headers(ctx, hop, d, v->server_addr, v->client_addr, v->server_port,
			  v->client_port, len + 4, check, v6))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	chd = data + l4_offset(v6) + sizeof(struct udphdr);
	if ((void *)(chd + 2) > end)
		return XDP_ABORTED;
	chd[0] = v->channel;
	chd[1] = bpf_htons(len);
	trim_tail(ctx, len + 4, v6);

	v->counters.packets++;
	v->counters.rx_bytes += len;
	v->counters.tx_bytes += len + 4;
	return local ? XDP_PASS : send(ctx, hop);
}

static __always_inline int relay(struct xdp_md *ctx, int v6)
{
	struct datagram d = {};
	void *data, *end;
	__u8 *p;

	if (parse(ctx, &d, v6))
		return XDP_PASS;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	p = data + l4_offset(v6) + sizeof(struct udphdr);
	/* ChannelData: channel in range, length within the datagram, 0-3 bytes of padding that
	 * end on a multiple of 4. An empty payload is left to user space. */
	if (d.payload_len >= 4 && (void *)(p + 4) <= end && p[0] >= (CHANNEL_MIN >> 8) &&
	    p[0] <= (CHANNEL_MAX >> 8)) {
		__u16 len = ((__u16)p[2] << 8) | p[3];
		__u16 extra = d.payload_len - 4 - len;

		if (len != 0 && len <= d.payload_len - 4 && extra <= 3 &&
		    (extra == 0 || (d.payload_len & 3) == 0)) {
			int action = to_peer(ctx, &d, *(__be16 *)p, len, v6);

			if (action >= 0)
				return action;
		}
	}
	/* Peers may send anything, ChannelData look-alikes included. */
	return to_client(ctx, &d, v6);
}

SEC("xdp")
int uturn_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return relay(ctx, 0);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return relay(ctx, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
