//! Client signer × server signer over {istio-system, foo, bar}: a call succeeds exactly when
//! both workloads have the same signer.

mod support;

use support::*;

#[test]
fn calls_succeed_exactly_on_the_diagonal() {
    let signers = ["istio-system", "foo", "bar"];
    let mesh = Mesh::new(&signers);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let servers: Vec<Sidecar> = signers
        .iter()
        .map(|ns| {
            let certs = mesh.issue(ns, &format!("server-{ns}"), &spiffe(ns, "httpbin"), &[]);
            Sidecar::start(
                &format!("server {ns}"),
                &mesh.inbound_args(&certs, ns, app.addr, "http"),
            )
        })
        .collect();
    let mut outcomes = Vec::new();
    for client_ns in signers {
        let certs = mesh.issue(
            client_ns,
            &format!("client-{client_ns}"),
            &spiffe(client_ns, "curl"),
            &[],
        );
        let mut args = s(&["--cert-dir", &certs, "--bundle", &mesh.bundle(), "--signer", client_ns]);
        args.extend(s(&["--outbound", "127.0.0.1:0"]));
        for (server_ns, side) in signers.iter().zip(&servers) {
            args.push("--service".into());
            args.push(format!(
                "httpbin.{server_ns}:8000={},{}",
                side.inbound[0],
                spiffe(server_ns, "httpbin")
            ));
        }
        let client = Sidecar::start(&format!("client {client_ns}"), &args);
        for server_ns in signers {
            let before = app.requests();
            let r = curl_via(
                client.outbound.unwrap(),
                &format!("http://httpbin.{server_ns}:8000/get"),
            );
            let reached = if client_ns == server_ns {
                app.wait_requests(before + 1) > before
            } else {
                std::thread::sleep(std::time::Duration::from_millis(100));
                app.requests() > before
            };
            if client_ns == server_ns {
                assert_eq!(r.status, 200, "{client_ns} → {server_ns}: {r:?}");
                assert!(reached, "{client_ns} → {server_ns} reached httpbin");
            } else {
                assert_eq!(r.status, 503, "{client_ns} → {server_ns}: {r:?}");
                assert!(r.body.contains("CERTIFICATE_VERIFY_FAILED"), "{}", r.body);
                assert!(
                    r.body
                        .contains(&format!("signer clusterissuers.cert-manager.io/{server_ns},")),
                    "names the server's signer: {}",
                    r.body
                );
                assert!(!reached, "{client_ns} → {server_ns} must not reach httpbin");
            }
            outcomes.push(format!("{client_ns}→{server_ns}:{}", r.status));
        }
    }
    assert_eq!(
        outcomes.iter().filter(|o| o.ends_with(":200")).count(),
        3,
        "{outcomes:?}"
    );
}
