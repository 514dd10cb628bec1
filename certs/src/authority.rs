//! The `AuthorityClient` seam: whoever can turn a workload's CSR into a signed chain (the
//! authority over gRPC today). The sidecar's provisioning loop depends on this trait only, and
//! the refusal reasons below are shared by the authority and its clients, so a refusal travels
//! as a typed value, not as text to be parsed back.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::format_duration;

/// The port istiod serves its CA on, and the authority's default.
pub const AUTHORITY_PORT: u16 = 15012;

/// The DNS name in the authority's own certificate, and what its clients verify by default.
pub const AUTHORITY_SERVER_NAME: &str = "signet-authority.istio-system.svc";

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

/// How a refusal is classed: who has to act (gRPC maps these to status codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalKind {
    /// The caller's credentials were not accepted (`Unauthenticated`).
    Unauthenticated,
    /// The request was malformed (`InvalidArgument`).
    Invalid,
    /// The request was understood and refused by policy (`PermissionDenied`).
    Denied,
    /// The authority could not sign it (`Internal`); trying again may help.
    Failed,
}

/// Why an authority refused a CSR. The label is stable: it is the reason in the gRPC reply,
/// in the recorded CertificateSigningRequest's condition, in metrics and in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Refusal {
    NoToken,
    UnknownToken,
    IdentityInvalid,
    CsrInvalid,
    NoSpiffeId,
    SignerNameInvalid,
    IdentityMismatch,
    MultipleUriSans,
    DnsSanNotAllowed,
    IpSanNotAllowed,
    EmailSanNotAllowed,
    ExtensionNotAllowed,
    CaRequested,
    TtlTooLong,
    /// Shorter than the signing policy's minimum: too short to be renewed in time.
    TtlTooShort,
    SignerNotAllowedForNamespace,
    SignerNotApprovable,
    SignerUnavailable,
    SigningFailed,
    /// TokenReview authenticated the token, but not as a service account.
    NotServiceAccount,
    /// The signer (or a person) denied the Kubernetes CSR; the message carries its reason.
    CsrDenied,
    /// The signer marked the Kubernetes CSR Failed.
    CsrFailed,
    /// No certificate was issued for the Kubernetes CSR in time.
    CsrTimeout,
    /// The issued chain does not anchor to the signer's roots, or is not for the requested key.
    ChainUntrusted,
    /// The Kubernetes API could not be used (unreachable, refused the authority's request).
    ClusterUnavailable,
}

impl Refusal {
    pub const ALL: [Refusal; 25] = [
        Refusal::NoToken,
        Refusal::UnknownToken,
        Refusal::IdentityInvalid,
        Refusal::CsrInvalid,
        Refusal::NoSpiffeId,
        Refusal::SignerNameInvalid,
        Refusal::IdentityMismatch,
        Refusal::MultipleUriSans,
        Refusal::DnsSanNotAllowed,
        Refusal::IpSanNotAllowed,
        Refusal::EmailSanNotAllowed,
        Refusal::ExtensionNotAllowed,
        Refusal::CaRequested,
        Refusal::TtlTooLong,
        Refusal::TtlTooShort,
        Refusal::SignerNotAllowedForNamespace,
        Refusal::SignerNotApprovable,
        Refusal::SignerUnavailable,
        Refusal::SigningFailed,
        Refusal::NotServiceAccount,
        Refusal::CsrDenied,
        Refusal::CsrFailed,
        Refusal::CsrTimeout,
        Refusal::ChainUntrusted,
        Refusal::ClusterUnavailable,
    ];

    /// The stable label, in the CamelCase of Kubernetes condition reasons.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoToken => "NoToken",
            Refusal::UnknownToken => "UnknownToken",
            Refusal::IdentityInvalid => "IdentityInvalid",
            Refusal::CsrInvalid => "CSRInvalid",
            Refusal::NoSpiffeId => "NoSPIFFEID",
            Refusal::SignerNameInvalid => "SignerNameInvalid",
            Refusal::IdentityMismatch => "IdentityMismatch",
            Refusal::MultipleUriSans => "MultipleURISANs",
            Refusal::DnsSanNotAllowed => "DNSSANNotAllowed",
            Refusal::IpSanNotAllowed => "IPSANNotAllowed",
            Refusal::EmailSanNotAllowed => "EmailSANNotAllowed",
            Refusal::ExtensionNotAllowed => "ExtensionNotAllowed",
            Refusal::CaRequested => "CARequested",
            Refusal::TtlTooLong => "TTLTooLong",
            Refusal::TtlTooShort => "TTLTooShort",
            Refusal::SignerNotAllowedForNamespace => "SignerNotAllowedForNamespace",
            Refusal::SignerNotApprovable => "SignerNotApprovable",
            Refusal::SignerUnavailable => "SignerUnavailable",
            Refusal::SigningFailed => "SigningFailed",
            Refusal::NotServiceAccount => "NotServiceAccount",
            Refusal::CsrDenied => "CSRDenied",
            Refusal::CsrFailed => "CSRFailed",
            Refusal::CsrTimeout => "CSRTimeout",
            Refusal::ChainUntrusted => "ChainUntrusted",
            Refusal::ClusterUnavailable => "ClusterUnavailable",
        }
    }

    pub fn kind(self) -> RefusalKind {
        match self {
            Refusal::NoToken | Refusal::UnknownToken | Refusal::NotServiceAccount => RefusalKind::Unauthenticated,
            Refusal::IdentityInvalid | Refusal::CsrInvalid | Refusal::NoSpiffeId | Refusal::SignerNameInvalid => {
                RefusalKind::Invalid
            }
            Refusal::SignerUnavailable
            | Refusal::SigningFailed
            | Refusal::CsrFailed
            | Refusal::CsrTimeout
            | Refusal::ChainUntrusted
            | Refusal::ClusterUnavailable => RefusalKind::Failed,
            _ => RefusalKind::Denied,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Refusal {
    type Err = ();
    fn from_str(label: &str) -> Result<Self, ()> {
        Refusal::ALL.into_iter().find(|r| r.label() == label).ok_or(())
    }
}

/// Why a certificate request did not produce a chain. Messages name settings by their YAML
/// path (`identity.authority.ca`), and leave the authority's address to the caller's context
/// ("the request to the authority at ... failed: <this>"), so each is said once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The authority refused the CSR.
    #[error("{reason}: {message}")]
    Refused { reason: Refusal, message: String },
    /// An error answer without a Signet reason (an istiod, say): its status code and message.
    #[error("{code}: {message}")]
    Status { code: String, message: String },
    #[error(
        "cannot reach the authority at {address}: {detail} (is it running, and is identity.authority.address right?)"
    )]
    Unreachable { address: String, detail: String },
    #[error(
        "the authority at {address} presents a certificate that does not chain to the roots in {} (identity.authority.ca); give the root of the signer that issues the authority's certificate (the istio-system signer's ca.crt)",
        roots.display()
    )]
    UntrustedAuthority { address: String, roots: PathBuf },
    #[error(
        "the authority at {address} presents a certificate that is not valid for {server_name} (identity.authority.serverName); give the DNS name in its certificate"
    )]
    WrongServerName { address: String, server_name: String },
    #[error("no answer from the authority within {}", format_duration(*.0))]
    Timeout(Duration),
    #[error("{}: cannot read the roots of the authority's certificate (identity.authority.ca): {detail}", path.display())]
    Roots { path: PathBuf, detail: String },
    #[error("{}: cannot read the workload's token (identity.authority.tokenFile): {detail}", path.display())]
    Token { path: PathBuf, detail: String },
    #[error("the authority's answer is unusable: {0}")]
    BadReply(String),
}

impl AuthorityError {
    /// The refusal reason, when the authority gave one.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            AuthorityError::Refused { reason, .. } => Some(*reason),
            _ => None,
        }
    }
}

pub type AuthorityFuture<'a> = Pin<Box<dyn Future<Output = Result<IssuedChain, AuthorityError>> + Send + 'a>>;

pub trait AuthorityClient: Send + Sync {
    /// Submits one CSR.
    fn sign<'a>(&'a self, order: &'a CsrOrder) -> AuthorityFuture<'a>;
    /// Where requests go, for logs.
    fn describe(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_and_round_trip() {
        let mut labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.label()).collect();
        for r in Refusal::ALL {
            assert_eq!(r.label().parse::<Refusal>(), Ok(r));
        }
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Refusal::ALL.len());
        assert_eq!(Refusal::UnknownToken.kind(), RefusalKind::Unauthenticated);
        assert_eq!(Refusal::CsrInvalid.kind(), RefusalKind::Invalid);
        assert_eq!(Refusal::TtlTooLong.kind(), RefusalKind::Denied);
        assert_eq!(Refusal::SigningFailed.kind(), RefusalKind::Failed);
    }
}
