//! `signet ca serve`: the gRPC service over TLS (its own certificate from the serving signer,
//! renewed at half-life), an admin port (`/requests`, `/metrics`, `/ready`), and reloads of
//! signers, bundle, policy and tokens on file change or `reload()` (SIGHUP).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use signet_certs::{FileWatch, IssueOptions, Signer, SignerName, SpiffeId, TrustBundle, WorkloadKey, files, parse_key};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;
use tonic::{Request, Status};

use crate::decide::{Authority, Inputs, RefusalCode};
use crate::pb::istio_certificate_service_server::{IstioCertificateService, IstioCertificateServiceServer};
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::signing_policy::SigningPolicy;
use crate::tokens::Tokens;

/// Where the service's inputs live; read at start and on every reload.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Signer name → its directory (`tls.crt`, `tls.key`, `ca.crt`).
    pub signers: Vec<(SignerName, PathBuf)>,
    pub bundle: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub tokens: PathBuf,
    pub signer_domain: String,
}

impl Sources {
    /// Reads everything; any error leaves the caller's current inputs in place.
    pub fn load(&self) -> Result<Inputs, String> {
        let policy = match &self.policy {
            Some(p) => SigningPolicy::load(p)?,
            None => SigningPolicy::default(),
        };
        let mut signers = BTreeMap::new();
        for (name, dir) in &self.signers {
            let signer = Signer::load_dir(dir, name.clone()).map_err(|e| format!("signer {name}: {e}"))?;
            signers.insert(name.clone(), Arc::new(signer));
        }
        let bundle = self
            .bundle
            .as_ref()
            .map(|b| TrustBundle::load(b, &self.signer_domain))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Inputs {
            policy,
            signers,
            bundle,
            tokens: Tokens::load(&self.tokens)?,
        })
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .signers
            .iter()
            .flat_map(|(_, d)| [files::CERT, files::KEY, files::CA].map(|f| d.join(f)))
            .collect();
        out.extend(self.bundle.iter().cloned());
        out.extend(self.policy.iter().cloned());
        out.push(self.tokens.clone());
        out
    }
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub sources: Sources,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// DNS name in the service certificate (clients verify it).
    pub server_name: String,
    /// The signer that issues the service's own certificate (Istio: `istio-system`).
    pub serving_signer: SignerName,
    /// How often the input files are checked for changes.
    pub watch_interval: Duration,
}

pub struct AuthorityServer {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    inner: Arc<Inner>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

struct Inner {
    ra: Arc<Authority>,
    config: ServerSettings,
    serving: ArcSwap<ServerConfig>,
    serving_until: ArcSwap<SystemTime>,
}

impl Inner {
    fn reload(&self) -> Result<(), String> {
        let inputs = self.config.sources.load()?;
        let (serving, until) = serving_config(&inputs, &self.config)?;
        let summary = summary(&inputs);
        self.ra.replace(inputs);
        self.serving.store(serving);
        self.serving_until.store(Arc::new(until));
        tracing::info!("reloaded: {summary}");
        Ok(())
    }
}

fn summary(inputs: &Inputs) -> String {
    let names: Vec<&str> = inputs.signers.keys().map(|s| s.short()).collect();
    format!(
        "signers [{}], default signer {}, bundle {}",
        names.join(", "),
        inputs.policy.default_signer,
        inputs
            .bundle
            .as_ref()
            .map(|b| b.version())
            .unwrap_or_else(|| "none".into())
    )
}

/// The service's own certificate: a fresh key, signed by the serving signer for 24 h.
fn serving_config(inputs: &Inputs, config: &ServerSettings) -> Result<(Arc<ServerConfig>, SystemTime), String> {
    let signer = inputs.signers.get(&config.serving_signer).ok_or_else(|| {
        format!(
            "the serving signer {} is not among the loaded signers; add it with --signer or pick another with --serving-signer",
            config.serving_signer
        )
    })?;
    let id = SpiffeId::workload(&inputs.policy.trust_domain, "istio-system", "signet-authority")
        .map_err(|e| e.to_string())?;
    let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
    let csr = key
        .request(&id, &[config.server_name.clone(), "localhost".to_string()])
        .map_err(|e| e.to_string())?;
    let issued = signer
        .sign(&csr.pem, &IssueOptions::default())
        .map_err(|e| format!("issuing the service certificate: {e}"))?;
    let key = parse_key(key.to_pem().as_bytes(), "service key").map_err(|e| e.to_string())?;
    let mut tls = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| b.with_no_client_auth().with_single_cert(issued.chain, key))
        .map_err(|e| format!("service TLS: {e}"))?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(tls), issued.leaf.not_after))
}

impl AuthorityServer {
    pub async fn start(config: ServerSettings) -> Result<AuthorityServer, String> {
        let inputs = config.sources.load()?;
        let (serving, until) = serving_config(&inputs, &config)?;
        let summary = summary(&inputs);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {} (authority): {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let admin_listener = match config.admin {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|e| format!("cannot listen on {a} (admin): {e}"))?,
            ),
            None => None,
        };
        let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let inner = Arc::new(Inner {
            ra: Arc::new(Authority::new(inputs)),
            config: config.clone(),
            serving: ArcSwap::new(serving),
            serving_until: ArcSwap::from_pointee(until),
        });
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();

        // TLS handshakes run per connection; finished ones are handed to tonic.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
        tracker.spawn(accept_loop(
            listener,
            inner.clone(),
            tx,
            shutdown.clone(),
            tracker.clone(),
        ));
        let grpc = IstioCertificateServiceServer::new(Grpc { ra: inner.ra.clone() });
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(grpc)
                .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                .await
            {
                tracing::error!("authority stopped: {e}");
            }
        });
        if let Some(listener) = admin_listener {
            tracker.spawn(admin_loop(listener, inner.clone(), shutdown.clone(), tracker.clone()));
        }
        tracker.spawn(watch_loop(inner.clone(), shutdown.clone()));

        tracing::info!(
            "authority on {addr} (gRPC istio.v1.auth.IstioCertificateService, TLS as {}): {summary}",
            config.server_name
        );
        if let Some(a) = admin {
            tracing::info!("admin http://{a}/ (requests, metrics, ready)");
        }
        Ok(AuthorityServer {
            addr,
            admin,
            inner,
            shutdown,
            tracker,
        })
    }

    /// Re-reads signers, bundle, policy and tokens; on error the old ones stay.
    pub fn reload(&self) -> Result<(), String> {
        self.inner.reload()
    }

    pub fn ra(&self) -> &Arc<Authority> {
        &self.inner.ra
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    inner: Arc<Inner>,
    tx: tokio::sync::mpsc::Sender<Result<TlsConn, std::io::Error>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("authority: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = TlsAcceptor::from(inner.serving.load_full());
        let tx = tx.clone();
        tracker.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(TlsConn(tls))).await;
                }
                Ok(Err(e)) => tracing::warn!("authority: TLS handshake with {peer} failed: {e}"),
                Err(_) => tracing::warn!("authority: TLS handshake with {peer} timed out"),
            }
        });
    }
}

/// Reloads on file changes, and renews the service certificate at half its life.
async fn watch_loop(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut watch = FileWatch::new(inner.config.sources.files());
    let mut ticker = tokio::time::interval(inner.config.watch_interval.max(Duration::from_millis(50)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let half_life_passed = {
            let until = **inner.serving_until.load();
            until.duration_since(SystemTime::now()).unwrap_or_default() < Duration::from_secs(12 * 3600)
        };
        if watch.changed()
            && let Err(e) = inner.reload()
        {
            tracing::error!("reload failed, keeping the previous signers/bundle/policy/tokens: {e}");
        }
        // The service's own certificate renews from the signers already loaded, whatever state
        // the files on disk are in.
        if half_life_passed {
            match serving_config(&inner.ra.inputs(), &inner.config) {
                Ok((serving, until)) => {
                    inner.serving.store(serving);
                    inner.serving_until.store(Arc::new(until));
                    tracing::info!(
                        "renewed the service certificate (valid until {})",
                        signet_certs::rfc3339(until)
                    );
                }
                Err(e) => tracing::error!("renewing the service certificate failed: {e}"),
            }
        }
    }
}

async fn admin_loop(listener: TcpListener, inner: Arc<Inner>, shutdown: CancellationToken, tracker: TaskTracker) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let inner = inner.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let inner = inner.clone();
                async move {
                    let (status, ctype, body) = match req.uri().path() {
                        "/requests" => (
                            StatusCode::OK,
                            "application/json",
                            format!("{:#}\n", inner.ra.requests_json()),
                        ),
                        "/metrics" => (StatusCode::OK, "text/plain; version=0.0.4", inner.ra.metrics()),
                        "/ready" | "/live" => (StatusCode::OK, "text/plain", "ready\n".to_string()),
                        _ => (
                            StatusCode::NOT_FOUND,
                            "text/plain",
                            "try /requests /metrics /ready\n".to_string(),
                        ),
                    };
                    let mut resp = Response::new(Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = status;
                    resp.headers_mut()
                        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

struct Grpc {
    ra: Arc<Authority>,
}

#[tonic::async_trait]
impl IstioCertificateService for Grpc {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_string());
        let req = request.into_inner();
        let signer = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(crate::CERT_SIGNER_KEY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            });
        match self
            .ra
            .create_certificate(token.as_deref(), &req.csr, req.validity_duration, signer.as_deref())
        {
            Ok(cert_chain) => Ok(tonic::Response::new(IstioCertificateResponse { cert_chain })),
            Err(r) => {
                let code = match r.code {
                    RefusalCode::Unauthenticated => tonic::Code::Unauthenticated,
                    RefusalCode::InvalidArgument => tonic::Code::InvalidArgument,
                    RefusalCode::PermissionDenied => tonic::Code::PermissionDenied,
                    RefusalCode::Internal => tonic::Code::Internal,
                };
                Err(Status::new(code, format!("{}: {}", r.reason, r.message)))
            }
        }
    }
}

/// A TLS connection handed to tonic.
struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConn {
    type ConnectInfo = Option<SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
