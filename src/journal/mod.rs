//! The undo journal: a write-ahead log per prefix, `<prefix>/.autopatch/journal.jsonl`, through
//! which every change autopatch makes can be taken back byte for byte, and a run that was
//! killed can be completed.
//!
//! Each line is one JSON [`Entry`]. Before an inode is replaced, a `patch` line is appended and
//! flushed: the inode's names, and what it takes to rebuild the original from the new content
//! (its length, and the original bytes of the ranges the rewrite changed: headers and the old
//! growth region, not a copy of the file), with what identifies the new content. Before conda
//! records are rewritten, a `records` line keeps the values they had. A `done` line ends each
//! complete run, so lines after the last one belong to a run that was interrupted.

mod entry;
mod inverse;
mod log;
mod recover;
mod undo;

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use entry::{Entry, Name, NewForm, PatchEntry, RecordsEntry, Restore};
pub use log::{Journal, Journals, path_of, read};
pub use recover::{Recovered, recover};
pub use undo::{FileOutcome, PrefixUndo, UndoError, UndoOptions, UndoOutcome, undo};

/// The directory, inside a prefix, that holds its journal.
pub const DIR: &str = ".autopatch";
/// The journal's file name.
pub const FILE: &str = "journal.jsonl";

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("cannot read the undo journal {}: {source}; check its permissions", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "cannot write the undo journal {}: {source}; check that the prefix is writable",
        path.display()
    )]
    Write { path: PathBuf, source: io::Error },
}

impl JournalError {
    /// The system's error, for a caller whose message says what failed already.
    pub fn into_source(self) -> io::Error {
        match self {
            JournalError::Read { source, .. } | JournalError::Write { source, .. } => source,
        }
    }
}

/// Whether the file at `path` is, as far as can be told, the content described by `form`:
/// its length, the bytes autopatch wrote and, when known, the hash of the whole.
fn has_new_form(path: &Path, form: &NewForm) -> io::Result<bool> {
    let file = crate::scan::MappedFile::open(path)?;
    if file.meta.len() != form.len {
        return Ok(false);
    }
    let spans: Vec<inverse::Span> = form.written.iter().map(|&[s, l]| (s, s + l)).collect();
    if log::digest_spans(&file.file, &spans)? != form.written_sha256 {
        return Ok(false);
    }
    match &form.sha256 {
        Some(sha) => Ok(crate::apply::hash_file(&file.file)? == *sha),
        None => Ok(true),
    }
}

/// Whether the file at `path` holds exactly `rewrite` applied to `data`: compared a window at a
/// time, so that a huge file is never built in memory.
fn holds(path: &Path, data: &[u8], rewrite: &crate::elf::Rewrite) -> bool {
    const CHUNK: u64 = 1 << 20;
    let Ok(file) = crate::scan::MappedFile::open(path) else {
        return false;
    };
    let bytes = file.bytes();
    if bytes.len() as u64 != rewrite.len {
        return false;
    }
    (0..rewrite.len).step_by(CHUNK as usize).all(|start| {
        let end = (start + CHUNK).min(rewrite.len);
        rewrite.window(data, start, end) == bytes[start as usize..end as usize]
    })
}
