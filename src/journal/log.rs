//! The journal file: appended line by line, each line flushed to disk before the change it
//! describes is made, read back tolerating a last line cut short by a crash.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write as _};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::entry::{Entry, Hex, InPlaceHeaders, Name, NewForm, PatchEntry, Restore};
use super::inverse::{self, Span};
use super::{DIR, FILE, JournalError};
use crate::apply::Staged;

/// Where the journal of `prefix` is.
pub fn path_of(prefix: &Path) -> PathBuf {
    prefix.join(DIR).join(FILE)
}

/// An open journal, shared by the threads of one run.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Serializes appends so that lines never interleave.
    append: Mutex<()>,
    appended: AtomicU64,
    /// How many appended lines are known to be on disk: one flush serves every line before it.
    synced: Mutex<u64>,
}

impl Journal {
    /// Opens (creating it if needed) the journal of `prefix` for appending, cutting off a last
    /// line that a crash left incomplete.
    pub fn open(prefix: &Path) -> Result<Journal, JournalError> {
        let path = path_of(prefix);
        let write_error = |source| JournalError::Write {
            path: path.clone(),
            source,
        };
        let dir = prefix.join(DIR);
        let created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(write_error(e)),
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(write_error)?;
        cut_torn_line(&file).map_err(write_error)?;
        if created {
            sync_dir(prefix).map_err(write_error)?;
        }
        sync_dir(&dir).map_err(write_error)?;
        Ok(Journal {
            path,
            file,
            append: Mutex::new(()),
            appended: AtomicU64::new(0),
            synced: Mutex::new(0),
        })
    }

    /// Appends `entry` and returns once it is on disk.
    pub fn append(&self, entry: &Entry) -> io::Result<()> {
        let seq = self.append_unsynced(entry)?;
        self.sync_upto(seq)
    }

    /// Appends `entry`, leaving it to a later [`Journal::sync`]; returns its number.
    pub fn append_unsynced(&self, entry: &Entry) -> io::Result<u64> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
        (&self.file).write_all(&line)?;
        Ok(self.appended.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Returns once every line appended so far is on disk.
    pub fn sync(&self) -> io::Result<()> {
        self.sync_upto(self.appended.load(Ordering::SeqCst))
    }

    fn sync_upto(&self, seq: u64) -> io::Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if *synced < seq {
            let upto = self.appended.load(Ordering::SeqCst);
            self.file.sync_data()?;
            *synced = upto;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The journals a run writes to, opened on first use.
#[derive(Default)]
pub struct Journals(Mutex<BTreeMap<PathBuf, Arc<Journal>>>);

impl Journals {
    /// The journal of `prefix`.
    pub fn of(&self, prefix: &Path) -> Result<Arc<Journal>, JournalError> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = open.get(prefix) {
            return Ok(j.clone());
        }
        let journal = Arc::new(Journal::open(prefix)?);
        open.insert(prefix.to_path_buf(), journal.clone());
        Ok(journal)
    }

    /// Records, in the journal of `prefix`, the inode about to be replaced by `staged`. A
    /// replacement waits for the line to be on disk; an in-place rewrite does not, as its
    /// first change to existing bytes waits for [`Journals::sync`].
    pub fn record_patch(&self, prefix: &Path, staged: &Staged) -> io::Result<()> {
        let entry = Entry::Patch(patch_entry(prefix, staged));
        let journal = self.of(prefix).map_err(JournalError::into_source)?;
        match staged.in_place {
            Some(_) => journal.append_unsynced(&entry).map(drop),
            None => journal.append(&entry),
        }
    }

    /// Puts every line appended so far, in every journal, on disk.
    pub fn sync(&self) -> Result<(), JournalError> {
        let open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for journal in open.values() {
            journal.sync().map_err(|source| JournalError::Write {
                path: journal.path().to_path_buf(),
                source,
            })?;
        }
        Ok(())
    }

    /// Marks the end of a complete run in every journal it used.
    pub fn finish(&self) -> Result<(), JournalError> {
        let open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for journal in open.values() {
            journal
                .append(&Entry::Done)
                .map_err(|source| JournalError::Write {
                    path: journal.path().to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    }
}

fn patch_entry(prefix: &Path, staged: &Staged) -> PatchEntry {
    let written = inverse::written_spans(staged.rewrite);
    PatchEntry {
        names: staged
            .names
            .iter()
            .map(|n| Name::relative(n, prefix))
            .collect(),
        original: Restore::of(&inverse::inverse(staged.input, staged.rewrite)),
        new: NewForm {
            len: staged.rewrite.len,
            written_sha256: digest_windows(staged.input, staged.rewrite, &written),
            written: written.iter().map(|&(s, e)| [s, e - s]).collect(),
            sha256: staged.sha256.map(str::to_string),
        },
        in_place: staged.in_place.map(|steps| InPlaceHeaders {
            original: Hex(staged.input[..steps.leave.bytes.len()].to_vec()),
            new: Hex(steps.leave.bytes.clone()),
        }),
    }
}

/// SHA-256 (hex) of the bytes at `spans` of `rewrite` applied to `input`, computed without
/// building the output: the same as [`digest_spans`] of the written file.
fn digest_windows(input: &[u8], rewrite: &crate::elf::Rewrite, spans: &[Span]) -> String {
    let mut hasher = crate::apply::Sha256::new();
    for &(start, end) in spans {
        hasher.update(&rewrite.window(input, start, end));
    }
    hasher.hex()
}

/// SHA-256 (hex) of the bytes of `file` at `spans`.
pub fn digest_spans(file: &File, spans: &[Span]) -> io::Result<String> {
    let mut hasher = crate::apply::Sha256::new();
    let mut buf = Vec::new();
    for &(start, end) in spans {
        buf.resize((end - start) as usize, 0);
        file.read_exact_at(&mut buf, start)?;
        hasher.update(&buf);
    }
    Ok(hasher.hex())
}

/// Reads the journal of `prefix`: `Ok(None)` when there is none. A last line cut short by a
/// crash is left out; so is any other line that cannot be read, with a warning.
pub fn read(prefix: &Path) -> Result<Option<Vec<Entry>>, JournalError> {
    let path = path_of(prefix);
    let Some(text) = read_complete_lines(&path)? else {
        return Ok(None);
    };
    Ok(Some(parse_lines(&path, &text, 0)))
}

/// The entries of the journal of `prefix` after its last `done` line: what runs that were
/// killed left unfinished. Lines before it are not parsed: a journal grows with every run.
pub fn read_unfinished(prefix: &Path) -> Result<Vec<Entry>, JournalError> {
    let path = path_of(prefix);
    let Some(text) = read_complete_lines(&path)? else {
        return Ok(Vec::new());
    };
    let done = serde_json::to_vec(&Entry::Done).expect("a unit variant serializes");
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let first = lines
        .iter()
        .rposition(|l| *l == done.as_slice())
        .map_or(0, |i| i + 1);
    let rest = lines[first..].join(&b'\n');
    Ok(parse_lines(&path, &rest, first))
}

/// The journal at `path` up to its last newline: `Ok(None)` when there is none.
fn read_complete_lines(path: &Path) -> Result<Option<Vec<u8>>, JournalError> {
    let mut text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    text.truncate(complete);
    Ok(Some(text))
}

/// The entries of `text`, whose first line is line `skipped + 1` of the journal at `path`.
fn parse_lines(path: &Path, text: &[u8], skipped: usize) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (number, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(entry) => entries.push(entry),
            Err(e) => tracing::warn!(
                "{}: line {} is unreadable ({e}); it is left out",
                path.display(),
                skipped + number + 1
            ),
        }
    }
    entries
}

/// Replaces the journal of `prefix` with `entries`, or removes it (and its directory, when
/// empty) when there are none.
pub fn replace(prefix: &Path, entries: &[Entry]) -> Result<(), JournalError> {
    let path = path_of(prefix);
    let write_error = |source| JournalError::Write {
        path: path.clone(),
        source,
    };
    let dir = prefix.join(DIR);
    if entries.is_empty() {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_error(e)),
        }
        if fs::remove_dir(&dir).is_ok() {
            return sync_dir(prefix).map_err(write_error);
        }
        return sync_dir(&dir).map_err(write_error);
    }
    let mut text = Vec::new();
    for entry in entries {
        serde_json::to_writer(&mut text, entry).map_err(|e| write_error(io::Error::other(e)))?;
        text.push(b'\n');
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".autopatch-")
        .tempfile_in(&dir)
        .map_err(write_error)?;
    tmp.write_all(&text).map_err(write_error)?;
    tmp.as_file().sync_all().map_err(write_error)?;
    tmp.persist(&path).map_err(|e| write_error(e.error))?;
    sync_dir(&dir).map_err(write_error)
}

/// Truncates the file after its last newline: what a crash in the middle of an append leaves
/// behind is never completed by the next line.
fn cut_torn_line(file: &File) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    let mut text = Vec::new();
    let mut reader = file;
    reader.rewind()?;
    reader.read_to_end(&mut text)?;
    let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    file.set_len(keep as u64)?;
    file.sync_data()
}

/// Makes the creation, removal or renaming of entries of `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_left_out_and_cut_before_the_next_append() {
        let prefix = tempfile::tempdir().unwrap();
        let journal = Journal::open(prefix.path()).unwrap();
        journal.append(&Entry::Done).unwrap();
        drop(journal);
        let path = path_of(prefix.path());
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"op":"pat"#).unwrap();
        assert_eq!(read(prefix.path()).unwrap().unwrap(), vec![Entry::Done]);

        let journal = Journal::open(prefix.path()).unwrap();
        journal.append(&Entry::Done).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"op\":\"done\"}\n{\"op\":\"done\"}\n"
        );
    }

    #[test]
    fn replacing_with_nothing_removes_the_journal_and_its_directory() {
        let prefix = tempfile::tempdir().unwrap();
        Journal::open(prefix.path())
            .unwrap()
            .append(&Entry::Done)
            .unwrap();
        replace(prefix.path(), &[Entry::Done]).unwrap();
        assert_eq!(read(prefix.path()).unwrap().unwrap(), vec![Entry::Done]);
        replace(prefix.path(), &[]).unwrap();
        assert!(read(prefix.path()).unwrap().is_none());
        assert!(!prefix.path().join(DIR).exists());
    }
}
