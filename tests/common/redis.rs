//! A `redis-server` of the tests' own and a subscriber collecting what uturn publishes.

use super::wait::{wait_until, within};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A `redis-server` of the tests' own on a free loopback port, nothing persisted.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer { child: None, port };
        r.restart();
        r
    }

    /// (Re)starts the server on the same port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Its own directory: `turnadmin` makes Redis SAVE, and a dump.rdb in a shared
        // directory would be loaded by every later redis-server started there.
        let dir = self.dir();
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install Debian's redis-server (scripts/test.sh does)");
        self.child = Some(child);
        assert!(
            wait_until(within(Duration::from_secs(10)), || self
                .connection()
                .is_some()),
            "redis-server did not come up on port {}",
            self.port
        );
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("uturn-redis-{}", self.port))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn connection(&self) -> Option<::redis::Connection> {
        ::redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

/// Collects every message published on `pattern`, resubscribing when Redis comes back.
pub struct Subscriber {
    pub messages: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    subscribed: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Subscriber {
    pub fn start(url: String, pattern: &str) -> Subscriber {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::{Arc, Mutex};
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let subscribed = Arc::new(AtomicU64::new(0));
        let (m, s, sub, pattern) = (
            messages.clone(),
            stop.clone(),
            subscribed.clone(),
            pattern.to_owned(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok(mut conn) = ::redis::Client::open(url.as_str())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(300)))
                else {
                    // Reconnect pacing while Redis is down, not a wait for an event.
                    std::thread::sleep(Duration::from_millis(30));
                    continue;
                };
                let mut pubsub = conn.as_pubsub();
                if pubsub.psubscribe(&pattern).is_err() {
                    continue;
                }
                let _ = pubsub.set_read_timeout(Some(Duration::from_millis(100)));
                sub.fetch_add(1, Ordering::SeqCst);
                while !s.load(Ordering::Relaxed) {
                    match pubsub.get_message() {
                        Ok(msg) => {
                            let payload: String = msg.get_payload().unwrap_or_default();
                            m.lock()
                                .unwrap()
                                .push((msg.get_channel_name().to_owned(), payload));
                        }
                        Err(e) if e.is_timeout() => {}
                        Err(_) => break,
                    }
                }
            }
        });
        let me = Subscriber {
            messages,
            stop,
            thread: Some(thread),
            subscribed,
        };
        me.wait_subscribed(1);
        me
    }

    /// Waits until the subscriber has (re)subscribed `n` times in all.
    pub fn wait_subscribed(&self, n: u64) {
        assert!(
            wait_until(within(Duration::from_secs(10)), || self
                .subscribed
                .load(Ordering::SeqCst)
                >= n),
            "could not subscribe"
        );
    }

    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until `pred` holds on the messages so far.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        if wait_until(within(limit), || pred(&self.messages.lock().unwrap())) {
            return self.snapshot();
        }
        let snap = self.snapshot();
        panic!(
            "timed out waiting for {what}; messages:\n{}",
            snap.iter()
                .map(|(c, p)| format!("{c} {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
