//! `GrpcClient`: a sidecar's client for the authority (or istiod). Every call opens a fresh TLS
//! connection, re-reading the authority's roots and the token file, as Istio's agent rebuilds
//! its channel after errors and ztunnel re-reads its token: calls are rare (one per renewal).
//! The whole call is bounded by the provisioning loop (`signet_proxy::identity::REQUEST_TIMEOUT`);
//! only connecting has a limit of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{CertificateError, RootCertStore};
use signet_certs::{
    AuthorityClient, AuthorityError, AuthorityFuture, CryptoPolicy, CsrOrder, IssuedChain, crypto, parse_certs,
    printable, read_certs,
};
use signet_proxy::config::AuthorityEndpoint;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::Endpoint;

use crate::pb::IstioCertificateRequest;
use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;

/// TCP connect and TLS handshake to the authority must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct GrpcClient {
    endpoint: AuthorityEndpoint,
}

impl GrpcClient {
    pub fn new(endpoint: AuthorityEndpoint) -> Self {
        GrpcClient { endpoint }
    }

    fn unreachable(&self, detail: impl Into<String>) -> AuthorityError {
        AuthorityError::Unreachable {
            address: self.endpoint.address.clone(),
            detail: detail.into(),
        }
    }

    async fn call(&self, order: &CsrOrder) -> Result<IssuedChain, AuthorityError> {
        let e = &self.endpoint;
        let roots_error = |detail: String| AuthorityError::Roots {
            path: e.ca.clone(),
            detail,
        };
        let mut store = RootCertStore::empty();
        for root in read_certs(&e.ca).map_err(|err| roots_error(err.to_string()))? {
            store.add(root).map_err(|err| roots_error(err.to_string()))?;
        }
        let token = match &e.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|err| AuthorityError::Token {
                        path: path.clone(),
                        detail: err.to_string(),
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let mut tls = CryptoPolicy::default()
            .client_builder()
            .map_err(|err| self.unreachable(err.to_string()))?
            .with_root_certificates(store)
            .with_no_client_auth();
        tls.alpn_protocols = crypto::alpn(crypto::ALPN_GRPC);
        let server_name = ServerName::try_from(e.server_name.clone()).map_err(|_| {
            self.unreachable(format!(
                "{:?} is not a DNS name (identity.authority.serverName)",
                e.server_name
            ))
        })?;
        let connector = Connector {
            tls: TlsConnector::from(Arc::new(tls)),
            address: e.address.clone(),
            server_name,
        };
        let channel = Endpoint::from_shared(format!("http://{}", e.server_name))
            .map_err(|err| self.unreachable(err.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(connector)
            .await
            .map_err(|err| self.connect_error(&err))?;
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
            let value = format!("Bearer {t}").parse().map_err(|_| AuthorityError::Token {
                path: e.token_file.clone().unwrap_or_default(),
                detail: "the token holds characters a header cannot carry".into(),
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let response = client
            .create_certificate(request)
            .await
            .map_err(from_status)?
            .into_inner();
        // Istio: a reply with one element or less is an error; the last element holds the roots.
        let Some((roots_pem, chain_pems)) = response.cert_chain.split_last().filter(|(_, c)| !c.is_empty()) else {
            return Err(AuthorityError::BadReply("no certificate and root".into()));
        };
        let mut chain = Vec::new();
        for pem in chain_pems {
            chain.extend(
                parse_certs(pem.as_bytes(), "the certificate chain")
                    .map_err(|err| AuthorityError::BadReply(err.to_string()))?,
            );
        }
        let roots =
            parse_certs(roots_pem.as_bytes(), "the roots").map_err(|err| AuthorityError::BadReply(err.to_string()))?;
        Ok(IssuedChain { chain, roots })
    }

    /// Names the cause of a failed connection once, with what to do about it.
    fn connect_error(&self, err: &(dyn std::error::Error + 'static)) -> AuthorityError {
        let mut source = Some(err);
        let mut deepest = err.to_string();
        while let Some(e) = source {
            let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
                e.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            match tls {
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                )) => {
                    return AuthorityError::UntrustedAuthority {
                        address: self.endpoint.address.clone(),
                        roots: self.endpoint.ca.clone(),
                    };
                }
                Some(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                )) => {
                    return AuthorityError::WrongServerName {
                        address: self.endpoint.address.clone(),
                        server_name: self.endpoint.server_name.clone(),
                    };
                }
                Some(other) => return self.unreachable(format!("TLS: {other}")),
                None => {}
            }
            deepest = e.to_string();
            source = e.source();
        }
        self.unreachable(deepest)
    }
}

/// A gRPC error as an [`AuthorityError`]: a Signet refusal by its reason (sent as metadata, never
/// parsed out of the message), anything else by its status code.
fn from_status(s: tonic::Status) -> AuthorityError {
    match crate::server::refusal_of(&s) {
        Some(reason) => AuthorityError::Refused {
            reason,
            message: printable(s.message().strip_prefix(&format!("{reason}: ")).unwrap_or(s.message())).into_owned(),
        },
        // Whatever answered may not be Signet: its words are escaped before they reach a log.
        None => AuthorityError::Status {
            code: code_name(s.code()).to_string(),
            message: printable(s.message()).into_owned(),
        },
    }
}

/// The canonical gRPC name of a status code.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl AuthorityClient for GrpcClient {
    fn sign<'a>(&'a self, order: &'a CsrOrder) -> AuthorityFuture<'a> {
        Box::pin(self.call(order))
    }

    fn describe(&self) -> String {
        format!(
            "the authority at {} ({})",
            self.endpoint.address, self.endpoint.server_name
        )
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
