//! Objects as the loader sees them, read once per file and shared by every check: a prefix has
//! thousands of files loading the same few libraries.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use super::dirs::SearchDirs;
use super::search::{Tokens, has_interpreter_tokens, search_dirs};
use super::{FastMap, FastSet, lock, read, write};

use crate::elf::{Class, Elf, ElfError, RunPathKind, VersionNeed};
use crate::scan::{FileVersion, MappedFile, open_regular};

const DT_FLAGS_1: i64 = 0x6fff_fffb;
/// Search no default directories for this object's dependencies.
pub(crate) const DF_1_NODEFLIB: u64 = 0x800;
/// A position-independent executable, which cannot be loaded as a dependency.
pub(crate) const DF_1_PIE: u64 = 0x0800_0000;
/// The loader reads this much of a file before judging it; shorter files are refused.
const ELF64_HEADER_SIZE: usize = 64;

/// One ELF file at its canonical path; what the loader needs to know of it is shared by the
/// file's every hard link.
#[derive(Debug)]
pub(crate) struct Object {
    pub canonical: PathBuf,
    info: Arc<ObjectInfo>,
}

impl std::ops::Deref for Object {
    type Target = ObjectInfo;

    fn deref(&self) -> &ObjectInfo {
        &self.info
    }
}

/// What the loader needs to know of one ELF file, owned so the file can be unmapped.
#[derive(Debug)]
pub(crate) struct ObjectInfo {
    /// Tells it apart from every other object of its [`Objects`].
    pub id: u32,
    pub class: Class,
    pub machine: u16,
    pub little_endian: bool,
    pub e_type: u16,
    pub flags_1: u64,
    pub interpreter: Option<PathBuf>,
    pub soname: Option<String>,
    pub needed: Vec<String>,
    pub rpath: Option<Vec<u8>>,
    pub runpath: Option<Vec<u8>>,
    /// Library name and the versions of it this object needs; weak needs, which glibc only
    /// warns about, left out.
    pub version_needs: Vec<(String, Vec<String>)>,
    /// Every version this object defines, the base one (its own name) included; sorted, as every
    /// check of every program looks versions up in the few libraries that define many.
    pub version_defs: Vec<String>,
    pub is_loadable: bool,
    pub is_static: bool,
    pub is_separate_debug: bool,
    /// Its run path as directories, when it has no tokens to expand.
    plain_dirs: OnceLock<SearchDirs>,
    /// Whether its run path has `$LIB` or `$PLATFORM`, which depend on the interpreter.
    run_path_has_interpreter_tokens: bool,
    /// Its run path as directories with only `$ORIGIN` to expand, by origin: a library is
    /// loaded from the same directory by every program of its prefix.
    origin_dirs: RwLock<FastMap<OsString, Arc<SearchDirs>>>,
}

impl ObjectInfo {
    fn from_elf(elf: &Elf, id: u32) -> ObjectInfo {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut version_defs: Vec<String> =
            elf.version_defs().into_iter().map(|d| d.name).collect();
        version_defs.sort_unstable();
        version_defs.dedup();
        ObjectInfo {
            id,
            class: elf.class,
            machine: elf.machine,
            little_endian: elf.little_endian,
            e_type: elf.e_type,
            flags_1: elf
                .dynamic_entries()
                .iter()
                .find(|e| e.tag == DT_FLAGS_1)
                .map_or(0, |e| e.val),
            interpreter: elf.interpreter().map(|i| PathBuf::from(lossy(i))),
            soname: elf.soname().map(lossy),
            needed: elf.needed().into_iter().map(lossy).collect(),
            rpath: elf.rpath().map(<[u8]>::to_vec),
            runpath: elf.runpath().map(<[u8]>::to_vec),
            run_path_has_interpreter_tokens: [elf.rpath(), elf.runpath()]
                .into_iter()
                .flatten()
                .any(has_interpreter_tokens),
            version_needs: elf.version_needs().into_iter().map(required).collect(),
            version_defs,
            is_loadable: elf.is_loadable(),
            is_static: elf.is_static(),
            is_separate_debug: elf.is_separate_debug(),
            plain_dirs: OnceLock::new(),
            origin_dirs: RwLock::default(),
        }
    }

    /// The run path that serves the libraries this object loads, and its kind. A `DT_RUNPATH`
    /// makes the loader ignore `DT_RPATH`; an empty string is no path at all.
    pub fn search_path(&self, kind: RunPathKind) -> Option<&[u8]> {
        let path = match kind {
            RunPathKind::RunPath => self.runpath.as_deref(),
            RunPathKind::RPath if self.runpath.is_some() => None,
            RunPathKind::RPath => self.rpath.as_deref(),
        };
        path.filter(|p| !p.is_empty())
    }

    /// `raw`, its serving run path without tokens, as directories: split once.
    pub fn plain_search_dirs(&self, raw: &[u8]) -> &SearchDirs {
        let no_tokens = Tokens {
            origin: Path::new(""),
            lib: "",
            platform: "",
        };
        self.plain_dirs
            .get_or_init(|| SearchDirs::new(search_dirs(raw, b":", &no_tokens)))
    }

    /// `raw`, its serving run path, as directories with `tokens` expanded. A path whose only
    /// token is `$ORIGIN` is expanded once per origin; `$LIB` and `$PLATFORM` depend on the
    /// interpreter, so a path with them is expanded each time.
    pub fn search_dirs_with(&self, raw: &[u8], tokens: &Tokens) -> Arc<SearchDirs> {
        let split = || Arc::new(SearchDirs::new(search_dirs(raw, b":", tokens)));
        if self.run_path_has_interpreter_tokens {
            return split();
        }
        let origin = tokens.origin.as_os_str();
        if let Some(dirs) = read(&self.origin_dirs).get(origin) {
            return dirs.clone();
        }
        let dirs = split();
        write(&self.origin_dirs)
            .entry(origin.to_owned())
            .or_insert(dirs)
            .clone()
    }

    /// Whether the loader skips `DT_RPATH`s when searching for this object's dependencies.
    pub fn has_runpath(&self) -> bool {
        self.runpath.is_some()
    }

    pub fn defines_versions(&self) -> bool {
        !self.version_defs.is_empty()
    }

    pub fn defines(&self, version: &str) -> bool {
        self.version_defs
            .binary_search_by(|d| d.as_str().cmp(version))
            .is_ok()
    }

    /// What the loader sees when it opens this file as a checkable program or library.
    pub fn is_checkable(&self) -> bool {
        self.is_loadable && !self.is_static && !self.is_separate_debug
    }
}

/// The outcome of opening a path the way the loader does.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// Nothing there (or nothing the loader may open): the search goes on.
    Missing,
    Found(Arc<Object>),
    /// Something is there that the loader refuses outright, stopping the program, with glibc's
    /// reason.
    Invalid(Arc<str>),
}

/// Objects already read, by the path they were probed at and by canonical path.
#[derive(Default)]
pub(crate) struct Objects {
    // Keyed by the bytes of the path: hashing and comparing a `Path` goes component by
    // component, and a search compares many.
    by_path: Mutex<FastMap<OsString, Probe>>,
    by_canonical: Mutex<FastMap<OsString, Probe>>,
    /// Canonical paths of the directories probed in: a search tries many names in few
    /// directories, and resolving a path costs a `readlink` per component.
    dirs: Mutex<FastMap<OsString, Option<PathBuf>>>,
    /// Directories that have a `glibc-hwcaps` subdirectory: few do, and a search would otherwise
    /// probe each of its subdirectories for every name in every directory.
    hwcaps: Mutex<FastMap<OsString, bool>>,
    /// What was read of each file, by inode: a prefix's hard links of one package file are
    /// checked under each of their names.
    by_inode: Mutex<FastMap<FileVersion, Arc<ObjectInfo>>>,
    next_id: AtomicU32,
    /// Version needs found met: the needing object's id, the index of the need in its list,
    /// and the id of the object that met it. Every check of a prefix checks the same few
    /// objects' needs of the C library's many versions.
    versions_met: RwLock<FastSet<(u32, u32, u32)>>,
}

impl Objects {
    /// What the loader finds at `path` (relative paths are relative to the current directory).
    pub fn probe(&self, path: &Path) -> Probe {
        if let Some(hit) = lock(&self.by_path).get(path.as_os_str()) {
            return hit.clone();
        }
        let probe = match self.canonical(path) {
            Ok(canonical) => self.load(&canonical),
            // A path the loader cannot open (missing, not a directory, not permitted) is passed
            // over.
            Err(_) => Probe::Missing,
        };
        lock(&self.by_path).insert(path.as_os_str().to_owned(), probe.clone());
        probe
    }

    /// Whether `dir/glibc-hwcaps` exists, so that its subdirectories are worth probing.
    pub fn has_hwcaps_subdirs(&self, dir: &Path) -> bool {
        if let Some(&known) = lock(&self.hwcaps).get(dir.as_os_str()) {
            return known;
        }
        let has = dir.join("glibc-hwcaps").is_dir();
        lock(&self.hwcaps).insert(dir.as_os_str().to_owned(), has);
        has
    }

    /// `path` with every symbolic link resolved, as `fs::canonicalize` gives it, resolving its
    /// directory once per directory.
    pub fn canonical(&self, path: &Path) -> io::Result<PathBuf> {
        self.canonical_following(path, 0)
    }

    fn canonical_following(&self, path: &Path, links_followed: u32) -> io::Result<PathBuf> {
        const MAX_LINKS: u32 = 40;
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return std::fs::canonicalize(path);
        };
        if links_followed > MAX_LINKS || name == ".." || parent.as_os_str().is_empty() {
            return std::fs::canonicalize(path);
        }
        let dir = self.canonical_dir(parent)?;
        let joined = dir.join(name);
        if !std::fs::symlink_metadata(&joined)?.file_type().is_symlink() {
            return Ok(joined);
        }
        let target = dir.join(std::fs::read_link(&joined)?);
        self.canonical_following(&target, links_followed + 1)
    }

    fn canonical_dir(&self, dir: &Path) -> io::Result<PathBuf> {
        if let Some(known) = lock(&self.dirs).get(dir.as_os_str()) {
            return known.clone().ok_or_else(|| io::ErrorKind::NotFound.into());
        }
        let canonical = std::fs::canonicalize(dir);
        lock(&self.dirs).insert(dir.as_os_str().to_owned(), canonical.as_ref().ok().cloned());
        canonical
    }

    /// The object at `canonical`, read unless another of the file's names was.
    fn read_object(&self, canonical: &Path) -> Probe {
        let (file, meta) = match open_regular(canonical) {
            Ok(opened) => opened,
            Err(err) => return read_error(&err),
        };
        let key = FileVersion::of(&meta);
        let known = lock(&self.by_inode).get(&key).cloned();
        let info = match known {
            Some(info) => info,
            None => {
                let read = match MappedFile::load(file, meta) {
                    Ok(read) => read,
                    Err(err) => return read_error(&err),
                };
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                match parse_object(read.bytes(), id) {
                    Ok(info) => lock(&self.by_inode)
                        .entry(key)
                        .or_insert(Arc::new(info))
                        .clone(),
                    Err(why) => return Probe::Invalid(why),
                }
            }
        };
        Probe::Found(Arc::new(Object {
            canonical: canonical.to_path_buf(),
            info,
        }))
    }

    /// Whether `needer`'s version need number `need` was found met by `target` before.
    pub fn versions_met(&self, needer: &ObjectInfo, need: usize, target: &ObjectInfo) -> bool {
        read(&self.versions_met).contains(&(needer.id, need as u32, target.id))
    }

    pub fn note_versions_met(&self, needer: &ObjectInfo, need: usize, target: &ObjectInfo) {
        write(&self.versions_met).insert((needer.id, need as u32, target.id));
    }

    /// The object at a canonical path, read once.
    pub fn load(&self, canonical: &Path) -> Probe {
        if let Some(hit) = lock(&self.by_canonical).get(canonical.as_os_str()) {
            return hit.clone();
        }
        let probe = self.read_object(canonical);
        // Another thread may have read it meanwhile: every check gets the one object, so that
        // a session can tell objects apart by identity.
        lock(&self.by_canonical)
            .entry(canonical.as_os_str().to_owned())
            .or_insert(probe)
            .clone()
    }
}

/// A version need as the loader enforces it: the library, and its versions but the weak ones.
fn required(need: VersionNeed) -> (String, Vec<String>) {
    let versions = need
        .versions
        .into_iter()
        .zip(need.weak)
        .filter_map(|(version, weak)| (!weak).then_some(version))
        .collect();
    (need.file, versions)
}

fn read_error(err: &io::Error) -> Probe {
    match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => Probe::Missing,
        _ => Probe::Invalid(format!("cannot read file data: {err}").into()),
    }
}

fn parse_object(bytes: &[u8], id: u32) -> Result<ObjectInfo, Arc<str>> {
    match Elf::parse(bytes) {
        Ok(elf) => Ok(ObjectInfo::from_elf(&elf, id)),
        Err(_) if bytes.len() < ELF64_HEADER_SIZE => Err("file too short".into()),
        Err(ElfError::NotElf) => Err("invalid ELF header".into()),
        Err(err) => Err(err.to_string().into()),
    }
}
