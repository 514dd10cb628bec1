//! PEM readers: certificates, private keys and revocation lists from arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = signet_certs::parse_certs(data, "fuzz") {
        for cert in &certs {
            let _ = signet_certs::CertInfo::parse(cert);
            let _ = signet_certs::CertInfo::spiffe_id_and_validity(cert);
        }
    }
    let _ = signet_certs::parse_key(data, "fuzz");
    let _ = signet_certs::parse_crls(data, "fuzz");
});
