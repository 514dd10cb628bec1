//! Bearer tokens: the local stand-in for Kubernetes service-account tokens (TokenReview). A
//! tokens file maps each token to a namespace and service account. Only SHA-256 digests of the
//! tokens are kept in memory, so lookups do not compare secrets byte by byte.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use signet_certs::{SpiffeId, sha256_hex};

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

    pub fn spiffe_id(&self, trust_domain: &str) -> Result<SpiffeId, String> {
        SpiffeId::workload(trust_domain, &self.namespace, &self.service_account).map_err(|e| e.to_string())
    }
}

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
    pub fn load(path: &Path) -> Result<Self, String> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("{origin}: cannot read the tokens file: {e}"))?;
        let file: TokensFile =
            serde_yaml_ng::from_str(&text).map_err(|e| format!("{origin}: invalid tokens file: {e}"))?;
        Self::from_entries(&file.tokens).map_err(|e| format!("{origin}: {e}"))
    }

    pub fn from_entries(entries: &[TokenEntry]) -> Result<Self, String> {
        let mut by_digest = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if e.token.len() < 16 {
                return Err(format!("tokens[{i}]: a token must be at least 16 characters"));
            }
            let requester = Requester {
                namespace: e.namespace.clone(),
                service_account: e.service_account.clone(),
            };
            requester
                .spiffe_id("cluster.local")
                .map_err(|err| format!("tokens[{i}]: namespace/serviceAccount: {err}"))?;
            by_digest.insert(sha256_hex(e.token.as_bytes()), requester);
        }
        Ok(Tokens { by_digest })
    }

    pub fn authenticate(&self, token: &str) -> Option<&Requester> {
        self.by_digest.get(&sha256_hex(token.as_bytes()))
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
        let tokens = Tokens::from_entries(&[TokenEntry {
            token: t.clone(),
            namespace: "foo".into(),
            service_account: "httpbin".into(),
        }])
        .unwrap();
        let who = tokens.authenticate(&t).unwrap();
        assert_eq!(who.username(), "system:serviceaccount:foo:httpbin");
        assert_eq!(
            who.spiffe_id("cluster.local").unwrap().as_str(),
            "spiffe://cluster.local/ns/foo/sa/httpbin"
        );
        assert!(tokens.authenticate("nope").is_none());
        assert!(
            Tokens::from_entries(&[TokenEntry {
                token: "short".into(),
                namespace: "a".into(),
                service_account: "b".into()
            }])
            .is_err()
        );
    }
}
