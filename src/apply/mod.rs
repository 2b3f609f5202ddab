//! Writing planned rewrites to disk so that no reader ever sees a torn file: the new content is
//! built in a temporary file beside the target and renamed over it, keeping permission bits,
//! owner where permitted, and extended attributes (such as `security.capability`).

mod copy;

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::elf::Rewrite;

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
    tmp.as_file()
        .sync_data()
        .map_err(|e| ApplyError::new(target, "cannot flush the new content", e))?;
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
    tmp.persist(target).map_err(|e| {
        ApplyError::new(target, "cannot rename the new content into place", e.error)
    })?;
    Ok(())
}

/// Gives `dst` the permission bits, owner and extended attributes of the file `meta` describes.
fn copy_metadata(target: &Path, meta: &Metadata, dst: &File) -> Result<(), ApplyError> {
    // Owner first: changing it clears setuid bits, which the mode below restores.
    if let Err(e) = std::os::unix::fs::fchown(dst, Some(meta.uid()), Some(meta.gid())) {
        if e.kind() != io::ErrorKind::PermissionDenied {
            return Err(ApplyError::new(target, "cannot keep the owner", e));
        }
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
