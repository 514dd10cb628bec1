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
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use signet_certs::{CertInfo, SignerName, SpiffeId, TrustBundle};

use super::TlsError;
use super::chain_cache::{self, VerifiedChains};
use super::diagnose::{self, HandshakeError, Reason};

/// What one sidecar trusts: its own signer's roots, plus every other signer's roots for naming.
#[derive(Debug)]
pub struct Trust {
    signer: SignerName,
    roots: Arc<RootCertStore>,
    root_certs: Vec<CertificateDer<'static>>,
    others: Vec<(SignerName, Vec<TrustAnchor<'static>>)>,
    version: String,
    /// The bundle's `trustDomains` for this signer; `None` when an entry leaves them open.
    trust_domains: Option<Vec<String>>,
}

impl Trust {
    /// Trust `signer`'s roots from `bundle`; the bundle's other signers are known by name only.
    pub fn from_bundle(bundle: &TrustBundle, signer: &SignerName) -> Result<Self, TlsError> {
        let own = bundle.roots_for(signer);
        if own.is_empty() {
            let names: Vec<&str> = bundle.signers().iter().map(|s| s.as_str()).collect();
            return Err(TlsError::Trust(format!(
                "the trust bundle has no roots for signer {signer} (it names {}); add an entry with certSigners: [{signer}]",
                names.join(", ")
            )));
        }
        let mut others = Vec::new();
        for name in bundle.signers() {
            if name == signer {
                continue;
            }
            let anchors = bundle
                .roots_for(name)
                .iter()
                .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok().map(|a| a.to_owned()))
                .collect();
            others.push((name.clone(), anchors));
        }
        let entries: Vec<_> = bundle.entries().iter().filter(|e| e.signers.contains(signer)).collect();
        let trust_domains = if entries.iter().all(|e| !e.trust_domains.is_empty()) {
            Some(entries.iter().flat_map(|e| e.trust_domains.iter().cloned()).collect())
        } else {
            None
        };
        let mut trust = Self::build(signer.clone(), own, others, bundle.version())?;
        trust.trust_domains = trust_domains;
        Ok(trust)
    }

    /// Refuses a peer whose trust domain is not among the signer's `trustDomains` (if set).
    pub fn check_trust_domain(&self, id: &SpiffeId) -> Result<(), HandshakeError> {
        match &self.trust_domains {
            Some(tds) if !tds.iter().any(|td| td == id.trust_domain()) => Err(HandshakeError::new(
                Reason::WrongIdentity,
                format!(
                    "{id} is in trust domain {}, but signer {} is trusted only for {}",
                    id.trust_domain(),
                    self.signer,
                    tds.join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Trust exactly `roots` for `signer`, with no other signer known (no bundle configured).
    pub fn from_roots(signer: SignerName, roots: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        let version =
            signet_certs::sha256_hex(&roots.iter().flat_map(|r| r.to_vec()).collect::<Vec<u8>>())[..16].to_string();
        Self::build(signer, roots, Vec::new(), version)
    }

    fn build(
        signer: SignerName,
        root_certs: Vec<CertificateDer<'static>>,
        others: Vec<(SignerName, Vec<TrustAnchor<'static>>)>,
        version: String,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        for (i, root) in root_certs.iter().enumerate() {
            roots
                .add(root.clone())
                .map_err(|e| TlsError::Trust(format!("root #{} of signer {signer} is unusable: {e}", i + 1)))?;
        }
        Ok(Trust {
            signer,
            roots: Arc::new(roots),
            root_certs,
            others,
            version,
            trust_domains: None,
        })
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

    /// The other signer whose roots `end_entity` chains to, if any.
    pub(crate) fn anchored_signer(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: webpki::KeyUsage,
        algs: &WebPkiSupportedAlgorithms,
    ) -> Option<&SignerName> {
        let ee = webpki::EndEntityCert::try_from(end_entity).ok()?;
        // webpki checks the leaf's own validity before it looks for issuers, so an expired leaf
        // would fail the same way against every signer. Check the chain at a moment the leaf
        // was valid: the question here is only whose roots it chains to.
        let not_before = CertInfo::parse(end_entity).ok()?.not_before;
        let at = not_before.duration_since(std::time::UNIX_EPOCH).ok()? + std::time::Duration::from_secs(1);
        let at = UnixTime::since_unix_epoch(at);
        self.others.iter().find_map(|(name, anchors)| {
            ee.verify_for_usage(algs.all, anchors, intermediates, at, usage, None, None)
                .ok()
                .map(|_| name)
        })
    }

    /// Records why `end_entity` failed verification with `err`, naming the signers involved.
    fn explain(
        &self,
        err: &rustls::Error,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: webpki::KeyUsage,
        algs: &WebPkiSupportedAlgorithms,
    ) {
        let info = CertInfo::parse(end_entity).ok();
        let who = info
            .as_ref()
            .and_then(|i| i.uris.first().cloned())
            .map(|u| format!("peer {u}"))
            .unwrap_or_else(|| "the peer".to_string());
        let note = match err {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                let detail = match self.anchored_signer(end_entity, intermediates, usage, algs) {
                    Some(theirs) => format!(
                        "{who} presents a certificate from signer {theirs}, but this proxy trusts only signer {} (roots of {theirs} are not accepted here)",
                        self.signer
                    ),
                    None => format!(
                        "{who} presents a certificate issued by \"{}\", which chains to no signer in the trust bundle; this proxy trusts only signer {}",
                        info.map(|i| i.issuer).unwrap_or_default(),
                        self.signer
                    ),
                };
                HandshakeError::new(Reason::UnknownSigner, detail)
            }
            other => {
                let mut e = diagnose::from_rustls(other, self.signer.as_str());
                e.detail = format!("{who}: {}", e.detail);
                e
            }
        };
        diagnose::note(note);
    }
}

/// Inbound allow-list of peer SPIFFE IDs; an entry ending in `/*` matches every ID below that
/// path (`spiffe://td/ns/foo/*` matches `.../ns/foo/sa/x`, not `.../ns/foobar/...`).
#[derive(Clone, Debug, Default)]
pub struct AllowList(Vec<String>);

impl AllowList {
    pub fn new(entries: Vec<String>) -> Self {
        AllowList(entries)
    }

    pub fn allows(&self, id: &SpiffeId) -> bool {
        self.0.is_empty()
            || self.0.iter().any(|entry| match entry.strip_suffix('*') {
                Some(prefix) => id.as_str().starts_with(prefix),
                None => entry == id.as_str(),
            })
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
            self.trust.explain(
                &e,
                end_entity,
                intermediates,
                webpki::KeyUsage::server_auth(),
                &self.algs,
            );
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
        let id = chain_cache::remembered_or(self.cache.as_ref(), end_entity, intermediates, now, || {
            self.verify_chain(end_entity, intermediates, now)
        })?;
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
    algs: WebPkiSupportedAlgorithms,
    cache: Option<VerifiedChains>,
}

impl PeerClientVerifier {
    pub fn new(
        trust: Arc<Trust>,
        allow: AllowList,
        provider: &Arc<rustls::crypto::CryptoProvider>,
        cache: bool,
    ) -> Result<Self, TlsError> {
        let inner = WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
            .build()
            .map_err(|e| {
                TlsError::Trust(format!(
                    "cannot verify clients with signer {}'s roots: {e}",
                    trust.signer
                ))
            })?;
        Ok(PeerClientVerifier {
            trust,
            inner,
            allow,
            algs: provider.signature_verification_algorithms,
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
            self.trust.explain(
                &e,
                end_entity,
                intermediates,
                webpki::KeyUsage::client_auth(),
                &self.algs,
            );
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
        let id = chain_cache::remembered_or(self.cache.as_ref(), end_entity, intermediates, now, || {
            self.verify_chain(end_entity, intermediates, now)
        })?;
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

/// The signer in `bundle` whose roots `chain` (leaf first) anchors to, if exactly one does.
pub fn signer_of_chain(
    bundle: &TrustBundle,
    chain: &[CertificateDer<'_>],
    algs: &WebPkiSupportedAlgorithms,
) -> Option<SignerName> {
    let ee = webpki::EndEntityCert::try_from(chain.first()?).ok()?;
    let mut found = bundle.signers().into_iter().filter(|s| {
        let anchors: Vec<TrustAnchor<'_>> = bundle
            .roots_for(s)
            .iter()
            .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok().map(|a| a.to_owned()))
            .collect();
        ee.verify_for_usage(
            algs.all,
            &anchors,
            &chain[1..],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .is_ok()
    });
    match (found.next(), found.next()) {
        (Some(one), None) => Some(one.clone()),
        _ => None,
    }
}

/// After a resumed handshake, which skips certificate verification, re-checks what can change
/// while a session lives: the validity of the peer's leaf (carried over from the original
/// handshake) and, inbound, this listener's allow-list; outbound, the expected identity.
pub fn recheck_resumed(
    leaf: Option<&CertificateDer<'_>>,
    allow: Option<&AllowList>,
    expected: Option<&SpiffeId>,
) -> Result<SpiffeId, HandshakeError> {
    let leaf = leaf.ok_or_else(|| {
        HandshakeError::new(
            Reason::BadCertificate,
            "the resumed session carries no peer certificate",
        )
    })?;
    let info = CertInfo::parse(leaf).map_err(|e| HandshakeError::new(Reason::BadCertificate, e.to_string()))?;
    let now = std::time::SystemTime::now();
    if now > info.not_after {
        return Err(HandshakeError::new(
            Reason::Expired,
            format!(
                "the resumed session's peer certificate expired at {}",
                signet_certs::rfc3339(info.not_after)
            ),
        ));
    }
    if now < info.not_before {
        return Err(HandshakeError::new(
            Reason::NotYetValid,
            "the resumed session's peer certificate is not valid yet",
        ));
    }
    let id = info
        .spiffe_id()
        .map_err(|e| HandshakeError::new(Reason::BadCertificate, e.to_string()))?;
    if allow.is_some_and(|a| !a.allows(&id)) {
        return Err(HandshakeError::new(
            Reason::NotAllowed,
            format!("peer {id} (resumed session) is not on this listener's allow-list"),
        ));
    }
    if let Some(expected) = expected.filter(|e| **e != id) {
        return Err(HandshakeError::new(
            Reason::WrongIdentity,
            format!("the resumed session is with {id}, but this service should be {expected}"),
        ));
    }
    Ok(id)
}
