//! What a relay or alloc run prints: the table for people, one JSON line per step for
//! scripts (scripts/bench*.sh read these fields).

use crate::load::{Spec, Step};

pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub fn step_json(label: &str, kind: &str, spec: &Spec, s: &Step) -> String {
    format!(
        "{{\"label\":\"{label}\",\"kind\":\"{kind}\",\"allocations\":{},\"size\":{},\"mode\":\"{:?}\",\"offered_rps\":{:.1},\"round_trips_per_s\":{:.1},\"relayed_pps\":{:.1},\"sent\":{},\"received\":{},\"loss_pct\":{:.4},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"server_cpu_s\":{},\"cpu_us_per_packet\":{},\"machine_cpu_s\":{},\"machine_us_per_packet\":{},\"accounted_cpu_s\":{},\"accounted_us_per_packet\":{},\"frames\":\"{}\",\"server_rss_kib\":{},\"corrupt\":{}}}",
        spec.allocations,
        spec.size,
        spec.mode,
        s.rate,
        s.round_trips_per_s(),
        2.0 * s.round_trips_per_s(),
        s.sent,
        s.received,
        s.loss_pct(),
        s.p50_us,
        s.p99_us,
        s.p999_us,
        s.max_us,
        s.server_cpu_s.map_or("null".into(), |v| format!("{v:.3}")),
        s.cpu_us_per_packet().map_or("null".into(), |v| format!("{v:.3}")),
        s.machine_cpu_s.map_or("null".into(), |v| format!("{v:.3}")),
        s.machine_us_per_packet()
            .map_or("null".into(), |v| format!("{v:.3}")),
        s.accounted_cpu_s
            .map_or("null".into(), |v| format!("{v:.3}")),
        s.accounted_us_per_packet()
            .map_or("null".into(), |v| format!("{v:.3}")),
        spec.frames.label(),
        s.server_rss_kib.map_or("null".into(), |v| v.to_string()),
        s.corrupt
    )
}

pub fn print_table(label: &str, spec: &Spec, steps: &[Step]) {
    println!(
        "{:<14} {:>6} {:>5} {:>10} {:>10} {:>8} {:>7} {:>7} {:>8} {:>9} {:>10} {:>11} {:>11}",
        "server",
        "allocs",
        "size",
        "offered/s",
        "back/s",
        "loss%",
        "p50us",
        "p99us",
        "p99.9us",
        "cpu s",
        "cpu us/pkt",
        "machine us",
        "account. us"
    );
    for s in steps {
        println!(
            "{:<14} {:>6} {:>5} {:>10.0} {:>10.0} {:>8.3} {:>7} {:>7} {:>8} {:>9} {:>10} {:>11} {:>11}",
            if label.is_empty() { "-" } else { label },
            spec.allocations,
            spec.size,
            s.rate,
            s.round_trips_per_s(),
            s.loss_pct(),
            s.p50_us,
            s.p99_us,
            s.p999_us,
            opt(s.server_cpu_s, 2),
            opt(s.cpu_us_per_packet(), 3),
            opt(s.machine_us_per_packet(), 3),
            opt(s.accounted_us_per_packet(), 3)
        );
    }
}
