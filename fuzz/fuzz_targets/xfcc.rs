//! x-forwarded-client-cert: from a peer's (DER) leaf and an app-sent header, the value set is
//! always a valid header that names exactly one By and one URI of the element added.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use signet_certs::{CertificateDer, SpiffeId};
use signet_proxy::XfccMode;
use signet_proxy::xfcc::{HEADER, PeerCert};

fuzz_target!(|data: &[u8]| {
    // The first byte says how many of the next bytes are the app's header; the rest is the leaf.
    let Some((len, rest)) = data.split_first() else {
        return;
    };
    let (existing, leaf) = rest.split_at((*len as usize).min(rest.len()));
    let Some(peer) = PeerCert::from_leaf(&CertificateDer::from(leaf)) else {
        return;
    };
    let by: SpiffeId = "spiffe://cluster.local/ns/foo/sa/httpbin".parse().unwrap();
    for mode in [XfccMode::SanitizeSet, XfccMode::AppendForward] {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(existing) {
            headers.insert(HEADER, v);
        }
        peer.apply(&by, mode, &mut headers);
        if mode == XfccMode::SanitizeSet {
            let value = headers.get(HEADER).map(|v| v.to_str().unwrap_or_default().to_string());
            if let Some(value) = value {
                assert!(
                    value.starts_with("By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash="),
                    "{value}"
                );
            }
        }
    }
});
