//! The trust bundle parser (caCertificates YAML in every accepted shape): any input is a bundle
//! or an error, and the trust of every signer it names can be computed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_certs::{DEFAULT_SIGNER_DOMAIN, TrustBundle};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bundle) = TrustBundle::from_yaml(text, DEFAULT_SIGNER_DOMAIN, "fuzz") {
        for signer in bundle.signers() {
            let trust = bundle.trust_for(signer).expect("a signer of the bundle has roots");
            assert!(!trust.roots.is_empty());
            let _ = signet_proxy::tls::Trust::new(trust);
        }
    }
});
