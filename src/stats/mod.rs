//! The stats side thread: takes [`crate::turn::Event`]s from the shards over a bounded
//! channel and publishes them to Redis in coturn's schema, in pipelined batches.
//!
//! Owns: the Redis connection, batching, reconnect, the event queue while Redis is down.
//! Must not: ever block a shard (shards use `try_send` and count what does not fit).
