//! Shutdown of the ring: every receive cancelled, the kernel given a bounded time to let
//! go of the buffers and send slots, which are leaked (kept mapped) if it does not.
//!
//! Must not free anything the kernel may still use.

use super::op::Op;
use super::Shard;
use ::io_uring::types::{SubmitArgs, Timespec};
use ::io_uring::{cqueue, opcode};
use std::time::{Duration, Instant};

/// How long the kernel is given to finish what is in flight.
pub(super) const BOUND: Duration = Duration::from_secs(2);

/// What a drain that reached its bound kept for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Leaked {
    /// Send slots whose send had not completed: each keeps the msghdr, address and bytes
    /// the kernel may still read.
    pub send_slots: usize,
    /// Receives still armed.
    pub receives: usize,
    /// Provided buffers (the whole buffer ring stays mapped).
    pub buffers: usize,
    /// Of those, the buffers the shard held (sends in flight carry them).
    pub lent: usize,
}

impl Shard {
    /// Cancels every receive and waits (bounded) until the kernel has let go of the
    /// buffers, so the mappings can be freed. `Some` when the bound was reached: what
    /// was leaked instead.
    pub(super) fn drain(&mut self) -> Option<Leaked> {
        self.io.flush_group();
        for index in 0..self.io.listeners.len() as u32 {
            let sqe = opcode::AsyncCancel::new(Op::ListenRecv { index }.encode())
                .build()
                .user_data(Op::Cancel.encode());
            self.io.push(&sqe);
        }
        let wake = opcode::AsyncCancel::new(Op::WakeRead.encode())
            .build()
            .user_data(Op::Cancel.encode());
        self.io.push(&wake);
        let deadline = Instant::now() + BOUND;
        let mut wake_done = !self.wake_armed;
        while (self.io.armed > 0 || self.io.sends_in_flight() > 0 || !wake_done)
            && Instant::now() < deadline
        {
            let buffers = &mut self.buffers;
            self.io
                .reap_failed_groups(|buf| super::give_back(buffers, buf));
            self.buffers.publish();
            let ts = Timespec::new().nsec(50_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.io.ring.submitter().submit_with_args(1, &args);
            self.io.submitted();
            let done: Vec<cqueue::Entry> = self.io.ring.completion().collect();
            for entry in done {
                if let Some(lent) = self.buffers.take(&entry) {
                    self.buffers.give_back(lent);
                }
                match Op::decode(entry.user_data()) {
                    Some(Op::ListenRecv { .. } | Op::RelayRecv { .. } | Op::StreamRecv { .. })
                        if !cqueue::more(entry.flags()) =>
                    {
                        self.io.armed = self.io.armed.saturating_sub(1)
                    }
                    Some(Op::Send { slot }) => {
                        let buffers = &mut self.buffers;
                        self.io
                            .finish_send(slot, |buf| super::give_back(buffers, buf));
                    }
                    Some(Op::WakeRead) => wake_done = true,
                    _ => {}
                }
            }
        }
        if self.io.armed == 0 && self.io.sends_in_flight() == 0 && wake_done {
            return None;
        }
        // The kernel may still read the send slots and write into the buffers: keep them
        // for the life of the process rather than risk it using freed memory.
        let leaked = Leaked {
            send_slots: self.io.sends_in_flight(),
            receives: self.io.armed,
            buffers: usize::from(self.buffers.count()),
            lent: self.buffers.lent(),
        };
        tracing::warn!(
            send_slots = leaked.send_slots,
            receives = leaked.receives,
            buffers = leaked.buffers,
            lent = leaked.lent,
            "io_uring operations still in flight {BOUND:?} into the shutdown: leaking {} send \
             slots and {} provided buffers ({} held by sends)",
            leaked.send_slots,
            leaked.buffers,
            leaked.lent
        );
        self.buffers.leak();
        self.io.leak();
        std::mem::forget(std::mem::take(&mut self.wake_buf));
        Some(leaked)
    }
}
