//! Files mode: `tls.crt`, `tls.key` and the roots (bundle or `ca.crt`), reloaded when their
//! content changes and on SIGHUP. A broken or half-written file keeps the old certificate.

use std::sync::Arc;

use signet_certs::{FileWatch, read_certs, read_key};

use super::{IdentityCtx, load_bundle, signer_for, trust_for};
use crate::config::{Config, IdentitySource};
use crate::tls::{Credentials, TlsStore, WorkloadIdentity};

/// Loads trust and certificate from files and installs them together. Errors are one line
/// naming the file and the problem; on error nothing changes.
pub(crate) fn load_files(config: &Config, store: &TlsStore) -> Result<Arc<WorkloadIdentity>, String> {
    let IdentitySource::Files(files) = &config.identity else {
        return Err("not in files mode".into());
    };
    let chain = read_certs(&files.cert).map_err(|e| e.to_string())?;
    let key = read_key(&files.key).map_err(|e| e.to_string())?;
    let bundle = load_bundle(config)?;
    let signer =
        signer_for(config, bundle.as_ref(), &chain, store).map_err(|e| format!("{}: {e}", files.cert.display()))?;
    let trust = trust_for(config, bundle.as_ref(), &signer, || {
        let ca = files
            .ca
            .as_ref()
            .ok_or("no roots to trust; set --bundle FILE or --ca FILE")?;
        read_certs(ca).map_err(|e| e.to_string())
    })?;
    store
        .set_certificate(chain, key, Some(trust))
        .map_err(|e| format!("{}: {e}", files.cert.display()))
}

pub(super) async fn watch(ctx: Arc<IdentityCtx>) {
    let IdentitySource::Files(files) = &ctx.config.identity else {
        return;
    };
    let mut paths = vec![files.cert.clone(), files.key.clone()];
    paths.extend(files.ca.iter().cloned());
    paths.extend(ctx.config.trust_bundle.iter().cloned());
    let mut watch = FileWatch::new(paths);
    let mut ticker = tokio::time::interval(ctx.config.watch_interval.max(crate::config::MIN_WATCH_INTERVAL));
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
        match load_files(&ctx.config, &ctx.store) {
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
