use super::table::{self, Effect, Initial};
use super::*;
use std::net::IpAddr;
use std::time::Duration;

fn parse(args: &[&str]) -> Result<Config, Error> {
    Config::from_args(args.iter().map(|s| s.to_string()))
}

const BASE: &[&str] = &["--realm", "example.org", "--user", "alice:secret"];

fn with(extra: &[&str]) -> Result<Config, Error> {
    let mut v: Vec<&str> = BASE.to_vec();
    v.extend_from_slice(extra);
    parse(&v)
}

#[test]
fn every_option_parses() {
    let c = with(&[
        "-L",
        "127.0.0.1",
        "--listening-ip=::1",
        "-p",
        "3479",
        "--relay-ip",
        "127.0.0.2",
        "-X",
        "203.0.113.1/10.0.0.1",
        "--min-port",
        "40000",
        "--max-port=40100",
        "-a",
        "-u",
        "bob:pa:ss",
        "--use-auth-secret",
        "--static-auth-secret",
        "s3",
        "--user-quota",
        "2",
        "--total-quota",
        "100",
        "--max-bps",
        "64000",
        "--allow-loopback-peers",
        "--denied-peer-ip",
        "10.0.0.0/8",
        "--allowed-peer-ip",
        "10.1.0.0-10.1.255.255",
        "--max-allocate-lifetime",
        "1800",
        "--default-allocate-lifetime",
        "300",
        "--permission-lifetime",
        "200",
        "--channel-lifetime",
        "500",
        "--stale-nonce=120",
        "--redis-statsdb",
        "ip=127.0.0.1 port=6380 dbname=2 password=pw connect_timeout=5",
        "--stats-interval",
        "30",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-software-attribute",
        "--cores",
        "0",
        "--backend",
        "portable",
        "--log-level",
        "debug",
        "--fingerprint",
        "--no-cli",
        "-f",
    ])
    .unwrap();
    assert_eq!(
        c.listening_ips,
        vec![
            "127.0.0.1".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert_eq!(c.listening_port, 3479);
    assert_eq!(c.relay_ips, vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        c.external_ips,
        vec![(
            "203.0.113.1".parse().unwrap(),
            Some("10.0.0.1".parse().unwrap())
        )]
    );
    assert_eq!((c.min_port, c.max_port), (40000, 40100));
    assert!(c.lt_cred_mech && c.use_auth_secret && c.allow_loopback_peers);
    assert_eq!(c.users[1], ("bob".to_owned(), "pa:ss".to_owned()));
    assert_eq!(c.static_auth_secrets, vec!["s3"]);
    assert_eq!((c.user_quota, c.total_quota, c.max_bps), (2, 100, 64000));
    assert_eq!(c.denied_peer_ips.len(), 1);
    assert_eq!(c.allowed_peer_ips.len(), 1);
    assert_eq!(
        (c.max_allocate_lifetime, c.default_allocate_lifetime),
        (1800, 300)
    );
    assert_eq!(
        (c.permission_lifetime, c.channel_lifetime, c.stale_nonce),
        (200, 500, 120)
    );
    let r = c.redis.clone().unwrap();
    assert_eq!(
        (
            r.host.as_str(),
            r.port,
            r.db,
            r.password.as_deref(),
            r.connect_timeout_secs
        ),
        ("127.0.0.1", 6380, 2, Some("pw"), 5)
    );
    assert_eq!(c.stats_interval, 30);
    assert!(c.no_tcp && c.no_tls && c.no_dtls && c.no_software_attribute);
    assert_eq!(c.cores, vec![0]);
    assert_eq!(c.backend, Backend::Portable);
    assert_eq!(c.log_level, "debug");
    let ignored: Vec<&str> = c.ignored.iter().map(|i| i.option).collect();
    assert_eq!(
        ignored,
        vec!["fingerprint", "no-cli"],
        "each ignored option once"
    );
    let warning = c.ignored_warning().unwrap();
    assert!(
        warning.contains("--fingerprint (") && warning.contains("--no-cli ("),
        "{warning}"
    );
    assert_eq!(with(&["--stale-nonce"]).unwrap().stale_nonce, 600);
}

#[test]
fn errors_name_the_option() {
    let e = with(&["--bogus"]).unwrap_err().to_string();
    assert!(e.contains("--bogus"), "{e}");
    let e = with(&["--min-port", "x"]).unwrap_err().to_string();
    assert!(e.contains("--min-port") && e.contains("'x'"), "{e}");
    let e = with(&["--listening-port"]).unwrap_err().to_string();
    assert!(
        e.contains("--listening-port") && e.contains("needs a value"),
        "{e}"
    );
    let e = with(&["--backend", "epoll"]).unwrap_err().to_string();
    assert!(e.contains("--backend"), "{e}");
    let e = with(&["--allow-loopback-peers=yes"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("takes no value"), "{e}");
    for bad in [
        &["--min-port", "5000", "--max-port", "4000"][..],
        &["--use-auth-secret"],
        &["--default-allocate-lifetime", "5000"],
        &["--cores", "0-1,1"],
        &["--cores", "9999"],
        &["--redis-statsdb", "ip=1.2.3.4 colour=blue"],
        &["--denied-peer-ip", "10.0.0.1/40"],
        &["--user", "nopassword"],
    ] {
        assert!(with(bad).is_err(), "{bad:?}");
    }
    assert!(parse(&["--user", "a:b"]).is_err(), "a realm is required");
    assert!(
        parse(&["--realm", "r"]).is_err(),
        "credentials are required"
    );
}

#[test]
fn help_and_version() {
    let Command::Help(h) = parse_args(["--help".to_string()]).unwrap() else {
        panic!()
    };
    for o in table::all() {
        assert!(h.contains(&o.synopsis()), "{} missing from help", o.name);
    }
    assert!(
        matches!(parse_args(["--version".to_string()]).unwrap(), Command::Version(v) if v.starts_with("uturn "))
    );
}

#[test]
fn config_file_and_cli_override() {
    let dir = std::env::temp_dir().join(format!("uturn-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("turnserver.conf");
    std::fs::write(
        &path,
        "# a comment\n\nlistening-port=3480\nrealm example.org\nuser=alice:secret\nuser=bob:pw\nlt-cred-mech\n--allow-loopback-peers\nmin-port = 41000\nno-cli\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let c = parse(&["-c", p]).unwrap();
    assert_eq!(c.listening_port, 3480);
    assert_eq!(c.realm, "example.org");
    assert_eq!(c.users.len(), 2);
    assert!(c.lt_cred_mech && c.allow_loopback_peers);
    assert_eq!(c.min_port, 41000);
    assert_eq!(c.config_file.as_deref(), Some(path.as_path()));
    // Command line wins; a list on the command line replaces the file's list.
    let c = parse(&["-c", p, "--listening-port", "4000", "--user", "carol:x"]).unwrap();
    assert_eq!(c.listening_port, 4000);
    assert_eq!(c.users, vec![("carol".to_owned(), "x".to_owned())]);
    std::fs::write(&path, "realm=r\nuser=a:b\nbogus-option=1\n").unwrap();
    let e = parse(&["-c", p]).unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("bogus-option"), "{e}");
    assert!(parse(&["-c", "/nonexistent/turnserver.conf"]).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn redis_strings() {
    let t = parse_redis_url("redis://:pw@10.0.0.5:6390/3").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.db, t.password.as_deref()),
        ("10.0.0.5", 6390, 3, Some("pw"))
    );
    let t = parse_redis_url("redis://localhost").unwrap();
    assert_eq!(
        (t.host.as_str(), t.port, t.db, t.password),
        ("localhost", 6379, 0, None)
    );
    assert!(parse_redis_url("http://x").is_err());
    assert!(parse_redis_url("redis://h:notaport").is_err());
    let t = parse_statsdb("host=r.example port=7000").unwrap();
    assert_eq!((t.host.as_str(), t.port), ("r.example", 7000));
    assert!(parse_statsdb("port").is_err());
}

#[test]
fn per_allocation_caps() {
    let c = with(&[]).unwrap();
    assert_eq!(
        (
            c.max_permissions_per_allocation,
            c.max_channels_per_allocation
        ),
        (32, 64)
    );
    let c = with(&[
        "--max-permissions-per-allocation",
        "5",
        "--max-channels-per-allocation=7",
    ])
    .unwrap();
    assert_eq!(
        (
            c.max_permissions_per_allocation,
            c.max_channels_per_allocation
        ),
        (5, 7)
    );
    for bad in [
        ["--max-permissions-per-allocation", "0"],
        ["--max-channels-per-allocation", "0"],
        ["--max-channels-per-allocation", "4097"],
        ["--max-permissions-per-allocation", "x"],
    ] {
        assert!(with(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cores_syntax() {
    assert_eq!(parse_cores("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
    assert!(parse_cores("3-1").is_err());
    assert!(parse_cores("a").is_err());
    assert!(parse_cores("").is_err());
}

#[test]
fn new_options_parse_with_their_defaults() {
    let c = with(&[]).unwrap();
    assert!(!c.prometheus && !c.no_udp && !c.no_tcp && !c.no_tls);
    assert_eq!(c.prometheus_port, 9641);
    assert_eq!(c.prometheus_address, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(c.redis_userdb, None);
    assert!(c.alternate_servers.is_empty() && c.xdp_interfaces.is_empty());
    assert_eq!(c.drain_timeout, Duration::ZERO);
    assert_eq!((c.drain_min_allocations, c.max_connections), (0, 0));
    assert_eq!(c.tls_listening_port, 5349);
    assert_eq!((c.cert.as_ref(), c.pkey.as_ref()), (None, None));
    assert_eq!(c.xdp_mode, XdpMode::Native);

    let c = with(&[
        "--prometheus",
        "--prometheus-port",
        "9100",
        "--prometheus-address",
        "::1",
        "-N",
        "ip=127.0.0.1 port=6390 dbname=3",
        "--alternate-server",
        "192.0.2.1",
        "--alternate-server=192.0.2.2:3479",
        "--alternate-server",
        "[2001:db8::1]:5000",
        "--alternate-server",
        "2001:db8::2",
        "--drain-timeout",
        "30",
        "--drain-min-allocations",
        "5",
        "--no-tcp",
        "--no-tls",
        "--tls-listening-port",
        "5350",
        "--cert",
        "/etc/uturn/cert.pem",
        "--pkey",
        "/etc/uturn/key.pem",
        "--max-connections",
        "1000",
        "--xdp",
        "eth0",
        "--xdp",
        "eth1",
        "--xdp-mode",
        "generic",
    ])
    .unwrap();
    assert!(c.prometheus && c.no_tcp && c.no_tls);
    assert_eq!(c.prometheus_port, 9100);
    assert_eq!(c.prometheus_address, "::1".parse::<IpAddr>().unwrap());
    let db = c.redis_userdb.unwrap();
    assert_eq!((db.port, db.db), (6390, 3));
    let alternates: Vec<String> = c.alternate_servers.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        alternates,
        [
            "192.0.2.1:3478",
            "192.0.2.2:3479",
            "[2001:db8::1]:5000",
            "[2001:db8::2]:3478"
        ]
    );
    assert_eq!(c.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.drain_min_allocations, 5);
    assert_eq!(c.tls_listening_port, 5350);
    assert_eq!(c.cert.unwrap().to_str(), Some("/etc/uturn/cert.pem"));
    assert_eq!(c.pkey.unwrap().to_str(), Some("/etc/uturn/key.pem"));
    assert_eq!(c.max_connections, 1000);
    assert_eq!(c.xdp_interfaces, ["eth0", "eth1"]);
    assert_eq!(c.xdp_mode, XdpMode::Generic);
    let c = with(&["--redis-userdb", "redis://:pw@127.0.0.1:6391/2"]).unwrap();
    assert_eq!(c.redis_userdb.unwrap().port, 6391);
    // A Redis user database is a source of credentials.
    assert!(parse(&["--realm", "r", "--redis-userdb", "ip=127.0.0.1"]).is_ok());
}

#[test]
fn new_options_are_validated() {
    for (args, says) in [
        (&["--cert", "c.pem"][..], "--cert needs --pkey"),
        (&["--pkey", "k.pem"], "--pkey needs --cert"),
        (
            &["--no-udp", "--no-tcp", "--no-tls"],
            "nothing to listen on",
        ),
        (&["--no-udp", "--no-tcp"], "nothing to listen on"),
        (&["--alternate-server", "example.org"], "--alternate-server"),
        (
            &["--alternate-server", "192.0.2.1:99999"],
            "--alternate-server",
        ),
        (&["--xdp-mode", "offload"], "--xdp-mode"),
        (&["--xdp", ""], "--xdp"),
        (
            &["--prometheus-address", "localhost"],
            "--prometheus-address",
        ),
        (
            &["--prometheus", "--prometheus-port", "0"],
            "--prometheus-port",
        ),
        (&["--drain-timeout", "-1"], "--drain-timeout"),
        (
            &["--cert", "c", "--pkey", "k", "--tls-listening-port", "3478"],
            "must differ",
        ),
        (&["--tls-listening-port", "0"], "must not be 0"),
    ] {
        let e = with(args).unwrap_err().to_string();
        assert!(e.contains(says), "{args:?}: {e}");
    }
}

#[test]
fn refused_coturn_options_say_why() {
    for (args, says) in [
        (&["--no-auth"][..], "open proxy"),
        (&["-z"], "open proxy"),
        (&["--no-udp-relay"], "forbids"),
        (&["--no-tlsv1_2"], "forbids"),
        (&["--proc-user", "turnserver"], "root"),
        (&["--CA-file", "/etc/ca.pem"], "clients"),
        (&["--secure-stun"], "check"),
        (&["--stun-only"], "TURN"),
        (&["--bps-capacity", "1000000"], "limit"),
        (&["--listening-device", "eth0"], "every interface"),
    ] {
        let e = with(args).unwrap_err().to_string();
        assert!(
            e.contains("is not supported by uturn") && e.contains(says),
            "{args:?}: {e}"
        );
    }
    // Ignored ones start, each named once in one warning.
    let c = with(&[
        "--no-tcp-relay",
        "--no-tlsv1",
        "--no-tlsv1_1",
        "--cipher-list",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "-n",
        "--cli-password",
        "x",
        "--no-tcp-relay",
    ])
    .unwrap();
    let warning = c.ignored_warning().unwrap();
    for name in [
        "--no-tcp-relay (",
        "--no-tlsv1 (",
        "--cipher-list (",
        "-n (",
    ] {
        assert_eq!(warning.matches(name).count(), 1, "{name}: {warning}");
    }
    assert_eq!(with(&[]).unwrap().ignored_warning(), None);
}

#[test]
fn file_flags_take_coturn_booleans() {
    let dir = std::env::temp_dir().join(format!("uturn-conf-bool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("turnserver.conf");
    std::fs::write(
        &path,
        "realm=r\nuser=a:b\nallow-loopback-peers=true\nno-software-attribute=0\nno-tcp=yes\n",
    )
    .unwrap();
    let c = parse(&["-c", path.to_str().unwrap()]).unwrap();
    assert!(c.allow_loopback_peers && c.no_tcp && !c.no_software_attribute);
    std::fs::write(&path, "realm=r\nuser=a:b\nno-tcp=maybe\n").unwrap();
    assert!(parse(&["-c", path.to_str().unwrap()]).is_err());
    std::fs::write(&path, "realm=r\nuser=a:b\nproc-user=turnserver\n").unwrap();
    let e = parse(&["-c", path.to_str().unwrap()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3") && e.contains("--proc-user"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The table is consistent: names and short forms unique; every documented default is what
/// `Config::default()` holds; every flag's effect changes the configuration.
#[test]
fn table_is_consistent_with_the_code() {
    let rows: Vec<_> = table::all().collect();
    for (i, a) in rows.iter().enumerate() {
        for b in &rows[i + 1..] {
            assert_ne!(a.name, b.name, "option listed twice");
            assert!(
                a.short.is_none() || a.short != b.short,
                "-{:?} twice",
                a.short
            );
        }
    }
    let base = with(&[]).unwrap();
    let render = |c: &Config| format!("{c:?}");
    for o in table::UTURN {
        let Effect::Set(apply) = o.effect else {
            continue;
        };
        let item = |value: Option<&str>| parse::Item {
            opt: o,
            value: value.map(str::to_owned),
            origin: "test".into(),
        };
        let mut c = base.clone();
        match o.initial {
            Initial::Value(v) => {
                apply(&mut c, &item(Some(v))).unwrap_or_else(|e| panic!("{}: {e}", o.name));
                assert_eq!(render(&c), render(&base), "--{} default {v}", o.name);
            }
            Initial::Off => {
                apply(&mut c, &item(None)).unwrap();
                assert_ne!(render(&c), render(&base), "--{} changes nothing", o.name);
            }
            Initial::Note(_) => {}
        }
    }
}

/// README.md's option tables are the table's rendering, so they cannot disagree.
#[test]
fn readme_matches_the_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let want = table::readme_tables();
    let begin = "<!-- options:begin (generated from src/config/table.rs; a test compares) -->\n";
    let end = "<!-- options:end -->";
    let got = readme
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(t, _)| t);
    assert_eq!(
        got,
        Some(want.as_str()),
        "README.md's option tables differ from the option table; put this between the markers:\n{begin}{want}{end}"
    );
}

/// Every option the installed coturn knows (its `--help` and packaged turnserver.conf) is a
/// row: implemented, ignored or refused; none is unknown.
#[test]
fn every_coturn_option_is_classified() {
    let out = std::process::Command::new("turnserver")
        .arg("--help")
        .output()
        .expect("turnserver not found: install Debian's coturn package (scripts/test.sh does)");
    let help =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let conf = std::fs::read_to_string("/etc/turnserver.conf")
        .expect("/etc/turnserver.conf (Debian's coturn package)");
    let mut names: Vec<String> = Vec::new();
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    for word in help.split_whitespace() {
        if let Some(n) = word.strip_prefix("--") {
            names.push(n.chars().take_while(|c| name_char(*c)).collect());
        }
    }
    for line in conf.lines() {
        let line = line.trim_start_matches('#');
        let name = line.split('=').next().unwrap_or("");
        if !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    names.dedup();
    assert!(names.len() > 100, "too few coturn options found: {names:?}");
    // `no_dtls` is a misspelling in coturn's help text (its parser knows `no-dtls`).
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| *n != "no_dtls" && table::by_name(n).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "coturn options not in the table: {missing:?}"
    );
}
