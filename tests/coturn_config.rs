//! A coturn configuration file, as operators have one: Debian's packaged
//! /etc/turnserver.conf with typical production lines uncommented, given to the real
//! binary. uturn starts, names every coturn option it ignores in one warning, and relays
//! for coturn's own client; an option it cannot honour safely stops it with the reason.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Uncomments the first `#name…` line of `conf` as `name=value` (or `name` for a flag);
/// panics if the packaged file has no such line, so the test follows the package.
fn uncomment(conf: &mut String, name: &str, value: Option<&str>) {
    let at = conf
        .lines()
        .position(|l| {
            l.strip_prefix('#')
                .and_then(|rest| rest.strip_prefix(name))
                .is_some_and(|tail| tail.is_empty() || tail.starts_with('='))
        })
        .unwrap_or_else(|| panic!("/etc/turnserver.conf has no '#{name}' line"));
    let line = match value {
        Some(v) => format!("{name}={v}"),
        None => name.to_owned(),
    };
    let mut lines: Vec<String> = conf.lines().map(str::to_owned).collect();
    lines[at] = line;
    *conf = lines.join("\n") + "\n";
}

/// Options coturn has and uturn ignores, as uncommented below.
const IGNORED: &[&str] = &[
    "verbose",
    "fingerprint",
    "no-tcp-relay",
    "cipher-list",
    "log-file",
    "simple-log",
    "no-stdout-log",
    "no-multicast-peers",
    "pidfile",
    "no-cli",
    "no-tlsv1",
    "no-tlsv1_1",
];

fn production_conf(port: u16, min: u16, max: u16) -> String {
    let mut conf = std::fs::read_to_string("/etc/turnserver.conf")
        .expect("/etc/turnserver.conf: install Debian's coturn package (scripts/test.sh does)");
    let (port, min, max) = (port.to_string(), min.to_string(), max.to_string());
    for (name, value) in [
        ("listening-port", Some(port.as_str())),
        ("listening-ip", Some("127.0.0.1")),
        ("relay-ip", Some("127.0.0.1")),
        ("min-port", Some(min.as_str())),
        ("max-port", Some(max.as_str())),
        ("verbose", None),
        ("fingerprint", None),
        ("lt-cred-mech", None),
        ("user", Some("alice:secret")),
        ("realm", Some("example.org")),
        ("user-quota", Some("12")),
        ("total-quota", Some("1200")),
        ("no-tcp", None),
        ("no-tls", None),
        ("no-dtls", None),
        ("no-tcp-relay", None),
        ("stale-nonce", Some("600")),
        (
            "cipher-list",
            Some("\"ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256\""),
        ),
        ("no-stdout-log", None),
        ("log-file", Some("/var/tmp/turn.log")),
        ("simple-log", None),
        // The test's peer is on loopback.
        ("allow-loopback-peers", None),
        ("no-multicast-peers", None),
        ("pidfile", Some("\"/var/run/turnserver.pid\"")),
        ("no-cli", None),
        ("no-tlsv1", None),
        ("no-tlsv1_1", None),
    ] {
        uncomment(&mut conf, name, value);
    }
    conf
}

fn conf_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "uturn-coturn-conf-{tag}-{}.conf",
        std::process::id()
    ))
}

#[test]
fn a_production_coturn_config_starts_warns_and_relays() {
    let path = conf_path("ok");
    let mut started = None;
    for _attempt in 0..5 {
        let (port, min, max) = next_ports();
        std::fs::write(&path, production_conf(port, min, max)).unwrap();
        let log = std::env::temp_dir().join(format!(
            "uturn-coturn-conf-{}-{port}.log",
            std::process::id()
        ));
        let args = ["-c".to_owned(), path.to_str().unwrap().to_owned()];
        let mut server = Uturn::launch(&args, port, log);
        if server.wait_ready(Duration::from_secs(10)) {
            started = Some(server);
            break;
        }
        let text = server.log_text();
        assert!(text.contains("in use"), "uturn did not start:\n{text}");
    }
    let mut server = started.expect("free ports for uturn");
    let log = server.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ignoring coturn options uturn does not implement"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning:\n{log}");
    for name in IGNORED {
        assert_eq!(
            warnings[0].matches(&format!("--{name} (")).count(),
            1,
            "--{name} named once: {}",
            warnings[0]
        );
    }
    let peer = Peer::start();
    let (code, out) = uclient(
        server.port,
        peer.port,
        &["-m", "2", "-n", "50", "-l", "120"],
        Duration::from_secs(60),
    );
    let relayed = code == Some(0)
        && number_after(&out, "tot_recv_msgs=") == Some(100)
        && number_after(&out, "Total lost packets") == Some(0);
    let code = server.stop();
    assert!(
        relayed,
        "uclient:\n{out}\nserver log:\n{}",
        server.log_text()
    );
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_option_that_cannot_be_ignored_safely_stops_uturn_with_the_reason() {
    for (name, value, why) in [
        ("proc-user", Some("turnserver"), "root"),
        ("no-auth", None, "open proxy"),
        ("no-tlsv1_2", None, "forbids"),
    ] {
        let path = conf_path(name);
        let (port, min, max) = next_ports();
        let mut conf = production_conf(port, min, max);
        uncomment(&mut conf, name, value);
        std::fs::write(&path, conf).unwrap();
        let (code, out) = run_bounded(
            Command::new(env!("CARGO_BIN_EXE_uturn")).args(["-c", path.to_str().unwrap()]),
            Duration::from_secs(10),
        );
        assert_eq!(code, Some(2), "{name}: {out}");
        assert!(
            out.contains(&format!("--{name}"))
                && out.contains("not supported")
                && out.contains(why),
            "{name}: {out}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
