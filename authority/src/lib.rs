//! Signet's authority: Istio's CA API (`istio.v1.auth.IstioCertificateService`) over gRPC+TLS
//! in front of per-tenant signers. It plays istiod's RA and cert-manager's CA issuers on one
//! machine: authenticate the caller, check the CSR, pick the namespace's signer by the signing
//! policy, sign, and return the chain with that signer's current roots. It serves with the
//! sidecar's serving stack and the one crypto policy (`signet_certs::crypto`).

#![warn(unused_crate_dependencies)]

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
pub use decide::{Authority, Inputs, Refused};
pub use server::{AuthorityServer, ServerError, ServerSettings, Sources, SourcesError};
pub use signing_policy::{SigningPolicy, SigningPolicyError};
pub use tokens::{Requester, TokenEntry, Tokens, TokensError, TokensFile, new_token};

/// Istio's gRPC metadata key for the signer a workload names.
pub const CERT_SIGNER_KEY: &str = "CertSigner";
