//! A real Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager built from their published Go modules (tests/cluster/build.sh), and
//! cert-manager's real controllers with its own CRDs, all on loopback. One cluster per test
//! binary, started by the first test that asks ([`cluster`]); each test works in namespaces of
//! its own ([`Cluster::namespace`]).
//!
//! The API server runs as a cluster runs it: client certificates and bound service-account
//! tokens (TokenRequest, TokenReview), `--authorization-mode=Node,RBAC`, the default admission
//! plugins with NodeRestriction, ClusterTrustBundles and PodCertificateRequests served. The admin
//! is a `system:masters` client certificate; everything Signet runs gets a service account and
//! only the RBAC its manifests grant.
//!
//! Cleanup: the processes die with the test binary (`PR_SET_PDEATHSIG` from a thread that lives
//! as long as it), its directory is removed at exit, and a leftover of a run that was killed
//! outright (its pid gone) is removed by the next start. `SIGNET_KEEP_CLUSTER=1` keeps the
//! directory (its logs: `<name>.log`) of a run for a look.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// What the API server writes to `audit.log`: every request once answered, with the objects
/// of CSR writes (their generated names are only in the response), leases and events left out.
/// The tests read it for what no object keeps: which CSRs were made and by whom, how many API
/// requests a certificate cost.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources:
  - group: coordination.k8s.io
    resources: [leases]
  - group: \"\"
    resources: [events]
- level: None
  nonResourceURLs: [/readyz*, /healthz*, /livez*, /openapi*, /api, /apis, /version]
- level: RequestResponse
  verbs: [create]
  resources:
  - group: certificates.k8s.io
    resources: [certificatesigningrequests, podcertificaterequests]
- level: Metadata
";

/// Where each test binary's cluster lives: `<prefix><pid>`.
const DIR_PREFIX: &str = "signet-cluster-";

pub struct Cluster {
    pub dir: PathBuf,
    /// Where the binaries are (etcd, kube-apiserver, kubectl, …) and cert-manager's CRDs.
    pub bin: PathBuf,
    pub url: String,
    /// The CA that signed the API server's certificate (and the admin's).
    pub ca: PathBuf,
    pub admin_kubeconfig: PathBuf,
    /// The cluster's CA, for more client certificates (nodes).
    pki: Pki,
    /// The pids of what was started, killed at exit.
    pids: Mutex<Vec<u32>>,
    spawner: Mutex<mpsc::Sender<Spawn>>,
}

struct Spawn {
    cmd: Command,
    reply: mpsc::Sender<std::io::Result<u32>>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// This test binary's cluster, started on first use (cert-manager included).
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 checks only that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Removes what killed runs left: directories whose owning pid is gone, and their processes.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(DIR_PREFIX).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        for child in std::fs::read_to_string(entry.path().join("pids"))
            .unwrap_or_default()
            .lines()
        {
            if let Ok(child) = child.parse::<i32>() {
                // SAFETY: a plain kill of a pid this harness recorded.
                unsafe { libc::kill(child, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

extern "C" fn at_exit() {
    if let Some(cluster) = CLUSTER.get() {
        cluster.stop();
    }
}

/// The binaries' directory from tests/cluster/build.sh (which builds them if the cache lacks
/// them, and prints where they are).
fn built() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/build.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed ({})", script.display(), out.status);
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    PathBuf::from(dir)
}

struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "signet-test-cluster-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&ca_key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: rcgen::Issuer::new(params, ca_key),
        }
    }

    /// A leaf (PEM certificate, PEM key) for `cn` in organizations `orgs`, with SANs `sans`.
    fn leaf(&self, cn: &str, orgs: &[&str], sans: &[&str], server: bool) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        for org in orgs {
            params.distinguished_name.push(rcgen::DnType::OrganizationName, *org);
        }
        params.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Waits until `addr` accepts a connection (or `what` has exited, or the time is up).
fn wait_port(addr: SocketAddr, what: &str, log: &Path, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "{what} did not listen on {addr} within {timeout:?}:\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

impl Cluster {
    fn start() -> Cluster {
        let started = Instant::now();
        remove_leftovers();
        let bin = built();
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pki")).unwrap();

        // Processes are started from one thread that lives as long as the test binary, so
        // PR_SET_PDEATHSIG (which follows the thread that forked) kills them only at exit.
        let (tx, rx) = mpsc::channel::<Spawn>();
        std::thread::spawn(move || {
            for Spawn { mut cmd, reply } in rx {
                let _ = reply.send(cmd.spawn().map(|c| {
                    let pid = c.id();
                    std::mem::forget(c);
                    pid
                }));
            }
            loop {
                std::thread::park();
            }
        });

        let pki = Pki::new();
        let ca = dir.join("pki/ca.crt");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let (crt, key) = pki.leaf(
            "kube-apiserver",
            &[],
            &[
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
            true,
        );
        std::fs::write(dir.join("pki/apiserver.crt"), crt).unwrap();
        write_private(&dir.join("pki/apiserver.key"), &key);
        let (crt, key) = pki.leaf("admin", &["system:masters"], &[], false);
        std::fs::write(dir.join("pki/admin.crt"), crt).unwrap();
        write_private(&dir.join("pki/admin.key"), &key);
        let sa_key = rcgen::KeyPair::generate().unwrap();
        write_private(&dir.join("pki/sa.key"), &sa_key.serialize_pem());
        std::fs::write(dir.join("pki/sa.pub"), sa_key.public_key_pem()).unwrap();

        let etcd_client = free_port();
        let etcd_peer = free_port();
        let api_port = free_port();
        let url = format!("https://127.0.0.1:{api_port}");
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(
            &admin_kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {crt}\n    client-key: {key}\ncontexts:\n- name: test\n  context: {{cluster: test, user: admin}}\ncurrent-context: test\n",
                ca = ca.display(),
                crt = dir.join("pki/admin.crt").display(),
                key = dir.join("pki/admin.key").display(),
            ),
        )
        .unwrap();

        let cluster = Cluster {
            dir: dir.clone(),
            bin: bin.clone(),
            url: url.clone(),
            ca: ca.clone(),
            admin_kubeconfig: admin_kubeconfig.clone(),
            pki,
            pids: Mutex::new(Vec::new()),
            spawner: Mutex::new(tx),
        };
        // SAFETY: registers a plain extern "C" function.
        unsafe { libc::atexit(at_exit) };

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        cluster.run(
            "etcd",
            &[
                "--name=test",
                &format!("--data-dir={}", dir.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=test={peer_url}"),
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        );
        wait_port(
            format!("127.0.0.1:{etcd_client}").parse().unwrap(),
            "etcd",
            &dir.join("etcd.log"),
            Duration::from_secs(30),
        );

        let pki = |f: &str| dir.join("pki").join(f).display().to_string();
        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY).unwrap();
        let apiserver = cluster.run(
            "kube-apiserver",
            &[
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                // No Service endpoints for the API server: a loopback address may not be one.
                "--endpoint-reconciler-type=none",
                &format!("--secure-port={api_port}"),
                &format!("--tls-cert-file={}", pki("apiserver.crt")),
                &format!("--tls-private-key-file={}", pki("apiserver.key")),
                &format!("--client-ca-file={}", pki("ca.crt")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                &format!("--service-account-key-file={}", pki("sa.pub")),
                &format!("--service-account-signing-key-file={}", pki("sa.key")),
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--feature-gates=ClusterTrustBundle=true,ClusterTrustBundleProjection=true,PodCertificateRequest=true",
                "--runtime-config=certificates.k8s.io/v1beta1=true",
                "--allow-privileged=true",
                &format!("--audit-policy-file={}", dir.join("audit-policy.yaml").display()),
                &format!("--audit-log-path={}", dir.join("audit.log").display()),
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                "--profiling=false",
                "--v=1",
            ],
        );
        cluster.wait_ready(apiserver, Duration::from_secs(90));

        cluster.run(
            "kube-controller-manager",
            &[
                &format!("--kubeconfig={}", admin_kubeconfig.display()),
                "--leader-elect=false",
                "--controllers=serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller,certificatesigningrequest-cleaner-controller",
                &format!("--service-account-private-key-file={}", pki("sa.key")),
                &format!("--root-ca-file={}", pki("ca.crt")),
                "--use-service-account-credentials=false",
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", free_port()),
                "--v=1",
            ],
        );
        cluster.start_cert_manager();
        eprintln!("cluster: {url} ready in {:?} ({})", started.elapsed(), dir.display());
        cluster
    }

    /// Starts one of the built binaries with `args`, its output in `<dir>/<name>.log`.
    fn run(&self, name: &str, args: &[&str]) -> u32 {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(self.bin.join(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl in the child before exec, async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let (reply, answer) = mpsc::channel();
        self.spawner.lock().unwrap().send(Spawn { cmd, reply }).unwrap();
        let pid = answer
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.join(name).display()));
        let mut pids = self.pids.lock().unwrap();
        pids.push(pid);
        let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        std::fs::write(self.dir.join("pids"), list.join("\n")).unwrap();
        pid
    }

    fn wait_ready(&self, apiserver: u32, timeout: Duration) {
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: reaps the API server only if it has exited; never blocks.
            let exited = unsafe { libc::waitpid(apiserver as i32, &mut status, libc::WNOHANG) } == apiserver as i32;
            assert!(
                !exited,
                "kube-apiserver exited:\n{}",
                tail(&self.dir.join("kube-apiserver.log"))
            );
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "kube-apiserver was not ready within {timeout:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail(&self.dir.join("kube-apiserver.log"))
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn start_cert_manager(&self) {
        self.kubectl_ok(&["create", "namespace", "cert-manager"]);
        let crds = self.bin.join("crds");
        self.kubectl_ok(&["apply", "--server-side", "-f", crds.to_str().unwrap()]);
        self.kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", "crd", "--all"]);
        self.run(
            "cert-manager-controller",
            &[
                &format!("--kubeconfig={}", self.admin_kubeconfig.display()),
                "--cluster-resource-namespace=cert-manager",
            ],
        );
    }

    fn stop(&self) {
        for pid in self.pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: a plain kill of a child this harness started.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        if std::env::var_os("SIGNET_KEEP_CLUSTER").is_some() {
            eprintln!("cluster: kept {} (SIGNET_KEEP_CLUSTER)", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// The real kubectl of the cluster's release, as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.admin_kubeconfig, args, None)
    }

    /// kubectl with `kubeconfig`, `stdin` fed if given.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(text) = stdin {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// kubectl as the admin; its stdout, or a panic with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` of `yaml`, as the admin.
    pub fn apply(&self, yaml: &str) -> String {
        let out = self.kubectl_with(&self.admin_kubeconfig, &["apply", "-f", "-"], Some(yaml));
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A namespace of this test's own (`<prefix>-<n>`), deleted when dropped.
    pub fn namespace(&'static self, prefix: &str) -> Namespace {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}-{n}");
        self.kubectl_ok(&["create", "namespace", &name]);
        Namespace { cluster: self, name }
    }

    /// A bound service-account token (TokenRequest) for `ns/sa` with `audience`.
    pub fn token(&self, ns: &str, sa: &str, audience: &str) -> String {
        self.kubectl_ok(&[
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--audience",
            audience,
            "--duration",
            "1h",
        ])
        .trim()
        .to_string()
    }

    /// A kubeconfig at `path` that authenticates with `token` (a service account's, as a pod
    /// has), trusting the cluster's CA.
    pub fn kubeconfig_for_token(&self, path: &Path, token: &str) -> PathBuf {
        write_private(
            path,
            &format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: sa}}\ncurrent-context: test\n",
                self.url,
                self.ca.display()
            ),
        );
        path.to_path_buf()
    }
}

impl Cluster {
    /// The audit log so far: one JSON object per answered request.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The names of the CSRs `user` created (201 answers), in order, from the audit log: the
    /// objects themselves may be long deleted.
    pub fn csrs_created_by(&self, user: &str) -> Vec<String> {
        self.audit()
            .iter()
            .filter(|e| {
                e["verb"] == "create"
                    && e["objectRef"]["resource"] == "certificatesigningrequests"
                    && e["objectRef"]["subresource"].is_null()
                    && e["user"]["username"] == user
                    && e["responseStatus"]["code"] == 201
            })
            .filter_map(|e| e["responseObject"]["metadata"]["name"].as_str().map(String::from))
            .collect()
    }

    /// The CertificateSigningRequests whose signerName starts with `prefix` (a test's signer
    /// domain), as JSON objects.
    pub fn csrs(&self, prefix: &str) -> Vec<serde_json::Value> {
        self.list("certificatesigningrequests", prefix)
    }

    /// The ClusterTrustBundles (v1) whose signerName starts with `prefix`.
    pub fn cluster_trust_bundles(&self, prefix: &str) -> Vec<serde_json::Value> {
        self.list("clustertrustbundles.v1.certificates.k8s.io", prefix)
    }

    fn list(&self, resource: &str, prefix: &str) -> Vec<serde_json::Value> {
        let text = self.kubectl_ok(&["get", resource, "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["spec"]["signerName"].as_str().is_some_and(|s| s.starts_with(prefix)))
            .cloned()
            .collect()
    }

    /// A namespace named `name` exactly, deleted when dropped.
    pub fn namespace_named(&'static self, name: &str) -> Namespace {
        self.kubectl_ok(&["create", "namespace", name]);
        Namespace {
            cluster: self,
            name: name.to_string(),
        }
    }

    /// A token as the kubelet projects one into a pod: a Pod object of service account `sa`
    /// in `ns` (made here; nothing runs it), and a TokenRequest for `audience` bound to it, so
    /// the token dies with the Pod. Returns (the Pod's name, the token).
    pub fn pod_token(&self, ns: &str, sa: &str, audience: &str) -> (String, String) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let pod = format!("{sa}-{}", NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {ns}\nspec:\n  serviceAccountName: {sa}\n  automountServiceAccountToken: false\n  containers:\n  - name: app\n    image: signet.test/none\n"
        ));
        let token = self.token_bound_to(ns, sa, &pod, audience);
        (pod, token)
    }

    /// A kubeconfig at `path` for a client certificate of the cluster's CA: user `cn` in groups
    /// `orgs` (a kubelet is `system:node:<name>` in `system:nodes`).
    pub fn client_kubeconfig(&self, path: &Path, cn: &str, orgs: &[&str]) -> PathBuf {
        let (crt, key) = self.pki.leaf(cn, orgs, &[], false);
        let (crt_path, key_path) = (path.with_extension("crt"), path.with_extension("key"));
        std::fs::write(&crt_path, crt).unwrap();
        write_private(&key_path, &key);
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: u}}\ncurrent-context: test\n",
                self.url,
                self.ca.display(),
                crt_path.display(),
                key_path.display()
            ),
        )
        .unwrap();
        path.to_path_buf()
    }

    /// A token (TokenRequest) of `ns/sa` for `audience`, bound to Pod `pod`.
    pub fn token_bound_to(&self, ns: &str, sa: &str, pod: &str, audience: &str) -> String {
        self.kubectl_ok(&[
            "create",
            "token",
            sa,
            "-n",
            ns,
            "--audience",
            audience,
            "--duration",
            "1h",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            pod,
        ])
        .trim()
        .to_string()
    }
}

/// A namespace a test made; deleted (without waiting) when dropped.
pub struct Namespace {
    cluster: &'static Cluster,
    pub name: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}
