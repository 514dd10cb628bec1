//! TLS for the data plane: crypto policy, per-signer verification, handshake diagnosis, and the
//! store that publishes whole rustls configs whenever the certificate or the trust changes.

mod chain_cache;
pub mod diagnose;
pub mod policy;
pub mod resume;
pub mod store;
pub mod verify;

pub use diagnose::{HandshakeError, Reason};
pub use policy::{CryptoPolicy, MinVersion};
pub use store::{ClientAlpn, Credentials, InboundTls, TlsSettings, TlsState, TlsStore, TrustUpdate, WorkloadIdentity};
pub use verify::{AllowList, Trust, recheck_resumed, signer_of_chain};

/// Why a certificate or trust update was refused; the old configuration stays in place.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Trust(String),
    #[error("{0}")]
    Certificate(String),
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

#[cfg(test)]
mod tests;
