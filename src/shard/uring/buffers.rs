//! The provided-buffer ring: memory shared with the kernel, and who owns each buffer.
//!
//! A buffer is either in the ring (the kernel may write it at any time) or lent to the
//! shard by a receive completion. Lending is a value, [`Lent`]: only [`Buffers::take`]
//! creates one, from a completion entry, and only [`Buffers::give_back`] consumes it, so
//! reading a buffer the kernel owns, or returning one twice, does not compile. A bitmap
//! of lent buffers makes `take` refuse a buffer id it has already lent, whatever the entry
//! says (completion entries cannot be built outside the `io-uring` crate; the loop reads
//! each one once and keeps no clone past its turn).
//!
//! Must not: interpret the bytes (that is the shard loop and the core).

use io_uring::cqueue;
use io_uring::types::BufRingEntry;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// Size of one provided buffer.
pub(super) const BUF_SIZE: usize = 4096;

/// Anonymous, page-aligned memory shared with the kernel; unmapped on drop unless leaked.
pub(super) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Keeps the memory mapped for the rest of the process (the kernel may still write it).
    fn leak(&mut self) {
        self.len = 0;
        self.ptr = std::ptr::null_mut();
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing uses them after this
        // (the ring that knew them is gone or has had every receive cancelled).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A provided buffer lent to the shard by a receive completion. Neither `Copy` nor
/// `Clone`: whoever holds it may read and write the buffer, and must give it back.
#[must_use = "a lent buffer must go back to the ring"]
#[derive(Debug)]
pub(super) struct Lent {
    bid: u16,
}

/// The provided-buffer ring and the buffers it hands out.
pub(super) struct Buffers {
    ring: Mapping,
    data: Mapping,
    count: u16,
    /// Our copy of the ring tail; published to the kernel by [`Buffers::publish`].
    tail: u16,
    published: u16,
    /// One bit per buffer: lent to the shard.
    lent: Box<[u64]>,
    lent_count: usize,
    /// Buffers kept out of the kernel's ring for datagrams other shards hand over
    /// (`lend_spare`); a buffer given back refills this first, up to `spare_want`.
    spare: Vec<u16>,
    spare_want: usize,
}

impl Buffers {
    /// `count` buffers of [`BUF_SIZE`] bytes; `count` must be a power of two.
    #[cfg(test)]
    pub fn new(count: u16) -> io::Result<Buffers> {
        Buffers::with_spare(count, 0)
    }

    /// The same, with `spare` of them (at most half) kept out of the kernel's ring for
    /// [`Buffers::lend_spare`].
    pub fn with_spare(count: u16, spare: usize) -> io::Result<Buffers> {
        if !count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two",
            ));
        }
        let ring = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let data = Mapping::new(usize::from(count) * BUF_SIZE)?;
        let mut buffers = Buffers {
            ring,
            data,
            count,
            tail: 0,
            published: 0,
            lent: vec![0; usize::from(count).div_ceil(64)].into_boxed_slice(),
            lent_count: 0,
            spare: Vec::new(),
            spare_want: spare.min(usize::from(count) / 2),
        };
        buffers.spare = Vec::with_capacity(buffers.spare_want);
        for bid in 0..count {
            if buffers.spare.len() < buffers.spare_want {
                buffers.spare.push(bid);
            } else {
                buffers.push(bid);
            }
        }
        Ok(buffers)
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Address of the ring, for registering it with the kernel.
    pub fn ring_addr(&self) -> u64 {
        self.ring.ptr as u64
    }

    fn entries(&self) -> *mut BufRingEntry {
        self.ring.ptr.cast()
    }

    fn bit(bid: u16) -> (usize, u64) {
        (usize::from(bid) / 64, 1 << (bid % 64))
    }

    /// The buffer a receive completion carries, now the shard's. `None` when the entry
    /// carries none, or names one that is already lent (the kernel never does that; the
    /// check makes [`Buffers::bytes`] sound whatever the entry says).
    pub fn take(&mut self, entry: &cqueue::Entry) -> Option<Lent> {
        let bid = cqueue::buffer_select(entry.flags())?;
        if bid >= self.count {
            return None;
        }
        let (word, mask) = Self::bit(bid);
        if self.lent[word] & mask != 0 {
            return None;
        }
        self.lent[word] |= mask;
        self.lent_count += 1;
        Some(Lent { bid })
    }

    /// Puts a lent buffer back at the tail (visible to the kernel after `publish`), or
    /// among the spares while they are short.
    pub fn give_back(&mut self, lent: Lent) {
        let (word, mask) = Self::bit(lent.bid);
        self.lent[word] &= !mask;
        self.lent_count -= 1;
        if self.spare.len() < self.spare_want {
            self.spare.push(lent.bid);
        } else {
            self.push(lent.bid);
        }
    }

    /// A spare buffer (one the kernel's ring does not hold) to fill by hand, if any is
    /// left; it goes back through [`Buffers::give_back`] like a received one.
    pub fn lend_spare(&mut self) -> Option<Lent> {
        let bid = self.spare.pop()?;
        let (word, mask) = Self::bit(bid);
        self.lent[word] |= mask;
        self.lent_count += 1;
        Some(Lent { bid })
    }

    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: `slot < count`, inside the ring mapping; the kernel reads entries only
        // between its head and the published tail, and this one is beyond the published tail.
        let entry = unsafe { &mut *self.entries().add(slot) };
        // SAFETY: `bid < count`, so the address is inside the data mapping.
        entry.set_addr(unsafe { self.data.ptr.add(usize::from(bid) * BUF_SIZE) } as u64);
        entry.set_len(BUF_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes buffers given back since the last call visible to the kernel.
    pub fn publish(&mut self) {
        if self.tail == self.published {
            return;
        }
        // SAFETY: the tail field lives in the first entry of the ring mapping, which is
        // page aligned and initialised; the kernel reads it concurrently, so it is accessed
        // as an atomic, with release ordering so the entries written before are visible.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries()) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    /// The bytes of a lent buffer, to read while the buffers are also borrowed elsewhere
    /// for reading (a send's pointer).
    pub fn data(&self, lent: &Lent) -> &[u8] {
        // SAFETY: `bid < count` (checked in `take`), so the range is inside the data
        // mapping; the buffer is lent, so the kernel does not write it; a `&mut` slice of
        // it (`bytes`) needs `&mut self`, which this shared borrow excludes while it lives.
        unsafe {
            std::slice::from_raw_parts(
                self.data.ptr.add(usize::from(lent.bid) * BUF_SIZE),
                BUF_SIZE,
            )
        }
    }

    /// The bytes of a lent buffer.
    pub fn bytes(&mut self, lent: &Lent) -> &mut [u8] {
        // The buffer is lent: its bit is set and only `give_back`, which consumes the one
        // `Lent`, clears it.
        // SAFETY: `bid < count` (checked in `take`): inside the data mapping; lent, so the
        // kernel does not write it; `&mut self` keeps two such slices from coexisting.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.data.ptr.add(usize::from(lent.bid) * BUF_SIZE),
                BUF_SIZE,
            )
        }
    }

    /// Where `range` of a lent buffer starts, for a send's iovec. The pointer stays valid
    /// while the `Lent` is held (the mapping outlives every lent buffer).
    pub fn send_ptr(&self, lent: &Lent, offset: usize) -> *const u8 {
        debug_assert!(offset <= BUF_SIZE);
        // SAFETY: `bid < count` and `offset <= BUF_SIZE`: inside (or one past) the mapping.
        unsafe {
            self.data
                .ptr
                .add(usize::from(lent.bid) * BUF_SIZE + offset.min(BUF_SIZE))
        }
    }

    /// Buffers the shard holds (lent and not given back).
    pub fn lent(&self) -> usize {
        self.lent_count
    }

    /// Keeps both mappings for the life of the process: the kernel may still use them.
    pub fn leak(&mut self) {
        self.data.leak();
        self.ring.leak();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types::Fd, IoUring};
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    /// A real ring with a registered buffer ring and one received datagram's completion.
    fn one_completion(buffers: &Buffers) -> (IoUring, cqueue::Entry) {
        let ring = IoUring::new(8).expect("io_uring (this test needs it)");
        // SAFETY: the ring mapping outlives `ring` in the test (dropped after it).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(buffers.ring_addr(), buffers.count(), 0, 0)
                .unwrap();
        }
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sqe = opcode::RecvMulti::new(Fd(socket.as_raw_fd()), 0)
            .build()
            .user_data(1);
        // SAFETY: the SQE carries no pointers (the buffer comes from the ring).
        unsafe { ring.submission_shared().push(&sqe).unwrap() };
        ring.submit().unwrap();
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .send_to(b"hello", socket.local_addr().unwrap())
            .unwrap();
        ring.submit_and_wait(1).unwrap();
        // SAFETY: only this thread uses the completion queue.
        let entry = unsafe { ring.completion_shared() }.next().unwrap();
        (ring, entry)
    }

    #[test]
    fn a_completion_lends_its_buffer_once() {
        let mut buffers = Buffers::new(4).unwrap();
        buffers.publish();
        let (ring, entry) = one_completion(&buffers);
        assert_eq!(entry.result(), 5);
        let copy = entry.clone();
        let lent = buffers
            .take(&entry)
            .expect("the completion carries a buffer");
        assert_eq!(&buffers.bytes(&lent)[..5], b"hello");
        assert!(
            buffers.take(&copy).is_none(),
            "a buffer already lent is not lent again"
        );
        buffers.give_back(lent);
        drop(ring);
    }

    #[test]
    fn buffer_count_must_be_a_power_of_two() {
        assert!(Buffers::new(3).is_err());
        assert!(Buffers::new(8).is_ok());
    }
}
