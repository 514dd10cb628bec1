//! Hitless rotation: under continuous load through a foo sidecar pair (HTTP over pooled mTLS,
//! and TCP tunnels that each make a new handshake), leaf certificates renew every ~2 s and signer
//! foo's root is rotated by the documented procedure, with zero failed requests.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failed: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, result: Result<(), String>) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut errors = self.errors.lock().unwrap();
            if errors.len() < 10 {
                errors.push(e);
            }
        }
    }
}

/// Requests through the outbound HTTP proxy on one kept-alive connection, every `every`.
async fn http_load(proxy: std::net::SocketAddr, every: Duration, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut sender = None;
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if sender.is_none() {
            let Ok(stream) = TcpStream::connect(proxy).await else {
                tally.record(Err("connect to the outbound proxy failed".into()));
                continue;
            };
            let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender = Some(s);
        }
        let req = hyper::Request::get("http://httpbin.foo:8000/get")
            .header("host", "httpbin.foo:8000")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let result = async {
            let s = sender.as_mut().unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(5), s.send_request(req))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| format!("http: {e}"))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            if status != 200 {
                return Err(format!("http {status}: {}", String::from_utf8_lossy(&body)));
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            sender = None;
        }
        tally.record(result);
    }
}

/// One new TCP connection (so one new mTLS handshake between the sidecars) per request.
async fn tcp_load(tunnel: std::net::SocketAddr, every: Duration, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let result = async {
            let mut conn = TcpStream::connect(tunnel).await.map_err(|e| e.to_string())?;
            conn.write_all(b"GET /get HTTP/1.1\r\nHost: httpbin.foo:8001\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut reply = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut reply))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| format!("tcp: {e}"))?;
            if reply.starts_with(b"HTTP/1.1 200") {
                Ok(())
            } else {
                Err(format!(
                    "tcp reply: {:?}",
                    String::from_utf8_lossy(&reply[..reply.len().min(120)])
                ))
            }
        }
        .await;
        tally.record(result);
    }
}

fn renewals(sides: &[&Sidecar]) -> u64 {
    sides.iter().map(|s| s.metric("signet_identity_renewals_total")).sum()
}

fn root_fingerprint(path: &str) -> String {
    let root = signet_certs::read_certs(std::path::Path::new(path)).unwrap();
    signet_certs::sha256_hex(&root[0])
}

#[test]
fn renewals_and_a_root_rotation_under_load_lose_no_request() {
    let mesh = Mesh::new(&["istio-system", "foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    std::fs::write(mesh.path("tokens.yaml"), "tokens: []\n").unwrap();
    let authority = Authority::start(
        &mesh,
        "minWorkloadCertTtl: 2s\napprovableSigners: [istio-system, foo]\nnamespaces:\n  foo: {signer: foo}\n",
        "127.0.0.1:0",
    );

    // httpbin.foo's sidecar: one http and one tcp inbound, certificates of 4 s renewed at half-life.
    let server_token = mesh.token("foo", "httpbin");
    let server_yaml = mesh.path("server.yaml");
    let root_of_service = format!("{}/ca.crt", mesh.signer_dir("istio-system"));
    std::fs::write(
        &server_yaml,
        format!(
            "identity:\n  authority: {{address: \"{authority}\", ca: \"{root}\", tokenFile: \"{token}\"}}\n  spiffeId: {id}\n  ttl: 4s\ntrustBundle: {bundle}\nwatchInterval: 200ms\ninbound:\n- {{listen: \"127.0.0.1:0\", app: \"{app}\", protocol: http}}\n- {{listen: \"127.0.0.1:0\", app: \"{app}\", protocol: tcp}}\n",
            authority = authority.addr,
            root = root_of_service,
            token = server_token,
            id = spiffe("foo", "httpbin"),
            bundle = mesh.bundle(),
            app = app.addr,
        ),
    )
    .unwrap();
    let server = Sidecar::start("server httpbin.foo", &s(&["--config", server_yaml.to_str().unwrap()]));
    let mut client_args = mesh.provisioned(&authority, "foo", "curl", "4s");
    client_args.extend(s(&[
        "--outbound",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0=httpbin.foo:8001",
        "--service",
        &format!("httpbin.foo:8000={},{}", server.inbound[0], spiffe("foo", "httpbin")),
        "--service",
        &format!("httpbin.foo:8001={},{}", server.inbound[1], spiffe("foo", "httpbin")),
    ]));
    let client = Sidecar::start("client curl.foo", &client_args);
    server.wait_ready(Duration::from_secs(10));
    client.wait_ready(Duration::from_secs(10));

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let mut load = Vec::new();
    for _ in 0..2 {
        load.push(rt.spawn(http_load(
            client.outbound.unwrap(),
            Duration::from_millis(10),
            stop.clone(),
            tally.clone(),
        )));
    }
    load.push(rt.spawn(tcp_load(
        client.tcp[0],
        Duration::from_millis(20),
        stop.clone(),
        tally.clone(),
    )));
    let sides = [&server, &client];

    eventually("10 renewals before the rotation", Duration::from_secs(60), || {
        renewals(&sides) >= 10
    });

    // Root rotation of signer foo, the documented procedure.
    let old_root = root_fingerprint(&format!("{}/ca.crt", mesh.signer_dir("foo")));
    let new_dir = mesh.path("new-signers").display().to_string();
    signet_ok(&["signer", "new", "foo", "--dir", &new_dir]);
    let new_root = root_fingerprint(&format!("{new_dir}/foo/ca.crt"));
    // 1. Add the new root to the bundle: every sidecar trusts both.
    signet_ok(&[
        "bundle",
        &mesh.signer_dir("istio-system"),
        &mesh.signer_dir("foo"),
        &format!("{new_dir}/foo"),
        "-o",
        &mesh.bundle(),
    ]);
    eventually("both sidecars trust both roots of foo", Duration::from_secs(20), || {
        sides
            .iter()
            .all(|s| s.certs()["certificates"][0]["ca_cert"].as_array().map(|a| a.len()) == Some(2))
    });
    // 2. Switch signer foo to the new CA; leaves renew from it.
    for f in ["tls.key", "tls.crt", "ca.crt"] {
        let bytes = std::fs::read(format!("{new_dir}/foo/{f}")).unwrap();
        replace_file(&mesh.path(&format!("signers/foo/{f}")), &bytes);
    }
    eventually("both leaves chain to the new root", Duration::from_secs(30), || {
        sides.iter().all(|s| s.certs()["anchor_sha256"] == new_root.as_str())
    });
    // 3. Remove the old root.
    signet_ok(&[
        "bundle",
        &mesh.signer_dir("istio-system"),
        &mesh.signer_dir("foo"),
        "-o",
        &mesh.bundle(),
    ]);
    eventually("both sidecars trust only the new root", Duration::from_secs(20), || {
        sides.iter().all(|s| {
            let c = s.certs();
            c["certificates"][0]["ca_cert"].as_array().map(|a| a.len()) == Some(1)
                && c["certificates"][0]["ca_cert"][0]["sha256"] == new_root.as_str()
        })
    });
    let after_rotation = renewals(&sides);
    eventually(
        "20 renewals in all, and more after the rotation",
        Duration::from_secs(60),
        || {
            let n = renewals(&sides);
            n >= 20 && n >= after_rotation + 2
        },
    );

    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for task in load {
            let _ = task.await;
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let (sent, failed) = (tally.sent.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
    let handshakes = client.metric("signet_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}");
    eprintln!(
        "rotation under load: {sent} requests in {secs:.1} s ({:.0}/s), {failed} failed; {} renewals; {handshakes} outbound handshakes; root {} → {}",
        sent as f64 / secs,
        renewals(&sides),
        &old_root[..12],
        &new_root[..12]
    );
    assert_eq!(failed, 0, "failed requests: {:?}", tally.errors.lock().unwrap());
    // The generator is paced at ~250 requests/s (two HTTP loops every 10 ms, one TCP loop every
    // 20 ms); the rate achieved is printed above, not asserted (CI machines are noisy).
    assert!(sent > 1000, "the load ran: {sent} requests");
    assert_ne!(old_root, new_root);
    // The authority saw the switch: foo's requests after step 2 were signed by the new CA.
    let reqs = authority.requests();
    assert!(reqs["items"].as_array().unwrap().len() as u64 >= 22);
}

/// The near-expiry case of issue 8 (hole 10): certificates of 2 s (the signing policy's floor),
/// which the signer truncates to whole seconds, so some arrive with about a second to live.
/// Under load through the pair (pooled HTTP and a new TCP tunnel, so a new handshake, every
/// 20 ms, with session resumption on), renewals land in time and no request fails: no resumed
/// session outlives its peer's certificate.
#[test]
fn two_second_certificates_are_renewed_in_time_under_load() {
    let mesh = Mesh::new(&["istio-system", "foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    std::fs::write(mesh.path("tokens.yaml"), "tokens: []\n").unwrap();
    let authority = Authority::start(
        &mesh,
        "minWorkloadCertTtl: 2s\napprovableSigners: [istio-system, foo]\nnamespaces:\n  foo: {signer: foo}\n",
        "127.0.0.1:0",
    );
    let mut server_args = mesh.provisioned(&authority, "foo", "httpbin", "2s");
    server_args.extend(s(&[
        "--inbound",
        &format!("127.0.0.1:0={}", app.addr),
        "--inbound",
        &format!("127.0.0.1:0={}", app.addr),
        "--protocol",
        "http",
    ]));
    let server = Sidecar::start("server httpbin.foo", &server_args);
    let mut client_args = mesh.provisioned(&authority, "foo", "curl", "2s");
    client_args.extend(s(&[
        "--outbound",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0=httpbin.foo:8001",
        "--service",
        &format!("httpbin.foo:8000={},{}", server.inbound[0], spiffe("foo", "httpbin")),
        "--service",
        &format!("httpbin.foo:8001={},{}", server.inbound[1], spiffe("foo", "httpbin")),
    ]));
    let client = Sidecar::start("client curl.foo", &client_args);
    server.wait_ready(Duration::from_secs(10));
    client.wait_ready(Duration::from_secs(10));

    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = [
        rt.spawn(http_load(
            client.outbound.unwrap(),
            Duration::from_millis(10),
            stop.clone(),
            tally.clone(),
        )),
        rt.spawn(tcp_load(
            client.tcp[0],
            Duration::from_millis(20),
            stop.clone(),
            tally.clone(),
        )),
    ];
    let sides = [&server, &client];
    eventually("12 renewals", Duration::from_secs(60), || renewals(&sides) >= 12);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for task in load {
            let _ = task.await;
        }
    });
    let (sent, failed) = (tally.sent.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
    eprintln!(
        "2 s certificates under load: {sent} requests, {failed} failed, {} renewals, {} resumed outbound handshakes",
        renewals(&sides),
        client.metric("signet_tls_sessions_resumed_total{direction=\"outbound\"}")
    );
    assert_eq!(failed, 0, "failed requests: {:?}", tally.errors.lock().unwrap());
    assert!(sent > 200, "the load ran: {sent} requests");
    for side in sides {
        assert!(
            !side.proc.log().contains("expired and was not renewed"),
            "no certificate expired before its renewal:\n{}",
            side.proc.log()
        );
    }
}
