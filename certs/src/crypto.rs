//! The crypto policy: the one place that decides Signet's crypto (provider, protocol versions,
//! cipher suites, key-exchange groups, signature algorithms, ticket keys, ALPN). Every TLS user
//! takes its builders from here: the sidecar, the authority, the authority's gRPC client and the
//! bench tools. The tests below pin the choices, so that a dependency upgrade cannot silently
//! change them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::ProducesTickets;
use rustls::{
    ClientConfig, ConfigBuilder, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion, WantsVerifier,
};

/// A word from a fixed set that was not one of them, e.g. `--tls-min-version 1.1`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid {what}; use {choices}")]
pub struct UnknownChoice {
    pub what: &'static str,
    pub input: String,
    pub choices: &'static str,
}

/// Implements `Deserialize` through the type's `FromStr`, so a value is parsed by one function
/// whether it comes from a flag or from YAML.
#[macro_export]
macro_rules! deserialize_from_str {
    ($t:ty) => {
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// Which protocol versions a sidecar speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.3 only (the default).
    #[default]
    Tls13,
    /// TLS 1.3 and 1.2, the latter only with ECDHE key exchange and AEAD ciphers.
    Tls12,
}

impl FromStr for MinVersion {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s.trim() {
            "1.3" => Ok(MinVersion::Tls13),
            "1.2" => Ok(MinVersion::Tls12),
            other => Err(UnknownChoice {
                what: "minimum TLS version",
                input: other.to_string(),
                choices: "1.3 (the default) or 1.2",
            }),
        }
    }
}

impl fmt::Display for MinVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MinVersion::Tls13 => "1.3",
            MinVersion::Tls12 => "1.2",
        })
    }
}

deserialize_from_str!(MinVersion);

/// The crypto policy of one TLS user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CryptoPolicy {
    pub min_version: MinVersion,
    /// Offer the hybrid X25519MLKEM768 key exchange first (larger handshakes, quantum-safe).
    pub post_quantum: bool,
}

const TLS13_SUITES: &[SupportedCipherSuite] = &[
    aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
    aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
];

/// TLS 1.2 only with ECDHE and AEAD: no static RSA, no CBC, no SHA-1 MACs.
const TLS12_SUITES: &[SupportedCipherSuite] = &[
    aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    aws_lc_rs::cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// X25519 first: the cheapest exchange, and what every peer supports.
const KX_GROUPS: &[&dyn SupportedKxGroup] = &[aws_lc_rs::kx_group::X25519, aws_lc_rs::kx_group::SECP256R1];

const KX_GROUPS_PQ: &[&dyn SupportedKxGroup] = &[
    aws_lc_rs::kx_group::X25519MLKEM768,
    aws_lc_rs::kx_group::X25519,
    aws_lc_rs::kx_group::SECP256R1,
];

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
static TLS13_AND_12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// ALPN an HTTP inbound accepts, in its order of preference: a client that offers both (curl,
/// a browser) gets HTTP/1.1, which every app speaks; h2 goes to a client that offers h2 alone,
/// as a peer sidecar does when its app spoke HTTP/2 (gRPC), so the app gets h2 too.
pub const ALPN_HTTP: &[&[u8]] = &[b"http/1.1", b"h2"];

/// ALPN of the authority's gRPC API.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];

/// ALPN protocols as rustls configs hold them.
pub fn alpn(protocols: &[&[u8]]) -> Vec<Vec<u8>> {
    protocols.iter().map(|p| p.to_vec()).collect()
}

impl CryptoPolicy {
    /// The aws-lc-rs provider restricted to this policy. Passed explicitly to every builder:
    /// Signet never relies on a process-wide default provider.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut suites = TLS13_SUITES.to_vec();
        if self.min_version == MinVersion::Tls12 {
            suites.extend_from_slice(TLS12_SUITES);
        }
        Arc::new(CryptoProvider {
            cipher_suites: suites,
            kx_groups: if self.post_quantum { KX_GROUPS_PQ } else { KX_GROUPS }.to_vec(),
            ..aws_lc_rs::default_provider()
        })
    }

    pub fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        match self.min_version {
            MinVersion::Tls13 => TLS13_ONLY,
            MinVersion::Tls12 => TLS13_AND_12,
        }
    }

    /// The signature algorithms peers' certificates and handshake signatures are checked with.
    pub fn signature_algorithms(&self) -> WebPkiSupportedAlgorithms {
        self.provider().signature_verification_algorithms
    }

    /// A server config builder with this policy's provider and versions.
    pub fn server_builder(&self) -> Result<ConfigBuilder<ServerConfig, WantsVerifier>, rustls::Error> {
        ServerConfig::builder_with_provider(self.provider()).with_protocol_versions(self.versions())
    }

    /// A client config builder with this policy's provider and versions.
    pub fn client_builder(&self) -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, rustls::Error> {
        ClientConfig::builder_with_provider(self.provider()).with_protocol_versions(self.versions())
    }

    /// A fresh set of TLS 1.3 ticket keys (rotated by rustls every 6 hours).
    pub fn ticketer(&self) -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
        aws_lc_rs::Ticketer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

    fn suite_ids(p: &CryptoProvider) -> Vec<CipherSuite> {
        p.cipher_suites.iter().map(|s| s.suite()).collect()
    }

    #[test]
    fn default_is_tls13_only_with_aead_suites_and_x25519_first() {
        let policy = CryptoPolicy::default();
        let versions: Vec<ProtocolVersion> = policy.versions().iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![ProtocolVersion::TLSv1_3]);
        let p = policy.provider();
        assert_eq!(
            suite_ids(&p),
            vec![
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
        let groups: Vec<NamedGroup> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups, vec![NamedGroup::X25519, NamedGroup::secp256r1]);
    }

    #[test]
    fn tls12_adds_only_ecdhe_aead_suites() {
        let policy = CryptoPolicy {
            min_version: MinVersion::Tls12,
            post_quantum: false,
        };
        let versions: Vec<ProtocolVersion> = policy.versions().iter().map(|v| v.version).collect();
        assert_eq!(versions, vec![ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]);
        for suite in suite_ids(&policy.provider()) {
            let name = format!("{suite:?}");
            if name.starts_with("TLS13_") {
                continue;
            }
            assert!(name.starts_with("TLS_ECDHE_"), "{name} is not ECDHE");
            assert!(
                name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"),
                "{name} is not AEAD"
            );
        }
    }

    #[test]
    fn post_quantum_puts_the_hybrid_group_first() {
        let policy = CryptoPolicy {
            post_quantum: true,
            ..CryptoPolicy::default()
        };
        assert_eq!(policy.provider().kx_groups[0].name(), NamedGroup::X25519MLKEM768);
    }

    #[test]
    fn the_provider_verifies_ecdsa_p256() {
        let p = CryptoPolicy::default().provider();
        let schemes = p.signature_verification_algorithms.supported_schemes();
        assert!(schemes.contains(&rustls::SignatureScheme::ECDSA_NISTP256_SHA256));
        assert_eq!(
            schemes,
            CryptoPolicy::default().signature_algorithms().supported_schemes()
        );
    }

    #[test]
    fn versions_parse_once_from_flags_and_yaml() {
        assert_eq!("1.2".parse::<MinVersion>().unwrap(), MinVersion::Tls12);
        let e = "1.1".parse::<MinVersion>().unwrap_err().to_string();
        assert!(e.contains("\"1.1\"") && e.contains("1.3 (the default) or 1.2"), "{e}");
        let v: MinVersion = serde_yaml_ng::from_str("\"1.3\"").unwrap();
        assert_eq!(v, MinVersion::Tls13);
        assert!(serde_yaml_ng::from_str::<MinVersion>("\"TLS1\"").is_err());
    }
}
