//! Settings the main thread changes on running shards (SIGHUP reload): the peer policy and
//! `--max-bps`. Shards look at one atomic generation number per loop turn and take the
//! lock only when it moved.

use crate::turn::{PeerPolicy, Server};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub struct LiveSettings {
    generation: AtomicU64,
    values: Mutex<(PeerPolicy, u64)>,
}

impl LiveSettings {
    pub fn new(policy: PeerPolicy, max_bps: u64) -> LiveSettings {
        LiveSettings {
            generation: AtomicU64::new(0),
            values: Mutex::new((policy, max_bps)),
        }
    }

    /// New values for every shard (each takes them at the end of its next loop turn).
    pub fn set(&self, policy: PeerPolicy, max_bps: u64) {
        *self.values.lock().unwrap_or_else(|e| e.into_inner()) = (policy, max_bps);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Applies the values to `server` if they changed since generation `seen`.
    pub(crate) fn apply(&self, seen: &mut u64, server: &mut Server) {
        let generation = self.generation.load(Ordering::Acquire);
        if generation == *seen {
            return;
        }
        let (policy, max_bps) = self
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        server.set_peer_policy(policy);
        server.set_max_bps(max_bps);
        *seen = generation;
    }
}
