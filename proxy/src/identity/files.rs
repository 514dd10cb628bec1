//! Files mode: `tls.crt`, `tls.key` and the roots (bundle or `ca.crt`), reloaded when their
//! content changes and on SIGHUP. A broken or half-written file keeps the old certificate.

use std::sync::Arc;

use signet_certs::{FileWatch, read_certs, read_key};

use super::{IdentityCtx, IdentityError, load_bundle, signer_for, trust_for};
use crate::config::{Config, IdentityFiles, IdentitySource, MIN_WATCH_INTERVAL, Setting};
use crate::credentials::{Credentials, WorkloadIdentity};

/// Loads trust and certificate from files and installs them together. Errors are one line
/// naming the file and the problem; on error nothing changes.
pub(super) fn load(
    config: &Config,
    files: &IdentityFiles,
    credentials: &dyn Credentials,
) -> Result<Arc<WorkloadIdentity>, IdentityError> {
    let file = |setting: Setting| move |source| IdentityError::File { setting, source };
    let chain = read_certs(&files.cert).map_err(file(Setting::Cert))?;
    let key = read_key(&files.key).map_err(file(Setting::Key))?;
    let bundle = load_bundle(config)?;
    let signer = signer_for(config, bundle.as_ref(), &chain)?;
    let trust = trust_for(config, bundle.as_ref(), &signer, || match &files.ca {
        Some(ca) => read_certs(ca).map_err(file(Setting::Ca)),
        // resolve() refuses this combination; say so rather than trust nothing.
        None => Err(IdentityError::File {
            setting: Setting::Ca,
            source: signet_certs::Error::Certificate("no roots to trust: give trustBundle or identity.ca".into()),
        }),
    })?;
    credentials
        .set_certificate(chain, key, Some(trust))
        .map_err(|source| IdentityError::Certificate {
            path: Some(files.cert.clone()),
            source,
        })
}

pub(super) async fn watch(ctx: Arc<IdentityCtx>) {
    let IdentitySource::Files(files) = &ctx.config.identity else {
        return;
    };
    let mut paths = vec![files.cert.clone(), files.key.clone()];
    paths.extend(files.ca.iter().cloned());
    paths.extend(ctx.config.trust_bundle.iter().cloned());
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
        match load(&ctx.config, files, ctx.credentials.as_ref()) {
            Ok(id) => {
                ctx.metrics.identity_reloaded(true);
                tracing::info!(
                    "reloaded {} (signer {}, valid until {})",
                    id.id,
                    id.signer,
                    signet_certs::rfc3339(id.not_after)
                );
            }
            Err(e) => {
                ctx.metrics.identity_reloaded(false);
                tracing::warn!("reload failed, keeping the current certificate and roots: {e}");
            }
        }
    }
}
