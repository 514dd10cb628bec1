//! Provisioning and reload failures: the authority going away, certificates expiring, and
//! broken files on disk. In every case a still-valid certificate keeps serving, an expired one is
//! never presented, and service resumes as soon as the cause goes away.

mod support;

use std::time::Duration;

use support::*;

const POLICY: &str = "
minWorkloadCertTtl: 2s
approvableSigners: [istio-system, foo]
namespaces:
  foo: {signer: foo}
dnsSans:
  spiffe://cluster.local/ns/foo/sa/httpbin: [httpbin.foo]
";

struct Setup {
    mesh: Mesh,
    app: Httpbin,
    /// A foo client certificate made with the CLI, for direct curl calls (one new handshake each).
    client: String,
}

fn setup() -> Setup {
    let mesh = Mesh::new(&["istio-system", "foo"]);
    std::fs::write(mesh.path("tokens.yaml"), "tokens: []\n").unwrap();
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let client = mesh.curl_certs();
    Setup { mesh, app, client }
}

impl Setup {
    fn inbound(&self, extra: Vec<String>) -> Sidecar {
        let mut args = s(&[
            "--inbound",
            &format!("127.0.0.1:0={}", self.app.addr),
            "--protocol",
            "http",
            "--dns",
            "httpbin.foo",
        ]);
        args.extend(extra);
        Sidecar::start("sidecar httpbin.foo", &args)
    }

    /// curl --cert straight to the inbound: a fresh handshake against the certificate served now.
    fn call(&self, side: &Sidecar) -> Curl {
        self.mesh
            .curl_inbound(side.inbound[0].port(), "foo", Some(&self.client))
    }
}

fn serial(side: &Sidecar) -> String {
    side.certs()["certificates"][0]["cert_chain"][0]["serial_number"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_authority_outage_keeps_valid_certificates_serving_and_renewals_resume() {
    let t = setup();
    let mut authority = Authority::start(&t.mesh, POLICY, "127.0.0.1:0");
    let side = t.inbound(t.mesh.provisioned(&authority, "foo", "httpbin", "10s"));
    side.wait_ready(Duration::from_secs(10));
    assert_eq!(t.call(&side).status, 200);

    // (A token minted after the service started may fail once until the service reloads its tokens.)
    let failed_before = side.metric("signet_identity_csr_requests_total{result=\"failed\"}");
    authority.stop();
    // Renewal (at ~5 s) fails; every call in the meantime is still served.
    let mut calls = 0;
    eventually("a failed renewal", Duration::from_secs(20), || {
        let r = t.call(&side);
        assert_eq!(
            r.status,
            200,
            "served while the authority is down: {r:?}\n{}",
            side.proc.log()
        );
        calls += 1;
        side.metric("signet_identity_csr_requests_total{result=\"failed\"}") > failed_before
    });
    assert!(calls > 1);
    assert!(
        side.proc.log().contains("keeping the current certificate"),
        "{}",
        side.proc.log()
    );
    assert_eq!(side.admin_get("/ready").status, 200);

    let before = side.metric("signet_identity_renewals_total");
    authority.restart();
    eventually("a renewal after the restart", Duration::from_secs(20), || {
        side.metric("signet_identity_renewals_total") > before
    });
    assert_eq!(t.call(&side).status, 200);
}

#[test]
fn an_expired_certificate_is_never_presented_and_readiness_turns_false() {
    let t = setup();
    // Files mode: a certificate that expires 2 s from now.
    let short = t.mesh.issue(
        "foo",
        "short",
        &spiffe("foo", "httpbin"),
        &["--ttl", "2s", "--dns", "httpbin.foo"],
    );
    let side = Sidecar::start("files sidecar", &t.mesh.inbound_args(&short, "foo", t.app.addr, "http"));
    assert_eq!(t.call(&side).status, 200);
    let before = t.app.wait_requests(2);
    eventually("readiness false after expiry", Duration::from_secs(10), || {
        side.admin_get("/ready").status == 503
    });
    assert!(
        side.admin_get("/ready").body.contains("expired"),
        "{}",
        side.admin_get("/ready").body
    );
    let r = t.call(&side);
    assert_ne!(r.code, 0, "no handshake with an expired certificate: {r:?}");
    assert_eq!(r.status, 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(t.app.requests(), before);
    assert!(side.metric("signet_tls_handshakes_total{direction=\"inbound\",result=\"not_ready\"}") >= 1);

    // Authority mode: the authority is gone before the 3 s certificate can be renewed.
    let mut authority = Authority::start(&t.mesh, POLICY, "127.0.0.1:0");
    let side = t.inbound(t.mesh.provisioned(&authority, "foo", "httpbin", "3s"));
    side.wait_ready(Duration::from_secs(10));
    authority.stop();
    eventually("readiness false after expiry", Duration::from_secs(10), || {
        side.admin_get("/ready").status == 503
    });
    assert!(
        side.proc
            .logged_within("expired and was not renewed", Duration::from_secs(3)),
        "a loud log line:\n{}",
        side.proc.log()
    );
    assert_ne!(t.call(&side).code, 0);
    // The service comes back: a new certificate, ready again.
    authority.restart();
    side.wait_ready(Duration::from_secs(20));
    assert_eq!(t.call(&side).status, 200);
}

/// The authority hangs (SIGSTOP: its socket stays open, nothing answers), so the certificate ends
/// while its renewal is still under way: that expiry is said in the log too, naming the request
/// it is waiting for. Once the authority runs again, the sidecar is ready again.
#[test]
fn a_certificate_that_ends_during_a_hung_renewal_is_reported() {
    let t = setup();
    let authority = Authority::start(&t.mesh, POLICY, "127.0.0.1:0");
    let side = t.inbound(t.mesh.provisioned(&authority, "foo", "httpbin", "3s"));
    side.wait_ready(Duration::from_secs(10));
    assert!(authority.proc.signal("STOP"));
    eventually("readiness false after expiry", Duration::from_secs(10), || {
        side.admin_get("/ready").status == 503
    });
    let line = "the certificate expired and was not renewed (its renewal from the authority at";
    let reported = side.proc.logged_within(line, Duration::from_secs(3));
    let refused = t.call(&side);
    assert!(authority.proc.signal("CONT"));
    assert!(
        reported,
        "a loud log line while the renewal hangs:\n{}",
        side.proc.log()
    );
    assert_eq!(
        side.proc.log().matches("expired and was not renewed").count(),
        1,
        "said once"
    );
    assert_ne!(refused.code, 0, "no handshake with an expired certificate: {refused:?}");
    side.wait_ready(Duration::from_secs(20));
    assert_eq!(t.call(&side).status, 200);
}

#[test]
fn a_broken_certificate_file_keeps_the_old_certificate_serving() {
    let t = setup();
    let dir = t.mesh.httpbin_certs();
    let base = t.mesh.inbound_args(&dir, "foo", t.app.addr, "http");
    let mut args = base.clone();
    args.extend(s(&["--watch-interval", "100ms"]));
    let side = Sidecar::start("files sidecar", &args);
    let first = serial(&side);

    // Half-written certificate file.
    let pem = std::fs::read_to_string(format!("{dir}/tls.crt")).unwrap();
    std::fs::write(format!("{dir}/tls.crt"), &pem[..pem.len() / 3]).unwrap();
    assert!(
        side.proc
            .logged_within("reload failed, keeping the current certificate", Duration::from_secs(5)),
        "{}",
        side.proc.log()
    );
    assert_eq!(serial(&side), first);
    assert_eq!(t.call(&side).status, 200, "the old certificate keeps serving");
    assert_eq!(side.admin_get("/ready").status, 200);

    // A new certificate (key first, then certificate: the mismatched moment in between is refused too).
    let next = t.mesh.issue(
        "foo",
        "httpbin-foo-2",
        &spiffe("foo", "httpbin"),
        &["--dns", "httpbin.foo"],
    );
    for f in ["tls.key", "tls.crt"] {
        replace_file(
            &std::path::Path::new(&dir).join(f),
            &std::fs::read(format!("{next}/{f}")).unwrap(),
        );
    }
    eventually("the new certificate is served", Duration::from_secs(5), || {
        serial(&side) != first
    });
    assert_eq!(t.call(&side).status, 200);
    assert!(side.metric("signet_identity_reloads_total{result=\"failed\"}") >= 1);
    drop(side);

    // SIGHUP reloads at once, whatever the watch interval.
    let mut args = base.clone();
    args.extend(s(&["--watch-interval", "1h"]));
    let side = Sidecar::start("files sidecar (SIGHUP)", &args);
    let before = serial(&side);
    let third = t.mesh.issue(
        "foo",
        "httpbin-foo-3",
        &spiffe("foo", "httpbin"),
        &["--dns", "httpbin.foo"],
    );
    for f in ["tls.key", "tls.crt"] {
        replace_file(
            &std::path::Path::new(&dir).join(f),
            &std::fs::read(format!("{third}/{f}")).unwrap(),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(serial(&side), before, "no reload without a signal");
    assert!(side.proc.signal("HUP"));
    eventually("SIGHUP reload", Duration::from_secs(5), || serial(&side) != before);
    assert_eq!(t.call(&side).status, 200);
}

/// The most common provisioning mistake, the wrong root for the authority's own certificate,
/// is named once with its fix; later attempts only count.
#[test]
fn a_wrong_authority_root_is_named_once_with_the_fix() {
    let t = setup();
    let authority = Authority::start(&t.mesh, POLICY, "127.0.0.1:0");
    let mut args = t.mesh.provisioned(&authority, "foo", "httpbin", "1h");
    // foo's root instead of istio-system's, which signs the authority's certificate.
    let at = args.iter().position(|a| a == "--authority-ca").unwrap();
    args[at + 1] = format!("{}/ca.crt", t.mesh.signer_dir("foo"));
    let side = t.inbound(args);
    assert!(
        side.proc
            .logged_within("attempt 3 to the authority at", Duration::from_secs(10)),
        "{}",
        side.proc.log()
    );
    let log = side.proc.log();
    let cause = "does not chain to the roots in";
    assert_eq!(log.matches(cause).count(), 1, "the cause is named once:\n{log}");
    assert!(log.contains("failed the same way"), "{log}");
    assert!(
        log.contains("(identity.authority.ca); give the root of the signer that issues the authority's certificate (the istio-system signer's ca.crt)"),
        "{log}"
    );
    assert_eq!(side.admin_get("/ready").status, 503);
}

/// The attack: signer foo's root is compromised and taken out of the bundle (a new root replaces
/// it). A client holding a certificate from the removed root must be refused as soon as the
/// bundle changes, even though the sidecar's own certificate came from that root too; the sidecar
/// says so and is not ready until it holds a certificate from the new root.
#[test]
fn removing_a_compromised_root_takes_effect_in_files_mode() {
    let t = setup();
    let certs = t.mesh.httpbin_certs();
    let mut args = t.mesh.inbound_args(&certs, "foo", t.app.addr, "http");
    args.extend(s(&["--watch-interval", "200ms"]));
    let side = Sidecar::start("sidecar httpbin.foo", &args);
    assert_eq!(t.call(&side).status, 200, "the old root's client gets in before");

    let new = t.mesh.path("new-signers").display().to_string();
    signet_ok(&["signer", "new", "foo", "--dir", &new]);
    let fresh = t.mesh.path("bundle.new").display().to_string();
    signet_ok(&["bundle", &format!("{new}/foo"), "-o", &fresh]);
    replace_file(&t.mesh.path("bundle.yaml"), &std::fs::read(&fresh).unwrap());
    eventually("/ready to report the missing root", Duration::from_secs(10), || {
        side.admin_get("/ready").status == 503
    });
    assert!(
        side.admin_get("/ready")
            .body
            .contains("refuses this sidecar's certificate: the certificate for"),
        "{}",
        side.admin_get("/ready").body
    );
    let r = t.call(&side);
    assert_ne!(r.status, 200, "a client of the removed root is refused: {r:?}");
    assert!(
        side.proc.logged_within(
            "the new trust refuses this sidecar's own certificate",
            Duration::from_secs(2)
        ),
        "{}",
        side.proc.log()
    );
    assert!(
        side.proc.logged_within("retired_root: peer", Duration::from_secs(2)),
        "the refused client is named as one of a removed root:\n{}",
        side.proc.log()
    );

    // A certificate from the new root: ready again.
    signet_ok(&[
        "cert",
        "issue",
        "--signer-dir",
        &format!("{new}/foo"),
        "--id",
        &spiffe("foo", "httpbin"),
        "--out",
        &certs,
    ]);
    eventually("ready with the new root", Duration::from_secs(10), || {
        side.admin_get("/ready").status == 200
    });
}
