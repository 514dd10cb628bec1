//! The Kubernetes manifests of `examples/kubernetes`, checked statically and then installed on
//! the real control plane of tests/support/cluster.rs:
//!
//! - every built-in object against the Kubernetes API schemas of [`KUBERNETES_VERSIONS`],
//!   strictly (unknown fields are errors), with kubernetes-validate from target/venv (./test.sh
//!   installs tests/requirements.txt there); cert-manager's objects against cert-manager's
//!   documented fields, since kubernetes-validate knows built-in kinds only;
//! - what only a running cluster would show: references between objects, ports, signer names,
//!   token audiences, trust domains, RBAC, the restricted Pod Security Standard; each of these
//!   checks is also run against a broken copy of the manifests, to show that it notices;
//! - with the real `signet`: the mesh config filled by `fill-mesh-config.sh` maps each root to its
//!   signer; every flag and variable the manifests pass exists; and each scenario's own command
//!   lines (authority, signer controller, sidecars, with their mounted ConfigMaps and projected
//!   tokens) run on the real cluster, with every file applied as the README applies it (the
//!   real kube-apiserver 1.37 validates each object strictly and admits each Pod under its
//!   namespace's Pod Security Standard; the real cert-manager signs), until every sidecar holds
//!   a certificate of its namespace's signer.
//!
//! YAML is read by PyYAML (from the same virtualenv), with duplicate keys refused, and handed
//! over as JSON.

#[path = "support/cluster.rs"]
mod cluster;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

/// The Kubernetes versions whose API schemas the manifests must satisfy, as the README says:
/// 1.33 is the oldest Signet's Kubernetes client targets (k8s-openapi `v1_33`); 1.34 the newest
/// kubernetes-validate knows. The scenario runs add the cluster's own release (1.37).
const KUBERNETES_VERSIONS: &[&str] = &["1.33", "1.34"];
const EXAMPLES: &str = "examples/kubernetes";
/// The one image every Signet container names (a placeholder the README says how to replace).
const SIGNET_IMAGE: &str = "ghcr.io/signet/signet:0.1.0";
/// `CERT_SIGNER_DOMAIN`'s default, which bare signer names are expanded with.
const SIGNER_DOMAIN: &str = "clusterissuers.cert-manager.io";
/// The authority's `--server-name` default and the sidecars' `--authority-server-name` default.
const AUTHORITY_NAME: &str = "signet-authority.istio-system.svc";
/// `--token-audience`'s default.
const DEFAULT_AUDIENCE: &str = "istio-ca";
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// The signing policy's default `maxWorkloadCertTtl` (Istio's).
const DEFAULT_MAX_TTL: &str = "90d";
/// Flags without a value; every other flag is written `--flag=value` in the manifests.
const BOOLEAN_FLAGS: &[&str] = &["--kubernetes", "--cluster-trust-bundles", "--publish-trust-bundles"];

/// The files a user applies, in order: with cert-manager, and without it (the signer controller).
const MAIN: &[&str] = &[
    "00-namespaces.yaml",
    "10-cert-manager-issuers.yaml",
    "20-mesh-config.yaml",
    "30-signet-authority.yaml",
    "40-foo.yaml",
    "50-bar.yaml",
];
const VARIANT: &[&str] = &[
    "00-namespaces.yaml",
    "controller-variant/00-signet-signers-namespace.yaml",
    "controller-variant/10-signet-signer-controller.yaml",
    "20-mesh-config.yaml",
    "controller-variant/30-signet-authority.yaml",
    "40-foo.yaml",
    "50-bar.yaml",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv_bin(name: &str) -> PathBuf {
    let path = root().join("target/venv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run ./test.sh, which installs tests/requirements.txt (kubernetes-validate, PyYAML) into target/venv",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// Reading YAML

/// One YAML document of a file.
#[derive(Clone, Debug)]
struct Obj {
    file: String,
    index: usize,
    doc: Value,
}

impl Obj {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }
    fn ns(&self) -> &str {
        self.doc["metadata"]["namespace"].as_str().unwrap_or("")
    }
    fn label(&self) -> String {
        let at = if self.ns().is_empty() {
            self.name().to_string()
        } else {
            format!("{}/{}", self.ns(), self.name())
        };
        format!("{} (document {}): {} {at}", self.file, self.index + 1, self.kind())
    }
    fn is(&self, kind: &str, ns: &str, name: &str) -> bool {
        self.kind() == kind && self.ns() == ns && self.name() == name
    }
}

/// PyYAML's safe loader, refusing duplicate keys (kubectl refuses them; PyYAML would keep the
/// last one silently). Prints `[[file index, document index, document], ...]` as JSON.
const YAML_TO_JSON: &str = r#"
import json, sys, yaml

class Loader(yaml.SafeLoader):
    pass

def mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, "duplicate key %r" % (key,), key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)

Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
out = []
for n, path in enumerate(sys.argv[1:]):
    with open(path) as f:
        for i, doc in enumerate(yaml.load_all(f, Loader=Loader)):
            if doc is not None:
                out.append([n, i, doc])
json.dump(out, sys.stdout)
"#;

/// The documents of `files` (paths), labelled with `labels`.
fn load_yaml(files: &[PathBuf], labels: &[String]) -> Vec<Obj> {
    let out = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(YAML_TO_JSON)
        .args(files)
        .output()
        .expect("run target/venv/bin/python");
    assert!(
        out.status.success(),
        "cannot read {labels:?} as YAML:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<(usize, usize, Value)> = serde_json::from_slice(&out.stdout).unwrap();
    docs.into_iter()
        .map(|(n, index, doc)| Obj {
            file: labels[n].clone(),
            index,
            doc,
        })
        .collect()
}

/// One YAML text (a ConfigMap's embedded file), parsed.
fn parse_yaml_text(text: &str, label: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.yaml");
    std::fs::write(&path, text).unwrap();
    let mut docs = load_yaml(&[path], &[label.to_string()]);
    assert_eq!(docs.len(), 1, "{label}: expected one YAML document");
    docs.remove(0).doc
}

/// Every `.yaml` file under examples/kubernetes, relative to it.
fn manifest_files() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let base = root().join(EXAMPLES);
    let mut out = Vec::new();
    walk(&base, &base, &mut out);
    out.sort();
    out
}

/// Every document of every manifest, read once.
fn manifests() -> &'static [Obj] {
    static ALL: OnceLock<Vec<Obj>> = OnceLock::new();
    ALL.get_or_init(|| {
        let files = manifest_files();
        let paths: Vec<PathBuf> = files.iter().map(|f| root().join(EXAMPLES).join(f)).collect();
        load_yaml(&paths, &files)
    })
}

fn readme() -> String {
    std::fs::read_to_string(root().join(EXAMPLES).join("README.md")).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Schemas: kubernetes-validate for built-in kinds, cert-manager's fields for its kinds

fn is_cert_manager(o: &Obj) -> bool {
    o.doc["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with("cert-manager.io/"))
}

/// Validates built-in objects against the schemas of every version in [`KUBERNETES_VERSIONS`],
/// strictly. kubernetes-validate only warns about a kind it has no schema for (a misspelt
/// apiVersion, say) and exits 0: here that is a failure too, as is anything but its "passed" line
/// for each object and version.
fn kubernetes_validate(objs: &[&Obj]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = objs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let path = dir.path().join(format!("{i:03}.yaml"));
            std::fs::write(&path, serde_json::to_string(&o.doc).unwrap()).unwrap();
            path.display().to_string()
        })
        .collect();
    let mut cmd = Command::new(venv_bin("kubernetes-validate"));
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd.args(&files).output().expect("run kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut problems = Vec::new();
    for (o, file) in objs.iter().zip(&files) {
        for v in KUBERNETES_VERSIONS {
            let passed = format!(
                "INFO {file} passed for resource {}/{} against version {v}",
                o.kind().to_lowercase(),
                o.name()
            );
            if !stdout.lines().any(|l| l == passed) {
                let said: Vec<&str> = stdout
                    .lines()
                    .filter(|l| l.contains(&format!("{file} ")) && l.contains(&format!("version {v}")))
                    .collect();
                problems.push(format!(
                    "{}: not valid for Kubernetes {v}: {}",
                    o.label(),
                    said.join(" | ").replace(&format!(" {file}"), "")
                ));
            }
        }
    }
    if problems.is_empty() && !out.status.success() {
        problems.push(format!(
            "kubernetes-validate failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    problems
}

/// cert-manager.io/v1 Certificate `spec` fields (cert-manager 1.21's CRD).
const CERTIFICATE_SPEC: &[&str] = &[
    "additionalOutputFormats",
    "commonName",
    "dnsNames",
    "duration",
    "emailAddresses",
    "encodeUsagesInRequest",
    "ipAddresses",
    "isCA",
    "issuerRef",
    "keystores",
    "literalSubject",
    "nameConstraints",
    "otherNames",
    "privateKey",
    "renewBefore",
    "renewBeforePercentage",
    "renewal",
    "revisionHistoryLimit",
    "secretName",
    "secretTemplate",
    "signatureAlgorithm",
    "subject",
    "uris",
    "usages",
];
/// The key usages the CSR API (`certificates.k8s.io/v1` `spec.usages`, k8s.io/api's
/// `KeyUsage`) and cert-manager accept.
const KEY_USAGES: &[&str] = &[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "s/mime",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "timestamping",
    "ocsp signing",
    "microsoft sgc",
    "netscape sgc",
];

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// Keys of `v` outside `allowed`, as problems (or one problem if `v` is not a mapping).
fn unknown_keys(v: &Value, allowed: &[&str], at: &str, p: &mut Vec<String>) {
    if !v.is_object() {
        p.push(format!("{at}: must be a mapping"));
        return;
    }
    for k in keys(v) {
        if !allowed.contains(&k) {
            p.push(format!("{at}.{k}: unknown field (allowed: {})", allowed.join(", ")));
        }
    }
}

/// A Go duration (`time.ParseDuration`), as cert-manager takes them: "24h", "1h30m", "90s".
fn go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "ms", "h", "m", "s"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// cert-manager's objects, against its documented fields: unknown fields and missing required
/// ones are errors. Only the issuer types these manifests use (selfSigned, ca) are understood.
fn check_cert_manager(o: &Obj) -> Vec<String> {
    let mut p = Vec::new();
    let at = o.label();
    if o.doc["apiVersion"] != "cert-manager.io/v1" {
        p.push(format!("{at}: apiVersion must be cert-manager.io/v1"));
    }
    unknown_keys(&o.doc, &["apiVersion", "kind", "metadata", "spec"], &at, &mut p);
    unknown_keys(
        &o.doc["metadata"],
        &["name", "namespace", "labels", "annotations"],
        &format!("{at}: metadata"),
        &mut p,
    );
    if !is_dns_subdomain(o.name()) {
        p.push(format!("{at}: metadata.name {:?} is not a DNS subdomain", o.name()));
    }
    let spec = &o.doc["spec"];
    match o.kind() {
        "ClusterIssuer" => {
            if !o.ns().is_empty() {
                p.push(format!(
                    "{at}: a ClusterIssuer is cluster-scoped; remove metadata.namespace"
                ));
            }
            unknown_keys(
                spec,
                &["acme", "ca", "selfSigned", "vault", "venafi"],
                &format!("{at}: spec"),
                &mut p,
            );
            let types = keys(spec);
            if types.len() != 1 {
                p.push(format!("{at}: spec must name exactly one issuer type, not {types:?}"));
            }
            if !spec["selfSigned"].is_null() {
                unknown_keys(
                    &spec["selfSigned"],
                    &["crlDistributionPoints"],
                    &format!("{at}: spec.selfSigned"),
                    &mut p,
                );
            }
            if !spec["ca"].is_null() {
                let ca = &spec["ca"];
                unknown_keys(
                    ca,
                    &[
                        "secretName",
                        "crlDistributionPoints",
                        "ocspServers",
                        "issuingCertificateURLs",
                    ],
                    &format!("{at}: spec.ca"),
                    &mut p,
                );
                if !ca["secretName"].as_str().is_some_and(is_dns_subdomain) {
                    p.push(format!("{at}: spec.ca.secretName is required (the CA's secret)"));
                }
            }
            for other in ["acme", "vault", "venafi"] {
                if !spec[other].is_null() {
                    p.push(format!(
                        "{at}: spec.{other}: not understood by this test (selfSigned and ca are)"
                    ));
                }
            }
        }
        "Certificate" => {
            if o.ns().is_empty() {
                p.push(format!("{at}: a Certificate is namespaced; give metadata.namespace"));
            }
            unknown_keys(spec, CERTIFICATE_SPEC, &format!("{at}: spec"), &mut p);
            if !spec["secretName"].as_str().is_some_and(is_dns_subdomain) {
                p.push(format!("{at}: spec.secretName is required"));
            }
            let issuer = &spec["issuerRef"];
            unknown_keys(
                issuer,
                &["name", "kind", "group"],
                &format!("{at}: spec.issuerRef"),
                &mut p,
            );
            if !issuer["name"].is_string() {
                p.push(format!("{at}: spec.issuerRef.name is required"));
            }
            let group = issuer["group"].as_str().unwrap_or("cert-manager.io");
            let kind = issuer["kind"].as_str().unwrap_or("Issuer");
            if group == "cert-manager.io" && !["Issuer", "ClusterIssuer"].contains(&kind) {
                p.push(format!(
                    "{at}: spec.issuerRef.kind must be Issuer or ClusterIssuer, not {kind}"
                ));
            }
            for (field, check) in [
                ("isCA", spec["isCA"].is_boolean()),
                ("commonName", spec["commonName"].as_str().is_some_and(|c| c.len() <= 64)),
                ("duration", spec["duration"].as_str().is_some_and(go_duration)),
                ("renewBefore", spec["renewBefore"].as_str().is_some_and(go_duration)),
                (
                    "revisionHistoryLimit",
                    spec["revisionHistoryLimit"].as_u64().is_some_and(|n| n >= 1),
                ),
                ("renewBeforePercentage", spec["renewBeforePercentage"].is_u64()),
                ("literalSubject", spec["literalSubject"].is_string()),
                ("encodeUsagesInRequest", spec["encodeUsagesInRequest"].is_boolean()),
                ("signatureAlgorithm", spec["signatureAlgorithm"].is_string()),
            ] {
                if !spec[field].is_null() && !check {
                    p.push(format!("{at}: spec.{field} has the wrong type or form"));
                }
            }
            for field in ["dnsNames", "uris", "emailAddresses", "ipAddresses"] {
                if !spec[field].is_null() && !spec[field].as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                    p.push(format!("{at}: spec.{field} must be a list of strings"));
                }
            }
            if !spec["usages"].is_null() {
                let ok = spec["usages"]
                    .as_array()
                    .is_some_and(|a| a.iter().all(|u| u.as_str().is_some_and(|u| KEY_USAGES.contains(&u))));
                if !ok {
                    p.push(format!(
                        "{at}: spec.usages: each must be one of {}",
                        KEY_USAGES.join(", ")
                    ));
                }
            }
            let key = &spec["privateKey"];
            if !key.is_null() {
                unknown_keys(
                    key,
                    &["algorithm", "encoding", "rotationPolicy", "size"],
                    &format!("{at}: spec.privateKey"),
                    &mut p,
                );
                for (field, allowed) in [
                    ("algorithm", &["RSA", "ECDSA", "Ed25519"][..]),
                    ("encoding", &["PKCS1", "PKCS8"][..]),
                    ("rotationPolicy", &["Never", "Always"][..]),
                ] {
                    if !key[field].is_null() && !key[field].as_str().is_some_and(|v| allowed.contains(&v)) {
                        p.push(format!("{at}: spec.privateKey.{field} must be one of {allowed:?}"));
                    }
                }
                if !key["size"].is_null() && !key["size"].is_u64() {
                    p.push(format!("{at}: spec.privateKey.size must be an integer"));
                }
            }
            if !spec["subject"].is_null() {
                unknown_keys(
                    &spec["subject"],
                    &[
                        "countries",
                        "localities",
                        "organizationalUnits",
                        "organizations",
                        "postalCodes",
                        "provinces",
                        "serialNumber",
                        "streetAddresses",
                    ],
                    &format!("{at}: spec.subject"),
                    &mut p,
                );
            }
            if !spec["secretTemplate"].is_null() {
                unknown_keys(
                    &spec["secretTemplate"],
                    &["annotations", "labels"],
                    &format!("{at}: spec.secretTemplate"),
                    &mut p,
                );
            }
        }
        other => p.push(format!(
            "{at}: cert-manager kind {other} is not understood by this test"
        )),
    }
    p
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// Schema problems of any objects: built-in ones through kubernetes-validate, cert-manager's here.
fn schema_problems(objs: &[&Obj]) -> Vec<String> {
    let (cm, builtin): (Vec<&Obj>, Vec<&Obj>) = objs.iter().partition(|o| is_cert_manager(o));
    let mut p = kubernetes_validate(&builtin);
    for o in cm {
        p.extend(check_cert_manager(o));
    }
    p
}

// ---------------------------------------------------------------------------------------------
// A scenario: the objects a user applies, and what the README has them make by hand

/// An object the manifests use but do not contain: made by a README command, by cert-manager
/// from a Certificate, or by Helm.
#[derive(Clone, Debug)]
struct External {
    kind: &'static str,
    ns: String,
    name: String,
    keys: BTreeSet<String>,
}

#[derive(Clone, Debug)]
struct Scenario {
    name: &'static str,
    /// The files a user applies, in order.
    files: Vec<&'static str>,
    objs: Vec<Obj>,
    external: Vec<External>,
    /// The `mesh` key of ConfigMap istio-system/istio, parsed.
    mesh: Value,
    /// The `signing-policy.yaml` key of ConfigMap istio-system/signet-signing-policy, parsed.
    policy: Value,
}

/// The files `kubectl create secret generic NAME --from-file=DIR` takes from a signer directory
/// made by `signet signer new`.
const SIGNER_DIR_FILES: &[&str] = &["ca.crt", "tls.crt", "tls.key"];

/// ConfigMaps and Secrets the README has the user create with `kubectl create`.
fn readme_created() -> Vec<External> {
    let text = readme().replace("\\\n", " ");
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(at) = words.windows(2).position(|w| w == ["kubectl", "create"]) else {
            continue;
        };
        let words = &words[at + 2..];
        let (kind, name) = match words {
            ["configmap", name, ..] => ("ConfigMap", *name),
            ["secret", "generic" | "tls", name, ..] => ("Secret", *name),
            _ => continue,
        };
        let mut ns = String::new();
        let mut keys = BTreeSet::new();
        for (i, w) in words.iter().enumerate() {
            if *w == "-n" || *w == "--namespace" {
                ns = words.get(i + 1).unwrap_or(&"").to_string();
            } else if let Some(n) = w.strip_prefix("--namespace=") {
                ns = n.to_string();
            } else if let Some(src) = w.strip_prefix("--from-file=") {
                match src.split_once('=') {
                    Some((key, _)) => {
                        keys.insert(key.to_string());
                    }
                    None if src.starts_with("signers/") && !src.contains('.') => {
                        keys.extend(SIGNER_DIR_FILES.iter().map(|k| k.to_string()));
                    }
                    None => {
                        keys.insert(src.rsplit('/').next().unwrap().to_string());
                    }
                }
            }
        }
        out.push(External {
            kind,
            ns,
            name: name.to_string(),
            keys,
        });
    }
    out
}

fn scenario(name: &'static str, files: &[&'static str]) -> Scenario {
    let mut objs = Vec::new();
    for f in files {
        let of_file: Vec<Obj> = manifests().iter().filter(|o| o.file == *f).cloned().collect();
        assert!(!of_file.is_empty(), "{EXAMPLES}/{f}: missing, or holds no object");
        objs.extend(of_file);
    }
    let mut external = readme_created();
    // cert-manager makes each Certificate's secret (tls.crt, tls.key, ca.crt) ...
    for o in objs.iter().filter(|o| o.kind() == "Certificate") {
        if let Some(secret) = o.doc["spec"]["secretName"].as_str() {
            external.push(External {
                kind: "Secret",
                ns: o.ns().to_string(),
                name: secret.to_string(),
                keys: SIGNER_DIR_FILES.iter().map(|k| k.to_string()).collect(),
            });
        }
    }
    // ... and Helm its namespace, when cert-manager is part of the scenario.
    if objs.iter().any(is_cert_manager) {
        assert!(
            readme().contains("--namespace cert-manager --create-namespace"),
            "the README must install cert-manager into namespace cert-manager"
        );
        external.push(External {
            kind: "Namespace",
            ns: String::new(),
            name: "cert-manager".into(),
            keys: BTreeSet::new(),
        });
    }
    let embedded = |cm: &str, key: &str| -> Value {
        let o = objs
            .iter()
            .find(|o| o.is("ConfigMap", "istio-system", cm))
            .unwrap_or_else(|| panic!("{name}: no ConfigMap istio-system/{cm}"));
        let text = o.doc["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no data.{key}", o.label()));
        parse_yaml_text(text, &format!("{}: data.{key}", o.label()))
    };
    Scenario {
        name,
        files: files.to_vec(),
        mesh: embedded("istio", "mesh"),
        policy: embedded("signet-signing-policy", "signing-policy.yaml"),
        objs,
        external,
    }
}

fn main_scenario() -> Scenario {
    scenario("with cert-manager", MAIN)
}

fn variant_scenario() -> Scenario {
    scenario("without cert-manager", VARIANT)
}

fn full_signer(s: &str) -> String {
    if s.contains('/') {
        s.to_string()
    } else {
        format!("{SIGNER_DOMAIN}/{s}")
    }
}

/// A container's `env` value (plain values only).
fn env<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
}

fn env_field_ref<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["valueFrom"]["fieldRef"]["fieldPath"].as_str())
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}

fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// A Signet container's command line: the subcommand and its `--flag[=value]`s.
#[derive(Clone, Debug)]
struct Signet {
    sub: String,
    flags: Vec<(String, Option<String>)>,
}

impl Signet {
    fn all(&self, flag: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(f, _)| f == flag)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }
    fn one(&self, flag: &str) -> Option<&str> {
        self.all(flag).first().copied()
    }
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|(f, _)| f == flag)
    }
    /// Ports the process listens on beyond loopback: what a Service or probe can reach.
    fn pod_ports(&self) -> BTreeSet<u16> {
        let mut addrs: Vec<&str> = self.all("--admin");
        addrs.extend(self.all("--listen"));
        addrs.extend(
            self.all("--inbound")
                .into_iter()
                .filter_map(|i| i.split_once('=').map(|(l, _)| l)),
        );
        addrs
            .into_iter()
            .filter(|a| !host_of(a).starts_with("127."))
            .filter_map(port_of)
            .collect()
    }
    fn inbound_ports(&self) -> BTreeSet<u16> {
        self.all("--inbound")
            .into_iter()
            .filter_map(|i| i.split_once('=').and_then(|(l, _)| port_of(l)))
            .collect()
    }
}

const SUBCOMMANDS: &[&[&str]] = &[&["proxy"], &["authority", "serve"], &["signer", "controller"]];

/// The command line of a Signet container (its image is [`SIGNET_IMAGE`]), or why it cannot be
/// read; `None` for other containers.
fn signet_of(c: &Value) -> Option<Result<Signet, String>> {
    if c["image"] != SIGNET_IMAGE {
        return None;
    }
    let args: Vec<&str> = c["args"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !c["command"].is_null() {
        return Some(Err(
            "sets `command`: the image's entrypoint is signet; give `args` only".into(),
        ));
    }
    let Some(sub) = SUBCOMMANDS.iter().find(|s| args.starts_with(s)) else {
        return Some(Err(format!("args {args:?} start with no known subcommand")));
    };
    let mut flags = Vec::new();
    for a in &args[sub.len()..] {
        let Some(flag) = a.strip_prefix("--") else {
            return Some(Err(format!("{a:?}: write each flag as one argument, --flag=value")));
        };
        match flag.split_once('=') {
            Some((f, v)) => flags.push((format!("--{f}"), Some(v.to_string()))),
            None if BOOLEAN_FLAGS.contains(a) => flags.push((a.to_string(), None)),
            None => return Some(Err(format!("{a}: give its value as {a}=VALUE"))),
        }
    }
    Some(Ok(Signet {
        sub: sub.join(" "),
        flags,
    }))
}

/// A pod template, from a Deployment.
struct Pod<'a> {
    obj: &'a Obj,
    spec: &'a Value,
    labels: &'a Value,
}

impl<'a> Pod<'a> {
    fn ns(&self) -> &'a str {
        self.obj.ns()
    }
    fn sa(&self) -> &'a str {
        self.spec["serviceAccountName"].as_str().unwrap_or("default")
    }
    fn containers(&self) -> Vec<&'a Value> {
        let mut all: Vec<&Value> = Vec::new();
        for key in ["initContainers", "containers"] {
            if let Some(cs) = self.spec[key].as_array() {
                all.extend(cs);
            }
        }
        all
    }
    fn label(&self, c: &Value) -> String {
        format!("{} container {}", self.obj.label(), c["name"].as_str().unwrap_or("?"))
    }
    fn signets(&self) -> Vec<(&'a Value, Signet)> {
        self.containers()
            .into_iter()
            .filter_map(|c| signet_of(c).and_then(Result::ok).map(|s| (c, s)))
            .collect()
    }
    fn runs(&self, sub: &str) -> Option<Signet> {
        self.signets().into_iter().find(|(_, s)| s.sub == sub).map(|(_, s)| s)
    }
    /// Ports the pod serves on: Signet's from its flags, other containers' declared ones.
    fn ports(&self) -> BTreeSet<u16> {
        let mut ports = BTreeSet::new();
        for c in self.containers() {
            match signet_of(c) {
                Some(Ok(s)) => ports.extend(s.pod_ports()),
                Some(Err(_)) => {}
                None => ports.extend(container_ports(c).into_values()),
            }
        }
        ports
    }
    /// A port given by number or by a container port's name.
    fn resolve(&self, port: &Value) -> Option<u16> {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).ok();
        }
        let name = port.as_str()?;
        self.containers()
            .into_iter()
            .find_map(|c| container_ports(c).get(name).copied())
    }
    fn volume(&self, name: &str) -> Option<&'a Value> {
        self.spec["volumes"].as_array()?.iter().find(|v| v["name"] == name)
    }
    fn matches(&self, selector: &Value) -> bool {
        selector
            .as_object()
            .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| self.labels[k.as_str()] == *v))
    }
}

fn container_ports(c: &Value) -> BTreeMap<String, u16> {
    c["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let n = u16::try_from(p["containerPort"].as_u64()?).ok()?;
                    Some((p["name"].as_str().unwrap_or("").to_string(), n))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Scenario {
    fn find(&self, kind: &str, ns: &str, name: &str) -> Option<&Obj> {
        self.objs.iter().find(|o| o.is(kind, ns, name))
    }
    fn exists(&self, kind: &str, ns: &str, name: &str) -> bool {
        self.find(kind, ns, name).is_some()
            || self
                .external
                .iter()
                .any(|e| e.kind == kind && e.ns == ns && e.name == name)
    }
    /// The data keys of a ConfigMap or Secret, wherever it comes from.
    fn data_keys(&self, kind: &str, ns: &str, name: &str) -> Option<BTreeSet<String>> {
        if let Some(o) = self.find(kind, ns, name) {
            let mut ks = BTreeSet::new();
            for field in ["data", "stringData", "binaryData"] {
                ks.extend(keys(&o.doc[field]).into_iter().map(String::from));
            }
            return Some(ks);
        }
        self.external
            .iter()
            .find(|e| e.kind == kind && e.ns == ns && e.name == name)
            .map(|e| e.keys.clone())
    }
    fn pods(&self) -> Vec<Pod<'_>> {
        self.objs
            .iter()
            .filter(|o| o.kind() == "Deployment")
            .map(|o| Pod {
                obj: o,
                spec: &o.doc["spec"]["template"]["spec"],
                labels: &o.doc["spec"]["template"]["metadata"]["labels"],
            })
            .collect()
    }
    fn selected(&self, service: &Obj) -> Vec<Pod<'_>> {
        self.pods()
            .into_iter()
            .filter(|p| p.ns() == service.ns() && p.matches(&service.doc["spec"]["selector"]))
            .collect()
    }
    fn authority(&self) -> Option<(Pod<'_>, Signet)> {
        self.pods()
            .into_iter()
            .find_map(|p| p.runs("authority serve").map(|s| (p, s)))
    }
    /// The signers of the mesh config (`caCertificates[].certSigners`), full names.
    fn signers(&self) -> BTreeSet<String> {
        self.mesh["caCertificates"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["certSigners"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| s.as_str().map(full_signer))
            .collect()
    }
    fn trust_domain(&self) -> &str {
        self.mesh["trustDomain"].as_str().unwrap_or(DEFAULT_TRUST_DOMAIN)
    }
    /// The signer the signing policy gives a namespace.
    fn policy_signer(&self, ns: &str) -> String {
        let own = self.policy["namespaces"][ns]["signer"].as_str();
        full_signer(own.or(self.policy["defaultSigner"].as_str()).unwrap_or("istio-system"))
    }
    /// Rules of the Roles and ClusterRoles bound to a service account, with the Role's namespace
    /// ("" for a ClusterRole bound cluster-wide).
    fn rules_of(&self, ns: &str, sa: &str) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for b in self
            .objs
            .iter()
            .filter(|o| o.kind() == "RoleBinding" || o.kind() == "ClusterRoleBinding")
        {
            let bound = b.doc["subjects"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"].as_str().unwrap_or(b.ns()) == ns
            });
            if !bound {
                continue;
            }
            let role_ns = if b.kind() == "RoleBinding" { b.ns() } else { "" };
            let role_kind = b.doc["roleRef"]["kind"].as_str().unwrap_or("");
            let role_name = b.doc["roleRef"]["name"].as_str().unwrap_or("");
            let role = if role_kind == "Role" {
                self.find("Role", b.ns(), role_name)
            } else {
                self.find("ClusterRole", "", role_name)
            };
            if let Some(role) = role {
                for r in role.doc["rules"].as_array().into_iter().flatten() {
                    out.push((role_ns.to_string(), r));
                }
            }
        }
        out
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rule_allows(rule: &Value, group: &str, resource: &str, verb: &str, name: &str) -> bool {
    let has = |field: &str, want: &str| strings(&rule[field]).iter().any(|v| *v == want || *v == "*");
    has("apiGroups", group)
        && has("resources", resource)
        && has("verbs", verb)
        && (rule["resourceNames"].is_null() || strings(&rule["resourceNames"]).contains(&name))
}

// ---------------------------------------------------------------------------------------------
// The checks. Each returns its problems; `each_check_notices_what_it_guards` breaks the manifests
// in memory and shows that the check in charge speaks up.

type Check = fn(&Scenario) -> Vec<String>;

const CHECKS: &[(&str, Check)] = &[
    ("namespaces", check_namespaces),
    ("references", check_references),
    ("services", check_services),
    ("signers", check_signers),
    ("signer keys", check_signer_keys),
    ("sidecars", check_sidecars),
    ("authority", check_authority),
    ("security", check_security),
    ("lifetimes", check_lifetimes),
];

/// Whether a kind is namespaced (`None`: unknown to this test, which must learn it).
fn namespaced(kind: &str) -> Option<bool> {
    match kind {
        "ServiceAccount" | "ConfigMap" | "Secret" | "Service" | "Deployment" | "Role" | "RoleBinding"
        | "Certificate" => Some(true),
        "Namespace" | "ClusterRole" | "ClusterRoleBinding" | "ClusterIssuer" => Some(false),
        _ => None,
    }
}

/// Namespaced objects say their namespace (so `kubectl apply -f` never puts them in the
/// current one), the namespace is made before, cluster-scoped ones have none, nothing is defined
/// twice, and every namespace enforces the restricted Pod Security Standard.
fn check_namespaces(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    let mut seen = BTreeSet::new();
    for o in &s.objs {
        if !seen.insert((o.kind().to_string(), o.ns().to_string(), o.name().to_string())) {
            p.push(format!("{}: defined twice", o.label()));
        }
        match namespaced(o.kind()) {
            Some(true) if o.ns().is_empty() => p.push(format!("{}: no metadata.namespace", o.label())),
            Some(true) if !s.exists("Namespace", "", o.ns()) => {
                p.push(format!("{}: namespace {} is made by no manifest", o.label(), o.ns()))
            }
            Some(false) if !o.ns().is_empty() => {
                p.push(format!("{}: cluster-scoped, yet has metadata.namespace", o.label()))
            }
            None => p.push(format!(
                "{}: kind {} is unknown to tests/manifests.rs; teach it its scope and references",
                o.label(),
                o.kind()
            )),
            _ => {}
        }
        if o.kind() == "Namespace" && o.doc["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] != "restricted"
        {
            p.push(format!(
                "{}: must enforce the restricted Pod Security Standard",
                o.label()
            ));
        }
    }
    p
}

/// Every ServiceAccount, ConfigMap, Secret, Role and issuer an object names exists, in the
/// manifests or as something the README (or cert-manager, or Helm) makes; every ServiceAccount
/// is used; every volume is mounted and every mount has its volume.
fn check_references(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    let mut used_sas = BTreeSet::new();
    for pod in s.pods() {
        let at = pod.obj.label();
        let ns = pod.ns();
        used_sas.insert((ns.to_string(), pod.sa().to_string()));
        if !s.exists("ServiceAccount", ns, pod.sa()) {
            p.push(format!("{at}: ServiceAccount {ns}/{} does not exist", pod.sa()));
        }
        let need = |kind: &str, name: &str, items: &Value, what: &str, p: &mut Vec<String>| match s
            .data_keys(kind, ns, name)
        {
            None => p.push(format!(
                "{at}: {what}: {kind} {ns}/{name} is neither in the manifests nor made by a README command"
            )),
            Some(have) => {
                for item in items.as_array().into_iter().flatten() {
                    let key = item["key"].as_str().unwrap_or("");
                    if !have.contains(key) {
                        p.push(format!(
                            "{at}: {what}: {kind} {ns}/{name} has no key {key:?} (it has {have:?})"
                        ));
                    }
                }
            }
        };
        let volumes = pod.spec["volumes"].as_array().cloned().unwrap_or_default();
        for v in &volumes {
            let vname = v["name"].as_str().unwrap_or("");
            let what = format!("volume {vname}");
            if let Some(name) = v["configMap"]["name"].as_str() {
                need("ConfigMap", name, &v["configMap"]["items"], &what, &mut p);
            }
            if let Some(name) = v["secret"]["secretName"].as_str() {
                need("Secret", name, &v["secret"]["items"], &what, &mut p);
            }
            for src in v["projected"]["sources"].as_array().into_iter().flatten() {
                if let Some(name) = src["configMap"]["name"].as_str() {
                    need("ConfigMap", name, &src["configMap"]["items"], &what, &mut p);
                }
                if let Some(name) = src["secret"]["name"].as_str() {
                    need("Secret", name, &src["secret"]["items"], &what, &mut p);
                }
            }
            let mounted = pod.containers().iter().any(|c| {
                c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["name"] == vname)
            });
            if !mounted {
                p.push(format!("{at}: volume {vname} is mounted by no container"));
            }
        }
        for c in pod.containers() {
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let name = m["name"].as_str().unwrap_or("");
                if pod.volume(name).is_none() {
                    p.push(format!(
                        "{}: mounts volume {name}, which the pod does not have",
                        pod.label(c)
                    ));
                }
            }
        }
    }
    for b in s
        .objs
        .iter()
        .filter(|o| o.kind() == "RoleBinding" || o.kind() == "ClusterRoleBinding")
    {
        let role_kind = b.doc["roleRef"]["kind"].as_str().unwrap_or("");
        let role_name = b.doc["roleRef"]["name"].as_str().unwrap_or("");
        let role_ns = if role_kind == "Role" { b.ns() } else { "" };
        if !(role_kind == "Role" || role_kind == "ClusterRole") || s.find(role_kind, role_ns, role_name).is_none() {
            p.push(format!("{}: roleRef {role_kind} {role_name} does not exist", b.label()));
        }
        for subject in b.doc["subjects"].as_array().into_iter().flatten() {
            let ns = subject["namespace"].as_str().unwrap_or(b.ns());
            let name = subject["name"].as_str().unwrap_or("");
            if subject["kind"] != "ServiceAccount" {
                p.push(format!(
                    "{}: only ServiceAccounts are bound here, not {}",
                    b.label(),
                    subject["kind"]
                ));
            } else if !s.exists("ServiceAccount", ns, name) {
                p.push(format!(
                    "{}: subject ServiceAccount {ns}/{name} does not exist",
                    b.label()
                ));
            }
        }
    }
    for o in s.objs.iter().filter(|o| o.kind() == "ServiceAccount") {
        if !used_sas.contains(&(o.ns().to_string(), o.name().to_string())) {
            p.push(format!("{}: used by no pod", o.label()));
        }
    }
    for o in s.objs.iter().filter(|o| o.kind() == "Certificate") {
        let issuer = &o.doc["spec"]["issuerRef"];
        let name = issuer["name"].as_str().unwrap_or("");
        let found = match issuer["kind"].as_str().unwrap_or("Issuer") {
            "ClusterIssuer" => s.find("ClusterIssuer", "", name).is_some(),
            _ => s.find("Issuer", o.ns(), name).is_some(),
        };
        if !found {
            p.push(format!("{}: issuerRef {name} does not exist", o.label()));
        }
    }
    for o in s.objs.iter().filter(|o| o.kind() == "ClusterIssuer") {
        // A ClusterIssuer's CA secret lives in cert-manager's cluster resource namespace.
        if let Some(secret) = o.doc["spec"]["ca"]["secretName"].as_str()
            && !s.exists("Secret", "cert-manager", secret)
        {
            p.push(format!(
                "{}: spec.ca.secretName {secret}: no such secret in cert-manager",
                o.label()
            ));
        }
    }
    p
}

/// Deployments select their own pods; each Service selects pods and targets a port they serve
/// on; Signet containers declare only ports their flags listen on.
fn check_services(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    for pod in s.pods() {
        let selector = &pod.obj.doc["spec"]["selector"]["matchLabels"];
        if !pod.matches(selector) {
            p.push(format!(
                "{}: spec.selector does not match the pod template's labels",
                pod.obj.label()
            ));
        }
        for c in pod.containers() {
            match signet_of(c) {
                Some(Err(e)) => p.push(format!("{}: {e}", pod.label(c))),
                Some(Ok(sig)) => {
                    for (name, port) in container_ports(c) {
                        if !sig.pod_ports().contains(&port) {
                            p.push(format!(
                                "{}: declares port {name} {port}, on which its flags do not listen",
                                pod.label(c)
                            ));
                        }
                    }
                }
                None => {}
            }
        }
    }
    for svc in s.objs.iter().filter(|o| o.kind() == "Service") {
        let pods = s.selected(svc);
        if pods.is_empty() {
            p.push(format!("{}: selects no pod", svc.label()));
        }
        for port in svc.doc["spec"]["ports"].as_array().into_iter().flatten() {
            let target = if port["targetPort"].is_null() {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            for pod in &pods {
                match pod.resolve(target) {
                    Some(n) if pod.ports().contains(&n) => {}
                    _ => p.push(format!(
                        "{}: port {} targets {target}, on which {} does not listen (it does on {:?})",
                        svc.label(),
                        port["port"],
                        pod.obj.label(),
                        pod.ports()
                    )),
                }
            }
        }
    }
    p
}

/// The signer names agree everywhere: the mesh config's certSigners, the signing policy, every
/// RBAC rule on signers (approve, sign, attest), the `--signer-secret` flags, the ClusterIssuers,
/// and each sidecar's ISTIO_META_CERT_SIGNER with its namespace's signer.
fn check_signers(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    let signers = s.signers();
    let n = s.name;
    if signers.len() < 2 {
        p.push(format!(
            "{n}: the mesh config names {signers:?}; the scenario needs its three signers"
        ));
    }
    for (i, e) in s.mesh["caCertificates"].as_array().into_iter().flatten().enumerate() {
        if strings(&e["certSigners"]).len() != 1 || !e["pem"].is_string() {
            p.push(format!(
                "{n}: mesh caCertificates[{i}]: one pem and one certSigners entry per signer"
            ));
        }
    }
    let approvable: BTreeSet<String> = strings(&s.policy["approvableSigners"])
        .into_iter()
        .map(full_signer)
        .collect();
    if approvable != signers {
        p.push(format!(
            "{n}: signing policy approvableSigners {approvable:?} differ from the mesh config's certSigners {signers:?}"
        ));
    }
    for (what, signer) in std::iter::once(("defaultSigner".to_string(), s.policy_signer(""))).chain(
        keys(&s.policy["namespaces"])
            .into_iter()
            .map(|ns| (format!("namespaces.{ns}"), s.policy_signer(ns))),
    ) {
        if !signers.contains(&signer) {
            p.push(format!(
                "{n}: signing policy {what}: {signer} is not a signer of the mesh config"
            ));
        }
    }
    let mesh_default = &s.mesh["defaultConfig"]["proxyMetadata"]["ISTIO_META_CERT_SIGNER"];
    if let Some(d) = mesh_default.as_str()
        && full_signer(d) != s.policy_signer("")
    {
        p.push(format!(
            "{n}: the mesh config's default signer {d} is not the signing policy's defaultSigner"
        ));
    }
    // Every RBAC rule on signers names exactly the mesh's signers, and is held by the component
    // whose job the verb is.
    for role in s
        .objs
        .iter()
        .filter(|o| o.kind() == "ClusterRole" || o.kind() == "Role")
    {
        for rule in role.doc["rules"].as_array().into_iter().flatten() {
            if !strings(&rule["resources"]).contains(&"signers") {
                continue;
            }
            let names: BTreeSet<String> = strings(&rule["resourceNames"]).into_iter().map(String::from).collect();
            if names != signers {
                p.push(format!(
                    "{}: the rule for {:?} on signers names {names:?}, not the mesh config's signers {signers:?}",
                    role.label(),
                    strings(&rule["verbs"])
                ));
            }
        }
    }
    for (verb, sub) in [
        ("approve", "authority serve"),
        ("sign", "signer controller"),
        ("attest", "signer controller"),
    ] {
        for pod in s.pods() {
            let Some(sig) = pod.runs(sub) else { continue };
            if sub == "signer controller" && verb == "attest" && !sig.has("--publish-trust-bundles") {
                continue;
            }
            for signer in &signers {
                let allowed = s
                    .rules_of(pod.ns(), pod.sa())
                    .iter()
                    .any(|(rns, r)| rns.is_empty() && rule_allows(r, "certificates.k8s.io", "signers", verb, signer));
                if !allowed {
                    p.push(format!(
                        "{}: `{sub}` may not {verb} for {signer} (no ClusterRole rule)",
                        pod.obj.label()
                    ));
                }
            }
        }
    }
    for pod in s.pods() {
        for (c, sig) in pod.signets() {
            let at = pod.label(c);
            if let Some(domain) = env(c, "CERT_SIGNER_DOMAIN")
                && domain != SIGNER_DOMAIN
            {
                p.push(format!(
                    "{at}: CERT_SIGNER_DOMAIN {domain}: the manifests' signer names use {SIGNER_DOMAIN}"
                ));
            }
            let secret_signers: BTreeSet<String> = sig
                .all("--signer-secret")
                .into_iter()
                .filter_map(|v| v.split_once('=').map(|(name, _)| full_signer(name)))
                .collect();
            match sig.sub.as_str() {
                "proxy" => {
                    let want = s.policy_signer(pod.ns());
                    match env(c, "ISTIO_META_CERT_SIGNER").or(sig.one("--signer")) {
                        Some(mine) if full_signer(mine) == want => {}
                        other => p.push(format!(
                            "{at}: ISTIO_META_CERT_SIGNER {other:?}, but the signing policy gives namespace {} signer {want}",
                            pod.ns()
                        )),
                    }
                }
                "authority serve" => {
                    if !secret_signers.is_subset(&signers) {
                        p.push(format!(
                            "{at}: --signer-secret for {secret_signers:?}, not all signers of the mesh config"
                        ));
                    }
                    let serving = full_signer(sig.one("--serving-signer").unwrap_or("istio-system"));
                    if !secret_signers.contains(&serving) {
                        p.push(format!("{at}: --serving-signer {serving} has no --signer-secret"));
                    }
                }
                "signer controller" if secret_signers != signers => {
                    p.push(format!(
                        "{at}: signs for {secret_signers:?} (--signer-secret), the mesh config names {signers:?}"
                    ));
                }
                _ => {}
            }
        }
    }
    // With cert-manager, each signer is a CA ClusterIssuer of that name.
    if s.objs.iter().any(|o| o.kind() == "ClusterIssuer") {
        for signer in &signers {
            let name = signer.strip_prefix(&format!("{SIGNER_DOMAIN}/")).unwrap_or(signer);
            match s.find("ClusterIssuer", "", name) {
                Some(o) if o.doc["spec"]["ca"].is_object() => {}
                _ => p.push(format!("{n}: signer {signer} has no CA ClusterIssuer {name}")),
            }
        }
    }
    p
}

/// Each `--signer-secret NAME=NAMESPACE/SECRET` names a secret that exists with a signer's
/// files, the one cert-manager's ClusterIssuer NAME signs with (when cert-manager is used), which
/// the container's service account may get; and it may read no other secret (the authority must
/// never see the keys of foo and bar).
fn check_signer_keys(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    for pod in s.pods() {
        for (c, sig) in pod.signets() {
            let at = pod.label(c);
            let mut mine: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for v in sig.all("--signer-secret") {
                let Some((name, at_ns)) = v.split_once('=') else {
                    p.push(format!("{at}: --signer-secret={v}: expected NAME=NAMESPACE/SECRET"));
                    continue;
                };
                let Some((ns, secret)) = at_ns.split_once('/') else {
                    p.push(format!("{at}: --signer-secret={v}: expected NAME=NAMESPACE/SECRET"));
                    continue;
                };
                mine.entry(ns.to_string()).or_default().insert(secret.to_string());
                match s.data_keys("Secret", ns, secret) {
                    None => p.push(format!("{at}: --signer-secret {v}: no secret {ns}/{secret} is made")),
                    Some(ks) if !SIGNER_DIR_FILES.iter().all(|k| ks.contains(*k)) => p.push(format!(
                        "{at}: secret {ns}/{secret} lacks {SIGNER_DIR_FILES:?} (has {ks:?})"
                    )),
                    _ => {}
                }
                if let Some(issuer) = s.find("ClusterIssuer", "", name)
                    && (ns != "cert-manager" || issuer.doc["spec"]["ca"]["secretName"] != secret)
                {
                    p.push(format!(
                        "{at}: --signer-secret {v}, but ClusterIssuer {name} signs with cert-manager/{}",
                        issuer.doc["spec"]["ca"]["secretName"]
                    ));
                }
                // Signet reads a signer's secret by name (GET), at start and every --secret-interval.
                let ok = s
                    .rules_of(pod.ns(), pod.sa())
                    .iter()
                    .any(|(rns, r)| rns == ns && rule_allows(r, "", "secrets", "get", secret));
                if !ok {
                    p.push(format!(
                        "{at}: may not get secret {ns}/{secret} (no Role in {ns} bound to it)"
                    ));
                }
            }
            // Nothing more: no other secret, and no list or watch (which resourceNames would not
            // restrict for an unselected list).
            if !mine.is_empty() {
                for (rns, rule) in s.rules_of(pod.ns(), pod.sa()) {
                    if !strings(&rule["resources"]).iter().any(|r| *r == "secrets" || *r == "*") {
                        continue;
                    }
                    let names: BTreeSet<String> =
                        strings(&rule["resourceNames"]).into_iter().map(String::from).collect();
                    let allowed = mine.get(&rns).cloned().unwrap_or_default();
                    let verbs = strings(&rule["verbs"]);
                    if rns.is_empty() || names.is_empty() || !names.is_subset(&allowed) || verbs != ["get"] {
                        p.push(format!(
                            "{at}: may {verbs:?} secrets {names:?} in {:?}; it needs only get on its own --signer-secret ones ({allowed:?})",
                            if rns.is_empty() { "every namespace" } else { &rns }
                        ));
                    }
                }
            }
        }
    }
    p
}

/// A file a container reads at `path`: the volume mounted above it and the path inside it.
fn mounted<'a>(pod: &Pod<'a>, c: &'a Value, path: &str) -> Option<(&'a Value, String)> {
    c["volumeMounts"].as_array()?.iter().find_map(|m| {
        let dir = m["mountPath"].as_str()?.trim_end_matches('/');
        let rel = path.strip_prefix(dir)?.strip_prefix('/')?;
        Some((pod.volume(m["name"].as_str()?)?, rel.to_string()))
    })
}

/// The ConfigMap (name, key) a mounted file comes from.
fn config_map_file(pod: &Pod<'_>, c: &Value, path: &str) -> Result<(String, String), String> {
    let (volume, rel) = mounted(pod, c, path).ok_or_else(|| format!("{path} is under no volume mount"))?;
    let cm = &volume["configMap"];
    let name = cm["name"]
        .as_str()
        .ok_or_else(|| format!("{path}: volume {} is not a ConfigMap", volume["name"]))?;
    let key = match cm["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"] == rel.as_str())
            .and_then(|i| i["key"].as_str())
            .ok_or_else(|| format!("{path}: volume {} projects no item to {rel}", volume["name"]))?
            .to_string(),
        None => rel,
    };
    Ok((name.to_string(), key))
}

/// The authority's token audiences: `--token-audience`, else TOKEN_AUDIENCES, else istio-ca.
fn audiences(pod_container: Option<(&Value, &Signet)>) -> BTreeSet<String> {
    let Some((c, sig)) = pod_container else {
        return BTreeSet::new();
    };
    let flags = sig.all("--token-audience");
    if !flags.is_empty() {
        return flags.into_iter().map(String::from).collect();
    }
    match env(c, "TOKEN_AUDIENCES") {
        Some(list) => list.split(',').map(|a| a.trim().to_string()).collect(),
        None => BTreeSet::from([DEFAULT_AUDIENCE.to_string()]),
    }
}

/// What each sidecar is told agrees with the objects it points at: the authority's Service and
/// name, the authority's root and its token (audience), the app's port and http_proxy, each
/// `--service` entry's Service, port and identity, its own identity and trust domain, its probes.
fn check_sidecars(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    let authority = s.authority();
    let authority_container = authority.as_ref().and_then(|(pod, _)| {
        pod.signets()
            .into_iter()
            .find(|(_, sig)| sig.sub == "authority serve")
            .map(|(c, _)| c)
    });
    let audiences = audiences(authority_container.zip(authority.as_ref().map(|(_, sig)| sig)));
    let td = s.trust_domain().to_string();
    if let Some(policy_td) = s.policy["trustDomain"].as_str()
        && policy_td != td
    {
        p.push(format!(
            "{}: signing policy trustDomain {policy_td}, mesh config {td}",
            s.name
        ));
    }
    for pod in s.pods() {
        for (c, sig) in pod.signets() {
            if sig.sub != "proxy" {
                continue;
            }
            let at = pod.label(c);
            // The authority: a Service of these manifests, its port, its certificate's name.
            match sig.one("--authority") {
                None => p.push(format!("{at}: no --authority")),
                Some(addr) => {
                    let host = host_of(addr);
                    let port = port_of(addr);
                    let server_name = sig.one("--authority-server-name").unwrap_or(AUTHORITY_NAME);
                    let authority_name = authority
                        .as_ref()
                        .and_then(|(_, a)| a.one("--server-name"))
                        .unwrap_or(AUTHORITY_NAME);
                    if server_name != authority_name || host != authority_name {
                        p.push(format!(
                            "{at}: dials {host} and expects {server_name}; the authority's certificate is for {authority_name}"
                        ));
                    }
                    let svc = host
                        .strip_suffix(".svc")
                        .and_then(|h| h.split_once('.'))
                        .and_then(|(name, ns)| s.find("Service", ns, name));
                    let reaches = svc.is_some_and(|svc| {
                        svc.doc["spec"]["ports"].as_array().into_iter().flatten().any(|sp| {
                            sp["port"].as_u64().map(|n| n as u16) == port
                                && s.selected(svc).iter().any(|sel| {
                                    let target = if sp["targetPort"].is_null() {
                                        &sp["port"]
                                    } else {
                                        &sp["targetPort"]
                                    };
                                    let listen = sel
                                        .runs("authority serve")
                                        .and_then(|a| a.one("--listen").and_then(port_of));
                                    listen.is_some() && sel.resolve(target) == listen
                                })
                        })
                    });
                    if !reaches {
                        p.push(format!(
                            "{at}: --authority={addr} is no Service port of these manifests that leads to the authority's --listen"
                        ));
                    }
                }
            }
            // The authority's root: the ConfigMap the README makes, with its key.
            match sig.one("--authority-ca").map(|f| config_map_file(&pod, c, f)) {
                None => p.push(format!("{at}: no --authority-ca")),
                Some(Err(e)) => p.push(format!("{at}: --authority-ca: {e}")),
                Some(Ok((cm, key))) => match s.data_keys("ConfigMap", pod.ns(), &cm) {
                    Some(ks) if ks.contains(&key) => {}
                    other => p.push(format!(
                        "{at}: --authority-ca reads key {key} of ConfigMap {}/{cm}, which has {other:?}",
                        pod.ns()
                    )),
                },
            }
            // The token: a projected service account token for the authority's audience.
            match sig.one("--token-file").map(|f| mounted(&pod, c, f)) {
                None => p.push(format!("{at}: no --token-file")),
                Some(None) => p.push(format!("{at}: --token-file is under no volume mount")),
                Some(Some((volume, rel))) => {
                    let token = volume["projected"]["sources"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|src| &src["serviceAccountToken"])
                        .find(|t| t["path"] == rel.as_str());
                    match token {
                        None => p.push(format!(
                            "{at}: --token-file is no projected serviceAccountToken ({rel})"
                        )),
                        Some(t) => {
                            let aud = t["audience"].as_str().unwrap_or("");
                            if !audiences.contains(aud) {
                                p.push(format!(
                                    "{at}: token audience {aud:?}; the authority accepts {audiences:?}"
                                ));
                            }
                            if t["expirationSeconds"].as_u64().is_none_or(|e| e < 600) {
                                p.push(format!("{at}: token expirationSeconds must be at least 600"));
                            }
                        }
                    }
                }
            }
            // Its identity: spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
            match sig.one("--id") {
                Some(id) if id == format!("spiffe://{td}/ns/{}/sa/{}", pod.ns(), pod.sa()) => {}
                Some(id) => p.push(format!("{at}: --id {id} is not this pod's identity")),
                None => {
                    if env_field_ref(c, "POD_NAMESPACE") != Some("metadata.namespace")
                        || env_field_ref(c, "SERVICE_ACCOUNT") != Some("spec.serviceAccountName")
                    {
                        p.push(format!(
                            "{at}: POD_NAMESPACE and SERVICE_ACCOUNT must come from the downward API (metadata.namespace, spec.serviceAccountName)"
                        ));
                    }
                    let mine = env(c, "TRUST_DOMAIN").unwrap_or(DEFAULT_TRUST_DOMAIN);
                    if mine != td {
                        p.push(format!(
                            "{at}: TRUST_DOMAIN {mine}, the mesh config's trustDomain is {td}"
                        ));
                    }
                }
            }
            // The app behind --inbound listens where the sidecar forwards, on loopback only.
            for inbound in sig.all("--inbound") {
                let app = inbound.split_once('=').map_or("", |(_, a)| a);
                if !host_of(app).starts_with("127.") {
                    p.push(format!(
                        "{at}: --inbound={inbound}: the app must be on loopback, reachable only through the sidecar"
                    ));
                }
                let port = port_of(app).map(|n| n.to_string());
                let served = pod
                    .containers()
                    .into_iter()
                    .filter(|o| signet_of(o).is_none())
                    .any(|o| {
                        (env(o, "PORT").map(String::from) == port && env(o, "HOST").is_none_or(|h| h == host_of(app)))
                            || container_ports(o).values().any(|n| Some(n.to_string()) == port)
                    });
                if !served {
                    p.push(format!(
                        "{at}: --inbound={inbound}: no container of the pod serves {app}"
                    ));
                }
            }
            // Apps with http_proxy use this sidecar's outbound listener.
            for o in pod.containers().into_iter().filter(|o| signet_of(o).is_none()) {
                for var in ["http_proxy", "HTTP_PROXY"] {
                    if let Some(proxy) = env(o, var) {
                        let want = sig.one("--outbound").map(|l| format!("http://{l}"));
                        if want.as_deref() != Some(proxy) {
                            p.push(format!(
                                "{}: {var}={proxy}, the sidecar's --outbound is {want:?}",
                                pod.label(o)
                            ));
                        }
                    }
                }
            }
            // Each service: HOST:PORT=NAME.NS.svc.cluster.local:PORT,IDENTITY, all of one Service.
            for entry in sig.all("--service") {
                p.extend(check_service_entry(s, &at, entry, &td));
            }
            // Probes on the admin port.
            let admin = sig.one("--admin").and_then(port_of);
            for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/live")] {
                let pr = &c[probe]["httpGet"];
                if pr.is_null() {
                    if probe == "readinessProbe" {
                        p.push(format!("{at}: no readinessProbe (httpGet {path} on the admin port)"));
                    }
                    continue;
                }
                if pr["path"] != path || pod.resolve(&pr["port"]) != admin {
                    p.push(format!(
                        "{at}: {probe} must be httpGet {path} on the --admin port {admin:?}"
                    ));
                }
            }
        }
    }
    p
}

fn check_service_entry(s: &Scenario, at: &str, entry: &str, td: &str) -> Vec<String> {
    let mut p = Vec::new();
    let bad = |why: &str| format!("{at}: --service={entry}: {why}");
    let Some((called, target)) = entry.split_once('=') else {
        return vec![bad("expected HOST:PORT=ADDRESS[,SPIFFE_ID]")];
    };
    let (addr, id) = target.split_once(',').map_or((target, None), |(a, i)| (a, Some(i)));
    let Some((svc_name, ns)) = host_of(called).split_once('.') else {
        return vec![bad("HOST must be SERVICE.NAMESPACE, as the app calls it")];
    };
    let Some(svc) = s.find("Service", ns, svc_name) else {
        return vec![bad(&format!("there is no Service {ns}/{svc_name}"))];
    };
    if host_of(addr) != format!("{svc_name}.{ns}.svc.cluster.local") {
        p.push(bad(&format!(
            "the address must be the Service's name, {svc_name}.{ns}.svc.cluster.local"
        )));
    }
    if port_of(called) != port_of(addr) {
        p.push(bad("the address's port must be the Service port the app calls"));
    }
    let port = svc.doc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|sp| sp["port"].as_u64().map(|n| n as u16) == port_of(addr));
    match port {
        None => p.push(bad(&format!("Service {ns}/{svc_name} has no port {:?}", port_of(addr)))),
        Some(sp) => {
            let target = if sp["targetPort"].is_null() {
                &sp["port"]
            } else {
                &sp["targetPort"]
            };
            for pod in s.selected(svc) {
                let inbound: BTreeSet<u16> = pod
                    .signets()
                    .iter()
                    .filter(|(_, sig)| sig.sub == "proxy")
                    .flat_map(|(_, sig)| sig.inbound_ports())
                    .collect();
                if !pod.resolve(target).is_some_and(|t| inbound.contains(&t)) {
                    p.push(bad(&format!(
                        "Service port {} targets {target}, not the --inbound port {inbound:?} of {}'s sidecar",
                        sp["port"],
                        pod.obj.label()
                    )));
                }
                let want = format!("spiffe://{td}/ns/{ns}/sa/{}", pod.sa());
                if id != Some(want.as_str()) {
                    p.push(bad(&format!("the identity must be {want}, who serves it")));
                }
            }
        }
    }
    p
}

/// The authority reads the mesh config and signing policy these checks read, its Service exposes
/// 15012 (Istio's CA port) on its `--listen`, and its readiness probe is on its admin port.
fn check_authority(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    let pods: Vec<_> = s
        .pods()
        .into_iter()
        .filter(|pod| pod.runs("authority serve").is_some())
        .collect();
    if pods.len() != 1 {
        return vec![format!(
            "{}: {} Deployments run the authority; expected one",
            s.name,
            pods.len()
        )];
    }
    let pod = &pods[0];
    for (c, sig) in pod.signets() {
        if sig.sub != "authority serve" {
            continue;
        }
        let at = pod.label(c);
        if !sig.has("--kubernetes") {
            p.push(format!("{at}: no --kubernetes"));
        }
        for (flag, cm, key) in [
            ("--bundle", "istio", "mesh"),
            ("--signing-policy", "signet-signing-policy", "signing-policy.yaml"),
        ] {
            match sig.one(flag).map(|f| config_map_file(pod, c, f)) {
                Some(Ok((name, k))) if name == cm && k == key && pod.ns() == "istio-system" => {}
                other => p.push(format!(
                    "{at}: {flag} must read key {key} of ConfigMap istio-system/{cm}: {other:?}"
                )),
            }
        }
        let listen = sig.one("--listen").and_then(port_of);
        let exposed = s.objs.iter().filter(|o| o.kind() == "Service").any(|svc| {
            s.selected(svc).iter().any(|sel| sel.obj.label() == pod.obj.label())
                && svc.doc["spec"]["ports"].as_array().into_iter().flatten().any(|sp| {
                    let target = if sp["targetPort"].is_null() {
                        &sp["port"]
                    } else {
                        &sp["targetPort"]
                    };
                    sp["port"] == 15012 && pod.resolve(target) == listen
                })
        });
        if !exposed {
            p.push(format!(
                "{at}: no Service exposes port 15012 on its --listen port {listen:?}"
            ));
        }
        let admin = sig.one("--admin").and_then(port_of);
        let probe = &c["readinessProbe"]["httpGet"];
        if probe["path"] != "/ready" || pod.resolve(&probe["port"]) != admin {
            p.push(format!(
                "{at}: readinessProbe must be httpGet /ready on the --admin port {admin:?}"
            ));
        }
    }
    p
}

/// The restricted Pod Security Standard, which the namespaces enforce, and this directory's
/// rules: read-only root file systems, pinned images, Signet always as the image's user.
fn check_security(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    let uid = dockerfile_uid();
    for pod in s.pods() {
        let at = pod.obj.label();
        let psc = &pod.spec["securityContext"];
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            if pod.spec[host] == true {
                p.push(format!("{at}: {host}"));
            }
        }
        for v in pod.spec["volumes"].as_array().into_iter().flatten() {
            let allowed = [
                "configMap",
                "secret",
                "projected",
                "emptyDir",
                "downwardAPI",
                "persistentVolumeClaim",
                "csi",
                "ephemeral",
            ];
            if !keys(v).iter().all(|k| *k == "name" || allowed.contains(k)) {
                p.push(format!(
                    "{at}: volume {} is of a type the restricted standard forbids",
                    v["name"]
                ));
            }
        }
        for c in pod.containers() {
            let cat = pod.label(c);
            let sc = &c["securityContext"];
            let either = |field: &str| if sc[field].is_null() { &psc[field] } else { &sc[field] };
            if either("runAsNonRoot") != true {
                p.push(format!("{cat}: runAsNonRoot must be true"));
            }
            if either("runAsUser") == 0 {
                p.push(format!("{cat}: runs as root"));
            }
            if either("seccompProfile")["type"] != "RuntimeDefault" {
                p.push(format!("{cat}: seccompProfile must be RuntimeDefault"));
            }
            if sc["allowPrivilegeEscalation"] != false {
                p.push(format!("{cat}: allowPrivilegeEscalation must be false"));
            }
            if sc["privileged"] == true {
                p.push(format!("{cat}: privileged"));
            }
            if !strings(&sc["capabilities"]["drop"]).contains(&"ALL") || !sc["capabilities"]["add"].is_null() {
                p.push(format!("{cat}: must drop ALL capabilities and add none"));
            }
            if sc["readOnlyRootFilesystem"] != true {
                p.push(format!("{cat}: readOnlyRootFilesystem must be true"));
            }
            let image = c["image"].as_str().unwrap_or("");
            if image.contains("signet/signet") && image != SIGNET_IMAGE {
                p.push(format!(
                    "{cat}: image {image}: every Signet container uses {SIGNET_IMAGE}"
                ));
            }
            let tag = image.rsplit_once(':').map(|(_, t)| t).filter(|t| !t.contains('/'));
            if !image.contains('@') && tag.is_none_or(|t| t == "latest") {
                p.push(format!("{cat}: image {image} is not pinned to a version"));
            }
            if image == SIGNET_IMAGE && either("runAsUser").as_u64() != Some(uid) {
                p.push(format!(
                    "{cat}: a Signet container runs as the image's user {uid} (runAsUser)"
                ));
            }
        }
    }
    p
}

/// Signet's durations: a number and one of s, m, h, d.
fn signet_duration(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(
        n * match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return None,
        },
    )
}

/// A certificate the signing policy allows is one the signer controller signs: its `--max-ttl`
/// is no shorter than the policy's maxWorkloadCertTtl.
fn check_lifetimes(s: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    let policy_max = s.policy["maxWorkloadCertTtl"].as_str().unwrap_or(DEFAULT_MAX_TTL);
    let Some(max) = signet_duration(policy_max) else {
        return vec![format!(
            "{}: signing policy maxWorkloadCertTtl {policy_max:?} is no duration",
            s.name
        )];
    };
    for pod in s.pods() {
        if let Some(ctl) = pod.runs("signer controller") {
            match ctl.one("--max-ttl").map(signet_duration) {
                Some(Some(cap)) if cap >= max => {}
                other => p.push(format!(
                    "{}: --max-ttl {other:?} is shorter than the signing policy's maxWorkloadCertTtl {policy_max}",
                    pod.obj.label()
                )),
            }
        }
    }
    p
}

/// The two authority files differ only where the variant needs it: where the istio-system key
/// is, and ClusterTrustBundles.
fn check_variant_drift(main: &Scenario, variant: &Scenario) -> Vec<String> {
    let mut p = Vec::new();
    let strip = |o: &Obj| -> Value {
        let mut doc = o.doc.clone();
        if let Some(cs) = doc
            .pointer_mut("/spec/template/spec/containers")
            .and_then(Value::as_array_mut)
        {
            for c in cs {
                if let Some(args) = c["args"].as_array_mut() {
                    args.retain(|a| {
                        a.as_str()
                            .is_some_and(|a| !a.starts_with("--signer-secret=") && a != "--cluster-trust-bundles")
                    });
                }
            }
        }
        if o.kind() == "Role" || o.kind() == "RoleBinding" {
            doc["metadata"]["namespace"] = json!("");
            if let Some(rules) = doc.get_mut("rules").and_then(Value::as_array_mut) {
                for r in rules {
                    r["resourceNames"] = Value::Null;
                }
            }
        }
        doc
    };
    let of = |s: &Scenario| -> Vec<Value> {
        s.objs
            .iter()
            .filter(|o| o.file.ends_with("30-signet-authority.yaml"))
            .map(strip)
            .collect()
    };
    let (a, b) = (of(main), of(variant));
    if a.len() != b.len() {
        p.push(format!("the authority files hold {} and {} objects", a.len(), b.len()));
    }
    for (x, y) in a.iter().zip(&b) {
        if x != y {
            p.push(format!(
                "30-signet-authority.yaml and controller-variant/30-signet-authority.yaml differ beyond --signer-secret, --cluster-trust-bundles and the signer key's Role: {} {}",
                x["kind"], x["metadata"]["name"]
            ));
        }
    }
    p
}

/// The numeric user of the Dockerfile's `USER`.
fn dockerfile_uid() -> u64 {
    let text = std::fs::read_to_string(root().join(EXAMPLES).join("Dockerfile")).unwrap();
    let user = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("the Dockerfile sets USER");
    user.split(':').next().unwrap().trim().parse().expect("a numeric USER")
}

fn problems(s: &Scenario) -> Vec<String> {
    CHECKS.iter().flat_map(|(_, check)| check(s)).collect()
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn every_manifest_is_valid_for_its_kubernetes_versions_and_cert_manager() {
    let all: Vec<&Obj> = manifests().iter().collect();
    assert!(all.len() > 20, "only {} objects under {EXAMPLES}", all.len());
    let p = schema_problems(&all);
    assert!(p.is_empty(), "{}", p.join("\n"));
}

#[test]
fn every_manifest_belongs_to_a_scenario_in_the_order_the_readme_applies_it() {
    let files = manifest_files();
    for f in &files {
        assert!(
            MAIN.contains(&f.as_str()) || VARIANT.contains(&f.as_str()),
            "{EXAMPLES}/{f} is in neither scenario of tests/manifests.rs (MAIN, VARIANT): add it where it is applied"
        );
    }
    // The README applies them in this order: the steps with cert-manager, then the variant's
    // (which reuses steps 1 and 2, so 00-namespaces.yaml).
    let text = readme();
    let (steps, rest) = text
        .split_once("## Without cert-manager")
        .expect("the README has a section \"Without cert-manager\"");
    let variant_section = rest.split("\n## ").next().unwrap();
    // The commands of a section: the lines of its code blocks.
    let applied = |section: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut in_code = false;
        for line in section.replace("\\\n", " ").lines() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if !in_code {
                continue;
            }
            let fill = line.contains("fill-mesh-config.sh") && line.contains("kubectl apply -f -");
            if !(line.contains("kubectl apply -f") || fill) {
                continue;
            }
            if fill {
                out.push("20-mesh-config.yaml".to_string());
            }
            for w in line.split_whitespace() {
                if let Some(f) = w.strip_prefix(&format!("{EXAMPLES}/"))
                    && f.ends_with(".yaml")
                {
                    out.push(f.to_string());
                }
            }
        }
        out
    };
    assert_eq!(
        applied(steps),
        MAIN,
        "the order of `kubectl apply` in the README's steps"
    );
    assert_eq!(
        applied(variant_section),
        &VARIANT[1..],
        "the order of `kubectl apply` in the README's \"Without cert-manager\""
    );
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for phrase in [
        format!("Kubernetes {} or newer", KUBERNETES_VERSIONS[0]),
        format!("Kubernetes {} API schemas", KUBERNETES_VERSIONS.join(" and ")),
    ] {
        assert!(flat.contains(&phrase), "the README must say \"{phrase}\"");
    }
}

#[test]
fn the_scenario_with_cert_manager_is_consistent() {
    let s = main_scenario();
    let p = problems(&s);
    assert!(p.is_empty(), "{}", p.join("\n"));
}

#[test]
fn the_scenario_without_cert_manager_is_consistent() {
    let (main, variant) = (main_scenario(), variant_scenario());
    let mut p = problems(&variant);
    p.extend(check_variant_drift(&main, &variant));
    assert!(p.is_empty(), "{}", p.join("\n"));
}

/// Breaks the manifests in memory, one property at a time, and checks that the check guarding
/// that property notices: none of the checks above can pass by accident.
#[test]
fn each_check_notices_what_it_guards() {
    fn edit(s: &mut Scenario, kind: &str, ns: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let o = s
            .objs
            .iter_mut()
            .find(|o| o.is(kind, ns, name))
            .unwrap_or_else(|| panic!("no {kind} {ns}/{name} to break"));
        f(&mut o.doc);
    }
    fn container<'a>(doc: &'a mut Value, name: &str) -> &'a mut Value {
        doc["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|c| c["name"] == name)
            .unwrap()
    }
    fn replace_arg(c: &mut Value, from: &str, to: &str) {
        let mut changed = false;
        for a in c["args"].as_array_mut().unwrap() {
            if let Some(text) = a.as_str().filter(|t| t.contains(from)) {
                *a = json!(text.replace(from, to));
                changed = true;
            }
        }
        assert!(changed, "no argument contains {from}");
    }
    fn set_env(c: &mut Value, name: &str, value: &str) {
        let e = c["env"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|e| e["name"] == name)
            .unwrap();
        e["value"] = json!(value);
    }
    type Breakage = (&'static str, Check, fn(&mut Scenario));
    let breakages: &[Breakage] = &[
        ("the authority may not approve signer bar", check_signers, |s| {
            edit(s, "ClusterRole", "", "signet-authority", |d| {
                for r in d["rules"].as_array_mut().unwrap() {
                    if let Some(names) = r["resourceNames"].as_array_mut() {
                        names.retain(|n| n != "clusterissuers.cert-manager.io/bar");
                    }
                }
            })
        }),
        ("the policy approves a signer the mesh lacks", check_signers, |s| {
            s.policy["approvableSigners"].as_array_mut().unwrap().push(json!("baz"));
        }),
        ("the mesh config renames a signer", check_signers, |s| {
            s.mesh["caCertificates"][1]["certSigners"][0] = json!("clusterissuers.cert-manager.io/baz");
        }),
        ("curl in foo asks for signer bar", check_signers, |s| {
            edit(s, "Deployment", "foo", "curl", |d| {
                set_env(container(d, "signet"), "ISTIO_META_CERT_SIGNER", "bar")
            })
        }),
        ("a namespace's policy signer is not in the mesh", check_signers, |s| {
            s.policy["namespaces"]["foo"]["signer"] = json!("qux");
        }),
        (
            "httpbin's Service targets a port nothing listens on",
            check_services,
            |s| {
                edit(s, "Service", "foo", "httpbin", |d| {
                    d["spec"]["ports"][0]["targetPort"] = json!(15007)
                })
            },
        ),
        ("a Deployment selects other pods than its own", check_services, |s| {
            edit(s, "Deployment", "bar", "httpbin", |d| {
                d["spec"]["selector"]["matchLabels"]["app"] = json!("httpbin2")
            })
        }),
        ("a sidecar declares a port it does not listen on", check_services, |s| {
            edit(s, "Deployment", "foo", "curl", |d| {
                container(d, "signet")["ports"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "mtls", "containerPort": 15006}))
            })
        }),
        (
            "--service dials the targetPort instead of the Service port",
            check_sidecars,
            |s| {
                edit(s, "Deployment", "foo", "curl", |d| {
                    replace_arg(
                        container(d, "signet"),
                        "httpbin.bar.svc.cluster.local:8000",
                        "httpbin.bar.svc.cluster.local:15006",
                    )
                })
            },
        ),
        ("--service expects the wrong identity", check_sidecars, |s| {
            edit(s, "Deployment", "foo", "curl", |d| {
                replace_arg(container(d, "signet"), "ns/bar/sa/httpbin", "ns/bar/sa/curl")
            })
        }),
        ("--service names a Service that does not exist", check_sidecars, |s| {
            edit(s, "Deployment", "foo", "curl", |d| {
                replace_arg(
                    container(d, "signet"),
                    "httpbin.bar:8000=httpbin.bar",
                    "httpbin.baz:8000=httpbin.baz",
                )
            })
        }),
        ("the authority's Service moves off 15012", check_authority, |s| {
            edit(s, "Service", "istio-system", "signet-authority", |d| {
                d["spec"]["ports"][0]["port"] = json!(15013)
            })
        }),
        (
            "the sidecars dial a port the authority's Service lacks",
            check_sidecars,
            |s| {
                edit(s, "Deployment", "foo", "httpbin", |d| {
                    replace_arg(container(d, "signet"), "svc:15012", "svc:15011")
                })
            },
        ),
        (
            "the authority reads another ConfigMap than the mesh config",
            check_authority,
            |s| {
                edit(s, "Deployment", "istio-system", "signet-authority", |d| {
                    d["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] = json!("istio-other")
                })
            },
        ),
        ("ServiceAccount curl is missing", check_references, |s| {
            s.objs.retain(|o| !o.is("ServiceAccount", "foo", "curl"));
        }),
        (
            "the sidecar reads a key the authority's root ConfigMap lacks",
            check_references,
            |s| {
                edit(s, "Deployment", "bar", "httpbin", |d| {
                    d["spec"]["template"]["spec"]["volumes"][1]["configMap"]["items"][0]["key"] = json!("ca.crt")
                })
            },
        ),
        (
            "the README no longer makes the authority's root ConfigMap",
            check_references,
            |s| {
                s.external.retain(|e| e.name != "signet-authority-ca");
            },
        ),
        ("a binding names a Role that does not exist", check_references, |s| {
            edit(s, "RoleBinding", "cert-manager", "signet-authority-signer-key", |d| {
                d["roleRef"]["name"] = json!("nope")
            })
        }),
        ("the token is for another audience", check_sidecars, |s| {
            edit(s, "Deployment", "foo", "httpbin", |d| {
                d["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"] =
                    json!("kubernetes.default.svc")
            })
        }),
        ("a sidecar is in another trust domain", check_sidecars, |s| {
            edit(s, "Deployment", "bar", "httpbin", |d| {
                set_env(container(d, "signet"), "TRUST_DOMAIN", "example.org")
            })
        }),
        ("curl's http_proxy is not its sidecar", check_sidecars, |s| {
            edit(s, "Deployment", "foo", "curl", |d| {
                set_env(container(d, "curl"), "http_proxy", "http://127.0.0.1:15002")
            })
        }),
        (
            "httpbin listens elsewhere than the sidecar forwards to",
            check_sidecars,
            |s| {
                edit(s, "Deployment", "foo", "httpbin", |d| {
                    set_env(container(d, "httpbin"), "PORT", "8080")
                })
            },
        ),
        ("the readiness probe is not on the admin port", check_sidecars, |s| {
            edit(s, "Deployment", "foo", "curl", |d| {
                container(d, "signet")["readinessProbe"]["httpGet"]["port"] = json!(15001)
            })
        }),
        (
            "the authority may read every secret in cert-manager",
            check_signer_keys,
            |s| {
                edit(s, "Role", "cert-manager", "signet-authority-signer-key", |d| {
                    d["rules"][0]["resourceNames"] = Value::Null
                })
            },
        ),
        (
            "the authority may list secrets it only needs to get",
            check_signer_keys,
            |s| {
                edit(s, "Role", "cert-manager", "signet-authority-signer-key", |d| {
                    d["rules"][0]["verbs"] = json!(["get", "list"])
                })
            },
        ),
        (
            "--signer-secret names a secret cert-manager does not make",
            check_signer_keys,
            |s| {
                edit(s, "Deployment", "istio-system", "signet-authority", |d| {
                    replace_arg(
                        container(d, "authority"),
                        "cert-manager/istio-ca-selfsigned",
                        "cert-manager/istio-ca",
                    )
                })
            },
        ),
        (
            "ClusterIssuer istio-system signs with another key than the authority holds",
            check_signer_keys,
            |s| {
                edit(s, "ClusterIssuer", "", "istio-system", |d| {
                    d["spec"]["ca"]["secretName"] = json!("foo-ca-selfsigned")
                })
            },
        ),
        ("a container may escalate its privileges", check_security, |s| {
            edit(s, "Deployment", "bar", "httpbin", |d| {
                container(d, "httpbin")["securityContext"]["allowPrivilegeEscalation"] = json!(true)
            })
        }),
        ("a container may run as root", check_security, |s| {
            edit(s, "Deployment", "foo", "curl", |d| {
                container(d, "curl")["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runAsNonRoot");
                d["spec"]["template"]["spec"]["securityContext"]
                    .as_object_mut()
                    .unwrap()
                    .remove("runAsNonRoot");
            })
        }),
        ("one sidecar on another image", check_security, |s| {
            edit(s, "Deployment", "bar", "httpbin", |d| {
                container(d, "signet")["image"] = json!("ghcr.io/signet/signet:0.0.9")
            })
        }),
        ("an app image is not pinned", check_security, |s| {
            edit(s, "Deployment", "foo", "curl", |d| {
                container(d, "curl")["image"] = json!("docker.io/curlimages/curl")
            })
        }),
        ("a ConfigMap without its namespace", check_namespaces, |s| {
            edit(s, "ConfigMap", "istio-system", "istio", |d| {
                d["metadata"].as_object_mut().unwrap().remove("namespace");
            })
        }),
        ("a namespace without the restricted standard", check_namespaces, |s| {
            edit(s, "Namespace", "", "bar", |d| d["metadata"]["labels"] = json!({}))
        }),
    ];
    let main = main_scenario();
    let mut silent = Vec::new();
    for (what, check, breakage) in breakages {
        let mut broken = main.clone();
        breakage(&mut broken);
        if check(&broken).is_empty() {
            silent.push(*what);
        }
    }
    // The variant's own properties.
    let variant = variant_scenario();
    let variant_breakages: &[Breakage] = &[
        (
            "the controller signs for fewer signers than the mesh names",
            check_signers,
            |s| {
                edit(s, "Deployment", "signet-signers", "signet-signer-controller", |d| {
                    d["spec"]["template"]["spec"]["containers"][0]["args"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|a| a != "--signer-secret=bar=signet-signers/bar-ca")
                })
            },
        ),
        (
            "the controller may not attest for a signer it publishes roots of",
            check_signers,
            |s| {
                edit(s, "ClusterRole", "", "signet-signer-controller", |d| {
                    d["rules"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|r| !strings(&r["verbs"]).contains(&"attest"))
                })
            },
        ),
        (
            "the policy allows longer certificates than the controller signs",
            check_lifetimes,
            |s| {
                s.policy["maxWorkloadCertTtl"] = json!("90d");
            },
        ),
        (
            "the README no longer makes secret signet-signers/foo-ca",
            check_signer_keys,
            |s| {
                s.external.retain(|e| !(e.ns == "signet-signers" && e.name == "foo-ca"));
            },
        ),
        (
            "the controller may list every secret of its namespace",
            check_signer_keys,
            |s| {
                edit(s, "Role", "signet-signers", "signet-signer-controller", |d| {
                    d["rules"][0]["resourceNames"] = Value::Null;
                    d["rules"][0]["verbs"] = json!(["get", "list", "watch"]);
                })
            },
        ),
    ];
    for (what, check, breakage) in variant_breakages {
        let mut broken = variant.clone();
        breakage(&mut broken);
        if check(&broken).is_empty() {
            silent.push(*what);
        }
    }
    let mut drifted = variant.clone();
    edit(&mut drifted, "Deployment", "istio-system", "signet-authority", |d| {
        container(d, "authority")["resources"]["limits"]["memory"] = json!("1Gi")
    });
    if check_variant_drift(&main, &drifted).is_empty() {
        silent.push("the two authority Deployments drift apart");
    }
    assert!(silent.is_empty(), "no check noticed: {silent:#?}");
}

/// The validators themselves: kubernetes-validate refuses unknown fields and unknown apiVersions
/// (which it would only warn about), the cert-manager check unknown and missing fields.
#[test]
fn the_validators_refuse_what_a_cluster_would_refuse() {
    let obj = |doc: Value| Obj {
        file: "test".into(),
        index: 0,
        doc,
    };
    let good = obj(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "b"}, "data": {"k": "v"}}),
    );
    assert_eq!(kubernetes_validate(&[&good]), Vec::<String>::new());
    let unknown_field =
        obj(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "b"}, "dta": {}}));
    let unknown_version =
        obj(json!({"apiVersion": "apps/v9", "kind": "Deployment", "metadata": {"name": "a", "namespace": "b"}}));
    let wrong_type = obj(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "b"},
        "spec": {"ports": [{"port": "8000"}]}}),
    );
    for bad in [&unknown_field, &unknown_version, &wrong_type] {
        let p = kubernetes_validate(&[&good, bad]);
        assert_eq!(p.len(), KUBERNETES_VERSIONS.len(), "{:?}: {p:?}", bad.doc);
    }
    let issuer = |spec: Value| {
        obj(
            json!({"apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer", "metadata": {"name": "foo"}, "spec": spec}),
        )
    };
    assert!(check_cert_manager(&issuer(json!({"ca": {"secretName": "x"}}))).is_empty());
    assert!(!check_cert_manager(&issuer(json!({"ca": {"secretname": "x"}}))).is_empty());
    assert!(!check_cert_manager(&issuer(json!({"ca": {"secretName": "x"}, "selfSigned": {}}))).is_empty());
    let cert = |spec: Value| {
        obj(
            json!({"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "c", "namespace": "n"}, "spec": spec}),
        )
    };
    let ok = json!({"secretName": "s", "isCA": true, "commonName": "foo", "duration": "24h",
        "issuerRef": {"name": "i", "kind": "ClusterIssuer", "group": "cert-manager.io"}});
    assert!(check_cert_manager(&cert(ok.clone())).is_empty());
    for (field, value) in [
        ("isCa", json!(true)),
        ("duration", json!("1 day")),
        ("usages", json!(["server"])),
        ("issuerRef", json!({"name": "i", "kind": "Issuers"})),
        ("privateKey", json!({"algorithm": "DSA"})),
    ] {
        let mut spec = ok.clone();
        spec[field] = value;
        assert!(!check_cert_manager(&cert(spec)).is_empty(), "{field} was accepted");
    }
    let mut spec = ok;
    spec.as_object_mut().unwrap().remove("secretName");
    assert!(
        !check_cert_manager(&cert(spec)).is_empty(),
        "a Certificate without secretName was accepted"
    );
}

/// The YAML blocks of the README (the files-mode Certificate) are valid objects too.
#[test]
fn the_readme_yaml_blocks_are_valid() {
    let text = readme();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```yaml") => current = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    assert!(!blocks.is_empty(), "the README has no yaml block");
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let path = dir.path().join(format!("block{i}.yaml"));
            std::fs::write(&path, b).unwrap();
            path
        })
        .collect();
    let labels: Vec<String> = (1..=blocks.len())
        .map(|i| format!("README.md yaml block {i}"))
        .collect();
    let objs = load_yaml(&paths, &labels);
    let p = schema_problems(&objs.iter().collect::<Vec<_>>());
    assert!(p.is_empty(), "{}", p.join("\n"));
}

/// The Dockerfile copies every workspace member (and benches/, which Cargo.toml declares), so the
/// image builds from what it copies.
#[test]
fn the_dockerfile_copies_the_whole_workspace() {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let members_line = cargo
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("Cargo.toml lists the workspace members");
    let mut needed: Vec<String> = members_line.split('"').skip(1).step_by(2).map(String::from).collect();
    needed.extend(["src".to_string(), "Cargo.toml".into(), "Cargo.lock".into()]);
    if cargo.contains("[[bench]]") {
        needed.push("benches".into());
    }
    let dockerfile = std::fs::read_to_string(root().join(EXAMPLES).join("Dockerfile")).unwrap();
    let copied: BTreeSet<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
        .flat_map(|l| {
            let words: Vec<&str> = l.split_whitespace().skip(1).collect();
            words[..words.len() - 1].to_vec()
        })
        .collect();
    for n in &needed {
        assert!(
            copied.contains(n.as_str()),
            "examples/kubernetes/Dockerfile does not COPY {n}"
        );
    }
    assert!(
        dockerfile.contains("ENTRYPOINT [\"signet\"]"),
        "the manifests give only args: ENTRYPOINT must be signet"
    );
    assert_eq!(dockerfile_uid(), 1337, "Istio's proxy UID");
}

/// Runs fill-mesh-config.sh; (exit code, stdout, stderr).
fn fill(args: &[String]) -> (i32, String, String) {
    let out = Command::new(root().join(EXAMPLES).join("fill-mesh-config.sh"))
        .args(args)
        .output()
        .expect("run fill-mesh-config.sh");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SIGNERS: &[&str] = &["istio-system", "foo", "bar"];

/// The filled mesh config, as `kubectl apply` would get it, for the signers of `mesh`; its
/// objects.
fn filled(mesh: &Mesh) -> (String, Vec<Obj>) {
    let args: Vec<String> = SIGNERS
        .iter()
        .map(|s| format!("{s}={}/ca.crt", mesh.signer_dir(s)))
        .collect();
    let (code, out, err) = fill(&args);
    assert_eq!(code, 0, "fill-mesh-config.sh {args:?}: {err}");
    let path = mesh.path("filled.yaml");
    std::fs::write(&path, &out).unwrap();
    let objs = load_yaml(&[path], &["filled 20-mesh-config.yaml".into()]);
    (out, objs)
}

#[test]
fn the_filled_mesh_config_maps_each_root_to_its_signer() {
    let mesh = Mesh::new(SIGNERS);
    let (text, objs) = filled(&mesh);
    // Only the placeholders changed; the result is still valid for the API server.
    let template = std::fs::read_to_string(root().join(EXAMPLES).join("20-mesh-config.yaml")).unwrap();
    let without = |t: &str, drop_pem: bool| -> Vec<String> {
        let mut in_pem = false;
        let mut out = Vec::new();
        for l in t.lines() {
            let trimmed = l.trim();
            if trimmed.starts_with("FILL-ME: ca.crt of signer ") {
                continue;
            }
            if drop_pem && trimmed == "-----BEGIN CERTIFICATE-----" {
                in_pem = true;
            }
            if !in_pem {
                out.push(l.to_string());
            }
            if trimmed == "-----END CERTIFICATE-----" {
                in_pem = false;
            }
        }
        out
    };
    assert_eq!(
        without(&text, true),
        without(&template, false),
        "fill-mesh-config.sh changed more than the placeholders"
    );
    let p = schema_problems(&objs.iter().collect::<Vec<_>>());
    assert!(p.is_empty(), "{}", p.join("\n"));
    // signet reads the bundle out of the ConfigMap's mesh key, each root for its own signer.
    let cm = objs
        .iter()
        .find(|o| o.is("ConfigMap", "istio-system", "istio"))
        .unwrap();
    let bundle = mesh.path("mesh.yaml");
    std::fs::write(&bundle, cm.doc["data"]["mesh"].as_str().unwrap()).unwrap();
    for signer in SIGNERS {
        let id = spiffe(signer, "check");
        let dir = mesh.issue(signer, &format!("check-{signer}"), &id, &[]);
        let shown = signet_ok(&["cert", "show", &dir, "--bundle", bundle.to_str().unwrap()]);
        let named = shown
            .lines()
            .find_map(|l| l.strip_prefix("signer:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("signet cert show names no signer:\n{shown}"));
        assert_eq!(named, full_signer(signer), "the mesh config's root for {signer}");
    }
    // Unfilled, the same file is refused: the placeholders cannot slip through.
    let template_objs = manifests()
        .iter()
        .find(|o| o.is("ConfigMap", "istio-system", "istio"))
        .unwrap();
    let unfilled = mesh.path("unfilled.yaml");
    std::fs::write(&unfilled, template_objs.doc["data"]["mesh"].as_str().unwrap()).unwrap();
    let dir = mesh.path("workloads/check-foo").display().to_string();
    let out = signet(&["cert", "show", &dir, "--bundle", unfilled.to_str().unwrap()]);
    assert_ne!(out.code, 0, "an unfilled mesh config was accepted:\n{}", out.stdout);
    assert!(out.stderr.contains("no certificate found"), "{}", out.stderr);
}

#[test]
fn fill_mesh_config_refuses_what_would_break_the_trust_bundle() {
    let mesh = Mesh::new(SIGNERS);
    let ca = |s: &str| format!("{}/ca.crt", mesh.signer_dir(s));
    let key = format!("{}/tls.key", mesh.signer_dir("foo"));
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "a signer left out",
            vec![
                format!("istio-system={}", ca("istio-system")),
                format!("foo={}", ca("foo")),
            ],
        ),
        (
            "a signer the file has no place for",
            vec![
                format!("istio-system={}", ca("istio-system")),
                format!("foo={}", ca("foo")),
                format!("bar={}", ca("bar")),
                format!("baz={}", ca("bar")),
            ],
        ),
        (
            "a private key",
            vec![
                format!("istio-system={}", ca("istio-system")),
                format!("foo={key}"),
                format!("bar={}", ca("bar")),
            ],
        ),
        (
            "a missing file",
            vec![
                format!("istio-system={}", ca("istio-system")),
                "foo=/nonexistent/ca.crt".into(),
                format!("bar={}", ca("bar")),
            ],
        ),
        ("no arguments", vec![]),
    ];
    for (what, args) in cases {
        let (code, out, err) = fill(&args);
        assert_ne!(code, 0, "{what}: accepted");
        assert!(out.is_empty(), "{what}: printed a partial file:\n{out}");
        assert!(
            err.contains("fill-mesh-config.sh"),
            "{what}: says nothing useful: {err}"
        );
    }
}

/// A pod's environment as Kubernetes would set it: plain values, and the downward API's
/// namespace and service account.
fn pod_env(pod: &Pod<'_>, c: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match (e["value"].as_str(), e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Some(v), _) => v.to_string(),
            (None, Some("metadata.namespace")) => pod.ns().to_string(),
            (None, Some("spec.serviceAccountName")) => pod.sa().to_string(),
            other => panic!("{}: env {name}: {other:?} is not understood here", pod.label(c)),
        };
        out.push((name, value));
    }
    out
}

/// A scenario installed on the real cluster as the README installs it, and the Pods made from
/// its Deployments' templates (the API server admits them, Pod Security included; nothing runs
/// them: their containers run here as processes). Dropped, it deletes what it applied, so the
/// other scenario finds the cluster as it was.
struct Installed<'a> {
    s: &'a Scenario,
    c: &'static cluster::Cluster,
    dir: tempfile::TempDir,
    /// The istio-system signer's root: the sidecars' --authority-ca.
    authority_root: PathBuf,
    /// Pod objects made, by (namespace, Deployment).
    pods: BTreeMap<(String, String), String>,
}

/// The two scenarios use the same namespaces and signer names: one at a time.
static ONE_SCENARIO: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl<'a> Installed<'a> {
    /// README steps 2 to 7 (or the variant's), file by file, with the real kubectl.
    fn install(s: &'a Scenario) -> Installed<'a> {
        let c = cluster::cluster();
        let dir = tempfile::tempdir().unwrap();
        let apply = |file: &str| {
            c.kubectl_ok(&["apply", "-f", root().join(EXAMPLES).join(file).to_str().unwrap()]);
        };
        let mut roots: BTreeMap<&str, PathBuf> = BTreeMap::new();
        for file in &s.files {
            match *file {
                "10-cert-manager-issuers.yaml" => {
                    apply(file);
                    c.kubectl_ok(&[
                        "wait",
                        "--for=condition=Ready",
                        "--timeout=90s",
                        "clusterissuer/istio-system",
                        "clusterissuer/foo",
                        "clusterissuer/bar",
                    ]);
                    for (signer, secret) in [
                        ("istio-system", "istio-ca-selfsigned"),
                        ("foo", "foo-ca-selfsigned"),
                        ("bar", "bar-ca-selfsigned"),
                    ] {
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
                        let path = dir.path().join(format!("{signer}-ca.crt"));
                        std::fs::write(&path, pem).unwrap();
                        roots.insert(signer, path);
                    }
                }
                "controller-variant/00-signet-signers-namespace.yaml" => {
                    apply(file);
                    let signers = dir.path().join("signers");
                    for (signer, secret) in [("istio-system", "istio-ca"), ("foo", "foo-ca"), ("bar", "bar-ca")] {
                        signet_ok(&["signer", "new", signer, "--dir", signers.to_str().unwrap()]);
                        c.kubectl_ok(&[
                            "create",
                            "secret",
                            "generic",
                            secret,
                            "-n",
                            "signet-signers",
                            "--type=kubernetes.io/tls",
                            &format!("--from-file={}", signers.join(signer).display()),
                        ]);
                        roots.insert(signer, signers.join(signer).join("ca.crt"));
                    }
                }
                "20-mesh-config.yaml" => {
                    let args: Vec<String> = SIGNERS
                        .iter()
                        .map(|signer| format!("{signer}={}", roots[signer].display()))
                        .collect();
                    let (code, out, err) = fill(&args);
                    assert_eq!(code, 0, "fill-mesh-config.sh {args:?}: {err}");
                    c.apply(&out);
                }
                file if file.ends_with("30-signet-authority.yaml") => {
                    apply(file);
                    for ns in ["foo", "bar"] {
                        c.kubectl_ok(&[
                            "create",
                            "configmap",
                            "signet-authority-ca",
                            "-n",
                            ns,
                            &format!("--from-file=root-cert.pem={}", roots["istio-system"].display()),
                        ]);
                    }
                }
                file => apply(file),
            }
        }
        let mut pods = BTreeMap::new();
        for pod in s.pods() {
            let name = format!("{}-scenario", pod.obj.name());
            let object = json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": pod.ns(), "labels": pod.labels},
                "spec": pod.spec,
            });
            c.apply(&object.to_string());
            pods.insert((pod.ns().to_string(), pod.obj.name().to_string()), name);
        }
        Installed {
            s,
            c,
            authority_root: roots["istio-system"].clone(),
            dir,
            pods,
        }
    }

    fn pod_name(&self, pod: &Pod<'_>) -> &str {
        &self.pods[&(pod.ns().to_string(), pod.obj.name().to_string())]
    }

    /// A token for `pod` as the kubelet gets one: a TokenRequest for its service account,
    /// bound to its Pod object.
    fn token(&self, pod: &Pod<'_>, audience: &str) -> String {
        self.c.token_bound_to(pod.ns(), pod.sa(), self.pod_name(pod), audience)
    }

    /// A ConfigMap's data, read from the API server.
    fn config_map(&self, ns: &str, name: &str) -> BTreeMap<String, Vec<u8>> {
        let text = self.c.kubectl_ok(&["get", "configmap", "-n", ns, name, "-o", "json"]);
        let cm: Value = serde_json::from_str(&text).unwrap();
        cm["data"]
            .as_object()
            .unwrap_or_else(|| panic!("ConfigMap {ns}/{name} has no data"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().as_bytes().to_vec()))
            .collect()
    }

    /// Writes the container's volumes where kubelet would mount them (a directory per mount):
    /// ConfigMaps from the API server, projected tokens from TokenRequests bound to the Pod.
    /// Returns (mountPath, local directory) pairs.
    fn mount(&self, pod: &Pod<'_>, c: &Value) -> Vec<(String, PathBuf)> {
        let mut mounts = Vec::new();
        for m in c["volumeMounts"].as_array().into_iter().flatten() {
            let volume = pod.volume(m["name"].as_str().unwrap()).unwrap();
            let dir = self.dir.path().join(format!(
                "mounts/{}-{}-{}-{}",
                pod.ns(),
                pod.obj.name(),
                c["name"].as_str().unwrap(),
                volume["name"].as_str().unwrap()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(name) = volume["configMap"]["name"].as_str() {
                let data = self.config_map(pod.ns(), name);
                match volume["configMap"]["items"].as_array() {
                    Some(items) => {
                        for item in items {
                            let key = item["key"].as_str().unwrap();
                            std::fs::write(dir.join(item["path"].as_str().unwrap()), &data[key]).unwrap();
                        }
                    }
                    None => {
                        for (k, v) in &data {
                            std::fs::write(dir.join(k), v).unwrap();
                        }
                    }
                }
            }
            for src in volume["projected"]["sources"].as_array().into_iter().flatten() {
                let t = &src["serviceAccountToken"];
                if let (Some(path), Some(aud)) = (t["path"].as_str(), t["audience"].as_str()) {
                    std::fs::write(dir.join(path), self.token(pod, aud)).unwrap();
                }
            }
            mounts.push((m["mountPath"].as_str().unwrap().to_string(), dir));
        }
        mounts
    }

    /// The in-cluster config the pod's Kubernetes client would use: its service account's
    /// token (the API server's audience), bound to its Pod.
    fn kubeconfig(&self, pod: &Pod<'_>) -> String {
        let token = self.token(pod, API_AUDIENCE);
        let path = self
            .dir
            .path()
            .join(format!("{}-{}.kubeconfig", pod.ns(), pod.obj.name()));
        self.c.kubeconfig_for_token(&path, &token).display().to_string()
    }
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        for ((ns, _), pod) in &self.pods {
            let _ = self.c.kubectl(&["delete", "pod", "-n", ns, pod, "--ignore-not-found"]);
        }
        for file in self.s.files.iter().rev() {
            let path = root().join(EXAMPLES).join(file);
            let _ = self.c.kubectl(&[
                "delete",
                "-f",
                path.to_str().unwrap(),
                "--ignore-not-found",
                "--wait=true",
                "--timeout=120s",
            ]);
        }
        for signer in self.s.signers() {
            let name = signer.replace('/', ":") + ":signet";
            let _ = self
                .c
                .kubectl(&["delete", "clustertrustbundle", &name, "--ignore-not-found"]);
        }
    }
}

/// The API server's audience (tests/support/cluster.rs): an in-cluster client's tokens.
const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The container's flags for a run on this machine: listeners on 127.0.0.1 port 0, the authority
/// at `authority`, mounted files at their local copies; everything else as written.
fn local_args(sig: &Signet, mounts: &[(String, PathBuf)], authority: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = sig.sub.split(' ').map(String::from).collect();
    for (flag, value) in &sig.flags {
        let Some(value) = value else {
            args.push(flag.clone());
            continue;
        };
        let value = match flag.as_str() {
            "--listen" | "--admin" | "--outbound" => "127.0.0.1:0".to_string(),
            "--inbound" => format!("127.0.0.1:0={}", value.split_once('=').unwrap().1),
            "--authority" => authority.expect("the authority's address").to_string(),
            _ => mounts
                .iter()
                .find_map(|(dir, local)| {
                    let rest = value.strip_prefix(dir.as_str())?;
                    rest.starts_with('/').then(|| format!("{}{rest}", local.display()))
                })
                .unwrap_or_else(|| value.clone()),
        };
        args.push(format!("{flag}={value}"));
    }
    args
}

/// Starts `args` with `--ready-file`; the process and the addresses it reports.
fn start(name: &str, args: &[String], env: &[(String, String)]) -> (Proc, Value) {
    let ready = ready_path(name);
    let mut cmd = signet_cmd();
    cmd.args(args).arg("--ready-file").arg(&ready);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn(name, cmd);
    let addrs = proc.wait_ready_file(&ready, Duration::from_secs(20));
    (proc, addrs)
}

/// Runs a scenario on the real cluster (tests/support/cluster.rs) as the README installs it:
/// every file applied with the real kubectl (the API server validates each object and admits
/// each Pod under its namespace's Pod Security Standard), the signers made (cert-manager's
/// ClusterIssuers, or the variant's `signet signer new` secrets), the mesh config filled. Then
/// each container's own command line runs here with its service account's tokens (TokenRequest,
/// bound to its Pod) and the ConfigMaps its volumes mount, read from the API: the signer
/// controller of the variant (the real cert-manager signs otherwise), the authority, every
/// sidecar. Each sidecar must end up with a certificate from its namespace's signer, for its own
/// SPIFFE ID; every CSR is deleted; the signer controller publishes a ClusterTrustBundle per
/// signer.
fn run_on_the_real_cluster(s: &Scenario) {
    let _one = ONE_SCENARIO.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Installed::install(s);
    let mut procs = Vec::new();
    let ready = |admin: &Value| {
        let url = format!("http://{}/ready", admin.as_str().unwrap());
        eventually(&url, Duration::from_secs(30), || curl(&[&url], &[]).status == 200);
    };
    let controllers: Vec<_> = s
        .pods()
        .into_iter()
        .filter(|p| p.runs("signer controller").is_some())
        .collect();
    for pod in &controllers {
        for (c, sig) in pod.signets() {
            let mut args = local_args(&sig, &cluster.mount(pod, c), None);
            args.push(format!("--kubeconfig={}", cluster.kubeconfig(pod)));
            let (proc, addrs) = start("signer controller", &args, &pod_env(pod, c));
            ready(&addrs["admin"]);
            procs.push(proc);
        }
    }
    // The authority, as written.
    let (pod, _) = s.authority().expect("an authority");
    let (c, sig) = pod
        .signets()
        .into_iter()
        .find(|(_, sig)| sig.sub == "authority serve")
        .unwrap();
    let mut args = local_args(&sig, &cluster.mount(&pod, c), None);
    args.push(format!("--kubeconfig={}", cluster.kubeconfig(&pod)));
    let (proc, addrs) = start("authority", &args, &pod_env(&pod, c));
    ready(&addrs["admin"]);
    procs.push(proc);
    let authority = addrs["authority"].as_str().unwrap().to_string();
    let authority_user = format!("system:serviceaccount:{}:{}", pod.ns(), pod.sa());
    // Every sidecar, as written.
    let mut sidecars = 0;
    for pod in s.pods() {
        for (c, sig) in pod.signets() {
            if sig.sub != "proxy" {
                continue;
            }
            let mut args = local_args(&sig, &cluster.mount(&pod, c), Some(&authority));
            args.retain(|a| a != "proxy" && !a.starts_with("--admin="));
            let env = pod_env(&pod, c);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let side = Sidecar::start_with_env(&pod.obj.label(), &args, &env);
            side.wait_ready(Duration::from_secs(60));
            let certs = side.certs().to_string();
            let signer = s.policy_signer(pod.ns());
            let id = format!("spiffe://{}/ns/{}/sa/{}", s.trust_domain(), pod.ns(), pod.sa());
            assert!(
                certs.contains(&format!("\"{signer}\"")) && certs.contains(&id),
                "{}: expected {id} from {signer}:\n{certs}",
                pod.obj.label()
            );
            sidecars += 1;
        }
    }
    assert_eq!(sidecars, 3, "httpbin in foo and bar, curl in foo");
    let _ = &cluster.authority_root;
    eventually("every CSR deleted", Duration::from_secs(10), || {
        cluster.c.csrs(&format!("{SIGNER_DOMAIN}/")).is_empty()
    });
    eventually("a CSR per sidecar", Duration::from_secs(10), || {
        cluster.c.csrs_created_by(&authority_user).len() >= sidecars
    });
    if !controllers.is_empty() {
        eventually("a ClusterTrustBundle per signer", Duration::from_secs(10), || {
            let published: BTreeSet<String> = cluster
                .c
                .cluster_trust_bundles(&format!("{SIGNER_DOMAIN}/"))
                .iter()
                .filter_map(|b| b["spec"]["signerName"].as_str().map(String::from))
                .collect();
            published == s.signers()
        });
    }
    drop(procs);
}

#[test]
fn the_scenario_with_cert_manager_runs_as_written_on_a_real_cluster() {
    run_on_the_real_cluster(&main_scenario());
}

#[test]
fn the_scenario_without_cert_manager_runs_as_written_on_a_real_cluster() {
    run_on_the_real_cluster(&variant_scenario());
}

/// Flags (`--name`) and environment variables (`[env: NAME=]`) a `signet ... --help` lists.
fn help_of(sub: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut args: Vec<&str> = sub.split(' ').collect();
    args.push("--help");
    // Help wraps lines, even inside "[env: NAME=]".
    let text = signet_ok(&args).split_whitespace().collect::<Vec<_>>().join(" ");
    let flags = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(String::from)
        .collect();
    let envs = text
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(String::from)
        .collect();
    (flags, envs)
}

#[test]
fn every_flag_and_variable_the_manifests_pass_exists() {
    let mut p = Vec::new();
    for s in [main_scenario(), variant_scenario()] {
        for pod in s.pods() {
            for (c, sig) in pod.signets() {
                let (flags, envs) = help_of(&sig.sub);
                for (flag, _) in &sig.flags {
                    if !flags.contains(flag) {
                        p.push(format!("{}: signet {} has no {flag}", pod.label(c), sig.sub));
                    }
                }
                for e in c["env"].as_array().into_iter().flatten() {
                    let name = e["name"].as_str().unwrap_or("");
                    if !envs.contains(name) {
                        p.push(format!("{}: signet {} reads no {name}", pod.label(c), sig.sub));
                    }
                }
            }
        }
    }
    p.sort();
    p.dedup();
    assert!(p.is_empty(), "{}", p.join("\n"));
}
