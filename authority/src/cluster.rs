//! The seam to a cluster: in Kubernetes mode (`signet authority serve --kubernetes`) the
//! authority authenticates callers with a TokenReview and has each CSR signed through the
//! `certificates.k8s.io/v1` API (cert-manager or `signet signer controller` signs), while the RA
//! checks and the signing policy stay here. The implementation lives in `signet-kubernetes`;
//! this crate knows only the trait.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde_json::Value;
use signet_certs::{Signer, SignerName};

use crate::decide::Refused;
use crate::tokens::Requester;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A CSR that passed the RA checks, on its way to the cluster's signer.
#[derive(Clone, Copy, Debug)]
pub struct ClusterOrder<'a> {
    pub csr_pem: &'a str,
    pub signer: &'a SignerName,
    /// The lifetime the signing policy settled on.
    pub ttl: Duration,
    pub requester: &'a Requester,
    /// The signer's roots: the issued chain must anchor to one of them.
    pub roots: &'a [CertificateDer<'static>],
}

pub trait Cluster: Send + Sync {
    /// Who holds `token` (a TokenReview); only service accounts pass.
    fn review_token<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Requester, Refused>>;

    /// The CSR round trip: create, approve, wait for the certificate, verify it, delete. Returns
    /// the chain, leaf first, without the root.
    fn sign<'a>(&'a self, order: ClusterOrder<'a>) -> BoxFuture<'a, Result<Vec<CertificateDer<'static>>, Refused>>;

    /// Roots the cluster publishes for `signer` (ClusterTrustBundles), beyond the bundle file.
    fn roots(&self, signer: &SignerName) -> Vec<CertificateDer<'static>>;

    /// Signers whose keys the cluster holds (Secrets), e.g. the one for the authority's own
    /// certificate; with `generation`, which changes whenever they do.
    fn signers(&self) -> BTreeMap<SignerName, Arc<Signer>>;
    fn generation(&self) -> u64;

    /// The CSRs now open in the cluster, as a `CertificateSigningRequestList` (admin `/csrs`).
    fn in_flight(&self) -> Value;

    /// The cluster, for logs.
    fn describe(&self) -> String;
}

/// A shared [`Cluster`], printable in settings.
#[derive(Clone)]
pub struct ClusterHandle(pub Arc<dyn Cluster>);

impl fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.describe())
    }
}
