//! Remembers peer chains that verified against one trust, so a reconnecting workload costs one
//! signature check (its CertificateVerify) instead of two. One cache lives inside each verifier,
//! and verifiers are rebuilt whenever the trust or our certificate changes, so an entry never
//! outlives the roots it was verified against. The key is the exact chain bytes; validity times
//! are checked on every handshake; the SPIFFE ID is re-checked against the allow-list or the
//! expected identity by the caller each time.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, UnixTime};
use signet_certs::{CertInfo, SpiffeId};

/// Entries kept at most; the cache is cleared when full (peers reconnect and refill it).
const CAPACITY: usize = 4096;

#[derive(Debug)]
struct Entry {
    id: SpiffeId,
    /// The latest notBefore and earliest notAfter over the chain, in Unix seconds.
    not_before: u64,
    not_after: u64,
}

#[derive(Debug, Default)]
pub(crate) struct VerifiedChains {
    entries: RwLock<HashMap<Vec<u8>, Entry>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The chain as one byte string, each certificate length-prefixed.
pub(crate) fn key(end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>]) -> Vec<u8> {
    let mut k = Vec::with_capacity(end_entity.len() + intermediates.iter().map(|c| c.len() + 4).sum::<usize>() + 4);
    for c in std::iter::once(end_entity).chain(intermediates) {
        k.extend_from_slice(&(c.len() as u32).to_be_bytes());
        k.extend_from_slice(c);
    }
    k
}

impl VerifiedChains {
    /// The SPIFFE ID of a chain verified earlier and valid at `now` (Unix seconds).
    pub fn get(&self, key: &[u8], now: u64) -> Option<SpiffeId> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|e| e.not_before <= now && now <= e.not_after)
            .map(|e| e.id.clone())
    }

    /// Records a chain that just verified (the slow path).
    pub fn insert(
        &self,
        key: Vec<u8>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        id: &SpiffeId,
    ) {
        let mut not_before = 0;
        let mut not_after = u64::MAX;
        for c in std::iter::once(end_entity).chain(intermediates) {
            match CertInfo::spiffe_id_and_validity(c) {
                Ok((_, nb, na)) => {
                    not_before = not_before.max(unix(nb));
                    not_after = not_after.min(unix(na));
                }
                // Intermediates carry no SPIFFE ID; read their validity from the full parse.
                Err(_) => match CertInfo::parse(c) {
                    Ok(info) => {
                        not_before = not_before.max(unix(info.not_before));
                        not_after = not_after.min(unix(info.not_after));
                    }
                    Err(_) => return,
                },
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CAPACITY {
            entries.clear();
        }
        entries.insert(
            key,
            Entry {
                id: id.clone(),
                not_before,
                not_after,
            },
        );
    }
}

/// The SPIFFE ID of a chain remembered by `cache` and valid `now`, or else `verify()`'s answer,
/// remembered when it is a success. Without a cache, always `verify()`.
pub(crate) fn remembered_or<E>(
    cache: Option<&VerifiedChains>,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    verify: impl FnOnce() -> Result<SpiffeId, E>,
) -> Result<SpiffeId, E> {
    let Some(cache) = cache else {
        return verify();
    };
    let key = key(end_entity, intermediates);
    if let Some(id) = cache.get(&key, now.as_secs()) {
        return Ok(id);
    }
    let id = verify()?;
    cache.insert(key, end_entity, intermediates, &id);
    Ok(id)
}
