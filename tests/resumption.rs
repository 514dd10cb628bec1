//! TLS 1.3 resumption end to end, through a sidecar inbound with the real httpbin, driven by
//! `signet bench handshake --resume`: sessions resume, and a resumed session whose client
//! certificate has expired is refused (rustls would otherwise resume it: resumption skips
//! certificate checks), so nothing reaches httpbin after the expiry.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[test]
fn sessions_resume_but_never_past_the_client_certificate() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let server = mesh.httpbin_certs();
    let side = Sidecar::start("sidecar", &mesh.inbound_args(&server, "foo", app.addr, "http"));
    let client = mesh.issue("foo", "curl-foo", &spiffe("foo", "curl"), &["--ttl", "4s"]);
    let issued = Instant::now();
    let mut bench = signet_cmd();
    bench.args([
        "bench",
        "handshake",
        "--target",
        &side.inbound[0].to_string(),
        "--sni",
        "httpbin.foo",
        "--cert",
        &format!("{client}/tls.crt"),
        "--key",
        &format!("{client}/tls.key"),
        "--ca",
        &format!("{}/ca.crt", mesh.signer_dir("foo")),
        "--resume",
        "--http-get",
        "/get",
        "--concurrency",
        "2",
        "--duration",
        "8s",
        "--warmup",
        "0s",
        "--json",
    ]);
    let bench = std::thread::spawn(move || bench.output().unwrap());
    // The client certificate expires 4 s after issuance (plus its 0.4 s clock-skew allowance).
    std::thread::sleep(Duration::from_millis(5500).saturating_sub(issued.elapsed()));
    let after_expiry = app.requests();
    let out = bench.join().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(report["resumed"].as_u64().unwrap() > 0, "sessions resumed: {report}");
    assert!(
        report["handshakes"].as_u64().unwrap() > report["resumed"].as_u64().unwrap() / 2,
        "{report}"
    );
    assert!(
        report["failed"].as_u64().unwrap() > 0,
        "calls after the expiry fail: {report}"
    );
    assert_eq!(
        app.requests(),
        after_expiry,
        "nothing reached httpbin after the client certificate expired"
    );
    assert!(
        side.proc.log().contains(
            "expired: resumed session: peer spiffe://cluster.local/ns/foo/sa/curl (unverified): its certificate expired at"
        ),
        "{}",
        side.proc.log()
    );
    assert!(side.metric("signet_tls_sessions_resumed_total{direction=\"inbound\"}") > 0);
}

/// Handshake-only clients (health checks, the handshake benchmark) resume too, in both modes,
/// and are counted as resumed whether the sidecar closes with close_notify or not.
#[test]
fn handshake_only_clients_resume_and_are_counted() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let server = mesh.httpbin_certs();
    let client = mesh.curl_certs();
    for protocol in ["tcp", "http"] {
        let side = Sidecar::start("sidecar", &mesh.inbound_args(&server, "foo", app.addr, protocol));
        let out = signet_cmd()
            .args([
                "bench",
                "handshake",
                "--target",
                &side.inbound[0].to_string(),
                "--sni",
                "httpbin.foo",
            ])
            .args([
                "--cert",
                &format!("{client}/tls.crt"),
                "--key",
                &format!("{client}/tls.key"),
            ])
            .args(["--ca", &format!("{}/ca.crt", mesh.signer_dir("foo"))])
            .args(["--resume", "--concurrency", "2", "--duration", "1s", "--json"])
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        let (ok, resumed) = (
            report["handshakes"].as_u64().unwrap(),
            report["resumed"].as_u64().unwrap(),
        );
        assert!(ok > 0 && resumed * 10 >= ok * 9, "{protocol}: {report}");
        assert!(side.metric("signet_tls_sessions_resumed_total{direction=\"inbound\"}") >= resumed);
    }
    assert_eq!(
        app.requests(),
        1,
        "handshake-only clients cost the app nothing (the probe only)"
    );
}
