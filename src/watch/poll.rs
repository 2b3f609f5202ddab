//! Polling, for directories inotify could not watch: each pass compares what it finds with the
//! previous pass. A file is taken as written once two passes find it unchanged.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::Duration;

use walkdir::WalkDir;

use crate::scan::FileVersion;

/// Between passes when nothing is being written.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Between passes while a file is changing.
pub const SETTLE_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Link,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    kind: Kind,
    version: FileVersion,
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.file_type().is_symlink() {
            Kind::Link
        } else {
            Kind::File
        };
        Stamp {
            kind,
            version: FileVersion::of(meta),
        }
    }
}

/// What a pass found.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    /// A file is new or changed since the last pass: it may still be being written.
    Writing(PathBuf),
    /// A file found changing before is unchanged now.
    Written(PathBuf),
    NewDir(PathBuf),
    NewLink(PathBuf),
    Gone(PathBuf),
}

#[derive(Default)]
pub struct Poller {
    roots: Vec<PathBuf>,
    seen: HashMap<PathBuf, Stamp>,
    changing: HashSet<PathBuf>,
}

impl Poller {
    pub fn is_active(&self) -> bool {
        !self.roots.is_empty()
    }

    pub fn covers(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| path.starts_with(r))
    }

    /// Whether a file was found changing and not yet found written.
    pub fn has_changing(&self) -> bool {
        !self.changing.is_empty()
    }

    /// Polls `dir` and everything below it from now on. Files already there count as being
    /// written when `fresh` (the directory just appeared), so that they are taken once two passes
    /// agree.
    pub fn add(&mut self, dir: &Path, fresh: bool, skip: &dyn Fn(&Path) -> bool) {
        self.roots.push(dir.to_path_buf());
        for (path, stamp) in walk(dir, skip) {
            if fresh && stamp.kind == Kind::File {
                self.changing.insert(path.clone());
            }
            self.seen.insert(path, stamp);
        }
    }

    /// One pass over every polled directory; `skip` names directories not to enter.
    pub fn poll(&mut self, skip: &dyn Fn(&Path) -> bool) -> Vec<Polled> {
        let now: HashMap<PathBuf, Stamp> = self.roots.iter().flat_map(|r| walk(r, skip)).collect();
        let mut found = Vec::new();
        for (path, stamp) in &now {
            let before = self.seen.get(path);
            match (stamp.kind, before) {
                (Kind::File, Some(b)) if b == stamp && self.changing.remove(path) => {
                    found.push(Polled::Written(path.clone()));
                }
                (Kind::File, Some(b)) if b == stamp => {}
                (Kind::File, _) => {
                    self.changing.insert(path.clone());
                    found.push(Polled::Writing(path.clone()));
                }
                (Kind::Dir, None) => found.push(Polled::NewDir(path.clone())),
                (Kind::Link, b) if b != Some(stamp) => found.push(Polled::NewLink(path.clone())),
                _ => {}
            }
        }
        for path in self.seen.keys().filter(|p| !now.contains_key(*p)) {
            self.changing.remove(path);
            found.push(Polled::Gone(path.clone()));
        }
        self.seen = now;
        found
    }
}

fn walk(dir: &Path, skip: &dyn Fn(&Path) -> bool) -> Vec<(PathBuf, Stamp)> {
    WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !(e.file_type().is_dir() && skip(e.path())))
        .filter_map(Result::ok)
        .filter(|e| !crate::scan::is_own_temp_file(e.path()))
        .filter_map(|e| Some((e.path().to_path_buf(), Stamp::of(&e.metadata().ok()?))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_file_is_written_once_two_passes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let never = |_: &Path| false;
        let mut poller = Poller::default();
        poller.add(root, false, &never);
        assert!(poller.poll(&never).is_empty());

        fs::create_dir(root.join("lib")).unwrap();
        fs::write(root.join("lib/a.so"), b"half").unwrap();
        std::os::unix::fs::symlink("a.so", root.join("lib/a.so.1")).unwrap();
        let found = poller.poll(&never);
        assert!(found.contains(&Polled::NewDir(root.join("lib"))));
        assert!(found.contains(&Polled::Writing(root.join("lib/a.so"))));
        assert!(found.contains(&Polled::NewLink(root.join("lib/a.so.1"))));
        assert!(poller.has_changing());

        fs::write(root.join("lib/a.so"), b"whole file").unwrap();
        assert_eq!(
            poller.poll(&never),
            [Polled::Writing(root.join("lib/a.so"))]
        );
        assert_eq!(
            poller.poll(&never),
            [Polled::Written(root.join("lib/a.so"))]
        );
        assert!(!poller.has_changing());

        fs::remove_file(root.join("lib/a.so")).unwrap();
        assert!(
            poller
                .poll(&never)
                .contains(&Polled::Gone(root.join("lib/a.so")))
        );
    }

    #[test]
    fn a_fresh_directory_files_wait_for_a_second_pass() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.so"), b"x").unwrap();
        let never = |_: &Path| false;
        let mut poller = Poller::default();
        poller.add(dir.path(), true, &never);
        assert!(poller.has_changing());
        assert_eq!(
            poller.poll(&never),
            [Polled::Written(dir.path().join("a.so"))]
        );
    }
}
