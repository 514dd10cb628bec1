//! Files mode: `tls.crt`, `tls.key` and the roots (bundle or `ca.crt`), reloaded when their
//! content changes and on SIGHUP. A broken or half-written file keeps the old certificate.

use std::sync::Arc;

use signet_certs::{CertificateDer, FileWatch, PrivateKeyDer, SignerName, SignerTrust, read_certs, read_key};

use super::{IdentityCtx, IdentityError, load_bundle, signer_for, trust_for};
use crate::config::{Config, IdentityFiles, IdentitySource, MIN_WATCH_INTERVAL, Setting};
use crate::credentials::{Credentials, CredentialsError, WorkloadIdentity};

/// What the files hold: the chain, its key, and the trust for its signer.
struct Material {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    trust: SignerTrust,
}

/// Reads the certificate, key and roots. `fallback_signer` names the signer when the chain's
/// cannot be read off the bundle any more (its root was removed).
fn read(
    config: &Config,
    files: &IdentityFiles,
    fallback_signer: Option<&SignerName>,
) -> Result<Material, IdentityError> {
    let file = |setting: Setting| move |source| IdentityError::File { setting, source };
    let chain = read_certs(&files.cert).map_err(file(Setting::Cert))?;
    let key = read_key(&files.key).map_err(file(Setting::Key))?;
    let bundle = load_bundle(config)?;
    let signer = match (signer_for(config, bundle.as_ref(), &chain), fallback_signer) {
        (Err(IdentityError::NoSignerOfChain), Some(current)) => current.clone(),
        (result, _) => result?,
    };
    let trust = trust_for(config, bundle.as_ref(), &signer, || match &files.ca {
        Some(ca) => read_certs(ca).map_err(file(Setting::Ca)),
        // resolve() refuses this combination; say so rather than trust nothing.
        None => Err(IdentityError::File {
            setting: Setting::Ca,
            source: signet_certs::Error::Certificate("no roots to trust: give trustBundle or identity.ca".into()),
        }),
    })?;
    Ok(Material { chain, key, trust })
}

/// Loads trust and certificate from files and installs them together (the start: a certificate
/// that does not chain to the roots stops it). Errors are one line naming the file and the
/// problem; on error nothing changes.
pub(super) fn load(
    config: &Config,
    files: &IdentityFiles,
    credentials: &dyn Credentials,
) -> Result<Arc<WorkloadIdentity>, IdentityError> {
    let m = read(config, files, None)?;
    credentials
        .set_certificate(m.chain, m.key, Some(m.trust))
        .map_err(|source| IdentityError::Certificate {
            path: Some(files.cert.clone()),
            source,
        })
}

/// What a reload did.
enum Reloaded {
    /// A certificate and the roots it chains to are in force.
    Certificate(Arc<WorkloadIdentity>),
    /// The new roots are in force, but the certificate no longer chains to them (its root was
    /// removed, perhaps because it was compromised): the sidecar is not ready.
    RootsWithoutCertificate(CredentialsError),
}

fn reload(config: &Config, files: &IdentityFiles, credentials: &dyn Credentials) -> Result<Reloaded, IdentityError> {
    let current = credentials.identity().map(|i| i.signer.clone());
    let m = read(config, files, current.as_ref())?;
    let trust = m.trust.clone();
    match credentials.set_certificate(m.chain, m.key, Some(m.trust)) {
        Ok(identity) => Ok(Reloaded::Certificate(identity)),
        // Keeping the old roots would keep trusting a root that was taken out of the bundle.
        Err(
            e @ (CredentialsError::NoRootOfSigner { .. }
            | CredentialsError::RetiredRoot { .. }
            | CredentialsError::RootOutOfDate { .. }
            | CredentialsError::Revoked { .. }),
        ) => {
            credentials
                .set_trust(trust)
                .map_err(|source| IdentityError::Certificate { path: None, source })?;
            Ok(Reloaded::RootsWithoutCertificate(e))
        }
        Err(source) => Err(IdentityError::Certificate {
            path: Some(files.cert.clone()),
            source,
        }),
    }
}

pub(super) async fn watch(ctx: Arc<IdentityCtx>) {
    let IdentitySource::Files(files) = &ctx.config.identity else {
        return;
    };
    let mut paths = vec![files.cert.clone(), files.key.clone()];
    paths.extend(files.ca.iter().cloned());
    paths.extend(ctx.config.trust_bundle.iter().cloned());
    paths.extend(ctx.config.crl.iter().cloned());
    let mut watch = FileWatch::new(paths);
    let mut ticker = tokio::time::interval(ctx.config.watch_interval.max(MIN_WATCH_INTERVAL));
    loop {
        let forced = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = ticker.tick() => false,
            _ = ctx.reload.notified() => true,
        };
        // Always take the new fingerprint, so one broken write is reported once, not every tick.
        if !watch.changed() && !forced {
            continue;
        }
        match reload(&ctx.config, files, ctx.credentials.as_ref()) {
            Ok(Reloaded::Certificate(id)) => {
                ctx.metrics.identity_reloaded(true);
                tracing::info!(
                    "reloaded {} (signer {}, valid until {})",
                    id.id,
                    id.signer,
                    signet_certs::rfc3339(id.not_after)
                );
            }
            Ok(Reloaded::RootsWithoutCertificate(why)) => {
                ctx.metrics.identity_reloaded(false);
                tracing::error!(
                    "the new trust refuses this sidecar's own certificate ({why}); the new trust is in force (peers of a removed root or on the revocation list are refused), and the sidecar is not ready until {} holds a certificate it accepts",
                    files.cert.display()
                );
            }
            Err(e) => {
                ctx.metrics.identity_reloaded(false);
                tracing::warn!("reload failed, keeping the current certificate and roots: {e}");
            }
        }
    }
}
