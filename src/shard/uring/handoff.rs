//! Relay to relay between shards, in process: a datagram from an allocation of one shard to
//! the relay address of an allocation of another shard crosses over through a bounded
//! single-producer single-consumer queue per (sender, target) pair instead of the kernel.
//!
//! - [`Host`]: what all shards share: which shard owns each relay address now (one atomic
//!   per relay port and family, set when a relay socket opens, cleared when it closes),
//!   the queues (created on first use, so only pairs that talk hold memory), and each
//!   shard's waker.
//! - [`Handoff`]: one shard's end: a producer per target, a consumer per sender.
//!
//! The sender copies the datagram (source = its relay address, destination = the target
//! relay address, payload) into a preallocated slot and publishes its slots once per loop
//! turn, waking the target only if no wake is outstanding (one wake per batch). The target
//! drains its queues every turn and gives each datagram to its core exactly as if it had
//! arrived on the relay socket from the sender's relay address (`crossing.rs`).
//! A full queue or an oversized datagram makes the sender use the kernel instead; a
//! datagram for a relay the target no longer has is dropped and counted there.
//!
//! Must not: allocate per datagram, block, or decide anything about the protocol.

use crate::shard::Wake;
use std::cell::UnsafeCell;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// The largest payload a slot holds; larger datagrams go through the kernel.
pub(crate) const SLOT_PAYLOAD: usize = 2048;
/// Slots per (sender, target) queue.
pub(crate) const DEFAULT_SLOTS: usize = 256;

struct Slot {
    from: SocketAddr,
    to: SocketAddr,
    len: u16,
    data: [u8; SLOT_PAYLOAD],
}

/// Keeps the producer's and the consumer's indices on cache lines of their own.
#[repr(align(64))]
struct Padded<T>(T);

/// A bounded SPSC ring of datagrams. Slot `i` (an ever-growing index, taken modulo the
/// length) belongs to the producer while `i >= tail` and to the consumer while
/// `head <= i < tail`; the producer writes `tail`, the consumer `head`.
struct Queue {
    slots: Box<[UnsafeCell<Slot>]>,
    head: Padded<AtomicUsize>,
    tail: Padded<AtomicUsize>,
    /// A wake was sent and the consumer has not drained since.
    signalled: Padded<AtomicBool>,
}

// Slots are shared between exactly two threads under the head/tail protocol above: a slot
// is written only by the producer before it publishes `tail` past it (release) and read
// only by the consumer after it observed that `tail` (acquire) and before it publishes
// `head` past it; the producer reuses it only after observing that `head` (acquire).
// SAFETY: see above: each slot has one owner at a time.
unsafe impl Sync for Queue {}

impl Queue {
    fn new(slots: usize) -> Queue {
        let slots = slots.next_power_of_two();
        Queue {
            slots: (0..slots)
                .map(|_| {
                    UnsafeCell::new(Slot {
                        from: SocketAddr::from(([0, 0, 0, 0], 0)),
                        to: SocketAddr::from(([0, 0, 0, 0], 0)),
                        len: 0,
                        data: [0; SLOT_PAYLOAD],
                    })
                })
                .collect(),
            head: Padded(AtomicUsize::new(0)),
            tail: Padded(AtomicUsize::new(0)),
            signalled: Padded(AtomicBool::new(false)),
        }
    }

    fn slot(&self, index: usize) -> &UnsafeCell<Slot> {
        &self.slots[index & (self.slots.len() - 1)]
    }
}

/// The sender's end of one queue (only its shard thread touches it).
struct Producer {
    queue: Arc<Queue>,
    /// Next slot to fill; slots below it and at or above `published` are filled but not
    /// yet visible to the consumer.
    tail: usize,
    published: usize,
    /// The consumer's `head` as last read.
    head_seen: usize,
}

impl Producer {
    /// Copies a datagram into the next slot; false when the queue is full or the payload
    /// is larger than a slot.
    fn push(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) -> bool {
        let q = &*self.queue;
        if data.len() > SLOT_PAYLOAD {
            return false;
        }
        if self.tail - self.head_seen == q.slots.len() {
            self.head_seen = q.head.0.load(Ordering::Acquire);
            if self.tail - self.head_seen == q.slots.len() {
                return false;
            }
        }
        let cell = q.slot(self.tail);
        // SAFETY: `tail - head < len`, so slot `tail` is not between `head` and the
        // published tail: the consumer does not read it, and no one else writes it.
        let slot = unsafe { &mut *cell.get() };
        slot.from = from;
        slot.to = to;
        slot.len = data.len() as u16;
        slot.data[..data.len()].copy_from_slice(data);
        self.tail += 1;
        true
    }

    /// Makes the filled slots visible; true if the consumer needs a wake for them.
    fn publish(&mut self) -> bool {
        if self.tail == self.published {
            return false;
        }
        let q = &*self.queue;
        // Sequentially consistent with the consumer's clearing of `signalled` and its read
        // of `tail`: either it sees these slots, or this swap sees its clear and wakes it.
        q.tail.0.store(self.tail, Ordering::SeqCst);
        self.published = self.tail;
        !q.signalled.0.swap(true, Ordering::SeqCst)
    }
}

/// The target's end of one queue (only its shard thread touches it).
struct Consumer {
    queue: Arc<Queue>,
    head: usize,
}

impl Consumer {
    /// Hands each published datagram to `take` (source, destination, payload) until it
    /// returns false (that one stays for the next call); returns how many it took.
    fn drain(&mut self, mut take: impl FnMut(SocketAddr, SocketAddr, &[u8]) -> bool) -> usize {
        let q = &*self.queue;
        q.signalled.0.store(false, Ordering::SeqCst);
        let tail = q.tail.0.load(Ordering::SeqCst);
        let start = self.head;
        while self.head != tail {
            let cell = q.slot(self.head);
            // SAFETY: `head < tail` as published by the producer: the slot is filled and
            // the producer does not touch it until `head` is published past it.
            let slot = unsafe { &*cell.get() };
            let len = usize::from(slot.len).min(SLOT_PAYLOAD);
            if !take(slot.from, slot.to, &slot.data[..len]) {
                break;
            }
            self.head += 1;
        }
        if self.head != start {
            q.head.0.store(self.head, Ordering::Release);
        }
        self.head - start
    }
}

/// Which shard owns each relay address: per relay IP (the IPv4 and the IPv6 one), one
/// atomic per port of the relay range holding the owner's index + 1 (0: nobody).
struct Owners {
    ips: [Option<IpAddr>; 2],
    min_port: u16,
    table: [Box<[AtomicU16]>; 2],
}

impl Owners {
    fn entry(&self, addr: SocketAddr) -> Option<&AtomicU16> {
        let family = self.ips.iter().position(|ip| *ip == Some(addr.ip()))?;
        let index = usize::from(addr.port().checked_sub(self.min_port)?);
        self.table[family].get(index)
    }
}

/// What every shard of one server shares for relay-to-relay handoffs.
pub(crate) struct Host {
    shards: usize,
    slots: usize,
    owners: Owners,
    /// By `sender * shards + target`, created on the first datagram between them.
    queues: Box<[OnceLock<Arc<Queue>>]>,
    wakers: Box<[OnceLock<Wake>]>,
    /// Each shard's ring, for wakes through IORING_OP_MSG_RING (-1: none).
    ring_fds: Box<[AtomicI32]>,
    /// By target: the shard stopped, nothing more may be queued for it.
    closed: Box<[AtomicBool]>,
}

impl Host {
    /// Handoffs between `shards` shards relaying from `relay_ips` on `ports`, with queues
    /// of `slots` datagrams. `None` when there is nothing to hand over (one shard, or
    /// `slots` 0).
    pub fn new(
        shards: usize,
        relay_ips: [Option<IpAddr>; 2],
        ports: RangeInclusive<u16>,
        slots: usize,
    ) -> Option<Arc<Host>> {
        if shards < 2 || slots == 0 {
            return None;
        }
        let table = || {
            ports
                .clone()
                .map(|_| AtomicU16::new(0))
                .collect::<Box<[_]>>()
        };
        Some(Arc::new(Host {
            shards,
            slots,
            owners: Owners {
                ips: relay_ips,
                min_port: *ports.start(),
                table: [table(), table()],
            },
            queues: (0..shards * shards).map(|_| OnceLock::new()).collect(),
            wakers: (0..shards).map(|_| OnceLock::new()).collect(),
            ring_fds: (0..shards).map(|_| AtomicI32::new(-1)).collect(),
            closed: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        }))
    }

    /// Shard `index`'s end, with `wake` to wake it, and its ring's descriptor (`ring_fd`)
    /// for wakes from other rings.
    pub fn join(self: &Arc<Host>, index: usize, wake: Wake, ring_fd: RawFd) -> Handoff {
        let _ = self.wakers[index].set(wake);
        self.ring_fds[index].store(ring_fd, Ordering::Release);
        Handoff {
            host: self.clone(),
            index,
            producers: (0..self.shards).map(|_| None).collect(),
            consumers: (0..self.shards).map(|_| None).collect(),
            msg_ring: false,
        }
    }

    fn wake_by_eventfd(&self, target: usize) {
        if let Some(wake) = self.wakers.get(target).and_then(OnceLock::get) {
            wake();
        }
    }

    /// The ring of shard `target`, while it runs.
    fn ring_fd(&self, target: usize) -> Option<RawFd> {
        let fd = self.ring_fds.get(target)?.load(Ordering::Acquire);
        (fd >= 0 && !self.closed[target].load(Ordering::Relaxed)).then_some(fd)
    }

    /// The shard that owns relay address `addr` now, if any.
    fn owner(&self, addr: SocketAddr) -> Option<usize> {
        let v = self.owners.entry(addr)?.load(Ordering::Acquire);
        (v != 0).then(|| usize::from(v - 1))
    }
}

/// One shard's record in the owner table, kept by its relay sockets.
#[derive(Clone)]
pub(crate) struct OwnerTable {
    host: Arc<Host>,
    index: usize,
}

impl OwnerTable {
    /// The relay socket at `addr` opened on this shard.
    pub fn claim(&self, addr: SocketAddr) {
        if let Some(e) = self.host.owners.entry(addr) {
            e.store(self.index as u16 + 1, Ordering::Release);
        }
    }

    /// The relay socket at `addr` closed; another shard may own the port already.
    pub fn release(&self, addr: SocketAddr) {
        if let Some(e) = self.host.owners.entry(addr) {
            let me = self.index as u16 + 1;
            let _ = e.compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// One shard's end of the handoffs.
pub(crate) struct Handoff {
    host: Arc<Host>,
    index: usize,
    /// By target shard.
    producers: Box<[Option<Producer>]>,
    /// By sending shard.
    consumers: Box<[Option<Consumer>]>,
    /// Wake other shards with IORING_OP_MSG_RING rather than their eventfd.
    pub msg_ring: bool,
}

impl Handoff {
    pub fn owner_table(&self) -> OwnerTable {
        OwnerTable {
            host: self.host.clone(),
            index: self.index,
        }
    }

    /// The other shard that owns relay address `addr`, if one does.
    pub fn target(&self, addr: SocketAddr) -> Option<usize> {
        self.host.owner(addr).filter(|&t| t != self.index)
    }

    /// Queues a datagram from relay address `from` to relay address `to` of shard
    /// `target`; false if it must go through the kernel (queue full or closed, or too
    /// large). The first datagram to a shard creates the queue (once per pair).
    pub fn push(&mut self, target: usize, from: SocketAddr, to: SocketAddr, data: &[u8]) -> bool {
        let Some(entry) = self.producers.get_mut(target) else {
            return false;
        };
        if self.host.closed[target].load(Ordering::Relaxed) {
            return false;
        }
        let producer = entry.get_or_insert_with(|| {
            let host = &self.host;
            let queue = host.queues[self.index * host.shards + target]
                .get_or_init(|| Arc::new(Queue::new(host.slots)))
                .clone();
            Producer {
                queue,
                tail: 0,
                published: 0,
                head_seen: 0,
            }
        });
        producer.push(from, to, data)
    }

    /// Publishes what was queued this turn and wakes each target that needs it: with
    /// `msg_ring`, through `wake_ring(target, its ring)` (a message the caller's next
    /// submit carries), else through the target's eventfd (a system call).
    pub fn publish(&mut self, mut wake_ring: impl FnMut(usize, RawFd)) {
        for (target, p) in self.producers.iter_mut().enumerate() {
            let Some(p) = p else { continue };
            if !p.publish() {
                continue;
            }
            match self.host.ring_fd(target).filter(|_| self.msg_ring) {
                Some(fd) => wake_ring(target, fd),
                None => self.host.wake_by_eventfd(target),
            }
        }
    }

    /// Wakes shard `target` through its eventfd (after a failed ring message).
    pub fn wake_by_eventfd(&self, target: usize) {
        self.host.wake_by_eventfd(target);
    }

    /// Gives every datagram queued for this shard to `take` (source, destination,
    /// payload) until it returns false; returns how many it took.
    pub fn drain(&mut self, mut take: impl FnMut(SocketAddr, SocketAddr, &[u8]) -> bool) -> usize {
        let mut taken = 0;
        for sender in 0..self.consumers.len() {
            if self.consumers[sender].is_none() {
                let host = &self.host;
                match host.queues[sender * host.shards + self.index].get() {
                    Some(queue) => {
                        self.consumers[sender] = Some(Consumer {
                            queue: queue.clone(),
                            head: 0,
                        })
                    }
                    None => continue,
                }
            }
            if let Some(c) = &mut self.consumers[sender] {
                taken += c.drain(&mut take);
            }
        }
        taken
    }

    /// The shard stops: no more datagrams may be queued for it; returns how many were
    /// still queued (dropped). A sender that checked just before may still queue one
    /// more, which nobody takes: it goes with the queue's memory when the server is gone.
    pub fn close(&mut self) -> usize {
        self.host.closed[self.index].store(true, Ordering::SeqCst);
        self.host.ring_fds[self.index].store(-1, Ordering::Release);
        self.drain(|_, _, _| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_queue_hands_datagrams_over_in_order_and_refuses_when_full() {
        let host = Host::new(2, [Some(addr(0).ip()), None], 1000..=1009, 4).unwrap();
        let mut a = host.join(0, Arc::new(|| {}), -1);
        let mut b = host.join(1, Arc::new(|| {}), -1);
        a.owner_table().claim(addr(1000));
        b.owner_table().claim(addr(1005));
        assert_eq!(a.target(addr(1005)), Some(1));
        assert_eq!(
            a.target(addr(1000)),
            None,
            "its own relay is not another shard's"
        );
        assert_eq!(b.target(addr(1000)), Some(0));
        assert_eq!(a.target(addr(999)), None, "outside the relay range");
        assert_eq!(a.target(SocketAddr::from(([10, 0, 0, 1], 1005))), None);
        for i in 0..4u8 {
            assert!(a.push(1, addr(1000), addr(1005), &[i; 10]));
        }
        assert!(!a.push(1, addr(1000), addr(1005), &[9; 10]), "full");
        assert!(!a.push(1, addr(1000), addr(1005), &[0; SLOT_PAYLOAD + 1]));
        let mut seen = Vec::new();
        let none = b.drain(|_, _, d| {
            seen.push(d[0]);
            true
        });
        assert_eq!(none, 0, "nothing is visible before it is published");
        a.publish(|_, _| unreachable!("wakes through the eventfd"));
        // Two now, the rest on the next drain.
        let took = b.drain(|from, to, d| {
            assert_eq!((from, to, d.len()), (addr(1000), addr(1005), 10));
            seen.push(d[0]);
            seen.len() < 2
        });
        assert_eq!((took, &seen[..]), (1, &[0, 1][..]));
        assert_eq!(
            b.drain(|_, _, d| {
                seen.push(d[0]);
                true
            }),
            3
        );
        assert_eq!(seen, [0, 1, 1, 2, 3]);
        assert!(a.push(1, addr(1000), addr(1005), b"again"), "room again");
        a.publish(|_, _| unreachable!("wakes through the eventfd"));
        // A port that moved on to another shard is not released by the old owner.
        a.owner_table().claim(addr(1007));
        b.owner_table().claim(addr(1007));
        a.owner_table().release(addr(1007));
        assert_eq!(a.target(addr(1007)), Some(1));
        assert_eq!(b.close(), 1, "queued at stop: dropped");
        assert!(!a.push(1, addr(1000), addr(1005), b"late"), "closed");
    }

    #[test]
    fn wakes_are_coalesced_until_the_target_drains() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let host = Host::new(2, [Some(addr(0).ip()), None], 1000..=1009, 8).unwrap();
        let counted = wakes.clone();
        let mut a = host.join(0, Arc::new(|| {}), -1);
        let mut b = host.join(
            1,
            Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
            -1,
        );
        a.push(1, addr(1000), addr(1005), b"1");
        a.publish(|_, _| unreachable!("wakes through the eventfd"));
        a.push(1, addr(1000), addr(1005), b"2");
        a.publish(|_, _| unreachable!("wakes through the eventfd"));
        a.publish(|_, _| unreachable!("wakes through the eventfd"));
        assert_eq!(wakes.load(Ordering::SeqCst), 1, "one wake until drained");
        assert_eq!(b.drain(|_, _, _| true), 2);
        a.push(1, addr(1000), addr(1005), b"3");
        a.publish(|_, _| unreachable!("wakes through the eventfd"));
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn one_shard_or_no_slots_hands_nothing_over() {
        assert!(Host::new(1, [Some(addr(0).ip()), None], 1000..=1009, 8).is_none());
        assert!(Host::new(2, [Some(addr(0).ip()), None], 1000..=1009, 0).is_none());
    }
}
