//! `signet authority serve`: the gRPC service over TLS (its own certificate from the serving
//! signer, renewed at half-life), an admin port (`/requests`, `/metrics`, `/ready`), and reloads
//! of signers, bundle, signing policy and tokens on file change or `reload()` (SIGHUP).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::StatusCode;
use hyper::service::service_fn;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use signet_certs::{
    CryptoPolicy, FileWatch, IssueOptions, Refusal, RefusalKind, Signer, SignerName, SpiffeId, TrustBundle, crypto,
    files,
};
use signet_proxy::body;
use signet_proxy::serve::{
    ConnLimit, HttpLimits, HttpServing, Lifecycle, accept_loop, data_plane_budget, raise_fd_limit, serve_http_auto,
    serve_http1,
};
use signet_proxy::throttle::{Throttle, more};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::{Request, Status};

use crate::cluster::ClusterHandle;
use crate::decide::{Authority, Inputs, Refused};
use crate::pb::istio_certificate_service_server::{IstioCertificateService, IstioCertificateServiceServer};
use crate::pb::{IstioCertificateRequest, IstioCertificateResponse};
use crate::signing_policy::{SigningPolicy, SigningPolicyError};
use crate::tokens::{Tokens, TokensError};

/// The authority's own certificate lives this long ...
const SERVING_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// ... and is renewed when less than this is left (half its life).
const SERVING_CERT_RENEW_BEFORE: Duration = Duration::from_secs(12 * 3600);
/// A client's TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, open calls may finish for this long.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A certificate request (reading it, signing, answering) must finish within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections the gRPC port may hold (each sidecar keeps one open at most).
pub const MAX_CONNECTIONS: usize = 4096;
/// Connections the admin port may hold.
const ADMIN_CONNECTIONS: usize = 64;

/// The limits of every connection to the authority: a connection that sends no request (no
/// HTTP/2 preface) within 10 s is closed, as is one idle for 90 s or older than an hour;
/// HTTP/2 PINGs find dead peers; headers are bounded.
fn http_limits() -> HttpLimits {
    HttpLimits {
        grace: DRAIN_TIMEOUT,
        ..HttpLimits::default()
    }
}
/// The gRPC metadata key that carries a refusal's reason, so clients need not parse messages.
pub const REFUSAL_KEY: &str = "signet-refusal";

/// Where the authority's inputs live; read at start and on every reload.
#[derive(Clone, Debug)]
pub struct Sources {
    /// Signer name → its signer directory (`tls.crt`, `tls.key`, `ca.crt`).
    pub signers: Vec<(SignerName, PathBuf)>,
    pub bundle: Option<PathBuf>,
    pub signing_policy: Option<PathBuf>,
    /// The tokens file; `None` in Kubernetes mode (TokenReview authenticates).
    pub tokens: Option<PathBuf>,
    pub signer_domain: String,
    /// Kubernetes mode: the cluster reviews tokens, signs CSRs, and may hold signers (Secrets).
    pub cluster: Option<ClusterHandle>,
}

/// Why the authority's inputs could not be loaded; the current ones stay in place.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error("signer {name}: {source}")]
    Signer {
        name: SignerName,
        source: signet_certs::Error,
    },
    #[error("{0}")]
    Bundle(signet_certs::Error),
    #[error("{0}")]
    SigningPolicy(#[from] SigningPolicyError),
    #[error("{0}")]
    Tokens(#[from] TokensError),
}

impl Sources {
    /// Reads everything; any error leaves the caller's current inputs in place.
    pub fn load(&self) -> Result<Inputs, SourcesError> {
        let policy = match &self.signing_policy {
            Some(p) => SigningPolicy::load(p, &self.signer_domain)?,
            None => SigningPolicy::defaults_in(&self.signer_domain),
        };
        let mut signers = BTreeMap::new();
        if let Some(cluster) = &self.cluster {
            signers.extend(cluster.0.signers());
        }
        for (name, dir) in &self.signers {
            let signer = Signer::load_dir(dir, name.clone()).map_err(|source| SourcesError::Signer {
                name: name.clone(),
                source,
            })?;
            signers.insert(name.clone(), Arc::new(signer));
        }
        let bundle = self
            .bundle
            .as_ref()
            .map(|b| TrustBundle::load(b, &self.signer_domain))
            .transpose()
            .map_err(SourcesError::Bundle)?;
        Ok(Inputs {
            policy,
            signers,
            bundle,
            tokens: match &self.tokens {
                Some(path) => Tokens::load(path)?,
                None => Tokens::default(),
            },
        })
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self
            .signers
            .iter()
            .flat_map(|(_, d)| [files::CERT, files::KEY, files::CA].map(|f| d.join(f)))
            .collect();
        out.extend(self.bundle.iter().cloned());
        out.extend(self.signing_policy.iter().cloned());
        out.extend(self.tokens.iter().cloned());
        out
    }
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub sources: Sources,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// DNS name in the authority's certificate (clients verify it).
    pub server_name: String,
    /// The signer that issues the authority's own certificate (Istio: `istio-system`).
    pub serving_signer: SignerName,
    /// How often the input files are checked for changes.
    pub watch_interval: Duration,
    /// How long one certificate request may take, signing included ([`REQUEST_TIMEOUT`]; in
    /// Kubernetes mode longer than the CSR wait).
    pub request_timeout: Duration,
}

/// Why the authority did not start, or a reload was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Sources(#[from] SourcesError),
    #[error(
        "the serving signer {0} is not among the loaded signers; add its signer directory or pick another serving signer"
    )]
    NoServingSigner(SignerName),
    #[error("issuing the authority's own certificate: {0}")]
    ServingCertificate(signet_certs::Error),
    #[error("the authority's TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        source: std::io::Error,
    },
}

pub struct AuthorityServer {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    inner: Arc<Inner>,
    life: Lifecycle,
}

struct Inner {
    authority: Arc<Authority>,
    settings: ServerSettings,
    serving: ArcSwap<ServerConfig>,
    serving_until: ArcSwap<SystemTime>,
}

impl Inner {
    fn reload(&self) -> Result<(), ServerError> {
        let inputs = self.settings.sources.load()?;
        let (serving, until) = serving_config(&inputs, &self.settings)?;
        let summary = summary(&inputs);
        self.authority.replace(inputs);
        self.serving.store(serving);
        self.serving_until.store(Arc::new(until));
        tracing::info!("reloaded: {summary}");
        Ok(())
    }
}

fn summary(inputs: &Inputs) -> String {
    let names: Vec<&str> = inputs.signers.keys().map(|s| s.short()).collect();
    format!(
        "signers [{}], default signer {}, trust bundle {}",
        names.join(", "),
        inputs.policy.default_signer,
        inputs
            .bundle
            .as_ref()
            .map(|b| b.version())
            .unwrap_or_else(|| "none".into())
    )
}

/// The authority's own certificate: a fresh key, signed by the serving signer.
fn serving_config(inputs: &Inputs, settings: &ServerSettings) -> Result<(Arc<ServerConfig>, SystemTime), ServerError> {
    let signer = inputs
        .signers
        .get(&settings.serving_signer)
        .ok_or_else(|| ServerError::NoServingSigner(settings.serving_signer.clone()))?;
    let id = SpiffeId::workload(&inputs.policy.trust_domain, "istio-system", "signet-authority")
        .map_err(ServerError::ServingCertificate)?;
    let options = IssueOptions {
        ttl: SERVING_CERT_TTL,
        backdate: Duration::ZERO,
    };
    let names = [settings.server_name.clone(), "localhost".to_string()];
    let issued = signer
        .issue_workload(&id, &names, &options)
        .map_err(ServerError::ServingCertificate)?;
    let until = issued.certificate.leaf.not_after;
    let mut tls = CryptoPolicy::default()
        .server_builder()?
        .with_no_client_auth()
        .with_single_cert(issued.certificate.chain, issued.key.to_der())?;
    tls.alpn_protocols = crypto::alpn(crypto::ALPN_GRPC);
    Ok((Arc::new(tls), until))
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, what, source })
}

impl AuthorityServer {
    pub async fn start(settings: ServerSettings) -> Result<AuthorityServer, ServerError> {
        let inputs = settings.sources.load()?;
        let (serving, until) = serving_config(&inputs, &settings)?;
        let summary = summary(&inputs);
        let listener = bind(settings.listen, "authority").await?;
        let addr = listener.local_addr().unwrap_or(settings.listen);
        let admin_listener = match settings.admin {
            Some(a) => Some(bind(a, "authority admin").await?),
            None => None,
        };
        let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let inner = Arc::new(Inner {
            authority: Arc::new(Authority::new(
                inputs,
                settings.sources.cluster.as_ref().map(|c| c.0.clone()),
            )),
            settings: settings.clone(),
            serving: ArcSwap::new(serving),
            serving_until: ArcSwap::from_pointee(until),
        });
        let life = Lifecycle::default();

        // Each connection: TLS (with a handshake timeout), then gRPC over h2 through the same
        // serving stack as every other listener (graceful shutdown included).
        let grpc = TowerToHyperService::new(Deadline {
            inner: IstioCertificateServiceServer::new(Grpc {
                authority: inner.authority.clone(),
            }),
            limit: settings.request_timeout,
        });
        let handshakes = inner.clone();
        let serving = Arc::new(HttpServing::new(http_limits(), life.shutdown.clone()));
        let logs = Arc::new(Throttle::default());
        let refuse_logs = logs.clone();
        let pool_size = data_plane_budget(raise_fd_limit());
        let limit = ConnLimit::new(MAX_CONNECTIONS.min(pool_size));
        let handle = move |stream, peer| {
            let acceptor = TlsAcceptor::from(handshakes.serving.load_full());
            let (grpc, serving, logs) = (grpc.clone(), serving.clone(), logs.clone());
            async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        if let Some(skipped) = logs.allow("handshake") {
                            tracing::warn!("authority: TLS handshake with {peer} failed: {e}{}", more(skipped));
                        }
                        return;
                    }
                    Err(_) => {
                        if let Some(skipped) = logs.allow("handshake_timeout") {
                            tracing::warn!("authority: TLS handshake with {peer} timed out{}", more(skipped));
                        }
                        return;
                    }
                };
                let served = serve_http_auto(tls, grpc, &serving).await;
                if let Some(closed) = served.closed {
                    tracing::debug!("authority: closed the connection from {peer} ({})", closed.label());
                }
                if let Some(e) = served.error {
                    tracing::debug!("authority: connection from {peer} ended: {e}");
                }
            }
        };
        let refuse = move |_stream, peer, why| {
            if let Some(skipped) = refuse_logs.allow("limit") {
                tracing::warn!("authority: refused {peer}: {why}{}", more(skipped));
            }
        };
        life.spawn(accept_loop(
            listener,
            "authority".into(),
            life.clone(),
            limit,
            handle,
            refuse,
        ));
        if let Some(listener) = admin_listener {
            life.spawn(admin_loop(listener, inner.clone(), life.clone()));
        }
        life.spawn(watch_loop(inner.clone(), life.clone()));

        tracing::info!(
            "authority on {addr} (gRPC istio.v1.auth.IstioCertificateService, TLS as {}): {summary}",
            settings.server_name
        );
        if let Some(a) = admin {
            tracing::info!("admin http://{a}/ (requests, metrics, ready)");
        }
        Ok(AuthorityServer {
            addr,
            admin,
            inner,
            life,
        })
    }

    /// Re-reads signers, bundle, signing policy and tokens; on error the old ones stay.
    pub fn reload(&self) -> Result<(), ServerError> {
        self.inner.reload()
    }

    pub fn authority(&self) -> &Arc<Authority> {
        &self.inner.authority
    }

    pub async fn shutdown(self) {
        self.life.stop(DRAIN_TIMEOUT).await;
    }
}

/// Reloads on file changes, and renews the authority's certificate at half its life.
async fn watch_loop(inner: Arc<Inner>, life: Lifecycle) {
    let mut watch = FileWatch::new(inner.settings.sources.files());
    let cluster = inner.settings.sources.cluster.clone();
    let mut generation = cluster.as_ref().map(|c| c.0.generation());
    let interval = inner
        .settings
        .watch_interval
        .max(signet_proxy::config::MIN_WATCH_INTERVAL);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = life.shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let renew = {
            let until = **inner.serving_until.load();
            until.duration_since(SystemTime::now()).unwrap_or_default() < SERVING_CERT_RENEW_BEFORE
        };
        let cluster_changed = match &cluster {
            Some(c) => {
                let now = Some(c.0.generation());
                std::mem::replace(&mut generation, now) != now
            }
            None => false,
        };
        if (watch.changed() | cluster_changed)
            && let Err(e) = inner.reload()
        {
            tracing::error!("reload failed, keeping the previous signers, bundle, signing policy and tokens: {e}");
        }
        // The authority's own certificate renews from the signers already loaded, whatever state
        // the files on disk are in.
        if renew {
            match serving_config(&inner.authority.inputs(), &inner.settings) {
                Ok((serving, until)) => {
                    inner.serving.store(serving);
                    inner.serving_until.store(Arc::new(until));
                    tracing::info!(
                        "renewed the authority's certificate (valid until {})",
                        signet_certs::rfc3339(until)
                    );
                }
                Err(e) => tracing::error!("renewing the authority's certificate failed: {e}"),
            }
        }
    }
}

async fn admin_loop(listener: TcpListener, inner: Arc<Inner>, life: Lifecycle) {
    let serving = Arc::new(HttpServing::new(http_limits(), life.shutdown.clone()));
    let refuse = |_stream, peer, why| tracing::debug!("authority admin: refused {peer}: {why}");
    let handle = move |stream, _| {
        let (inner, serving) = (inner.clone(), serving.clone());
        async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let inner = inner.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/requests" => {
                            let mut r =
                                http::Response::new(body::full(format!("{:#}\n", inner.authority.requests_json())));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            r
                        }
                        "/csrs" => {
                            let list = match inner.authority.cluster() {
                                Some(c) => c.in_flight(),
                                None => serde_json::json!({
                                    "apiVersion": "certificates.k8s.io/v1",
                                    "kind": "CertificateSigningRequestList",
                                    "items": [],
                                }),
                            };
                            let mut r = http::Response::new(body::full(format!("{list:#}\n")));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            r
                        }
                        "/metrics" => body::text(StatusCode::OK, inner.authority.metrics()),
                        "/ready" | "/live" => body::text(StatusCode::OK, "ready"),
                        _ => body::text(StatusCode::NOT_FOUND, "try /requests /csrs /metrics /ready"),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            serve_http1(stream, svc, &serving).await;
        }
    };
    let limit = ConnLimit::new(ADMIN_CONNECTIONS);
    accept_loop(listener, "authority admin".into(), life, limit, handle, refuse).await
}

/// Ends a call that takes longer than `limit` (a client sending its request slowly, say) with
/// DEADLINE_EXCEEDED.
#[derive(Clone)]
struct Deadline<S> {
    inner: S,
    limit: Duration,
}

type GrpcResponse = http::Response<tonic::body::Body>;

impl<S, B> tower_service::Service<http::Request<B>> for Deadline<S>
where
    S: tower_service::Service<http::Request<B>, Response = GrpcResponse, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<GrpcResponse, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (call, limit) = (self.inner.call(req), self.limit);
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(response) => response,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the request did not complete within {}",
                    signet_certs::format_duration(limit)
                ))
                .into_http()),
            }
        })
    }
}

struct Grpc {
    authority: Arc<Authority>,
}

/// A refusal as a gRPC status: the code by its kind, the reason in the message (for people and
/// for istio-agents) and in [`REFUSAL_KEY`] metadata (for clients).
fn status(refused: Refused) -> Status {
    let code = match refused.reason.kind() {
        RefusalKind::Unauthenticated => tonic::Code::Unauthenticated,
        RefusalKind::Invalid => tonic::Code::InvalidArgument,
        RefusalKind::Denied => tonic::Code::PermissionDenied,
        RefusalKind::Failed => tonic::Code::Internal,
    };
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        REFUSAL_KEY,
        tonic::metadata::MetadataValue::from_static(refused.reason.label()),
    );
    Status::with_metadata(code, format!("{}: {}", refused.reason, refused.message), metadata)
}

/// The reason a status carries in [`REFUSAL_KEY`], if any.
pub(crate) fn refusal_of(status: &Status) -> Option<Refusal> {
    status.metadata().get(REFUSAL_KEY)?.to_str().ok()?.parse().ok()
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
        self.authority
            .create_certificate(token.as_deref(), &req.csr, req.validity_duration, signer.as_deref())
            .await
            .map(|cert_chain| tonic::Response::new(IstioCertificateResponse { cert_chain }))
            .map_err(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// istiod's mapping, which istio-agents rely on to decide what to retry: a denial (by
    /// policy, or by the cluster's signer) is PermissionDenied, never retried as such; a
    /// failed, timed-out or untrusted signing is Internal, retried with backoff.
    #[test]
    fn refusals_map_to_istiods_status_codes() {
        let code = |reason| {
            status(Refused {
                reason,
                message: "m".into(),
            })
        };
        for (reason, expected) in [
            (Refusal::NoToken, tonic::Code::Unauthenticated),
            (Refusal::UnknownToken, tonic::Code::Unauthenticated),
            (Refusal::NotServiceAccount, tonic::Code::Unauthenticated),
            (Refusal::CsrInvalid, tonic::Code::InvalidArgument),
            (Refusal::SignerNotAllowedForNamespace, tonic::Code::PermissionDenied),
            (Refusal::CsrDenied, tonic::Code::PermissionDenied),
            (Refusal::CsrFailed, tonic::Code::Internal),
            (Refusal::CsrTimeout, tonic::Code::Internal),
            (Refusal::ChainUntrusted, tonic::Code::Internal),
            (Refusal::ClusterUnavailable, tonic::Code::Internal),
        ] {
            let s = code(reason);
            assert_eq!(s.code(), expected, "{reason}");
            assert_eq!(refusal_of(&s), Some(reason));
            assert!(s.message().starts_with(reason.label()), "{}", s.message());
        }
    }
}
