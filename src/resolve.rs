//! Deciding where each needed library of a file comes from: the interpreter's glibc, the GPU
//! driver dir, the file's own prefix (through `$ORIGIN`), a `--lib-dir`, or the Nix store.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use globset::GlobSet;
use serde::Serialize;

use crate::elf::{Class, Elf, VersionNeed};
use crate::fastmap::FastMap;
use crate::scan::MappedFile;
use crate::store::{Preferences, StoreIndex};

/// Where NixOS puts the GPU driver's libraries.
pub const OPENGL_DRIVER_DIR: &str = "/run/opengl-driver/lib";

/// Libraries glibc itself provides: the interpreter finds them in its own lib dir.
const GLIBC_SONAMES: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "libresolv.so.2",
    "libanl.so.1",
    "libmvec.so.1",
    "libBrokenLocale.so.1",
    "libthread_db.so.1",
    "libc_malloc_debug.so.0",
    "libnss_files.so.2",
    "libnss_dns.so.2",
    "libnss_compat.so.2",
    "libnss_db.so.2",
    "libnss_hesiod.so.2",
];

/// Library name prefixes of the GPU driver, which only the running system can provide.
const GPU_DRIVER_PREFIXES: &[&str] = &[
    "libcuda.so",
    "libnvidia-",
    "libnvcuvid.so",
    "libnvoptix.so",
    "libGLX_nvidia.so",
    "libEGL_nvidia.so",
    "libGLESv1_CM_nvidia.so",
    "libGLESv2_nvidia.so",
    "libvdpau_nvidia.so",
];

pub fn is_glibc_library(soname: &str) -> bool {
    GLIBC_SONAMES.contains(&soname)
        || soname.starts_with("ld-linux")
        || soname.starts_with("ld64.so")
}

pub fn is_gpu_driver_library(soname: &str) -> bool {
    GPU_DRIVER_PREFIXES.iter().any(|p| soname.starts_with(p))
}

/// A library a prefix holds under some file name.
#[derive(Debug, Clone)]
pub struct PrefixLib {
    pub dir: PathBuf,
    pub machine: u16,
    pub class: Class,
    /// The package or distribution that installed it.
    pub owner: Option<String>,
}

/// The libraries of one prefix, by the file names the loader would look up.
#[derive(Debug, Default)]
pub struct PrefixLibs {
    pub root: PathBuf,
    by_name: FastMap<String, Vec<PrefixLib>>,
    /// A venv's base Python's `lib` directory, which serves before other store paths.
    pub python_lib: Option<PathBuf>,
}

impl PrefixLibs {
    pub fn new(root: PathBuf) -> PrefixLibs {
        PrefixLibs {
            root,
            by_name: FastMap::default(),
            python_lib: None,
        }
    }

    pub fn add(&mut self, name: String, lib: PrefixLib) {
        let entries = self.by_name.entry(name).or_default();
        if !entries.iter().any(|e| e.dir == lib.dir) {
            entries.push(lib);
            entries.sort_by(|a, b| a.dir.cmp(&b.dir));
        }
    }

    fn candidates(&self, soname: &str, machine: u16, class: Class) -> Vec<&PrefixLib> {
        self.by_name
            .get(soname)
            .into_iter()
            .flatten()
            .filter(|l| l.machine == machine && l.class == class)
            .collect()
    }

    /// Whether `dir` holds a library named `soname` of this machine.
    fn dir_holds(&self, dir: &Path, soname: &str, machine: u16, class: Class) -> bool {
        self.candidates(soname, machine, class)
            .iter()
            .any(|l| l.dir == dir)
    }
}

/// Where a needed library comes from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Provider {
    /// The interpreter's glibc: found in its own lib dir, no entry needed.
    Glibc,
    /// Already found through a run path entry the file has.
    RunPath { entry: String },
    /// The prefix's own copy.
    Prefix {
        #[serde(serialize_with = "crate::plan::lossy::path")]
        dir: PathBuf,
        entry: String,
    },
    /// The GPU driver dir of the running system.
    GpuDriver { entry: String },
    /// A `--lib-dir` or a store path.
    Outside { entry: String },
    /// Nowhere; listed with what was searched.
    Unresolved { searched: Vec<String> },
    /// Nowhere, and the user said that is fine.
    Ignored,
}

impl Provider {
    /// Whether the provider lies outside the prefix: a lib dir, the store, the driver dir.
    fn is_outside(&self) -> bool {
        matches!(self, Provider::Outside { .. } | Provider::GpuDriver { .. })
    }

    fn new_entry(&self) -> Option<&str> {
        match self {
            Provider::Prefix { entry, .. }
            | Provider::GpuDriver { entry }
            | Provider::Outside { entry } => Some(entry),
            _ => None,
        }
    }
}

/// One needed library and its provider.
#[derive(Debug, Clone, Serialize)]
pub struct Needed {
    pub soname: String,
    #[serde(flatten)]
    pub provider: Provider,
    pub reason: String,
    /// An entry the file already has whose copy lacks versions the file needs: the new entry
    /// must come before it, as the loader takes the first copy it finds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
}

/// What a file needs and the run path that serves it.
#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    pub needed: Vec<Needed>,
    /// The run path the file should have; `None` when it should stay as it is.
    pub run_path: Option<String>,
}

impl Needed {
    pub fn is_unresolved(&self) -> bool {
        matches!(self.provider, Provider::Unresolved { .. })
    }
}

impl Resolution {
    /// Adds the new entries another name of the file (in another prefix) needs that the run
    /// path lacks: what this name loads stays the same, and the other name finds what this one
    /// does not provide for it. Entries into a prefix go before the outside entries (store, lib
    /// dirs, driver dir) that either name added, so that a prefix's own copy comes first in every
    /// prefix that has one; outside entries go last.
    pub fn append_entries_for(&mut self, existing: Option<&str>, other: &[Needed]) {
        let current = self.run_path.as_deref().or(existing);
        let mut run_path = entries(current);
        let mut outside: Vec<String> = self
            .needed
            .iter()
            .filter(|n| n.provider.is_outside())
            .filter_map(|n| n.provider.new_entry().map(str::to_string))
            .collect();
        for needed in other {
            let Some(entry) = needed.provider.new_entry() else {
                continue;
            };
            if run_path.iter().any(|e| e == entry) {
                continue;
            }
            let first_outside = run_path.iter().position(|e| outside.contains(e));
            match first_outside {
                Some(at) if !needed.provider.is_outside() => run_path.insert(at, entry.to_string()),
                _ => run_path.push(entry.to_string()),
            }
            if needed.provider.is_outside() {
                outside.push(entry.to_string());
            }
        }
        let joined = run_path.join(":");
        self.run_path = (existing.unwrap_or("") != joined).then_some(joined);
    }
}

/// The entries of a run path, empty ones left out.
fn entries(run_path: Option<&str>) -> Vec<String> {
    run_path
        .map(|r| {
            r.split(':')
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A file to resolve, as the scan read it.
pub struct FileToResolve<'a> {
    pub path: &'a Path,
    pub machine: u16,
    pub class: Class,
    pub needed: &'a [String],
    pub run_path: Option<&'a str>,
    pub owner: Option<&'a str>,
    pub version_needs: &'a [VersionNeed],
}

/// The versions each library defines, read once per path.
#[derive(Debug, Default)]
pub struct DefinedVersions(Mutex<FastMap<OsString, Arc<Vec<String>>>>);

impl DefinedVersions {
    /// Of `wanted`, those the library at `path` does not define. A library that cannot be read
    /// or defines no versions at all lacks none: the loader does not check against it either.
    fn missing(&self, path: &Path, wanted: &[String]) -> Vec<String> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let defined = self.of(path);
        if defined.is_empty() {
            return Vec::new();
        }
        wanted
            .iter()
            .filter(|v| !defined.contains(v))
            .cloned()
            .collect()
    }

    fn of(&self, path: &Path) -> Arc<Vec<String>> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = cache.get(path.as_os_str()) {
            return known.clone();
        }
        let defined = Arc::new(read_version_defs(path));
        cache.insert(path.as_os_str().to_owned(), defined.clone());
        defined
    }
}

/// The versions the library at `path` defines, following links as the loader does.
fn read_version_defs(path: &Path) -> Vec<String> {
    let Ok(file) = std::fs::canonicalize(path).and_then(|p| MappedFile::open(&p)) else {
        return Vec::new();
    };
    Elf::parse(file.bytes())
        .map(|elf| elf.version_defs().into_iter().map(|d| d.name).collect())
        .unwrap_or_default()
}

/// Everything resolution consults outside the file itself.
pub struct Resolver<'a> {
    pub store: Option<&'a StoreIndex>,
    pub preferences: &'a Preferences,
    pub ignore_missing: &'a GlobSet,
    /// For a package of a prefix, the packages it depends on there, transitively (conda
    /// prefixes only).
    pub depends: &'a (dyn Fn(&Path, &str) -> Vec<String> + Sync),
    pub defined_versions: DefinedVersions,
}

impl Resolver<'_> {
    pub fn resolve(&self, file: &FileToResolve, libs: &PrefixLibs) -> Resolution {
        let origin = file.path.parent().unwrap_or(Path::new("/"));
        let existing: Vec<&str> = file
            .run_path
            .map(|r| r.split(':').filter(|e| !e.is_empty()).collect())
            .unwrap_or_default();
        let needed: Vec<Needed> = file
            .needed
            .iter()
            .map(|soname| self.resolve_one(file, soname, origin, &existing, libs))
            .collect();
        let mut run_path: Vec<String> = existing.iter().map(|e| e.to_string()).collect();
        for n in &needed {
            if let Some(entry) = n.provider.new_entry() {
                place_entry(&mut run_path, entry, n.before.as_deref());
            }
        }
        let joined = run_path.join(":");
        let changed = file.run_path.unwrap_or("") != joined;
        Resolution {
            needed,
            run_path: changed.then_some(joined),
        }
    }

    fn resolve_one(
        &self,
        file: &FileToResolve,
        soname: &str,
        origin: &Path,
        existing: &[&str],
        libs: &PrefixLibs,
    ) -> Needed {
        let plain = |provider: Provider, reason: String| Needed {
            soname: soname.to_string(),
            provider,
            reason,
            before: None,
        };
        if is_glibc_library(soname) {
            return plain(
                Provider::Glibc,
                "part of glibc: the interpreter's own lib dir".into(),
            );
        }
        // The loader takes the first copy it finds: one without the versions the file needs
        // makes an entry that has them go before it.
        let mut short = None;
        if let Some((entry, dir)) = existing
            .iter()
            .find_map(|e| Some((*e, self.entry_dir(e, origin, soname, file, libs)?)))
        {
            let missing = self
                .defined_versions
                .missing(&dir.join(soname), wanted_versions(file, soname));
            if missing.is_empty() {
                return plain(
                    Provider::RunPath {
                        entry: entry.to_string(),
                    },
                    format!("already found through run path entry {entry}"),
                );
            }
            short = Some((
                entry,
                format!("{entry} finds a copy without {}", missing.join(", ")),
            ));
        }
        let needed = |provider: Provider, reason: String| match &short {
            None => plain(provider, reason),
            Some((entry, lacks)) if provider.new_entry().is_some() => Needed {
                before: Some(entry.to_string()),
                ..plain(provider, format!("{reason}; put before {lacks}"))
            },
            Some((entry, lacks)) => plain(
                Provider::RunPath {
                    entry: entry.to_string(),
                },
                format!("run path entry {lacks}; nothing else has it"),
            ),
        };
        if is_gpu_driver_library(soname) {
            return needed(
                Provider::GpuDriver {
                    entry: OPENGL_DRIVER_DIR.into(),
                },
                "GPU driver library: provided by the running system".into(),
            );
        }
        if let Some((lib, why)) = self.choose_in_prefix(file, soname, libs) {
            let entry = origin_entry(origin, &lib.dir);
            return needed(
                Provider::Prefix {
                    dir: lib.dir.clone(),
                    entry,
                },
                why,
            );
        }
        // Lib dirs come first and serve without a store (a build that offers only its inputs).
        if let Some(dir) = self
            .preferences
            .lib_dirs
            .iter()
            .find(|d| crate::store::holds_library(d, soname, file.machine, file.class))
        {
            return needed(
                Provider::Outside {
                    entry: dir.display().to_string(),
                },
                format!("found in lib dir {}", dir.display()),
            );
        }
        if let Some(dir) = self.in_venv_python(libs, soname, file) {
            return needed(
                Provider::Outside {
                    entry: dir.display().to_string(),
                },
                "in the store Python the venv was made from (home in pyvenv.cfg)".into(),
            );
        }
        if let Some(choice) = self
            .store
            .and_then(|s| s.choose(soname, file.machine, file.class, self.preferences))
        {
            return needed(
                Provider::Outside {
                    entry: choice.path.display().to_string(),
                },
                choice.reason,
            );
        }
        if self.ignore_missing.is_match(soname) {
            return needed(
                Provider::Ignored,
                "not found; ignored as asked (--ignore-missing)".into(),
            );
        }
        let mut searched: Vec<String> = existing.iter().map(|e| e.to_string()).collect();
        searched.push(format!("the prefix {}", libs.root.display()));
        searched.extend(
            self.preferences
                .lib_dirs
                .iter()
                .map(|d| d.display().to_string()),
        );
        if let Some(store) = self.store {
            searched.push(format!("the store {}", store.store_dir().display()));
        }
        needed(
            Provider::Unresolved { searched },
            "not found anywhere searched".into(),
        )
    }

    /// The store directory holding `soname` in the venv's base Python, when it has it: of
    /// the store paths with the same library, the one the venv came from.
    fn in_venv_python(
        &self,
        libs: &PrefixLibs,
        soname: &str,
        file: &FileToResolve,
    ) -> Option<PathBuf> {
        let lib = libs.python_lib.as_ref()?;
        if !crate::store::holds_library(lib, soname, file.machine, file.class) {
            return None;
        }
        // A profile's lib dir holds links: the library's own store path is what stays.
        let real = std::fs::canonicalize(lib.join(soname)).ok()?;
        let dir = real.parent()?;
        let store = self.store?.store_dir();
        dir.starts_with(store).then(|| dir.to_path_buf())
    }

    /// The directory through which an existing run path entry finds `soname`, if it does. Only
    /// entries inside the prefix, the store or the driver dir count: host paths do not exist on
    /// NixOS.
    fn entry_dir(
        &self,
        entry: &str,
        origin: &Path,
        soname: &str,
        file: &FileToResolve,
        libs: &PrefixLibs,
    ) -> Option<PathBuf> {
        let dir = normalize(&expand_origin(entry, origin));
        let holds = if lies_within(&dir, &libs.root) {
            libs.dir_holds(&dir, soname, file.machine, file.class)
        } else {
            let in_store = self.store.is_some_and(|s| dir.starts_with(s.store_dir()));
            (in_store || dir.starts_with(OPENGL_DRIVER_DIR)) && dir.join(soname).exists()
        };
        holds.then_some(dir)
    }

    /// The prefix's copy of `soname`; among several, the one from a package the owner depends
    /// on, then the one in the owner's own package, then the first by path.
    fn choose_in_prefix<'l>(
        &self,
        file: &FileToResolve,
        soname: &str,
        libs: &'l PrefixLibs,
    ) -> Option<(&'l PrefixLib, String)> {
        let candidates = libs.candidates(soname, file.machine, file.class);
        let first = *candidates.first()?;
        if candidates.len() == 1 {
            return Some((
                first,
                format!("the prefix's own copy in {}", first.dir.display()),
            ));
        }
        let Some(owner) = file.owner else {
            return Some((
                first,
                format!("first of {} copies in the prefix", candidates.len()),
            ));
        };
        let depends = (self.depends)(&libs.root, owner);
        let by_dependency = candidates.iter().find(|c| {
            c.owner
                .as_deref()
                .is_some_and(|o| o == owner || depends.iter().any(|d| d == o))
        });
        match by_dependency {
            Some(lib) => Some((
                lib,
                format!(
                    "{} of {} copies: from {}, which {owner} depends on",
                    lib.dir.display(),
                    candidates.len(),
                    lib.owner.as_deref().unwrap_or("?")
                ),
            )),
            None => Some((
                first,
                format!("first of {} copies in the prefix", candidates.len()),
            )),
        }
    }
}

/// The versions `file` needs of the library it loads as `soname`.
fn wanted_versions<'f>(file: &'f FileToResolve, soname: &str) -> &'f [String] {
    file.version_needs
        .iter()
        .find(|n| n.file == soname)
        .map_or(&[], |n| &n.versions)
}

/// Adds `entry` to `run_path`, before `before` when given (moving it there if it comes later).
fn place_entry(run_path: &mut Vec<String>, entry: &str, before: Option<&str>) {
    let at = before.and_then(|b| run_path.iter().position(|e| e == b));
    match (run_path.iter().position(|e| e == entry), at) {
        (Some(now), Some(at)) if now > at => {
            let moved = run_path.remove(now);
            run_path.insert(at, moved);
        }
        (Some(_), _) => {}
        (None, Some(at)) => run_path.insert(at, entry.to_string()),
        (None, None) => run_path.push(entry.to_string()),
    }
}

/// `$ORIGIN` (or `${ORIGIN}`) replaced by the file's directory.
pub fn expand_origin(entry: &str, origin: &Path) -> PathBuf {
    if !entry.contains('$') {
        return PathBuf::from(entry);
    }
    let o = origin.to_string_lossy();
    PathBuf::from(OsStr::from_bytes(&expand_origin_bytes(
        entry.as_bytes(),
        o.as_bytes(),
    )))
}

/// [`expand_origin`] on bytes: `$ORIGIN` (or `${ORIGIN}`) in `entry` replaced by `origin`.
pub fn expand_origin_bytes(entry: &[u8], origin: &[u8]) -> Vec<u8> {
    replace(&replace(entry, b"${ORIGIN}", origin), b"$ORIGIN", origin)
}

/// `text` with every `from` replaced by `to`.
fn replace(text: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// Removes `.` and `..` components and repeated slashes lexically, as the loader does with
/// `$ORIGIN` paths; `..` at the top stays at the top. Works on the bytes: resolution normalizes
/// every run path entry of every file.
pub fn normalize(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let top = usize::from(bytes.starts_with(b"/"));
    out.extend_from_slice(&bytes[..top]);
    for part in bytes.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                let last = out[top..].iter().rposition(|&b| b == b'/');
                out.truncate(last.map_or(top, |at| top + at));
            }
            _ => {
                if out.len() > top {
                    out.push(b'/');
                }
                out.extend_from_slice(part);
            }
        }
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// Whether `path` is `dir` or lies below it, comparing bytes: both are normalized.
fn lies_within(path: &Path, dir: &Path) -> bool {
    let (path, dir) = (path.as_os_str().as_bytes(), dir.as_os_str().as_bytes());
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/' || dir.ends_with(b"/"))
}

/// The `$ORIGIN`-relative entry reaching `dir` from `origin`.
pub fn origin_entry(origin: &Path, dir: &Path) -> String {
    let from: Vec<_> = origin.components().collect();
    let to: Vec<_> = dir.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c);
    }
    if rel.as_os_str().is_empty() {
        "$ORIGIN".into()
    } else {
        format!("$ORIGIN/{}", rel.display())
    }
}

/// Sonames nothing could provide, with the names that need them (each name with what it was
/// resolved to in its prefix).
pub fn unresolved_summary<'a>(
    names: impl Iterator<Item = (&'a Path, &'a [Needed])>,
) -> BTreeMap<String, Vec<PathBuf>> {
    let mut missing: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (path, needed) in names {
        for n in needed.iter().filter(|n| n.is_unresolved()) {
            missing
                .entry(n.soname.clone())
                .or_default()
                .push(path.to_path_buf());
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_entries_are_relative() {
        assert_eq!(
            origin_entry(Path::new("/p/bin"), Path::new("/p/lib")),
            "$ORIGIN/../lib"
        );
        assert_eq!(
            origin_entry(Path::new("/p/lib"), Path::new("/p/lib")),
            "$ORIGIN"
        );
        assert_eq!(
            origin_entry(
                Path::new("/p/lib/python3.12/site-packages/x"),
                Path::new("/p/lib")
            ),
            "$ORIGIN/../../.."
        );
    }

    fn placed(run_path: &[&str], entry: &str, before: Option<&str>) -> Vec<String> {
        let mut run_path: Vec<String> = run_path.iter().map(|e| e.to_string()).collect();
        place_entry(&mut run_path, entry, before);
        run_path
    }

    #[test]
    fn an_entry_goes_before_the_one_whose_copy_falls_short() {
        assert_eq!(placed(&["/a"], "/b", None), ["/a", "/b"]);
        assert_eq!(placed(&["/a", "/s"], "/b", Some("/s")), ["/a", "/b", "/s"]);
        assert_eq!(
            placed(&["/s", "/a", "/b"], "/b", Some("/s")),
            ["/b", "/s", "/a"]
        );
        assert_eq!(placed(&["/b", "/s"], "/b", Some("/s")), ["/b", "/s"]);
        assert_eq!(placed(&["/s"], "/s", Some("/s")), ["/s"]);
    }

    #[test]
    fn among_copies_the_one_of_a_dependency_in_the_files_own_prefix_wins() {
        let copy = |dir: &str, owner: &str| PrefixLib {
            dir: PathBuf::from(dir),
            machine: 62,
            class: Class::Elf64,
            owner: Some(owner.to_string()),
        };
        let mut libs = PrefixLibs::new(PathBuf::from("/envs/b"));
        libs.add("libz.so.1".into(), copy("/envs/b/lib", "zlib-a"));
        libs.add("libz.so.1".into(), copy("/envs/b/opt/lib", "zlib-b"));
        // The same package depends on another zlib in another environment.
        let depends = |prefix: &Path, owner: &str| match (prefix.to_str(), owner) {
            (Some("/envs/b"), "app") => vec!["zlib-b".to_string()],
            _ => vec!["zlib-a".to_string()],
        };
        let (preferences, ignore) = (Preferences::default(), GlobSet::empty());
        let resolver = Resolver {
            store: None,
            preferences: &preferences,
            ignore_missing: &ignore,
            depends: &depends,
            defined_versions: DefinedVersions::default(),
        };
        let file = FileToResolve {
            path: Path::new("/envs/b/bin/app"),
            machine: 62,
            class: Class::Elf64,
            needed: &["libz.so.1".to_string()],
            run_path: None,
            owner: Some("app"),
            version_needs: &[],
        };
        let resolution = resolver.resolve(&file, &libs);
        assert_eq!(resolution.run_path.as_deref(), Some("$ORIGIN/../opt/lib"));
    }

    fn outside(entry: &str) -> Needed {
        Needed {
            soname: "libz.so.1".into(),
            provider: Provider::Outside {
                entry: entry.into(),
            },
            reason: String::new(),
            before: None,
        }
    }

    fn appended(own: Option<&str>, existing: Option<&str>, other: &[Needed]) -> Option<String> {
        let mut resolution = Resolution {
            needed: Vec::new(),
            run_path: own.map(str::to_string),
        };
        resolution.append_entries_for(existing, other);
        resolution.run_path
    }

    #[test]
    fn another_prefix_gets_the_entries_it_lacks_after_the_planning_names() {
        let origin = Some("$ORIGIN");
        assert_eq!(
            appended(None, origin, &[outside("/s/z/lib")]).as_deref(),
            Some("$ORIGIN:/s/z/lib")
        );
        assert_eq!(
            appended(
                Some("/s/x/lib:$ORIGIN"),
                origin,
                &[outside("$ORIGIN"), outside("/s/z/lib"), outside("/s/x/lib")]
            )
            .as_deref(),
            Some("/s/x/lib:$ORIGIN:/s/z/lib")
        );
        let found = Needed {
            provider: Provider::RunPath {
                entry: "$ORIGIN".into(),
            },
            ..outside("")
        };
        assert_eq!(appended(None, origin, &[found]), None);
    }

    #[test]
    fn another_prefixs_own_copy_goes_before_the_store_entries_of_the_planning_name() {
        let mut resolution = Resolution {
            needed: vec![outside("/s/z/lib")],
            run_path: Some("/s/z/lib".into()),
        };
        let own = Needed {
            provider: Provider::Prefix {
                dir: PathBuf::from("/env/b/lib"),
                entry: "$ORIGIN/../lib".into(),
            },
            ..outside("")
        };
        resolution.append_entries_for(None, &[outside("/s/x/lib"), own]);
        assert_eq!(
            resolution.run_path.as_deref(),
            Some("$ORIGIN/../lib:/s/z/lib:/s/x/lib")
        );
    }

    #[test]
    fn normalizes_origin_paths() {
        let p = expand_origin("$ORIGIN/../lib", Path::new("/p/bin"));
        assert_eq!(normalize(&p), PathBuf::from("/p/lib"));
        for (path, normal) in [
            ("/a/./b//c/", "/a/b/c"),
            ("/a/b/../../..", "/"),
            ("/../a", "/a"),
            ("a/../../b", "b"),
            ("./a/.", "a"),
            ("/", "/"),
            ("", ""),
        ] {
            assert_eq!(normalize(Path::new(path)), Path::new(normal), "{path}");
        }
    }

    #[test]
    fn a_path_lies_within_a_directory_by_whole_components() {
        assert!(lies_within(Path::new("/p/lib"), Path::new("/p")));
        assert!(lies_within(Path::new("/p"), Path::new("/p")));
        assert!(lies_within(Path::new("/p/lib"), Path::new("/")));
        assert!(!lies_within(Path::new("/pp/lib"), Path::new("/p")));
    }

    #[test]
    fn glibc_and_gpu_libraries_are_recognised() {
        assert!(is_glibc_library("libm.so.6"));
        assert!(is_glibc_library("ld-linux-x86-64.so.2"));
        assert!(!is_glibc_library("libstdc++.so.6"));
        assert!(is_gpu_driver_library("libcuda.so.1"));
        assert!(is_gpu_driver_library("libnvidia-ml.so.1"));
        assert!(!is_gpu_driver_library("libGL.so.1"));
    }
}
