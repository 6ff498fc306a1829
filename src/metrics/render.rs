//! `/metrics` text: coturn's names where coturn has the metric (`turn_total_allocations`,
//! `turn_total_traffic_*`), `uturn_*` for the rest. Counters end in `_total` where they
//! are uturn's own.

use super::{AllocationsByTransport, Sources};
use crate::turn::{Dropped, Refusal};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

struct Out(String);

/// Reads one per-shard counter from a snapshot.
type PerShard = fn(&super::ShardSnapshot) -> u64;

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn value(&mut self, name: &str, labels: &str, v: u64) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {v}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
        }
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: u64) {
        self.head(name, kind, help);
        self.value(name, "", v);
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// The whole exposition, rendered from the current values.
pub fn render(s: &Sources) -> String {
    let mut o = Out(String::with_capacity(8192));
    let shards: Vec<_> = s
        .shards
        .get()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|m| m.snapshot())
        .collect();

    o.head(
        "turn_total_allocations",
        "gauge",
        "Allocations alive now, by client transport.",
    );
    for (i, t) in AllocationsByTransport::TRANSPORTS.iter().enumerate() {
        let alive = load(&s.allocations.alive[i]);
        o.value(
            "turn_total_allocations",
            &format!("type=\"{}\"", t.as_str()),
            alive,
        );
    }

    let names = ["rcvp", "rcvb", "sentp", "sentb"];
    let what = [
        "packets received from clients",
        "bytes received from clients",
        "packets sent to clients",
        "bytes sent to clients",
    ];
    for (i, n) in names.iter().enumerate() {
        o.one(
            &format!("turn_total_traffic_{n}"),
            "counter",
            &format!("Relayed {} (as reported by allocations: every 4096 packets, every --stats-interval, at deletion).", what[i]),
            load(&s.traffic.client[i]),
        );
    }
    let what = [
        "packets received from peers",
        "bytes received from peers",
        "packets sent to peers",
        "bytes sent to peers",
    ];
    for (i, n) in names.iter().enumerate() {
        o.one(
            &format!("turn_total_traffic_peer_{n}"),
            "counter",
            &format!("Relayed {} (as reported by allocations).", what[i]),
            load(&s.traffic.peer[i]),
        );
    }

    o.head(
        "uturn_relayed_packets_total",
        "counter",
        "Packets relayed, live, by shard and direction.",
    );
    for sh in &shards {
        let i = sh.index;
        o.value(
            "uturn_relayed_packets_total",
            &format!("shard=\"{i}\",direction=\"to_peer\""),
            sh.relayed_to_peer,
        );
        o.value(
            "uturn_relayed_packets_total",
            &format!("shard=\"{i}\",direction=\"to_client\""),
            sh.relayed_to_client,
        );
    }
    o.head(
        "uturn_shard_allocations",
        "gauge",
        "Allocations alive now, by shard.",
    );
    for sh in &shards {
        let labels = format!("shard=\"{}\"", sh.index);
        o.value("uturn_shard_allocations", &labels, sh.allocations);
    }
    let per_shard: [(&str, &str, PerShard); 7] = [
        (
            "uturn_datagrams_received_total",
            "Datagrams received (clients and peers), by shard.",
            |s| s.received,
        ),
        (
            "uturn_datagrams_sent_total",
            "Datagrams sent (clients and peers), by shard.",
            |s| s.sent,
        ),
        (
            "uturn_send_errors_total",
            "Sends that failed or found no free send slot, by shard.",
            |s| s.send_errors,
        ),
        (
            "uturn_truncated_total",
            "Datagrams too large for a receive buffer, by shard.",
            |s| s.truncated,
        ),
        (
            "uturn_no_buffers_total",
            "Receives that found no free provided buffer (io_uring ENOBUFS), by shard.",
            |s| s.no_buffers,
        ),
        (
            "uturn_cq_overflow_total",
            "io_uring loop turns that found the completion queue overflowed (nothing lost), by shard.",
            |s| s.cq_overflowed,
        ),
        (
            "uturn_cq_lost_total",
            "io_uring completions the kernel dropped, by shard.",
            |s| s.cq_lost,
        ),
    ];
    for (name, help, get) in per_shard {
        o.head(name, "counter", help);
        for sh in &shards {
            o.value(name, &format!("shard=\"{}\"", sh.index), get(sh));
        }
    }
    for (i, (name, help)) in super::STREAM_METRICS.iter().enumerate() {
        o.head(name, if i == 0 { "gauge" } else { "counter" }, help);
        for sh in &shards {
            o.value(name, &format!("shard=\"{}\"", sh.index), sh.streams[i]);
        }
    }
    for (i, (name, help)) in super::HANDOFF_METRICS.iter().enumerate() {
        o.head(name, "counter", help);
        for sh in &shards {
            o.value(name, &format!("shard=\"{}\"", sh.index), sh.handoff[i]);
        }
    }
    for (i, (name, help)) in super::OFFLOAD_METRICS.iter().enumerate() {
        o.head(name, if i == 0 { "gauge" } else { "counter" }, help);
        for sh in &shards {
            o.value(name, &format!("shard=\"{}\"", sh.index), sh.offload[i]);
        }
    }

    o.head(
        "uturn_refused_total",
        "counter",
        "Requests answered with an error, by reason (with its STUN code).",
    );
    for (i, r) in Refusal::ALL.iter().enumerate() {
        let v: u64 = shards.iter().map(|s| s.refused[i]).sum();
        o.value(
            "uturn_refused_total",
            &format!("reason=\"{}\",code=\"{}\"", r.name(), r.code()),
            v,
        );
    }
    o.head(
        "uturn_dropped_total",
        "counter",
        "Datagrams dropped without an answer, by cause.",
    );
    for (i, d) in Dropped::ALL.iter().enumerate() {
        let v: u64 = shards.iter().map(|s| s.dropped[i]).sum();
        o.value("uturn_dropped_total", &format!("cause=\"{}\"", d.name()), v);
    }

    o.head(
        "uturn_auth_decisions_total",
        "counter",
        "Observer decisions on authenticated requests of new allocations (asynchronous ones counted when answered).",
    );
    for (label, v) in [
        ("authorized", &s.auth.authorized),
        ("not_authorized", &s.auth.not_authorized),
        ("quota_reached", &s.auth.quota_reached),
    ] {
        o.value(
            "uturn_auth_decisions_total",
            &format!("decision=\"{label}\""),
            load(v),
        );
    }
    o.one(
        "uturn_auth_deferred_total",
        "counter",
        "Authentications answered asynchronously (user database lookups).",
        load(&s.auth.deferred),
    );

    if let Some(st) = &s.stats {
        o.one(
            "uturn_stats_redis_connected",
            "gauge",
            "1 while the statistics connection to Redis is up.",
            load(&st.connected),
        );
        o.one(
            "uturn_stats_queue_depth",
            "gauge",
            "Statistics items waiting to be written to Redis.",
            load(&st.queue_depth),
        );
        o.one(
            "uturn_stats_redis_commands_total",
            "counter",
            "Redis commands written by the statistics thread.",
            load(&st.commands),
        );
        o.head(
            "uturn_stats_dropped_total",
            "counter",
            "Statistics events lost, by cause.",
        );
        o.value(
            "uturn_stats_dropped_total",
            "cause=\"channel_full\"",
            load(&st.channel_full),
        );
        o.value(
            "uturn_stats_dropped_total",
            "cause=\"queue_full\"",
            load(&st.dropped),
        );
        o.one(
            "uturn_stats_redis_reconnects_total",
            "counter",
            "Reconnections of the statistics thread to Redis.",
            load(&st.reconnects),
        );
    }
    if let Some(u) = &s.userdb {
        o.one(
            "uturn_userdb_redis_connected",
            "gauge",
            "1 while the user database connection to Redis is up.",
            load(&u.connected),
        );
        o.one(
            "uturn_userdb_queue_depth",
            "gauge",
            "User lookups waiting for the user database thread.",
            load(&u.queue_depth),
        );
        o.head(
            "uturn_userdb_lookups_total",
            "counter",
            "Users asked of Redis, by result.",
        );
        o.value(
            "uturn_userdb_lookups_total",
            "result=\"found\"",
            load(&u.found),
        );
        o.value(
            "uturn_userdb_lookups_total",
            "result=\"not_found\"",
            load(&u.not_found),
        );
        o.head(
            "uturn_userdb_cache_total",
            "counter",
            "Answers from the cache, by kind.",
        );
        o.value(
            "uturn_userdb_cache_total",
            "result=\"hit\"",
            load(&u.cache_hits),
        );
        o.value(
            "uturn_userdb_cache_total",
            "result=\"negative_hit\"",
            load(&u.negative_hits),
        );
        o.head(
            "uturn_userdb_dropped_total",
            "counter",
            "Authentications refused without asking Redis, by cause.",
        );
        o.value(
            "uturn_userdb_dropped_total",
            "cause=\"rate_limited\"",
            load(&u.limited),
        );
        o.value(
            "uturn_userdb_dropped_total",
            "cause=\"queue_full\"",
            load(&u.dropped),
        );
        o.value(
            "uturn_userdb_dropped_total",
            "cause=\"redis_down\"",
            load(&u.redis_down_refusals),
        );
    }

    o.one(
        "uturn_shards",
        "gauge",
        "Shards running.",
        shards.len() as u64,
    );
    o.one(
        "uturn_draining",
        "gauge",
        "1 while draining (new allocations refused).",
        u64::from(s.health.draining.load(Ordering::Relaxed)),
    );
    o.one(
        "uturn_ready",
        "gauge",
        "1 when listening and not draining (what /readyz answers).",
        u64::from(s.health.ready()),
    );
    o.0
}
