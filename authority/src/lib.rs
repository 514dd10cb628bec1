//! Signet's authority: Istio's CA API (`istio.v1.auth.IstioCertificateService`) over
//! gRPC+TLS in front of per-tenant signers. It plays istiod's RA and cert-manager's CA issuers on
//! one machine: authenticate the caller, check the CSR, pick the namespace's signer, sign, and
//! return the chain with that signer's current roots.

pub mod client;
pub mod decide;
pub mod server;
pub mod signing_policy;
pub mod tokens;

/// The generated protobuf and gRPC code for Istio's CA API.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("istio.v1.auth");
}

pub use client::GrpcClient;
pub use decide::{Authority, Inputs, Refusal, RefusalCode};
pub use server::{AuthorityServer, ServerSettings, Sources};
pub use signing_policy::SigningPolicy;
pub use tokens::{Requester, TokenEntry, Tokens, TokensFile, new_token};

/// The port istiod serves its CA on.
pub const DEFAULT_PORT: u16 = 15012;
/// The DNS name in the service's own certificate, and what clients verify by default.
pub const DEFAULT_SERVER_NAME: &str = "signet-authority.istio-system.svc";
/// Istio's gRPC metadata key for the signer a workload names.
pub const CERT_SIGNER_KEY: &str = "CertSigner";

/// TLS 1.3 with aws-lc-rs for the service and its clients (h2 for gRPC).
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
