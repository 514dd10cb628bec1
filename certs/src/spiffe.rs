//! `SpiffeId`: a workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! One rule everywhere (CLI, config, certificates, the authority): the SPIFFE ID syntax checked
//! strictly (no port, userinfo, query or fragment; lowercase trust domain; non-empty path
//! segments) and the Kubernetes workload path that Istio's identities have.

use std::fmt;
use std::str::FromStr;

use crate::Error;

const SCHEME: &str = "spiffe://";
const MAX_LEN: usize = 2048;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: String,
    path_start: usize,
}

impl SpiffeId {
    /// The Kubernetes workload form: `spiffe://<td>/ns/<ns>/sa/<sa>`. The namespace must be a
    /// DNS-1123 label and the service account a DNS-1123 subdomain, as Kubernetes requires of
    /// their names: nothing else can be spliced into the path (`bar/sa/httpbin` is no namespace).
    pub fn workload(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, Error> {
        if !is_dns1123_label(namespace) {
            return Err(Error::Certificate(format!(
                "namespace {:?} is not a Kubernetes namespace name (a DNS-1123 label: at most 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)",
                crate::printable(namespace)
            )));
        }
        if !is_dns1123_subdomain(service_account) {
            return Err(Error::Certificate(format!(
                "service account {:?} is not a Kubernetes service account name (a DNS-1123 subdomain: labels of a-z, 0-9 and '-' joined by '.', at most 253 characters)",
                crate::printable(service_account)
            )));
        }
        format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn trust_domain(&self) -> &str {
        &self.full[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.full[self.path_start..]
    }

    pub fn namespace(&self) -> &str {
        workload_parts(self.path()).map(|(ns, _)| ns).unwrap_or_default()
    }

    pub fn service_account(&self) -> &str {
        workload_parts(self.path()).map(|(_, sa)| sa).unwrap_or_default()
    }
}

/// A DNS-1123 label, as Kubernetes checks namespace names.
pub fn is_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1123 subdomain, as Kubernetes checks service account names.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// `(namespace, service account)` of a `/ns/<ns>/sa/<sa>` path.
fn workload_parts(path: &str) -> Option<(&str, &str)> {
    let mut it = path.strip_prefix('/')?.split('/');
    match (it.next(), it.next(), it.next(), it.next(), it.next()) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
        _ => None,
    }
}

/// Checks everything up to and including the path's syntax; returns where the path starts.
fn check_syntax(input: &str) -> Result<usize, &'static str> {
    if input.len() > MAX_LEN {
        return Err("longer than 2048 bytes");
    }
    let rest = input
        .strip_prefix(SCHEME)
        .ok_or("must start with spiffe:// (lowercase)")?;
    if rest.contains(['?', '#']) {
        return Err("query and fragment are not allowed");
    }
    let slash = rest.find('/').ok_or("missing path after the trust domain")?;
    let (td, path) = (&rest[..slash], &rest[slash..]);
    if td.is_empty() {
        return Err("empty trust domain");
    }
    if td.contains(':') {
        return Err("a port is not allowed in the trust domain");
    }
    if td.contains('@') {
        return Err("userinfo is not allowed");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("the trust domain may use lowercase letters, digits and . - _ only");
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err("empty path segment (double or trailing slash)");
        }
        if segment == "." || segment == ".." {
            return Err("'.' and '..' path segments are not allowed");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err("path segments may use letters, digits and . - _ only");
        }
    }
    Ok(SCHEME.len() + slash)
}

/// An allow-list entry: one SPIFFE ID, or every ID under a path prefix written with a trailing
/// `/*` (`spiffe://cluster.local/ns/foo/*` matches `.../ns/foo/sa/x`, not `.../ns/foobar/...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdPattern {
    Exact(SpiffeId),
    /// The prefix, ending in `/`.
    Under(String),
}

impl IdPattern {
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            IdPattern::Exact(e) => e == id,
            IdPattern::Under(prefix) => id.as_str().starts_with(prefix.as_str()),
        }
    }
}

impl FromStr for IdPattern {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let err = |reason: &str| Error::SpiffeId {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let Some(prefix) = input.strip_suffix("/*") else {
            if input.contains('*') {
                return Err(err(
                    "a wildcard must be a whole last path segment, e.g. spiffe://cluster.local/ns/foo/*",
                ));
            }
            return input.parse().map(IdPattern::Exact);
        };
        if prefix.contains('*') {
            return Err(err("only one trailing /* is allowed"));
        }
        // `spiffe://td/*` has no path of its own; check the rest as if it had one more segment.
        check_syntax(&format!("{prefix}/x")).map_err(err)?;
        Ok(IdPattern::Under(format!("{prefix}/")))
    }
}

crate::deserialize_from_str!(IdPattern);

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdPattern::Exact(id) => write!(f, "{id}"),
            IdPattern::Under(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl FromStr for SpiffeId {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let err = |reason: &str| Error::SpiffeId {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let path_start = check_syntax(input).map_err(err)?;
        if workload_parts(&input[path_start..]).is_none() {
            return Err(err("the path must be /ns/<namespace>/sa/<service-account>"));
        }
        Ok(SpiffeId {
            full: input.to_string(),
            path_start,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.full)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_workload_ids() {
        let id: SpiffeId = "spiffe://cluster.local/ns/foo/sa/httpbin".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/foo/sa/httpbin");
        assert_eq!(id.namespace(), "foo");
        assert_eq!(id.service_account(), "httpbin");
        assert_eq!(SpiffeId::workload("cluster.local", "foo", "httpbin").unwrap(), id);
        assert_eq!(
            SpiffeId::workload("cluster.local", "foo", "my.sa-1")
                .unwrap()
                .service_account(),
            "my.sa-1"
        );
        // Nothing can be spliced into the path through a name.
        for (ns, sa) in [
            ("bar/sa/httpbin", "x"),
            ("foo", "httpbin/sa/x"),
            ("Foo", "a"),
            ("-foo", "a"),
            ("foo", ""),
            ("", "a"),
            ("foo", "a..b"),
            ("foo\nINFO", "a"),
        ] {
            let e = SpiffeId::workload("cluster.local", ns, sa).unwrap_err().to_string();
            assert!(e.contains("Kubernetes"), "{ns:?}/{sa:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn only_the_workload_path_is_an_identity() {
        for other in [
            "spiffe://example.org/service/web",
            "spiffe://cluster.local/ns/foo",
            "spiffe://cluster.local/ns/foo/sa/a/b",
            "spiffe://cluster.local/sa/a/ns/foo",
        ] {
            let e = other.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(e.contains("/ns/<namespace>/sa/<service-account>"), "{other}: {e}");
        }
    }

    #[test]
    fn allow_list_patterns() {
        let id: SpiffeId = "spiffe://cluster.local/ns/foo/sa/httpbin".parse().unwrap();
        for (pattern, matches) in [
            ("spiffe://cluster.local/ns/foo/sa/httpbin", true),
            ("spiffe://cluster.local/ns/foo/*", true),
            ("spiffe://cluster.local/*", true),
            ("spiffe://cluster.local/ns/fo/*", false),
            ("spiffe://other.td/*", false),
        ] {
            let p: IdPattern = pattern.parse().unwrap();
            assert_eq!(p.matches(&id), matches, "{pattern}");
            assert_eq!(p.to_string(), pattern);
        }
        for bad in [
            "spiffe://cluster.local/ns/foo*",
            "spiffe://cluster.local/*/sa/a",
            "spiffe://x/ns/a/*/*",
        ] {
            assert!(bad.parse::<IdPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_what_the_spec_forbids() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "SPIFFE://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe:///ns/a",
            "spiffe://Cluster.local/ns/a",
            "spiffe://cluster.local:8080/ns/a",
            "spiffe://user@cluster.local/ns/a",
            "spiffe://cluster.local/ns//a",
            "spiffe://cluster.local/ns/a/",
            "spiffe://cluster.local/ns/../a",
            "spiffe://cluster.local/ns/a?x=1",
            "spiffe://cluster.local/ns/a#f",
            "spiffe://cluster.local/ns/a b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad:?} accepted");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert!(long.parse::<SpiffeId>().is_err());
    }
}
