//! The stats side thread: takes [`crate::turn::Event`]s from the shards over a bounded
//! channel and publishes them to Redis in coturn's schema, in pipelined batches.
//!
//! Owns: the Redis connection, batching, reconnect, the event queue while Redis is down.
//! Must not: ever block a shard (shards use `try_send` and count what does not fit).

use crate::turn::Event;

/// Where shards hand their events. Implementations must never block the calling shard:
/// queue with a bound and count what does not fit.
pub trait EventSink: Send + Sync {
    fn send(&self, event: Event);
}

pub struct Publisher;
impl Publisher {
    pub fn sink(&self) -> std::sync::Arc<dyn EventSink> { unimplemented!() }
    pub fn stop(self, _: std::time::Duration) {}
}
