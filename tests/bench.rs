//! `signet bench handshake` as the README's worked example runs it: against a sidecar's inbound,
//! with a client identity minted from a signer directory; a wrong --expect-id is reported as
//! expected vs. got, and a target where nothing listens stops the run at once.

mod support;

use std::time::{Duration, Instant};

use support::*;

fn bench(extra: &[&str]) -> Output {
    let mut args = vec!["bench", "handshake", "--duration", "1s", "--warmup", "0s", "--json"];
    args.extend_from_slice(extra);
    signet(&args)
}

#[test]
fn a_worked_run_and_a_wrong_expected_identity() {
    let mesh = Mesh::new(&["foo"]);
    let certs = mesh.issue("foo", "httpbin-foo", &spiffe("foo", "httpbin"), &[]);
    let side = Sidecar::start(
        "sidecar",
        &mesh.inbound_args(&certs, "foo", "127.0.0.1:9".parse().unwrap(), "tcp"),
    );
    let target = side.inbound[0].to_string();
    let signer_dir = mesh.signer_dir("foo");

    let ok = bench(&[
        "--target",
        &target,
        "--signer-dir",
        &signer_dir,
        "--expect-id",
        &spiffe("foo", "httpbin"),
    ]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let report: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert!(report["handshakes"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["failed"], 0, "{report}");

    let wrong = bench(&[
        "--target",
        &target,
        "--signer-dir",
        &signer_dir,
        "--expect-id",
        &spiffe("foo", "db"),
    ]);
    assert_ne!(wrong.code, 0, "no handshake may count as a success");
    let report: serde_json::Value = serde_json::from_str(&wrong.stdout).unwrap();
    let failures = report["failures"].to_string();
    assert!(
        failures.contains(&format!("the peer is {}", spiffe("foo", "httpbin")))
            && failures.contains(&format!("should be {}", spiffe("foo", "db"))),
        "expected vs. got: {failures}"
    );
}

#[test]
fn nothing_listening_stops_the_run_at_once() {
    let mesh = Mesh::new(&["foo"]);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let start = Instant::now();
    let out = signet(&[
        "bench",
        "handshake",
        "--target",
        &closed.to_string(),
        "--signer-dir",
        &mesh.signer_dir("foo"),
        "--duration",
        "30s",
    ]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("nothing answers at --target"), "{}", out.stderr);
    assert!(start.elapsed() < Duration::from_secs(20), "it did not run its 30 s");
}
