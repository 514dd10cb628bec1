//! `signet signer controller`: the signer side of the CSR API, for clusters without
//! cert-manager (and Signet's stand-in for it in tests, as Istio's `csrctrl`). It watches
//! CertificateSigningRequests whose `signerName` is one of its signers and signs only those that
//! are Approved and neither Denied nor Failed and have no certificate yet; the lifetime is
//! `expirationSeconds` (or cert-manager's request-duration annotation) within its cap; only the
//! requested SANs are copied. The leaf and its intermediates go into `status.certificate`
//! through `/status`; a request it cannot sign is marked `Failed` with the reason. Optionally it
//! publishes each signer's roots as a ClusterTrustBundle, and signs the PodCertificateRequests
//! of its signers (`pod_certificates.rs`).

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::StatusCode;
use hyper::service::service_fn;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestCondition};
use k8s_openapi::api::certificates::v1beta1::{ClusterTrustBundle, ClusterTrustBundleSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::PostParams;
use signet_certs::{FileWatch, IssueOptions, Signer, SignerName, certs_to_pem, files};
use signet_proxy::body;
use signet_proxy::prometheus::{Exposition, Kind};
use signet_proxy::serve::{ConnLimit, HttpLimits, HttpServing, Lifecycle, accept_loop, serve_http1};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::access::Permission;
use crate::api::{code, describe};
use crate::csr::REQUEST_DURATION;
use crate::pod_certificates::{self, PodCertificateRequest};
use crate::reflect::{Change, reflect};
use crate::secrets::{SecretRef, SecretSigners};

/// The reason on a request the controller could not sign.
pub const FAILED_REASON: &str = "SignerValidationFailure";
/// The usages a workload certificate may ask for; anything else is refused.
const ALLOWED_USAGES: [&str; 4] = ["digital signature", "key encipherment", "server auth", "client auth"];

/// Where the signers' keys are: Kubernetes Secrets, or signer directories.
pub enum Keys {
    Secrets(Arc<SecretSigners>),
    Dirs(Arc<DirSigners>),
}

impl Keys {
    fn current(&self) -> Arc<BTreeMap<SignerName, Arc<Signer>>> {
        match self {
            Keys::Secrets(s) => s.current(),
            Keys::Dirs(d) => d.current.load_full(),
        }
    }

    fn generation(&self) -> u64 {
        match self {
            Keys::Secrets(s) => s.generation(),
            Keys::Dirs(d) => d.generation.load(Ordering::Relaxed),
        }
    }
}

/// Signers from directories (`tls.crt`, `tls.key`, `ca.crt`), reloaded when the files change;
/// a broken change keeps the signers in use.
pub struct DirSigners {
    current: ArcSwap<BTreeMap<SignerName, Arc<Signer>>>,
    generation: AtomicU64,
}

impl DirSigners {
    pub fn start(
        dirs: Vec<(SignerName, PathBuf)>,
        interval: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, signet_certs::Error> {
        let load = |dirs: &[(SignerName, PathBuf)]| -> Result<BTreeMap<SignerName, Arc<Signer>>, signet_certs::Error> {
            dirs.iter()
                .map(|(name, dir)| Ok((name.clone(), Arc::new(Signer::load_dir(dir, name.clone())?))))
                .collect()
        };
        let this = Arc::new(DirSigners {
            current: ArcSwap::from_pointee(load(&dirs)?),
            generation: AtomicU64::new(0),
        });
        let watched = this.clone();
        let paths = dirs
            .iter()
            .flat_map(|(_, d)| [files::CERT, files::KEY, files::CA].map(|f| d.join(f)))
            .collect();
        tokio::spawn(async move {
            let mut watch = FileWatch::new(paths);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                if watch.changed() {
                    match load(&dirs) {
                        Ok(next) => {
                            watched.current.store(Arc::new(next));
                            watched.generation.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("reloaded the signer directories");
                        }
                        Err(e) => tracing::error!("reloading the signer directories: {e}; keeping the signers in use"),
                    }
                }
            }
        });
        Ok(this)
    }
}

#[derive(Clone, Debug)]
pub struct ControllerSettings {
    /// The longest certificate the controller issues; longer requests are cut to it.
    pub max_ttl: Duration,
    /// Publish each signer's roots as a ClusterTrustBundle.
    pub publish_trust_bundles: bool,
    /// Sign the PodCertificateRequests of its signers too, for pods of `trust_domain`.
    pub pod_certificates: bool,
    pub trust_domain: String,
    pub admin: Option<SocketAddr>,
}

/// Where the signer controller's RBAC is written.
pub const CONTROLLER_RBAC: &str = "examples/kubernetes/controller-variant/10-signet-signer-controller.yaml";

/// Every permission the signer controller uses for `signers` (their keys in `secrets`, if
/// there) with `settings`, with what for.
pub fn controller_permissions(
    signers: &[SignerName],
    secrets: &[SecretRef],
    settings: &ControllerSettings,
) -> Vec<Permission> {
    const CERTS: &str = "certificates.k8s.io";
    let mut p = Vec::new();
    for verb in ["list", "watch"] {
        p.push(Permission::new(
            verb,
            CERTS,
            "certificatesigningrequests",
            "find the requests for its signers",
        ));
    }
    p.push(Permission::new("update", CERTS, "certificatesigningrequests", "write certificates").subresource("status"));
    for s in signers {
        p.push(Permission::new("sign", CERTS, "signers", "sign for its signers").named(s.as_str()));
    }
    for r in secrets {
        p.push(
            Permission::new("get", "", "secrets", "read a signer key")
                .named(&r.name)
                .within(&r.namespace),
        );
    }
    if settings.publish_trust_bundles {
        for verb in ["get", "create", "update"] {
            p.push(Permission::new(
                verb,
                CERTS,
                "clustertrustbundles",
                "publish its signers' roots",
            ));
        }
        for s in signers {
            p.push(
                Permission::new("attest", CERTS, "signers", "publish roots in its signers' names").named(s.as_str()),
            );
        }
    }
    if settings.pod_certificates {
        for verb in ["list", "watch"] {
            p.push(Permission::new(
                verb,
                CERTS,
                "podcertificaterequests",
                "find the pod certificate requests",
            ));
        }
        p.push(
            Permission::new("update", CERTS, "podcertificaterequests", "write pod certificates").subresource("status"),
        );
    }
    p
}

pub struct Controller {
    client: kube::Client,
    keys: Keys,
    settings: ControllerSettings,
    /// (signer, outcome) → count; outcome is `issued` or the failure reason.
    outcomes: Mutex<BTreeMap<(String, String), u64>>,
    /// (signer, outcome) → count, for PodCertificateRequests.
    pod_outcomes: Mutex<BTreeMap<(String, String), u64>>,
    /// Set once the first list of requests has been handled.
    synced: std::sync::atomic::AtomicBool,
    /// Set once the first list of PodCertificateRequests has been handled (or none are signed).
    pods_synced: std::sync::atomic::AtomicBool,
}

impl Controller {
    pub fn new(client: kube::Client, keys: Keys, settings: ControllerSettings) -> Arc<Self> {
        Arc::new(Controller {
            client,
            keys,
            pods_synced: std::sync::atomic::AtomicBool::new(!settings.pod_certificates),
            settings,
            outcomes: Mutex::new(BTreeMap::new()),
            pod_outcomes: Mutex::new(BTreeMap::new()),
            synced: Default::default(),
        })
    }

    /// Serves until `stop`: the admin port (if any) is bound before this returns its address.
    pub async fn start(self: &Arc<Self>, life: &Lifecycle) -> std::io::Result<Option<SocketAddr>> {
        let admin = match self.settings.admin {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await?;
                let bound = listener.local_addr()?;
                life.spawn(admin_loop(listener, self.clone(), life.clone()));
                Some(bound)
            }
            None => None,
        };
        let names: Vec<String> = self.keys.current().keys().map(|n| n.to_string()).collect();
        tracing::info!(
            "signer controller: signing approved CertificateSigningRequests for {} (at most {} each){}",
            names.join(", "),
            signet_certs::format_duration(self.settings.max_ttl),
            if self.settings.publish_trust_bundles {
                "; publishing their roots as ClusterTrustBundles"
            } else {
                ""
            }
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let stop = life.shutdown.clone();
        let this = self.clone();
        life.spawn(async move {
            reflect(api, "CertificateSigningRequests", stop, move |change| {
                let objects = match change {
                    Change::Reset(all) => {
                        this.synced.store(true, Ordering::Relaxed);
                        all
                    }
                    Change::Applied(o) => vec![o],
                    Change::Deleted(_) => Vec::new(),
                };
                for o in objects {
                    let _ = tx.send(o);
                }
            })
            .await;
        });
        life.spawn(self.clone().work(rx, life.shutdown.clone()));
        if self.settings.pod_certificates {
            tracing::info!(
                "signer controller: also signing PodCertificateRequests for them (trust domain {})",
                self.settings.trust_domain
            );
            let (tx, rx) = mpsc::unbounded_channel();
            let api: Api<PodCertificateRequest> = Api::all(self.client.clone());
            let stop = life.shutdown.clone();
            let this = self.clone();
            life.spawn(async move {
                reflect(api, "PodCertificateRequests", stop, move |change| {
                    let objects = match change {
                        Change::Reset(all) => {
                            this.pods_synced.store(true, Ordering::Relaxed);
                            all
                        }
                        Change::Applied(o) => vec![o],
                        Change::Deleted(_) => Vec::new(),
                    };
                    for o in objects {
                        let _ = tx.send(o);
                    }
                })
                .await;
            });
            life.spawn(self.clone().work_pods(rx, life.shutdown.clone()));
        }
        if self.settings.publish_trust_bundles {
            life.spawn(self.clone().publish(life.shutdown.clone()));
        }
        Ok(admin)
    }

    async fn work(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<CertificateSigningRequest>,
        stop: CancellationToken,
    ) {
        let mut ignored: HashSet<String> = HashSet::new();
        loop {
            let csr = tokio::select! {
                _ = stop.cancelled() => return,
                c = rx.recv() => match c { Some(c) => c, None => return },
            };
            self.handle(csr, &mut ignored).await;
        }
    }

    async fn handle(&self, csr: CertificateSigningRequest, ignored: &mut HashSet<String>) {
        let name = csr.metadata.name.clone().unwrap_or_default();
        let signer_name = csr.spec.signer_name.clone();
        let keys = self.keys.current();
        let Some(signer) = keys
            .iter()
            .find(|(n, _)| n.as_str() == signer_name)
            .map(|(_, s)| s.clone())
        else {
            if ignored.insert(name.clone()) {
                tracing::debug!("{name}: for {signer_name}, not one of this controller's signers; ignored");
            }
            return;
        };
        let status = csr.status.clone().unwrap_or_default();
        if status.certificate.as_ref().is_some_and(|c| !c.0.is_empty()) {
            return;
        }
        let conditions = status.conditions.unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "Denied" || c.type_ == "Failed") {
            return;
        }
        if !conditions.iter().any(|c| c.type_ == "Approved" && c.status == "True") {
            tracing::debug!("{name}: not approved yet");
            return;
        }
        let result = self.sign(&csr, &signer);
        let signer_label = signer_name.clone();
        match result {
            Ok((pem, ttl)) => {
                let mut updated = csr.clone();
                updated.status.get_or_insert_with(Default::default).certificate =
                    Some(k8s_openapi::ByteString(pem.into_bytes()));
                match self.write_status(&name, &updated).await {
                    Ok(()) => {
                        tracing::info!(
                            "{name}: issued by {signer_name} for {} ({})",
                            csr.spec.username.as_deref().unwrap_or("?"),
                            signet_certs::format_duration(ttl)
                        );
                        self.count(signer_label, "issued");
                    }
                    Err(e) => tracing::warn!("{name}: could not write the certificate: {e}"),
                }
            }
            Err(reason) => {
                let mut updated = csr.clone();
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                updated
                    .status
                    .get_or_insert_with(Default::default)
                    .conditions
                    .get_or_insert_with(Vec::new)
                    .push(CertificateSigningRequestCondition {
                        type_: "Failed".into(),
                        status: "True".into(),
                        reason: Some(FAILED_REASON.into()),
                        message: Some(reason.clone()),
                        last_update_time: Some(now.clone()),
                        last_transition_time: Some(now),
                    });
                match self.write_status(&name, &updated).await {
                    Ok(()) => {
                        tracing::warn!("{name}: Failed: {}", signet_certs::printable(&reason));
                        self.count(signer_label, FAILED_REASON);
                    }
                    Err(e) => tracing::warn!("{name}: could not mark it Failed: {e}"),
                }
            }
        }
    }

    async fn work_pods(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<PodCertificateRequest>,
        stop: CancellationToken,
    ) {
        loop {
            let pcr = tokio::select! {
                _ = stop.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            self.handle_pod(pcr).await;
        }
    }

    /// Decides a PodCertificateRequest of one of its signers that nobody decided yet, and
    /// writes the decision through `/status`.
    async fn handle_pod(&self, pcr: PodCertificateRequest) {
        let keys = self.keys.current();
        let Some(signer) = keys
            .iter()
            .find(|(n, _)| n.as_str() == pcr.spec.signer_name)
            .map(|(_, s)| s.clone())
        else {
            return;
        };
        if pcr.decided() {
            return;
        }
        let name = pcr.name();
        let now = std::time::SystemTime::now();
        let decision = pod_certificates::decide(&pcr, &signer, &self.settings.trust_domain, self.settings.max_ttl, now);
        let mut updated = pcr.clone();
        updated.status = decision.status(&pcr.spec.signer_name, pcr.metadata.generation, now);
        let ns = pcr.metadata.namespace.clone().unwrap_or_default();
        let api: Api<PodCertificateRequest> = Api::namespaced(self.client.clone(), &ns);
        let short = pcr.metadata.name.clone().unwrap_or_default();
        match api.replace_status(&short, &PostParams::default(), &updated).await {
            Ok(_) => {
                match &decision {
                    pod_certificates::Decision::Issued { id, not_after, .. } => tracing::info!(
                        "PodCertificateRequest {name}: issued by {} for {id} (pod {}, until {})",
                        pcr.spec.signer_name,
                        signet_certs::printable(&pcr.spec.pod_name),
                        signet_certs::rfc3339(*not_after)
                    ),
                    pod_certificates::Decision::Denied { reason, message }
                    | pod_certificates::Decision::Failed { reason, message } => tracing::warn!(
                        "PodCertificateRequest {name}: {reason}: {}",
                        signet_certs::printable(message)
                    ),
                }
                *self
                    .pod_outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((pcr.spec.signer_name.clone(), decision.outcome().to_string()))
                    .or_default() += 1;
            }
            // Changed meanwhile (or deleted): the watch brings the new version, decided again.
            Err(e) if matches!(code(&e), Some(404) | Some(409)) => {}
            Err(e) => tracing::warn!(
                "PodCertificateRequest {name}: could not write the status: {} (may this service account update podcertificaterequests/status and `sign` for {}?)",
                describe(&e),
                pcr.spec.signer_name
            ),
        }
    }

    /// Signs the request, or says why not. Returns the PEM for `status.certificate` and the
    /// lifetime given.
    fn sign(&self, csr: &CertificateSigningRequest, signer: &Signer) -> Result<(String, Duration), String> {
        let pem = std::str::from_utf8(&csr.spec.request.0).map_err(|_| "spec.request is not PEM text".to_string())?;
        let info = signet_certs::RequestInfo::parse(pem).map_err(|e| e.to_string())?;
        if info.requests_ca {
            return Err("the request asks for a CA certificate; this signer issues leaf certificates only".into());
        }
        if let Some(u) = csr
            .spec
            .usages
            .iter()
            .flatten()
            .find(|u| !ALLOWED_USAGES.contains(&u.as_str()))
        {
            return Err(format!(
                "usage {u:?} is not allowed; this signer issues {}",
                ALLOWED_USAGES.join(", ")
            ));
        }
        let ttl = requested_ttl(csr)?.map_or(self.settings.max_ttl, |t| t.min(self.settings.max_ttl));
        let issued = signer
            .sign(
                pem,
                &IssueOptions {
                    ttl,
                    backdate: Duration::ZERO,
                },
            )
            .map_err(|e| e.to_string())?;
        Ok((certs_to_pem(&issued.chain), ttl))
    }

    async fn write_status(&self, name: &str, csr: &CertificateSigningRequest) -> Result<(), String> {
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        match api.replace_status(name, &PostParams::default(), csr).await {
            Ok(_) => Ok(()),
            // Changed meanwhile (or deleted): the watch brings the new version, decided again.
            Err(e) if matches!(code(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(format!(
                "{} (may this service account update certificatesigningrequests/status and `sign` for the signer?)",
                describe(&e)
            )),
        }
    }

    fn count(&self, signer: String, outcome: &str) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((signer, outcome.to_string()))
            .or_default() += 1;
    }

    pub fn metrics(&self) -> String {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let mut e = Exposition::new();
        e.family(
            "signet_signer_requests_total",
            Kind::Counter,
            "CertificateSigningRequests this controller decided, by signer and outcome (issued, or the failure reason).",
        );
        for ((signer, outcome), n) in outcomes.iter() {
            e.sample(
                "signet_signer_requests_total",
                &[("signer", signer.as_str()), ("outcome", outcome.as_str())],
                *n,
            );
        }
        drop(outcomes);
        if self.settings.pod_certificates {
            let outcomes = self.pod_outcomes.lock().unwrap_or_else(|p| p.into_inner());
            e.family(
                "signet_signer_pod_certificates_total",
                Kind::Counter,
                "PodCertificateRequests this controller decided, by signer and outcome (issued, or the Denied/Failed reason).",
            );
            for ((signer, outcome), n) in outcomes.iter() {
                e.sample(
                    "signet_signer_pod_certificates_total",
                    &[("signer", signer.as_str()), ("outcome", outcome.as_str())],
                    *n,
                );
            }
        }
        e.finish()
    }

    /// Keeps one ClusterTrustBundle per signer holding its roots, named as the API requires for
    /// signer-linked bundles (`<signer name with / as :>:<suffix>`).
    async fn publish(self: Arc<Self>, stop: CancellationToken) {
        let api: Api<ClusterTrustBundle> = Api::all(self.client.clone());
        let mut published: Option<u64> = None;
        loop {
            let generation = self.keys.generation();
            if published != Some(generation) {
                let mut ok = true;
                for (name, signer) in self.keys.current().iter() {
                    if let Err(e) = publish_one(&api, name, signer).await {
                        tracing::warn!("publishing the roots of {name} as a ClusterTrustBundle: {e}");
                        ok = false;
                    }
                }
                if ok {
                    published = Some(generation);
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

/// The bundle name for a signer's roots.
pub fn trust_bundle_name(signer: &SignerName) -> String {
    format!("{}:signet", signer.as_str().replace('/', ":"))
}

async fn publish_one(api: &Api<ClusterTrustBundle>, name: &SignerName, signer: &Signer) -> Result<(), String> {
    let bundle_name = trust_bundle_name(name);
    let pem = certs_to_pem(signer.roots());
    let existing = api.get_opt(&bundle_name).await.map_err(|e| describe(&e))?;
    let hint = "(may this service account create clustertrustbundles and `attest` for the signer?)";
    match existing {
        Some(b) if b.spec.trust_bundle == pem => Ok(()),
        Some(mut b) => {
            b.spec.trust_bundle = pem;
            api.replace(&bundle_name, &PostParams::default(), &b)
                .await
                .map(|_| tracing::info!("updated ClusterTrustBundle {bundle_name}"))
                .map_err(|e| format!("{} {hint}", describe(&e)))
        }
        None => {
            let bundle = ClusterTrustBundle {
                metadata: ObjectMeta {
                    name: Some(bundle_name.clone()),
                    ..Default::default()
                },
                spec: ClusterTrustBundleSpec {
                    signer_name: Some(name.to_string()),
                    trust_bundle: pem,
                },
            };
            api.create(&PostParams::default(), &bundle)
                .await
                .map(|_| tracing::info!("published ClusterTrustBundle {bundle_name}"))
                .map_err(|e| format!("{} {hint}", describe(&e)))
        }
    }
}

/// The lifetime a request asks for: `spec.expirationSeconds`, else cert-manager's annotation.
fn requested_ttl(csr: &CertificateSigningRequest) -> Result<Option<Duration>, String> {
    if let Some(s) = csr.spec.expiration_seconds {
        return Ok(Some(Duration::from_secs(s.max(0) as u64)));
    }
    match csr.metadata.annotations.as_ref().and_then(|a| a.get(REQUEST_DURATION)) {
        Some(text) => signet_certs::parse_duration(text)
            .map(Some)
            .map_err(|e| format!("annotation {REQUEST_DURATION}: {e}")),
        None => Ok(None),
    }
}

async fn admin_loop(listener: tokio::net::TcpListener, controller: Arc<Controller>, life: Lifecycle) {
    let serving = Arc::new(HttpServing::new(HttpLimits::default(), life.shutdown.clone()));
    let refuse = |_stream, peer, why| tracing::debug!("signer controller admin: refused {peer}: {why}");
    let handle = move |stream, _| {
        let (controller, serving) = (controller.clone(), serving.clone());
        async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let controller = controller.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => body::text(StatusCode::OK, controller.metrics()),
                        "/ready"
                            if controller.synced.load(Ordering::Relaxed)
                                && controller.pods_synced.load(Ordering::Relaxed) =>
                        {
                            body::text(StatusCode::OK, "ready")
                        }
                        "/ready" => body::text(StatusCode::SERVICE_UNAVAILABLE, "not synced with the API server yet"),
                        "/live" => body::text(StatusCode::OK, "live"),
                        _ => body::text(StatusCode::NOT_FOUND, "try /metrics /ready"),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            serve_http1(stream, svc, &serving).await;
        }
    };
    accept_loop(
        listener,
        "signer controller admin".into(),
        life,
        ConnLimit::new(64),
        handle,
        refuse,
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};

    use super::*;

    fn csr(expiration: Option<i32>, annotation: Option<&str>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            metadata: ObjectMeta {
                annotations: annotation.map(|a| BTreeMap::from([(REQUEST_DURATION.to_string(), a.to_string())])),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                expiration_seconds: expiration,
                ..Default::default()
            },
            status: None,
        }
    }

    #[test]
    fn the_lifetime_comes_from_expiration_seconds_then_the_annotation() {
        assert_eq!(requested_ttl(&csr(None, None)), Ok(None));
        assert_eq!(
            requested_ttl(&csr(Some(3600), Some("48h"))),
            Ok(Some(Duration::from_secs(3600)))
        );
        // Go's time.Duration text, as cert-manager writes it.
        assert_eq!(
            requested_ttl(&csr(None, Some("2h0m0s"))),
            Ok(Some(Duration::from_secs(7200)))
        );
        let e = requested_ttl(&csr(None, Some("soon"))).unwrap_err();
        assert!(e.contains(REQUEST_DURATION), "{e}");
    }

    #[test]
    fn trust_bundle_names_carry_the_signer_name_as_the_api_requires() {
        let name = SignerName::parse("foo", "clusterissuers.cert-manager.io").unwrap();
        assert_eq!(trust_bundle_name(&name), "clusterissuers.cert-manager.io:foo:signet");
    }
}
