//! A real `kiln serve` process for the tests that need one (signals, several replicas, soak):
//! the demo models, `--offline`, a free port on 127.0.0.1, killed when dropped.
#![allow(dead_code)] // each test file uses its part

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a server gets to come up, and an exit to happen, before the test fails.
pub const BOUND: Duration = Duration::from_secs(60);

pub struct Server {
    pub child: Child,
    pub base: String,
    pub port: u16,
    /// The stderr reader, when the log is kept.
    log: Option<JoinHandle<String>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `kiln serve` with `extra` flags; its log is dropped.
pub fn start(extra: &[&str]) -> Server {
    spawn(extra, None)
}

/// `kiln serve` with `extra` flags, logging at info in `--log-format log_format`; see
/// [`Server::log`].
pub fn start_logged(extra: &[&str], log_format: &str) -> Server {
    spawn(extra, Some(log_format))
}

fn spawn(extra: &[&str], log_format: Option<&str>) -> Server {
    let port = free_port();
    let empty = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(["serve", "--offline", "--host", "127.0.0.1"])
        .args(["--port", &port.to_string()])
        .arg("--models-dir")
        .arg(empty.path())
        .args(extra)
        .stdout(Stdio::null());
    match log_format {
        Some(f) => cmd
            .args(["--log-format", f])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(Stdio::piped()),
        None => cmd.env("RUST_LOG", "warn").stderr(Stdio::null()),
    };
    let mut child = cmd.spawn().expect("kiln serve starts");
    let log = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        })
    });
    // The models dir may go: the demo models come from the source tree's fixtures.
    drop(empty);
    let s = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        port,
        log,
    };
    let t0 = Instant::now();
    while ureq::get(&format!("{}/health/live", s.base))
        .call()
        .is_err()
    {
        assert!(t0.elapsed() < BOUND, "server did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    s
}

impl Server {
    /// Sends `signal` (`TERM`, `INT`) with kill(1): no `unsafe` outside `nn/cpu`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub fn exit(&mut self, within: Duration) -> ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                t0.elapsed() < within,
                "still running {within:?} after the signal"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole log of a [`start_logged`] server, once it has exited.
    pub fn log(&mut self) -> String {
        self.log
            .take()
            .expect("started with start_logged")
            .join()
            .expect("log reader")
    }
}
