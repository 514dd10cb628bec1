//! The one HTTP body type the proxy returns, and small response helpers.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

pub fn text(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    let mut body = text.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Hop-by-hop headers never cross a proxy; nor do headers that the `Connection` header lists
/// (the rules of `crate::headers`: the caller refused messages whose `Connection` names a
/// framing header, see [`framing_named`]). `TE: trailers` is kept, as Envoy keeps it: gRPC
/// servers require it, and it is the one value HTTP/2 allows.
pub fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let listed: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| crate::headers::tokens(v.as_bytes()))
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect();
    for name in listed {
        headers.remove(name.as_str());
    }
    for name in crate::headers::HOP_BY_HOP
        .into_iter()
        .chain(["te", "transfer-encoding", "upgrade"])
    {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The framing header a message's `Connection` names, which makes it refused (400 for a
/// request, 502 for a response: `crate::headers`).
pub fn framing_named(headers: &http::HeaderMap) -> Option<String> {
    crate::headers::framing_named_by_connection(headers.get_all(header::CONNECTION).iter().map(|v| v.as_bytes()))
}

/// The answer to a request refused for [`framing_named`].
pub fn framing_refused(name: &str) -> Response<Body> {
    text(StatusCode::BAD_REQUEST, crate::headers::framing_refusal(name))
}

/// Removes every `x-forwarded-client-cert`, in any spelling (`crate::headers`).
pub fn remove_xfcc(headers: &mut http::HeaderMap) {
    headers.remove(crate::xfcc::HEADER);
    if headers.keys().any(|k| crate::headers::is_xfcc(k.as_str().as_bytes())) {
        let names: Vec<_> = headers
            .keys()
            .filter(|k| crate::headers::is_xfcc(k.as_str().as_bytes()))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// The protocol an HTTP/1.1 message asks to switch to (`Connection: upgrade` and `Upgrade:
/// websocket`, say), which a proxy must pass on for the switch to happen end to end. `h2c` is
/// never passed on (`crate::headers`): such a request is served as HTTP/1.1.
pub fn upgrade_of(version: http::Version, headers: &http::HeaderMap) -> Option<HeaderValue> {
    if version != http::Version::HTTP_11 {
        return None;
    }
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| crate::headers::tokens(v.as_bytes()))
        .any(|t| t.eq_ignore_ascii_case(b"upgrade"));
    let protocol = headers.get(header::UPGRADE).filter(|_| asks)?;
    (!crate::headers::only_h2c(protocol.as_bytes())).then(|| protocol.clone())
}

/// The protocol a `101 Switching Protocols` response switches to, when it is the one the
/// request asked for (`asked`); any other switch is not followed.
pub fn switched_to(resp: &Response<impl hyper::body::Body>, asked: &HeaderValue) -> Option<HeaderValue> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return None;
    }
    upgrade_of(resp.version(), resp.headers())
        .filter(|p| crate::headers::tokens(asked.as_bytes()).any(|t| t.eq_ignore_ascii_case(p.as_bytes().trim_ascii())))
}

/// Puts an upgrade's two headers back after [`strip_hop_by_hop`].
pub fn keep_upgrade(headers: &mut http::HeaderMap, protocol: &HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol.clone());
}

/// A request body on its way upstream on the hyper path: held to the body rate
/// ([`crate::serve::BodyRate`]: too slow ends it with an error, which resets the request), and
/// with any `x-forwarded-client-cert` removed from its trailers (`crate::headers`).
pub struct Upload<B> {
    inner: B,
    pace: crate::serve::Pace,
    rate: crate::serve::BodyRate,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Set when the body was too slow: on HTTP/2 the client's error for the request is the
    /// stream's reset, which does not carry [`TooSlow`] as its source.
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<B> Upload<B> {
    pub fn new(inner: B, rate: crate::serve::BodyRate) -> Self {
        let pace = crate::serve::Pace::new(rate);
        Upload {
            inner,
            pace,
            rate,
            sleep: Box::pin(tokio::time::sleep_until(pace.deadline)),
            slow: Default::default(),
        }
    }

    /// What a failed request's error does not always say: whether this body was too slow
    /// (the refusal's text, then).
    pub fn slowness(&self) -> Slowness {
        Slowness {
            slow: self.slow.clone(),
            rate: self.rate,
        }
    }
}

/// Whether an [`Upload`] was cut off for its pace, seen after it was handed to a client.
pub struct Slowness {
    slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rate: crate::serve::BodyRate,
}

impl Slowness {
    /// The 408 refusal text for a request that failed with `error`, if its body was too slow.
    pub fn refusal(&self, error: &(dyn std::error::Error + 'static)) -> Option<String> {
        too_slow(error).or_else(|| {
            self.slow
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| self.rate.refusal())
        })
    }
}

impl<B> hyper::body::Body for Upload<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::serve::BoxError>,
{
    type Data = Bytes;
    type Error = crate::serve::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_trailers() {
                    Ok(mut trailers) => {
                        remove_xfcc(&mut trailers);
                        hyper::body::Frame::trailers(trailers)
                    }
                    Err(frame) => {
                        if let Some(data) = frame.data_ref() {
                            this.pace.arrived(data.len());
                            if this.sleep.deadline() != this.pace.deadline {
                                this.sleep.as_mut().reset(this.pace.deadline);
                            }
                        }
                        frame
                    }
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.slow.store(true, std::sync::atomic::Ordering::Relaxed);
                    Poll::Ready(Some(Err(Box::new(TooSlow(this.rate.refusal())))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The error an [`Upload`] ends with when its body is too slow.
#[derive(Debug)]
struct TooSlow(String);

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TooSlow {}

/// The refusal text when a request failed because its [`Upload`] was too slow.
pub fn too_slow(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(slow) = e.downcast_ref::<TooSlow>() {
            return Some(slow.0.clone());
        }
        next = e.source();
    }
    None
}
