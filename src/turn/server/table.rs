//! The allocation table's pieces: slots indexed by relay id, the 5-tuple index and its
//! hasher, reserved ports and parked requests.
//!
//! Owns: these types and the slot lookups. Must not: decide anything about a request.

use super::Server;
use crate::turn::allocation::Allocation;
use crate::turn::FiveTuple;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Debug, Default)]
pub(super) struct Slot {
    pub gen: u32,
    pub allocation: Option<Allocation>,
    /// Seconds (since the epoch) of the live Expiry and Prune timer entries.
    pub expiry_at: u64,
    pub prune_at: Option<u64>,
}

/// A port held for a RESERVATION-TOKEN; the port itself travels in the shared
/// `PortExchange`, so another shard can redeem it.
#[derive(Debug)]
pub(super) struct Reservation {
    pub expires_tick: u64,
}

/// A request waiting for an asynchronous authentication answer.
pub(super) struct Parked {
    pub data: Vec<u8>,
    pub tuple: FiveTuple,
}

/// A cheap hasher for the 5-tuple map: keys are only inserted for authenticated
/// allocations, so there is no hash-flooding exposure worth SipHash's cost per packet.
#[derive(Default, Clone, Copy)]
pub(super) struct TupleHasher(u64);

impl Hasher for TupleHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64)
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(n as u64)
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64)
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64)
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type TupleMap = HashMap<FiveTuple, u32, BuildHasherDefault<TupleHasher>>;

impl Server {
    /// The allocation in `slot`, if any.
    pub(super) fn allocation(&self, slot: u32) -> Option<&Allocation> {
        self.slots
            .get(slot as usize)
            .and_then(|s| s.allocation.as_ref())
    }

    pub(super) fn allocation_mut(&mut self, slot: u32) -> Option<&mut Allocation> {
        self.slots
            .get_mut(slot as usize)
            .and_then(|s| s.allocation.as_mut())
    }

    /// Whether `slot` still holds the allocation of generation `gen`.
    pub(super) fn live_slot(&self, slot: u32, gen: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| s.gen == gen && s.allocation.is_some())
    }
}
