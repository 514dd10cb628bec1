//! The registration authority: authenticates the caller, checks the CSR against Istio's RA
//! rules and the signing policy, picks the signer, signs, and records every request in the
//! shape of a `certificates.k8s.io/v1` CertificateSigningRequest (kept in memory, listed on the
//! admin port, one audit log line each).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use signet_certs::{IssueOptions, RequestInfo, Signer, SignerName, TrustBundle, certs_to_pem, rfc3339};

use crate::signing_policy::SigningPolicy;
use crate::tokens::{Requester, Tokens};

/// Everything the RA decides with; replaced whole on reload.
pub struct Inputs {
    pub policy: SigningPolicy,
    pub signers: BTreeMap<SignerName, Arc<Signer>>,
    /// Roots per signer for responses; a signer missing here answers with its own `ca.crt`.
    pub bundle: Option<TrustBundle>,
    pub tokens: Tokens,
}

impl Inputs {
    /// The roots returned with a chain: the bundle's (several during a rotation), else the signer's.
    pub fn roots_for(&self, signer: &Signer) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        let from_bundle = self
            .bundle
            .as_ref()
            .map(|b| b.roots_for(signer.name()))
            .unwrap_or_default();
        if from_bundle.is_empty() {
            signer.roots().to_vec()
        } else {
            from_bundle
        }
    }
}

/// How a refusal maps onto gRPC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalCode {
    Unauthenticated,
    InvalidArgument,
    PermissionDenied,
    Internal,
}

/// A request the RA did not sign: the caller sees `reason: message`.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub code: RefusalCode,
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(code: RefusalCode, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            reason,
            message: message.into(),
        }
    }
}

/// One recorded request, `certificates.k8s.io/v1` style.
#[derive(Clone, Debug)]
pub struct SigningRequest {
    pub name: String,
    pub created: SystemTime,
    pub signer_name: String,
    pub usages: Vec<&'static str>,
    pub expiration_seconds: u64,
    pub username: String,
    pub groups: Vec<String>,
    /// (type, reason, message): Approved, Denied or Failed.
    pub conditions: Vec<(&'static str, String, String)>,
    /// The issued leaf, PEM.
    pub certificate: Option<String>,
}

const USAGES: [&str; 4] = ["digital signature", "key encipherment", "server auth", "client auth"];
const KEEP: usize = 1000;

pub struct Authority {
    inputs: ArcSwap<Inputs>,
    log: Mutex<VecDeque<SigningRequest>>,
    seq: AtomicU64,
    outcomes: Mutex<HashMap<String, u64>>,
}

impl Authority {
    pub fn new(inputs: Inputs) -> Self {
        Authority {
            inputs: ArcSwap::from_pointee(inputs),
            log: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
            outcomes: Mutex::new(HashMap::new()),
        }
    }

    pub fn replace(&self, inputs: Inputs) {
        self.inputs.store(Arc::new(inputs));
    }

    pub fn inputs(&self) -> Arc<Inputs> {
        self.inputs.load_full()
    }

    /// Istio's `CreateCertificate`: returns the chain, leaf first, then one element holding the
    /// signer's current root(s).
    pub fn create_certificate(
        &self,
        token: Option<&str>,
        csr: &str,
        validity_seconds: i64,
        cert_signer: Option<&str>,
    ) -> Result<Vec<String>, Refusal> {
        let inputs = self.inputs.load_full();
        let requester = match token.map(|t| inputs.tokens.authenticate(t)) {
            Some(Some(r)) => r.clone(),
            Some(None) => {
                return Err(self.unauthenticated("UnknownToken", "the bearer token is not known to this authority"));
            }
            None => {
                return Err(self.unauthenticated(
                    "NoToken",
                    "no bearer token; send `authorization: Bearer <token>` (the workload's service-account token)",
                ));
            }
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut record = SigningRequest {
            name: format!(
                "csr-workload-{:05x}{}",
                seq,
                &signet_certs::sha256_hex(csr.as_bytes())[..5]
            ),
            created: SystemTime::now(),
            signer_name: cert_signer
                .map(str::to_string)
                .unwrap_or_else(|| inputs.policy.signer_for(&requester.namespace).to_string()),
            usages: USAGES.to_vec(),
            expiration_seconds: if validity_seconds > 0 {
                validity_seconds as u64
            } else {
                inputs.policy.default_ttl.as_secs()
            },
            username: requester.username(),
            groups: requester.groups(),
            conditions: Vec::new(),
            certificate: None,
        };
        let result = self.decide(&inputs, &requester, csr, validity_seconds, cert_signer, &mut record);
        match &result {
            Ok(_) => {
                record.conditions.push((
                    "Approved",
                    "SignetApproved".into(),
                    "checked and signed by signet".into(),
                ));
                tracing::info!(
                    "{} by {} for {}: Approved, issued ({}s)",
                    record.name,
                    record.username,
                    record.signer_name,
                    record.expiration_seconds
                );
            }
            Err(r) => {
                let kind = if r.code == RefusalCode::Internal {
                    "Failed"
                } else {
                    "Denied"
                };
                record.conditions.push((kind, r.reason.to_string(), r.message.clone()));
                tracing::warn!(
                    "{} by {} for {}: {kind}: {}: {}",
                    record.name,
                    record.username,
                    record.signer_name,
                    r.reason,
                    r.message
                );
            }
        }
        self.count(match &result {
            Ok(_) => "approved",
            Err(r) => r.reason,
        });
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == KEEP {
            log.pop_front();
        }
        log.push_back(record);
        result
    }

    fn unauthenticated(&self, reason: &'static str, message: &str) -> Refusal {
        tracing::warn!("rejected a request: Unauthenticated: {reason}: {message}");
        self.count(reason);
        Refusal::new(RefusalCode::Unauthenticated, reason, message)
    }

    fn count(&self, outcome: &str) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    fn decide(
        &self,
        inputs: &Inputs,
        requester: &Requester,
        csr: &str,
        validity_seconds: i64,
        cert_signer: Option<&str>,
        record: &mut SigningRequest,
    ) -> Result<Vec<String>, Refusal> {
        use RefusalCode::*;
        let policy = &inputs.policy;
        let caller = requester
            .spiffe_id(&policy.trust_domain)
            .map_err(|e| Refusal::new(InvalidArgument, "IdentityInvalid", e))?;
        let info = RequestInfo::parse(csr).map_err(|e| Refusal::new(InvalidArgument, "CSRInvalid", e.to_string()))?;
        match info.uris.as_slice() {
            [] => {
                return Err(Refusal::new(
                    InvalidArgument,
                    "NoSPIFFEID",
                    "the CSR has no URI SAN; it must carry the caller's SPIFFE ID",
                ));
            }
            [uri] if uri != caller.as_str() => {
                return Err(Refusal::new(
                    PermissionDenied,
                    "IdentityMismatch",
                    format!("the CSR asks for {uri}, but the caller is {caller}"),
                ));
            }
            [_] => {}
            many => {
                return Err(Refusal::new(
                    PermissionDenied,
                    "MultipleURISANs",
                    format!(
                        "the CSR has {} URI SANs; a workload certificate carries exactly one",
                        many.len()
                    ),
                ));
            }
        }
        if let Some(name) = info.dns.iter().find(|d| !policy.allows_dns(&caller, d)) {
            return Err(Refusal::new(
                PermissionDenied,
                "DNSSANNotAllowed",
                format!("DNS SAN {name} is not allowed for {caller} (policy dnsSans)"),
            ));
        }
        if let Some(ip) = info.ips.first() {
            return Err(Refusal::new(
                PermissionDenied,
                "IPSANNotAllowed",
                format!("IP SAN {ip} is not allowed"),
            ));
        }
        if let Some(mail) = info.emails.first() {
            return Err(Refusal::new(
                PermissionDenied,
                "EmailSANNotAllowed",
                format!("email SAN {mail} is not allowed"),
            ));
        }
        if let Some(ext) = info.other_extensions.first() {
            return Err(Refusal::new(
                PermissionDenied,
                "ExtensionNotAllowed",
                format!("the CSR carries {ext}"),
            ));
        }
        if info.requests_ca {
            return Err(Refusal::new(
                PermissionDenied,
                "CARequested",
                "the CSR asks for a CA certificate (basicConstraints CA:TRUE); workloads get leaf certificates only",
            ));
        }
        let ttl = if validity_seconds <= 0 {
            policy.default_ttl
        } else {
            Duration::from_secs(validity_seconds as u64)
        };
        if ttl > policy.max_ttl {
            return Err(Refusal::new(
                PermissionDenied,
                "TTLTooLong",
                format!(
                    "requested lifetime {} is above the maximum {}",
                    signet_certs::format_duration(ttl),
                    signet_certs::format_duration(policy.max_ttl)
                ),
            ));
        }
        let signer_name = match cert_signer {
            Some(s) => SignerName::parse(s, &policy.signer_domain)
                .map_err(|e| Refusal::new(InvalidArgument, "SignerNameInvalid", e.to_string()))?,
            None => policy.signer_for(&requester.namespace).clone(),
        };
        record.signer_name = signer_name.to_string();
        if !policy.may_use(&requester.namespace, &signer_name) {
            return Err(Refusal::new(
                PermissionDenied,
                "SignerNotAllowedForNamespace",
                format!(
                    "namespace {} may not use signer {signer_name}; its signer is {}",
                    requester.namespace,
                    policy.signer_for(&requester.namespace)
                ),
            ));
        }
        if !policy.may_approve(&signer_name) {
            return Err(Refusal::new(
                PermissionDenied,
                "SignerNotApprovable",
                format!("this authority may not approve requests for {signer_name} (approvableSigners)"),
            ));
        }
        let signer = inputs.signers.get(&signer_name).ok_or_else(|| {
            Refusal::new(
                Internal,
                "SignerUnavailable",
                format!("signer {signer_name} is not loaded in this service"),
            )
        })?;
        let issued = signer
            .sign(
                csr,
                &IssueOptions {
                    ttl,
                    backdate: Duration::ZERO,
                },
            )
            .map_err(|e| Refusal::new(Internal, "SigningError", e.to_string()))?;
        record.expiration_seconds = ttl.as_secs();
        let mut chain: Vec<String> = issued
            .chain
            .iter()
            .map(|c| certs_to_pem(std::slice::from_ref(c)))
            .collect();
        record.certificate = chain.first().cloned();
        chain.push(certs_to_pem(&inputs.roots_for(signer)));
        Ok(chain)
    }

    /// The recorded requests as a `CertificateSigningRequestList`.
    pub fn requests_json(&self) -> Value {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let items: Vec<Value> = log
            .iter()
            .map(|r| {
                json!({
                    "metadata": { "name": r.name, "creationTimestamp": rfc3339(r.created) },
                    "spec": {
                        "signerName": r.signer_name,
                        "usages": r.usages,
                        "expirationSeconds": r.expiration_seconds,
                        "username": r.username,
                        "groups": r.groups,
                    },
                    "status": {
                        "conditions": r.conditions.iter().map(|(t, reason, message)| json!({
                            "type": t, "status": "True", "reason": reason, "message": message,
                            "lastUpdateTime": rfc3339(r.created),
                        })).collect::<Vec<_>>(),
                        "certificate": r.certificate,
                    },
                })
            })
            .collect();
        json!({ "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequestList", "items": items })
    }

    /// Prometheus text: requests by outcome.
    pub fn metrics(&self) -> String {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<_> = outcomes.keys().collect();
        keys.sort();
        let mut out = String::from(
            "# HELP signet_authority_requests_total Certificate requests by outcome (approved, or the refusal reason).\n# TYPE signet_authority_requests_total counter\n",
        );
        for k in keys {
            out.push_str(&format!(
                "signet_authority_requests_total{{outcome=\"{k}\"}} {}\n",
                outcomes[k]
            ));
        }
        out
    }
}
