//! `GrpcClient`: a sidecar's client for the authority (or istiod). Every call opens a
//! fresh TLS connection, re-reading the CA root and the token file, as Istio's agent rebuilds its
//! channel after errors and ztunnel re-reads its token: calls are rare (one per renewal).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use signet_certs::{
    AuthorityClient, AuthorityError, AuthorityErrorKind, AuthorityFuture, CsrOrder, IssuedChain, parse_certs,
    read_certs,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::Endpoint;

use crate::pb::IstioCertificateRequest;
use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;

#[derive(Clone, Debug)]
pub struct GrpcClient {
    /// `host:port` of the service.
    pub address: String,
    /// The name in the service's certificate.
    pub server_name: String,
    /// Root(s) the service's certificate chains to.
    pub ca_root: PathBuf,
    /// File holding the bearer token (re-read on every call).
    pub token_file: Option<PathBuf>,
    /// Limit for one whole call.
    pub timeout: Duration,
}

fn unavailable(reason: &str, message: impl Into<String>) -> AuthorityError {
    AuthorityError::new(AuthorityErrorKind::Unavailable, reason, message)
}

impl GrpcClient {
    async fn call(&self, order: &CsrOrder) -> Result<IssuedChain, AuthorityError> {
        let roots = read_certs(&self.ca_root).map_err(|e| unavailable("CARootUnreadable", e.to_string()))?;
        let mut store = RootCertStore::empty();
        for r in roots {
            store
                .add(r)
                .map_err(|e| unavailable("CARootUnusable", format!("{}: {e}", self.ca_root.display())))?;
        }
        let token = match &self.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| unavailable("TokenUnreadable", format!("{}: {e}", p.display())))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let mut tls = ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| unavailable("TLS", e.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = ServerName::try_from(self.server_name.clone())
            .map_err(|_| unavailable("ServerName", format!("{:?} is not a DNS name", self.server_name)))?;
        let connector = Connector {
            tls: TlsConnector::from(Arc::new(tls)),
            address: self.address.clone(),
            server_name,
        };
        let channel = Endpoint::from_shared(format!("http://{}", self.server_name))
            .map_err(|e| unavailable("Address", e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.timeout)
            .connect_with_connector(connector)
            .await
            .map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                unavailable(
                    "Unreachable",
                    format!("cannot reach the authority at {}: {msg}", self.address),
                )
            })?;
        let mut client = IstioCertificateServiceClient::new(channel);
        let mut metadata = prost_types::Struct::default();
        if let Some(s) = &order.signer {
            metadata.fields.insert(
                crate::CERT_SIGNER_KEY.to_string(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue(s.clone())),
                },
            );
        }
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: order.csr_pem.clone(),
            validity_duration: order.ttl.map(|t| t.as_secs() as i64).unwrap_or(0),
            metadata: Some(metadata),
        });
        if let Some(t) = token {
            let value = format!("Bearer {t}")
                .parse()
                .map_err(|_| unavailable("TokenInvalid", "the token contains characters not allowed in a header"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = client
            .create_certificate(request)
            .await
            .map_err(from_status)?
            .into_inner();
        // Istio: a reply with one element or less is an error; the last element holds the roots.
        let Some((roots_pem, chain_pems)) = response.cert_chain.split_last().filter(|(_, c)| !c.is_empty()) else {
            return Err(unavailable(
                "ShortChain",
                "the authority returned no certificate and root",
            ));
        };
        let mut chain = Vec::new();
        for pem in chain_pems {
            chain.extend(
                parse_certs(pem.as_bytes(), "authority reply").map_err(|e| unavailable("BadReply", e.to_string()))?,
            );
        }
        let roots =
            parse_certs(roots_pem.as_bytes(), "authority roots").map_err(|e| unavailable("BadReply", e.to_string()))?;
        Ok(IssuedChain { chain, roots })
    }
}

fn from_status(s: tonic::Status) -> AuthorityError {
    let kind = match s.code() {
        tonic::Code::Unauthenticated => AuthorityErrorKind::Unauthenticated,
        tonic::Code::PermissionDenied => AuthorityErrorKind::Denied,
        tonic::Code::InvalidArgument => AuthorityErrorKind::Invalid,
        _ => AuthorityErrorKind::Unavailable,
    };
    let (reason, message) = match s.message().split_once(": ") {
        Some((r, m)) if !r.contains(' ') => (r.to_string(), m.to_string()),
        _ => (format!("{:?}", s.code()), s.message().to_string()),
    };
    AuthorityError::new(kind, reason, message)
}

impl AuthorityClient for GrpcClient {
    fn sign<'a>(&'a self, order: &'a CsrOrder) -> AuthorityFuture<'a> {
        Box::pin(self.call(order))
    }

    fn describe(&self) -> String {
        format!("authority {} ({})", self.address, self.server_name)
    }
}

#[derive(Clone)]
struct Connector {
    tls: TlsConnector,
    address: String,
    server_name: ServerName<'static>,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.address.as_str()).await?;
            let _ = tcp.set_nodelay(true);
            let tls = this.tls.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
