//! The stats side thread: takes [`crate::turn::Event`]s from the shards over a bounded
//! channel and publishes them to Redis in coturn's schema, in pipelined batches.
//!
//! Owns: the Redis connection, batching, reconnect, the event queue while Redis is down,
//! the list of live allocations (to SET their status again after a reconnect).
//! Must not: ever block a shard (shards use `try_send` and count what does not fit).
//!
//! Schema (coturn 4.6.1), for `<base>` = `turn/realm/<realm>/user/<user>/allocation/<id>`
//! (`turn/user/<user>/allocation/<id>` with an empty realm, `<id>` as `%018u`):
//! - `<base>/status`: `new lifetime=L, type=UDP, local=A, remote=B, ssl=NONE, cipher=NONE`,
//!   `refreshed lifetime=L, …`, `deleted`; PUBLISHed, and SET as a key — with `EX` = the
//!   remaining lifetime, so a crashed server's keys expire (coturn sets no expiry);
//! - `<base>/traffic` and `<base>/traffic/peer`: `rcvp=…, rcvb=…, sentp=…, sentb=…` deltas;
//! - at deletion: last `traffic` and `traffic/peer`, DEL of the status key, `status`
//!   `deleted`, then `total_traffic` and `total_traffic/peer` with whole-life totals.

mod connect;

use crate::config::RedisTarget;
use crate::turn::{AllocationInfo, Counters, Event, Traffic};
pub use connect::connect;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where shards hand their events. Implementations must never block the calling shard:
/// queue with a bound and count what does not fit.
pub trait EventSink: Send + Sync {
    fn send(&self, event: Event);
}

/// Tunables of the stats thread.
#[derive(Clone, Debug)]
pub struct Options {
    /// Capacity of the channel from the shards.
    pub channel_capacity: usize,
    /// Items queued while Redis is away before traffic deltas get merged.
    pub queue_bound: usize,
    /// Longest a batch waits before it is written.
    pub flush_interval: Duration,
    /// PING this often when idle, so neither side drops the connection.
    pub keepalive: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            channel_capacity: 1 << 16,
            queue_bound: 100_000,
            flush_interval: Duration::from_millis(20),
            keepalive: Duration::from_secs(10),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// What the stats thread did, readable from any thread.
#[derive(Debug, Default)]
pub struct StatsCounters {
    /// Redis commands written successfully.
    pub commands: AtomicU64,
    /// Pipelined round trips.
    pub batches: AtomicU64,
    /// Events the shards could not hand over (channel full): lost.
    pub channel_full: AtomicU64,
    /// Traffic deltas merged into older ones while Redis was away (nothing lost).
    pub merged: AtomicU64,
    /// Status updates dropped because even after merging the queue was full.
    pub dropped: AtomicU64,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Failed connection attempts.
    pub connect_failures: AtomicU64,
    /// 1 while a connection to Redis is up (metrics).
    pub connected: AtomicU64,
    /// Items waiting to be written to Redis (metrics).
    pub queue_depth: AtomicU64,
}

enum Msg {
    Event(Event),
    Stop,
}

/// The sending half the shards hold.
struct Sink {
    tx: SyncSender<Msg>,
    counters: Arc<StatsCounters>,
}

impl EventSink for Sink {
    fn send(&self, event: Event) {
        match self.tx.try_send(Msg::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.channel_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The running stats thread.
pub struct Publisher {
    tx: SyncSender<Msg>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<StatsCounters>,
}

impl Publisher {
    /// Starts the thread; it connects in the background and keeps trying.
    pub fn start(target: RedisTarget, options: Options) -> Publisher {
        let (tx, rx) = mpsc::sync_channel(options.channel_capacity);
        let counters = Arc::new(StatsCounters::default());
        let thread_counters = counters.clone();
        let thread = std::thread::Builder::new()
            .name("uturn-stats".into())
            .spawn(move || Worker::new(target, options, thread_counters).run(rx))
            .expect("spawn the stats thread");
        Publisher {
            tx,
            thread: Some(thread),
            counters,
        }
    }

    pub fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(Sink {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        })
    }

    pub fn counters(&self) -> &StatsCounters {
        &self.counters
    }

    /// The counters, to be read from another thread (metrics).
    pub fn shared_counters(&self) -> Arc<StatsCounters> {
        self.counters.clone()
    }

    /// Publishes what is queued (trying for up to `timeout` if Redis is away), then ends
    /// the thread.
    pub fn stop(mut self, timeout: Duration) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + timeout + Duration::from_secs(1);
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("stats thread did not finish in time; statistics may be lost");
            }
        }
        let c = &self.counters;
        tracing::info!(
            commands = c.commands.load(Ordering::Relaxed),
            batches = c.batches.load(Ordering::Relaxed),
            channel_full = c.channel_full.load(Ordering::Relaxed),
            merged = c.merged.load(Ordering::Relaxed),
            dropped = c.dropped.load(Ordering::Relaxed),
            "stats thread stopped"
        );
    }
}

/// The Redis key/channel prefix of an allocation.
pub fn allocation_base(info: &AllocationInfo) -> String {
    if info.realm.is_empty() {
        format!("turn/user/{}/allocation/{:018}", info.username, info.id)
    } else {
        format!(
            "turn/realm/{}/user/{}/allocation/{:018}",
            info.realm, info.username, info.id
        )
    }
}

/// `new lifetime=…` / `refreshed lifetime=…` status text.
pub fn status_text(word: &str, info: &AllocationInfo, lifetime: u32) -> String {
    format!(
        "{word} lifetime={lifetime}, type={}, local={}, remote={}, ssl=NONE, cipher=NONE",
        info.five_tuple.transport.as_str(),
        info.five_tuple.server,
        info.five_tuple.client
    )
}

/// `rcvp=…, rcvb=…, sentp=…, sentb=…`.
pub fn traffic_text(c: &Counters) -> String {
    format!(
        "rcvp={}, rcvb={}, sentp={}, sentb={}",
        c.rcvp, c.rcvb, c.sentp, c.sentb
    )
}

/// One queued Redis action.
#[derive(Debug)]
enum Item {
    Status {
        info: Arc<AllocationInfo>,
        word: &'static str,
        lifetime: u32,
    },
    Traffic {
        info: Arc<AllocationInfo>,
        delta: Traffic,
    },
    Deleted {
        info: Arc<AllocationInfo>,
        last: Traffic,
        totals: Traffic,
    },
}

struct Live {
    info: Arc<AllocationInfo>,
    word: &'static str,
    lifetime: u32,
    expires: Instant,
}

struct Worker {
    target: RedisTarget,
    options: Options,
    counters: Arc<StatsCounters>,
    conn: Option<redis::Connection>,
    ever_connected: bool,
    /// Set after a reconnect: SET the status of every live allocation again.
    resync: bool,
    next_attempt: Instant,
    backoff: Duration,
    queue: VecDeque<Item>,
    live: HashMap<u64, Live>,
    last_io: Instant,
}

impl Worker {
    fn new(target: RedisTarget, options: Options, counters: Arc<StatsCounters>) -> Worker {
        Worker {
            backoff: options.backoff_min,
            target,
            options,
            counters,
            conn: None,
            ever_connected: false,
            resync: false,
            next_attempt: Instant::now(),
            queue: VecDeque::new(),
            live: HashMap::new(),
            last_io: Instant::now(),
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        let mut stopping = false;
        let mut stop_deadline = None;
        loop {
            match rx.recv_timeout(self.options.flush_interval) {
                Ok(Msg::Event(e)) => self.take(e),
                Ok(Msg::Stop) => stopping = true,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => stopping = true,
            }
            // Everything that is already there goes into this batch.
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    Msg::Event(e) => self.take(e),
                    Msg::Stop => stopping = true,
                }
            }
            self.bound_queue();
            if stopping && stop_deadline.is_none() {
                let secs = self.target.connect_timeout_secs.clamp(1, 5);
                stop_deadline = Some(Instant::now() + Duration::from_secs(secs));
                // One immediate attempt, whatever the backoff says.
                self.next_attempt = Instant::now();
            }
            self.ensure_connected();
            if self.conn.is_some() {
                self.flush();
            }
            self.counters
                .connected
                .store(u64::from(self.conn.is_some()), Ordering::Relaxed);
            self.counters
                .queue_depth
                .store(self.queue.len() as u64, Ordering::Relaxed);
            if let Some(deadline) = stop_deadline {
                if self.queue.is_empty() && !self.resync || Instant::now() >= deadline {
                    if !self.queue.is_empty() {
                        tracing::warn!(
                            items = self.queue.len(),
                            "Redis unreachable at shutdown: statistics lost"
                        );
                    }
                    return;
                }
            }
        }
    }

    fn take(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::AllocationCreated { info, lifetime } => {
                self.live.insert(
                    info.id,
                    Live {
                        info: info.clone(),
                        word: "new",
                        lifetime,
                        expires: now + Duration::from_secs(lifetime.into()),
                    },
                );
                self.queue.push_back(Item::Status {
                    info,
                    word: "new",
                    lifetime,
                });
            }
            Event::AllocationRefreshed { info, lifetime } => {
                if let Some(live) = self.live.get_mut(&info.id) {
                    live.word = "refreshed";
                    live.lifetime = lifetime;
                    live.expires = now + Duration::from_secs(lifetime.into());
                }
                self.queue.push_back(Item::Status {
                    info,
                    word: "refreshed",
                    lifetime,
                });
            }
            Event::Traffic { info, delta } => self.queue.push_back(Item::Traffic { info, delta }),
            Event::AllocationDeleted {
                info, last, totals, ..
            } => {
                self.live.remove(&info.id);
                self.queue.push_back(Item::Deleted { info, last, totals });
            }
        }
    }

    /// Keeps the queue within its bound while Redis is away: merge traffic deltas per
    /// allocation (the merged delta takes the place of the newest one, so it still comes
    /// before that allocation's deletion); if status items alone exceed the bound, drop the
    /// oldest `refreshed` ones (the re-SET after reconnect restores current status).
    fn bound_queue(&mut self) {
        if self.queue.len() <= self.options.queue_bound {
            return;
        }
        let mut merged: HashMap<u64, Traffic> = HashMap::new();
        let mut newest: HashMap<u64, usize> = HashMap::new();
        for (i, item) in self.queue.iter().enumerate() {
            if let Item::Traffic { info, delta } = item {
                merged.entry(info.id).or_default().add(delta);
                newest.insert(info.id, i);
            }
        }
        let before = self.queue.len();
        let mut kept = VecDeque::with_capacity(before);
        for (i, item) in std::mem::take(&mut self.queue).into_iter().enumerate() {
            match item {
                Item::Traffic { info, .. } => {
                    if newest.get(&info.id) == Some(&i) {
                        let delta = merged.remove(&info.id).unwrap_or_default();
                        kept.push_back(Item::Traffic { info, delta });
                    }
                }
                other => kept.push_back(other),
            }
        }
        self.counters
            .merged
            .fetch_add((before - kept.len()) as u64, Ordering::Relaxed);
        self.queue = kept;
        let hard = self.options.queue_bound.saturating_mul(2);
        while self.queue.len() > hard {
            let Some(pos) = self.queue.iter().position(
                |i| matches!(i, Item::Status { word: "refreshed", lifetime, .. } if *lifetime > 0),
            ) else {
                break;
            };
            self.queue.remove(pos);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ensure_connected(&mut self) {
        if self.conn.is_some() || Instant::now() < self.next_attempt {
            return;
        }
        match connect::connect(&self.target) {
            Ok(conn) => {
                if self.ever_connected {
                    self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(host = %self.target.host, port = self.target.port, "Redis reconnected");
                } else {
                    tracing::info!(host = %self.target.host, port = self.target.port, "Redis connected");
                }
                self.resync = self.ever_connected;
                self.ever_connected = true;
                self.conn = Some(conn);
                self.backoff = self.options.backoff_min;
                self.last_io = Instant::now();
            }
            Err(e) => {
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    host = %self.target.host,
                    port = self.target.port,
                    retry_in = ?self.backoff,
                    queued = self.queue.len(),
                    "Redis unavailable: {e}"
                );
                self.next_attempt = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(self.options.backoff_max);
            }
        }
    }

    /// Writes the resync and everything queued in one pipelined round trip; on failure the
    /// items stay queued (delivery is at least once) and the connection is dropped.
    fn flush(&mut self) {
        let now = Instant::now();
        let mut pipe = redis::pipe();
        let mut commands = 0u64;
        if self.resync {
            for live in self.live.values() {
                let left = live.expires.saturating_duration_since(now).as_secs();
                if left > 0 {
                    let text = status_text(live.word, &live.info, live.lifetime);
                    let key = format!("{}/status", allocation_base(&live.info));
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(text)
                        .arg("EX")
                        .arg(left)
                        .ignore();
                    commands += 1;
                }
            }
        }
        for item in &self.queue {
            commands += add_item(&mut pipe, item);
        }
        if commands == 0 {
            if now.duration_since(self.last_io) >= self.options.keepalive {
                pipe.cmd("PING").ignore();
                commands = 1;
            } else {
                return;
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        match pipe.query::<()>(conn) {
            Ok(()) => {
                self.queue.clear();
                self.resync = false;
                self.last_io = now;
                self.counters
                    .commands
                    .fetch_add(commands, Ordering::Relaxed);
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(queued = self.queue.len(), "Redis write failed: {e}");
                self.conn = None;
                self.resync = true;
                self.next_attempt = Instant::now();
            }
        }
    }
}

/// Adds the commands of one item; returns how many.
fn add_item(pipe: &mut redis::Pipeline, item: &Item) -> u64 {
    match item {
        Item::Status {
            info,
            word,
            lifetime,
        } => {
            let base = allocation_base(info);
            let text = status_text(word, info, *lifetime);
            let key = format!("{base}/status");
            if *lifetime > 0 {
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(&text)
                    .arg("EX")
                    .arg(*lifetime)
                    .ignore();
                pipe.cmd("PUBLISH").arg(&key).arg(&text).ignore();
                2
            } else {
                pipe.cmd("PUBLISH").arg(&key).arg(&text).ignore();
                1
            }
        }
        Item::Traffic { info, delta } => {
            let base = allocation_base(info);
            add_traffic(pipe, &base, "traffic", delta)
        }
        Item::Deleted { info, last, totals } => {
            let base = allocation_base(info);
            let mut n = 0;
            if !last.is_zero() {
                n += add_traffic(pipe, &base, "traffic", last);
            }
            let key = format!("{base}/status");
            pipe.cmd("DEL").arg(&key).ignore();
            pipe.cmd("PUBLISH").arg(&key).arg("deleted").ignore();
            n + 2 + add_traffic(pipe, &base, "total_traffic", totals)
        }
    }
}

fn add_traffic(pipe: &mut redis::Pipeline, base: &str, name: &str, t: &Traffic) -> u64 {
    pipe.cmd("PUBLISH")
        .arg(format!("{base}/{name}"))
        .arg(traffic_text(&t.client))
        .ignore();
    pipe.cmd("PUBLISH")
        .arg(format!("{base}/{name}/peer"))
        .arg(traffic_text(&t.peer))
        .ignore();
    2
}

#[cfg(test)]
mod tests;
