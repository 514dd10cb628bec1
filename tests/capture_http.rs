//! WebSocket and gRPC apps in captured pods, unchanged: no proxy settings, the client dials
//! `ws://echo.foo:8000/echo` and `grpc.foo:50051` by the names in its pod's hosts file, the
//! servers listen on 0.0.0.0 in theirs, and `signet iptables` sends both directions through the
//! sidecars. The real `websockets` and `grpcio` packages (tests/py, run with target/venv's
//! Python): every message echoes, trailers and an error status cross, and the server sees the
//! client's identity in x-forwarded-client-cert, so the calls went through the sidecars as HTTP.
//!
//! Needs root (network namespaces, iptables), like tests/capture.rs; set SIGNET_SKIP_ROOT_TESTS=1
//! to skip them elsewhere, said out loud.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use signet::pods::PodNet;
use support::*;

/// The group the sidecars run as: `signet iptables` exempts its traffic from capture.
const PROXY_GID: &str = "1337";
const SERVER_POD: &str = "apps-foo";
const CLIENT_POD: &str = "client-foo";
const PROXY_VARS: [&str; 10] = [
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "grpc_proxy",
    "GRPC_PROXY",
];

fn root_or_skip() -> bool {
    if let Err(why) = signet::pods::can_create() {
        if std::env::var_os("SIGNET_SKIP_ROOT_TESTS").is_some() {
            eprintln!("skipped: {why} (SIGNET_SKIP_ROOT_TESTS is set)");
            return false;
        }
        panic!("{why}; run the tests as root (CI does), or set SIGNET_SKIP_ROOT_TESTS=1 to skip them");
    }
    assert!(
        Command::new("iptables-restore").arg("--version").output().is_ok(),
        "iptables is not installed (apt-get install iptables; .ci/run does)"
    );
    true
}

/// A prefix for this test's namespaces, unique per process and test.
fn prefix(test: &str) -> String {
    format!("sgh{}{test}", std::process::id() % 100_000)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Pods {
    net: PodNet,
    mesh: Mesh,
}

impl Pods {
    /// A server pod (echo.foo and grpc.foo resolve to it) and a client pod, both captured.
    fn create(test: &str) -> Option<Pods> {
        if !root_or_skip() {
            return None;
        }
        let net = PodNet::create(
            &prefix(test),
            &[SERVER_POD, CLIENT_POD],
            &[("echo.foo", SERVER_POD), ("grpc.foo", SERVER_POD)],
        )
        .unwrap();
        let pods = Pods {
            net,
            mesh: Mesh::new(&["foo"]),
        };
        for pod in [SERVER_POD, CLIENT_POD] {
            pods.capture(pod);
        }
        Some(pods)
    }

    fn server_ip(&self) -> std::net::Ipv4Addr {
        self.net.pod(SERVER_POD).unwrap().ip
    }

    /// `signet iptables` in the pod: what an init container does.
    fn capture(&self, pod: &str) {
        let mut cmd = self.net.command(pod, signet_cmd().get_program().to_str().unwrap());
        let out = cmd.args(["iptables", "--proxy-gid", PROXY_GID]).output().unwrap();
        assert!(
            out.status.success(),
            "signet iptables in {pod}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The sidecar of `pod` (workload foo/`sa`), as the proxy's group, capturing both ways, with
    /// echo.foo:8000 and grpc.foo:50051 (the server pod's) in its service table.
    fn sidecar(&self, pod: &str, sa: &str, extra: &[&str]) -> Proc {
        let certs = self.mesh.issue("foo", &format!("{pod}-certs"), &spiffe("foo", sa), &[]);
        let ready = ready_path(pod);
        let ip = self.server_ip();
        let apps = spiffe("foo", "apps");
        let mut cmd = self.net.command(pod, "setpriv");
        cmd.args(["--regid", PROXY_GID, "--clear-groups", "--"])
            .arg(signet_cmd().get_program())
            .args([
                "proxy",
                "--cert-dir",
                &certs,
                "--bundle",
                &self.mesh.bundle(),
                "--signer",
                "foo",
                "--capture-outbound",
                "0.0.0.0:15001",
                "--capture-inbound",
                "0.0.0.0:15006",
                "--admin",
                "127.0.0.1:15000",
                "--service",
                &format!("echo.foo:8000={ip}:8000,{apps}"),
                "--service",
                &format!("grpc.foo:50051={ip}:50051,{apps}"),
                "--ready-file",
            ])
            .arg(&ready)
            .args(extra)
            .env_remove("ISTIO_META_CERT_SIGNER")
            .env_remove("RUST_LOG");
        let mut proc = Proc::spawn(&format!("sidecar {pod}"), cmd);
        proc.wait_ready_file(&ready, Duration::from_secs(20));
        proc
    }

    /// target/venv's Python inside `pod`, with no proxy settings.
    fn python(&self, pod: &str) -> Command {
        self.python_as(pod, None)
    }

    /// target/venv's Python inside `pod`, as group `gid` when given (the proxy's group: its
    /// connections are not captured, as from a workload outside the mesh).
    fn python_as(&self, pod: &str, gid: Option<&str>) -> Command {
        let py = repo().join("target/venv/bin/python");
        assert!(
            py.exists(),
            "{} is missing: run ./test.sh, which installs tests/requirements.txt into target/venv",
            py.display()
        );
        let mut cmd = match gid {
            Some(g) => {
                let mut c = self.net.command(pod, "setpriv");
                c.args(["--regid", g, "--clear-groups", "--"]).arg(&py);
                c
            }
            None => self.net.command(pod, py.to_str().unwrap()),
        };
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd
    }

    /// A server from tests/py in the server pod, on 0.0.0.0:`port` (an unchanged app).
    fn server(&self, script: &str, port: u16) -> Proc {
        let ready = ready_path(script);
        let mut cmd = self.python(SERVER_POD);
        cmd.arg(repo().join("tests/py").join(script))
            .args(["--host", "0.0.0.0", "--port", &port.to_string(), "--ready-file"])
            .arg(&ready);
        let mut proc = Proc::spawn(script, cmd);
        proc.wait_ready_file(&ready, Duration::from_secs(30));
        proc
    }

    /// A client from tests/py in the client pod; the JSON line it printed.
    fn client(&self, script: &str, args: &[&str]) -> Value {
        self.client_as(None, script, args)
    }

    /// A client from tests/py in the client pod, as group `gid` when given.
    fn client_as(&self, gid: Option<&str>, script: &str, args: &[&str]) -> Value {
        let out = self
            .python_as(CLIENT_POD, gid)
            .arg(repo().join("tests/py").join(script))
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "{script} printed no JSON ({}):\n{stdout}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    /// One sample of `pod`'s sidecar metrics (0 while it is not there yet).
    fn metric(&self, pod: &str, sample: &str) -> u64 {
        let out = self
            .net
            .command(pod, "curl")
            .args(["-sS", "--max-time", "10", "http://127.0.0.1:15000/metrics"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(sample).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0)
    }
}

/// A header of a JSON object of headers or gRPC metadata, by name in any case.
fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    headers
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

/// The server saw the client workload's identity: its sidecars carried the call as HTTP.
fn assert_xfcc(headers: &Value, what: &str, logs: &str) {
    let xfcc = header(headers, "x-forwarded-client-cert")
        .unwrap_or_else(|| panic!("{what}: the server saw no x-forwarded-client-cert: {headers}\n{logs}"));
    let client = format!("URI={}", spiffe("foo", "client"));
    assert!(xfcc.contains(&client), "{what}: {xfcc}");
}

fn assert_no_xfcc(headers: &Value, what: &str, logs: &str) {
    assert!(
        header(headers, "x-forwarded-client-cert").is_none(),
        "{what}: plaintext from outside the mesh carries no identity: {headers}\n{logs}"
    );
}

/// What the client pod's sidecar captured: (http, passthrough).
fn captured(p: &Pods) -> (u64, u64) {
    let sample = |route: &str| format!("signet_captured_connections_total{{route=\"{route}\"}}");
    (
        p.metric(CLIENT_POD, &sample("http")),
        p.metric(CLIENT_POD, &sample("passthrough")),
    )
}

#[test]
fn websocket_app_unchanged_in_captured_pods() {
    let Some(p) = Pods::create("ws") else { return };
    let _echo = p.server("ws_echo.py", 8000);
    let server_side = p.sidecar(SERVER_POD, "apps", &[]);
    let client_side = p.sidecar(CLIENT_POD, "client", &[]);
    let logs = || format!("{}\n{}", client_side.log(), server_side.log());

    let out = p.client("ws_client.py", &["--url", "ws://echo.foo:8000/echo"]);
    assert_eq!(out["ok"], true, "{out}\n{}", logs());
    assert_eq!(out["status"], 101, "{out}");
    assert_eq!(out["messages"], 7, "{out}");
    assert!(
        out["bytes"].as_u64().unwrap() > 1024 * 1024,
        "a 1 MiB message among them: {out}"
    );
    assert_eq!(out["ping"], true, "{out}");
    assert_eq!(out["request"]["path"], "/echo", "{out}");
    let request = &out["request"]["headers"];
    assert_eq!(header(request, "host"), Some("echo.foo:8000"), "{out}");
    assert_eq!(header(request, "upgrade"), Some("websocket"), "{out}");
    assert_xfcc(request, "websocket", &logs());

    let (http, passthrough) = captured(&p);
    assert!(http >= 1, "the upgrade was captured as HTTP:\n{}", logs());
    assert_eq!(passthrough, 0, "nothing went around the mesh");
}

#[test]
fn grpc_app_unchanged_in_captured_pods() {
    let Some(p) = Pods::create("grpc") else { return };
    let _grpc = p.server("grpc_server.py", 50051);
    let server_side = p.sidecar(SERVER_POD, "apps", &[]);
    let client_side = p.sidecar(CLIENT_POD, "client", &[]);
    let logs = || format!("{}\n{}", client_side.log(), server_side.log());

    // grpc resolves grpc.foo itself (the pod's hosts file) and speaks h2c to it.
    let out = p.client("grpc_client.py", &["--target", "grpc.foo:50051"]);
    assert_eq!(out["ok"], true, "{out}\n{}", logs());
    assert_eq!(out["unary"]["echo"], "ping from grpc_client", "{out}");
    assert_eq!(out["stream_messages"], 100, "{out}");
    assert_eq!(out["bidi_messages"], 5, "{out}");
    for call in ["unary", "stream", "bidi", "fail"] {
        assert_eq!(out["trailers"][call], "trailer-value", "{call}'s trailers: {out}");
    }
    assert_eq!(out["error"]["code"], "RESOURCE_EXHAUSTED", "{out}");
    assert_eq!(out["error"]["details"], "quota", "{out}");
    assert_xfcc(&out["unary"]["metadata"], "gRPC", &logs());

    let (http, passthrough) = captured(&p);
    assert!(http >= 1, "the h2 connection was captured as HTTP:\n{}", logs());
    assert_eq!(passthrough, 0, "nothing went around the mesh");
}

/// `capture.inboundMode: permissive`: the captured inbound takes plaintext from outside the mesh
/// (here the client pod's proxy group, which its capture lets through untouched) and mTLS from
/// sidecars on the same port, and counts them apart.
#[test]
fn captured_inbound_permissive_takes_plaintext_and_mtls() {
    let Some(p) = Pods::create("perm") else { return };
    let _echo = p.server("ws_echo.py", 8000);
    let config = p.mesh.path("permissive.yaml");
    std::fs::write(&config, "capture:\n  inboundMode: permissive\n").unwrap();
    let server_side = p.sidecar(SERVER_POD, "apps", &["--config", config.to_str().unwrap()]);
    let client_side = p.sidecar(CLIENT_POD, "client", &[]);
    let logs = || format!("{}\n{}", client_side.log(), server_side.log());
    let sample = |mode: &str| format!("signet_inbound_connections_total{{mode=\"{mode}\"}}");

    // Plaintext, straight to the server pod's address and port.
    let url = format!("ws://{}:8000/echo", p.server_ip());
    let plain = p.client_as(Some(PROXY_GID), "ws_client.py", &["--url", &url]);
    assert_eq!(plain["ok"], true, "{plain}\n{}", logs());
    assert_eq!(plain["messages"], 7, "{plain}");
    assert_no_xfcc(&plain["request"]["headers"], "plaintext", &logs());
    assert_eq!(p.metric(SERVER_POD, &sample("plaintext")), 1, "{}", logs());
    assert_eq!(p.metric(SERVER_POD, &sample("mtls")), 0);

    // From the client pod's app, captured: mTLS, with the client's identity.
    let meshed = p.client("ws_client.py", &["--url", "ws://echo.foo:8000/echo"]);
    assert_eq!(meshed["ok"], true, "{meshed}\n{}", logs());
    assert_xfcc(&meshed["request"]["headers"], "mTLS", &logs());
    assert!(p.metric(SERVER_POD, &sample("mtls")) >= 1, "{}", logs());
    assert_eq!(p.metric(SERVER_POD, &sample("plaintext")), 1);
}
