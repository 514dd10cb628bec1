//! Signers whose keys live in Kubernetes Secrets, in cert-manager's CA layout (`tls.crt`,
//! `tls.key`, `ca.crt`): read at start (a missing or broken one stops the start with the
//! reason), then polled, so a rotated CA key is picked up; a broken update keeps the signer in
//! use and is reported once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use signet_certs::{Signer, SignerName, SignerParts, files};
use tokio_util::sync::CancellationToken;

use crate::api::describe_access;

/// Where one signer's key lives: `NAME=NAMESPACE/SECRET` on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub signer: SignerName,
    pub namespace: String,
    pub name: String,
}

impl SecretRef {
    /// Parses `NAME=NAMESPACE/SECRET`; a bare signer name is expanded with `signer_domain`.
    pub fn parse(text: &str, signer_domain: &str) -> Result<Self, String> {
        let usage = || format!("{text:?}: expected NAME=NAMESPACE/SECRET, e.g. foo=cert-manager/foo-ca-selfsigned");
        let (signer, secret) = text.split_once('=').ok_or_else(usage)?;
        let (namespace, name) = secret.split_once('/').ok_or_else(usage)?;
        if namespace.is_empty() || name.is_empty() {
            return Err(usage());
        }
        let signer = SignerName::parse(signer, signer_domain).map_err(|e| format!("{text:?}: {e}"))?;
        Ok(SecretRef {
            signer,
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

impl std::fmt::Display for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secret {}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("signer {signer}: {secret}: {problem}")]
pub struct SecretError {
    pub signer: SignerName,
    pub secret: String,
    pub problem: String,
}

pub struct SecretSigners {
    current: ArcSwap<BTreeMap<SignerName, Arc<Signer>>>,
    generation: AtomicU64,
}

impl SecretSigners {
    /// Reads every secret once (all must be usable), then polls them every `interval`.
    pub async fn start(
        client: kube::Client,
        refs: Vec<SecretRef>,
        interval: Duration,
        stop: CancellationToken,
    ) -> Result<Arc<Self>, SecretError> {
        let mut loaded = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for r in &refs {
            let (signer, version) = load(&client, r).await?;
            loaded.insert(r.signer.clone(), Arc::new(signer));
            versions.insert(r.signer.clone(), version);
        }
        let signers = Arc::new(SecretSigners {
            current: ArcSwap::from_pointee(loaded),
            generation: AtomicU64::new(0),
        });
        let this = signers.clone();
        tokio::spawn(async move {
            let mut broken: BTreeMap<SignerName, String> = BTreeMap::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                for r in &refs {
                    match load(&client, r).await {
                        Ok((signer, version)) => {
                            broken.remove(&r.signer);
                            if versions.get(&r.signer) != Some(&version) {
                                tracing::info!("signer {}: {r} changed; using the new key", r.signer);
                                versions.insert(r.signer.clone(), version);
                                let mut next = (**this.current.load()).clone();
                                next.insert(r.signer.clone(), Arc::new(signer));
                                this.current.store(Arc::new(next));
                                this.generation.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            if broken.get(&r.signer) != Some(&e.problem) {
                                tracing::error!("{e}; keeping the signer in use");
                                broken.insert(r.signer.clone(), e.problem);
                            }
                        }
                    }
                }
            }
        });
        Ok(signers)
    }

    pub fn current(&self) -> Arc<BTreeMap<SignerName, Arc<Signer>>> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

/// One secret as a signer, with the content's digest (to see changes).
async fn load(client: &kube::Client, r: &SecretRef) -> Result<(Signer, String), SecretError> {
    let bad = |problem: String| SecretError {
        signer: r.signer.clone(),
        secret: r.to_string(),
        problem,
    };
    let secret = Api::<Secret>::namespaced(client.clone(), &r.namespace)
        .get(&r.name)
        .await
        .map_err(|e| bad(describe_access(&e, "the secret")))?;
    let data = secret.data.unwrap_or_default();
    let part = |key: &str| data.get(key).map(|b| b.0.as_slice());
    let (Some(cert), Some(key)) = (part(files::CERT), part(files::KEY)) else {
        return Err(bad(format!(
            "needs the keys {} and {} (and {}), as cert-manager writes a CA secret",
            files::CERT,
            files::KEY,
            files::CA
        )));
    };
    let ca = part(files::CA).filter(|c| !c.is_empty());
    let mut digest = Vec::new();
    for p in [Some(cert), Some(key), ca].into_iter().flatten() {
        digest.extend_from_slice(p);
        digest.push(0);
    }
    let parts = SignerParts {
        origin: format!("secret {}/{}", r.namespace, r.name),
        cert,
        key,
        ca,
    };
    let signer = Signer::from_parts(parts, r.signer.clone()).map_err(|e| bad(e.to_string()))?;
    Ok((signer, signet_certs::sha256_hex(&digest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_refs_parse_with_the_signer_domain() {
        let r = SecretRef::parse("foo=cert-manager/foo-ca-selfsigned", "clusterissuers.cert-manager.io").unwrap();
        assert_eq!(r.signer.as_str(), "clusterissuers.cert-manager.io/foo");
        assert_eq!(
            (r.namespace.as_str(), r.name.as_str()),
            ("cert-manager", "foo-ca-selfsigned")
        );
        assert_eq!(r.to_string(), "secret cert-manager/foo-ca-selfsigned");
        let full = SecretRef::parse("example.com/bar=ns/s", "clusterissuers.cert-manager.io").unwrap();
        assert_eq!(full.signer.as_str(), "example.com/bar");
        for bad in ["foo", "foo=secret", "foo=/s", "foo=ns/", "=ns/s"] {
            let e = SecretRef::parse(bad, "clusterissuers.cert-manager.io").unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
