//! UDP GSO (`UDP_SEGMENT`) for the ring's sends: consecutive datagrams of one turn from one
//! socket to one destination, all of one size (the last may be shorter), leave as one
//! `sendmsg` whose iovecs point into their receive buffers; the kernel cuts it back into
//! the same datagrams. A burst (video frames to one client, ChannelData towards one peer)
//! then pays the UDP send path (route, socket lookup, skb set-up) once instead of per
//! datagram.
//!
//! Owns the groups' msghdrs, iovecs, addresses and control bytes, which stay put until the
//! group's completion; must not decide what is sent (that is the core) nor touch the ring
//! (`io` pushes the entries these groups describe).

use super::io::{SendBuf, Sock};
use socket2::SockAddr;
use std::net::SocketAddr;

/// Datagrams per group (the kernel takes up to 64; 16 covers a video frame).
pub(super) const MAX_SEGMENTS: usize = 16;
/// Largest datagram grouped: every segment must fit the route's MTU (1,500 on Ethernet),
/// or the kernel refuses the whole send; larger datagrams go alone and may fragment.
pub(super) const MAX_SEGMENT: usize = 1400;
/// Groups in flight at once; without a free one a datagram is sent alone. Each group also
/// holds one of the shard's send slots, so the limit on sends in flight holds for both.
pub(super) const GROUPS: usize = 512;
const UDP_SEGMENT: libc::c_int = 103;

/// One `UDP_SEGMENT` control message (a `u16` segment size), laid out as the kernel reads
/// it: header, data, padding to the header's alignment.
#[repr(C)]
struct SegmentControl {
    header: libc::cmsghdr,
    size: u16,
    _pad: [u8; 6],
}

struct Group {
    msghdr: libc::msghdr,
    iovs: [libc::iovec; MAX_SEGMENTS],
    addr: SockAddr,
    to: SocketAddr,
    sock: Sock,
    /// The send slot this group holds (for the limit on sends in flight).
    slot: u32,
    control: SegmentControl,
    /// What keeps the bytes alive; empty while the group is free.
    bufs: Vec<SendBuf>,
    segment: usize,
    bytes: usize,
}

/// Where a datagram offered to [`Groups::add`] went.
pub(super) enum Added {
    /// Into the open group.
    Joined,
    /// Into a new group, which took the spare send slot.
    Opened,
    /// It does not fit the open group: close that one first (its index), then offer
    /// the datagram again.
    CloseFirst(u32, SendBuf),
    /// No free group or no spare send slot: send it alone.
    Alone(SendBuf),
}

pub(super) struct Groups {
    groups: Box<[Group]>,
    free: Vec<u32>,
    /// The group gathering this turn's datagrams, not yet handed to the ring.
    open: Option<u32>,
    /// Groups the ring refused: their buffers go back and they count as send errors.
    pub failed: Vec<u32>,
}

impl Groups {
    pub fn new() -> Groups {
        let groups = (0..GROUPS)
            .map(|_| Group {
                // SAFETY: msghdr and cmsghdr are plain old data; all-zero is valid.
                msghdr: unsafe { std::mem::zeroed() },
                iovs: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; MAX_SEGMENTS],
                addr: SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))),
                to: SocketAddr::from(([0, 0, 0, 0], 0)),
                sock: Sock::Raw(-1),
                slot: 0,
                control: SegmentControl {
                    // SAFETY: as above.
                    header: unsafe { std::mem::zeroed() },
                    size: 0,
                    _pad: [0; 6],
                },
                bufs: Vec::with_capacity(MAX_SEGMENTS),
                segment: 0,
                bytes: 0,
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        Groups {
            groups,
            free: (0..GROUPS as u32).rev().collect(),
            open: None,
            failed: Vec::with_capacity(GROUPS),
        }
    }

    /// Offers `len` bytes at `ptr` (carried by `buf`) for `sock` → `to`; a new group takes
    /// `spare_slot`.
    pub fn add(
        &mut self,
        sock: Sock,
        to: SocketAddr,
        (ptr, len): (*const u8, usize),
        buf: SendBuf,
        spare_slot: Option<u32>,
    ) -> Added {
        if let Some(index) = self.open {
            let g = &mut self.groups[index as usize];
            let n = g.bufs.len();
            // A shorter datagram ends a group: only the last segment may be short.
            let last_short = g.bytes != g.segment * n;
            if g.sock == sock
                && g.to == to
                && len <= g.segment
                && !last_short
                && n < MAX_SEGMENTS
                && g.bytes + len <= 65_000
            {
                g.iovs[n] = libc::iovec {
                    iov_base: ptr as *mut libc::c_void,
                    iov_len: len,
                };
                g.bufs.push(buf);
                g.bytes += len;
                return Added::Joined;
            }
            self.open = None;
            return Added::CloseFirst(index, buf);
        }
        let (Some(slot), Some(index)) = (spare_slot, self.free.pop()) else {
            return Added::Alone(buf);
        };
        let g = &mut self.groups[index as usize];
        g.slot = slot;
        g.sock = sock;
        g.to = to;
        g.addr = SockAddr::from(to);
        g.iovs[0] = libc::iovec {
            iov_base: ptr as *mut libc::c_void,
            iov_len: len,
        };
        g.bufs.push(buf);
        g.segment = len;
        g.bytes = len;
        self.open = Some(index);
        Added::Opened
    }

    /// Takes the open group, if any, for its send to be queued.
    pub fn take_open(&mut self) -> Option<u32> {
        self.open.take()
    }

    /// Fills group `index`'s msghdr (one iovec per datagram, `UDP_SEGMENT` when there
    /// are several) and returns (socket, msghdr) for the send.
    pub fn prepare(&mut self, index: u32) -> (Sock, *const libc::msghdr) {
        let g = &mut self.groups[index as usize];
        let n = g.bufs.len();
        g.msghdr.msg_name = g.addr.as_ptr() as *mut libc::c_void;
        g.msghdr.msg_namelen = g.addr.len();
        g.msghdr.msg_iov = g.iovs.as_mut_ptr();
        g.msghdr.msg_iovlen = n as _;
        if n > 1 {
            g.control.header.cmsg_len =
                (std::mem::size_of::<libc::cmsghdr>() + std::mem::size_of::<u16>()) as _;
            g.control.header.cmsg_level = libc::SOL_UDP;
            g.control.header.cmsg_type = UDP_SEGMENT;
            g.control.size = g.segment as u16;
            g.msghdr.msg_control = (&mut g.control as *mut SegmentControl).cast();
            g.msghdr.msg_controllen = std::mem::size_of::<SegmentControl>() as _;
        } else {
            g.msghdr.msg_control = std::ptr::null_mut();
            g.msghdr.msg_controllen = 0;
        }
        (g.sock, &g.msghdr)
    }

    /// Group `index` completed (or failed): hands each buffer to `release`, frees the
    /// group, and returns how many datagrams it carried and the send slot it held.
    pub fn finish(
        &mut self,
        index: u32,
        release: &mut impl FnMut(SendBuf),
    ) -> Option<(usize, u32)> {
        let g = self.groups.get_mut(index as usize)?;
        let n = g.bufs.len();
        if n == 0 {
            return None;
        }
        for buf in g.bufs.drain(..) {
            release(buf);
        }
        self.free.push(index);
        Some((n, g.slot))
    }

    /// Keeps every group (msghdrs, iovecs, bytes the kernel may still read) for the life of
    /// the process.
    pub fn leak(&mut self) {
        std::mem::forget(std::mem::take(&mut self.groups));
        self.free.clear();
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lent_free(n: usize) -> SendBuf {
        SendBuf::Owned(Vec::with_capacity(n))
    }

    #[test]
    fn groups_gather_equal_sizes_to_one_destination_with_a_shorter_last() {
        let mut g = Groups::new();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let p = std::ptr::null::<u8>();
        let s = Sock::Fixed(3);
        let added = g.add(s, a, (p, 100), lent_free(0), None);
        assert!(
            matches!(added, Added::Alone(_)),
            "no spare send slot, no group"
        );
        let added = g.add(s, a, (p, 100), lent_free(0), Some(7));
        assert!(matches!(added, Added::Opened));
        let added = g.add(s, a, (p, 100), lent_free(0), Some(8));
        assert!(matches!(added, Added::Joined));
        // Shorter: joins as the last segment.
        let added = g.add(s, a, (p, 60), lent_free(0), Some(8));
        assert!(matches!(added, Added::Joined));
        // Anything after a shorter one closes the group.
        let Added::CloseFirst(first, buf) = g.add(s, a, (p, 60), lent_free(0), Some(8)) else {
            panic!("a segment after a short one must close the group");
        };
        let (fd, hdr) = g.prepare(first);
        // SAFETY: `hdr` points into `g`, alive and not moved.
        let hdr = unsafe { &*hdr };
        assert_eq!((fd, hdr.msg_iovlen), (s, 3));
        assert_eq!(g.groups[first as usize].control.size, 100);
        assert!(!hdr.msg_control.is_null());
        // Re-offered: opens a new group. Another destination closes that one.
        let added = g.add(s, a, (p, 60), buf, Some(8));
        assert!(matches!(added, Added::Opened));
        let added = g.add(s, b, (p, 60), lent_free(0), Some(9));
        let Added::CloseFirst(second, _) = added else {
            panic!("another destination must close the group");
        };
        // A group of one datagram carries no UDP_SEGMENT.
        let (_, hdr) = g.prepare(second);
        // SAFETY: as above.
        let hdr = unsafe { &*hdr };
        assert_eq!(hdr.msg_iovlen, 1);
        assert!(hdr.msg_control.is_null());
        let mut released = 0;
        assert_eq!(g.finish(first, &mut |_| released += 1), Some((3, 7)));
        assert_eq!(released, 3);
        assert_eq!(
            g.finish(first, &mut |_| released += 1),
            None,
            "finished once"
        );
        assert!(
            g.take_open().is_none(),
            "CloseFirst already took the open group"
        );
    }
}
