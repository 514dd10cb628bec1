//! The fake Kubernetes API (tests/support/kube.rs) is pinned by a client nobody here wrote: the
//! Debian `kubectl`, pointed at it with a kubeconfig, lists, watches, creates, approves, denies
//! and deletes CertificateSigningRequests as it does against a cluster.

#[path = "support/kube.rs"]
mod kube;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use kube::FakeKube;
use support::*;

struct Kubectl {
    kubeconfig: std::path::PathBuf,
    cache: std::path::PathBuf,
}

impl Kubectl {
    fn new(api: &FakeKube, dir: &std::path::Path) -> Kubectl {
        Kubectl {
            kubeconfig: api.kubeconfig(dir, None),
            cache: dir.join("kube-cache"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("KUBECONFIG");
        cmd
    }

    /// Runs kubectl; (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .command(args)
            .output()
            .expect("kubectl must be installed (apt-get install kubectl)");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "kubectl {args:?}:\n{out}{err}");
        out
    }
}

/// A CertificateSigningRequest manifest for a fresh key and `id`, signer `signer`.
fn csr_manifest(name: &str, signer: &str, id: &str) -> String {
    let key = signet_certs::WorkloadKey::generate().unwrap();
    let csr = key.request(&id.parse().unwrap(), &[]).unwrap();
    let request = base64::engine::general_purpose::STANDARD.encode(csr.pem.as_bytes());
    format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata:\n  name: {name}\nspec:\n  request: {request}\n  signerName: {signer}\n  expirationSeconds: 86400\n  usages: [digital signature, key encipherment, server auth, client auth]\n"
    )
}

#[test]
fn kubectl_lists_creates_approves_denies_and_deletes_csrs() {
    let api = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(&api, dir.path());

    let (code, out, err) = k.run(&["get", "csr"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("No resources found"), "{out}{err}");

    let signer = "clusterissuers.cert-manager.io/foo";
    for name in ["csr-a", "csr-b"] {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, csr_manifest(name, signer, &spiffe("foo", "httpbin"))).unwrap();
        let out = k.ok(&["create", "-f", file.to_str().unwrap()]);
        assert_eq!(
            out.trim(),
            format!("certificatesigningrequest.certificates.k8s.io/{name} created")
        );
    }
    let table = k.ok(&["get", "csr"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "AGE",
            "SIGNERNAME",
            "REQUESTOR",
            "REQUESTEDDURATION",
            "CONDITION"
        ],
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("csr-a")).unwrap();
    assert!(
        row.contains(signer) && row.contains("kubernetes-admin") && row.contains("24h") && row.ends_with("Pending"),
        "{table}"
    );

    assert_eq!(
        k.ok(&["certificate", "approve", "csr-a"]).trim(),
        "certificatesigningrequest.certificates.k8s.io/csr-a approved"
    );
    assert_eq!(
        k.ok(&["certificate", "deny", "csr-b"]).trim(),
        "certificatesigningrequest.certificates.k8s.io/csr-b denied"
    );
    let table = k.ok(&["get", "csr"]);
    assert!(
        table.lines().any(|l| l.starts_with("csr-a") && l.ends_with("Approved")),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("csr-b") && l.ends_with("Denied")),
        "{table}"
    );

    // A denied request cannot be approved: kubectl refuses itself, even with --force...
    let (code, _, err) = k.run(&["certificate", "approve", "csr-b", "--force"]);
    assert_ne!(code, 0);
    assert!(err.contains("is already Denied"), "{err}");
    // ...and straight to the API (curl), the server's own rule answers.
    let mut denied: serde_json::Value = serde_json::from_str(&k.ok(&["get", "csr", "csr-b", "-o", "json"])).unwrap();
    denied["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "Approved", "status": "True", "reason": "Sneaky"}));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &api.ca_pem).unwrap();
    let url = format!(
        "{}/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-b/approval",
        api.url()
    );
    let auth = format!("Authorization: Bearer {}", api.admin_token);
    let body = denied.to_string();
    let r = curl(
        &[
            "-X",
            "PUT",
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data",
            &body,
            &url,
        ],
        &[],
    );
    assert_eq!(r.status, 422, "{r:?}");
    assert!(
        r.body.contains("Approved and Denied conditions are mutually exclusive"),
        "{}",
        r.body
    );

    // The object as JSON: the requester is who created it; the condition kubectl added.
    let json: serde_json::Value = serde_json::from_str(&k.ok(&["get", "csr", "csr-a", "-o", "json"])).unwrap();
    assert_eq!(json["spec"]["username"], "kubernetes-admin");
    assert_eq!(json["status"]["conditions"][0]["type"], "Approved");
    assert_eq!(json["status"]["conditions"][0]["reason"], "KubectlApprove");

    assert_eq!(
        k.ok(&["delete", "csr", "csr-a", "csr-b"]).trim(),
        "certificatesigningrequest.certificates.k8s.io \"csr-a\" deleted\ncertificatesigningrequest.certificates.k8s.io \"csr-b\" deleted"
    );
    assert!(api.csrs().is_empty());
}

#[test]
fn kubectl_watches_csrs_as_they_change() {
    let api = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let k = Kubectl::new(&api, dir.path());
    let file = dir.path().join("csr.yaml");
    std::fs::write(
        &file,
        csr_manifest(
            "csr-watched",
            "clusterissuers.cert-manager.io/bar",
            &spiffe("bar", "httpbin"),
        ),
    )
    .unwrap();

    let mut watch = k
        .command(&["get", "csr", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (out, lines) = (watch.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let seen = |what: &str, cond: &dyn Fn(&[String]) -> bool| {
        let start = Instant::now();
        while !cond(&lines.lock().unwrap()) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{what}: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // kubectl first lists (nothing yet), then watches.
    std::thread::sleep(Duration::from_millis(500));
    k.ok(&["create", "-f", file.to_str().unwrap()]);
    seen("the new request", &|l| {
        l.iter().any(|l| l.starts_with("csr-watched") && l.ends_with("Pending"))
    });
    k.ok(&["certificate", "approve", "csr-watched"]);
    seen("its approval", &|l| {
        l.iter()
            .any(|l| l.starts_with("csr-watched") && l.ends_with("Approved"))
    });
    k.ok(&["delete", "csr", "csr-watched"]);
    std::thread::sleep(Duration::from_millis(300));
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    let lines = lines.lock().unwrap();
    assert!(lines[0].starts_with("NAME"), "one header first: {lines:?}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("NAME")).count(), 1, "{lines:?}");
}

/// One call to the fake with curl: (status, JSON body).
fn call(
    api: &FakeKube,
    dir: &std::path::Path,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, &api.ca_pem).unwrap();
    let (auth, url) = (format!("Authorization: Bearer {token}"), format!("{}{path}", api.url()));
    let body = body.map(|b| b.to_string());
    let mut args = vec![
        "-X",
        method,
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
    ];
    if let Some(b) = &body {
        args.extend(["--data", b.as_str()]);
    }
    args.push(&url);
    let r = curl(&args, &[]);
    (r.status, serde_json::from_str(&r.body).unwrap_or_default())
}

/// The API server's rules the signer flow relies on, which kubectl does not reach: TokenReview
/// audiences, `generateName`, the requester set by the server, a certificate only on an approved
/// request and never changed, conflicts on a stale resourceVersion, the 10-minute minimum.
#[test]
fn the_api_rules_the_signer_flow_relies_on() {
    let api = FakeKube::start();
    let dir = tempfile::tempdir().unwrap();
    let admin = api.admin_token.clone();
    api.add_token(
        "sa-token-of-the-authority",
        kube::User::service_account("istio-system", "signet", &["istio-ca"]),
    );
    let review = |token: &str, audience: &str| {
        call(
            &api,
            dir.path(),
            &admin,
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(
                &serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                      "spec": {"token": token, "audiences": [audience]}}),
            ),
        )
    };
    let (code, r) = review("sa-token-of-the-authority", "istio-ca");
    assert_eq!(code, 201);
    assert_eq!(r["status"]["authenticated"], true);
    assert_eq!(
        r["status"]["user"]["username"],
        "system:serviceaccount:istio-system:signet"
    );
    assert!(
        r["status"]["user"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "system:serviceaccounts")
    );
    let (_, r) = review("sa-token-of-the-authority", "another-audience");
    assert_ne!(r["status"]["authenticated"], true, "{r}");
    let (_, r) = review("nobody", "istio-ca");
    assert_ne!(r["status"]["authenticated"], true, "{r}");

    let key = signet_certs::WorkloadKey::generate().unwrap();
    let pem = key
        .request(&spiffe("foo", "httpbin").parse().unwrap(), &[])
        .unwrap()
        .pem;
    let csr = |seconds: u64| {
        serde_json::json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-workload-"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(pem.as_bytes()),
                 "signerName": "clusterissuers.cert-manager.io/foo", "expirationSeconds": seconds,
                 "usages": ["digital signature", "key encipherment", "server auth", "client auth"],
                 "username": "someone-else"}})
    };
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let (code, r) = call(
        &api,
        dir.path(),
        "sa-token-of-the-authority",
        "POST",
        path,
        Some(&csr(300)),
    );
    assert_eq!(code, 422, "{r}");
    assert!(r["message"].as_str().unwrap().contains("less than 600 seconds"), "{r}");
    let (code, created) = call(
        &api,
        dir.path(),
        "sa-token-of-the-authority",
        "POST",
        path,
        Some(&csr(3600)),
    );
    assert_eq!(code, 201, "{created}");
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("csr-workload-") && name.len() == "csr-workload-".len() + 5,
        "{name}"
    );
    assert_eq!(created["spec"]["username"], "system:serviceaccount:istio-system:signet");

    // A certificate on a request not approved: refused.
    let mut with_cert = created.clone();
    with_cert["status"]["certificate"] =
        serde_json::json!(base64::engine::general_purpose::STANDARD.encode(api.ca_pem.as_bytes()));
    let (code, r) = call(
        &api,
        dir.path(),
        &admin,
        "PUT",
        &format!("{path}/{name}/status"),
        Some(&with_cert),
    );
    assert_eq!(code, 422, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("only be set when the request is approved"),
        "{r}"
    );
    // Approved, then the certificate: accepted; a stale resourceVersion: 409; changing it: refused.
    let mut approved = created.clone();
    approved["status"]["conditions"] = serde_json::json!([{"type": "Approved", "status": "True", "reason": "Test"}]);
    let (code, approved) = call(
        &api,
        dir.path(),
        &admin,
        "PUT",
        &format!("{path}/{name}/approval"),
        Some(&approved),
    );
    assert_eq!(code, 200, "{approved}");
    let (code, _) = call(
        &api,
        dir.path(),
        &admin,
        "PUT",
        &format!("{path}/{name}/status"),
        Some(&with_cert),
    );
    assert_eq!(code, 409, "the resourceVersion moved on");
    let mut issued = approved.clone();
    issued["status"]["certificate"] = with_cert["status"]["certificate"].clone();
    let (code, issued) = call(
        &api,
        dir.path(),
        &admin,
        "PUT",
        &format!("{path}/{name}/status"),
        Some(&issued),
    );
    assert_eq!(code, 200, "{issued}");
    assert_eq!(
        issued["status"]["conditions"][0]["type"], "Approved",
        "approval conditions survive a status update"
    );
    let mut changed = issued.clone();
    changed["status"]["certificate"] = serde_json::json!("");
    let (code, r) = call(
        &api,
        dir.path(),
        &admin,
        "PUT",
        &format!("{path}/{name}/status"),
        Some(&changed),
    );
    assert_eq!(code, 422, "{r}");

    // A watch by name from a resourceVersion sees what came after it, then the deletion.
    let since = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let (code, _) = call(&api, dir.path(), &admin, "DELETE", &format!("{path}/{name}"), None);
    assert_eq!(code, 200);
    let ca = dir.path().join("ca.pem");
    let watch = curl(
        &[
            "--max-time",
            "2",
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {admin}"),
            &format!(
                "{}{path}?watch=true&resourceVersion={since}&fieldSelector=metadata.name%3D{name}&timeoutSeconds=1",
                api.url()
            ),
        ],
        &[],
    );
    let types: Vec<String> = watch
        .body
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(types, ["MODIFIED", "MODIFIED", "DELETED"], "{}", watch.body);
    assert!(api.csrs().is_empty());
}
