//! Per-signer peer verification. A sidecar trusts only its own signer's roots, in both
//! directions; the SPIFFE ID is then checked against what the caller expects (outbound) or
//! the allow-list (inbound). Roots of other signers are kept only to *name* a refused peer's
//! signer; they are never used to accept one.
//!
//! rustls's stock server verifier checks DNS names and rejects SPIFFE-only certificates, so the
//! server side is verified here with `verify_server_cert_signed_by_trust_anchor` plus our own
//! URI SAN check (as linkerd and ztunnel do).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use signet_certs::{Anchors, CertInfo, IdPattern, SignerName, SignerTrust, SpiffeId};

use super::chain_cache::{self, VerifiedChains};
use super::diagnose::{self, HandshakeError, Reason};
use crate::credentials::CredentialsError;

/// What one sidecar trusts, ready for verification: its own signer's roots as a root store,
/// plus every other signer's roots as anchors, kept only to name a refused peer's signer.
#[derive(Clone, Debug)]
pub struct Trust {
    signer: SignerName,
    roots: Arc<RootCertStore>,
    root_certs: Vec<CertificateDer<'static>>,
    /// Subjects of our own roots, to recognise a chain from a retired root of our signer.
    root_subjects: Vec<String>,
    others: Vec<(SignerName, Anchors)>,
    version: String,
    /// The bundle's `trustDomains` for this signer; `None` when an entry leaves them open.
    trust_domains: Option<Vec<String>>,
    /// The trust domains peers may be in: the bundle's, else the sidecar's own and its aliases
    /// (set by [`Trust::for_identity`] once the own identity is known).
    accepted_domains: Vec<String>,
}

impl Trust {
    pub fn new(trust: SignerTrust) -> Result<Self, CredentialsError> {
        let mut roots = RootCertStore::empty();
        for (i, root) in trust.roots.iter().enumerate() {
            roots.add(root.clone()).map_err(|e| CredentialsError::BadRoot {
                signer: trust.signer.clone(),
                index: i + 1,
                detail: e.to_string(),
            })?;
        }
        let root_subjects = trust
            .roots
            .iter()
            .filter_map(|r| CertInfo::parse(r).ok().map(|i| i.subject))
            .collect();
        Ok(Trust {
            roots: Arc::new(roots),
            root_subjects,
            others: trust
                .others
                .iter()
                .map(|(name, roots)| (name.clone(), Anchors::new(roots)))
                .collect(),
            signer: trust.signer,
            root_certs: trust.roots,
            version: trust.version,
            accepted_domains: trust.trust_domains.clone().unwrap_or_default(),
            trust_domains: trust.trust_domains,
        })
    }

    /// This trust as the sidecar with identity `own` applies it: where the bundle names no trust
    /// domains for the signer, peers must be in `own`'s trust domain or one of `aliases`, as in
    /// Istio (`meshConfig.trustDomainAliases`).
    pub fn for_identity(&self, own: &SpiffeId, aliases: &[String]) -> Trust {
        let mut scoped = self.clone();
        if self.trust_domains.is_none() {
            scoped.accepted_domains = std::iter::once(own.trust_domain().to_string())
                .chain(aliases.iter().cloned())
                .collect();
        }
        scoped
    }

    /// Refuses a peer whose trust domain is not accepted (see [`Trust::for_identity`]).
    pub fn check_trust_domain(&self, id: &SpiffeId) -> Result<(), HandshakeError> {
        if self.accepted_domains.is_empty() || self.accepted_domains.iter().any(|td| td == id.trust_domain()) {
            return Ok(());
        }
        let why = match self.trust_domains {
            Some(_) => format!("signer {} is trusted only for", self.signer),
            None => "this sidecar accepts only its own trust domain and its aliases:".to_string(),
        };
        Err(HandshakeError::new(
            Reason::WrongIdentity,
            format!(
                "{id} is in trust domain {}, but {why} {}",
                id.trust_domain(),
                self.accepted_domains.join(", ")
            ),
        ))
    }

    pub(crate) fn trust_domains(&self) -> Option<&[String]> {
        self.trust_domains.as_deref()
    }

    pub fn signer(&self) -> &SignerName {
        &self.signer
    }

    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    pub fn root_certs(&self) -> &[CertificateDer<'static>] {
        &self.root_certs
    }

    /// Changes whenever the roots or their signer mapping change.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The other signer whose roots `chain` (leaf first) was issued under, if any.
    pub(crate) fn anchored_signer(&self, chain: &[CertificateDer<'_>]) -> Option<&SignerName> {
        self.others.iter().find(|(_, a)| a.issued(chain)).map(|(name, _)| name)
    }

    /// True when the top of `chain` names one of our roots as its issuer but is not signed by
    /// it: a chain from a root of our signer that has since been rotated out of the bundle.
    pub(crate) fn issued_by_retired_root(&self, chain: &[CertificateDer<'_>]) -> bool {
        chain
            .last()
            .and_then(|top| CertInfo::parse(top).ok())
            .is_some_and(|top| self.root_subjects.contains(&top.issuer) && !top.is_self_signed())
    }

    /// Records why `end_entity` failed verification with `err`, naming the signers involved.
    fn explain(&self, err: &rustls::Error, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) {
        let info = CertInfo::parse(end_entity).ok();
        // Nothing in a certificate that did not verify is vouched for: say so.
        let who = info
            .as_ref()
            .and_then(|i| i.uris.first().cloned())
            .map(|u| format!("peer {u} (unverified)"))
            .unwrap_or_else(|| "the peer".to_string());
        let chain: Vec<CertificateDer<'_>> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| CertificateDer::from(c.as_ref()))
            .collect();
        let unknown_issuer = matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)
        );
        let note = if unknown_issuer && let Some(theirs) = self.anchored_signer(&chain) {
            // Signed by another signer of the bundle: that signer vouches for the name.
            let peer = info
                .as_ref()
                .and_then(|i| i.uris.first().cloned())
                .map(|u| format!("peer {u}"))
                .unwrap_or_else(|| "the peer".to_string());
            HandshakeError::new(
                Reason::UnknownSigner,
                format!(
                    "{peer} presents a certificate from signer {theirs}, but this proxy trusts only signer {} (roots of {theirs} are not accepted here)",
                    self.signer
                ),
            )
        } else if unknown_issuer && self.issued_by_retired_root(&chain) {
            HandshakeError::new(
                Reason::RetiredRoot,
                format!(
                    "{who} presents a certificate issued under a root of signer {} that this proxy no longer trusts (its issuer has the name of the signer's root but not its key: a root retired by a rotation); the peer must renew its certificate from the signer's current root",
                    self.signer
                ),
            )
        } else if unknown_issuer {
            HandshakeError::new(
                Reason::UnknownSigner,
                format!(
                    "{who} presents a certificate issued by \"{}\" (unverified), which chains to no signer in the trust bundle; this proxy trusts only signer {}",
                    info.map(|i| i.issuer).unwrap_or_default(),
                    self.signer
                ),
            )
        } else {
            let mut e = diagnose::from_rustls(err, self.signer.as_str());
            e.detail = format!("{who}: {}", e.detail);
            e
        };
        diagnose::note(note);
    }
}

/// Inbound allow-list of peer SPIFFE IDs; an entry ending in `/*` matches every ID below that
/// path (`spiffe://td/ns/foo/*` matches `.../ns/foo/sa/x`, not `.../ns/foobar/...`). Empty: any
/// identity of the own signer.
#[derive(Clone, Debug, Default)]
pub struct AllowList(Vec<IdPattern>);

impl AllowList {
    pub fn new(entries: Vec<IdPattern>) -> Self {
        AllowList(entries)
    }

    pub fn allows(&self, id: &SpiffeId) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.matches(id))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn peer_id(end_entity: &CertificateDer<'_>) -> Result<SpiffeId, HandshakeError> {
    CertInfo::spiffe_id_and_validity(end_entity)
        .map(|(id, _, _)| id)
        .map_err(|e| {
            HandshakeError::new(
                Reason::BadCertificate,
                format!("the peer's certificate carries no usable SPIFFE ID ({e})"),
            )
        })
}

/// Verifies the server's chain (our signer only) and SPIFFE ID, on outbound connections.
#[derive(Debug)]
pub struct PeerServerVerifier {
    trust: Arc<Trust>,
    expected: Option<SpiffeId>,
    algs: WebPkiSupportedAlgorithms,
    cache: Option<VerifiedChains>,
}

impl PeerServerVerifier {
    /// `cache`: remember verified chains (see `chain_cache`).
    pub fn new(trust: Arc<Trust>, expected: Option<SpiffeId>, algs: WebPkiSupportedAlgorithms, cache: bool) -> Self {
        PeerServerVerifier {
            trust,
            expected,
            algs,
            cache: cache.then(VerifiedChains::default),
        }
    }

    /// The full check: chain to our signer's roots, one SPIFFE ID, trust domain.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        if let Err(e) = rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.trust.roots,
            intermediates,
            now,
            self.algs.all,
        ) {
            self.trust.explain(&e, end_entity, intermediates);
            return Err(e);
        }
        let id = peer_id(end_entity)
            .inspect_err(|e| diagnose::note(e.clone()))
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::NotValidForName))?;
        if let Err(e) = self.trust.check_trust_domain(&id) {
            diagnose::note(e);
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(id)
    }
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Authorization is part of what is remembered: a refused peer never fills the cache.
        chain_cache::remembered_or(self.cache.as_ref(), end_entity, intermediates, now, || {
            let id = self.verify_chain(end_entity, intermediates, now)?;
            if let Some(expected) = self.expected.as_ref().filter(|e| **e != id) {
                diagnose::note(HandshakeError::new(
                    Reason::WrongIdentity,
                    format!(
                        "the peer is {id} (signer {}), but this service should be {expected}",
                        self.trust.signer
                    ),
                ));
                return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
            }
            Ok(id)
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Requires and verifies client certificates (our signer only), then the allow-list.
#[derive(Debug)]
pub struct PeerClientVerifier {
    trust: Arc<Trust>,
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
    cache: Option<VerifiedChains>,
}

impl PeerClientVerifier {
    #[cfg(test)]
    pub(crate) fn cache_footprint(&self) -> (usize, usize) {
        self.cache.as_ref().map(|c| c.footprint()).unwrap_or_default()
    }

    pub fn new(
        trust: Arc<Trust>,
        allow: AllowList,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        cache: bool,
    ) -> Result<Self, CredentialsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
            .build()
            .map_err(|e| CredentialsError::BadRoot {
                signer: trust.signer.clone(),
                index: 0,
                detail: format!("cannot verify clients with these roots: {e}"),
            })?;
        Ok(PeerClientVerifier {
            trust,
            inner,
            allow,
            cache: cache.then(VerifiedChains::default),
        })
    }

    /// The full check: chain to our signer's roots (clientAuth), one SPIFFE ID, trust domain.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, rustls::Error> {
        if let Err(e) = self.inner.verify_client_cert(end_entity, intermediates, now) {
            self.trust.explain(&e, end_entity, intermediates);
            return Err(e);
        }
        let id = peer_id(end_entity)
            .inspect_err(|e| diagnose::note(e.clone()))
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if let Err(e) = self.trust.check_trust_domain(&id) {
            diagnose::note(e);
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(id)
    }
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Authorization is part of what is remembered: a refused peer never fills the cache.
        chain_cache::remembered_or(self.cache.as_ref(), end_entity, intermediates, now, || {
            let id = self.verify_chain(end_entity, intermediates, now)?;
            if !self.allow.allows(&id) {
                diagnose::note(HandshakeError::new(
                    Reason::NotAllowed,
                    format!(
                        "peer {id} (signer {}) is not on this listener's allow-list",
                        self.trust.signer
                    ),
                ));
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ));
            }
            Ok(id)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The outcome of a verifier run on a resumed session, explained as a handshake failure would be.
fn explained<T>(
    result: Result<T, rustls::Error>,
    note: Option<HandshakeError>,
    signer: &SignerName,
) -> Result<T, HandshakeError> {
    result.map_err(|e| {
        let mut e = note.unwrap_or_else(|| diagnose::from_rustls(&e, signer.as_str()));
        e.detail = format!("resumed session: {}", e.detail);
        e
    })
}

impl PeerClientVerifier {
    /// The whole check again, for a client whose session was resumed (resumption skips the
    /// verifier): its chain against our current roots, its SPIFFE ID, trust domain, allow-list.
    pub fn recheck(&self, chain: &[CertificateDer<'_>]) -> Result<(), HandshakeError> {
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| {
            HandshakeError::new(
                Reason::BadCertificate,
                "the resumed session carries no peer certificate",
            )
        })?;
        let (result, note) = diagnose::capture_sync(|| self.verify_client_cert(leaf, intermediates, UnixTime::now()));
        explained(result, note, &self.trust.signer).map(|_| ())
    }
}

impl PeerServerVerifier {
    /// The whole check again, for a server whose session was resumed: its chain against our
    /// current roots, its SPIFFE ID against the one expected.
    pub fn recheck(&self, chain: &[CertificateDer<'_>]) -> Result<(), HandshakeError> {
        let (leaf, intermediates) = chain.split_first().ok_or_else(|| {
            HandshakeError::new(
                Reason::BadCertificate,
                "the resumed session carries no peer certificate",
            )
        })?;
        // The name is not checked: the SPIFFE ID is (see `verify_server_cert`).
        let name = ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into());
        let (result, note) =
            diagnose::capture_sync(|| self.verify_server_cert(leaf, intermediates, &name, &[], UnixTime::now()));
        explained(result, note, &self.trust.signer).map(|_| ())
    }
}
