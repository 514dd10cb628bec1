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

use crate::headers::{HOP_BY_HOP, framing_named_by_connection, is_xfcc, only_h2c, tokens};
use crate::serve::{Closed, HttpServing, Pace};

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
/// The most informational (1xx) responses passed on before a request's final one.
const MAX_INFORMATIONAL: usize = 16;
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
/// ends, by RFC 9112 §7.1's grammar and nothing looser (see [`crate::headers`]): a size is hex
/// digits, then optional whitespace before `;` extensions, then CRLF. Trailers pass too; their
/// size is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunked {
    Size {
        n: u64,
        digits: u8,
    },
    /// Whitespace after the size, which only a `;` may follow.
    SizeWs {
        n: u64,
    },
    /// A chunk extension (`;name=value`), skipped up to its CRLF; `len` bytes of it so far.
    Ext {
        n: u64,
        len: u16,
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
/// The most bytes of extensions on one chunk-size line.
const MAX_CHUNK_EXT: u16 = 4096;

#[derive(Debug, PartialEq, Eq)]
struct BadChunk;

/// What [`Chunked::advance`] has seen of one message across calls.
#[derive(Clone, Copy, Debug, Default)]
struct ChunkProgress {
    /// Bytes of the body consumed so far.
    seen: usize,
    /// Bytes of trailers so far.
    trailers: usize,
    /// Where the trailer section starts in the body, once the last chunk was read.
    trailer_start: Option<usize>,
}

impl Chunked {
    const START: Chunked = Chunked::Size { n: 0, digits: 0 };

    /// Consumes the message's bytes from the front of `bytes`; returns how many belong to it
    /// (all of them until the message ends).
    fn advance(&mut self, bytes: &[u8], progress: &mut ChunkProgress) -> Result<usize, BadChunk> {
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
                (Chunked::Done, _) => break,
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
                (Chunked::Size { n, .. } | Chunked::SizeWs { n }, b' ' | b'\t') => Chunked::SizeWs { n },
                (Chunked::Size { n, .. } | Chunked::SizeWs { n }, b';') => Chunked::Ext { n, len: 0 },
                (Chunked::Ext { n, .. }, b'\r') => Chunked::SizeLf { n },
                (Chunked::Ext { n, len }, _) if (b == b'\t' || !b.is_ascii_control()) && len < MAX_CHUNK_EXT => {
                    Chunked::Ext { n, len: len + 1 }
                }
                (Chunked::SizeLf { n: 0 }, b'\n') => {
                    progress.trailer_start = Some(progress.seen + i + 1);
                    Chunked::TrailerStart
                }
                (Chunked::SizeLf { n }, b'\n') => Chunked::Data(n),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataLf, b'\n') => Chunked::START,
                (Chunked::TrailerStart, b'\r') => Chunked::EndLf,
                (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
                (Chunked::TrailerStart | Chunked::Trailer, b'\n') => return Err(BadChunk),
                (Chunked::TrailerStart | Chunked::Trailer, _) => {
                    progress.trailers += 1;
                    if progress.trailers > MAX_TRAILERS {
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
        progress.seen += i;
        Ok(i)
    }
}

/// Why a request's trailers are refused: a field no trailer may carry (RFC 9110 §6.5.1:
/// framing, routing) or an identity only the inbound may write; `None` when they may pass.
/// `trailers` is the trailer section, up to and including its empty last line.
fn refused_trailer(trailers: &[u8]) -> Option<String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(trailers, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => fields
            .iter()
            .find(|f| {
                is_xfcc(f.name.as_bytes())
                    || [
                        "content-length",
                        "transfer-encoding",
                        "host",
                        "te",
                        "trailer",
                        "connection",
                    ]
                    .iter()
                    .any(|n| is(f.name, n))
            })
            .map(|f| format!("signet: request trailers may not carry {}", f.name.to_ascii_lowercase())),
        _ => Some("signet: malformed request trailers".into()),
    }
}

// === heads ===

/// Whether the relay drops `name` from every message it passes: hop-by-hop headers and those
/// it writes itself (`host`, `x-forwarded-client-cert` in any spelling), by the rules of
/// [`crate::headers`]. Framing headers are kept: bodies pass unchanged.
fn dropped(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|n| n.eq_ignore_ascii_case(name))
        || is(name, "upgrade")
        || is(name, "host")
        || is_xfcc(name.as_bytes())
}

fn is(name: &str, wanted: &str) -> bool {
    name.eq_ignore_ascii_case(wanted)
}

/// The values of a message's `Connection` headers.
fn connection<'a>(headers: &'a [httparse::Header<'a>]) -> impl Iterator<Item = &'a [u8]> + Clone {
    headers.iter().filter(|h| is(h.name, "connection")).map(|h| h.value)
}

/// Writes the headers a proxy passes on: hop-by-hop ones, those the `Connection` header lists
/// and those the relay sets dropped; `TE` only as `trailers` (gRPC servers require it; the one
/// value HTTP/2 allows). The caller has refused messages whose `Connection` names a framing
/// header ([`framing_named_by_connection`]).
fn write_headers(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    let listed = |name: &str| {
        connection(headers)
            .flat_map(tokens)
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    };
    let has_listed = connection(headers)
        .flat_map(tokens)
        .any(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"));
    for h in headers {
        if is(h.name, "te") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"trailers") {
                out.extend_from_slice(b"te: trailers\r\n");
            }
            continue;
        }
        if dropped(h.name) || (has_listed && listed(h.name)) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// The body framing a message's headers declare; when they contradict each other or are
/// invalid, what is wrong (for the 502 of a response; requests go to the hyper path, which
/// answers 400).
fn framing(headers: &[httparse::Header<'_>], request: bool) -> Result<Framing, &'static str> {
    let mut length: Option<u64> = None;
    let mut te: Option<&[u8]> = None;
    for h in headers {
        if is(h.name, "content-length") {
            let s = h.value.trim_ascii();
            if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
                return Err("an invalid Content-Length");
            }
            let n: u64 = std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("a Content-Length too large to be true")?;
            if length.is_some_and(|l| l != n) {
                return Err("two different Content-Length values");
            }
            length = Some(n);
        } else if is(h.name, "transfer-encoding") {
            if te.is_some() {
                return Err("more than one Transfer-Encoding header");
            }
            te = Some(h.value);
        }
    }
    match (te, length) {
        (Some(_), Some(_)) => Err("both Content-Length and Transfer-Encoding"),
        (Some(te), None) => {
            let last = tokens(te).last().ok_or("an empty Transfer-Encoding")?;
            if last.eq_ignore_ascii_case(b"chunked") {
                // A request's coding must be chunked alone; a response may layer codings under it.
                if request && tokens(te).count() != 1 {
                    Err("a Transfer-Encoding other than chunked alone")
                } else {
                    Ok(Framing::Chunked)
                }
            } else if request {
                Err("a Transfer-Encoding that does not end in chunked")
            } else {
                Ok(Framing::UntilClose)
            }
        }
        (None, Some(n)) => Ok(Framing::Length(n)),
        (None, None) => Ok(if request {
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
    if let Some(name) = framing_named_by_connection(connection(headers)) {
        return Step::Answer {
            answer: Answer::new(StatusCode::BAD_REQUEST, crate::headers::framing_refusal(&name)),
            len: buf.len(),
            close: true,
        };
    }
    let Ok(framing) = framing(headers, true) else {
        return Step::HandOver;
    };
    let close = connection(headers)
        .flat_map(tokens)
        .any(|t| t.eq_ignore_ascii_case(b"close"));
    for h in headers.iter() {
        // An upgrade to h2c is not passed on (crate::headers): the request is served as is.
        if (is(h.name, "upgrade") && !only_h2c(h.value)) || is(h.name, "expect") {
            return Step::HandOver;
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
    if status < 100 {
        // httparse reads three digits: `000` to `099` would be written again as one or two.
        return ResponseHead::Bad(format!("its response has status {status:03}, which is not a status"));
    }
    let headers = resp.headers;
    let informational = (100..200).contains(&status);
    if let Some(name) = framing_named_by_connection(connection(headers)) {
        return ResponseHead::Bad(format!(
            "its response's Connection header names {name}, which frames the response and cannot be removed on the way"
        ));
    }
    let framing = if head_request || informational || status == 204 || status == 304 {
        Ok(Framing::Length(0))
    } else {
        framing(headers, false)
    };
    let framing = match framing {
        Ok(framing) => framing,
        Err(why) => return ResponseHead::Bad(format!("its response has {why}")),
    };
    let upstream_close = version == 0
        || connection(headers)
            .flat_map(tokens)
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
/// current generation, and clean (nothing to read, no EOF: [`clean`]); the sweep closes those
/// that became readable or closed while idle.
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
                if c.generation == generation && c.since.elapsed() < self.timeout && clean(&mut c.io) {
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

    fn put(&self, key: Arc<str>, mut io: U, generation: u64) {
        if !clean(&mut io) {
            return;
        }
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

    /// Closes the connections idle for longer than the pool keeps them, and those that became
    /// readable or closed while idle.
    pub fn sweep(&self) {
        let mut dead = Vec::new();
        {
            let mut idle = self.lock();
            for list in idle.values_mut() {
                let mut kept = Vec::with_capacity(list.len());
                for mut c in list.drain(..) {
                    if c.since.elapsed() < self.timeout && clean(&mut c.io) {
                        kept.push(c);
                    } else {
                        dead.push(c);
                    }
                }
                *list = kept;
            }
            idle.retain(|_, list| !list.is_empty());
        }
        drop(dead);
    }

    /// Sweeps every so often until `shutdown`.
    pub async fn sweep_until(&self, shutdown: tokio_util::sync::CancellationToken) {
        let every = (self.timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
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

/// Whether an idle connection can carry another request: reading it would wait. Stray bytes
/// (an answer to nothing, a body after a response that had none) or its end mean it cannot,
/// and it is closed; the byte read to find out goes with it.
fn clean<U: AsyncRead + Unpin>(io: &mut U) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    matches!(Pin::new(io).poll_read(&mut cx, &mut buf), Poll::Pending)
}

/// Resolves when the upstream connection a downstream one holds between its requests becomes
/// readable or closes: it is watched while idle, as hyper's pool and nginx watch theirs, and
/// then dropped ([`clean`]).
fn spoiled<U: AsyncRead + Unpin>(held: &mut Option<Held<U>>) -> impl Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        let Some(h) = held.as_mut() else {
            return Poll::Pending;
        };
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match Pin::new(&mut h.io).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(()),
        }
    })
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
                _ = spoiled(&mut conn.held), if conn.held.is_some() => {
                    conn.held = None;
                    continue;
                }
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

        // The body, whole (it is small: larger ones go the hyper way), no slower than the
        // body rate allows.
        let mut pace = Pace::new(limits.body_rate);
        let body: Result<usize, Answer> = 'body: {
            let body = match plan.framing {
                Framing::Length(n) if n > MAX_BUFFERED_BODY as u64 => {
                    return conn.hand_over(hop);
                }
                Framing::Length(n) => n as usize,
                Framing::UntilClose => 0,
                Framing::Chunked => {
                    let (mut state, mut progress) = (Chunked::START, ChunkProgress::default());
                    loop {
                        if state
                            .advance(&conn.input[plan.len + progress.seen..], &mut progress)
                            .is_err()
                        {
                            break 'body Err(Answer::new(
                                StatusCode::BAD_REQUEST,
                                "signet: malformed chunked request body",
                            ));
                        }
                        if state == Chunked::Done {
                            break;
                        }
                        if conn.input.len() - plan.len > MAX_BUFFERED_BODY {
                            return conn.hand_over(hop);
                        }
                        match conn.read_paced(&mut pace, flight).await {
                            Ok(()) => {}
                            Err(Some(Closed::BodyTimeout)) => {
                                break 'body Err(Answer::new(StatusCode::REQUEST_TIMEOUT, limits.body_rate.refusal()));
                            }
                            Err(why) => break 'conn why,
                        }
                    }
                    let body = progress.seen;
                    if let Some(start) = progress.trailer_start
                        && let Some(why) = refused_trailer(&conn.input[plan.len + start..plan.len + body])
                    {
                        break 'body Err(Answer::new(StatusCode::BAD_REQUEST, why));
                    }
                    body
                }
            };
            while conn.input.len() < plan.len + body {
                match conn.read_paced(&mut pace, flight).await {
                    Ok(()) => {}
                    Err(Some(Closed::BodyTimeout)) => {
                        break 'body Err(Answer::new(StatusCode::REQUEST_TIMEOUT, limits.body_rate.refusal()));
                    }
                    Err(why) => break 'conn why,
                }
            }
            Ok(body)
        };
        let body = match body {
            Ok(body) => body,
            Err(answer) => {
                let status = answer.status;
                count(serving, status.as_u16());
                answer_bytes(&answer, true, &mut conn.bufs.request);
                let _ = until(conn.sleep.as_mut(), flight, conn.down.write_all(&conn.bufs.request)).await;
                break 'conn (status == StatusCode::REQUEST_TIMEOUT).then_some(Closed::BodyTimeout);
            }
        };
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
    /// Reads more of a request body into `input`, before `pace` or `flight` runs out: the error
    /// says why the connection ends (closed or failed: no reason; too slow: the body rate; time
    /// ran out: its age).
    async fn read_paced(&mut self, pace: &mut Pace, flight: Instant) -> Result<(), Option<Closed>> {
        let deadline = pace.deadline.min(flight);
        match until(
            self.sleep.as_mut(),
            deadline,
            fill(&mut self.down, &mut self.input, FIRST_HEAD),
        )
        .await
        {
            Some(Ok(n)) if n > 0 => {
                pace.arrived(n);
                Ok(())
            }
            Some(_) => Err(None),
            None if deadline < flight => Err(Some(Closed::BodyTimeout)),
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
        Some(mut h) if h.key == *key && h.generation == generation => clean(&mut h.io).then_some(h.io),
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
        let mut informational = 0;
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
                Some(Ok(_)) => {
                    // Every complete head here: 1xx ones (100 Continue, 103 Early Hints) are passed
                    // on, however many came in this read, until the final one.
                    let final_head = loop {
                        match response(&bufs.upstream, max_head, plan.head, close, &mut bufs.response) {
                            ResponseHead::Partial => break None,
                            ResponseHead::Bad(why) => answer!(Answer::new(
                                StatusCode::BAD_GATEWAY,
                                format!("signet: {}: {why}", plan.routed.key)
                            )),
                            ResponseHead::Done { len, status, .. } if (100..200).contains(&status) => {
                                informational += 1;
                                if informational > MAX_INFORMATIONAL {
                                    answer!(Answer::new(
                                        StatusCode::BAD_GATEWAY,
                                        format!(
                                            "signet: {}: it sent more than {MAX_INFORMATIONAL} informational (1xx) responses",
                                            plan.routed.key
                                        )
                                    ));
                                }
                                if until(sleep.as_mut(), flight, down.write_all(&bufs.response))
                                    .await
                                    .is_none_or(|r| r.is_err())
                                {
                                    return Exchange::End(None);
                                }
                                bufs.upstream.advance(len);
                            }
                            done => break Some(done),
                        }
                    };
                    match final_head {
                        Some(done) => break done,
                        None => continue,
                    }
                }
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
    let mut progress = ChunkProgress::default();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let here = &bufs.upstream[len..];
    let (take, mut done) = body_part(framing, &mut state, &mut progress, &mut left, here);
    let Ok(take) = take else {
        return Exchange::End(None);
    };
    let mut stray = here.len() > take;
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
    // The rest of the body, as it comes; a body that stalls (nothing read, or nothing taken by
    // the client) for the idle timeout ends the exchange.
    let stalled = || (Instant::now() + serving.limits.idle).min(flight);
    let out_of_time = |deadline: Instant| {
        Exchange::End(Some(if deadline < flight {
            Closed::BodyTimeout
        } else {
            Closed::MaxAge
        }))
    };
    while !done {
        bufs.upstream.clear();
        let deadline = stalled();
        match until(
            sleep.as_mut(),
            deadline,
            fill(&mut up, &mut bufs.upstream, FIRST_RESPONSE),
        )
        .await
        {
            None => return out_of_time(deadline),
            Some(Ok(0)) if framing == Framing::UntilClose => break,
            Some(Ok(0)) | Some(Err(_)) => return Exchange::End(None),
            Some(Ok(_)) => {}
        }
        let (take, finished) = body_part(framing, &mut state, &mut progress, &mut left, &bufs.upstream);
        let Ok(take) = take else {
            return Exchange::End(None);
        };
        done = finished;
        // Bytes beyond the body: the connection is not reused (they are no one's response).
        stray |= take < bufs.upstream.len();
        let deadline = stalled();
        match until(sleep.as_mut(), deadline, down.write_all(&bufs.upstream[..take])).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return Exchange::End(None),
            None => return out_of_time(deadline),
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
    progress: &mut ChunkProgress,
    left: &mut u64,
    bytes: &[u8],
) -> (Result<usize, BadChunk>, bool) {
    match framing {
        Framing::Length(_) => {
            let take = (*left).min(bytes.len() as u64);
            *left -= take;
            (Ok(take as usize), *left == 0)
        }
        Framing::Chunked => match state.advance(bytes, progress) {
            Ok(take) => (Ok(take), *state == Chunked::Done),
            Err(e) => (Err(e), true),
        },
        Framing::UntilClose => (Ok(bytes.len()), false),
    }
}

/// Entry points for the fuzz targets (`fuzz/fuzz_targets/relay_*.rs`): the relay's request and
/// response parsing over whole streams of bytes, with the property that makes smuggling
/// impossible checked on every message: what the relay sends is framed exactly as what it read
/// (the same body, the same end), and says nothing a next hop could read otherwise (no
/// `Connection`, one framing).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Routes everything to one key, setting `Host` and an XFCC value as an inbound does (and
    /// answers `Host: nowhere` 502); dials nothing. The unit tests' hop too.
    pub(super) struct Fixed {
        pub(super) pool: Pool<tokio::io::DuplexStream>,
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

    pub(super) fn fixed() -> Fixed {
        Fixed {
            pool: Pool::new(Duration::from_secs(60)),
        }
    }

    /// Where the body that follows a head of `framing` ends in `rest` (`None`: not yet, or bad).
    fn body_end(framing: Framing, rest: &[u8]) -> Option<usize> {
        match framing {
            Framing::Length(n) => usize::try_from(n).ok().filter(|&n| n <= rest.len()),
            Framing::UntilClose => Some(rest.len()),
            Framing::Chunked => {
                let (mut state, mut progress) = (Chunked::START, ChunkProgress::default());
                let used = state.advance(rest, &mut progress).ok()?;
                (state == Chunked::Done).then_some(used)
            }
        }
    }

    /// Reads `sent` (a rewritten head) again: it must parse whole, carry no `Connection` or XFCC
    /// but the one written, and declare `framing`.
    fn check_sent(sent: &[u8], framing: Framing, request: bool) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 4];
        let (len, parsed) = if request {
            let mut req = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = req.parse(sent) else {
                panic!(
                    "the relay sent a request head that does not parse: {:?}",
                    String::from_utf8_lossy(sent)
                )
            };
            (len, req.headers.to_vec())
        } else {
            let mut resp = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(len)) = resp.parse(sent) else {
                panic!(
                    "the relay sent a response head that does not parse: {:?}",
                    String::from_utf8_lossy(sent)
                )
            };
            (len, resp.headers.to_vec())
        };
        assert_eq!(len, sent.len(), "the sent head is one head");
        assert!(
            !parsed
                .iter()
                .any(|h| is(h.name, "connection") && !h.value.eq_ignore_ascii_case(b"close")),
            "a Connection header was passed on"
        );
        if request {
            assert!(
                parsed.iter().filter(|h| is_xfcc(h.name.as_bytes())).count() == 1,
                "one XFCC, ours"
            );
            let again = framing_of(&parsed, true);
            assert_eq!(again, Ok(framing), "the sent request is framed as the one read");
        } else if framing != Framing::Length(0) {
            assert_eq!(
                framing_of(&parsed, false),
                Ok(framing),
                "the sent response is framed as the one read"
            );
        }
    }

    fn framing_of(headers: &[httparse::Header<'_>], request: bool) -> Result<Framing, &'static str> {
        framing(headers, request)
    }

    /// Parses a stream of requests as a relay's client connection would bring them.
    pub fn requests(data: &[u8]) {
        let hop = fixed();
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            match request(&hop, &data[at..], 8192, &mut out) {
                Step::Partial | Step::HandOver => return,
                Step::Answer { len, close, .. } => {
                    assert!(len <= data.len() - at);
                    if close || len == 0 {
                        return;
                    }
                    at += len;
                }
                Step::Relay(plan) => {
                    assert!(plan.len > 0 && plan.len <= data.len() - at);
                    check_sent(&out, plan.framing, true);
                    let rest = &data[at + plan.len..];
                    let Some(end) = body_end(plan.framing, rest) else {
                        return;
                    };
                    if plan.framing == Framing::Chunked
                        && let Some(start) = {
                            let (mut state, mut progress) = (Chunked::START, ChunkProgress::default());
                            let _ = state.advance(rest, &mut progress);
                            progress.trailer_start
                        }
                    {
                        let _ = refused_trailer(&rest[start..end]);
                    }
                    at += plan.len + end;
                    if plan.close {
                        return;
                    }
                }
            }
        }
    }

    /// Parses a stream of responses as an upstream connection would bring them (`head` for
    /// answers to HEAD).
    pub fn responses(data: &[u8], head: bool) {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            match response(&data[at..], 8192, head, false, &mut out) {
                ResponseHead::Partial | ResponseHead::Bad(_) => return,
                ResponseHead::Done {
                    len,
                    status,
                    framing,
                    reusable,
                } => {
                    assert!(len > 0 && len <= data.len() - at);
                    check_sent(&out, framing, false);
                    let Some(end) = body_end(framing, &data[at + len..]) else {
                        return;
                    };
                    at += len + end;
                    if !reusable && !(100..200).contains(&status) {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fuzzing::fixed;
    use super::*;

    /// Runs chunked framing over `bytes` fed in pieces of `step`; returns (consumed, done).
    fn chunked(bytes: &[u8], step: usize) -> Result<(usize, bool), BadChunk> {
        let (mut state, mut progress, mut used) = (Chunked::START, ChunkProgress::default(), 0);
        for piece in bytes.chunks(step) {
            let n = state.advance(piece, &mut progress)?;
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
        // RFC 9112's grammar and nothing looser: whitespace only before `;`, no control bytes in
        // an extension, extensions bounded. A size line that is another request is refused.
        assert_eq!(chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n", 1), Ok((20, true)));
        for bad in [
            &b"add /smuggled-by-te HTTP/1.1\r\n"[..],
            b"5 \r\nhello\r\n",
            b"5\thello\r\n",
            b"5;a\x00b\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
            b"-5\r\n",
        ] {
            assert_eq!(chunked(bad, 1), Err(BadChunk), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', usize::from(MAX_CHUNK_EXT) + 1));
        assert_eq!(chunked(&long_ext, 512), Err(BadChunk));
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
        let f = |list: &[(&str, &str)], request| framing(&headers(list), request).ok();
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

    /// Finding 1 of issue 17: a `Connection` header naming the framing made the relay drop it
    /// after reading the body by it, so the body became requests of its own at the app.
    #[test]
    fn framing_headers_named_by_connection_are_refused_not_dropped() {
        for head in [
            "POST /x HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nGET /",
            "POST /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: Content-Length\r\n\r\n",
        ] {
            let Step::Answer { answer, close, .. } = plan_of(head).0 else {
                panic!("not refused: {head:?}")
            };
            assert_eq!((answer.status, close), (StatusCode::BAD_REQUEST, true), "{head:?}");
            assert!(answer.text.contains("Connection header names"), "{}", answer.text);
        }
        let mut out = Vec::new();
        let ResponseHead::Bad(why) = response(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
            8192,
            false,
            false,
            &mut out,
        ) else {
            panic!("a response that drops its framing was passed")
        };
        assert!(why.contains("names content-length"), "{why}");
        // TE and Upgrade keep their own rules when named.
        let (step, out) = plan_of("GET / HTTP/1.1\r\nHost: a\r\nConnection: TE\r\nTE: trailers\r\n\r\n");
        assert!(matches!(step, Step::Relay(_)));
        assert!(out.contains("te: trailers\r\n"), "{out}");
    }

    /// Issue 17, item 5: an h2c upgrade is never passed on; the request is relayed as HTTP/1.1.
    #[test]
    fn h2c_upgrades_are_dropped_and_the_request_relayed() {
        let (step, out) = plan_of(
            "GET /get HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        );
        assert!(matches!(step, Step::Relay(_)), "handed over");
        assert_eq!(
            out,
            "GET /get HTTP/1.1\r\nhost: a\r\nx-forwarded-client-cert: By=me\r\n\r\n"
        );
    }

    /// Issue 17, item 5: the underscore spelling of XFCC never reaches the app, nor one in trailers.
    #[test]
    fn every_spelling_of_xfcc_is_dropped_and_trailers_cannot_carry_it() {
        let (_, out) = plan_of(
            "GET / HTTP/1.1\r\nHost: a\r\nx_forwarded_client_cert: By=x;URI=spiffe://cluster.local/ns/foo/sa/FORGED\r\nX-Forwarded_Client-Cert: By=y\r\n\r\n",
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-client-cert: By=me\r\n\r\n"
        );
        assert!(refused_trailer(b"x-forwarded-client-cert: By=x\r\n\r\n").is_some());
        assert!(refused_trailer(b"x_forwarded_client_cert: By=x\r\n\r\n").is_some());
        assert!(refused_trailer(b"content-length: 5\r\n\r\n").is_some());
        assert!(refused_trailer(b"no colon\r\n\r\n").is_some());
        assert_eq!(refused_trailer(b"grpc-status: 0\r\nx-checksum: 1\r\n\r\n"), None);
        assert_eq!(refused_trailer(b"\r\n"), None);
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
        // Found by fuzz/fuzz_targets/relay_responses.rs: `000` was sent on as `0`.
        assert_eq!(done("HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n", false), None);
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

    /// Relays `requests` (written at once) to an app that reads a request, answers `reply`, then
    /// writes `late` after a pause; the first request is answered by the app, every later one
    /// needs a new upstream connection, which `Fixed` cannot dial (503 "no"). Returns what the
    /// client got and what the app read.
    async fn relay_with(requests: &str, reply: &'static [u8], late: &'static [u8]) -> (String, String) {
        let hop = fixed();
        let (up, mut app) = tokio::io::duplex(1 << 16);
        hop.pool.put(Arc::from("app"), up, 0);
        let (down, mut client) = tokio::io::duplex(1 << 16);
        let serving = HttpServing::new(crate::serve::HttpLimits::default(), Default::default());
        let relay = tokio::spawn(async move { serve(&hop, down, &serving).await.closed });
        let app_side = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = app.read(&mut buf).await.unwrap_or(0);
            let _ = app.write_all(reply).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = app.write_all(late).await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(300), app.read_to_end(&mut rest)).await;
            buf.truncate(n);
            buf.extend_from_slice(&rest);
            (String::from_utf8_lossy(&buf).into_owned(), app)
        });
        let (first, second) = requests.split_once('|').unwrap_or((requests, ""));
        client.write_all(first.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.write_all(second.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut got)).await;
        let (seen, _app) = app_side.await.unwrap();
        drop(client);
        let _ = relay.await;
        (String::from_utf8_lossy(&got).into_owned(), seen)
    }

    /// Finding 3 of issue 17: bytes an app writes after a response's end (late, or a body after
    /// a 204) were read as the next client's response.
    #[tokio::test]
    async fn late_bytes_spoil_the_held_connection() {
        let evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil";
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ] {
            let (got, _) = relay_with(
                "GET /a HTTP/1.1\r\nHost: h\r\n\r\n|GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                reply,
                evil,
            )
            .await;
            assert!(!got.contains("evil"), "the late bytes were a response: {got}");
            assert!(
                got.ends_with("no\n"),
                "the second request went to a new connection: {got}"
            );
        }
        // In the same read as the response: the connection is not reused either.
        let (got, _) = relay_with(
            "GET /a HTTP/1.1\r\nHost: h\r\n\r\n|GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
            b"",
        )
        .await;
        assert!(!got.contains("evil") && got.ends_with("no\n"), "{got}");
    }

    /// Issue 17, item 5: 100 and 103 in one read, then the final response: all three passed on.
    #[tokio::test]
    async fn informational_responses_in_one_read_are_all_passed_on() {
        let (got, _) = relay_with(
            "GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"",
        )
        .await;
        assert_eq!(
            got,
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok"
        );
    }

    /// Finding 1 end to end: the hidden request in a body never reaches the app as a request.
    #[tokio::test]
    async fn a_request_hidden_by_connection_content_length_never_reaches_the_app() {
        let hidden = "GET /smuggled HTTP/1.1\r\nHost: h\r\nx-forwarded-client-cert: By=x;URI=spiffe://cluster.local/ns/foo/sa/FORGED\r\n\r\n";
        let request = format!(
            "POST /x HTTP/1.1\r\nHost: h\r\nConnection: content-length\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        );
        let (got, seen) = relay_with(&request, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"").await;
        assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
        assert!(
            !seen.contains("smuggled") && !seen.contains("POST"),
            "the app read: {seen}"
        );
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
            (seen, app) // kept open: a connection its app closed is not pooled
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
        let (seen, _app) = app_side.await.unwrap();
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
