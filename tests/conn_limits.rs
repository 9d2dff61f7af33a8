//! Slow and idle clients (issue 29, item 3): header, idle and body timeouts, the connection cap
//! and accept-error backoff, over real TCP on 127.0.0.1 against `kiln::server::serve` with
//! short limits. Each test runs on one thread so its log lines can be captured.

mod server_common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln::engine::{EngineConfig, EngineHandle};
use kiln::server::{ConnLimits, ServerConfig, accept_with_backoff, build_app, serve};
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use server_common::{fake, slow};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MS: Duration = Duration::from_millis(1);

/// Log lines written while the returned guard lives (this thread only).
fn capture_logs() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || Writer(sink.clone()))
        .finish();
    (buf, tracing::subscriber::set_default(sub))
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn logs(buf: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

fn limits(ms: u64) -> ConnLimits {
    ConnLimits {
        max_connections: 64,
        header_timeout: Duration::from_millis(ms),
        idle_timeout: Duration::from_millis(ms),
        body_timeout: Duration::from_millis(ms),
    }
}

/// Starts `serve` on a free port with a fast fake model and a slow one (50 ms a step).
async fn start(limits: ConnLimits) -> (u16, EngineHandle) {
    let engine = EngineHandle::start(
        vec![fake("fake"), slow("slow", 50)],
        EngineConfig::default(),
    )
    .expect("engine");
    let config = ServerConfig {
        connections: limits.clone(),
        ..ServerConfig::default()
    };
    let app = build_app(config, engine.clone()).expect("app");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    tokio::spawn(async move {
        let addr = format!("127.0.0.1:{port}");
        serve(app, &addr, std::future::pending(), Duration::ZERO, &limits).await
    });
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "server did not start"
        );
        tokio::time::sleep(20 * MS).await;
    }
    (port, engine)
}

async fn connect(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect")
}

/// Reads until the server closes the connection (true) or `within` passes (false).
async fn closed_within(sock: &mut TcpStream, within: Duration) -> (bool, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (true, String::from_utf8_lossy(&got).into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (false, String::from_utf8_lossy(&got).into()),
        }
    }
}

/// Reads one response with a `Content-Length` body.
async fn response(sock: &mut TcpStream, within: Duration) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0usize);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            other => panic!("no full response ({other:?}); got: {text}"),
        }
    }
}

#[tokio::test]
async fn half_sent_and_missing_headers_are_cut_off() {
    let (port, _engine) = start(limits(400)).await;
    // Nothing at all.
    let mut silent = connect(port).await;
    // A header trickled a byte at a time (each byte would reset an inactivity timer).
    let mut drip = connect(port).await;
    drip.write_all(b"GET /v1/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let t0 = Instant::now();
    let mut cut = false;
    for _ in 0..40 {
        tokio::time::sleep(50 * MS).await;
        if drip.write_all(b"X").await.is_err() {
            cut = true;
            break;
        }
    }
    let (closed, _) = closed_within(&mut drip, 500 * MS).await;
    assert!(
        cut || closed,
        "a trickled header is still held after {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let (closed, _) = closed_within(&mut silent, 500 * MS).await;
    assert!(closed, "a silent connection is still open");
}

#[tokio::test]
async fn idle_connections_close_but_slow_requests_do_not() {
    let (port, _engine) = start(limits(400)).await;
    let mut sock = connect(port).await;
    // A job of 20 steps × 50 ms outlasts every timeout: the request is busy, not idle.
    let body = r#"{"model": "slow", "prompt": "x", "size": "64x64", "num_inference_steps": 20}"#;
    let req = format!(
        "POST /v1/images/generations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(req.as_bytes()).await.expect("send");
    let reply = response(&mut sock, Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // Kept alive: a second request within the idle timeout works...
    sock.write_all(b"GET /v1/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send");
    let reply = response(&mut sock, Duration::from_secs(2)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // ...and then the idle connection is closed.
    let t0 = Instant::now();
    let (closed, _) = closed_within(&mut sock, Duration::from_secs(2)).await;
    assert!(closed, "an idle keep-alive connection is still open");
    assert!(
        t0.elapsed() >= 300 * MS,
        "closed too early: {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_the_connection_closes() {
    let (port, engine) = start(limits(400)).await;
    let mut sock = connect(port).await;
    sock.write_all(
        b"POST /v1/images/generations HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":",
    )
    .await
    .expect("send");
    let t0 = Instant::now();
    let (closed, text) = closed_within(&mut sock, Duration::from_secs(3)).await;
    assert!(closed, "a stalled body is still held; got {text}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(engine.stats().in_flight, 0);
}

#[tokio::test]
async fn the_connection_cap_holds_new_clients_until_one_closes_and_says_so() {
    let (buf, _guard) = capture_logs();
    let (port, _engine) = start(ConnLimits {
        max_connections: 2,
        ..limits(30_000)
    })
    .await;
    let first = connect(port).await;
    let _second = connect(port).await;
    let mut third = connect(port).await;
    third
        .write_all(b"GET /v1/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let (closed, text) = closed_within(&mut third, 500 * MS).await;
    assert!(!closed && text.is_empty(), "served over the cap: {text}");
    let said = logs(&buf);
    assert_eq!(
        said.matches("connection limit reached").count(),
        1,
        "logs: {said}"
    );
    assert!(said.contains("max_connections=2"), "logs: {said}");
    drop(first);
    let (closed, text) = closed_within(&mut third, Duration::from_secs(3)).await;
    assert!(closed && text.starts_with("HTTP/1.1 200"), "{text}");
}

/// Fails every accept with "too many open files" (EMFILE), counting the calls.
struct Exhausted(Arc<Mutex<u32>>);

impl Acceptor for Exhausted {
    type Io = tokio::io::DuplexStream;

    fn local_addr(&self) -> Vec<LocalAddr> {
        Vec::new()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Err(io::Error::from_raw_os_error(24))
    }
}

#[tokio::test]
async fn accept_errors_back_off_and_are_logged_once() {
    let (buf, _guard) = capture_logs();
    let calls = Arc::new(Mutex::new(0));
    let mut acceptor = Exhausted(calls.clone());
    let r = tokio::time::timeout(
        Duration::from_millis(700),
        accept_with_backoff(&mut acceptor),
    );
    assert!(r.await.is_err(), "an always-failing accept returned");
    let n = *calls.lock().unwrap_or_else(|p| p.into_inner());
    // 10 + 20 + 40 + … ms: about 7 tries in 0.7 s, not a busy loop.
    assert!((2..=12).contains(&n), "{n} accept calls in 0.7 s");
    let said = logs(&buf);
    assert_eq!(
        said.matches("cannot accept connections").count(),
        1,
        "{said}"
    );
}

/// CPU seconds (user + system) `pid` has used so far.
#[cfg(target_os = "linux")]
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// The issue's case end to end: `kiln serve` out of file descriptors (`ulimit -n 64`, more
/// clients than that) must not spin on accept, must say so once, and must serve again after.
#[cfg(target_os = "linux")]
#[test]
fn out_of_file_descriptors_the_server_backs_off_and_recovers() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let empty = std::env::temp_dir().join(format!("kiln-conn-empty-{port}"));
    std::fs::create_dir_all(&empty).expect("temp dir");
    let cmd = format!(
        "ulimit -n 64 && exec '{}' serve --offline --models-dir '{}' --port {port} --max-connections 1000",
        env!("CARGO_BIN_EXE_kiln"),
        empty.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &cmd])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln serve");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "server did not start"
        );
        std::thread::sleep(50 * MS);
    }
    // Let the server close the probe connection first: closed during the flood, its fd lets one
    // accept through, which ends the first episode and logs a second (seen once in a full run).
    std::thread::sleep(300 * MS);
    let held: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    std::thread::sleep(300 * MS);
    let c0 = cpu_secs(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_secs(child.id()) - c0;
    drop(held);
    std::thread::sleep(Duration::from_millis(1500));
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    sock.write_all(b"GET /v1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut reply = String::new();
    let _ = sock.read_to_string(&mut reply);
    let _ = child.kill();
    let out = child.wait_with_output().expect("wait");
    let log = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&empty);
    assert!(
        spent < 0.3,
        "the server used {spent:.2} s of CPU in 1 s while out of fds"
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}\n{log}");
    assert_eq!(log.matches("cannot accept connections").count(), 1, "{log}");
}
