//! TLS for the data plane: per-signer verification, handshake diagnosis, and the store that
//! publishes whole rustls configs whenever the certificate or the trust changes. The crypto
//! policy itself lives in `signet_certs::crypto`, shared with every other TLS user.

mod chain_cache;
pub mod diagnose;
pub mod resume;
pub mod store;
pub mod verify;

pub use diagnose::{HandshakeError, Reason};
pub use store::{ClientAlpn, InboundTls, TlsSettings, TlsState, TlsStore};
pub use verify::{AllowList, PathError, PeerClientVerifier, PeerServerVerifier, Trust};

#[cfg(test)]
mod strictness;
#[cfg(test)]
mod tests;
