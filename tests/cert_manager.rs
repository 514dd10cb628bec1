//! The task on a real control plane: etcd, kube-apiserver and kube-controller-manager built
//! from their Go modules, the real cert-manager controllers signing, RBAC enforced
//! (tests/support/cluster.rs). The manifests of examples/kubernetes are applied as a user
//! applies them (the task's issuers, the mesh config filled by fill-mesh-config.sh, the
//! authority's RBAC); the authority and the sidecars run as processes with their service
//! accounts' bound tokens, as their pods would (no kubelet runs here yet).

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cluster::{Cluster, cluster};
use support::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifest(name: &str) -> String {
    repo().join("examples/kubernetes").join(name).display().to_string()
}

/// What the issuers made: each signer's `ca.crt`, read from its Secret in `cert-manager`.
fn signer_ca(c: &Cluster, secret: &str, dir: &Path) -> PathBuf {
    let b64 = c.kubectl_ok(&[
        "get",
        "secret",
        "-n",
        "cert-manager",
        secret,
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap();
    let path = dir.join(format!("{secret}.crt"));
    std::fs::write(&path, pem).unwrap();
    path
}

/// Step 1 to 5 of examples/kubernetes/README.md, on the real cluster: namespaces, the task's
/// issuers (cert-manager makes the three CAs), the mesh config filled from their roots, the
/// authority's RBAC. Returns the roots' files by signer.
/// Once per test binary (the tests share the cluster and these namespaces).
fn installed(c: &'static Cluster) -> &'static [(&'static str, PathBuf)] {
    static ROOTS: std::sync::OnceLock<Vec<(&'static str, PathBuf)>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| install(c, &c.dir))
}

fn install(c: &'static Cluster, dir: &Path) -> Vec<(&'static str, PathBuf)> {
    c.kubectl_ok(&["apply", "-f", &manifest("00-namespaces.yaml")]);
    c.kubectl_ok(&["apply", "-f", &manifest("10-cert-manager-issuers.yaml")]);
    c.kubectl_ok(&[
        "wait",
        "--for=condition=Ready",
        "--timeout=90s",
        "clusterissuer/istio-system",
        "clusterissuer/foo",
        "clusterissuer/bar",
    ]);
    let roots: Vec<(&str, PathBuf)> = [
        ("istio-system", "istio-ca-selfsigned"),
        ("foo", "foo-ca-selfsigned"),
        ("bar", "bar-ca-selfsigned"),
    ]
    .into_iter()
    .map(|(signer, secret)| (signer, signer_ca(c, secret, dir)))
    .collect();
    let mut fill = Command::new(manifest("fill-mesh-config.sh"));
    for (signer, file) in &roots {
        fill.arg(format!("{signer}={}", file.display()));
    }
    let filled = fill.output().unwrap();
    assert!(filled.status.success(), "{}", String::from_utf8_lossy(&filled.stderr));
    c.apply(&String::from_utf8_lossy(&filled.stdout));
    c.kubectl_ok(&["apply", "-f", &manifest("30-signet-authority.yaml")]);
    for (ns, sa) in [("foo", "httpbin"), ("foo", "curl"), ("bar", "httpbin")] {
        c.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n"
        ));
    }
    roots
}

/// The ConfigMap's key, as its volume would hold it.
fn mounted(c: &Cluster, ns: &str, name: &str, key: &str, path: &Path) -> String {
    let text = c.kubectl_ok(&[
        "get",
        "configmap",
        "-n",
        ns,
        name,
        "-o",
        &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
    ]);
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

#[test]
fn cert_manager_signs_each_tenant_and_a_cross_tenant_call_fails_verification() {
    let c = cluster();
    let dir = tempfile::tempdir().unwrap();
    let roots = installed(c);
    let root = |signer: &str| {
        roots
            .iter()
            .find(|(s, _)| *s == signer)
            .unwrap()
            .1
            .display()
            .to_string()
    };

    // The authority as its Deployment runs it, with its service account's token and nothing
    // more than its manifest's RBAC.
    let token = c.token(
        "istio-system",
        "signet-authority",
        "https://kubernetes.default.svc.cluster.local",
    );
    let kubeconfig = c.kubeconfig_for_token(&dir.path().join("authority.kubeconfig"), &token);
    let mesh = mounted(c, "istio-system", "istio", "mesh", &dir.path().join("mesh"));
    let policy = mounted(
        c,
        "istio-system",
        "signet-signing-policy",
        "signing-policy.yaml",
        &dir.path().join("signing-policy.yaml"),
    );
    let ready = ready_path("authority");
    let mut cmd = signet_cmd();
    cmd.args([
        "authority",
        "serve",
        "--kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--listen=127.0.0.1:0",
        "--admin=127.0.0.1:0",
        &format!("--bundle={mesh}"),
        &format!("--signing-policy={policy}"),
        "--signer-secret=istio-system=cert-manager/istio-ca-selfsigned",
        "--serving-signer=istio-system",
        "--token-audience=istio-ca",
    ])
    .env("CERT_SIGNER_DOMAIN", "clusterissuers.cert-manager.io")
    .arg("--ready-file")
    .arg(&ready);
    let mut authority = Proc::spawn("authority", cmd);
    let listeners = authority.wait_ready_file(&ready, Duration::from_secs(30));
    let authority_addr = listeners["authority"].as_str().unwrap().to_string();
    let admin = listeners["admin"].as_str().unwrap().to_string();

    // Pods' sidecars: the projected token (audience istio-ca) and the downward API's identity.
    let pod = |ns: &str, sa: &str, extra: &[String]| {
        let token = c.token(ns, sa, "istio-ca");
        let path = dir.path().join(format!("token-{ns}-{sa}"));
        std::fs::write(&path, token).unwrap();
        let mut args = s(&[
            "--authority",
            &authority_addr,
            "--authority-ca",
            &root("istio-system"),
            "--token-file",
            path.to_str().unwrap(),
        ]);
        args.extend_from_slice(extra);
        let side = Sidecar::start_with_env(
            &format!("sidecar {sa}.{ns}"),
            &args,
            &[
                ("POD_NAMESPACE", ns),
                ("SERVICE_ACCOUNT", sa),
                ("TRUST_DOMAIN", "cluster.local"),
                ("ISTIO_META_CERT_SIGNER", ns),
            ],
        );
        side.wait_ready(Duration::from_secs(60));
        side
    };
    let app_foo = Httpbin::start(dir.path(), "httpbin-foo");
    let app_bar = Httpbin::start(dir.path(), "httpbin-bar");
    let inbound = |ns: &str, app: &Httpbin| {
        pod(
            ns,
            "httpbin",
            &s(&["--inbound", &format!("127.0.0.1:0={}", app.addr), "--protocol", "http"]),
        )
    };
    let httpbin_foo = inbound("foo", &app_foo);
    let httpbin_bar = inbound("bar", &app_bar);
    let mut extra = s(&["--outbound", "127.0.0.1:0"]);
    for (ns, side) in [("foo", &httpbin_foo), ("bar", &httpbin_bar)] {
        extra.push("--service".into());
        extra.push(format!(
            "httpbin.{ns}:8000={},{}",
            side.inbound[0],
            spiffe(ns, "httpbin")
        ));
    }
    let curl_foo = pod("foo", "curl", &extra);

    // Each leaf was signed by cert-manager with its namespace's CA, and each sidecar trusts
    // only that CA.
    for (side, ns, sa) in [
        (&httpbin_foo, "foo", "httpbin"),
        (&httpbin_bar, "bar", "httpbin"),
        (&curl_foo, "foo", "curl"),
    ] {
        let certs = side.certs();
        let chain = &certs["certificates"][0]["cert_chain"];
        assert_eq!(
            chain[0]["subject_alt_names"][0]["uri"].as_str(),
            Some(spiffe(ns, sa).as_str()),
            "{certs}"
        );
        let roots = certs["certificates"][0]["ca_cert"].as_array().unwrap();
        assert_eq!(roots.len(), 1, "{certs}");
        // cert-manager's CA certificates have commonName foo, bar (the task's Certificates).
        let issuer = chain[0]["issuer"].as_str().unwrap_or_default();
        assert!(
            issuer.contains(&format!("CN={ns}")),
            "{ns}/{sa}: issued by {issuer}: {certs}"
        );
        let root_subject = roots[0]["subject"].as_str().unwrap_or_default();
        assert!(
            root_subject.contains(&format!("CN={ns}")),
            "{ns}/{sa}: trusts {root_subject}"
        );
    }

    let proxy = curl_foo.outbound.unwrap();
    let ok = curl_via(proxy, "http://httpbin.foo:8000/html");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert!(ok.body.contains("Moby-Dick"), "{}", ok.body);
    let bar_before = app_bar.requests();
    let cross = curl_via(proxy, "http://httpbin.bar:8000/html");
    assert_eq!(cross.status, 503, "{cross:?}");
    assert!(cross.body.contains("CERTIFICATE_VERIFY_FAILED"), "{}", cross.body);
    assert_eq!(app_bar.requests(), bar_before, "nothing reached httpbin.bar");

    // Every CSR was cert-manager's to sign, and the authority deleted each once it had read it.
    eventually("every CSR deleted", Duration::from_secs(20), || {
        c.kubectl_ok(&["get", "csr", "-o", "name"]).trim().is_empty()
    });
    let metrics = curl(&[&format!("http://{admin}/metrics")], &[]).body;
    let issued: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("citadel_server_success_cert_issuance_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(issued >= 3, "{metrics}");
    authority.terminate(Duration::from_secs(5));
}

/// The authority's RBAC as its manifest writes it, enforced by the real API server: it reads
/// only the istio-system signer's key, approves only the three signers, and cannot list CSRs
/// or secrets.
#[test]
fn the_authority_gets_exactly_its_manifests_rbac() {
    let c = cluster();
    installed(c);
    let dir = tempfile::tempdir().unwrap();
    let token = c.token(
        "istio-system",
        "signet-authority",
        "https://kubernetes.default.svc.cluster.local",
    );
    let kubeconfig = c.kubeconfig_for_token(&dir.path().join("authority.kubeconfig"), &token);
    // A SubjectAccessReview, as the API server's own checks ask it (the CSR approval
    // admission asks `approve` on `signers/<signerName>`).
    let can = |verb: &str, group: &str, resource: &str, name: &str, namespace: &str| -> bool {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": "system:serviceaccount:istio-system:signet-authority",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:istio-system", "system:authenticated"],
                "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "name": name, "namespace": namespace},
            },
        });
        let out = c.kubectl_with(
            &c.admin_kubeconfig,
            &["create", "-f", "-", "-o", "jsonpath={.status.allowed}"],
            Some(&review.to_string()),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    };
    let certificates = "certificates.k8s.io";
    for signer in ["istio-system", "foo", "bar"] {
        let name = format!("clusterissuers.cert-manager.io/{signer}");
        assert!(can("approve", certificates, "signers", &name, ""), "{name}");
    }
    for name in [
        "clusterissuers.cert-manager.io/baz",
        "kubernetes.io/kube-apiserver-client",
    ] {
        assert!(!can("approve", certificates, "signers", name, ""), "{name}");
    }
    assert!(can("create", certificates, "certificatesigningrequests", "", ""));
    assert!(!can("list", certificates, "certificatesigningrequests", "", ""));
    assert!(!can("update", certificates, "certificatesigningrequests", "", ""));
    assert!(can("create", "authentication.k8s.io", "tokenreviews", "", ""));
    // The keys of foo and bar are cert-manager's alone.
    let get = |secret: &str| {
        c.kubectl_with(
            &kubeconfig,
            &["get", "secret", "-n", "cert-manager", secret, "-o", "name"],
            None,
        )
    };
    assert!(get("istio-ca-selfsigned").status.success());
    for secret in ["foo-ca-selfsigned", "bar-ca-selfsigned"] {
        let out = get(secret);
        assert!(!out.status.success(), "{secret} was readable");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Forbidden"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!can("list", "", "secrets", "", "cert-manager"));
}

/// The harness serves what the coming PodCertificateRequest and ClusterTrustBundle work needs:
/// both kinds in certificates.k8s.io, in v1 (GA in 1.37) and in the v1beta1 Signet speaks today.
#[test]
fn the_cluster_serves_pod_certificates_and_trust_bundles() {
    let c = cluster();
    let resources = c.kubectl_ok(&["api-resources", "--api-group=certificates.k8s.io", "-o", "name"]);
    for kind in [
        "podcertificaterequests",
        "clustertrustbundles",
        "certificatesigningrequests",
    ] {
        assert!(resources.lines().any(|l| l.starts_with(kind)), "{kind}: {resources}");
    }
    let versions = c.kubectl_ok(&["api-versions"]);
    for version in ["certificates.k8s.io/v1", "certificates.k8s.io/v1beta1"] {
        assert!(versions.lines().any(|l| l == version), "{version}: {versions}");
    }
    let ctb = c.kubectl_ok(&["get", "--raw", "/apis/certificates.k8s.io/v1beta1/clustertrustbundles"]);
    assert!(ctb.contains("ClusterTrustBundleList"), "{ctb}");
    let pcr = c.kubectl_ok(&["get", "--raw", "/apis/certificates.k8s.io/v1/podcertificaterequests"]);
    assert!(pcr.contains("PodCertificateRequestList"), "{pcr}");
}
