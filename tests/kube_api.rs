//! The rules of the Kubernetes API that Signet's signer flow relies on, checked against the real
//! kube-apiserver (tests/support/cluster.rs), with raw HTTP so nothing of Signet's client is in
//! the way: TokenReview audiences, `generateName`, the requester set by the server, a
//! certificate only on an approved request and never changed, conflicts on a stale
//! resourceVersion, the 10-minute minimum, a watch by name from a resourceVersion. If a release
//! of Kubernetes changes one of them, this fails before the authority or the controller does.

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use base64::Engine;
use cluster::cluster;
use support::*;

/// Who calls: the cluster's admin (its client certificate) or a bearer token.
enum As<'a> {
    Admin,
    Token(&'a str),
}

/// One call to the API server with curl: (status, JSON body).
fn call(who: As<'_>, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, serde_json::Value) {
    let c = cluster();
    let (crt, key) = (c.dir.join("pki/admin.crt"), c.dir.join("pki/admin.key"));
    let url = format!("{}{path}", c.url);
    let body = body.map(|b| b.to_string());
    let mut args: Vec<String> = s(&[
        "-X",
        method,
        "--cacert",
        c.ca.to_str().unwrap(),
        "-H",
        "Content-Type: application/json",
    ]);
    match who {
        As::Admin => args.extend(s(&["--cert", crt.to_str().unwrap(), "--key", key.to_str().unwrap()])),
        As::Token(t) => args.extend(s(&["-H", &format!("Authorization: Bearer {t}")])),
    }
    if let Some(b) = body {
        args.extend(["--data".to_string(), b]);
    }
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(&args, &[]);
    (r.status, serde_json::from_str(&r.body).unwrap_or_default())
}

/// The API server's rules the signer flow relies on, which kubectl does not reach: TokenReview
/// audiences, `generateName`, the requester set by the server, a certificate only on an approved
/// request and never changed, conflicts on a stale resourceVersion, the 10-minute minimum.
#[test]
fn the_api_rules_the_signer_flow_relies_on() {
    let c = cluster();
    let ns = c.namespace("api");
    // A service account that may create CSRs (and nothing else), as the authority's does.
    let (_, istio_ca_token) = c.pod_token(&ns.name, "signet", "istio-ca");
    c.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {0}-csr-create\nrules:\n- apiGroups: [certificates.k8s.io]\n  resources: [certificatesigningrequests]\n  verbs: [create]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {0}-csr-create\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {0}-csr-create}}\nsubjects:\n- {{kind: ServiceAccount, name: signet, namespace: {0}}}\n",
        ns.name
    ));
    let api_token = c.token(&ns.name, "signet", "https://kubernetes.default.svc.cluster.local");
    let user = format!("system:serviceaccount:{}:signet", ns.name);
    let ca_pem = std::fs::read_to_string(&c.ca).unwrap();
    let review = |token: &str, audience: &str| {
        call(
            As::Admin,
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            Some(
                &serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                      "spec": {"token": token, "audiences": [audience]}}),
            ),
        )
    };
    let (code, r) = review(&istio_ca_token, "istio-ca");
    assert_eq!(code, 201);
    assert_eq!(r["status"]["authenticated"], true);
    assert_eq!(r["status"]["user"]["username"], user.as_str());
    assert!(
        r["status"]["user"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "system:serviceaccounts")
    );
    let (_, r) = review(&istio_ca_token, "another-audience");
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
    let (code, r) = call(As::Token(&api_token), "POST", path, Some(&csr(300)));
    assert_eq!(code, 422, "{r}");
    assert!(r["message"].as_str().unwrap().contains("less than 600 seconds"), "{r}");
    let (code, created) = call(As::Token(&api_token), "POST", path, Some(&csr(3600)));
    assert_eq!(code, 201, "{created}");
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("csr-workload-") && name.len() == "csr-workload-".len() + 5,
        "{name}"
    );
    assert_eq!(created["spec"]["username"], user.as_str());

    // Approved, then the certificate: accepted; a stale resourceVersion: 409; changing it: refused.
    let mut with_cert = created.clone();
    with_cert["status"]["certificate"] =
        serde_json::json!(base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes()));
    let mut approved = created.clone();
    approved["status"]["conditions"] = serde_json::json!([{"type": "Approved", "status": "True", "reason": "Test"}]);
    let (code, approved) = call(As::Admin, "PUT", &format!("{path}/{name}/approval"), Some(&approved));
    assert_eq!(code, 200, "{approved}");
    let (code, _) = call(As::Admin, "PUT", &format!("{path}/{name}/status"), Some(&with_cert));
    assert_eq!(code, 409, "the resourceVersion moved on");
    let mut issued = approved.clone();
    issued["status"]["certificate"] = with_cert["status"]["certificate"].clone();
    let (code, issued) = call(As::Admin, "PUT", &format!("{path}/{name}/status"), Some(&issued));
    assert_eq!(code, 200, "{issued}");
    assert_eq!(
        issued["status"]["conditions"][0]["type"], "Approved",
        "approval conditions survive a status update"
    );
    let mut changed = issued.clone();
    changed["status"]["certificate"] = serde_json::json!("");
    let (code, r) = call(As::Admin, "PUT", &format!("{path}/{name}/status"), Some(&changed));
    assert_eq!(code, 422, "{r}");

    // A watch by name from a resourceVersion sees what came after it, then the deletion.
    let since = created["metadata"]["resourceVersion"].as_str().unwrap().to_string();
    let (code, _) = call(As::Admin, "DELETE", &format!("{path}/{name}"), None);
    assert_eq!(code, 200);
    let watch = curl(
        &[
            "--max-time",
            "3",
            "--cacert",
            c.ca.to_str().unwrap(),
            "--cert",
            c.dir.join("pki/admin.crt").to_str().unwrap(),
            "--key",
            c.dir.join("pki/admin.key").to_str().unwrap(),
            &format!(
                "{}{path}?watch=true&resourceVersion={since}&fieldSelector=metadata.name%3D{name}&timeoutSeconds=1",
                c.url
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
    // The API does not make a signer wait for approval: a certificate on a request nobody
    // approved is stored. (The fake of earlier releases refused it.) So the authority trusts
    // no status.certificate for being there: it checks the chain against the signer's roots,
    // the key and the identity (kubernetes/src/csr.rs).
    let (code, pending) = call(As::Token(&api_token), "POST", path, Some(&csr(3600)));
    assert_eq!(code, 201, "{pending}");
    let pending_name = pending["metadata"]["name"].as_str().unwrap().to_string();
    let mut early = pending.clone();
    early["status"]["certificate"] = with_cert["status"]["certificate"].clone();
    let (code, r) = call(As::Admin, "PUT", &format!("{path}/{pending_name}/status"), Some(&early));
    assert_eq!(code, 200, "{r}");
    let (code, _) = call(As::Admin, "DELETE", &format!("{path}/{pending_name}"), None);
    assert_eq!(code, 200);
    let (code, _) = call(As::Admin, "GET", &format!("{path}/{name}"), None);
    assert_eq!(code, 404, "deleted");
    c.kubectl_ok(&[
        "delete",
        "clusterrole,clusterrolebinding",
        &format!("{}-csr-create", ns.name),
    ]);
}
