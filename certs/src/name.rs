//! `SignerName`: the Kubernetes CSR `signerName` of a tenant's CA, e.g.
//! `clusterissuers.cert-manager.io/foo`. A bare `foo` is expanded with the signer domain,
//! exactly as Istio expands `ISTIO_META_CERT_SIGNER` with `CERT_SIGNER_DOMAIN`.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The signer domain Istio's documentation and cert-manager use for ClusterIssuers.
pub const DEFAULT_SIGNER_DOMAIN: &str = "clusterissuers.cert-manager.io";

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SignerName {
    full: String,
    slash: usize,
}

impl SignerName {
    /// Parses a full name (`domain/name`), or expands a bare name with `domain`.
    pub fn parse(input: &str, domain: &str) -> Result<Self, Error> {
        let input = input.trim();
        if input.contains('/') {
            return input.parse();
        }
        let err = |reason: &str| Error::SignerName {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if domain.is_empty() {
            return Err(err("a bare name needs a signer domain (CERT_SIGNER_DOMAIN)"));
        }
        format!("{domain}/{input}").parse().map_err(|e| match e {
            Error::SignerName { reason, .. } => err(&reason),
            other => other,
        })
    }

    /// Expands a bare name with [`DEFAULT_SIGNER_DOMAIN`].
    pub fn with_default_domain(input: &str) -> Result<Self, Error> {
        Self::parse(input, DEFAULT_SIGNER_DOMAIN)
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The part after the domain: `foo` for `clusterissuers.cert-manager.io/foo`.
    pub fn short(&self) -> &str {
        &self.full[self.slash + 1..]
    }
}

impl FromStr for SignerName {
    type Err = Error;

    fn from_str(input: &str) -> Result<Self, Error> {
        let err = |reason: &str| Error::SignerName {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let slash = input
            .find('/')
            .ok_or_else(|| err("missing '/' between domain and name"))?;
        let (domain, path) = (&input[..slash], &input[slash + 1..]);
        if domain.is_empty() || path.is_empty() {
            return Err(err("domain and name must both be non-empty"));
        }
        if domain.len() > 253
            || !domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
        {
            return Err(err("the domain must be a lowercase DNS name"));
        }
        if path.len() > 571
            || !path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':'))
        {
            return Err(err("the name may use letters, digits and . - _ / : only"));
        }
        Ok(SignerName {
            full: input.to_string(),
            slash,
        })
    }
}

impl fmt::Display for SignerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for SignerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerName({})", self.full)
    }
}

impl serde::Serialize for SignerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_expand_with_the_domain() {
        let n = SignerName::with_default_domain("foo").unwrap();
        assert_eq!(n.as_str(), "clusterissuers.cert-manager.io/foo");
        assert_eq!(n.short(), "foo");
        let n = SignerName::parse("bar", "example.com").unwrap();
        assert_eq!(n.to_string(), "example.com/bar");
    }

    #[test]
    fn full_names_are_kept() {
        let n = SignerName::parse("issuers.cert-manager.io/ns1.issuer", "ignored.io").unwrap();
        assert_eq!(n.as_str(), "issuers.cert-manager.io/ns1.issuer");
        assert_eq!(n.short(), "ns1.issuer");
    }

    #[test]
    fn rejects_malformed_names() {
        for bad in [
            "",
            "/foo",
            "example.com/",
            "Example.com/foo",
            "a b/c",
            "ex..com/foo",
            "d/has space",
        ] {
            assert!(bad.parse::<SignerName>().is_err(), "{bad:?} accepted");
        }
        assert!(SignerName::parse("foo", "").is_err());
        assert!(SignerName::parse("fo o", DEFAULT_SIGNER_DOMAIN).is_err());
    }
}
