//! PEM in and out, with errors that name the file and say what was found instead.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::Error;

/// Reads every `CERTIFICATE` block of a PEM file; a file with none is an error.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_certs(&bytes, &path.display().to_string())
}

/// Parses every `CERTIFICATE` block; `origin` names the source in errors.
pub fn parse_certs(bytes: &[u8], origin: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bad = |problem: String| Error::Pem {
        origin: origin.to_string(),
        problem,
    };
    let mut certs = Vec::new();
    let mut others = Vec::new();
    for item in pem::PemObject::pem_slice_iter(bytes) {
        let (kind, der): (SectionKind, Vec<u8>) = item.map_err(|e| {
            bad(format!(
                "not valid PEM ({e}); expected -----BEGIN CERTIFICATE----- blocks"
            ))
        })?;
        match kind {
            SectionKind::Certificate => {
                x509_parser::parse_x509_certificate(&der).map_err(|e| {
                    bad(format!(
                        "certificate #{} is not a valid X.509 certificate ({e})",
                        certs.len() + 1
                    ))
                })?;
                certs.push(CertificateDer::from(der));
            }
            other => others.push(section_name(other)),
        }
    }
    if certs.is_empty() {
        let found = if others.is_empty() {
            "no PEM blocks".to_string()
        } else {
            format!("only {}", others.join(", "))
        };
        return Err(bad(format!(
            "no certificate found ({found}); expected -----BEGIN CERTIFICATE----- blocks"
        )));
    }
    Ok(certs)
}

/// A PEM section as its `BEGIN` line names it.
fn section_name(kind: SectionKind) -> String {
    match kind {
        SectionKind::Certificate => "CERTIFICATE",
        SectionKind::PublicKey => "PUBLIC KEY",
        SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
        SectionKind::PrivateKey => "PRIVATE KEY",
        SectionKind::EcPrivateKey => "EC PRIVATE KEY",
        SectionKind::Crl => "X509 CRL",
        SectionKind::Csr => "CERTIFICATE REQUEST",
        SectionKind::EchConfigList => "ECHCONFIG",
        _ => "another kind of",
    }
    .to_string()
        + " block"
}

/// Reads every `X509 CRL` block of a PEM file (certificate revocation lists); see [`parse_crls`].
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_crls(&bytes, &path.display().to_string())
}

/// Every `X509 CRL` block of PEM `bytes`; none, or a list that does not parse, is an error
/// naming `origin`.
pub fn parse_crls(bytes: &[u8], origin: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let bad = |problem: String| Error::Pem {
        origin: origin.to_string(),
        problem,
    };
    let mut crls = Vec::new();
    for item in pem::PemObject::pem_slice_iter(bytes) {
        let (kind, der): (SectionKind, Vec<u8>) =
            item.map_err(|e| bad(format!("not valid PEM ({e}); expected -----BEGIN X509 CRL----- blocks")))?;
        if kind == SectionKind::Crl {
            webpki::OwnedCertRevocationList::from_der(&der).map_err(|e| {
                bad(format!(
                    "revocation list #{} is unusable: {}",
                    crls.len() + 1,
                    crl_problem(&e)
                ))
            })?;
            crls.push(CertificateRevocationListDer::from(der));
        }
    }
    if crls.is_empty() {
        return Err(bad(
            "no revocation list found; expected -----BEGIN X509 CRL----- blocks".into(),
        ));
    }
    Ok(crls)
}

/// Why webpki refuses a revocation list, in words.
fn crl_problem(e: &webpki::Error) -> &'static str {
    use webpki::Error as W;
    match e {
        W::UnsupportedCrlVersion => {
            "it is a version 1 list; Signet reads version 2 lists (for `openssl ca -gencrl`, set crl_extensions with authorityKeyIdentifier so the list carries a CRL number)"
        }
        W::InvalidCrlNumber => "its CRL number is invalid",
        W::UnsupportedDeltaCrl => "it is a delta CRL; give the complete list",
        W::UnsupportedIndirectCrl => "it is an indirect CRL; give the list its CA issued itself",
        W::UnsupportedCriticalExtension => "it carries a critical extension Signet does not understand",
        W::UnsupportedRevocationReason => "it names a revocation reason that does not exist",
        _ => "it is not a valid DER X.509 CRL",
    }
}

/// Reads one PKCS#8, SEC1 or PKCS#1 private key from a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_key(&bytes, &path.display().to_string())
}

/// Parses one private key; `origin` names the source in errors. Key bytes never reach a message.
pub fn parse_key(bytes: &[u8], origin: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| Error::Pem {
        origin: origin.to_string(),
        problem: match e {
            pem::Error::NoItemsFound => {
                "no private key found; expected a -----BEGIN PRIVATE KEY----- (PKCS#8) or EC/RSA PRIVATE KEY block"
                    .to_string()
            }
            other => format!("not a valid PEM private key ({other})"),
        },
    })
}

/// Encodes certificates as concatenated PEM blocks.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| ::pem::encode(&::pem::Pem::new("CERTIFICATE", c.as_ref().to_vec())))
        .collect()
}

/// Lowercase hex SHA-256 of `bytes` (certificate fingerprints, XFCC `Hash=`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_reported_with_origin() {
        let e = parse_certs(b"hello", "w/tls.crt").unwrap_err().to_string();
        assert!(e.starts_with("w/tls.crt: no certificate found"), "{e}");
        let e = parse_key(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "k.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("k.pem: "), "{e}");
        let e = parse_certs(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "c.pem",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a valid X.509"), "{e}");
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
