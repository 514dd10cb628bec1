//! The seam between issuance and TLS. Whoever obtains certificates (files, the authority) calls
//! [`Credentials`] with plain data (DER chains and keys, [`SignerTrust`]); the TLS side checks
//! the material and publishes whole rustls configs. Neither side knows how the other works:
//! `identity/` never touches rustls, and `tls/` never reads a file or calls an authority.

use std::sync::Arc;
use std::time::SystemTime;

use signet_certs::{CertInfo, CertificateDer, PrivateKeyDer, SignerName, SignerTrust, SpiffeId};

pub trait Credentials: Send + Sync {
    /// Replaces the roots this sidecar trusts (and the other signers it can name). The current
    /// certificate stays in use; the result says whether it still chains to the new roots (if
    /// not, the caller should obtain a new one).
    fn set_trust(&self, trust: SignerTrust) -> Result<TrustUpdate, CredentialsError>;

    /// Installs a new certificate (leaf first) and key, together with new trust when given,
    /// after checking the chain against that trust. On error nothing changes.
    fn set_certificate(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust: Option<SignerTrust>,
    ) -> Result<Arc<WorkloadIdentity>, CredentialsError>;

    /// The identity last published, even if it has expired since.
    fn identity(&self) -> Option<Arc<WorkloadIdentity>>;
}

/// What a trust update means for the current certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustUpdate {
    /// A certificate is held and the new trust accepts it.
    pub certificate_chains: bool,
}

/// The published identity: for the admin endpoint, XFCC, logs and renewal.
#[derive(Clone, Debug)]
pub struct WorkloadIdentity {
    pub id: SpiffeId,
    pub signer: SignerName,
    pub chain: Vec<CertInfo>,
    pub roots: Vec<CertInfo>,
    pub trust_version: String,
    /// SHA-256 of the root the chain anchors to (empty when it anchors to none of them).
    pub anchor_sha256: String,
    /// Why the current trust refuses this certificate, if it does: after a trust update that
    /// removed its root or revoked it, the new trust is in force, and the sidecar is not ready
    /// until it has a certificate the trust accepts.
    pub refused: Option<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl WorkloadIdentity {
    /// False once the certificate has expired: an expired certificate is never presented.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        now <= self.not_after
    }

    /// Why this identity cannot serve (readiness), if it cannot.
    pub fn unready_reason(&self, now: SystemTime) -> Option<String> {
        if !self.is_valid_at(now) {
            return Some(format!(
                "the certificate for {} expired at {}",
                self.id,
                signet_certs::rfc3339(self.not_after)
            ));
        }
        self.refused.as_ref().map(|why| {
            format!(
                "the current trust of signer {} refuses this sidecar's certificate: {why}",
                self.signer
            )
        })
    }
}

/// Why a certificate or trust update was refused; the old configuration stays in place. Each
/// message says what is wrong with the material and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    #[error("no trust roots are loaded yet")]
    NoTrust,
    #[error("root #{index} of signer {signer} is unusable: {detail}")]
    BadRoot {
        signer: SignerName,
        index: usize,
        detail: String,
    },
    #[error(
        "no root of signer {signer} is valid now ({roots}); an out-of-date root is no trust anchor: add a current root to the bundle"
    )]
    NoCurrentRoot { signer: SignerName, roots: String },
    #[error("revocation list #{index} for signer {signer} is unusable: {detail}")]
    BadRevocationList {
        signer: SignerName,
        index: usize,
        detail: String,
    },
    #[error("the certificate file holds no certificate")]
    NoCertificate,
    #[error("{0}")]
    Certificate(#[from] signet_certs::Error),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the private key is not usable: {0}")]
    KeyUnusable(String),
    #[error(
        "the certificate for {id} is in trust domain {}, but signer {signer} is trusted only for {}",
        id.trust_domain(),
        allowed.join(", ")
    )]
    TrustDomain {
        id: SpiffeId,
        signer: SignerName,
        allowed: Vec<String>,
    },
    #[error("the certificate for {id} expired at {}; issue a new one", signet_certs::rfc3339(*at))]
    Expired { id: SpiffeId, at: SystemTime },
    #[error("the certificate for {id} is not valid before {}; check the clocks", signet_certs::rfc3339(*at))]
    NotYetValid { id: SpiffeId, at: SystemTime },
    #[error("the certificate for {id} is issued by signer {theirs}, not {ours}; issue it from {}'s signer", ours.short())]
    OtherSigner {
        id: SpiffeId,
        theirs: SignerName,
        ours: SignerName,
    },
    #[error("the certificate for {id} does not chain to any root of signer {signer} in the trust bundle")]
    NoRootOfSigner { id: SpiffeId, signer: SignerName },
    #[error(
        "the certificate for {id} was issued under a root of signer {signer} that the trust bundle no longer holds (its issuer has the name of the signer's root but not its key: a root retired by a rotation); renew it from the signer's current root"
    )]
    RetiredRoot { id: SpiffeId, signer: SignerName },
    #[error(
        "the certificate for {id} lacks the {usage} extended key usage; a sidecar presents one certificate as TLS server (inbound: serverAuth) and as TLS client (outbound: clientAuth), so it needs both (`signet cert issue` and the authority set both)"
    )]
    MissingUsage { id: SpiffeId, usage: &'static str },
    #[error("the certificate for {id} is on signer {signer}'s revocation list; issue a new one")]
    Revoked { id: SpiffeId, signer: SignerName },
    #[error(
        "the certificate for {id} chains only to a root of signer {signer} that is not valid now ({detail}); issue it from a current root"
    )]
    RootOutOfDate {
        id: SpiffeId,
        signer: SignerName,
        detail: String,
    },
    #[error("the certificate for {id} is not usable: {detail}")]
    Unusable { id: SpiffeId, detail: String },
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}
