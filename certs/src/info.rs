//! `CertInfo`: the facts of one certificate that Signet shows, checks and logs.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;

use crate::{Error, SpiffeId, sha256_hex};

#[derive(Clone, Debug)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Hex, no separators, as Envoy's `/certs` shows it.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub uris: Vec<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub is_ca: bool,
    /// A CA's basicConstraints pathLenConstraint: how many intermediates may follow it.
    pub path_len: Option<u32>,
    /// The extended key usages listed (`serverAuth`, `clientAuth`, `anyExtendedKeyUsage`, other
    /// OIDs dotted); `None` when the certificate has no extended key usage extension.
    pub extended_key_usage: Option<Vec<String>>,
    /// SHA-256 of the DER, lowercase hex.
    pub sha256: String,
    /// DER of the SubjectPublicKeyInfo, to match a private key against its certificate.
    pub spki: Vec<u8>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Certificate(format!("not a valid X.509 certificate: {e}")))?;
        let mut info = CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert
                .tbs_certificate
                .raw_serial()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            not_before: unix(cert.validity().not_before.timestamp()),
            not_after: unix(cert.validity().not_after.timestamp()),
            uris: Vec::new(),
            dns: Vec::new(),
            ips: Vec::new(),
            emails: Vec::new(),
            is_ca: cert.is_ca(),
            path_len: cert
                .basic_constraints()
                .ok()
                .flatten()
                .and_then(|bc| bc.value.path_len_constraint),
            extended_key_usage: None,
            sha256: sha256_hex(der),
            spki: cert.public_key().raw.to_vec(),
        };
        let eku = cert
            .extended_key_usage()
            .map_err(|e| Error::Certificate(format!("malformed extendedKeyUsage: {e}")))?;
        if let Some(eku) = eku {
            let eku = eku.value;
            let named = [
                (eku.any, "anyExtendedKeyUsage"),
                (eku.server_auth, "serverAuth"),
                (eku.client_auth, "clientAuth"),
                (eku.code_signing, "codeSigning"),
                (eku.email_protection, "emailProtection"),
                (eku.time_stamping, "timeStamping"),
                (eku.ocsp_signing, "OCSPSigning"),
            ];
            let mut list: Vec<String> = named.iter().filter(|(on, _)| *on).map(|(_, n)| n.to_string()).collect();
            list.extend(eku.other.iter().map(|oid| oid.to_id_string()));
            info.extended_key_usage = Some(list);
        }
        let san = cert
            .subject_alternative_name()
            .map_err(|e| Error::Certificate(format!("malformed subjectAltName: {e}")))?;
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => info.uris.push(u.to_string()),
                    GeneralName::DNSName(d) => info.dns.push(d.to_string()),
                    GeneralName::RFC822Name(m) => info.emails.push(m.to_string()),
                    GeneralName::IPAddress(octets) => {
                        if let Some(ip) = ip_from_octets(octets) {
                            info.ips.push(ip);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(info)
    }

    /// Just the SPIFFE ID and validity window of a DER certificate, without the rest of
    /// [`CertInfo`] (no fingerprint, no DN strings): what the handshake path needs.
    pub fn spiffe_id_and_validity(der: &[u8]) -> Result<(SpiffeId, SystemTime, SystemTime), Error> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Certificate(format!("not a valid X.509 certificate: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| Error::Certificate(format!("malformed subjectAltName: {e}")))?;
        let mut uris = san
            .iter()
            .flat_map(|s| s.value.general_names.iter())
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            });
        let id = match (uris.next(), uris.next()) {
            (Some(one), None) => one.parse()?,
            (None, _) => {
                return Err(Error::Certificate(
                    "the certificate has no URI SAN, so no SPIFFE ID".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(Error::Certificate(
                    "the certificate has several URI SANs; an X509-SVID carries exactly one".into(),
                ));
            }
        };
        let validity = cert.validity();
        Ok((
            id,
            unix(validity.not_before.timestamp()),
            unix(validity.not_after.timestamp()),
        ))
    }

    /// The certificate's SPIFFE ID: exactly one URI SAN, and a valid SPIFFE ID.
    pub fn spiffe_id(&self) -> Result<SpiffeId, Error> {
        match self.uris.as_slice() {
            [one] => one.parse(),
            [] => Err(Error::Certificate(
                "the certificate has no URI SAN, so no SPIFFE ID; a workload certificate carries spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>".into(),
            )),
            many => Err(Error::Certificate(format!(
                "the certificate has {} URI SANs; an X509-SVID carries exactly one",
                many.len()
            ))),
        }
    }

    pub fn is_self_signed(&self) -> bool {
        self.subject == self.issuer
    }

    /// Time left until `not_after` (zero once expired).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or(Duration::ZERO)
    }
}

fn unix(ts: i64) -> SystemTime {
    if ts >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    }
}

fn ip_from_octets(octets: &[u8]) -> Option<IpAddr> {
    match octets.len() {
        4 => <[u8; 4]>::try_from(octets).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(octets).ok().map(IpAddr::from),
        _ => None,
    }
}
