//! What each io_uring operation is, carried in its `user_data` so a completion says which
//! socket, send slot or control operation it belongs to.
//!
//! Owns only the encoding; must not hold any state. Layout: bits 60–63 a tag, 32–59 a
//! generation (relay receives), 0–31 an index.

/// One operation the shard submits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// The multishot receive of listening socket `index`.
    ListenRecv { index: u32 },
    /// The multishot receive of relay socket `index`, opened as generation `gen`.
    RelayRecv { index: u32, gen: u32 },
    /// A send using send slot `slot`.
    Send { slot: u32 },
    /// The eventfd read that wakes the shard.
    WakeRead,
    /// A cancellation; its completion needs no handling.
    Cancel,
    /// The multishot poll on the stream side's epoll descriptor.
    StreamsPoll,
    /// The multishot receive of stream connection `index` (its slot), opened as
    /// generation `gen`.
    StreamRecv { index: u32, gen: u32 },
    /// A cancellation of listening socket `index`'s receive that checks it is still armed
    /// (after the kernel dropped completions): "not found" means it ended unseen.
    RecheckListen { index: u32 },
    /// The same for relay socket `index`, generation `gen`.
    RecheckRelay { index: u32, gen: u32 },
    /// A wake between shards (IORING_OP_MSG_RING): on the target's ring, shard `shard`
    /// queued datagrams for it; on the sender's ring (only when it failed), the wake of
    /// shard `shard` did not go out.
    HandoffWake { shard: u32 },
}

const TAG_SHIFT: u32 = 60;
const GEN_SHIFT: u32 = 32;
/// Generations wrap within 28 bits; a relay slot would have to be reopened 2^28 times while
/// a stale completion waits for the wrap to confuse them.
pub(super) const GEN_MASK: u32 = (1 << (TAG_SHIFT - GEN_SHIFT)) - 1;

const TAG_LISTEN: u64 = 1;
const TAG_RELAY: u64 = 2;
const TAG_SEND: u64 = 3;
const TAG_WAKE: u64 = 4;
const TAG_CANCEL: u64 = 5;
const TAG_RECHECK_LISTEN: u64 = 6;
const TAG_RECHECK_RELAY: u64 = 7;
const TAG_STREAMS: u64 = 8;
const TAG_STREAM_RECV: u64 = 9;
const TAG_HANDOFF_WAKE: u64 = 10;

impl Op {
    pub fn encode(self) -> u64 {
        let (tag, gen, index) = match self {
            Op::ListenRecv { index } => (TAG_LISTEN, 0, index),
            Op::RelayRecv { index, gen } => (TAG_RELAY, gen & GEN_MASK, index),
            Op::Send { slot } => (TAG_SEND, 0, slot),
            Op::WakeRead => (TAG_WAKE, 0, 0),
            Op::Cancel => (TAG_CANCEL, 0, 0),
            Op::StreamsPoll => (TAG_STREAMS, 0, 0),
            Op::StreamRecv { index, gen } => (TAG_STREAM_RECV, gen & GEN_MASK, index),
            Op::RecheckListen { index } => (TAG_RECHECK_LISTEN, 0, index),
            Op::RecheckRelay { index, gen } => (TAG_RECHECK_RELAY, gen & GEN_MASK, index),
            Op::HandoffWake { shard } => (TAG_HANDOFF_WAKE, 0, shard),
        };
        (tag << TAG_SHIFT) | (u64::from(gen) << GEN_SHIFT) | u64::from(index)
    }

    /// `None` for a value no [`Op::encode`] produced (0 included, so a zeroed entry is
    /// never mistaken for an operation).
    pub fn decode(data: u64) -> Option<Op> {
        let gen = ((data >> GEN_SHIFT) as u32) & GEN_MASK;
        let index = data as u32;
        let op = match data >> TAG_SHIFT {
            TAG_LISTEN => Op::ListenRecv { index },
            TAG_RELAY => Op::RelayRecv { index, gen },
            TAG_SEND => Op::Send { slot: index },
            TAG_WAKE => Op::WakeRead,
            TAG_CANCEL => Op::Cancel,
            TAG_STREAMS => Op::StreamsPoll,
            TAG_STREAM_RECV => Op::StreamRecv { index, gen },
            TAG_RECHECK_LISTEN => Op::RecheckListen { index },
            TAG_RECHECK_RELAY => Op::RecheckRelay { index, gen },
            TAG_HANDOFF_WAKE => Op::HandoffWake { shard: index },
            _ => return None,
        };
        (op.encode() == data).then_some(op)
    }

    /// The recheck of a receive, and back: the receive a recheck is about.
    pub fn recheck(self) -> Option<Op> {
        match self {
            Op::ListenRecv { index } => Some(Op::RecheckListen { index }),
            Op::RelayRecv { index, gen } => Some(Op::RecheckRelay { index, gen }),
            Op::RecheckListen { index } => Some(Op::ListenRecv { index }),
            Op::RecheckRelay { index, gen } => Some(Op::RelayRecv { index, gen }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_round_trips() {
        let ops = [
            Op::ListenRecv { index: 0 },
            Op::ListenRecv { index: u32::MAX },
            Op::RelayRecv { index: 7, gen: 5 },
            Op::RelayRecv {
                index: u32::MAX,
                gen: GEN_MASK,
            },
            Op::Send { slot: 0 },
            Op::Send { slot: 4095 },
            Op::WakeRead,
            Op::Cancel,
            Op::StreamsPoll,
            Op::StreamRecv { index: 4, gen: 3 },
            Op::StreamRecv {
                index: 4,
                gen: GEN_MASK,
            },
            Op::RecheckListen { index: 2 },
            Op::RecheckRelay {
                index: 9,
                gen: GEN_MASK,
            },
            Op::HandoffWake { shard: 1 },
        ];
        for op in ops {
            assert_eq!(Op::decode(op.encode()), Some(op), "{op:?}");
            if let Some(other) = op.recheck() {
                assert_eq!(other.recheck(), Some(op), "{op:?}");
            }
        }
        // Distinct operations never share a user_data value.
        for (i, a) in ops.iter().enumerate() {
            for b in &ops[i + 1..] {
                assert_ne!(a.encode(), b.encode(), "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn foreign_values_do_not_decode() {
        assert_eq!(Op::decode(0), None);
        assert_eq!(Op::decode(u64::MAX), None);
        // A wake read with stray index bits is not a wake read.
        assert_eq!(Op::decode(Op::WakeRead.encode() | 1), None);
        // A send with generation bits set is not a send.
        assert_eq!(Op::decode(Op::Send { slot: 1 }.encode() | (1 << 40)), None);
    }

    #[test]
    fn generation_wraps_into_its_field() {
        let op = Op::RelayRecv {
            index: 3,
            gen: GEN_MASK + 2,
        };
        assert_eq!(
            Op::decode(op.encode()),
            Some(Op::RelayRecv { index: 3, gen: 1 })
        );
    }
}
