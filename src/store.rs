//! The Nix store's shared libraries, indexed by soname, and the choice among the store paths that
//! provide one.
//!
//! A library is a candidate for a soname when the loader would find it by that name: a file
//! named like the soname directly in a store path's `lib/` or `lib64/` (symlinks followed, as
//! long as they stay in the store) that is an ELF shared object whose `DT_SONAME` is that name,
//! or which has no `DT_SONAME`. Development symlinks (`libz.so`) and fully versioned files
//! (`libz.so.1.3.1`) are not what `DT_NEEDED` names, so they are left out.
//!
//! Store paths never change once valid, so the index is cached on disk and only store paths new
//! since the last run are read. The store directory itself is listed only when it changed since
//! the cache was written (see `cache::StoreKey`).

mod cache;

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use rayon::prelude::*;
use thiserror::Error;

use crate::elf::{self, Class, Elf};
use crate::scan::MappedFile;
use cache::{Bytes, Entry, Lib, StoreKey, Table};

pub use cache::FILE_NAME as CACHE_FILE;

/// Lib dirs searched in each store path, in the loader's order of preference.
const LIB_DIRS: [&str; 2] = ["lib", "lib64"];
const HASH_LEN: usize = 32;
const NIX_BASE32: &str = "0123456789abcdfghijklmnpqrsvwxyz";
/// By byte: whether it is a Nix base32 digit. A table, as the store's listing checks every byte
/// of every hash.
const IS_NIX_BASE32: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < NIX_BASE32.len() {
        table[NIX_BASE32.as_bytes()[i] as usize] = true;
        i += 1;
    }
    table
};

/// Why the store could not be indexed.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot read the Nix store at {}: {source}; check the store directory setting", path.display())]
    ReadStore { path: PathBuf, source: io::Error },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A store library that the loader would find by its soname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub soname: String,
    /// `<store path>/lib/<soname>`.
    pub path: PathBuf,
    /// The directory to put in a run path: `<store path>/lib` (or `lib64`).
    pub lib_dir: PathBuf,
    pub store_path: PathBuf,
    /// From the store path's name: `zlib` of `<hash>-zlib-1.3.1`.
    pub name: String,
    /// `1.3.1` of `<hash>-zlib-1.3.1`; empty when the name holds no version.
    pub version: String,
    pub machine: u16,
    pub class: Class,
    /// The glibc store path the store path's libraries were built against.
    pub glibc: Option<PathBuf>,
}

impl Candidate {
    /// The store path's name without its hash, e.g. `zlib-1.3.1`.
    pub fn label(&self) -> &str {
        store_path_label(&self.store_path)
    }
}

/// The lib dir chosen for a soname, and which rule chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub path: PathBuf,
    pub reason: String,
}

/// What makes one candidate better than another, besides being newer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preferences {
    /// Searched first, in order: a dir holding the soname wins outright.
    pub lib_dirs: Vec<PathBuf>,
    /// Store paths the user's profiles reference: what the user already runs.
    pub profile_paths: BTreeSet<PathBuf>,
    /// The glibc store path of the interpreter the binaries will use.
    pub glibc: Option<PathBuf>,
}

impl Preferences {
    /// The profiles of a NixOS system and a Nix user, whether or not they exist.
    pub fn default_profiles() -> Vec<PathBuf> {
        let mut profiles = vec![PathBuf::from("/run/current-system/sw")];
        if let Some(home) = std::env::var_os("HOME") {
            profiles.push(Path::new(&home).join(".nix-profile"));
        }
        if let Some(user) = std::env::var_os("USER").or_else(|| std::env::var_os("LOGNAME")) {
            profiles.push(Path::new("/etc/profiles/per-user").join(user));
        }
        profiles.push(PathBuf::from("/nix/var/nix/profiles/default"));
        profiles
    }

    /// Preferences with `profile_paths` set to the store paths that entries of the profiles'
    /// `lib/` dirs resolve into. Missing profiles are skipped.
    pub fn from_profiles(store_dir: &Path, profiles: &[PathBuf]) -> Preferences {
        let store = fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_path_buf());
        let profile_paths = profiles
            .iter()
            .filter_map(|profile| fs::read_dir(profile.join("lib")).ok())
            .flat_map(|entries| entries.filter_map(|e| e.ok()))
            .filter_map(|entry| fs::canonicalize(entry.path()).ok())
            .filter_map(|target| store_path_in(&store, &target))
            .collect();
        Preferences {
            profile_paths,
            ..Preferences::default()
        }
    }
}

/// How the last open brought the index up to date.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refresh {
    /// Store paths taken from the cache.
    pub reused: usize,
    /// Store paths read because the cache did not know them.
    pub scanned: usize,
    /// Cached store paths no longer in the store.
    pub dropped: usize,
}

/// The shared libraries of a Nix store, by soname.
#[derive(Debug)]
pub struct StoreIndex {
    store_dir: PathBuf,
    table: Table,
    /// The candidates of each of the table's sonames, built when first asked for.
    by_soname: Vec<OnceLock<Vec<Candidate>>>,
    refresh: Refresh,
}

impl StoreIndex {
    /// Indexes `store_dir`, reading only the store paths that `cache_dir`'s cache does not know
    /// and saving the result there. A cache that cannot be read or written only costs time.
    pub fn open(store_dir: &Path, cache_dir: &Path) -> Result<StoreIndex> {
        let store = fs::canonicalize(store_dir).map_err(|source| StoreError::ReadStore {
            path: store_dir.to_path_buf(),
            source,
        })?;
        let cache_file = cache_dir.join(CACHE_FILE);
        let cached = load_cache(&cache_file, &store);
        match cached {
            Some(table) if table.key() == Some(store_key(&store)?) => {
                tracing::debug!(store = %store.display(), "store unchanged since cached: not listed");
                let refresh = Refresh {
                    reused: table.store_paths(),
                    ..Refresh::default()
                };
                Ok(StoreIndex::new(store, table, refresh))
            }
            cached => refreshed(store, cache_dir, &cache_file, cached),
        }
    }

    fn new(store_dir: PathBuf, table: Table, refresh: Refresh) -> StoreIndex {
        StoreIndex {
            by_soname: (0..table.sonames()).map(|_| OnceLock::new()).collect(),
            store_dir,
            table,
            refresh,
        }
    }

    /// The store directory, with symlinks resolved.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    pub fn refresh(&self) -> Refresh {
        self.refresh
    }

    /// The store path holding `path`, if it is inside the store.
    pub fn store_path_of(&self, path: &Path) -> Option<PathBuf> {
        store_path_in(&self.store_dir, path)
    }

    /// Store libraries for `soname` that a `machine`/`class` binary can load, by store path.
    pub fn candidates(&self, soname: &str, machine: u16, class: Class) -> Vec<&Candidate> {
        self.table
            .soname_id(soname)
            .and_then(|id| {
                let built = self.by_soname.get(id)?;
                Some(built.get_or_init(|| self.build_candidates(id, soname)))
            })
            .into_iter()
            .flatten()
            .filter(|c| c.machine == machine && c.class == class)
            .collect()
    }

    fn build_candidates(&self, id: usize, soname: &str) -> Vec<Candidate> {
        self.table
            .provided(id)
            .map(|lib| {
                let store_path = self.store_dir.join(lib.store_path);
                let label = store_path_label(&store_path);
                let (name, version) = split_name_version(label);
                let lib_dir = store_path.join(lib.dir);
                Candidate {
                    soname: soname.to_owned(),
                    path: lib_dir.join(soname),
                    name: name.to_owned(),
                    version: version.to_owned(),
                    lib_dir,
                    store_path,
                    machine: lib.machine,
                    class: lib.class,
                    glibc: lib.glibc.map(Path::to_path_buf),
                }
            })
            .collect()
    }

    /// The lib dir to resolve `soname` from: a preferred lib dir that holds it, else the best
    /// store candidate (referenced by a profile, then built against the interpreter's glibc,
    /// then newest, then by store path name).
    pub fn choose(
        &self,
        soname: &str,
        machine: u16,
        class: Class,
        prefs: &Preferences,
    ) -> Option<Choice> {
        if let Some(dir) = prefs
            .lib_dirs
            .iter()
            .find(|dir| holds_library(dir, soname, machine, class))
        {
            return Some(Choice {
                path: dir.clone(),
                reason: format!("found in preferred lib dir {}", dir.display()),
            });
        }
        let candidates = self.candidates(soname, machine, class);
        let best = candidates
            .iter()
            .copied()
            .max_by_key(|c| preference_key(c, prefs))?;
        Some(Choice {
            path: best.lib_dir.clone(),
            reason: reason_for(best, &candidates, prefs),
        })
    }

    /// The loader of the newest glibc in the store for `machine`, e.g.
    /// `<store>/<hash>-glibc-2.40-66/lib/ld-linux-x86-64.so.2`.
    pub fn newest_glibc_interpreter(&self, machine: u16) -> Option<PathBuf> {
        let (loader, class) = glibc_loader(machine)?;
        self.candidates(loader, machine, class)
            .into_iter()
            .filter(|c| c.name == "glibc")
            .max_by_key(|c| (NixVersion(&c.version), Reverse(c.label())))
            .map(|c| c.path.clone())
    }
}

/// The loader's file name and class for each machine glibc supports here.
fn glibc_loader(machine: u16) -> Option<(&'static str, Class)> {
    Some(match machine {
        elf::EM_X86_64 => ("ld-linux-x86-64.so.2", Class::Elf64),
        elf::EM_386 => ("ld-linux.so.2", Class::Elf32),
        elf::EM_AARCH64 => ("ld-linux-aarch64.so.1", Class::Elf64),
        elf::EM_ARM => ("ld-linux-armhf.so.3", Class::Elf32),
        elf::EM_PPC64 => ("ld64.so.2", Class::Elf64),
        elf::EM_RISCV => ("ld-linux-riscv64-lp64d.so.1", Class::Elf64),
        elf::EM_S390 => ("ld64.so.1", Class::Elf64),
        _ => return None,
    })
}

/// Larger is better.
fn preference_key<'a>(
    c: &'a Candidate,
    prefs: &Preferences,
) -> (
    bool,
    bool,
    NixVersion<'a>,
    Reverse<&'a str>,
    Reverse<&'a Path>,
) {
    (
        prefs.profile_paths.contains(&c.store_path),
        built_against(c, prefs),
        NixVersion(&c.version),
        Reverse(c.label()),
        Reverse(&c.lib_dir),
    )
}

fn built_against(c: &Candidate, prefs: &Preferences) -> bool {
    prefs.glibc.is_some() && c.glibc == prefs.glibc
}

/// Names the first rule that set `best` apart from the other candidates.
fn reason_for(best: &Candidate, candidates: &[&Candidate], prefs: &Preferences) -> String {
    let label = best.label();
    let n = candidates.len();
    let in_profile = |c: &Candidate| prefs.profile_paths.contains(&c.store_path);
    if n == 1 {
        format!("only candidate ({label})")
    } else if in_profile(best) && candidates.iter().any(|c| !in_profile(c)) {
        format!("referenced by a profile, of {n} candidates ({label})")
    } else if built_against(best, prefs) && candidates.iter().any(|c| !built_against(c, prefs)) {
        format!("built against the interpreter's glibc, of {n} candidates ({label})")
    } else if candidates.iter().all(|c| c.version == best.version) {
        format!("first by store path of {n} candidates of one version ({label})")
    } else {
        format!("newest of {n} candidates ({label})")
    }
}

/// Whether the loader would find a `machine`/`class` shared object named `soname` in `dir`.
/// Whether `dir` holds a shared library `soname` of this machine and class.
pub fn holds_library(dir: &Path, soname: &str, machine: u16, class: Class) -> bool {
    let Ok(file) = fs::canonicalize(dir.join(soname)) else {
        return false;
    };
    let Ok(mapped) = MappedFile::open(&file) else {
        return false;
    };
    Elf::parse(mapped.bytes())
        .is_ok_and(|elf| elf.machine == machine && elf.class == class && elf.e_type == elf::ET_DYN)
}

/// The store path (`<store>/<hash>-<name>`) that `path` lies in.
fn store_path_in(store: &Path, path: &Path) -> Option<PathBuf> {
    match path.strip_prefix(store).ok()?.components().next()? {
        Component::Normal(name) if is_store_path_name(&name.to_string_lossy()) => {
            Some(store.join(name))
        }
        _ => None,
    }
}

/// `<hash>-<name>`: a 32-character Nix base32 hash, a dash, a name.
fn is_store_path_name(name: &str) -> bool {
    name.len() > HASH_LEN + 1
        && name.as_bytes()[HASH_LEN] == b'-'
        && name.as_bytes()[..HASH_LEN]
            .iter()
            .all(|&b| IS_NIX_BASE32[usize::from(b)])
}

/// The name without its hash: `zlib-1.3.1`.
fn store_path_label(store_path: &Path) -> &str {
    let name = store_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name.get(HASH_LEN + 1..).unwrap_or(name)
}

/// Splits `zlib-1.3.1` into `zlib` and `1.3.1`, as Nix does: the version starts after the first
/// dash that is followed by a digit.
pub fn split_name_version(label: &str) -> (&str, &str) {
    let bytes = label.as_bytes();
    match (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b'-' && bytes[i + 1].is_ascii_digit())
    {
        Some(i) => (&label[..i], &label[i + 1..]),
        None => (label, ""),
    }
}

/// A version ordered as Nix's `builtins.compareVersions` orders them: components split at dots,
/// dashes and digit boundaries, numbers compared as numbers, `pre` before anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NixVersion<'a>(pub &'a str);

impl Ord for NixVersion<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        let mut a = VersionComponents(self.0);
        let mut b = VersionComponents(other.0);
        loop {
            match (a.next(), b.next()) {
                (None, None) => return Ordering::Equal,
                (x, y) => {
                    let order = compare_components(x.unwrap_or(""), y.unwrap_or(""));
                    if order != Ordering::Equal {
                        return order;
                    }
                }
            }
        }
    }
}

impl PartialOrd for NixVersion<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

struct VersionComponents<'a>(&'a str);

impl<'a> Iterator for VersionComponents<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0.trim_start_matches(['.', '-']);
        let first = rest.chars().next()?;
        let end = if first.is_ascii_digit() {
            rest.find(|c: char| !c.is_ascii_digit())
        } else {
            rest.find(|c: char| c.is_ascii_digit() || c == '.' || c == '-')
        }
        .unwrap_or(rest.len());
        self.0 = &rest[end..];
        Some(&rest[..end])
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn compare_components(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    match (is_number(a), is_number(b)) {
        (true, true) => compare_numbers(a, b),
        // A missing component is older than a number: 1.2 < 1.2.1.
        _ if a.is_empty() && is_number(b) => Ordering::Less,
        _ if b.is_empty() && is_number(a) => Ordering::Greater,
        _ if a == "pre" => Ordering::Less,
        _ if b == "pre" => Ordering::Greater,
        // Letters sort before numbers: 2.3a < 2.3.1.
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (false, false) => a.cmp(b),
    }
}

/// Digit strings of any length, compared by value.
fn compare_numbers(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Lists the store and brings the cached index up to date: store paths it does not know (or
/// knew only half-built) are read, those gone are dropped.
fn refreshed(
    store: PathBuf,
    cache_dir: &Path,
    cache_file: &Path,
    cached: Option<Table>,
) -> Result<StoreIndex> {
    let listed_at = SystemTime::now();
    let names = list_store_paths(&store)?;
    // Taken after the listing: a change during it then shows as a new key next time.
    let key = store_key(&store)?;
    let mut entries = settled_entries(cached.as_ref());
    let known = entries.len();
    let new = keep_listed(&mut entries, &names);
    let scanned: Vec<Entry> = new
        .par_iter()
        .map(|name| scan_store_path(&store, name))
        .collect();
    let refresh = Refresh {
        reused: entries.len(),
        scanned: scanned.len(),
        dropped: known - entries.len(),
    };
    tracing::debug!(store = %store.display(), ?refresh, "store index refreshed");

    let learned = refresh.dropped > 0 || scanned.iter().any(|e| e.settled);
    entries.extend(scanned);
    let table = Table::build(
        &store,
        key.settled_before(listed_at).then_some(key),
        entries,
    );
    if learned || cached.as_ref().map(Table::key) != Some(table.key()) {
        save_cache(cache_dir, cache_file, table.bytes());
    }
    Ok(StoreIndex::new(store, table, refresh))
}

/// The cached entries but those of paths that were still being built.
fn settled_entries(cached: Option<&Table>) -> Vec<Entry> {
    let mut entries = cached.map(Table::entries).unwrap_or_default();
    entries.retain(|e| e.settled);
    entries
}

/// Keeps the `known` entries (sorted by name) that are listed in `names`; returns the names
/// they do not cover.
fn keep_listed<'a>(known: &mut Vec<Entry>, names: &'a [String]) -> Vec<&'a str> {
    let mut listed = vec![false; known.len()];
    let mut new = Vec::new();
    for name in names {
        match known.binary_search_by(|e| e.name.as_str().cmp(name)) {
            Ok(i) => listed[i] = true,
            Err(_) => new.push(name.as_str()),
        }
    }
    // `retain` visits the entries in order, once each.
    let mut listed = listed.into_iter();
    known.retain(|_| listed.next().unwrap_or(false));
    new
}

fn store_key(store: &Path) -> Result<StoreKey> {
    fs::metadata(store)
        .map(|meta| StoreKey::of(&meta))
        .map_err(|source| StoreError::ReadStore {
            path: store.to_path_buf(),
            source,
        })
}

/// The cache of `store`, if there is a readable one; a corrupt one is reported.
fn load_cache(cache_file: &Path, store: &Path) -> Option<Table> {
    let mapped = match MappedFile::open(cache_file) {
        Ok(mapped) => mapped,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(
                "cannot read {}: {e}; rescanning the store",
                cache_file.display()
            );
            return None;
        }
    };
    match Table::parse(Bytes::Mapped(mapped)) {
        Ok(table) if table.store_dir() == store => Some(table),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(
                "{} is corrupt ({e}); rescanning the store and replacing it",
                cache_file.display()
            );
            None
        }
    }
}

/// Replaces the cache file atomically, then removes caches of earlier formats.
fn save_cache(cache_dir: &Path, cache_file: &Path, bytes: &[u8]) {
    let written = fs::create_dir_all(cache_dir).and_then(|()| {
        let mut temp = tempfile::NamedTempFile::new_in(cache_dir)?;
        temp.write_all(bytes)?;
        temp.persist(cache_file).map_err(|e| e.error)?;
        Ok(())
    });
    match written {
        Ok(()) => {
            for old in cache::OLD_FILE_NAMES {
                // Left in place, an old cache only takes space.
                let _ = fs::remove_file(cache_dir.join(old));
            }
        }
        Err(e) => tracing::warn!(
            "cannot write the store index cache {}: {e}; the next run will scan the store again",
            cache_file.display()
        ),
    }
}

/// Names of the store paths that are directories; `.drv` files, `.links` and locks are not.
fn list_store_paths(store: &Path) -> Result<Vec<String>> {
    let read_error = |source| StoreError::ReadStore {
        path: store.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(store).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_store_path_name(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Nix holds `<store path>.lock` while it builds or substitutes the path.
fn is_in_progress(store: &Path, name: &str) -> bool {
    store.join(format!("{name}.lock")).exists()
}

/// A path still being built or substituted holds a lock; it is used, but read again next time
/// rather than cached half-written.
fn scan_store_path(store: &Path, name: &str) -> Entry {
    let store_path = store.join(name);
    let mut seen_dirs = HashSet::new();
    let mut libs = Vec::new();
    let mut glibc = None;
    for dir in LIB_DIRS {
        // lib64 is often a symlink to lib: read each real directory once.
        let Ok(real_dir) = fs::canonicalize(store_path.join(dir)) else {
            continue;
        };
        if !real_dir.starts_with(store) || !seen_dirs.insert(real_dir) {
            continue;
        }
        for (lib, lib_glibc) in scan_lib_dir(store, &store_path, dir) {
            glibc = glibc.or(lib_glibc);
            libs.push(lib);
        }
    }
    if split_name_version(store_path_label(&store_path)).0 == "glibc" {
        glibc = Some(store_path);
    }
    Entry {
        name: name.to_owned(),
        glibc,
        libs,
        settled: !is_in_progress(store, name),
    }
}

/// The shared objects of `<store path>/<dir>`, with the glibc each was built against.
fn scan_lib_dir(store: &Path, store_path: &Path, dir: &'static str) -> Vec<(Lib, Option<PathBuf>)> {
    let Ok(entries) = fs::read_dir(store_path.join(dir)) else {
        return Vec::new();
    };
    let mut file_names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| looks_like_shared_object(name))
        .collect();
    file_names.sort();
    file_names
        .into_iter()
        .filter_map(|file_name| {
            let (machine, class, glibc) =
                read_library(store, &store_path.join(dir).join(&file_name))?;
            let lib = Lib {
                soname: file_name,
                dir,
                machine,
                class,
            };
            Some((lib, glibc))
        })
        .collect()
}

fn looks_like_shared_object(file_name: &str) -> bool {
    file_name.ends_with(".so") || file_name.contains(".so.")
}

/// Machine, class and glibc of the shared object at `path`, when the loader would take it for
/// its file name.
fn read_library(store: &Path, path: &Path) -> Option<(u16, Class, Option<PathBuf>)> {
    let real = fs::canonicalize(path).ok()?;
    if !real.starts_with(store) {
        return None;
    }
    let mapped = MappedFile::open(&real).ok()?;
    let elf = Elf::parse(mapped.bytes()).ok()?;
    if elf.e_type != elf::ET_DYN || !elf.has_dynamic() || elf.is_separate_debug() {
        return None;
    }
    let file_name = path.file_name()?.as_encoded_bytes();
    if elf.soname().is_some_and(|soname| soname != file_name) {
        return None;
    }
    let glibc = elf
        .run_path()
        .and_then(|(_, run_path)| glibc_in_run_path(run_path));
    Some((elf.machine, elf.class, glibc))
}

/// The glibc store path of the first run path entry inside one (`…-glibc-2.40-66/lib`).
fn glibc_in_run_path(run_path: &[u8]) -> Option<PathBuf> {
    let run_path = String::from_utf8_lossy(run_path);
    run_path.split(':').find_map(|entry| {
        let mut store_path = PathBuf::new();
        for component in Path::new(entry).components() {
            store_path.push(component);
            if component.as_os_str().to_string_lossy().contains("-glibc-") {
                return Some(store_path);
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{Edits, RunPathEdit};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    const HOST_LIBS: &str = "/lib/x86_64-linux-gnu";

    /// A valid-looking, distinct store hash for each `n`.
    fn fake_hash(n: usize) -> String {
        let alphabet = NIX_BASE32.as_bytes();
        let mut digits = vec![b'0'; HASH_LEN];
        let mut rest = n;
        for digit in digits.iter_mut().rev() {
            *digit = alphabet[rest % 32];
            rest /= 32;
        }
        String::from_utf8(digits).unwrap()
    }

    struct FakeStore {
        _tmp: tempfile::TempDir,
        store: PathBuf,
        cache: PathBuf,
        next: usize,
    }

    impl FakeStore {
        /// `None` (with a message) on hosts without the Debian x86-64 libraries to copy.
        fn new() -> Option<FakeStore> {
            if !Path::new(HOST_LIBS).join("libz.so.1").exists() {
                eprintln!("SKIPPED: needs {HOST_LIBS}/libz.so.1 to build a fake store");
                return None;
            }
            let tmp = tempfile::tempdir().unwrap();
            let store = fs::canonicalize(tmp.path()).unwrap().join("store");
            fs::create_dir(&store).unwrap();
            Some(FakeStore {
                cache: tmp.path().join("cache"),
                _tmp: tmp,
                store,
                next: 0,
            })
        }

        /// A store path `<hash>-<label>` holding copies of host libraries in `lib/`.
        fn add(&mut self, label: &str, libs: &[&str]) -> PathBuf {
            self.next += 1;
            let path = self.store.join(format!("{}-{label}", fake_hash(self.next)));
            fs::create_dir_all(path.join("lib")).unwrap();
            for lib in libs {
                fs::copy(Path::new(HOST_LIBS).join(lib), path.join("lib").join(lib)).unwrap();
            }
            path
        }

        fn open(&self) -> StoreIndex {
            StoreIndex::open(&self.store, &self.cache).unwrap()
        }

        /// Dates the store's last change an hour back, so that its state can be trusted.
        fn settle(&self) {
            let hour_ago = SystemTime::now() - Duration::from_secs(3600);
            fs::File::open(&self.store)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
    }

    /// What `f` logged, at debug level and above.
    fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = {
            let log = Arc::clone(&log);
            move || LogWriter(Arc::clone(&log))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        (out, text)
    }

    struct LogWriter(Arc<Mutex<Vec<u8>>>);

    impl io::Write for LogWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn set_run_path(file: &Path, run_path: &Path) {
        let data = fs::read(file).unwrap();
        let elf = Elf::parse(&data).unwrap();
        let edits = Edits {
            run_path: Some(RunPathEdit::Set(
                run_path.as_os_str().as_encoded_bytes().to_vec(),
            )),
            ..Edits::default()
        };
        let rewrite = elf::plan(&elf, &edits).unwrap().unwrap();
        fs::write(file, rewrite.apply(&data)).unwrap();
    }

    fn libz(index: &StoreIndex) -> Vec<&str> {
        index
            .candidates("libz.so.1", elf::EM_X86_64, Class::Elf64)
            .iter()
            .map(|c| c.label())
            .collect()
    }

    #[test]
    fn store_path_names() {
        assert_eq!(split_name_version("zlib-1.3.1"), ("zlib", "1.3.1"));
        assert_eq!(split_name_version("gcc-12.2.0-lib"), ("gcc", "12.2.0-lib"));
        assert_eq!(
            split_name_version("python3.11-numpy-1.26.4"),
            ("python3.11-numpy", "1.26.4")
        );
        assert_eq!(split_name_version("system-path"), ("system-path", ""));
        assert!(is_store_path_name(&format!("{}-zlib-1.3.1", fake_hash(7))));
        assert!(!is_store_path_name(&format!("{}-zlib", "e".repeat(32))));
        assert!(!is_store_path_name(".links"));
    }

    #[test]
    fn versions_compare_like_nix() {
        let less = |a, b| NixVersion(a) < NixVersion(b);
        assert!(less("1.2.13", "1.3.1"));
        assert!(less("1.9", "1.10"));
        assert!(less("2.40-36", "2.40-66"));
        assert!(less("1.2", "1.2.1"));
        assert!(less("1.0pre1", "1.0"));
        assert!(less("2.3a", "2.3.1"));
        assert!(less("", "0.1"));
        assert!(less("99999999999999999999998", "99999999999999999999999"));
        assert_eq!(NixVersion("1.01").cmp(&NixVersion("1.1")), Ordering::Equal);
    }

    #[test]
    fn glibc_of_run_path() {
        let run_path = b"/nix/store/x-zlib-1.3/lib:/nix/store/abc-glibc-2.40-66/lib:/other";
        assert_eq!(
            glibc_in_run_path(run_path),
            Some(PathBuf::from("/nix/store/abc-glibc-2.40-66"))
        );
        assert_eq!(glibc_in_run_path(b"$ORIGIN/../lib"), None);
    }

    #[test]
    fn indexes_loadable_names_only() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        let zlib = fake.add("zlib-1.3.1", &["libz.so.1"]);
        std::os::unix::fs::symlink("libz.so.1", zlib.join("lib/libz.so")).unwrap();
        std::os::unix::fs::symlink("lib", zlib.join("lib64")).unwrap();
        fs::write(zlib.join("lib/libc.so"), "GROUP ( libc.so.6 )").unwrap();
        let outside = fake.add("escape-1.0", &[]);
        std::os::unix::fs::symlink(
            Path::new(HOST_LIBS).join("libz.so.1"),
            outside.join("lib/libz.so.1"),
        )
        .unwrap();
        let linked = fake.add("links-1.0", &[]);
        std::os::unix::fs::symlink(zlib.join("lib/libz.so.1"), linked.join("lib/libz.so.1"))
            .unwrap();
        fs::write(
            fake.store.join(format!("{}-zlib-1.3.1.drv", fake_hash(99))),
            "Derive()",
        )
        .unwrap();

        let index = fake.open();
        assert_eq!(libz(&index), ["zlib-1.3.1", "links-1.0"]);
        assert!(
            index
                .candidates("libz.so", elf::EM_X86_64, Class::Elf64)
                .is_empty()
        );
        assert!(
            index
                .candidates("libc.so", elf::EM_X86_64, Class::Elf64)
                .is_empty()
        );
        assert!(
            index
                .candidates("libz.so.1", elf::EM_AARCH64, Class::Elf64)
                .is_empty()
        );
        assert!(
            index
                .candidates("libz.so.1", elf::EM_X86_64, Class::Elf32)
                .is_empty()
        );
        let candidate = index.candidates("libz.so.1", elf::EM_X86_64, Class::Elf64)[0];
        assert_eq!(
            (candidate.name.as_str(), candidate.version.as_str()),
            ("zlib", "1.3.1")
        );
        assert_eq!(candidate.lib_dir, zlib.join("lib"));
    }

    #[test]
    fn chooses_by_lib_dir_profile_glibc_then_version() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        let glibc = fake.add("glibc-2.36", &["libc.so.6", "ld-linux-x86-64.so.2"]);
        let old = fake.add("zlib-1.2.13", &["libz.so.1"]);
        let new = fake.add("zlib-1.3.1", &["libz.so.1"]);
        set_run_path(&old.join("lib/libz.so.1"), &glibc.join("lib"));
        let index = fake.open();
        let choose = |prefs: &Preferences| {
            index
                .choose("libz.so.1", elf::EM_X86_64, Class::Elf64, prefs)
                .unwrap()
        };

        let newest = choose(&Preferences::default());
        assert_eq!(newest.path, new.join("lib"));
        assert_eq!(newest.reason, "newest of 2 candidates (zlib-1.3.1)");

        let same_glibc = Preferences {
            glibc: Some(glibc.clone()),
            ..Preferences::default()
        };
        let chosen = choose(&same_glibc);
        assert_eq!(chosen.path, old.join("lib"));
        assert!(
            chosen
                .reason
                .starts_with("built against the interpreter's glibc"),
            "{}",
            chosen.reason
        );

        let profile = Preferences {
            profile_paths: BTreeSet::from([new.clone()]),
            ..same_glibc.clone()
        };
        let chosen = choose(&profile);
        assert_eq!(chosen.path, new.join("lib"));
        assert!(
            chosen.reason.starts_with("referenced by a profile"),
            "{}",
            chosen.reason
        );

        let lib_dir = Preferences {
            lib_dirs: vec![glibc.join("lib"), old.join("lib")],
            ..profile
        };
        assert_eq!(choose(&lib_dir).path, old.join("lib"));

        assert_eq!(
            index.choose("libmissing.so.1", elf::EM_X86_64, Class::Elf64, &lib_dir),
            None
        );
        assert_eq!(
            index.candidates("libc.so.6", elf::EM_X86_64, Class::Elf64)[0].glibc,
            Some(glibc.clone())
        );
    }

    #[test]
    fn a_choice_among_one_version_says_so() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        let first = fake.add("zlib-1.3.1", &["libz.so.1"]);
        fake.add("zlib-1.3.1", &["libz.so.1"]);
        let chosen = fake
            .open()
            .choose(
                "libz.so.1",
                elf::EM_X86_64,
                Class::Elf64,
                &Preferences::default(),
            )
            .unwrap();
        assert_eq!(chosen.path, first.join("lib"));
        assert_eq!(
            chosen.reason,
            "first by store path of 2 candidates of one version (zlib-1.3.1)"
        );
    }

    #[test]
    fn newest_glibc_loader() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        fake.add("glibc-2.36", &["ld-linux-x86-64.so.2"]);
        let newer = fake.add("glibc-2.40-66", &["ld-linux-x86-64.so.2"]);
        fake.add("glibc-2.40-66-bin", &[]);
        fake.add("glibc-locales-2.99", &["ld-linux-x86-64.so.2"]);
        let index = fake.open();
        assert_eq!(
            index.newest_glibc_interpreter(elf::EM_X86_64),
            Some(newer.join("lib/ld-linux-x86-64.so.2"))
        );
        assert_eq!(index.newest_glibc_interpreter(elf::EM_AARCH64), None);
    }

    #[test]
    fn cache_is_reused_and_refreshed() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        let old = fake.add("zlib-1.2.13", &["libz.so.1"]);
        fake.add("hello-2.12", &[]);
        let first = fake.open();
        assert_eq!(
            first.refresh(),
            Refresh {
                reused: 0,
                scanned: 2,
                dropped: 0
            }
        );
        assert!(fake.cache.join(CACHE_FILE).is_file());

        // Cached entries are trusted: a library removed behind the cache's back stays listed.
        fs::remove_file(old.join("lib/libz.so.1")).unwrap();
        let second = fake.open();
        assert_eq!(
            second.refresh(),
            Refresh {
                reused: 2,
                scanned: 0,
                dropped: 0
            }
        );
        assert_eq!(libz(&second), ["zlib-1.2.13"]);

        fake.add("zlib-1.3.1", &["libz.so.1"]);
        fs::remove_dir_all(&old).unwrap();
        let third = fake.open();
        assert_eq!(
            third.refresh(),
            Refresh {
                reused: 1,
                scanned: 1,
                dropped: 1
            }
        );
        assert_eq!(libz(&third), ["zlib-1.3.1"]);
        assert_eq!(
            fake.open().refresh(),
            Refresh {
                reused: 2,
                scanned: 0,
                dropped: 0
            }
        );
    }

    #[test]
    fn corrupt_cache_is_rebuilt() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        fake.add("zlib-1.3.1", &["libz.so.1"]);
        fs::create_dir_all(&fake.cache).unwrap();
        fs::write(fake.cache.join(CACHE_FILE), "{ truncated").unwrap();
        let index = fake.open();
        assert_eq!(index.refresh().scanned, 1);
        assert_eq!(libz(&index), ["zlib-1.3.1"]);
        assert_eq!(fake.open().refresh().scanned, 0);
    }

    #[test]
    fn damaged_cache_is_rebuilt_with_a_warning() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        fake.add("zlib-1.3.1", &["libz.so.1"]);
        fake.add("hello-2.12", &[]);
        fake.open();
        let cache_file = fake.cache.join(CACHE_FILE);
        let good = fs::read(&cache_file).unwrap();
        let mut changed = good.clone();
        changed[good.len() / 2] ^= 1;
        let damages = [
            ("empty", Vec::new()),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("a byte changed", changed),
            ("not an index", br#"{"format": 1}"#.to_vec()),
        ];
        for (damage, bytes) in damages {
            fs::write(&cache_file, bytes).unwrap();
            let (index, log) = logged(|| fake.open());
            assert_eq!(index.refresh().scanned, 2, "{damage}");
            assert_eq!(libz(&index), ["zlib-1.3.1"], "{damage}");
            assert!(log.contains("WARN"), "{damage}: {log}");
            assert!(log.contains("is corrupt"), "{damage}: {log}");
            assert_eq!(fake.open().refresh().scanned, 0, "{damage}: replaced");
        }
    }

    #[test]
    fn unchanged_store_is_not_listed_and_changes_are_seen() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        let old = fake.add("zlib-1.2.13", &["libz.so.1"]);
        fake.add("hello-2.12", &[]);
        fake.settle();
        assert_eq!(fake.open().refresh().scanned, 2);
        let (index, log) = logged(|| fake.open());
        assert!(log.contains("not listed"), "{log}");
        assert_eq!(
            index.refresh(),
            Refresh {
                reused: 2,
                scanned: 0,
                dropped: 0
            }
        );
        assert_eq!(libz(&index), ["zlib-1.2.13"]);

        fake.add("zlib-1.3.1", &["libz.so.1"]);
        fs::remove_dir_all(&old).unwrap();
        let (index, log) = logged(|| fake.open());
        assert!(!log.contains("not listed"), "{log}");
        assert_eq!(
            index.refresh(),
            Refresh {
                reused: 1,
                scanned: 1,
                dropped: 1
            }
        );
        assert_eq!(libz(&index), ["zlib-1.3.1"]);

        fake.settle();
        fake.open();
        let (index, log) = logged(|| fake.open());
        assert!(log.contains("not listed"), "{log}");
        assert_eq!(libz(&index), ["zlib-1.3.1"]);
    }

    #[test]
    fn old_cache_is_removed() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        fake.add("zlib-1.3.1", &["libz.so.1"]);
        fs::create_dir_all(&fake.cache).unwrap();
        let old = fake.cache.join("store-index-v1.json");
        fs::write(
            &old,
            r#"{"format":1,"store_dir":"/nix/store","store_paths":{}}"#,
        )
        .unwrap();
        assert_eq!(libz(&fake.open()), ["zlib-1.3.1"]);
        assert!(!old.exists());
        assert!(fake.cache.join(CACHE_FILE).is_file());
    }

    #[test]
    fn paths_being_built_are_not_cached() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        let building = fake.add("zlib-1.3.1", &["libz.so.1"]);
        let lock = building.with_file_name(format!(
            "{}.lock",
            building.file_name().unwrap().to_string_lossy()
        ));
        fs::write(&lock, "").unwrap();
        assert_eq!(libz(&fake.open()), ["zlib-1.3.1"]);
        assert_eq!(fake.open().refresh().scanned, 1);
        fs::remove_file(&lock).unwrap();
        fake.open();
        assert_eq!(fake.open().refresh().scanned, 0);
    }

    #[test]
    fn profiles_reference_store_paths() {
        let Some(mut fake) = FakeStore::new() else {
            return;
        };
        let zlib = fake.add("zlib-1.3.1", &["libz.so.1"]);
        let profile = fake.store.parent().unwrap().join("profile");
        fs::create_dir_all(profile.join("lib")).unwrap();
        std::os::unix::fs::symlink(zlib.join("lib/libz.so.1"), profile.join("lib/libz.so.1"))
            .unwrap();
        std::os::unix::fs::symlink(HOST_LIBS, profile.join("lib/host")).unwrap();
        let missing = fake.store.parent().unwrap().join("no-such-profile");

        let prefs = Preferences::from_profiles(&fake.store, &[profile, missing]);
        assert_eq!(prefs.profile_paths, BTreeSet::from([zlib]));
    }

    #[test]
    fn missing_store_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("nix/store");
        let err = StoreIndex::open(&store, tmp.path()).unwrap_err();
        assert!(
            err.to_string().contains(&store.display().to_string()),
            "{err}"
        );
    }
}
