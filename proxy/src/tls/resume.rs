//! Safe TLS 1.3 session resumption. A resumed session skips certificate verification, so a
//! session must never outlive the trust it was verified under. Each trust version (any change of
//! roots or signer mapping) gets fresh ticket keys on the server and a fresh session cache on
//! the client: earlier tickets can no longer be decrypted, and no earlier session is offered.
//! Tickets also carry their issue time and are refused after `MAX_TICKET_AGE` (rustls does not
//! enforce ticket age itself in TLS 1.3). Because rustls re-issues tickets on resumed sessions,
//! which carry the original peer certificate forward, the accept and connect paths re-check the
//! peer's leaf (validity, allow-list) after every resumed handshake; each listener has its own
//! ticket keys.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
use rustls::server::ProducesTickets;
use signet_certs::CryptoPolicy;

/// How long a ticket may be used (also sent to clients as the ticket lifetime hint).
pub const MAX_TICKET_AGE: Duration = Duration::from_secs(3600);

/// Ticket keys and client sessions of one trust version.
#[derive(Clone, Debug)]
pub(crate) struct Sessions {
    pub trust_version: String,
    /// One ticketer per inbound listener: a session made on one listener (say, without an
    /// allow-list) cannot be resumed on another.
    pub ticketers: Vec<Arc<dyn ProducesTickets>>,
    pub client_cache: Arc<dyn ClientSessionStore>,
}

impl Sessions {
    pub fn new(policy: &CryptoPolicy, trust_version: &str, listeners: usize) -> Result<Self, rustls::Error> {
        let ticketers = (0..listeners)
            .map(|_| {
                Ok(Arc::new(AgedTicketer {
                    inner: policy.ticketer()?,
                    max_age: MAX_TICKET_AGE,
                }) as Arc<dyn ProducesTickets>)
            })
            .collect::<Result<Vec<_>, rustls::Error>>()?;
        Ok(Sessions {
            trust_version: trust_version.to_string(),
            ticketers,
            client_cache: Arc::new(ClientSessionMemoryCache::new(1024)),
        })
    }
}

/// Prefixes each ticket's plaintext with its issue time and refuses tickets older than `max_age`.
#[derive(Debug)]
struct AgedTicketer {
    inner: Arc<dyn ProducesTickets>,
    max_age: Duration,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ProducesTickets for AgedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        (self.max_age.as_secs() as u32).min(self.inner.lifetime())
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut stamped = Vec::with_capacity(8 + plain.len());
        stamped.extend_from_slice(&now_secs().to_be_bytes());
        stamped.extend_from_slice(plain);
        self.inner.encrypt(&stamped)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let stamped = self.inner.decrypt(cipher)?;
        let (issued, plain) = stamped.split_at_checked(8)?;
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        (now_secs().saturating_sub(issued) <= self.max_age.as_secs()).then(|| plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_expire() {
        let t = AgedTicketer {
            inner: CryptoPolicy::default().ticketer().unwrap(),
            max_age: Duration::from_secs(3600),
        };
        let c = t.encrypt(b"session").unwrap();
        assert_eq!(t.decrypt(&c).unwrap(), b"session");
        assert_eq!(t.lifetime(), 3600);
        let old = AgedTicketer {
            inner: t.inner.clone(),
            max_age: Duration::ZERO,
        };
        // Issued "now" but with a zero max age one second later: refused.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(old.decrypt(&c).is_none());
        // Another trust version's keys cannot read it at all.
        let other = Sessions::new(&CryptoPolicy::default(), "v2", 1).unwrap();
        assert!(other.ticketers[0].decrypt(&c).is_none());
    }
}
