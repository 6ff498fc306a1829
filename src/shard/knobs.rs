//! Test-only knobs: an injected shard fault and smaller ring sizes, so tests can drive
//! the failure paths of a real server (in process, or the real binary through the
//! `UTURN_TEST_*` environment variables).
//!
//! Compiled in but inert unless set: without the variables (and in production) every
//! field is `None`. Owns only parsing and the trigger; must not change what a shard does
//! when nothing is set.

use std::io;

/// What an injected fault does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub enum FaultKind {
    /// The shard thread panics.
    Panic,
    /// The next wait for completions (io_uring enter, epoll wait) fails with this errno
    /// once, after the real call.
    WaitError(i32),
}

/// A fault injected into one shard once it has received `after` datagrams, `times` times
/// in a row (0: at every wait from then on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[doc(hidden)]
pub struct Fault {
    pub kind: FaultKind,
    pub shard: usize,
    pub after: u64,
    pub times: u64,
}

/// Test knobs of one server; `Default` is production.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[doc(hidden)]
pub struct TestKnobs {
    pub fault: Option<Fault>,
    /// io_uring completion queue entries (rounded up to a power of two by the kernel).
    pub cq_entries: Option<u32>,
    /// io_uring provided buffers per shard (a power of two).
    pub buffers: Option<u16>,
    /// io_uring send slots per shard.
    pub send_slots: Option<usize>,
    /// `Some(true)`: the io_uring shard reads stream connections through the epoll set
    /// with `read` calls, not with ring receives (for A/B measurements).
    pub stream_epoll: Option<bool>,
    /// Slots of each queue between two io_uring shards (0: no relay to relay between
    /// shards in process).
    pub handoff_slots: Option<usize>,
    /// `Some(true)`: shards wake each other for relay-to-relay datagrams through their
    /// eventfd, not with a ring message (for A/B measurements).
    pub handoff_eventfd: Option<bool>,
    /// Slots of the io_uring shard's registered file table; `Some(0)`: none, every
    /// socket is named by its descriptor (for A/B measurements).
    pub fixed_files: Option<u32>,
    /// io_uring: a kernel thread polls the submission queue, idle after this many ms
    /// (SQPOLL; no deferred task run then). For A/B measurements.
    pub sqpoll: Option<u32>,
}

impl TestKnobs {
    /// From `UTURN_TEST_FAULT` (`panic|wait:ERRNO[,shard=N][,after=N][,times=N]`, ERRNO a number or
    /// one of EBADR EAGAIN EINTR EBUSY ENOMEM EFAULT), `UTURN_TEST_CQ_ENTRIES`,
    /// `UTURN_TEST_BUFFERS`, `UTURN_TEST_SEND_SLOTS`, `UTURN_TEST_STREAM_EPOLL` (`true`),
    /// `UTURN_TEST_HANDOFF_SLOTS`, `UTURN_TEST_HANDOFF_EVENTFD` (`true`), `UTURN_TEST_FIXED_FILES`
    /// (table size, 0: none), `UTURN_TEST_SQPOLL` (idle ms). A set variable that does not parse
    /// is an error, so a test never runs without the fault it asked for.
    pub fn from_env() -> io::Result<TestKnobs> {
        fn var<T: std::str::FromStr>(name: &str) -> io::Result<Option<T>> {
            match std::env::var(name) {
                Ok(v) => v.parse().map(Some).map_err(|_| bad(name, &v)),
                Err(_) => Ok(None),
            }
        }
        let fault = match std::env::var("UTURN_TEST_FAULT") {
            Ok(v) => Some(parse_fault(&v).ok_or_else(|| bad("UTURN_TEST_FAULT", &v))?),
            Err(_) => None,
        };
        let knobs = TestKnobs {
            fault,
            cq_entries: var("UTURN_TEST_CQ_ENTRIES")?,
            buffers: var("UTURN_TEST_BUFFERS")?,
            send_slots: var("UTURN_TEST_SEND_SLOTS")?,
            stream_epoll: var("UTURN_TEST_STREAM_EPOLL")?,
            handoff_slots: var("UTURN_TEST_HANDOFF_SLOTS")?,
            handoff_eventfd: var("UTURN_TEST_HANDOFF_EVENTFD")?,
            fixed_files: var("UTURN_TEST_FIXED_FILES")?,
            sqpoll: var("UTURN_TEST_SQPOLL")?,
        };
        if knobs != TestKnobs::default() {
            tracing::warn!(?knobs, "test knobs set: this server is under test");
        }
        Ok(knobs)
    }

    /// The fault for shard `index`, if any.
    pub(crate) fn fault_for(&self, index: usize) -> Option<Fault> {
        self.fault.filter(|f| f.shard == index)
    }
}

fn bad(name: &str, value: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name}={value:?} does not parse"),
    )
}

fn errno(name: &str) -> Option<i32> {
    Some(match name {
        "EBADR" => libc::EBADR,
        "EAGAIN" => libc::EAGAIN,
        "EINTR" => libc::EINTR,
        "EBUSY" => libc::EBUSY,
        "ENOMEM" => libc::ENOMEM,
        "EFAULT" => libc::EFAULT,
        n => n.parse().ok()?,
    })
}

fn parse_fault(text: &str) -> Option<Fault> {
    let mut parts = text.split(',');
    let kind = match parts.next()? {
        "panic" => FaultKind::Panic,
        k => FaultKind::WaitError(errno(k.strip_prefix("wait:")?)?),
    };
    let mut fault = Fault {
        kind,
        shard: 0,
        after: 1,
        times: 1,
    };
    for part in parts {
        match part.split_once('=')? {
            ("shard", n) => fault.shard = n.parse().ok()?,
            ("after", n) => fault.after = n.parse().ok()?,
            ("times", n) => fault.times = n.parse().ok()?,
            _ => return None,
        }
    }
    Some(fault)
}

/// One shard's armed fault: fires when the shard has received enough, as often as asked.
pub(crate) struct Trigger(Option<Fault>);

impl Trigger {
    pub fn new(fault: Option<Fault>) -> Trigger {
        Trigger(fault)
    }

    /// Panics, or turns `result` of a wait into the injected error, once `received` has
    /// reached the fault's count.
    pub fn wait_result(&mut self, received: u64, result: io::Result<()>) -> io::Result<()> {
        match self.0 {
            Some(f) if received >= f.after => {
                self.0 = match f.times {
                    1 => None,
                    0 => Some(f),
                    n => Some(Fault { times: n - 1, ..f }),
                };
                // Tests time the failure's consequences from this line.
                tracing::warn!("injected test fault fires");
                match f.kind {
                    FaultKind::Panic => panic!("injected test fault (UTURN_TEST_FAULT)"),
                    FaultKind::WaitError(e) => Err(io::Error::from_raw_os_error(e)),
                }
            }
            _ => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(
            parse_fault("panic"),
            Some(Fault {
                kind: FaultKind::Panic,
                shard: 0,
                after: 1,
                times: 1
            })
        );
        assert_eq!(
            parse_fault("wait:EBADR,shard=1,after=7,times=0"),
            Some(Fault {
                kind: FaultKind::WaitError(libc::EBADR),
                shard: 1,
                after: 7,
                times: 0
            })
        );
        assert_eq!(
            parse_fault("wait:14").map(|f| f.kind),
            Some(FaultKind::WaitError(14))
        );
        for bad in [
            "",
            "boom",
            "wait:",
            "wait:ENOPE",
            "panic,shard=x",
            "panic,x=1",
        ] {
            assert_eq!(parse_fault(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_trigger_fires_once_after_its_count() {
        let mut t = Trigger::new(parse_fault("wait:EAGAIN,after=2"));
        assert!(t.wait_result(1, Ok(())).is_ok());
        let e = t.wait_result(2, Ok(())).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        assert!(t.wait_result(3, Ok(())).is_ok(), "once");
        let mut twice = Trigger::new(parse_fault("wait:EAGAIN,times=2"));
        assert!(twice.wait_result(1, Ok(())).is_err());
        assert!(twice.wait_result(1, Ok(())).is_err());
        assert!(twice.wait_result(1, Ok(())).is_ok());
        let mut always = Trigger::new(parse_fault("wait:EAGAIN,times=0"));
        for _ in 0..100 {
            assert!(always.wait_result(1, Ok(())).is_err());
        }
        let mut inert = Trigger::new(None);
        assert!(inert.wait_result(u64::MAX, Ok(())).is_ok());
    }
}
