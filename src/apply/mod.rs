//! Writing planned rewrites to disk so that no reader ever sees a torn file: the new content is
//! built in a temporary file beside the target and renamed over it, keeping permission bits,
//! owner where permitted, and extended attributes (such as `security.capability`).

mod copy;

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::elf::{self, Edits, Elf, Rewrite};
use crate::scan::MappedFile;

/// A write that failed, naming the file and what went wrong.
#[derive(Debug, Error)]
#[error("{path}: {action}: {source}")]
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
    copy_metadata(target, meta, tmp.as_file())?;
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

/// Gives `dst` the permission bits, owner and extended attributes of the file `meta` describes.
fn copy_metadata(target: &Path, meta: &Metadata, dst: &File) -> Result<(), ApplyError> {
    // Owner first: changing it clears setuid bits, which the mode below restores.
    if let Err(e) = std::os::unix::fs::fchown(dst, Some(meta.uid()), Some(meta.gid()))
        && e.kind() != io::ErrorKind::PermissionDenied
    {
        return Err(ApplyError::new(target, "cannot keep the owner", e));
    }
    dst.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| ApplyError::new(target, "cannot keep the permission bits", e))?;
    copy_xattrs(target, dst)
}

fn copy_xattrs(target: &Path, dst: &File) -> Result<(), ApplyError> {
    use xattr::FileExt as _;
    let names = match xattr::list(target) {
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
        if let Some(value) = xattr::get(target, &name)
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
    for dir in dirs {
        let file = File::open(dir).map_err(|e| ApplyError::new(dir, "cannot open to flush", e))?;
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

/// Rewrites one inode with `edits`, giving every name in `names` the new content while they
/// keep sharing one inode; names outside `names` keep the old inode and content. `Ok(None)`
/// when the file already is as asked. The new content is not flushed: a batch ends with
/// [`sync_filesystems`].
pub fn patch_inode(
    names: &[PathBuf],
    edits: &Edits,
    want_hash: bool,
) -> Result<Option<Patched>, PatchError> {
    let first = &names[0];
    let input = MappedFile::open(first).map_err(|e| PatchError::io(first, "cannot open", e))?;
    let elf = Elf::parse(input.bytes()).map_err(|e| PatchError::Elf(first.clone(), e))?;
    let Some(rewrite) = elf::plan(&elf, edits).map_err(|e| PatchError::Elf(first.clone(), e))?
    else {
        return Ok(None);
    };
    let staged = stage(first, &input.file, input.bytes(), &rewrite, &input.meta)?;
    let sha256 = want_hash
        .then(|| hash_file(staged.as_file()))
        .transpose()
        .map_err(|e| PatchError::io(first, "cannot hash the new content", e))?;
    for other in &names[1..] {
        link_over(staged.path(), other)?;
    }
    staged
        .persist(first)
        .map_err(|e| PatchError::io(first, "cannot rename the new content into place", e.error))?;
    Ok(Some(Patched {
        names: names.to_vec(),
        len: rewrite.len,
        sha256,
        bytes_written: rewrite.bytes_written(),
    }))
}

/// Makes `name` another link of `staged`, atomically replacing what `name` was.
fn link_over(staged: &Path, name: &Path) -> Result<(), PatchError> {
    let dir = name.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".autopatch-")
        .make_in(dir, |p| fs::hard_link(staged, p))
        .map_err(|e| PatchError::io(name, "cannot link the new content beside it", e))?;
    tmp.persist(name)
        .map_err(|e| PatchError::io(name, "cannot rename the new content into place", e.error))?;
    Ok(())
}

fn hash_file(file: &File) -> io::Result<String> {
    use sha2::{Digest, Sha256};
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
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Why an inode could not be patched.
#[derive(Debug, Error)]
pub enum PatchError {
    #[error("{0}: {1}")]
    Elf(PathBuf, crate::elf::ElfError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl PatchError {
    fn io(path: &Path, action: &'static str, source: io::Error) -> Self {
        PatchError::Apply(ApplyError::new(path, action, source))
    }
}
