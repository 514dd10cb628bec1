//! The side-by-side handshake benchmark: Signet's inbound (tcp and http), a bare tokio-rustls
//! server, nginx (http and stream), haproxy and stunnel, all with the same certificates (made by
//! Signet's CLI), loaded by the same client (`signet bench handshake`), with one server worker
//! pinned to CPU 0 and the client (and a tiny upstream) on CPU 1. Full TLS 1.3 mTLS, ECDSA P-256,
//! no resumption, in two modes: handshake only, and handshake + one GET.
//!
//! It also measures the latency a Signet sidecar pair adds at a fixed 1000 requests/s on kept-alive
//! connections, RSS per idle mTLS connection with 10,000 open, time from start to ready,
//! resumed versus full handshakes, and whether each peer rejects a client of another signer
//! during the handshake. It prints a markdown table and writes it, the raw JSON and an SVG chart
//! to target/compare/, or with `--write-results` over the committed benches/results/.
//!
//! Run: `benches/compare.sh` (installs the peers with apt-get if missing), or
//! `cargo bench --bench compare -- [--quick] [--duration SECS] [--only PEER,...] [--write-results]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const SIGNET: &str = env!("CARGO_BIN_EXE_signet");

struct Opts {
    duration: u64,
    warmup: u64,
    concurrency: usize,
    only: Option<Vec<String>>,
    idle_connections: usize,
    /// Replace the committed benches/results; otherwise results go to target/compare.
    write_results: bool,
}

fn opts() -> Opts {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    Opts {
        duration: value("--duration")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 3 } else { 10 }),
        warmup: if quick { 1 } else { 2 },
        concurrency: value("--concurrency").and_then(|v| v.parse().ok()).unwrap_or(8),
        only: value("--only").map(|v| v.split(',').map(str::to_string).collect()),
        idle_connections: value("--idle-connections")
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000),
        write_results: args.iter().any(|a| a == "--write-results"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_port(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server process, killed (with its children) when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn start(cmd: &mut Command, port: u16, what: &str) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let s = Server { child };
        wait_port(port, what);
        s
    }

    /// utime + stime of the process and its descendants, in seconds.
    fn cpu_seconds(&self) -> f64 {
        let root = self.child.id();
        let mut stats: Vec<(u32, u32, u64)> = Vec::new(); // pid, ppid, ticks
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let f: Vec<&str> = after.split_whitespace().collect();
            let (ppid, ut, st) = (
                f[1].parse().unwrap_or(0),
                f[11].parse::<u64>().unwrap_or(0),
                f[12].parse::<u64>().unwrap_or(0),
            );
            stats.push((pid, ppid, ut + st));
        }
        let mut tree = vec![root];
        let mut i = 0;
        while i < tree.len() {
            let p = tree[i];
            tree.extend(stats.iter().filter(|s| s.1 == p).map(|s| s.0));
            i += 1;
        }
        stats.iter().filter(|s| tree.contains(&s.0)).map(|s| s.2).sum::<u64>() as f64 / 100.0
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // nginx and haproxy fork workers: take the whole process group down.
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificates, made with Signet's CLI.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let d = dir.display().to_string();
        for s in ["foo", "bar"] {
            run(Command::new(SIGNET).args(["signer", "new", s, "--dir", &format!("{d}/signers")]));
        }
        run(Command::new(SIGNET).args([
            "bundle",
            &format!("{d}/signers/foo"),
            &format!("{d}/signers/bar"),
            "-o",
            &format!("{d}/bundle.yaml"),
        ]));
        let issue = |signer: &str, sa: &str, out: &str, dns: bool| {
            let mut cmd = Command::new(SIGNET);
            cmd.args([
                "cert",
                "issue",
                "--signer-dir",
                &format!("{d}/signers/{signer}"),
                "--id",
                &format!("spiffe://cluster.local/ns/{signer}/sa/{sa}"),
                "--out",
                &format!("{d}/{out}"),
            ]);
            if dns {
                cmd.args(["--dns", "localhost"]);
            }
            run(&mut cmd);
        };
        issue("foo", "server", "server", true);
        issue("foo", "client", "client", false);
        issue("bar", "client", "client-bar", false);
        // haproxy wants certificate and key in one file.
        let pem = std::fs::read_to_string(format!("{d}/server/tls.crt")).unwrap()
            + &std::fs::read_to_string(format!("{d}/server/tls.key")).unwrap();
        std::fs::write(format!("{d}/server/haproxy.pem"), pem).unwrap();
        Pki { dir: dir.to_path_buf() }
    }

    fn p(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }
}

fn pinned(cpu: &str, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu, program]);
    c
}

/// `signet proxy` with one worker on `cpus`: an inbound on `port` in front of `upstream`.
fn signet_inbound(pki: &Pki, cpus: &str, port: u16, upstream: u16, protocol: &str) -> Command {
    let mut c = pinned(cpus, SIGNET);
    c.args([
        "proxy",
        "--workers",
        "1",
        "--cert-dir",
        &pki.p("server"),
        "--bundle",
        &pki.p("bundle.yaml"),
    ]);
    c.args([
        "--signer",
        "foo",
        "--inbound",
        &format!("127.0.0.1:{port}=127.0.0.1:{upstream}"),
        "--protocol",
        protocol,
    ]);
    c
}

/// The peers: name, and how to start one listening on `port` in front of `upstream`.
fn start_peer(name: &str, pki: &Pki, port: u16, upstream: u16, resumption: bool) -> Option<Server> {
    let d = pki.dir.display().to_string();
    let listen = format!("127.0.0.1:{port}");
    let up = format!("127.0.0.1:{upstream}");
    let signet = |protocol: &str| {
        let mut c = signet_inbound(pki, "0", port, upstream, protocol);
        if !resumption {
            c.arg("--no-resumption");
        }
        c
    };
    let tls_common = format!(
        "ssl_certificate {d}/server/tls.crt; ssl_certificate_key {d}/server/tls.key; ssl_client_certificate {d}/signers/foo/ca.crt; ssl_verify_client on; ssl_protocols TLSv1.3; ssl_ecdh_curve X25519:prime256v1; ssl_session_tickets off; ssl_session_cache off;"
    );
    let nginx = |body: &str, tag: &str| {
        let conf = format!(
            "{load}worker_processes 1; daemon off; pid {d}/nginx-{tag}.pid; error_log {d}/nginx-{tag}.log warn;\nevents {{ worker_connections 8192; }}\n{body}\n",
            load = if tag == "stream" {
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n"
            } else {
                ""
            }
        );
        let path = format!("{d}/nginx-{tag}.conf");
        std::fs::write(&path, conf).unwrap();
        let mut c = pinned("0", "nginx");
        c.args(["-c", &path, "-p", &d]);
        c
    };
    let mut cmd = match name {
        "signet-tcp" => signet("tcp"),
        "signet-tcp-nocache" => {
            let mut c = signet("tcp");
            c.arg("--no-verify-cache");
            c
        }
        "signet-http" => signet("http"),
        "tokio-rustls" => {
            let mut c = pinned("0", SIGNET);
            c.args([
                "bench",
                "server",
                "--listen",
                &listen,
                "--cert-dir",
                &pki.p("server"),
                "--ca",
                &pki.p("signers/foo/ca.crt"),
                "--http",
            ]);
            c
        }
        "nginx-http" => nginx(
            &format!(
                "http {{ access_log off; client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3; uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;\n upstream app {{ server {up}; keepalive 16; }}\n server {{ listen {listen} ssl; {tls_common} location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}"
            ),
            "http",
        ),
        "nginx-stream" => nginx(
            &format!("stream {{ server {{ listen {listen} ssl; {tls_common} proxy_pass {up}; }} }}"),
            "stream",
        ),
        "haproxy" => {
            let conf = format!(
                "global\n  nbthread 1\n  maxconn 4096\n  tune.ssl.cachesize 0\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\nfrontend fe\n  bind {listen} ssl crt {d}/server/haproxy.pem ca-file {d}/signers/foo/ca.crt verify required ssl-min-ver TLSv1.3 no-tls-tickets curves X25519:P-256\n  default_backend be\nbackend be\n  http-reuse always\n  server app {up}\n"
            );
            let path = format!("{d}/haproxy.cfg");
            std::fs::write(&path, conf).unwrap();
            let mut c = pinned("0", "haproxy");
            c.args(["-f", &path, "-db"]);
            c
        }
        "stunnel" => {
            let conf = format!(
                "foreground = yes\npid =\ndebug = 3\n[tls]\naccept = {listen}\nconnect = {up}\ncert = {d}/server/tls.crt\nkey = {d}/server/tls.key\nCAfile = {d}/signers/foo/ca.crt\nverifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\noptions = NO_TICKET\ncurves = X25519:P-256\n"
            );
            let path = format!("{d}/stunnel.conf");
            std::fs::write(&path, conf).unwrap();
            let mut c = pinned("0", "stunnel4");
            c.arg(&path);
            c
        }
        _ => unreachable!(),
    };
    let program = cmd
        .get_args()
        .nth(2)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !program.starts_with('/')
        && Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
    {
        eprintln!("  skipping {name}: {program} is not installed (benches/compare.sh installs it)");
        return None;
    }
    Some(Server::start(&mut cmd, port, name))
}

const PEERS: [&str; 8] = [
    "signet-tcp",
    "signet-tcp-nocache",
    "signet-http",
    "tokio-rustls",
    "nginx-http",
    "nginx-stream",
    "haproxy",
    "stunnel",
];

/// `signet bench handshake` on CPU 1, as JSON.
/// One run of `duration` seconds (no separate warm-up: callers run one first when they need it).
fn load(pki: &Pki, port: u16, client: &str, o: &Opts, get: bool, resume: bool, duration: u64) -> Value {
    let mut c = pinned("1", SIGNET);
    c.args([
        "bench",
        "handshake",
        "--target",
        &format!("127.0.0.1:{port}"),
        "--sni",
        "localhost",
        "--cert",
        &pki.p(&format!("{client}/tls.crt")),
        "--key",
        &pki.p(&format!("{client}/tls.key")),
        "--ca",
        &pki.p("signers/foo/ca.crt"),
        "--concurrency",
        &o.concurrency.to_string(),
        "--duration",
        &format!("{duration}s"),
        "--warmup",
        "0s",
        "--json",
    ]);
    if get {
        c.args(["--http-get", "/status/200"]);
    }
    if resume {
        c.arg("--resume");
    }
    let out = c.output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| json!({ "handshakes": 0, "error": String::from_utf8_lossy(&out.stderr) }))
}

struct Row {
    peer: String,
    mode: &'static str,
    rate: f64,
    p50: f64,
    p99: f64,
    cpu: f64,
    per_core_s: f64,
    failed: u64,
}

fn measure(name: &str, pki: &Pki, upstream: u16, o: &Opts, get: bool) -> Option<Row> {
    let port = free_port();
    let server = start_peer(name, pki, port, upstream, false)?;
    // Warm up separately, so the CPU window covers exactly the measured interval.
    load(pki, port, "client", o, get, false, o.warmup);
    let cpu0 = server.cpu_seconds();
    let r = load(pki, port, "client", o, get, false, o.duration);
    let cpu = server.cpu_seconds() - cpu0;
    let secs = r["duration_s"].as_f64().unwrap_or(o.duration as f64);
    let hs = r["handshakes"].as_u64().unwrap_or(0);
    Some(Row {
        peer: name.into(),
        mode: if get { "handshake + GET" } else { "handshake" },
        rate: hs as f64 / secs,
        p50: r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        p99: r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        cpu: 100.0 * cpu / secs,
        per_core_s: if cpu > 0.0 { hs as f64 / cpu } else { 0.0 },
        failed: r["failed"].as_u64().unwrap_or(0),
    })
}

fn per_core_of(handshakes: f64, cpu_seconds: f64) -> f64 {
    if cpu_seconds > 0.0 {
        handshakes / cpu_seconds
    } else {
        0.0
    }
}

/// How a peer treats a client from another signer.
fn rejection(name: &str, pki: &Pki, upstream: u16, o: &Opts) -> Option<String> {
    let port = free_port();
    let _server = start_peer(name, pki, port, upstream, false)?;
    let r = load(pki, port, "client-bar", o, true, false, 1);
    let ok = r["handshakes"].as_u64().unwrap_or(0);
    let failures: BTreeMap<String, u64> = serde_json::from_value(r["failures"].clone()).unwrap_or_default();
    let top = failures
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    Some(if ok > 0 {
        format!("ACCEPTED ({ok} calls answered)")
    } else if top.contains("alert") {
        format!(
            "during the handshake ({})",
            top.trim_start_matches("after handshake: ")
                .trim_start_matches("handshake: ")
        )
    } else {
        format!("after the handshake ({top})")
    })
}

/// Open-loop load at `rate`/s over `conns` kept-alive HTTP/1.1 connections; latency in ms.
fn fixed_rate_latency(target: SocketAddr, absolute: Option<&str>, rate: u64, secs: u64) -> (f64, f64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use http_body_util::{BodyExt, Empty};
        let conns = 8;
        let mut senders = Vec::new();
        for _ in 0..conns {
            let s = tokio::net::TcpStream::connect(target).await.unwrap();
            s.set_nodelay(true).unwrap();
            let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .unwrap();
            tokio::spawn(conn);
            senders.push(Arc::new(tokio::sync::Mutex::new(tx)));
        }
        let uri = absolute
            .map(str::to_string)
            .unwrap_or_else(|| "/status/200".to_string());
        let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let period = Duration::from_nanos(1_000_000_000 / rate);
        let mut tasks = Vec::new();
        // The first second warms the pools (connections, handshakes) and is not counted.
        let warmup = rate;
        for i in 0..rate * (secs + 1) {
            let at = start + period * i as u32;
            tokio::time::sleep_until(at).await;
            // Timed from the send, not the schedule: tokio's timer has millisecond granularity.
            let at = tokio::time::Instant::now();
            let counted = i >= warmup;
            let (tx, uri, lat, errors) = (
                senders[i as usize % conns].clone(),
                uri.clone(),
                lat.clone(),
                errors.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let req = hyper::Request::get(uri)
                    .header("host", "upstream.bench:8000")
                    .body(Empty::<bytes::Bytes>::new())
                    .unwrap();
                let mut tx = tx.lock().await;
                let ok = match tx.send_request(req).await {
                    Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
                    Err(_) => false,
                };
                // Waiting for a connection busy with an earlier response counts.
                if counted {
                    lat.lock().unwrap().push(at.elapsed().as_micros() as u32);
                }
                if !ok {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let mut v = std::mem::take(&mut *lat.lock().unwrap());
        v.sort_unstable();
        let pct = |p: f64| f64::from(v[((v.len() - 1) as f64 * p) as usize]) / 1000.0;
        (pct(0.5), pct(0.99), errors.load(std::sync::atomic::Ordering::Relaxed))
    })
}

/// Opens `n` idle mTLS connections to a Signet inbound and reports RSS growth per connection.
fn idle_rss(pki: &Pki, upstream: u16, protocol: &str, n: usize) -> (f64, usize) {
    let port = free_port();
    let mut c = signet_inbound(pki, "0", port, upstream, protocol);
    c.arg("--no-resumption");
    let server = Server::start(&mut c, port, "signet idle");
    std::thread::sleep(Duration::from_millis(300));
    let before = server.rss_kib();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let held = rt.block_on(async {
        let chain = signet_certs::read_certs(Path::new(&pki.p("client/tls.crt"))).unwrap();
        let key = signet_certs::read_key(Path::new(&pki.p("client/tls.key"))).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for r in signet_certs::read_certs(Path::new(&pki.p("signers/foo/ca.crt"))).unwrap() {
            roots.add(r).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        if protocol == "http" {
            cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (connector, sem) = (connector.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await.ok()?;
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.ok()?;
                // Make sure the server accepted our certificate (TLS 1.3 tells on the first read).
                use tokio::io::AsyncWriteExt;
                tls.flush().await.ok()?;
                Some(tls)
            }));
        }
        let mut held = Vec::new();
        for t in tasks {
            if let Ok(Some(c)) = t.await {
                held.push(c);
            }
        }
        held
    });
    std::thread::sleep(Duration::from_secs(1));
    let after = server.rss_kib();
    let count = held.len();
    drop(held);
    drop(rt);
    ((after.saturating_sub(before)) as f64 / count.max(1) as f64, count)
}

/// Time from spawning `signet proxy` to `/ready` answering 200, median of `runs`.
fn ready_time(pki: &Pki, upstream: u16, runs: usize) -> f64 {
    let mut times = Vec::new();
    for _ in 0..runs {
        let (port, admin) = (free_port(), free_port());
        let start = Instant::now();
        let mut child = Command::new(SIGNET)
            .args([
                "proxy",
                "--cert-dir",
                &pki.p("server"),
                "--bundle",
                &pki.p("bundle.yaml"),
                "--signer",
                "foo",
                "--inbound",
                &format!("127.0.0.1:{port}=127.0.0.1:{upstream}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", admin)) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /ready HTTP/1.0\r\n\r\n");
                let mut r = String::new();
                let _ = s.read_to_string(&mut r);
                if r.starts_with("HTTP/1.") && r.contains(" 200 ") {
                    break;
                }
            }
            assert!(start.elapsed() < Duration::from_secs(10), "not ready");
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn chart(rows: &[Row], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let peers: Vec<&str> = PEERS
        .iter()
        .copied()
        .filter(|p| rows.iter().any(|r| r.peer == *p))
        .collect();
    let max = rows.iter().map(|r| r.per_core_s).fold(0.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Full TLS 1.3 mTLS handshakes per server-core-second (ECDSA P-256, one server core)",
            ("sans-serif", 18),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..peers.len() as f64, 0f64..max.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(peers.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                peers.get(i).map(|p| p.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("handshakes / server-core-second")
        .draw()?;
    for (mode, offset, color) in [
        ("handshake", 0.1, RGBColor(52, 101, 164)),
        ("handshake + GET", 0.5, RGBColor(245, 121, 0)),
    ] {
        chart
            .draw_series(rows.iter().filter(|r| r.mode == mode).filter_map(|r| {
                let i = peers.iter().position(|p| *p == r.peer)? as f64;
                Some(Rectangle::new(
                    [(i + offset, 0.0), (i + offset + 0.38, r.per_core_s)],
                    color.filled(),
                ))
            }))?
            .label(mode)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() {
    let o = opts();
    // 10,000 idle connections need file descriptors on both ends.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    let work = tempfile::Builder::new().prefix("signet-compare-").tempdir().unwrap();
    let pki = Pki::new(work.path());
    let upstream_port = free_port();
    let _upstream = Server::start(
        pinned("1", SIGNET).args(["httpbin", "--listen", &format!("127.0.0.1:{upstream_port}")]),
        upstream_port,
        "upstream",
    );
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    eprintln!(
        "compare: {cpus} CPUs ({cpu_model}); server pinned to CPU 0, client and upstream to CPU 1; {} s per run, concurrency {}",
        o.duration, o.concurrency
    );

    let mut rows = Vec::new();
    let mut rejections = BTreeMap::new();
    for peer in PEERS {
        if o.only.as_ref().is_some_and(|only| !only.iter().any(|p| p == peer)) {
            continue;
        }
        for get in [false, true] {
            eprintln!("  {peer}: {}", if get { "handshake + GET" } else { "handshake" });
            if let Some(row) = measure(peer, &pki, upstream_port, &o, get) {
                rows.push(row);
            }
        }
        if let Some(r) = rejection(peer, &pki, upstream_port, &o) {
            rejections.insert(peer.to_string(), r);
        }
    }

    let mut md = String::new();
    let date = run(Command::new("date").args(["-u", "+%Y-%m-%d"])).trim().to_string();
    let _ = writeln!(md, "### Handshake throughput, {date}\n");
    let _ = writeln!(
        md,
        "{cpus} CPUs ({cpu_model}); one server worker pinned to CPU 0; `signet bench handshake` (concurrency {}) and a tiny upstream on CPU 1; full TLS 1.3 mTLS, ECDSA P-256, no resumption; {} s per run.\n",
        o.concurrency, o.duration
    );
    let _ = writeln!(
        md,
        "| peer | mode | handshakes/s | p50 ms | p99 ms | server CPU | handshakes per server-core-second | vs signet-tcp |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.peer == "signet-tcp" && b.mode == r.mode)
            .map(|b| b.per_core_s)
            .unwrap_or(0.0);
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} % | **{:.0}** | {:.2}×{} |",
            r.peer,
            r.mode,
            r.rate,
            r.p50,
            r.p99,
            r.cpu,
            r.per_core_s,
            if base > 0.0 { r.per_core_s / base } else { 0.0 },
            if r.failed > 0 {
                format!(" ({} failed)", r.failed)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(md, "\nA client from another signer (bar):\n");
    for (peer, r) in &rejections {
        let _ = writeln!(md, "- {peer}: rejected {r}");
    }

    let mut extra = json!({});
    let wants = |part: &str| {
        o.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|p| p == part || p == "extras"))
    };
    if wants("ready") {
        // First, while the machine is quiet.
        let ready = ready_time(&pki, upstream_port, 9);
        let _ = writeln!(
            md,
            "\nTime from start to ready (files mode, median of 9): **{ready:.1} ms**."
        );
        extra["ready_ms"] = json!(ready);
    }
    if wants("resumed")
        || o.only
            .as_ref()
            .is_some_and(|only| only.iter().any(|p| p == "signet-tcp"))
    {
        // Resumed versus full handshakes, Signet with resumption on (its default).
        for peer in ["signet-tcp", "signet-http"] {
            let port = free_port();
            let Some(server) = start_peer(peer, &pki, port, upstream_port, true) else {
                continue;
            };
            load(&pki, port, "client", &o, false, true, o.warmup);
            let cpu0 = server.cpu_seconds();
            let r = load(&pki, port, "client", &o, false, true, o.duration);
            let cpu = server.cpu_seconds() - cpu0;
            let hs = r["handshakes"].as_f64().unwrap_or(0.0);
            let full = |p: &str| {
                rows.iter()
                    .find(|r| r.peer == p && r.mode == "handshake")
                    .map(|r| r.per_core_s)
                    .unwrap_or(0.0)
            };
            let ratio = |f: f64| {
                if f > 0.0 {
                    format!("{:.2}×", per_core_of(hs, cpu) / f)
                } else {
                    "n/a".into()
                }
            };
            let _ = writeln!(
                md,
                "\nResumed TLS 1.3 handshakes, {peer}: {:.0}/s, **{:.0} per server-core-second**: {} its full handshakes ({} the full handshakes of signet-tcp-nocache); {} of {} resumed.",
                hs / r["duration_s"].as_f64().unwrap_or(1.0),
                per_core_of(hs, cpu),
                ratio(full(peer)),
                ratio(full("signet-tcp-nocache")),
                r["resumed"],
                r["handshakes"]
            );
            extra[format!("resumed_per_core_s_{peer}")] = json!(per_core_of(hs, cpu));
        }
    }
    if wants("latency") {
        // Latency a sidecar pair adds at 1000 requests/s on kept-alive connections.
        let (inb, outb) = (free_port(), free_port());
        // Latency: the sidecars are not pinned (a sidecar gets a core to itself in a real pod);
        // two busy processes sharing one pinned core measure the scheduler's time slices instead.
        let lat_cpus = std::env::var("SIGNET_LATENCY_CPUS").unwrap_or_else(|_| "0,1".into());
        let mut server = signet_inbound(&pki, &lat_cpus, inb, upstream_port, "http");
        let _s = Server::start(&mut server, inb, "server sidecar");
        let mut client = pinned(&lat_cpus, SIGNET);
        client.args([
            "proxy",
            "--workers",
            "1",
            "--cert-dir",
            &pki.p("client"),
            "--bundle",
            &pki.p("bundle.yaml"),
            "--signer",
            "foo",
            "--outbound",
            &format!("127.0.0.1:{outb}"),
            "--service",
            &format!("upstream.bench:8000=127.0.0.1:{inb},spiffe://cluster.local/ns/foo/sa/server"),
        ]);
        let _c = Server::start(&mut client, outb, "client sidecar");
        let secs = o.duration;
        let direct = fixed_rate_latency(([127, 0, 0, 1], upstream_port).into(), None, 1000, secs);
        let pair = fixed_rate_latency(
            ([127, 0, 0, 1], outb).into(),
            Some("http://upstream.bench:8000/status/200"),
            1000,
            secs,
        );
        let _ = writeln!(
            md,
            "\nLatency at 1000 requests/s on kept-alive connections ({secs} s each): direct p50 {:.3} ms / p99 {:.3} ms; through a Signet sidecar pair p50 {:.3} ms / p99 {:.3} ms: **the pair adds {:.3} ms p50, {:.3} ms p99** ({} + {} errors).",
            direct.0,
            direct.1,
            pair.0,
            pair.1,
            pair.0 - direct.0,
            pair.1 - direct.1,
            direct.2,
            pair.2
        );
        extra["latency_added_ms"] = json!({ "p50": pair.0 - direct.0, "p99": pair.1 - direct.1 });
    }
    if wants("rss") {
        for protocol in ["tcp", "http"] {
            let (kib, count) = idle_rss(&pki, upstream_port, protocol, o.idle_connections);
            let _ = writeln!(
                md,
                "\nRSS per idle mTLS connection, signet inbound ({protocol}), {count} connections open: **{kib:.1} KiB**."
            );
            extra[format!("rss_kib_per_idle_{protocol}")] = json!(kib);
        }
    }

    println!("{md}");
    // The committed results change only when asked: a quick local run must not replace them.
    let results = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(if o.write_results {
        "benches/results"
    } else {
        "target/compare"
    });
    std::fs::create_dir_all(&results).unwrap();
    std::fs::write(results.join("compare.md"), &md).unwrap();
    let raw: Vec<Value> = rows
        .iter()
        .map(|r| json!({ "peer": r.peer, "mode": r.mode, "handshakes_per_s": r.rate, "p50_ms": r.p50, "p99_ms": r.p99, "server_cpu_percent": r.cpu, "per_server_core_s": r.per_core_s, "failed": r.failed }))
        .collect();
    let all =
        json!({ "date": date, "cpus": cpus, "cpu": cpu_model, "rows": raw, "rejections": rejections, "extra": extra });
    std::fs::write(results.join("compare.json"), format!("{all:#}\n")).unwrap();
    if let Err(e) = chart(&rows, &results.join("handshakes.svg")) {
        eprintln!("chart: {e}");
    }
    eprintln!("wrote {}/compare.md, compare.json, handshakes.svg", results.display());
    if !o.write_results {
        eprintln!("(benches/results is unchanged; pass --write-results to replace it)");
    }
}
