//! The one error type of the certs crate; each message says what was wrong and what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {problem}")]
    Pem { origin: String, problem: String },
    #[error(
        "invalid SPIFFE ID {input:?}: {reason} (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)"
    )]
    SpiffeId { input: String, reason: String },
    #[error(
        "invalid signer name {input:?}: {reason} (expected <domain>/<name>, e.g. clusterissuers.cert-manager.io/foo, or a bare name such as foo)"
    )]
    SignerName { input: String, reason: String },
    #[error("invalid duration {input:?}: {reason} (use e.g. 90s, 10m, 24h, 90d or 1h30m)")]
    Duration { input: String, reason: String },
    #[error("{origin}: {problem}")]
    Bundle { origin: String, problem: String },
    #[error(
        "the trust bundle has no roots for signer {signer} (it names {}); add an entry with certSigners: [{signer}]",
        known.join(", ")
    )]
    NoRootsForSigner { signer: String, known: Vec<String> },
    #[error("certificate request rejected: {0}")]
    Request(String),
    #[error("{context}: {source}")]
    Crypto {
        context: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("{0}")]
    Certificate(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn crypto(context: impl Into<String>) -> impl FnOnce(rcgen::Error) -> Self {
        let context = context.into();
        move |source| Error::Crypto { context, source }
    }
}
