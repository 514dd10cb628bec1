//! The HTTP/1.1 relay's reading of whole request streams (head, body, the next request, ...):
//! every request it would relay is sent framed exactly as it was read, with no `Connection`
//! header and one XFCC (`signet_proxy::fuzzing::requests` asserts it). Any input is refused,
//! handed over or relayed; none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    signet_proxy::fuzzing::requests(data);
});
