//! A minimal HTTP/1.1 responder for `/metrics`, `/healthz`, `/readyz` over a std
//! `TcpListener`, one connection at a time: bounded request size, read and write
//! timeouts, `Connection: close`. Enough for a Prometheus scraper and a kubelet probe;
//! nothing else is served (404), nothing but GET/HEAD is accepted (405).

use super::{render, Sources};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A request head larger than this is refused (431).
const MAX_REQUEST: usize = 8 * 1024;
/// A client that does not finish its request head in this time is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running endpoint; stops when dropped or with [`Endpoint::stop`].
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Endpoint {
    /// Binds at once (so a taken port is an error at start) and serves from a side thread.
    pub fn start(addr: SocketAddr, sources: Arc<Sources>) -> io::Result<Endpoint> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        // Nonblocking accept with a short poll, so a stop needs no connection to wake it.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("uturn-metrics".into())
            .spawn(move || serve(listener, &sources, &thread_stop))?;
        Ok(Endpoint {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(listener: TcpListener, sources: &Sources, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, sources) {
                    tracing::debug!("metrics request: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("metrics endpoint accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(mut stream: TcpStream, sources: &Sources) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"too large\n",
                false,
            );
        }
        if Instant::now() >= deadline {
            return Ok(());
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            false,
        );
    }
    match path {
        "/metrics" => {
            let body = render(sources);
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                body.as_bytes(),
                head_only,
            )
        }
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", b"ok\n", head_only),
        "/readyz" => {
            if sources.health.ready() {
                respond(&mut stream, "200 OK", "text/plain", b"ready\n", head_only)
            } else if sources.health.draining.load(Ordering::Relaxed) {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    b"draining\n",
                    head_only,
                )
            } else {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    b"not listening\n",
                    head_only,
                )
            }
        }
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found\n",
            head_only,
        ),
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn serves_metrics_probes_and_refuses_the_rest() {
        let sources = Arc::new(Sources::default());
        let ep = Endpoint::start("127.0.0.1:0".parse().unwrap(), sources.clone()).unwrap();
        let a = ep.local_addr();
        let r = get(a, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(r.contains("turn_total_allocations{type=\"UDP\"} 0"), "{r}");
        assert!(get(a, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        let r = get(a, b"GET /readyz HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 503") && r.ends_with("not listening\n"),
            "{r}"
        );
        sources.health.listening.store(true, Ordering::Relaxed);
        assert!(get(a, b"GET /readyz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        sources.health.draining.store(true, Ordering::Relaxed);
        assert!(get(a, b"GET /readyz HTTP/1.1\r\n\r\n").ends_with("draining\n"));
        assert!(get(a, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(a, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(get(a, huge.as_bytes()).starts_with("HTTP/1.1 431"));
        // A client that never finishes its request does not stop the endpoint for long.
        let _idle = TcpStream::connect(a).unwrap();
        let started = Instant::now();
        assert!(get(a, b"GET /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        assert!(started.elapsed() < READ_TIMEOUT + Duration::from_secs(2));
        ep.stop();
    }
}
