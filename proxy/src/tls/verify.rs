//! Per-signer peer verification. A sidecar trusts only its own signer's roots, in both
//! directions; the SPIFFE ID is then checked against what the caller expects (outbound) or
//! the allow-list (inbound). Roots of other signers are kept only to *name* a refused peer's
//! signer; they are never used to accept one.
//!
//! rustls's stock server verifier checks DNS names and rejects SPIFFE-only certificates, so the
//! server side is verified here with `verify_server_cert_signed_by_trust_anchor` plus our own
//! URI SAN check (as linkerd and ztunnel do).

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use signet_certs::{Anchors, CertInfo, IdPattern, SignerName, SignerTrust, SpiffeId, Usage};
use webpki::{CertRevocationList, OwnedCertRevocationList, RevocationOptionsBuilder, UnknownStatusPolicy};

use super::chain_cache::{self, VerifiedChains};
use super::diagnose::{self, HandshakeError, Reason};
use crate::credentials::CredentialsError;

/// One root of our signer. webpki does not look at a trust anchor's dates; Signet does.
#[derive(Clone, Debug)]
struct Root {
    anchor: TrustAnchor<'static>,
    subject: String,
    not_before: SystemTime,
    not_after: SystemTime,
    /// Its pathLenConstraint, which webpki does not apply to trust anchors; Signet does.
    path_len: Option<u32>,
}

impl Root {
    fn current_at(&self, at: SystemTime) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}

/// Why a chain failed path validation against our signer's roots.
#[derive(Clone, Debug)]
pub enum PathError {
    /// As webpki found it.
    Invalid(webpki::Error),
    /// The chain anchors only to a root of our signer that is not valid now.
    RootOutOfDate {
        subject: String,
        not_before: SystemTime,
        not_after: SystemTime,
    },
    /// More intermediates follow the root than its pathLenConstraint allows.
    RootPathLength { subject: String, limit: u32 },
    /// The path is valid but the leaf does not list the usage the direction needs.
    MissingUsage,
}

/// What the path callback found wrong with the root a path ends at.
#[derive(Clone, Copy)]
enum RootProblem {
    OutOfDate(usize),
    PathLength(usize),
}

/// What one sidecar trusts, ready for verification: its own signer's roots (with their
/// validity) and revocation lists, plus every other signer's roots as anchors, kept only to name
/// a refused peer's signer.
#[derive(Clone, Debug)]
pub struct Trust {
    signer: SignerName,
    roots: Vec<Root>,
    root_certs: Vec<CertificateDer<'static>>,
    /// The roots' subjects as a TLS server names them when it asks for a client certificate.
    hints: Vec<DistinguishedName>,
    /// Revocation lists under the signer's roots (empty: no revocation checking).
    crls: Arc<Vec<CertRevocationList<'static>>>,
    others: Vec<(SignerName, Anchors)>,
    version: String,
    /// The bundle's `trustDomains` for this signer; `None` when an entry leaves them open.
    trust_domains: Option<Vec<String>>,
    /// The trust domains peers may be in: the bundle's, else the sidecar's own and its aliases
    /// (set by [`Trust::for_identity`] once the own identity is known).
    accepted_domains: Vec<String>,
}

impl Trust {
    /// Parses the roots and revocation lists. Fails when a root or list does not parse, or when
    /// no root of the signer is valid now (an expired root is never a trust anchor); a root that
    /// is out of date next to current ones is reported and left unused.
    pub fn new(trust: SignerTrust) -> Result<Self, CredentialsError> {
        let signer = trust.signer.clone();
        let bad_root = |index: usize, detail: String| CredentialsError::BadRoot {
            signer: signer.clone(),
            index,
            detail,
        };
        let mut roots = Vec::with_capacity(trust.roots.len());
        for (i, der) in trust.roots.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|e| bad_root(i + 1, diagnose::describe_webpki(&e)))?
                .to_owned();
            let info = CertInfo::parse(der).map_err(|e| bad_root(i + 1, e.to_string()))?;
            roots.push(Root {
                anchor,
                subject: info.subject,
                not_before: info.not_before,
                not_after: info.not_after,
                path_len: info.path_len,
            });
        }
        if roots.is_empty() {
            return Err(bad_root(0, "the signer has no roots".into()));
        }
        let now = SystemTime::now();
        if !roots.iter().any(|r| r.current_at(now)) {
            return Err(CredentialsError::NoCurrentRoot {
                signer,
                roots: roots
                    .iter()
                    .map(|r| root_dates(&r.subject, r.not_before, r.not_after, now))
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
        for r in roots.iter().filter(|r| !r.current_at(now)) {
            tracing::warn!(
                "signer {signer}: {}; it is not used as a trust anchor (remove it from the bundle)",
                root_dates(&r.subject, r.not_before, r.not_after, now)
            );
        }
        let mut crls = Vec::with_capacity(trust.crls.len());
        for (i, der) in trust.crls.iter().enumerate() {
            let crl = OwnedCertRevocationList::from_der(der).map_err(|e| CredentialsError::BadRevocationList {
                signer: signer.clone(),
                index: i + 1,
                detail: diagnose::describe_webpki(&e),
            })?;
            crls.push(CertRevocationList::Owned(crl));
        }
        Ok(Trust {
            hints: roots
                .iter()
                .map(|r| DistinguishedName::in_sequence(r.anchor.subject.as_ref()))
                .collect(),
            roots,
            crls: Arc::new(crls),
            others: trust
                .others
                .iter()
                .map(|(name, roots)| (name.clone(), Anchors::new(roots)))
                .collect(),
            signer,
            root_certs: trust.roots,
            version: trust.version,
            accepted_domains: trust.trust_domains.clone().unwrap_or_default(),
            trust_domains: trust.trust_domains,
        })
    }

    /// Validates the path from `leaf` through `intermediates` to a root of our signer, as a
    /// strict mesh does: the root must be valid at `now`, the leaf must list `usage` in its
    /// extended key usage (no EKU, anyExtendedKeyUsage or only the other direction's is refused),
    /// and no certificate on the path may be revoked by the signer's revocation lists.
    pub fn validate(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
        algs: &WebPkiSupportedAlgorithms,
    ) -> Result<(), PathError> {
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(PathError::Invalid)?;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let anchors: Vec<TrustAnchor<'_>> = self.roots.iter().map(|r| borrowed(&r.anchor)).collect();
        let problem: Cell<Option<RootProblem>> = Cell::new(None);
        let check_root = |path: &webpki::VerifiedPath<'_>| {
            let spki = path.anchor().subject_public_key_info.as_ref();
            let Some(i) = self
                .roots
                .iter()
                .position(|r| r.anchor.subject_public_key_info.as_ref() == spki)
            else {
                return Ok(());
            };
            let root = &self.roots[i];
            let found = if !root.current_at(at) {
                RootProblem::OutOfDate(i)
            } else if root
                .path_len
                .is_some_and(|limit| path.intermediate_certificates().count() > limit as usize)
            {
                RootProblem::PathLength(i)
            } else {
                return Ok(());
            };
            problem.set(Some(found));
            Err(webpki::Error::UnknownIssuer)
        };
        let crls: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        // Certificates whose issuer publishes no list are not refused for it.
        let revocation = RevocationOptionsBuilder::new(&crls)
            .ok()
            .map(|b| b.with_status_policy(UnknownStatusPolicy::Allow).build());
        // webpki's usage check: a listed usage must include this one (intermediates too).
        let result = ee.verify_for_usage(
            algs.all,
            &anchors,
            intermediates,
            now,
            usage.key_usage(),
            revocation,
            Some(&check_root),
        );
        match (result, problem.get()) {
            // Signet's: the leaf must list it.
            (Ok(_), _) if usage.listed_in(leaf) => Ok(()),
            (Ok(_), _) => Err(PathError::MissingUsage),
            (Err(webpki::Error::UnknownIssuer), Some(RootProblem::OutOfDate(i))) => Err(PathError::RootOutOfDate {
                subject: self.roots[i].subject.clone(),
                not_before: self.roots[i].not_before,
                not_after: self.roots[i].not_after,
            }),
            (Err(webpki::Error::UnknownIssuer), Some(RootProblem::PathLength(i))) => Err(PathError::RootPathLength {
                subject: self.roots[i].subject.clone(),
                limit: self.roots[i].path_len.unwrap_or_default(),
            }),
            (Err(e), _) => Err(PathError::Invalid(e)),
        }
    }

    /// The subjects of our roots, for a server's certificate request.
    pub fn hints(&self) -> &[DistinguishedName] {
        &self.hints
    }

    /// Whether revocation lists are in force.
    pub fn revocation_lists(&self) -> usize {
        self.crls.len()
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
            Reason::ForeignTrustDomain,
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

    pub fn root_certs(&self) -> &[CertificateDer<'static>] {
        &self.root_certs
    }

    /// Changes whenever what decides trust changes (see [`SignerTrust::version`]).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The other signer whose roots `chain` (leaf first) was issued under, if any.
    pub(crate) fn anchored_signer(&self, chain: &[CertificateDer<'_>]) -> Option<&SignerName> {
        self.others.iter().find(|(_, a)| a.issued(chain)).map(|(name, _)| name)
    }

    /// True when `chain` was issued under a root with the name of one of ours but another key:
    /// a root of our signer that has since been rotated out of the bundle. Peers often send
    /// that old root along; it counts too.
    pub(crate) fn issued_by_retired_root(&self, chain: &[CertificateDer<'_>]) -> bool {
        chain.iter().any(|der| {
            CertInfo::parse(der).is_ok_and(|c| {
                self.roots.iter().any(|r| r.subject == c.issuer)
                    && (!c.is_self_signed() || !self.root_certs.iter().any(|ours| ours.as_ref() == der.as_ref()))
            })
        })
    }

    /// Explains why `leaf` failed path validation (naming the signers involved), records the
    /// explanation for the handshake's log line and metric, and returns the error whose alert
    /// tells the peer.
    fn refuse(
        &self,
        err: PathError,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: Usage,
    ) -> rustls::Error {
        let (note, alert) = self.explain(&err, leaf, intermediates, usage);
        diagnose::note(note);
        rustls::Error::InvalidCertificate(alert)
    }

    fn explain(
        &self,
        err: &PathError,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        usage: Usage,
    ) -> (HandshakeError, CertificateError) {
        use webpki::Error as W;
        let info = CertInfo::parse(leaf).ok();
        // Nothing in a certificate that did not verify is vouched for: say so.
        let who = info
            .as_ref()
            .and_then(|i| i.uris.first().cloned())
            .map(|u| format!("peer {u} (unverified)"))
            .unwrap_or_else(|| "the peer".to_string());
        let signer = &self.signer;
        let err = match err {
            PathError::RootOutOfDate {
                subject,
                not_before,
                not_after,
            } => {
                let now = SystemTime::now();
                let (reason, alert) = if now < *not_before {
                    (Reason::RootNotYetValid, CertificateError::NotValidYet)
                } else {
                    (Reason::RootExpired, CertificateError::Expired)
                };
                let e = HandshakeError::new(
                    reason,
                    format!(
                        "{who} presents a certificate issued under a root of signer {signer} that is not valid now ({}); an out-of-date root is no trust anchor",
                        root_dates(subject, *not_before, *not_after, now)
                    ),
                );
                return (e, alert);
            }
            PathError::RootPathLength { subject, limit } => {
                let e = HandshakeError::new(
                    Reason::PathTooLong,
                    format!(
                        "{who}: the chain has more intermediates than root \"{subject}\" of signer {signer} allows (pathLenConstraint {limit})"
                    ),
                );
                return (e, CertificateError::BadEncoding);
            }
            PathError::MissingUsage => {
                let e = HandshakeError::new(Reason::BadUsage, format!("{who}: {}", missing_usage(leaf, usage)));
                return (e, CertificateError::InvalidPurpose);
            }
            PathError::Invalid(e) => e,
        };
        let chain: Vec<CertificateDer<'_>> = std::iter::once(leaf)
            .chain(intermediates)
            .map(|c| CertificateDer::from(c.as_ref()))
            .collect();
        match err {
            W::UnknownIssuer | W::InvalidSignatureForPublicKey => {
                let alert = CertificateError::UnknownIssuer;
                if let Some(theirs) = self.anchored_signer(&chain) {
                    // Signed by another signer of the bundle: that signer vouches for the name.
                    let peer = info
                        .as_ref()
                        .and_then(|i| i.uris.first().cloned())
                        .map(|u| format!("peer {u}"))
                        .unwrap_or_else(|| "the peer".to_string());
                    let e = HandshakeError::new(
                        Reason::UnknownSigner,
                        format!(
                            "{peer} presents a certificate from signer {theirs}, but this proxy trusts only signer {signer} (roots of {theirs} are not accepted here)"
                        ),
                    );
                    return (e, alert);
                }
                if self.issued_by_retired_root(&chain) {
                    let e = HandshakeError::new(
                        Reason::RetiredRoot,
                        format!(
                            "{who} presents a certificate issued under a root of signer {signer} that this proxy no longer trusts (its issuer has the name of the signer's root but not its key: a root retired by a rotation); the peer must renew its certificate from the signer's current root"
                        ),
                    );
                    return (e, alert);
                }
                let e = HandshakeError::new(
                    Reason::UnknownSigner,
                    format!(
                        "{who} presents a certificate issued by \"{}\" (unverified), which chains to no signer in the trust bundle; this proxy trusts only signer {signer}",
                        info.map(|i| i.issuer).unwrap_or_default(),
                    ),
                );
                (e, alert)
            }
            W::CertExpired { .. } | W::InvalidCertValidity => (
                HandshakeError::new(
                    Reason::Expired,
                    format!("{who}: {}", expired_which(info.as_ref(), SystemTime::now())),
                ),
                CertificateError::Expired,
            ),
            W::CertNotValidYet { .. } => (
                HandshakeError::new(
                    Reason::NotYetValid,
                    format!("{who}: a certificate in the chain is not valid yet (check the clocks)"),
                ),
                CertificateError::NotValidYet,
            ),
            W::RequiredEkuNotFoundContext(_) => (
                HandshakeError::new(Reason::BadUsage, format!("{who}: {}", missing_usage(leaf, usage))),
                CertificateError::InvalidPurpose,
            ),
            W::CertRevoked => (
                HandshakeError::new(
                    Reason::Revoked,
                    format!("{who}: a certificate in the chain is revoked by signer {signer}'s revocation list"),
                ),
                CertificateError::Revoked,
            ),
            W::CaUsedAsEndEntity => (
                HandshakeError::new(
                    Reason::CaAsLeaf,
                    format!("{who} presents a CA certificate as its own; a workload presents a leaf certificate"),
                ),
                CertificateError::BadEncoding,
            ),
            W::PathLenConstraintViolated | W::MaximumPathDepthExceeded => (
                HandshakeError::new(
                    Reason::PathTooLong,
                    format!("{who}: the chain is longer than its CAs allow (path length constraint)"),
                ),
                CertificateError::BadEncoding,
            ),
            W::NameConstraintViolation => (
                HandshakeError::new(
                    Reason::NameConstraint,
                    format!("{who}: a name in the certificate violates a name constraint of its CA"),
                ),
                CertificateError::NotValidForName,
            ),
            W::UnsupportedCriticalExtension => (
                HandshakeError::new(
                    Reason::CriticalExtension,
                    format!(
                        "{who}: a certificate in the chain carries a critical extension Signet does not understand"
                    ),
                ),
                CertificateError::UnhandledCriticalExtension,
            ),
            W::EndEntityUsedAsCa => (
                HandshakeError::new(
                    Reason::BadCertificate,
                    format!("{who}: a workload certificate appears as an issuer in the chain"),
                ),
                CertificateError::BadEncoding,
            ),
            other => (
                HandshakeError::new(
                    Reason::BadCertificate,
                    format!(
                        "{who}: the certificate {}",
                        diagnose::describe_webpki(other).trim_start_matches("it ")
                    ),
                ),
                match other {
                    W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
                    _ => CertificateError::BadSignature,
                },
            ),
        }
    }
}

/// A trust anchor borrowing from an owned one (no allocation).
fn borrowed<'a>(anchor: &'a TrustAnchor<'static>) -> TrustAnchor<'a> {
    TrustAnchor {
        subject: anchor.subject.as_ref().into(),
        subject_public_key_info: anchor.subject_public_key_info.as_ref().into(),
        name_constraints: anchor.name_constraints.as_ref().map(|n| n.as_ref().into()),
    }
}

/// "root CN=… expired at …" / "is not valid before …".
fn root_dates(subject: &str, not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> String {
    if now < not_before {
        format!(
            "root \"{subject}\" is not valid before {}",
            signet_certs::rfc3339(not_before)
        )
    } else {
        format!("root \"{subject}\" expired at {}", signet_certs::rfc3339(not_after))
    }
}

/// Which certificate of a chain whose leaf is `leaf` has expired, as a sentence.
fn expired_which(leaf: Option<&CertInfo>, now: SystemTime) -> String {
    match leaf {
        Some(i) if i.not_after < now => format!("its certificate expired at {}", signet_certs::rfc3339(i.not_after)),
        Some(_) => "an intermediate certificate of its chain has expired".to_string(),
        None => "a certificate of its chain has expired".to_string(),
    }
}

/// Why a leaf lacks the extended key usage the direction needs, from its own EKU list.
fn missing_usage(leaf: &CertificateDer<'_>, usage: Usage) -> String {
    let listed = CertInfo::parse(leaf).ok().and_then(|i| i.extended_key_usage);
    let need = format!(
        "{} is required here (a mesh certificate lists serverAuth and clientAuth)",
        usage.name()
    );
    match listed {
        None => format!("the certificate has no extended key usage; {need}"),
        Some(list) if list.iter().all(|u| u == "anyExtendedKeyUsage") => {
            format!("the certificate lists only anyExtendedKeyUsage, which Signet does not accept; {need}")
        }
        Some(list) => format!("the certificate lists only {}; {need}", list.join(", ")),
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
                Reason::BadSpiffeId,
                format!("the peer's certificate carries no usable SPIFFE ID ({e})"),
            )
        })
}

/// The checks both directions make after the path: one SPIFFE ID, in an accepted trust domain.
fn verified_peer(trust: &Trust, leaf: &CertificateDer<'_>) -> Result<SpiffeId, rustls::Error> {
    let id = peer_id(leaf).map_err(|e| {
        diagnose::note(e);
        rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
    })?;
    trust.check_trust_domain(&id).map_err(|e| {
        diagnose::note(e);
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    })?;
    Ok(id)
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
            self.trust
                .validate(end_entity, intermediates, now, Usage::ServerAuth, &self.algs)
                .map_err(|e| self.trust.refuse(e, end_entity, intermediates, Usage::ServerAuth))?;
            let id = verified_peer(&self.trust, end_entity)?;
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
    allow: AllowList,
    algs: WebPkiSupportedAlgorithms,
    cache: Option<VerifiedChains>,
}

impl PeerClientVerifier {
    #[cfg(test)]
    pub(crate) fn cache_footprint(&self) -> (usize, usize) {
        self.cache.as_ref().map(|c| c.footprint()).unwrap_or_default()
    }

    pub fn new(trust: Arc<Trust>, allow: AllowList, provider: &Arc<CryptoProvider>, cache: bool) -> Self {
        PeerClientVerifier {
            trust,
            allow,
            algs: provider.signature_verification_algorithms,
            cache: cache.then(VerifiedChains::default),
        }
    }
}

impl ClientCertVerifier for PeerClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.trust.hints()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Authorization is part of what is remembered: a refused peer never fills the cache.
        chain_cache::remembered_or(self.cache.as_ref(), end_entity, intermediates, now, || {
            self.trust
                .validate(end_entity, intermediates, now, Usage::ClientAuth, &self.algs)
                .map_err(|e| self.trust.refuse(e, end_entity, intermediates, Usage::ClientAuth))?;
            let id = verified_peer(&self.trust, end_entity)?;
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
