//! Failure containment: a shard whose loop fails or panics reports why, after deleting its
//! allocations through the core where it can (so observers and Redis see `deleted` and the
//! totals), and the server stops as a whole (`Running::wait_failure`, `crate::run`) rather
//! than living on with one SO_REUSEPORT member gone and its clients hashed elsewhere.
//!
//! Owns the catch and the report; must not retry (transient errors are retried inside the
//! backends; what reaches here cannot go on).

use super::ShardState;
use crate::turn::{RelayId, RelaySockets};
use std::any::Any;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// Why a shard stopped before it was asked to.
#[derive(Clone, Debug)]
pub struct ShardFailure {
    pub index: usize,
    pub backend: &'static str,
    pub cause: String,
}

impl fmt::Display for ShardFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard {} ({}) failed: {}",
            self.index, self.backend, self.cause
        )
    }
}

/// Runs a backend loop. `Ok` means it stopped when asked and cleaned up. On an error the
/// loop has already deleted its allocations; on a panic they are deleted here, through the
/// core, with the sockets treated as gone. Either way the backend (its ring, buffers and
/// sockets, which the kernel may still use) is leaked, not freed: the process is about to
/// exit. Returns the cause of a failure.
pub(crate) fn contain<S>(
    mut shard: S,
    state: &mut ShardState,
    run: fn(&mut S, &mut ShardState) -> io::Result<()>,
) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(|| run(&mut shard, state))) {
        Ok(Ok(())) => None,
        Ok(Err(e)) => {
            std::mem::forget(shard);
            Some(e.to_string())
        }
        Err(payload) => {
            std::mem::forget(shard);
            let cause = format!("panicked: {}", panic_message(&*payload));
            if !shutdown_after_panic(state) {
                tracing::error!(
                    shard = state.index,
                    "could not delete the allocations of the failed shard"
                );
            }
            Some(cause)
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// Deletes every allocation through the core after a panic. False if that panicked too.
fn shutdown_after_panic(state: &mut ShardState) -> bool {
    catch_unwind(AssertUnwindSafe(|| {
        state.shutdown(Instant::now(), &mut Gone);
        state.dispatch_events();
    }))
    .is_ok()
}

/// The sockets of a shard that panicked: nothing opens, closing is a no-op (they stay
/// open with the leaked backend until the process exits).
struct Gone;

impl RelaySockets for Gone {
    fn open(&mut self, _: RelayId, _: SocketAddr) -> io::Result<()> {
        Err(io::Error::other("shard failed"))
    }

    fn close(&mut self, _: RelayId) {}
}
