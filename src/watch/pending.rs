//! Work waiting for its writers to finish: per target (a prefix, or a watched root), the paths
//! that changed and when, and the files that are open for writing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a target must see no change before it is fixed.
pub const QUIET: Duration = Duration::from_millis(400);
/// The longest a target waits under a steady stream of changes.
const MAX_DELAY: Duration = Duration::from_secs(5);

struct Group {
    paths: BTreeSet<PathBuf>,
    first: Instant,
    last: Instant,
}

impl Group {
    fn due_at(&self) -> Instant {
        (self.last + QUIET).min(self.first + MAX_DELAY)
    }
}

#[derive(Default)]
pub struct Pending {
    groups: HashMap<PathBuf, Group>,
    /// Files written to and not closed yet: never patched under their writer.
    writing: HashSet<PathBuf>,
}

impl Pending {
    /// `path` changed in a way that needs a fix of `target`.
    pub fn add(&mut self, target: PathBuf, path: PathBuf, now: Instant) {
        let group = self.groups.entry(target).or_insert_with(|| Group {
            paths: BTreeSet::new(),
            first: now,
            last: now,
        });
        group.paths.insert(path);
        group.last = now;
    }

    /// Something was written in `target`: its fix, if one waits, waits for the writer.
    pub fn extend(&mut self, target: &Path, now: Instant) {
        if let Some(group) = self.groups.get_mut(target) {
            group.last = now;
        }
    }

    pub fn start_writing(&mut self, path: &Path) {
        self.writing.insert(path.to_path_buf());
    }

    /// `path`, and anything below it, is closed, renamed away or removed.
    pub fn stop_writing(&mut self, path: &Path) {
        if !self.writing.remove(path) {
            self.writing.retain(|p| !p.starts_with(path));
        }
    }

    pub fn is_writing(&self, path: &Path) -> bool {
        self.writing.contains(path)
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.groups.values().map(Group::due_at).min()
    }

    /// The changed paths of the group due first, if one is due.
    pub fn take_due(&mut self, now: Instant) -> Option<BTreeSet<PathBuf>> {
        let target = self
            .groups
            .iter()
            .filter(|(_, g)| g.due_at() <= now)
            .min_by_key(|(_, g)| g.due_at())
            .map(|(t, _)| t.clone())?;
        self.groups.remove(&target).map(|g| g.paths)
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Where the work for a changed path goes: the nearest environment holding it (a directory with
/// `conda-meta/` or `pyvenv.cfg`, or a child of an `envs/` directory, which is an environment
/// being created), else the watched root it is under. Read when the work runs, as installers
/// write an environment's marker after its first files.
pub fn target_of(path: &Path, roots: &[PathBuf]) -> Option<PathBuf> {
    let root = roots
        .iter()
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.as_os_str().len())?;
    let inside = || path.ancestors().take_while(|d| d.starts_with(root));
    let env = inside()
        .find(|d| d.join("conda-meta").is_dir() || d.join("pyvenv.cfg").is_file())
        .or_else(|| {
            inside().find(|d| {
                d != root && d.parent().and_then(Path::file_name) == Some("envs".as_ref())
            })
        });
    Some(env.unwrap_or(root).to_path_buf())
}

/// The targets, leaving out those inside another.
pub fn outermost(mut targets: Vec<PathBuf>) -> Vec<PathBuf> {
    targets.sort();
    targets.dedup();
    let mut kept: Vec<PathBuf> = Vec::new();
    for t in targets {
        if !kept.iter().any(|k| t.starts_with(k)) {
            kept.push(t);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_due_after_a_quiet_period_or_the_longest_delay() {
        let mut p = Pending::default();
        let t0 = Instant::now();
        p.add("/r/e".into(), "/r/e/a".into(), t0);
        assert!(p.take_due(t0 + QUIET / 2).is_none());
        p.extend(Path::new("/r/e"), t0 + QUIET / 2);
        assert!(p.take_due(t0 + QUIET).is_none(), "extended by a write");
        let mut t = t0;
        while t < t0 + MAX_DELAY {
            t += QUIET / 2;
            p.extend(Path::new("/r/e"), t);
        }
        let paths = p.take_due(t).expect("due after the longest delay");
        assert_eq!(
            paths.into_iter().collect::<Vec<_>>(),
            [PathBuf::from("/r/e/a")]
        );
        assert!(p.is_empty());
    }

    #[test]
    fn closing_a_directory_ends_the_writes_below_it() {
        let mut p = Pending::default();
        p.start_writing(Path::new("/r/e/lib/a.so"));
        p.start_writing(Path::new("/r/e/bin/b"));
        p.stop_writing(Path::new("/r/e/lib"));
        assert!(!p.is_writing(Path::new("/r/e/lib/a.so")));
        assert!(p.is_writing(Path::new("/r/e/bin/b")));
    }

    #[test]
    fn targets_are_environments_or_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("envs/a/conda-meta")).unwrap();
        std::fs::create_dir_all(root.join("envs/b/lib")).unwrap();
        std::fs::create_dir_all(root.join("venv/lib")).unwrap();
        std::fs::write(root.join("venv/pyvenv.cfg"), "").unwrap();
        let roots = [root.clone()];
        let t = |p: &str| target_of(&root.join(p), &roots);
        assert_eq!(t("envs/a/lib/x.so"), Some(root.join("envs/a")));
        assert_eq!(t("envs/b/lib/x.so"), Some(root.join("envs/b")));
        assert_eq!(t("venv/lib/x.so"), Some(root.join("venv")));
        assert_eq!(t("other/x.so"), Some(root.clone()));
        assert_eq!(t("venv"), Some(root.join("venv")));
        assert_eq!(target_of(Path::new("/elsewhere/x"), &roots), None);
        assert_eq!(
            outermost(vec![root.join("envs/a"), root.clone(), root.join("venv")]),
            std::slice::from_ref(&root)
        );
    }
}
