//! Runs the loaded program on a crafted frame with `BPF_PROG_TEST_RUN`: the program's
//! verdict, the frame as it left, and the kernel's own timing over a repeat count.
//!
//! Exists for tests and the per-packet cost bench; nothing in the relay calls it. The run
//! happens in the calling thread's network namespace (routes and neighbours for
//! `bpf_fib_lookup` come from there) as if received on `ingress_ifindex`. A verdict of TX
//! or REDIRECT only reports the decision: test runs transmit nothing.

use std::time::Duration;

use aya::programs::{TestRun as _, TestRunOptions, Xdp};

use super::Error;

/// An XDP verdict (`enum xdp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Other(u32),
}

impl From<u32> for Action {
    fn from(v: u32) -> Action {
        match v {
            0 => Action::Aborted,
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            other => Action::Other(other),
        }
    }
}

/// What one test run returned.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub action: Action,
    /// The frame after the program (head moved, tail trimmed).
    pub frame: Vec<u8>,
    /// Mean time per run as measured by the kernel.
    pub per_run: Duration,
}

/// A handle for test runs of the loaded program.
pub struct TestRun<'a> {
    xdp: &'a Xdp,
}

/// Room the output frame may grow by (the program adds at most 4 bytes).
const GROWTH: usize = 64;

impl<'a> TestRun<'a> {
    pub(super) fn new(xdp: &'a Xdp) -> TestRun<'a> {
        TestRun { xdp }
    }

    /// Runs the program `repeat` times (≥ 1) on `frame` as received on `ingress_ifindex`
    /// (0: the kernel's default, loopback). Map counters advance on every run.
    pub fn run(&self, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> Result<Outcome, Error> {
        let mut out = vec![0u8; frame.len() + GROWTH];
        // struct xdp_md as the kernel takes it in: data (metadata length) 0, data_end the
        // frame length, data_meta 0, ingress_ifindex, rx_queue_index 0, egress_ifindex 0.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let result = self.xdp.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
            repeat: repeat.max(1),
            ..TestRunOptions::new()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok(Outcome {
            action: Action::from(result.return_value),
            frame: out,
            per_run: result.duration,
        })
    }
}
