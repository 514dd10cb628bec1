//! Outbound: originate mTLS for the app. An HTTP proxy listener (the app sets `http_proxy`)
//! routes by `host:port` through the service table over pooled mTLS connections; TCP listeners
//! tunnel to one service each. The peer must chain to our own signer and be the expected
//! SPIFFE ID; otherwise the app gets Envoy's 503 (HTTP) or a closed connection (TCP).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HOST;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::body::{self, Body, Upload, keep_upgrade, strip_hop_by_hop, upgrade_of};
use crate::capture::{Sniffed, aimed_at_itself, original_dst, sniff};
use crate::config::{CaptureConfig, Protocol, UnknownDestinations};
use crate::credentials::Credentials;
use crate::metrics::{ActiveGuard, Captured, Direction, Listener};
use crate::relay::{self, Answer, Hop, Pool, Prefixed, Req, Routed};
use crate::serve::{Closed, HttpServing, Refusal, accept_loop, serve_http_auto};
use crate::services::{Service, ServiceTable};
use crate::sidecar::Shared;
use crate::throttle::{Throttle, more};
use crate::tls::diagnose::{self, HandshakeError, Reason};
use crate::tls::{ClientAlpn, TlsState};

/// Envoy's prefix for every failure before response headers.
const ENVOY_PREFIX: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";

/// Why no connection to a peer sidecar could be made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("this sidecar holds no valid workload certificate (see /ready)")]
    NotReady,
    #[error("no route to {0}")]
    NoRoute(String),
    #[error("{service} ({address}): connect failed: {source}")]
    Connect {
        service: String,
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("{service} ({address}): connect timed out")]
    ConnectTimeout { service: String, address: String },
    #[error("{service} ({address}): TLS handshake failed: {error}")]
    Handshake {
        service: String,
        address: String,
        error: HandshakeError,
    },
}

impl UpstreamError {
    /// The body Envoy would send, with Signet's explanation after the error code.
    pub fn envoy_body(&self) -> String {
        let tail = match self {
            UpstreamError::NotReady => {
                "connection failure, transport failure reason: TLS error: NO_CERTIFICATE: this sidecar holds no valid workload certificate (see /ready)".to_string()
            }
            UpstreamError::NoRoute(a) => format!("connection failure, transport failure reason: no route to {a}"),
            UpstreamError::Connect { source, .. } => {
                format!("connection failure, transport failure reason: delayed connect error: {source}")
            }
            UpstreamError::ConnectTimeout { .. } => "connection timeout".to_string(),
            UpstreamError::Handshake { error, .. } => tls_failure(error),
        };
        format!("{ENVOY_PREFIX}{tail}")
    }
}

fn tls_failure(error: &HandshakeError) -> String {
    if error.reason == Reason::Timeout {
        return format!("connection timeout: {}", error.detail);
    }
    let code = match error.reason {
        r if r.is_verify_failure() => "CERTIFICATE_VERIFY_FAILED",
        Reason::PeerRejected => "TLSV1_ALERT",
        Reason::NotTls => "WRONG_VERSION_NUMBER",
        Reason::Closed => "CONNECTION_CLOSED",
        _ => "HANDSHAKE_FAILURE",
    };
    format!(
        "connection failure, transport failure reason: TLS error: {code}: {}",
        error.detail
    )
}

/// An mTLS connection to a peer sidecar, counted as an open outbound connection while it lives.
pub(crate) type PeerConn = (TlsStream<TcpStream>, ActiveGuard);

/// Connects to `service`'s sidecar and completes the mTLS handshake. A resumed session skips
/// verification, so its peer chain is verified again; if that fails (the server's certificate
/// expired since, say), the service's tickets are dropped and one full handshake is tried.
pub(crate) async fn connect_peer(
    shared: &Shared,
    service: &Service,
    alpn: ClientAlpn,
) -> Result<PeerConn, UpstreamError> {
    let state = shared.store.current().ok_or(UpstreamError::NotReady)?;
    // Boxed (both times): a future is sized by its largest state, and a handshake's would stay
    // with every connection that ever dialled, idle or not.
    let (tls, active) = Box::pin(handshake(shared, &state, service, alpn)).await?;
    if tls.get_ref().1.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        shared.metrics.handshake_ok(Direction::Outbound, false);
        return Ok((tls, active));
    }
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    match state.recheck_outbound(&service.identity, alpn, chain) {
        Ok(_) => {
            shared.metrics.handshake_ok(Direction::Outbound, true);
            Ok((tls, active))
        }
        Err(e) => {
            tracing::debug!(
                "outbound: the resumed session with {} no longer verifies ({e}); trying a full handshake",
                service.name
            );
            state.forget_sessions(&service.server_name);
            drop((tls, active));
            let (tls, active) = Box::pin(handshake(shared, &state, service, alpn)).await?;
            let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            shared.metrics.handshake_ok(Direction::Outbound, resumed);
            Ok((tls, active))
        }
    }
}

/// TCP connect and one TLS handshake with the configs of `state`; failures are counted.
async fn handshake(
    shared: &Shared,
    state: &TlsState,
    service: &Service,
    alpn: ClientAlpn,
) -> Result<PeerConn, UpstreamError> {
    let config = state.client(&service.identity, alpn).ok_or(UpstreamError::NotReady)?;
    let (name, address) = (|| service.name.clone(), || service.address.clone());
    let tcp = match tokio::time::timeout(shared.timeouts.connect, TcpStream::connect(service.address.as_str())).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(source)) => {
            return Err(UpstreamError::Connect {
                service: name(),
                address: address(),
                source,
            });
        }
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                service: name(),
                address: address(),
            });
        }
    };
    let _ = tcp.set_nodelay(true);
    let active = shared.metrics.connection(Direction::Outbound);
    let connect = TlsConnector::from(config).connect(service.server_name.clone(), tcp);
    let (result, note) = diagnose::capture(tokio::time::timeout(shared.timeouts.handshake, connect)).await;
    let error = match result {
        Ok(Ok(tls)) => return Ok((tls, active)),
        Ok(Err(e)) => diagnose::classify(&e, note, state.identity.signer.as_str()),
        Err(_) => HandshakeError::new(
            Reason::Timeout,
            format!(
                "the TLS handshake did not finish within {}",
                signet_certs::format_duration(shared.timeouts.handshake)
            ),
        ),
    };
    shared.metrics.handshake_failed(Direction::Outbound, error.reason);
    Err(UpstreamError::Handshake {
        service: name(),
        address: address(),
        error,
    })
}

// === the HTTP proxy ===

/// The app's requests keep their HTTP version to the peer sidecar (and on to its app): HTTP/1.1
/// through the relay ([`relay`]) over pooled http/1.1 mTLS connections; what the relay hands
/// over (upgrades, CONNECT, HTTP/1.0, large uploads) through hyper, HTTP/2 (gRPC, h2c apps)
/// over h2.
pub(crate) struct HttpOutbound {
    listen: SocketAddr,
    shared: Arc<Shared>,
    services: Arc<ServiceTable>,
    /// Idle mTLS connections of the relay, by service.
    pool: Pool<PeerIo>,
    h1: Client<MeshConnector, Upload<Incoming>>,
    h2: Client<MeshConnector, Upload<Incoming>>,
    serving: HttpServing,
    logs: Throttle,
}

impl HttpOutbound {
    pub(crate) fn new(listen: SocketAddr, shared: Arc<Shared>, services: Arc<ServiceTable>) -> Self {
        let limits = shared.http_limits();
        let client = |alpn: ClientAlpn| {
            let connector = MeshConnector {
                shared: shared.clone(),
                services: services.clone(),
                alpn,
            };
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(shared.pool_idle())
                .timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .http2_only(alpn == ClientAlpn::H2)
                .http2_keep_alive_interval(limits.h2_keepalive)
                .http2_keep_alive_timeout(limits.h2_keepalive)
                .http2_max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
            builder.build(connector)
        };
        HttpOutbound {
            listen,
            serving: shared.serving(Direction::Outbound),
            h1: client(ClientAlpn::Http1),
            h2: client(ClientAlpn::H2),
            pool: Pool::new(shared.pool_idle()),
            shared,
            services,
            logs: Throttle::default(),
        }
    }

    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let (name, life) = (format!("outbound {}", self.listen), self.shared.life.clone());
        let limit = self.shared.conn_limit();
        let this = self.clone();
        let refuse = move |stream: TcpStream, peer, why| {
            this.shared.metrics.refused(Listener::Outbound);
            this.shared.metrics.response(Direction::Outbound, 503);
            refuse_http(&stream, why);
            if let Some(skipped) = this.logs.allow("limit") {
                tracing::warn!("outbound {}: refused {peer}: {why}{}", this.listen, more(skipped));
            }
        };
        let pool = self.clone();
        let shutdown = self.shared.life.shutdown.clone();
        self.shared
            .life
            .spawn(async move { pool.pool.sweep_until(shutdown).await });
        let handle = move |stream, _| self.clone().serve_app(stream, None);
        accept_loop(listener, name, life, limit, handle, refuse).await
    }

    /// Serves a captured connection the app opened to `service` (HTTP/1.1, or h2 with prior
    /// knowledge): requests go where their `Host` says when that is a service of the table,
    /// else to `service`.
    pub(crate) async fn serve_captured(self: Arc<Self>, stream: TcpStream, service: Arc<Service>) {
        self.serve_app(stream, Some(service)).await
    }

    /// One app connection: HTTP/1.1 through the relay; the rest (h2 with prior knowledge, gRPC,
    /// upgrades, CONNECT) through hyper, from the request the relay handed over.
    async fn serve_app(self: Arc<Self>, stream: TcpStream, dialled: Option<Arc<Service>>) {
        let hop = Routing {
            out: &self,
            dialled: dialled.as_ref(),
        };
        let relayed = relay::serve(&hop, stream, &self.serving).await;
        if let Some(closed) = relayed.closed {
            self.shared.metrics.closed(Direction::Outbound, closed);
        }
        let Some((stream, read)) = relayed.handed_over else {
            return;
        };
        let this = self.clone();
        let svc = service_fn(move |req| {
            let (this, dialled) = (this.clone(), dialled.clone());
            async move { Ok::<_, Infallible>(this.route(req, dialled.as_ref()).await) }
        });
        // Boxed: allocated only for connections handed over, so an idle relayed one stays small.
        let served = Box::pin(serve_http_auto(Prefixed::new(stream, read), svc, &self.serving)).await;
        if let Some(closed) = served.closed {
            self.shared.metrics.closed(Direction::Outbound, closed);
        }
    }

    fn upstream_failed(&self, method: &str, service: &Service, path: &str, message: &str) {
        if let Some(skipped) = self.logs.allow("upstream") {
            tracing::warn!(
                // The path only: a query string may carry secrets.
                "outbound {}: {method} http://{}{} failed: {}{}",
                self.listen,
                service.name,
                signet_certs::printable(path.split('?').next().unwrap_or_default()),
                message,
                more(skipped)
            );
        }
    }

    async fn route(&self, mut req: Request<Incoming>, dialled: Option<&Arc<Service>>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return self.connect(req).await;
        }
        let routed = match (route_target(&self.services, req.uri(), req.headers()), dialled) {
            (Err(RouteError::NoRoute(_) | RouteError::NoHost), Some(service)) => {
                upstream_uri(service, req.uri()).map(|u| (service.clone(), u))
            }
            (routed, _) => routed,
        };
        let (service, upstream) = match routed {
            Ok(routed) => routed,
            Err(e @ RouteError::NoRoute(_)) => {
                if let Some(skipped) = self.logs.allow("no_route") {
                    tracing::warn!("outbound {}: {e}{}", self.listen, more(skipped));
                }
                return body::text(StatusCode::BAD_GATEWAY, format!("signet: {e}"));
            }
            Err(e) => return body::text(StatusCode::BAD_REQUEST, format!("signet: {e}")),
        };
        if let Some(name) = body::framing_named(req.headers()) {
            return body::framing_refused(&name);
        }
        // For the failure log only: a method and a URI clone are reference counts, not copies.
        let (method, logged) = (req.method().clone(), upstream.clone());
        let h2 = req.version() == Version::HTTP_2;
        let upgrade = upgrade_of(req.version(), req.headers());
        let app_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        parts.uri = upstream;
        parts.version = if h2 { Version::HTTP_2 } else { Version::HTTP_11 };
        strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = &upgrade {
            keep_upgrade(&mut parts.headers, protocol);
        }
        // The app cannot vouch for anyone: identities are added by the receiving sidecar only.
        body::remove_xfcc(&mut parts.headers);
        // The Host the peer sees is the service this request was routed (and verified) to
        // (HTTP/1; h2 carries it as :authority, in the URI).
        if !h2 {
            parts.headers.insert(HOST, service.host.clone());
        }
        let client = if h2 { &self.h2 } else { &self.h1 };
        let body = Upload::new(body, self.serving.limits.body_rate);
        let slowness = body.slowness();
        match client.request(Request::from_parts(parts, body)).await {
            Ok(resp) if body::framing_named(resp.headers()).is_some() => {
                let name = body::framing_named(resp.headers()).unwrap_or_default();
                body::text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "signet: {}: its response's Connection header names {name}, which frames the response and cannot be removed on the way",
                        service.name
                    ),
                )
            }
            Err(e) if slowness.refusal(&e).is_some() => {
                body::text(StatusCode::REQUEST_TIMEOUT, slowness.refusal(&e).unwrap_or_default())
            }
            Ok(mut resp) => {
                let protocol = upgrade.as_ref().and_then(|asked| body::switched_to(&resp, asked));
                let switched = match (app_side, protocol) {
                    (Some(app_side), Some(protocol)) => {
                        let peer_side = hyper::upgrade::on(&mut resp);
                        let name = format!(
                            "outbound {} ({} upgrade to {})",
                            self.listen,
                            service.name,
                            protocol.to_str().unwrap_or("?")
                        );
                        spawn_upgraded(self.shared.clone(), app_side, peer_side, name);
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
            Err(e) => {
                let signer = self
                    .shared
                    .store
                    .identity()
                    .map(|i| i.signer.to_string())
                    .unwrap_or_default();
                let message = failure_body(&e, &signer);
                if let Some(skipped) = self.logs.allow("upstream") {
                    tracing::warn!(
                        // The path only: a query string may carry secrets.
                        "outbound {}: {method} http://{}{} failed: {}{}",
                        self.listen,
                        service.name,
                        logged.path(),
                        message,
                        more(skipped)
                    );
                }
                body::text(StatusCode::SERVICE_UNAVAILABLE, message)
            }
        }
    }
}

impl HttpOutbound {
    /// `CONNECT host:port` (apps with `https_proxy`, gRPC through a proxy): a byte tunnel inside
    /// mTLS to that service's sidecar, which hands the bytes to its app. Only services of the
    /// table: anything else gets 502, as a plain request with no route does.
    async fn connect(&self, req: Request<Incoming>) -> Response<Body> {
        let target = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let Some(service) = self.services.get(&target) else {
            let e = RouteError::NoRoute(target);
            if let Some(skipped) = self.logs.allow("no_route") {
                tracing::warn!("outbound {}: CONNECT: {e}{}", self.listen, more(skipped));
            }
            return body::text(StatusCode::BAD_GATEWAY, format!("signet: {e}"));
        };
        // The peer first: a refusal is a 503 with Envoy's body, before the app sends a byte.
        let (tls, active) = match connect_peer(&self.shared, &service, ClientAlpn::None).await {
            Ok(conn) => conn,
            Err(e) => {
                if let Some(skipped) = self.logs.allow("upstream") {
                    tracing::warn!(
                        "outbound {}: CONNECT {} failed: {}{}",
                        self.listen,
                        service.name,
                        e.envoy_body(),
                        more(skipped)
                    );
                }
                return body::text(StatusCode::SERVICE_UNAVAILABLE, e.envoy_body());
            }
        };
        let app_side = hyper::upgrade::on(req);
        let (shared, name) = (
            self.shared.clone(),
            format!("outbound {} (CONNECT {})", self.listen, service.name),
        );
        self.shared.life.spawn(async move {
            let _active = active;
            match app_side.await {
                Ok(upgraded) => {
                    let (mut app, mut tls) = (TokioIo::new(upgraded), tls);
                    splice_until_done(&shared, &mut app, &mut tls, &name).await
                }
                Err(e) => tracing::debug!("{name}: the app's side never switched: {e}"),
            }
        });
        Response::new(body::full(bytes::Bytes::new()))
    }
}

/// Why an app's request has nowhere to go.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("the request names no host (no absolute URI, no Host header)")]
    NoHost,
    #[error(
        "no route to {target}: it is not in this sidecar's service table (services[{target}] in the config, --service {target}=ADDRESS,SPIFFE_ID on the command line)",
        target = signet_certs::printable(.0)
    )]
    NoRoute(String),
    #[error("invalid request target")]
    BadTarget,
}

/// Where an app's request goes: the service it names (by absolute URI, else by `Host`), and the
/// URI to ask that service's sidecar for. A pure function of the request head (fuzzed).
pub fn route_target(
    services: &ServiceTable,
    uri: &Uri,
    headers: &http::HeaderMap,
) -> Result<(Arc<Service>, Uri), RouteError> {
    let target = match uri.authority() {
        Some(a) => a.as_str(),
        None => headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .ok_or(RouteError::NoHost)?,
    };
    let service = services
        .get(target)
        .ok_or_else(|| RouteError::NoRoute(target.to_string()))?;
    let upstream = upstream_uri(&service, uri)?;
    Ok((service, upstream))
}

/// The URI to ask `service`'s sidecar for: the request's path and query on the service.
fn upstream_uri(service: &Service, uri: &Uri) -> Result<Uri, RouteError> {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(service.name.as_str())
        .path_and_query(path)
        .build()
        .map_err(|_| RouteError::BadTarget)
}

/// Answers an app connection over the limit with a 503 it can read, without waiting for it:
/// the response fits the socket buffer of a fresh connection.
fn refuse_http(stream: &TcpStream, why: Refusal) {
    let body = format!("signet: connection refused: {why}; retry later\n");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// Envoy's body for a failed upstream request, from the error chain.
fn failure_body(err: &hyper_util::client::legacy::Error, our_signer: &str) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(up) = e.downcast_ref::<UpstreamError>() {
            return up.envoy_body();
        }
        // A refusal that arrives after the client's side of the handshake (TLS 1.3 client auth).
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("{ENVOY_PREFIX}{}", tls_failure(&diagnose::from_rustls(tls, our_signer)));
        }
        if let Some(tls) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return format!("{ENVOY_PREFIX}{}", tls_failure(&diagnose::from_rustls(tls, our_signer)));
        }
        source = e.source();
    }
    format!("{ENVOY_PREFIX}connection termination ({err})")
}

/// Dials peer sidecars for the pooled HTTP client: the URI's host:port is a service name.
#[derive(Clone)]
pub(crate) struct MeshConnector {
    shared: Arc<Shared>,
    services: Arc<ServiceTable>,
    alpn: ClientAlpn,
}

impl tower_service::Service<Uri> for MeshConnector {
    type Response = MeshStream;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshStream, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (shared, services, alpn) = (self.shared.clone(), self.services.clone(), self.alpn);
        Box::pin(async move {
            let target = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let service = services
                .get(target)
                .ok_or_else(|| UpstreamError::NoRoute(target.to_string()))?;
            let (tls, active) = connect_peer(&shared, &service, alpn).await?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Ok(MeshStream {
                io: TokioIo::new(tls),
                h2,
                _active: active,
            })
        })
    }
}

/// A pooled mTLS connection to a peer sidecar; tells hyper whether h2 was negotiated.
pub(crate) struct MeshStream {
    io: TokioIo<TlsStream<TcpStream>>,
    h2: bool,
    _active: ActiveGuard,
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.h2 { connected.negotiated_h2() } else { connected }
    }
}

impl hyper::rt::Read for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// The outbound's part in the relay: routes by the service table (or to the service a captured
/// connection dialled), dials peer sidecars over http/1.1 mTLS.
struct Routing<'a> {
    out: &'a HttpOutbound,
    dialled: Option<&'a Arc<Service>>,
}

impl Hop for Routing<'_> {
    type Target = Arc<Service>;
    type Up = PeerIo;

    fn route(&self, req: &Req<'_>) -> Result<Routed<Arc<Service>>, Answer> {
        let out = self.out;
        let named = req.authority.or_else(|| {
            req.host
                .filter(|h| h.iter().all(|b| (0x20..0x7f).contains(b)))
                .and_then(|h| std::str::from_utf8(h).ok())
        });
        let service = match (named.and_then(|t| out.services.get(t)), named, self.dialled) {
            (Some(service), ..) => service,
            (None, _, Some(dialled)) => dialled.clone(),
            (None, Some(target), None) => {
                let e = RouteError::NoRoute(target.to_string());
                if let Some(skipped) = out.logs.allow("no_route") {
                    tracing::warn!("outbound {}: {e}{}", out.listen, more(skipped));
                }
                return Err(Answer::new(StatusCode::BAD_GATEWAY, format!("signet: {e}")));
            }
            (None, None, None) => {
                return Err(Answer::new(
                    StatusCode::BAD_REQUEST,
                    format!("signet: {}", RouteError::NoHost),
                ));
            }
        };
        Ok(Routed {
            key: service.key.clone(),
            host: Some(service.host.clone()),
            // The app cannot vouch for anyone: identities are added by the receiving sidecar.
            xfcc: None,
            target: service,
        })
    }

    async fn dial(&self, service: &Arc<Service>, method: &str, path: &str) -> Result<PeerIo, Answer> {
        match connect_peer(&self.out.shared, service, ClientAlpn::Http1).await {
            Ok((tls, active)) => Ok(PeerIo { tls, _active: active }),
            Err(e) => {
                let message = e.envoy_body();
                self.out.upstream_failed(method, service, path, &message);
                Err(Answer::new(StatusCode::SERVICE_UNAVAILABLE, message))
            }
        }
    }

    fn failed(&self, service: &Arc<Service>, method: &str, path: &str, error: &io::Error) -> Answer {
        let signer = self
            .out
            .shared
            .store
            .identity()
            .map(|i| i.signer.to_string())
            .unwrap_or_default();
        // A refusal that arrives after the client's side of the handshake (TLS 1.3 client auth).
        let message = match error.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => format!("{ENVOY_PREFIX}{}", tls_failure(&diagnose::from_rustls(tls, &signer))),
            None => format!("{ENVOY_PREFIX}connection termination ({error})"),
        };
        self.out.upstream_failed(method, service, path, &message);
        Answer::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    fn pool(&self) -> &Pool<PeerIo> {
        &self.out.pool
    }

    fn generation(&self) -> u64 {
        self.out.shared.store.current().map_or(0, |s| s.generation)
    }
}

/// An mTLS connection to a peer sidecar held by the relay, counted as open while it lives.
pub(crate) struct PeerIo {
    tls: TlsStream<TcpStream>,
    _active: ActiveGuard,
}

impl tokio::io::AsyncRead for PeerIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PeerIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

// === TCP tunnels ===

pub(crate) struct TcpOutbound {
    listen: SocketAddr,
    service: Arc<Service>,
    shared: Arc<Shared>,
    logs: Throttle,
}

impl TcpOutbound {
    pub(crate) fn new(listen: SocketAddr, service: Arc<Service>, shared: Arc<Shared>) -> Self {
        TcpOutbound {
            listen,
            service,
            shared,
            logs: Throttle::default(),
        }
    }

    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let (name, life) = (format!("outbound tcp {}", self.listen), self.shared.life.clone());
        let limit = self.shared.conn_limit();
        let this = self.clone();
        let refuse = move |_stream, peer, why| {
            this.shared.metrics.refused(Listener::Outbound);
            if let Some(skipped) = this.logs.allow("limit") {
                tracing::warn!("outbound tcp {}: refused {peer}: {why}{}", this.listen, more(skipped));
            }
        };
        let handle = move |stream, peer| {
            let this = self.clone();
            async move { this.tunnel(stream, peer).await }
        };
        accept_loop(listener, name, life, limit, handle, refuse).await
    }

    async fn tunnel(&self, client: TcpStream, peer: SocketAddr) {
        let name = format!("outbound tcp {}", self.listen);
        tunnel(&self.shared, &self.service, client, peer, &name, &self.logs).await
    }
}

/// Carries the app's connection to `service` inside mTLS. If the peer cannot be reached or
/// refuses, the app's connection is closed without a byte: nothing reaches a peer we refused.
async fn tunnel(
    shared: &Shared,
    service: &Service,
    mut client: TcpStream,
    peer: SocketAddr,
    name: &str,
    logs: &Throttle,
) {
    let (mut tls, _active) = match connect_peer(shared, service, ClientAlpn::None).await {
        Ok(conn) => conn,
        Err(e) => {
            // Closed unread: the kernel answers the request bytes the app already sent with a
            // reset, so the app sees "connection reset by peer", as with Envoy and ztunnel.
            // (A reset forced at once could race the app's own connect and read as a refused
            // connection instead.)
            drop(client);
            if let Some(skipped) = logs.allow("upstream") {
                tracing::warn!(
                    "{name}: closing {peer}'s connection to {}: {}{}",
                    service.name,
                    e.envoy_body().trim_start_matches(ENVOY_PREFIX),
                    more(skipped)
                );
            }
            return;
        }
    };
    splice_until_done(shared, &mut client, &mut tls, &format!("{name}: {peer}'s tunnel")).await
}

/// Copies both ways under the TCP idle timeout and the maximum connection age; `name` says
/// which tunnel in logs.
pub(crate) async fn splice_until_done<A, B>(shared: &Shared, a: &mut A, b: &mut B, name: &str)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let timeouts = &shared.timeouts;
    let tunnel = crate::splice::splice(a, b, timeouts.tcp_idle);
    match tokio::time::timeout(timeouts.max_connection_age, tunnel).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
            shared.metrics.closed(Direction::Outbound, Closed::Idle);
            tracing::debug!("{name}: closed: {e}");
        }
        Ok(Err(e)) => tracing::debug!("{name}: ended: {e}"),
        Err(_) => {
            shared.metrics.closed(Direction::Outbound, Closed::MaxAge);
            tracing::debug!("{name}: closed at its maximum age");
        }
    }
}

/// Once both sides of an HTTP upgrade (WebSocket, say) have switched, copies bytes between
/// them, under the same limits as a TCP tunnel.
pub(crate) fn spawn_upgraded(
    shared: Arc<Shared>,
    a: hyper::upgrade::OnUpgrade,
    b: hyper::upgrade::OnUpgrade,
    name: String,
) {
    let life = shared.life.clone();
    life.spawn(async move {
        match tokio::join!(a, b) {
            (Ok(a), Ok(b)) => {
                let (mut a, mut b) = (TokioIo::new(a), TokioIo::new(b));
                splice_until_done(&shared, &mut a, &mut b, &name).await
            }
            (Err(e), _) | (_, Err(e)) => tracing::debug!("{name}: a side never switched: {e}"),
        }
    });
}

// === the captured outbound ===

/// Connections the kernel redirected from the app (`capture.outbound`, Istio's 15001): by the
/// address the app dialled, a service of the table (HTTP through the mesh when the first bytes
/// are HTTP, else a TCP tunnel), or an unknown destination (passed through or blocked).
pub(crate) struct CaptureOutbound {
    listen: SocketAddr,
    http: Arc<HttpOutbound>,
    services: Arc<ServiceTable>,
    shared: Arc<Shared>,
    capture: CaptureConfig,
    logs: Throttle,
}

impl CaptureOutbound {
    pub(crate) fn new(
        listen: SocketAddr,
        shared: Arc<Shared>,
        services: Arc<ServiceTable>,
        capture: CaptureConfig,
    ) -> Self {
        CaptureOutbound {
            listen,
            http: Arc::new(HttpOutbound::new(listen, shared.clone(), services.clone())),
            services,
            shared,
            capture,
            logs: Throttle::default(),
        }
    }

    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let (name, life) = (format!("captured outbound {}", self.listen), self.shared.life.clone());
        let limit = self.shared.conn_limit();
        let this = self.clone();
        let refuse = move |_stream, peer, why| {
            this.shared.metrics.refused(Listener::Outbound);
            if let Some(skipped) = this.logs.allow("limit") {
                tracing::warn!(
                    "captured outbound {}: refused {peer}: {why}{}",
                    this.listen,
                    more(skipped)
                );
            }
        };
        let handle = move |stream, peer| {
            let this = self.clone();
            async move { this.handle(stream, peer).await }
        };
        accept_loop(listener, name, life, limit, handle, refuse).await
    }

    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let metrics = &self.shared.metrics;
        let dst = match original_dst(&stream) {
            // Not redirected: someone connected to this listener itself. Passing it through
            // would connect straight back here. Never a loop.
            Ok(dst) if aimed_at_itself(&stream, dst) => {
                return self.refuse(
                    peer,
                    format!("it was sent to {dst}, this listener itself, not redirected here"),
                );
            }
            Ok(dst) => dst,
            Err(e) => {
                return self.refuse(
                    peer,
                    format!("cannot read its original destination ({e}); is this listener behind `signet iptables`?"),
                );
            }
        };
        let Some(service) = self.services.by_address(dst) else {
            return match self.capture.unknown {
                UnknownDestinations::Block => {
                    metrics.captured(Captured::Blocked);
                    if let Some(skipped) = self.logs.allow("blocked") {
                        tracing::warn!(
                            "captured outbound {}: blocked {peer} → {dst}: not a service of the table (capture.unknownDestinations: block){}",
                            self.listen,
                            more(skipped)
                        );
                    }
                }
                UnknownDestinations::Passthrough => {
                    metrics.captured(Captured::Passthrough);
                    self.passthrough(stream, peer, dst).await
                }
            };
        };
        let sniffed = match service.protocol {
            Protocol::Tcp => Sniffed::Opaque,
            Protocol::Http => Sniffed::Http,
            Protocol::Auto => sniff(&stream, self.capture.sniff_timeout).await,
        };
        match sniffed {
            Sniffed::Http => {
                metrics.captured(Captured::Http);
                self.http.clone().serve_captured(stream, service).await
            }
            Sniffed::Opaque => {
                metrics.captured(Captured::Tcp);
                let name = format!("captured outbound {}", self.listen);
                tunnel(&self.shared, &service, stream, peer, &name, &self.logs).await
            }
        }
    }

    fn refuse(&self, peer: SocketAddr, why: String) {
        self.shared.metrics.captured(Captured::Refused);
        if let Some(skipped) = self.logs.allow("refused") {
            tracing::warn!(
                "captured outbound {}: closed {peer}'s connection: {why}{}",
                self.listen,
                more(skipped)
            );
        }
    }

    /// Connects to `dst` as the app asked. The sidecar's own connections are not captured (the
    /// rules exempt its user), so this reaches `dst`, not this listener.
    async fn passthrough(&self, mut client: TcpStream, peer: SocketAddr, dst: SocketAddr) {
        let connect = tokio::time::timeout(self.shared.timeouts.connect, TcpStream::connect(dst)).await;
        let mut upstream = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return tracing::debug!(
                    "captured outbound {}: passthrough to {dst} for {peer}: {e}",
                    self.listen
                );
            }
            Err(_) => {
                return tracing::debug!(
                    "captured outbound {}: passthrough to {dst} for {peer} timed out",
                    self.listen
                );
            }
        };
        let _ = upstream.set_nodelay(true);
        let name = format!("captured outbound {}: passthrough of {peer} to {dst}", self.listen);
        splice_until_done(&self.shared, &mut client, &mut upstream, &name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::future_size;

    /// An app's idle connection keeps its task's full size, so a dial's handshake state is
    /// boxed. Test builds (unoptimized) measure 8,312 and 1,232 bytes, 13,336 and 5,104 unboxed;
    /// release builds 13,216 for `serve_app` unboxed (22 KiB of RSS per idle app connection).
    #[test]
    fn a_connection_task_is_small() {
        let app = future_size(HttpOutbound::serve_app);
        let dial = future_size(connect_peer);
        eprintln!("HttpOutbound::serve_app: {app} bytes, connect_peer: {dial}");
        assert!(app < 10 * 1024, "{app}");
        assert!(dial < 2048, "{dial}");
    }

    fn handshake(reason: Reason, detail: &str) -> UpstreamError {
        UpstreamError::Handshake {
            service: "httpbin.bar:8000".into(),
            address: "127.0.0.1:15206".into(),
            error: HandshakeError::new(reason, detail),
        }
    }

    /// The bodies apps see: Envoy's prefix, then the code curl users search for, then why.
    #[test]
    fn failures_map_to_envoys_bodies() {
        let tls = "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error: ";
        for (reason, code) in [
            (Reason::UnknownSigner, "CERTIFICATE_VERIFY_FAILED"),
            (Reason::RetiredRoot, "CERTIFICATE_VERIFY_FAILED"),
            (Reason::Expired, "CERTIFICATE_VERIFY_FAILED"),
            (Reason::WrongIdentity, "CERTIFICATE_VERIFY_FAILED"),
            (Reason::PeerRejected, "TLSV1_ALERT"),
            (Reason::NotTls, "WRONG_VERSION_NUMBER"),
            (Reason::Closed, "CONNECTION_CLOSED"),
            (Reason::Protocol, "HANDSHAKE_FAILURE"),
        ] {
            let body = handshake(reason, "why").envoy_body();
            assert_eq!(body, format!("{tls}{code}: why"), "{reason:?}");
        }
        assert_eq!(
            handshake(Reason::Timeout, "10s").envoy_body(),
            format!("{ENVOY_PREFIX}connection timeout: 10s")
        );
        assert!(UpstreamError::NotReady.envoy_body().contains("NO_CERTIFICATE"));
        assert_eq!(
            UpstreamError::NoRoute("x:1".into()).envoy_body(),
            format!("{ENVOY_PREFIX}connection failure, transport failure reason: no route to x:1")
        );
        let refused = UpstreamError::Connect {
            service: "s:1".into(),
            address: "127.0.0.1:9".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(
            refused
                .envoy_body()
                .contains("delayed connect error: connection refused")
        );
        let slow = UpstreamError::ConnectTimeout {
            service: "s:1".into(),
            address: "10.0.0.1:9".into(),
        };
        assert_eq!(slow.envoy_body(), format!("{ENVOY_PREFIX}connection timeout"));
    }

    /// A refusal that reaches the client after its side of the handshake (TLS 1.3 client auth)
    /// arrives as a rustls alert; it is named by the alert's specification name.
    #[test]
    fn late_refusals_are_named_by_the_alert() {
        let e = diagnose::from_rustls(
            &rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
            "clusterissuers.cert-manager.io/foo",
        );
        assert_eq!(e.reason, Reason::PeerRejected);
        assert!(
            e.detail.contains("(alert unknown_ca)") && e.detail.contains("/foo"),
            "{}",
            e.detail
        );
        let body = format!("{ENVOY_PREFIX}{}", tls_failure(&e));
        assert!(
            body.contains("TLS error: TLSV1_ALERT: the peer does not trust our certificate"),
            "{body}"
        );
    }
}
