//! The CSR round trip, as istiod's Kubernetes RA does it: create a `certificates.k8s.io/v1`
//! CertificateSigningRequest for the workload's CSR, approve it through `/approval`, watch it
//! (then read it, which closes the race with a signer quicker than the watch) until a
//! certificate or a `Denied`/`Failed` condition appears, verify the chain against the signer's
//! roots, and delete the request on every path, a caller that went away included.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, pin_mut};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::{DeleteParams, PostParams, WatchEvent, WatchParams};
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use signet_authority::{ClusterOrder, Refused};
use signet_certs::{Anchors, CertInfo, Refusal, RequestInfo, Usage, parse_certs};

use crate::api::{code, describe};
use crate::refused;

/// cert-manager's annotation for the requested lifetime (it predates `expirationSeconds`, and
/// older cert-manager versions read only it).
pub const REQUEST_DURATION: &str = "experimental.cert-manager.io/request-duration";
/// The usages istiod requests: a sidecar is a TLS server and a TLS client.
pub const USAGES: [&str; 4] = ["digital signature", "key encipherment", "server auth", "client auth"];
/// Istio's prefix for the requests it creates.
const GENERATE_NAME: &str = "csr-workload-";
/// The reason the authority's approval carries.
pub const APPROVED_REASON: &str = "SignetApproved";
/// How long one watch request may stay open before it is renewed.
const WATCH_SECONDS: u32 = 290;

/// A request the authority has open in the cluster (admin `/csrs`).
#[derive(Clone, Debug)]
struct Open {
    signer: String,
    username: String,
    expiration_seconds: u64,
    created: SystemTime,
    phase: &'static str,
}

type OpenMap = Arc<Mutex<BTreeMap<String, Open>>>;

pub struct RoundTrip {
    api: Api<CertificateSigningRequest>,
    timeout: Duration,
    /// Approve each request (istiod's way); if false, a person or another approver decides.
    approve: bool,
    open: OpenMap,
}

impl RoundTrip {
    pub fn new(client: kube::Client, timeout: Duration, approve: bool) -> Self {
        RoundTrip {
            api: Api::all(client),
            timeout,
            approve,
            open: OpenMap::default(),
        }
    }

    pub async fn sign(&self, order: ClusterOrder<'_>) -> Result<Vec<CertificateDer<'static>>, Refused> {
        let requested = RequestInfo::parse(order.csr_pem).map_err(|e| refused(Refusal::CsrInvalid, e.to_string()))?;
        let seconds = order.ttl.as_secs().clamp(1, i32::MAX as u64);
        let object = CertificateSigningRequest {
            metadata: ObjectMeta {
                generate_name: Some(GENERATE_NAME.into()),
                annotations: Some(BTreeMap::from([(REQUEST_DURATION.to_string(), format!("{seconds}s"))])),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "signet-authority".to_string(),
                )])),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(order.csr_pem.as_bytes().to_vec()),
                signer_name: order.signer.to_string(),
                usages: Some(USAGES.iter().map(|u| u.to_string()).collect()),
                expiration_seconds: Some(seconds as i32),
                ..Default::default()
            },
            status: None,
        };
        let created = self
            .api
            .create(&PostParams::default(), &object)
            .await
            .map_err(|e| unavailable(format!("creating a CertificateSigningRequest for {}", order.signer), &e))?;
        let name = created.metadata.name.clone().unwrap_or_default();
        let mut cleanup = Cleanup {
            api: self.api.clone(),
            name: name.clone(),
            open: self.open.clone(),
            done: false,
        };
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(
            name.clone(),
            Open {
                signer: order.signer.to_string(),
                username: order.requester.username(),
                expiration_seconds: seconds,
                created: SystemTime::now(),
                phase: "Pending",
            },
        );
        let result = match tokio::time::timeout(self.timeout, self.approve_and_wait(created, &order)).await {
            Ok(r) => r,
            Err(_) if !self.approve && self.phase(&name) == Some("Pending") => Err(refused(
                Refusal::CsrTimeout,
                format!(
                    "CertificateSigningRequest {name} was not approved within {} (the authority leaves approval to a person: kubectl certificate approve)",
                    signet_certs::format_duration(self.timeout)
                ),
            )),
            Err(_) => Err(refused(
                Refusal::CsrTimeout,
                format!(
                    "no certificate for CertificateSigningRequest {name} from signer {} within {}: is its signer (cert-manager, or `signet signer controller`) running and serving {}?",
                    order.signer,
                    signet_certs::format_duration(self.timeout),
                    order.signer
                ),
            )),
        };
        cleanup.delete().await;
        let chain = result?;
        verify(&name, &order, &requested, chain)
    }

    async fn approve_and_wait(
        &self,
        created: CertificateSigningRequest,
        order: &ClusterOrder<'_>,
    ) -> Result<Vec<CertificateDer<'static>>, Refused> {
        let name = created.metadata.name.clone().unwrap_or_default();
        let current = if self.approve {
            let approved = self.approve(created, order).await?;
            self.set_phase(&name, "Approved");
            approved
        } else {
            tracing::info!(
                "CertificateSigningRequest {name} for {} awaits approval (kubectl certificate approve {name})",
                order.requester.username()
            );
            created
        };
        let rv = current.metadata.resource_version.clone().unwrap_or_default();
        if let Some(done) = outcome(&current, order) {
            return done;
        }
        self.wait(&name, rv, order).await
    }

    /// Adds the `Approved` condition through `/approval`; a conflicting update (someone else
    /// wrote the request meanwhile) is read back and tried again.
    async fn approve(
        &self,
        mut csr: CertificateSigningRequest,
        order: &ClusterOrder<'_>,
    ) -> Result<CertificateSigningRequest, Refused> {
        let name = csr.metadata.name.clone().unwrap_or_default();
        for _ in 0..5 {
            let conditions = csr
                .status
                .get_or_insert_with(Default::default)
                .conditions
                .get_or_insert_with(Vec::new);
            // Approved, Denied or Failed by someone else first: nothing to add, the outcome says
            // what became of it.
            if conditions
                .iter()
                .any(|c| matches!(c.type_.as_str(), "Approved" | "Denied" | "Failed"))
            {
                return Ok(csr);
            }
            let now = Time(k8s_openapi::jiff::Timestamp::now());
            conditions.push(CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some(APPROVED_REASON.into()),
                message: Some(format!(
                    "checked by the signet authority: {} may have this certificate from {}",
                    order.requester.username(),
                    order.signer
                )),
                last_update_time: Some(now.clone()),
                last_transition_time: Some(now),
            });
            match self
                .api
                .replace_subresource("approval", &name, &PostParams::default(), &csr)
                .await
            {
                Ok(updated) => return Ok(updated),
                Err(e) if matches!(code(&e), Some(409) | Some(422)) => {
                    csr = self
                        .api
                        .get(&name)
                        .await
                        .map_err(|e| unavailable(format!("reading CertificateSigningRequest {name}"), &e))?;
                }
                Err(e) => {
                    return Err(unavailable(
                        format!(
                            "approving CertificateSigningRequest {name} (does the authority's service account have `approve` on signers/{}?)",
                            order.signer
                        ),
                        &e,
                    ));
                }
            }
        }
        Err(refused(
            Refusal::ClusterUnavailable,
            format!("approving CertificateSigningRequest {name}: it kept changing under the authority"),
        ))
    }

    /// Watches the request by name until it is decided. The watch is opened first and the
    /// request read after, so a certificate written in between is not missed.
    async fn wait(
        &self,
        name: &str,
        mut rv: String,
        order: &ClusterOrder<'_>,
    ) -> Result<Vec<CertificateDer<'static>>, Refused> {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(WATCH_SECONDS);
        loop {
            let stream = match self.api.watch(&params, &rv).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(
                        "watching CertificateSigningRequest {name}: {}; trying again",
                        describe(&e)
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match self.api.get(name).await {
                Ok(current) => {
                    if let Some(done) = outcome(&current, order) {
                        return done;
                    }
                }
                Err(e) if code(&e) == Some(404) => return Err(deleted(name)),
                Err(e) => tracing::warn!("reading CertificateSigningRequest {name}: {}", describe(&e)),
            }
            pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        rv = o.metadata.resource_version.clone().unwrap_or(rv);
                        if is_approved(&o) {
                            self.set_phase(name, "Approved");
                        }
                        if let Some(done) = outcome(&o, order) {
                            return done;
                        }
                    }
                    Ok(WatchEvent::Deleted(_)) => return Err(deleted(name)),
                    Ok(WatchEvent::Bookmark(b)) => rv = b.metadata.resource_version,
                    Ok(WatchEvent::Error(e)) => {
                        // 410 Gone: the version is too old; the read after the next watch
                        // catches up.
                        tracing::debug!("watch of CertificateSigningRequest {name}: {} {}", e.code, e.message);
                        if e.code == 410 {
                            rv = String::new();
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::debug!("watch of CertificateSigningRequest {name} ended: {}", describe(&e));
                        break;
                    }
                }
            }
        }
    }

    fn phase(&self, name: &str) -> Option<&'static str> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|o| o.phase)
    }

    fn set_phase(&self, name: &str, phase: &'static str) {
        if let Some(o) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get_mut(name) {
            o.phase = phase;
        }
    }

    /// The requests now open, as a `CertificateSigningRequestList`.
    pub fn in_flight(&self) -> Value {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<Value> = open
            .iter()
            .map(|(name, o)| {
                json!({
                    "metadata": {"name": name, "creationTimestamp": signet_certs::rfc3339(o.created)},
                    "spec": {"signerName": o.signer, "username": o.username, "expirationSeconds": o.expiration_seconds, "usages": USAGES},
                    "status": {"phase": o.phase, "waitingSeconds": o.created.elapsed().unwrap_or_default().as_secs()},
                })
            })
            .collect();
        json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequestList", "items": items})
    }
}

fn is_approved(csr: &CertificateSigningRequest) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Approved"))
}

fn unavailable(what: String, e: &kube::Error) -> Refused {
    refused(Refusal::ClusterUnavailable, format!("{what}: {}", describe(e)))
}

fn deleted(name: &str) -> Refused {
    refused(
        Refusal::CsrFailed,
        format!("CertificateSigningRequest {name} was deleted before a certificate was issued"),
    )
}

/// The decision on a request, once there is one: Denied, Failed, or the issued chain.
fn outcome(
    csr: &CertificateSigningRequest,
    order: &ClusterOrder<'_>,
) -> Option<Result<Vec<CertificateDer<'static>>, Refused>> {
    let name = csr.metadata.name.as_deref().unwrap_or_default();
    let status = csr.status.as_ref()?;
    for c in status.conditions.iter().flatten() {
        let reason = c.reason.as_deref().unwrap_or("no reason");
        let message = c.message.as_deref().unwrap_or_default();
        let why = if message.is_empty() {
            reason.to_string()
        } else {
            format!("{reason}: {message}")
        };
        match c.type_.as_str() {
            "Denied" => {
                return Some(Err(refused(
                    Refusal::CsrDenied,
                    format!(
                        "CertificateSigningRequest {name} for {} was denied: {why}",
                        order.signer
                    ),
                )));
            }
            "Failed" => {
                return Some(Err(refused(
                    Refusal::CsrFailed,
                    format!("signer {} failed CertificateSigningRequest {name}: {why}", order.signer),
                )));
            }
            _ => {}
        }
    }
    let pem = status.certificate.as_ref().filter(|c| !c.0.is_empty())?;
    Some(
        parse_certs(&pem.0, &format!("CertificateSigningRequest {name} status.certificate"))
            .map_err(|e| refused(Refusal::ChainUntrusted, e.to_string())),
    )
}

/// The issued chain must be for the requested key and identity, and anchor to the signer's
/// roots; roots the signer appended are dropped (they travel separately).
fn verify(
    name: &str,
    order: &ClusterOrder<'_>,
    requested: &RequestInfo,
    issued: Vec<CertificateDer<'static>>,
) -> Result<Vec<CertificateDer<'static>>, Refused> {
    let untrusted = |why: String| {
        refused(
            Refusal::ChainUntrusted,
            format!(
                "the certificate signer {} issued for CertificateSigningRequest {name} {why}",
                order.signer
            ),
        )
    };
    let chain: Vec<CertificateDer<'static>> = issued.into_iter().filter(|c| !order.roots.contains(c)).collect();
    let leaf = chain
        .first()
        .ok_or_else(|| untrusted("holds only root certificates".into()))?;
    let info = CertInfo::parse(leaf).map_err(|e| untrusted(format!("is unreadable: {e}")))?;
    if info.spki != requested.spki {
        return Err(untrusted("is not for the requested key".into()));
    }
    if info.uris != requested.uris {
        return Err(untrusted(format!(
            "names {:?}, not the requested {:?}",
            info.uris, requested.uris
        )));
    }
    let anchors = Anchors::new(order.roots);
    for usage in [Usage::ServerAuth, Usage::ClientAuth] {
        anchors.verify(&chain, SystemTime::now(), usage).map_err(|e| {
            untrusted(format!(
                "does not verify against the signer's {} root(s) for {}: {e}",
                order.roots.len(),
                usage.name()
            ))
        })?;
    }
    Ok(chain)
}

/// Deletes the request: awaited on the normal paths, spawned when the caller went away.
struct Cleanup {
    api: Api<CertificateSigningRequest>,
    name: String,
    open: OpenMap,
    done: bool,
}

impl Cleanup {
    async fn delete(&mut self) {
        self.done = true;
        delete(&self.api, &self.name, &self.open).await;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (api, name, open) = (self.api.clone(), std::mem::take(&mut self.name), self.open.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tracing::info!("the caller went away; deleting CertificateSigningRequest {name}");
                delete(&api, &name, &open).await;
            });
        }
    }
}

async fn delete(api: &Api<CertificateSigningRequest>, name: &str, open: &OpenMap) {
    open.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => tracing::debug!("deleted CertificateSigningRequest {name}"),
        Err(e) if code(&e) == Some(404) => {}
        Err(e) => tracing::warn!(
            "could not delete CertificateSigningRequest {name}: {} (delete it by hand: kubectl delete csr {name})",
            describe(&e)
        ),
    }
}
