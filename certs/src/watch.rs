//! Noticing that files changed, by content: mtimes are coarse on some filesystems and
//! Kubernetes swaps ConfigMap/Secret volumes through symlinks, so each check hashes the files
//! (they are small: certificates, keys, bundles, policies).
//!
//! A change counts once the new content has held still for two consecutive checks: a file
//! being written in place (not replaced by a rename) is never acted on half-way, even when the
//! part written so far happens to parse (a chain cut after its first certificate, a bundle cut
//! after one entry).

use std::path::PathBuf;

use crate::sha256_hex;

#[derive(Debug)]
pub struct FileWatch {
    paths: Vec<PathBuf>,
    /// The content last reported (or taken at the start).
    last: String,
    /// A new content seen once, waiting for a second check to confirm it.
    pending: Option<String>,
}

impl FileWatch {
    /// Starts watching `paths`, taking their current content as seen.
    pub fn new(paths: Vec<PathBuf>) -> Self {
        let mut w = FileWatch {
            paths,
            last: String::new(),
            pending: None,
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

    /// True once per change of any file's content (or existence), at the second consecutive
    /// check that finds the same new content.
    pub fn changed(&mut self) -> bool {
        let now = self.fingerprint();
        if now == self.last {
            self.pending = None;
            return false;
        }
        if self.pending.as_deref() == Some(now.as_str()) {
            self.pending = None;
            self.last = now;
            return true;
        }
        self.pending = Some(now);
        false
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
        assert!(!w.changed(), "seen once: not yet");
        assert!(w.changed(), "the same on the next check: changed");
        assert!(!w.changed());
        std::fs::remove_file(&f).unwrap();
        assert!(!w.changed());
        assert!(w.changed());
    }

    /// A file written in place in two steps, checked in between: the half-written content is
    /// never reported, however well it parses; the finished content is, once.
    #[test]
    fn a_file_still_being_written_is_not_reported_half_way() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("chain.pem");
        std::fs::write(&f, "leaf\n").unwrap();
        let mut w = FileWatch::new(vec![f.clone()]);
        std::fs::write(&f, "new leaf\n").unwrap();
        assert!(!w.changed(), "first half seen");
        std::fs::write(&f, "new leaf\nintermediate\n").unwrap();
        assert!(!w.changed(), "still moving");
        assert!(w.changed(), "held still for two checks");
        assert!(!w.changed());
        // Back to a content seen before, half-way: not reported either.
        std::fs::write(&f, "leaf\n").unwrap();
        assert!(!w.changed());
        std::fs::write(&f, "new leaf\nintermediate\n").unwrap();
        assert!(!w.changed(), "back to what was reported: nothing to do");
    }
}
