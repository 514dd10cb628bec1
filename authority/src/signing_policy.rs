//! The signing policy: which signer each namespace uses (Istio's per-namespace `ProxyConfig`
//! `ISTIO_META_CERT_SIGNER`), the mesh default, which signers this authority may approve (the
//! istiod ClusterRole's `approve` resourceNames), lifetimes, and which identities may carry DNS SANs.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use signet_certs::{DEFAULT_SIGNER_DOMAIN, HumanDuration, SignerName, SpiffeId};

/// Istio's default workload certificate lifetime (`DEFAULT_WORKLOAD_CERT_TTL`).
const DEFAULT_TTL: Duration = Duration::from_secs(86_400);
/// Istio's `MAX_WORKLOAD_CERT_TTL`.
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(90 * 86_400);
/// The shortest lifetime signed by default: the Kubernetes CSR API's minimum `expirationSeconds`.
const DEFAULT_MIN_TTL: Duration = Duration::from_secs(600);
/// No policy may go below this: validity is signed in whole seconds, so a shorter certificate
/// can arrive with (almost) no life left, too little to renew it.
pub const MIN_TTL_FLOOR: Duration = Duration::from_secs(2);

/// Why a signing policy file is unusable; `origin` names the file.
#[derive(Debug, thiserror::Error)]
pub enum SigningPolicyError {
    #[error("{origin}: cannot read the signing policy: {source}")]
    Read { origin: String, source: std::io::Error },
    #[error("{origin}: invalid signing policy: {source}")]
    Yaml {
        origin: String,
        source: signet_certs::YamlError,
    },
    #[error("{origin}: {field}: {source}")]
    Value {
        origin: String,
        field: String,
        source: signet_certs::Error,
    },
    #[error("{origin}: defaultWorkloadCertTtl is longer than maxWorkloadCertTtl")]
    DefaultAboveMax { origin: String },
    #[error(
        "{origin}: minWorkloadCertTtl must be at least 2s (validity is signed in whole seconds; a shorter certificate cannot be renewed in time) and at most defaultWorkloadCertTtl"
    )]
    MinOutOfRange { origin: String },
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SigningPolicyFile {
    trust_domain: Option<String>,
    signer_domain: Option<String>,
    default_signer: Option<String>,
    approvable_signers: Option<Vec<String>>,
    #[serde(default)]
    namespaces: BTreeMap<String, NamespaceFile>,
    max_workload_cert_ttl: Option<HumanDuration>,
    default_workload_cert_ttl: Option<HumanDuration>,
    min_workload_cert_ttl: Option<HumanDuration>,
    #[serde(default)]
    dns_sans: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamespaceFile {
    signer: Option<String>,
    #[serde(default)]
    allowed_signers: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct SigningPolicy {
    pub trust_domain: String,
    pub signer_domain: String,
    /// The mesh default signer, for namespaces without their own.
    pub default_signer: SignerName,
    /// Signers this authority may approve; `None` means every signer it holds.
    pub approvable: Option<Vec<SignerName>>,
    namespaces: BTreeMap<String, (SignerName, Vec<SignerName>)>,
    pub max_ttl: Duration,
    pub default_ttl: Duration,
    /// Shorter requests are refused (`TTLTooShort`), not signed.
    pub min_ttl: Duration,
    dns_sans: HashMap<SpiffeId, Vec<String>>,
}

impl Default for SigningPolicy {
    fn default() -> Self {
        SigningPolicy::defaults_in(DEFAULT_SIGNER_DOMAIN)
    }
}

impl SigningPolicy {
    /// The policy of an empty file, bare signer names in `signer_domain`.
    pub fn defaults_in(signer_domain: &str) -> Self {
        // Infallible for a valid domain: every field takes its default.
        SigningPolicy::from_file(SigningPolicyFile::default(), "defaults", signer_domain)
            .expect("the default policy is valid")
    }

    /// Reads the policy file at `path`. A bare signer name in it is expanded with its
    /// `signerDomain`, else with `signer_domain` (the authority's `--signer-domain`, Istio's
    /// CERT_SIGNER_DOMAIN), so the policy and the trust bundle name the same signers.
    pub fn load(path: &Path, signer_domain: &str) -> Result<Self, SigningPolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SigningPolicyError::Read {
            origin: origin.clone(),
            source,
        })?;
        Self::from_yaml_in(&text, &origin, signer_domain)
    }

    /// A policy from YAML text, bare signer names in cert-manager's domain unless it says.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, SigningPolicyError> {
        Self::from_yaml_in(text, origin, DEFAULT_SIGNER_DOMAIN)
    }

    /// A policy from YAML text, bare signer names in `signer_domain` unless it says.
    pub fn from_yaml_in(text: &str, origin: &str, signer_domain: &str) -> Result<Self, SigningPolicyError> {
        let file: SigningPolicyFile = signet_certs::from_yaml(text).map_err(|source| SigningPolicyError::Yaml {
            origin: origin.to_string(),
            source,
        })?;
        Self::from_file(file, origin, signer_domain)
    }

    fn from_file(f: SigningPolicyFile, origin: &str, signer_domain: &str) -> Result<Self, SigningPolicyError> {
        let signer_domain = f.signer_domain.unwrap_or_else(|| signer_domain.to_string());
        let value = |field: &str| {
            let (origin, field) = (origin.to_string(), field.to_string());
            move |source| SigningPolicyError::Value { origin, field, source }
        };
        let name = |s: &str, field: &str| SignerName::parse(s, &signer_domain).map_err(value(field));
        let default_signer = name(f.default_signer.as_deref().unwrap_or("istio-system"), "defaultSigner")?;
        let approvable = f
            .approvable_signers
            .map(|v| {
                v.iter()
                    .map(|s| name(s, "approvableSigners"))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let mut namespaces = BTreeMap::new();
        for (ns, n) in f.namespaces {
            let own = match &n.signer {
                Some(s) => name(s, &format!("namespaces.{ns}.signer"))?,
                None => default_signer.clone(),
            };
            let allowed = n
                .allowed_signers
                .iter()
                .map(|s| name(s, &format!("namespaces.{ns}.allowedSigners")))
                .collect::<Result<Vec<_>, _>>()?;
            namespaces.insert(ns, (own, allowed));
        }
        let max_ttl = f.max_workload_cert_ttl.map_or(DEFAULT_MAX_TTL, |d| d.0);
        let default_ttl = f.default_workload_cert_ttl.map_or(DEFAULT_TTL, |d| d.0);
        if default_ttl > max_ttl {
            return Err(SigningPolicyError::DefaultAboveMax {
                origin: origin.to_string(),
            });
        }
        let min_ttl = f
            .min_workload_cert_ttl
            .map_or(DEFAULT_MIN_TTL.min(default_ttl), |d| d.0);
        if min_ttl < MIN_TTL_FLOOR || min_ttl > default_ttl {
            return Err(SigningPolicyError::MinOutOfRange {
                origin: origin.to_string(),
            });
        }
        let mut dns_sans = HashMap::new();
        for (id, names) in f.dns_sans {
            let id: SpiffeId = id.parse().map_err(value("dnsSans"))?;
            dns_sans.insert(id, names);
        }
        Ok(SigningPolicy {
            trust_domain: f.trust_domain.unwrap_or_else(|| "cluster.local".to_string()),
            signer_domain,
            default_signer,
            approvable,
            namespaces,
            max_ttl,
            default_ttl,
            min_ttl,
            dns_sans,
        })
    }

    /// The signer a namespace uses when the workload names none.
    pub fn signer_for(&self, namespace: &str) -> &SignerName {
        self.namespaces
            .get(namespace)
            .map(|(s, _)| s)
            .unwrap_or(&self.default_signer)
    }

    /// Whether workloads of `namespace` may obtain certificates from `signer`.
    pub fn may_use(&self, namespace: &str, signer: &SignerName) -> bool {
        match self.namespaces.get(namespace) {
            Some((own, allowed)) => own == signer || allowed.contains(signer),
            None => *signer == self.default_signer,
        }
    }

    /// Every signer the policy lets some workload use and this authority approve: the signers
    /// its `approve` permission must name.
    pub fn approvable_signers(&self) -> Vec<SignerName> {
        let mut all = vec![self.default_signer.clone()];
        for (own, allowed) in self.namespaces.values() {
            all.push(own.clone());
            all.extend(allowed.iter().cloned());
        }
        all.sort();
        all.dedup();
        all.retain(|s| self.may_approve(s));
        all
    }

    pub fn may_approve(&self, signer: &SignerName) -> bool {
        self.approvable.as_ref().is_none_or(|list| list.contains(signer))
    }

    /// Whether `id` may carry the DNS SAN `name`.
    pub fn allows_dns(&self, id: &SpiffeId, name: &str) -> bool {
        self.dns_sans
            .get(id)
            .is_some_and(|names| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
defaultSigner: istio-system
approvableSigners: [istio-system, foo, bar]
namespaces:
  foo: {signer: foo}
  bar: {signer: bar}
  legacy: {signer: legacy, allowedSigners: [foo]}
maxWorkloadCertTtl: 48h
dnsSans:
  spiffe://cluster.local/ns/foo/sa/httpbin: [httpbin.foo]
"#;

    fn n(s: &str) -> SignerName {
        SignerName::with_default_domain(s).unwrap()
    }

    #[test]
    fn bare_signer_names_take_the_authoritys_domain_unless_the_file_names_one() {
        let p = SigningPolicy::from_yaml_in(SEED, "p", "example.com").unwrap();
        assert_eq!(p.signer_for("foo").as_str(), "example.com/foo");
        assert_eq!(p.signer_for("default").as_str(), "example.com/istio-system");
        let own = format!("signerDomain: corp.test\n{SEED}");
        let p = SigningPolicy::from_yaml_in(&own, "p", "example.com").unwrap();
        assert_eq!(p.signer_for("foo").as_str(), "corp.test/foo");
        assert_eq!(
            SigningPolicy::defaults_in("example.com").signer_for("x").as_str(),
            "example.com/istio-system"
        );
    }

    #[test]
    fn namespaces_get_their_signer_and_others_the_default() {
        let p = SigningPolicy::from_yaml(SEED, "p").unwrap();
        assert_eq!(p.signer_for("foo"), &n("foo"));
        assert_eq!(p.signer_for("default"), &n("istio-system"));
        assert!(p.may_use("foo", &n("foo")) && !p.may_use("foo", &n("bar")));
        assert!(p.may_use("default", &n("istio-system")) && !p.may_use("default", &n("foo")));
        assert!(p.may_use("legacy", &n("foo")));
        assert!(p.may_approve(&n("foo")) && !p.may_approve(&n("legacy")));
        assert_eq!(p.max_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(p.default_ttl, Duration::from_secs(24 * 3600));
        let id: SpiffeId = "spiffe://cluster.local/ns/foo/sa/httpbin".parse().unwrap();
        assert!(p.allows_dns(&id, "httpbin.foo") && !p.allows_dns(&id, "evil.com"));
    }

    #[test]
    fn mistakes_are_named() {
        assert!(
            SigningPolicy::from_yaml("namespace: {}", "p.yaml")
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        let e = SigningPolicy::from_yaml("maxWorkloadCertTtl: soon", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.yaml: invalid signing policy: maxWorkloadCertTtl: invalid duration"),
            "{e}"
        );
        let e = SigningPolicy::from_yaml("namespaces: {foo: {signer: 'no such'}}", "p.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.yaml: namespaces.foo.signer: invalid signer name"),
            "{e}"
        );
        assert!(SigningPolicy::from_yaml("defaultWorkloadCertTtl: 10d\nmaxWorkloadCertTtl: 1d", "p").is_err());
    }
}
