//! Authority mode: a fresh key and CSR for every request; the chain that comes back is checked
//! against the signer's roots before it is published. Renewal at `renew_at` of the real lifetime
//! (read from the issued certificate, as the signer may override the TTL) with ±1 % jitter; on
//! failure, exponential backoff from 0.5 s doubling to 150 s (±20 %), keeping the current
//! certificate while it is valid. An expired certificate is never served: the store stops
//! handing out configs at its notAfter, readiness turns false, and this loop says so loudly.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_certs::{AuthorityClient, CsrOrder, FileWatch, WorkloadKey, parse_key, rfc3339};

use super::{IdentityCtx, load_bundle, signer_for, trust_for};
use crate::config::AuthorityIdentity;
use crate::tls::{Credentials, WorkloadIdentity};

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(150);
/// One request may not take longer than this (connect, TLS, signing).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A uniformly distributed number in [-1, 1), from std's per-process random hash keys.
fn jitter_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64,
    );
    (h.finish() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
}

fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(1.0 + 0.2 * jitter_unit())
}

/// When to renew: `renew_at` of the way from notBefore to notAfter, ±1 % of the lifetime.
/// When to renew: `renew_at` of the way from notBefore to notAfter, ±1 % of the lifetime, but
/// never sooner than 1 s and 5 % of the remaining life from now (a signer that backdates
/// notBefore, or skewed clocks, must not turn renewal into a tight loop).
fn renewal_time(id: &WorkloadIdentity, renew_at: f64) -> SystemTime {
    let life = id.not_after.duration_since(id.not_before).unwrap_or_default();
    let fraction = (renew_at + 0.01 * jitter_unit()).clamp(0.05, 0.95);
    let planned = id.not_before + life.mul_f64(fraction);
    let now = SystemTime::now();
    let floor = now + until(id.not_after).mul_f64(0.05).max(Duration::from_secs(1));
    if planned < floor {
        tracing::warn!(
            "the renewal time for {} is already past (notBefore {}, lifetime {}); renewing in {} instead",
            id.id,
            rfc3339(id.not_before),
            signet_certs::format_duration(life),
            signet_certs::format_duration(until(floor))
        );
        return floor;
    }
    planned
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

pub(super) async fn run(ctx: Arc<IdentityCtx>, settings: AuthorityIdentity, authority: Arc<dyn AuthorityClient>) {
    let source = authority.describe();
    tracing::info!("requesting a certificate for {} from {source}", settings.id);
    let mut bundle_watch = FileWatch::new(ctx.config.trust_bundle.iter().cloned().collect());
    let mut ticker = tokio::time::interval(ctx.config.watch_interval.max(crate::config::MIN_WATCH_INTERVAL));
    let mut failures = 0u32;
    let mut issued_once = false;
    let mut last_error = String::new();
    loop {
        let next = match request(&ctx, &settings, authority.as_ref()).await {
            Ok(id) => {
                failures = 0;
                ctx.metrics.csr_request(true);
                if issued_once {
                    ctx.metrics.renewed();
                }
                let next = renewal_time(&id, settings.renew_at);
                let verb = if issued_once { "renewed" } else { "ready" };
                issued_once = true;
                tracing::info!(
                    "{verb}: {} from {source} (signer {}, valid until {}, next renewal in {})",
                    id.id,
                    id.signer,
                    rfc3339(id.not_after),
                    signet_certs::format_duration(until(next))
                );
                next
            }
            Err(e) => {
                failures += 1;
                ctx.metrics.csr_request(false);
                let wait = backoff(failures);
                match ctx.store.current() {
                    Some(state) => tracing::warn!(
                        "renewal from {source} failed (attempt {failures}): {e}; keeping the current certificate (valid until {}), retrying in {wait:.1?}",
                        rfc3339(state.identity.not_after)
                    ),
                    None => tracing::error!(
                        "no valid certificate: the request to {source} failed (attempt {failures}): {e}; every connection is refused, retrying in {wait:.1?}"
                    ),
                }
                last_error = e;
                SystemTime::now() + wait
            }
        };
        // Wait for the renewal time, reacting to bundle changes, SIGHUP and expiry meanwhile.
        let mut expiry_reported = false;
        loop {
            let expiry = ctx
                .store
                .identity()
                .map(|i| i.not_after)
                .filter(|t| *t > SystemTime::now());
            let wake = expiry.map_or(next, |e| e.min(next));
            let renew_now = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(until(wake)) => {
                    if SystemTime::now() >= next {
                        true
                    } else {
                        if !expiry_reported && !ctx.store.is_ready() {
                            expiry_reported = true;
                            tracing::error!(
                                "the certificate expired and was not renewed ({last_error}); readiness is false and every connection is refused until a new one arrives"
                            );
                        }
                        false
                    }
                }
                _ = ticker.tick() => bundle_watch.changed() && !reload_bundle(&ctx),
                _ = ctx.reload.notified() => {
                    reload_bundle(&ctx);
                    true
                }
            };
            if renew_now {
                break;
            }
        }
    }
}

/// Re-reads the bundle and republishes the trust. Returns whether the current certificate still
/// chains to it (if not, the caller renews at once).
fn reload_bundle(ctx: &IdentityCtx) -> bool {
    let (Some(identity), Some(_)) = (ctx.store.identity(), &ctx.config.trust_bundle) else {
        // Without a bundle the roots come with each certificate: nothing to reload.
        return true;
    };
    let result = load_bundle(&ctx.config).and_then(|bundle| {
        let trust = trust_for(&ctx.config, bundle.as_ref(), &identity.signer, || {
            Err("no bundle configured".to_string())
        })?;
        ctx.store.set_trust(trust).map_err(|e| e.to_string())
    });
    match result {
        Ok(update) => {
            ctx.metrics.identity_reloaded(true);
            let id = ctx.store.identity();
            tracing::info!(
                "trust bundle reloaded: signer {} has {} root(s) (bundle {})",
                identity.signer,
                id.as_ref().map(|i| i.roots.len()).unwrap_or(0),
                id.as_ref().map(|i| i.trust_version.as_str()).unwrap_or("?")
            );
            if !update.certificate_chains {
                tracing::warn!(
                    "the current certificate no longer chains to signer {}'s roots; renewing now",
                    identity.signer
                );
            }
            update.certificate_chains
        }
        Err(e) => {
            ctx.metrics.identity_reloaded(false);
            tracing::warn!("trust bundle reload failed, keeping the current roots: {e}");
            true
        }
    }
}

/// One request: key, CSR, signature, checks, publication.
async fn request(
    ctx: &IdentityCtx,
    settings: &AuthorityIdentity,
    authority: &dyn AuthorityClient,
) -> Result<Arc<WorkloadIdentity>, String> {
    let key = WorkloadKey::generate().map_err(|e| e.to_string())?;
    let csr = key.request(&settings.id, &settings.dns).map_err(|e| e.to_string())?;
    let order = CsrOrder {
        csr_pem: csr.pem,
        signer: ctx.config.signer.as_ref().map(|s| s.to_string()),
        ttl: settings.ttl,
    };
    let issued = tokio::time::timeout(REQUEST_TIMEOUT, authority.sign(&order))
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let issued_id = issued
        .chain
        .first()
        .and_then(|leaf| signet_certs::CertInfo::parse(leaf).ok())
        .and_then(|info| info.spiffe_id().ok());
    if issued_id.as_ref() != Some(&settings.id) {
        return Err(format!(
            "the authority issued {} instead of {}",
            issued_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "a certificate without SPIFFE ID".into()),
            settings.id
        ));
    }
    let bundle = load_bundle(&ctx.config)?;
    let signer = signer_for(&ctx.config, bundle.as_ref(), &issued.chain, &ctx.store)?;
    let roots = issued.roots.clone();
    let trust = trust_for(&ctx.config, bundle.as_ref(), &signer, || Ok(roots))?;
    let key = parse_key(key.to_pem().as_bytes(), "generated key").map_err(|e| e.to_string())?;
    // Checked against the signer's roots (and the identity asked for) before anything changes.
    ctx.store
        .set_certificate(issued.chain, key, Some(trust))
        .map_err(|e| format!("the authority returned an unusable certificate: {e}"))
}
