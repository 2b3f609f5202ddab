//! Which directories are watched: one inotify watch per directory, added as directories appear,
//! and polling for those past the inotify watch limit. Package caches are not watched: the
//! environments link from them, and those links are seen.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use notify::{ErrorKind, RecursiveMode, Watcher};

use super::poll::{Polled, Poller};

/// What adding directories did.
#[derive(Default)]
pub struct Added {
    /// Directories polled (with what is below them) as the watch limit was reached.
    pub polled: Vec<PathBuf>,
    /// Directories that could not be watched for another reason, with why.
    pub errors: Vec<(PathBuf, String)>,
    /// What else the watched directories held when listed.
    pub entries: Vec<PathBuf>,
}

pub struct Tree {
    roots: Vec<PathBuf>,
    watched: HashSet<PathBuf>,
    poller: Poller,
}

impl Tree {
    pub fn new(roots: &[PathBuf]) -> Tree {
        Tree {
            roots: roots.to_vec(),
            watched: HashSet::new(),
            poller: Poller::default(),
        }
    }

    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// Watches `dir` and every directory below it, each before listing it so that nothing
    /// created meanwhile goes unseen. `fresh`: the directory just appeared.
    pub fn add(&mut self, watcher: &mut impl Watcher, dir: &Path, fresh: bool) -> Added {
        let mut added = Added::default();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if self.is_package_cache(&dir)
                || self.poller.covers(&dir)
                || self.watched.contains(&dir)
            {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                }
                Err(e) if matches!(e.kind, ErrorKind::MaxFilesWatch) => {
                    let mut poller = std::mem::take(&mut self.poller);
                    poller.add(&dir, fresh, &|d| self.is_package_cache(d));
                    self.poller = poller;
                    added.polled.push(dir);
                    continue;
                }
                Err(e) if matches!(e.kind, ErrorKind::PathNotFound) => continue,
                Err(e) => {
                    added.errors.push((dir, e.to_string()));
                    continue;
                }
            }
            match fs::read_dir(&dir) {
                Ok(entries) => {
                    for entry in entries.filter_map(Result::ok) {
                        if entry.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(entry.path());
                        } else {
                            added.entries.push(entry.path());
                        }
                    }
                }
                // Removed since it was watched: its removal has an event too.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => added.errors.push((dir, format!("cannot list: {e}"))),
            }
        }
        added
    }

    /// `dir` was removed or renamed away: the watches below it went with it.
    pub fn forget(&mut self, dir: &Path) {
        self.watched.retain(|d| !d.starts_with(dir));
    }

    /// A conda package cache: `pkgs/` in a watched root, a conda root or an environment.
    fn is_package_cache(&self, dir: &Path) -> bool {
        dir.file_name() == Some("pkgs".as_ref())
            && dir.parent().is_some_and(|p| {
                self.roots.iter().any(|r| r == p)
                    || p.join("conda-meta").is_dir()
                    || p.join("envs").is_dir()
            })
    }

    pub fn in_package_cache(&self, path: &Path) -> bool {
        path.ancestors().any(|d| self.is_package_cache(d))
    }

    pub fn is_polling(&self) -> bool {
        self.poller.is_active()
    }

    pub fn has_changing(&self) -> bool {
        self.poller.has_changing()
    }

    pub fn poll(&mut self) -> Vec<Polled> {
        let mut poller = std::mem::take(&mut self.poller);
        let found = poller.poll(&|d| self.is_package_cache(d));
        self.poller = poller;
        found
    }
}
