//! When to renew and how long to back off: pure functions of the certificate's validity, the
//! clock and a jitter value in [-1, 1), so they can be tested exactly.

use std::time::{Duration, SystemTime};

/// The first retry after a failed request.
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(500);
/// Retries never wait longer than this (Istio's agent: 150 s).
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(150);
/// Backoff waits vary by this fraction either way, so sidecars restarted together spread out.
const BACKOFF_JITTER: f64 = 0.2;
/// Renewal times vary by this fraction of the lifetime either way.
const RENEWAL_JITTER: f64 = 0.01;
/// A late renewal waits at least this (a signer that backdates notBefore must not turn renewal
/// into a tight loop) ...
const MIN_RENEWAL_DELAY: Duration = Duration::from_millis(50);

/// A uniformly distributed number in [-1, 1), from std's per-process random hash keys.
pub(crate) fn jitter_unit() -> f64 {
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

/// The wait after the `failures`-th failure in a row: 0.5 s doubling up to 150 s, ±20 %.
pub(crate) fn backoff(failures: u32, jitter: f64) -> Duration {
    let base = BACKOFF_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(1.0 + BACKOFF_JITTER * jitter)
}

/// How long from `now` until renewal: `renew_at` of the way from notBefore to notAfter, ±1 % of
/// the lifetime. When that moment has passed already (a backdated notBefore, a slow signer,
/// skewed clocks), renewal is *late*: it comes after 5 % of the remaining life (at least 50 ms),
/// but always within the first half of what is left, so even a certificate with one second of
/// life is renewed before it expires. The flag says renewal is late.
pub(crate) fn renewal_delay(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    renew_at: f64,
    jitter: f64,
) -> (Duration, bool) {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    // Jitter never takes the fraction out of (0, 1), nor more than halfway to either end: a
    // requested 1 % stays 0.5–2 % (it was clamped to 5 %, five times what was asked).
    let fraction = (renew_at + RENEWAL_JITTER * jitter).clamp(renew_at / 2.0, (1.0 + renew_at) / 2.0);
    let remaining = not_after.duration_since(now).unwrap_or_default();
    match (not_before + life.mul_f64(fraction)).duration_since(now) {
        Ok(planned) if !planned.is_zero() => (planned.min(remaining), false),
        _ => {
            let late = remaining.mul_f64(0.05).max(MIN_RENEWAL_DELAY).min(remaining / 2);
            (late, true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_to_the_cap() {
        let waits: Vec<f64> = (1..=10).map(|n| backoff(n, 0.0).as_secs_f64()).collect();
        assert_eq!(waits, vec![0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 150.0]);
        assert_eq!(backoff(1000, 0.0), BACKOFF_MAX);
        assert_eq!(backoff(1, 1.0), Duration::from_millis(600));
        assert_eq!(backoff(1, -1.0), Duration::from_millis(400));
    }

    #[test]
    fn renewal_is_at_the_fraction_of_the_lifetime_with_jitter() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(10_000);
        let at = |now, renew_at, jitter| renewal_delay(start, end, now, renew_at, jitter);
        assert_eq!(at(start, 0.5, 0.0), (Duration::from_secs(5000), false));
        assert_eq!(at(start, 0.5, 1.0), (Duration::from_secs(5100), false));
        assert_eq!(at(start, 0.5, -1.0), (Duration::from_secs(4900), false));
        assert_eq!(
            at(start + Duration::from_secs(1000), 0.8, 0.0),
            (Duration::from_secs(7000), false)
        );
    }

    /// A fraction near either end is what was asked (`--renew-at 0.01`: 1 %, not 5 %), and
    /// jitter keeps it inside the lifetime.
    #[test]
    fn small_and_large_fractions_are_honoured() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(10_000);
        let at = |renew_at, jitter| renewal_delay(start, end, start, renew_at, jitter).0;
        assert_eq!(at(0.01, 0.0), Duration::from_secs(100));
        assert_eq!(at(0.01, 1.0), Duration::from_secs(200));
        assert_eq!(at(0.01, -1.0), Duration::from_secs(50));
        assert_eq!(at(0.99, 0.0), Duration::from_secs(9900));
        assert_eq!(at(0.99, 1.0), Duration::from_secs(9950));
    }

    #[test]
    fn late_renewal_is_soon_but_never_a_tight_loop_and_always_before_expiry() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(10_000);
        // Already past the planned time (a backdated notBefore): 5 % of what is left.
        let late = start + Duration::from_secs(9_000);
        assert_eq!(
            renewal_delay(start, end, late, 0.5, 0.0),
            (Duration::from_secs(50), true)
        );
        // Nearly expired: a little later, but well before the end.
        let last = end - Duration::from_secs(2);
        assert_eq!(
            renewal_delay(start, end, last, 0.5, 0.0),
            (Duration::from_millis(100), true)
        );
    }

    /// The signer truncates validity to whole seconds: a "2 s" certificate may have only
    /// about one second left when it arrives. Its renewal must come in time, not after 1 s.
    #[test]
    fn a_certificate_with_a_second_to_live_is_renewed_within_it() {
        let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let not_after = not_before + Duration::from_secs(2);
        let now = not_before + Duration::from_millis(950);
        let (delay, late) = renewal_delay(not_before, not_after, now, 0.5, 0.0);
        assert!(!late, "half-life is still ahead");
        assert_eq!(delay, Duration::from_millis(50));
        let now = not_before + Duration::from_millis(1100);
        let (delay, late) = renewal_delay(not_before, not_after, now, 0.5, 0.0);
        assert!(late);
        assert!(delay <= Duration::from_millis(450), "{delay:?}");
    }
}
