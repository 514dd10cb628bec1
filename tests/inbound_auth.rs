//! curl with a client certificate straight to an inbound listener: only a certificate from the
//! sidecar's own signer gets through; every other client fails during the handshake and nothing
//! reaches httpbin.

mod support;

use std::time::Duration;

use support::*;

struct Setup {
    mesh: Mesh,
    app: Httpbin,
    side: Sidecar,
    port: u16,
}

fn setup(extra: &[&str]) -> Setup {
    let mesh = Mesh::new(&["foo", "bar"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let certs = mesh.httpbin_certs();
    let mut args = mesh.inbound_args(&certs, "foo", app.addr, "http");
    args.extend(s(extra));
    let side = Sidecar::start("sidecar httpbin.foo", &args);
    let port = side.inbound[0].port();
    Setup { mesh, app, side, port }
}

impl Setup {
    /// curl to the inbound port as https://httpbin.foo, verifying the server with foo's root.
    fn call(&self, client: Option<&str>) -> Curl {
        self.mesh.curl_inbound(self.port, "foo", client)
    }
}

#[test]
fn only_clients_of_the_same_signer_get_through() {
    let t = setup(&[]);
    let own = t.mesh.curl_certs();
    let ok = t.call(Some(&own));
    assert_eq!((ok.code, ok.status), (0, 200), "{ok:?}");
    let reached = t.app.wait_requests(2);
    assert_eq!(reached, 2, "the own-signer request reached httpbin");

    let other = t.mesh.issue("bar", "curl-bar", &spiffe("bar", "curl"), &[]);
    let expired = t.mesh.issue(
        "foo",
        "curl-expired",
        &spiffe("foo", "curl"),
        &["--ttl", "1h", "--backdate", "2h"],
    );
    // The per-signer case: the very same SPIFFE ID, issued by another signer.
    let impostor = t.mesh.issue("bar", "curl-impostor", &spiffe("foo", "curl"), &[]);
    let cases = [
        (
            "other signer",
            Some(other.as_str()),
            "unknown_signer: peer spiffe://cluster.local/ns/bar/sa/curl presents a certificate from signer clusterissuers.cert-manager.io/bar",
        ),
        ("no client certificate", None, "no_client_cert: "),
        ("expired", Some(expired.as_str()), "expired: "),
    ];
    for (what, client, logged) in cases {
        let r = t.call(client);
        assert_ne!(r.code, 0, "{what}: curl must fail: {r:?}");
        assert_ne!(r.status, 200, "{what}: {r:?}");
        assert!(
            t.side.proc.logged_within(logged, Duration::from_secs(2)),
            "{what}: expected a log line with {logged:?}:\n{}",
            t.side.proc.log()
        );
    }
    // The per-signer case: the very same SPIFFE ID, issued by another signer. It is refused and
    // counted, but a second unknown_signer line within the log interval is held back.
    let r = t.call(Some(&impostor));
    assert_ne!(r.status, 200, "same SPIFFE ID, other signer: {r:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        t.side.proc.log().matches("rejected 127.0.0.1").count(),
        3,
        "one line per reason per interval:\n{}",
        t.side.proc.log()
    );
    assert_eq!(
        t.app.requests(),
        reached,
        "no rejected client reached httpbin:\n{}",
        t.app.access_log()
    );
    let failures = ["unknown_signer", "no_client_cert", "expired"]
        .iter()
        .map(|r| {
            t.side.metric(&format!(
                "signet_tls_handshakes_total{{direction=\"inbound\",result=\"{r}\"}}"
            ))
        })
        .collect::<Vec<_>>();
    assert_eq!(failures, vec![2, 1, 1]);
    // Rejections are one line each, naming the peer's address.
    for line in t.side.proc.log().lines().filter(|l| l.contains("rejected")) {
        assert!(line.contains("rejected 127.0.0.1:"), "{line}");
    }
    // A sidecar that has logged nothing yet names the impostor's signer.
    let fresh = setup(&[]);
    let impostor = fresh.mesh.issue("bar", "curl-impostor", &spiffe("foo", "curl"), &[]);
    assert_ne!(fresh.call(Some(&impostor)).status, 200);
    let logged = "unknown_signer: peer spiffe://cluster.local/ns/foo/sa/curl presents a certificate from signer clusterissuers.cert-manager.io/bar";
    assert!(
        fresh.side.proc.logged_within(logged, Duration::from_secs(2)),
        "{}",
        fresh.side.proc.log()
    );
}

#[test]
fn the_allow_list_refuses_other_identities_of_the_same_signer() {
    let t = setup(&["--allow", &spiffe("foo", "curl")]);
    let curl_id = t.mesh.curl_certs();
    let other_id = t.mesh.issue("foo", "sleep-foo", &spiffe("foo", "sleep"), &[]);
    assert_eq!(t.call(Some(&curl_id)).status, 200);
    let before = t.app.wait_requests(2);
    let r = t.call(Some(&other_id));
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        t.side.proc.logged_within(
            "not_allowed: peer spiffe://cluster.local/ns/foo/sa/sleep",
            Duration::from_secs(2)
        ),
        "{}",
        t.side.proc.log()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(t.app.requests(), before);
}
