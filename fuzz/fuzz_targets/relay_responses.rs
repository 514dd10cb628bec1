//! The HTTP/1.1 relay's reading of response streams from an upstream: every response it would
//! pass on is framed as it was read (`signet_proxy::fuzzing::responses` asserts it); the first
//! byte says whether they answer HEAD.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&first, rest)) = data.split_first() {
        signet_proxy::fuzzing::responses(rest, first & 1 == 1);
    }
});
