//! Finding the ELF files under the given roots: every regular file whose content starts with
//! the ELF magic, grouped by inode so that each is planned once however many names it has.

mod mapped;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::elf::Elf;
pub use mapped::{MappedFile, open_nonblocking, open_regular};

/// A file's identity on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId {
    pub dev: u64,
    pub ino: u64,
}

impl InodeId {
    pub fn of(meta: &fs::Metadata) -> InodeId {
        InodeId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A file's identity and version: its inode, and the size and times that change with its
/// content. Equal versions are the same content, as far as metadata can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileVersion {
    id: InodeId,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    pub fn of(meta: &fs::Metadata) -> FileVersion {
        FileVersion {
            id: InodeId::of(meta),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// One inode and its names inside the roots, sorted.
#[derive(Debug, Clone)]
pub struct Inode {
    pub id: InodeId,
    pub names: Vec<PathBuf>,
    /// Total link count: more than `names.len()` means names outside the roots share it.
    pub nlink: u64,
    pub len: u64,
    /// Permission bits, setuid and setgid included.
    pub mode: u32,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Regular files that start with the ELF magic, by inode.
    pub elf_inodes: Vec<Inode>,
    /// Symlinks inside the roots, not yet followed: [`links_named`] follows those whose names
    /// matter to the loader's search.
    pub symlinks: Vec<PathBuf>,
    /// Entries that could not be read, with why.
    pub errors: Vec<(PathBuf, String)>,
    /// How many directory entries were looked at.
    pub entries: usize,
}

/// Walks `roots` without following symlinks and collects ELF files and in-root symlinks.
pub fn scan(roots: &[PathBuf]) -> ScanResult {
    let walked = roots
        .par_iter()
        .map(|root| walk_root(root))
        .reduce(Walked::default, Walked::merge);
    let mut result = ScanResult {
        entries: walked.entries,
        errors: walked.errors,
        ..ScanResult::default()
    };
    let mut listed = walked.files;
    let links = walked.links;
    // Hard links (a conda environment is mostly links into the package cache) are read once:
    // sorted by the inode the directory listing gives, each run of names shares one reading.
    listed.sort_unstable_by_key(|(_, id)| *id);
    let groups: Vec<&[(PathBuf, InodeId)]> = listed.chunk_by(|a, b| a.1 == b.1).collect();
    let examined: Vec<Vec<(PathBuf, Examined)>> = groups
        .par_iter()
        .map(|names| examine_group(names))
        .collect();
    let mut by_inode: BTreeMap<InodeId, Inode> = BTreeMap::new();
    for (path, examined) in examined.into_iter().flatten() {
        match examined {
            Examined::Elf(stat) => by_inode
                .entry(stat.id)
                .or_insert_with(|| Inode {
                    id: stat.id,
                    nlink: stat.nlink,
                    len: stat.len,
                    mode: stat.mode,
                    names: Vec::new(),
                })
                .names
                .push(path),
            Examined::NotElf => {}
            Examined::Failed(reason) => result.errors.push((path, reason)),
        }
    }
    result.elf_inodes = by_inode
        .into_values()
        .map(|mut i| {
            i.names.sort();
            i.names.dedup();
            i
        })
        .collect();
    result
        .elf_inodes
        .sort_by(|a, b| a.names[0].cmp(&b.names[0]));
    result.symlinks = links;
    result.errors.sort();
    result
}

/// What the scan keeps of a file's metadata, a fraction of its size: a tree holds many files.
#[derive(Debug, Clone, Copy)]
struct Stat {
    id: InodeId,
    nlink: u64,
    len: u64,
    mode: u32,
}

impl Stat {
    fn of(meta: &fs::Metadata) -> Stat {
        Stat {
            id: InodeId::of(meta),
            nlink: meta.nlink(),
            len: meta.len(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// What one name turned out to be.
enum Examined {
    Elf(Stat),
    NotElf,
    Failed(String),
}

/// Examines names the listing gave one inode: the content of the first is read, and every
/// name of an ELF file is stat'ed, as only `stat` is authoritative (some filesystems, overlayfs
/// among them, list other inode numbers than they report); a first name whose `stat` differs
/// from the listing has each name examined on its own.
fn examine_group(names: &[(PathBuf, InodeId)]) -> Vec<(PathBuf, Examined)> {
    let (first, listed) = &names[0];
    let failed_all = |reason: String| {
        names
            .iter()
            .map(|(path, _)| (path.clone(), Examined::Failed(reason.clone())))
            .collect()
    };
    let (is_elf, file) = match read_magic(first, false) {
        Ok((false, _)) if names.len() == 1 => return Vec::new(),
        Ok(opened) => opened,
        Err(reason) => return failed_all(reason),
    };
    let stat = match stat_of(&file) {
        Ok(stat) => stat,
        Err(reason) => return failed_all(reason),
    };
    if stat.id != *listed && names.len() > 1 {
        return names
            .iter()
            .map(|(path, _)| (path.clone(), examine(path)))
            .collect();
    }
    if !is_elf {
        return Vec::new();
    }
    let mut out = vec![(first.clone(), Examined::Elf(stat))];
    out.extend(
        names[1..]
            .iter()
            .map(|(path, _)| (path.clone(), stat_elf_name(path, stat))),
    );
    out
}

/// What the file at `path` is, read on its own.
fn examine(path: &Path) -> Examined {
    match read_magic(path, false) {
        Ok((true, file)) => match stat_of(&file) {
            Ok(stat) => Examined::Elf(stat),
            Err(reason) => Examined::Failed(reason),
        },
        Ok((false, _)) => Examined::NotElf,
        Err(reason) => Examined::Failed(reason),
    }
}

/// A further name of the ELF file `first`: the same file when `stat` says so, else read on its
/// own.
fn stat_elf_name(path: &Path, first: Stat) -> Examined {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() && Stat::of(&meta).id == first.id => {
            Examined::Elf(Stat::of(&meta))
        }
        Ok(meta) if !meta.is_file() => Examined::NotElf,
        Ok(_) => examine(path),
        Err(e) => Examined::Failed(format!("cannot stat: {e}; {}", crate::apply::advice(&e))),
    }
}

/// What walking part of a tree found.
#[derive(Default)]
struct Walked {
    entries: usize,
    /// Regular files, with the identity the directory listing gives them.
    files: Vec<(PathBuf, InodeId)>,
    links: Vec<PathBuf>,
    errors: Vec<(PathBuf, String)>,
}

impl Walked {
    /// Both parts together, in no particular order: the smaller part is moved into the larger.
    fn merge(mut self, mut other: Walked) -> Walked {
        if self.files.len() < other.files.len() {
            std::mem::swap(&mut self, &mut other);
        }
        self.entries += other.entries;
        self.files.append(&mut other.files);
        self.links.append(&mut other.links);
        self.errors.append(&mut other.errors);
        self
    }

    /// A directory or root that could not be read: one entry, and why.
    fn failed(path: &Path, err: &std::io::Error) -> Walked {
        let mut walked = Walked {
            entries: 1,
            ..Walked::default()
        };
        walked.error(path, err);
        walked
    }

    fn error(&mut self, path: &Path, err: &std::io::Error) {
        let reason = format!("cannot read: {err}; {}", crate::apply::advice(err));
        self.errors.push((path.to_path_buf(), reason));
    }
}

/// The directory listing's identity of each regular file under `root` (no `stat`: the inode
/// number comes with the listing and the device is its directory's), and the symlinks. A root
/// that is a symlink is followed; nothing below it is.
fn walk_root(root: &Path) -> Walked {
    let meta = match fs::metadata(root) {
        Ok(meta) => meta,
        Err(err) => return Walked::failed(root, &err),
    };
    let mut walked = Walked {
        entries: 1,
        ..Walked::default()
    };
    if meta.is_dir() {
        return walked.merge(walk_dir(root, Some(meta.dev())));
    }
    if meta.is_file() && !is_own_temp_file(root) {
        // A file root is read with its own device (0 here), with its content.
        let id = InodeId {
            dev: 0,
            ino: meta.ino(),
        };
        walked.files.push((root.to_path_buf(), id));
    }
    walked
}

/// Walks `dir`, whose device is `dev` when known, its subdirectories in parallel: a prefix has
/// thousands of directories, and each listing waits on the filesystem.
fn walk_dir(dir: &Path, dev: Option<u64>) -> Walked {
    use std::os::unix::fs::DirEntryExt;
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(err) => return Walked::failed(dir, &err),
    };
    let mut walked = Walked::default();
    let mut subdirs = Vec::new();
    for entry in listing {
        walked.entries += 1;
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                walked.error(dir, &err);
                continue;
            }
        };
        let path = entry.path();
        let is_own_temp_file = is_own_temp_name(&entry.file_name());
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            Err(err) => {
                walked.error(&path, &err);
                continue;
            }
        };
        if file_type.is_dir() {
            subdirs.push(path);
        } else if file_type.is_symlink() {
            walked.links.push(path);
        } else if file_type.is_file() && !is_own_temp_file {
            // A directory that could not be stat'ed: the file's own device is read with its
            // content.
            let id = InodeId {
                dev: dev.unwrap_or(0),
                ino: entry.ino(),
            };
            walked.files.push((path, id));
        }
    }
    subdirs
        .into_par_iter()
        .map(|sub| {
            let dev = fs::symlink_metadata(&sub).ok().map(|m| m.dev());
            walk_dir(&sub, dev)
        })
        .reduce(Walked::default, Walked::merge)
        .merge(walked)
}

/// Of `links`, those named one of `names` that lead to one of `elf_inodes`, with that inode:
/// one `stat` each, the kernel following the link. A tree holds far more symlinks than library
/// names (terminfo alone has a thousand per environment); only a name some file needs can
/// matter to the loader.
pub fn links_named(
    links: &[PathBuf],
    names: &HashSet<&OsStr>,
    elf_inodes: &[Inode],
) -> Vec<(PathBuf, InodeId)> {
    let ids: HashSet<InodeId> = elf_inodes.iter().map(|i| i.id).collect();
    links
        .par_iter()
        .filter(|link| link.file_name().is_some_and(|n| names.contains(n)))
        .filter_map(|link| {
            let meta = fs::metadata(link).ok()?;
            let id = InodeId::of(&meta);
            (meta.is_file() && ids.contains(&id)).then(|| (link.clone(), id))
        })
        .collect()
}

/// Temporary files of an interrupted write: never treated as content.
pub fn is_own_temp_file(path: &Path) -> bool {
    path.file_name().is_some_and(is_own_temp_name)
}

fn is_own_temp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b".autopatch-")
}

/// Whether the file at `path` starts with the ELF magic: four bytes read, never blocking on a
/// FIFO, following a symlink in the last component only when `follow`. A file that cannot be
/// read does not.
pub fn starts_with_elf_magic(path: &Path, follow: bool) -> bool {
    read_magic(path, follow).is_ok_and(|(elf, _)| elf)
}

/// Whether the file at `path` starts with the ELF magic, and the file, open; `Err` with the
/// reason when it cannot be read.
fn read_magic(path: &Path, follow: bool) -> Result<(bool, fs::File), String> {
    use std::io::Read;
    let mut file = open_nonblocking(path, follow)
        .map_err(|e| format!("cannot open: {e}; {}", crate::apply::advice(&e)))?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) => Ok((&magic == b"\x7fELF", file)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok((false, file)),
        Err(e) => Err(format!("cannot read: {e}; {}", crate::apply::advice(&e))),
    }
}

fn stat_of(file: &fs::File) -> Result<Stat, String> {
    file.metadata()
        .map(|meta| Stat::of(&meta))
        .map_err(|e| format!("cannot stat: {e}; {}", crate::apply::advice(&e)))
}

/// Why an ELF file is left alone, if it is.
pub fn skip_reason(elf: &Elf) -> Option<&'static str> {
    if !elf.is_loadable() {
        Some("not an executable or shared object")
    } else if elf.is_separate_debug() {
        Some("separate debug file")
    } else if elf.is_static() {
        Some("statically linked")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some_elf() -> Vec<u8> {
        fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn hard_links_are_one_inode_with_every_name_and_tiny_files_are_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("a/lib")).unwrap();
        fs::create_dir_all(root.join("b/lib")).unwrap();
        fs::write(root.join("a/lib/libx.so"), some_elf()).unwrap();
        fs::hard_link(root.join("a/lib/libx.so"), root.join("b/lib/libx.so")).unwrap();
        fs::write(root.join("a/tiny"), b"\x7fE").unwrap();
        fs::write(root.join("a/text"), b"not an ELF file").unwrap();
        let fifo =
            std::ffi::CString::new(root.join("a/fifo").into_os_string().into_encoded_bytes());
        assert_eq!(unsafe { libc::mkfifo(fifo.unwrap().as_ptr(), 0o600) }, 0);

        let found = scan(std::slice::from_ref(&root));

        assert!(found.errors.is_empty(), "{:?}", found.errors);
        assert_eq!(found.elf_inodes.len(), 1);
        let inode = &found.elf_inodes[0];
        assert_eq!(
            inode.names,
            [root.join("a/lib/libx.so"), root.join("b/lib/libx.so")]
        );
        assert_eq!(inode.nlink, 2);
        let meta = fs::metadata(root.join("b/lib/libx.so")).unwrap();
        assert_eq!(inode.id, InodeId::of(&meta));
    }

    #[test]
    fn every_entry_is_counted_once_and_temporary_files_are_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::write(root.join("a/b/c/libx.so"), some_elf()).unwrap();
        fs::write(root.join("a/b/.autopatch-x1.tmp"), some_elf()).unwrap();
        std::os::unix::fs::symlink("c/libx.so", root.join("a/b/liby.so")).unwrap();

        let found = scan(std::slice::from_ref(&root));

        // The root, a, b, c, libx.so, the temporary file and the symlink.
        assert_eq!(found.entries, 7);
        assert_eq!(found.elf_inodes.len(), 1);
        assert_eq!(found.elf_inodes[0].names, [root.join("a/b/c/libx.so")]);
        assert_eq!(found.symlinks, [root.join("a/b/liby.so")]);
    }

    #[test]
    fn a_file_root_is_read_with_its_own_device() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("prog");
        fs::write(&file, some_elf()).unwrap();
        let found = scan(std::slice::from_ref(&file));
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(found.elf_inodes.len(), 1);
        assert_eq!(found.elf_inodes[0].id.dev, meta.dev());
    }

    #[test]
    fn only_links_named_as_needed_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::write(root.join("libx.so.1.2"), some_elf()).unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", root.join("libx.so.1")).unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", root.join("libx.so")).unwrap();
        let found = scan(std::slice::from_ref(&root));
        assert_eq!(found.symlinks.len(), 2);
        let wanted: HashSet<&OsStr> = [OsStr::new("libx.so.1")].into();
        let links = links_named(&found.symlinks, &wanted, &found.elf_inodes);
        assert_eq!(links, [(root.join("libx.so.1"), found.elf_inodes[0].id)]);
    }
}
