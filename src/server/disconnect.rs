//! Noticing that an HTTP client went away while its request is still being processed.
//!
//! hyper (as driven by poem 3.1) does not drop an in-flight handler when an HTTP/1 client closes
//! its socket, so a generation would run to the end for nobody. [`WatchedAcceptor`] shares each
//! TCP stream with a small watcher task that peeks for EOF; handlers look up their connection
//! with [`closed`] and stop waiting (dropping the job ticket, which cancels the job).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::{Acceptor, TcpAcceptor};
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::accept::{self, Slots};
use super::conn::{ConnLimits, Timed};
use crate::sync::Locked;

pub(super) type Key = (SocketAddr, SocketAddr);

/// Live connections: (local, remote) → "closed by the client" flag.
fn registry() -> &'static Mutex<HashMap<Key, watch::Receiver<bool>>> {
    static R: OnceLock<Mutex<HashMap<Key, watch::Receiver<bool>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// A future that resolves when the client of `req` has closed its connection; it never does for
/// connections not accepted by a [`WatchedAcceptor`] (tests, other listeners).
pub fn closed(req: &poem::Request) -> impl Future<Output = ()> + Send + 'static {
    let key = match (
        req.local_addr().as_socket_addr(),
        req.remote_addr().as_socket_addr(),
    ) {
        (Some(l), Some(r)) => Some((*l, *r)),
        _ => None,
    };
    let rx = key.and_then(|k| registry().locked().get(&k).cloned());
    async move {
        match rx {
            Some(mut rx) => {
                if rx.wait_for(|c| *c).await.is_err() {
                    // Watcher gone without seeing EOF: the server closed the connection itself.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// A TCP stream shared between hyper and the watcher (all tokio I/O on `&TcpStream`).
pub struct SharedTcp(Arc<TcpStream>);

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The socket closes (FIN) when the last reference drops, right after hyper lets go.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls for EOF without consuming request bytes; holds the stream only briefly, so the
/// socket closes soon after the server side is done with it.
async fn watch_connection(stream: Weak<TcpStream>, key: Key, tx: watch::Sender<bool>) {
    let mut byte = [0u8; 1];
    loop {
        let Some(s) = stream.upgrade() else { break };
        match tokio::time::timeout(Duration::from_millis(250), s.peek(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                let _ = tx.send(true);
                break;
            }
            // Unread bytes (a pipelined request) or nothing yet: look again shortly.
            Ok(Ok(_)) => {
                drop(s);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(_) => {}
        }
    }
    registry().locked().remove(&key);
}

/// Accepts TCP connections: at most `max_connections` open at once (see [`Slots`]),
/// accept errors retried with backoff, each stream watched for EOF and held to the timeouts.
pub struct WatchedAcceptor {
    inner: TcpAcceptor,
    limits: ConnLimits,
    slots: Slots,
}

impl WatchedAcceptor {
    pub fn new(inner: TcpAcceptor, limits: ConnLimits) -> Self {
        let slots = Slots::new(limits.max_connections);
        Self {
            inner,
            limits,
            slots,
        }
    }
}

impl Acceptor for WatchedAcceptor {
    type Io = Timed<SharedTcp>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let slot = self.slots.take().await;
        let (io, local, remote, scheme) = accept::accept_with_backoff(&mut self.inner).await;
        let io = Arc::new(io);
        let key = match (local.as_socket_addr(), remote.as_socket_addr()) {
            (Some(l), Some(r)) => Some((*l, *r)),
            _ => None,
        };
        if let Some(key) = key {
            let (tx, rx) = watch::channel(false);
            registry().locked().insert(key, rx);
            tokio::spawn(watch_connection(Arc::downgrade(&io), key, tx));
        }
        let io = Timed::new(SharedTcp(io), key, self.limits.clone(), slot);
        Ok((io, local, remote, scheme))
    }
}
