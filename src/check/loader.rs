//! The checker's entry points: configuration, per-file setup (interpreter, default directories)
//! and walking directories.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use super::cache::{CacheError, LdCache};
use super::dirs::{ProcessKind, SearchDirs};
use super::hints::{Hints, NoHints};
use super::host;
use super::lock;
use super::object::{Object, Objects, Probe};
use super::report::{FileReport, Problem, ProblemKind, Shown};
use super::resolve::Session;
use crate::elf::{self, Class};

const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// Where the loader looks after the run paths.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DefaultDirs {
    /// Decided per file from its interpreter: one under the Nix store is a Nix glibc
    /// ([`DefaultDirs::NixGlibc`] of its directory), any other a distribution's.
    #[default]
    Auto,
    /// A Nix glibc: no `ld.so.cache`, and only its own `lib` directory.
    NixGlibc(PathBuf),
    /// A distribution's glibc: `/etc/ld.so.cache`, then the system directories (`/lib64` and
    /// `/usr/lib64` for 64-bit programs, `/lib/<triplet>`, `/usr/lib/<triplet>`, `/lib`,
    /// `/usr/lib` on multiarch systems such as Debian).
    Distribution,
}

/// How the simulated loader is set up.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    /// Check every file with this interpreter instead of its own `PT_INTERP`. A program's
    /// `$ORIGIN` stays its real directory, as when it runs (`ld.so FILE` would take the path as
    /// given).
    pub interpreter: Option<PathBuf>,
    /// `LD_LIBRARY_PATH` entries (an empty entry is the current directory), or `None` when unset.
    pub env_ld_library_path: Option<Vec<PathBuf>>,
    pub default_dirs: DefaultDirs,
    /// The Nix store, for recognising a Nix glibc's interpreter.
    pub store_dir: PathBuf,
    /// The loader for files without `PT_INTERP` (libraries), when `interpreter` does not say:
    /// on NixOS that is the loader programs get, not a distribution's `/lib64` one.
    pub library_interpreter: Option<PathBuf>,
    /// Whether reports list every library loaded ([`FileReport::resolved`]); a caller that
    /// only wants the problems spares the lists.
    pub list_resolved: bool,
}

impl Default for LoaderConfig {
    fn default() -> LoaderConfig {
        LoaderConfig {
            interpreter: None,
            env_ld_library_path: None,
            default_dirs: DefaultDirs::Auto,
            store_dir: PathBuf::from("/nix/store"),
            library_interpreter: None,
            list_resolved: true,
        }
    }
}

/// Answers, per file, what glibc's dynamic loader will load and why it would fail.
///
/// Parsed objects are cached for the loader's lifetime: make a new one after changing files.
pub struct Loader<'h> {
    pub(super) config: LoaderConfig,
    pub(super) hints: &'h dyn Hints,
    pub(super) objects: Objects,
    ld_cache: OnceLock<Option<LdCache>>,
    roots: Mutex<HashMap<OsString, Arc<Shown>>>,
    /// The default directories of each kind of setup, shared so that what searches of them
    /// found serves every check.
    default_dirs: Mutex<HashMap<Vec<PathBuf>, Arc<SearchDirs>>>,
}

/// How the loader is set up for one file.
pub(super) struct Setup {
    pub class: Class,
    pub machine: u16,
    pub little_endian: bool,
    /// The interpreter as named, and its object when it can run the file.
    pub interpreter: Option<PathBuf>,
    pub rtld: Option<Arc<Object>>,
    pub default_dirs: Arc<SearchDirs>,
    pub use_ld_cache: bool,
    pub lib: String,
    pub platform: String,
    pub hwcaps: &'static [&'static str],
}

impl Setup {
    pub fn process_kind(&self) -> ProcessKind {
        ProcessKind {
            class: self.class,
            machine: self.machine,
            little_endian: self.little_endian,
        }
    }
}

impl Loader<'static> {
    pub fn new(config: LoaderConfig) -> Loader<'static> {
        Loader {
            config,
            hints: &NoHints,
            objects: Objects::default(),
            ld_cache: OnceLock::new(),
            roots: Mutex::default(),
            default_dirs: Mutex::default(),
        }
    }
}

impl<'h> Loader<'h> {
    /// The same loader, asking `hints` where missing libraries could come from.
    pub fn with_hints<'a>(self, hints: &'a dyn Hints) -> Loader<'a> {
        Loader {
            config: self.config,
            hints,
            objects: self.objects,
            ld_cache: self.ld_cache,
            roots: self.roots,
            default_dirs: self.default_dirs,
        }
    }

    /// Checks one file, whatever it is; paths in messages are absolute.
    pub fn check_file(&self, path: &Path) -> FileReport {
        self.check_one(path, &Shown::new(None))
    }

    /// Checks one file, showing paths inside `root` relative to it.
    pub fn check_file_in(&self, path: &Path, root: &Path) -> FileReport {
        self.check_one(path, &self.shown_in(root))
    }

    /// How paths inside `root` are shown, made once per root: resolving it costs a system call
    /// per component, and a run checks thousands of files in a few roots.
    fn shown_in(&self, root: &Path) -> Arc<Shown> {
        let mut roots = lock(&self.roots);
        roots
            .entry(root.as_os_str().to_owned())
            .or_insert_with(|| Arc::new(Shown::new(Some(root))))
            .clone()
    }

    /// Checks every dynamically linked program and library among `paths`, walking directories
    /// (regular files only; symlinks are not followed). Non-ELF files, object files, static
    /// executables and separate debug files are passed over. Sorted by path.
    pub fn check_paths(&self, paths: &[PathBuf]) -> Vec<FileReport> {
        let mut targets = Vec::new();
        let mut reports = Vec::new();
        for path in paths {
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => {
                    let shown = Arc::new(Shown::new(Some(path)));
                    targets.extend(walk_files(path).into_iter().map(|f| (f, shown.clone())));
                }
                Ok(_) => targets.push((path.clone(), Arc::new(Shown::new(None)))),
                Err(err) => reports.push(unreadable(path, &err.to_string())),
            }
        }
        reports.par_extend(
            targets
                .par_iter()
                .filter_map(|(path, shown)| self.check_if_dynamic(path, shown)),
        );
        reports.sort_by(|a, b| a.path.cmp(&b.path));
        reports
    }

    fn check_one(&self, path: &Path, shown: &Shown) -> FileReport {
        let main = match self.load_main(path) {
            Ok(main) => main,
            Err(why) => return unreadable(path, &why),
        };
        if !main.is_loadable {
            return unreadable(path, "not an executable or shared library");
        }
        self.simulate(path, main, shown)
    }

    fn check_if_dynamic(&self, path: &Path, shown: &Shown) -> Option<FileReport> {
        // Four bytes first: the many data files of a prefix are passed over cheaply.
        if !crate::scan::starts_with_elf_magic(path, true) {
            return None;
        }
        let main = self.load_main(path).ok()?;
        main.is_checkable()
            .then(|| self.simulate(path, main, shown))
    }

    fn load_main(&self, path: &Path) -> Result<Arc<Object>, String> {
        let canonical = self.objects.canonical(path).map_err(|e| e.to_string())?;
        match self.objects.load(&canonical) {
            Probe::Found(object) => Ok(object),
            Probe::Missing => Err("cannot be read".into()),
            Probe::Invalid(why) => Err(why.to_string()),
        }
    }

    fn simulate(&self, path: &Path, main: Arc<Object>, shown: &Shown) -> FileReport {
        let mut report = FileReport::new(path.to_path_buf(), None);
        let setup = self.setup(&main, &mut report);
        report.interpreter = setup.interpreter.clone();
        Session::new(self, &setup, shown, main, path, report).run()
    }

    fn setup(&self, main: &Object, report: &mut FileReport) -> Setup {
        let named = self
            .config
            .interpreter
            .clone()
            .or_else(|| main.interpreter.clone());
        // A library has no interpreter of its own; `ld.so --list lib.so` runs the system's.
        let interpreter = named
            .clone()
            .or_else(|| self.config.library_interpreter.clone())
            .or_else(|| {
                host::conventional_interpreter(main.machine, main.class)
                    .filter(|p| p.exists())
                    .map(Path::to_path_buf)
            });
        let rtld = match &interpreter {
            Some(path) => self
                .interpreter_object(path, main)
                .unwrap_or_else(|problem| {
                    if named.is_some() {
                        report.add(*problem);
                    }
                    None
                }),
            None => None,
        };
        let nix_dir = match &self.config.default_dirs {
            DefaultDirs::Auto => interpreter.as_deref().and_then(|i| self.nix_glibc_dir(i)),
            DefaultDirs::NixGlibc(dir) => Some(dir.clone()),
            DefaultDirs::Distribution => None,
        };
        let (default_dirs, use_ld_cache, lib) = match nix_dir {
            Some(dir) => (vec![dir], false, "lib".to_string()),
            None => {
                let (dirs, lib) = host::distribution_dirs(main.machine, main.class);
                (dirs, true, lib)
            }
        };
        Setup {
            class: main.class,
            machine: main.machine,
            little_endian: main.little_endian,
            interpreter,
            rtld,
            default_dirs: self.shared_default_dirs(default_dirs),
            use_ld_cache,
            lib,
            platform: host::platform(main.machine, main.class),
            hwcaps: host::hwcaps_subdirs(main.machine, main.class),
        }
    }

    fn shared_default_dirs(&self, dirs: Vec<PathBuf>) -> Arc<SearchDirs> {
        let mut known = lock(&self.default_dirs);
        known
            .entry(dirs)
            .or_insert_with_key(|dirs| Arc::new(SearchDirs::new(dirs.clone())))
            .clone()
    }

    /// The interpreter's object if it can run `main`, else the problem.
    fn interpreter_object(
        &self,
        path: &Path,
        main: &Object,
    ) -> Result<Option<Arc<Object>>, Box<Problem>> {
        let problem = |message: String| {
            let mut problem = Problem::new(ProblemKind::Interpreter, message);
            problem.library = Some(path.display().to_string());
            Box::new(problem)
        };
        match self.objects.probe(path) {
            Probe::Missing => Err(problem(format!(
                "interpreter {} does not exist",
                path.display()
            ))),
            Probe::Invalid(why) => Err(problem(format!("interpreter {}: {why}", path.display()))),
            Probe::Found(rtld) if (rtld.class, rtld.machine) != (main.class, main.machine) => {
                Err(problem(format!(
                    "interpreter {} is {}, the file is {}",
                    path.display(),
                    kind_name(rtld.class, rtld.machine),
                    kind_name(main.class, main.machine)
                )))
            }
            Probe::Found(rtld) => Ok(Some(rtld)),
        }
    }

    /// The `lib` directory of a Nix glibc, if `interpreter` is one's (directly or by symlink).
    fn nix_glibc_dir(&self, interpreter: &Path) -> Option<PathBuf> {
        let store = &self.config.store_dir;
        // The configured store may be a second one (libraries only); a loader in the system's
        // store is a Nix glibc all the same.
        if interpreter.starts_with(store) || interpreter.starts_with("/nix/store") {
            return interpreter.parent().map(Path::to_path_buf);
        }
        let canonical = std::fs::canonicalize(interpreter).ok()?;
        let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.clone());
        canonical
            .starts_with(&store)
            .then(|| canonical.parent().map(Path::to_path_buf))
            .flatten()
    }

    /// `/etc/ld.so.cache`, read once; a missing or unreadable cache is an empty one.
    pub(super) fn ld_cache(&self) -> Option<&LdCache> {
        self.ld_cache
            .get_or_init(|| match LdCache::read(Path::new(LD_SO_CACHE)) {
                Ok(cache) => Some(cache),
                Err(CacheError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    None
                }
                Err(err) => {
                    tracing::warn!("ignoring {LD_SO_CACHE}: {err}");
                    None
                }
            })
            .as_ref()
    }
}

/// "ELFCLASS64 x86_64", as messages name a kind of object.
pub(super) fn kind_name(class: Class, machine: u16) -> String {
    let class = match class {
        Class::Elf32 => "ELFCLASS32",
        Class::Elf64 => "ELFCLASS64",
    };
    format!("{class} {}", elf::machine_name(machine))
}

fn unreadable(path: &Path, why: &str) -> FileReport {
    let mut report = FileReport::new(path.to_path_buf(), None);
    report.add(Problem::new(
        ProblemKind::Unreadable,
        format!("{}: {why}", path.display()),
    ));
    report
}

/// Regular files under `root`, without following symlinks.
fn walk_files(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(|entry| match entry {
            Ok(entry) => Some(entry),
            Err(err) => {
                tracing::warn!("skipping: {err}");
                None
            }
        })
        .filter(|e| e.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
        .collect()
}
