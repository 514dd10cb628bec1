//! Noticing that files changed, by content: mtimes are coarse on some filesystems and
//! Kubernetes swaps ConfigMap/Secret volumes through symlinks, so each check hashes the files
//! (they are small: certificates, keys, bundles, policies).

use std::path::PathBuf;

use crate::sha256_hex;

#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    last: String,
}

impl FileWatch {
    /// Starts watching `paths`, taking their current content as seen.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let mut w = FileWatch {
            paths,
            last: String::new(),
        };
        w.last = w.fingerprint();
        w
    }

    fn fingerprint(&self) -> String {
        let mut all = Vec::new();
        for p in &self.paths {
            all.extend_from_slice(p.as_os_str().as_encoded_bytes());
            all.push(0);
            match std::fs::read(p) {
                Ok(bytes) => all.extend_from_slice(sha256_hex(&bytes).as_bytes()),
                Err(e) => all.extend_from_slice(e.kind().to_string().as_bytes()),
            }
            all.push(0);
        }
        sha256_hex(&all)
    }

    /// True once per change of any file's content (or existence).
    pub fn changed(&mut self) -> bool {
        let now = self.fingerprint();
        if now == self.last {
            return false;
        }
        self.last = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_each_content_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, "1").unwrap();
        let mut w = FileWatch::new(vec![f.clone()]);
        assert!(!w.changed());
        std::fs::write(&f, "2").unwrap();
        assert!(w.changed());
        assert!(!w.changed());
        std::fs::remove_file(&f).unwrap();
        assert!(w.changed());
    }
}
