//! Inbound: terminate mTLS in front of the local app. The peer must present a chain from our
//! own signer (and pass the allow-list) or the handshake fails; then bytes are copied (`tcp`)
//! or HTTP is proxied to the app with `x-forwarded-client-cert` (`http`), or either by what the
//! peer negotiated (`auto`). The captured inbound (`capture.inbound`) is one of these, whose
//! app is 127.0.0.1 at the port each connection was originally sent to.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::credentials::Credentials;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use signet_certs::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::body::{self, Body, Upload, keep_upgrade, strip_hop_by_hop, upgrade_of};
use crate::config::{AppTarget, InboundConfig, InboundMode, Protocol, XfccMode};
use crate::metrics::{Direction, Listener};
use crate::relay::{self, Answer, Hop, Pool, Prefixed, Req, Routed};
use crate::serve::{Closed, HttpServing, accept_loop, serve_http_auto};
use crate::sidecar::Shared;
use crate::throttle::{Throttle, more};
use crate::tls::diagnose::{self, HandshakeError, Reason};
use crate::xfcc::{self, PeerCert};

pub(crate) struct Inbound {
    index: usize,
    listen: SocketAddr,
    app: AppTarget,
    protocol: Protocol,
    mode: InboundMode,
    xfcc: XfccMode,
    shared: Arc<Shared>,
    /// To the app for what the relay hands over (HTTP/1.x upgrades, large uploads, HTTP/1.0).
    /// Requests that came as HTTP/2 (the peer's app spoke it: gRPC) go over h2 connections of
    /// their peer connection's own ([`Inbound::app_h2`]).
    app_h1: Client<HttpConnector, Upload<Incoming>>,
    connector: HttpConnector,
    /// Idle app connections of the relay, by app address.
    pool: Pool<TcpStream>,
    serving: HttpServing,
    /// One warning per kind of rejection per interval; the metrics count every one.
    logs: Throttle,
}

impl Inbound {
    pub(crate) fn new(
        index: usize,
        listen: SocketAddr,
        config: &InboundConfig,
        xfcc: XfccMode,
        shared: Arc<Shared>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(shared.timeouts.connect));

        Inbound {
            index,
            listen,
            app: config.app.clone(),
            mode: config.mode,
            protocol: config.protocol,
            xfcc,
            serving: shared.serving(Direction::Inbound),
            app_h1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(shared.pool_idle())
                .build(connector.clone()),
            connector,
            pool: Pool::new(shared.pool_idle()),
            shared,
            logs: Throttle::default(),
        }
    }

    /// An h2 client to the app for one peer connection: its streams share app connections with
    /// no other peer's, so a peer that stalls its streams (a zero window, a trickle) holds only
    /// its own, and what it can make Signet buffer is bounded by these windows.
    fn app_h2(&self) -> Client<HttpConnector, Upload<Incoming>> {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.shared.pool_idle())
            .http2_only(true)
            .http2_initial_stream_window_size(APP_H2_STREAM_WINDOW)
            .http2_initial_connection_window_size(APP_H2_CONNECTION_WINDOW)
            .build(self.connector.clone())
    }

    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let (name, life) = (format!("inbound {}", self.listen), self.shared.life.clone());
        let limit = self.shared.conn_limit();
        let pool = self.clone();
        let shutdown = self.shared.life.shutdown.clone();
        self.shared
            .life
            .spawn(async move { pool.pool.sweep_until(shutdown).await });
        let this = self.clone();
        let refuse = move |_stream, peer, why| {
            this.shared.metrics.refused(Listener::Inbound);
            if let Some(skipped) = this.logs.allow("limit") {
                tracing::warn!("inbound {}: refused {peer}: {why}{}", this.listen, more(skipped));
            }
        };
        accept_loop(
            listener,
            name,
            life,
            limit,
            move |stream, peer| self.clone().handle(stream, peer),
            refuse,
        )
        .await
    }

    /// Where this connection goes: the configured app, or (captured) 127.0.0.1 at the port the
    /// peer dialled. A connection made to the capture listener itself is refused: forwarding
    /// it would come straight back.
    fn app_for(&self, stream: &TcpStream) -> Result<String, String> {
        match &self.app {
            AppTarget::Fixed(app) => Ok(app.clone()),
            AppTarget::OriginalPort => {
                let dst = crate::capture::original_dst(stream).map_err(|e| {
                    format!("cannot read its original destination ({e}); is this listener behind `signet iptables`?")
                })?;
                if crate::capture::aimed_at_itself(stream, dst) {
                    return Err(format!(
                        "it was sent to {dst}, this listener itself, not redirected here"
                    ));
                }
                Ok(format!("127.0.0.1:{}", dst.port()))
            }
        }
    }

    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let metrics = self.shared.metrics.clone();
        let _active = metrics.connection(Direction::Inbound);
        let app = match self.app_for(&stream) {
            Ok(app) => app,
            Err(why) => {
                if let Some(skipped) = self.logs.allow("capture") {
                    tracing::warn!(
                        "inbound {}: closed {peer}'s connection: {why}{}",
                        self.listen,
                        more(skipped)
                    );
                }
                return;
            }
        };
        if self.mode == InboundMode::Permissive && !starts_with_tls(&stream, self.shared.timeouts.header_read).await {
            return Box::pin(self.plaintext(stream, peer, &app)).await;
        }
        let Some(state) = self.shared.store.current() else {
            self.reject(
                peer,
                HandshakeError::new(
                    Reason::NotReady,
                    "this sidecar holds no valid certificate (fail closed); see /ready",
                ),
            );
            return;
        };
        let Some(config) = state.server(self.index) else {
            return;
        };
        let accept = tokio::time::timeout(self.shared.timeouts.handshake, TlsAcceptor::from(config).accept(stream));
        // Boxed, as what follows: a connection's task is sized by its largest state, so the
        // handshake's state and the other mode's would otherwise stay with every idle connection.
        let (result, note) = Box::pin(diagnose::capture(accept)).await;
        let tls = match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                self.reject(peer, diagnose::classify(&e, note, state.identity.signer.as_str()));
                return;
            }
            Err(_) => {
                self.reject(
                    peer,
                    HandshakeError::new(
                        Reason::Timeout,
                        format!(
                            "the TLS handshake did not finish within {}",
                            signet_certs::format_duration(self.shared.timeouts.handshake)
                        ),
                    ),
                );
                return;
            }
        };
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        if resumed {
            // Resumption skips the verifier: the peer's chain (carried in the ticket) is verified
            // again, in full, against the current trust and this listener's allow-list.
            let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
            if let Err(e) = state.recheck_inbound(self.index, chain) {
                self.reject(peer, e);
                return;
            }
        }
        metrics.handshake_ok(Direction::Inbound, resumed);
        metrics.inbound_accepted(true);
        tracing::debug!("inbound {}: accepted {peer}", self.listen);
        let http = match self.protocol {
            Protocol::Tcp => false,
            Protocol::Http => true,
            // The peer sidecar offers an HTTP ALPN only for its app's HTTP.
            Protocol::Auto => tls.get_ref().1.alpn_protocol().is_some(),
        };
        match http {
            false => Box::pin(self.splice(tls, peer, &app)).await,
            true => {
                // XFCC needs the peer's identity, hash and subject: read once per connection.
                let peer_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(PeerCert::from_leaf);
                let by = state.identity.id.clone();
                drop(state);
                // Checked when the config was resolved (fixed apps) or made from a port.
                let Ok(authority) = app.parse::<Authority>() else {
                    return self.app_unreachable(peer, &app, "not a host:port");
                };
                // The peer sidecar asks for h2 alone when its app spoke HTTP/2 (gRPC).
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                Box::pin(self.serve_http(tls, h2, peer_cert, by, authority)).await
            }
        }
    }

    fn reject(&self, peer: SocketAddr, err: HandshakeError) {
        self.shared.metrics.handshake_failed(Direction::Inbound, err.reason);
        if err.reason == Reason::Closed {
            // Port scanners and TCP health probes connect and close; not worth a warning.
            tracing::debug!(
                "inbound {}: {peer} left during the TLS handshake: {}",
                self.listen,
                err.detail
            );
        } else if let Some(skipped) = self.logs.allow(err.reason.label()) {
            tracing::warn!(
                "inbound {}: rejected {peer} during the TLS handshake: {err}{}",
                self.listen,
                more(skipped)
            );
        }
    }

    /// A permissive listener's plaintext connection: to the app without an identity (an XFCC
    /// header the client sent is removed), HTTP or bytes as the listener's protocol says (`auto`:
    /// by the first bytes).
    async fn plaintext(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, app: &str) {
        self.shared.metrics.inbound_accepted(false);
        tracing::debug!("inbound {}: plaintext from {peer} (permissive)", self.listen);
        let http = match self.protocol {
            Protocol::Tcp => false,
            Protocol::Http => true,
            Protocol::Auto => {
                crate::capture::sniff(&stream, self.shared.timeouts.header_read).await == crate::capture::Sniffed::Http
            }
        };
        if !http {
            return self.splice(stream, peer, app).await;
        }
        let Ok(authority) = app.parse::<Authority>() else {
            return self.app_unreachable(peer, app, "not a host:port");
        };
        let by = self.shared.store.identity().map(|i| i.id.clone());
        match by {
            Some(by) => self.serve_http(stream, false, None, by, authority).await,
            None => tracing::debug!(
                "inbound {}: no identity yet; closed {peer}'s plaintext connection",
                self.listen
            ),
        }
    }

    /// Copies bytes between the peer and the app. The app is connected to once the peer has
    /// sent its first bytes (most protocols are client-speaks-first), so a connection that
    /// closes without a byte (a health check, a handshake-only client) costs the app nothing;
    /// after [`FIRST_BYTES_WAIT`] of silence it is connected to anyway, for protocols whose
    /// server speaks first.
    async fn splice<S>(&self, mut tls: S, peer: SocketAddr, app_address: &str)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut first = vec![0u8; FIRST_READ];
        let n = match tokio::time::timeout(FIRST_BYTES_WAIT, tls.read(&mut first)).await {
            Ok(Ok(0)) => {
                // A clean close (close_notify) is answered with one, as the splice would.
                let _ = tokio::time::timeout(FIRST_BYTES_WAIT, tls.shutdown()).await;
                return tracing::debug!("inbound {}: {peer} closed before sending a byte", self.listen);
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return tracing::debug!("inbound {}: connection from {peer} ended: {e}", self.listen),
            Err(_) => 0,
        };
        let connect = tokio::time::timeout(self.shared.timeouts.connect, TcpStream::connect(app_address));
        let mut app = match connect.await {
            Ok(Ok(app)) => app,
            Ok(Err(e)) => return self.app_unreachable(peer, app_address, &e.to_string()),
            Err(_) => return self.app_unreachable(peer, app_address, "connect timed out"),
        };
        let _ = app.set_nodelay(true);
        if n > 0
            && let Err(e) = app.write_all(&first[..n]).await
        {
            return tracing::debug!("inbound {}: writing to the app for {peer}: {e}", self.listen);
        }
        drop(first);
        let timeouts = &self.shared.timeouts;
        let tunnel = crate::splice::splice(&mut tls, &mut app, timeouts.tcp_idle);
        match tokio::time::timeout(timeouts.max_connection_age, tunnel).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.shared.metrics.closed(Direction::Inbound, Closed::Idle);
                tracing::debug!("inbound {}: closed {peer}'s tunnel: {e}", self.listen);
            }
            Ok(Err(e)) => tracing::debug!("inbound {}: connection from {peer} ended: {e}", self.listen),
            Err(_) => {
                self.shared.metrics.closed(Direction::Inbound, Closed::MaxAge);
                tracing::debug!("inbound {}: closed {peer}'s tunnel at its maximum age", self.listen);
            }
        }
    }

    fn app_unreachable(&self, peer: impl std::fmt::Display, app: &str, why: &str) {
        self.shared.metrics.app_connect_failed();
        if let Some(skipped) = self.logs.allow("app") {
            tracing::warn!(
                "inbound {}: cannot reach the app at {app} for {peer}: {why}; is it running?{}",
                self.listen,
                more(skipped)
            );
        }
    }

    /// One HTTP connection from a peer: HTTP/1.1 through the relay; h2 and what the relay hands
    /// over (upgrades, HTTP/1.0, large uploads) through hyper.
    async fn serve_http<S>(self: Arc<Self>, io: S, h2: bool, peer: Option<PeerCert>, by: SpiffeId, app: Authority)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (io, read) = if h2 {
            (io, bytes::Bytes::new())
        } else {
            let hop = Delivery {
                inbound: &self,
                peer: peer.as_ref(),
                by: &by,
                host: HeaderValue::from_str(app.as_str()).ok(),
                key: Arc::from(app.as_str()),
                app: &app,
            };
            let relayed = relay::serve(&hop, io, &self.serving).await;
            if let Some(closed) = relayed.closed {
                self.shared.metrics.closed(Direction::Inbound, closed);
            }
            match relayed.handed_over {
                Some(handed_over) => handed_over,
                None => return,
            }
        };
        let io = Prefixed::new(io, read);
        let peer = peer.map(Arc::new);
        let by = Arc::new(by);
        let this = self.clone();
        // This peer connection's own h2 connections to the app, made on its first h2 request.
        let h2_client = Arc::new(std::sync::OnceLock::new());
        let svc = service_fn(move |req| {
            let (this, peer, by, app, h2) = (this.clone(), peer.clone(), by.clone(), app.clone(), h2_client.clone());
            async move {
                let h2 = (req.version() == Version::HTTP_2).then(|| h2.get_or_init(|| this.app_h2()).clone());
                Ok::<_, Infallible>(this.forward(req, h2, peer.as_deref(), &by, app).await)
            }
        });
        // Boxed: allocated only for connections handed over, so an idle relayed one stays small.
        let served = Box::pin(serve_http_auto(io, svc, &self.serving)).await;
        if let Some(closed) = served.closed {
            self.shared.metrics.closed(Direction::Inbound, closed);
        }
        if let Some(e) = served.error {
            tracing::debug!("inbound {}: HTTP connection ended: {e}", self.listen);
        }
    }

    /// One request the relay handed over, or one of an h2 connection (`h2_client` is then that
    /// connection's own client to the app).
    async fn forward(
        &self,
        mut req: Request<Incoming>,
        h2_client: Option<Client<HttpConnector, Upload<Incoming>>>,
        peer: Option<&PeerCert>,
        by: &SpiffeId,
        app: Authority,
    ) -> Response<Body> {
        if req.method() == Method::CONNECT {
            // An app is not a proxy: Signet answers for it instead of leaving the client waiting.
            return body::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "signet: the inbound does not tunnel CONNECT; send the request itself",
            );
        }
        if let Some(name) = body::framing_named(req.headers()) {
            return body::framing_refused(&name);
        }
        let h2 = req.version() == Version::HTTP_2;
        let upgrade = upgrade_of(req.version(), req.headers());
        let peer_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        let host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| "/".parse().expect("a path"));
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(app.clone())
            .path_and_query(path)
            .build()
            .ok();
        parts.uri = match uri {
            Some(uri) => uri,
            None => return body::text(StatusCode::BAD_REQUEST, "signet: invalid request target"),
        };
        parts.version = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = &upgrade {
            keep_upgrade(&mut parts.headers, protocol);
        }
        if let Some(host) = host {
            if h2 {
                // HTTP/2 carries the target in :authority (the URI); a Host header must agree.
                parts.headers.remove(HOST);
            } else {
                parts.headers.insert(HOST, host);
            }
        }
        // Only the header's own spelling can be appended to; the others never reach the app.
        let existing = parts.headers.remove(xfcc::HEADER);
        body::remove_xfcc(&mut parts.headers);
        if let Some(p) = peer {
            if let Some(existing) = existing {
                parts.headers.insert(xfcc::HEADER, existing);
            }
            p.apply(by, self.xfcc, &mut parts.headers);
        }
        let body = Upload::new(body, self.serving.limits.body_rate);
        let slowness = body.slowness();
        let client = h2_client.as_ref().unwrap_or(&self.app_h1);
        match client.request(Request::from_parts(parts, body)).await {
            Ok(resp) if body::framing_named(resp.headers()).is_some() => {
                let name = body::framing_named(resp.headers()).unwrap_or_default();
                body::text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "signet: {app}: its response's Connection header names {name}, which frames the response and cannot be removed on the way"
                    ),
                )
            }
            Ok(mut resp) => {
                let protocol = upgrade.as_ref().and_then(|asked| body::switched_to(&resp, asked));
                let switched = match (peer_side, protocol) {
                    (Some(peer_side), Some(protocol)) => {
                        let app_side = hyper::upgrade::on(&mut resp);
                        let name = format!(
                            "inbound {} (upgrade to {})",
                            self.listen,
                            protocol.to_str().unwrap_or("?")
                        );
                        crate::outbound::spawn_upgraded(self.shared.clone(), peer_side, app_side, name);
                        Some(protocol)
                    }
                    _ => None,
                };
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if let Some(protocol) = &switched {
                    keep_upgrade(&mut parts.headers, protocol);
                }
                Response::from_parts(parts, body.boxed())
            }
            Err(e) if slowness.refusal(&e).is_some() => {
                body::text(StatusCode::REQUEST_TIMEOUT, slowness.refusal(&e).unwrap_or_default())
            }
            Err(e) => {
                let cause = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                self.app_unreachable(peer.map(|p| p.id.as_str()).unwrap_or("a request"), app.as_str(), &cause);
                body::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: delayed connect error: {cause}"
                    ),
                )
            }
        }
    }
}

/// The inbound's part in the relay: every request goes to the app, with the peer's identity in
/// `x-forwarded-client-cert` (none from a plaintext peer).
struct Delivery<'a> {
    inbound: &'a Inbound,
    peer: Option<&'a PeerCert>,
    by: &'a SpiffeId,
    app: &'a Authority,
    /// The app's address as a `Host`, for requests that name none.
    host: Option<HeaderValue>,
    key: Arc<str>,
}

impl Delivery<'_> {
    fn unreachable(&self, why: &str) -> Answer {
        let who = self.peer.map(|p| p.id.as_str()).unwrap_or("a request");
        self.inbound.app_unreachable(who, self.app.as_str(), why);
        Answer::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: delayed connect error: {why}"
            ),
        )
    }
}

impl Hop for Delivery<'_> {
    type Target = ();
    type Up = TcpStream;

    fn route(&self, req: &Req<'_>) -> Result<Routed<()>, Answer> {
        let xfcc = self.peer.and_then(|p| {
            let existing = req.xfcc.and_then(|v| HeaderValue::from_bytes(v).ok());
            p.value(
                self.by,
                self.inbound.xfcc,
                existing.as_ref().and_then(|v| v.to_str().ok()),
            )
        });
        Ok(Routed {
            key: self.key.clone(),
            target: (),
            host: if req.host.is_none() && req.authority.is_none() {
                self.host.clone()
            } else {
                None
            },
            xfcc,
        })
    }

    async fn dial(&self, _: &(), _: &str, _: &str) -> Result<TcpStream, Answer> {
        let connect = tokio::time::timeout(
            self.inbound.shared.timeouts.connect,
            TcpStream::connect(self.app.as_str()),
        );
        match connect.await {
            Ok(Ok(app)) => {
                let _ = app.set_nodelay(true);
                Ok(app)
            }
            Ok(Err(e)) => Err(self.unreachable(&e.to_string())),
            Err(_) => Err(self.unreachable("connect timed out")),
        }
    }

    fn failed(&self, _: &(), _: &str, _: &str, error: &std::io::Error) -> Answer {
        self.unreachable(&error.to_string())
    }

    fn pool(&self) -> &Pool<TcpStream> {
        &self.inbound.pool
    }
}

/// The flow-control windows of a peer connection's h2 connections to the app: what a peer that
/// stops reading can make Signet hold for it (a stream's, and all of its streams').
const APP_H2_STREAM_WINDOW: u32 = 256 * 1024;
const APP_H2_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// How long a TCP inbound waits for the peer's first bytes before connecting to the app.
const FIRST_BYTES_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// The most of the peer's first bytes read before the app is connected to (the rest follows
/// in the splice); small, since an idle connection holds it.
const FIRST_READ: usize = 2 * 1024;

/// Whether a connection opens with a TLS handshake record (content type 22), waiting up to
/// `timeout` for its first byte. Anything else, or silence, is plaintext.
async fn starts_with_tls(stream: &TcpStream, timeout: std::time::Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(timeout, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::future_size;

    /// A connection's task is as large as its largest state, for as long as it lives: the
    /// handshake's state and each mode's are boxed, so an idle mTLS connection does not keep
    /// them. Test builds (unoptimized) measure 3,088 bytes, 8,592 unboxed; release builds
    /// 8,472 unboxed.
    #[test]
    fn a_connection_task_is_small() {
        let size = future_size(Inbound::handle);
        eprintln!("Inbound::handle: {size} bytes");
        assert!(size < 4096, "{size}");
    }
}
