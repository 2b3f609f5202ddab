//! Writing planned rewrites to disk so that no reader ever sees a torn file: the new content is
//! built in a temporary file beside the target and renamed over it, keeping permission bits,
//! owner where permitted, and extended attributes (such as `security.capability`).

mod copy;
mod digest;
mod inplace;

pub use digest::{Sha256, to_hex};
pub use inplace::{InPlaceJob, complete as complete_in_place};

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use thiserror::Error;

use crate::elf::{self, Edits, Elf, Rewrite};
use crate::scan::MappedFile;

/// A write that failed, naming the file, what went wrong and what to do about it.
#[derive(Debug, Error)]
#[error("{path}: {action}: {source}; {advice}", advice = advice(source))]
pub struct ApplyError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: io::Error,
}

impl ApplyError {
    fn new(path: &Path, action: &'static str, source: io::Error) -> Self {
        ApplyError {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// What to do about an I/O error, in words for the user.
pub fn advice(err: &io::Error) -> &'static str {
    // tempfile wraps the system's error to add the path, keeping only its kind.
    let code = err.raw_os_error().unwrap_or(match err.kind() {
        io::ErrorKind::PermissionDenied => libc::EACCES,
        io::ErrorKind::ReadOnlyFilesystem => libc::EROFS,
        io::ErrorKind::StorageFull => libc::ENOSPC,
        io::ErrorKind::NotFound => libc::ENOENT,
        _ => 0,
    });
    match code {
        libc::EROFS => {
            "the filesystem is read-only: remount it read-write, or fix a writable copy instead"
        }
        libc::EACCES => {
            "permission denied: run autopatch as the owner of these files, or give it read and write access"
        }
        libc::EPERM => {
            "not permitted: the file may be immutable or append-only (see lsattr; chattr -i clears it) or belong to another user"
        }
        libc::ENOSPC | libc::EDQUOT => "the disk is full: free some space and run again",
        libc::ENOENT => "it was removed meanwhile: run again to see the current state",
        libc::ELOOP => {
            "it is a symbolic link, which autopatch never follows: give the file it points to"
        }
        _ => "fix the cause and run autopatch again",
    }
}

/// What to do about a file that cannot be read or edited as ELF, in words for the user.
pub fn elf_advice(err: &crate::elf::ElfError) -> &'static str {
    use crate::elf::ElfError;
    match err {
        ElfError::NotElf | ElfError::Malformed(_) => {
            "the file is damaged or not a complete program: reinstall the package that provides it, or delete it if nothing uses it"
        }
        ElfError::Unsupported(_) => {
            "autopatch cannot edit it: replace it with a build that runs on NixOS, or patch it by hand"
        }
        ElfError::Refused(_) => "there is nothing in it that autopatch could change",
    }
}

/// Fills `dst` (empty, freshly created) with the result of `rewrite` over `src`.
pub fn materialize(src: &File, data: &[u8], dst: &File, rewrite: &Rewrite) -> io::Result<()> {
    copy::copy_range(src, data, dst, 0, rewrite.keep, 0)?;
    if let Some(t) = rewrite.tail {
        copy::copy_range(src, data, dst, t.from, t.len, t.to)?;
    }
    dst.set_len(rewrite.len)?;
    for w in &rewrite.writes {
        dst.write_all_at(&w.bytes, w.offset)?;
    }
    Ok(())
}

/// Builds the rewritten file next to `target` and returns it, not yet renamed into place.
pub fn stage(
    target: &Path,
    src: &File,
    data: &[u8],
    rewrite: &Rewrite,
    meta: &Metadata,
) -> Result<tempfile::NamedTempFile, ApplyError> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".autopatch-")
        .tempfile_in(dir)
        .map_err(|e| {
            ApplyError::new(
                target,
                "cannot create a temporary file beside it (is the directory writable?)",
                e,
            )
        })?;
    materialize(src, data, tmp.as_file(), rewrite)
        .map_err(|e| ApplyError::new(target, "cannot write the new content", e))?;
    copy_metadata(target, meta, src, tmp.as_file())?;
    Ok(tmp)
}

/// Replaces `target` with the rewritten content, atomically.
pub fn replace(
    target: &Path,
    src: &File,
    data: &[u8],
    rewrite: &Rewrite,
    meta: &Metadata,
) -> Result<(), ApplyError> {
    let tmp = stage(target, src, data, rewrite, meta)?;
    tmp.as_file()
        .sync_data()
        .map_err(|e| ApplyError::new(target, "cannot flush the new content", e))?;
    tmp.persist(target).map_err(|e| {
        ApplyError::new(target, "cannot rename the new content into place", e.error)
    })?;
    Ok(())
}

/// Gives `dst` the permission bits, owner and extended attributes of `src`, which `meta`
/// describes.
fn copy_metadata(target: &Path, meta: &Metadata, src: &File, dst: &File) -> Result<(), ApplyError> {
    // Owner first: changing it clears setuid bits, which the mode below restores.
    if let Err(e) = std::os::unix::fs::fchown(dst, Some(meta.uid()), Some(meta.gid()))
        && e.kind() != io::ErrorKind::PermissionDenied
    {
        return Err(ApplyError::new(target, "cannot keep the owner", e));
    }
    dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| ApplyError::new(target, "cannot keep the permission bits", e))?;
    copy_xattrs(target, src, dst)
}

/// Copies the extended attributes through the open input, which is also right when the
/// output is a new file (`--output`).
fn copy_xattrs(target: &Path, src: &File, dst: &File) -> Result<(), ApplyError> {
    use xattr::FileExt as _;
    let names = match src.list_xattr() {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(()),
        Err(e) => {
            return Err(ApplyError::new(
                target,
                "cannot list extended attributes",
                e,
            ));
        }
    };
    for name in names {
        if let Some(value) = src
            .get_xattr(&name)
            .map_err(|e| ApplyError::new(target, "cannot read an extended attribute", e))?
        {
            dst.set_xattr(&name, &value)
                .map_err(|e| ApplyError::new(target, "cannot keep an extended attribute", e))?;
        }
    }
    Ok(())
}

/// Flushes the filesystems holding `dirs` to disk: one `syncfs` per batch of rewrites instead of
/// one flush per file.
pub fn sync_filesystems(dirs: &[PathBuf]) -> Result<(), ApplyError> {
    use std::os::fd::AsRawFd;
    let mut synced = std::collections::HashSet::new();
    for dir in dirs {
        let file = File::open(dir).map_err(|e| ApplyError::new(dir, "cannot open to flush", e))?;
        // One flush per filesystem is enough.
        let device = file.metadata().map(|m| m.dev()).ok();
        if device.is_some_and(|d| !synced.insert(d)) {
            continue;
        }
        // SAFETY: syncfs takes a valid descriptor and has no memory effects.
        if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
            return Err(ApplyError::new(
                dir,
                "cannot flush to disk",
                io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// A file rewritten by [`patch_inode`].
#[derive(Debug, Clone)]
pub struct Patched {
    pub names: Vec<PathBuf>,
    pub len: u64,
    /// SHA-256 of the new content, hex, when asked for.
    pub sha256: Option<String>,
    pub bytes_written: u64,
}

/// An inode's new content, planned and (when copied) staged beside it, before any name is
/// replaced or any of its bytes overwritten: what the undo journal records.
pub struct Staged<'a> {
    /// The names about to receive it.
    pub names: &'a [PathBuf],
    /// The original content.
    pub input: &'a [u8],
    pub rewrite: &'a Rewrite,
    pub sha256: Option<&'a str>,
    /// How the file is rewritten where it lies, when it is.
    pub in_place: Option<&'a elf::InPlaceSteps>,
}

/// What became of an inode: written (or found as asked), or planned for growing in place,
/// which [`complete_in_place`] does together with the rest of its batch.
pub enum Started {
    Done(Option<Patched>),
    InPlace(Box<InPlaceJob>),
}

/// Patches one inode: in place when that is safe and spares a copy (see [`inplace`]), else as
/// [`patch_inode`] does.
pub fn start_patch(
    names: &[PathBuf],
    edits: &Edits,
    want_hash: bool,
    before_write: &dyn Fn(&Staged) -> io::Result<()>,
) -> Result<Started, PatchError> {
    if let Some(leased) = inplace::Leased::open(names) {
        match inplace::prepare(leased, names, edits, want_hash, before_write)? {
            inplace::Prepared::Unchanged => return Ok(Started::Done(None)),
            inplace::Prepared::InPlace(job) => return Ok(Started::InPlace(job)),
            inplace::Prepared::Copy => {}
        }
    }
    patch_inode(names, edits, want_hash, before_write).map(Started::Done)
}

/// Rewrites one inode with `edits`, giving every name in `names` the new content while they
/// keep sharing one inode; names outside `names` keep the old inode and content, and so do
/// names that no longer are links of the first one. `before_replace` is told what is about to
/// change once the new content is staged, before any name is replaced; its failure leaves the
/// file alone. `Ok(None)` when the file already is as asked. The new content is not flushed: a
/// batch ends with [`sync_filesystems`].
pub fn patch_inode(
    names: &[PathBuf],
    edits: &Edits,
    want_hash: bool,
    before_replace: &dyn Fn(&Staged) -> io::Result<()>,
) -> Result<Option<Patched>, PatchError> {
    let first = &names[0];
    let input = MappedFile::open(first).map_err(|e| PatchError::io(first, "cannot open", e))?;
    let elf = Elf::parse(input.bytes()).map_err(|e| PatchError::Elf(first.clone(), e))?;
    let Some(rewrite) = elf::plan(&elf, edits).map_err(|e| PatchError::Elf(first.clone(), e))?
    else {
        return Ok(None);
    };
    let names = links_of(names, &input.meta);
    let staged = stage(first, &input.file, input.bytes(), &rewrite, &input.meta)?;
    let sha256 = want_hash
        .then(|| hash_file(staged.as_file()))
        .transpose()
        .map_err(|e| PatchError::io(first, "cannot hash the new content", e))?;
    before_replace(&Staged {
        names: &names,
        input: input.bytes(),
        rewrite: &rewrite,
        sha256: sha256.as_deref(),
        in_place: None,
    })
    .map_err(|e| PatchError::io(first, "cannot write the undo journal", e))?;
    install(staged, &names)?;
    Ok(Some(Patched {
        names,
        len: rewrite.len,
        sha256,
        bytes_written: rewrite.bytes_written(),
    }))
}

/// Replaces the content of `names` with `rewrite` applied to the content of the first: how
/// undo puts an original back. Afterwards they are links of one inode.
pub fn rewrite_inode(names: &[PathBuf], rewrite: &Rewrite) -> Result<(), PatchError> {
    let first = &names[0];
    let input = MappedFile::open(first).map_err(|e| PatchError::io(first, "cannot open", e))?;
    let staged = stage(first, &input.file, input.bytes(), rewrite, &input.meta)?;
    install(staged, names)
}

/// `names[0]` and those of the other names that are still links of the same inode: a name
/// replaced since the scan (by a concurrent installer) is not the file that was planned.
fn links_of(names: &[PathBuf], meta: &Metadata) -> Vec<PathBuf> {
    let same = |n: &&PathBuf| {
        fs::symlink_metadata(n).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino())
    };
    let mut kept = vec![names[0].clone()];
    kept.extend(names[1..].iter().filter(same).cloned());
    kept
}

/// Gives every name in `names` the staged content, as links of one inode.
fn install(staged: tempfile::NamedTempFile, names: &[PathBuf]) -> Result<(), PatchError> {
    for other in &names[1..] {
        link_over(staged.path(), other)?;
    }
    staged.persist(&names[0]).map_err(|e| {
        PatchError::io(
            &names[0],
            "cannot rename the new content into place",
            e.error,
        )
    })?;
    Ok(())
}

/// Makes `name` another link of `existing`, atomically replacing what `name` was.
pub fn link_over(existing: &Path, name: &Path) -> Result<(), PatchError> {
    let dir = name.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".autopatch-")
        .make_in(dir, |p| fs::hard_link(existing, p))
        .map_err(|e| PatchError::io(name, "cannot link the new content beside it", e))?;
    tmp.persist(name)
        .map_err(|e| PatchError::io(name, "cannot rename the new content into place", e.error))?;
    Ok(())
}

/// Removes from `dirs` the temporary files (`.autopatch-*`) of runs killed before they could
/// rename them; only those last changed before `before`, as newer ones may be another run's.
/// Returns how many were removed.
pub fn sweep_temp_files<'a>(dirs: impl IntoIterator<Item = &'a Path>, before: SystemTime) -> usize {
    let mut removed = 0;
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let stale = entry.file_type().is_ok_and(|t| t.is_file())
                && crate::scan::is_own_temp_file(&path)
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < before);
            if stale && fs::remove_file(&path).is_ok() {
                tracing::info!("removed {}, left by an interrupted run", path.display());
                removed += 1;
            }
        }
    }
    removed
}

/// SHA-256 (hex) of the whole content of `file`.
pub fn hash_file(file: &File) -> io::Result<String> {
    use std::io::{Read, Seek};
    let mut file = file.try_clone()?;
    file.rewind()?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.hex())
}

/// Why an inode could not be patched.
#[derive(Debug, Error)]
pub enum PatchError {
    #[error("{0}: {1}; left unchanged: {advice}", advice = elf_advice(.1))]
    Elf(PathBuf, crate::elf::ElfError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl PatchError {
    fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        PatchError::Apply(ApplyError::new(path, action, source))
    }
}
