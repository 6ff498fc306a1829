//! The copy pool: reusable buffers for sends whose bytes must be copied first. Owns
//! only the buffers; `Io` takes one for a send and puts it back at the completion.

/// Reusable buffers for sends whose bytes must be copied first: a stream client's payload
/// lies in its connection's reassembly buffer or in TLS plaintext, not in a provided
/// buffer of its own. Taken for a send and put back at its completion, so a copied send
/// allocates nothing once the pool has warmed up. At most [`COPY_BUFFERS`] of
/// [`COPY_BUF_SIZE`] bytes ever exist; with all of them in flight a send is refused (the
/// caller drops and counts it). A payload larger than a pool buffer (rare: more than an
/// Ethernet MTU) is copied into a buffer of its own.
#[derive(Default)]
pub(super) struct CopyPool {
    free: Vec<Vec<u8>>,
    made: usize,
}

/// Most copy buffers per shard (4 MiB at most, made only as sends in flight need them):
/// one turn's stream receives may carry a thousand frames or more.
pub(super) const COPY_BUFFERS: usize = 2048;
/// Copy buffers made at once when the pool runs out (128 KiB).
const COPY_BATCH: usize = 64;
/// Size of one copy buffer: a datagram of a 1,500-byte MTU path and then some.
pub(super) const COPY_BUF_SIZE: usize = 2048;

impl CopyPool {
    pub(super) fn take(&mut self) -> Option<Vec<u8>> {
        if let Some(v) = self.free.pop() {
            return Some(v);
        }
        if self.made == COPY_BUFFERS {
            return None;
        }
        if self.free.capacity() == 0 {
            // Room for every buffer there will be: putting one back never allocates.
            self.free.reserve_exact(COPY_BUFFERS);
        }
        // Made a batch at a time, so a burst a little above the last one does not
        // allocate again.
        let batch = COPY_BATCH.min(COPY_BUFFERS - self.made);
        self.made += batch;
        self.free
            .extend((1..batch).map(|_| Vec::with_capacity(COPY_BUF_SIZE)));
        Some(Vec::with_capacity(COPY_BUF_SIZE))
    }

    pub(super) fn put(&mut self, mut v: Vec<u8>) {
        v.clear();
        self.free.push(v);
    }
}
