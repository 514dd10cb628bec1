//! Workload keys and PKCS#10 certificate requests with a SPIFFE ID, as a sidecar makes them,
//! and `RequestInfo`, what a signer reads out of a request before deciding to sign it.

use std::fmt;
use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use rustls_pki_types::PrivateKeyDer;

use crate::{Error, SpiffeId};

/// An ECDSA P-256 private key made on the workload's side; it never leaves it.
pub struct WorkloadKey(KeyPair);

impl WorkloadKey {
    pub fn generate() -> Result<Self, Error> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(WorkloadKey)
            .map_err(Error::crypto("generating an ECDSA P-256 key"))
    }

    /// PKCS#8 PEM. Secret: write it with [`crate::write_private`], never log it.
    pub fn to_pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// PKCS#8 DER, as TLS configs take it. Secret.
    pub fn to_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.0.serialize_der().into())
    }

    /// A CSR with an empty subject, exactly one URI SAN (the SPIFFE ID) and optional DNS SANs,
    /// the shape Istio's agents send (the SAN is then marked critical, as X509-SVID requires).
    pub fn request(&self, id: &SpiffeId, dns: &[String]) -> Result<CertificateRequest, Error> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names.push(SanType::URI(
            id.as_str()
                .try_into()
                .map_err(Error::crypto("encoding the SPIFFE ID"))?,
        ));
        for name in dns {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| Error::Request(format!("{name:?} is not a valid DNS name")))?,
            ));
        }
        let csr = params
            .serialize_request(&self.0)
            .map_err(Error::crypto("building the certificate request"))?;
        let pem = csr.pem().map_err(Error::crypto("encoding the certificate request"))?;
        Ok(CertificateRequest { pem })
    }
}

impl fmt::Debug for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkloadKey(<redacted>)")
    }
}

/// A PEM `CERTIFICATE REQUEST`.
#[derive(Clone, Debug)]
pub struct CertificateRequest {
    pub pem: String,
}

/// What a request asks for. Parsing verifies the request's signature.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub subject: String,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub emails: Vec<String>,
    /// basicConstraints CA:TRUE was requested.
    pub requests_ca: bool,
    /// Extensions other than subjectAltName, keyUsage, extendedKeyUsage and basicConstraints.
    pub other_extensions: Vec<String>,
    /// The requested key's SubjectPublicKeyInfo, DER (an issued leaf must carry the same).
    pub spki: Vec<u8>,
}

impl RequestInfo {
    pub fn parse(pem: &str) -> Result<Self, Error> {
        let block = ::pem::parse(pem).map_err(|e| Error::Request(format!("not a PEM certificate request ({e})")))?;
        if block.tag() != "CERTIFICATE REQUEST" && block.tag() != "NEW CERTIFICATE REQUEST" {
            return Err(Error::Request(format!(
                "expected a CERTIFICATE REQUEST PEM block, found {:?}",
                block.tag()
            )));
        }
        let (_, csr) = X509CertificationRequest::from_der(block.contents())
            .map_err(|e| Error::Request(format!("malformed PKCS#10 request ({e})")))?;
        csr.verify_signature()
            .map_err(|_| Error::Request("the request's signature does not verify".into()))?;
        let mut info = RequestInfo {
            subject: csr.certification_request_info.subject.to_string(),
            spki: csr.certification_request_info.subject_pki.raw.to_vec(),
            ..Default::default()
        };
        for ext in csr.requested_extensions().into_iter().flatten() {
            match ext {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(u) => info.uris.push(u.to_string()),
                            GeneralName::DNSName(d) => info.dns.push(d.to_string()),
                            GeneralName::RFC822Name(m) => info.emails.push(m.to_string()),
                            GeneralName::IPAddress(o) => match o.len() {
                                4 => info.ips.extend(<[u8; 4]>::try_from(*o).ok().map(IpAddr::from)),
                                16 => info.ips.extend(<[u8; 16]>::try_from(*o).ok().map(IpAddr::from)),
                                _ => info.other_extensions.push("malformed IP SAN".into()),
                            },
                            other => info.other_extensions.push(format!("SAN {other}")),
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) => info.requests_ca |= bc.ca,
                ParsedExtension::KeyUsage(_) | ParsedExtension::ExtendedKeyUsage(_) => {}
                other => info.other_extensions.push(extension_name(other)),
            }
        }
        Ok(info)
    }
}

/// A short human name for an extension a signer will not sign.
fn extension_name(ext: &ParsedExtension<'_>) -> String {
    let name = match ext {
        ParsedExtension::NameConstraints(_) => "nameConstraints",
        ParsedExtension::CertificatePolicies(_) => "certificatePolicies",
        ParsedExtension::PolicyConstraints(_) => "policyConstraints",
        ParsedExtension::PolicyMappings(_) => "policyMappings",
        ParsedExtension::InhibitAnyPolicy(_) => "inhibitAnyPolicy",
        ParsedExtension::AuthorityKeyIdentifier(_) => "authorityKeyIdentifier",
        ParsedExtension::SubjectKeyIdentifier(_) => "subjectKeyIdentifier",
        ParsedExtension::AuthorityInfoAccess(_) => "authorityInfoAccess",
        ParsedExtension::CRLDistributionPoints(_) => "cRLDistributionPoints",
        ParsedExtension::NSCertType(_) => "netscape certificate type",
        ParsedExtension::NsCertComment(_) => "netscape comment",
        ParsedExtension::SCT(_) => "signed certificate timestamps",
        ParsedExtension::IssuerAlternativeName(_) => "issuerAltName",
        ParsedExtension::SubjectInfoAccess(_) => "subjectInfoAccess",
        ParsedExtension::UnsupportedExtension { oid } => return format!("the extension with OID {oid}"),
        ParsedExtension::ParseError { .. } => "a malformed extension",
        _ => "an extension",
    };
    format!("the {name} extension")
}
