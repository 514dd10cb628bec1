//! Written once: the accept loop and the HTTP connection every listener uses (inbound, outbound,
//! admin, the authority and the built-in httpbin), the limits they all run under, and the
//! lifecycle they share.
//!
//! Limits, each on by default (see `HttpLimits` and `ConnLimit`):
//! - connections per listener, and all data-plane connections together (derived from the
//!   file-descriptor limit, so the admin port and the certificate watcher always keep some);
//!   a connection over a limit is refused at once, with a reason where the protocol allows one;
//! - a request's headers must arrive within `header_read` of its first byte, and a connection's
//!   first request within `header_read` of the connection (slow-header and silent clients);
//! - with no request in flight for `idle`, a connection is closed;
//! - at `max_age`, a connection finishes its requests and is closed (a peer whose trust was
//!   withdrawn cannot keep an old connection forever);
//! - one header-size limit for h1 and h2 (431), and HTTP/2 keep-alive pings.
//!
//! hyper's own h1 header timeout is left off: it also runs while a keep-alive connection waits
//! for its next request, which would make it the idle timeout. The watch here tells the two apart.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::throttle::{Throttle, more};

/// After a failed accept (EMFILE and friends) an accept loop pauses, doubling from this...
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// ...up to this: long enough not to spin, short enough to recover as soon as descriptors free up.
pub const ACCEPT_ERROR_PAUSE_MAX: Duration = Duration::from_secs(1);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a server's listeners and connections share: one cancellation for "stop accepting, finish
/// what is in flight", and one tracker of every task, to wait for them.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
}

impl Lifecycle {
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Stops accepting, lets open connections finish, and gives up on the rest after `drain`.
    /// Returns how many tasks were still running then.
    pub async fn stop(&self, drain: Duration) -> usize {
        self.shutdown.cancel();
        self.tracker.close();
        match tokio::time::timeout(drain, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

/// How many connections a listener may hold: its own cap, and optionally a pool shared by
/// several listeners (the data plane's, sized from the file-descriptor limit).
#[derive(Clone, Debug)]
pub struct ConnLimit {
    own: Arc<Semaphore>,
    max: usize,
    shared: Option<Arc<Places>>,
}

/// The places several listeners share (the data plane's), and the most of them held since
/// [`Places::take_peak`] last looked: a burst that comes and goes between two looks is seen.
#[derive(Debug)]
pub struct Places {
    sem: Arc<Semaphore>,
    size: usize,
    peak: std::sync::atomic::AtomicUsize,
}

impl Places {
    pub fn in_use(&self) -> usize {
        self.size - self.sem.available_permits()
    }

    /// The most places held since the last call (at least those held now).
    pub fn take_peak(&self) -> usize {
        let now = self.in_use();
        self.peak.swap(now, std::sync::atomic::Ordering::Relaxed).max(now)
    }
}

/// Held by a connection while it is open; gives its places back when dropped.
#[derive(Debug)]
pub struct ConnPermit {
    _own: OwnedSemaphorePermit,
    _shared: Option<OwnedSemaphorePermit>,
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds its maximum.
    ListenerFull(usize),
    /// All data-plane listeners together hold the maximum the descriptor limit allows.
    ProcessFull(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::ListenerFull(n) => write!(
                f,
                "the listener holds its maximum of {n} connections (limits.maxConnections)"
            ),
            Refusal::ProcessFull(n) => write!(
                f,
                "the sidecar holds {n} connections, all its file-descriptor limit allows while keeping some for admin and reloads (raise `ulimit -n`)"
            ),
        }
    }
}

impl ConnLimit {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        ConnLimit {
            own: Arc::new(Semaphore::new(max)),
            max,
            shared: None,
        }
    }

    /// Also draws from `pool`, shared with other listeners.
    pub fn sharing(mut self, pool: &Arc<Places>) -> Self {
        self.shared = Some(pool.clone());
        self
    }

    /// A pool of `size` places for [`ConnLimit::sharing`].
    pub fn pool(size: usize) -> Arc<Places> {
        let size = size.max(1);
        Arc::new(Places {
            sem: Arc::new(Semaphore::new(size)),
            size,
            peak: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    pub fn try_acquire(&self) -> Result<ConnPermit, Refusal> {
        let own = self
            .own
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::ListenerFull(self.max))?;
        let shared = match &self.shared {
            Some(pool) => {
                let permit = pool
                    .sem
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Refusal::ProcessFull(pool.size))?;
                pool.peak.fetch_max(pool.in_use(), std::sync::atomic::Ordering::Relaxed);
                Some(permit)
            }
            None => None,
        };
        Ok(ConnPermit {
            _own: own,
            _shared: shared,
        })
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        self.max - self.own.available_permits()
    }
}

/// Accepts connections on `listener` until shutdown, each handled by `handle` in its own
/// tracked task while it holds a place of `limit`. A connection over the limit is passed to
/// `refuse` (which may answer it) and closed. A failed accept is logged (throttled) and
/// retried after a pause that doubles while accepts keep failing; it never ends the loop.
pub async fn accept_loop<H, F, R>(
    listener: TcpListener,
    name: String,
    life: Lifecycle,
    limit: ConnLimit,
    handle: H,
    refuse: R,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream, SocketAddr, Refusal),
{
    let throttle = Throttle::default();
    let mut pause = ACCEPT_ERROR_PAUSE;
    loop {
        let (stream, peer) = tokio::select! {
            _ = life.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if let Some(skipped) = throttle.allow("accept") {
                        tracing::warn!("{name}: accept failed: {e}; retrying in {}{}", signet_certs::format_duration(pause), more(skipped));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_ERROR_PAUSE_MAX);
                    continue;
                }
            },
        };
        pause = ACCEPT_ERROR_PAUSE;
        match limit.try_acquire() {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                life.tracker.spawn(holding(handle(stream, peer), permit));
            }
            Err(why) => refuse(stream, peer, why),
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's task holding its place of the limit until it ends. Not `async move {
    /// let _permit = permit; task.await }`: such a block keeps the task twice (its capture, and
    /// the copy it awaits), which doubled the memory of every idle connection.
    struct Permitted<F> {
        #[pin]
        task: F,
        _permit: ConnPermit,
    }
}

/// `task`, holding `permit` until it ends.
fn holding<F: Future>(task: F, permit: ConnPermit) -> Permitted<F> {
    Permitted { task, _permit: permit }
}

impl<F: Future> Future for Permitted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().task.poll(cx)
    }
}

/// The size of the future `f` returns, without calling it: what a task of it allocates.
#[cfg(test)]
pub(crate) fn future_size<A, B, C, F: Future>(_f: impl FnOnce(A, B, C) -> F) -> usize {
    std::mem::size_of::<F>()
}

/// The limits every served HTTP connection runs under (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub header_read: Duration,
    pub idle: Duration,
    pub max_age: Duration,
    /// The largest request header block, in bytes (h1: the read buffer while parsing a head).
    pub max_header_bytes: usize,
    /// HTTP/2 PING interval; a PING unanswered for as long closes the connection.
    pub h2_keepalive: Duration,
    /// How long a connection asked to close (idle, age) may take to finish what is in flight.
    pub grace: Duration,
    /// How slowly a request body may arrive before the request is answered 408 and closed.
    pub body_rate: BodyRate,
}

/// The slowest a request body may arrive: at least `bytes` in every `every` (or its end), as
/// Apache's `mod_reqtimeout` `MinRate` counts. A body trickled at a byte a second would
/// otherwise hold its connection, and the app's, until the connection's maximum age. Response
/// bodies, which may stream slowly by design (server-sent events), are held to the idle limit
/// instead: no byte for `idle` ends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyRate {
    pub bytes: u64,
    pub every: Duration,
}

impl BodyRate {
    pub const DEFAULT: BodyRate = BodyRate {
        bytes: 1024,
        every: Duration::from_secs(10),
    };

    /// The text of a request refused for it.
    pub fn refusal(&self) -> String {
        format!(
            "signet: the request body arrived slower than {} bytes in {}; send it faster",
            self.bytes,
            signet_certs::format_duration(self.every)
        )
    }
}

/// Tracks one body against a [`BodyRate`]: a window of `every` that must bring `bytes`.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    rate: BodyRate,
    /// The end of the current window.
    pub deadline: Instant,
    owed: u64,
}

impl Pace {
    pub fn new(rate: BodyRate) -> Self {
        Pace {
            rate,
            deadline: Instant::now() + rate.every,
            owed: rate.bytes,
        }
    }

    /// Counts `n` bytes that arrived; a window that got what it owed starts the next one.
    pub fn arrived(&mut self, n: usize) {
        self.owed = self.owed.saturating_sub(n as u64);
        if self.owed == 0 {
            self.deadline = Instant::now() + self.rate.every;
            self.owed = self.rate.bytes;
        }
    }
}

/// hyper refuses an h1 read buffer below this.
const MIN_H1_BUFFER: usize = 8192;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(90),
            max_age: Duration::from_secs(3600),
            max_header_bytes: 64 * 1024,
            h2_keepalive: Duration::from_secs(30),
            grace: Duration::from_secs(5),
            body_rate: BodyRate::DEFAULT,
        }
    }
}

/// Why Signet closed a connection it was serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// A request's headers, or a connection's first request, did not arrive in time.
    HeaderTimeout,
    /// No request in flight for the idle timeout.
    Idle,
    /// The connection reached its maximum age.
    MaxAge,
    /// A request body arrived slower than [`HttpLimits::body_rate`], or a response body stalled
    /// for the idle timeout.
    BodyTimeout,
    /// The server is shutting down.
    Shutdown,
}

impl Closed {
    pub const ALL: [Closed; 4] = [Closed::HeaderTimeout, Closed::Idle, Closed::MaxAge, Closed::BodyTimeout];

    pub fn label(self) -> &'static str {
        match self {
            Closed::HeaderTimeout => "header_timeout",
            Closed::Idle => "idle",
            Closed::MaxAge => "max_age",
            Closed::BodyTimeout => "body_timeout",
            Closed::Shutdown => "shutdown",
        }
    }
}

/// Called with the status of every response the service produced, and with 431 when hyper
/// refused a request head as too large.
pub type OnResponse = Arc<dyn Fn(u16) + Send + Sync>;

/// How one listener serves HTTP: its limits, the shutdown signal, and who counts responses.
#[derive(Clone)]
pub struct HttpServing {
    pub limits: HttpLimits,
    pub shutdown: CancellationToken,
    pub on_response: Option<OnResponse>,
}

impl HttpServing {
    pub fn new(limits: HttpLimits, shutdown: CancellationToken) -> Self {
        HttpServing {
            limits,
            shutdown,
            on_response: None,
        }
    }

    pub fn counting(mut self, on_response: OnResponse) -> Self {
        self.on_response = Some(on_response);
        self
    }
}

/// How a served connection ended.
#[derive(Debug, Default)]
pub struct Served {
    /// Set when Signet closed it (a limit, or shutdown).
    pub closed: Option<Closed>,
    /// The protocol error it ended with, if any (a peer reset, garbage).
    pub error: Option<BoxError>,
}

/// Serves HTTP/1.1 on one connection under `serving`'s limits; on shutdown the connection
/// finishes its current request and closes.
pub async fn serve_http1<I, S, B>(io: I, service: S, serving: &HttpServing) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let io = Watched::new(io, activity.clone());
    let service = Tracked::new(service, activity.clone(), serving.on_response.clone());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(serving.limits.max_header_bytes.max(MIN_H1_BUFFER));
    // Upgrades (WebSocket and friends) are served: the service decides whether to switch.
    let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
    supervise(conn, &activity, serving).await
}

/// Serves HTTP/1.1 or h2 (by what the client speaks: ALPN or the h2 preface) on one connection,
/// under the same limits as [`serve_http1`], with HTTP/2 keep-alive.
pub async fn serve_http_auto<I, S, B>(io: I, service: S, serving: &HttpServing) -> Served
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let activity = Arc::new(Activity::new());
    let io = Watched::new(io, activity.clone());
    let service = Tracked::new(service, activity.clone(), serving.on_response.clone());
    let limits = &serving.limits;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(limits.max_header_bytes.max(MIN_H1_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.h2_keepalive))
        .keep_alive_timeout(limits.h2_keepalive)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    supervise(conn, &activity, serving).await
}

/// A served connection that can be asked to finish its request in flight and close (hyper's
/// connections, with upgrades).
trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error;
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    type Error = hyper::Error;
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B> Graceful for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Error = BoxError;
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// Runs a connection to its end, closing it when a limit of `serving` says so (see
/// [`Activity::expired`]) or on shutdown (after its current request).
async fn supervise<C>(conn: C, activity: &Activity, serving: &HttpServing) -> Served
where
    C: Graceful,
    C::Error: Into<BoxError>,
{
    let limits = &serving.limits;
    tokio::pin!(conn);
    let closed = loop {
        let wake = activity.next_check(limits);
        tokio::select! {
            result = conn.as_mut() => return served(None, result, serving),
            _ = serving.shutdown.cancelled() => break Closed::Shutdown,
            _ = activity.changed.notified() => continue,
            _ = tokio::time::sleep_until(wake) => {
                if let Some(closed) = activity.expired(limits) {
                    break closed;
                }
            }
        }
    };
    match closed {
        // Shutdown waits for the request in flight (the lifecycle's drain bounds it).
        Closed::Shutdown => {
            conn.as_mut().graceful_shutdown();
            let result = conn.await;
            served(Some(closed), result, serving)
        }
        // A head that never completes is not waited for.
        Closed::HeaderTimeout => Served {
            closed: Some(closed),
            error: None,
        },
        Closed::Idle | Closed::MaxAge | Closed::BodyTimeout => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.grace, conn).await {
                Ok(result) => served(Some(closed), result, serving),
                Err(_) => Served {
                    closed: Some(closed),
                    error: None,
                },
            }
        }
    }
}

fn served<E: Into<BoxError>>(closed: Option<Closed>, result: Result<(), E>, serving: &HttpServing) -> Served {
    let error = result.err().map(Into::into);
    // hyper answers a malformed h1 head with 400, a too-large one with 431, itself; count those
    // like the service's answers.
    if let (Some(on_response), Some(h)) = (
        &serving.on_response,
        error.as_ref().and_then(|e| e.downcast_ref::<hyper::Error>()),
    ) {
        if h.is_parse_too_large() {
            on_response(431);
        } else if h.is_parse() {
            on_response(400);
        }
    }
    Served { closed, error }
}

/// What a served connection is doing, as the limits need it. Times are milliseconds since the
/// connection started; a head time of 0 means "no request head is being read".
#[derive(Debug)]
struct Activity {
    start: Instant,
    in_flight: AtomicU32,
    requests: AtomicU64,
    /// When the connection last had no request in flight.
    idle_since: AtomicU64,
    /// When the first byte of a request not yet handed to the service arrived (+1; h1 only:
    /// h2 connections carry control frames between requests).
    head_since: AtomicU64,
    seen_first_read: AtomicBool,
    h2: AtomicBool,
    /// The response bodies in flight, watched for stalls ([`Stall`]).
    streams: std::sync::Mutex<Vec<std::sync::Weak<dyn Stall>>>,
    /// Wakes the supervisor when a deadline may have moved earlier.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            seen_first_read: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            streams: std::sync::Mutex::new(Vec::new()),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn on_read(&self, data: &[u8]) {
        if !self.seen_first_read.swap(true, Relaxed) {
            self.h2.store(data.starts_with(b"PRI * HTTP/2.0"), Relaxed);
        }
        if !self.h2.load(Relaxed) && self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == 0 {
            self.head_since.store(self.now_ms() + 1, Relaxed);
            self.changed.notify_one();
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        self.head_since.store(0, Relaxed);
    }

    fn end(&self) {
        if self.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Relaxed);
            self.changed.notify_one();
        }
    }

    /// When to look again: the earliest deadline that can pass in the current state.
    fn next_check(&self, limits: &HttpLimits) -> Instant {
        let mut next = self.start + limits.max_age;
        if self.in_flight.load(Relaxed) == 0 {
            next = next.min(self.at(self.idle_since.load(Relaxed)) + limits.idle);
            if self.requests.load(Relaxed) == 0 {
                next = next.min(self.start + limits.header_read);
            }
            let head = self.head_since.load(Relaxed);
            if head > 0 {
                next = next.min(self.at(head - 1) + limits.header_read);
            }
        } else {
            // A long request: look again once an idle period has passed after it ends, or
            // when a response body in flight would have stalled for as long.
            next = next.min(Instant::now() + limits.idle);
            if let Some(last) = self.least_recent_progress() {
                next = next.min(self.at(last) + limits.idle);
            }
        }
        next
    }

    fn watch(&self, stream: std::sync::Weak<dyn Stall>) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.len() == streams.capacity() {
            streams.retain(|s| s.strong_count() > 0);
        }
        streams.push(stream);
    }

    fn least_recent_progress(&self) -> Option<u64> {
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams
            .iter()
            .filter_map(|s| s.upgrade())
            .map(|s| s.last_progress())
            .min()
    }

    /// Gives up the response bodies that have not moved for `idle`; how many.
    fn give_up_stalled(&self, idle: Duration) -> usize {
        let now = self.now_ms();
        let idle = idle.as_millis() as u64;
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let mut given_up = 0;
        streams.retain(|s| match s.upgrade() {
            Some(s) if now >= s.last_progress() + idle => {
                s.give_up();
                given_up += 1;
                false
            }
            Some(_) => true,
            None => false,
        });
        given_up
    }

    /// The limit this connection has run into, if any.
    fn expired(&self, limits: &HttpLimits) -> Option<Closed> {
        let now = Instant::now();
        if now >= self.start + limits.max_age {
            return Some(Closed::MaxAge);
        }
        if self.in_flight.load(Relaxed) > 0 {
            // A response that neither the app nor the client moves for the idle time is given
            // up: on HTTP/2 that stream alone (the others go on); on HTTP/1 the stream is the
            // connection.
            let given_up = self.give_up_stalled(limits.idle);
            if given_up > 0 {
                tracing::debug!(
                    "gave up {given_up} response(s) that moved nothing for {:?}",
                    limits.idle
                );
                if !self.h2.load(Relaxed) {
                    return Some(Closed::BodyTimeout);
                }
            }
            return None;
        }
        let head = self.head_since.load(Relaxed);
        let first_overdue = self.requests.load(Relaxed) == 0 && now >= self.start + limits.header_read;
        if first_overdue || (head > 0 && now >= self.at(head - 1) + limits.header_read) {
            return Some(Closed::HeaderTimeout);
        }
        (now >= self.at(self.idle_since.load(Relaxed)) + limits.idle).then_some(Closed::Idle)
    }
}

/// The connection's I/O, noting when request bytes arrive.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    fn new(io: I, activity: Arc<Activity>) -> Self {
        Watched { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && buf.filled().len() > before
        {
            self.activity.on_read(&buf.filled()[before..]);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The service, marking each request in flight from its call until its response body is done.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    on_response: Option<OnResponse>,
}

impl<S> Tracked<S> {
    fn new(inner: S, activity: Arc<Activity>, on_response: Option<OnResponse>) -> Self {
        Tracked {
            inner,
            activity,
            on_response,
        }
    }
}

/// Ends a request's time in flight when dropped (with its response body, or on error).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

impl<S, B> Service<http::Request<Incoming>> for Tracked<S>
where
    S: Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body + Send + Unpin + 'static,
{
    type Response = http::Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.activity.begin();
        let guard = InFlight(self.activity.clone());
        let on_response = self.on_response.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            if let Some(count) = on_response {
                count(response.status().as_u16());
            }
            Ok(response.map(|body| {
                let activity = guard.0.clone();
                let watched = Arc::new(Progress {
                    last: AtomicU64::new(activity.now_ms()),
                    body: std::sync::Mutex::new(Some(body)),
                });
                let weak: std::sync::Weak<Progress<B>> = Arc::downgrade(&watched);
                activity.watch(weak);
                TrackedBody {
                    watched,
                    _in_flight: guard,
                }
            }))
        })
    }
}

/// A response body the connection's supervisor watches: when neither the app nor the client
/// has moved it for the idle time (a client that grants no HTTP/2 window, an app that sends
/// nothing), it is given up, which drops the app's side (its stream reset, its connection
/// closed) and ends the client's side with an error (`RST_STREAM` on HTTP/2), never with a
/// clean end that would pass a cut body off as whole.
trait Stall: Send + Sync {
    /// When the body last yielded a frame (or began), in the connection's milliseconds.
    fn last_progress(&self) -> u64;
    fn give_up(&self);
}

struct Progress<B> {
    last: AtomicU64,
    /// `None` once given up.
    body: std::sync::Mutex<Option<B>>,
}

impl<B: Send> Stall for Progress<B> {
    fn last_progress(&self) -> u64 {
        self.last.load(Relaxed)
    }

    fn give_up(&self) {
        let body = self.body.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(body);
    }
}

/// A response body that keeps its request in flight until it is done, watched for stalls
/// ([`Stall`]).
pub struct TrackedBody<B> {
    watched: Arc<Progress<B>>,
    _in_flight: InFlight,
}

/// The error a response body given up for a stall ends with.
#[derive(Debug)]
struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the response moved nothing for the idle time and was given up")
    }
}

impl std::error::Error for Stalled {}

impl<B> Body for TrackedBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut body = self.watched.body.lock().unwrap_or_else(|e| e.into_inner());
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Some(Err(Box::new(Stalled))));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.watched.last.store(self._in_flight.0.now_ms(), Relaxed);
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        let body = self.watched.body.lock().unwrap_or_else(|e| e.into_inner());
        body.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let body = self.watched.body.lock().unwrap_or_else(|e| e.into_inner());
        body.as_ref().map(|b| b.size_hint()).unwrap_or_default()
    }
}

/// Raises this process's open-file soft limit to its hard limit (as Envoy and ztunnel do) and
/// returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// How often [`return_memory`] looks at the connection count.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// After a burst of connections has gone, gives the freed heap back to the system: glibc keeps
/// freed memory in its arenas, so a sidecar that once held 20,000 connections would otherwise
/// keep their memory for good. Looks every [`TRIM_INTERVAL`] at `places` and trims when at
/// least 256 fewer are held than at their peak since the last look (the peak is kept as
/// connections are accepted, so a burst that opened and closed between two looks counts).
pub async fn return_memory(places: Arc<Places>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TRIM_INTERVAL) => {}
        }
        let peak = places.take_peak();
        if peak >= places.in_use() + 256 {
            trim_heap();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only returns free pages of the heap to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Descriptors kept out of the data plane's reach: the admin port, the certificate watcher and
/// reloads, provisioning, logging.
pub const RESERVED_FDS: u64 = 256;

/// How many data-plane connections `fd_limit` descriptors allow: each may take two (the
/// accepted one and the one it opens), after [`RESERVED_FDS`].
pub fn data_plane_budget(fd_limit: u64) -> usize {
    (fd_limit.saturating_sub(RESERVED_FDS) / 2).max(16) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection's task, with its place of the limit, is held once: barely larger than the
    /// task alone (an async block awaiting it would be twice its size).
    #[test]
    fn a_task_with_its_permit_is_held_once() {
        let task = async {
            let bytes = [1u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(bytes);
        };
        let alone = std::mem::size_of_val(&task);
        let permit = ConnLimit::new(1).try_acquire().expect("a place");
        let held = std::mem::size_of_val(&holding(task, permit));
        assert!(alone >= 4096 && held < alone + 64, "{alone} bytes alone, {held} held");
    }
}
