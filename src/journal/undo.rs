//! `undo`: puts back, from the journal, every file and conda record autopatch changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use thiserror::Error;
use walkdir::WalkDir;

use super::entry::{Entry, PatchEntry, RecordsEntry};
use super::{DIR, JournalError, has_new_form, holds, log};
use crate::apply;

/// How an undo runs.
pub struct UndoOptions {
    /// Put the conda records' old values back too.
    pub update_records: bool,
}

/// What became of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FileOutcome {
    Restored,
    /// Already its original (undone before, or a run was killed before replacing it).
    AlreadyOriginal,
    /// Deleted since autopatch changed it: nothing to restore.
    Deleted,
    /// Changed since autopatch wrote it: left alone, as restoring would lose that change.
    Changed,
    Failed {
        error: String,
    },
}

/// The undo of one prefix's journal.
#[derive(Debug, Serialize)]
pub struct PrefixUndo {
    #[serde(serialize_with = "crate::plan::lossy::path")]
    pub prefix: PathBuf,
    pub files: Vec<FileReport>,
    /// conda-meta records given their old values back.
    pub records: usize,
    pub record_errors: Vec<String>,
    /// Whether the journal is gone, everything in it handled; else it keeps what failed.
    pub journal_removed: bool,
}

#[derive(Debug, Serialize)]
pub struct FileReport {
    #[serde(serialize_with = "crate::plan::lossy::path")]
    pub path: PathBuf,
    #[serde(flatten)]
    pub outcome: FileOutcome,
}

#[derive(Debug, Serialize)]
pub struct UndoOutcome {
    pub prefixes: Vec<PrefixUndo>,
}

impl UndoOutcome {
    /// Every file put back, or deleted by the user; every record put back.
    pub fn is_success(&self) -> bool {
        self.prefixes.iter().all(|p| {
            p.record_errors.is_empty()
                && p.files.iter().all(|f| {
                    !matches!(f.outcome, FileOutcome::Changed | FileOutcome::Failed { .. })
                })
        })
    }
}

#[derive(Debug, Error)]
pub enum UndoError {
    #[error("{0}: cannot lock the directory against a concurrent run: {1}")]
    Lock(PathBuf, io::Error),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Flush(#[from] apply::ApplyError),
}

/// Undoes what autopatch changed under `path`: a prefix, a directory of prefixes (a conda
/// root), or a file or directory inside a prefix.
pub fn undo(path: &Path, options: &UndoOptions) -> Result<UndoOutcome, UndoError> {
    let prefixes = journal_prefixes(path);
    let mut locks = Vec::new();
    for prefix in &prefixes {
        let (lock, _) =
            crate::fix::lock_dir(prefix).map_err(|e| UndoError::Lock(prefix.clone(), e))?;
        locks.push(lock);
    }
    let locked_at = SystemTime::now();
    let mut done = Vec::new();
    for prefix in prefixes {
        done.push(undo_prefix(&prefix, path, options, locked_at)?);
    }
    Ok(UndoOutcome { prefixes: done })
}

/// The prefixes with a journal that `path` is in, is, or holds.
fn journal_prefixes(path: &Path) -> BTreeSet<PathBuf> {
    let mut found: BTreeSet<PathBuf> = path
        .ancestors()
        .skip(1)
        .find(|a| log::path_of(a).is_file())
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    let walk = WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.file_name() != DIR);
    for entry in walk.filter_map(Result::ok) {
        if entry.file_type().is_dir() && log::path_of(entry.path()).is_file() {
            found.insert(entry.path().to_path_buf());
        }
    }
    found
}

/// Undoes the entries of the journal of `prefix` that concern `path`, newest first, and keeps
/// in the journal only what could not be done.
fn undo_prefix(
    prefix: &Path,
    path: &Path,
    options: &UndoOptions,
    locked_at: SystemTime,
) -> Result<PrefixUndo, UndoError> {
    let entries = log::read(prefix)?.unwrap_or_default();
    sweep(prefix, &entries, locked_at);
    super::recover::settle_interrupted_in_place(prefix, &entries);
    let mut outcomes: BTreeMap<PathBuf, FileOutcome> = BTreeMap::new();
    let patches: Vec<&PatchEntry> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Patch(p) if concerns(p, prefix, path) => Some(p),
            _ => None,
        })
        .collect();
    for entry in patches.iter().rev() {
        restore(prefix, entry, &mut outcomes);
    }
    classify_untouched(prefix, &patches, &mut outcomes);
    flush(
        outcomes
            .keys()
            .filter(|n| outcomes[*n] == FileOutcome::Restored),
    )?;

    let mut report = PrefixUndo {
        prefix: prefix.to_path_buf(),
        files: Vec::new(),
        records: 0,
        record_errors: Vec::new(),
        journal_removed: false,
    };
    let mut remaining = Vec::new();
    for entry in entries.iter().rev() {
        let kept = match entry {
            Entry::Patch(p) => keep_patch(p, prefix, path, &outcomes),
            Entry::Records(r) if options.update_records => {
                restore_records(prefix, r, path, &outcomes, &mut report)
            }
            other => Some(other.clone()),
        };
        remaining.extend(kept);
    }
    remaining.reverse();
    let remaining = without_idle_markers(remaining);
    log::replace(prefix, &remaining)?;
    report.journal_removed = remaining.is_empty();
    report.files = outcomes
        .into_iter()
        .map(|(path, outcome)| FileReport { path, outcome })
        .collect();
    Ok(report)
}

/// Whether an entry names a file under `path`.
fn concerns(entry: &PatchEntry, prefix: &Path, path: &Path) -> bool {
    entry
        .names
        .iter()
        .any(|n| n.under(prefix).starts_with(path))
}

/// Puts the original back for every name of `entry` that holds the new content, as one inode;
/// names that already hold the original (a run killed halfway through replacing them) join it,
/// so that the names stay links of one inode.
fn restore(prefix: &Path, entry: &PatchEntry, outcomes: &mut BTreeMap<PathBuf, FileOutcome>) {
    let mut new_form: HashMap<(u64, u64), bool> = HashMap::new();
    let mut names = Vec::new();
    let mut others = Vec::new();
    for name in entry.names.iter().map(|n| n.under(prefix)) {
        let meta = match std::fs::symlink_metadata(&name) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                outcomes.entry(name).or_insert(FileOutcome::Deleted);
                continue;
            }
            Err(e) => {
                let error = format!(
                    "{}: cannot look at it: {e}; {}",
                    name.display(),
                    apply::advice(&e)
                );
                outcomes.insert(name, FileOutcome::Failed { error });
                continue;
            }
        };
        if !meta.is_file() {
            continue;
        }
        let is_new = *new_form
            .entry((meta.dev(), meta.ino()))
            .or_insert_with(|| has_new_form(&name, &entry.new).unwrap_or(false));
        if is_new {
            names.push(name);
        } else {
            others.push(name);
        }
    }
    if names.is_empty() {
        return;
    }
    let original = entry.original.rewrite();
    if let Ok(new) = crate::scan::MappedFile::open(&names[0]) {
        names.extend(
            others
                .into_iter()
                .filter(|n| holds(n, new.bytes(), &original)),
        );
    }
    let outcome = match apply::rewrite_inode(&names, &original) {
        Ok(()) => FileOutcome::Restored,
        Err(e) => FileOutcome::Failed {
            error: e.to_string(),
        },
    };
    for name in names {
        outcomes.insert(name, outcome.clone());
    }
}

/// Tells, for names no entry found in autopatch's form, whether they are original or were
/// changed since: by the oldest entry, which holds the true original's header bytes.
fn classify_untouched(
    prefix: &Path,
    patches: &[&PatchEntry],
    outcomes: &mut BTreeMap<PathBuf, FileOutcome>,
) {
    for entry in patches {
        for name in entry.names.iter().map(|n| n.under(prefix)) {
            if outcomes.contains_key(&name) {
                continue;
            }
            let original = crate::scan::MappedFile::open(&name)
                .is_ok_and(|f| entry.original.looks_original(f.bytes()));
            let outcome = if original {
                FileOutcome::AlreadyOriginal
            } else {
                FileOutcome::Changed
            };
            outcomes.insert(name, outcome);
        }
    }
}

/// Flushes the filesystems of the restored files before the journal that describes them goes.
fn flush<'a>(names: impl Iterator<Item = &'a PathBuf>) -> Result<(), apply::ApplyError> {
    let mut per_device: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for dir in names.filter_map(|n| n.parent()) {
        if let Ok(meta) = std::fs::metadata(dir) {
            per_device
                .entry(meta.dev())
                .or_insert_with(|| dir.to_path_buf());
        }
    }
    apply::sync_filesystems(&per_device.into_values().collect::<Vec<_>>())
}

/// The entry, if it must stay in the journal: it does not concern `path`, or it failed.
fn keep_patch(
    entry: &PatchEntry,
    prefix: &Path,
    path: &Path,
    outcomes: &BTreeMap<PathBuf, FileOutcome>,
) -> Option<Entry> {
    let failed = entry.names.iter().any(|n| {
        matches!(
            outcomes.get(&n.under(prefix)),
            Some(FileOutcome::Failed { .. })
        )
    });
    (!concerns(entry, prefix, path) || failed).then(|| Entry::Patch(entry.clone()))
}

/// Gives the record the old values of the files under `path` that are original again (or
/// deleted); returns what of the entry must stay in the journal.
fn restore_records(
    prefix: &Path,
    entry: &RecordsEntry,
    path: &Path,
    outcomes: &BTreeMap<PathBuf, FileOutcome>,
    report: &mut PrefixUndo,
) -> Option<Entry> {
    let (mine, others): (Vec<_>, Vec<_>) = entry
        .fields
        .iter()
        .cloned()
        .partition(|f| prefix.join(&f.path).starts_with(path));
    let mut kept = others;
    let mut back = Vec::new();
    for field in mine {
        match outcomes.get(&prefix.join(&field.path)) {
            Some(FileOutcome::Failed { .. }) => kept.push(field),
            // The file is neither autopatch's nor the original: no value fits it.
            Some(FileOutcome::Changed) => {}
            _ => back.push(field),
        }
    }
    if !back.is_empty() {
        match crate::conda::restore_record_fields(&entry.record.under(prefix), &back) {
            Ok(changed) => report.records += usize::from(changed),
            Err(e) => {
                report.record_errors.push(e.to_string());
                kept.extend(back);
            }
        }
    }
    (!kept.is_empty()).then(|| {
        Entry::Records(RecordsEntry {
            record: entry.record.clone(),
            fields: kept,
        })
    })
}

/// Drops `done` lines that end no entry.
fn without_idle_markers(entries: Vec<Entry>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for entry in entries {
        let idle = matches!(entry, Entry::Done) && out.last().is_none_or(|l| *l == Entry::Done);
        if !idle {
            out.push(entry);
        }
    }
    out
}

/// Removes what killed runs left behind in the prefix and beside the files of the journal (a
/// file can be staged before its entry is written).
fn sweep(prefix: &Path, entries: &[Entry], before: SystemTime) {
    let mut dirs: BTreeSet<PathBuf> = WalkDir::new(prefix)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    for entry in entries {
        if let Entry::Patch(p) = entry {
            dirs.extend(
                p.names
                    .iter()
                    .filter_map(|n| n.under(prefix).parent().map(Path::to_path_buf)),
            );
        }
    }
    apply::sweep_temp_files(dirs.iter().map(PathBuf::as_path), before);
}
