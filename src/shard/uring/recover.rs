//! When the ring misbehaves: failed waits (retried, or fatal) and completions the kernel
//! dropped (counted, and every receive checked again so none stays unarmed).
//!
//! Owns only those decisions; must not touch buffers or the core.

use super::op::Op;
use super::{Shard, ShardState, PERSISTENT};
use ::io_uring::opcode;
use ::io_uring::types::CancelBuilder;
use std::time::{Duration, Instant};

impl Shard {
    /// A failed wait: the timeout and transient errors are retried (a transient error for
    /// at most [`PERSISTENT`]); dropped completions are accounted and recovered from;
    /// anything else means the ring cannot go on.
    pub(super) fn wait_failed(
        &mut self,
        state: &mut ShardState,
        e: std::io::Error,
        since: &mut Option<Instant>,
    ) -> std::io::Result<()> {
        let now = Instant::now();
        match e.raw_os_error() {
            Some(libc::ETIME) | Some(libc::EINTR) => Ok(()),
            Some(libc::EBADR) => {
                self.count_dropped(state, true);
                Ok(())
            }
            Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOMEM) => {
                let first = *since.get_or_insert(now);
                if now.saturating_duration_since(first) > PERSISTENT {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("io_uring_enter kept failing for {PERSISTENT:?}: {e}"),
                    ));
                }
                // Let the kernel reclaim what it lacks instead of spinning on it.
                std::thread::sleep(Duration::from_millis(1));
                Ok(())
            }
            _ => Err(std::io::Error::new(
                e.kind(),
                format!("io_uring_enter failed: {e}"),
            )),
        }
    }

    /// Completions the kernel dropped (its overflow list could not grow; it says so with
    /// EBADR once, `reported`, and counts them) may include the last completion of a
    /// receive, which would then never be armed again: count them, and check every
    /// receive at the end of this turn.
    pub(super) fn count_dropped(&mut self, state: &mut ShardState, reported: bool) {
        let dropped = self.io.ring.completion().overflow();
        let counted = dropped.wrapping_sub(self.cq_dropped);
        self.cq_dropped = dropped;
        // EBADR says at least one was lost, even before the counter shows it.
        let lost = if reported { counted.max(1) } else { counted };
        if lost == 0 {
            return;
        }
        state.io.cq_lost += u64::from(lost);
        tracing::warn!(
            shard = state.index,
            lost,
            "io_uring dropped completions; checking every receive"
        );
        self.recheck_due = true;
    }

    /// Cancels every receive with a recheck: a receive that is armed ends with its own
    /// completion and is armed again as usual; one that ended unseen is reported "not
    /// found" and armed again then. Issued at the end of a turn, after this turn's
    /// re-arms: a cancellation queued before them would miss a receive that ended this
    /// turn and is about to be armed again, and arm it a second time.
    pub(super) fn recheck_receives(&mut self) {
        let listeners = (0..self.io.listeners.len() as u32).map(|index| Op::ListenRecv { index });
        let relays = self
            .io
            .relays
            .iter()
            .enumerate()
            .filter(|(_, r)| r.socket.is_some())
            .map(|(i, r)| Op::RelayRecv {
                index: i as u32,
                gen: r.gen,
            });
        let ops: Vec<Op> = listeners.chain(relays).collect();
        for op in ops {
            let Some(recheck) = op.recheck() else {
                continue;
            };
            let sqe = opcode::AsyncCancel2::new(CancelBuilder::user_data(op.encode()).all())
                .build()
                .user_data(recheck.encode());
            self.io.push(&sqe);
        }
    }

    /// A recheck found no receive: it ended unseen (its last completion was dropped).
    pub(super) fn rechecked(&mut self, stopping: bool, recheck: Op, result: i32) {
        let Some(op) = recheck.recheck() else {
            return;
        };
        // A cancellation of all matches reports how many it cancelled: none (0, or ENOENT
        // from kernels that say so) means the receive had ended.
        let found = result > 0 || (result < 0 && result != -libc::ENOENT);
        if found || stopping || self.io.rearm.contains(&op) || self.io.starved.contains(&op) {
            return;
        }
        let live = match op {
            Op::RelayRecv { index, gen } => self.io.live_relay(index, gen).is_some(),
            _ => true,
        };
        if live {
            self.io.armed = self.io.armed.saturating_sub(1);
            self.io.rearm.push(op);
        }
    }
}
