//! Opening a file for reading its ELF headers: only regular files, never blocking on FIFOs or
//! devices, mapped rather than read.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use memmap2::Mmap;

/// A regular file opened and mapped read-only.
pub struct MappedFile {
    pub file: File,
    pub meta: Metadata,
    map: Option<Mmap>,
}

impl MappedFile {
    /// Opens `path`, refusing anything but a regular file (a symlink is not followed).
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        // SAFETY: the map is read-only; a concurrent truncation by another process is the one
        // hazard, as with every reader of a shared file.
        let map = if meta.len() == 0 {
            None
        } else {
            Some(unsafe { Mmap::map(&file)? })
        };
        Ok(MappedFile { file, meta, map })
    }

    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}
