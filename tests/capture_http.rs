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
use support::pods::{PROXY_GID, Pods};
use support::*;

const SERVER_POD: &str = "apps-foo";
const CLIENT_POD: &str = "client-foo";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A server pod (echo.foo and grpc.foo resolve to it) and a client pod, both captured.
struct Apps(Pods);

impl std::ops::Deref for Apps {
    type Target = Pods;
    fn deref(&self) -> &Pods {
        &self.0
    }
}

impl Apps {
    fn create(tag: &str) -> Option<Apps> {
        let pods = Pods::new(
            tag,
            &[SERVER_POD, CLIENT_POD],
            &[("echo.foo", SERVER_POD), ("grpc.foo", SERVER_POD)],
            &["foo"],
        )?;
        for pod in [SERVER_POD, CLIENT_POD] {
            pods.capture(pod);
        }
        Some(Apps(pods))
    }

    fn server_ip(&self) -> std::net::Ipv4Addr {
        self.ip(SERVER_POD)
    }

    /// The sidecar of `pod` (workload foo/`sa`), with echo.foo:8000 and grpc.foo:50051 (the
    /// server pod's) in its service table.
    fn sidecar(&self, pod: &str, sa: &str, extra: &[&str]) -> Proc {
        let (ip, apps) = (self.server_ip(), spiffe("foo", "apps"));
        let mut args = vec![
            "--service".to_string(),
            format!("echo.foo:8000={ip}:8000,{apps}"),
            "--service".to_string(),
            format!("grpc.foo:50051={ip}:50051,{apps}"),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        self.0.sidecar(pod, "foo", sa, &args)
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
        self.command(pod, gid, &py)
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
fn captured(p: &Apps) -> (u64, u64) {
    let sample = |route: &str| format!("signet_captured_connections_total{{route=\"{route}\"}}");
    (
        p.metric(CLIENT_POD, &sample("http")),
        p.metric(CLIENT_POD, &sample("passthrough")),
    )
}

#[test]
fn websocket_app_unchanged_in_captured_pods() {
    let Some(p) = Apps::create("ws") else { return };
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
    let Some(p) = Apps::create("grpc") else { return };
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
    let Some(p) = Apps::create("perm") else { return };
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
