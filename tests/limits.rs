//! The limits of issue 8, each written as the attack it stops, against the real binary: slow
//! headers, idle connections, oversized headers, a listener filled to its cap, and silent
//! connections to the signer service. Times printed here go in the notes; the assertions only
//! say "closed" (with bounds far above the configured limits: machines are noisy).

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// A TLS client of signer `signer` holding the certificate in `dir`, trusting `signer`'s root.
fn tls_client(mesh: &Mesh, signer: &str, dir: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for root in signet_certs::read_certs(std::path::Path::new(&format!("{}/ca.crt", mesh.signer_dir(signer)))).unwrap()
    {
        roots.add(root).unwrap();
    }
    let chain = signet_certs::read_certs(std::path::Path::new(&format!("{dir}/tls.crt"))).unwrap();
    let key = signet_certs::read_key(std::path::Path::new(&format!("{dir}/tls.key"))).unwrap();
    let mut config = signet_certs::CryptoPolicy::default()
        .client_builder()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// An mTLS connection to `addr` as `httpbin.foo`, handshake done.
fn tls_connect(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = rustls::pki_types::ServerName::try_from("httpbin.foo").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

/// Whether the other side has closed `stream` (a read sees the end, or an error).
fn closed<S: Read>(stream: &mut S) -> bool {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

/// Sends a request line, then one header byte every 250 ms, until the server closes the
/// connection or `give_up` passes. Returns how long the server kept it open.
fn trickle<S: Read + Write>(stream: &mut S, set_timeout: impl Fn(&mut S), give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    if stream
        .write_all(b"GET /get HTTP/1.1\r\nHost: httpbin.foo\r\nX-Slow: ")
        .is_err()
    {
        return Some(start.elapsed());
    }
    set_timeout(stream);
    while start.elapsed() < give_up {
        if stream.write_all(b"a").and_then(|_| stream.flush()).is_err() || closed(stream) {
            return Some(start.elapsed());
        }
    }
    None
}

/// An http inbound sidecar of foo in front of httpbin, with `extra` flags.
fn inbound(mesh: &Mesh, app: &Httpbin, protocol: &str, extra: &[&str]) -> (Sidecar, String) {
    let certs = mesh.issue(
        "foo",
        &format!("httpbin-{protocol}"),
        &spiffe("foo", "httpbin"),
        &["--dns", "httpbin.foo"],
    );
    let mut args = mesh.inbound_args(&certs, "foo", app.addr, protocol);
    args.extend(s(extra));
    (Sidecar::start("sidecar httpbin.foo", &args), certs)
}

fn closes(side: &Sidecar, direction: &str, reason: &str) -> u64 {
    side.metric(&format!(
        "signet_connections_closed_total{{direction=\"{direction}\",reason=\"{reason}\"}}"
    ))
}

#[test]
fn slow_headers_are_cut_off_at_the_header_timeout() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let (side, _) = inbound(
        &mesh,
        &app,
        "http",
        &["--header-read-timeout", "1s", "--outbound", "127.0.0.1:0"],
    );
    let client = mesh.curl_certs();

    // A same-signer peer sends its headers one byte at a time, over mTLS.
    let mut tls = tls_connect(&tls_client(&mesh, "foo", &client), side.inbound[0]);
    let kept = trickle(
        &mut tls,
        |t| t.sock.set_read_timeout(Some(Duration::from_millis(250))).unwrap(),
        Duration::from_secs(30),
    );
    let kept = kept.expect("the inbound must close a connection whose headers never end");
    eprintln!("inbound: slow-header connection closed after {kept:?} (header timeout 1s)");
    assert!(kept < Duration::from_secs(15), "{kept:?}");

    // The same from a local app to the outbound HTTP proxy (plain HTTP).
    let mut tcp = TcpStream::connect(side.outbound.unwrap()).unwrap();
    let kept = trickle(
        &mut tcp,
        |t| t.set_read_timeout(Some(Duration::from_millis(250))).unwrap(),
        Duration::from_secs(30),
    );
    let kept = kept.expect("the outbound must close a connection whose headers never end");
    eprintln!("outbound: slow-header connection closed after {kept:?} (header timeout 1s)");
    assert!(kept < Duration::from_secs(15), "{kept:?}");

    // A connection that never sends a request at all is closed as well.
    let mut silent = TcpStream::connect(side.outbound.unwrap()).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert!(closed(&mut silent), "a silent connection is closed");

    assert!(closes(&side, "inbound", "header_timeout") >= 1);
    assert!(closes(&side, "outbound", "header_timeout") >= 2);
    assert_eq!(app.requests(), 1, "only the readiness probe reached httpbin");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let client = mesh.curl_certs();
    let config = tls_client(&mesh, "foo", &client);
    let request = b"GET /get HTTP/1.1\r\nHost: httpbin.foo\r\n\r\n";

    // HTTP: one request, then nothing.
    let (http, _) = inbound(&mesh, &app, "http", &["--idle-timeout", "1s"]);
    let mut tls = tls_connect(&config, http.inbound[0]);
    tls.write_all(request).unwrap();
    let mut response = [0u8; 12];
    tls.read_exact(&mut response).unwrap();
    assert_eq!(&response, b"HTTP/1.1 200");
    let start = Instant::now();
    tls.sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    let kept = start.elapsed();
    eprintln!("http: idle connection closed after {kept:?} (idle timeout 1s)");
    assert!(kept < Duration::from_secs(20), "{kept:?}");
    assert_eq!(closes(&http, "inbound", "idle"), 1);

    // TCP: a tunnel with no byte either way.
    // (No request: httpbin closes after each response, which would end the tunnel by itself.)
    let (tcp, _) = inbound(&mesh, &app, "tcp", &["--tcp-idle-timeout", "1s"]);
    let mut tls = tls_connect(&config, tcp.inbound[0]);
    let start = Instant::now();
    tls.sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest);
    let kept = start.elapsed();
    eprintln!("tcp: idle tunnel closed after {kept:?} (tcp idle timeout 1s)");
    assert!(kept < Duration::from_secs(20), "{kept:?}");
    assert_eq!(closes(&tcp, "inbound", "idle"), 1);
}

/// Reads one HTTP/1.1 response's status line and headers.
fn status_of<S: Read>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 65536 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn one_header_limit_everywhere_answered_with_431_and_every_response_counted() {
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let (server, _) = inbound(&mesh, &app, "http", &[]);
    let client_certs = mesh.curl_certs();
    let client = Sidecar::start("sidecar curl.foo", &mesh.outbound_args(&client_certs, &server, &[]));
    let proxy = client.outbound.unwrap();
    let big = "a".repeat(100 * 1024);

    // Straight to the inbound: 431, not passed to the app.
    let mut tls = tls_connect(&tls_client(&mesh, "foo", &client_certs), server.inbound[0]);
    write!(tls, "GET /get HTTP/1.1\r\nHost: httpbin.foo\r\nX-Big: {big}\r\n\r\n").unwrap();
    assert_eq!(status_of(&mut tls), "HTTP/1.1 431 Request Header Fields Too Large");

    // Through the pair: the same limit, at the first sidecar.
    let header = format!("X-Big: {big}");
    let r = curl(
        &["-H", &header, "http://httpbin.foo:8000/get"],
        &[("http_proxy", &format!("http://{proxy}"))],
    );
    assert_eq!(r.status, 431, "{r:?}");
    // 56 KiB of headers (httpbin takes at most 8 KiB per line) passes the pair.
    let mut args = Vec::new();
    let line = "b".repeat(8000);
    let headers: Vec<String> = (0..7).map(|i| format!("X-Part-{i}: {line}")).collect();
    for h in &headers {
        args.extend(["-H", h.as_str()]);
    }
    args.push("http://httpbin.foo:8000/headers");
    let r = curl(&args, &[("http_proxy", &format!("http://{proxy}"))]);
    assert_eq!(r.status, 200, "{}", &r.stderr);
    assert!(r.body.contains("X-Part-6"));

    // Signet's own answers are counted with the app's.
    let ask = |request: &str| {
        let mut tcp = TcpStream::connect(proxy).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(request.as_bytes()).unwrap();
        status_of(&mut tcp)
    };
    assert!(
        ask("GET /get HTTP/1.1\r\nUser-Agent: no-host\r\n\r\n").contains("400"),
        "no host: Signet's 400"
    );
    assert!(ask("CONNECT nowhere.bar:443 HTTP/1.1\r\nHost: nowhere.bar:443\r\n\r\n").contains("502"));
    assert!(ask("GET http://nowhere.bar:80/ HTTP/1.1\r\nHost: nowhere.bar:80\r\n\r\n").contains("502"));
    assert!(
        ask("GET / HTTP/1.1\r\nno colon here\r\n\r\n").contains("400"),
        "hyper's own 400"
    );
    let count = |class: &str| {
        client.metric(&format!(
            "signet_http_responses_total{{direction=\"outbound\",class=\"{class}\"}}"
        ))
    };
    assert_eq!((count("2xx"), count("4xx"), count("5xx")), (1, 3, 2));
    assert!(
        client.metric("signet_connections_total{direction=\"outbound\"}") >= 1,
        "connections opened to peers are counted"
    );
    assert_eq!(
        server.metric("signet_http_responses_total{direction=\"inbound\",class=\"4xx\"}"),
        1,
        "the inbound's own 431"
    );
}

/// Raises this test process's descriptor limit as far as it goes; returns it.
fn raise_own_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[test]
fn twenty_thousand_idle_clients_leave_ready_reloads_and_new_clients_working() {
    let fds = raise_own_fd_limit();
    let mesh = Mesh::new(&["foo"]);
    let app = Httpbin::start(mesh.dir.path(), "httpbin");
    let (server, _) = inbound(&mesh, &app, "http", &[]);
    let client_certs = mesh.curl_certs();
    // The cap, within what this machine's descriptor limit lets the test hold.
    let cap = 5000.min((fds.saturating_sub(400) / 2) as usize);
    let client = Sidecar::start(
        "sidecar curl.foo",
        &mesh.outbound_args(
            &client_certs,
            &server,
            &[
                "--max-connections",
                &cap.to_string(),
                // The idle clients stay for the whole test.
                "--header-read-timeout",
                "10m",
                "--watch-interval",
                "200ms",
            ],
        ),
    );
    let proxy = client.outbound.unwrap();
    let pid = client.proc.pid();
    let rss_before = rss_mib(pid);

    let start = Instant::now();
    let (mut held, mut refused) = (Vec::new(), 0usize);
    for _ in 0..20_000 {
        let mut tcp = match TcpStream::connect(proxy) {
            Ok(t) => t,
            Err(e) => panic!("connect {}: {e}", held.len() + refused),
        };
        if held.len() < cap {
            held.push(tcp);
            continue;
        }
        // Over the cap: a clear refusal, at once.
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        let _ = tcp.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("maximum of") && answer.contains("connections"),
            "client {}: {answer:?}",
            held.len() + refused
        );
        refused += 1;
    }
    let rss_full = rss_mib(pid);
    eprintln!(
        "20,000 clients in {:?}: {} held (cap {cap}), {refused} refused with 503; sidecar RSS {rss_before} MiB before, {rss_full} MiB full",
        start.elapsed(),
        held.len()
    );
    assert_eq!(refused, 20_000 - cap);
    // The cap is real: the held ones are all still open.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        client.metric("signet_connections_refused_total{listener=\"outbound\"}"),
        refused as u64
    );

    // The admin port answers while the data listener is full.
    assert_eq!(client.admin_get("/ready").status, 200);
    // A reload of the certificate files works (it needs descriptors too).
    let serial = client.certs()["certificates"][0]["cert_chain"][0]["serial_number"].clone();
    assert!(serial.is_string(), "{}", client.certs());
    mesh.curl_certs();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.certs()["certificates"][0]["cert_chain"][0]["serial_number"] == serial {
        assert!(Instant::now() < deadline, "no reload:\n{}", client.proc.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Places freed are usable at once by new clients, served end to end.
    held.truncate(cap - 10);
    let r = curl_via(proxy, "http://httpbin.foo:8000/get");
    assert_eq!(r.status, 200, "{r:?}");
    drop(held);
    // And their memory goes back to the system once they have left.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rss_mib(pid) > rss_full / 2 {
        assert!(
            Instant::now() < deadline,
            "RSS stays at {} MiB after the clients left (full: {rss_full} MiB)",
            rss_mib(pid)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("sidecar RSS after the clients left: {} MiB", rss_mib(pid));
}

#[test]
fn the_signer_service_closes_connections_that_never_send_a_request() {
    let mesh = Mesh::new(&["istio-system", "foo"]);
    let authority = Authority::start(
        &mesh,
        "defaultSigner: istio-system\napprovableSigners: [istio-system, foo]\n",
        "127.0.0.1:0",
    );
    let mut roots = rustls::RootCertStore::empty();
    for root in signet_certs::read_certs(std::path::Path::new(&format!(
        "{}/ca.crt",
        mesh.signer_dir("istio-system")
    )))
    .unwrap()
    {
        roots.add(root).unwrap();
    }
    let mut config = signet_certs::CryptoPolicy::default()
        .client_builder()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let name = rustls::pki_types::ServerName::try_from(signet_certs::AUTHORITY_SERVER_NAME).unwrap();
    let start = Instant::now();
    // 50 clients complete TLS and then never send the HTTP/2 preface.
    let mut silent: Vec<Tls> = (0..50)
        .map(|_| {
            let tcp = TcpStream::connect(authority.addr).unwrap();
            let mut tls = rustls::StreamOwned::new(
                rustls::ClientConnection::new(config.clone(), name.clone()).unwrap(),
                tcp,
            );
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock).unwrap();
            }
            tls.sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            tls
        })
        .collect();
    for tls in &mut silent {
        let mut rest = Vec::new();
        let _ = tls.read_to_end(&mut rest);
    }
    let all_closed = start.elapsed();
    eprintln!("authority: 50 silent connections all closed after {all_closed:?}");
    assert!(all_closed < Duration::from_secs(45), "{all_closed:?}");
}

/// A TCP inbound connects to its app only once the peer has sent something (or after a short
/// silence, for server-first protocols): a handshake-only client, a health check, a scan that
/// completes TLS, costs the app no connection.
#[test]
fn a_tcp_inbound_connects_to_the_app_only_for_peers_that_speak() {
    let mesh = Mesh::new(&["foo"]);
    let app = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    app.set_nonblocking(true).unwrap();
    let server_certs = mesh.issue("foo", "server", &spiffe("foo", "httpbin"), &["--dns", "httpbin.foo"]);
    let client_certs = mesh.issue("foo", "client", &spiffe("foo", "curl"), &[]);
    let server = Sidecar::start(
        "tcp inbound",
        &mesh.inbound_args(&server_certs, "foo", app.local_addr().unwrap(), "tcp"),
    );
    let config = tls_client(&mesh, "foo", &client_certs);
    let accepted = |app: &std::net::TcpListener| {
        let mut n = 0;
        while app.accept().is_ok() {
            n += 1;
        }
        n
    };

    // Handshake, then close without a byte (a clean close_notify): the app is never dialled.
    for _ in 0..3 {
        let mut tls = tls_connect(&config, server.inbound[0]);
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(accepted(&app), 0, "handshake-only peers cost the app nothing");

    // A peer that speaks: its bytes reach the app, which is dialled once.
    let mut tls = tls_connect(&config, server.inbound[0]);
    tls.write_all(b"hello app").unwrap();
    tls.flush().unwrap();
    let start = std::time::Instant::now();
    let mut conn = loop {
        match app.accept() {
            Ok((c, _)) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("the app was not dialled: {e}\n{}", server.proc.log()),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = [0u8; 9];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello app");
}
