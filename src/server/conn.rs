//! Connection limits against slow or idle clients (slowloris): header, idle and body timeouts
//! (the cap and accept backoff are in [`super::accept`]).
//!
//! poem 3.1's `Server` offers only an inactivity timeout that any trickled byte resets (and
//! hyper's `header_read_timeout` is not reachable through it), so each accepted stream is
//! wrapped in [`Timed`], which fails a pending read when its deadline passes (hyper then closes the
//! connection). Request boundaries come from [`track`], the outermost middleware: a request
//! is "busy" from its parsed head until its response body ends; the body's own stalls are
//! bounded there, chunk by chunk.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use poem::http::header;
use poem::{Body, Endpoint, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::disconnect::Key;
use crate::sync::Locked;

/// Limits on connections; `kiln serve --max-connections`, `--header-timeout-secs`,
/// `--idle-timeout-secs`, `--body-timeout-secs`.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// From connecting (or from the first byte of a later request) to the end of its headers.
    pub header_timeout: Duration,
    /// Between requests on a kept-alive connection, and while a client does not read a response.
    pub idle_timeout: Duration,
    /// Longest pause while a request body is being sent.
    pub body_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Requests of one connection that are between their parsed head and the end of their response.
#[derive(Default)]
pub(super) struct Activity {
    busy: AtomicUsize,
    reader: AtomicWaker,
}

fn registry() -> &'static Mutex<HashMap<Key, Arc<Activity>>> {
    static R: OnceLock<Mutex<HashMap<Key, Arc<Activity>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Held while a request is busy; wakes the connection's reader when the last one ends.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(a: Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::AcqRel);
        Self(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for a request's first byte (deadline: idle, or header on a new connection).
    Idle,
    /// Reading a request head (deadline: header).
    Head,
    /// A request is being handled: no read deadline here.
    Busy,
}

/// A stream whose reads fail with `TimedOut` when a header or idle deadline passes, and whose
/// writes fail when the client stops reading for the idle timeout.
pub struct Timed<T> {
    inner: T,
    key: Option<Key>,
    activity: Arc<Activity>,
    limits: ConnLimits,
    phase: Phase,
    read_deadline: Pin<Box<Sleep>>,
    write_stalled: bool,
    write_deadline: Pin<Box<Sleep>>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl<T> Timed<T> {
    pub(super) fn new(
        inner: T,
        key: Option<Key>,
        limits: ConnLimits,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        let activity = Arc::new(Activity::default());
        if let Some(k) = key {
            registry().locked().insert(k, activity.clone());
        }
        let now = tokio::time::Instant::now();
        Self {
            inner,
            key,
            activity,
            // A new connection gets the header timeout for its first request.
            phase: Phase::Head,
            read_deadline: Box::pin(tokio::time::sleep_until(now + limits.header_timeout)),
            write_stalled: false,
            write_deadline: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            limits,
            _slot: slot,
        }
    }

    fn arm(&mut self, phase: Phase, after: Duration) {
        self.phase = phase;
        self.read_deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + after);
    }
}

impl<T> Drop for Timed<T> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            registry().locked().remove(&k);
        }
    }
}

fn timed_out(what: &str, after: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} not received within {}s", after.as_secs_f32()),
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for Timed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.activity.reader.register(cx.waker());
        let busy = this.activity.busy.load(Ordering::Acquire) > 0;
        match (busy, this.phase) {
            (true, _) => this.phase = Phase::Busy,
            (false, Phase::Busy) => this.arm(Phase::Idle, this.limits.idle_timeout),
            _ => {}
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.phase == Phase::Idle {
                    this.arm(Phase::Head, this.limits.header_timeout);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.phase != Phase::Busy => {
                if this.read_deadline.as_mut().poll(cx).is_ready() {
                    let (what, after) = match this.phase {
                        Phase::Idle => ("a new request", this.limits.idle_timeout),
                        _ => ("the request headers", this.limits.header_timeout),
                    };
                    tracing::debug!("closing a connection: {what} not received in time");
                    return Poll::Ready(Err(timed_out(what, after)));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Timed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Pending => {
                if !this.write_stalled {
                    this.write_stalled = true;
                    let at = tokio::time::Instant::now() + this.limits.idle_timeout;
                    this.write_deadline.as_mut().reset(at);
                }
                if this.write_deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(timed_out(
                        "the client's reading of the response",
                        this.limits.idle_timeout,
                    )));
                }
                Poll::Pending
            }
            ready => {
                this.write_stalled = false;
                ready
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request busy until it ends (sizes pass through unchanged,
/// so `Content-Length` stays).
struct Tracked {
    inner: http_body_util::combinators::BoxBody<Bytes, io::Error>,
    busy: Option<Busy>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            self.busy = None;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose every chunk must arrive within `limit` of the previous one.
fn paced(body: Body, limit: Duration) -> Body {
    let chunks = body.into_bytes_stream();
    let stream = futures_util::stream::unfold(Some(Box::pin(chunks)), move |s| async move {
        let mut s = s?;
        match tokio::time::timeout(limit, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((Err(timed_out("more of the request body", limit)), None)),
        }
    });
    Body::from_bytes_stream(stream)
}

fn has_body(req: &Request) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// Outermost middleware: marks the request's connection busy until its response body ends,
/// and bounds pauses in its body. Connections not accepted by [`serve`](super::serve) (tests)
/// only get the body bound.
pub async fn track<E: Endpoint>(
    ep: &E,
    mut req: Request,
    body_timeout: Duration,
) -> poem::Result<Response> {
    let key = match (
        req.local_addr().as_socket_addr(),
        req.remote_addr().as_socket_addr(),
    ) {
        (Some(l), Some(r)) => Some((*l, *r)),
        _ => None,
    };
    let activity = key.and_then(|k| registry().locked().get(&k).cloned());
    let busy = activity.map(Busy::begin);
    if has_body(&req) {
        let body = req.take_body();
        req.set_body(paced(body, body_timeout));
    }
    let mut resp = ep.get_response(req).await;
    if busy.is_some() {
        let inner = resp.take_body().into();
        let body = http_body_util::combinators::BoxBody::new(Tracked { inner, busy });
        resp.set_body(Body::from(body));
    }
    Ok(resp)
}

/// Whether the body read failed because the client paused longer than the body timeout.
pub(super) fn is_timeout(e: &poem::error::ReadBodyError) -> bool {
    matches!(e, poem::error::ReadBodyError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}
