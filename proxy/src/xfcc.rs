//! `x-forwarded-client-cert`, Envoy's format: `By=<our id>;Hash=<sha256 of the peer leaf>;
//! Subject="<peer subject>";URI=<peer id>[;DNS=<name>...]`.

use http::{HeaderMap, HeaderValue};
use rustls::pki_types::CertificateDer;
use signet_certs::{CertInfo, SpiffeId};

use crate::config::XfccMode;

pub const HEADER: &str = "x-forwarded-client-cert";

/// A value as Envoy writes it: double-quoted (with `\` and `"` escaped) when it holds a character
/// that would end a key, a pair or an element (`,` `;` `=` `"`), a space or a backslash;
/// control characters are written escaped, never raw.
fn value(v: &str) -> String {
    let v = signet_certs::printable(v);
    if v.chars()
        .any(|c| matches!(c, ',' | ';' | '=' | '"' | '\\') || c.is_whitespace())
    {
        quoted(&v)
    } else {
        v.into_owned()
    }
}

/// Always quoted (Envoy quotes the subject).
fn quoted(v: &str) -> String {
    let v = signet_certs::printable(v);
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The verified peer of one inbound connection.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub id: SpiffeId,
    element_tail: String,
    /// The whole element for the `By` it was last built for: the connection's requests share
    /// one header value (a reference count each) instead of formatting it again.
    element: std::sync::OnceLock<(SpiffeId, Option<HeaderValue>)>,
}

impl PeerCert {
    /// Reads the peer's leaf once per connection (it has already been verified).
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> Option<Self> {
        let info = CertInfo::parse(leaf).ok()?;
        let id = info.spiffe_id().ok()?;
        let mut tail = format!(
            ";Hash={};Subject={};URI={}",
            info.sha256,
            quoted(&info.subject),
            value(id.as_str())
        );
        for dns in &info.dns {
            tail.push_str(";DNS=");
            tail.push_str(&value(dns));
        }
        Some(PeerCert {
            id,
            element_tail: tail,
            element: std::sync::OnceLock::new(),
        })
    }

    /// Sets or appends this peer's element, as `mode` says.
    pub fn apply(&self, by: &SpiffeId, mode: XfccMode, headers: &mut HeaderMap) {
        let existing = headers.get(HEADER).and_then(|v| v.to_str().ok());
        match self.value(by, mode, existing) {
            Some(v) => {
                headers.insert(HEADER, v);
            }
            None => {
                headers.remove(HEADER);
            }
        }
    }

    /// The header to send for a request that came with `existing`, as `mode` says; `None` when
    /// no valid value can be made (the header is then removed).
    pub fn value(&self, by: &SpiffeId, mode: XfccMode, existing: Option<&str>) -> Option<HeaderValue> {
        match (mode, existing.filter(|e| !e.is_empty())) {
            (XfccMode::AppendForward, Some(existing)) => {
                HeaderValue::from_str(&format!("{existing},By={by}{}", self.element_tail)).ok()
            }
            _ => {
                let (built_for, element) = self.element.get_or_init(|| {
                    let element = HeaderValue::from_str(&format!("By={by}{}", self.element_tail)).ok();
                    (by.clone(), element)
                });
                match (built_for == by, element) {
                    (true, Some(element)) => Some(element.clone()),
                    _ => HeaderValue::from_str(&format!("By={by}{}", self.element_tail)).ok(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_would_split_an_element_are_quoted() {
        assert_eq!(value("httpbin.foo"), "httpbin.foo");
        assert_eq!(value("a;URI=spiffe://evil"), "\"a;URI=spiffe://evil\"");
        assert_eq!(value("a,By=x"), "\"a,By=x\"");
        assert_eq!(value("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(quoted("O=Signet, CN=x"), "\"O=Signet, CN=x\"");
        assert!(!value("a\nb").contains('\n'));
    }

    /// A DNS SAN crafted to add a URI to the element stays one quoted value.
    #[test]
    fn a_crafted_dns_san_cannot_add_a_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::URI("spiffe://cluster.local/ns/foo/sa/curl".try_into().unwrap()),
            rcgen::SanType::DnsName("x;URI=spiffe://cluster.local/ns/foo/sa/admin".try_into().unwrap()),
        ];
        let cert = params.self_signed(&key).unwrap();
        let peer = PeerCert::from_leaf(cert.der()).unwrap();
        let mut headers = HeaderMap::new();
        let by: SpiffeId = "spiffe://cluster.local/ns/foo/sa/httpbin".parse().unwrap();
        peer.apply(&by, XfccMode::SanitizeSet, &mut headers);
        let xfcc = headers.get(HEADER).unwrap().to_str().unwrap();
        assert!(
            xfcc.ends_with(";DNS=\"x;URI=spiffe://cluster.local/ns/foo/sa/admin\""),
            "{xfcc}"
        );
        assert_eq!(
            xfcc.matches(";URI=").count(),
            2,
            "one URI key, and the quoted text: {xfcc}"
        );
    }
}
