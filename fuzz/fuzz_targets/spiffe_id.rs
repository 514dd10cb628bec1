//! SPIFFE IDs and allow-list patterns: parsing is strict, and what parses prints back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_certs::{IdPattern, SpiffeId};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = text.parse::<SpiffeId>() {
        let again: SpiffeId = id.as_str().parse().expect("a parsed ID parses again");
        assert_eq!(again, id);
        assert!(id.as_str().starts_with("spiffe://"));
        let _ = (id.trust_domain(), id.namespace(), id.service_account());
    }
    if let Ok(pattern) = text.parse::<IdPattern>() {
        if let Ok(id) = text.trim_end_matches("/*").parse::<SpiffeId>() {
            let _ = pattern.matches(&id);
        }
    }
    // Building from parts never splices a path.
    let mut parts = text.splitn(3, '|');
    if let (Some(td), Some(ns), Some(sa)) = (parts.next(), parts.next(), parts.next()) {
        if let Ok(id) = SpiffeId::workload(td, ns, sa) {
            assert_eq!((id.namespace(), id.service_account()), (ns, sa));
        }
    }
});
