//! Inbound: terminate mTLS in front of the local app. The peer must present a chain from our
//! own signer (and pass the allow-list) or the handshake fails; then bytes are copied (`tcp`)
//! or HTTP is proxied to the app with `x-forwarded-client-cert` (`http`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use signet_certs::SpiffeId;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::body::{self, Body, strip_hop_by_hop};
use crate::config::{InboundConfig, Protocol, XfccMode};
use crate::metrics::{Direction, Listener};
use crate::serve::{Closed, HttpServing, accept_loop, serve_http_auto};
use crate::sidecar::Shared;
use crate::throttle::{Throttle, more};
use crate::tls::diagnose::{self, HandshakeError, Reason};
use crate::xfcc::{self, PeerCert};

pub(crate) struct Inbound {
    index: usize,
    listen: SocketAddr,
    app: String,
    /// The app's address as a URI authority (checked when the config was resolved).
    app_authority: Option<Authority>,
    protocol: Protocol,
    xfcc: XfccMode,
    shared: Arc<Shared>,
    app_client: Client<HttpConnector, Incoming>,
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
        let app_client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(shared.pool_idle())
            .build(connector);
        Inbound {
            index,
            listen,
            app: config.app.clone(),
            app_authority: config.app.parse().ok(),
            protocol: config.protocol,
            xfcc,
            serving: shared.serving(Direction::Inbound),
            shared,
            app_client,
            logs: Throttle::default(),
        }
    }

    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener) {
        let (name, life) = (format!("inbound {}", self.listen), self.shared.life.clone());
        let limit = self.shared.conn_limit();
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

    async fn handle(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let metrics = self.shared.metrics.clone();
        let _active = metrics.connection(Direction::Inbound);
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
        let (result, note) = diagnose::capture(accept).await;
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
        tracing::debug!("inbound {}: accepted {peer}", self.listen);
        match self.protocol {
            Protocol::Tcp => self.splice(tls, peer).await,
            Protocol::Http => {
                // XFCC needs the peer's identity, hash and subject: read once per connection.
                let peer_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(PeerCert::from_leaf);
                let by = state.identity.id.clone();
                drop(state);
                self.serve_http(tls, peer_cert, by).await
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

    async fn splice(&self, mut tls: TlsStream<TcpStream>, peer: SocketAddr) {
        let connect = tokio::time::timeout(self.shared.timeouts.connect, TcpStream::connect(self.app.as_str()));
        let mut app = match connect.await {
            Ok(Ok(app)) => app,
            Ok(Err(e)) => return self.app_unreachable(peer, &e.to_string()),
            Err(_) => return self.app_unreachable(peer, "connect timed out"),
        };
        let _ = app.set_nodelay(true);
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

    fn app_unreachable(&self, peer: impl std::fmt::Display, why: &str) {
        self.shared.metrics.app_connect_failed();
        if let Some(skipped) = self.logs.allow("app") {
            tracing::warn!(
                "inbound {}: cannot reach the app at {} for {peer}: {why}; is it running?{}",
                self.listen,
                self.app,
                more(skipped)
            );
        }
    }

    async fn serve_http(self: Arc<Self>, tls: TlsStream<TcpStream>, peer: Option<PeerCert>, by: SpiffeId) {
        let peer = peer.map(Arc::new);
        let by = Arc::new(by);
        let this = self.clone();
        let svc = service_fn(move |req| {
            let (this, peer, by) = (this.clone(), peer.clone(), by.clone());
            async move { Ok::<_, Infallible>(this.forward(req, peer.as_deref(), &by).await) }
        });
        let served = serve_http_auto(tls, svc, &self.serving).await;
        if let Some(closed) = served.closed {
            self.shared.metrics.closed(Direction::Inbound, closed);
        }
        if let Some(e) = served.error {
            tracing::debug!("inbound {}: HTTP connection ended: {e}", self.listen);
        }
    }

    async fn forward(&self, req: Request<Incoming>, peer: Option<&PeerCert>, by: &SpiffeId) -> Response<Body> {
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
        let uri = self.app_authority.clone().and_then(|authority| {
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(path)
                .build()
                .ok()
        });
        parts.uri = match uri {
            Some(uri) => uri,
            None => return body::text(StatusCode::BAD_REQUEST, "signet: invalid request target"),
        };
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        match peer {
            Some(p) => p.apply(by, self.xfcc, &mut parts.headers),
            None => {
                parts.headers.remove(xfcc::HEADER);
            }
        }
        match self.app_client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                let cause = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| e.to_string());
                self.app_unreachable(peer.map(|p| p.id.as_str()).unwrap_or("a request"), &cause);
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
