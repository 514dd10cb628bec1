//! Pod certificates (KEP-4317): the signer side of `certificates.k8s.io/v1`
//! PodCertificateRequests, for `signet signer controller --pod-certificates`. A kubelet asks
//! for a certificate for a pod it runs (a projected `podCertificate` volume); the API server has
//! already checked, through the Node authorizer and NodeRestriction, that the pod, its service
//! account and the node are real and belong together. The signer gives the key of the stub
//! request the pod's SPIFFE ID (`spiffe://<trust domain>/ns/<namespace>/sa/<service account>`),
//! nothing the request says, and writes in one status update what the API requires together:
//! the chain, `notBefore`, `notAfter` and `beginRefreshAt`, and exactly one of the conditions
//! `Issued`, `Denied` (an unsupported key type, unknown user annotations) or `Failed`.
//!
//! Lifetime: `spec.maxExpirationSeconds` (the API's default 24 h), cut to `--max-ttl`, never
//! under the API's 1 hour; refresh from two thirds of it, as cert-manager renews.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use signet_certs::{SIGNED_KEY_TYPES, Signer, SpiffeId, certs_to_pem, rfc3339};

/// A PodCertificateRequest as this signer reads it; what it does not read is kept as it came.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PodCertificateRequest {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub status: Value,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub signer_name: String,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub service_account_name: String,
    #[serde(default)]
    pub node_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_expiration_seconds: Option<i64>,
    #[serde(rename = "stubPKCS10Request", default)]
    pub stub_pkcs10_request: ByteString,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified_user_annotations: Option<BTreeMap<String, String>>,
    /// podUID, serviceAccountUID, nodeUID and any later field, sent back unchanged.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

impl k8s_openapi::Resource for PodCertificateRequest {
    const API_VERSION: &'static str = "certificates.k8s.io/v1";
    const GROUP: &'static str = "certificates.k8s.io";
    const KIND: &'static str = "PodCertificateRequest";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "podcertificaterequests";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for PodCertificateRequest {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The API's shortest certificate for a pod.
pub const MIN_LIFETIME: Duration = Duration::from_secs(3600);
/// The API's default `maxExpirationSeconds`.
const DEFAULT_MAX_EXPIRATION: Duration = Duration::from_secs(86_400);

/// The conditions that end a request; once one is there, nothing more is written.
const TERMINAL: [&str; 3] = ["Issued", "Denied", "Failed"];

impl PodCertificateRequest {
    pub fn name(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or(""),
            self.metadata.name.as_deref().unwrap_or("")
        )
    }

    /// Issued, Denied or Failed already.
    pub fn decided(&self) -> bool {
        self.status["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"].as_str().is_some_and(|t| TERMINAL.contains(&t)))
        })
    }
}

/// What the signer decides for a request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Issued {
        chain_pem: String,
        not_before: SystemTime,
        not_after: SystemTime,
        begin_refresh_at: SystemTime,
        id: String,
    },
    Denied {
        reason: &'static str,
        message: String,
    },
    Failed {
        reason: &'static str,
        message: String,
    },
}

impl Decision {
    /// The outcome label in metrics and logs: `issued`, or the condition's reason.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Issued { .. } => "issued",
            Decision::Denied { reason, .. } | Decision::Failed { reason, .. } => reason,
        }
    }

    /// The request's new status: the one terminal condition, and for Issued the chain and its
    /// times (which the API checks against the leaf).
    pub fn status(&self, signer: &str, generation: Option<i64>, now: SystemTime) -> Value {
        let condition = |type_: &str, reason: &str, message: &str| {
            let mut c = json!({
                "type": type_,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": rfc3339(now),
            });
            if let Some(g) = generation {
                c["observedGeneration"] = json!(g);
            }
            c
        };
        match self {
            Decision::Issued {
                chain_pem,
                not_before,
                not_after,
                begin_refresh_at,
                id,
            } => json!({
                "conditions": [condition("Issued", "Issued", &format!("issued by {signer} for {id}"))],
                "certificateChain": chain_pem,
                "notBefore": rfc3339(*not_before),
                "notAfter": rfc3339(*not_after),
                "beginRefreshAt": rfc3339(*begin_refresh_at),
            }),
            Decision::Denied { reason, message } => json!({"conditions": [condition("Denied", reason, message)]}),
            Decision::Failed { reason, message } => json!({"conditions": [condition("Failed", reason, message)]}),
        }
    }
}

/// The reason on a request this signer could not sign for its own part.
pub const FAILED_REASON: &str = "SignerValidationFailure";

/// Decides a request of `signer`'s, at `now`, with lifetimes cut to `max_ttl`.
pub fn decide(
    pcr: &PodCertificateRequest,
    signer: &Signer,
    trust_domain: &str,
    max_ttl: Duration,
    now: SystemTime,
) -> Decision {
    let failed = |message: String| Decision::Failed {
        reason: FAILED_REASON,
        message,
    };
    if let Some(keys) = pcr.spec.unverified_user_annotations.as_ref().filter(|a| !a.is_empty()) {
        let keys: Vec<&str> = keys.keys().map(String::as_str).collect();
        return Decision::Denied {
            reason: "InvalidUnverifiedUserAnnotations",
            message: format!(
                "this signer reads no unverifiedUserAnnotations; remove {}",
                signet_certs::printable(&keys.join(", "))
            ),
        };
    }
    let stub = &pcr.spec.stub_pkcs10_request.0;
    match signet_certs::request_key_type(stub) {
        Ok(kind) if SIGNED_KEY_TYPES.contains(&kind.as_str()) => {}
        Ok(kind) => {
            return Decision::Denied {
                reason: "UnsupportedKeyType",
                message: format!(
                    "this signer does not sign {} keys; use keyType {}",
                    signet_certs::printable(&kind),
                    SIGNED_KEY_TYPES.join(" or ")
                ),
            };
        }
        Err(e) => return failed(format!("spec.stubPKCS10Request: {e}")),
    }
    let asked = pcr
        .spec
        .max_expiration_seconds
        .map_or(DEFAULT_MAX_EXPIRATION, |s| Duration::from_secs(s.max(0) as u64));
    let lifetime = asked.min(max_ttl);
    if lifetime < MIN_LIFETIME {
        return failed(format!(
            "the lifetime this signer may give ({}) is below the API's minimum of 1h",
            signet_certs::format_duration(lifetime)
        ));
    }
    let ns = pcr.metadata.namespace.as_deref().unwrap_or("");
    let id = match format!("spiffe://{trust_domain}/ns/{ns}/sa/{}", pcr.spec.service_account_name).parse::<SpiffeId>() {
        Ok(id) => id,
        Err(e) => return failed(format!("no SPIFFE ID for the pod: {e}")),
    };
    // Whole seconds: the API compares these times with the leaf's, which has no fractions.
    let not_before = UNIX_EPOCH + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs());
    let not_after = not_before + lifetime;
    let begin_refresh_at = not_before + Duration::from_secs(lifetime.as_secs() * 2 / 3);
    match signer.sign_key(stub, &id, not_before, not_after) {
        Ok(issued) => Decision::Issued {
            chain_pem: certs_to_pem(&issued.chain),
            not_before,
            not_after,
            begin_refresh_at,
            id: id.to_string(),
        },
        Err(e) => failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use signet_certs::{DEFAULT_CA_VALIDITY, SignerName};

    use super::*;

    fn signer() -> Signer {
        Signer::create(SignerName::with_default_domain("foo").unwrap(), DEFAULT_CA_VALIDITY).unwrap()
    }

    fn request(alg: &'static rcgen::SignatureAlgorithm, max: Option<i64>) -> PodCertificateRequest {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let stub = rcgen::CertificateParams::default().serialize_request(&key).unwrap();
        serde_json::from_value(json!({
            "apiVersion": "certificates.k8s.io/v1", "kind": "PodCertificateRequest",
            "metadata": {"name": "web-1", "namespace": "foo", "generation": 1},
            "spec": {"signerName": "clusterissuers.cert-manager.io/foo", "podName": "web", "podUID": "u1",
                     "serviceAccountName": "httpbin", "serviceAccountUID": "u2", "nodeName": "n",
                     "nodeUID": "u3", "maxExpirationSeconds": max,
                     "stubPKCS10Request": k8s_openapi::ByteString(stub.der().to_vec())}
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_gets_its_service_accounts_identity_and_the_times_the_api_requires() {
        let now = UNIX_EPOCH + Duration::from_millis(1_900_000_000_500);
        let pcr = request(&rcgen::PKCS_ECDSA_P256_SHA256, Some(7200));
        let d = decide(&pcr, &signer(), "cluster.local", Duration::from_secs(86_400), now);
        let Decision::Issued {
            not_before,
            not_after,
            begin_refresh_at,
            id,
            ..
        } = &d
        else {
            panic!("{d:?}")
        };
        assert_eq!(id, "spiffe://cluster.local/ns/foo/sa/httpbin");
        assert_eq!(*not_before, UNIX_EPOCH + Duration::from_secs(1_900_000_000));
        assert_eq!(
            not_after.duration_since(*not_before).unwrap(),
            Duration::from_secs(7200)
        );
        assert_eq!(
            begin_refresh_at.duration_since(*not_before).unwrap(),
            Duration::from_secs(4800)
        );
        // Cut to the controller's cap; unknown fields of the spec survive a round trip.
        let d = decide(&pcr, &signer(), "cluster.local", Duration::from_secs(3600), now);
        assert!(matches!(d, Decision::Issued { not_before, not_after, .. }
            if not_after.duration_since(not_before).unwrap() == Duration::from_secs(3600)));
        let back = serde_json::to_value(&pcr).unwrap();
        assert_eq!(back["spec"]["podUID"], "u1");
        assert_eq!(back["spec"]["nodeUID"], "u3");
        let status = d.status("clusterissuers.cert-manager.io/foo", Some(1), now);
        assert_eq!(status["conditions"][0]["type"], "Issued");
        assert_eq!(status["conditions"][0]["observedGeneration"], 1);
        assert_eq!(status["notBefore"], "2030-03-17T17:46:40Z");
    }

    #[test]
    fn unsupported_keys_and_user_annotations_are_denied_with_the_apis_reasons() {
        let now = SystemTime::now();
        let mut pcr = request(&rcgen::PKCS_ECDSA_P256_SHA256, None);
        pcr.spec.unverified_user_annotations = Some(BTreeMap::from([("example.com/x".into(), "1".into())]));
        let d = decide(&pcr, &signer(), "cluster.local", Duration::from_secs(86_400), now);
        assert_eq!(d.outcome(), "InvalidUnverifiedUserAnnotations", "{d:?}");
        let status = d.status("s", None, now);
        assert_eq!(status["conditions"].as_array().unwrap().len(), 1);
        assert!(status["certificateChain"].is_null());
        let mut pcr = request(&rcgen::PKCS_ECDSA_P256_SHA256, None);
        pcr.spec.stub_pkcs10_request = ByteString(b"not a request".to_vec());
        let d = decide(&pcr, &signer(), "cluster.local", Duration::from_secs(86_400), now);
        assert_eq!(d.outcome(), FAILED_REASON, "{d:?}");
        let pcr = request(&rcgen::PKCS_ECDSA_P256_SHA256, None);
        let d = decide(&pcr, &signer(), "cluster.local", Duration::from_secs(1800), now);
        assert!(
            matches!(&d, Decision::Failed { message, .. } if message.contains("1h")),
            "{d:?}"
        );
    }
}
