//! A fake of the parts of the Kubernetes API that Signet uses, for tests only: no kube-apiserver
//! can be installed on these machines. Its fidelity is pinned by the real `kubectl` (tests/kube_api.rs):
//! `kubectl get csr`, `get csr -w`, `create -f`, `certificate approve|deny` and `delete` work
//! against it as against a cluster.
//!
//! What it serves, over HTTPS with bearer tokens, in the JSON the API server writes:
//! - discovery (`/version`, `/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`);
//! - `certificates.k8s.io/v1` CertificateSigningRequests: create (with `generateName`), get, list,
//!   watch (`resourceVersion`, `fieldSelector=metadata.name=…`; ADDED, MODIFIED, DELETED), delete,
//!   and the `/approval` and `/status` subresources, with the API server's validation (Approved
//!   and Denied exclusive and permanent; a certificate only on an approved request, never
//!   changed; `spec` never changed; `spec.username`/`groups` set from the caller; 409 on a stale
//!   `resourceVersion`); tables (`as=Table`) for kubectl;
//! - `authentication.k8s.io/v1` TokenReview, answering from tokens the test registers;
//! - core/v1 Secrets (get, list, watch) and `certificates.k8s.io/v1beta1` ClusterTrustBundles
//!   (list, watch) that the test puts in place.
//!
//! Simplified (said in the notes): one flat resourceVersion sequence for every kind; no RBAC
//! beyond "the token is known"; no admission, no garbage collection, no field managers; the
//! event history is kept whole, so no watch ever gets 410 Gone.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::Notify;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The verbs of a resource that supports them all (discovery lists them).
const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const CSR_PATH: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const CTB_PATH: &str = "/apis/certificates.k8s.io/v1beta1/clustertrustbundles";
const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
/// The version the fake speaks (and the manifests are validated against).
pub const KUBERNETES_VERSION: &str = "1.33";

/// Who a bearer token belongs to, as TokenReview reports it.
#[derive(Clone, Debug)]
pub struct User {
    pub username: String,
    pub groups: Vec<String>,
    /// Audiences the token was issued for (TokenReview checks them).
    pub audiences: Vec<String>,
}

impl User {
    pub fn service_account(namespace: &str, name: &str, audiences: &[&str]) -> User {
        User {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
        }
    }
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: &'static str,
    kind_type: &'static str,
    namespace: Option<String>,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    serial: u64,
    events: Vec<Event>,
    csrs: BTreeMap<String, Value>,
    secrets: BTreeMap<(String, String), Value>,
    ctbs: BTreeMap<String, Value>,
    /// Tokens that may call the API (the admin's, the authority's service account, ...).
    callers: HashMap<String, User>,
    /// Every CSR ever created, by name (to check that none is left behind).
    created: Vec<String>,
}

/// The fake API server, running on its own thread until dropped.
pub struct FakeKube {
    pub addr: SocketAddr,
    /// PEM of the CA that signed the server's certificate (for kubeconfigs and clients).
    pub ca_pem: String,
    pub admin_token: String,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_rfc3339() -> String {
    signet_certs::rfc3339(SystemTime::now())
}

/// Random bytes from std's per-process hash keys (enough for names in a test).
fn random_bytes(n: usize) -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    (0..n)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            h.write_u128(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            );
            h.finish() as u8
        })
        .collect()
}

fn random_suffix(n: usize) -> String {
    // Kubernetes' generateName alphabet (no vowels, no confusable digits).
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random_bytes(n)
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn uid() -> String {
    let h: String = random_bytes(16).iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

impl FakeKube {
    pub fn start() -> FakeKube {
        let admin_token = format!("admin-{}", random_suffix(24));
        let mut state = State::default();
        state.callers.insert(
            admin_token.clone(),
            User {
                username: "kubernetes-admin".into(),
                groups: vec!["kubeadm:cluster-admins".into(), "system:authenticated".into()],
                audiences: vec!["https://kubernetes.default.svc.cluster.local".into()],
            },
        );
        let state = Arc::new(Mutex::new(state));
        let changed = Arc::new(Notify::new());

        // The server's certificate, from a CA of its own (as a cluster's).
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubernetes");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        let cert = params.signed_by(&key, &issuer).unwrap();
        let tls = signet_certs::CryptoPolicy::default()
            .server_builder()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut tls = tls;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (st, ch) = (state.clone(), changed.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stop_rx => return,
                        accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    };
                    let (acceptor, st, ch) = (acceptor.clone(), st.clone(), ch.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        let svc = service_fn(move |req| {
                            let (st, ch) = (st.clone(), ch.clone());
                            async move { Ok::<_, Infallible>(handle(req, st, ch, addr).await) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        });
        FakeKube {
            addr,
            ca_pem: ca_cert.pem(),
            admin_token,
            state,
            changed,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A kubeconfig for `token` (the admin's by default), written into `dir`.
    pub fn kubeconfig(&self, dir: &std::path::Path, token: Option<&str>) -> std::path::PathBuf {
        let path = dir.join(format!("kubeconfig-{}", random_suffix(6)));
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n    token: {}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: user}}\ncurrent-context: fake\n",
            self.url(),
            token.unwrap_or(&self.admin_token)
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Makes `token` valid: as an API caller and for TokenReview.
    pub fn add_token(&self, token: &str, user: User) {
        self.state.lock().unwrap().callers.insert(token.to_string(), user);
    }

    /// The CSRs that exist now.
    pub fn csrs(&self) -> Vec<Value> {
        self.state.lock().unwrap().csrs.values().cloned().collect()
    }

    /// Names of every CSR ever created.
    pub fn created_csrs(&self) -> Vec<String> {
        self.state.lock().unwrap().created.clone()
    }

    /// Puts a Secret in place (created or replaced), with `data` base64-encoded as the API does.
    pub fn put_secret(&self, namespace: &str, name: &str, data: &[(&str, &[u8])]) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    json!(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect();
        let mut st = self.state.lock().unwrap();
        let key = (namespace.to_string(), name.to_string());
        let exists = st.secrets.contains_key(&key);
        let rv = next_rv(&mut st);
        let object = json!({
            "kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": uid(), "resourceVersion": rv.to_string(), "creationTimestamp": now_rfc3339()},
            "type": "kubernetes.io/tls",
            "data": data,
        });
        st.secrets.insert(key, object.clone());
        record(
            &mut st,
            rv,
            "Secret",
            if exists { "MODIFIED" } else { "ADDED" },
            Some(namespace),
            object,
        );
        drop(st);
        self.changed.notify_waiters();
    }

    /// The ClusterTrustBundles that exist now.
    pub fn cluster_trust_bundles(&self) -> Vec<Value> {
        self.state.lock().unwrap().ctbs.values().cloned().collect()
    }

    /// What a signer does when it gives up on a request: adds a `Failed` condition (as it would
    /// through `/status`).
    pub fn fail_csr(&self, name: &str, reason: &str, message: &str) {
        let mut st = self.state.lock().unwrap();
        let rv = next_rv(&mut st);
        let Some(csr) = st.csrs.get_mut(name) else {
            panic!("no CSR {name}")
        };
        let now = now_rfc3339();
        let conditions = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
        let mut conditions = conditions;
        conditions.push(
            json!({"type": "Failed", "status": "True", "reason": reason, "message": message,
                               "lastUpdateTime": now, "lastTransitionTime": now}),
        );
        csr["status"]["conditions"] = json!(conditions);
        csr["metadata"]["resourceVersion"] = json!(rv.to_string());
        let object = csr.clone();
        record(&mut st, rv, "CertificateSigningRequest", "MODIFIED", None, object);
        drop(st);
        self.changed.notify_waiters();
    }

    /// Puts a ClusterTrustBundle in place for `signer` with `pem` roots.
    pub fn put_cluster_trust_bundle(&self, name: &str, signer: &str, pem: &str) {
        let mut st = self.state.lock().unwrap();
        let exists = st.ctbs.contains_key(name);
        let rv = next_rv(&mut st);
        let object = json!({
            "kind": "ClusterTrustBundle", "apiVersion": "certificates.k8s.io/v1beta1",
            "metadata": {"name": name, "uid": uid(), "resourceVersion": rv.to_string(), "creationTimestamp": now_rfc3339()},
            "spec": {"signerName": signer, "trustBundle": pem},
        });
        st.ctbs.insert(name.to_string(), object.clone());
        record(
            &mut st,
            rv,
            "ClusterTrustBundle",
            if exists { "MODIFIED" } else { "ADDED" },
            None,
            object,
        );
        drop(st);
        self.changed.notify_waiters();
    }
}

/// Creates (`name` None: POST) or replaces (PUT, with the current resourceVersion) a
/// ClusterTrustBundle, with the API server's rules: a bundle with a signer name is named
/// `<signerName with / as :>:<suffix>`, and its trustBundle holds at least one certificate.
async fn put_ctb(
    req: Request<Incoming>,
    name: Option<&str>,
    st: &Arc<Mutex<State>>,
    changed: &Notify,
) -> Response<Body> {
    let Some(mut ctb) = body_json(req).await else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a ClusterTrustBundle".into(),
            json!({}),
        );
    };
    let object_name = ctb["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let invalid = |cause: String| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("ClusterTrustBundle.certificates.k8s.io \"{object_name}\" is invalid: {cause}"),
            json!({"name": object_name, "group": "certificates.k8s.io", "kind": "ClusterTrustBundle"}),
        )
    };
    if name.is_some_and(|n| n != object_name) {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name of the object does not match the name on the URL".into(),
            json!({}),
        );
    }
    if let Some(signer) = ctb["spec"]["signerName"].as_str().filter(|s| !s.is_empty()) {
        let prefix = format!("{}:", signer.replace('/', ":"));
        if !object_name.starts_with(&prefix) {
            return invalid(format!(
                "metadata.name: Invalid value: \"{object_name}\": ClusterTrustBundle for signerName {signer} must be named with prefix {prefix}"
            ));
        }
    }
    let pem = ctb["spec"]["trustBundle"].as_str().unwrap_or_default();
    if signet_certs::parse_certs(pem.as_bytes(), "trustBundle").map_or(true, |c| c.is_empty()) {
        return invalid(
            "spec.trustBundle: Invalid value: \"<value omitted>\": at least one trust anchor must be provided".into(),
        );
    }
    let mut s = st.lock().unwrap();
    let existing = s.ctbs.get(&object_name).cloned();
    match (name, &existing) {
        (None, Some(_)) => {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("clustertrustbundles.certificates.k8s.io \"{object_name}\" already exists"),
                json!({"name": object_name, "group": "certificates.k8s.io", "kind": "clustertrustbundles"}),
            );
        }
        (Some(n), None) => return not_found("clustertrustbundles.certificates.k8s.io", n),
        (Some(_), Some(old)) if ctb["metadata"]["resourceVersion"] != old["metadata"]["resourceVersion"] => {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on clustertrustbundles.certificates.k8s.io \"{object_name}\": the object has been modified; please apply your changes to the latest version and try again"
                ),
                json!({"name": object_name, "group": "certificates.k8s.io", "kind": "clustertrustbundles"}),
            );
        }
        _ => {}
    }
    let rv = next_rv(&mut s);
    ctb["kind"] = json!("ClusterTrustBundle");
    ctb["apiVersion"] = json!("certificates.k8s.io/v1beta1");
    ctb["metadata"]["resourceVersion"] = json!(rv.to_string());
    match &existing {
        Some(old) => {
            ctb["metadata"]["uid"] = old["metadata"]["uid"].clone();
            ctb["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        }
        None => {
            ctb["metadata"]["uid"] = json!(uid());
            ctb["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        }
    }
    s.ctbs.insert(object_name, ctb.clone());
    let kind_type = if existing.is_some() { "MODIFIED" } else { "ADDED" };
    record(&mut s, rv, "ClusterTrustBundle", kind_type, None, ctb.clone());
    drop(s);
    changed.notify_waiters();
    full(
        if existing.is_some() {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        ctb,
    )
}

fn next_rv(st: &mut State) -> u64 {
    st.rv += 1;
    st.rv
}

fn record(
    st: &mut State,
    rv: u64,
    kind: &'static str,
    kind_type: &'static str,
    namespace: Option<&str>,
    object: Value,
) {
    st.events.push(Event {
        rv,
        kind,
        kind_type,
        namespace: namespace.map(str::to_string),
        object,
    });
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// A `Status` failure as the API server writes it.
fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Response<Body> {
    full(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "details": details, "code": code.as_u16()}),
    )
}

fn invalid_csr(name: &str, causes: &[(&str, &str)]) -> Response<Body> {
    let message = format!(
        "CertificateSigningRequest.certificates.k8s.io \"{name}\" is invalid: {}",
        causes
            .iter()
            .map(|(f, m)| format!("{f}: {m}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let causes: Vec<Value> = causes
        .iter()
        .map(|(f, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": f}))
        .collect();
    status(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        message,
        json!({"name": name, "group": "certificates.k8s.io", "kind": "CertificateSigningRequest", "causes": causes}),
    )
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{kind} \"{name}\" not found"),
        json!({"name": name, "kind": kind.split('.').next().unwrap_or(kind)}),
    )
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        if let Some(v) = hex {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn wants_table(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn body_json(req: Request<Incoming>) -> Option<Value> {
    let protobuf = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/vnd.kubernetes.protobuf"));
    let bytes = req.into_body().collect().await.ok()?.to_bytes();
    if protobuf {
        return proto::csr_from_protobuf(&bytes);
    }
    serde_json::from_slice(&bytes).ok()
}

/// The Kubernetes protobuf envelope (`k8s\0` + runtime.Unknown) around a CertificateSigningRequest,
/// decoded into the JSON the rest of the fake speaks: metadata (name, resourceVersion, labels,
/// annotations) and status (conditions, certificate). The spec is not needed: no update may
/// change it.
mod proto {
    use base64::Engine;
    use serde_json::{Value, json};

    /// (field number, wire value) pairs of one message; only varints and length-delimited fields.
    fn fields(mut b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = varint(&mut b)?;
            let (number, wire) = (key >> 3, key & 7);
            let field = match wire {
                0 => Field::Varint(varint(&mut b)?),
                2 => {
                    let len = varint(&mut b)? as usize;
                    if len > b.len() {
                        return None;
                    }
                    let (v, rest) = b.split_at(len);
                    b = rest;
                    Field::Bytes(v)
                }
                1 => {
                    b = b.get(8..)?;
                    Field::Varint(0)
                }
                5 => {
                    b = b.get(4..)?;
                    Field::Varint(0)
                }
                _ => return None,
            };
            out.push((number, field));
        }
        Some(out)
    }

    enum Field<'a> {
        Varint(u64),
        Bytes(&'a [u8]),
    }

    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn text(f: &Field<'_>) -> Option<String> {
        match f {
            Field::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Field::Varint(_) => None,
        }
    }

    fn bytes<'a>(f: &Field<'a>) -> Option<&'a [u8]> {
        match f {
            Field::Bytes(b) => Some(b),
            Field::Varint(_) => None,
        }
    }

    /// A `Time` message (seconds since the epoch) as RFC 3339.
    fn time(f: &Field<'_>) -> Option<String> {
        let secs = fields(bytes(f)?)?
            .iter()
            .find_map(|(n, v)| match (n, v) {
                (1, Field::Varint(s)) => Some(*s),
                _ => None,
            })
            .unwrap_or(0);
        Some(signet_certs::rfc3339(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        ))
    }

    fn string_map(entries: &[&[u8]]) -> Value {
        let mut map = serde_json::Map::new();
        for e in entries {
            let f = fields(e).unwrap_or_default();
            let key = f
                .iter()
                .find(|(n, _)| *n == 1)
                .and_then(|(_, v)| text(v))
                .unwrap_or_default();
            let value = f
                .iter()
                .find(|(n, _)| *n == 2)
                .and_then(|(_, v)| text(v))
                .unwrap_or_default();
            map.insert(key, json!(value));
        }
        Value::Object(map)
    }

    pub fn csr_from_protobuf(body: &[u8]) -> Option<Value> {
        let unknown = body.strip_prefix(b"k8s\0")?;
        let raw = fields(unknown)?
            .into_iter()
            .find(|(n, _)| *n == 2)
            .and_then(|(_, v)| bytes(&v).map(<[u8]>::to_vec))?;
        let mut csr = json!({"metadata": {}, "spec": {}, "status": {}});
        for (n, v) in fields(&raw)? {
            match n {
                1 => {
                    let (mut labels, mut annotations) = (Vec::new(), Vec::new());
                    for (m, mv) in fields(bytes(&v)?)? {
                        match m {
                            1 => csr["metadata"]["name"] = json!(text(&mv)?),
                            6 => csr["metadata"]["resourceVersion"] = json!(text(&mv)?),
                            11 => labels.push(bytes(&mv)?),
                            12 => annotations.push(bytes(&mv)?),
                            _ => {}
                        }
                    }
                    if !labels.is_empty() {
                        csr["metadata"]["labels"] = string_map(&labels);
                    }
                    if !annotations.is_empty() {
                        csr["metadata"]["annotations"] = string_map(&annotations);
                    }
                }
                3 => {
                    let mut conditions = Vec::new();
                    for (m, mv) in fields(bytes(&v)?)? {
                        match m {
                            1 => {
                                let mut c = json!({});
                                for (k, kv) in fields(bytes(&mv)?)? {
                                    let key = match k {
                                        1 => "type",
                                        2 => "reason",
                                        3 => "message",
                                        4 => "lastUpdateTime",
                                        5 => "lastTransitionTime",
                                        6 => "status",
                                        _ => continue,
                                    };
                                    c[key] = json!(if matches!(k, 4 | 5) { time(&kv)? } else { text(&kv)? });
                                }
                                conditions.push(c);
                            }
                            2 => {
                                csr["status"]["certificate"] =
                                    json!(base64::engine::general_purpose::STANDARD.encode(bytes(&mv)?));
                            }
                            _ => {}
                        }
                    }
                    csr["status"]["conditions"] = json!(conditions);
                }
                _ => {}
            }
        }
        Some(csr)
    }
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    addr: SocketAddr,
) -> Response<Body> {
    let caller = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| st.lock().unwrap().callers.get(t).cloned());
    let Some(caller) = caller else {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
            json!({}),
        );
    };
    // JSON, and protobuf for what kubectl sends that way (a CSR update); nothing else.
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    if !content_type.starts_with("application/json") && !content_type.starts_with("application/vnd.kubernetes.protobuf")
    {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml".into(),
            json!({}),
        );
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    match (method, path.as_str()) {
        (Method::GET, "/version") => full(
            StatusCode::OK,
            json!({"major": "1", "minor": KUBERNETES_VERSION.split('.').nth(1), "gitVersion": format!("v{KUBERNETES_VERSION}.0-signet-fake"),
                   "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean", "buildDate": "2026-11-30T00:00:00Z",
                   "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        (Method::GET, "/api") => full(
            StatusCode::OK,
            json!({"kind": "APIVersions", "versions": ["v1"],
                   "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}]}),
        ),
        (Method::GET, "/apis") => full(StatusCode::OK, api_groups()),
        (Method::GET, "/openapi/v3") => full(StatusCode::OK, openapi_root()),
        (Method::GET, p) if p.starts_with("/openapi/v3/") => match openapi_group(&p["/openapi/v3/".len()..]) {
            Some(doc) => full(StatusCode::OK, doc),
            None => status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".into(),
                json!({}),
            ),
        },
        (Method::GET, "/api/v1") => full(
            StatusCode::OK,
            resource_list(
                "v1",
                &[(
                    "secrets",
                    "secret",
                    true,
                    "Secret",
                    &["create", "delete", "get", "list", "patch", "update", "watch"],
                    &[],
                )],
            ),
        ),
        (Method::GET, "/apis/certificates.k8s.io/v1") => full(
            StatusCode::OK,
            resource_list(
                "certificates.k8s.io/v1",
                &[
                    (
                        "certificatesigningrequests",
                        "certificatesigningrequest",
                        false,
                        "CertificateSigningRequest",
                        ALL_VERBS,
                        &["csr"],
                    ),
                    (
                        "certificatesigningrequests/approval",
                        "",
                        false,
                        "CertificateSigningRequest",
                        &["get", "patch", "update"],
                        &[],
                    ),
                    (
                        "certificatesigningrequests/status",
                        "",
                        false,
                        "CertificateSigningRequest",
                        &["get", "patch", "update"],
                        &[],
                    ),
                ],
            ),
        ),
        (Method::GET, "/apis/certificates.k8s.io/v1beta1") => full(
            StatusCode::OK,
            resource_list(
                "certificates.k8s.io/v1beta1",
                &[(
                    "clustertrustbundles",
                    "clustertrustbundle",
                    false,
                    "ClusterTrustBundle",
                    ALL_VERBS,
                    &[],
                )],
            ),
        ),
        (Method::GET, "/apis/authentication.k8s.io/v1") => full(
            StatusCode::OK,
            resource_list(
                "authentication.k8s.io/v1",
                &[("tokenreviews", "tokenreview", false, "TokenReview", &["create"], &[])],
            ),
        ),
        (Method::POST, TOKEN_REVIEW_PATH) => token_review(req, &st).await,
        (Method::GET, CSR_PATH) => {
            let q = query(&req);
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                watch(&req, &q, &st, &changed, "CertificateSigningRequest", None)
            } else {
                list_csrs(&req, &q, &st)
            }
        }
        (Method::POST, CSR_PATH) => create_csr(req, &caller, &st, &changed).await,
        (Method::GET, CTB_PATH) => {
            let q = query(&req);
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                watch(&req, &q, &st, &changed, "ClusterTrustBundle", None)
            } else {
                let s = st.lock().unwrap();
                full(
                    StatusCode::OK,
                    json!({"kind": "ClusterTrustBundleList", "apiVersion": "certificates.k8s.io/v1beta1",
                           "metadata": {"resourceVersion": s.rv.to_string()},
                           "items": s.ctbs.values().cloned().collect::<Vec<_>>()}),
                )
            }
        }
        (Method::POST, CTB_PATH) => put_ctb(req, None, &st, &changed).await,
        (method, p) if p.starts_with(CTB_PATH) => {
            let name = p[CTB_PATH.len()..].trim_start_matches('/').to_string();
            match method {
                Method::GET => match st.lock().unwrap().ctbs.get(&name) {
                    Some(o) => full(StatusCode::OK, o.clone()),
                    None => not_found("clustertrustbundles.certificates.k8s.io", &name),
                },
                Method::PUT => put_ctb(req, Some(&name), &st, &changed).await,
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    format!("{method} is not supported on clustertrustbundles"),
                    json!({}),
                ),
            }
        }
        (method, p) if p.starts_with(CSR_PATH) => {
            let rest = &p[CSR_PATH.len() + 1..];
            let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
            match (method, sub) {
                (Method::GET, "") => {
                    let object = st.lock().unwrap().csrs.get(name).cloned();
                    match object {
                        Some(o) if wants_table(&req) => full(StatusCode::OK, table(&[o], true, &st.lock().unwrap())),
                        Some(o) => full(StatusCode::OK, o),
                        None => not_found("certificatesigningrequests.certificates.k8s.io", name),
                    }
                }
                (Method::DELETE, "") => delete_csr(name, &st, &changed),
                (Method::PUT, "approval") => update_csr(req, name, Sub::Approval, &st, &changed).await,
                (Method::PUT, "status") => update_csr(req, name, Sub::Status, &st, &changed).await,
                (Method::PUT, "") => update_csr(req, name, Sub::Main, &st, &changed).await,
                _ => status(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource".into(),
                    json!({}),
                ),
            }
        }
        (Method::GET, p) if p.starts_with("/api/v1/namespaces/") && p.contains("/secrets") => {
            let rest = &p["/api/v1/namespaces/".len()..];
            let mut parts = rest.split('/');
            let (ns, _, name) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
            let q = query(&req);
            match name {
                Some(name) => match st.lock().unwrap().secrets.get(&(ns.to_string(), name.to_string())) {
                    Some(s) => full(StatusCode::OK, s.clone()),
                    None => not_found("secrets", name),
                },
                None if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                    watch(&req, &q, &st, &changed, "Secret", Some(ns.to_string()))
                }
                None => {
                    let s = st.lock().unwrap();
                    let items: Vec<Value> = s
                        .secrets
                        .iter()
                        .filter(|((n, _), _)| n == ns)
                        .map(|(_, v)| v.clone())
                        .collect();
                    full(
                        StatusCode::OK,
                        json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
                    )
                }
            }
        }
        (_, p) => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({"causes": [{"reason": "UnexpectedServerResponse", "message": format!("404 page not found: {p}")}]}),
        ),
    }
}

/// The kinds served, by group-version path: (path, group, version, kind, resource, namespaced).
const KINDS: &[(&str, &str, &str, &str, &str, bool)] = &[
    ("api/v1", "", "v1", "Secret", "secrets", true),
    (
        "apis/certificates.k8s.io/v1",
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
        false,
    ),
    (
        "apis/certificates.k8s.io/v1beta1",
        "certificates.k8s.io",
        "v1beta1",
        "ClusterTrustBundle",
        "clustertrustbundles",
        false,
    ),
    (
        "apis/authentication.k8s.io/v1",
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        false,
    ),
];

/// `/openapi/v3`: where each group-version's document is. kubectl reads it to learn that the
/// server validates fields itself (`fieldValidation`), and then leaves validation to it.
fn openapi_root() -> Value {
    let paths: serde_json::Map<String, Value> = KINDS
        .iter()
        .map(|(path, ..)| {
            (
                path.to_string(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash=signet-fake")}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// A group-version's OpenAPI v3 document, reduced to what clients look at: each kind's PATCH
/// operation with its group-version-kind and the `fieldValidation` parameter.
fn openapi_group(path: &str) -> Option<Value> {
    let (_, group, version, kind, resource, namespaced) = KINDS.iter().find(|(p, ..)| *p == path)?;
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let item = if *namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{resource}/{{name}}")
    } else {
        format!("{prefix}/{resource}/{{name}}")
    };
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    let op = json!({"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch", "parameters": params,
                    "responses": {"200": {"description": "OK"}}});
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": format!("v{KUBERNETES_VERSION}.0")},
                "paths": {item: {"patch": op}}, "components": {"schemas": {}}}),
    )
}

fn api_groups() -> Value {
    let group = |name: &str, versions: &[&str]| {
        json!({"name": name,
               "versions": versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect::<Vec<_>>(),
               "preferredVersion": {"groupVersion": format!("{name}/{}", versions[0]), "version": versions[0]}})
    };
    json!({"kind": "APIGroupList", "apiVersion": "v1",
           "groups": [group("certificates.k8s.io", &["v1", "v1beta1"]), group("authentication.k8s.io", &["v1"])]})
}

type ResourceSpec<'a> = (&'a str, &'a str, bool, &'a str, &'a [&'a str], &'a [&'a str]);

fn resource_list(group_version: &str, resources: &[ResourceSpec<'_>]) -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
           "resources": resources.iter().map(|(name, singular, namespaced, kind, verbs, short)| {
               let mut r = json!({"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind, "verbs": verbs});
               if !short.is_empty() {
                   r["shortNames"] = json!(short);
               }
               r
           }).collect::<Vec<_>>()})
}

async fn token_review(req: Request<Incoming>, st: &Arc<Mutex<State>>) -> Response<Body> {
    let Some(review) = body_json(req).await else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a TokenReview".into(),
            json!({}),
        );
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = review["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let user = st.lock().unwrap().callers.get(token).cloned();
    let mut out = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                         "metadata": {"creationTimestamp": null}, "spec": review["spec"].clone()});
    out["status"] = match user {
        // The API server: the token must have been issued for one of the audiences asked.
        Some(u) if asked.is_empty() || asked.iter().any(|a| u.audiences.contains(a)) => {
            let audiences: Vec<&String> = if asked.is_empty() {
                u.audiences.iter().collect()
            } else {
                asked.iter().filter(|a| u.audiences.contains(a)).collect()
            };
            json!({"authenticated": true, "user": {"username": u.username, "uid": uid(), "groups": u.groups}, "audiences": audiences})
        }
        Some(_) => {
            json!({"user": {}, "error": "[invalid bearer token, token audiences [..] is invalid for the target audiences]"})
        }
        None => {
            json!({"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"})
        }
    };
    full(StatusCode::CREATED, out)
}

fn condition_summary(csr: &Value) -> String {
    let conds = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut parts: Vec<String> = conds
        .iter()
        .filter(|c| c["status"] == "True")
        .filter_map(|c| c["type"].as_str().map(str::to_string))
        .collect();
    if csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()) {
        parts.push("Issued".into());
    }
    if parts.is_empty() {
        "Pending".into()
    } else {
        parts.join(",")
    }
}

fn age(created: &str) -> String {
    let parsed = created.trim_end_matches('Z');
    let secs = (|| {
        let (date, time) = parsed.split_once('T')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
        let (y, m, dd) = (d.next()??, d.next()??, d.next()??);
        let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
        let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
        // days from civil (Howard Hinnant)
        let y2 = if m <= 2 { y - 1 } else { y };
        let era = y2.div_euclid(400);
        let yoe = y2 - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + dd - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Some((era * 146097 + doe - 719468) * 86400 + h * 3600 + mi * 60 + s)
    })()
    .unwrap_or(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    human((now - secs).max(0) as u64)
}

/// A duration as kubectl prints it (apimachinery's `duration.HumanDuration`).
fn human(secs: u64) -> String {
    let (minutes, hours) = (secs / 60, secs / 3600);
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

fn requested_duration(csr: &Value) -> String {
    match csr["spec"]["expirationSeconds"].as_u64() {
        Some(s) => human(s),
        None => "<none>".into(),
    }
}

/// kubectl's table for CSRs, as the API server prints it (`pkg/printers`).
fn table(items: &[Value], with_columns: bool, st: &State) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|c| {
            json!({"cells": [c["metadata"]["name"], age(c["metadata"]["creationTimestamp"].as_str().unwrap_or_default()),
                             c["spec"]["signerName"], c["spec"]["username"], requested_duration(c), condition_summary(c)],
                   "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": c["metadata"]}})
        })
        .collect();
    let mut t = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": st.rv.to_string()}, "rows": rows});
    if with_columns {
        t["columnDefinitions"] = json!([
            {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is a timestamp representing the server time when this object was created.", "priority": 0},
            {"name": "SignerName", "type": "string", "format": "", "description": "Requested signer for the request.", "priority": 0},
            {"name": "Requestor", "type": "string", "format": "", "description": "Information about the requesting user.", "priority": 0},
            {"name": "RequestedDuration", "type": "string", "format": "", "description": "expirationSeconds is the requested duration of validity of the issued certificate.", "priority": 0},
            {"name": "Condition", "type": "string", "format": "", "description": "Conditions applied to the request.", "priority": 0},
        ]);
    }
    t
}

fn list_csrs(req: &Request<Incoming>, q: &HashMap<String, String>, st: &Arc<Mutex<State>>) -> Response<Body> {
    let s = st.lock().unwrap();
    let name = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let items: Vec<Value> = s
        .csrs
        .values()
        .filter(|c| name.as_deref().is_none_or(|n| c["metadata"]["name"] == n))
        .cloned()
        .collect();
    if wants_table(req) {
        return full(StatusCode::OK, table(&items, true, &s));
    }
    full(
        StatusCode::OK,
        json!({"kind": "CertificateSigningRequestList", "apiVersion": "certificates.k8s.io/v1",
               "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
    )
}

/// The key usages `certificates.k8s.io/v1` accepts (`spec.usages`).
pub const USAGES: &[&str] = &[
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

fn valid_signer_name(s: &str) -> bool {
    let Some((domain, path)) = s.split_once('/') else {
        return false;
    };
    !path.is_empty()
        && domain.contains('.')
        && domain.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

async fn create_csr(req: Request<Incoming>, caller: &User, st: &Arc<Mutex<State>>, changed: &Notify) -> Response<Body> {
    let Some(mut csr) = body_json(req).await else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a CertificateSigningRequest".into(),
            json!({}),
        );
    };
    let generate = csr["metadata"]["generateName"].as_str().map(str::to_string);
    let name = match (csr["metadata"]["name"].as_str(), &generate) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) => format!("{g}{}", random_suffix(5)),
        _ => {
            return invalid_csr(
                "",
                &[("metadata.name", "Required value: name or generateName is required")],
            );
        }
    };
    let mut causes = Vec::new();
    let request = csr["spec"]["request"].as_str().unwrap_or_default();
    match base64::engine::general_purpose::STANDARD.decode(request) {
        Ok(pem) => {
            let text = String::from_utf8_lossy(&pem);
            if signet_certs::RequestInfo::parse(&text).is_err() {
                causes.push(("spec.request", "Invalid value: []byte{...}: invalid certificate request: the request does not parse or its signature does not verify"));
            }
        }
        Err(_) => causes.push(("spec.request", "Required value")),
    }
    match csr["spec"]["signerName"].as_str() {
        None | Some("") => causes.push(("spec.signerName", "Required value")),
        Some(s) if !valid_signer_name(s) => causes.push((
            "spec.signerName",
            "Invalid value: must be a fully qualified domain and path of the form 'example.com/signer-name'",
        )),
        _ => {}
    }
    let usages = csr["spec"]["usages"].as_array().cloned().unwrap_or_default();
    if usages.is_empty() {
        causes.push(("spec.usages", "Required value"));
    } else if usages.iter().any(|u| !u.as_str().is_some_and(|u| USAGES.contains(&u))) {
        causes.push((
            "spec.usages",
            "Unsupported value: one of the usages is not a known key usage",
        ));
    }
    if csr["spec"]["expirationSeconds"].as_i64().is_some_and(|s| s < 600) {
        causes.push((
            "spec.expirationSeconds",
            "Invalid value: may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    if !causes.is_empty() {
        return invalid_csr(&name, &causes);
    }
    let mut s = st.lock().unwrap();
    if s.csrs.contains_key(&name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("certificatesigningrequests.certificates.k8s.io \"{name}\" already exists"),
            json!({"name": name, "group": "certificates.k8s.io", "kind": "certificatesigningrequests"}),
        );
    }
    let rv = next_rv(&mut s);
    let meta = csr["metadata"].as_object_mut().map(std::mem::take).unwrap_or_default();
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), json!(name));
    if let Some(g) = generate {
        metadata.insert("generateName".into(), json!(g));
    }
    metadata.insert("uid".into(), json!(uid()));
    metadata.insert("resourceVersion".into(), json!(rv.to_string()));
    metadata.insert("creationTimestamp".into(), json!(now_rfc3339()));
    for key in ["labels", "annotations"] {
        if let Some(v) = meta.get(key) {
            metadata.insert(key.into(), v.clone());
        }
    }
    csr["kind"] = json!("CertificateSigningRequest");
    csr["apiVersion"] = json!("certificates.k8s.io/v1");
    csr["metadata"] = Value::Object(metadata);
    // The requester is who called, whatever the body says.
    csr["spec"]["username"] = json!(caller.username);
    csr["spec"]["groups"] = json!(caller.groups);
    csr["spec"]["uid"] = json!(uid());
    csr["status"] = json!({});
    s.csrs.insert(name.clone(), csr.clone());
    s.created.push(name);
    record(&mut s, rv, "CertificateSigningRequest", "ADDED", None, csr.clone());
    drop(s);
    changed.notify_waiters();
    full(StatusCode::CREATED, csr)
}

fn delete_csr(name: &str, st: &Arc<Mutex<State>>, changed: &Notify) -> Response<Body> {
    let mut s = st.lock().unwrap();
    let Some(mut object) = s.csrs.remove(name) else {
        return not_found("certificatesigningrequests.certificates.k8s.io", name);
    };
    let rv = next_rv(&mut s);
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    record(&mut s, rv, "CertificateSigningRequest", "DELETED", None, object.clone());
    drop(s);
    changed.notify_waiters();
    full(StatusCode::OK, object)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sub {
    Main,
    Approval,
    Status,
}

fn has(conds: &[Value], kind: &str) -> bool {
    conds.iter().any(|c| c["type"] == kind && c["status"] == "True")
}

async fn update_csr(
    req: Request<Incoming>,
    name: &str,
    sub: Sub,
    st: &Arc<Mutex<State>>,
    changed: &Notify,
) -> Response<Body> {
    let Some(new) = body_json(req).await else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body is not a CertificateSigningRequest".into(),
            json!({}),
        );
    };
    let mut s = st.lock().unwrap();
    let Some(old) = s.csrs.get(name).cloned() else {
        return not_found("certificatesigningrequests.certificates.k8s.io", name);
    };
    if new["metadata"]["resourceVersion"]
        .as_str()
        .is_some_and(|rv| rv != old["metadata"]["resourceVersion"])
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on certificatesigningrequests.certificates.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
            json!({"name": name, "group": "certificates.k8s.io", "kind": "certificatesigningrequests"}),
        );
    }
    let old_conds = old["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut conds = new["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let mut updated = old.clone();
    let now = now_rfc3339();
    match sub {
        // Through the main resource only metadata changes (labels, annotations).
        Sub::Main => {
            for key in ["labels", "annotations"] {
                updated["metadata"][key] = new["metadata"][key].clone();
            }
        }
        Sub::Approval | Sub::Status => {
            let approval = |c: &Value| c["type"] == "Approved" || c["type"] == "Denied";
            let mut causes: Vec<(String, String)> = Vec::new();
            // As the API server's status strategies: the conditions the other subresource owns
            // (Approved/Denied for /approval, the rest for /status) keep their old values, in
            // the places the client put them; adding one through the wrong subresource is
            // refused (removing one is refused below).
            let owned_elsewhere = |c: &Value| if sub == Sub::Status { approval(c) } else { !approval(c) };
            for kind in ["Approved", "Denied", "Failed"] {
                let probe = json!({"type": kind});
                if !owned_elsewhere(&probe) {
                    continue;
                }
                let old_at: Vec<usize> = (0..old_conds.len()).filter(|i| old_conds[*i]["type"] == kind).collect();
                let new_at: Vec<usize> = (0..conds.len()).filter(|i| conds[*i]["type"] == kind).collect();
                if new_at.len() == old_at.len() {
                    for (n, o) in new_at.iter().zip(&old_at) {
                        conds[*n] = old_conds[*o].clone();
                    }
                } else if new_at.len() > old_at.len() {
                    causes.push((
                        "status.conditions".into(),
                        format!(
                            "Forbidden: updates may not add a condition of type \"{kind}\"{}",
                            if sub == Sub::Status {
                                " (use the approval subresource)"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
            for c in &old_conds {
                let kind = c["type"].as_str().unwrap_or_default();
                if !conds.iter().any(|n| n["type"] == kind) {
                    causes.push((
                        "status.conditions".into(),
                        format!("Forbidden: updates may not remove a condition of type \"{kind}\""),
                    ));
                }
            }
            for (i, c) in conds.iter().enumerate() {
                let kind = c["type"].as_str().unwrap_or_default();
                if conds.iter().filter(|n| n["type"] == kind).count() > 1 {
                    causes.push((
                        format!("status.conditions[{i}].type"),
                        format!("Duplicate value: \"{kind}\""),
                    ));
                }
                if matches!(kind, "Approved" | "Denied" | "Failed") && c["status"] != "True" {
                    causes.push((
                        format!("status.conditions[{i}].status"),
                        "Unsupported value: only \"True\" is allowed".into(),
                    ));
                }
            }
            if has(&conds, "Approved") && has(&conds, "Denied") {
                causes.push((
                    "status.conditions".into(),
                    "Invalid value: Approved and Denied conditions are mutually exclusive".into(),
                ));
            }
            let certificate = new["status"]["certificate"].as_str().unwrap_or_default();
            let old_certificate = old["status"]["certificate"].as_str().unwrap_or_default();
            if sub == Sub::Status {
                if !old_certificate.is_empty() && certificate != old_certificate {
                    causes.push((
                        "status.certificate".into(),
                        "Forbidden: updates may not modify existing certificate content".into(),
                    ));
                } else if !certificate.is_empty() && old_certificate.is_empty() {
                    if !has(&conds, "Approved") {
                        causes.push((
                            "status.certificate".into(),
                            "Forbidden: certificate may only be set when the request is approved".into(),
                        ));
                    }
                    if has(&conds, "Denied") || has(&conds, "Failed") {
                        causes.push((
                            "status.certificate".into(),
                            "Forbidden: certificate may not be set on a denied or failed request".into(),
                        ));
                    }
                    let pem = base64::engine::general_purpose::STANDARD
                        .decode(certificate)
                        .unwrap_or_default();
                    if signet_certs::parse_certs(&pem, "status.certificate").is_err() {
                        causes.push((
                            "status.certificate".into(),
                            "Invalid value: \"<certificate data>\": must contain at least one CERTIFICATE PEM block"
                                .into(),
                        ));
                    }
                }
                updated["status"]["certificate"] = if certificate.is_empty() {
                    Value::Null
                } else {
                    json!(certificate)
                };
            }
            if !causes.is_empty() {
                let causes: Vec<(&str, &str)> = causes.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                return invalid_csr(name, &causes);
            }
            for c in conds.iter_mut() {
                for t in ["lastUpdateTime", "lastTransitionTime"] {
                    if c[t].is_null() || c[t] == "" {
                        c[t] = json!(now);
                    }
                }
            }
            updated["status"]["conditions"] = json!(conds);
            if updated["status"]["certificate"].is_null() {
                updated["status"].as_object_mut().map(|o| o.remove("certificate"));
            }
        }
    }
    let rv = next_rv(&mut s);
    updated["metadata"]["resourceVersion"] = json!(rv.to_string());
    s.csrs.insert(name.to_string(), updated.clone());
    record(
        &mut s,
        rv,
        "CertificateSigningRequest",
        "MODIFIED",
        None,
        updated.clone(),
    );
    drop(s);
    changed.notify_waiters();
    full(StatusCode::OK, updated)
}

/// A watch: every event of `kind` after `resourceVersion` (or, without one, ADDED for what
/// exists), then new ones as they happen, one JSON object per line, until `timeoutSeconds`.
fn watch(
    req: &Request<Incoming>,
    q: &HashMap<String, String>,
    st: &Arc<Mutex<State>>,
    changed: &Arc<Notify>,
    kind: &'static str,
    namespace: Option<String>,
) -> Response<Body> {
    let as_table = wants_table(req) && kind == "CertificateSigningRequest";
    let name = q
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_string);
    let since: Option<u64> = q.get("resourceVersion").and_then(|v| v.parse().ok()).filter(|v| *v > 0);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(16);
    let (st, changed) = (st.clone(), changed.clone());
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        let matches = |e: &Event| {
            e.kind == kind
                && (namespace.is_none() || e.namespace == namespace)
                && name.as_deref().is_none_or(|n| e.object["metadata"]["name"] == n)
        };
        // Without a resourceVersion: the current objects first, as ADDED.
        let mut last = match since {
            Some(rv) => rv,
            None => {
                let (initial, rv) = {
                    let s = st.lock().unwrap();
                    let initial: Vec<Value> = match kind {
                        "CertificateSigningRequest" => s.csrs.values().cloned().collect(),
                        "ClusterTrustBundle" => s.ctbs.values().cloned().collect(),
                        _ => s
                            .secrets
                            .iter()
                            .filter(|((n, _), _)| Some(n) == namespace.as_ref())
                            .map(|(_, v)| v.clone())
                            .collect(),
                    };
                    (initial, s.rv)
                };
                for o in initial
                    .into_iter()
                    .filter(|o| name.as_deref().is_none_or(|n| o["metadata"]["name"] == n))
                {
                    if tx
                        .send_data(Bytes::from(json!({"type": "ADDED", "object": o}).to_string() + "\n"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                rv
            }
        };
        let mut first = true;
        loop {
            let notified = changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let pending: Vec<Event> = {
                let s = st.lock().unwrap();
                s.events.iter().filter(|e| e.rv > last && matches(e)).cloned().collect()
            };
            for e in pending {
                last = e.rv;
                let object = if as_table {
                    let s = st.lock().unwrap();
                    let t = table(std::slice::from_ref(&e.object), first, &s);
                    first = false;
                    t
                } else {
                    e.object.clone()
                };
                let line = json!({"type": e.kind_type, "object": object}).to_string() + "\n";
                if tx.send_data(Bytes::from(line)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let mut r = Response::new(body.boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}
