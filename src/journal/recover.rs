//! Completing what a killed run left half done, so that the next run ends where an
//! uninterrupted one would have.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::entry::{Entry, InPlaceHeaders, PatchEntry};
use super::{JournalError, Journals, has_new_form, holds, log};
use crate::scan::MappedFile;

/// What the completion of interrupted runs did in one prefix.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Names linked back to the new content of their inode.
    pub relinked: usize,
    /// Files an interrupted run wrote or was about to write: their conda records may be stale.
    pub records: Vec<PathBuf>,
}

/// Completes the entries that follow the last `done` line of the journal of `prefix`: the names
/// of an inode that did not all receive its new content before the kill are linked to it, as
/// they would have been. The journal is opened in `journals`, so that the run's end marks them
/// complete.
pub fn recover(prefix: &Path, journals: &Journals) -> Result<Recovered, JournalError> {
    let interrupted = log::read_unfinished(prefix)?;
    let mut recovered = Recovered::default();
    for entry in &interrupted {
        match entry {
            Entry::Patch(p) => {
                match &p.in_place {
                    Some(headers) => settle_in_place(prefix, p, headers),
                    None => recovered.relinked += relink(prefix, p),
                }
                recovered
                    .records
                    .extend(p.names.iter().map(|n| n.under(prefix)));
            }
            Entry::Records(r) => recovered
                .records
                .extend(r.fields.iter().map(|f| prefix.join(&f.path))),
            Entry::Done => {}
        }
    }
    if !interrupted.is_empty() {
        journals.of(prefix)?;
    }
    recovered.records.sort();
    recovered.records.dedup();
    Ok(recovered)
}

/// Links each name of `entry` that still holds the original content to the name that holds the
/// new one. Returns how many were linked.
fn relink(prefix: &Path, entry: &PatchEntry) -> usize {
    let names: Vec<PathBuf> = entry.names.iter().map(|n| n.under(prefix)).collect();
    let Some(new) = names
        .iter()
        .find(|n| has_new_form(n, &entry.new).unwrap_or(false))
    else {
        return 0;
    };
    let Ok(new_file) = MappedFile::open(new) else {
        return 0;
    };
    let original = entry.original.rewrite();
    let mut relinked = 0;
    for name in &names {
        let same_inode = std::fs::symlink_metadata(name)
            .is_ok_and(|m| m.dev() == new_file.meta.dev() && m.ino() == new_file.meta.ino());
        if same_inode || !holds(name, new_file.bytes(), &original) {
            continue;
        }
        match crate::apply::link_over(new, name) {
            Ok(()) => {
                tracing::info!("{}: completed the interrupted rewrite", name.display());
                relinked += 1;
            }
            Err(e) => tracing::warn!("cannot complete an interrupted rewrite: {e}"),
        }
    }
    relinked
}

/// The entries of a run that did not end: those after the last `done` line.
fn after_last_done(entries: &[Entry]) -> &[Entry] {
    let start = entries
        .iter()
        .rposition(|e| matches!(e, Entry::Done))
        .map_or(0, |i| i + 1);
    &entries[start..]
}

/// Settles the in-place rewrites among the entries after the last `done` line: what undo does
/// first, so that each file is its original or its new form.
pub(super) fn settle_interrupted_in_place(prefix: &Path, entries: &[Entry]) {
    for entry in after_last_done(entries) {
        if let Entry::Patch(p) = entry
            && let Some(headers) = &p.in_place
        {
            settle_in_place(prefix, p, headers);
        }
    }
}

/// Ends an in-place rewrite that a kill interrupted. Past its last header step, only the
/// staging area is left to cut off; before it, the original is put back (the ranges first,
/// while the staging table serves the loader, then the header, then the length), and this run
/// patches the file again.
fn settle_in_place(prefix: &Path, entry: &PatchEntry, headers: &InPlaceHeaders) {
    let Some(name) = entry
        .names
        .iter()
        .map(|n| n.under(prefix))
        .find(|n| n.is_file())
    else {
        return;
    };
    if has_new_form(&name, &entry.new).unwrap_or(false) {
        return;
    }
    match put_back_in_place(&name, entry, headers) {
        Ok(true) => tracing::info!("{}: settled an interrupted rewrite", name.display()),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            "{}: cannot settle an interrupted rewrite: {e}; run `autopatch undo` on it",
            name.display()
        ),
    }
}

/// Returns whether the file was changed.
fn put_back_in_place(
    name: &Path,
    entry: &PatchEntry,
    headers: &InPlaceHeaders,
) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name)?;
    let mut ehdr = vec![0u8; headers.new.0.len()];
    file.read_exact_at(&mut ehdr, 0)?;
    let len = file.metadata()?.len();
    if ehdr == headers.new.0 {
        file.set_len(entry.new.len)?;
    } else if ehdr == headers.original.0 {
        if len == entry.original.len {
            return Ok(false);
        }
        file.set_len(entry.original.len)?;
    } else if len > entry.new.len {
        // The staging table serves the loader: nothing else can have written this header.
        let ehdr_len = ehdr.len() as u64;
        for b in &entry.original.bytes {
            let skip = ehdr_len.saturating_sub(b.offset) as usize;
            if let Some(rest) = b.hex.0.get(skip..).filter(|r| !r.is_empty()) {
                file.write_all_at(rest, b.offset + skip as u64)?;
            }
        }
        file.write_all_at(&headers.original.0, 0)?;
        file.set_len(entry.original.len)?;
    } else {
        return Ok(false);
    }
    file.sync_all()?;
    Ok(true)
}
