//! `x-forwarded-client-cert`, Envoy's format: `By=<our id>;Hash=<sha256 of the peer leaf>;
//! Subject="<peer subject>";URI=<peer id>[;DNS=<name>...]`.

use http::{HeaderMap, HeaderValue};
use rustls::pki_types::CertificateDer;
use signet_certs::{CertInfo, SpiffeId};

use crate::config::XfccMode;

pub const HEADER: &str = "x-forwarded-client-cert";

/// The verified peer of one inbound connection.
#[derive(Clone, Debug)]
pub struct PeerCert {
    pub id: SpiffeId,
    element_tail: String,
}

impl PeerCert {
    /// Reads the peer's leaf once per connection (it has already been verified).
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> Option<Self> {
        let info = CertInfo::parse(leaf).ok()?;
        let id = info.spiffe_id().ok()?;
        let mut tail = format!(
            ";Hash={};Subject=\"{}\";URI={}",
            info.sha256,
            info.subject.replace('\\', "\\\\").replace('"', "\\\""),
            id
        );
        for dns in &info.dns {
            tail.push_str(";DNS=");
            tail.push_str(dns);
        }
        Some(PeerCert { id, element_tail: tail })
    }

    /// Sets or appends this peer's element, as `mode` says.
    pub fn apply(&self, by: &SpiffeId, mode: XfccMode, headers: &mut HeaderMap) {
        let element = format!("By={by}{}", self.element_tail);
        let value = match (mode, headers.get(HEADER).and_then(|v| v.to_str().ok())) {
            (XfccMode::AppendForward, Some(existing)) if !existing.is_empty() => format!("{existing},{element}"),
            _ => element,
        };
        match HeaderValue::from_str(&value) {
            Ok(v) => {
                headers.insert(HEADER, v);
            }
            Err(_) => {
                headers.remove(HEADER);
            }
        }
    }
}
