//! A real browser through uturn: headless Chromium (Debian's package) driven by
//! tests/browser/relay.mjs (Node, `playwright-core` from npm, no browser download) opens a
//! WebRTC data channel between two RTCPeerConnections that may only use relay candidates,
//! over `turn:…?transport=tcp` and over `turns:` (the test's self-signed certificate, trusted
//! with `--ignore-certificate-errors`), and checks that the selected pair is relay/relay.
//!
//! scripts/test.sh installs chromium, nodejs and the npm package; a missing piece fails the
//! test saying which, it is never skipped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;
mod stream_support;
use common::*;
use stream_support::tls_args;

const CHROMIUM: &str = "/usr/bin/chromium";

fn harness_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser"))
}

/// Fails with a message naming what to install when the browser or Node side is missing.
fn check_harness() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: install Debian's chromium package (scripts/test.sh does)"
    );
    assert!(
        Command::new("node").arg("--version").output().is_ok(),
        "node not found: install Debian's nodejs package (scripts/test.sh does)"
    );
    assert!(
        harness_dir().join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test.sh does)"
    );
}

/// Runs the page against `url`; returns the harness's JSON line.
fn relay_through(url: &str) -> String {
    let (code, out) = run_bounded(
        Command::new("node")
            .current_dir(harness_dir())
            .args([
                "relay.mjs",
                "--url",
                url,
                "--user",
                "alice",
                "--pass",
                "secret",
            ])
            .args([
                "--chromium",
                CHROMIUM,
                "--messages",
                "20",
                "--timeout-ms",
                "40000",
            ]),
        Duration::from_secs(90),
    );
    assert_eq!(
        code,
        Some(0),
        "the browser could not relay through {url}:\n{out}"
    );
    out
}

fn browser(backend: &str) {
    check_harness();
    let (tls, tls_port) = tls_args(&format!("browser-{backend}"));
    let mut extra = vec!["--allow-loopback-peers".to_string()];
    extra.extend(tls);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut server = Uturn::start(backend, &extra);
    for (url, protocol) in [
        (
            format!("turn:127.0.0.1:{}?transport=tcp", server.port),
            "tcp",
        ),
        (format!("turns:127.0.0.1:{tls_port}?transport=tcp"), "tls"),
    ] {
        let out = relay_through(&url);
        let want = format!(
            "RESULT echoed=20 intact=true pairA=relay/relay/{protocol} pairB=relay/relay/{protocol}"
        );
        assert!(
            out.lines().any(|l| l == want),
            "expected `{want}` from the harness:\n{out}"
        );
    }
    assert!(server.alive());
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn chromium_relays_a_data_channel_over_tcp_and_tls_portable() {
    browser("portable");
}

#[test]
fn chromium_relays_a_data_channel_over_tcp_and_tls_io_uring() {
    browser("auto");
}
