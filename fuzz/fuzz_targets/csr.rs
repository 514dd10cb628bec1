//! The authority's CSR parser: a PEM PKCS#10 request from a caller.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(info) = signet_certs::RequestInfo::parse(text) {
        // Whatever a request carries is printable once escaped.
        for uri in &info.uris {
            assert!(!signet_certs::printable(uri).contains('\n'));
        }
    }
});
