//! The watcher's own writes: remembered by what the file is on disk after a fix, so that the
//! events they cause are recognised and start no work.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::fix::{FileResult, FixOutcome};
use crate::plan::FileInfo;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
}

impl Fingerprint {
    fn of(meta: &Metadata) -> Fingerprint {
        Fingerprint {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

#[derive(Default)]
pub struct OwnWrites(HashMap<PathBuf, Fingerprint>);

impl OwnWrites {
    /// Remembers every name a fix wrote, as it is now. A name that no longer holds what the fix
    /// wrote (an installer replaced it meanwhile) is not remembered, so its change is seen.
    pub fn record(&mut self, outcome: &FixOutcome) {
        for result in &outcome.files {
            let Some(patched) = &result.patched else {
                continue;
            };
            for name in &patched.names {
                if let Ok(meta) = name.symlink_metadata()
                    && holds_the_patch(name, result)
                {
                    self.0.insert(name.clone(), Fingerprint::of(&meta));
                }
            }
        }
    }

    /// Whether `path` is still exactly what the watcher wrote there. One write causes several
    /// events (the rename, then the close of the new content), so a match is kept; a mismatch
    /// is forgotten.
    pub fn is_own(&mut self, path: &Path) -> bool {
        let Some(fingerprint) = self.0.get(path) else {
            return false;
        };
        let same = path
            .symlink_metadata()
            .is_ok_and(|meta| Fingerprint::of(&meta) == *fingerprint);
        if !same {
            self.0.remove(path);
        }
        same
    }

    /// `path` was removed or renamed away.
    pub fn forget(&mut self, path: &Path) {
        if self.0.remove(path).is_none() {
            self.0.retain(|p, _| !p.starts_with(path));
        }
    }
}

fn holds_the_patch(name: &Path, result: &FileResult) -> bool {
    let plan = &result.plan;
    let Ok(info) = FileInfo::read(name) else {
        return false;
    };
    let interpreter = plan
        .new_interpreter
        .as_ref()
        .or(plan.old_interpreter.as_ref());
    let run_path = plan.new_run_path.as_ref().or(plan.old_run_path.as_ref());
    info.interpreter.as_ref() == interpreter && info.run_path.as_ref() == run_path
}
