//! Accepting connections: at most `--max-connections` open at once, and accept errors retried
//! with backoff. poem 3.1's accept loop drops an accept error and calls again at once, a busy
//! loop when the process is out of file descriptors; [`accept_with_backoff`] never returns one.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};

/// Accept errors that concern one connection only (retry at once).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Accepts from `acceptor` until it succeeds. Errors such as "too many open files" are logged
/// once per burst and retried with a growing pause (10 ms to 1 s), never in a busy loop.
pub async fn accept_with_backoff<A: Acceptor>(
    acceptor: &mut A,
) -> (A::Io, LocalAddr, RemoteAddr, Scheme) {
    let mut failures = 0u64;
    let mut pause = Duration::from_millis(10);
    let since = Instant::now();
    loop {
        match acceptor.accept().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(
                        failures,
                        secs = since.elapsed().as_secs_f32(),
                        "accepting connections again"
                    );
                }
                return v;
            }
            Err(e) if transient(&e) => tracing::debug!(error = %e, "accept: connection lost"),
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(
                        error = %e,
                        "cannot accept connections (out of file descriptors? raise `ulimit -n` \
                         or lower --max-connections); retrying with backoff"
                    );
                }
                failures += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Connection slots; waiting for one is logged at most once a minute, so a server held at
/// its cap by an attack says so without flooding the log.
pub(super) struct Slots {
    sem: Arc<tokio::sync::Semaphore>,
    max: usize,
    warned: Option<Instant>,
    waits: u64,
}

impl Slots {
    pub(super) fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            sem: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            warned: None,
            waits: 0,
        }
    }

    pub(super) async fn take(&mut self) -> tokio::sync::OwnedSemaphorePermit {
        if let Ok(p) = self.sem.clone().try_acquire_owned() {
            return p;
        }
        self.waits += 1;
        if self
            .warned
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            tracing::warn!(
                max_connections = self.max,
                times = self.waits,
                "connection limit reached: new connections wait until one closes \
                 (--max-connections)"
            );
            self.warned = Some(Instant::now());
            self.waits = 0;
        }
        let t0 = Instant::now();
        let permit = loop {
            // The semaphore is never closed; a closed one would only mean "try again".
            if let Ok(p) = self.sem.clone().acquire_owned().await {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        tracing::debug!(
            waited_secs = t0.elapsed().as_secs_f32(),
            "below the connection limit again"
        );
        permit
    }
}
