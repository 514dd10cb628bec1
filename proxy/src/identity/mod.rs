//! Keeping the workload identity fresh, on the issuance side of the `Credentials` seam:
//! from files (reloaded on change and SIGHUP; a broken file keeps the old certificate) or from a
//! authority (key + CSR at start, renewal at a fraction of the lifetime with jitter,
//! exponential backoff on failure, a still-valid certificate kept, an expired one never served).
//! The trust bundle is watched in both modes.

mod files;
mod provision;

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use signet_certs::{AuthorityClient, SignerName, TrustBundle};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, IdentitySource};
use crate::metrics::Metrics;
use crate::tls::{TlsStore, Trust, WorkloadIdentity, signer_of_chain};

pub(crate) use files::load_files;

/// What the identity tasks share.
pub(crate) struct IdentityCtx {
    pub config: Arc<Config>,
    pub store: Arc<TlsStore>,
    pub metrics: Arc<Metrics>,
    /// Pulsed by `Sidecar::reload` (SIGHUP).
    pub reload: Arc<Notify>,
    pub shutdown: CancellationToken,
}

/// Starts keeping the identity fresh. Files mode loads synchronously (a bad file stops the
/// start); authority mode returns at once and provisions in the background (not ready until
/// the first certificate arrives).
pub(crate) fn start(
    ctx: Arc<IdentityCtx>,
    authority: Option<Arc<dyn AuthorityClient>>,
    tracker: &tokio_util::task::TaskTracker,
) -> Result<Option<Arc<WorkloadIdentity>>, String> {
    match &ctx.config.identity {
        IdentitySource::Files(_) => {
            let identity = load_files(&ctx.config, ctx.store.as_ref())?;
            tracker.spawn(files::watch(ctx.clone()));
            Ok(Some(identity))
        }
        IdentitySource::Authority(settings) => {
            let authority = authority.ok_or("provisioning is configured but no authority client was given")?;
            // Missing or broken local files are configuration errors: report them now, in one
            // line, not as endless retries in the background.
            if let Some(path) = &ctx.config.trust_bundle {
                TrustBundle::load(path, &ctx.config.signer_domain).map_err(|e| e.to_string())?;
            }
            signet_certs::read_certs(&settings.authority.ca_root).map_err(|e| format!("--authority-ca: {e}"))?;
            if let Some(token) = &settings.authority.token_file {
                let text =
                    std::fs::read_to_string(token).map_err(|e| format!("--token-file: {}: {e}", token.display()))?;
                if text.trim().is_empty() {
                    return Err(format!("--token-file: {}: the file is empty", token.display()));
                }
            }
            tracker.spawn(provision::run(ctx.clone(), settings.clone(), authority));
            Ok(None)
        }
    }
}

/// The bundle, if configured.
fn load_bundle(config: &Config) -> Result<Option<TrustBundle>, String> {
    config
        .trust_bundle
        .as_ref()
        .map(|p| TrustBundle::load(p, &config.signer_domain))
        .transpose()
        .map_err(|e| e.to_string())
}

/// This workload's signer: configured, or read off `chain` through the bundle.
fn signer_for(
    config: &Config,
    bundle: Option<&TrustBundle>,
    chain: &[CertificateDer<'_>],
    store: &TlsStore,
) -> Result<SignerName, String> {
    if let Some(s) = &config.signer {
        return Ok(s.clone());
    }
    let bundle = bundle.ok_or("no signer configured and no bundle to read it from; set --signer")?;
    signer_of_chain(bundle, chain, &store.algorithms())
        .ok_or_else(|| "the certificate anchors to no single signer of the trust bundle; set --signer".to_string())
}

/// The trust for `signer`: the bundle's roots when there is a bundle, else `roots`.
fn trust_for(
    config: &Config,
    bundle: Option<&TrustBundle>,
    signer: &SignerName,
    roots: impl FnOnce() -> Result<Vec<CertificateDer<'static>>, String>,
) -> Result<Trust, String> {
    match bundle {
        Some(b) => Trust::from_bundle(b, signer).map_err(|e| {
            let origin = config
                .trust_bundle
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!("{origin}: {e}")
        }),
        None => Trust::from_roots(signer.clone(), roots()?).map_err(|e| e.to_string()),
    }
}
