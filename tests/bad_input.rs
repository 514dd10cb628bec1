//! Bad input gets one clear line and loses nothing: broken files stop the start with a line
//! naming the file; garbage on the wire closes that connection while the proxy keeps serving.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

fn start_fails(args: &[&str]) -> String {
    let mut all = vec!["proxy"];
    all.extend_from_slice(args);
    let out = signet(&all);
    assert_ne!(out.code, 0, "signet {all:?} should fail:\n{}", out.stderr);
    let err = out.stderr.trim().to_string();
    assert_eq!(err.lines().count(), 1, "exactly one line:\n{err}");
    assert!(err.starts_with("signet: error: "), "{err}");
    err
}

fn sidecar_args<'a>(certs: &'a str, bundle: &'a str) -> Vec<&'a str> {
    vec![
        "--cert-dir",
        certs,
        "--bundle",
        bundle,
        "--signer",
        "foo",
        "--inbound",
        "127.0.0.1:0=127.0.0.1:9",
    ]
}

#[test]
fn broken_files_and_configs_are_named_in_one_line() {
    let mesh = Mesh::new(&["foo", "bar"]);
    let bundle = mesh.bundle();
    let good = mesh.issue("foo", "good", &spiffe("foo", "httpbin"), &[]);

    // Missing key.
    let missing = mesh.issue("foo", "missing-key", &spiffe("foo", "httpbin"), &[]);
    std::fs::remove_file(format!("{missing}/tls.key")).unwrap();
    let err = start_fails(&sidecar_args(&missing, &bundle));
    assert!(
        err.contains(&format!("{missing}/tls.key")) && err.contains("No such file"),
        "{err}"
    );

    // Garbled certificate.
    let garbled = mesh.issue("foo", "garbled-cert", &spiffe("foo", "httpbin"), &[]);
    std::fs::write(format!("{garbled}/tls.crt"), "this is not a certificate\n").unwrap();
    let err = start_fails(&sidecar_args(&garbled, &bundle));
    assert!(
        err.contains(&format!("{garbled}/tls.crt")) && err.contains("no certificate found"),
        "{err}"
    );

    // Truncated certificate (half a PEM block).
    let truncated = mesh.issue("foo", "truncated-cert", &spiffe("foo", "httpbin"), &[]);
    let pem = std::fs::read_to_string(format!("{truncated}/tls.crt")).unwrap();
    std::fs::write(format!("{truncated}/tls.crt"), &pem[..pem.len() / 2]).unwrap();
    let err = start_fails(&sidecar_args(&truncated, &bundle));
    assert!(err.contains(&format!("{truncated}/tls.crt")), "{err}");

    // Garbled key.
    let badkey = mesh.issue("foo", "garbled-key", &spiffe("foo", "httpbin"), &[]);
    std::fs::write(
        format!("{badkey}/tls.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = start_fails(&sidecar_args(&badkey, &bundle));
    assert!(err.contains("tls.key") || err.contains("private key"), "{err}");

    // A key that belongs to another certificate.
    let mismatch = mesh.issue("foo", "mismatch", &spiffe("foo", "httpbin"), &[]);
    std::fs::copy(format!("{good}/tls.key"), format!("{mismatch}/tls.key")).unwrap();
    let err = start_fails(&sidecar_args(&mismatch, &bundle));
    assert!(
        err.contains("the private key does not belong to the certificate"),
        "{err}"
    );

    // A certificate from another signer than the one this sidecar is configured for.
    let wrong = mesh.issue("bar", "wrong-signer", &spiffe("foo", "httpbin"), &[]);
    let err = start_fails(&sidecar_args(&wrong, &bundle));
    assert!(
        err.contains("issued by signer clusterissuers.cert-manager.io/bar, not clusterissuers.cert-manager.io/foo"),
        "{err}"
    );

    // A signer the bundle does not know.
    let err = start_fails(&[
        "--cert-dir",
        &good,
        "--bundle",
        &bundle,
        "--signer",
        "baz",
        "--inbound",
        "127.0.0.1:0=127.0.0.1:9",
    ]);
    assert!(
        err.contains("no roots for signer clusterissuers.cert-manager.io/baz"),
        "{err}"
    );

    // A bundle entry without signers.
    let nosigner = mesh.path("nosigner.yaml");
    let root = std::fs::read_to_string(format!("{}/ca.crt", mesh.signer_dir("foo"))).unwrap();
    let indented: String = root.lines().map(|l| format!("    {l}\n")).collect();
    std::fs::write(&nosigner, format!("caCertificates:\n- pem: |\n{indented}")).unwrap();
    let err = start_fails(&sidecar_args(&good, nosigner.to_str().unwrap()));
    assert!(
        err.contains("nosigner.yaml") && err.contains("names no certSigners"),
        "{err}"
    );

    // Malformed and misspelled config files.
    let bad_yaml = mesh.path("bad.yaml");
    std::fs::write(&bad_yaml, "inbound: [listen: \n  - {").unwrap();
    let err = start_fails(&["--config", bad_yaml.to_str().unwrap()]);
    assert!(err.contains("bad.yaml: invalid config"), "{err}");
    let typo = mesh.path("typo.yaml");
    std::fs::write(&typo, "signr: foo\n").unwrap();
    let err = start_fails(&["--config", typo.to_str().unwrap()]);
    assert!(
        err.contains("typo.yaml") && err.contains("unknown field `signr`"),
        "{err}"
    );
    let err = start_fails(&["--config", mesh.path("absent.yaml").to_str().unwrap()]);
    assert!(err.contains("absent.yaml: cannot read the config file"), "{err}");

    // A bad flag value.
    let err = start_fails(&[
        "--cert-dir",
        &good,
        "--bundle",
        &bundle,
        "--signer",
        "foo",
        "--inbound",
        "15006",
    ]);
    assert!(err.contains("--inbound") && err.contains("LEFT=RIGHT"), "{err}");
}

/// Without --signer the signer is read off the certificate by signature, at a moment the leaf was
/// valid: an expired certificate is reported as expired, not as belonging to no signer.
#[test]
fn an_expired_certificate_is_reported_as_expired() {
    let mesh = Mesh::new(&["foo", "bar"]);
    let old = mesh.issue("foo", "old", &spiffe("foo", "a"), &["--ttl", "1h", "--backdate", "2h"]);
    let bundle = mesh.bundle();
    let err = start_fails(&[
        "--cert-dir",
        &old,
        "--bundle",
        &bundle,
        "--inbound",
        "127.0.0.1:0=127.0.0.1:9",
    ]);
    assert!(
        err.contains("the certificate for spiffe://cluster.local/ns/foo/sa/a expired at")
            && err.contains("issue a new one"),
        "{err}"
    );
}

#[test]
fn garbage_on_the_wire_closes_that_connection_and_the_next_client_is_served() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let server_certs = mesh.httpbin_certs();
    let mut side = Sidecar::start("sidecar", &mesh.inbound_args(&server_certs, "foo", app.addr, "http"));
    let inbound = side.inbound[0];
    let client = mesh.curl_certs();
    let call = || mesh.curl_inbound(inbound.port(), "foo", Some(&client));

    let pseudo_random: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // A ClientHello header announcing 512 bytes, cut off after a few.
    let truncated_hello = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x11, 0x22,
    ];
    let plaintext_http = b"GET /get HTTP/1.1\r\nHost: httpbin.foo\r\n\r\n".to_vec();
    for (what, bytes) in [
        ("random bytes", pseudo_random),
        ("truncated ClientHello", truncated_hello.to_vec()),
        ("plaintext HTTP", plaintext_http),
    ] {
        let mut conn = TcpStream::connect(inbound).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = conn.write_all(&bytes);
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let mut reply = Vec::new();
        let _ = conn.read_to_end(&mut reply);
        assert!(
            !String::from_utf8_lossy(&reply).contains("HTTP/1.1 200"),
            "{what}: must not be served"
        );
        let ok = call();
        assert_eq!(
            ok.status,
            200,
            "after {what}, the next client is served: {ok:?}\n{}",
            side.proc.log()
        );
    }
    assert!(side.proc.is_running(), "the proxy survived:\n{}", side.proc.log());
    assert!(
        side.proc.log().contains("not_tls"),
        "garbage is reported:\n{}",
        side.proc.log()
    );
}

#[test]
fn missing_provisioning_files_are_named_in_one_line() {
    let mesh = Mesh::new(&["istio-system", "foo"]);
    let root = format!("{}/ca.crt", mesh.signer_dir("istio-system"));
    let absent = mesh.path("absent.token").display().to_string();
    let base = [
        "--authority",
        "127.0.0.1:15012",
        "--id",
        "spiffe://cluster.local/ns/foo/sa/a",
        "--signer",
        "foo",
    ];
    let mut args = base.to_vec();
    args.extend([
        "--authority-ca",
        &root,
        "--token-file",
        &absent,
        "--inbound",
        "127.0.0.1:0=127.0.0.1:9",
    ]);
    let err = start_fails(&args);
    assert!(err.contains("--token-file") && err.contains("absent.token"), "{err}");
    let mut args = base.to_vec();
    args.extend([
        "--authority-ca",
        "/nonexistent/ca.crt",
        "--inbound",
        "127.0.0.1:0=127.0.0.1:9",
    ]);
    let err = start_fails(&args);
    assert!(
        err.contains("--authority-ca") && err.contains("/nonexistent/ca.crt"),
        "{err}"
    );
    let mut args = base.to_vec();
    args.extend(["--inbound", "127.0.0.1:0=127.0.0.1:9"]);
    let err = start_fails(&args);
    assert!(err.contains("--authority-ca"), "{err}");
}

#[test]
fn flags_that_cannot_apply_are_refused_not_ignored() {
    let mesh = Mesh::new(&["foo"]);
    let certs = mesh.issue("foo", "a", &spiffe("foo", "a"), &[]);
    let bundle = mesh.bundle();
    let base = [
        "--cert-dir",
        certs.as_str(),
        "--bundle",
        bundle.as_str(),
        "--inbound",
        "127.0.0.1:0=127.0.0.1:9",
    ];
    let mut args = base.to_vec();
    args.extend(["--id", "spiffe://cluster.local/ns/foo/sa/zzz"]);
    let err = start_fails(&args);
    assert!(
        err.starts_with("signet: error: identity.spiffeId (--id): ") && err.contains("apply to provisioning"),
        "{err}"
    );
    let mut args = base.to_vec();
    args.extend(["--token-file", "t"]);
    let err = start_fails(&args);
    assert!(
        err.contains("identity.authority.tokenFile (--token-file): goes with an authority")
            && err.contains("(--authority)"),
        "{err}"
    );
    let mut args = base.to_vec();
    args.extend(["--watch-interval", "0s"]);
    assert!(start_fails(&args).contains("at least 50ms"));
    let mut args = base.to_vec();
    args.extend(["--protocol", "http", "--allow", "spiffe://cluster.local/ns/foo*"]);
    assert!(start_fails(&args).contains("whole last path segment"));
}
