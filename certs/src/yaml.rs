//! YAML in: every file Signet reads (sidecar config, signing policy, tokens, trust bundle) is
//! parsed here, so an error names the setting's path (`inbound[0].protocol`) with the problem.

use serde::de::DeserializeOwned;

/// A YAML document that does not fit the expected shape.
#[derive(Debug)]
pub struct YamlError {
    /// Where in the document, e.g. `inbound[0].protocol`; empty at the top.
    pub path: String,
    pub source: serde_yaml_ng::Error,
}

impl std::fmt::Display for YamlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.source.to_string();
        // serde_yaml_ng names part of the path itself (`items[1]: ...`); say it once.
        let inner = match inner.split_once(": ") {
            Some((p, rest)) if !p.contains(' ') && self.path.starts_with(p) => rest,
            _ => inner.as_str(),
        };
        if self.path.is_empty() {
            f.write_str(inner)
        } else {
            write!(f, "{}: {inner}", self.path)
        }
    }
}

impl std::error::Error for YamlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Parses `text` into `T`, remembering where a value did not fit.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        YamlError {
            path: if path == "." { String::new() } else { path },
            source: e.into_inner(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        ttl: crate::HumanDuration,
    }

    #[test]
    fn errors_name_the_path() {
        let e = from_yaml::<Doc>("items: [{ttl: 1s}, {ttl: soon}]")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("items[1].ttl: invalid duration \"soon\""), "{e}");
    }
}
