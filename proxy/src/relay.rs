//! The HTTP/1.1 relay: the request path of both sidecars for kept-alive HTTP/1.1, the traffic
//! a mesh carries most. Each request head is parsed once (httparse) and written again with the
//! hop's changes (route, `Host`, `x-forwarded-client-cert`, hop-by-hop headers removed); bodies
//! pass as bytes, their framing (`Content-Length` or chunked) followed only to know where a
//! message ends. One task per connection does all of it, with its buffers reused from request to
//! request: no header map, no per-request task, channel or body object. Profiles of the hyper
//! path it replaced spent most of their user time on exactly those (issue 11).
//!
//! Each downstream connection holds one upstream connection while it lives (HTTP/1.1 cannot
//! multiplex, so one per request in flight is what the app's concurrency needs); idle ones wait
//! in a [`Pool`] per target, for the next downstream connection, until `idle / 2`.
//!
//! What the relay does not do, it hands over before touching it: the connection, with the bytes
//! already read, goes to the hyper path (`serve_http_auto`), which serves it to the end. That is
//! HTTP/2 (prior knowledge), `CONNECT`, upgrades (WebSocket), `Expect: 100-continue`, HTTP/1.0,
//! unusual framing, and request bodies over [`MAX_BUFFERED_BODY`] (streamed uploads). The limits
//! are the hyper path's (`HttpLimits`): header read, idle, age, header size (431), counted alike.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::serve::{Closed, HttpServing};

/// The most headers a message may have (hyper's default too); more is answered 431.
const MAX_HEADERS: usize = 100;
/// A request body up to this size is read whole before the request is sent (so a request can be
/// sent again on a fresh connection when a pooled one turns out closed); a larger one is
/// streamed by the hyper path.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024;
/// Read size for bodies.
const CHUNK: usize = 16 * 1024;
/// How long closing a connection the client closed may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// Idle connections kept per target.
const MAX_IDLE_PER_TARGET: usize = 256;

/// What a hop answers itself, instead of the upstream: a status and a one-line text.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub text: String,
}

impl Answer {
    pub fn new(status: StatusCode, text: impl Into<String>) -> Self {
        Answer {
            status,
            text: text.into(),
        }
    }
}

/// The parts of a request head a hop routes and rewrites by.
#[derive(Debug)]
pub(crate) struct Req<'a> {
    /// The authority of an absolute-form target (`GET http://host:port/path`, proxies' form).
    pub authority: Option<&'a str>,
    /// The `Host` header.
    pub host: Option<&'a [u8]>,
    /// The first `x-forwarded-client-cert` header.
    pub xfcc: Option<&'a [u8]>,
}

/// Where a request goes and how its head changes.
pub(crate) struct Routed<T> {
    /// The pool key (a service name, an app address).
    pub key: Arc<str>,
    pub target: T,
    /// The `Host` to send; `None` keeps the request's (its `Host`, else its absolute target's
    /// authority; a hop gives one when the request has neither).
    pub host: Option<HeaderValue>,
    /// `x-forwarded-client-cert` to send; any the request carried is removed either way.
    pub xfcc: Option<HeaderValue>,
}

/// One side's part in the relay: the outbound (app → peer sidecar) or the inbound (peer → app).
pub(crate) trait Hop: Send + Sync {
    type Target: Send + Sync;
    type Up: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn route(&self, req: &Req<'_>) -> Result<Routed<Self::Target>, Answer>;
    /// A new upstream connection; a failure is answered (and logged by the hop).
    fn dial(
        &self,
        target: &Self::Target,
        method: &str,
        path: &str,
    ) -> impl Future<Output = Result<Self::Up, Answer>> + Send;
    /// The answer (and log) for a request the upstream failed after it was sent.
    fn failed(&self, target: &Self::Target, method: &str, path: &str, error: &io::Error) -> Answer;
    fn pool(&self) -> &Pool<Self::Up>;
    /// Connections made under an older generation (of certificates and trust) are not reused.
    fn generation(&self) -> u64 {
        0
    }
}

/// How a relayed connection ended.
pub(crate) struct Relayed<D> {
    /// Set when Signet closed it (a limit, or shutdown).
    pub closed: Option<Closed>,
    /// The connection and the bytes read from it, for the hyper path to serve.
    pub handed_over: Option<(D, Bytes)>,
}

impl<D> Relayed<D> {
    fn ended(closed: Option<Closed>) -> Self {
        Relayed {
            closed,
            handed_over: None,
        }
    }
}

// === framing ===

/// How a message's body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// At the end of the connection (responses only).
    UntilClose,
}

/// Follows chunked framing over bytes that pass through unchanged, to find where the message
/// ends (RFC 9112 §7.1). Trailers pass too; their size is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    Size {
        n: u64,
        digits: u8,
    },
    /// A chunk extension (`;name=value`), skipped up to its CRLF.
    Ext {
        n: u64,
    },
    SizeLf {
        n: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The most bytes of trailers accepted after a last chunk.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
struct BadChunk;

impl Chunked {
    const START: Chunked = Chunked::Size { n: 0, digits: 0 };

    /// Consumes the message's bytes from the front of `bytes`; returns how many belong to it
    /// (all of them until the message ends). `trailers` counts trailer bytes across calls.
    fn advance(&mut self, bytes: &[u8], trailers: &mut usize) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            if let Chunked::Data(left) = *self {
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                *self = if left == take {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left - take)
                };
                continue;
            }
            let b = bytes[i];
            *self = match (*self, b) {
                (Chunked::Done, _) => return Ok(i),
                (Chunked::Size { n, digits }, _) if b.is_ascii_hexdigit() => {
                    if digits == 16 {
                        return Err(BadChunk);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0);
                    Chunked::Size {
                        n: n * 16 + u64::from(d),
                        digits: digits + 1,
                    }
                }
                (Chunked::Size { digits: 0, .. }, _) => return Err(BadChunk),
                (Chunked::Size { n, .. }, b'\r') => Chunked::SizeLf { n },
                (Chunked::Size { n, .. }, b';' | b' ' | b'\t') => Chunked::Ext { n },
                (Chunked::Ext { n }, b'\r') => Chunked::SizeLf { n },
                (Chunked::Ext { .. }, b'\n') => return Err(BadChunk),
                (Chunked::Ext { n }, _) => Chunked::Ext { n },
                (Chunked::SizeLf { n: 0 }, b'\n') => Chunked::TrailerStart,
                (Chunked::SizeLf { n }, b'\n') => Chunked::Data(n),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataLf, b'\n') => Chunked::START,
                (Chunked::TrailerStart, b'\r') => Chunked::EndLf,
                (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
                (Chunked::TrailerStart | Chunked::Trailer, b'\n') => return Err(BadChunk),
                (Chunked::TrailerStart | Chunked::Trailer, _) => {
                    *trailers += 1;
                    if *trailers > MAX_TRAILERS {
                        return Err(BadChunk);
                    }
                    Chunked::Trailer
                }
                (Chunked::TrailerLf, b'\n') => Chunked::TrailerStart,
                (Chunked::EndLf, b'\n') => Chunked::Done,
                _ => return Err(BadChunk),
            };
            i += 1;
        }
        Ok(i)
    }
}

// === heads ===

/// Whether `name` is one of the hop-by-hop headers no proxy passes on (RFC 9110 §7.6.1), or one
/// the relay writes itself. Framing headers (`content-length`, `transfer-encoding`) are kept:
/// bodies pass unchanged.
fn dropped(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "upgrade",
        "host",
        crate::xfcc::HEADER,
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn is(name: &str, wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// The names a `Connection` header lists, which go with it (beyond `close` and `keep-alive`).
fn listed(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| is(h.name, "connection"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Writes the headers a proxy passes on: hop-by-hop ones and those the relay sets dropped; `TE`
/// only as `trailers` (gRPC servers require it; the one value HTTP/2 allows).
fn write_headers(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    let has_listed = headers.iter().any(|h| {
        is(h.name, "connection")
            && tokens(h.value).any(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
    });
    for h in headers {
        if dropped(h.name) || (has_listed && listed(headers, h.name)) {
            continue;
        }
        if is(h.name, "te") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"trailers") {
                out.extend_from_slice(b"te: trailers\r\n");
            }
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// The body framing a message's headers declare; `None` when they contradict each other or are
/// invalid (several lengths, a length with chunked, a bad number).
fn framing(headers: &[httparse::Header<'_>], request: bool) -> Option<Framing> {
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    for h in headers {
        if is(h.name, "content-length") {
            let s = std::str::from_utf8(h.value).ok()?.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = s.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if is(h.name, "transfer-encoding") {
            if te.is_some() {
                return None;
            }
            te = Some(h.value);
        }
    }
    match (te, length) {
        (Some(_), Some(_)) => None,
        (Some(te), None) => {
            let last = tokens(te).last()?;
            if last.eq_ignore_ascii_case(b"chunked") {
                // A request's coding must be chunked alone; a response may layer codings under it.
                (!request || tokens(te).count() == 1).then_some(Framing::Chunked)
            } else if request {
                None
            } else {
                Some(Framing::UntilClose)
            }
        }
        (None, Some(n)) => Some(Framing::Length(n)),
        (None, None) => Some(if request {
            Framing::Length(0)
        } else {
            Framing::UntilClose
        }),
    }
}

/// A request head, read and decided on.
enum Step<T> {
    /// More bytes are needed.
    Partial,
    /// For the hyper path, from this request on.
    HandOver,
    /// Answered by Signet; `close` when the connection cannot go on (a body was not read).
    Answer {
        answer: Answer,
        len: usize,
        close: bool,
    },
    Relay(Plan<T>),
}

/// A request to relay: its head is rewritten in the output buffer.
struct Plan<T> {
    routed: Routed<T>,
    /// The head's length in the input.
    len: usize,
    framing: Framing,
    /// The client asked to close after this request.
    close: bool,
    head: bool,
    /// Where the method and the path are in the input (for logs).
    method: (usize, usize),
    path: (usize, usize),
}

/// Where `part` lies in `base`; an empty span when it is not a slice of it (the `/` of an
/// absolute target without a path).
fn span(base: &[u8], part: &str) -> (usize, usize) {
    let (b, p) = (base.as_ptr() as usize, part.as_ptr() as usize);
    if p >= b && p + part.len() <= b + base.len() {
        (p - b, p - b + part.len())
    } else {
        (0, 0)
    }
}

/// Reads the request head at the front of `buf`: hands it over, answers it, or routes it and
/// writes the head to send into `out`.
fn request<H: Hop>(hop: &H, buf: &[u8], max_head: usize, out: &mut Vec<u8>) -> Step<H::Target> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Step::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return Step::Answer {
                answer: Answer::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "signet: request header fields too large",
                ),
                len: buf.len(),
                close: true,
            };
        }
        // HTTP/2 with prior knowledge, HTTP/0.9 and garbage alike: hyper says what it is.
        Err(_) => return Step::HandOver,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Step::HandOver;
    };
    let headers = req.headers;
    let Some(framing) = framing(headers, true) else {
        return Step::HandOver;
    };
    let mut close = false;
    for h in headers.iter() {
        if is(h.name, "upgrade") || is(h.name, "expect") {
            return Step::HandOver;
        }
        if is(h.name, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    return Step::HandOver;
                }
            }
        }
    }
    if method == "CONNECT" {
        return Step::HandOver;
    }
    // Origin form, or the absolute form apps use with a proxy.
    let (authority, path) = if target.starts_with('/') {
        (None, target)
    } else if target.len() > 7 && target[..7].eq_ignore_ascii_case("http://") {
        let rest = &target[7..];
        match rest.find('/') {
            Some(i) if i > 0 => (Some(&rest[..i]), &rest[i..]),
            None if !rest.is_empty() && !rest.contains('?') => (Some(rest), "/"),
            _ => return Step::HandOver,
        }
    } else {
        return Step::HandOver;
    };
    let first = |name: &str| headers.iter().find(|h| is(h.name, name)).map(|h| h.value);
    let facts = Req {
        authority,
        host: first("host"),
        xfcc: first(crate::xfcc::HEADER),
    };
    let routed = match hop.route(&facts) {
        Ok(routed) => routed,
        Err(answer) => {
            return Step::Answer {
                answer,
                len,
                close: close || framing != Framing::Length(0),
            };
        }
    };
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = match &routed.host {
        Some(host) => Some(host.as_bytes()),
        None => facts.host.or(authority.map(str::as_bytes)),
    };
    if let Some(host) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
    }
    write_headers(out, headers);
    if let Some(xfcc) = &routed.xfcc {
        out.extend_from_slice(crate::xfcc::HEADER.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(xfcc.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Step::Relay(Plan {
        routed,
        len,
        framing,
        close,
        head: method == "HEAD",
        method: span(buf, method),
        path: span(buf, path),
    })
}

/// A response head from upstream, rewritten for downstream.
enum ResponseHead {
    Partial,
    Bad(String),
    Done {
        len: usize,
        status: u16,
        framing: Framing,
        /// The upstream connection can carry another request after this response.
        reusable: bool,
    },
}

/// Reads the response head at the front of `buf` and writes the one to send into `out`
/// (`connection: close` added when `close`).
fn response(buf: &[u8], max_head: usize, head_request: bool, close: bool, out: &mut Vec<u8>) -> ResponseHead {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max_head => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return ResponseHead::Partial,
        Ok(_) | Err(httparse::Error::TooManyHeaders) => {
            return ResponseHead::Bad(format!(
                "its response head is over {max_head} bytes or {MAX_HEADERS} headers"
            ));
        }
        Err(e) => return ResponseHead::Bad(format!("its response is not HTTP/1.1 ({e})")),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return ResponseHead::Bad("its response is not HTTP/1.1".into());
    };
    if status == 101 {
        return ResponseHead::Bad("it switched protocols without being asked to".into());
    }
    let headers = resp.headers;
    let informational = (100..200).contains(&status);
    let framing = if head_request || informational || status == 204 || status == 304 {
        Some(Framing::Length(0))
    } else {
        framing(headers, false)
    };
    let Some(framing) = framing else {
        return ResponseHead::Bad("its response has contradictory Content-Length and Transfer-Encoding".into());
    };
    let upstream_close = version == 0
        || headers
            .iter()
            .filter(|h| is(h.name, "connection"))
            .flat_map(|h| tokens(h.value))
            .any(|t| t.eq_ignore_ascii_case(b"close"));
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_headers(out, headers);
    if (close || framing == Framing::UntilClose) && !informational {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ResponseHead::Done {
        len,
        status,
        framing,
        reusable: !upstream_close && framing != Framing::UntilClose,
    }
}

/// Signet's own response: a status and a text, as `body::text` writes it.
fn answer_bytes(answer: &Answer, close: bool, out: &mut Vec<u8>) {
    let mut text = answer.text.clone();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    out.clear();
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
            answer.status.as_u16(),
            answer.status.canonical_reason().unwrap_or(""),
            text.len(),
            if close { "connection: close\r\n" } else { "" }
        )
        .as_bytes(),
    );
    out.extend_from_slice(text.as_bytes());
}

// === the upstream pool ===

/// Idle upstream connections by target, reused by the next downstream connection that needs
/// one. A connection is taken only while fresh (under the pool's idle time), made under the
/// current generation, and still open (nothing to read, no EOF).
pub(crate) struct Pool<U> {
    idle: Mutex<HashMap<Arc<str>, Vec<Idle<U>>>>,
    timeout: Duration,
}

struct Idle<U> {
    io: U,
    since: Instant,
    generation: u64,
}

impl<U: AsyncRead + Unpin> Pool<U> {
    pub fn new(timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Vec<Idle<U>>>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, key: &str, generation: u64) -> Option<U> {
        let mut dead = Vec::new();
        let found = {
            let mut idle = self.lock();
            let list = idle.get_mut(key)?;
            let mut found = None;
            while let Some(mut c) = list.pop() {
                if c.generation == generation && c.since.elapsed() < self.timeout && still_open(&mut c.io) {
                    found = Some(c.io);
                    break;
                }
                dead.push(c);
            }
            found
        };
        drop(dead); // closed outside the lock
        found
    }

    fn put(&self, key: Arc<str>, io: U, generation: u64) {
        let mut dead = Vec::new();
        {
            let mut idle = self.lock();
            let list = idle.entry(key).or_default();
            let stale = list.iter().take_while(|c| c.since.elapsed() >= self.timeout).count();
            dead.extend(list.drain(..stale));
            if list.len() >= MAX_IDLE_PER_TARGET {
                dead.push(list.remove(0));
            }
            list.push(Idle {
                io,
                since: Instant::now(),
                generation,
            });
        }
        drop(dead);
    }

    /// Closes the connections idle for longer than the pool keeps them.
    pub fn sweep(&self) {
        let mut dead = Vec::new();
        {
            let mut idle = self.lock();
            for list in idle.values_mut() {
                let stale = list.iter().take_while(|c| c.since.elapsed() >= self.timeout).count();
                dead.extend(list.drain(..stale));
            }
            idle.retain(|_, list| !list.is_empty());
        }
        drop(dead);
    }

    /// Sweeps every so often until `shutdown`.
    pub async fn sweep_until(&self, shutdown: tokio_util::sync::CancellationToken) {
        let every = (self.timeout / 2).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => self.sweep(),
            }
        }
    }

    #[cfg(test)]
    fn idle(&self, key: &str) -> usize {
        self.lock().get(key).map_or(0, Vec::len)
    }
}

/// Whether an idle connection is still open: reading it would wait (no EOF, no stray bytes).
fn still_open<U: AsyncRead + Unpin>(io: &mut U) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(Pin::new(io).poll_read(&mut cx, &mut buf), Poll::Pending)
}

// === handing over ===

/// A connection whose first bytes were already read: they are read again first.
pub(crate) struct Prefixed<D> {
    prefix: Bytes,
    io: D,
}

impl<D> Prefixed<D> {
    pub fn new(io: D, prefix: Bytes) -> Self {
        Prefixed { prefix, io }
    }
}

impl<D: AsyncRead + Unpin> AsyncRead for Prefixed<D> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<D: AsyncWrite + Unpin> AsyncWrite for Prefixed<D> {
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

// === the relay ===

/// hyper's smallest h1 read buffer; the head limit is never below it (as on the hyper path).
const MIN_HEAD: usize = 8192;

/// Runs `f` until `deadline` (`None` when it passed first).
async fn until<F: Future>(mut sleep: Pin<&mut tokio::time::Sleep>, deadline: Instant, f: F) -> Option<F::Output> {
    if sleep.deadline() != deadline {
        sleep.as_mut().reset(deadline);
    }
    tokio::select! {
        biased;
        out = f => Some(out),
        _ = sleep => None,
    }
}

/// Reads more into `buf`, growing it geometrically from `first` to [`CHUNK`] at a time: a
/// connection holds only what its largest message needed.
async fn fill<R: AsyncRead + Unpin>(io: &mut R, buf: &mut BytesMut, first: usize) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(buf.capacity().clamp(first, CHUNK));
    }
    io.read_buf(buf).await
}

/// The first read buffer for request heads: most fit (an idle connection holds it).
const FIRST_HEAD: usize = 1024;
/// The first read buffer for responses: a whole TLS record, so a small response is read, and
/// written on, at once.
const FIRST_RESPONSE: usize = CHUNK;

/// Methods a request may be sent again for, when a reused connection closed without answering
/// (RFC 9110 §9.2.2), as nginx does.
fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE")
}

/// What happens to the downstream connection after a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    KeepAlive,
    /// Closed once the response is sent (the client asked: no reason; a limit or shutdown: it).
    Close(Option<Closed>),
}

/// How one request ended.
enum Exchange {
    /// Answered; the connection goes on as `After` says.
    Next(After),
    /// The connection ends here.
    End(Option<Closed>),
}

/// Relays HTTP/1.1 requests from `down` through `hop` until the connection ends, a limit closes
/// it, or a request needs the hyper path (then the connection is handed over, see the module).
pub(crate) async fn serve<D, H>(hop: &H, down: D, serving: &HttpServing) -> Relayed<D>
where
    D: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hop,
{
    let limits = &serving.limits;
    let max_head = limits.max_header_bytes.max(MIN_HEAD);
    let start = Instant::now();
    let age_limit = start + limits.max_age;
    let flight = age_limit + limits.grace;
    let ctx = Ctx {
        hop,
        serving,
        max_head,
        flight,
    };
    let mut conn = Conn {
        down,
        input: BytesMut::new(),
        bufs: Bufs::default(),
        held: None,
        sleep: Box::pin(tokio::time::sleep_until(age_limit)),
    };
    let mut requests: u64 = 0;
    let mut idle_since = start;

    let closed = 'conn: loop {
        // The next request head, under the header-read, idle and age limits.
        let mut head_since = (!conn.input.is_empty()).then(Instant::now);
        let plan = loop {
            if !conn.input.is_empty() {
                match request(hop, &conn.input, max_head, &mut conn.bufs.request) {
                    Step::Partial => {}
                    Step::Relay(plan) => break plan,
                    Step::HandOver => {
                        return conn.hand_over(hop);
                    }
                    Step::Answer { answer, len, close } => {
                        count(serving, answer.status.as_u16());
                        answer_bytes(&answer, close, &mut conn.bufs.request);
                        if until(conn.sleep.as_mut(), flight, conn.down.write_all(&conn.bufs.request))
                            .await
                            .is_none_or(|r| r.is_err())
                        {
                            break 'conn None;
                        }
                        if close {
                            let _ = until(conn.sleep.as_mut(), flight, conn.down.shutdown()).await;
                            break 'conn None;
                        }
                        conn.input.advance(len);
                        requests += 1;
                        idle_since = Instant::now();
                        continue 'conn;
                    }
                }
            }
            let (deadline, why) = match head_since {
                None if requests == 0 => (start + limits.header_read, Closed::HeaderTimeout),
                None => (idle_since + limits.idle, Closed::Idle),
                Some(t) => (t + limits.header_read, Closed::HeaderTimeout),
            };
            let (deadline, why) = if age_limit <= deadline {
                (age_limit, Closed::MaxAge)
            } else {
                (deadline, why)
            };
            if conn.sleep.deadline() != deadline {
                conn.sleep.as_mut().reset(deadline);
            }
            let waiting = conn.input.is_empty();
            let read = tokio::select! {
                biased;
                read = fill(&mut conn.down, &mut conn.input, FIRST_HEAD) => read,
                _ = conn.sleep.as_mut() => break 'conn Some(why),
                _ = serving.shutdown.cancelled(), if waiting => break 'conn Some(Closed::Shutdown),
            };
            match read {
                Ok(0) => {
                    // A clean close is answered with one (TLS: close_notify), as hyper does.
                    let deadline = Instant::now() + CLOSE_WAIT;
                    let _ = until(conn.sleep.as_mut(), deadline, conn.down.shutdown()).await;
                    break 'conn None;
                }
                Err(_) => break 'conn None,
                Ok(_) => {
                    head_since.get_or_insert_with(Instant::now);
                }
            }
        };

        // The body, whole (it is small: larger ones go the hyper way).
        let body = match plan.framing {
            Framing::Length(n) if n > MAX_BUFFERED_BODY as u64 => {
                return conn.hand_over(hop);
            }
            Framing::Length(n) => n as usize,
            Framing::UntilClose => 0,
            Framing::Chunked => {
                let (mut state, mut trailers, mut scanned) = (Chunked::START, 0, 0);
                loop {
                    match state.advance(&conn.input[plan.len + scanned..], &mut trailers) {
                        Ok(used) => scanned += used,
                        Err(BadChunk) => {
                            count(serving, 400);
                            let answer = Answer::new(StatusCode::BAD_REQUEST, "signet: malformed chunked request body");
                            answer_bytes(&answer, true, &mut conn.bufs.request);
                            let _ = until(conn.sleep.as_mut(), flight, conn.down.write_all(&conn.bufs.request)).await;
                            break 'conn None;
                        }
                    }
                    if state == Chunked::Done {
                        break scanned;
                    }
                    if conn.input.len() - plan.len > MAX_BUFFERED_BODY {
                        return conn.hand_over(hop);
                    }
                    if let Err(why) = conn.read_more(flight).await {
                        break 'conn why;
                    }
                }
            }
        };
        while conn.input.len() < plan.len + body {
            if let Err(why) = conn.read_more(flight).await {
                break 'conn why;
            }
        }
        conn.bufs
            .request
            .extend_from_slice(&conn.input[plan.len..plan.len + body]);

        let after = if plan.close {
            After::Close(None)
        } else if serving.shutdown.is_cancelled() {
            After::Close(Some(Closed::Shutdown))
        } else if Instant::now() >= age_limit {
            After::Close(Some(Closed::MaxAge))
        } else {
            After::KeepAlive
        };
        let exchange = exchange(&ctx, &plan, after, &mut conn).await;
        conn.input.advance(plan.len + body);
        requests += 1;
        idle_since = Instant::now();
        match exchange {
            Exchange::Next(After::KeepAlive) => {}
            Exchange::Next(After::Close(why)) => {
                let _ = until(conn.sleep.as_mut(), flight, conn.down.shutdown()).await;
                break 'conn why;
            }
            Exchange::End(why) => break 'conn why,
        }
    };
    if let Some(h) = conn.held.take() {
        hop.pool().put(h.key, h.io, h.generation);
    }
    Relayed::ended(closed)
}

/// The buffers of one relayed connection, reused from request to request.
#[derive(Default)]
struct Bufs {
    /// The request to send (head and body), or an answer.
    request: Vec<u8>,
    /// Bytes from upstream.
    upstream: BytesMut,
    /// The response head to send downstream.
    response: Vec<u8>,
}

/// The upstream connection a downstream connection holds between its requests.
struct Held<U> {
    key: Arc<str>,
    io: U,
    generation: u64,
}

/// One downstream connection being relayed: its I/O, what was read from it, its buffers, the
/// upstream connection it holds, and the one timer of its limits.
struct Conn<D, U> {
    down: D,
    /// Read from `down`, from the first byte of the current request on.
    input: BytesMut,
    bufs: Bufs,
    held: Option<Held<U>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<D: AsyncRead + Unpin, U> Conn<D, U> {
    /// Reads more of the request into `input` before `deadline`; the error says why the
    /// connection ends (it closed or failed: no reason; time ran out: its age).
    async fn read_more(&mut self, deadline: Instant) -> Result<(), Option<Closed>> {
        match until(
            self.sleep.as_mut(),
            deadline,
            fill(&mut self.down, &mut self.input, FIRST_HEAD),
        )
        .await
        {
            Some(Ok(n)) if n > 0 => Ok(()),
            Some(_) => Err(None),
            None => Err(Some(Closed::MaxAge)),
        }
    }
}

impl<D, U: AsyncRead + Unpin> Conn<D, U> {
    /// Gives the held upstream connection back to the pool and the downstream one, with the
    /// bytes read from it, to the hyper path.
    fn hand_over<H: Hop<Up = U>>(mut self, hop: &H) -> Relayed<D> {
        if let Some(h) = self.held.take() {
            hop.pool().put(h.key, h.io, h.generation);
        }
        Relayed {
            closed: None,
            handed_over: Some((self.down, self.input.freeze())),
        }
    }
}

fn count(serving: &HttpServing, status: u16) {
    if let Some(on_response) = &serving.on_response {
        on_response(status);
    }
}

/// What every exchange on a connection shares.
struct Ctx<'a, H> {
    hop: &'a H,
    serving: &'a HttpServing,
    max_head: usize,
    /// No request may run past this (the connection's maximum age, plus the grace).
    flight: Instant,
}

/// Sends one request (`plan`: its head rewritten and its body in `conn.bufs.request`) upstream, on the connection held, one from the pool or a new one, and its
/// response downstream.
async fn exchange<D, H>(ctx: &Ctx<'_, H>, plan: &Plan<H::Target>, after: After, conn: &mut Conn<D, H::Up>) -> Exchange
where
    D: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hop,
{
    let Ctx {
        hop,
        serving,
        max_head,
        flight,
    } = *ctx;
    let Conn {
        down,
        input,
        bufs,
        held,
        sleep,
    } = conn;
    let method = std::str::from_utf8(&input[plan.method.0..plan.method.1]).unwrap_or("?");
    let path = match std::str::from_utf8(&input[plan.path.0..plan.path.1]) {
        Ok("") => "/",
        Ok(path) => path,
        Err(_) => "?",
    };
    let generation = hop.generation();
    let key = &plan.routed.key;
    let mut pooled = match held.take() {
        Some(h) if h.key == *key && h.generation == generation => Some(h.io),
        Some(h) => {
            hop.pool().put(h.key, h.io, h.generation);
            None
        }
        None => None,
    };
    if pooled.is_none() {
        pooled = hop.pool().take(key, generation);
    }
    let close = after != After::KeepAlive;
    // Answers with `answer`, keeping the connection unless it is closing anyway.
    macro_rules! answer {
        ($answer:expr) => {{
            let answer: Answer = $answer;
            count(serving, answer.status.as_u16());
            answer_bytes(&answer, close, &mut bufs.response);
            return match until(sleep.as_mut(), flight, down.write_all(&bufs.response)).await {
                Some(Ok(())) => Exchange::Next(after),
                Some(Err(_)) => Exchange::End(None),
                None => Exchange::End(Some(Closed::MaxAge)),
            };
        }};
    }

    // Send, and read the response head; a reused connection found closed is replaced once.
    let (mut up, head) = loop {
        let reused = pooled.is_some();
        let mut up = match pooled.take() {
            Some(up) => up,
            // Boxed: the dial's state (a handshake's) would otherwise stay with every idle connection.
            None => match Box::pin(hop.dial(&plan.routed.target, method, path)).await {
                Ok(up) => up,
                Err(answer) => answer!(answer),
            },
        };
        let sent = match until(sleep.as_mut(), flight, up.write_all(&bufs.request)).await {
            Some(Ok(())) => until(sleep.as_mut(), flight, up.flush()).await,
            other => other,
        };
        match sent {
            Some(Ok(())) => {}
            None => return Exchange::End(Some(Closed::MaxAge)),
            Some(Err(_)) if reused => continue,
            Some(Err(e)) => answer!(hop.failed(&plan.routed.target, method, path, &e)),
        }
        bufs.upstream.clear();
        let head = loop {
            let read = until(
                sleep.as_mut(),
                flight,
                fill(&mut up, &mut bufs.upstream, FIRST_RESPONSE),
            )
            .await;
            let error = match read {
                None => return Exchange::End(Some(Closed::MaxAge)),
                Some(Ok(0)) => io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed before a response"),
                Some(Ok(_)) => match response(&bufs.upstream, max_head, plan.head, close, &mut bufs.response) {
                    ResponseHead::Partial => continue,
                    ResponseHead::Bad(why) => answer!(Answer::new(
                        StatusCode::BAD_GATEWAY,
                        format!("signet: {}: {why}", plan.routed.key)
                    )),
                    ResponseHead::Done { len, status, .. } if (100..200).contains(&status) => {
                        // 103 Early Hints and friends: passed on; the final response follows.
                        if until(sleep.as_mut(), flight, down.write_all(&bufs.response))
                            .await
                            .is_none_or(|r| r.is_err())
                        {
                            return Exchange::End(None);
                        }
                        bufs.upstream.advance(len);
                        if bufs.upstream.is_empty() {
                            continue;
                        }
                        match response(&bufs.upstream, max_head, plan.head, close, &mut bufs.response) {
                            ResponseHead::Partial => continue,
                            done => break done,
                        }
                    }
                    done => break done,
                },
                Some(Err(e)) => e,
            };
            if reused && bufs.upstream.is_empty() && idempotent(method) {
                break ResponseHead::Partial; // send again on a fresh connection
            }
            answer!(hop.failed(&plan.routed.target, method, path, &error));
        };
        match head {
            ResponseHead::Partial => continue,
            head => break (up, head),
        }
    };
    let ResponseHead::Done {
        len,
        status,
        framing,
        reusable,
    } = head
    else {
        return Exchange::End(None);
    };
    count(serving, status);

    // The head and the body bytes already here, in one write when they are small.
    let mut state = Chunked::START;
    let mut trailers = 0;
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let here = &bufs.upstream[len..];
    let (take, mut done) = body_part(framing, &mut state, &mut trailers, &mut left, here);
    let Ok(take) = take else {
        return Exchange::End(None);
    };
    let stray = here.len() > take;
    if take <= CHUNK {
        bufs.response.extend_from_slice(&here[..take]);
        if until(sleep.as_mut(), flight, down.write_all(&bufs.response))
            .await
            .is_none_or(|r| r.is_err())
        {
            return Exchange::End(None);
        }
    } else {
        let (head, body) = (&bufs.response, &here[..take]);
        for part in [&head[..], body] {
            if until(sleep.as_mut(), flight, down.write_all(part))
                .await
                .is_none_or(|r| r.is_err())
            {
                return Exchange::End(None);
            }
        }
    }
    // The rest of the body, as it comes.
    while !done {
        bufs.upstream.clear();
        match until(
            sleep.as_mut(),
            flight,
            fill(&mut up, &mut bufs.upstream, FIRST_RESPONSE),
        )
        .await
        {
            None => return Exchange::End(Some(Closed::MaxAge)),
            Some(Ok(0)) if framing == Framing::UntilClose => break,
            Some(Ok(0)) | Some(Err(_)) => return Exchange::End(None),
            Some(Ok(_)) => {}
        }
        let (take, finished) = body_part(framing, &mut state, &mut trailers, &mut left, &bufs.upstream);
        let Ok(take) = take else {
            return Exchange::End(None);
        };
        done = finished;
        if until(sleep.as_mut(), flight, down.write_all(&bufs.upstream[..take]))
            .await
            .is_none_or(|r| r.is_err())
        {
            return Exchange::End(None);
        }
    }
    if until(sleep.as_mut(), flight, down.flush())
        .await
        .is_none_or(|r| r.is_err())
    {
        return Exchange::End(None);
    }
    if reusable && !stray {
        *held = Some(Held {
            key: key.clone(),
            io: up,
            generation,
        });
    }
    match (framing, after) {
        // The end of the body was the end of the connection: the client's must end too.
        (Framing::UntilClose, After::KeepAlive) => Exchange::Next(After::Close(None)),
        _ => Exchange::Next(after),
    }
}

/// How many of `bytes` belong to the body, and whether the body is complete with them.
fn body_part(
    framing: Framing,
    state: &mut Chunked,
    trailers: &mut usize,
    left: &mut u64,
    bytes: &[u8],
) -> (Result<usize, BadChunk>, bool) {
    match framing {
        Framing::Length(_) => {
            let take = (*left).min(bytes.len() as u64);
            *left -= take;
            (Ok(take as usize), *left == 0)
        }
        Framing::Chunked => match state.advance(bytes, trailers) {
            Ok(take) => (Ok(take), *state == Chunked::Done),
            Err(e) => (Err(e), true),
        },
        Framing::UntilClose => (Ok(bytes.len()), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs chunked framing over `bytes` fed in pieces of `step`; returns (consumed, done).
    fn chunked(bytes: &[u8], step: usize) -> Result<(usize, bool), BadChunk> {
        let (mut state, mut trailers, mut used) = (Chunked::START, 0, 0);
        for piece in bytes.chunks(step) {
            let n = state.advance(piece, &mut trailers)?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((used, state == Chunked::Done))
    }

    #[test]
    fn chunked_framing_finds_the_end_of_the_message_in_any_split() {
        let body = b"5\r\nhello\r\n1a;ext=\"x\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\ngrpc-status: 0\r\nx: y\r\n\r\n";
        for step in [1, 2, 3, 7, body.len()] {
            assert_eq!(chunked(body, step), Ok((body.len(), true)), "step {step}");
        }
        // The next message's bytes are not the body's.
        let mut two = body.to_vec();
        two.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(chunked(&two, two.len()), Ok((body.len(), true)));
        assert_eq!(chunked(b"0\r\n\r\n", 1), Ok((5, true)));
        assert_eq!(chunked(b"A\r\n0123", 4), Ok((7, false)), "a body still coming");
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
            b"0\r\nx\n",
        ] {
            assert_eq!(chunked(bad, 1), Err(BadChunk), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut huge_trailers = b"0\r\n".to_vec();
        huge_trailers.extend(std::iter::repeat_n(b'a', MAX_TRAILERS + 1));
        assert_eq!(chunked(&huge_trailers, 4096), Err(BadChunk));
    }

    fn headers<'a>(list: &'a [(&'a str, &'a str)]) -> Vec<httparse::Header<'a>> {
        list.iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_contradictions() {
        let f = |list: &[(&str, &str)], request| framing(&headers(list), request);
        assert_eq!(f(&[], true), Some(Framing::Length(0)));
        assert_eq!(f(&[], false), Some(Framing::UntilClose));
        assert_eq!(f(&[("Content-Length", "12")], true), Some(Framing::Length(12)));
        assert_eq!(
            f(&[("content-length", "3"), ("Content-Length", "3")], true),
            Some(Framing::Length(3))
        );
        assert_eq!(f(&[("content-length", "3"), ("content-length", "4")], true), None);
        assert_eq!(f(&[("content-length", "-1")], true), None);
        assert_eq!(f(&[("content-length", "+1")], true), None);
        assert_eq!(f(&[("transfer-encoding", "chunked")], true), Some(Framing::Chunked));
        assert_eq!(
            f(&[("transfer-encoding", "chunked"), ("content-length", "3")], true),
            None
        );
        assert_eq!(f(&[("transfer-encoding", "gzip, chunked")], true), None);
        assert_eq!(
            f(&[("transfer-encoding", "gzip, chunked")], false),
            Some(Framing::Chunked)
        );
        assert_eq!(f(&[("transfer-encoding", "gzip")], false), Some(Framing::UntilClose));
        assert_eq!(f(&[("transfer-encoding", "gzip")], true), None);
    }

    /// Routes everything to one key, setting `Host` and an XFCC value as an inbound does.
    struct Fixed {
        pool: Pool<tokio::io::DuplexStream>,
    }

    impl Hop for Fixed {
        type Target = ();
        type Up = tokio::io::DuplexStream;
        fn route(&self, req: &Req<'_>) -> Result<Routed<()>, Answer> {
            if req.host == Some(b"nowhere") {
                return Err(Answer::new(StatusCode::BAD_GATEWAY, "signet: no route to nowhere"));
            }
            Ok(Routed {
                key: Arc::from("app"),
                target: (),
                host: (req.host.is_none() && req.authority.is_none()).then(|| HeaderValue::from_static("app:80")),
                xfcc: Some(HeaderValue::from_static("By=me")),
            })
        }
        async fn dial(&self, _: &(), _: &str, _: &str) -> Result<Self::Up, Answer> {
            Err(Answer::new(StatusCode::SERVICE_UNAVAILABLE, "no"))
        }
        fn failed(&self, _: &(), _: &str, _: &str, _: &io::Error) -> Answer {
            Answer::new(StatusCode::SERVICE_UNAVAILABLE, "failed")
        }
        fn pool(&self) -> &Pool<Self::Up> {
            &self.pool
        }
    }

    fn fixed() -> Fixed {
        Fixed {
            pool: Pool::new(Duration::from_secs(60)),
        }
    }

    fn plan_of(head: &str) -> (Step<()>, String) {
        let mut out = Vec::new();
        let step = request(&fixed(), head.as_bytes(), 8192, &mut out);
        (step, String::from_utf8(out).unwrap())
    }

    #[test]
    fn request_heads_are_rewritten_without_hop_by_hop_headers() {
        let (step, out) = plan_of(
            "GET /get?a=1 HTTP/1.1\r\nHost: httpbin.foo:8000\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n\
             Keep-Alive: 5\r\nProxy-Authorization: basic x\r\nTE: trailers\r\nx-forwarded-client-cert: By=forged\r\n\
             Accept: */*\r\nContent-Length: 2\r\n\r\nhi",
        );
        let Step::Relay(plan) = step else { panic!("not relayed") };
        assert_eq!(
            out,
            "GET /get?a=1 HTTP/1.1\r\nhost: httpbin.foo:8000\r\nte: trailers\r\nAccept: */*\r\nContent-Length: 2\r\n\
             x-forwarded-client-cert: By=me\r\n\r\n"
        );
        assert_eq!(plan.framing, Framing::Length(2));
        assert!(!plan.close);

        // A proxy's absolute form becomes the origin form; the authority is the Host when none.
        let (step, out) = plan_of("POST http://web.bar:80 HTTP/1.1\r\nConnection: close\r\n\r\n");
        let Step::Relay(plan) = step else { panic!("not relayed") };
        assert!(out.starts_with("POST / HTTP/1.1\r\nhost: web.bar:80\r\n"), "{out}");
        assert!(plan.close);
        let (_, out) = plan_of("GET / HTTP/1.1\r\n\r\n");
        assert!(out.starts_with("GET / HTTP/1.1\r\nhost: app:80\r\n"), "{out}");
    }

    #[test]
    fn what_the_relay_does_not_do_is_handed_over_and_the_rest_answered() {
        for head in [
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            assert!(matches!(plan_of(head).0, Step::HandOver), "{head:?}");
        }
        assert!(matches!(plan_of("GET / HTTP/1.1\r\nHost: a\r\n").0, Step::Partial));
        let Step::Answer { answer, close, .. } = plan_of("GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n").0 else {
            panic!("not answered")
        };
        assert_eq!((answer.status, close), (StatusCode::BAD_GATEWAY, false));
        let Step::Answer { close, .. } = plan_of("POST / HTTP/1.1\r\nHost: nowhere\r\nContent-Length: 3\r\n\r\nabc").0
        else {
            panic!("not answered")
        };
        assert!(close, "a body left unread ends the connection");
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
        let Step::Answer { answer, close, .. } = plan_of(&big).0 else {
            panic!("not answered")
        };
        assert_eq!(
            (answer.status, close),
            (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, true)
        );
    }

    #[test]
    fn response_heads_say_how_their_bodies_end() {
        let mut out = Vec::new();
        let head = "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";
        let ResponseHead::Done {
            len,
            status,
            framing,
            reusable,
        } = response(head.as_bytes(), 8192, false, true, &mut out)
        else {
            panic!("no head")
        };
        assert_eq!(
            (len, status, framing, reusable),
            (head.len() - 5, 200, Framing::Length(5), true)
        );
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\nconnection: close\r\n\r\n"
        );
        let mut done = |head: &str, head_request| match response(head.as_bytes(), 8192, head_request, false, &mut out) {
            ResponseHead::Done { framing, reusable, .. } => Some((framing, reusable)),
            _ => None,
        };
        assert_eq!(
            done("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Some((Framing::Length(0), true))
        );
        assert_eq!(
            done("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", false),
            Some((Framing::Length(0), true))
        );
        assert_eq!(
            done("HTTP/1.1 200 OK\r\n\r\n", false),
            Some((Framing::UntilClose, false))
        );
        assert_eq!(
            done(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Some((Framing::Length(1), false))
        );
        assert_eq!(
            done("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Some((Framing::Length(1), false))
        );
        assert_eq!(done("HTTP/1.1 101 Switching Protocols\r\n\r\n", false), None);
        assert_eq!(
            done(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            None
        );
    }

    #[tokio::test]
    async fn the_pool_gives_back_only_fresh_open_connections_of_this_generation() {
        let pool = Pool::new(Duration::from_secs(60));
        let (a, _a_peer) = tokio::io::duplex(64);
        pool.put(Arc::from("app"), a, 1);
        assert!(pool.take("app", 2).is_none(), "an older generation is dropped");
        assert_eq!(pool.idle("app"), 0);
        let (b, b_peer) = tokio::io::duplex(64);
        pool.put(Arc::from("app"), b, 1);
        drop(b_peer);
        assert!(pool.take("app", 1).is_none(), "a connection its peer closed is dropped");
        let (c, _c_peer) = tokio::io::duplex(64);
        pool.put(Arc::from("app"), c, 1);
        assert!(pool.take("other", 1).is_none());
        assert!(pool.take("app", 1).is_some());

        let short = Pool::new(Duration::from_millis(20));
        let (d, _d_peer) = tokio::io::duplex(64);
        short.put(Arc::from("app"), d, 0);
        tokio::time::sleep(Duration::from_millis(40)).await;
        short.sweep();
        assert_eq!(short.idle("app"), 0, "stale connections are swept");
    }

    /// A whole exchange over in-memory pipes: two requests on one connection, one upstream
    /// connection for both, a chunked response relayed byte for byte.
    #[test]
    fn an_idle_connection_holds_little() {
        let hop = fixed();
        let (down, _client) = tokio::io::duplex(64);
        let serving = HttpServing::new(crate::serve::HttpLimits::default(), Default::default());
        let future = serve(&hop, down, &serving);
        let size = std::mem::size_of_val(&future);
        eprintln!("the relay's future: {size} bytes");
        assert!(size < 4096, "{size}");
    }

    #[tokio::test]
    async fn kept_alive_requests_share_one_upstream_connection() {
        let hop = fixed();
        let (up, mut app) = tokio::io::duplex(1 << 16);
        hop.pool.put(Arc::from("app"), up, 0);
        let (down, mut client) = tokio::io::duplex(1 << 16);
        let serving = HttpServing::new(crate::serve::HttpLimits::default(), Default::default());
        let relay = tokio::spawn(async move {
            let hop = hop;
            let relayed = serve(&hop, down, &serving).await;
            (relayed.closed, relayed.handed_over.is_some(), hop.pool.idle("app"))
        });
        let app_side = tokio::spawn(async move {
            let mut seen = Vec::new();
            for reply in [
                &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..],
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            ] {
                let mut buf = vec![0u8; 4096];
                let n = app.read(&mut buf).await.unwrap();
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                app.write_all(reply).await.unwrap();
            }
            seen
        });
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\
             HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        let seen = app_side.await.unwrap();
        assert_eq!(
            seen[0],
            "GET /a HTTP/1.1\r\nhost: h\r\nx-forwarded-client-cert: By=me\r\n\r\n"
        );
        assert!(seen[1].starts_with("GET /b HTTP/1.1\r\n"), "{}", seen[1]);
        let (closed, handed_over, idle) = relay.await.unwrap();
        assert_eq!(
            (closed, handed_over, idle),
            (None, false, 1),
            "the upstream went back to the pool"
        );
    }
}
