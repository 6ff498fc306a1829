//! The core driven through a fake clock and fake relay sockets: no I/O, so expiry,
//! retransmission and error paths are tested in microseconds.

use super::*;
use crate::auth::{AuthDecision, AuthRequest, Observer, Quotas};
use crate::stun::{self, Class, Message, MessageBuilder, Method};
use crate::testing::{error_code, nonce_of, users, Client, World};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn relay_id(world: &World, relay: SocketAddr) -> RelayId {
    world.relay_id(relay)
}

fn peer_attr(peer: SocketAddr) -> impl FnOnce(&mut MessageBuilder<'_>) {
    move |b| {
        b.add_xor_address(stun::XOR_PEER_ADDRESS, peer);
    }
}

/// A public peer (outside every refused range, documentation ones included).
const PEER: &str = "203.0.114.7:9000";

mod authentication;
mod lifecycle;
mod offload;
mod own_addresses;
mod prop;
mod refusals;
mod transports;
