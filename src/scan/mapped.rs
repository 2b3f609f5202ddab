//! Opening a file for reading its ELF headers: only regular files, never blocking on FIFOs or
//! devices; large files are mapped rather than read.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use memmap2::Mmap;

/// A regular file opened, its content mapped read-only or, when small, read.
pub struct MappedFile {
    pub file: File,
    pub meta: Metadata,
    content: Content,
}

enum Content {
    Mapped(Mmap),
    Read(Vec<u8>),
}

/// Files up to this size are read rather than mapped: mapping and unmapping a file costs more
/// than copying a few pages, and unmapping interrupts every other thread of the process.
const READ_LIMIT: u64 = 64 * 1024;

/// How long an open waits for another process to release its write lease on a file.
const LEASE_WAIT: Duration = Duration::from_secs(10);

/// Opens `path` as [`MappedFile::open`] does, without reading it: for a caller that may already
/// know the file by its inode.
pub fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let file = open_nonblocking(path, false)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

/// Opens `path` for reading without blocking on a FIFO or a device, following a symlink in its
/// last component only when `follow`. While another process holds a write lease on the file
/// (autopatch growing it in place), such an open fails with `EWOULDBLOCK` and asks the holder to
/// release it: it is tried again for up to [`LEASE_WAIT`].
///
/// Reading leaves the access time alone where the kernel allows it (the file's owner): a freshly
/// installed file's first read would otherwise rewrite its inode, and a run reads thousands.
pub fn open_nonblocking(path: &Path, follow: bool) -> io::Result<File> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let open_with = |noatime| {
        OpenOptions::new()
            .read(true)
            .custom_flags(nofollow | noatime | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
    };
    let open = || match open_with(libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_with(0),
        opened => opened,
    };
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match open() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && start.elapsed() < LEASE_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            opened => return opened,
        }
    }
}

impl MappedFile {
    /// Opens `path`, refusing anything but a regular file (a symlink is not followed).
    pub fn open(path: &Path) -> io::Result<MappedFile> {
        let (file, meta) = open_regular(path)?;
        MappedFile::load(file, meta)
    }

    /// The content of `file`, a regular file opened for reading, whose metadata is `meta`.
    pub fn load(file: File, meta: Metadata) -> io::Result<MappedFile> {
        let content = if meta.len() <= READ_LIMIT {
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            (&file).take(READ_LIMIT).read_to_end(&mut bytes)?;
            Content::Read(bytes)
        } else {
            // SAFETY: the map is read-only; a concurrent truncation by another process is the
            // one hazard, as with every reader of a shared file.
            Content::Mapped(unsafe { Mmap::map(&file)? })
        };
        Ok(MappedFile {
            file,
            meta,
            content,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.content {
            Content::Mapped(map) => map,
            Content::Read(bytes) => bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;
    use std::time::SystemTime;

    #[test]
    fn reading_an_own_file_leaves_its_access_time() {
        let dir = tempfile::tempdir().unwrap();
        // An access time older than the modification time: under `relatime`, the default, the
        // next read would bring it forward.
        let accessed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let modified = accessed + Duration::from_secs(3600);
        let written = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let times = FileTimes::new()
                .set_accessed(accessed)
                .set_modified(modified);
            let file = File::options().write(true).open(&path).unwrap();
            file.set_times(times).unwrap();
            path
        };
        // One file mapped, one read.
        let large = written("lib.so", &vec![7u8; 2 * READ_LIMIT as usize]);
        let small = written("small", b"\x7fELF");
        assert_eq!(
            MappedFile::open(&large).unwrap().bytes()[READ_LIMIT as usize],
            7
        );
        assert_eq!(MappedFile::open(&small).unwrap().bytes(), b"\x7fELF");
        for read in [&large, &small] {
            let meta = std::fs::metadata(read).unwrap();
            assert_eq!(meta.accessed().unwrap(), accessed, "{}", read.display());
        }
    }
}
