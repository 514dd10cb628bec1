//! The reference scenario with the real curl and the real httpbin: from the curl workload in
//! foo, httpbin.foo answers the Moby-Dick page and httpbin.bar fails CERTIFICATE_VERIFY_FAILED,
//! at L7 (http_proxy) and at L4 (TCP listeners).

mod support;

use std::time::Duration;

use support::*;

struct Tenants {
    mesh: Mesh,
    app_foo: Httpbin,
    app_bar: Httpbin,
    side_foo: Sidecar,
    side_bar: Sidecar,
}

fn tenants(protocol: &str) -> Tenants {
    let mesh = Mesh::new(&["istio-system", "foo", "bar"]);
    let app_foo = Httpbin::start(mesh.dir.path(), "httpbin-foo");
    let app_bar = Httpbin::start(mesh.dir.path(), "httpbin-bar");
    let mut sidecars = Vec::new();
    for (ns, app) in [("foo", &app_foo), ("bar", &app_bar)] {
        let certs = mesh.issue(ns, &format!("httpbin-{ns}"), &spiffe(ns, "httpbin"), &[]);
        sidecars.push(Sidecar::start(
            &format!("sidecar httpbin.{ns}"),
            &mesh.inbound_args(&certs, ns, app.addr, protocol),
        ));
    }
    let side_bar = sidecars.pop().unwrap();
    let side_foo = sidecars.pop().unwrap();
    Tenants {
        mesh,
        app_foo,
        app_bar,
        side_foo,
        side_bar,
    }
}

fn curl_sidecar(t: &Tenants, extra: &[String]) -> Sidecar {
    let certs = t.mesh.curl_certs();
    let mut args = s(&["--cert-dir", &certs, "--bundle", &t.mesh.bundle(), "--signer", "foo"]);
    for (ns, side) in [("foo", &t.side_foo), ("bar", &t.side_bar)] {
        args.push("--service".into());
        args.push(format!(
            "httpbin.{ns}:8000={},{}",
            side.inbound[0],
            spiffe(ns, "httpbin")
        ));
    }
    args.extend_from_slice(extra);
    Sidecar::start("sidecar curl.foo", &args)
}

#[test]
fn http_same_signer_answers_and_cross_signer_fails_certificate_verify_failed() {
    let t = tenants("http");
    let curl_side = curl_sidecar(&t, &s(&["--outbound", "127.0.0.1:0"]));
    let proxy = curl_side.outbound.expect("outbound listener");

    let ok = curl_via(proxy, "http://httpbin.foo:8000/html");
    assert_eq!((ok.code, ok.status), (0, 200), "{ok:?}");
    assert!(ok.body.contains("<h1>Herman Melville - Moby-Dick</h1>"), "{}", ok.body);
    assert_eq!(t.app_foo.wait_requests(2), 2, "the request reached httpbin.foo");
    // Later calls reuse the pooled mTLS connection: still one outbound handshake.
    for _ in 0..3 {
        assert_eq!(curl_via(proxy, "http://httpbin.foo:8000/get").status, 200);
    }
    assert_eq!(
        curl_side.metric("signet_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}"),
        1
    );

    let before = t.app_bar.requests();
    let denied = curl_via(proxy, "http://httpbin.bar:8000/html");
    assert_eq!(denied.status, 503, "{denied:?}");
    assert!(
        denied.body.starts_with(
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: TLS error: CERTIFICATE_VERIFY_FAILED: "
        ),
        "{}",
        denied.body
    );
    assert!(
        denied.body.contains("signer clusterissuers.cert-manager.io/bar"),
        "names the peer's signer: {}",
        denied.body
    );
    assert!(
        denied
            .body
            .contains("trusts only signer clusterissuers.cert-manager.io/foo"),
        "{}",
        denied.body
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        t.app_bar.requests(),
        before,
        "nothing may reach httpbin.bar:\n{}",
        t.app_bar.access_log()
    );

    // Both sidecars say what happened, in one line each.
    assert!(
        curl_side
            .proc
            .logged_within("CERTIFICATE_VERIFY_FAILED", Duration::from_secs(2)),
        "{}",
        curl_side.proc.log()
    );
    assert!(
        t.side_bar
            .proc
            .logged_within("rejected 127.0.0.1:", Duration::from_secs(2)),
        "the bar sidecar logs the refused handshake:\n{}",
        t.side_bar.proc.log()
    );
    assert_eq!(
        curl_side.metric("signet_tls_handshakes_total{direction=\"outbound\",result=\"unknown_signer\"}"),
        1
    );
}

#[test]
fn tcp_same_signer_tunnels_and_cross_signer_closes_without_bytes() {
    let t = tenants("tcp");
    let curl_side = curl_sidecar(
        &t,
        &s(&[
            "--tcp",
            "127.0.0.1:0=httpbin.foo:8000",
            "--tcp",
            "127.0.0.1:0=httpbin.bar:8000",
        ]),
    );
    let (to_foo, to_bar) = (curl_side.tcp[0], curl_side.tcp[1]);

    let ok = curl(&[&format!("http://{to_foo}/html"), "-H", "Host: httpbin.foo:8000"], &[]);
    assert_eq!((ok.code, ok.status), (0, 200), "{ok:?}");
    assert!(ok.body.contains("Herman Melville - Moby-Dick"));

    let before = t.app_bar.requests();
    let denied = curl(&[&format!("http://{to_bar}/html")], &[]);
    assert_eq!(denied.status, 0, "no HTTP response at all: {denied:?}");
    assert!(denied.body.is_empty(), "no application bytes: {denied:?}");
    // 52: empty reply; 56: reset (the request bytes were never read), as ztunnel does.
    assert!(
        matches!(denied.code, 52 | 56),
        "curl sees the connection closed: {denied:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(t.app_bar.requests(), before, "nothing may reach httpbin.bar");
    assert!(
        curl_side
            .proc
            .logged_within("CERTIFICATE_VERIFY_FAILED", Duration::from_secs(2)),
        "{}",
        curl_side.proc.log()
    );
}
