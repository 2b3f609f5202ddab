//! Finding the ELF files under the given roots: every regular file whose content starts with
//! the ELF magic, grouped by inode so that each is planned once however many names it has.

mod mapped;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use walkdir::WalkDir;

use crate::elf::Elf;
pub use mapped::MappedFile;

/// A file's identity on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId {
    pub dev: u64,
    pub ino: u64,
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
    /// Symlinks inside the roots to ELF files the scan found (their names matter to the loader's
    /// search), with the inode they lead to.
    pub symlinks: Vec<(PathBuf, InodeId)>,
    /// Entries that could not be read, with why.
    pub errors: Vec<(PathBuf, String)>,
    /// How many directory entries were looked at.
    pub entries: usize,
}

/// Walks `roots` without following symlinks and collects ELF files and in-root symlinks.
pub fn scan(roots: &[PathBuf]) -> ScanResult {
    let mut result = ScanResult::default();
    let mut candidates = Vec::new();
    let mut links = Vec::new();
    for root in roots {
        walk_root(root, &mut result, &mut candidates, &mut links);
    }
    // Hard links (a conda environment is mostly links into the package cache) are read once:
    // sorted by inode, each run of names shares one reading.
    candidates.sort_unstable_by_key(|(_, stat)| stat.id);
    let groups: Vec<&[(PathBuf, Stat)]> = candidates.chunk_by(|a, b| a.1.id == b.1.id).collect();
    let elf_flags: Vec<Option<String>> = groups
        .par_iter()
        .map(|names| starts_with_elf_magic(&names[0].0).err())
        .collect();
    let mut by_inode: BTreeMap<InodeId, Inode> = BTreeMap::new();
    for (names, failure) in groups.into_iter().zip(elf_flags) {
        match failure {
            Some(reason) if reason.is_empty() => {}
            Some(reason) => result
                .errors
                .extend(names.iter().map(|(path, _)| (path.clone(), reason.clone()))),
            None => {
                let stat = names[0].1;
                by_inode.insert(
                    stat.id,
                    Inode {
                        id: stat.id,
                        nlink: stat.nlink,
                        len: stat.len,
                        mode: stat.mode,
                        names: names.iter().map(|(path, _)| path.clone()).collect(),
                    },
                );
            }
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
    result.symlinks = links_to_elf_files(links, &result.elf_inodes);
    result.symlinks.sort();
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
            id: InodeId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            nlink: meta.nlink(),
            len: meta.len(),
            mode: meta.mode() & 0o7777,
        }
    }
}

fn walk_root(
    root: &Path,
    result: &mut ScanResult,
    candidates: &mut Vec<(PathBuf, Stat)>,
    links: &mut Vec<PathBuf>,
) {
    for entry in WalkDir::new(root).follow_links(false).sort_by_file_name() {
        result.entries += 1;
        let entry = match entry {
            Ok(e) => e,
            Err(err) => {
                let path = err.path().unwrap_or(root).to_path_buf();
                let advice = err.io_error().map_or(
                    "fix the cause and run autopatch again",
                    crate::apply::advice,
                );
                result
                    .errors
                    .push((path, format!("cannot read: {err}; {advice}")));
                continue;
            }
        };
        let path = entry.path();
        let file_type = entry.file_type();
        if file_type.is_symlink() {
            links.push(path.to_path_buf());
        } else if file_type.is_file() && !is_own_temp_file(path) {
            match entry.metadata() {
                Ok(meta) if meta.len() >= 4 => {
                    candidates.push((path.to_path_buf(), Stat::of(&meta)))
                }
                Ok(_) => {}
                Err(err) => {
                    let advice = err.io_error().map_or(
                        "fix the cause and run autopatch again",
                        crate::apply::advice,
                    );
                    let why = format!("cannot stat: {err}; {advice}");
                    result.errors.push((path.to_path_buf(), why));
                }
            }
        }
    }
}

/// The links that lead to one of `elf_inodes` (found under the roots, so the link never leads
/// out of them), with that inode: one `stat` each, the kernel following the link.
fn links_to_elf_files(links: Vec<PathBuf>, elf_inodes: &[Inode]) -> Vec<(PathBuf, InodeId)> {
    let ids: HashSet<InodeId> = elf_inodes.iter().map(|i| i.id).collect();
    links
        .into_par_iter()
        .filter_map(|link| {
            let meta = fs::metadata(&link).ok()?;
            let id = InodeId {
                dev: meta.dev(),
                ino: meta.ino(),
            };
            (meta.is_file() && ids.contains(&id)).then_some((link, id))
        })
        .collect()
}

/// Temporary files of an interrupted write: never treated as content.
pub fn is_own_temp_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".autopatch-"))
}

/// `Ok` when the file starts with the ELF magic; `Err("")` when it does not; `Err(reason)` when
/// it cannot be read.
fn starts_with_elf_magic(path: &Path) -> Result<(), String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut magic = [0u8; 4];
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open: {e}; {}", crate::apply::advice(&e)))?;
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == b"\x7fELF" => Ok(()),
        Ok(()) => Err(String::new()),
        Err(e) => Err(format!("cannot read: {e}; {}", crate::apply::advice(&e))),
    }
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
