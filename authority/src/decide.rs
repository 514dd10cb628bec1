//! The registration authority: authenticates the caller, checks the CSR against Istio's RA
//! rules and the signing policy, picks the signer, signs, and records every request in the
//! shape of a `certificates.k8s.io/v1` CertificateSigningRequest (kept in memory, listed on the
//! admin port, one audit log line each).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use serde_json::{Value, json};
use signet_certs::{
    IssueOptions, Refusal, RefusalKind, RequestInfo, Signer, SignerName, TrustBundle, certs_to_pem, rfc3339,
};
use signet_proxy::prometheus::{Exposition, Kind};

use crate::cluster::{Cluster, ClusterOrder};
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
    /// The roots of `signer`: the bundle's (several during a rotation) and those the cluster
    /// publishes (ClusterTrustBundles), else a local signer's own.
    pub fn roots_for(&self, signer: &SignerName, cluster: Option<&dyn Cluster>) -> Vec<CertificateDer<'static>> {
        let mut roots = self.bundle.as_ref().map(|b| b.roots_for(signer)).unwrap_or_default();
        for root in cluster.map(|c| c.roots(signer)).unwrap_or_default() {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        if roots.is_empty()
            && let Some(local) = self.signers.get(signer)
        {
            roots = local.roots().to_vec();
        }
        roots
    }
}

/// A request the authority did not sign: the reason (a stable label) and what the caller sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub message: String,
}

/// Refusal messages quote what the caller sent (SANs, signer names): control characters are
/// escaped, so a CSR cannot forge an audit line.
fn refuse(reason: Refusal, message: impl Into<String>) -> Refused {
    let message = message.into();
    Refused {
        reason,
        message: signet_certs::printable(&message).into_owned(),
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

/// How many requests the admin port lists (the oldest are dropped first).
const KEEP: usize = 1000;

/// Decides CSRs: authenticates the caller, applies the RA checks and the signing policy, has the
/// chosen signer sign, and records each request.
pub struct Authority {
    inputs: ArcSwap<Inputs>,
    /// Kubernetes mode: tokens are reviewed and CSRs signed by the cluster.
    cluster: Option<Arc<dyn Cluster>>,
    log: Mutex<VecDeque<SigningRequest>>,
    seq: AtomicU64,
    /// Requests by outcome: `approved`, or the refusal's label.
    outcomes: Mutex<HashMap<&'static str, u64>>,
}

impl Authority {
    pub fn new(inputs: Inputs, cluster: Option<Arc<dyn Cluster>>) -> Self {
        Authority {
            inputs: ArcSwap::from_pointee(inputs),
            cluster,
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

    pub fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.as_ref()
    }

    /// Who holds `token`: the tokens file, or in Kubernetes mode a TokenReview.
    async fn authenticate(&self, inputs: &Inputs, token: Option<&str>) -> Result<Requester, Refused> {
        let Some(token) = token else {
            return Err(refuse(
                Refusal::NoToken,
                "no bearer token; send `authorization: Bearer <token>` (the workload's service-account token)",
            ));
        };
        match &self.cluster {
            Some(cluster) => cluster.review_token(token).await,
            None => inputs
                .tokens
                .authenticate(token)
                .cloned()
                .ok_or_else(|| refuse(Refusal::UnknownToken, "the bearer token is not known to this authority")),
        }
    }

    /// Istio's `CreateCertificate`: returns the chain, leaf first, then one element holding the
    /// signer's current root(s).
    pub async fn create_certificate(
        &self,
        token: Option<&str>,
        csr: &str,
        validity_seconds: i64,
        cert_signer: Option<&str>,
    ) -> Result<Vec<String>, Refused> {
        let inputs = self.inputs.load_full();
        let requester = match self.authenticate(&inputs, token).await {
            Ok(r) => r,
            Err(refused) => return Err(self.unauthenticated(refused)),
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut record = SigningRequest {
            name: format!(
                "csr-workload-{:05x}{}",
                seq,
                &signet_certs::sha256_hex(csr.as_bytes())[..5]
            ),
            created: SystemTime::now(),
            // As the caller named it (escaped): the record shows what was asked for.
            signer_name: cert_signer
                .map(|s| signet_certs::printable(s).into_owned())
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
        let result = self
            .decide(&inputs, &requester, csr, validity_seconds, cert_signer, &mut record)
            .await;
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
                let kind = if r.reason.kind() == RefusalKind::Failed {
                    "Failed"
                } else {
                    "Denied"
                };
                record
                    .conditions
                    .push((kind, r.reason.label().to_string(), r.message.clone()));
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
            Err(r) => r.reason.label(),
        });
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == KEEP {
            log.pop_front();
        }
        log.push_back(record);
        result
    }

    fn unauthenticated(&self, refused: Refused) -> Refused {
        tracing::warn!(
            "rejected a request: {}: {}: {}",
            if refused.reason.kind() == RefusalKind::Unauthenticated {
                "Unauthenticated"
            } else {
                "authentication failed"
            },
            refused.reason,
            refused.message
        );
        self.count(refused.reason.label());
        refused
    }

    fn count(&self, outcome: &'static str) {
        *self
            .outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    async fn decide(
        &self,
        inputs: &Inputs,
        requester: &Requester,
        csr: &str,
        validity_seconds: i64,
        cert_signer: Option<&str>,
        record: &mut SigningRequest,
    ) -> Result<Vec<String>, Refused> {
        let policy = &inputs.policy;
        let caller = requester
            .spiffe_id(&policy.trust_domain)
            .map_err(|e| refuse(Refusal::IdentityInvalid, e.to_string()))?;
        let info = RequestInfo::parse(csr).map_err(|e| refuse(Refusal::CsrInvalid, e.to_string()))?;
        match info.uris.as_slice() {
            [] => {
                return Err(refuse(
                    Refusal::NoSpiffeId,
                    "the CSR has no URI SAN; it must carry the caller's SPIFFE ID",
                ));
            }
            [uri] if uri != caller.as_str() => {
                return Err(refuse(
                    Refusal::IdentityMismatch,
                    format!("the CSR asks for {uri}, but the caller is {caller}"),
                ));
            }
            [_] => {}
            many => {
                return Err(refuse(
                    Refusal::MultipleUriSans,
                    format!(
                        "the CSR has {} URI SANs; a workload certificate carries exactly one",
                        many.len()
                    ),
                ));
            }
        }
        if let Some(name) = info.dns.iter().find(|d| !policy.allows_dns(&caller, d)) {
            return Err(refuse(
                Refusal::DnsSanNotAllowed,
                format!("DNS SAN {name} is not allowed for {caller} (policy dnsSans)"),
            ));
        }
        if let Some(ip) = info.ips.first() {
            return Err(refuse(Refusal::IpSanNotAllowed, format!("IP SAN {ip} is not allowed")));
        }
        if let Some(mail) = info.emails.first() {
            return Err(refuse(
                Refusal::EmailSanNotAllowed,
                format!("email SAN {mail} is not allowed"),
            ));
        }
        if let Some(ext) = info.other_extensions.first() {
            return Err(refuse(Refusal::ExtensionNotAllowed, format!("the CSR carries {ext}")));
        }
        if info.requests_ca {
            return Err(refuse(
                Refusal::CaRequested,
                "the CSR asks for a CA certificate (basicConstraints CA:TRUE); workloads get leaf certificates only",
            ));
        }
        let ttl = if validity_seconds <= 0 {
            policy.default_ttl
        } else {
            Duration::from_secs(validity_seconds as u64)
        };
        if ttl < policy.min_ttl {
            return Err(refuse(
                Refusal::TtlTooShort,
                format!(
                    "requested lifetime {} is below the minimum {} (minWorkloadCertTtl): a certificate this short cannot be renewed before it expires",
                    signet_certs::format_duration(ttl),
                    signet_certs::format_duration(policy.min_ttl)
                ),
            ));
        }
        if ttl > policy.max_ttl {
            return Err(refuse(
                Refusal::TtlTooLong,
                format!(
                    "requested lifetime {} is above the maximum {}",
                    signet_certs::format_duration(ttl),
                    signet_certs::format_duration(policy.max_ttl)
                ),
            ));
        }
        let signer_name = match cert_signer {
            Some(s) => SignerName::parse(s, &policy.signer_domain)
                .map_err(|e| refuse(Refusal::SignerNameInvalid, e.to_string()))?,
            None => policy.signer_for(&requester.namespace).clone(),
        };
        record.signer_name = signer_name.to_string();
        if !policy.may_use(&requester.namespace, &signer_name) {
            return Err(refuse(
                Refusal::SignerNotAllowedForNamespace,
                format!(
                    "namespace {} may not use signer {signer_name}; its signer is {}",
                    requester.namespace,
                    policy.signer_for(&requester.namespace)
                ),
            ));
        }
        if !policy.may_approve(&signer_name) {
            return Err(refuse(
                Refusal::SignerNotApprovable,
                format!("this authority may not approve requests for {signer_name} (approvableSigners)"),
            ));
        }
        let roots = inputs.roots_for(&signer_name, self.cluster.as_deref());
        let issued = match &self.cluster {
            Some(cluster) => {
                if roots.is_empty() {
                    return Err(refuse(
                        Refusal::SignerUnavailable,
                        format!(
                            "no roots are known for signer {signer_name}: add them to the trust bundle (caCertificates) or publish a ClusterTrustBundle for it, so the issued chain can be verified"
                        ),
                    ));
                }
                let order = ClusterOrder {
                    csr_pem: csr,
                    signer: &signer_name,
                    ttl,
                    requester,
                    roots: &roots,
                };
                cluster.sign(order).await?
            }
            None => {
                let signer = inputs.signers.get(&signer_name).ok_or_else(|| {
                    refuse(
                        Refusal::SignerUnavailable,
                        format!("signer {signer_name} is not loaded in this authority (no signer directory for it)"),
                    )
                })?;
                signer
                    .sign(
                        csr,
                        &IssueOptions {
                            ttl,
                            backdate: Duration::ZERO,
                        },
                    )
                    .map_err(|e| refuse(Refusal::SigningFailed, e.to_string()))?
                    .chain
            }
        };
        record.expiration_seconds = ttl.as_secs();
        let mut chain: Vec<String> = issued.iter().map(|c| certs_to_pem(std::slice::from_ref(c))).collect();
        record.certificate = chain.first().cloned();
        chain.push(certs_to_pem(&roots));
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

    /// The earliest root expiry of each signer this authority answers for, Unix seconds.
    fn root_expiries(&self) -> BTreeMap<SignerName, u64> {
        let inputs = self.inputs.load();
        let mut names: Vec<SignerName> = inputs.signers.keys().cloned().collect();
        if let Some(b) = &inputs.bundle {
            names.extend(b.signers().into_iter().cloned());
        }
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|name| {
                let first = inputs
                    .roots_for(&name, self.cluster.as_deref())
                    .iter()
                    .filter_map(|r| signet_certs::CertInfo::parse(r).ok())
                    .filter_map(|i| i.not_after.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs())
                    .min()?;
                Some((name, first))
            })
            .collect()
    }

    /// Prometheus text: requests by outcome.
    pub fn metrics(&self) -> String {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<_> = outcomes.keys().collect();
        keys.sort();
        let mut e = Exposition::new();
        e.family(
            "signet_authority_requests_total",
            Kind::Counter,
            "Certificate requests by outcome (approved, or the refusal reason).",
        );
        for k in &keys {
            e.sample("signet_authority_requests_total", &[("outcome", k)], outcomes[*k]);
        }
        // The same counts under istiod's names, so its dashboards and alerts work unchanged.
        let is_auth = |k: &str| {
            k.parse::<Refusal>()
                .is_ok_and(|r| r.kind() == RefusalKind::Unauthenticated)
        };
        let total: u64 = outcomes.values().sum();
        let auth_failures: u64 = keys.iter().filter(|k| is_auth(k)).map(|k| outcomes[*k]).sum();
        let issued = outcomes.get("approved").copied().unwrap_or(0);
        e.family(
            "citadel_server_csr_count",
            Kind::Counter,
            "CSRs received (istiod's name).",
        );
        e.sample("citadel_server_csr_count", &[], total);
        e.family(
            "citadel_server_authentication_failure_count",
            Kind::Counter,
            "Requests whose caller was not authenticated (istiod's name).",
        );
        e.sample("citadel_server_authentication_failure_count", &[], auth_failures);
        e.family(
            "citadel_server_csr_sign_err_count",
            Kind::Counter,
            "Authenticated CSRs that got no certificate, by error_type (the refusal reason; istiod's name).",
        );
        for k in keys.iter().filter(|k| {
            let k: &str = k;
            k != "approved" && !is_auth(k)
        }) {
            e.sample("citadel_server_csr_sign_err_count", &[("error_type", k)], outcomes[*k]);
        }
        e.family(
            "citadel_server_success_cert_issuance_count",
            Kind::Counter,
            "Certificates issued (istiod's name).",
        );
        e.sample("citadel_server_success_cert_issuance_count", &[], issued);
        drop(outcomes);
        let expiries = self.root_expiries();
        if let Some(first) = expiries.values().min() {
            e.family(
                "citadel_server_root_cert_expiry_timestamp",
                Kind::Gauge,
                "When the first of the roots this authority hands out expires, Unix seconds (istiod's name).",
            );
            e.sample("citadel_server_root_cert_expiry_timestamp", &[], *first);
            e.family(
                "signet_authority_root_expiry_timestamp_seconds",
                Kind::Gauge,
                "When each signer's first root expires, Unix seconds.",
            );
            for (signer, at) in &expiries {
                e.sample(
                    "signet_authority_root_expiry_timestamp_seconds",
                    &[("signer", signer.as_str())],
                    *at,
                );
            }
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use signet_certs::{CertInfo, DEFAULT_CA_VALIDITY, SpiffeId, WorkloadKey, parse_certs};

    use super::*;
    use crate::tokens::{TokenEntry, new_token};

    const POLICY: &str = "
defaultSigner: istio-system
approvableSigners: [istio-system, foo]
namespaces:
  foo: {signer: foo}
  legacy: {signer: legacy}
maxWorkloadCertTtl: 48h
dnsSans:
  spiffe://cluster.local/ns/foo/sa/web: [web.foo]
";

    struct Setup {
        authority: Authority,
        /// ns/sa → token
        tokens: BTreeMap<(&'static str, &'static str), String>,
    }

    fn setup() -> Setup {
        let mut signers = BTreeMap::new();
        for name in ["istio-system", "foo", "bar", "legacy"] {
            let name = SignerName::with_default_domain(name).unwrap();
            signers.insert(
                name.clone(),
                Arc::new(Signer::create(name, DEFAULT_CA_VALIDITY).unwrap()),
            );
        }
        let mut entries = Vec::new();
        let mut tokens = BTreeMap::new();
        for who in [
            ("foo", "httpbin"),
            ("foo", "web"),
            ("legacy", "app"),
            ("default", "app"),
        ] {
            let token = new_token();
            entries.push(TokenEntry {
                token: token.clone(),
                namespace: who.0.into(),
                service_account: who.1.into(),
            });
            tokens.insert(who, token);
        }
        let authority = Authority::new(
            Inputs {
                policy: SigningPolicy::from_yaml(POLICY, "policy").unwrap(),
                signers,
                bundle: None,
                tokens: Tokens::from_entries(&entries, "tokens").unwrap(),
            },
            None,
        );
        Setup { authority, tokens }
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn csr(id: &str, dns: &[&str]) -> String {
        let id: SpiffeId = id.parse().unwrap();
        let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
        WorkloadKey::generate().unwrap().request(&id, &dns).unwrap().pem
    }

    impl Setup {
        fn ask(
            &self,
            who: (&'static str, &'static str),
            csr: &str,
            ttl: i64,
            signer: Option<&str>,
        ) -> Result<Vec<String>, Refusal> {
            block(
                self.authority
                    .create_certificate(Some(&self.tokens[&who]), csr, ttl, signer),
            )
            .map_err(|r| r.reason)
        }
    }

    #[test]
    fn the_namespace_signer_signs_and_the_roots_come_last() {
        let t = setup();
        let chain = t
            .ask(
                ("foo", "httpbin"),
                &csr("spiffe://cluster.local/ns/foo/sa/httpbin", &[]),
                0,
                None,
            )
            .unwrap();
        let leaf = CertInfo::parse(&parse_certs(chain[0].as_bytes(), "leaf").unwrap()[0]).unwrap();
        let root = CertInfo::parse(&parse_certs(chain.last().unwrap().as_bytes(), "root").unwrap()[0]).unwrap();
        assert_eq!(leaf.issuer, root.subject);
        assert!(
            root.subject.contains("clusterissuers.cert-manager.io/foo"),
            "{}",
            root.subject
        );
        let life = leaf.not_after.duration_since(leaf.not_before).unwrap();
        assert!(
            life > Duration::from_secs(86_000) && life < Duration::from_secs(86_500),
            "{life:?}"
        );
        // Namespaces without a signer of their own get the mesh default.
        let chain = t
            .ask(
                ("default", "app"),
                &csr("spiffe://cluster.local/ns/default/sa/app", &[]),
                0,
                None,
            )
            .unwrap();
        let root = CertInfo::parse(&parse_certs(chain.last().unwrap().as_bytes(), "root").unwrap()[0]).unwrap();
        assert!(root.subject.contains("/istio-system"), "{}", root.subject);
    }

    #[test]
    fn each_rule_refuses_with_its_own_reason() {
        let t = setup();
        let me = "spiffe://cluster.local/ns/foo/sa/httpbin";
        let cases = [
            (
                ("foo", "httpbin"),
                csr("spiffe://cluster.local/ns/bar/sa/httpbin", &[]),
                0,
                None,
                Refusal::IdentityMismatch,
            ),
            (
                ("foo", "httpbin"),
                csr(me, &["evil.example"]),
                0,
                None,
                Refusal::DnsSanNotAllowed,
            ),
            (("foo", "httpbin"), csr(me, &[]), 49 * 3600, None, Refusal::TtlTooLong),
            // Too short to renew in time (the policy's minimum is 10 minutes by default).
            (("foo", "httpbin"), csr(me, &[]), 1, None, Refusal::TtlTooShort),
            (
                ("foo", "httpbin"),
                csr(me, &[]),
                0,
                Some("bar"),
                Refusal::SignerNotAllowedForNamespace,
            ),
            (
                ("foo", "httpbin"),
                csr(me, &[]),
                0,
                Some("no such signer"),
                Refusal::SignerNameInvalid,
            ),
            (
                ("foo", "httpbin"),
                "not a CSR".to_string(),
                0,
                None,
                Refusal::CsrInvalid,
            ),
            (
                ("legacy", "app"),
                csr("spiffe://cluster.local/ns/legacy/sa/app", &[]),
                0,
                None,
                Refusal::SignerNotApprovable,
            ),
        ];
        for (who, csr, ttl, signer, reason) in cases {
            assert_eq!(t.ask(who, &csr, ttl, signer).unwrap_err(), reason, "{reason:?}");
        }
        // A DNS SAN the policy allows passes.
        assert!(
            t.ask(
                ("foo", "web"),
                &csr("spiffe://cluster.local/ns/foo/sa/web", &["web.foo"]),
                0,
                None
            )
            .is_ok()
        );
        let refused = block(
            t.authority
                .create_certificate(Some("not-a-known-token-at-all"), &csr(me, &[]), 0, None),
        );
        assert_eq!(refused.unwrap_err().reason, Refusal::UnknownToken);
        let refused = block(t.authority.create_certificate(None, &csr(me, &[]), 0, None));
        assert_eq!(refused.unwrap_err().reason, Refusal::NoToken);
    }

    /// The attack: a CSR whose SAN carries a line break and a fake log line, and a signer name
    /// with one. The audit records and messages show them escaped.
    #[test]
    fn caller_supplied_text_cannot_forge_an_audit_line() {
        use rcgen::{CertificateParams, KeyPair, SanType};
        let t = setup();
        let forged = "spiffe://cluster.local/ns/foo/sa/httpbin\n2026-11-30T00:00:00Z  INFO forged";
        let mut params = CertificateParams::default();
        params.subject_alt_names.push(SanType::URI(forged.try_into().unwrap()));
        let csr = params
            .serialize_request(&KeyPair::generate().unwrap())
            .unwrap()
            .pem()
            .unwrap();
        let refused = block(t.authority.create_certificate(
            Some(&t.tokens[&("foo", "httpbin")]),
            &csr,
            0,
            Some("foo\nINFO forged"),
        ))
        .unwrap_err();
        assert!(!refused.message.contains('\n'), "{}", refused.message);
        let items = t.authority.requests_json()["items"].as_array().unwrap().clone();
        for item in items {
            for text in [
                item["spec"]["signerName"].as_str().unwrap_or_default(),
                item["status"]["conditions"][0]["message"].as_str().unwrap_or_default(),
            ] {
                assert!(!text.contains('\n'), "{text}");
            }
        }
    }

    #[test]
    fn every_request_is_recorded_and_counted_by_outcome() {
        let t = setup();
        let me = "spiffe://cluster.local/ns/foo/sa/httpbin";
        t.ask(("foo", "httpbin"), &csr(me, &[]), 0, None).unwrap();
        t.ask(("foo", "httpbin"), &csr(me, &[]), 49 * 3600, None).unwrap_err();
        let items = t.authority.requests_json()["items"].as_array().unwrap().clone();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["status"]["conditions"][0]["type"], "Approved");
        assert_eq!(items[1]["status"]["conditions"][0]["type"], "Denied");
        assert_eq!(items[1]["status"]["conditions"][0]["reason"], "TTLTooLong");
        let metrics = t.authority.metrics();
        assert!(
            metrics.contains("signet_authority_requests_total{outcome=\"approved\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("signet_authority_requests_total{outcome=\"TTLTooLong\"} 1"),
            "{metrics}"
        );
    }
}
