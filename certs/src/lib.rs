//! Identity and trust for Signet: signers (CAs), SPIFFE IDs, workload keys and CSRs, signing
//! with the signer's own policy, and trust bundles that map roots to signer names.
//!
//! It also holds the crypto policy every TLS user builds its configs from, and decides by
//! signature which signer's roots a chain anchors to. This crate knows nothing of proxies or
//! TLS sessions: it produces and checks certificates.

// Checked in normal builds; test builds also get the dev-dependencies of integration tests.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod anchor;
mod authority;
mod bundle;
pub mod crypto;
mod duration;
mod error;
mod fsutil;
mod info;
mod name;
mod pem;
mod printable;
mod request;
mod signer;
mod spiffe;
mod watch;
mod yaml;

pub use anchor::{Anchors, Usage, WORKLOAD_USAGES};
pub use authority::{
    AUTHORITY_PORT, AUTHORITY_SERVER_NAME, AuthorityClient, AuthorityError, AuthorityFuture, CsrOrder, IssuedChain,
    Refusal, RefusalKind,
};
pub use bundle::{BundleEntry, SignerTrust, TrustBundle};
pub use crypto::{CryptoPolicy, MinVersion, UnknownChoice};
pub use duration::{HumanDuration, format_duration, parse_duration, rfc3339};
pub use error::Error;
pub use fsutil::{write_private, write_public};
pub use info::CertInfo;
pub use name::{DEFAULT_SIGNER_DOMAIN, SignerName};
pub use pem::{certs_to_pem, parse_certs, parse_crls, parse_key, read_certs, read_crls, read_key, sha256_hex};
pub use printable::printable;
pub use request::{CertificateRequest, RequestInfo, WorkloadKey};
pub use signer::{
    DEFAULT_CA_VALIDITY, IssueOptions, IssuedCertificate, IssuedWorkload, SIGNED_KEY_TYPES, Signer, SignerParts,
    request_key_type,
};
pub use spiffe::{IdPattern, SpiffeId};
pub use watch::FileWatch;
pub use yaml::{YamlError, from_yaml};

/// DER types shared with the TLS side, re-exported so callers need not pin `rustls-pki-types`.
pub use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Files of a cert-manager style secret directory (`kubernetes.io/tls` plus `ca.crt`).
pub mod files {
    /// Leaf (or CA) certificate followed by its chain.
    pub const CERT: &str = "tls.crt";
    /// PKCS#8 private key, written with mode 0600.
    pub const KEY: &str = "tls.key";
    /// The signer's root certificate(s).
    pub const CA: &str = "ca.crt";
}
