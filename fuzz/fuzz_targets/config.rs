//! The sidecar's YAML config: parsed and resolved; any input is a config or one error line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_proxy::ConfigFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = signet_certs::from_yaml::<ConfigFile>(text) {
        if let Err(e) = file.resolve() {
            let line = e.describe(&|s| s.yaml());
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }
});
