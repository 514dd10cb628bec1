//! `SpiffeId`: `spiffe://<trust-domain>/<path>`, parsed strictly by the SPIFFE ID rules
//! (no port, userinfo, query or fragment; lowercase trust domain; non-empty path segments).

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
    /// The Kubernetes workload form: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn workload(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, Error> {
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

    /// The namespace of a `/ns/<ns>/sa/<sa>` ID.
    pub fn namespace(&self) -> Option<&str> {
        self.k8s_parts().map(|(ns, _)| ns)
    }

    /// The service account of a `/ns/<ns>/sa/<sa>` ID.
    pub fn service_account(&self) -> Option<&str> {
        self.k8s_parts().map(|(_, sa)| sa)
    }

    fn k8s_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path()[1..].split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
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
        if input.len() > MAX_LEN {
            return Err(err("longer than 2048 bytes"));
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or_else(|| err("must start with spiffe:// (lowercase)"))?;
        if rest.contains(['?', '#']) {
            return Err(err("query and fragment are not allowed"));
        }
        let slash = rest
            .find('/')
            .ok_or_else(|| err("missing path after the trust domain"))?;
        let (td, path) = (&rest[..slash], &rest[slash..]);
        if td.is_empty() {
            return Err(err("empty trust domain"));
        }
        if td.contains(':') {
            return Err(err("a port is not allowed in the trust domain"));
        }
        if td.contains('@') {
            return Err(err("userinfo is not allowed"));
        }
        if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(err("the trust domain may use lowercase letters, digits and . - _ only"));
        }
        for segment in path[1..].split('/') {
            if segment.is_empty() {
                return Err(err("empty path segment (double or trailing slash)"));
            }
            if segment == "." || segment == ".." {
                return Err(err("'.' and '..' path segments are not allowed"));
            }
            if !segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(err("path segments may use letters, digits and . - _ only"));
            }
        }
        Ok(SpiffeId {
            full: input.to_string(),
            path_start: SCHEME.len() + slash,
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
        assert_eq!(id.namespace(), Some("foo"));
        assert_eq!(id.service_account(), Some("httpbin"));
        assert_eq!(SpiffeId::workload("cluster.local", "foo", "httpbin").unwrap(), id);
        let other: SpiffeId = "spiffe://example.org/service/web".parse().unwrap();
        assert_eq!(other.namespace(), None);
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
