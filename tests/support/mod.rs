//! Shared fixtures for the end-to-end tests: the built `signet` binary, the real httpbin served
//! by gunicorn (installed by ./test.sh into target/venv), and the real curl. Everything listens
//! on 127.0.0.1 port 0, so tests can run in parallel: signet reports the ports it got in a
//! `--ready-file` (JSON), and gunicorn serves a socket the test bound itself. No test reads an
//! address out of a log line.
#![allow(dead_code)]

pub mod pods;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const TD: &str = "cluster.local";

pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TD}/ns/{ns}/sa/{sa}")
}

/// The binary under test: this build's, or `SIGNET_TEST_BIN` (to measure another build, such
/// as one from before a fix, with the same tests).
pub fn signet_cmd() -> Command {
    let bin = std::env::var_os("SIGNET_TEST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_signet").into());
    let mut cmd = Command::new(bin);
    cmd.env_remove("ISTIO_META_CERT_SIGNER")
        .env_remove("CERT_SIGNER_DOMAIN")
        .env_remove("RUST_LOG");
    cmd
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn signet(args: &[&str]) -> Output {
    let out = signet_cmd().args(args).output().expect("run signet");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn signet_ok(args: &[&str]) -> String {
    let out = signet(args);
    assert_eq!(out.code, 0, "signet {args:?} failed:\n{}{}", out.stdout, out.stderr);
    out.stdout
}

/// A fresh path for a `--ready-file` (the file must not exist before the process writes it).
pub fn ready_path(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("signet-ready-{}-{what}-{n}.json", std::process::id()))
}

/// A child process with its output collected; killed when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let pipes: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for pipe in pipes {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the process has written its `--ready-file`; returns the JSON in it. Fails if
    /// the process exits first. The file is removed once read.
    pub fn wait_ready_file(&mut self, path: &Path, timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(v) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
            {
                let _ = std::fs::remove_file(path);
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("{} exited ({status}) before it was ready:\n{}", self.name, self.log());
            }
            if start.elapsed() > timeout {
                panic!("{} was not ready within {timeout:?}:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls for `needle` in the log for up to `timeout`; true if it appeared.
    pub fn logged_within(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends the signal `name` (`HUP`, `STOP`, `CONT`, `TERM`); whether it was delivered.
    pub fn signal(&self, name: &str) -> bool {
        Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or None if it is
    /// still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the pipe readers take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signers and workload certificates made with the CLI, in a temporary directory.
pub struct Mesh {
    pub dir: tempfile::TempDir,
}

impl Mesh {
    /// Creates the signers and `bundle.yaml` mapping each root to its signer.
    pub fn new(signers: &[&str]) -> Mesh {
        Mesh::with_domain(signers, signet_certs::DEFAULT_SIGNER_DOMAIN)
    }

    /// As [`Mesh::new`], the signers named `<domain>/<name>`.
    pub fn with_domain(signers: &[&str], domain: &str) -> Mesh {
        let dir = tempfile::Builder::new().prefix("signet-test-").tempdir().unwrap();
        let sdir = dir.path().join("signers");
        let sdir = sdir.to_str().unwrap();
        for s in signers {
            signet_ok(&["signer", "new", s, "--signer-domain", domain, "--dir", sdir]);
        }
        let dirs: Vec<String> = signers.iter().map(|s| format!("{sdir}/{s}")).collect();
        let bundle = dir.path().join("bundle.yaml");
        let mut args = vec!["bundle", "--signer-domain", domain, "-o", bundle.to_str().unwrap()];
        args.extend(dirs.iter().map(String::as_str));
        signet_ok(&args);
        Mesh { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn bundle(&self) -> String {
        self.path("bundle.yaml").display().to_string()
    }

    pub fn signer_dir(&self, signer: &str) -> String {
        self.path(&format!("signers/{signer}")).display().to_string()
    }

    /// Issues `id` from `signer` into workloads/<name>; `extra` adds e.g. `--dns`, `--ttl`.
    pub fn issue(&self, signer: &str, name: &str, id: &str, extra: &[&str]) -> String {
        let out = self.path(&format!("workloads/{name}")).display().to_string();
        let sdir = self.signer_dir(signer);
        let mut args = vec!["cert", "issue", "--signer-dir", &sdir, "--id", id, "--out", &out];
        args.extend_from_slice(extra);
        signet_ok(&args);
        out
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real httpbin (PyPI) under gunicorn, with an access log to prove what reached it.
pub struct Httpbin {
    pub proc: Proc,
    pub addr: SocketAddr,
    access_log: PathBuf,
}

impl Httpbin {
    pub fn start(dir: &Path, name: &str) -> Httpbin {
        Self::start_with(dir, name, &["--workers", "2"])
    }

    /// With gunicorn options of the caller's (a worker class for HTTP/2, say) instead of the
    /// default two sync workers.
    pub fn start_with(dir: &Path, name: &str, options: &[&str]) -> Httpbin {
        let gunicorn = repo_root().join("target/venv/bin/gunicorn");
        assert!(
            gunicorn.exists(),
            "{} is missing: run ./test.sh, which installs the real httpbin and gunicorn into target/venv",
            gunicorn.display()
        );
        // The test binds the socket (port 0) and hands it to gunicorn as fd 3: the address is
        // known before gunicorn starts, with no race for a port.
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let access_log = dir.join(format!("{name}-access.log"));
        let mut cmd = Command::new(gunicorn);
        cmd.args(["-b", "fd://3"])
            .args(options)
            .args(["--no-control-socket", "--access-logfile"])
            .arg(&access_log)
            .arg("httpbin:app")
            .current_dir(dir);
        {
            use std::os::unix::io::AsRawFd;
            use std::os::unix::process::CommandExt;
            let fd = socket.as_raw_fd();
            // SAFETY: dup2 and fcntl are async-signal-safe. The child gets the listening socket
            // as fd 3 without close-on-exec (dup2 clears the flag, except when the socket already
            // is fd 3, hence the fcntl).
            unsafe {
                cmd.pre_exec(move || {
                    if (fd != 3 && libc::dup2(fd, 3) < 0) || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let proc = Proc::spawn(name, cmd);
        drop(socket);
        // Connections wait in the socket's backlog until a worker accepts; wait for the first answer.
        let start = Instant::now();
        while curl(&[&format!("http://{addr}/status/204")], &[]).status != 204 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "httpbin did not answer:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let httpbin = Httpbin { proc, addr, access_log };
        httpbin.wait_requests(1);
        httpbin
    }

    /// Requests httpbin has logged so far (including the readiness probe).
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(&self.access_log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Waits (briefly) until the access log holds at least `n` lines.
    pub fn wait_requests(&self, n: usize) -> usize {
        let start = Instant::now();
        while self.requests() < n && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.requests()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}

/// A `signet proxy` process and the addresses it bound.
pub struct Sidecar {
    pub proc: Proc,
    pub inbound: Vec<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub admin: SocketAddr,
}

impl Sidecar {
    /// Starts `signet proxy ARGS --admin 127.0.0.1:0` and waits until it is serving.
    pub fn start(name: &str, args: &[String]) -> Sidecar {
        Self::start_with_env(name, args, &[])
    }

    pub fn start_with_env(name: &str, args: &[String], env: &[(&str, &str)]) -> Sidecar {
        let ready = ready_path("sidecar");
        let mut cmd = signet_cmd();
        cmd.arg("proxy")
            .args(args)
            .args(["--admin", "127.0.0.1:0", "--ready-file"])
            .arg(&ready);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Proc::spawn(name, cmd);
        let listeners = proc.wait_ready_file(&ready, Duration::from_secs(20));
        let addr = |v: &serde_json::Value| v.as_str().and_then(|a| a.parse().ok());
        let all = |key: &str| -> Vec<SocketAddr> {
            listeners[key]
                .as_array()
                .map(|a| a.iter().filter_map(addr).collect())
                .unwrap_or_default()
        };
        Sidecar {
            inbound: all("inbound"),
            outbound: addr(&listeners["outbound_http"]),
            tcp: all("outbound_tcp"),
            admin: addr(&listeners["admin"]).expect("the admin address"),
            proc,
        }
    }

    pub fn admin_get(&self, path: &str) -> Curl {
        curl(&[&format!("http://{}{path}", self.admin)], &[])
    }

    /// The value of one Prometheus sample, e.g. `signet_tls_handshakes_total{direction="inbound",result="ok"}`.
    pub fn metric(&self, sample: &str) -> u64 {
        let body = self.admin_get("/metrics").body;
        body.lines()
            .find_map(|l| l.strip_prefix(sample).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or_else(|| panic!("no sample {sample} in:\n{body}"))
    }
}

/// One run of the real curl.
#[derive(Debug)]
pub struct Curl {
    /// curl's exit code (0 = transfer completed).
    pub code: i32,
    /// HTTP status, 0 if there was none.
    pub status: u16,
    pub body: String,
    pub stderr: String,
}

const STATUS_MARK: &str = "\n@@signet-status:";

/// Proxy settings a client could inherit from the test's environment; every client the tests
/// run starts without them.
pub const PROXY_VARS: [&str; 10] = [
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

pub fn curl(args: &[&str], env: &[(&str, &str)]) -> Curl {
    let mut cmd = Command::new("curl");
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .args(["-sS", "--max-time", "15", "-w", &format!("{STATUS_MARK}%{{http_code}}")])
        .args(args)
        .output()
        .expect("curl must be installed (apt-get install curl)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = match stdout.rsplit_once(STATUS_MARK) {
        Some((b, s)) => (b.to_string(), s.trim().parse().unwrap_or(0)),
        None => (stdout, 0),
    };
    Curl {
        code: out.status.code().unwrap_or(-1),
        status,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `http_proxy=http://PROXY curl URL`, as an app behind the outbound sidecar would call.
pub fn curl_via(proxy: SocketAddr, url: &str) -> Curl {
    let proxy = format!("http://{proxy}");
    curl(&[url], &[("http_proxy", proxy.as_str())])
}

pub fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// `signet authority serve` with a signing policy and tokens, over the signers of a `Mesh`.
pub struct Authority {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub args: Vec<String>,
}

impl Authority {
    /// Writes `policy` and starts the service on `listen` (use "127.0.0.1:0" for any port).
    pub fn start(mesh: &Mesh, policy: &str, listen: &str) -> Authority {
        std::fs::write(mesh.path("policy.yaml"), policy).unwrap();
        if !mesh.path("tokens.yaml").exists() {
            std::fs::write(mesh.path("tokens.yaml"), "tokens: []\n").unwrap();
        }
        let args = s(&[
            "authority",
            "serve",
            "--signers-dir",
            &mesh.path("signers").display().to_string(),
            "--bundle",
            &mesh.bundle(),
            "--signing-policy",
            &mesh.path("policy.yaml").display().to_string(),
            "--tokens",
            &mesh.path("tokens.yaml").display().to_string(),
            "--admin",
            "127.0.0.1:0",
            "--watch-interval",
            "200ms",
            "--listen",
            listen,
        ]);
        Self::spawn(args)
    }

    fn spawn(args: Vec<String>) -> Authority {
        let ready = ready_path("authority");
        let mut cmd = signet_cmd();
        cmd.args(&args).arg("--ready-file").arg(&ready);
        let mut proc = Proc::spawn("authority", cmd);
        let listeners = proc.wait_ready_file(&ready, Duration::from_secs(20));
        let addr = |key: &str| -> SocketAddr {
            listeners[key]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} address in {listeners}"))
        };
        let (addr, admin) = (addr("authority"), addr("admin"));
        Authority {
            proc,
            addr,
            admin,
            args,
        }
    }

    /// Stops the authority (SIGTERM).
    pub fn stop(&mut self) {
        self.proc
            .terminate(Duration::from_secs(10))
            .expect("the authority stops on SIGTERM");
    }

    /// Starts the same service again on the same port.
    pub fn restart(&mut self) {
        let mut args = self.args.clone();
        let at = args.iter().position(|a| a == "--listen").unwrap();
        args[at + 1] = self.addr.to_string();
        let again = Self::spawn(args);
        *self = again;
    }

    /// `kubectl get csr -o json`, in short: the recorded requests.
    pub fn requests(&self) -> serde_json::Value {
        serde_json::from_str(&curl(&[&format!("http://{}/requests", self.admin)], &[]).body).unwrap()
    }
}

impl Mesh {
    /// Mints a token for ns/sa with the CLI; returns the token file's path.
    pub fn token(&self, ns: &str, sa: &str) -> String {
        let out = self.path(&format!("tokens/{ns}-{sa}")).display().to_string();
        signet_ok(&[
            "authority",
            "token",
            "--tokens",
            &self.path("tokens.yaml").display().to_string(),
            "--namespace",
            ns,
            "--service-account",
            sa,
            "--out",
            &out,
        ]);
        out
    }

    /// Sidecar flags that provision `ns/sa` from `authority` (signer chosen by its signing policy).
    pub fn provisioned(&self, authority: &Authority, ns: &str, sa: &str, ttl: &str) -> Vec<String> {
        let token = self.token(ns, sa);
        s(&[
            "--authority",
            &authority.addr.to_string(),
            "--authority-ca",
            &format!("{}/ca.crt", self.signer_dir("istio-system")),
            "--token-file",
            &token,
            "--id",
            &spiffe(ns, sa),
            "--ttl",
            ttl,
            "--bundle",
            &self.bundle(),
            "--watch-interval",
            "200ms",
        ])
    }
}

/// Polls `cond` every 50 ms for up to `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `contents` to `path` atomically (write a temporary file, rename), as deploy tools do.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Sidecar {
    /// Waits until `/ready` answers 200 (a certificate is held).
    pub fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        while self.admin_get("/ready").status != 200 {
            assert!(
                start.elapsed() < timeout,
                "not ready within {timeout:?}:\n{}",
                self.proc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn certs(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin_get("/certs").body).unwrap()
    }
}

impl Mesh {
    /// `signet proxy` flags for an inbound sidecar of `signer` in front of `app`, certificates in `certs`.
    pub fn inbound_args(&self, certs: &str, signer: &str, app: SocketAddr, protocol: &str) -> Vec<String> {
        s(&[
            "--cert-dir",
            certs,
            "--bundle",
            &self.bundle(),
            "--signer",
            signer,
            "--inbound",
            &format!("127.0.0.1:0={app}"),
            "--protocol",
            protocol,
        ])
    }
}

impl Mesh {
    /// httpbin.foo's certificate directory (signer foo, its SPIFFE ID, DNS name httpbin.foo).
    pub fn httpbin_certs(&self) -> String {
        self.issue(
            "foo",
            "httpbin-foo",
            &spiffe("foo", "httpbin"),
            &["--dns", "httpbin.foo"],
        )
    }

    /// curl.foo's certificate directory (signer foo, its SPIFFE ID).
    pub fn curl_certs(&self) -> String {
        self.issue("foo", "curl-foo", &spiffe("foo", "curl"), &[])
    }

    /// `signet proxy` flags for curl.foo's sidecar: an outbound HTTP proxy on an ephemeral port
    /// whose one service, httpbin.foo:8000, is `server`'s first inbound; then `extra`.
    pub fn outbound_args(&self, certs: &str, server: &Sidecar, extra: &[&str]) -> Vec<String> {
        let mut args = s(&[
            "--cert-dir",
            certs,
            "--bundle",
            &self.bundle(),
            "--signer",
            "foo",
            "--outbound",
            "127.0.0.1:0",
            "--service",
            &format!("httpbin.foo:8000={},{}", server.inbound[0], spiffe("foo", "httpbin")),
        ]);
        args.extend(s(extra));
        args
    }

    /// The scenario's same-signer pair: httpbin.foo's sidecar (an `http` inbound in front of
    /// `app`) and curl.foo's (an outbound HTTP proxy to it). Returns (server, client).
    pub fn http_pair(&self, app: SocketAddr) -> (Sidecar, Sidecar) {
        let server_certs = self.httpbin_certs();
        let server = Sidecar::start(
            "sidecar httpbin.foo",
            &self.inbound_args(&server_certs, "foo", app, "http"),
        );
        let client_certs = self.curl_certs();
        let client = Sidecar::start("sidecar curl.foo", &self.outbound_args(&client_certs, &server, &[]));
        (server, client)
    }
}

impl Mesh {
    /// curl straight to an inbound on `port` as `https://httpbin.foo/get`, verifying the server
    /// with `signer`'s root and presenting the client certificate in `client` (a cert dir), if any.
    pub fn curl_inbound(&self, port: u16, signer: &str, client: Option<&str>) -> Curl {
        let ca = format!("{}/ca.crt", self.signer_dir(signer));
        let resolve = format!("httpbin.foo:{port}:127.0.0.1");
        let url = format!("https://httpbin.foo:{port}/get");
        let mut args = vec!["--cacert", ca.as_str(), "--resolve", resolve.as_str(), url.as_str()];
        let (cert, key);
        if let Some(dir) = client {
            cert = format!("{dir}/tls.crt");
            key = format!("{dir}/tls.key");
            args.extend(["--cert", cert.as_str(), "--key", key.as_str()]);
        }
        curl(&args, &[])
    }
}

/// Resident memory of process `pid`, in MiB (0 if it is gone).
pub fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}
