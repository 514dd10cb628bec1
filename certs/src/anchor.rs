//! Which roots a chain anchors to, decided by signatures (never by matching names), with the
//! crypto policy's signature algorithms.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};

use crate::{CertInfo, CryptoPolicy};

/// The key usages a workload certificate must carry: a sidecar is a TLS server (inbound) and a
/// TLS client (outbound) with the same certificate.
pub const WORKLOAD_USAGES: [Usage; 2] = [Usage::ServerAuth, Usage::ClientAuth];

/// An extended key usage a chain is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    ServerAuth,
    ClientAuth,
}

impl Usage {
    /// As webpki checks it by default: the usage must be listed *if* the certificate lists any.
    /// Enough to tell which signer issued a chain.
    pub fn key_usage(self) -> webpki::KeyUsage {
        match self {
            Usage::ServerAuth => webpki::KeyUsage::server_auth(),
            Usage::ClientAuth => webpki::KeyUsage::client_auth(),
        }
    }

    /// Whether `leaf` lists this usage in its extended key usage, as Signet requires of a peer:
    /// a leaf with no extended key usage, or only anyExtendedKeyUsage, or only the other
    /// direction's, does not. (webpki's check accepts the first two, and applies a required
    /// usage to intermediates too, which commonly list none.) Unparseable: false.
    pub fn listed_in(self, leaf: &[u8]) -> bool {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
            return false;
        };
        match cert.extended_key_usage() {
            Ok(Some(eku)) => match self {
                Usage::ServerAuth => eku.value.server_auth,
                Usage::ClientAuth => eku.value.client_auth,
            },
            _ => false,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Usage::ServerAuth => "serverAuth",
            Usage::ClientAuth => "clientAuth",
        }
    }
}

/// A set of roots, parsed once into trust anchors.
#[derive(Clone, Debug, Default)]
pub struct Anchors(Vec<TrustAnchor<'static>>);

impl Anchors {
    /// Unparseable roots are skipped (a bundle's roots were parsed when it was loaded).
    pub fn new(roots: &[CertificateDer<'_>]) -> Self {
        Anchors(
            roots
                .iter()
                .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok().map(|a| a.to_owned()))
                .collect(),
        )
    }

    pub fn as_slice(&self) -> &[TrustAnchor<'static>] {
        &self.0
    }

    /// Verifies `chain` (leaf first) against these roots for `usage` at `at`.
    pub fn verify(&self, chain: &[CertificateDer<'_>], at: SystemTime, usage: Usage) -> Result<(), webpki::Error> {
        let (leaf, intermediates) = chain.split_first().ok_or(webpki::Error::BadDer)?;
        let ee = webpki::EndEntityCert::try_from(leaf)?;
        let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
        let algs = CryptoPolicy::default().signature_algorithms();
        ee.verify_for_usage(algs.all, &self.0, intermediates, at, usage.key_usage(), None, None)
            .map(|_| ())
    }

    /// Whether `chain` was issued under these roots, whatever its validity now: the chain is
    /// checked at a moment its leaf was valid, for either usage. (webpki checks the leaf's dates
    /// before it looks for issuers, so an expired leaf would otherwise match no root at all.)
    pub fn issued(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some(at) = chain.first().and_then(|leaf| valid_moment(leaf)) else {
            return false;
        };
        [Usage::ServerAuth, Usage::ClientAuth]
            .iter()
            .any(|u| self.verify(chain, at, *u).is_ok())
    }
}

/// A moment at which `leaf` is valid: one second after its notBefore.
fn valid_moment(leaf: &CertificateDer<'_>) -> Option<SystemTime> {
    let info = CertInfo::parse(leaf).ok()?;
    Some(info.not_before + Duration::from_secs(1)).filter(|t| *t <= info.not_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{IssueOptions, Signer, SignerName, SpiffeId};

    #[test]
    fn anchors_are_decided_by_signature_even_for_expired_leaves() {
        let name = SignerName::with_default_domain("foo").unwrap();
        let foo = Signer::create(name.clone(), Duration::from_secs(86_400)).unwrap();
        // Same name, same subject, another key: a rotated (or forged) root.
        let twin = Signer::create(name, Duration::from_secs(86_400)).unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/foo/sa/a".parse().unwrap();
        let expired = IssueOptions {
            ttl: Duration::from_secs(60),
            backdate: Duration::from_secs(3600),
        };
        let issued = foo.issue_workload(&id, &[], &expired).unwrap().certificate;
        assert!(Anchors::new(foo.roots()).issued(&issued.chain));
        assert!(!Anchors::new(twin.roots()).issued(&issued.chain));
        let now = SystemTime::now();
        assert!(
            Anchors::new(foo.roots())
                .verify(&issued.chain, now, Usage::ClientAuth)
                .is_err()
        );
    }
}
