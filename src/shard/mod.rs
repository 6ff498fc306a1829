//! Shards: one pinned thread per core, each with its own io_uring (or the portable
//! backend), its own SO_REUSEPORT member of every listening socket, its own relay port
//! range and its own [`crate::turn::Server`].
//!
//! Owns: sockets, buffers, timers, the translation between I/O readiness or completions and
//! the core's inputs/outputs, event dispatch to the observer and the stats sink.
//! Must not: make protocol decisions (that is `turn`).

mod failure;
mod host;
mod knobs;
mod live;
mod offload;
mod pktinfo;
mod portable;
mod prebind;
mod sockets;
mod state;
pub mod stream;
pub(crate) mod stream_conn;
mod stream_options;
pub mod tls;
mod uring;

pub use failure::ShardFailure;
pub use host::port_slices;
use host::{
    default_listen_ips, default_relay_ip, default_relay_ip_v6, own_addresses, raise_file_limit,
};
pub use knobs::{Fault, FaultKind, TestKnobs};
pub use offload::OffloadCounters;
pub(crate) use sockets::{
    bind_listener, bind_udp, listener_for, note_relay_open_error, RELAY_SOCKET_BUFFER,
};
pub use state::IoCounters;
pub(crate) use state::ShardState;

use crate::auth::{AuthDecision, Observer, Quotas};
use crate::config::{Backend, Config};
use crate::stats::EventSink;
use crate::turn::{PeerPolicy, Server, ServerConfig, ServerCounters};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The largest datagram either backend takes, from a client or a peer: what fits an
/// io_uring provided buffer (4,096 bytes) after the receive header and the core's
/// headroom and tailroom. Larger ones are dropped and counted (`IoCounters::truncated`).
pub const MAX_DATAGRAM: usize = uring::MAX_DATAGRAM;

/// Wakes a shard from another thread (stop, asynchronous authentication answers).
pub(crate) type Wake = Arc<dyn Fn() + Send + Sync>;

/// Everything one shard thread needs.
pub(crate) struct ShardSpec {
    pub index: usize,
    pub core_id: Option<usize>,
    pub listen: Vec<SocketAddr>,
    pub server: ServerConfig,
    pub observer: Arc<dyn Observer>,
    pub quotas: Arc<Quotas>,
    pub sink: Option<Arc<dyn EventSink>>,
    pub stop: Arc<AtomicBool>,
    pub backend: Backend,
    pub batch_wait_us: u32,
    pub udp_gso: bool,
    pub knobs: TestKnobs,
    pub failures: mpsc::Sender<ShardFailure>,
    pub metrics: Arc<crate::metrics::ShardMetrics>,
    pub draining: Arc<AtomicBool>,
    pub live: Arc<live::LiveSettings>,
    pub udp: bool,
    pub streams: stream::StreamOptions,
    /// This shard's listening sockets, bound with every other shard's before any receives.
    pub listeners: prebind::Listeners,
    /// This shard's handle on the XDP maps (`--xdp` attached).
    pub offload: Option<crate::xdp::Maps>,
    /// Relay to relay between shards (with more than one shard).
    pub handoff: Option<Arc<uring::HandoffHost>>,
}

/// What a shard reports when it ends.
#[derive(Clone, Debug, Default)]
pub struct ShardReport {
    pub index: usize,
    pub backend: &'static str,
    pub counters: ServerCounters,
    pub io: IoCounters,
    pub streams: stream::StreamCounters,
    /// Why the shard stopped on its own, if it did.
    pub failure: Option<String>,
}

/// A running server: its shards and how to stop them.
pub struct Running {
    threads: Vec<JoinHandle<ShardReport>>,
    wakers: Vec<Wake>,
    stop: Arc<AtomicBool>,
    listen: Vec<SocketAddr>,
    port_slices: Vec<(u16, u16)>,
    backends: Vec<&'static str>,
    failures: mpsc::Receiver<ShardFailure>,
    metrics: Vec<Arc<crate::metrics::ShardMetrics>>,
    draining: Arc<AtomicBool>,
    live: Arc<live::LiveSettings>,
    quotas: Arc<Quotas>,
    certificates: Option<Arc<tls::Certificates>>,
}

impl Running {
    /// The addresses the server listens on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    pub fn shard_count(&self) -> usize {
        self.threads.len()
    }

    /// Each shard's relay port range (inclusive), by shard index.
    pub fn port_slices(&self) -> &[(u16, u16)] {
        &self.port_slices
    }

    /// The backend each shard runs ("io-uring" or "portable").
    pub fn backends(&self) -> &[&'static str] {
        &self.backends
    }

    /// What each shard publishes for the metrics endpoint, by shard index.
    pub fn metrics(&self) -> &[Arc<crate::metrics::ShardMetrics>] {
        &self.metrics
    }

    /// Draining shards refuse new allocations (300 with an alternate server, else 403) and
    /// keep serving the ones they have; applied by each shard within one loop turn.
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
        for wake in &self.wakers {
            wake();
        }
    }

    /// A reloaded peer policy and `--max-bps` for every shard (see `turn::server::live` for
    /// what they apply to); each shard takes them within one loop turn.
    pub fn reconfigure(&self, config: &Config) {
        self.live.set(peer_policy(config), config.max_bps);
        self.quotas
            .set_limits(config.user_quota, config.total_quota);
        for wake in &self.wakers {
            wake();
        }
    }

    /// Waits up to `timeout` for a shard to fail. A failed shard has deleted its
    /// allocations where it could; the server must then be stopped (its SO_REUSEPORT member
    /// is gone, so the kernel hashes its clients to shards that do not know them).
    pub fn wait_failure(&self, timeout: Duration) -> Option<ShardFailure> {
        self.failures.recv_timeout(timeout).ok()
    }

    /// Reads the TLS certificate and key files again (for SIGHUP); new handshakes on every
    /// shard use them. On an error the certificate in use stays. Without TLS, nothing.
    pub fn reload_certificates(&self) -> Result<(), tls::TlsError> {
        match &self.certificates {
            Some(c) => c.reload(),
            None => Ok(()),
        }
    }

    /// Deletes every allocation through the core (so observers and stats hear of it),
    /// stops and joins every shard.
    pub fn stop(self) -> Vec<ShardReport> {
        self.stop.store(true, Ordering::SeqCst);
        for wake in &self.wakers {
            wake();
        }
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

/// The peer policy the configuration asks for.
pub fn peer_policy(config: &Config) -> PeerPolicy {
    let mut policy = PeerPolicy {
        allow_loopback: config.allow_loopback_peers,
        allowed: config.allowed_peer_ips.clone(),
        denied: config.denied_peer_ips.clone(),
    };
    policy.allowed.shrink_to_fit();
    policy
}

/// Starts one shard per configured core (test knobs from `UTURN_TEST_*`, see
/// [`TestKnobs::from_env`]; none in production).
pub fn start(
    config: &Config,
    observer: Arc<dyn Observer>,
    sink: Option<Arc<dyn EventSink>>,
) -> io::Result<Running> {
    start_with(config, observer, sink, TestKnobs::from_env()?)
}

/// [`start`] with explicit test knobs.
#[doc(hidden)]
pub fn start_with(
    config: &Config,
    observer: Arc<dyn Observer>,
    sink: Option<Arc<dyn EventSink>>,
    knobs: TestKnobs,
) -> io::Result<Running> {
    let streams = stream::StreamOptions::from_config(config)?;
    start_with_streams(config, streams, observer, sink, knobs)
}

/// [`start`] with the kernel fast path: each shard gets a handle on `offload`'s maps and
/// applies its core's offload commands to them (`None`: relaying stays in user space).
pub fn start_offloaded(
    config: &Config,
    observer: Arc<dyn Observer>,
    sink: Option<Arc<dyn EventSink>>,
    offload: Option<&crate::xdp::Offload>,
) -> io::Result<Running> {
    let streams = stream::StreamOptions::from_config(config)?;
    let knobs = TestKnobs::from_env()?;
    launch(config, streams, observer, sink, knobs, offload)
}

/// [`start_with`] with the TCP/TLS side's bounds given (timeouts, queue and frame sizes);
/// the configuration's stream options are not read.
#[doc(hidden)]
pub fn start_with_streams(
    config: &Config,
    streams: stream::StreamOptions,
    observer: Arc<dyn Observer>,
    sink: Option<Arc<dyn EventSink>>,
    knobs: TestKnobs,
) -> io::Result<Running> {
    launch(config, streams, observer, sink, knobs, None)
}

fn launch(
    config: &Config,
    streams: stream::StreamOptions,
    observer: Arc<dyn Observer>,
    sink: Option<Arc<dyn EventSink>>,
    knobs: TestKnobs,
    offload: Option<&crate::xdp::Offload>,
) -> io::Result<Running> {
    let cores: Vec<Option<usize>> = if config.cores.is_empty() {
        match core_affinity::get_core_ids() {
            Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| Some(c.id)).collect(),
            _ => vec![None; std::thread::available_parallelism().map_or(1, |n| n.get())],
        }
    } else {
        config.cores.iter().map(|&c| Some(c)).collect()
    };
    let listen_ips = if config.listening_ips.is_empty() {
        default_listen_ips()
    } else {
        config.listening_ips.clone()
    };
    let listen: Vec<SocketAddr> = listen_ips
        .iter()
        .map(|ip| SocketAddr::new(*ip, config.listening_port))
        .collect();
    let relay_v4 = config
        .relay_ips
        .iter()
        .copied()
        .find(IpAddr::is_ipv4)
        .or_else(|| config.relay_ips.first().copied())
        .unwrap_or_else(|| default_relay_ip(listen_ips[0]));
    let relay_v6 = config
        .relay_ips
        .iter()
        .copied()
        .find(IpAddr::is_ipv6)
        .or_else(|| {
            let listen_v6 = listen_ips.iter().copied().find(IpAddr::is_ipv6)?;
            config
                .relay_ips
                .is_empty()
                .then(|| default_relay_ip_v6(listen_v6))
                .flatten()
        });
    // SO_REUSEPORT would let this server silently share a port with another process
    // (an old uturn, a coturn): each would see half the clients. Refuse instead.
    for addr in listen.iter().filter(|_| !config.no_udp) {
        if let Err(e) = bind_udp(*addr, false, 0) {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot listen on {addr}: {e} (is another TURN server running?)"),
            ));
        }
    }
    let slices = port_slices(config.min_port, config.max_port, cores.len());
    raise_file_limit(usize::from(config.max_port - config.min_port) + 1);
    let cores = &cores[..slices.len()];
    let mut nonce_secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut nonce_secret);
    let epoch = Instant::now();
    let quotas = Arc::new(Quotas::new(config.user_quota, config.total_quota));
    let stop = Arc::new(AtomicBool::new(false));
    let exchange = Arc::new(crate::turn::ports::PortExchange::new());
    let policy = peer_policy(config);
    streams.check_free(&listen)?;
    let mut listeners = prebind::bind_all(cores.len(), &listen, !config.no_udp, &streams)?;
    let handoff = uring::HandoffHost::new(
        if config.backend == Backend::Portable {
            1
        } else {
            cores.len()
        },
        [Some(relay_v4), relay_v6],
        config.min_port..=config.max_port,
        knobs.handoff_slots.unwrap_or(uring::HANDOFF_SLOTS),
    );
    tracing::info!(
        shards = cores.len(),
        relay = %relay_v4,
        relay_v6 = ?relay_v6,
        listen = ?listen,
        "starting"
    );
    let (failures_tx, failures) = mpsc::channel();
    let mut running = Running {
        failures,
        threads: Vec::new(),
        wakers: Vec::new(),
        stop: stop.clone(),
        listen: listen.clone(),
        port_slices: slices.clone(),
        backends: Vec::new(),
        metrics: Vec::new(),
        draining: Arc::new(AtomicBool::new(false)),
        live: Arc::new(live::LiveSettings::new(policy.clone(), config.max_bps)),
        quotas: quotas.clone(),
        certificates: streams.tls.clone(),
    };
    for (index, (core_id, (lo, hi))) in cores.iter().zip(&slices).enumerate() {
        let maps = offload::shard_maps(offload, index);
        let server = ServerConfig {
            realm: config.realm.clone(),
            software: if config.no_software_attribute {
                String::new()
            } else {
                format!("uturn/{}", env!("CARGO_PKG_VERSION"))
            },
            relay_ip: relay_v4,
            relay_ip_v6: relay_v6,
            external_ips: config.external_ips.clone(),
            ports: *lo..=*hi,
            relay_range: config.min_port..=config.max_port,
            own_addresses: own_addresses(config, &listen_ips, &[Some(relay_v4), relay_v6]),
            port_exchange: exchange.clone(),
            default_lifetime: Duration::from_secs(config.default_allocate_lifetime.into()),
            max_lifetime: Duration::from_secs(config.max_allocate_lifetime.into()),
            permission_lifetime: Duration::from_secs(config.permission_lifetime.into()),
            channel_lifetime: Duration::from_secs(config.channel_lifetime.into()),
            nonce_lifetime: Duration::from_secs(config.stale_nonce.into()),
            nonce_secret,
            epoch,
            policy: policy.clone(),
            // A shard borrows ports from the others' slices when its own is empty.
            max_allocations: usize::from(config.max_port - config.min_port) + 1,
            max_permissions_per_allocation: config.max_permissions_per_allocation,
            max_channels_per_allocation: config.max_channels_per_allocation,
            max_pending_auth: 1024,
            pending_auth_timeout: Duration::from_secs(10),
            max_bps: config.max_bps,
            stats_packet_trigger: 4096,
            stats_interval: Duration::from_secs(config.stats_interval),
            id_base: 1_000_000_000_000_000 + index as u64,
            id_stride: cores.len() as u64,
            alternate_servers: config.alternate_servers.clone(),
            offload: maps.is_some(),
        };
        let spec = ShardSpec {
            index,
            core_id: *core_id,
            listen: listen.clone(),
            server,
            observer: observer.clone(),
            quotas: quotas.clone(),
            sink: sink.clone(),
            stop: stop.clone(),
            backend: config.backend,
            batch_wait_us: config.batch_wait_us,
            udp_gso: config.udp_gso,
            knobs: knobs.clone(),
            failures: failures_tx.clone(),
            metrics: Arc::new(crate::metrics::ShardMetrics::new(index)),
            draining: running.draining.clone(),
            live: running.live.clone(),
            udp: !config.no_udp,
            streams: streams.clone(),
            listeners: std::mem::take(&mut listeners[index]),
            offload: maps,
            handoff: handoff.clone(),
        };
        running.metrics.push(spec.metrics.clone());
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("uturn-shard-{index}"))
            .spawn(move || run_shard(spec, ready_tx))?;
        match ready_rx.recv() {
            Ok(Ok((wake, backend))) => {
                running.threads.push(thread);
                running.wakers.push(wake);
                running.backends.push(backend);
            }
            Ok(Err(e)) => {
                let _ = thread.join();
                running.stop();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                running.stop();
                return Err(io::Error::other("shard thread died while starting"));
            }
        }
    }
    Ok(running)
}

type Ready = mpsc::Sender<io::Result<(Wake, &'static str)>>;

fn run_shard(mut spec: ShardSpec, ready: Ready) -> ShardReport {
    prebind::install(std::mem::take(&mut spec.listeners));
    let mut maps = spec.offload.take();
    if let Some(id) = spec.core_id {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            tracing::warn!(
                shard = spec.index,
                core = id,
                "could not pin shard to its core"
            );
        }
    }
    let (auth_tx, auth_rx) = mpsc::channel();
    let mut server = Server::new(
        spec.server.clone(),
        spec.observer.clone(),
        spec.quotas.clone(),
    );
    let state_fn = |server: Server| ShardState {
        server,
        observer: spec.observer.clone(),
        sink: spec.sink.clone(),
        auth_rx,
        stop: spec.stop.clone(),
        io: IoCounters::default(),
        index: spec.index,
        summary_at: Instant::now(),
        summary_received: 0,
        fault: knobs::Trigger::new(spec.knobs.fault_for(spec.index)),
        metrics: spec.metrics.clone(),
        draining: spec.draining.clone(),
        live: spec.live.clone(),
        live_seen: 0,
        streams: stream::StreamCounters::default(),
        offload: maps
            .take()
            .map(|maps| offload::ShardOffload::new(maps, Instant::now())),
    };
    let want_uring = matches!(spec.backend, Backend::Auto | Backend::IoUring);
    if want_uring {
        let relay_sockets = spec.server.ports.clone().count();
        match uring::Shard::new(
            &spec.listen,
            spec.udp,
            &spec.streams,
            relay_sockets,
            (spec.batch_wait_us, spec.udp_gso),
            &spec.knobs,
            spec.handoff.as_ref().map(|h| (h, spec.index)),
        ) {
            Ok(shard) => {
                let wake = shard.waker();
                set_ticket_sink(&mut server, auth_tx, wake.clone());
                if spec.index == 0 {
                    tracing::info!("data path backend: io_uring ({})", shard.describe());
                }
                let _ = ready.send(Ok((wake, "io-uring")));
                let mut state = state_fn(server);
                let failure = failure::contain(shard, &mut state, uring::Shard::run);
                return report(&spec, "io-uring", &state, failure);
            }
            Err(e) if spec.backend == Backend::IoUring => {
                let _ = ready.send(Err(io::Error::new(
                    e.kind(),
                    format!("io_uring unavailable: {e}"),
                )));
                return ShardReport::default();
            }
            Err(e) => {
                if spec.index == 0 {
                    tracing::warn!("io_uring unavailable ({e}): using the portable backend");
                }
            }
        }
    }
    match portable::Shard::new(&spec.listen, spec.udp, &spec.streams) {
        Ok(shard) => {
            let wake = shard.waker();
            set_ticket_sink(&mut server, auth_tx, wake.clone());
            if spec.index == 0 {
                tracing::info!("data path backend: portable (epoll)");
            }
            let _ = ready.send(Ok((wake, "portable")));
            let mut state = state_fn(server);
            let failure = failure::contain(shard, &mut state, portable::Shard::run);
            report(&spec, "portable", &state, failure)
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            ShardReport::default()
        }
    }
}

fn set_ticket_sink(server: &mut Server, tx: mpsc::Sender<(u64, AuthDecision)>, wake: Wake) {
    let tx = std::sync::Mutex::new(tx);
    server.set_ticket_sink(Arc::new(move |ticket, decision| {
        if let Ok(tx) = tx.lock() {
            let _ = tx.send((ticket, decision));
        }
        wake();
    }));
}

/// The shard's report; a failure also goes to [`Running::wait_failure`], logged with its
/// cause.
fn report(
    spec: &ShardSpec,
    backend: &'static str,
    state: &ShardState,
    failure: Option<String>,
) -> ShardReport {
    if let Some(cause) = &failure {
        let failure = ShardFailure {
            index: spec.index,
            backend,
            cause: cause.clone(),
        };
        tracing::error!("{failure}; its allocations were deleted, the server must stop");
        let _ = spec.failures.send(failure);
    }
    ShardReport {
        index: spec.index,
        backend,
        counters: state.server.counters().clone(),
        io: state.io.clone(),
        streams: state.streams.clone(),
        failure,
    }
}
