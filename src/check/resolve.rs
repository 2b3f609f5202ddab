//! One simulated start of the loader: load order, search order, and symbol version checks, as
//! glibc's `_dl_map_object_deps`, `_dl_map_object` and `_dl_check_map_versions` do them.

use std::cell::OnceCell;
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dirs::{Found, SearchDirs};
use super::host;
use super::loader::{Loader, Setup, kind_name};
use super::object::{DF_1_NODEFLIB, DF_1_PIE, Object, Probe};
use super::report::{FileReport, ProblemKind, Resolved, Shown, Via};
use super::search::{Tokens, expand, search_dirs};
use super::{FastMap, FastSet};

mod advice;
use crate::elf::{ET_DYN, ET_EXEC, RunPathKind};

/// An object in the process.
struct Loaded {
    /// Names it was asked for (glibc's `l_libname`).
    names: Vec<String>,
    /// The path it was opened at (`l_name`).
    path: Arc<Path>,
    object: Arc<Object>,
    /// The object whose dependency first brought it in (`l_loader`).
    loaded_by: Option<usize>,
    /// What `$ORIGIN` means in its strings.
    origin: Arc<Path>,
    /// The name the program was given by, when it differs from `path`.
    named: Option<PathBuf>,
    /// How messages name it, made when one does.
    shown: OnceCell<String>,
    /// Its run path as directories, expanded when first searched: every library it needs
    /// searches them.
    dirs: OnceCell<Arc<SearchDirs>>,
    /// Whether it is in the load order (the interpreter is loaded but joins only when needed).
    queued: bool,
}

impl Loaded {
    fn new(names: Vec<String>, path: Arc<Path>, object: Arc<Object>, origin: Arc<Path>) -> Loaded {
        Loaded {
            names,
            path,
            object,
            loaded_by: None,
            origin,
            named: None,
            shown: OnceCell::new(),
            dirs: OnceCell::new(),
            queued: true,
        }
    }

    /// Its path as `shown` names it: relative to the root when inside it.
    fn shown(&self, shown: &Shown) -> &str {
        self.shown.get_or_init(|| {
            shown.path(
                &self.object.canonical,
                self.named.as_deref().unwrap_or(&self.path),
            )
        })
    }

    /// The directories of its run path of `kind`, if it has one that serves (an object has one
    /// at most: a `DT_RUNPATH` hides its `DT_RPATH`). One without tokens is the same wherever
    /// the object lies and is expanded once for every check.
    fn search_dirs(&self, kind: RunPathKind, tokens: &Tokens) -> Option<&SearchDirs> {
        let raw = self.object.search_path(kind)?;
        if !raw.contains(&b'$') {
            return Some(self.object.plain_search_dirs(raw));
        }
        Some(
            self.dirs
                .get_or_init(|| self.object.search_dirs_with(raw, tokens)),
        )
    }

    /// Every name a dependency can match it by: a name it was asked for, the path it was opened
    /// at, its soname.
    fn match_names(&self) -> impl Iterator<Item = &[u8]> {
        self.names
            .iter()
            .map(|n| n.as_bytes())
            .chain([self.path.as_os_str().as_bytes()])
            .chain(self.object.soname.as_deref().map(str::as_bytes))
    }
}

/// Where an object was found: its path and what `$ORIGIN` means there.
struct Place {
    path: Arc<Path>,
    origin: Arc<Path>,
}

/// What one place of the search turned up.
enum Candidate {
    Missing,
    /// Passed over, as the loader does with an object for another class or machine.
    Skipped(String),
    /// Refused outright: the loader stops.
    Refused(Arc<str>),
    Usable(Arc<Object>),
}

/// Where a lookup ended.
enum Hit {
    Found {
        place: Place,
        object: Arc<Object>,
        /// How it was found, when the report lists what was loaded.
        via: Option<Via>,
    },
    Refused {
        path: Arc<Path>,
        why: Arc<str>,
    },
}

/// Where a search looked, for the message when it fails. Most searches succeed, so a search
/// first runs without recording, and runs again recording only when it fails.
#[derive(Default)]
struct Trail {
    recording: bool,
    places: Vec<String>,
    skipped: Vec<(PathBuf, String)>,
    /// Notes for the report, taken on the first run only.
    notes: Vec<String>,
}

impl Trail {
    fn recording() -> Trail {
        Trail {
            recording: true,
            ..Trail::default()
        }
    }

    fn place(&mut self, place: impl FnOnce() -> String) {
        if self.recording {
            self.places.push(place());
        }
    }

    fn skipped(&mut self, path: &Path, why: String) {
        if self.recording {
            self.skipped.push((path.to_path_buf(), why));
        }
    }

    /// Notes that the search path `place` has an entry relative to the current directory.
    fn relative_entries(&mut self, dirs: &[PathBuf], place: &dyn Fn() -> String) {
        if !self.recording && dirs.iter().any(|d| d.is_relative()) {
            self.notes.push(format!(
                "{} has an entry relative to the current directory, so what it finds depends on where the program is started",
                place()
            ));
        }
    }
}

pub(super) struct Session<'a, 'h> {
    loader: &'a Loader<'h>,
    setup: &'a Setup,
    shown: &'a Shown,
    loaded: Vec<Loaded>,
    /// The hash of each name a loaded object matches (see [`Loaded::match_names`]), to the
    /// first object loaded that has a name of that hash: names are looked up far more often
    /// than objects are added, and hashing spares a copy of each.
    by_name: FastMap<u64, usize>,
    /// Each object's place in `loaded`, by the address of the one copy the loader's cache has.
    by_object: FastMap<usize, usize>,
    queue: VecDeque<usize>,
    /// Names searched for in vain; the loader does not search for them again.
    unfound: FastSet<String>,
    report: FileReport,
}

impl<'a, 'h> Session<'a, 'h> {
    pub fn new(
        loader: &'a Loader<'h>,
        setup: &'a Setup,
        shown: &'a Shown,
        main: Arc<Object>,
        main_path: &Path,
        report: FileReport,
    ) -> Session<'a, 'h> {
        // The kernel hands ld.so the program's real path (/proc/self/exe), so `$ORIGIN` of the
        // program is the directory of its canonical path.
        let program = Loaded {
            named: Some(main_path.to_path_buf()),
            ..Loaded::new(
                Vec::new(),
                Arc::from(main.canonical.as_path()),
                main.clone(),
                Arc::from(parent(&main.canonical)),
            )
        };
        let mut loaded = vec![program];
        if let (Some(path), Some(rtld)) = (&setup.interpreter, &setup.rtld) {
            let mut names = vec![path.display().to_string()];
            names.extend(rtld.soname.clone());
            loaded.push(Loaded {
                queued: false,
                ..Loaded::new(
                    names,
                    Arc::from(path.as_path()),
                    rtld.clone(),
                    Arc::from(parent(path)),
                )
            });
        }
        let mut session = Session {
            loader,
            setup,
            shown,
            loaded: Vec::with_capacity(loaded.len()),
            by_name: FastMap::default(),
            by_object: FastMap::default(),
            queue: VecDeque::from([0]),
            unfound: FastSet::default(),
            report,
        };
        for entry in loaded {
            session.push(entry);
        }
        session
    }

    /// Adds `entry` to the process.
    fn push(&mut self, entry: Loaded) {
        let index = self.loaded.len();
        for name in entry.match_names() {
            self.by_name.entry(name_hash(name)).or_insert(index);
        }
        self.by_object
            .entry(object_key(&entry.object))
            .or_insert(index);
        self.loaded.push(entry);
    }

    pub fn run(mut self) -> FileReport {
        // Breadth first: each object's needed libraries in order, new ones joining the queue.
        while let Some(index) = self.queue.pop_front() {
            let object = self.loaded[index].object.clone();
            for name in &object.needed {
                self.need(index, name);
            }
        }
        self.check_versions();
        self.report
    }

    fn need(&mut self, needer: usize, raw: &str) {
        let expanded;
        let name = if raw.contains('$') {
            expanded = lossy(&expand(raw.as_bytes(), &self.tokens(needer)));
            expanded.as_str()
        } else {
            raw
        };
        if let Some(index) = self.find_loaded(name) {
            self.join_load_order(index, name);
            return;
        }
        if self.unfound.contains(name) {
            return;
        }
        let mut first_run = Trail::default();
        let hit = self.lookup(needer, name, &mut first_run);
        for note in first_run.notes {
            self.report.note(note);
        }
        match hit {
            Some(Hit::Found { place, object, via }) => {
                self.add(needer, name.to_string(), place, object, via);
            }
            Some(Hit::Refused { path, why }) => {
                self.unfound.insert(name.to_string());
                self.refused(needer, name, &path, &why);
            }
            None => {
                self.unfound.insert(name.to_string());
                let mut trail = Trail::recording();
                self.lookup(needer, name, &mut trail);
                self.not_found(needer, name, &trail);
            }
        }
    }

    /// An already loaded object matching `name`: by a name it was asked for, the path it was
    /// opened at, or its soname. The first object with a name of that hash answers, unless two
    /// names share a hash; then every object is compared.
    fn find_loaded(&self, name: &str) -> Option<usize> {
        let name = name.as_bytes();
        let matches = |l: &Loaded| l.match_names().any(|n| n == name);
        let &first = self.by_name.get(&name_hash(name))?;
        if matches(&self.loaded[first]) {
            return Some(first);
        }
        self.loaded.iter().position(matches)
    }

    fn join_load_order(&mut self, index: usize, name: &str) {
        let entry = &mut self.loaded[index];
        if entry.queued {
            return;
        }
        entry.queued = true;
        if self.loader.config.list_resolved {
            self.report.resolved.push(Resolved {
                name: name.to_string(),
                path: entry.path.to_path_buf(),
                via: Via::Interpreter,
            });
        }
        self.queue.push_back(index);
    }

    fn add(
        &mut self,
        needer: usize,
        name: String,
        place: Place,
        object: Arc<Object>,
        via: Option<Via>,
    ) {
        // The same file under another name is the same object (glibc compares device and inode).
        // The loader's cache gives one object per canonical path.
        if let Some(&index) = self.by_object.get(&object_key(&object)) {
            self.by_name
                .entry(name_hash(name.as_bytes()))
                .or_insert(index);
            self.loaded[index].names.push(name.clone());
            self.join_load_order(index, &name);
            return;
        }
        if let Some(via) = via {
            self.report.resolved.push(Resolved {
                name: name.clone(),
                path: place.path.to_path_buf(),
                via,
            });
        }
        self.push(Loaded {
            loaded_by: Some(needer),
            ..Loaded::new(vec![name], place.path, object, place.origin)
        });
        self.queue.push_back(self.loaded.len() - 1);
    }

    /// The search of `_dl_map_object` for a dependency of `needer`.
    fn lookup(&self, needer: usize, name: &str, trail: &mut Trail) -> Option<Hit> {
        if name.contains('/') {
            return self
                .try_path(Path::new(name), trail)
                .map(|f| self.hit(f, &|| Via::Path));
        }
        let object = self.loaded[needer].object.clone();
        // An object with a RUNPATH ignores every RPATH, its loaders' included.
        if !object.has_runpath() {
            let mut next = Some(needer);
            while let Some(owner) = next {
                let loaded = &self.loaded[owner];
                next = loaded.loaded_by;
                let Some(rpath) = loaded.object.search_path(RunPathKind::RPath) else {
                    continue;
                };
                let Some(dirs) = loaded.search_dirs(RunPathKind::RPath, &self.tokens(owner)) else {
                    continue;
                };
                // Named only in the message of a failed search.
                let inherited = (trail.recording && owner != needer)
                    .then(|| loaded.shown(self.shown).to_string());
                let place = || match &inherited {
                    None => format!("RPATH [{}]", lossy(rpath)),
                    Some(of) => format!("RPATH [{}] of {of}", lossy(rpath)),
                };
                let via = || Via::Rpath {
                    owner: loaded.path.to_path_buf(),
                };
                if let Some(hit) = self.search(dirs, name, &via, &place, trail) {
                    return Some(hit);
                }
            }
        }
        let loader = self.loader;
        if let Some(entries) = &loader.config.env_ld_library_path {
            let tokens = self.tokens(0);
            let dirs = SearchDirs::new(
                entries
                    .iter()
                    .flat_map(|e| search_dirs(e.as_os_str().as_bytes(), b"", &tokens))
                    .collect(),
            );
            let place = || format!("LD_LIBRARY_PATH [{}]", join_dirs(entries));
            if let Some(hit) = self.search(&dirs, name, &|| Via::LdLibraryPath, &place, trail) {
                return Some(hit);
            }
        }
        let loaded = &self.loaded[needer];
        if let Some(dirs) = loaded.search_dirs(RunPathKind::RunPath, &self.tokens(needer)) {
            let runpath = object.search_path(RunPathKind::RunPath).unwrap_or_default();
            let place = || format!("RUNPATH [{}]", lossy(runpath));
            if let Some(hit) = self.search(dirs, name, &|| Via::Runpath, &place, trail) {
                return Some(hit);
            }
        }
        self.search_defaults(&object, name, trail)
    }

    /// The ld.so cache, then the built-in directories, unless the needer has `DF_1_NODEFLIB`
    /// (which also rules out cache entries in those directories).
    fn search_defaults(&self, needer: &Object, name: &str, trail: &mut Trail) -> Option<Hit> {
        let nodeflib = needer.flags_1 & DF_1_NODEFLIB != 0;
        let setup = self.setup;
        if setup.use_ld_cache
            && let Some(cache) = self.loader.ld_cache()
        {
            trail.place(|| "the ld.so cache".into());
            let fits = |flags| host::cache_flags_fit(setup.machine, setup.class, flags);
            if let Some(cached) = cache.lookup(name, fits, setup.hwcaps)
                && !(nodeflib
                    && setup
                        .default_dirs
                        .dirs()
                        .iter()
                        .any(|d| cached.starts_with(d)))
                && let Some(found) = self.try_path(cached, trail)
            {
                return Some(self.hit(found, &|| Via::LdCache));
            }
        }
        if nodeflib {
            return None;
        }
        let place = || {
            format!(
                "the default dirs [{}]",
                join_dirs(setup.default_dirs.dirs())
            )
        };
        self.search(
            &setup.default_dirs,
            name,
            &|| Via::DefaultDirs,
            &place,
            trail,
        )
    }

    /// Looks for `name` in `dirs`; what a search found is kept with the directories for the
    /// next one, except when the search records its trail.
    fn search(
        &self,
        dirs: &SearchDirs,
        name: &str,
        via: &dyn Fn() -> Via,
        place: &dyn Fn() -> String,
        trail: &mut Trail,
    ) -> Option<Hit> {
        trail.relative_entries(dirs.dirs(), place);
        trail.place(place);
        let found = if trail.recording {
            self.search_each(dirs.dirs(), name, trail)
        } else {
            dirs.found(self.setup.process_kind(), name, || {
                self.search_each(dirs.dirs(), name, trail)
            })
        };
        found.map(|f| self.hit(f, via))
    }

    /// Looks for `name` in each of `dirs`, trying each one's `glibc-hwcaps` subdirectories first.
    fn search_each(&self, dirs: &[PathBuf], name: &str, trail: &mut Trail) -> Option<Found> {
        // One buffer for every place tried: most are tried in vain.
        let mut path = PathBuf::new();
        for dir in dirs {
            if self.loader.objects.has_hwcaps_subdirs(dir) {
                for hwcap in self.setup.hwcaps {
                    let path = dir.join("glibc-hwcaps").join(hwcap).join(name);
                    if let Some(found) = self.try_path(&path, trail) {
                        return Some(found);
                    }
                }
            }
            path.as_mut_os_string().clear();
            path.push(dir);
            path.push(name);
            if let Some(found) = self.try_path(&path, trail) {
                return Some(found);
            }
        }
        None
    }

    fn try_path(&self, path: &Path, trail: &mut Trail) -> Option<Found> {
        let outcome = match self.candidate(path) {
            Candidate::Missing => return None,
            Candidate::Skipped(why) => {
                trail.skipped(path, why);
                return None;
            }
            Candidate::Refused(why) => Err(why),
            Candidate::Usable(object) => Ok(object),
        };
        Some(Found {
            path: Arc::from(path),
            origin: Arc::from(origin_of(path)),
            outcome,
        })
    }

    /// What the loader makes of the file at `path` (glibc's `open_verify` and the checks after
    /// mapping a dependency).
    fn candidate(&self, path: &Path) -> Candidate {
        let object = match self.loader.objects.probe(path) {
            Probe::Missing => return Candidate::Missing,
            Probe::Invalid(why) => return Candidate::Refused(why),
            Probe::Found(object) => object,
        };
        let setup = self.setup;
        if object.class != setup.class {
            return Candidate::Skipped(format!(
                "wrong ELF class: {}",
                kind_name(object.class, object.machine)
            ));
        }
        if object.little_endian != setup.little_endian {
            let order = if setup.little_endian { "little" } else { "big" };
            return Candidate::Refused(format!("ELF file data encoding not {order}-endian").into());
        }
        if object.machine != setup.machine {
            return Candidate::Skipped(format!(
                "wrong machine: {}",
                kind_name(object.class, object.machine)
            ));
        }
        if !matches!(object.e_type, ET_DYN | ET_EXEC) {
            return Candidate::Refused("only ET_DYN and ET_EXEC can be loaded".into());
        }
        if object.e_type == ET_EXEC {
            return Candidate::Refused("cannot dynamically load executable".into());
        }
        if object.flags_1 & DF_1_PIE != 0 {
            return Candidate::Refused(
                "cannot dynamically load position-independent executable".into(),
            );
        }
        Candidate::Usable(object)
    }

    /// A search's end as the lookup reports it, reached `via` a kind of place.
    fn hit(&self, found: Found, via: &dyn Fn() -> Via) -> Hit {
        match found.outcome {
            Ok(object) => Hit::Found {
                place: Place {
                    path: found.path,
                    origin: found.origin,
                },
                object,
                via: self.loader.config.list_resolved.then(via),
            },
            Err(why) => Hit::Refused {
                path: found.path,
                why,
            },
        }
    }

    /// `index`, the object that loaded it, and so on up to the program.
    fn chain(&self, index: usize) -> Vec<usize> {
        let mut chain = vec![index];
        let mut at = index;
        while let Some(up) = self.loaded[at].loaded_by {
            chain.push(up);
            at = up;
        }
        chain
    }

    /// The chain from the program down to `index`, as paths.
    fn chain_paths(&self, index: usize) -> Vec<PathBuf> {
        let mut chain: Vec<PathBuf> = self
            .chain(index)
            .into_iter()
            .map(|i| self.loaded[i].path.to_path_buf())
            .collect();
        chain.reverse();
        chain
    }

    fn tokens(&self, index: usize) -> Tokens<'_> {
        Tokens {
            origin: &self.loaded[index].origin,
            lib: &self.setup.lib,
            platform: &self.setup.platform,
        }
    }

    /// Every version each loaded object needs must be defined by the object loaded under that
    /// name; weak needs (`VER_FLG_WEAK`, which glibc only warns about) are not among them.
    fn check_versions(&mut self) {
        for index in 0..self.loaded.len() {
            if !self.loaded[index].queued {
                continue;
            }
            let object = self.loaded[index].object.clone();
            for (need, (file, versions)) in object.version_needs.iter().enumerate() {
                match self.find_loaded(file) {
                    None if self.unfound.contains(file) => {}
                    None => {
                        let message = format!(
                            "{} needs versions of {file}, which nothing loads (ld.so stops on an assertion)",
                            self.loaded[index].shown(self.shown)
                        );
                        self.problem(ProblemKind::Inconsistent, index, file, message);
                    }
                    Some(target) if !self.loaded[target].object.defines_versions() => {
                        self.report.note(format!(
                            "{} has no version information, though {} needs some",
                            self.loaded[target].shown(self.shown),
                            self.loaded[index].shown(self.shown)
                        ));
                    }
                    Some(target) => {
                        let objects = &self.loader.objects;
                        let defining = self.loaded[target].object.clone();
                        if objects.versions_met(&object, need, &defining) {
                            continue;
                        }
                        let missing: Vec<&String> =
                            versions.iter().filter(|v| !defining.defines(v)).collect();
                        if missing.is_empty() {
                            objects.note_versions_met(&object, need, &defining);
                        }
                        for version in missing {
                            self.missing_version(index, target, file, version);
                        }
                    }
                }
            }
        }
    }
}

fn object_key(object: &Arc<Object>) -> usize {
    Arc::as_ptr(object) as usize
}

/// The hash a name is indexed by in a session.
fn name_hash(name: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(name)
}

fn join_dirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The directory of `path`, textually (as glibc computes `$ORIGIN`, without resolving `..`),
/// less any trailing `.` components, as `Path::parent` gives it: one `$ORIGIN/.` run path
/// would otherwise make a new origin, and new paths, at each library it loads.
fn parent(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_bytes();
    let Some(last) = bytes.iter().rposition(|&b| b == b'/') else {
        return PathBuf::from(".");
    };
    let mut dir = &bytes[..last];
    while let Some(rest) = dir.strip_suffix(b"/.").or_else(|| dir.strip_suffix(b"/")) {
        dir = rest;
    }
    match dir {
        [] if bytes.starts_with(b"/") => PathBuf::from("/"),
        [] | b"." => PathBuf::from("."),
        _ => PathBuf::from(OsStr::from_bytes(dir)),
    }
}

/// `$ORIGIN` of a library opened at `path`: a relative path is opened from the current
/// directory.
fn origin_of(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return parent(path);
    }
    parent(&std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_is_the_textual_parent() {
        assert_eq!(
            parent(Path::new("/a/b/../lib/x.so")),
            Path::new("/a/b/../lib")
        );
        assert_eq!(parent(Path::new("x.so")), Path::new("."));
        for path in [
            "/a/b/./x.so",
            "/a/./b/x.so",
            "/a//b//x.so",
            "/x.so",
            "/./x.so",
            "./x.so",
            "a/x.so",
            "a/././/x.so",
        ] {
            let expected = Path::new(path).parent().unwrap();
            assert_eq!(parent(Path::new(path)), expected, "{path}");
        }
    }
}
