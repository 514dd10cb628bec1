//! The `AuthorityClient` seam: whoever can turn a workload's CSR into a signed chain (the embedded
//! authority over gRPC today; the Kubernetes CSR API later). The sidecar's provisioning
//! loop depends on this trait only.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

/// What a workload sends: its CSR, optionally the signer it names itself
/// (`ISTIO_META_CERT_SIGNER`), and the lifetime it asks for (`SECRET_TTL`).
#[derive(Clone, Debug)]
pub struct CsrOrder {
    pub csr_pem: String,
    /// Bare (`foo`) or full signer name, as the workload was configured; `None` lets the
    /// authority pick the namespace's signer.
    pub signer: Option<String>,
    pub ttl: Option<Duration>,
}

/// What comes back: the chain to present (leaf first) and the signer's current roots.
#[derive(Clone, Debug)]
pub struct IssuedChain {
    pub chain: Vec<CertificateDer<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
}

/// Kinds of refusal, so callers can tell retryable trouble from a policy decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorityErrorKind {
    /// The caller's credentials were not accepted.
    Unauthenticated,
    /// The request was understood and refused by policy.
    Denied,
    /// The request was malformed.
    Invalid,
    /// The authority could not be reached or failed; try again later.
    Unavailable,
}

#[derive(Clone, Debug)]
pub struct AuthorityError {
    pub kind: AuthorityErrorKind,
    /// A short machine-readable reason (`IdentityMismatch`, `TTLTooLong`, ...).
    pub reason: String,
    pub message: String,
}

impl AuthorityError {
    pub fn new(kind: AuthorityErrorKind, reason: impl Into<String>, message: impl Into<String>) -> Self {
        AuthorityError {
            kind,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for AuthorityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for AuthorityError {}

pub type AuthorityFuture<'a> = Pin<Box<dyn Future<Output = Result<IssuedChain, AuthorityError>> + Send + 'a>>;

pub trait AuthorityClient: Send + Sync {
    /// Submits one CSR.
    fn sign<'a>(&'a self, order: &'a CsrOrder) -> AuthorityFuture<'a>;
    /// Where requests go, for logs.
    fn describe(&self) -> String;
}
