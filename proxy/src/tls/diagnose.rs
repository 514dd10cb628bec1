//! Why a handshake failed, in words that name the signers involved.
//!
//! rustls reports a cross-signer peer only as `UnknownIssuer` (and must keep doing so, so that
//! the right `unknown_ca` alert goes out). The verifiers therefore leave a richer explanation in
//! a task-local slot while the handshake runs inside [`capture`]; the accept/connect code picks
//! it up together with the I/O error. Nothing is recorded, and nothing costs, when a handshake
//! succeeds.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;

use rustls::{AlertDescription, CertificateError};

/// What went wrong, as a metric label and a log/response category. Each way a certificate can
/// be refused has its own label, so a dashboard tells an attack from a rotation gone wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The peer's chain does not anchor to our signer's roots (the cross-tenant case).
    UnknownSigner,
    /// The peer's chain was issued under a root of our signer that has been rotated out.
    RetiredRoot,
    /// The peer's chain anchors to a root of our signer that has expired.
    RootExpired,
    /// The peer's chain anchors to a root of our signer that is not valid yet.
    RootNotYetValid,
    Expired,
    NotYetValid,
    /// A certificate on the peer's path is on the signer's revocation list.
    Revoked,
    /// The leaf does not list the extended key usage this direction needs.
    BadUsage,
    /// The peer presented a CA certificate as its leaf.
    CaAsLeaf,
    /// The chain is longer than a CA's path length constraint allows.
    PathTooLong,
    /// A name in the chain violates a CA's name constraints.
    NameConstraint,
    /// A certificate on the path carries a critical extension Signet does not understand.
    CriticalExtension,
    /// The leaf does not carry exactly one valid SPIFFE ID.
    BadSpiffeId,
    /// The peer's SPIFFE ID is in a trust domain this sidecar does not accept.
    ForeignTrustDomain,
    /// The chain is ours but the SPIFFE ID is not the expected one.
    WrongIdentity,
    /// Inbound allow-list refused the peer's SPIFFE ID.
    NotAllowed,
    NoClientCert,
    /// Any other defect of the peer's certificate.
    BadCertificate,
    /// The peer refused us (we received an alert).
    PeerRejected,
    /// The bytes received are not a TLS handshake at all.
    NotTls,
    Protocol,
    Timeout,
    /// The peer closed or reset the connection mid-handshake.
    Closed,
    /// This sidecar holds no valid certificate yet (fail closed).
    NotReady,
}

impl Reason {
    pub const ALL: [Reason; 24] = [
        Reason::UnknownSigner,
        Reason::RetiredRoot,
        Reason::RootExpired,
        Reason::RootNotYetValid,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::Revoked,
        Reason::BadUsage,
        Reason::CaAsLeaf,
        Reason::PathTooLong,
        Reason::NameConstraint,
        Reason::CriticalExtension,
        Reason::BadSpiffeId,
        Reason::ForeignTrustDomain,
        Reason::WrongIdentity,
        Reason::NotAllowed,
        Reason::NoClientCert,
        Reason::BadCertificate,
        Reason::PeerRejected,
        Reason::NotTls,
        Reason::Protocol,
        Reason::Timeout,
        Reason::Closed,
        Reason::NotReady,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::UnknownSigner => "unknown_signer",
            Reason::RetiredRoot => "retired_root",
            Reason::RootExpired => "root_expired",
            Reason::RootNotYetValid => "root_not_yet_valid",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::Revoked => "revoked",
            Reason::BadUsage => "bad_usage",
            Reason::CaAsLeaf => "ca_as_leaf",
            Reason::PathTooLong => "path_too_long",
            Reason::NameConstraint => "name_constraint",
            Reason::CriticalExtension => "critical_extension",
            Reason::BadSpiffeId => "bad_spiffe_id",
            Reason::ForeignTrustDomain => "foreign_trust_domain",
            Reason::WrongIdentity => "wrong_identity",
            Reason::NotAllowed => "not_allowed",
            Reason::NoClientCert => "no_client_cert",
            Reason::BadCertificate => "bad_certificate",
            Reason::PeerRejected => "peer_rejected",
            Reason::NotTls => "not_tls",
            Reason::Protocol => "protocol",
            Reason::Timeout => "timeout",
            Reason::Closed => "closed",
            Reason::NotReady => "not_ready",
        }
    }

    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// True when this side refused the peer's certificate (OpenSSL's CERTIFICATE_VERIFY_FAILED).
    pub fn is_verify_failure(self) -> bool {
        !matches!(
            self,
            Reason::NotAllowed
                | Reason::NoClientCert
                | Reason::PeerRejected
                | Reason::NotTls
                | Reason::Protocol
                | Reason::Timeout
                | Reason::Closed
                | Reason::NotReady
        )
    }
}

/// A failed handshake: the category and a one-line explanation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeError {
    pub reason: Reason,
    pub detail: String,
}

impl HandshakeError {
    /// Explanations quote what peers sent (names in their certificates, issuers): control
    /// characters are escaped here, so no explanation can forge a log line or a response.
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        HandshakeError {
            reason,
            detail: signet_certs::printable(&detail).into_owned(),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.label(), self.detail)
    }
}

impl std::error::Error for HandshakeError {}

tokio::task_local! {
    static NOTE: RefCell<Option<HandshakeError>>;
}

/// Runs a handshake future, returning its output and the verifiers' explanation, if any.
pub async fn capture<F: Future>(fut: F) -> (F::Output, Option<HandshakeError>) {
    NOTE.scope(RefCell::new(None), async move {
        let out = fut.await;
        let note = NOTE.with(|n| n.borrow_mut().take());
        (out, note)
    })
    .await
}

/// [`capture`] for a synchronous call (a verifier run outside a handshake).
pub fn capture_sync<R>(f: impl FnOnce() -> R) -> (R, Option<HandshakeError>) {
    NOTE.sync_scope(RefCell::new(None), || {
        let out = f();
        let note = NOTE.with(|n| n.borrow_mut().take());
        (out, note)
    })
}

/// Called by verifiers; a no-op outside [`capture`].
pub(crate) fn note(err: HandshakeError) {
    let _ = NOTE.try_with(|n| *n.borrow_mut() = Some(err));
}

/// Turns a failed handshake's I/O error (and the verifiers' note) into an explanation.
/// `our_signer` is named in messages about the peer refusing us.
pub fn classify(err: &io::Error, note: Option<HandshakeError>, our_signer: &str) -> HandshakeError {
    if let Some(note) = note {
        return note;
    }
    if let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return from_rustls(tls, our_signer);
    }
    match err.kind() {
        io::ErrorKind::TimedOut => HandshakeError::new(Reason::Timeout, "the TLS handshake timed out"),
        io::ErrorKind::UnexpectedEof => HandshakeError::new(
            Reason::Closed,
            "the peer closed the connection before the TLS handshake completed",
        ),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
            HandshakeError::new(Reason::Closed, "the peer reset the connection during the TLS handshake")
        }
        _ => HandshakeError::new(Reason::Closed, format!("I/O error during the TLS handshake: {err}")),
    }
}

/// Explains a rustls error that no verifier annotated.
pub fn from_rustls(err: &rustls::Error, our_signer: &str) -> HandshakeError {
    use rustls::Error as E;
    match err {
        E::InvalidCertificate(cert) => from_certificate_error(cert),
        E::NoCertificatesPresented => HandshakeError::new(
            Reason::NoClientCert,
            format!("the client presented no certificate; mTLS here requires one issued by signer {our_signer}"),
        ),
        E::AlertReceived(alert) => {
            let why = match alert {
                AlertDescription::UnknownCA => format!(
                    "the peer does not trust our certificate (alert unknown_ca): it trusts another signer than {our_signer}"
                ),
                AlertDescription::AccessDenied => {
                    "the peer refused our identity (alert access_denied): we are not on its allow-list".to_string()
                }
                AlertDescription::CertificateExpired => {
                    "the peer says our certificate is expired or not yet valid (alert certificate_expired)".to_string()
                }
                AlertDescription::CertificateRequired => {
                    "the peer requires a client certificate (alert certificate_required)".to_string()
                }
                AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => {
                    format!("the peer rejected our certificate (alert {})", alert_name(*alert))
                }
                AlertDescription::HandshakeFailure
                | AlertDescription::ProtocolVersion
                | AlertDescription::InsufficientSecurity
                | AlertDescription::NoApplicationProtocol => format!(
                    "the peer found no common TLS parameters (alert {}); Signet speaks TLS 1.3 with AEAD suites",
                    alert_name(*alert)
                ),
                other => format!("the peer aborted the handshake (alert {})", alert_name(*other)),
            };
            HandshakeError::new(Reason::PeerRejected, why)
        }
        E::InvalidMessage(_) => HandshakeError::new(
            Reason::NotTls,
            "the peer did not send a valid TLS handshake; is it speaking plaintext or another protocol?",
        ),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } | E::PeerMisbehaved(_) => {
            HandshakeError::new(Reason::Protocol, format!("the peer broke the TLS protocol ({err})"))
        }
        E::PeerIncompatible(_) => HandshakeError::new(
            Reason::Protocol,
            format!(
                "no common TLS parameters with the peer ({err}); Signet speaks TLS 1.3 (1.2 with ECDHE+AEAD when enabled)"
            ),
        ),
        E::NoApplicationProtocol => HandshakeError::new(Reason::Protocol, "no common ALPN protocol with the peer"),
        other => HandshakeError::new(Reason::Protocol, format!("TLS error: {other}")),
    }
}

fn from_certificate_error(err: &CertificateError) -> HandshakeError {
    use CertificateError as C;
    match err {
        C::Expired | C::ExpiredContext { .. } => {
            HandshakeError::new(Reason::Expired, format!("the peer's certificate has expired ({err})"))
        }
        C::NotValidYet | C::NotValidYetContext { .. } => HandshakeError::new(
            Reason::NotYetValid,
            format!("the peer's certificate is not valid yet ({err})"),
        ),
        C::UnknownIssuer => HandshakeError::new(
            Reason::UnknownSigner,
            "the peer's certificate chain does not anchor to a root of our signer",
        ),
        C::Revoked => HandshakeError::new(
            Reason::Revoked,
            "the peer's certificate is on its signer's revocation list",
        ),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => HandshakeError::new(
            Reason::BadUsage,
            format!(
                "the peer's certificate is not valid for this use ({err}); mesh certificates carry serverAuth and clientAuth"
            ),
        ),
        C::BadSignature => HandshakeError::new(
            Reason::BadCertificate,
            "a signature in the peer's certificate chain does not verify",
        ),
        other => HandshakeError::new(
            Reason::BadCertificate,
            format!("the peer's certificate is invalid ({other})"),
        ),
    }
}

/// An alert as the TLS specification names it (`unknown_ca`), not as rustls debug-prints it.
pub fn alert_name(alert: AlertDescription) -> String {
    if let AlertDescription::Unknown(code) = alert {
        return format!("#{code}");
    }
    let debug = format!("{alert:?}");
    // CamelCase to snake_case; runs of capitals (CA, MAC) stay one word.
    let mut out = String::new();
    let chars: Vec<char> = debug.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        let prev_lower = i > 0 && chars[i - 1].is_lowercase();
        if c.is_uppercase() && i > 0 && (prev_lower || next_lower && chars[i - 1].is_uppercase()) {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A webpki verification error in words, for checks of our own certificate.
pub fn describe_webpki(err: &webpki::Error) -> String {
    use webpki::Error as W;
    match err {
        W::CertExpired { .. } => "it has expired".into(),
        W::CertNotValidYet { .. } => "it is not valid yet (check the clocks)".into(),
        W::UnknownIssuer => "its issuer is not among the trusted roots".into(),
        W::InvalidSignatureForPublicKey => {
            "a signature in the chain does not verify against its issuer's key (a root rotated since it was issued?)"
                .into()
        }
        W::CaUsedAsEndEntity => "it is a CA certificate, not a workload certificate".into(),
        W::BadDer | W::BadDerTime => "it is not valid DER".into(),
        W::UnsupportedSignatureAlgorithmContext(_) => {
            "it is signed with an algorithm Signet does not accept (use ECDSA P-256)".into()
        }
        W::PathLenConstraintViolated | W::MaximumPathDepthExceeded => "the chain is longer than its CAs allow".into(),
        W::RequiredEkuNotFoundContext(_) => "it lacks a required extended key usage (serverAuth and clientAuth)".into(),
        W::EndEntityUsedAsCa => "a workload certificate appears as an issuer in the chain".into(),
        W::UnsupportedCriticalExtension => "it carries a critical extension Signet does not understand".into(),
        W::NameConstraintViolation => "it violates a name constraint of its CA".into(),
        W::CertRevoked => "it has been revoked".into(),
        _ => "it does not pass certificate path validation".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_are_named_as_the_specification_does() {
        assert_eq!(alert_name(AlertDescription::UnknownCA), "unknown_ca");
        assert_eq!(alert_name(AlertDescription::AccessDenied), "access_denied");
        assert_eq!(alert_name(AlertDescription::HandshakeFailure), "handshake_failure");
        assert_eq!(alert_name(AlertDescription::BadRecordMac), "bad_record_mac");
        assert_eq!(alert_name(AlertDescription::Unknown(200)), "#200");
    }
}
