//! What several test files share: a scratch directory that is removed, with everything in it, when the test
//! ends — passing or failing.

use std::path::Path;

/// A fresh directory `mftcoder-<tag>-XXXXXX` in the system temp directory, removed on drop. It derefs to its
/// path, so `dir.join("x")` and `&dir` work where a path is wanted; keep it bound while it is used.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let prefix = format!("mftcoder-{tag}-");
        Scratch(tempfile::Builder::new().prefix(&prefix).tempdir().expect("a directory in the system temp dir"))
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}
