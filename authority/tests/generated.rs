//! The committed gRPC code (src/pb/istio.v1.auth.rs) is what the proto generates today: the test
//! compiles proto/istio/v1/auth/ca.proto with protox (a pure-Rust protobuf compiler) and
//! tonic-prost-build, and compares. Run with SIGNET_REGENERATE=1 to rewrite the file instead.

use std::path::Path;

#[test]
fn the_committed_grpc_code_matches_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proto = root.join("proto/istio/v1/auth/ca.proto");
    let fds = protox::compile([&proto], [root.join("proto")]).expect("the proto compiles");
    let out = tempfile::tempdir().unwrap();
    tonic_prost_build::configure()
        .out_dir(out.path())
        .compile_fds(fds)
        .expect("code generation");
    let fresh = std::fs::read_to_string(out.path().join("istio.v1.auth.rs")).unwrap();
    let committed_path = root.join("src/pb/istio.v1.auth.rs");
    if std::env::var_os("SIGNET_REGENERATE").is_some() {
        std::fs::write(&committed_path, &fresh).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&committed_path).unwrap();
    assert!(
        committed == fresh,
        "src/pb/istio.v1.auth.rs is stale: run `SIGNET_REGENERATE=1 cargo test -p signet-authority --test generated` and commit the result"
    );
}
