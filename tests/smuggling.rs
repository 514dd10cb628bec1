//! Issue 17's attacks on the request path, written as the attacks: raw requests from Python
//! sockets and `h2` clients, the real httpbin under gunicorn (keep-alive, so a request hidden in
//! a body would be parsed) or a recording app, and assertions on what the app received and what
//! each client got.
//!
//! The differential suite sends the same 400-odd HTTP/1.1 smuggling cases (tests/py/smuggle.py)
//! straight to the app, through the inbound (mTLS as curl.foo) and through the outbound: through
//! Signet, every request the app parsed must carry the caller's real identity, and the app may
//! not have parsed more requests on a connection than its client got responses (a request the app
//! found where Signet saw a body, or the other way round, is one more).

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python(script: &str) -> Command {
    let py = repo().join("target/venv/bin/python");
    assert!(py.exists(), "{} is missing: run ./test.sh", py.display());
    let mut cmd = Command::new(py);
    cmd.arg(repo().join("tests/py").join(script));
    cmd
}

fn json_of(out: std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|_| panic!("no JSON result: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// httpbin under gunicorn's threaded workers, which keep connections alive (sync workers close
/// after every response, so they would never read a hidden second request), logging each
/// request's path and XFCC.
fn keepalive_httpbin(dir: &Path) -> Httpbin {
    Httpbin::start_with(
        dir,
        "httpbin",
        &[
            "--worker-class",
            "gthread",
            "--threads",
            "16",
            "--keep-alive",
            "5",
            "--access-logformat",
            "%(U)s %({x-forwarded-client-cert}i)s",
        ],
    )
}

/// httpbin under gunicorn speaking HTTP/2 (h2c with prior knowledge, as the inbound's h2
/// client to the app does) as well as HTTP/1.1.
fn h2_httpbin(dir: &Path) -> Httpbin {
    Httpbin::start_with(
        dir,
        "h2-httpbin",
        &[
            "--worker-class",
            "gthread",
            "--threads",
            "16",
            "--http-protocols",
            "h2,h1",
            "--http2-cleartext",
            "both",
        ],
    )
}

/// Runs tests/py/smuggle.py against `target` with `extra` flags; its cases by tag.
fn smuggle(target: &str, prefix: &str, extra: &[&str]) -> serde_json::Map<String, serde_json::Value> {
    let out = python("smuggle.py")
        .args(["--target", target, "--prefix", prefix])
        .args(extra)
        .output()
        .unwrap();
    let json = json_of(out);
    assert_eq!(json["ok"], true, "{json}");
    json["cases"].as_object().unwrap().clone()
}

/// The access log's lines, once it has stopped growing.
fn settled_log(app: &Httpbin) -> String {
    let mut last = app.requests();
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let now = app.requests();
        if now == last {
            return app.access_log();
        }
        last = now;
    }
}

/// Per case tag: the XFCC of every request the app logged for it.
fn logged_by_tag(log: &str) -> HashMap<String, Vec<String>> {
    let mut by_tag: HashMap<String, Vec<String>> = HashMap::new();
    for line in log.lines() {
        let (path, xfcc) = line.split_once(' ').unwrap_or((line, ""));
        if let Some(rest) = path.strip_prefix("/anything/") {
            let tag = rest.split('/').next().unwrap_or_default();
            by_tag.entry(tag.to_string()).or_default().push(xfcc.to_string());
        }
    }
    by_tag
}

/// curl.foo's mTLS client files: the foo root, its certificate directory, certificate and key.
fn curl_foo(mesh: &Mesh) -> (String, String, String, String) {
    let ca = format!("{}/ca.crt", mesh.signer_dir("foo"));
    let dir = mesh.curl_certs();
    let (cert, key) = (format!("{dir}/tls.crt"), format!("{dir}/tls.key"));
    (ca, dir, cert, key)
}

#[test]
fn smuggling_cases_agree_between_signet_and_its_app_and_never_forge_an_identity() {
    let mesh = Mesh::new(&["foo"]);
    let app = keepalive_httpbin(mesh.dir.path());
    let (server, client) = mesh.http_pair(app.addr);
    let (ca, _, cert, key) = curl_foo(&mesh);

    let direct = smuggle(&app.addr.to_string(), "d", &[]);
    let inbound = smuggle(
        &server.inbound[0].to_string(),
        "i",
        &["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key],
    );
    let outbound = smuggle(&client.outbound.unwrap().to_string(), "o", &[]);
    let logged = logged_by_tag(&settled_log(&app));

    let identity = format!("URI={}", spiffe("foo", "curl"));
    let mut failures = Vec::new();
    let mut app_alone_smuggled = 0;
    for (tag, case) in &direct {
        if logged
            .get(tag)
            .is_some_and(|x| x.len() > case["statuses"].as_array().map_or(0, Vec::len))
        {
            app_alone_smuggled += 1;
        }
    }
    for (hop, cases) in [("inbound", &inbound), ("outbound", &outbound)] {
        for (tag, case) in cases {
            let name = case["name"].as_str().unwrap_or_default();
            let responses = case["statuses"].as_array().map_or(0, Vec::len);
            let seen = logged.get(tag).map(Vec::as_slice).unwrap_or_default();
            if seen.len() > responses {
                failures.push(format!(
                    "{hop} {tag} [{name}]: the app parsed {} request(s), the client got {responses} response(s) {}",
                    seen.len(),
                    case["statuses"]
                ));
            }
            for xfcc in seen {
                if xfcc.contains("FORGED") || xfcc.matches("URI=").count() != 1 || !xfcc.ends_with(&identity) {
                    failures.push(format!("{hop} {tag} [{name}]: the app saw the identity {xfcc:?}"));
                }
            }
        }
    }
    eprintln!(
        "{} cases per target; the app alone parsed more requests than it answered in {app_alone_smuggled} of them",
        direct.len()
    );
    assert!(direct.len() >= 300 && inbound.len() == direct.len() && outbound.len() == direct.len());
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    // The cases are not vacuous: the relay served most of them, and the app got requests.
    assert!(logged.keys().filter(|t| t.starts_with('i')).count() > 100, "{logged:?}");
    assert!(logged.keys().filter(|t| t.starts_with('o')).count() > 100, "{logged:?}");
}

/// Finding 2: a request hidden in client A's body was answered on the pooled connection to the
/// next client, B (outbound pool and inbound pool alike).
#[test]
fn a_hidden_request_cannot_answer_the_next_client() {
    let mesh = Mesh::new(&["foo"]);
    let app = keepalive_httpbin(mesh.dir.path());
    let (server, client) = mesh.http_pair(app.addr);
    let (ca, curl_certs, cert, key) = curl_foo(&mesh);
    let case = "connection names [content-length] (Content-Length body)";
    let proxy = format!("http://{}", client.outbound.unwrap());
    for round in 0..2 {
        // A: the trick, hiding a slow request, then gone.
        smuggle(
            &client.outbound.unwrap().to_string(),
            &format!("a{round}"),
            &["--only", case, "--hidden-path", "/delay/1", "--quiet", "0.1"],
        );
        smuggle(
            &server.inbound[0].to_string(),
            &format!("b{round}"),
            &[
                "--only",
                case,
                "--hidden-path",
                "/delay/1",
                "--quiet",
                "0.1",
                "--tls-ca",
                &ca,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ],
        );
        // B: an ordinary request, which must get its own answer.
        let r = curl(
            &["http://httpbin.foo:8000/anything/mine"],
            &[("http_proxy", proxy.as_str())],
        );
        assert_eq!(r.status, 200, "{r:?}");
        assert!(
            r.body.contains("/anything/mine") && !r.body.contains("delay"),
            "{}",
            r.body
        );
        let r = mesh.curl_inbound(server.inbound[0].port(), "foo", Some(&curl_certs));
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.contains("\"url\"") && r.body.contains("/get"), "{}", r.body);
    }
    let log = settled_log(&app);
    assert!(!log.contains("/delay/1"), "a hidden request reached the app:\n{log}");
}

/// Finding 3: an app that writes a second response no request asked for, 0.3 s after the first;
/// the next request on the pooled connection got it.
#[test]
fn bytes_an_app_writes_unasked_never_become_a_response() {
    let mesh = Mesh::new(&["foo"]);
    let log = mesh.path("late-app.log");
    let ready = mesh.path("late-app.json");
    let mut cmd = python("late_app.py");
    cmd.args(["--log", log.to_str().unwrap(), "--ready-file", ready.to_str().unwrap()]);
    let mut late_app = Proc::spawn("late app", cmd);
    let port = late_app.wait_ready_file(&ready, Duration::from_secs(10))["port"]
        .as_u64()
        .unwrap();
    let app: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_server, client) = mesh.http_pair(app);
    let proxy = format!("http://{}", client.outbound.unwrap());
    let mut answers = Vec::new();
    for _ in 0..6 {
        let r = curl(&["http://httpbin.foo:8000/x"], &[("http_proxy", proxy.as_str())]);
        answers.push(r.body.clone());
        std::thread::sleep(Duration::from_millis(500));
    }
    // Kept alive on one client connection too: the relay watches the held connection.
    let mut down = std::net::TcpStream::connect(client.outbound.unwrap()).unwrap();
    down.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for close in [false, false, true] {
        let req = format!(
            "GET /y HTTP/1.1\r\nHost: httpbin.foo:8000\r\n{}\r\n",
            if close { "Connection: close\r\n" } else { "" }
        );
        down.write_all(req.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(600));
    }
    let mut got = String::new();
    let _ = down.read_to_string(&mut got);
    answers.push(got);
    for a in &answers {
        assert!(!a.contains("evil"), "a client got the app's unasked bytes: {a:?}");
    }
    assert!(answers[..6].iter().all(|a| a == "hello"), "{answers:?}");
    assert_eq!(answers[6].matches("hello").count(), 3, "{}", answers[6]);
    late_app.terminate(Duration::from_secs(2));
}

/// Finding 4: one peer stalling 400 h2 streams (window 0, never updated) starved every other
/// peer's h2 requests through the same inbound, through its one h2 connection to the app.
#[test]
fn a_peer_stalling_its_h2_streams_does_not_starve_other_peers() {
    let mesh = Mesh::new(&["foo"]);
    let app = h2_httpbin(mesh.dir.path());
    let server = Sidecar::start(
        "sidecar httpbin.foo",
        &mesh.inbound_args(&mesh.httpbin_certs(), "foo", app.addr, "http"),
    );
    let target = server.inbound[0].to_string();
    let (ca, _, cert, key) = curl_foo(&mesh);
    let tls = ["--target", &target, "--ca", &ca, "--cert", &cert, "--key", &key];
    let mut stall = python("h2_stall.py")
        .arg("stall")
        .args(tls)
        .args(["--hold", "40"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(stall.stdout.as_mut().unwrap());
        out.read_line(&mut line).unwrap();
    }
    assert!(line.contains("\"ok\": true"), "{line}");
    // Let the app fill what windows it can.
    std::thread::sleep(Duration::from_secs(2));
    let start = Instant::now();
    for _ in 0..3 {
        let out = python("h2_stall.py")
            .arg("get")
            .args(tls)
            .args(["--timeout", "20"])
            .output()
            .unwrap();
        let json = json_of(out);
        assert_eq!(
            json["ok"], true,
            "another peer's h2 request failed while one peer stalled: {json}"
        );
        assert_eq!(json["status"], 200, "{json}");
    }
    eprintln!("three h2 requests beside the stall: {:?}", start.elapsed());
    let _ = stall.kill();
    let _ = stall.wait();
}

/// A stream progress timeout: an h2 response that the client never grants window to (or that
/// the app stops sending) is given up after the idle time, so the app's stream is reset and
/// its resources freed while the client's connection stays open. Without it the app's four
/// streams stayed open as long as the stalling client held its connection.
#[test]
fn a_stalled_h2_stream_is_given_up_and_the_app_released() {
    let mesh = Mesh::new(&["foo"]);
    let log = mesh.path("h2-app.log");
    let ready = mesh.path("h2-app.json");
    let mut cmd = python("h2_app.py");
    cmd.args(["--log", log.to_str().unwrap(), "--ready-file", ready.to_str().unwrap()]);
    let mut h2_app = Proc::spawn("h2 app", cmd);
    let port = h2_app.wait_ready_file(&ready, Duration::from_secs(10))["port"]
        .as_u64()
        .unwrap();
    let app: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut args = mesh.inbound_args(&mesh.httpbin_certs(), "foo", app, "http");
    args.extend(["--idle-timeout".to_string(), "2s".to_string()]);
    let server = Sidecar::start("sidecar httpbin.foo", &args);
    let target = server.inbound[0].to_string();
    let (ca, _, cert, key) = curl_foo(&mesh);
    let tls = ["--target", &target, "--ca", &ca, "--cert", &cert, "--key", &key];
    let mut stall = python("h2_stall.py")
        .arg("stall")
        .args(tls)
        .args(["--connections", "1", "--streams", "4", "--path", "/big", "--hold", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = |kind: &str| -> usize {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"event\": \"{kind}\"")))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while events("reset") < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        stall.try_wait().unwrap().is_none(),
        "the stalling client was meant to hold its connection"
    );
    assert_eq!(events("request"), 4, "{log_text}");
    assert_eq!(
        events("reset"),
        4,
        "the app's streams for a client that took nothing were not released: {log_text}"
    );
    assert_eq!(events("ended"), 0, "{log_text}");
    // The sidecar goes on serving: a client that reads gets the whole body.
    let out = python("h2_stall.py")
        .arg("get")
        .args(tls)
        .args(["--path", "/small", "--timeout", "20"])
        .output()
        .unwrap();
    let json = json_of(out);
    assert_eq!(json["status"], 200, "{json}");
    assert_eq!(json["bytes"], 1024 * 1024, "{json}");
    let _ = stall.kill();
    let _ = stall.wait();
    h2_app.terminate(Duration::from_secs(2));
}

/// Item 5: a CONNECT to the inbound is answered (405) instead of being left waiting, and a
/// request body trickled at a byte a second is cut off with 408 by the body rate limit, on the
/// relay (HTTP/1.1) and on the hyper path (HTTP/2) alike.
#[test]
fn connect_to_the_inbound_is_refused_and_a_trickled_body_gets_408() {
    let mesh = Mesh::new(&["foo"]);
    let app = h2_httpbin(mesh.dir.path());
    let server = Sidecar::start(
        "sidecar httpbin.foo",
        &mesh.inbound_args(&mesh.httpbin_certs(), "foo", app.addr, "http"),
    );
    let target = server.inbound[0].to_string();
    let (ca, _, cert, key) = curl_foo(&mesh);
    let tls = ["--target", &target, "--ca", &ca, "--cert", &cert, "--key", &key];
    let connect = json_of(python("slow_client.py").arg("connect").args(tls).output().unwrap());
    assert_eq!(connect["status"], 405, "{connect}");
    let trickles: Vec<_> = [false, true]
        .into_iter()
        .map(|h2| {
            let mut cmd = python("slow_client.py");
            cmd.arg("trickle").args(tls);
            if h2 {
                cmd.arg("--h2");
            }
            std::thread::spawn(move || (h2, json_of(cmd.output().unwrap())))
        })
        .collect();
    for t in trickles {
        let (h2, json) = t.join().unwrap();
        assert_eq!(json["status"], 408, "h2: {h2}: {json}");
        // Far less than the announced megabyte: the limit, not the client, ended it.
        assert!(json["sent"].as_u64().unwrap() < 60, "h2: {h2}: {json}");
    }
}
