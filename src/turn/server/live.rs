//! Settings a running server takes without a restart (SIGHUP reload): the peer policy and
//! the per-allocation bandwidth cap.
//!
//! The policy is checked when a permission or channel is made or refreshed, so a new policy
//! applies to those; permissions already granted run until they expire unless refreshed.
//! `max_bps` applies at once to every allocation that has a bandwidth bucket (made while a
//! cap was set) and to every new one; allocations made without a cap stay uncapped.

use super::Server;
use crate::turn::PeerPolicy;

impl Server {
    pub fn set_peer_policy(&mut self, policy: PeerPolicy) {
        self.config.policy = policy;
    }

    pub fn set_max_bps(&mut self, max_bps: u64) {
        self.config.max_bps = max_bps;
        if max_bps != 0 {
            self.remove_all_offloads();
        }
    }
}
