//! A search path's directories, with what a search of them found for each name: every check of
//! a prefix searches the same few run paths for the same few libraries, and a search that ends
//! in the last directory tries every other one (and its `glibc-hwcaps` subdirectories) first.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};

use super::object::Object;
use super::{FastMap, read, write};
use crate::elf::Class;

/// Directories searched in order, and the outcome of each search of them so far.
pub(crate) struct SearchDirs {
    dirs: Vec<PathBuf>,
    /// Per kind of process (a search passes over objects of another kind), by name.
    found: RwLock<Vec<(ProcessKind, FoundByName)>>,
}

type FoundByName = FastMap<String, Option<Kept>>;

/// A [`Found`] as kept: the object by a weak reference, since an object keeps the directories
/// of its run path, and the loader's object cache keeps every object alive anyway.
struct Kept {
    path: Arc<Path>,
    origin: Arc<Path>,
    outcome: Result<Weak<Object>, Arc<str>>,
}

impl Kept {
    fn of(found: &Found) -> Kept {
        Kept {
            path: found.path.clone(),
            origin: found.origin.clone(),
            outcome: found
                .outcome
                .as_ref()
                .map(Arc::downgrade)
                .map_err(Arc::clone),
        }
    }

    /// The search's outcome, unless its object is gone.
    fn found(&self) -> Option<Found> {
        let outcome = match &self.outcome {
            Ok(object) => Ok(object.upgrade()?),
            Err(why) => Err(why.clone()),
        };
        Some(Found {
            path: self.path.clone(),
            origin: self.origin.clone(),
            outcome,
        })
    }
}

/// What decides which objects a process can load: the class, machine and byte order of its
/// program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessKind {
    pub class: Class,
    pub machine: u16,
    pub little_endian: bool,
}

/// Where a search ended: the path, and the object there or why the loader refuses it. The
/// path and its `$ORIGIN` are shared by every check that finds the object there.
#[derive(Clone)]
pub(crate) struct Found {
    pub path: Arc<Path>,
    pub origin: Arc<Path>,
    pub outcome: Result<Arc<Object>, Arc<str>>,
}

impl SearchDirs {
    pub fn new(dirs: Vec<PathBuf>) -> SearchDirs {
        SearchDirs {
            dirs,
            found: RwLock::default(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// What searching for `name` in a process of `kind` finds, searching with `search` the first
    /// time only.
    pub fn found(
        &self,
        kind: ProcessKind,
        name: &str,
        search: impl FnOnce() -> Option<Found>,
    ) -> Option<Found> {
        {
            let known = read(&self.found);
            let hit = known
                .iter()
                .find(|(k, _)| *k == kind)
                .and_then(|(_, names)| names.get(name));
            match hit {
                Some(None) => return None,
                Some(Some(kept)) => {
                    if let Some(found) = kept.found() {
                        return Some(found);
                    }
                }
                None => {}
            }
        }
        let found = search();
        let mut known = write(&self.found);
        let at = match known.iter().position(|(k, _)| *k == kind) {
            Some(at) => at,
            None => {
                known.push((kind, FastMap::default()));
                known.len() - 1
            }
        };
        known[at]
            .1
            .insert(name.to_string(), found.as_ref().map(Kept::of));
        found
    }
}

impl std::fmt::Debug for SearchDirs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.dirs.iter().map(|d| d as &Path))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn kind(machine: u16) -> ProcessKind {
        ProcessKind {
            class: Class::Elf64,
            machine,
            little_endian: true,
        }
    }

    #[test]
    fn a_name_is_searched_once_per_kind_of_process() {
        let dirs = SearchDirs::new(vec![PathBuf::from("/lib")]);
        let searches = Cell::new(0);
        let refused = || {
            searches.set(searches.get() + 1);
            Some(Found {
                path: Arc::from(Path::new("/lib/libc.so.6")),
                origin: Arc::from(Path::new("/lib")),
                outcome: Err(Arc::from("invalid ELF header")),
            })
        };
        for _ in 0..2 {
            let found = dirs.found(kind(62), "libc.so.6", refused).unwrap();
            assert_eq!(&*found.path, Path::new("/lib/libc.so.6"));
        }
        assert_eq!(searches.get(), 1);
        dirs.found(kind(183), "libc.so.6", refused);
        assert_eq!(searches.get(), 2);
        let missing = || {
            searches.set(searches.get() + 1);
            None
        };
        assert!(dirs.found(kind(62), "libm.so.6", missing).is_none());
        assert!(dirs.found(kind(62), "libm.so.6", missing).is_none());
        assert_eq!(searches.get(), 3);
    }
}
