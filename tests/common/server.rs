//! Servers under test: the real `uturn` binary on loopback with its own ports, and
//! in-process servers started through the library.

use super::wait::{wait_until, within};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use uturn::stun::{self, Class, Message, MessageBuilder, Method};

/// A UDP listening port nobody holds now: the kernel picks it (binding port 0 without
/// SO_REUSEPORT never shares a port). uturn listens with SO_REUSEPORT, so on a port another
/// process's server holds (other worktrees run their tests on this machine too, as the
/// same user) the kernel would silently split the clients between the two servers.
/// uturn listens on TCP on the same port too, so the port must be free for TCP as well.
pub fn free_listen_port() -> u16 {
    for _ in 0..1000 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP");
}

/// Whether nobody holds UDP `port` on 127.0.0.1 or ::1 right now.
fn port_free(port: u16) -> bool {
    let free = |ip: &str| match UdpSocket::bind((ip, port)) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::AddrInUse,
    };
    free("127.0.0.1") && free("::1")
}

/// `width` consecutive relay ports that nobody holds now, below the kernel's ephemeral
/// range (32768-60999) so client sockets never take one, from a random start, disjoint
/// from every block this process handed out before (tests run in parallel) and from the
/// blocks of every other test process using this helper (other worktrees' suites run on
/// the same machine): each 100-port page of the block is claimed by binding an abstract
/// Unix socket name, held until this process exits.
pub fn free_port_block(width: u16) -> (u16, u16) {
    static TAKEN: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());
    assert!(width <= 20_000);
    for _ in 0..1000 {
        let lo = rand::Rng::gen_range(&mut rand::thread_rng(), 10_000..32_000 - width);
        let hi = lo + width - 1;
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        if taken.iter().any(|&(a, b)| lo <= b && a <= hi) {
            continue;
        }
        if (lo..=hi).all(port_free) && claim_pages(lo, hi) {
            taken.push((lo, hi));
            return (lo, hi);
        }
    }
    panic!("no {width} free consecutive UDP ports in 10000-32000");
}

/// Claims the 100-port pages `lo..=hi` spans for this process (see [`free_port_block`]);
/// false, claiming none, if another process holds one.
fn claim_pages(lo: u16, hi: u16) -> bool {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    static HELD: Mutex<Vec<UnixDatagram>> = Mutex::new(Vec::new());
    let mut claimed = Vec::new();
    for page in lo / 100..=hi / 100 {
        // An abstract Unix socket name is held by one socket at a time on the machine
        // and released when its process exits, however it ends.
        let name = format!("uturn-test-relay-page-{page}");
        let Ok(addr) = UnixAddr::from_abstract_name(name.as_bytes()) else {
            return false;
        };
        match UnixDatagram::bind_addr(&addr) {
            Ok(socket) => claimed.push(socket),
            Err(_) => return false,
        }
    }
    HELD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(claimed);
    true
}

/// A listening port and a relay range of 100 ports, all free now (see above).
pub fn next_ports() -> (u16, u16, u16) {
    let (min, max) = free_port_block(100);
    (free_listen_port(), min, max)
}

pub struct Uturn {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    /// The metrics endpoint, when started with [`Launch::prometheus`].
    pub http: Option<SocketAddr>,
}

/// How a test starts the binary beyond the interop options: see [`Uturn::start_with`].
#[derive(Default)]
pub struct Launch<'a> {
    pub backend: &'a str,
    /// Options after the interop ones (a repeated option: the last one wins).
    pub extra: &'a [&'a str],
    /// Environment variables set, and removed, for the process.
    pub env: &'a [(&'a str, &'a str)],
    pub env_remove: &'a [&'a str],
    /// Serve metrics and probes (`--prometheus`) on a free TCP port.
    pub prometheus: bool,
    /// Ready when it logs "uturn ready", without a Binding request (for a server whose
    /// first datagram fires an injected fault).
    pub no_probe: bool,
}

/// How long a start may take: generous, since it costs nothing when the machine is idle
/// and a loaded machine (six engineers building on two cores) can stall a process for
/// seconds.
const START_LIMIT: Duration = Duration::from_secs(60);

/// Listening on 127.0.0.1:`port`, relaying on 127.0.0.1 from ports `min..=max`, realm
/// example.org, user alice/secret: what every test server starts from.
pub fn base_args(port: u16, min: u16, max: u16) -> Vec<String> {
    let (port, min, max) = (port.to_string(), min.to_string(), max.to_string());
    [
        "--listening-ip",
        "127.0.0.1",
        "--relay-ip",
        "127.0.0.1",
        "--listening-port",
        &port,
        "--min-port",
        &min,
        "--max-port",
        &max,
        "--realm",
        "example.org",
        "--user",
        "alice:secret",
    ]
    .map(String::from)
    .to_vec()
}

impl Uturn {
    /// Starts `uturn` with the interop options plus `extra`, waits until it answers Binding.
    pub fn start(backend: &str, extra: &[&str]) -> Uturn {
        Uturn::start_with(Launch {
            backend,
            extra,
            ..Launch::default()
        })
    }

    /// Starts `uturn` on fresh free ports as `how` says and waits until it is ready;
    /// a start that lost a port to another process ("in use") tries again on new ports.
    pub fn start_with(how: Launch<'_>) -> Uturn {
        for _attempt in 0..10 {
            let (port, min, max) = next_ports();
            let http_port = how.prometheus.then(free_tcp_port);
            let log =
                std::env::temp_dir().join(format!("uturn-test-{}-{port}.log", std::process::id()));
            let mut args = base_args(port, min, max);
            args.extend(
                [
                    "--lt-cred-mech",
                    "--backend",
                    how.backend,
                    "--log-level",
                    "debug",
                ]
                .map(String::from),
            );
            if let Some(http) = http_port {
                args.extend(["--prometheus".into(), "--prometheus-port".into()]);
                args.push(http.to_string());
            }
            args.extend(how.extra.iter().map(|s| s.to_string()));
            let mut command = Command::new(env!("CARGO_BIN_EXE_uturn"));
            command.args(&args);
            for (k, v) in how.env {
                command.env(k, v);
            }
            for k in how.env_remove {
                command.env_remove(k);
            }
            let mut server = Uturn::spawn(command, port, log);
            server.http = http_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
            let ready = if how.no_probe {
                server.wait_logged_ready(START_LIMIT)
            } else {
                server.wait_ready(START_LIMIT)
            };
            if ready {
                return server;
            }
            let log = server.log_text();
            server.stop();
            if !log.contains("in use") {
                panic!("uturn did not start within {START_LIMIT:?}; log:\n{log}");
            }
        }
        panic!("could not find free ports for uturn");
    }

    /// Starts `uturn` with exactly `args`, expected to listen on 127.0.0.1:`port`, logging
    /// to `log`; does not wait.
    pub fn launch(args: &[String], port: u16, log: PathBuf) -> Uturn {
        let mut command = Command::new(env!("CARGO_BIN_EXE_uturn"));
        command.args(args);
        Uturn::spawn(command, port, log)
    }

    fn spawn(mut command: Command, port: u16, log: PathBuf) -> Uturn {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn uturn");
        Uturn {
            child,
            port,
            log,
            http: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits until every shard runs ("uturn ready" in the log) and the server answers
    /// Binding; false if it exited or `timeout` passed.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let addr = self.addr();
        let log = self.log.clone();
        let child = &mut self.child;
        let mut exited = false;
        wait_until(within(timeout), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited
                || (std::fs::read_to_string(&log).is_ok_and(|l| l.contains("uturn ready"))
                    && binding(addr, Duration::from_millis(200)).is_some())
        }) && !exited
    }

    /// Waits until the log says "uturn ready"; false if it exited or `timeout` passed.
    pub fn wait_logged_ready(&mut self, timeout: Duration) -> bool {
        let log = self.log.clone();
        let child = &mut self.child;
        let mut exited = false;
        wait_until(within(timeout), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("uturn ready"))
        }) && !exited
    }

    /// The server's process id (for /proc/<pid>/status).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends signal `name` (TERM, USR1, …) to the process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{name}");
    }

    /// Waits up to `limit` for the process to exit: its exit status if it did.
    pub fn try_wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        let child = &mut self.child;
        wait_until(within(limit), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// Waits for the process to exit; its exit code. Panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let status = self.try_wait_exit(limit);
        assert!(status.is_some(), "uturn did not exit within {limit:?}");
        status.and_then(|s| s.code())
    }

    /// SIGTERM, then wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        if let Some(status) = self.try_wait_exit(Duration::from_secs(30)) {
            return status.code();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Uturn {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A TCP port nobody listens on now (the kernel picks it).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A STUN Binding round trip; returns the reflexive address.
pub fn binding(server: SocketAddr, timeout: Duration) -> Option<SocketAddr> {
    let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut req = Vec::new();
    MessageBuilder::new(&mut req, Class::Request, Method::BINDING, &[7; 12]);
    sock.send_to(&req, server).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let msg = Message::parse(&buf[..n]).ok()?;
    if msg.class() != Class::Success {
        return None;
    }
    msg.xor_address(stun::XOR_MAPPED_ADDRESS).ok()?
}

/// The configuration in-process tests start from: listening and relaying on 127.0.0.1,
/// realm example.org, user alice/secret, loopback peers allowed, `shards` shards (all on
/// core 0), then `tweak`.
pub fn loopback_config(
    shards: usize,
    tweak: impl FnOnce(&mut uturn::config::Config),
) -> uturn::config::Config {
    let mut c = uturn::config::Config {
        listening_ips: vec!["127.0.0.1".parse().unwrap()],
        relay_ips: vec!["127.0.0.1".parse().unwrap()],
        realm: "example.org".into(),
        users: vec![("alice".into(), "secret".into())],
        allow_loopback_peers: true,
        cores: vec![0; shards],
        ..uturn::config::Config::default()
    };
    tweak(&mut c);
    c
}

/// Starts an in-process server from `config` on a free listening port and a free block
/// of `ports` relay ports, trying again while a port is taken.
pub fn start_in_process(
    config: &uturn::config::Config,
    observer: Option<std::sync::Arc<dyn uturn::auth::Observer>>,
    sink: Option<std::sync::Arc<dyn uturn::stats::EventSink>>,
    ports: u16,
) -> uturn::shard::Running {
    for _attempt in 0..20 {
        let mut c = config.clone();
        c.listening_port = free_listen_port();
        (c.min_port, c.max_port) = free_port_block(ports);
        let observer = observer
            .clone()
            .unwrap_or_else(|| uturn::observer_from_config(&c));
        match uturn::shard::start(&c, observer, sink.clone()) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("start: {e}"),
        }
    }
    panic!("no free ports");
}

/// Starts a server with relay ports `min..=max` (from [`free_port_block`]) on a free
/// listening port.
pub fn start_with_range(
    mut config: uturn::config::Config,
    observer: Option<std::sync::Arc<dyn uturn::auth::Observer>>,
    sink: Option<std::sync::Arc<dyn uturn::stats::EventSink>>,
    (min, max): (u16, u16),
) -> uturn::shard::Running {
    config.min_port = min;
    config.max_port = max;
    let observer = observer.unwrap_or_else(|| uturn::observer_from_config(&config));
    for _ in 0..20 {
        config.listening_port = free_listen_port();
        match uturn::shard::start(&config, observer.clone(), sink.clone()) {
            Ok(r) => return r,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("start: {e}"),
        }
    }
    panic!("no free listening port");
}

pub fn sum(
    reports: &[uturn::shard::ShardReport],
    f: impl Fn(&uturn::turn::ServerCounters) -> u64,
) -> u64 {
    reports.iter().map(|r| f(&r.counters)).sum()
}

/// Sums `key: N` over every shard's final counters in a binary's log.
pub fn log_counter(log: &str, key: &str) -> u64 {
    let pat = format!("{key}: ");
    log.match_indices(&pat)
        .filter_map(|(at, _)| {
            let digits: String = log[at + pat.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse::<u64>().ok()
        })
        .sum()
}
