//! Log lines an attacker can cause (rejected handshakes, refused connections, failed accepts)
//! are throttled per kind: the first is logged at once, then at most one per interval, carrying
//! how many were left out since. Counting stays exact in the metrics; only the log is thinned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often each kind of line may be logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// Per kind: when its last line was logged, and how many were left out since.
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(LOG_INTERVAL)
    }
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Throttle {
            interval,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line of `kind` may be logged now; if so, how many were left out before it.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        match kinds.get_mut(kind) {
            Some((last, skipped)) if now.duration_since(*last) < self.interval => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now;
                Some(std::mem::take(skipped))
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// " (N more like it in the last 10s)", or nothing.
pub fn more(skipped: u64) -> String {
    if skipped == 0 {
        String::new()
    } else {
        format!(
            " ({skipped} more like it since the last such line, at most one per {})",
            signet_certs::format_duration(LOG_INTERVAL)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval_then_the_count() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("b"), Some(0), "kinds are independent");
        for _ in 0..5 {
            assert_eq!(t.allow("a"), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.allow("a"), Some(5));
        assert_eq!(t.allow("a"), None);
    }
}
