//! Provisioning: a fresh key and CSR for every request; the chain that comes back is checked
//! against the signer's roots before it is published. Renewal at `renew_at` of the real lifetime
//! (read from the issued certificate, as the signer may override the TTL) with ±1 % jitter; on
//! failure, exponential backoff from 0.5 s doubling to 150 s (±20 %), keeping the current
//! certificate while it is valid. An expired certificate is never served: the TLS side stops
//! handing out configs at its notAfter, readiness turns false, and this loop says so loudly.
//!
//! Deadlines are tokio instants (converted once from certificate times), so the loop runs the
//! same under `tokio::time::pause` in the tests below.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use signet_certs::{AuthorityClient, AuthorityError, CsrOrder, FileWatch, WorkloadKey, format_duration, rfc3339};
use tokio::time::Instant;

use super::schedule::{backoff, jitter_unit, renewal_delay};
use super::{IdentityCtx, IdentityError, load_bundle, signer_for, trust_for};
use crate::config::{MIN_WATCH_INTERVAL, Provisioning};
use crate::credentials::WorkloadIdentity;

/// One request to the authority may not take longer than this (connect, TLS, signing). Longer
/// than an authority in Kubernetes mode waits for a CSR's certificate (60 s, as istiod), so its
/// answer (a certificate, or why not) arrives instead of a timeout here; a dead authority is
/// still found at once by the connect timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// How much longer to wait when the monotonic clock says the certificate has ended and the wall
/// clock does not, yet.
const EXPIRY_RECHECK: Duration = Duration::from_millis(10);

fn valid_now(identity: &WorkloadIdentity) -> bool {
    identity.is_valid_at(SystemTime::now())
}

/// The tokio instant of a certificate time, if it is in the future.
fn instant_of(t: SystemTime) -> Option<Instant> {
    t.duration_since(SystemTime::now()).ok().map(|d| Instant::now() + d)
}

pub(super) async fn run(ctx: Arc<IdentityCtx>, settings: Provisioning, client: Arc<dyn AuthorityClient>) {
    let source = client.describe();
    tracing::info!("requesting a certificate for {} from {source}", settings.id);
    let mut bundle_watch = FileWatch::new(
        ctx.config
            .trust_bundle
            .iter()
            .chain(ctx.config.crl.iter())
            .cloned()
            .collect(),
    );
    let mut ticker = tokio::time::interval(ctx.config.watch_interval.max(MIN_WATCH_INTERVAL));
    let mut failures = 0u32;
    let mut issued_once = false;
    // The cause of the last failure: logged in full once, then only counted.
    let mut last_error: Option<String> = None;
    let mut expiry = ExpiryReport::default();
    loop {
        let wait = match request_reporting_expiry(&ctx, &settings, client.as_ref(), &source, &mut expiry).await {
            Ok(id) => {
                failures = 0;
                last_error = None;
                ctx.metrics.csr_request(true);
                if issued_once {
                    ctx.metrics.renewed();
                }
                let (delay, late) = renewal_delay(
                    id.not_before,
                    id.not_after,
                    SystemTime::now(),
                    settings.renew_at,
                    jitter_unit(),
                );
                if late {
                    tracing::warn!(
                        "the renewal time for {} had passed when the certificate arrived (notBefore {}, notAfter {}: a backdated or very short certificate, or skewed clocks); renewing in {}",
                        id.id,
                        rfc3339(id.not_before),
                        rfc3339(id.not_after),
                        format_duration(delay)
                    );
                }
                let verb = if issued_once { "renewed" } else { "ready" };
                issued_once = true;
                tracing::info!(
                    "{verb}: {} from {source} (signer {}, valid until {}, next renewal in {})",
                    id.id,
                    id.signer,
                    rfc3339(id.not_after),
                    format_duration(delay)
                );
                delay
            }
            Err(e) => {
                failures += 1;
                ctx.metrics.csr_request(false);
                let wait = backoff(failures, jitter_unit());
                let cause = e.to_string();
                expiry.check(&ctx, || unrenewed_because(Some(&cause)));
                let again = last_error.as_deref() == Some(cause.as_str());
                let retry = format_duration(wait);
                match (ctx.credentials.identity().filter(|i| valid_now(i)), again) {
                    (Some(current), false) => tracing::warn!(
                        "renewal from {source} failed: {cause}; keeping the current certificate (valid until {}), retrying in {retry}",
                        rfc3339(current.not_after)
                    ),
                    (Some(_), true) => tracing::warn!(
                        "renewal from {source} failed again the same way (attempt {failures}); retrying in {retry}"
                    ),
                    (None, false) => tracing::error!(
                        "no valid certificate: the request to {source} failed: {cause}; every connection is refused, retrying in {retry}"
                    ),
                    (None, true) => tracing::error!(
                        "no valid certificate: attempt {failures} to {source} failed the same way; retrying in {retry}"
                    ),
                }
                last_error = Some(cause);
                wait
            }
        };
        let next = Instant::now() + wait;
        // Wait for the renewal time, reacting to bundle changes, SIGHUP and expiry meanwhile. The
        // certificate's end is taken once, here: recomputed after a bundle tick that lands just
        // past it, it would be gone, and the expiry would pass without its line in the log.
        let mut end = ctx
            .credentials
            .identity()
            .and_then(|i| instant_of(i.not_after))
            .filter(|end| *end < next);
        loop {
            let wake = end.map_or(next, |end| end.min(next));
            let renew_now = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => Instant::now() >= next,
                _ = ticker.tick() => bundle_watch.changed() && !reload_bundle(&ctx),
                _ = ctx.reload.notified() => {
                    reload_bundle(&ctx);
                    true
                }
            };
            if renew_now {
                break;
            }
            // Whichever branch woke the loop: once the end has passed, say so.
            if end.is_some_and(|end| Instant::now() >= end) {
                // Still valid means the wall clock has not reached notAfter yet (it was set back,
                // or it and the monotonic clock disagree by a little): wait for it.
                end = expiry
                    .check(&ctx, || unrenewed_because(last_error.as_deref()))
                    .map(|not_after| instant_of(not_after).unwrap_or_else(Instant::now) + EXPIRY_RECHECK);
            }
        }
    }
}

/// The one loud line when the current certificate expires without a successor: readiness turns
/// false and every connection is refused, which must never happen silently. Whichever point
/// notices first says it (the wait for renewal, a request under way, a request that failed); it is
/// said once per certificate.
#[derive(Default)]
struct ExpiryReport {
    /// notAfter of the certificate whose expiry was reported.
    reported: Option<SystemTime>,
}

impl ExpiryReport {
    /// Says it if the current certificate has ended (and it was not said yet); returns the
    /// certificate's notAfter while it has not ended.
    fn check(&mut self, ctx: &IdentityCtx, why: impl FnOnce() -> String) -> Option<SystemTime> {
        let current = ctx.credentials.identity()?;
        if valid_now(&current) {
            return Some(current.not_after);
        }
        if self.reported == Some(current.not_after) {
            return None;
        }
        self.reported = Some(current.not_after);
        tracing::error!(
            "the certificate expired and was not renewed ({}); readiness is false and every connection is refused until a new one arrives",
            why()
        );
        None
    }
}

/// Why a certificate ended without a successor, from the last request's failure if there was one.
fn unrenewed_because(last_error: Option<&str>) -> String {
    match last_error.filter(|e| !e.trim().is_empty()) {
        Some(e) => format!("the last request failed: {e}"),
        None => "its renewal was not due yet: the certificate is shorter-lived than the signing policy allows for, or the clocks disagree".to_string(),
    }
}

/// Re-reads the bundle and republishes the trust. Returns whether the current certificate still
/// chains to it (if not, the caller renews at once).
fn reload_bundle(ctx: &IdentityCtx) -> bool {
    let Some(identity) = ctx.credentials.identity() else {
        return true;
    };
    if ctx.config.trust_bundle.is_none() {
        // Without a bundle the roots come with each certificate: a new revocation list is
        // applied with the next one, requested at once.
        if ctx.config.crl.is_some() {
            tracing::info!("the revocation list changed; requesting a certificate to apply it with fresh roots");
        }
        return ctx.config.crl.is_none();
    }
    let result = load_bundle(&ctx.config).and_then(|bundle| {
        let trust = trust_for(&ctx.config, bundle.as_ref(), &identity.signer, || Ok(Vec::new()))?;
        ctx.credentials
            .set_trust(trust)
            .map_err(|source| IdentityError::Certificate { path: None, source })
    });
    match result {
        Ok(update) => {
            ctx.metrics.identity_reloaded(true);
            let id = ctx.credentials.identity();
            tracing::info!(
                "trust bundle reloaded: signer {} has {} root(s) (trust version {})",
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

/// [`request`], saying so at once if the current certificate expires while it is under way (the
/// sidecar then refuses connections; that must never happen without a line in the log).
async fn request_reporting_expiry(
    ctx: &IdentityCtx,
    settings: &Provisioning,
    client: &dyn AuthorityClient,
    source: &str,
    report: &mut ExpiryReport,
) -> Result<Arc<WorkloadIdentity>, IdentityError> {
    let end = ctx.credentials.identity().and_then(|i| instant_of(i.not_after));
    let req = request(ctx, settings, client);
    tokio::pin!(req);
    if let Some(end) = end {
        tokio::select! {
            result = &mut req => return result,
            _ = tokio::time::sleep_until(end + EXPIRY_RECHECK) => {
                report.check(ctx, || format!("its renewal from {source} is still under way"));
            }
        }
    }
    req.await
}

/// One request: key, CSR, signature, checks, publication.
async fn request(
    ctx: &IdentityCtx,
    settings: &Provisioning,
    client: &dyn AuthorityClient,
) -> Result<Arc<WorkloadIdentity>, IdentityError> {
    let key = WorkloadKey::generate().map_err(IdentityError::Key)?;
    let csr = key.request(&settings.id, &settings.dns).map_err(IdentityError::Key)?;
    let order = CsrOrder {
        csr_pem: csr.pem,
        signer: ctx.config.signer.as_ref().map(|s| s.to_string()),
        ttl: settings.ttl,
    };
    let issued = tokio::time::timeout(REQUEST_TIMEOUT, client.sign(&order))
        .await
        .map_err(|_| AuthorityError::Timeout(REQUEST_TIMEOUT))??;
    let issued_id = issued
        .chain
        .first()
        .and_then(|leaf| signet_certs::CertInfo::parse(leaf).ok())
        .and_then(|info| info.spiffe_id().ok());
    if issued_id.as_ref() != Some(&settings.id) {
        return Err(IdentityError::WrongIdentity {
            wanted: settings.id.clone(),
            got: issued_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "a certificate without SPIFFE ID".into()),
        });
    }
    let bundle = load_bundle(&ctx.config)?;
    let signer = signer_for(&ctx.config, bundle.as_ref(), &issued.chain)?;
    let roots = issued.roots;
    let trust = trust_for(&ctx.config, bundle.as_ref(), &signer, || Ok(roots))?;
    // Checked against the signer's roots (and the identity asked for) before anything changes.
    ctx.credentials
        .set_certificate(issued.chain, key.to_der(), Some(trust))
        .map_err(IdentityError::Unusable)
}

#[cfg(test)]
mod tests;
