//! Signet in a cluster: the authority's Kubernetes mode (TokenReview, the
//! `certificates.k8s.io/v1` CSR round trip, roots from ClusterTrustBundles, signer keys from
//! Secrets) and `signet signer controller`, the signer that writes certificates into approved
//! CSRs where cert-manager is not installed. Built on kube-rs with the one crypto provider
//! (aws-lc-rs).

// Checked in normal builds; test builds also get the dev-dependencies of integration tests.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod access;
pub mod api;
pub mod controller;
pub mod csr;
pub mod pod_certificates;
pub mod reflect;
pub mod secrets;
pub mod tokenreview;
pub mod trust;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde_json::Value;
use signet_authority::{BoxFuture, Cluster, ClusterOrder, Refused, Requester};
use signet_certs::{Refusal, Signer, SignerName};
use tokio_util::sync::CancellationToken;

pub use access::Permission;
pub use api::{ConnectError, connect};
pub use controller::{Controller, ControllerSettings};
pub use secrets::{SecretError, SecretRef, SecretSigners};
pub use trust::TrustBundles;

/// Istio's default token audience (`TOKEN_AUDIENCES`).
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// How long istiod waits for a CSR's certificate.
pub const DEFAULT_CSR_TIMEOUT: Duration = Duration::from_secs(60);

/// A refusal whose message quotes cluster text: control characters are escaped.
pub(crate) fn refused(reason: Refusal, message: impl Into<String>) -> Refused {
    Refused {
        reason,
        message: signet_certs::printable(&message.into()).into_owned(),
    }
}

/// The authority's Kubernetes mode.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// Audiences a caller's token must be valid for (`istio-ca`).
    pub audiences: Vec<String>,
    /// How long a CSR may wait for its certificate.
    pub csr_timeout: Duration,
    /// Also take roots from ClusterTrustBundles.
    pub trust_bundles: bool,
    /// Approve each request that passes the RA checks (istiod's way); false leaves approval to
    /// a person (`kubectl certificate approve`) or another approver.
    pub approve: bool,
    /// Signers whose keys are in Secrets (the authority's serving signer).
    pub secret_signers: Vec<SecretRef>,
    /// How often those Secrets are read again.
    pub secret_interval: Duration,
    /// The signers it may approve (the signing policy's), for the check of its RBAC at start.
    pub approvable_signers: Vec<SignerName>,
}

/// Where the authority's RBAC is written.
const AUTHORITY_RBAC: &str = "examples/kubernetes/30-signet-authority.yaml";

/// Every permission the authority uses with `settings`, with what for.
pub fn authority_permissions(settings: &ClusterSettings) -> Vec<Permission> {
    const CERTS: &str = "certificates.k8s.io";
    const CSRS: &str = "certificatesigningrequests";
    let mut p = vec![
        Permission::new(
            "create",
            "authentication.k8s.io",
            "tokenreviews",
            "authenticate callers",
        ),
        Permission::new("create", CERTS, CSRS, "ask a signer for each workload certificate"),
        Permission::new("watch", CERTS, CSRS, "wait for the certificate"),
        Permission::new("get", CERTS, CSRS, "read a request again after its watch expired"),
        Permission::new("delete", CERTS, CSRS, "delete each request once decided"),
    ];
    if settings.approve {
        p.push(Permission::new("update", CERTS, CSRS, "approve the requests it checked").subresource("approval"));
        for signer in &settings.approvable_signers {
            p.push(
                Permission::new("approve", CERTS, "signers", "approve requests for its signers").named(signer.as_str()),
            );
        }
    }
    for r in &settings.secret_signers {
        p.push(
            Permission::new("get", "", "secrets", "read a signer key")
                .named(&r.name)
                .within(&r.namespace),
        );
    }
    if settings.trust_bundles {
        for verb in ["list", "watch"] {
            p.push(Permission::new(
                verb,
                CERTS,
                "clustertrustbundles",
                "read signers' roots",
            ));
        }
    }
    p
}

pub struct KubernetesCluster {
    client: kube::Client,
    settings: ClusterSettings,
    round_trip: csr::RoundTrip,
    bundles: Option<Arc<TrustBundles>>,
    signers: Option<Arc<SecretSigners>>,
    describe: String,
}

impl KubernetesCluster {
    /// Connects the pieces; the Secrets must be readable now. Background watches stop with
    /// `stop`.
    pub async fn start(
        client: kube::Client,
        server: &str,
        settings: ClusterSettings,
        stop: CancellationToken,
    ) -> Result<Self, String> {
        access::require(
            &client,
            "the authority",
            AUTHORITY_RBAC,
            &authority_permissions(&settings),
        )
        .await?;
        let signers = if settings.secret_signers.is_empty() {
            None
        } else {
            Some(
                SecretSigners::start(
                    client.clone(),
                    settings.secret_signers.clone(),
                    settings.secret_interval,
                    stop.clone(),
                )
                .await
                .map_err(|e| e.to_string())?,
            )
        };
        let bundles = settings
            .trust_bundles
            .then(|| TrustBundles::start(client.clone(), stop.clone()));
        let describe = format!(
            "the Kubernetes API at {server} (TokenReview audiences {}, CSR timeout {}{})",
            settings.audiences.join(", "),
            signet_certs::format_duration(settings.csr_timeout),
            if settings.trust_bundles {
                ", roots from ClusterTrustBundles too"
            } else {
                ""
            }
        );
        Ok(KubernetesCluster {
            round_trip: csr::RoundTrip::new(client.clone(), settings.csr_timeout, settings.approve),
            client,
            settings,
            bundles,
            signers,
            describe,
        })
    }
}

impl Cluster for KubernetesCluster {
    fn review_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Requester, Refused>> {
        Box::pin(tokenreview::review(&self.client, token, &self.settings.audiences))
    }

    fn sign<'a>(&'a self, order: ClusterOrder<'a>) -> BoxFuture<'a, Result<Vec<CertificateDer<'static>>, Refused>> {
        Box::pin(self.round_trip.sign(order))
    }

    fn roots(&self, signer: &SignerName) -> Vec<CertificateDer<'static>> {
        self.bundles.as_ref().map(|b| b.roots(signer)).unwrap_or_default()
    }

    fn signers(&self) -> BTreeMap<SignerName, Arc<Signer>> {
        self.signers
            .as_ref()
            .map(|s| (*s.current()).clone())
            .unwrap_or_default()
    }

    fn generation(&self) -> u64 {
        self.signers.as_ref().map_or(0, |s| s.generation()) + self.bundles.as_ref().map_or(0, |b| b.generation())
    }

    fn in_flight(&self) -> Value {
        self.round_trip.in_flight()
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}
