//! Roots per signer from `ClusterTrustBundle` objects (`certificates.k8s.io/v1beta1`), selected
//! by `spec.signerName`: kept current by a watch, so a root published for a signer is trusted
//! without a restart, and one removed stops being handed out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use k8s_openapi::api::certificates::v1beta1::ClusterTrustBundle;
use kube::Api;
use rustls_pki_types::CertificateDer;
use signet_certs::{SignerName, parse_certs};
use tokio_util::sync::CancellationToken;

use crate::reflect::{Change, reflect};

/// Bundle name → (signer, roots).
type Bundles = BTreeMap<String, (String, Vec<CertificateDer<'static>>)>;

#[derive(Default)]
pub struct TrustBundles {
    by_name: ArcSwap<Bundles>,
    generation: AtomicU64,
}

impl TrustBundles {
    /// Starts the watch; the cache fills as soon as the first list answers.
    pub fn start(client: kube::Client, stop: CancellationToken) -> Arc<Self> {
        let bundles = Arc::new(TrustBundles::default());
        let api: Api<ClusterTrustBundle> = Api::all(client);
        let this = bundles.clone();
        tokio::spawn(async move {
            reflect(api, "ClusterTrustBundles", stop, |change| this.apply(change)).await;
        });
        bundles
    }

    fn apply(&self, change: Change<ClusterTrustBundle>) {
        let mut next = (**self.by_name.load()).clone();
        match change {
            Change::Reset(all) => {
                next.clear();
                for b in all {
                    insert(&mut next, b);
                }
            }
            Change::Applied(b) => insert(&mut next, b),
            Change::Deleted(b) => {
                next.remove(b.metadata.name.as_deref().unwrap_or_default());
            }
        }
        if next != **self.by_name.load() {
            self.by_name.store(Arc::new(next));
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every root published for `signer`, across all its bundles.
    pub fn roots(&self, signer: &SignerName) -> Vec<CertificateDer<'static>> {
        let mut out = Vec::new();
        for (owner, roots) in self.by_name.load().values() {
            if owner == signer.as_str() {
                for r in roots {
                    if !out.contains(r) {
                        out.push(r.clone());
                    }
                }
            }
        }
        out
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

fn insert(into: &mut Bundles, bundle: ClusterTrustBundle) {
    let name = bundle.metadata.name.clone().unwrap_or_default();
    // A bundle without a signer name belongs to no signer here (Kubernetes: "for anyone").
    let Some(signer) = bundle.spec.signer_name.clone().filter(|s| !s.is_empty()) else {
        into.remove(&name);
        return;
    };
    match parse_certs(
        bundle.spec.trust_bundle.as_bytes(),
        &format!("ClusterTrustBundle {name}"),
    ) {
        Ok(roots) if !roots.is_empty() => {
            into.insert(name, (signer, roots));
        }
        Ok(_) => {
            into.remove(&name);
        }
        Err(e) => {
            tracing::warn!("ignoring ClusterTrustBundle {name}: {e}");
            into.remove(&name);
        }
    }
}
