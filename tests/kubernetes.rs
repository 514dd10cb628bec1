//! Signet in a cluster, on the real control plane (tests/support/cluster.rs: etcd,
//! kube-apiserver with RBAC, kube-controller-manager): the authority's Kubernetes mode
//! (TokenReview → RA checks → CertificateSigningRequest → approval → `signet signer
//! controller` → verified chain, the request always deleted) and the signer controller itself,
//! with the real curl, httpbin and kubectl. Each runs under the RBAC of
//! examples/kubernetes/controller-variant, made its own: every test has a signer domain, a
//! namespace for the signers' keys and its service accounts, and two tenant namespaces, so the
//! tests share one API server without seeing each other's requests. cert-manager, which also
//! runs in this cluster, signs only its own domains and leaves these alone.

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cluster::{Namespace, cluster};
use signet_authority::GrpcClient;
use signet_certs::{AuthorityClient, AuthorityError, CertInfo, CsrOrder, Refusal, RefusalKind, WorkloadKey};
use signet_proxy::config::AuthorityEndpoint;
use support::*;

/// The signers' keys, where controller-variant keeps them (each test in its own namespace).
const SECRETS: [(&str, &str); 3] = [("istio-system", "istio-ca"), ("foo", "foo-ca"), ("bar", "bar-ca")];

/// The RBAC documents of an example manifest, made this test's own: its namespace for every
/// namespaced object and service account, its name on the cluster-scoped ones, its signer
/// domain in `resourceNames`. The rules themselves are as written.
fn rbac_of(manifest: &str, ns: &str, domain: &str) -> String {
    rbac_tagged(manifest, ns, domain, "")
}

/// [`rbac_of`] with `tag` after each name, so that copies of one manifest live side by side.
/// The authority's signer key (cert-manager's `istio-ca-selfsigned` in `cert-manager`) becomes
/// the test's `istio-ca` in its namespace.
fn rbac_tagged(manifest: &str, ns: &str, domain: &str, tag: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/kubernetes")
        .join(manifest);
    let text = std::fs::read_to_string(&path).unwrap();
    let kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    text.split("\n---\n")
        .filter(|doc| kinds.iter().any(|k| doc.contains(&format!("\nkind: {k}\n"))))
        .map(|doc| {
            let mut out = String::new();
            for line in doc.lines() {
                let namespaced = ["signet-signers", "istio-system", "cert-manager"]
                    .iter()
                    .find_map(|n| line.strip_suffix(&format!("namespace: {n}")));
                let line = if let Some(indent) = namespaced {
                    format!("{indent}namespace: {ns}")
                } else if let Some((indent, name)) = line.split_once("name: signet-") {
                    format!("{indent}name: signet-{name}-{ns}{tag}")
                } else {
                    line.replace("clusterissuers.cert-manager.io/", &format!("{domain}/"))
                        .replace("istio-ca-selfsigned", "istio-ca")
                };
                out.push_str(&line);
                out.push('\n');
            }
            out
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// One test's part of the cluster: its signer domain, the namespace holding the signers' keys
/// and the authority's and controller's service accounts, the tenants' namespaces, and the
/// mesh config mounted as a ConfigMap volume (`..data` symlinks).
struct Env {
    c: &'static cluster::Cluster,
    /// `kt-<n>`: the signers' Secrets, the authority's and the controller's service accounts.
    ns: Namespace,
    /// The tenants: `kt-<n>-foo` (signer foo) and `kt-<n>-bar` (signer bar).
    tenants: [Namespace; 2],
    /// `kt-<n>.signet.test`: this test's signers are `<domain>/istio-system`, `/foo`, `/bar`.
    domain: String,
    mesh: Mesh,
    authority_kubeconfig: PathBuf,
    controller_kubeconfig: PathBuf,
    /// The mounted ConfigMap's directory; `mesh` in it is Istio's mesh config.
    config_dir: PathBuf,
    generation: u32,
}

impl Env {
    fn new() -> Env {
        let c = cluster();
        let ns = c.namespace("kt");
        let tenants = [
            c.namespace_named(&format!("{}-foo", ns.name)),
            c.namespace_named(&format!("{}-bar", ns.name)),
        ];
        let domain = format!("{}.signet.test", ns.name);
        let mesh = Mesh::with_domain(&["istio-system", "foo", "bar"], &domain);
        c.apply(&rbac_of(
            "controller-variant/30-signet-authority.yaml",
            &ns.name,
            &domain,
        ));
        c.apply(&rbac_of(
            "controller-variant/10-signet-signer-controller.yaml",
            &ns.name,
            &domain,
        ));
        let api_audience = "https://kubernetes.default.svc.cluster.local";
        let kubeconfig = |sa: &str| {
            let token = c.token(&ns.name, &format!("{sa}-{}", ns.name), api_audience);
            c.kubeconfig_for_token(&mesh.path(&format!("{sa}.kubeconfig")), &token)
        };
        let authority_kubeconfig = kubeconfig("signet-authority");
        let controller_kubeconfig = kubeconfig("signet-signer-controller");
        let policy = format!(
            "defaultSigner: istio-system\napprovableSigners: [istio-system, foo, bar]\nnamespaces:\n  {}: {{signer: foo}}\n  {}: {{signer: bar}}\n",
            tenants[0].name, tenants[1].name
        );
        std::fs::write(mesh.path("policy.yaml"), policy).unwrap();
        let config_dir = mesh.path("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        let mut env = Env {
            c,
            ns,
            tenants,
            domain,
            mesh,
            authority_kubeconfig,
            controller_kubeconfig,
            config_dir,
            generation: 0,
        };
        for (signer, secret) in SECRETS {
            env.put_signer_secret(&env.mesh.path(&format!("signers/{signer}")), secret);
        }
        let bundle = std::fs::read_to_string(env.mesh.bundle()).unwrap();
        env.mount_mesh_config(&bundle);
        env
    }

    /// The tenant's namespace: `foo` or `bar`.
    fn tenant(&self, signer: &str) -> &str {
        match signer {
            "foo" => &self.tenants[0].name,
            "bar" => &self.tenants[1].name,
            other => panic!("no tenant {other}"),
        }
    }

    fn signer(&self, name: &str) -> String {
        format!("{}/{name}", self.domain)
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

    /// A signer directory (`tls.crt`, `tls.key`, `ca.crt`) as a Secret in cert-manager's
    /// layout, in this test's namespace.
    fn put_signer_secret(&self, dir: &Path, secret: &str) {
        self.put_secret(
            secret,
            &std::fs::read_to_string(dir.join("tls.crt")).unwrap(),
            &std::fs::read_to_string(dir.join("tls.key")).unwrap(),
            &std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
        );
    }

    fn put_secret(&self, secret: &str, crt: &str, key: &str, ca: &str) {
        let b64 = |t: &str| base64_encode(t.as_bytes());
        self.c.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {secret}\n  namespace: {}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n",
            self.ns.name,
            b64(crt),
            b64(key),
            b64(ca)
        ));
    }

    /// A projected service-account token (audience istio-ca unless told) of a Pod of `sa` in
    /// tenant `signer`'s namespace, in a file.
    fn workload_token(&self, signer: &str, sa: &str, audience: &str) -> String {
        let ns = self.tenant(signer);
        let (_, token) = self.c.pod_token(ns, sa, audience);
        let path = self.mesh.path(&format!("tokens/{ns}-{sa}-{audience}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &token).unwrap();
        path.display().to_string()
    }

    fn authority_user(&self) -> String {
        format!("system:serviceaccount:{0}:signet-authority-{0}", self.ns.name)
    }

    fn authority(&self, extra: &[&str]) -> KubeAuthority {
        let ready = ready_path("authority");
        let mut cmd = self.authority_command(&self.authority_kubeconfig, extra);
        cmd.arg("--ready-file").arg(&ready);
        let mut proc = Proc::spawn("authority", cmd);
        let listeners = proc.wait_ready_file(&ready, Duration::from_secs(20));
        let addr = |key: &str| listeners[key].as_str().unwrap().parse().unwrap();
        KubeAuthority {
            addr: addr("authority"),
            admin: addr("admin"),
            proc,
        }
    }

    /// `signet authority serve --kubernetes` as this test runs it, as the user of `kubeconfig`.
    fn authority_command(&self, kubeconfig: &Path, extra: &[&str]) -> std::process::Command {
        let mut cmd = signet_cmd();
        cmd.args([
            "authority",
            "serve",
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--signer-secret",
            &format!("istio-system={}/istio-ca", self.ns.name),
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
        .env("CERT_SIGNER_DOMAIN", &self.domain);
        cmd
    }

    /// The signer controller with the three signers' keys from their Secrets.
    fn controller(&self, extra: &[&str]) -> Controller {
        self.controller_with(&self.controller_keys(), extra)
    }

    fn controller_with(&self, keys: &[String], extra: &[&str]) -> Controller {
        let ready = ready_path("controller");
        let mut cmd = self.controller_command(&self.controller_kubeconfig, keys, extra);
        cmd.arg("--ready-file").arg(&ready);
        let mut proc = Proc::spawn("signer controller", cmd);
        let listeners = proc.wait_ready_file(&ready, Duration::from_secs(20));
        let admin = listeners["admin"].as_str().unwrap().parse().unwrap();
        let c = Controller { proc, admin };
        eventually("the controller's first sync", Duration::from_secs(10), || {
            curl(&[&format!("http://{admin}/ready")], &[]).status == 200
        });
        c
    }

    /// `signet signer controller` as this test runs it, as the user of `kubeconfig`.
    fn controller_command(&self, kubeconfig: &Path, keys: &[String], extra: &[&str]) -> std::process::Command {
        let mut cmd = signet_cmd();
        cmd.args([
            "signer",
            "controller",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--admin",
            "127.0.0.1:0",
            "--secret-interval",
            "500ms",
        ]);
        cmd.args(keys).args(extra).env("CERT_SIGNER_DOMAIN", &self.domain);
        cmd
    }

    /// The controller's `--signer-secret` flags: the three signers' keys from their Secrets.
    fn controller_keys(&self) -> Vec<String> {
        SECRETS
            .iter()
            .flat_map(|(signer, secret)| {
                [
                    "--signer-secret".to_string(),
                    format!("{signer}={}/{secret}", self.ns.name),
                ]
            })
            .collect()
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

    /// Sidecar flags for a pod of `sa` in tenant `signer`: identity from the downward API's
    /// environment, the token projected for istio-ca, roots from the authority's answer.
    fn pod(&self, authority: &KubeAuthority, signer: &str, sa: &str) -> (Vec<String>, Vec<(String, String)>) {
        let token = self.workload_token(signer, sa, "istio-ca");
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
            ("POD_NAMESPACE".to_string(), self.tenant(signer).to_string()),
            ("SERVICE_ACCOUNT".to_string(), sa.to_string()),
            ("ISTIO_META_CERT_SIGNER".to_string(), signer.to_string()),
            ("CERT_SIGNER_DOMAIN".to_string(), self.domain.clone()),
        ];
        (args, env)
    }

    fn sidecar(&self, name: &str, (args, env): (Vec<String>, Vec<(String, String)>), extra: &[String]) -> Sidecar {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut all = args;
        all.extend_from_slice(extra);
        Sidecar::start_with_env(name, &all, &env)
    }

    /// The real kubectl, as the cluster's admin: (exit code, stdout and stderr).
    fn kubectl(&self, args: &[&str]) -> (i32, String) {
        let out = self.c.kubectl(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// This test's CSRs (its signer domain's), as they are now.
    fn csrs(&self) -> Vec<serde_json::Value> {
        self.c.csrs(&format!("{}/", self.domain))
    }

    fn csr_names(&self) -> Vec<String> {
        self.csrs()
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// The CSRs this test's authority created, deleted or not (the API server's audit log).
    fn created_csrs(&self) -> Vec<String> {
        self.c.csrs_created_by(&self.authority_user())
    }

    fn wait_no_csrs(&self) {
        eventually("every CSR deleted", Duration::from_secs(10), || self.csrs().is_empty());
    }

    /// Marks CSR `name` Failed, as a signer that gives up does (the status subresource, as the
    /// admin; the Approved condition stays).
    fn fail_csr(&self, name: &str, reason: &str, message: &str) {
        let patch = serde_json::json!([{"op": "add", "path": "/status/conditions/-", "value": {
            "type": "Failed", "status": "True", "reason": reason, "message": message}}]);
        self.c.kubectl_ok(&[
            "patch",
            "csr",
            name,
            "--subresource=status",
            "--type=json",
            "-p",
            &patch.to_string(),
        ]);
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

fn order(env: &Env, signer: Option<&str>, tenant: &str, sa: &str) -> CsrOrder {
    let key = WorkloadKey::generate().unwrap();
    CsrOrder {
        csr_pem: key
            .request(&spiffe(env.tenant(tenant), sa).parse().unwrap(), &[])
            .unwrap()
            .pem,
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
    let c = Env::new();
    let _controller = c.controller(&[]);
    let authority = c.authority(&[]);
    let app_foo = Httpbin::start(c.mesh.dir.path(), "httpbin-foo");
    let app_bar = Httpbin::start(c.mesh.dir.path(), "httpbin-bar");
    let mut inbound = Vec::new();
    for (tenant, app) in [("foo", &app_foo), ("bar", &app_bar)] {
        let side = c.sidecar(
            &format!("sidecar httpbin.{tenant}"),
            c.pod(&authority, tenant, "httpbin"),
            &s(&["--inbound", &format!("127.0.0.1:0={}", app.addr), "--protocol", "http"]),
        );
        side.wait_ready(Duration::from_secs(20));
        inbound.push(side);
    }
    let mut extra = s(&["--outbound", "127.0.0.1:0"]);
    for (tenant, side) in [("foo", &inbound[0]), ("bar", &inbound[1])] {
        extra.push("--service".into());
        extra.push(format!(
            "httpbin.{tenant}:8000={},{}",
            side.inbound[0],
            spiffe(c.tenant(tenant), "httpbin")
        ));
    }
    let curl_side = c.sidecar("sidecar curl.foo", c.pod(&authority, "foo", "curl"), &extra);
    curl_side.wait_ready(Duration::from_secs(20));

    // Each sidecar holds a certificate of its namespace's signer, and trusts only that signer.
    for (side, tenant, sa) in [
        (&inbound[0], "foo", "httpbin"),
        (&inbound[1], "bar", "httpbin"),
        (&curl_side, "foo", "curl"),
    ] {
        let certs = side.certs();
        let leaf = &certs["certificates"][0]["cert_chain"][0];
        assert_eq!(
            leaf["subject_alt_names"][0]["uri"].as_str(),
            Some(spiffe(c.tenant(tenant), sa).as_str()),
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
    eventually("three CSRs in the audit log", Duration::from_secs(10), || {
        c.created_csrs().len() >= 3
    });
    let created = c.created_csrs();
    assert!(created.iter().all(|n| n.starts_with("csr-workload-")), "{created:?}");
    c.wait_no_csrs();
    assert!(authority.metric("citadel_server_success_cert_issuance_count ") >= 3);
    assert_eq!(authority.metric("citadel_server_authentication_failure_count "), 0);
    let in_flight = curl(&[&format!("http://{}/csrs", authority.admin)], &[]).body;
    assert!(in_flight.contains("\"items\": []"), "{in_flight}");
}

#[test]
fn a_denied_request_is_retried_and_served_once_a_person_approves() {
    let c = Env::new();
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
    let requester = format!("system:serviceaccount:{}:httpbin", c.tenant("foo"));
    assert!(in_flight.contains(&requester), "{in_flight}");
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
    let c = Env::new();
    // No controller: nothing signs. The test plays the signer that gives up.
    let authority = c.authority(&["--csr-timeout", "3s"]);
    let token = c.workload_token("foo", "httpbin", "istio-ca");
    let client = c.client(&authority, &token);

    let env = &c;
    let failer = std::thread::scope(|scope| {
        let marker = scope.spawn(|| {
            let start = Instant::now();
            loop {
                if let Some(name) = env
                    .csrs()
                    .iter()
                    .find(|o| o["status"]["conditions"].to_string().contains("Approved"))
                    .and_then(|o| o["metadata"]["name"].as_str().map(str::to_string))
                {
                    env.fail_csr(&name, "SigningError", "the CA key is on an unplugged HSM");
                    return name;
                }
                assert!(start.elapsed() < Duration::from_secs(10), "no approved CSR to fail");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let result = block(client.sign(&order(env, None, "foo", "httpbin")));
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
    let (reason, message) = refusal(block(client.sign(&order(&c, None, "foo", "httpbin"))));
    assert_eq!(reason, Refusal::CsrTimeout, "{message}");
    assert_eq!(
        reason.kind(),
        RefusalKind::Failed,
        "a timeout is retriable (gRPC Internal)"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(message.contains("signet signer controller"), "{message}");
    c.wait_no_csrs();
    eventually("two CSRs made", Duration::from_secs(10), || c.created_csrs().len() == 2);
    assert!(authority.metric("citadel_server_csr_sign_err_count{error_type=\"CSRTimeout\"} ") >= 1);

    // The caller goes away while its CSR waits (for a person, here, up to 60 s): the request is
    // deleted at once, not left for the timeout.
    let patient = c.authority(&["--manual-approval"]);
    let client = c.client(&patient, &token);
    let gave_up = block(async {
        tokio::time::timeout(Duration::from_secs(2), client.sign(&order(&c, None, "foo", "httpbin"))).await
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
    eventually("three CSRs made", Duration::from_secs(10), || {
        c.created_csrs().len() == 3
    });
}

#[test]
fn callers_and_chains_are_checked() {
    let c = Env::new();
    let _controller = c.controller(&[]);
    let authority = c.authority(&[]);

    // A token for another audience: the API server does not vouch for it for istio-ca.
    let wrong_audience = c.workload_token("foo", "httpbin", "vault");
    let (reason, message) = refusal(block(
        c.client(&authority, &wrong_audience)
            .sign(&order(&c, None, "foo", "httpbin")),
    ));
    assert_eq!(reason, Refusal::UnknownToken, "{message}");
    assert_eq!(reason.kind(), RefusalKind::Unauthenticated);
    assert!(message.contains("istio-ca"), "{message}");

    // A token bound to a Pod that is gone: the API server no longer accepts it.
    let ns = c.tenant("foo");
    let (pod, token) = c.c.pod_token(ns, "httpbin", "istio-ca");
    c.c.kubectl_ok(&["delete", "pod", "-n", ns, &pod]);
    let orphan = c.mesh.path("tokens/orphan");
    std::fs::write(&orphan, token).unwrap();
    let (reason, message) = refusal(block(
        c.client(&authority, orphan.to_str().unwrap())
            .sign(&order(&c, None, "foo", "httpbin")),
    ));
    assert_eq!(reason, Refusal::UnknownToken, "{message}");

    // Namespace foo cannot obtain signer bar; no CSR is even created.
    let foo = c.workload_token("foo", "httpbin", "istio-ca");
    let (reason, message) = refusal(block(c.client(&authority, &foo).sign(&order(
        &c,
        Some("bar"),
        "foo",
        "httpbin",
    ))));
    assert_eq!(reason, Refusal::SignerNotAllowedForNamespace, "{message}");
    assert!(c.created_csrs().is_empty());
    assert_eq!(authority.metric("citadel_server_authentication_failure_count "), 2);

    // A good request: the chain anchors to foo's root from the mesh config.
    let issued = block(c.client(&authority, &foo).sign(&order(&c, None, "foo", "httpbin"))).unwrap();
    let foo_root = std::fs::read(format!("{}/ca.crt", c.mesh.signer_dir("foo"))).unwrap();
    assert_eq!(issued.roots, signet_certs::parse_certs(&foo_root, "foo").unwrap());

    // foo's key replaced by one the mesh config does not know: the chain is refused.
    let rogue = c.mesh.path("rogue");
    signet_ok(&[
        "signer",
        "new",
        "foo",
        "--signer-domain",
        &c.domain,
        "--dir",
        rogue.to_str().unwrap(),
    ]);
    c.put_signer_secret(&rogue.join("foo"), "foo-ca");
    let mut last = None;
    eventually("a chain from the rogue key refused", Duration::from_secs(20), || {
        let (reason, message) = refusal_or_none(block(
            c.client(&authority, &foo).sign(&order(&c, None, "foo", "httpbin")),
        ));
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
    let mut c = Env::new();
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
    c.put_secret("foo-ca", &tls_crt, &int_key.serialize_pem(), &root_cert.pem());
    let bundle = format!(
        "caCertificates:\n- pem: |\n{}  certSigners: [{}]\n- pem: |\n{}  certSigners: [{}]\n",
        indent(&root_cert.pem()),
        c.signer("foo"),
        indent(&std::fs::read_to_string(format!("{}/ca.crt", c.mesh.signer_dir("istio-system"))).unwrap()),
        c.signer("istio-system"),
    );
    c.mount_mesh_config(&bundle);
    let _controller = c.controller(&[]);
    let authority = c.authority(&[]);
    let foo = c.workload_token("foo", "httpbin", "istio-ca");
    let issued = block(c.client(&authority, &foo).sign(&order(&c, None, "foo", "httpbin"))).unwrap();
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
    let c = Env::new();
    let controller = c.controller(&["--max-ttl", "24h", "--publish-trust-bundles"]);
    let prefix = c.ns.name.clone();
    let manifest = |name: &str, signer: &str, metadata: &str, spec: &str| -> String {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.request(&spiffe("foo", "web").parse().unwrap(), &[]).unwrap();
        let request = base64_encode(csr.pem.as_bytes());
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {prefix}-{name}\n{metadata}spec:\n  request: {request}\n  signerName: {signer}\n{}",
            if spec.contains("usages") {
                spec.to_string()
            } else {
                format!("{spec}  usages: [digital signature, key encipherment, server auth, client auth]\n")
            }
        )
    };
    let csr = |name: &str| -> serde_json::Value {
        let text =
            c.c.kubectl_ok(&["get", "csr", &format!("{prefix}-{name}"), "-o", "json"]);
        serde_json::from_str(&text).unwrap()
    };
    let certificate = |name: &str| -> Option<CertInfo> {
        let b64 = csr(name)["status"]["certificate"].as_str()?.to_string();
        let pem = base64_decode(&b64);
        let certs = signet_certs::parse_certs(&pem, name).unwrap();
        Some(CertInfo::parse(&certs[0]).unwrap())
    };
    // 48 h asked through expirationSeconds (over the cap); 2 h through cert-manager's
    // annotation only.
    let foo = c.signer("foo");
    c.c.apply(&manifest("long", &foo, "", "  expirationSeconds: 172800\n"));
    c.c.apply(&manifest(
        "annotated",
        &c.signer("bar"),
        "  annotations:\n    experimental.cert-manager.io/request-duration: 2h0m0s\n",
        "",
    ));
    c.c.apply(&manifest("other", &format!("other.{}/not-ours", c.domain), "", ""));
    // A request for a CA-signing usage: refused, and marked Failed with why.
    c.c.apply(&manifest(
        "ca-usage",
        &foo,
        "",
        "  usages: [digital signature, cert sign]\n",
    ));
    std::thread::sleep(Duration::from_secs(1));
    assert!(certificate("long").is_none(), "not approved: not signed");
    for name in ["long", "annotated", "other", "ca-usage"] {
        let (code, out) = c.kubectl(&["certificate", "approve", &format!("{prefix}-{name}")]);
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
    let (_, table) = c.kubectl(&["get", "csr", &format!("{prefix}-long")]);
    assert!(table.contains("Approved,Issued"), "{table}");
    let start = Instant::now();
    while !c
        .kubectl(&["get", "csr", &format!("{prefix}-ca-usage")])
        .1
        .contains("Approved,Failed")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not marked Failed: {}\n{}",
            c.kubectl(&["get", "csr"]).1,
            controller.proc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = csr("ca-usage");
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

    // Its signers' roots are published as ClusterTrustBundles (read back through v1).
    eventually("three ClusterTrustBundles", Duration::from_secs(10), || {
        c.c.cluster_trust_bundles(&format!("{}/", c.domain)).len() == 3
    });
    let bundles = c.c.cluster_trust_bundles(&format!("{}/", c.domain));
    let published = bundles
        .iter()
        .find(|b| b["spec"]["signerName"] == foo.as_str())
        .unwrap();
    assert_eq!(published["metadata"]["name"], format!("{}:foo:signet", c.domain));
    let foo_root = std::fs::read_to_string(format!("{}/ca.crt", c.mesh.signer_dir("foo"))).unwrap();
    assert_eq!(
        published["spec"]["trustBundle"].as_str().unwrap().trim(),
        foo_root.trim()
    );
    let metrics = curl(&[&format!("http://{}/metrics", controller.admin)], &[]).body;
    assert!(
        metrics.contains(&format!(
            "signet_signer_requests_total{{signer=\"{foo}\",outcome=\"issued\"}} 1"
        )),
        "{metrics}"
    );
    for name in ["long", "annotated", "other", "ca-usage"] {
        c.c.kubectl_ok(&["delete", "csr", &format!("{prefix}-{name}")]);
    }
}

#[test]
fn rotation_through_the_mounted_bundle_and_renewal_through_the_csr_api() {
    let mut c = Env::new();
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
    eventually("two CSRs made", Duration::from_secs(10), || c.created_csrs().len() >= 2);
    c.wait_no_csrs();

    // foo's CA is replaced (its Secret rotated). Until its root is in the bundle, the new
    // chains are refused...
    let foo = c.workload_token("foo", "httpbin", "istio-ca");
    let next = c.mesh.path("next");
    signet_ok(&[
        "signer",
        "new",
        "foo",
        "--signer-domain",
        &c.domain,
        "--dir",
        next.to_str().unwrap(),
    ]);
    c.put_signer_secret(&next.join("foo"), "foo-ca");
    eventually("the new key in use and refused", Duration::from_secs(20), || {
        refusal_or_none(block(
            c.client(&authority, &foo).sign(&order(&c, None, "foo", "httpbin")),
        ))
        .0 == Some(Refusal::ChainUntrusted)
    });
    // ... and once the mounted mesh config (symlink swap) adds it, they are trusted, with both
    // roots handed out: no restart.
    let old = std::fs::read_to_string(c.mesh.bundle()).unwrap();
    let next_root = std::fs::read_to_string(next.join("foo/ca.crt")).unwrap();
    let foo_signer = c.signer("foo");
    c.mount_mesh_config(&format!(
        "{old}- pem: |\n{}  certSigners: [{foo_signer}]\n",
        indent(&next_root)
    ));
    let mut issued = None;
    eventually("the new root trusted", Duration::from_secs(20), || {
        issued = block(c.client(&authority, &foo).sign(&order(&c, None, "foo", "httpbin"))).ok();
        issued.is_some()
    });
    assert_eq!(issued.unwrap().roots.len(), 2, "old and new root during the rotation");

    // A root published as a ClusterTrustBundle (v1, by the admin, who may attest for any
    // signer) is handed out too.
    let extra = c.mesh.path("extra");
    signet_ok(&[
        "signer",
        "new",
        "foo",
        "--signer-domain",
        &c.domain,
        "--dir",
        extra.to_str().unwrap(),
    ]);
    let extra_root = std::fs::read_to_string(extra.join("foo/ca.crt")).unwrap();
    let bundle_name = format!("{}:foo:extra", c.domain);
    c.c.apply(&format!(
        "apiVersion: certificates.k8s.io/v1\nkind: ClusterTrustBundle\nmetadata:\n  name: {bundle_name}\nspec:\n  signerName: {foo_signer}\n  trustBundle: |\n{}",
        indent(&extra_root)
    ));
    eventually(
        "the ClusterTrustBundle's root handed out",
        Duration::from_secs(20),
        || block(c.client(&authority, &foo).sign(&order(&c, None, "foo", "httpbin"))).is_ok_and(|i| i.roots.len() == 3),
    );
    assert!(side.proc.is_running());
    c.wait_no_csrs();
    c.c.kubectl_ok(&["delete", "clustertrustbundle", &bundle_name]);
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
    let c = Env::new();
    let signers = c.mesh.path("signers").display().to_string();
    let _controller = c.controller_with(&s(&["--signers-dir", &signers]), &[]);
    let authority = c.authority(&[]);
    let token = c.workload_token("bar", "httpbin", "istio-ca");
    let issued = block(c.client(&authority, &token).sign(&order(&c, None, "bar", "httpbin"))).unwrap();
    let bar_root = std::fs::read(format!("{}/ca.crt", c.mesh.signer_dir("bar"))).unwrap();
    assert_eq!(issued.roots, signet_certs::parse_certs(&bar_root, "bar").unwrap());
    let leaf = CertInfo::parse(&issued.chain[0]).unwrap();
    assert_eq!(leaf.uris, vec![spiffe(c.tenant("bar"), "httpbin")]);
    c.wait_no_csrs();
}

/// A key of `kind` and a stub PKCS#10 request for it, as a kubelet makes them (openssl): no
/// subject, no names. Returns the request (DER) and the key's SubjectPublicKeyInfo (DER).
fn stub_request(dir: &Path, kind: &str) -> (Vec<u8>, Vec<u8>) {
    let key = dir.join(format!("{kind}.key"));
    let algorithm: &[&str] = match kind {
        "ECDSAP256" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "ECDSAP384" => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "ED25519" => &["-algorithm", "ED25519"],
        "RSA3072" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
        other => panic!("{other}"),
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let mut genpkey = vec!["genpkey"];
    genpkey.extend_from_slice(algorithm);
    genpkey.extend(["-out", key.to_str().unwrap()]);
    run(&genpkey);
    let request = run(&[
        "req",
        "-new",
        "-key",
        key.to_str().unwrap(),
        "-subj",
        "/",
        "-outform",
        "DER",
    ]);
    let spki = run(&["pkey", "-in", key.to_str().unwrap(), "-pubout", "-outform", "DER"]);
    (request, spki)
}

#[test]
fn the_signer_controller_signs_the_pod_certificates_a_node_asks_for() {
    let c = Env::new();
    // controller-variant's RBAC, plus what --pod-certificates needs (README).
    c.c.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: signet-pod-certificates-{0}\nrules:\n- apiGroups: [certificates.k8s.io]\n  resources: [podcertificaterequests]\n  verbs: [get, list, watch]\n- apiGroups: [certificates.k8s.io]\n  resources: [podcertificaterequests/status]\n  verbs: [update]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: signet-pod-certificates-{0}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: signet-pod-certificates-{0}}}\nsubjects:\n- {{kind: ServiceAccount, name: signet-signer-controller-{0}, namespace: {0}}}\n",
        c.ns.name
    ));
    let controller = c.controller(&["--pod-certificates", "--max-ttl", "24h"]);

    // The test is the node: a Node, a kubelet's client certificate, a pod bound to the node
    // with a podCertificate volume of signer foo (NodeRestriction checks all of it).
    let node = format!("{}-node", c.ns.name);
    c.c.apply(&format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {node}\n"));
    let kubelet = c.c.client_kubeconfig(
        &c.mesh.path("kubelet.kubeconfig"),
        &format!("system:node:{node}"),
        &["system:nodes"],
    );
    let ns = c.tenant("foo").to_string();
    let foo = c.signer("foo");
    let other = format!("other.{}/x", c.domain);
    c.c.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: httpbin\n  namespace: {ns}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: {ns}\nspec:\n  nodeName: {node}\n  serviceAccountName: httpbin\n  containers:\n  - name: app\n    image: signet.test/none\n    volumeMounts: [{{name: identity, mountPath: /var/run/identity}}]\n  volumes:\n  - name: identity\n    projected:\n      sources:\n      - podCertificate: {{signerName: {foo}, keyType: ECDSAP256, credentialBundlePath: credentialbundle.pem}}\n      - podCertificate: {{signerName: {other}, keyType: ECDSAP256, credentialBundlePath: other.pem}}\n"
    ));
    let uid = |what: &[&str]| {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend(["-o", "jsonpath={.metadata.uid}"]);
        c.c.kubectl_ok(&args).trim().to_string()
    };
    let (node_uid, pod_uid, sa_uid) = (
        uid(&["node", &node]),
        uid(&["pod", "-n", &ns, "web"]),
        uid(&["serviceaccount", "-n", &ns, "httpbin"]),
    );
    let request = |name: &str, signer: &str, stub: &[u8], max: u32, extra: &str| {
        let yaml = format!(
            "apiVersion: certificates.k8s.io/v1\nkind: PodCertificateRequest\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  signerName: {signer}\n  podName: web\n  podUID: {pod_uid}\n  serviceAccountName: httpbin\n  serviceAccountUID: {sa_uid}\n  nodeName: {node}\n  nodeUID: {node_uid}\n  maxExpirationSeconds: {max}\n  stubPKCS10Request: {}\n{extra}",
            base64_encode(stub)
        );
        c.c.kubectl_with(&kubelet, &["create", "-f", "-"], Some(&yaml))
    };
    let created = |out: std::process::Output, name: &str| {
        assert!(
            out.status.success(),
            "the node's create of {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir = c.mesh.path("pod-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let mut keys = BTreeMap::new();
    for (name, kind, max) in [
        ("p256", "ECDSAP256", 86_400),
        ("p384", "ECDSAP384", 3600),
        ("ed25519", "ED25519", 7200),
        ("rsa", "RSA3072", 86_400),
    ] {
        let (stub, spki) = stub_request(&dir, kind);
        created(request(name, &foo, &stub, max, ""), name);
        keys.insert(name, (spki, max));
    }
    let (stub, _) = stub_request(&dir, "ECDSAP256");
    let annotations = "  unverifiedUserAnnotations:\n    example.com/flavour: strawberry\n";
    created(request("annotated", &foo, &stub, 86_400, annotations), "annotated");
    // Another signer of the pod's volumes: not the controller's, left alone. A signer the pod
    // does not name: NodeRestriction refuses the node's request.
    created(request("other", &other, &stub, 86_400, ""), "other");
    let refused = request("bar", &c.signer("bar"), &stub, 86_400, "");
    assert!(!refused.status.success(), "a signer the pod does not name");
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(why.contains("forbidden") || why.contains("Forbidden"), "{why}");

    let pcr = |name: &str| -> serde_json::Value {
        serde_json::from_str(&c.c.kubectl_ok(&["get", "podcertificaterequest", "-n", &ns, name, "-o", "json"])).unwrap()
    };
    let conditions = |p: &serde_json::Value| p["status"]["conditions"].as_array().cloned().unwrap_or_default();
    eventually("all five decided", Duration::from_secs(20), || {
        ["p256", "p384", "ed25519", "rsa", "annotated"]
            .iter()
            .all(|n| !conditions(&pcr(n)).is_empty())
    });
    let foo_root = std::fs::read(format!("{}/ca.crt", c.mesh.signer_dir("foo"))).unwrap();
    let roots = signet_certs::parse_certs(&foo_root, "foo").unwrap();
    let anchors = signet_certs::Anchors::new(&roots);
    for (name, (spki, max)) in &keys {
        let p = pcr(name);
        let cs = conditions(&p);
        assert_eq!(cs.len(), 1, "{name}: exactly one condition: {p}");
        if *name == "rsa" {
            assert_eq!(cs[0]["type"], "Denied", "{p}");
            assert_eq!(cs[0]["reason"], "UnsupportedKeyType", "{p}");
            assert!(cs[0]["message"].as_str().unwrap().contains("ECDSAP256"), "{p}");
            assert!(p["status"]["certificateChain"].is_null(), "{p}");
            continue;
        }
        assert_eq!(cs[0]["type"], "Issued", "{name}: {p}");
        let chain =
            signet_certs::parse_certs(p["status"]["certificateChain"].as_str().unwrap().as_bytes(), name).unwrap();
        let leaf = CertInfo::parse(&chain[0]).unwrap();
        assert_eq!(leaf.uris, vec![spiffe(&ns, "httpbin")], "{name}: the pod's identity");
        assert_eq!(&leaf.spki, spki, "{name}: the node's key");
        let lifetime = leaf.not_after.duration_since(leaf.not_before).unwrap();
        assert_eq!(
            lifetime,
            Duration::from_secs(*max as u64),
            "{name}: maxExpirationSeconds"
        );
        anchors
            .verify(
                &chain,
                leaf.not_before + Duration::from_secs(60),
                signet_certs::Usage::ServerAuth,
            )
            .unwrap_or_else(|e| panic!("{name}: does not chain to foo's root: {e:?}"));
        assert_eq!(
            p["status"]["notBefore"].as_str().unwrap(),
            signet_certs::rfc3339(leaf.not_before)
        );
        assert_eq!(
            p["status"]["notAfter"].as_str().unwrap(),
            signet_certs::rfc3339(leaf.not_after)
        );
        assert!(p["status"]["beginRefreshAt"].is_string(), "{p}");
    }
    let annotated = pcr("annotated");
    assert_eq!(conditions(&annotated)[0]["type"], "Denied", "{annotated}");
    assert_eq!(
        conditions(&annotated)[0]["reason"],
        "InvalidUnverifiedUserAnnotations",
        "{annotated}"
    );
    assert!(
        conditions(&pcr("other")).is_empty(),
        "another signer's request is left alone"
    );
    let metrics = curl(&[&format!("http://{}/metrics", controller.admin)], &[]).body;
    assert!(
        metrics.contains(&format!(
            "signet_signer_pod_certificates_total{{signer=\"{foo}\",outcome=\"issued\"}} 3"
        )),
        "{metrics}"
    );
    c.c.kubectl_ok(&["delete", "node", &node]);
    c.c.kubectl_ok(&[
        "delete",
        "clusterrole,clusterrolebinding",
        &format!("signet-pod-certificates-{}", c.ns.name),
    ]);
}

/// One rule of an RBAC role, as written.
#[derive(Clone)]
struct Rule {
    /// The rule's lines in its document, `[start, end)`.
    lines: (usize, usize),
    group: String,
    resource: String,
    verbs: Vec<String>,
    names: Vec<String>,
}

impl Rule {
    fn render(&self, verbs: &[String], names: &[String]) -> String {
        let group = if self.group.is_empty() { "\"\"" } else { &self.group };
        let mut out = format!(
            "- apiGroups: [{group}]\n  resources: [{}]\n  verbs: [{}]\n",
            self.resource,
            verbs.join(", ")
        );
        if !names.is_empty() {
            out.push_str(&format!("  resourceNames: [{}]\n", names.join(", ")));
        }
        out
    }

    /// The permission `verb` on `name` (or the whole resource), as Signet names it when
    /// missing: `update certificatesigningrequests.certificates.k8s.io/approval`, `get secrets
    /// "istio-ca" in namespace kt-3`.
    fn permission(&self, verb: &str, name: Option<&str>, namespace: Option<&str>) -> String {
        let (resource, sub) = self.resource.split_once('/').unwrap_or((&self.resource, ""));
        let mut out = format!("{verb} {resource}");
        if !self.group.is_empty() {
            out += &format!(".{}", self.group);
        }
        if !sub.is_empty() {
            out += &format!("/{sub}");
        }
        if let Some(n) = name {
            out += &format!(" {n:?}");
        }
        if let Some(ns) = namespace {
            out += &format!(" in namespace {ns}");
        }
        out
    }
}

/// `[a, b]` → `a`, `b`; `[""]` → the empty string.
fn yaml_list(text: &str) -> Vec<String> {
    let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
    inner
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_string())
        .filter(|s| !s.is_empty() || inner.trim() == "\"\"")
        .collect()
}

/// The rules of a Role or ClusterRole document, in the layout our manifests use (flow lists,
/// or `resourceNames:` as a block list).
fn rules_of(doc: &[&str]) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut in_names = false;
    for (i, line) in doc.iter().enumerate() {
        if let Some(g) = line.strip_prefix("- apiGroups:") {
            rules.push(Rule {
                lines: (i, i + 1),
                group: yaml_list(g).pop().unwrap_or_default(),
                resource: String::new(),
                verbs: Vec::new(),
                names: Vec::new(),
            });
            in_names = false;
            continue;
        }
        let Some(rule) = rules.last_mut() else { continue };
        if rule.lines.1 != i || line.starts_with('#') || !line.starts_with("  ") {
            continue;
        }
        rule.lines.1 = i + 1;
        if let Some(r) = line.strip_prefix("  resources:") {
            let r = yaml_list(r);
            assert_eq!(r.len(), 1, "one resource per rule: {line}");
            rule.resource = r[0].clone();
        } else if let Some(v) = line.strip_prefix("  verbs:") {
            rule.verbs = yaml_list(v);
        } else if let Some(n) = line.strip_prefix("  resourceNames:") {
            in_names = n.trim().is_empty();
            rule.names = if in_names { Vec::new() } else { yaml_list(n) };
        } else if let Some(n) = line.strip_prefix("  - ").filter(|_| in_names) {
            rule.names.push(n.trim().to_string());
        }
    }
    rules
}

/// A copy of an RBAC manifest with one thing taken away, and the permissions that are then
/// missing.
struct Knockout {
    what: String,
    yaml: String,
    missing: Vec<String>,
}

/// Every copy of `rbac` (made by [`rbac_tagged`]) with one verb of one rule, or one of its
/// `resourceNames`, taken away; a rule left with nothing goes whole.
fn knockouts(rbac: &str) -> Vec<Knockout> {
    let docs: Vec<&str> = rbac.split("---\n").collect();
    let mut out = Vec::new();
    for (d, doc) in docs.iter().enumerate() {
        let is_role = doc.contains("\nkind: ClusterRole\n") || doc.contains("\nkind: Role\n");
        if !is_role {
            continue;
        }
        let lines: Vec<&str> = doc.lines().collect();
        let namespace = doc.contains("\nkind: Role\n").then(|| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix("  namespace: "))
                .expect("a Role has a namespace")
        });
        for rule in rules_of(&lines) {
            let names: Vec<Option<&str>> = if rule.names.is_empty() {
                vec![None]
            } else {
                rule.names.iter().map(|n| Some(n.as_str())).collect()
            };
            // (what, the verbs kept, the names kept, the permissions then missing)
            type Cut = (String, Vec<String>, Vec<String>, Vec<String>);
            let mut cuts: Vec<Cut> = Vec::new();
            for verb in &rule.verbs {
                let verbs: Vec<String> = rule.verbs.iter().filter(|v| *v != verb).cloned().collect();
                let missing = names.iter().map(|n| rule.permission(verb, *n, namespace)).collect();
                cuts.push((
                    format!("verb {verb} of {}", rule.resource),
                    verbs,
                    rule.names.clone(),
                    missing,
                ));
            }
            if rule.names.len() > 1 {
                for name in &rule.names {
                    let kept: Vec<String> = rule.names.iter().filter(|n| *n != name).cloned().collect();
                    let missing = rule
                        .verbs
                        .iter()
                        .map(|v| rule.permission(v, Some(name), namespace))
                        .collect();
                    cuts.push((
                        format!("{name} of {}", rule.resource),
                        rule.verbs.clone(),
                        kept,
                        missing,
                    ));
                }
            }
            for (what, verbs, kept, missing) in cuts {
                let replacement = if verbs.is_empty() {
                    String::new()
                } else {
                    rule.render(&verbs, &kept)
                };
                let mut doc_out = String::new();
                for (i, line) in lines.iter().enumerate() {
                    if i == rule.lines.0 {
                        doc_out.push_str(&replacement);
                    }
                    if i < rule.lines.0 || i >= rule.lines.1 {
                        doc_out.push_str(line);
                        doc_out.push('\n');
                    }
                }
                let mut all = docs.clone();
                all[d] = &doc_out;
                let yaml = all.join("---\n");
                out.push(Knockout { what, yaml, missing });
            }
        }
    }
    out
}

#[test]
fn every_rule_of_the_authority_and_the_controller_rbac_is_needed_and_together_they_suffice() {
    let env = Env::new();
    let c = env.c;
    let api_audience = "https://kubernetes.default.svc.cluster.local";
    let ns = env.ns.name.clone();
    let keys = env.controller_keys();
    // Each manifest, how its component runs there (the flags its Deployment passes), and the
    // component's name in its error.
    let cases: [(&str, &str, &[&str], &str); 3] = [
        ("30-signet-authority.yaml", "signet-authority", &[], "the authority"),
        (
            "controller-variant/30-signet-authority.yaml",
            "signet-authority",
            &["--cluster-trust-bundles"],
            "the authority",
        ),
        (
            "controller-variant/10-signet-signer-controller.yaml",
            "signet-signer-controller",
            &["--publish-trust-bundles"],
            "the signer controller",
        ),
    ];
    let mut n = 0;
    for (manifest, sa, flags, who) in cases {
        let command = |kubeconfig: &Path| {
            if sa == "signet-authority" {
                env.authority_command(kubeconfig, flags)
            } else {
                env.controller_command(kubeconfig, &keys, flags)
            }
        };
        let full = rbac_tagged(manifest, &ns, &env.domain, "");
        let mut tried = 0;
        for (i, k) in knockouts(&full).into_iter().enumerate() {
            n += 1;
            tried += 1;
            let tag = format!("-k{n}");
            let yaml = rbac_tagged(manifest, &ns, &env.domain, &tag);
            // The same cut, in the tagged copy: the knockouts of both list the rules alike.
            let k_tagged = &knockouts(&yaml)[i];
            assert_eq!(k_tagged.what, k.what);
            c.apply(&k_tagged.yaml);
            let token = c.token(&ns, &format!("{sa}-{ns}{tag}"), api_audience);
            let kubeconfig = c.kubeconfig_for_token(&env.mesh.path(&format!("knockout{n}.kubeconfig")), &token);
            let expected = format!(
                "{who} lacks {} permission{} it uses: ",
                k.missing.len(),
                if k.missing.len() == 1 { "" } else { "s" }
            );
            // RBAC reaches the API server's authorizer through a watch: a fresh binding may take
            // a moment, during which more is missing than the cut took.
            let mut last;
            let start = Instant::now();
            let ok = loop {
                let mut proc = Proc::spawn(who, command(&kubeconfig));
                let status = proc.wait_exit(Duration::from_secs(20));
                last = proc.log();
                assert!(
                    status.is_some_and(|s| !s.success()),
                    "{manifest} without {}: {who} did not fail at start:\n{last}",
                    k.what
                );
                if last.contains(&expected) && k.missing.iter().all(|m| last.contains(&format!("{m} (to "))) {
                    break true;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(300));
            };
            assert!(
                ok,
                "{manifest} without {}: expected one line naming {:?}, got:\n{last}",
                k.what, k.missing
            );
            let line = last.lines().find(|l| l.contains(&expected)).unwrap();
            assert!(line.contains(&format!("(as {}", "examples/kubernetes/")), "{line}");
            c.kubectl_with(
                &c.admin_kubeconfig,
                &["delete", "-f", "-", "--ignore-not-found", "--wait=false"],
                Some(&k_tagged.yaml),
            );
        }
        assert!(tried >= 3, "{manifest}: {tried} cuts");
        eprintln!("{manifest}: each of {tried} verbs and names needed");
        // The whole manifest: the component starts (the other tests use it in full).
        let tag = format!("-full{n}");
        c.apply(&rbac_tagged(manifest, &ns, &env.domain, &tag));
        let token = c.token(&ns, &format!("{sa}-{ns}{tag}"), api_audience);
        let kubeconfig = c.kubeconfig_for_token(&env.mesh.path(&format!("full{n}.kubeconfig")), &token);
        let ready = ready_path("full");
        let mut cmd = command(&kubeconfig);
        cmd.arg("--ready-file").arg(&ready);
        let mut proc = Proc::spawn(who, cmd);
        proc.wait_ready_file(&ready, Duration::from_secs(20));
    }
}
