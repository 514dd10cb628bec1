//! `TrustBundle`: which roots belong to which signer, in the shape of Istio's
//! `meshConfig.caCertificates` (`pem`, `certSigners`, `trustDomains`).
//!
//! Unlike Istio's RA, an entry without signers is refused (isolation is never implicit), a
//! signer may have several roots (rotation overlap), and every root stays known by its
//! fingerprint so a failed handshake can name the signer the peer belongs to.

use std::path::Path;

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::{Anchors, Error, SignerName, certs_to_pem, parse_certs, sha256_hex};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleEntry {
    pub roots: Vec<CertificateDer<'static>>,
    pub signers: Vec<SignerName>,
    pub trust_domains: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    entries: Vec<BundleEntry>,
}

/// What one workload trusts: its own signer's roots (several during a rotation) and, only to
/// name a refused peer's signer, every other signer's roots. Plain data: the TLS side turns it
/// into root stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignerTrust {
    pub signer: SignerName,
    pub roots: Vec<CertificateDer<'static>>,
    pub others: Vec<(SignerName, Vec<CertificateDer<'static>>)>,
    /// The bundle's `trustDomains` for this signer; `None` when an entry leaves them open.
    pub trust_domains: Option<Vec<String>>,
    /// Certificate revocation lists issued under the signer's roots.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// The trust version: a fingerprint of everything that decides whom this workload accepts
    /// (its signer, that signer's roots, the trust domains, the revocation lists). It changes
    /// when any of them does, a switch to another signer under the same bundle included; the
    /// other signers' roots, which only name refused peers, do not count.
    pub version: String,
}

impl SignerTrust {
    /// Trust exactly `roots` for `signer`, with no other signer known (no bundle configured).
    pub fn from_roots(signer: SignerName, roots: Vec<CertificateDer<'static>>) -> Self {
        SignerTrust {
            version: trust_version(&signer, &roots, None),
            signer,
            roots,
            others: Vec::new(),
            trust_domains: None,
            crls: Vec::new(),
        }
    }

    /// The same trust with the signer's revocation lists (a new trust version).
    pub fn with_crls(mut self, crls: Vec<CertificateRevocationListDer<'static>>) -> Self {
        if !crls.is_empty() {
            let mut all = self.version.into_bytes();
            for crl in &crls {
                all.extend_from_slice(&(crl.len() as u64).to_be_bytes());
                all.extend_from_slice(crl);
            }
            self.version = sha256_hex(&all)[..16].to_string();
        }
        self.crls = crls;
        self
    }
}

/// See [`SignerTrust::version`]. Each part is length-prefixed, so no two inputs collide.
fn trust_version(signer: &SignerName, roots: &[CertificateDer<'_>], trust_domains: Option<&[String]>) -> String {
    let mut all = Vec::new();
    let mut part = |bytes: &[u8]| {
        all.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        all.extend_from_slice(bytes);
    };
    part(signer.as_str().as_bytes());
    for root in roots {
        part(root);
    }
    match trust_domains {
        Some(tds) => tds.iter().for_each(|td| part(td.as_bytes())),
        None => part(b"any trust domain"),
    }
    sha256_hex(&all)[..16].to_string()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEntry {
    #[serde(default)]
    pem: Option<String>,
    #[serde(default)]
    spiffe_bundle_url: Option<String>,
    #[serde(default)]
    cert_signers: Vec<String>,
    #[serde(default)]
    trust_domains: Vec<String>,
}

impl TrustBundle {
    /// Builds a bundle; every entry must name at least one signer and hold at least one root.
    pub fn new(entries: Vec<BundleEntry>) -> Result<Self, Error> {
        for (i, e) in entries.iter().enumerate() {
            if e.signers.is_empty() {
                return Err(no_signers("trust bundle", i));
            }
            if e.roots.is_empty() {
                return Err(Error::Bundle {
                    origin: "trust bundle".into(),
                    problem: format!("caCertificates[{i}] holds no root certificate"),
                });
            }
        }
        Ok(TrustBundle { entries })
    }

    /// One entry per signer, each with that signer's roots.
    pub fn from_signers<'a>(
        signers: impl IntoIterator<Item = (&'a SignerName, &'a [CertificateDer<'static>])>,
    ) -> Result<Self, Error> {
        Self::new(
            signers
                .into_iter()
                .map(|(name, roots)| BundleEntry {
                    roots: roots.to_vec(),
                    signers: vec![name.clone()],
                    trust_domains: Vec::new(),
                })
                .collect(),
        )
    }

    /// Reads a bundle file (see [`TrustBundle::from_yaml`]).
    pub fn load(path: &Path, signer_domain: &str) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_yaml(&text, signer_domain, &path.display().to_string())
    }

    /// Parses `caCertificates` given as a bare list, as `caCertificates: [...]`, inside
    /// `meshConfig:`, or inside an IstioOperator's `spec.meshConfig`. Bare signer names are
    /// expanded with `signer_domain`.
    pub fn from_yaml(text: &str, signer_domain: &str, origin: &str) -> Result<Self, Error> {
        let bad = |problem: String| Error::Bundle {
            origin: origin.to_string(),
            problem,
        };
        let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| bad(format!("not valid YAML ({e})")))?;
        let list = find_ca_certificates(&doc).ok_or_else(|| {
            bad("no caCertificates found; expected a list of {pem, certSigners} entries, `caCertificates:`, `meshConfig.caCertificates` or an IstioOperator's spec.meshConfig.caCertificates".into())
        })?;
        let raw: Vec<RawEntry> = serde_yaml_ng::from_value(list.clone()).map_err(|e| {
            bad(format!(
                "caCertificates: {e} (entries take pem, certSigners, trustDomains)"
            ))
        })?;
        if raw.is_empty() {
            return Err(bad("caCertificates is empty".into()));
        }
        let mut entries = Vec::with_capacity(raw.len());
        for (i, entry) in raw.into_iter().enumerate() {
            if entry.cert_signers.is_empty() {
                return Err(no_signers(origin, i));
            }
            let pem = match (entry.pem, entry.spiffe_bundle_url) {
                (Some(pem), _) if !pem.trim().is_empty() => pem,
                (_, Some(url)) => {
                    return Err(bad(format!(
                        "caCertificates[{i}]: spiffeBundleUrl ({url}) is not supported; put the roots inline as pem"
                    )));
                }
                _ => return Err(bad(format!("caCertificates[{i}] has no pem"))),
            };
            let roots = parse_certs(pem.as_bytes(), &format!("{origin}: caCertificates[{i}].pem"))?;
            let signers = entry
                .cert_signers
                .iter()
                .map(|s| SignerName::parse(s, signer_domain))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("caCertificates[{i}].certSigners: {e}")))?;
            entries.push(BundleEntry {
                roots,
                signers,
                trust_domains: entry.trust_domains,
            });
        }
        Ok(TrustBundle { entries })
    }

    pub fn entries(&self) -> &[BundleEntry] {
        &self.entries
    }

    /// Every root of `signer`, across all entries that name it (several during a rotation).
    pub fn roots_for(&self, signer: &SignerName) -> Vec<CertificateDer<'static>> {
        let mut roots: Vec<CertificateDer<'static>> = Vec::new();
        for entry in self.entries.iter().filter(|e| e.signers.contains(signer)) {
            for root in &entry.roots {
                if !roots.contains(root) {
                    roots.push(root.clone());
                }
            }
        }
        roots
    }

    /// What a workload of `signer` trusts; an error when the bundle has no roots for it.
    pub fn trust_for(&self, signer: &SignerName) -> Result<SignerTrust, Error> {
        let roots = self.roots_for(signer);
        if roots.is_empty() {
            return Err(Error::NoRootsForSigner {
                signer: signer.to_string(),
                known: self.signers().iter().map(|s| s.to_string()).collect(),
            });
        }
        let others = self
            .signers()
            .into_iter()
            .filter(|s| *s != signer)
            .map(|s| (s.clone(), self.roots_for(s)))
            .collect();
        let entries: Vec<&BundleEntry> = self.entries.iter().filter(|e| e.signers.contains(signer)).collect();
        let trust_domains = entries
            .iter()
            .all(|e| !e.trust_domains.is_empty())
            .then(|| entries.iter().flat_map(|e| e.trust_domains.iter().cloned()).collect());
        Ok(SignerTrust {
            version: trust_version(signer, &roots, trust_domains.as_deref()),
            signer: signer.clone(),
            roots,
            others,
            trust_domains,
            crls: Vec::new(),
        })
    }

    /// The signers whose roots `chain` (leaf first) was issued under, by signature; an expired
    /// chain still names its signer.
    pub fn signers_of(&self, chain: &[CertificateDer<'_>]) -> Vec<SignerName> {
        self.signers()
            .into_iter()
            .filter(|s| Anchors::new(&self.roots_for(s)).issued(chain))
            .cloned()
            .collect()
    }

    /// All signers named in the bundle, sorted.
    pub fn signers(&self) -> Vec<&SignerName> {
        let mut all: Vec<&SignerName> = self.entries.iter().flat_map(|e| e.signers.iter()).collect();
        all.sort();
        all.dedup();
        all
    }

    /// The bundle as `caCertificates` YAML, full signer names, ready to paste into meshConfig.
    pub fn to_yaml(&self) -> String {
        let mut out = String::from("caCertificates:\n");
        for entry in &self.entries {
            out.push_str("- pem: |\n");
            for line in certs_to_pem(&entry.roots).lines() {
                out.push_str("    ");
                out.push_str(line);
                out.push('\n');
            }
            out.push_str("  certSigners:\n");
            for s in &entry.signers {
                out.push_str(&format!("  - {s}\n"));
            }
            if !entry.trust_domains.is_empty() {
                out.push_str("  trustDomains:\n");
                for td in &entry.trust_domains {
                    out.push_str(&format!("  - {td}\n"));
                }
            }
        }
        out
    }

    /// A short digest of the whole content: changes whenever any root or mapping changes.
    pub fn version(&self) -> String {
        sha256_hex(self.to_yaml().as_bytes())[..16].to_string()
    }
}

fn no_signers(origin: &str, index: usize) -> Error {
    Error::Bundle {
        origin: origin.to_string(),
        problem: format!(
            "caCertificates[{index}] names no certSigners; Signet never applies a root to every signer. Add e.g. `certSigners: [clusterissuers.cert-manager.io/<name>]`"
        ),
    }
}

fn find_ca_certificates(doc: &Value) -> Option<&Value> {
    if doc.is_sequence() {
        return Some(doc);
    }
    let paths: [&[&str]; 3] = [
        &["caCertificates"],
        &["meshConfig", "caCertificates"],
        &["spec", "meshConfig", "caCertificates"],
    ];
    paths.iter().find_map(|path| {
        path.iter()
            .try_fold(doc, |v, key| v.get(*key))
            .filter(|v| v.is_sequence())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Signer;
    use crate::signer::DEFAULT_CA_VALIDITY;

    fn signer(name: &str) -> Signer {
        Signer::create(SignerName::with_default_domain(name).unwrap(), DEFAULT_CA_VALIDITY).unwrap()
    }

    fn indented(pem: &str, indent: usize) -> String {
        pem.lines().map(|l| format!("{}{l}\n", " ".repeat(indent))).collect()
    }

    /// The `istio.yaml` of the reference scenario, with `$ISTIOCA`, `$FOOCA` and `$BARCA`
    /// substituted the way Istio's task does (`sed 's/^/        /'`).
    fn seed_istio_yaml(ist: &str, foo: &str, bar: &str) -> String {
        format!(
            r#"apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  values:
    pilot:
      env:
        EXTERNAL_CA: ISTIOD_RA_KUBERNETES_API
  meshConfig:
    defaultConfig:
      proxyMetadata:
        ISTIO_META_CERT_SIGNER: istio-system
    caCertificates:
    - pem: |
{ist}      certSigners:
      - clusterissuers.cert-manager.io/istio-system
    - pem: |
{foo}      certSigners:
      - clusterissuers.cert-manager.io/foo
    - pem: |
{bar}      certSigners:
      - clusterissuers.cert-manager.io/bar
  components:
    pilot:
      k8s:
        env:
        - name: CERT_SIGNER_DOMAIN
          value: clusterissuers.cert-manager.io
        - name: PILOT_CERT_PROVIDER
          value: k8s.io/clusterissuers.cert-manager.io/istio-system
"#,
            ist = indented(ist, 8),
            foo = indented(foo, 8),
            bar = indented(bar, 8),
        )
    }

    #[test]
    fn the_seed_istio_yaml_loads_verbatim_in_every_shape() {
        let (i, f, b) = (signer("istio-system"), signer("foo"), signer("bar"));
        let pems = [i.roots(), f.roots(), b.roots()].map(certs_to_pem);
        let full = seed_istio_yaml(&pems[0], &pems[1], &pems[2]);
        let bundle = TrustBundle::from_yaml(&full, "", "istio.yaml").unwrap();
        assert_eq!(bundle.entries().len(), 3);
        assert_eq!(bundle.roots_for(f.name()), f.roots());
        assert_eq!(bundle.roots_for(b.name()), b.roots());

        // The caCertificates block alone: inside meshConfig, under its own key, and as a bare list.
        let block_start = full.find("    caCertificates:").unwrap();
        let block_end = full.find("  components:").unwrap();
        let block = &full[block_start..block_end];
        let mesh = format!(
            "meshConfig:\n{}",
            block.lines().map(|l| format!("{}\n", &l[2..])).collect::<String>()
        );
        let bare_key: String = block.lines().map(|l| format!("{}\n", &l[4..])).collect();
        let bare_list: String = block.lines().skip(1).map(|l| format!("{}\n", &l[4..])).collect();
        for text in [mesh, bare_key, bare_list] {
            let parsed = TrustBundle::from_yaml(&text, "", "block").unwrap();
            assert_eq!(parsed, bundle, "{text}");
        }
    }

    #[test]
    fn entries_without_signers_are_refused() {
        let f = signer("foo");
        let text = format!("- pem: |\n{}", indented(&certs_to_pem(f.roots()), 4));
        let e = TrustBundle::from_yaml(&text, "", "b.yaml").unwrap_err().to_string();
        assert!(e.contains("caCertificates[0] names no certSigners"), "{e}");
        assert!(e.starts_with("b.yaml: "), "{e}");
    }

    #[test]
    fn several_roots_per_signer_and_short_names() {
        let (old, new) = (signer("foo"), signer("foo"));
        let text = format!(
            "- pem: |\n{}  certSigners: [foo]\n- pem: |\n{}  certSigners: [foo]\n",
            indented(&certs_to_pem(old.roots()), 4),
            indented(&certs_to_pem(new.roots()), 4)
        );
        let bundle = TrustBundle::from_yaml(&text, "clusterissuers.cert-manager.io", "b").unwrap();
        let roots = bundle.roots_for(&SignerName::with_default_domain("foo").unwrap());
        assert_eq!(roots.len(), 2);
    }

    #[test]
    fn round_trips_through_yaml_and_versions_change_with_content() {
        let (f, b) = (signer("foo"), signer("bar"));
        let bundle = TrustBundle::from_signers([(f.name(), f.roots()), (b.name(), b.roots())]).unwrap();
        let again = TrustBundle::from_yaml(&bundle.to_yaml(), "", "x").unwrap();
        assert_eq!(again, bundle);
        let only_foo = TrustBundle::from_signers([(f.name(), f.roots())]).unwrap();
        assert_ne!(only_foo.version(), bundle.version());
    }

    #[test]
    fn the_trust_version_follows_what_decides_trust() {
        let (f, b, other_f) = (signer("foo"), signer("bar"), signer("foo"));
        let bundle = TrustBundle::from_signers([(f.name(), f.roots()), (b.name(), b.roots())]).unwrap();
        let foo = bundle.trust_for(f.name()).unwrap();
        // The same bundle, another own signer: another version (sessions must not survive).
        assert_ne!(foo.version, bundle.trust_for(b.name()).unwrap().version);
        // Only another signer's roots changed: the same version.
        let bar2 = signer("bar");
        let changed = TrustBundle::from_signers([(f.name(), f.roots()), (b.name(), bar2.roots())]).unwrap();
        assert_eq!(foo.version, changed.trust_for(f.name()).unwrap().version);
        // Our roots or trust domains changed: another version.
        let rotated = TrustBundle::from_signers([(f.name(), other_f.roots()), (b.name(), b.roots())]).unwrap();
        assert_ne!(foo.version, rotated.trust_for(f.name()).unwrap().version);
        let mut entries = bundle.entries().to_vec();
        entries[0].trust_domains = vec!["cluster.local".into()];
        let scoped = TrustBundle::new(entries).unwrap();
        assert_ne!(foo.version, scoped.trust_for(f.name()).unwrap().version);
    }

    #[test]
    fn garbage_is_reported_clearly() {
        for (text, needle) in [
            (
                "caCertificates: [{pem: 'nope', certSigners: [foo]}]",
                "no certificate found",
            ),
            ("foo: bar", "no caCertificates found"),
            ("- {pem: x, certSigner: [foo]}", "unknown field"),
            ("- {spiffeBundleUrl: 'https://x', certSigners: [foo]}", "not supported"),
            (":\n  - [", "not valid YAML"),
        ] {
            let e = TrustBundle::from_yaml(text, "d.io", "b.yaml").unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
