//! Shards: one pinned thread per core, each with its own io_uring (or the portable
//! backend), its own SO_REUSEPORT member of every listening socket, its own relay port
//! range and its own [`crate::turn::Server`].
//!
//! Owns: sockets, buffers, timers, the translation between completions and the core's
//! inputs/outputs. Must not: make protocol decisions.
