//! Remembers peers that verified and were authorized under one trust, so a reconnecting
//! workload costs one signature check (its CertificateVerify) instead of two. One cache lives
//! inside each verifier, and verifiers are rebuilt whenever the trust or our certificate
//! changes, so an entry never outlives the roots it was verified against.
//!
//! Entries are keyed by the SHA-256 of the peer's leaf: once a leaf has been verified to chain
//! to our roots it is authentic, whatever else a later handshake sends with it (webpki ignores
//! extra certificates, so keying by the whole chain let a peer make every chain unique by
//! appending junk). Only chains that passed authorization (allow-list, expected identity) are
//! remembered; validity times are checked on every use; the cache is bounded in entries and in
//! bytes, and chains too large to be a mesh's are not remembered at all.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, UnixTime};
use signet_certs::{CertInfo, SpiffeId};

/// At most this many peers are remembered; the cache is cleared when full (they reconnect and
/// refill it).
const MAX_ENTRIES: usize = 4096;
/// At most this many bytes of keys and identities are held (a SPIFFE ID may be 2 KiB long).
const MAX_BYTES: usize = 1 << 20;
/// Chains above this size (all certificates together) are verified every time, never remembered.
pub(crate) const MAX_REMEMBERED_CHAIN_BYTES: usize = 16 * 1024;

#[derive(Debug)]
struct Entry {
    id: SpiffeId,
    /// The latest notBefore and earliest notAfter over the chain, in Unix seconds.
    not_before: u64,
    not_after: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        32 + self.id.as_str().len() + std::mem::size_of::<Entry>()
    }
}

#[derive(Debug, Default)]
struct Entries {
    by_leaf: HashMap<[u8; 32], Entry>,
    bytes: usize,
}

#[derive(Debug, Default)]
pub(crate) struct VerifiedChains {
    entries: RwLock<Entries>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn leaf_key(leaf: &CertificateDer<'_>) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
    let mut key = [0u8; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

impl VerifiedChains {
    /// The SPIFFE ID of a leaf verified and authorized earlier, valid at `now` (Unix seconds).
    fn get(&self, key: &[u8; 32], now: u64) -> Option<SpiffeId> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries
            .by_leaf
            .get(key)
            .filter(|e| e.not_before <= now && now <= e.not_after)
            .map(|e| e.id.clone())
    }

    /// Records a chain that just verified and was authorized (the slow path).
    fn insert(&self, key: [u8; 32], chain: &[&CertificateDer<'_>], id: &SpiffeId) {
        let mut not_before = 0;
        let mut not_after = u64::MAX;
        for c in chain {
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
        let entry = Entry {
            id: id.clone(),
            not_before,
            not_after,
        };
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.by_leaf.len() >= MAX_ENTRIES || entries.bytes + entry.bytes() > MAX_BYTES {
            entries.by_leaf.clear();
            entries.bytes = 0;
        }
        entries.bytes += entry.bytes();
        if let Some(old) = entries.by_leaf.insert(key, entry) {
            entries.bytes -= old.bytes();
        }
    }

    #[cfg(test)]
    pub(crate) fn footprint(&self) -> (usize, usize) {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        (entries.by_leaf.len(), entries.bytes)
    }
}

/// The SPIFFE ID of a peer remembered by `cache` and valid `now`, or else `verify()`'s answer
/// (which must include authorization), remembered when it is a success and the chain is small.
/// Without a cache, always `verify()`.
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
    let key = leaf_key(end_entity);
    if let Some(id) = cache.get(&key, now.as_secs()) {
        return Ok(id);
    }
    let id = verify()?;
    let size = end_entity.len() + intermediates.iter().map(|c| c.len()).sum::<usize>();
    if size <= MAX_REMEMBERED_CHAIN_BYTES {
        let chain: Vec<&CertificateDer<'_>> = std::iter::once(end_entity).chain(intermediates).collect();
        cache.insert(key, &chain, &id);
    }
    Ok(id)
}
