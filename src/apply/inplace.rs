//! Growing a file where it lies, instead of copying it: for an inode whose every name is being
//! patched, that nothing else has open or mapped, and whose rewrite only appends data and
//! overwrites header fields. The steps ([`elf::in_place_steps`]) keep the file loadable after
//! each one; between steps the caller flushes the batch, so that the order also holds on disk.
//! Any failure puts the original bytes back.
//!
//! [`prepare`] only reads the file and plans; [`complete`] does every write, so that the next
//! batch can be prepared while this one waits for its flushes.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;

use memmap2::{Mmap, UncheckedAdvice};
use rayon::prelude::*;

use super::{ApplyError, PatchError, Patched, Staged};
use crate::elf::{self, Edits, Elf, InPlaceSteps, Write};

/// An inode opened for writing under a write lease: the kernel grants it only while no other
/// process has the file open or mapped (a running program, a loaded library), and makes
/// anyone opening it meanwhile wait until the lease is released.
pub struct Leased {
    file: File,
    meta: Metadata,
}

impl Leased {
    /// Opens `names[0]` for an in-place rewrite, or `None` when it must be copied instead: it
    /// has links outside `names`, is setuid or setgid or has file capabilities (an in-place
    /// write would clear them), is executing, or is open elsewhere. A name in a directory the
    /// user made read-only is refused by the copy, as it should be.
    pub fn open(names: &[PathBuf]) -> Option<Leased> {
        if !names.iter().all(|n| dir_is_writable(n)) {
            return None;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&names[0])
            .ok()?;
        let meta = file.metadata().ok()?;
        let eligible = meta.is_file()
            && meta.nlink() == names.len() as u64
            && super::links_of(names, &meta).len() == names.len()
            && meta.mode() & 0o6000 == 0
            && !has_capabilities(&file);
        (eligible && take_write_lease(&file)).then_some(Leased { file, meta })
    }
}

fn dir_is_writable(name: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let dir = name
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(dir) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: access reads a NUL-terminated path and has no other effect.
    unsafe { libc::access(dir.as_ptr(), libc::W_OK) == 0 }
}

fn has_capabilities(file: &File) -> bool {
    use xattr::FileExt as _;
    file.get_xattr("security.capability")
        .map_or(true, |v| v.is_some())
}

fn take_write_lease(file: &File) -> bool {
    // A lease break is signalled with SIGIO, whose default action would end the process; the
    // lease is held for milliseconds, so the signal is not needed.
    static IGNORE_SIGIO: Once = Once::new();
    IGNORE_SIGIO.call_once(|| {
        // SAFETY: installs the ignore disposition for one signal; no handler code runs.
        unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    });
    // SAFETY: fcntl on a descriptor this process owns, with integer arguments only.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) == 0 }
}

/// An in-place rewrite whose new data is appended, waiting for the header steps.
pub struct InPlaceJob {
    file: File,
    names: Vec<PathBuf>,
    steps: InPlaceSteps,
    /// The original bytes of every range the steps overwrite, ELF header first.
    original: Vec<Write>,
    original_len: u64,
    sha256: Option<String>,
    bytes_written: u64,
}

/// What [`prepare`] did with an inode.
pub enum Prepared {
    /// Nothing to do: the file already is as asked.
    Unchanged,
    /// Planned and journaled, not yet written; [`complete`] writes it.
    InPlace(Box<InPlaceJob>),
    /// Not eligible for an in-place rewrite: the caller copies it.
    Copy,
}

/// Plans `edits` on a leased inode and, when the rewrite can be done in place, tells
/// `before_write` what will change.
pub fn prepare(
    leased: Leased,
    names: &[PathBuf],
    edits: &Edits,
    want_hash: bool,
    before_write: &dyn Fn(&Staged) -> io::Result<()>,
) -> Result<Prepared, PatchError> {
    let first = &names[0];
    // SAFETY: the write lease keeps every other process from opening the file while mapped.
    let map =
        unsafe { Mmap::map(&leased.file) }.map_err(|e| PatchError::io(first, "cannot map", e))?;
    let data: &[u8] = &map;
    let elf = Elf::parse(data).map_err(|e| PatchError::Elf(first.clone(), e))?;
    let Some(rewrite) = elf::plan(&elf, edits).map_err(|e| PatchError::Elf(first.clone(), e))?
    else {
        return Ok(Prepared::Unchanged);
    };
    let Some(steps) = elf::in_place_steps(&elf, &rewrite) else {
        return Ok(Prepared::Copy);
    };
    // Hashed before the write, from the original and the rewrite: the journal keeps it to tell
    // a later change by someone else.
    let sha256 = want_hash.then(|| hash_rewritten(&map, &rewrite));
    before_write(&Staged {
        names,
        input: data,
        rewrite: &rewrite,
        sha256: sha256.as_deref(),
        in_place: Some(&steps),
    })
    .map_err(|e| PatchError::io(first, "cannot write the undo journal", e))?;
    let original = original_bytes(data, &steps);
    drop(map);
    let job = InPlaceJob {
        file: leased.file,
        names: names.to_vec(),
        original,
        original_len: leased.meta.len(),
        sha256,
        bytes_written: rewrite.bytes_written(),
        steps,
    };
    Ok(Prepared::InPlace(Box::new(job)))
}

/// The bytes the steps overwrite, as they are now.
fn original_bytes(data: &[u8], steps: &InPlaceSteps) -> Vec<Write> {
    std::iter::once(&steps.enter)
        .chain(&steps.front)
        .map(|w| {
            let start = (w.offset as usize).min(data.len());
            let end = (start + w.bytes.len()).min(data.len());
            Write {
                offset: w.offset,
                bytes: data[start..end].to_vec(),
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Append,
    Enter,
    Front,
    Leave,
    Cut,
}

impl InPlaceJob {
    fn path(&self) -> &Path {
        &self.names[0]
    }

    /// Runs one step; on failure the original is put back and the error names the file.
    fn run(&self, step: Step) -> Result<(), PatchError> {
        let done = match step {
            Step::Append => write_all(&self.file, &self.steps.append),
            Step::Enter => write_all(&self.file, std::slice::from_ref(&self.steps.enter)),
            Step::Front => write_all(&self.file, &self.steps.front),
            Step::Leave => write_all(&self.file, std::slice::from_ref(&self.steps.leave)),
            Step::Cut => self.file.set_len(self.steps.len),
        };
        done.map_err(|e| {
            self.roll_back(step);
            PatchError::io(self.path(), "cannot write the new content in place", e)
        })
    }

    /// Puts the original back, `reached` being the step under way: the rewritten ranges while
    /// the staging table serves the loader, then the ELF header, then the original length.
    fn roll_back(&self, reached: Step) {
        let (ehdr, rest) = self.original.split_first().expect("the ELF header is kept");
        let restage = if matches!(reached, Step::Leave | Step::Cut) {
            write_all(&self.file, std::slice::from_ref(&self.steps.enter))
        } else {
            Ok(())
        };
        let restored = restage
            .and_then(|()| write_all(&self.file, rest))
            .and_then(|()| write_all(&self.file, std::slice::from_ref(ehdr)))
            .and_then(|()| self.file.set_len(self.original_len));
        if let Err(e) = restored {
            tracing::error!(
                "{}: cannot put the original back after a failed write: {e}; run `autopatch undo` on it",
                self.path().display()
            );
        }
    }

    fn finish(self) -> Result<Patched, PatchError> {
        Ok(Patched {
            len: self.steps.len,
            sha256: self.sha256,
            bytes_written: self.bytes_written,
            names: self.names,
        })
    }
}

/// SHA-256 (hex) of `rewrite` applied to the mapped `input`, a window at a time. The pages of
/// each window are let go once hashed: mapped pages count in the process's memory, and a
/// library can be hundreds of megabytes.
fn hash_rewritten(input: &Mmap, rewrite: &elf::Rewrite) -> String {
    const WINDOW: u64 = 1 << 20;
    let mut hasher = super::Sha256::new();
    let mut at = 0;
    while at < rewrite.len {
        let end = (at + WINDOW).min(rewrite.len);
        hasher.update(&rewrite.window(input, at, end));
        let (start, stop) = (
            (at as usize).min(input.len()),
            (end as usize).min(input.len()),
        );
        // SAFETY: `input` is a shared read-only mapping of a file under a write lease: dropping
        // its pages only makes a later read fault them in again, with the same content.
        let released =
            unsafe { input.unchecked_advise_range(UncheckedAdvice::DontNeed, start, stop - start) };
        // Keeping the pages is only a cost in memory.
        drop(released);
        at = end;
    }
    hasher.hex()
}

fn write_all(file: &File, writes: &[Write]) -> io::Result<()> {
    writes
        .iter()
        .try_for_each(|w| file.write_all_at(&w.bytes, w.offset))
}

/// Appends every job's new data, then takes them through the header steps together, calling
/// `flush` between steps so that each step of every file reaches the disk before the next
/// begins. Each result keeps the tag its job came with.
pub fn complete<T: Send>(
    jobs: Vec<(T, Box<InPlaceJob>)>,
    flush: &(dyn Fn() -> Result<(), ApplyError> + Sync),
) -> Vec<(T, Result<Patched, PatchError>)> {
    let mut live: Vec<(T, Result<Box<InPlaceJob>, PatchError>)> =
        jobs.into_iter().map(|(t, j)| (t, Ok(j))).collect();
    for step in [
        Step::Append,
        Step::Enter,
        Step::Front,
        Step::Leave,
        Step::Cut,
    ] {
        if live.iter().all(|(_, j)| j.is_err()) {
            break;
        }
        if step != Step::Append
            && let Err(e) = flush()
        {
            return abandon(live, &e, step);
        }
        live.par_iter_mut().for_each(|(_, job)| {
            if let Ok(j) = job
                && let Err(e) = j.run(step)
            {
                *job = Err(e);
            }
        });
    }
    live.into_par_iter()
        .map(|(t, job)| (t, job.and_then(|j| j.finish())))
        .collect()
}

/// Puts every job still under way back to its original, with `error` as the reason; `next` is
/// the step they were waiting for.
fn abandon<T>(
    live: Vec<(T, Result<Box<InPlaceJob>, PatchError>)>,
    error: &ApplyError,
    next: Step,
) -> Vec<(T, Result<Patched, PatchError>)> {
    live.into_iter()
        .map(|(t, job)| {
            let result = job.and_then(|j| {
                j.roll_back(next);
                Err(PatchError::io(
                    j.path(),
                    "cannot flush before the next step; left unchanged",
                    io::Error::other(error.to_string()),
                ))
            });
            (t, result)
        })
        .collect()
}
