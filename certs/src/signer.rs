//! `Signer`: a CA that signs workload certificates for one `SignerName`, with its own policy.
//!
//! A signer never copies the CA flag, key usages or validity from a request: it reads only the
//! public key and the subjectAltNames, and sets everything else itself (as Istio's CA and
//! cert-manager's CSR signer do). rcgen's `CertificateSigningRequestParams::signed_by` would
//! copy the requested `is_ca`, key usages and EKUs, so it is deliberately not used.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
    PKCS_ED25519, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::{
    CertInfo, Error, RequestInfo, SignerName, SpiffeId, WorkloadKey, certs_to_pem, files, parse_certs, write_private,
    write_public,
};

/// Tolerance for clocks that run a little behind the signer's: a tenth of the lifetime, at most
/// a minute (so that short-lived test certificates renew on the schedule their TTL implies).
fn clock_skew(ttl: Duration) -> Duration {
    (ttl / 10).min(Duration::from_secs(60))
}

/// How long a newly created signer's self-signed CA certificate is valid by default.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

pub struct Signer {
    name: SignerName,
    /// The signer's own CA certificate.
    cert: CertificateDer<'static>,
    /// Certificates a leaf presents after itself: the signer's certificate and any intermediates
    /// above it, but never a self-signed root.
    presented: Vec<CertificateDer<'static>>,
    /// The root(s) leaves of this signer anchor to (`ca.crt`).
    roots: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
}

/// The signer-side settings for one certificate.
#[derive(Clone, Debug)]
pub struct IssueOptions {
    /// Lifetime from now (default 24 h, Istio's `SECRET_TTL`).
    pub ttl: Duration,
    /// Moves the whole validity window into the past (tests of expired and rotated certificates).
    pub backdate: Duration,
}

impl Default for IssueOptions {
    fn default() -> Self {
        IssueOptions {
            ttl: Duration::from_secs(24 * 3600),
            backdate: Duration::ZERO,
        }
    }
}

/// A signed leaf, with what a workload needs next to it.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    /// Leaf first, then intermediates (no self-signed root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The signer's roots (`ca.crt`).
    pub roots: Vec<CertificateDer<'static>>,
    pub leaf: CertInfo,
}

impl IssuedCertificate {
    pub fn chain_pem(&self) -> String {
        certs_to_pem(&self.chain)
    }

    pub fn roots_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }
}

/// A workload certificate together with the key it was made for.
#[derive(Debug)]
pub struct IssuedWorkload {
    pub certificate: IssuedCertificate,
    pub key: WorkloadKey,
}

impl IssuedWorkload {
    /// Writes `tls.crt` (leaf and chain), `tls.key` (mode 0600) and `ca.crt` (the signer's
    /// roots) into `dir`: the layout a sidecar's `identity.certDir` reads.
    pub fn write_dir(&self, dir: &Path) -> Result<(), Error> {
        write_public(&dir.join(files::CERT), self.certificate.chain_pem().as_bytes())?;
        write_private(&dir.join(files::KEY), self.key.to_pem().as_bytes())?;
        write_public(&dir.join(files::CA), self.certificate.roots_pem().as_bytes())
    }
}

/// The contents of a cert-manager CA secret: `tls.crt`, `tls.key` and, optionally, `ca.crt`.
pub struct SignerParts<'a> {
    /// Where they came from (a directory, `secret/<namespace>/<name>`), for errors.
    pub origin: String,
    pub cert: &'a [u8],
    pub key: &'a [u8],
    pub ca: Option<&'a [u8]>,
}

impl Signer {
    /// Creates a signer with a fresh self-signed ECDSA P-256 CA (what a cert-manager
    /// `selfSigned` ClusterIssuer plus an `isCA` Certificate gives you).
    pub fn create(name: SignerName, validity: Duration) -> Result<Self, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::crypto("generating the signer key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "Signet");
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        // Path length 0: a signer signs workloads only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_time(now, Duration::ZERO, clock_skew(validity))?;
        params.not_after = to_time(now, validity, Duration::ZERO)?;
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(Error::crypto("self-signing the signer certificate"))?;
        let cert = cert.der().clone();
        Ok(Signer {
            name,
            presented: Vec::new(),
            roots: vec![cert.clone()],
            cert,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a signer from a cert-manager secret directory: `tls.crt` (the CA certificate, then
    /// its chain), `tls.key`, and `ca.crt` (the root; optional when `tls.crt` ends in one).
    pub fn load_dir(dir: &Path, name: SignerName) -> Result<Self, Error> {
        let read = |file: &str| {
            let path = dir.join(file);
            std::fs::read(&path).map_err(|e| Error::io(&path, e))
        };
        let ca_path = dir.join(files::CA);
        let ca = if ca_path.exists() { Some(read(files::CA)?) } else { None };
        let parts = SignerParts {
            origin: dir.display().to_string(),
            cert: &read(files::CERT)?,
            key: &read(files::KEY)?,
            ca: ca.as_deref(),
        };
        Self::from_parts(parts, name)
    }

    /// Builds a signer from the three parts of a cert-manager CA secret (a directory's files, or
    /// a Kubernetes Secret's `data` keys); errors name `origin/<part>`.
    pub fn from_parts(parts: SignerParts<'_>, name: SignerName) -> Result<Self, Error> {
        let origin = |file: &str| format!("{}/{file}", parts.origin);
        let certs = parse_certs(parts.cert, &origin(files::CERT))?;
        let key_pem = std::str::from_utf8(parts.key).map_err(|_| Error::Pem {
            origin: origin(files::KEY),
            problem: "not PEM text".into(),
        })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::Pem {
            origin: origin(files::KEY),
            problem: format!("not a usable private key ({e})"),
        })?;
        let own = CertInfo::parse(&certs[0])?;
        if !own.is_ca {
            return Err(Error::Certificate(format!(
                "{}: the first certificate is not a CA (basicConstraints CA:FALSE); a signer holds the CA's own certificate",
                origin(files::CERT)
            )));
        }
        if own.spki != key.subject_public_key_info() {
            return Err(Error::Certificate(format!(
                "{}: the private key does not belong to the certificate in {}",
                origin(files::KEY),
                origin(files::CERT)
            )));
        }
        let mut roots = Vec::new();
        let mut presented = Vec::new();
        for cert in &certs {
            if CertInfo::parse(cert)?.is_self_signed() {
                roots.push(cert.clone());
            } else {
                presented.push(cert.clone());
            }
        }
        if let Some(ca) = parts.ca {
            roots = parse_certs(ca, &origin(files::CA))?;
        } else if roots.is_empty() {
            return Err(Error::Certificate(format!(
                "{}: missing, and {} holds no self-signed root; add the signer's root as ca.crt",
                origin(files::CA),
                origin(files::CERT)
            )));
        }
        let issuer = Issuer::from_ca_cert_der(&certs[0], key).map_err(Error::crypto(format!(
            "{}: reading the CA certificate",
            origin(files::CERT)
        )))?;
        Ok(Signer {
            name,
            cert: certs[0].clone(),
            presented,
            roots,
            issuer,
        })
    }

    /// Writes `tls.crt`, `tls.key` (mode 0600) and `ca.crt` into `dir`.
    pub fn write_dir(&self, dir: &Path) -> Result<(), Error> {
        let mut tls_crt = vec![self.cert.clone()];
        tls_crt.extend(self.presented.iter().filter(|c| **c != self.cert).cloned());
        write_public(&dir.join(files::CERT), certs_to_pem(&tls_crt).as_bytes())?;
        write_private(&dir.join(files::KEY), self.issuer.key().serialize_pem().as_bytes())?;
        write_public(&dir.join(files::CA), certs_to_pem(&self.roots).as_bytes())?;
        Ok(())
    }

    pub fn name(&self) -> &SignerName {
        &self.name
    }

    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Makes a key and a CSR for `id` (and `dns`) and signs it: the path a sidecar's CSR takes,
    /// for `signet cert issue` and the bench tools.
    pub fn issue_workload(
        &self,
        id: &SpiffeId,
        dns: &[String],
        options: &IssueOptions,
    ) -> Result<IssuedWorkload, Error> {
        let key = WorkloadKey::generate()?;
        let csr = key.request(id, dns)?;
        let certificate = self.sign(&csr.pem, options)?;
        Ok(IssuedWorkload { certificate, key })
    }

    /// Signs a PEM certificate request with this signer's policy: empty subject, the request's
    /// subjectAltNames (exactly one of them a SPIFFE ID), CA:FALSE, key usages
    /// digitalSignature + keyEncipherment, EKUs serverAuth + clientAuth, and the validity from
    /// `options`. Whatever else the request asks for is ignored.
    pub fn sign(&self, csr_pem: &str, options: &IssueOptions) -> Result<IssuedCertificate, Error> {
        let requested = RequestInfo::parse(csr_pem)?;
        match requested.uris.as_slice() {
            [uri] => {
                uri.parse::<SpiffeId>()?;
            }
            [] => return Err(Error::Request("the request has no URI SAN (SPIFFE ID)".into())),
            _ => return Err(Error::Request("the request has more than one URI SAN".into())),
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            Error::Request(match e {
                rcgen::Error::UnsupportedExtension => {
                    "the request carries an extension a signer does not sign (only subjectAltName, keyUsage, extendedKeyUsage and basicConstraints are read)".to_string()
                }
                other => format!("unreadable request ({other})"),
            })
        })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = csr
            .params
            .subject_alt_names
            .iter()
            .filter(|san| matches!(san, SanType::URI(_) | SanType::DnsName(_) | SanType::IpAddress(_)))
            .cloned()
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let start = SystemTime::now()
            .checked_sub(options.backdate)
            .ok_or_else(|| Error::Request("backdate too large".into()))?;
        params.not_before = to_time(start, Duration::ZERO, clock_skew(options.ttl))?;
        params.not_after = to_time(start, options.ttl, Duration::ZERO)?;
        let leaf = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(Error::crypto("signing the certificate"))?;
        let leaf = leaf.der().clone();
        let mut chain = vec![leaf.clone()];
        chain.extend(self.presented.iter().cloned());
        Ok(IssuedCertificate {
            leaf: CertInfo::parse(&leaf)?,
            chain,
            roots: self.roots.clone(),
        })
    }
}

impl Signer {
    /// Signs the key of a DER PKCS#10 request for `id` alone, valid exactly from `not_before`
    /// to `not_after`: the PodCertificateRequest path, where the kubelet's stub request carries
    /// only the key and the identity comes from the Pod the API server attested. The request's
    /// signature is checked; its names and extensions are ignored. Only the key types of
    /// [`SIGNED_KEY_TYPES`] are signed.
    pub fn sign_key(
        &self,
        request_der: &[u8],
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCertificate, Error> {
        let key = RequestedKey::parse(request_der)?;
        if !SIGNED_KEY_TYPES.contains(&key.kind.as_str()) {
            return Err(Error::Request(format!(
                "a {} key is not signed here; use one of {}",
                key.kind,
                SIGNED_KEY_TYPES.join(", ")
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(id.to_string().try_into().map_err(|_| {
                Error::Request(format!("{id} cannot be written as a URI SAN"))
            })?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = to_time(not_before, Duration::ZERO, Duration::ZERO)?;
        params.not_after = to_time(not_after, Duration::ZERO, Duration::ZERO)?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(Error::crypto("signing the certificate"))?;
        let leaf = leaf.der().clone();
        let info = CertInfo::parse(&leaf)?;
        let mut chain = vec![leaf];
        chain.extend(self.presented.iter().cloned());
        Ok(IssuedCertificate {
            leaf: info,
            chain,
            roots: self.roots.clone(),
        })
    }
}

/// The key types [`Signer::sign_key`] signs, by the names of the Kubernetes API
/// (`PodCertificateProjection.keyType`): the curves and the signature scheme Signet's TLS uses.
pub const SIGNED_KEY_TYPES: &[&str] = &["ECDSAP256", "ECDSAP384", "ED25519"];

/// The key type of a DER PKCS#10 request, by the Kubernetes API's names (`ECDSAP256`,
/// `RSA3072`, `ED25519`, ...), once its signature is checked.
pub fn request_key_type(request_der: &[u8]) -> Result<String, Error> {
    Ok(RequestedKey::parse(request_der)?.kind)
}

/// A requested key, with the algorithm its SubjectPublicKeyInfo names. (rcgen takes the
/// algorithm from the request's signature instead, which writes a P-384 key in a request signed
/// with SHA-256 out as a P-256 key.)
struct RequestedKey {
    kind: String,
    alg: &'static SignatureAlgorithm,
    raw: Vec<u8>,
}

impl RequestedKey {
    fn parse(der: &[u8]) -> Result<Self, Error> {
        use x509_parser::prelude::FromDer;
        let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
            .map_err(|e| Error::Request(format!("not a DER PKCS#10 certificate request ({e})")))?;
        if !rest.is_empty() {
            return Err(Error::Request("trailing bytes after the certificate request".into()));
        }
        csr.verify_signature()
            .map_err(|e| Error::Request(format!("the request's signature does not verify ({e})")))?;
        let spki = &csr.certification_request_info.subject_pki;
        let raw = spki.subject_public_key.data.to_vec();
        let oid = spki.algorithm.algorithm.to_id_string();
        let (kind, alg): (String, &'static SignatureAlgorithm) = match oid.as_str() {
            "1.2.840.10045.2.1" => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    "1.2.840.10045.3.1.7" => ("ECDSAP256".into(), &PKCS_ECDSA_P256_SHA256),
                    "1.3.132.0.34" => ("ECDSAP384".into(), &PKCS_ECDSA_P384_SHA384),
                    "1.3.132.0.35" => ("ECDSAP521".into(), &PKCS_ECDSA_P256_SHA256),
                    other => (format!("ECDSA (curve {other})"), &PKCS_ECDSA_P256_SHA256),
                }
            }
            "1.3.101.112" => ("ED25519".into(), &PKCS_ED25519),
            "1.2.840.113549.1.1.1" => {
                let bits = match spki.parsed() {
                    Ok(x509_parser::public_key::PublicKey::RSA(k)) => k.key_size(),
                    _ => 0,
                };
                (format!("RSA{bits}"), &PKCS_ECDSA_P256_SHA256)
            }
            other => (format!("unknown (algorithm {other})"), &PKCS_ECDSA_P256_SHA256),
        };
        Ok(RequestedKey { kind, alg, raw })
    }
}

impl PublicKeyData for RequestedKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `base ± offset` as an X.509 time; errors (never panics) beyond what a certificate can carry.
fn to_time(base: SystemTime, plus: Duration, minus: Duration) -> Result<OffsetDateTime, Error> {
    let too_far = || Error::Request("the validity is too long or too far in the past for a certificate".into());
    let t = base
        .checked_add(plus)
        .and_then(|t| t.checked_sub(minus))
        .ok_or_else(too_far)?;
    let secs = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).map_err(|_| too_far())?,
        Err(e) => -i64::try_from(e.duration().as_secs()).map_err(|_| too_far())?,
    };
    let time = OffsetDateTime::from_unix_timestamp(secs).map_err(|_| too_far())?;
    // X.509 GeneralizedTime stops at 9999.
    if time.year() > 9999 {
        return Err(too_far());
    }
    Ok(time)
}

/// 128 random bits, positive and without a leading zero byte (RFC 5280 §4.1.2.2).
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG fails only if the OS RNG is unusable, where no certificate can be made safely.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(name: &str) -> Signer {
        Signer::create(SignerName::with_default_domain(name).unwrap(), DEFAULT_CA_VALIDITY).unwrap()
    }

    fn id() -> SpiffeId {
        "spiffe://cluster.local/ns/foo/sa/httpbin".parse().unwrap()
    }

    /// A stub request as the kubelet makes one: no subject, no names, only the key.
    fn stub(alg: &'static SignatureAlgorithm) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate_for(alg).unwrap();
        let der = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        (key, der)
    }

    #[test]
    fn keys_are_signed_with_the_algorithm_their_key_info_names_for_the_given_identity_and_times() {
        let foo = signer("foo");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let end = start + Duration::from_secs(3600);
        for (alg, kind) in [
            (&PKCS_ECDSA_P256_SHA256, "ECDSAP256"),
            (&PKCS_ECDSA_P384_SHA384, "ECDSAP384"),
            (&PKCS_ED25519, "ED25519"),
        ] {
            let (key, der) = stub(alg);
            assert_eq!(request_key_type(&der).unwrap(), kind);
            let issued = foo.sign_key(&der, &id(), start, end).unwrap();
            assert_eq!(
                issued.leaf.spki,
                key.subject_public_key_info(),
                "{kind}: the requested key"
            );
            assert_eq!(issued.leaf.uris, vec![id().to_string()]);
            assert_eq!(issued.leaf.not_before, start);
            assert_eq!(issued.leaf.not_after, end);
            assert!(!issued.leaf.is_ca);
            let anchors = crate::Anchors::new(foo.roots());
            let at = start + Duration::from_secs(60);
            anchors
                .verify(&issued.chain, at, crate::Usage::ServerAuth)
                .unwrap_or_else(|e| panic!("{kind}: {e:?}"));
        }
    }

    #[test]
    fn a_request_whose_signature_does_not_verify_is_refused() {
        let (_, mut der) = stub(&PKCS_ECDSA_P256_SHA256);
        let last = der.len() - 1;
        der[last] ^= 1;
        let e = signer("foo")
            .sign_key(
                &der,
                &id(),
                SystemTime::now(),
                SystemTime::now() + Duration::from_secs(3600),
            )
            .unwrap_err();
        assert!(e.to_string().contains("signature"), "{e}");
        assert!(
            request_key_type(b"garbage")
                .unwrap_err()
                .to_string()
                .contains("PKCS#10")
        );
    }

    #[test]
    fn signs_with_its_own_policy_not_the_requests() {
        let foo = signer("foo");
        // A request asking to be a CA with certificate-signing usage.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["httpbin.foo".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(id().as_str().try_into().unwrap()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(RequestInfo::parse(&csr).unwrap().requests_ca);

        let issued = foo.sign(&csr, &IssueOptions::default()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.chain[0]).unwrap();
        assert!(!cert.is_ca(), "CA flag copied from the request");
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        assert_eq!(issued.leaf.spiffe_id().unwrap(), id());
        assert_eq!(issued.leaf.dns, vec!["httpbin.foo"]);
        assert_eq!(issued.leaf.spki, key.subject_public_key_info());
        let life = issued.leaf.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(life <= Duration::from_secs(24 * 3600) && life > Duration::from_secs(23 * 3600));
        assert_eq!(issued.roots, vec![foo.certificate().clone()]);
        assert_eq!(issued.chain.len(), 1, "a self-signed root is not presented");
    }

    #[test]
    fn workload_requests_carry_exactly_one_uri() {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.request(&id(), &["httpbin.foo".into()]).unwrap();
        let info = RequestInfo::parse(&csr.pem).unwrap();
        assert_eq!(info.uris, vec![id().to_string()]);
        assert_eq!(info.dns, vec!["httpbin.foo"]);
        assert!(!info.requests_ca);
        assert!(format!("{key:?}").contains("redacted"));
    }

    #[test]
    fn refuses_requests_without_or_with_two_spiffe_ids() {
        let foo = signer("foo");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        assert!(
            foo.sign(&csr, &IssueOptions::default())
                .unwrap_err()
                .to_string()
                .contains("no URI SAN")
        );
        let mut params = CertificateParams::default();
        for u in ["spiffe://a/x", "spiffe://a/y"] {
            params.subject_alt_names.push(SanType::URI(u.try_into().unwrap()));
        }
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(
            foo.sign(&csr, &IssueOptions::default())
                .unwrap_err()
                .to_string()
                .contains("more than one")
        );
    }

    #[test]
    fn tampered_requests_are_refused() {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.request(&id(), &[]).unwrap();
        let block = ::pem::parse(&csr.pem).unwrap();
        let mut der = block.contents().to_vec();
        let n = der.len();
        der[n - 5] ^= 0x55; // inside the signature
        let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
        assert!(signer("foo").sign(&tampered, &IssueOptions::default()).is_err());
    }

    #[test]
    fn a_signer_round_trips_through_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let foo = signer("foo");
        foo.write_dir(dir.path()).unwrap();
        let loaded = Signer::load_dir(dir.path(), foo.name().clone()).unwrap();
        assert_eq!(loaded.certificate(), foo.certificate());
        assert_eq!(loaded.roots(), foo.roots());
        let key = WorkloadKey::generate().unwrap();
        let issued = loaded
            .sign(&key.request(&id(), &[]).unwrap().pem, &IssueOptions::default())
            .unwrap();
        assert_eq!(issued.roots, foo.roots());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("tls.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_key_from_another_signer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        signer("foo").write_dir(dir.path()).unwrap();
        let other = tempfile::tempdir().unwrap();
        signer("bar").write_dir(other.path()).unwrap();
        std::fs::copy(other.path().join("tls.key"), dir.path().join("tls.key")).unwrap();
        let e = Signer::load_dir(dir.path(), SignerName::with_default_domain("foo").unwrap()).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
    }

    #[test]
    fn absurd_lifetimes_are_errors_not_panics() {
        let name = SignerName::with_default_domain("foo").unwrap();
        let e = Signer::create(name, Duration::from_secs(4_000_000 * 86_400)).unwrap_err();
        assert!(e.to_string().contains("too long"), "{e}");
        let key = WorkloadKey::generate().unwrap();
        let options = IssueOptions {
            ttl: Duration::from_secs(u64::MAX / 2),
            backdate: Duration::ZERO,
        };
        assert!(
            signer("foo")
                .sign(&key.request(&id(), &[]).unwrap().pem, &options)
                .is_err()
        );
    }

    #[test]
    fn backdated_certificates_are_expired() {
        let key = WorkloadKey::generate().unwrap();
        let options = IssueOptions {
            ttl: Duration::from_secs(3600),
            backdate: Duration::from_secs(7200),
        };
        let issued = signer("foo")
            .sign(&key.request(&id(), &[]).unwrap().pem, &options)
            .unwrap();
        assert!(issued.leaf.not_after < SystemTime::now());
    }
}
