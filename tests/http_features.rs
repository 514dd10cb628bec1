//! HTTP features of the sidecar pair, with real clients and real servers: a client sidecar
//! (`--outbound`, the app's explicit HTTP proxy) and a server sidecar in front of each app
//! (`--protocol auto`: HTTP with x-forwarded-client-cert when the peer sidecar negotiated an
//! HTTP ALPN, bytes otherwise).
//!
//! - CONNECT: curl `--proxytunnel` and `https_proxy` (TLS from the app to an https app, inside
//!   the mTLS connection), and a 502 naming a target that is not in the service table;
//! - HTTP/1.1 Upgrade: WebSocket with the real `websockets` package, through the proxy by `Host`
//!   and through CONNECT;
//! - cleartext HTTP/2 with prior knowledge from the app (curl), kept h2 up to the app (the real
//!   httpbin under gunicorn with h2c);
//! - gRPC with the real `grpcio`: unary, server and bidi streams, trailing metadata, an error
//!   status, by `:authority` and through CONNECT;
//! - 1 GiB streamed up and down with both sidecars' memory bounded; `Expect: 100-continue`;
//! - PERMISSIVE inbound: mTLS and plaintext on one port, counted apart; STRICT by default.
//!
//! Whether a request was HTTP-proxied or tunnelled is told by x-forwarded-client-cert: the
//! server sidecar adds it to what it proxies as HTTP, and cannot add it to bytes.
//!
//! The Python helpers are in tests/py and run with target/venv's interpreter (./test.sh installs
//! tests/requirements.txt there: httpbin, gunicorn with h2, websockets, grpcio).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// The server sidecars' protocol: by what the peer sidecar negotiated.
const AUTO: &str = "auto";
/// The client workload's service account; the server sidecar names it in XFCC.
const CLIENT_SA: &str = "client";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/venv's Python (./test.sh installs tests/requirements.txt into it), with no proxy
/// settings from the environment.
fn python() -> Command {
    let py = repo().join("target/venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run ./test.sh, which installs tests/requirements.txt into target/venv",
        py.display()
    );
    let mut cmd = Command::new(py);
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd
}

fn script(name: &str) -> PathBuf {
    repo().join("tests/py").join(name)
}

/// Runs a Python client from tests/py; returns the JSON line it printed (its last line).
fn py_json(name: &str, args: &[&str]) -> Value {
    let out = python().arg(script(name)).args(args).output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("{name} {args:?} printed no JSON ({}):\n{stdout}\n{stderr}", out.status))
}

/// A Python server from tests/py on 127.0.0.1 (any port), killed when dropped.
struct PyServer {
    proc: Proc,
    addr: SocketAddr,
}

impl PyServer {
    fn start(name: &str, args: &[&str]) -> PyServer {
        let ready = ready_path(name);
        let mut cmd = python();
        cmd.arg(script(args[0]))
            .args(&args[1..])
            .arg("--ready-file")
            .arg(&ready);
        let mut proc = Proc::spawn(name, cmd);
        let port = proc.wait_ready_file(&ready, Duration::from_secs(30))["port"]
            .as_u64()
            .expect("the server's port") as u16;
        PyServer {
            proc,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

/// One app behind its own server sidecar, known to the client as `service` (`host:port`).
struct Upstream<'a> {
    service: &'a str,
    sa: &'a str,
    app: SocketAddr,
    protocol: &'a str,
    extra: &'a [&'a str],
}

impl<'a> Upstream<'a> {
    fn new(service: &'a str, sa: &'a str, app: SocketAddr) -> Self {
        Upstream {
            service,
            sa,
            app,
            protocol: AUTO,
            extra: &[],
        }
    }
}

/// The client sidecar (`--outbound`) and one server sidecar per upstream, all of signer foo.
struct Pair {
    /// The certificates' directory, kept while the sidecars run.
    _mesh: Mesh,
    servers: Vec<Sidecar>,
    client: Sidecar,
    /// The client sidecar's outbound HTTP proxy.
    proxy: SocketAddr,
}

impl Pair {
    fn start(mesh: Mesh, upstreams: &[Upstream]) -> Pair {
        let mut servers = Vec::new();
        let mut args = vec![
            "--cert-dir".to_string(),
            mesh.issue("foo", CLIENT_SA, &spiffe("foo", CLIENT_SA), &[]),
            "--bundle".into(),
            mesh.bundle(),
            "--signer".into(),
            "foo".into(),
            "--outbound".into(),
            "127.0.0.1:0".into(),
        ];
        for up in upstreams {
            let certs = mesh.issue("foo", up.sa, &spiffe("foo", up.sa), &[]);
            let mut server_args = mesh.inbound_args(&certs, "foo", up.app, up.protocol);
            server_args.extend(up.extra.iter().map(|a| a.to_string()));
            let server = Sidecar::start(&format!("sidecar {}", up.service), &server_args);
            args.push("--service".into());
            args.push(format!("{}={},{}", up.service, server.inbound[0], spiffe("foo", up.sa)));
            servers.push(server);
        }
        let client = Sidecar::start("sidecar client", &args);
        let proxy = client.outbound.expect("the outbound listener");
        Pair {
            _mesh: mesh,
            servers,
            client,
            proxy,
        }
    }

    fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy)
    }

    /// Both sidecars' logs, for failure messages.
    fn logs(&self) -> String {
        let mut all = format!("--- client sidecar:\n{}", self.client.proc.log());
        for (i, s) in self.servers.iter().enumerate() {
            all.push_str(&format!("--- server sidecar {i}:\n{}", s.proc.log()));
        }
        all
    }
}

/// A header of a JSON object of headers, by name in any case (httpbin writes `Title-Case`).
fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

fn client_uri() -> String {
    format!("URI={}", spiffe("foo", CLIENT_SA))
}

/// Asserts the app saw x-forwarded-client-cert naming the client workload: proxied as HTTP.
fn assert_xfcc(headers: &Value, what: &str, logs: &str) {
    let xfcc = header(headers, "x-forwarded-client-cert")
        .unwrap_or_else(|| panic!("{what}: the app saw no x-forwarded-client-cert: {headers}\n{logs}"));
    assert!(xfcc.contains(&client_uri()), "{what}: {xfcc}");
}

/// Asserts the app saw no x-forwarded-client-cert: bytes were tunnelled, not proxied as HTTP.
fn assert_no_xfcc(headers: &Value, what: &str, logs: &str) {
    assert!(
        header(headers, "x-forwarded-client-cert").is_none(),
        "{what}: the app saw x-forwarded-client-cert, so the sidecars proxied HTTP instead of tunnelling bytes: {headers}\n{logs}"
    );
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// One run of the real curl, with the HTTP version it used.
#[derive(Debug)]
struct CurlV {
    code: i32,
    status: u16,
    /// `%{http_version}`: "1.1", "2", or "0" with no response.
    version: String,
    body: String,
    /// Shown by `{:?}` in failure messages.
    #[allow(dead_code)]
    stderr: String,
}

const MARK: &str = "\n@@signet:";

fn curl_v(args: &[&str], env: &[(&str, &str)]) -> CurlV {
    let mut cmd = Command::new("curl");
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let out = cmd
        .args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            &format!("{MARK}%{{http_code}} %{{http_version}}"),
        ])
        .args(args)
        .output()
        .expect("curl must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status, version) = match stdout.rsplit_once(MARK) {
        Some((b, w)) => {
            let (s, v) = w.trim().split_once(' ').unwrap_or((w, ""));
            (b.to_string(), s.parse().unwrap_or(0), v.to_string())
        }
        None => (stdout, 0, String::new()),
    };
    CurlV {
        code: out.status.code().unwrap_or(-1),
        status,
        version,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Sends `request` on a fresh connection to `addr`; returns everything read until the response
/// is complete (by Content-Length), the peer closes, or 10 s pass.
fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

// --- CONNECT ------------------------------------------------------------------------------

#[test]
fn connect_tunnels_bytes_to_a_service_and_refuses_other_targets_with_502() {
    let mesh = Mesh::new(&["foo"]);
    let httpbin = Httpbin::start(mesh.dir.path(), "httpbin");
    let pair = Pair::start(mesh, &[Upstream::new("httpbin.foo:8000", "httpbin", httpbin.addr)]);
    let proxy = pair.proxy_url();

    // A plain request through the proxy is HTTP-proxied: httpbin sees who called.
    let plain = curl(&["-x", &proxy, "http://httpbin.foo:8000/get"], &[]);
    assert_eq!((plain.code, plain.status), (0, 200), "{plain:?}\n{}", pair.logs());
    assert_xfcc(&json(&plain.body)["headers"], "plain request", &pair.logs());

    // The same request inside a CONNECT tunnel: bytes, end to end, to the real httpbin.
    // httpbin has logged its readiness probe and the plain request.
    let before = httpbin.wait_requests(2);
    let tunnelled = curl(&["--proxytunnel", "-x", &proxy, "http://httpbin.foo:8000/get"], &[]);
    assert_eq!(
        (tunnelled.code, tunnelled.status),
        (0, 200),
        "{tunnelled:?}\n{}",
        pair.logs()
    );
    let body = json(&tunnelled.body);
    assert_eq!(header(&body["headers"], "host"), Some("httpbin.foo:8000"), "{body}");
    assert_no_xfcc(&body["headers"], "CONNECT", &pair.logs());
    assert_eq!(
        httpbin.wait_requests(before + 1),
        before + 1,
        "one request reached httpbin"
    );

    // Two requests on one tunnel (curl keeps the connection), then a POST in another.
    let before = before + 1;
    let two = curl(
        &[
            "--proxytunnel",
            "-x",
            &proxy,
            "http://httpbin.foo:8000/get?n=1",
            "http://httpbin.foo:8000/get?n=2",
        ],
        &[],
    );
    assert_eq!((two.code, two.status), (0, 200), "{two:?}");
    assert!(
        two.body.contains("\"n\": \"1\"") && two.body.contains("\"n\": \"2\""),
        "{}",
        two.body
    );
    assert_eq!(httpbin.wait_requests(before + 2), before + 2);
    let post = curl(
        &[
            "--proxytunnel",
            "-x",
            &proxy,
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            "tunnelled body",
            "http://httpbin.foo:8000/post",
        ],
        &[],
    );
    assert_eq!((post.code, post.status), (0, 200), "{post:?}");
    assert_eq!(json(&post.body)["data"], "tunnelled body", "{}", post.body);

    // A target that is not in the service table: 502, naming it, as a plain request would.
    let response = raw_exchange(
        pair.proxy,
        "CONNECT nowhere.foo:9999 HTTP/1.1\r\nHost: nowhere.foo:9999\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 502"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        body.contains("nowhere.foo:9999"),
        "the 502 names the target: {response}"
    );
    let refused = curl(&["--proxytunnel", "-x", &proxy, "http://nowhere.foo:9999/get"], &[]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert_eq!(
        refused.status, 0,
        "no response from a target behind a refused tunnel: {refused:?}"
    );

    // A known target over the raw protocol: 200, then the tunnel carries a request.
    let response = raw_exchange(
        pair.proxy,
        "CONNECT httpbin.foo:8000 HTTP/1.1\r\nHost: httpbin.foo:8000\r\n\r\n\
         GET /headers HTTP/1.1\r\nHost: httpbin.foo:8000\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"Host\": \"httpbin.foo:8000\""), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("x-forwarded-client-cert"),
        "{response}"
    );
}

#[test]
fn https_proxy_carries_the_apps_own_tls_inside_the_tunnel() {
    let mesh = Mesh::new(&["foo"]);
    // An https app with a certificate for secure.foo (from signer foo; curl trusts its root).
    let app_certs = mesh.issue(
        "foo",
        "secure-app",
        &spiffe("foo", "secure-app"),
        &["--dns", "secure.foo"],
    );
    let app = PyServer::start("https app", &["https_app.py", "--cert-dir", &app_certs]);
    let ca = format!("{}/ca.crt", mesh.signer_dir("foo"));
    let pair = Pair::start(mesh, &[Upstream::new("secure.foo:8443", "secure", app.addr)]);

    let proxy = pair.proxy_url();
    let got = curl(
        &["--cacert", &ca, "https://secure.foo:8443/hello"],
        &[("https_proxy", &proxy)],
    );
    assert_eq!(
        (got.code, got.status),
        (0, 200),
        "{got:?}\n{}\n{}",
        app.proc.log(),
        pair.logs()
    );
    let body = json(&got.body);
    assert_eq!(body["path"], "/hello", "{body}");
    assert_eq!(header(&body["headers"], "host"), Some("secure.foo:8443"), "{body}");
    assert_no_xfcc(&body["headers"], "https through CONNECT", &pair.logs());
    assert!(body["tls"].as_str().unwrap_or("").starts_with("TLSv1"), "{body}");
}

// --- HTTP/1.1 Upgrade: WebSocket ------------------------------------------------------------

fn assert_ws_ok(out: &Value, what: &str, logs: &str) {
    assert_eq!(out["ok"], true, "{what}: {out}\n{logs}");
    assert_eq!(out["status"], 101, "{what}: {out}");
    assert_eq!(out["messages"], 7, "{what}: {out}");
    assert!(out["bytes"].as_u64().unwrap() > 1024 * 1024, "{what}: {out}");
    assert_eq!(out["ping"], true, "{what}: {out}");
    assert_eq!(out["request"]["path"], "/echo", "{what}: {out}");
    assert_eq!(
        header(&out["request"]["headers"], "host"),
        Some("echo.foo:8000"),
        "{what}: {out}"
    );
}

#[test]
fn websocket_upgrade_through_the_proxy_by_host() {
    let echo = PyServer::start("ws echo", &["ws_echo.py"]);
    // The inbound in `http` mode and in `auto` mode (the peer negotiated an HTTP ALPN).
    for protocol in ["http", AUTO] {
        let mesh = Mesh::new(&["foo"]);
        let pair = Pair::start(
            mesh,
            &[Upstream {
                protocol,
                ..Upstream::new("echo.foo:8000", "echo", echo.addr)
            }],
        );
        // An origin-form request on a connection to the proxy: routed by Host.
        let out = py_json(
            "ws_client.py",
            &["--url", "ws://echo.foo:8000/echo", "--sock", &pair.proxy.to_string()],
        );
        let what = format!("websocket by Host, inbound {protocol}");
        assert_ws_ok(&out, &what, &pair.logs());
        let request = &out["request"]["headers"];
        assert_eq!(header(request, "upgrade"), Some("websocket"), "{what}: {out}");
        assert!(
            header(request, "connection").is_some_and(|c| c.to_ascii_lowercase().contains("upgrade")),
            "{what}: {out}"
        );
        assert_xfcc(request, &what, &pair.logs());
        assert_eq!(
            header(&out["response_headers"], "upgrade").map(str::to_ascii_lowercase),
            Some("websocket".into()),
            "{what}: {out}"
        );
    }
}

#[test]
fn websocket_through_connect() {
    let echo = PyServer::start("ws echo", &["ws_echo.py"]);
    let mesh = Mesh::new(&["foo"]);
    let pair = Pair::start(mesh, &[Upstream::new("echo.foo:8000", "echo", echo.addr)]);
    // websockets' own HTTP proxy support (CONNECT); the installed websockets (tests/requirements.txt)
    // has it.
    let out = py_json(
        "ws_client.py",
        &["--url", "ws://echo.foo:8000/echo", "--proxy", &pair.proxy_url()],
    );
    assert_ws_ok(&out, "websocket through CONNECT", &pair.logs());
    assert_no_xfcc(&out["request"]["headers"], "websocket through CONNECT", &pair.logs());
}

// --- Cleartext HTTP/2 with prior knowledge --------------------------------------------------

/// The real httpbin under gunicorn's gthread worker with HTTP/2 cleartext (prior knowledge or
/// upgrade; HTTP/1.1 still served), its access log recording each request's HTTP version.
struct H2Httpbin {
    httpbin: Httpbin,
    access_log: PathBuf,
}

impl std::ops::Deref for H2Httpbin {
    type Target = Httpbin;
    fn deref(&self) -> &Httpbin {
        &self.httpbin
    }
}

impl H2Httpbin {
    fn start(dir: &Path) -> H2Httpbin {
        let options = [
            "--worker-class",
            "gthread",
            "--threads",
            "8",
            "--http-protocols",
            "h2,h1",
            "--http2-cleartext",
            "both",
        ];
        H2Httpbin {
            httpbin: Httpbin::start_with(dir, "h2-httpbin", &options),
            access_log: dir.join("h2-httpbin-access.log"),
        }
    }

    /// The access log's request lines so far ("GET /get HTTP/2.0"), waiting until there are `n`.
    fn request_lines(&self, n: usize) -> Vec<String> {
        let read = || -> Vec<String> {
            std::fs::read_to_string(&self.access_log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split('"').nth(1).map(str::to_string))
                .collect()
        };
        let start = Instant::now();
        while read().len() < n && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        read()
    }
}

#[test]
fn h2_prior_knowledge_from_the_app_stays_h2_up_to_the_app() {
    let mesh = Mesh::new(&["foo"]);
    let httpbin = H2Httpbin::start(mesh.dir.path());
    let pair = Pair::start(mesh, &[Upstream::new("httpbin.foo:8000", "httpbin", httpbin.addr)]);
    let seen = httpbin.request_lines(1).len();

    // h2 with prior knowledge straight to the outbound listener; :authority names the service.
    // (curl ignores --http2-prior-knowledge towards an http:// proxy given with -x and speaks
    // HTTP/1.1 to it, so the app's h2 connection is made to the listener as to a server.)
    let connect_to = format!("httpbin.foo:8000:{}:{}", pair.proxy.ip(), pair.proxy.port());
    let h2 = curl_v(
        &[
            "--http2-prior-knowledge",
            "--connect-to",
            &connect_to,
            "http://httpbin.foo:8000/get?via=h2",
        ],
        &[],
    );
    assert_eq!((h2.code, h2.status), (0, 200), "{h2:?}\n{}", pair.logs());
    assert_eq!(h2.version, "2", "curl spoke HTTP/2 to the sidecar: {h2:?}");
    let body = json(&h2.body);
    assert_eq!(body["args"]["via"], "h2", "{body}");
    assert_xfcc(&body["headers"], "h2 prior knowledge", &pair.logs());
    let lines = httpbin.request_lines(seen + 1);
    assert_eq!(
        lines.get(seen).map(String::as_str),
        Some("GET /get?via=h2 HTTP/2.0"),
        "the request reached the app as h2: {lines:?}"
    );

    // More h2 calls, each its own connection from curl: the sidecars' pooled connections are
    // reused, and every request still reaches the app as h2. (One curl with several URLs, or
    // --parallel, is not used: curl 7.88's second stream on an h2c connection fails against
    // gunicorn even without Signet in between.)
    for i in 1..=3 {
        let url = format!("http://httpbin.foo:8000/get?via=h2&n={i}");
        let again = curl_v(&["--http2-prior-knowledge", "--connect-to", &connect_to, &url], &[]);
        assert_eq!(
            (again.code, again.status, again.version.as_str()),
            (0, 200, "2"),
            "{again:?}\n{}",
            pair.logs()
        );
        let lines = httpbin.request_lines(seen + 1 + i);
        assert_eq!(
            lines.get(seen + i).map(String::as_str),
            Some(format!("GET /get?via=h2&n={i} HTTP/2.0").as_str()),
            "{lines:?}"
        );
    }

    // HTTP/1.1 through the same proxy stays HTTP/1.1 at the app.
    let seen = httpbin.request_lines(seen + 4).len();
    let h1 = curl_v(&["-x", &pair.proxy_url(), "http://httpbin.foo:8000/get?via=h1"], &[]);
    assert_eq!((h1.code, h1.status, h1.version.as_str()), (0, 200, "1.1"), "{h1:?}");
    assert_xfcc(&json(&h1.body)["headers"], "h1", &pair.logs());
    let lines = httpbin.request_lines(seen + 1);
    assert_eq!(
        lines.get(seen).map(String::as_str),
        Some("GET /get?via=h1 HTTP/1.1"),
        "{lines:?}"
    );

    // h2 with prior knowledge inside a CONNECT tunnel: bytes, so h2 from curl to the app itself.
    let tunnelled = curl_v(
        &[
            "--http2-prior-knowledge",
            "--proxytunnel",
            "-x",
            &pair.proxy_url(),
            "http://httpbin.foo:8000/get?via=tunnel",
        ],
        &[],
    );
    assert_eq!(
        (tunnelled.code, tunnelled.status, tunnelled.version.as_str()),
        (0, 200, "2"),
        "{tunnelled:?}\n{}",
        pair.logs()
    );
    assert_no_xfcc(&json(&tunnelled.body)["headers"], "h2 in CONNECT", &pair.logs());
    let lines = httpbin.request_lines(seen + 2);
    assert_eq!(
        lines.get(seen + 1).map(String::as_str),
        Some("GET /get?via=tunnel HTTP/2.0"),
        "{lines:?}\n{}",
        httpbin.proc.log()
    );
}

// --- gRPC -----------------------------------------------------------------------------------

fn assert_grpc_ok(out: &Value, what: &str, logs: &str) {
    assert_eq!(out["ok"], true, "{what}: {out}\n{logs}");
    assert_eq!(out["unary"]["echo"], "ping from grpc_client", "{what}: {out}");
    assert_eq!(out["stream_messages"], 100, "{what}: {out}");
    assert_eq!(out["bidi_messages"], 5, "{what}: {out}");
    for call in ["unary", "stream", "bidi", "fail"] {
        assert_eq!(
            out["trailers"][call], "trailer-value",
            "{what}: {call}'s trailers: {out}"
        );
    }
    assert_eq!(out["error"]["code"], "RESOURCE_EXHAUSTED", "{what}: {out}");
    assert_eq!(out["error"]["details"], "quota", "{what}: {out}");
}

#[test]
fn grpc_by_authority_and_through_connect() {
    let app = PyServer::start("grpc server", &["grpc_server.py"]);
    let mesh = Mesh::new(&["foo"]);
    let pair = Pair::start(mesh, &[Upstream::new("grpc.foo:50051", "grpc", app.addr)]);

    // h2c straight to the outbound listener, :authority naming the service.
    let out = py_json(
        "grpc_client.py",
        &["--target", &pair.proxy.to_string(), "--authority", "grpc.foo:50051"],
    );
    assert_grpc_ok(&out, "gRPC by :authority", &pair.logs());
    assert_xfcc(&out["unary"]["metadata"], "gRPC by :authority", &pair.logs());

    // Through CONNECT (grpc's http_proxy): h2c from the client to the app inside the tunnel.
    let out = py_json(
        "grpc_client.py",
        &["--target", "grpc.foo:50051", "--proxy", &pair.proxy_url()],
    );
    assert_grpc_ok(&out, "gRPC through CONNECT", &pair.logs());
    assert_no_xfcc(&out["unary"]["metadata"], "gRPC through CONNECT", &pair.logs());
}

// --- Large streamed bodies ------------------------------------------------------------------

/// The largest resident set each of `pids` reaches while it runs, sampled every 100 ms.
struct PeakRss {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl PeakRss {
    fn watch(pids: Vec<u32>) -> PeakRss {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0; pids.len()];
            while !flag.load(Ordering::Relaxed) {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    *peak = (*peak).max(rss_mib(*pid));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            peaks
        });
        PeakRss { stop, thread }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// How long the receiving end waits before it reads, each way: the sender keeps sending.
const STALL_S: u32 = 2;

/// Resident memory either sidecar may reach while 1 GiB crosses it (an idle one is ~30 MiB).
const RSS_BOUND_MIB: u64 = 200;

/// 1 GiB each way: a debug build moves it through the pair in a few seconds on 2 cores.
/// SIGNET_BIG_BODY_MIB sets another size (e.g. 64 for a quick run).
fn big_body_bytes() -> u64 {
    std::env::var("SIGNET_BIG_BODY_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024)
        << 20
}

fn bulk_expected(bytes: u64) -> Value {
    py_json("bulk.py", &["expect", "--bytes", &bytes.to_string()])
}

#[test]
fn a_gibibyte_streams_up_and_down_with_bounded_memory() {
    let app = PyServer::start("bulk app", &["bulk.py", "serve"]);
    let mesh = Mesh::new(&["foo"]);
    let pair = Pair::start(mesh, &[Upstream::new("bulk.foo:8000", "bulk", app.addr)]);
    let pids = vec![pair.client.proc.pid(), pair.servers[0].proc.pid()];
    let n = big_body_bytes();
    let expected = bulk_expected(n);
    let idle = pids.iter().map(|p| rss_mib(*p)).collect::<Vec<_>>();

    // Upload: a generator piped into curl -T - (chunked, as the bytes come), to an app that
    // stalls first (a sidecar that read on regardless would fill its memory meanwhile), then
    // hashes what it reads.
    let peaks = PeakRss::watch(pids.clone());
    let started = Instant::now();
    let mut generator = python()
        .arg(script("bulk.py"))
        .args(["gen", "--bytes", &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let upload = Command::new("curl")
        .args(["-sS", "--max-time", "600", "-T", "-", "-x", &pair.proxy_url()])
        .arg(format!("http://bulk.foo:8000/upload?stall={STALL_S}"))
        .stdin(generator.stdout.take().unwrap())
        .output()
        .unwrap();
    let _ = generator.wait();
    let up_time = started.elapsed();
    let up_peaks = peaks.finish();
    assert!(
        upload.status.success(),
        "curl: {}{}\n{}",
        String::from_utf8_lossy(&upload.stdout),
        String::from_utf8_lossy(&upload.stderr),
        pair.logs()
    );
    let got = json(&String::from_utf8_lossy(&upload.stdout));
    assert_eq!(got["bytes"], expected["bytes"], "{got}");
    assert_eq!(got["sha256"], expected["sha256"], "the upload arrived intact: {got}");
    assert_xfcc(&got["headers"], "upload", &pair.logs());

    // Download: Content-Length, read by curl into a digest that stalls first, so curl stops
    // reading and the sidecars must hold back.
    let peaks = PeakRss::watch(pids.clone());
    let started = Instant::now();
    let mut download = Command::new("curl")
        .args(["-sS", "--max-time", "600", "-x", &pair.proxy_url()])
        .arg(format!("http://bulk.foo:8000/download?bytes={n}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let digest = python()
        .arg(script("bulk.py"))
        .args(["digest", "--stall", &STALL_S.to_string()])
        .stdin(download.stdout.take().unwrap())
        .output()
        .unwrap();
    let status = download.wait().unwrap();
    let down_time = started.elapsed();
    let down_peaks = peaks.finish();
    assert!(status.success(), "curl failed: {status}\n{}", pair.logs());
    let got = json(&String::from_utf8_lossy(&digest.stdout));
    assert_eq!(got["bytes"], expected["bytes"], "{got}");
    assert_eq!(got["sha256"], expected["sha256"], "the download arrived intact: {got}");

    println!(
        "{} MiB up in {:.1} s, down in {:.1} s; RSS MiB (client, server): idle {idle:?}, peak up {up_peaks:?}, peak down {down_peaks:?}",
        n >> 20,
        up_time.as_secs_f64(),
        down_time.as_secs_f64()
    );
    for (what, peaks) in [("upload", &up_peaks), ("download", &down_peaks)] {
        for (side, peak) in ["client", "server"].iter().zip(peaks.iter()) {
            assert!(
                *peak < RSS_BOUND_MIB,
                "{what}: the {side} sidecar reached {peak} MiB resident (bound {RSS_BOUND_MIB} MiB): bodies must stream with backpressure, not be buffered"
            );
        }
    }
}

// --- Expect: 100-continue -------------------------------------------------------------------

#[test]
fn expect_100_continue_with_a_body_over_curls_threshold() {
    let mesh = Mesh::new(&["foo"]);
    let httpbin = Httpbin::start(mesh.dir.path(), "httpbin");
    // 2 MiB of numbered text lines: over curl's 1 MiB threshold, and readable back in httpbin's
    // "data" field.
    let file = mesh.path("body.txt");
    let text: String = (0..40_000)
        .map(|i| format!("line {i:06} of the expect body...........\n"))
        .collect();
    assert!(text.len() > 1 << 20);
    std::fs::write(&file, &text).unwrap();
    let pair = Pair::start(mesh, &[Upstream::new("httpbin.foo:8000", "httpbin", httpbin.addr)]);

    let data = format!("@{}", file.display());
    let got = curl(
        &[
            "-v",
            "--expect100-timeout",
            "20",
            "-H",
            "Expect: 100-continue",
            "-H",
            "Content-Type: text/plain",
            "--data-binary",
            &data,
            "-x",
            &pair.proxy_url(),
            "http://httpbin.foo:8000/post",
        ],
        &[],
    );
    assert_eq!((got.code, got.status), (0, 200), "{got:?}\n{}", pair.logs());
    assert!(
        got.stderr.contains("< HTTP/1.1 100 Continue"),
        "curl got 100 Continue before sending the body:\n{}",
        got.stderr
    );
    let body = json(&got.body);
    assert_eq!(
        body["data"].as_str().map(str::len),
        Some(text.len()),
        "httpbin saw the whole body"
    );
    assert!(body["data"] == text.as_str(), "httpbin saw the body unchanged");
    assert_xfcc(&body["headers"], "expect", &pair.logs());
}

// --- PERMISSIVE inbound ---------------------------------------------------------------------

/// `signet_inbound_connections_total{mode="MODE"}` (0 while the sample is not there yet).
fn inbound_connections(side: &Sidecar, mode: &str) -> u64 {
    let sample = format!("signet_inbound_connections_total{{mode=\"{mode}\"}}");
    side.admin_get("/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix(&sample).map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

#[test]
fn permissive_http_inbound_takes_mtls_and_plaintext_on_one_port() {
    let mesh = Mesh::new(&["foo"]);
    let httpbin = Httpbin::start(mesh.dir.path(), "httpbin");
    let pair = Pair::start(
        mesh,
        &[Upstream {
            protocol: "http",
            extra: &["--inbound-mode", "permissive"],
            ..Upstream::new("httpbin.foo:8000", "httpbin", httpbin.addr)
        }],
    );
    let server = &pair.servers[0];
    let inbound = server.inbound[0];

    // Plaintext from anything, straight to the inbound port: forwarded, with no identity.
    let plain = curl(&[&format!("http://{inbound}/get"), "-H", "Host: httpbin.foo:8000"], &[]);
    assert_eq!((plain.code, plain.status), (0, 200), "{plain:?}\n{}", pair.logs());
    assert_no_xfcc(&json(&plain.body)["headers"], "plaintext", &pair.logs());
    assert_eq!(inbound_connections(server, "plaintext"), 1);
    assert_eq!(inbound_connections(server, "mtls"), 0);

    // A client's XFCC on plaintext is not passed on as if a sidecar had vouched for it.
    let forged = curl(
        &[
            &format!("http://{inbound}/headers"),
            "-H",
            "X-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/foo/sa/forged",
        ],
        &[],
    );
    assert_eq!(forged.status, 200, "{forged:?}");
    assert!(!forged.body.contains("sa/forged"), "{}", forged.body);

    // mTLS from the client sidecar on the same port: the identity is added.
    let meshed = curl_via(pair.proxy, "http://httpbin.foo:8000/get");
    assert_eq!((meshed.code, meshed.status), (0, 200), "{meshed:?}\n{}", pair.logs());
    assert_xfcc(&json(&meshed.body)["headers"], "mTLS", &pair.logs());
    assert!(inbound_connections(server, "mtls") >= 1);
    assert_eq!(
        inbound_connections(server, "plaintext"),
        2,
        "the mTLS call is not plaintext"
    );
}

#[test]
fn permissive_tcp_inbound_copies_plaintext_bytes() {
    let mesh = Mesh::new(&["foo"]);
    let httpbin = Httpbin::start(mesh.dir.path(), "httpbin");
    let certs = mesh.issue("foo", "httpbin", &spiffe("foo", "httpbin"), &[]);
    let mut args = mesh.inbound_args(&certs, "foo", httpbin.addr, "tcp");
    args.extend(s(&["--inbound-mode", "permissive"]));
    let server = Sidecar::start("sidecar httpbin (tcp, permissive)", &args);
    let client_certs = mesh.issue("foo", CLIENT_SA, &spiffe("foo", CLIENT_SA), &[]);
    let client = Sidecar::start(
        "sidecar client",
        &s(&[
            "--cert-dir",
            &client_certs,
            "--bundle",
            &mesh.bundle(),
            "--signer",
            "foo",
            "--tcp",
            "127.0.0.1:0=httpbin.foo:8000",
            "--service",
            &format!("httpbin.foo:8000={},{}", server.inbound[0], spiffe("foo", "httpbin")),
        ]),
    );

    let plain = curl(&[&format!("http://{}/get", server.inbound[0])], &[]);
    assert_eq!((plain.code, plain.status), (0, 200), "{plain:?}\n{}", server.proc.log());
    assert_eq!(inbound_connections(&server, "plaintext"), 1);

    let tunnelled = curl(&[&format!("http://{}/get", client.tcp[0])], &[]);
    assert_eq!(
        (tunnelled.code, tunnelled.status),
        (0, 200),
        "{tunnelled:?}\n{}",
        server.proc.log()
    );
    assert_no_xfcc(&json(&tunnelled.body)["headers"], "tcp", "");
    assert_eq!(inbound_connections(&server, "mtls"), 1);
    assert_eq!(inbound_connections(&server, "plaintext"), 1);
}

#[test]
fn permissive_from_yaml_and_strict_by_default() {
    let mesh = Mesh::new(&["foo"]);
    let httpbin = Httpbin::start(mesh.dir.path(), "httpbin");
    let certs = mesh.issue("foo", "httpbin", &spiffe("foo", "httpbin"), &[]);

    // inbound[].mode: permissive in the config file.
    let config = mesh.path("permissive.yaml");
    std::fs::write(
        &config,
        format!(
            "signer: foo\nidentity:\n  certDir: {certs}\ntrustBundle: {}\ninbound:\n- listen: 127.0.0.1:0\n  app: {}\n  protocol: http\n  mode: permissive\n",
            mesh.bundle(),
            httpbin.addr
        ),
    )
    .unwrap();
    let permissive = Sidecar::start("sidecar permissive (yaml)", &s(&["--config", config.to_str().unwrap()]));
    let plain = curl(&[&format!("http://{}/get", permissive.inbound[0])], &[]);
    assert_eq!(
        (plain.code, plain.status),
        (0, 200),
        "{plain:?}\n{}",
        permissive.proc.log()
    );
    assert_eq!(inbound_connections(&permissive, "plaintext"), 1);

    // The default is STRICT: plaintext gets no HTTP answer, and nothing reaches the app.
    let strict = Sidecar::start(
        "sidecar strict",
        &mesh.inbound_args(&certs, "foo", httpbin.addr, "http"),
    );
    // httpbin has logged its readiness probe and the permissive sidecar's request.
    let before = httpbin.wait_requests(2);
    let refused = curl(&[&format!("http://{}/get", strict.inbound[0])], &[]);
    assert_eq!(refused.status, 0, "no HTTP answer at all: {refused:?}");
    // curl fails: an empty reply (52), a reset (56), or the TLS alert the sidecar answers
    // instead of HTTP (1, "Received HTTP/0.9 when not allowed").
    assert_ne!(refused.code, 0, "curl fails: {refused:?}");
    assert!(refused.body.is_empty(), "{refused:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(httpbin.requests(), before, "nothing reached httpbin");
    assert!(
        strict.metric("signet_tls_handshakes_total{direction=\"inbound\",result=\"not_tls\"}") >= 1,
        "{}",
        strict.proc.log()
    );
}
