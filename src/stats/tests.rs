//! The stats thread's schema texts and queue bounds, without Redis.

use super::*;
use crate::turn::{FiveTuple, Transport};

fn info(realm: &str) -> AllocationInfo {
    AllocationInfo {
        id: 1_000_000_000_000_052,
        username: "alice".into(),
        realm: realm.into(),
        five_tuple: FiveTuple {
            client: "127.0.0.1:44996".parse().unwrap(),
            server: "127.0.0.1:3478".parse().unwrap(),
            transport: Transport::Udp,
        },
        relay: "127.0.0.1:50000".parse().unwrap(),
    }
}

#[test]
fn coturn_formats_byte_exact() {
    let i = info("example.org");
    assert_eq!(
        allocation_base(&i),
        "turn/realm/example.org/user/alice/allocation/001000000000000052"
    );
    assert_eq!(
        allocation_base(&info("")),
        "turn/user/alice/allocation/001000000000000052"
    );
    assert_eq!(
        status_text("new", &i, 777),
        "new lifetime=777, type=UDP, local=127.0.0.1:3478, remote=127.0.0.1:44996, ssl=NONE, cipher=NONE"
    );
    assert_eq!(
        status_text("refreshed", &i, 0),
        "refreshed lifetime=0, type=UDP, local=127.0.0.1:3478, remote=127.0.0.1:44996, ssl=NONE, cipher=NONE"
    );
    let c = Counters {
        rcvp: 411,
        rcvb: 70828,
        sentp: 411,
        sentb: 70524,
    };
    assert_eq!(
        traffic_text(&c),
        "rcvp=411, rcvb=70828, sentp=411, sentb=70524"
    );
}

#[test]
fn bounded_queue_merges_traffic_and_keeps_totals() {
    let counters = Arc::new(StatsCounters::default());
    let options = Options {
        queue_bound: 10,
        ..Options::default()
    };
    let target = crate::config::parse_statsdb("ip=127.0.0.1 port=1").unwrap();
    let mut w = Worker::new(target, options, counters.clone());
    let a = Arc::new(info("r"));
    let mut b_info = info("r");
    b_info.id += 1;
    let b = Arc::new(b_info);
    w.take(Event::AllocationCreated {
        info: a.clone(),
        lifetime: 600,
    });
    w.take(Event::AllocationCreated {
        info: b.clone(),
        lifetime: 600,
    });
    let one = Traffic {
        client: Counters {
            rcvp: 1,
            rcvb: 100,
            sentp: 1,
            sentb: 90,
        },
        peer: Counters {
            rcvp: 1,
            rcvb: 90,
            sentp: 1,
            sentb: 96,
        },
    };
    for _ in 0..50 {
        w.take(Event::Traffic {
            info: a.clone(),
            delta: one,
        });
        w.take(Event::Traffic {
            info: b.clone(),
            delta: one,
        });
    }
    w.take(Event::AllocationDeleted {
        info: a.clone(),
        reason: crate::turn::DeleteReason::Deleted,
        last: one,
        totals: Traffic::default(),
    });
    w.bound_queue();
    assert!(w.queue.len() <= 10, "{}", w.queue.len());
    let mut sum_a = Traffic::default();
    let mut deleted_after_traffic = false;
    for item in &w.queue {
        match item {
            Item::Traffic { info, delta } if info.id == a.id => {
                assert!(
                    !deleted_after_traffic,
                    "a's traffic stays before its deletion"
                );
                sum_a.add(delta);
            }
            Item::Deleted { .. } => deleted_after_traffic = true,
            _ => {}
        }
    }
    assert_eq!(sum_a.client.rcvp, 50);
    assert_eq!(sum_a.client.rcvb, 5000);
    assert_eq!(counters.merged.load(Ordering::Relaxed), 98);
    assert_eq!(
        w.queue
            .iter()
            .filter(|i| matches!(i, Item::Status { .. }))
            .count(),
        2,
        "status events are kept"
    );
}
