//! uturn: a TURN relay server (RFC 8656, RFC 5766).
//!
//! The protocol core ([`stun`], [`turn`]) is sans-IO; [`shard`] runs it on pinned
//! threads over io_uring (or a portable backend); [`stats`] publishes to Redis in coturn's
//! schema; [`auth`] is the embedding API.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod auth;
pub mod config;
pub mod shard;
pub mod stats;
pub mod stun;
pub mod turn;

pub use auth::{AuthDecision, AuthRequest, Observer, Ticket};
pub use config::Config;
