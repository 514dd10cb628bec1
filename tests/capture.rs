//! Transparent capture with pods as network namespaces: `signet iptables` redirects each pod's
//! TCP to its sidecar, and the scenario's command runs literally, `curl
//! http://httpbin.foo:8000/html` with no proxy settings, against the real httpbin. Needs root
//! (network namespaces, iptables); CI runs as root. Set SIGNET_SKIP_ROOT_TESTS=1 to skip them
//! elsewhere, said out loud.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::pods::{PROXY_GID, Pods, root_or_skip};
use support::*;

/// The scenario's three pods; httpbin.foo and httpbin.bar resolve to theirs.
fn pods(tag: &str) -> Option<Pods> {
    Pods::new(
        tag,
        &["httpbin-foo", "httpbin-bar", "curl-foo"],
        &[("httpbin.foo", "httpbin-foo"), ("httpbin.bar", "httpbin-bar")],
        &["istio-system", "foo", "bar"],
    )
}

/// A sidecar whose service table has httpbin.foo:8000 and httpbin.bar:8000 (their pods' IPs).
fn sidecar(p: &Pods, pod: &str, ns: &str, sa: &str, extra: &[&str]) -> Proc {
    let mut args = Vec::new();
    for (svc_ns, svc_pod) in [("foo", "httpbin-foo"), ("bar", "httpbin-bar")] {
        args.push("--service".to_string());
        args.push(format!(
            "httpbin.{svc_ns}:8000={}:8000,{}",
            p.ip(svc_pod),
            spiffe(svc_ns, "httpbin")
        ));
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    p.sidecar(pod, ns, sa, &args)
}

/// The real httpbin (gunicorn) in `pod`, on 0.0.0.0:8000 as in the task.
fn httpbin(p: &Pods, pod: &str) -> Proc {
    let gunicorn = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/gunicorn");
    assert!(gunicorn.exists(), "run ./test.sh: it installs httpbin into target/venv");
    let log = p.mesh.path(&format!("{pod}-access.log"));
    let mut cmd = p.command(pod, None, &gunicorn);
    cmd.args([
        "-b",
        "0.0.0.0:8000",
        "--workers",
        "2",
        "--no-control-socket",
        "--access-logfile",
    ])
    .arg(&log)
    .arg("httpbin:app")
    .current_dir(p.mesh.dir.path());
    let proc = Proc::spawn(pod, cmd);
    let start = Instant::now();
    while p.curl(pod, None, &["http://127.0.0.1:8000/status/204"]).status != 204 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "httpbin in {pod}:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    proc
}

/// Requests the httpbin of `pod` has logged.
fn requests(p: &Pods, pod: &str) -> usize {
    std::fs::read_to_string(p.mesh.path(&format!("{pod}-access.log")))
        .map(|l| l.lines().count())
        .unwrap_or(0)
}

/// The scenario's pods, all captured, with both httpbins and the three sidecars running.
/// Fields drop in order: the processes before the pods they run in.
struct Scenario {
    side_curl: Proc,
    _servers: Vec<Proc>,
    p: Pods,
}

fn scenario(tag: &str, curl_extra: &[&str]) -> Option<Scenario> {
    let p = pods(tag)?;
    for pod in ["httpbin-foo", "httpbin-bar", "curl-foo"] {
        p.capture(pod);
    }
    let servers = vec![
        httpbin(&p, "httpbin-foo"),
        httpbin(&p, "httpbin-bar"),
        sidecar(&p, "httpbin-foo", "foo", "httpbin", &[]),
        sidecar(&p, "httpbin-bar", "bar", "httpbin", &[]),
    ];
    let side_curl = sidecar(&p, "curl-foo", "foo", "curl", curl_extra);
    Some(Scenario {
        side_curl,
        _servers: servers,
        p,
    })
}

#[test]
fn the_scenario_runs_literally_in_pods() {
    let Some(s) = scenario("scn", &[]) else {
        return;
    };
    let (p, side_curl) = (&s.p, &s.side_curl);

    // The task's two commands, as written.
    let ok = p.curl("curl-foo", None, &["http://httpbin.foo:8000/html"]);
    assert_eq!(ok.status, 200, "{ok:?}\n{}", side_curl.log());
    assert!(ok.body.contains("Herman Melville - Moby-Dick"), "{}", ok.body);
    let bar_before = requests(p, "httpbin-bar");
    let cross = p.curl("curl-foo", None, &["http://httpbin.bar:8000/html"]);
    assert_eq!(cross.status, 503, "{cross:?}");
    assert!(cross.body.contains("CERTIFICATE_VERIFY_FAILED"), "{}", cross.body);

    // httpbin.foo saw the caller's identity, added by its sidecar (captured inbound, HTTP).
    let headers = p.curl("curl-foo", None, &["http://httpbin.foo:8000/headers"]);
    assert!(
        headers.body.contains(&format!("URI={}", spiffe("foo", "curl"))),
        "{}",
        headers.body
    );

    // Plaintext straight to httpbin.bar's pod, bypassing the curl pod's capture (as the proxy's
    // group): httpbin.bar's captured inbound takes it and refuses it (not TLS).
    let bar_ip = p.ip("httpbin-bar");
    let plain = p.curl("curl-foo", Some(PROXY_GID), &[&format!("http://{bar_ip}:8000/html")]);
    assert_ne!(plain.status, 200, "{plain:?}");
    assert_eq!(plain.status, 0, "no HTTP answer at all: {plain:?}");
    assert_eq!(requests(p, "httpbin-bar"), bar_before, "nothing reached httpbin.bar");
    assert!(
        p.metric(
            "httpbin-bar",
            "signet_tls_handshakes_total{direction=\"inbound\",result=\"not_tls\"}"
        ) >= 1
    );

    // No loop: the curl pod's capture saw exactly the app's three connections; the sidecar's own
    // connections to the peers went out uncaptured.
    let http = p.metric("curl-foo", "signet_captured_connections_total{route=\"http\"}");
    let refused = p.metric("curl-foo", "signet_captured_connections_total{route=\"refused\"}");
    let passthrough = p.metric("curl-foo", "signet_captured_connections_total{route=\"passthrough\"}");
    assert_eq!((http, refused, passthrough), (3, 0, 0));
}

/// TCP mode: the services declared `tcp` (an Istio port named `tcp-…`), so the captured
/// outbound tunnels bytes instead of speaking HTTP. Same signer: the page; across signers the
/// connection is reset, what Istio's users see (curl 56).
#[test]
fn the_scenario_in_tcp_mode_resets_the_cross_signer_call() {
    let tcp = [
        "--service-protocol",
        "httpbin.foo:8000=tcp",
        "--service-protocol",
        "httpbin.bar:8000=tcp",
    ];
    let Some(s) = scenario("tcp", &tcp) else {
        return;
    };
    let (p, side_curl) = (&s.p, &s.side_curl);

    let ok = p.curl("curl-foo", None, &["http://httpbin.foo:8000/headers"]);
    assert_eq!(ok.status, 200, "{ok:?}\n{}", side_curl.log());
    assert!(ok.body.contains("httpbin.foo:8000"), "{}", ok.body);
    assert!(
        !ok.body.contains("X-Forwarded-Client-Cert"),
        "bytes were tunnelled, not proxied as HTTP: {}",
        ok.body
    );
    let bar_before = requests(p, "httpbin-bar");
    let reset = p.curl("curl-foo", None, &["http://httpbin.bar:8000/html"]);
    // 56: reset (the request bytes were never read), or 52: closed before curl wrote them.
    assert!(
        matches!(reset.code, 52 | 56),
        "connection closed without a byte: {reset:?}"
    );
    assert_eq!(reset.status, 0, "{reset:?}");
    assert_eq!(requests(p, "httpbin-bar"), bar_before, "nothing reached httpbin.bar");
    assert_eq!(
        p.metric("curl-foo", "signet_captured_connections_total{route=\"tcp\"}"),
        2
    );
}

/// What the demo may leave behind: namespaces, hosts files, and rules in this namespace.
fn leftovers() -> (Vec<String>, Vec<String>, String) {
    let namespaces = String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
        .lines()
        .filter(|l| l.starts_with("signet-demo-"))
        .map(str::to_string)
        .collect();
    let hosts = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("signet-demo-"))
                .collect()
        })
        .unwrap_or_default();
    let links = String::from_utf8_lossy(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout)
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_string())
        .collect::<Vec<_>>()
        .join(" ");
    (namespaces, hosts, links)
}

fn nat_rules() -> String {
    let out = Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn demo_pods_runs_the_task_and_leaves_nothing_behind_even_when_killed() {
    if !root_or_skip() {
        return;
    }
    let before = (leftovers(), nat_rules());
    let out = signet_cmd().args(["demo", "--pods"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("curl http://httpbin.foo:8000/html"), "{stdout}");
    assert!(stdout.contains("Herman Melville - Moby-Dick"), "{stdout}");
    assert!(stdout.contains("CERTIFICATE_VERIFY_FAILED"), "{stdout}");
    assert!(stdout.contains("httpbin.foo: 200 ... as expected"), "{stdout}");
    assert!(stdout.contains("httpbin.bar: 503 ... as expected"), "{stdout}");
    assert_eq!((leftovers(), nat_rules()), before, "the demo removed all it made");

    // Killed while it runs: the next run starts clean, and removes what the first one left.
    let mut cmd = signet_cmd();
    cmd.args(["demo", "--pods", "--keep-running"]);
    let mut first = Proc::spawn("demo --pods", cmd);
    assert!(
        first.logged_within("everything keeps running", Duration::from_secs(60)),
        "{}",
        first.log()
    );
    assert!(!leftovers().0.is_empty(), "the pods exist while it runs");
    // SAFETY: kill sends a signal to our own child.
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    let _ = first.terminate(Duration::from_secs(5));
    let again = signet_cmd().args(["demo", "--pods"]).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stdout));
    assert_eq!((leftovers(), nat_rules()), before);

    // Ctrl-C (SIGINT) while it runs: it removes the pods and says so.
    let mut cmd = signet_cmd();
    cmd.args(["demo", "--pods", "--keep-running"]);
    let mut third = Proc::spawn("demo --pods", cmd);
    assert!(third.logged_within("everything keeps running", Duration::from_secs(60)));
    // SAFETY: as above.
    unsafe { libc::kill(third.pid() as i32, libc::SIGINT) };
    third.terminate(Duration::from_secs(10));
    assert!(third.log().contains("removing the pods"), "{}", third.log());
    assert_eq!((leftovers(), nat_rules()), before);
}

/// Destinations outside the service table: passed through unchanged by default (Istio's
/// ALLOW_ANY), or blocked.
#[test]
fn unknown_destinations_pass_through_or_are_blocked() {
    let Some(p) = Pods::new(
        "unk",
        &["httpbin-foo", "httpbin-bar", "curl-foo", "outside"],
        &[("httpbin.foo", "httpbin-foo"), ("httpbin.bar", "httpbin-bar")],
        &["istio-system", "foo", "bar"],
    ) else {
        return;
    };
    // A server outside the mesh: no sidecar, no capture.
    let _outside = httpbin(&p, "outside");
    let url = format!("http://{}:8000/get", p.ip("outside"));
    p.capture("curl-foo");

    let side = sidecar(&p, "curl-foo", "foo", "curl", &[]);
    let through = p.curl("curl-foo", None, &[&url]);
    assert_eq!(through.status, 200, "{through:?}\n{}", side.log());
    assert!(!through.body.contains("X-Forwarded-Client-Cert"), "{}", through.body);
    assert_eq!(
        p.metric("curl-foo", "signet_captured_connections_total{route=\"passthrough\"}"),
        1
    );
    drop(side);

    let side = sidecar(&p, "curl-foo", "foo", "curl", &["--unknown-destinations", "block"]);
    let blocked = p.curl("curl-foo", None, &[&url]);
    assert_eq!(blocked.status, 0, "{blocked:?}");
    assert!(matches!(blocked.code, 52 | 56), "closed without an answer: {blocked:?}");
    assert_eq!(
        p.metric("curl-foo", "signet_captured_connections_total{route=\"blocked\"}"),
        1
    );
    assert!(side.log().contains("not a service of the table"), "{}", side.log());
}

/// IPv6: a pod dialling the service's IPv6 address is captured by the IPv6 rules, its sidecar
/// reads the IPv6 original destination, and the peer's captured inbound takes it the same way.
#[test]
fn ipv6_connections_are_captured_too() {
    let Some(p) = pods("six") else { return };
    let Some(foo6) = p.ip6("httpbin-foo") else {
        eprintln!("skipped: this host has no IPv6");
        return;
    };
    for pod in ["httpbin-foo", "curl-foo"] {
        p.capture(pod);
    }
    // The built-in httpbin on [::]:8000 takes IPv4 (from its sidecar, on 127.0.0.1) too.
    let mut app = p.command("httpbin-foo", None, signet_cmd().get_program());
    app.args(["httpbin", "--listen", "[::]:8000"]);
    let _app = Proc::spawn("httpbin", app);
    let _side_foo = sidecar(&p, "httpbin-foo", "foo", "httpbin", &[]);
    let service = format!("httpbin.foo:8000=[{foo6}]:8000,{}", spiffe("foo", "httpbin"));
    let side_curl = p.sidecar("curl-foo", "foo", "curl", &["--service".into(), service]);
    let url = format!("http://[{foo6}]:8000/headers");
    let mut r = p.curl("curl-foo", None, &["-g", &url]);
    for _ in 0..50 {
        if r.status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        r = p.curl("curl-foo", None, &["-g", &url]);
    }
    assert_eq!(r.status, 200, "{r:?}\n{}", side_curl.log());
    assert!(
        r.body.contains(&format!("URI={}", spiffe("foo", "curl"))),
        "through the pair: {}",
        r.body
    );
    assert_eq!(
        p.metric("curl-foo", "signet_captured_connections_total{route=\"http\"}"),
        1
    );
}
