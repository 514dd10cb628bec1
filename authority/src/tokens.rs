//! Bearer tokens: the local stand-in for Kubernetes service-account tokens (TokenReview). A
//! tokens file maps each token to a namespace and service account. Only SHA-256 digests of the
//! tokens are kept in memory, so lookups do not compare secrets byte by byte.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use signet_certs::{SpiffeId, sha256_hex, write_private};

/// Who is asking, as the API server would fill `spec.username` / `spec.groups`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    pub namespace: String,
    pub service_account: String,
}

impl Requester {
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.service_account)
    }

    pub fn groups(&self) -> Vec<String> {
        vec![
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".to_string(),
        ]
    }

    pub fn spiffe_id(&self, trust_domain: &str) -> Result<SpiffeId, signet_certs::Error> {
        SpiffeId::workload(trust_domain, &self.namespace, &self.service_account)
    }
}

/// Why a tokens file is unusable; `origin` names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{origin}: cannot read the tokens file: {source}")]
    Read { origin: String, source: std::io::Error },
    #[error("{origin}: invalid tokens file: {source}")]
    Yaml {
        origin: String,
        source: signet_certs::YamlError,
    },
    #[error("{origin}: cannot write the tokens file: {source}")]
    Serialize {
        origin: String,
        source: serde_yaml_ng::Error,
    },
    #[error("{origin}: tokens[{index}]: a token must be at least {MIN_TOKEN_LEN} characters")]
    TooShort { origin: String, index: usize },
    #[error("{origin}: tokens[{index}]: namespace/serviceAccount: {source}")]
    Identity {
        origin: String,
        index: usize,
        source: signet_certs::Error,
    },
    #[error("{0}")]
    Write(signet_certs::Error),
}

/// Shorter tokens are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokensFile {
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenEntry {
    pub token: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<String, Requester>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        Self::from_entries(&TokensFile::read(path)?.tokens, &path.display().to_string())
    }

    /// Checks and indexes `entries`; `origin` names their source in errors.
    pub fn from_entries(entries: &[TokenEntry], origin: &str) -> Result<Self, TokensError> {
        let mut by_digest = HashMap::new();
        for (index, e) in entries.iter().enumerate() {
            if e.token.len() < MIN_TOKEN_LEN {
                return Err(TokensError::TooShort {
                    origin: origin.to_string(),
                    index,
                });
            }
            let requester = Requester {
                namespace: e.namespace.clone(),
                service_account: e.service_account.clone(),
            };
            requester
                .spiffe_id("cluster.local")
                .map_err(|source| TokensError::Identity {
                    origin: origin.to_string(),
                    index,
                    source,
                })?;
            by_digest.insert(sha256_hex(e.token.as_bytes()), requester);
        }
        Ok(Tokens { by_digest })
    }

    pub fn authenticate(&self, token: &str) -> Option<&Requester> {
        self.by_digest.get(&sha256_hex(token.as_bytes()))
    }
}

impl TokensFile {
    /// Reads a tokens file; a missing file is an empty one.
    pub fn read_or_empty(path: &Path) -> Result<Self, TokensError> {
        match Self::read(path) {
            Err(TokensError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(Self::default())
            }
            other => other,
        }
    }

    pub fn read(path: &Path) -> Result<Self, TokensError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            origin: origin.clone(),
            source,
        })?;
        signet_certs::from_yaml(&text).map_err(|source| TokensError::Yaml { origin, source })
    }

    /// Writes the file, mode 0600 (it holds secrets).
    pub fn write(&self, path: &Path) -> Result<(), TokensError> {
        let yaml = serde_yaml_ng::to_string(self).map_err(|source| TokensError::Serialize {
            origin: path.display().to_string(),
            source,
        })?;
        write_private(path, yaml.as_bytes()).map_err(TokensError::Write)
    }

    /// Mints a token for `namespace`/`service_account` and adds it; returns the token.
    pub fn mint(&mut self, namespace: &str, service_account: &str) -> Result<String, TokensError> {
        let entry = TokenEntry {
            token: new_token(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        };
        Tokens::from_entries(std::slice::from_ref(&entry), "the new token")?;
        let token = entry.token.clone();
        self.tokens.push(entry);
        Ok(token)
    }
}

/// A fresh random token (256 bits, hex).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    // aws-lc's RNG fails only when the OS RNG is unusable; no secret can be made then.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_service_accounts() {
        let t = new_token();
        let tokens = Tokens::from_entries(
            &[TokenEntry {
                token: t.clone(),
                namespace: "foo".into(),
                service_account: "httpbin".into(),
            }],
            "t",
        )
        .unwrap();
        let who = tokens.authenticate(&t).unwrap();
        assert_eq!(who.username(), "system:serviceaccount:foo:httpbin");
        assert_eq!(
            who.spiffe_id("cluster.local").unwrap().as_str(),
            "spiffe://cluster.local/ns/foo/sa/httpbin"
        );
        assert!(tokens.authenticate("nope").is_none());
        assert!(
            Tokens::from_entries(
                &[TokenEntry {
                    token: "short".into(),
                    namespace: "a".into(),
                    service_account: "b".into()
                }],
                "t"
            )
            .is_err()
        );
    }

    #[test]
    fn minted_tokens_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        let mut file = TokensFile::read_or_empty(&path).unwrap();
        let a = file.mint("foo", "httpbin").unwrap();
        file.write(&path).unwrap();
        let mut file = TokensFile::read_or_empty(&path).unwrap();
        let b = file.mint("bar", "curl").unwrap();
        file.write(&path).unwrap();
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(
            tokens.authenticate(&a).unwrap().username(),
            "system:serviceaccount:foo:httpbin"
        );
        assert_eq!(
            tokens.authenticate(&b).unwrap().username(),
            "system:serviceaccount:bar:curl"
        );
        assert!(
            file.mint("Foo Bar", "x").is_err(),
            "names a SPIFFE ID cannot carry are refused"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
