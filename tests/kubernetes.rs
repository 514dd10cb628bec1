//! Signet in a cluster, against the fake Kubernetes API (tests/support/kube.rs, pinned by the
//! real kubectl in tests/kube_api.rs): the authority's Kubernetes mode (TokenReview → RA checks
//! → CertificateSigningRequest → approval → `signet signer controller` → verified chain, the
//! request always deleted) and the signer controller itself, with the real curl and httpbin.

#[path = "support/kube.rs"]
mod kube;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::{FakeKube, User};
use signet_authority::GrpcClient;
use signet_certs::{AuthorityClient, AuthorityError, CertInfo, CsrOrder, Refusal, RefusalKind, WorkloadKey};
use signet_proxy::config::AuthorityEndpoint;
use support::*;

const POLICY: &str = "
defaultSigner: istio-system
approvableSigners: [istio-system, foo, bar]
namespaces:
  foo: {signer: foo}
  bar: {signer: bar}
";

/// The signers' CA secrets, where cert-manager keeps them in Istio's task.
const SECRETS: [(&str, &str); 3] = [
    ("istio-system", "istio-ca-selfsigned"),
    ("foo", "foo-ca-selfsigned"),
    ("bar", "bar-ca-selfsigned"),
];

/// A cluster: the fake API with the signers' secrets, the mesh config mounted as a ConfigMap
/// volume (`..data` symlinks), and tokens for the authority, the controller and the workloads.
struct Cluster {
    api: FakeKube,
    mesh: Mesh,
    authority_kubeconfig: PathBuf,
    controller_kubeconfig: PathBuf,
    /// The mounted ConfigMap's directory; `mesh` in it is Istio's mesh config.
    config_dir: PathBuf,
    generation: u32,
}

impl Cluster {
    fn new() -> Cluster {
        let api = FakeKube::start();
        let mesh = Mesh::new(&["istio-system", "foo", "bar"]);
        for (signer, secret) in SECRETS {
            put_signer_secret(&api, &mesh.path(&format!("signers/{signer}")), secret);
        }
        let authority_token = "authority-token-0123456789abcdef";
        api.add_token(
            authority_token,
            User::service_account("istio-system", "signet-authority", &["https://kubernetes.default.svc"]),
        );
        let controller_token = "controller-token-0123456789abcdef";
        api.add_token(
            controller_token,
            User::service_account("signet-system", "signet-signer", &["https://kubernetes.default.svc"]),
        );
        let authority_kubeconfig = api.kubeconfig(mesh.dir.path(), Some(authority_token));
        let controller_kubeconfig = api.kubeconfig(mesh.dir.path(), Some(controller_token));
        std::fs::write(mesh.path("policy.yaml"), POLICY).unwrap();
        let config_dir = mesh.path("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        let mut cluster = Cluster {
            api,
            mesh,
            authority_kubeconfig,
            controller_kubeconfig,
            config_dir,
            generation: 0,
        };
        let bundle = std::fs::read_to_string(cluster.mesh.bundle()).unwrap();
        cluster.mount_mesh_config(&bundle);
        cluster
    }

    /// Writes Istio's mesh config (`caCertificates` from `bundle`) the way the kubelet updates a
    /// ConfigMap volume: a new timestamped directory, a `..data_tmp` link renamed over `..data`.
    fn mount_mesh_config(&mut self, bundle: &str) {
        self.generation += 1;
        let version = format!("..2026_11_30_00_00_{:02}.{}", self.generation, std::process::id());
        let dir = self.config_dir.join(&version);
        std::fs::create_dir_all(&dir).unwrap();
        let mesh = format!(
            "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_CERT_SIGNER: istio-system\ntrustDomain: cluster.local\n{bundle}"
        );
        std::fs::write(dir.join("mesh"), mesh).unwrap();
        let tmp = self.config_dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.config_dir.join("..data")).unwrap();
        let link = self.config_dir.join("mesh");
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("..data/mesh", &link).unwrap();
        }
    }

    fn mesh_file(&self) -> String {
        self.config_dir.join("mesh").display().to_string()
    }

    /// A projected service-account token (audience istio-ca unless told) in a file.
    fn workload_token(&self, ns: &str, sa: &str, audiences: &[&str]) -> String {
        let token = format!("sa-{ns}-{sa}-{}", audiences.join("-"));
        self.api.add_token(&token, User::service_account(ns, sa, audiences));
        let path = self.mesh.path(&format!("tokens/{ns}-{sa}-{}", audiences.join("-")));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &token).unwrap();
        path.display().to_string()
    }

    fn authority(&self, extra: &[&str]) -> KubeAuthority {
        let ready = ready_path("authority");
        let mut cmd = signet_cmd();
        cmd.args([
            "authority",
            "serve",
            "--kubernetes",
            "--kubeconfig",
            self.authority_kubeconfig.to_str().unwrap(),
            "--signer-secret",
            "istio-system=cert-manager/istio-ca-selfsigned",
            "--bundle",
            &self.mesh_file(),
            "--signing-policy",
            self.mesh.path("policy.yaml").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--watch-interval",
            "200ms",
            "--secret-interval",
            "500ms",
        ])
        .args(extra)
        .arg("--ready-file")
        .arg(&ready);
        let mut proc = Proc::spawn("authority", cmd);
        let listeners = proc.wait_ready_file(&ready, Duration::from_secs(20));
        let addr = |key: &str| listeners[key].as_str().unwrap().parse().unwrap();
        KubeAuthority {
            addr: addr("authority"),
            admin: addr("admin"),
            proc,
        }
    }

    /// The signer controller with the three signers' keys from their Secrets.
    fn controller(&self, extra: &[&str]) -> Controller {
        let keys: Vec<String> = SECRETS
            .iter()
            .flat_map(|(signer, secret)| ["--signer-secret".to_string(), format!("{signer}=cert-manager/{secret}")])
            .collect();
        self.controller_with(&keys, extra)
    }

    fn controller_with(&self, keys: &[String], extra: &[&str]) -> Controller {
        let ready = ready_path("controller");
        let mut cmd = signet_cmd();
        cmd.args([
            "signer",
            "controller",
            "--kubeconfig",
            self.controller_kubeconfig.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
            "--secret-interval",
            "500ms",
        ]);
        cmd.args(keys).args(extra).arg("--ready-file").arg(&ready);
        let mut proc = Proc::spawn("signer controller", cmd);
        let listeners = proc.wait_ready_file(&ready, Duration::from_secs(20));
        let admin = listeners["admin"].as_str().unwrap().parse().unwrap();
        let c = Controller { proc, admin };
        eventually("the controller's first sync", Duration::from_secs(10), || {
            curl(&[&format!("http://{admin}/ready")], &[]).status == 200
        });
        c
    }

    /// The gRPC client a sidecar uses, with `token_file`.
    fn client(&self, authority: &KubeAuthority, token_file: &str) -> GrpcClient {
        GrpcClient::new(AuthorityEndpoint {
            address: authority.addr.to_string(),
            server_name: signet_certs::AUTHORITY_SERVER_NAME.into(),
            ca: format!("{}/ca.crt", self.mesh.signer_dir("istio-system")).into(),
            token_file: Some(token_file.into()),
        })
    }

    /// Sidecar flags for a pod `ns/sa`: identity from the downward API's environment, the token
    /// projected for istio-ca, roots from the authority's answer.
    fn pod(&self, authority: &KubeAuthority, ns: &str, sa: &str) -> (Vec<String>, Vec<(String, String)>) {
        let token = self.workload_token(ns, sa, &["istio-ca"]);
        let args = s(&[
            "--authority",
            &authority.addr.to_string(),
            "--authority-ca",
            &format!("{}/ca.crt", self.mesh.signer_dir("istio-system")),
            "--token-file",
            &token,
            "--watch-interval",
            "200ms",
        ]);
        let env = vec![
            ("POD_NAMESPACE".to_string(), ns.to_string()),
            ("SERVICE_ACCOUNT".to_string(), sa.to_string()),
            ("ISTIO_META_CERT_SIGNER".to_string(), ns.to_string()),
        ];
        (args, env)
    }

    fn sidecar(&self, name: &str, (args, env): (Vec<String>, Vec<(String, String)>), extra: &[String]) -> Sidecar {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut all = args;
        all.extend_from_slice(extra);
        Sidecar::start_with_env(name, &all, &env)
    }

    fn kubectl(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.api.kubeconfig(self.mesh.dir.path(), None))
            .arg("--cache-dir")
            .arg(self.mesh.path("kube-cache"))
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .expect("kubectl must be installed (apt-get install kubectl)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    fn csr_names(&self) -> Vec<String> {
        self.api
            .csrs()
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn wait_no_csrs(&self) {
        eventually("every CSR deleted", Duration::from_secs(10), || {
            self.api.csrs().is_empty()
        });
    }
}

struct KubeAuthority {
    proc: Proc,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl KubeAuthority {
    fn metric(&self, sample: &str) -> u64 {
        let body = curl(&[&format!("http://{}/metrics", self.admin)], &[]).body;
        body.lines()
            .find_map(|l| l.strip_prefix(sample).map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0)
    }
}

struct Controller {
    proc: Proc,
    admin: std::net::SocketAddr,
}

/// A signer directory (`tls.crt`, `tls.key`, `ca.crt`) as a cert-manager CA Secret.
fn put_signer_secret(api: &FakeKube, dir: &Path, secret: &str) {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let (crt, key, ca) = (read("tls.crt"), read("tls.key"), read("ca.crt"));
    api.put_secret(
        "cert-manager",
        secret,
        &[("tls.crt", &crt), ("tls.key", &key), ("ca.crt", &ca)],
    );
}

fn order(signer: Option<&str>, ns: &str, sa: &str) -> CsrOrder {
    let key = WorkloadKey::generate().unwrap();
    CsrOrder {
        csr_pem: key.request(&spiffe(ns, sa).parse().unwrap(), &[]).unwrap().pem,
        signer: signer.map(str::to_string),
        ttl: None,
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn refusal(result: Result<signet_certs::IssuedChain, AuthorityError>) -> (Refusal, String) {
    match result {
        Err(AuthorityError::Refused { reason, message }) => (reason, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_scenario_through_the_kubernetes_csr_api() {
    let c = Cluster::new();
    let _controller = c.controller(&[]);
    let authority = c.authority(&[]);
    let app_foo = Httpbin::start(c.mesh.dir.path(), "httpbin-foo");
    let app_bar = Httpbin::start(c.mesh.dir.path(), "httpbin-bar");
    let mut inbound = Vec::new();
    for (ns, app) in [("foo", &app_foo), ("bar", &app_bar)] {
        let side = c.sidecar(
            &format!("sidecar httpbin.{ns}"),
            c.pod(&authority, ns, "httpbin"),
            &s(&["--inbound", &format!("127.0.0.1:0={}", app.addr), "--protocol", "http"]),
        );
        side.wait_ready(Duration::from_secs(20));
        inbound.push(side);
    }
    let mut extra = s(&["--outbound", "127.0.0.1:0"]);
    for (ns, side) in [("foo", &inbound[0]), ("bar", &inbound[1])] {
        extra.push("--service".into());
        extra.push(format!(
            "httpbin.{ns}:8000={},{}",
            side.inbound[0],
            spiffe(ns, "httpbin")
        ));
    }
    let curl_side = c.sidecar("sidecar curl.foo", c.pod(&authority, "foo", "curl"), &extra);
    curl_side.wait_ready(Duration::from_secs(20));

    // Each sidecar holds a certificate of its namespace's signer, and trusts only that signer.
    for (side, ns, sa) in [
        (&inbound[0], "foo", "httpbin"),
        (&inbound[1], "bar", "httpbin"),
        (&curl_side, "foo", "curl"),
    ] {
        let certs = side.certs();
        let leaf = &certs["certificates"][0]["cert_chain"][0];
        assert_eq!(
            leaf["subject_alt_names"][0]["uri"].as_str(),
            Some(spiffe(ns, sa).as_str()),
            "{certs}"
        );
        let roots = certs["certificates"][0]["ca_cert"].as_array().unwrap();
        assert_eq!(roots.len(), 1, "{certs}");
    }

    let proxy = curl_side.outbound.unwrap();
    let bar_before = app_bar.requests();
    let ok = curl_via(proxy, "http://httpbin.foo:8000/html");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("Moby-Dick"), "{}", ok.body);
    let cross = curl_via(proxy, "http://httpbin.bar:8000/html");
    assert_eq!(cross.status, 503, "{cross:?}");
    assert!(cross.body.contains("CERTIFICATE_VERIFY_FAILED"), "{}", cross.body);
    assert_eq!(app_bar.requests(), bar_before, "nothing reached httpbin.bar");

    // Three requests went through the CSR API, each deleted once decided.
    let created = c.api.created_csrs();
    assert!(created.len() >= 3, "{created:?}");
    assert!(created.iter().all(|n| n.starts_with("csr-workload-")), "{created:?}");
    c.wait_no_csrs();
    assert!(authority.metric("citadel_server_success_cert_issuance_count ") >= 3);
    assert_eq!(authority.metric("citadel_server_authentication_failure_count "), 0);
    let in_flight = curl(&[&format!("http://{}/csrs", authority.admin)], &[]).body;
    assert!(in_flight.contains("\"items\": []"), "{in_flight}");
}

#[test]
fn a_denied_request_is_retried_and_served_once_a_person_approves() {
    let c = Cluster::new();
    let _controller = c.controller(&[]);
    let authority = c.authority(&["--manual-approval"]);
    let side = c.sidecar(
        "sidecar httpbin.foo",
        c.pod(&authority, "foo", "httpbin"),
        &s(&["--outbound", "127.0.0.1:0"]),
    );

    // The first request waits for a person; they deny it.
    let mut first = String::new();
    eventually("a pending CSR", Duration::from_secs(10), || {
        first = c.csr_names().into_iter().next().unwrap_or_default();
        !first.is_empty()
    });
    let (code, out) = c.kubectl(&["get", "csr", &first]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Pending"), "{out}");
    let in_flight = curl(&[&format!("http://{}/csrs", authority.admin)], &[]).body;
    assert!(in_flight.contains(&first), "{in_flight}");
    assert!(in_flight.contains("system:serviceaccount:foo:httpbin"), "{in_flight}");
    let (code, out) = c.kubectl(&["certificate", "deny", &first]);
    assert_eq!(code, 0, "{out}");
    assert!(
        side.proc
            .logged_within("was denied: KubectlDeny", Duration::from_secs(10)),
        "{}",
        side.proc.log()
    );
    assert_eq!(side.admin_get("/ready").status, 503);

    // The sidecar tries again (backoff); the next request is approved and signed.
    let mut second = String::new();
    eventually("a second CSR", Duration::from_secs(20), || {
        second = c.csr_names().into_iter().find(|n| *n != first).unwrap_or_default();
        !second.is_empty()
    });
    let (code, out) = c.kubectl(&["certificate", "approve", &second]);
    assert_eq!(code, 0, "{out}");
    side.wait_ready(Duration::from_secs(20));
    c.wait_no_csrs();
    assert!(authority.metric("citadel_server_csr_sign_err_count{error_type=\"CSRDenied\"} ") >= 1);
}

#[test]
fn failed_and_never_signed_requests_get_retriable_errors_and_are_deleted() {
    let c = Cluster::new();
    // No controller: nothing signs. The test plays the signer that gives up.
    let authority = c.authority(&["--csr-timeout", "3s"]);
    let token = c.workload_token("foo", "httpbin", &["istio-ca"]);
    let client = c.client(&authority, &token);

    let api = &c.api;
    let failer = std::thread::scope(|scope| {
        let marker = scope.spawn(|| {
            let start = Instant::now();
            loop {
                if let Some(name) = api
                    .csrs()
                    .iter()
                    .find(|o| o["status"]["conditions"].to_string().contains("Approved"))
                    .and_then(|o| o["metadata"]["name"].as_str().map(str::to_string))
                {
                    api.fail_csr(&name, "SigningError", "the CA key is on an unplugged HSM");
                    return name;
                }
                assert!(start.elapsed() < Duration::from_secs(10), "no approved CSR to fail");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let result = block(client.sign(&order(None, "foo", "httpbin")));
        (marker.join().unwrap(), result)
    });
    let (failed_name, result) = failer;
    let (reason, message) = refusal(result);
    assert_eq!(reason, Refusal::CsrFailed, "{message}");
    assert_eq!(
        reason.kind(),
        RefusalKind::Failed,
        "Failed is retriable (gRPC Internal)"
    );
    assert!(message.contains("unplugged HSM"), "{message}");
    assert!(message.contains(&failed_name), "{message}");
    c.wait_no_csrs();

    // Never signed: the wait ends at --csr-timeout, the request is deleted.
    let started = Instant::now();
    let (reason, message) = refusal(block(client.sign(&order(None, "foo", "httpbin"))));
    assert_eq!(reason, Refusal::CsrTimeout, "{message}");
    assert_eq!(
        reason.kind(),
        RefusalKind::Failed,
        "a timeout is retriable (gRPC Internal)"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(message.contains("signet signer controller"), "{message}");
    c.wait_no_csrs();
    assert_eq!(c.api.created_csrs().len(), 2);
    assert!(authority.metric("citadel_server_csr_sign_err_count{error_type=\"CSRTimeout\"} ") >= 1);

    // The caller goes away while its CSR waits (for a person, here, up to 60 s): the request is
    // deleted at once, not left for the timeout.
    let patient = c.authority(&["--manual-approval"]);
    let client = c.client(&patient, &token);
    let gave_up = block(async {
        tokio::time::timeout(Duration::from_secs(2), client.sign(&order(None, "foo", "httpbin"))).await
    });
    assert!(gave_up.is_err(), "no answer while the CSR awaits approval");
    assert!(
        patient.proc.logged_within(
            "the caller went away; deleting CertificateSigningRequest",
            Duration::from_secs(10)
        ),
        "{}",
        patient.proc.log()
    );
    c.wait_no_csrs();
    assert_eq!(c.api.created_csrs().len(), 3);
}

#[test]
fn callers_and_chains_are_checked() {
    let c = Cluster::new();
    let _controller = c.controller(&[]);
    let authority = c.authority(&[]);

    // A token for another audience, and a token that is not a service account's.
    let wrong_audience = c.workload_token("foo", "httpbin", &["vault"]);
    let (reason, message) = refusal(block(
        c.client(&authority, &wrong_audience)
            .sign(&order(None, "foo", "httpbin")),
    ));
    assert_eq!(reason, Refusal::UnknownToken, "{message}");
    assert_eq!(reason.kind(), RefusalKind::Unauthenticated);
    let person = c.mesh.path("tokens/alice");
    std::fs::write(&person, "alice-token-0123456789abcdef").unwrap();
    c.api.add_token(
        "alice-token-0123456789abcdef",
        User {
            username: "alice".into(),
            groups: vec!["system:authenticated".into()],
            audiences: vec!["istio-ca".into()],
        },
    );
    let (reason, message) = refusal(block(
        c.client(&authority, person.to_str().unwrap())
            .sign(&order(None, "foo", "httpbin")),
    ));
    assert_eq!(reason, Refusal::NotServiceAccount, "{message}");
    assert!(message.contains("alice"), "{message}");

    // Namespace foo cannot obtain signer bar; no CSR is even created.
    let foo = c.workload_token("foo", "httpbin", &["istio-ca"]);
    let (reason, message) = refusal(block(c.client(&authority, &foo).sign(&order(
        Some("bar"),
        "foo",
        "httpbin",
    ))));
    assert_eq!(reason, Refusal::SignerNotAllowedForNamespace, "{message}");
    assert!(c.api.created_csrs().is_empty());
    assert_eq!(authority.metric("citadel_server_authentication_failure_count "), 2);

    // A good request: the chain anchors to foo's root from the mesh config.
    let issued = block(c.client(&authority, &foo).sign(&order(None, "foo", "httpbin"))).unwrap();
    let foo_root = std::fs::read(format!("{}/ca.crt", c.mesh.signer_dir("foo"))).unwrap();
    assert_eq!(issued.roots, signet_certs::parse_certs(&foo_root, "foo").unwrap());

    // foo's key replaced by one the mesh config does not know: the chain is refused.
    let rogue = c.mesh.path("rogue");
    signet_ok(&["signer", "new", "foo", "--dir", rogue.to_str().unwrap()]);
    put_signer_secret(&c.api, &rogue.join("foo"), "foo-ca-selfsigned");
    let mut last = None;
    eventually("a chain from the rogue key refused", Duration::from_secs(20), || {
        let (reason, message) = refusal_or_none(block(c.client(&authority, &foo).sign(&order(None, "foo", "httpbin"))));
        last = Some(message);
        reason == Some(Refusal::ChainUntrusted)
    });
    assert!(last.unwrap().contains("does not verify against"));
    c.wait_no_csrs();
}

fn refusal_or_none(result: Result<signet_certs::IssuedChain, AuthorityError>) -> (Option<Refusal>, String) {
    match result {
        Err(AuthorityError::Refused { reason, message }) => (Some(reason), message),
        Err(e) => (None, e.to_string()),
        Ok(_) => (None, "signed".into()),
    }
}

#[test]
fn a_chain_through_an_intermediate_is_accepted() {
    let c = Cluster::new();
    // foo signs with an intermediate under a root the mesh config names for foo.
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut root = rcgen::CertificateParams::default();
    root.distinguished_name.push(rcgen::DnType::CommonName, "foo root");
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(1));
    root.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(root, root_key);
    let int_key = rcgen::KeyPair::generate().unwrap();
    let mut int = rcgen::CertificateParams::default();
    int.distinguished_name
        .push(rcgen::DnType::CommonName, "foo intermediate");
    int.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    int.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let int_cert = int.signed_by(&int_key, &root_issuer).unwrap();
    let tls_crt = format!("{}{}", int_cert.pem(), root_cert.pem());
    c.api.put_secret(
        "cert-manager",
        "foo-ca-selfsigned",
        &[
            ("tls.crt", tls_crt.as_bytes()),
            ("tls.key", int_key.serialize_pem().as_bytes()),
            ("ca.crt", root_cert.pem().as_bytes()),
        ],
    );
    let mut c = c;
    let bundle = format!(
        "caCertificates:\n- pem: |\n{}  certSigners: [clusterissuers.cert-manager.io/foo]\n- pem: |\n{}  certSigners: [clusterissuers.cert-manager.io/istio-system]\n",
        indent(&root_cert.pem()),
        indent(&std::fs::read_to_string(format!("{}/ca.crt", c.mesh.signer_dir("istio-system"))).unwrap()),
    );
    c.mount_mesh_config(&bundle);
    let _controller = c.controller(&[]);
    let authority = c.authority(&[]);
    let foo = c.workload_token("foo", "httpbin", &["istio-ca"]);
    let issued = block(c.client(&authority, &foo).sign(&order(None, "foo", "httpbin"))).unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf and intermediate");
    assert_eq!(issued.chain[1].as_ref(), int_cert.der().as_ref());
    assert_eq!(issued.roots.len(), 1);
    assert_eq!(issued.roots[0].as_ref(), root_cert.der().as_ref());
    c.wait_no_csrs();
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

#[test]
fn the_signer_controller_signs_only_approved_requests_of_its_signers_within_its_cap() {
    let c = Cluster::new();
    let controller = c.controller(&["--max-ttl", "24h", "--publish-trust-bundles"]);
    let manifest = |name: &str, signer: &str, metadata: &str, spec: &str| -> PathBuf {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.request(&spiffe("foo", "web").parse().unwrap(), &[]).unwrap();
        let request = base64_encode(csr.pem.as_bytes());
        let path = c.mesh.path(&format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\n{metadata}spec:\n  request: {request}\n  signerName: {signer}\n{}",
                if spec.contains("usages") {
                    spec.to_string()
                } else {
                    format!("{spec}  usages: [digital signature, key encipherment, server auth, client auth]\n")
                }
            ),
        )
        .unwrap();
        path
    };
    let apply = |path: PathBuf| {
        let (code, out) = c.kubectl(&["create", "-f", path.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}");
    };
    let certificate = |name: &str| -> Option<CertInfo> {
        let csr = c.api.csrs().into_iter().find(|o| o["metadata"]["name"] == name)?;
        let b64 = csr["status"]["certificate"].as_str()?;
        let pem = base64_decode(b64);
        let certs = signet_certs::parse_certs(&pem, name).unwrap();
        Some(CertInfo::parse(&certs[0]).unwrap())
    };
    // 48 h asked through expirationSeconds (over the cap); 2 h through cert-manager's
    // annotation only.
    apply(manifest(
        "long",
        "clusterissuers.cert-manager.io/foo",
        "",
        "  expirationSeconds: 172800\n",
    ));
    apply(manifest(
        "annotated",
        "clusterissuers.cert-manager.io/bar",
        "  annotations:\n    experimental.cert-manager.io/request-duration: 2h0m0s\n",
        "",
    ));
    apply(manifest("other", "example.com/not-ours", "", ""));
    // A request for a CA-signing usage: refused, and marked Failed with why.
    apply(manifest(
        "ca-usage",
        "clusterissuers.cert-manager.io/foo",
        "",
        "  usages: [digital signature, cert sign]\n",
    ));
    std::thread::sleep(Duration::from_secs(1));
    assert!(certificate("long").is_none(), "not approved: not signed");
    for name in ["long", "annotated", "other", "ca-usage"] {
        let (code, out) = c.kubectl(&["certificate", "approve", name]);
        assert_eq!(code, 0, "{out}");
    }
    eventually("both of its signers' requests signed", Duration::from_secs(10), || {
        certificate("long").is_some() && certificate("annotated").is_some()
    });
    // Lifetimes to the minute (a signer may backdate notBefore for clock skew).
    let lifetime = |i: &CertInfo| i.not_after.duration_since(i.not_before).unwrap().as_secs() / 60;
    let long = certificate("long").unwrap();
    assert!(
        (24 * 60..=24 * 60 + 5).contains(&lifetime(&long)),
        "capped at 24h: {}m",
        lifetime(&long)
    );
    assert_eq!(long.uris, vec![spiffe("foo", "web")]);
    let annotated = lifetime(&certificate("annotated").unwrap());
    assert!((120..=125).contains(&annotated), "2h from the annotation: {annotated}m");
    std::thread::sleep(Duration::from_secs(1));
    assert!(certificate("other").is_none(), "another signer's request is left alone");
    let (_, table) = c.kubectl(&["get", "csr"]);
    assert!(table.contains("Approved,Issued"), "{table}");
    let start = Instant::now();
    while !c.kubectl(&["get", "csr", "ca-usage"]).1.contains("Approved,Failed") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not marked Failed: {}\n{}",
            c.kubectl(&["get", "csr"]).1,
            controller.proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = c
        .api
        .csrs()
        .into_iter()
        .find(|o| o["metadata"]["name"] == "ca-usage")
        .unwrap();
    let condition = failed["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()
        .clone();
    assert_eq!(condition["reason"], "SignerValidationFailure");
    assert!(
        condition["message"].as_str().unwrap().contains("cert sign"),
        "{condition}"
    );
    assert!(failed["status"]["certificate"].is_null(), "{failed}");

    // Its signers' roots are published as ClusterTrustBundles.
    eventually("three ClusterTrustBundles", Duration::from_secs(10), || {
        c.api.cluster_trust_bundles().len() == 3
    });
    let bundles = c.api.cluster_trust_bundles();
    let foo = bundles
        .iter()
        .find(|b| b["spec"]["signerName"] == "clusterissuers.cert-manager.io/foo")
        .unwrap();
    assert_eq!(foo["metadata"]["name"], "clusterissuers.cert-manager.io:foo:signet");
    let foo_root = std::fs::read_to_string(format!("{}/ca.crt", c.mesh.signer_dir("foo"))).unwrap();
    assert_eq!(foo["spec"]["trustBundle"].as_str().unwrap().trim(), foo_root.trim());
    let metrics = curl(&[&format!("http://{}/metrics", controller.admin)], &[]).body;
    assert!(
        metrics.contains(
            "signet_signer_requests_total{signer=\"clusterissuers.cert-manager.io/foo\",outcome=\"issued\"} 1"
        ),
        "{metrics}"
    );
    let _ = &controller.proc;
}

#[test]
fn rotation_through_the_mounted_bundle_and_renewal_through_the_csr_api() {
    let mut c = Cluster::new();
    let _controller = c.controller(&[]);
    let authority = c.authority(&["--cluster-trust-bundles"]);
    // Renewal through the CSR API. The signer backdates notBefore by a minute, so 1 % of the
    // life has passed when the certificate arrives: the late renewal comes after 5 % of what is
    // left (about 30 s), which the wait below must cover with room.
    let mut side = c.sidecar(
        "sidecar httpbin.foo",
        c.pod(&authority, "foo", "httpbin"),
        &s(&["--ttl", "10m", "--renew-at", "0.01", "--outbound", "127.0.0.1:0"]),
    );
    side.wait_ready(Duration::from_secs(20));
    eventually("a renewal", Duration::from_secs(60), || {
        side.metric("signet_identity_renewals_total") >= 1
    });
    assert!(c.api.created_csrs().len() >= 2);
    c.wait_no_csrs();

    // foo's CA is replaced (cert-manager rotated its secret). Until its root is in the bundle,
    // the new chains are refused...
    let foo = c.workload_token("foo", "httpbin", &["istio-ca"]);
    let next = c.mesh.path("next");
    signet_ok(&["signer", "new", "foo", "--dir", next.to_str().unwrap()]);
    put_signer_secret(&c.api, &next.join("foo"), "foo-ca-selfsigned");
    eventually("the new key in use and refused", Duration::from_secs(20), || {
        refusal_or_none(block(c.client(&authority, &foo).sign(&order(None, "foo", "httpbin")))).0
            == Some(Refusal::ChainUntrusted)
    });
    // ... and once the mounted mesh config (symlink swap) adds it, they are trusted, with both
    // roots handed out: no restart.
    let old = std::fs::read_to_string(c.mesh.bundle()).unwrap();
    let next_root = std::fs::read_to_string(next.join("foo/ca.crt")).unwrap();
    c.mount_mesh_config(&format!(
        "{old}- pem: |\n{}  certSigners: [clusterissuers.cert-manager.io/foo]\n",
        indent(&next_root)
    ));
    let mut issued = None;
    eventually("the new root trusted", Duration::from_secs(20), || {
        issued = block(c.client(&authority, &foo).sign(&order(None, "foo", "httpbin"))).ok();
        issued.is_some()
    });
    assert_eq!(issued.unwrap().roots.len(), 2, "old and new root during the rotation");

    // A root published as a ClusterTrustBundle is handed out too.
    let extra = c.mesh.path("extra");
    signet_ok(&["signer", "new", "foo", "--dir", extra.to_str().unwrap()]);
    let extra_root = std::fs::read_to_string(extra.join("foo/ca.crt")).unwrap();
    c.api.put_cluster_trust_bundle(
        "clusterissuers.cert-manager.io:foo:extra",
        "clusterissuers.cert-manager.io/foo",
        &extra_root,
    );
    eventually(
        "the ClusterTrustBundle's root handed out",
        Duration::from_secs(20),
        || block(c.client(&authority, &foo).sign(&order(None, "foo", "httpbin"))).is_ok_and(|i| i.roots.len() == 3),
    );
    assert!(side.proc.is_running());
    c.wait_no_csrs();
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).unwrap()
}

#[test]
fn the_signer_controller_takes_keys_from_signer_directories_too() {
    let c = Cluster::new();
    let signers = c.mesh.path("signers").display().to_string();
    let _controller = c.controller_with(&s(&["--signers-dir", &signers]), &[]);
    let authority = c.authority(&[]);
    let token = c.workload_token("bar", "httpbin", &["istio-ca"]);
    let issued = block(c.client(&authority, &token).sign(&order(None, "bar", "httpbin"))).unwrap();
    let bar_root = std::fs::read(format!("{}/ca.crt", c.mesh.signer_dir("bar"))).unwrap();
    assert_eq!(issued.roots, signet_certs::parse_certs(&bar_root, "bar").unwrap());
    let leaf = CertInfo::parse(&issued.chain[0]).unwrap();
    assert_eq!(leaf.uris, vec![spiffe("bar", "httpbin")]);
    c.wait_no_csrs();
}
