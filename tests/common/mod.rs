//! Helpers shared by the integration tests, by concern: `server` (uturn as a process and
//! in-process), `coturn` (coturn's client tools, bounded child processes), `redis` (a
//! redis-server of the tests' own, subscribers), `traffic` (in-process echo peers, relaying
//! clients, raw STUN requests), `proof` (figure-printing proofs), `wait` (conditions with
//! deadlines), `webrtc` (the webrtc-rs `turn` client).
#![allow(dead_code, unused_imports)]

mod coturn;
mod proof;
mod redis;
mod server;
mod traffic;
mod wait;
mod webrtc;

pub use self::coturn::*;
pub use self::proof::*;
pub use self::redis::*;
pub use self::server::*;
pub use self::traffic::*;
pub use self::wait::*;
pub use self::webrtc::*;
