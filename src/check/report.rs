//! What a check finds for one file, in terms a person and `fix` can act on.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The verdict on one file: whether the loader would start it (or load it, for a library), what it
/// loads from where, and what stops it.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    pub ok: bool,
    /// The interpreter the file was checked with: the configured one, else the file's own, else
    /// (for a library) the system's usual one for its machine if it exists.
    pub interpreter: Option<PathBuf>,
    pub problems: Vec<Problem>,
    /// Every object loaded besides the file itself, in the loader's order.
    pub resolved: Vec<Resolved>,
    /// Observations that do not stop the loader but make the outcome depend on circumstances,
    /// such as a search path entry relative to the current directory.
    pub notes: Vec<String>,
}

impl FileReport {
    pub(crate) fn new(path: PathBuf, interpreter: Option<PathBuf>) -> FileReport {
        FileReport {
            path,
            ok: true,
            interpreter,
            problems: Vec::new(),
            resolved: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn add(&mut self, problem: Problem) {
        self.ok = false;
        self.problems.push(problem);
    }

    pub(crate) fn note(&mut self, note: String) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// Where `name` was loaded from, if it was.
    pub fn resolved_path(&self, name: &str) -> Option<&Path> {
        self.resolved
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.path.as_path())
    }
}

/// One object the loader loads: the name it was asked for, where it found it, and by which rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// The needed name as looked up (tokens expanded).
    pub name: String,
    /// The path the loader opened, as it names it (search directory joined with the name).
    pub path: PathBuf,
    pub via: Via,
}

/// Which rule of the search found a library.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Via {
    /// The `DT_RPATH` of `owner`: the object that needed it or one that loaded that one.
    Rpath {
        owner: PathBuf,
    },
    LdLibraryPath,
    /// The `DT_RUNPATH` of the object that needed it.
    Runpath,
    /// `/etc/ld.so.cache`.
    LdCache,
    /// The loader's built-in directories.
    DefaultDirs,
    /// The needed name was itself a path.
    Path,
    /// The dynamic loader itself, loaded before anything else.
    Interpreter,
}

/// Something that stops the loader.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
    /// The objects from the checked file down to the one the problem is about, each having loaded
    /// the next.
    pub chain: Vec<PathBuf>,
    /// The library (or interpreter) concerned.
    pub library: Option<String>,
    /// For a missing version, which one.
    pub version: Option<String>,
    pub suggestion: Option<String>,
}

impl Problem {
    pub(crate) fn new(kind: ProblemKind, message: String) -> Problem {
        Problem {
            kind,
            message,
            chain: Vec::new(),
            library: None,
            version: None,
            suggestion: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The file itself cannot be read as a loadable ELF object.
    Unreadable,
    /// The interpreter does not exist or cannot run this file.
    Interpreter,
    /// A needed library is nowhere on the search path.
    NotFound,
    /// The search stopped at a file the loader refuses (not ELF, an executable, ...).
    Unloadable,
    /// A library is found but lacks a symbol version an object needs.
    MissingVersion,
    /// An object needs versions of a library nothing loads; glibc stops with an assertion failure.
    Inconsistent,
}

/// Shows paths relative to the checked root when they lie inside it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shown {
    root: Option<PathBuf>,
}

impl Shown {
    pub fn new(root: Option<&Path>) -> Shown {
        Shown {
            root: root.map(|r| std::fs::canonicalize(r).unwrap_or_else(|_| r.to_path_buf())),
        }
    }

    /// `canonical` relative to the root if inside it, else `as_named`.
    pub fn path(&self, canonical: &Path, as_named: &Path) -> String {
        match self.relative(canonical) {
            Some(rel) => rel.display().to_string(),
            None => as_named.display().to_string(),
        }
    }

    pub fn relative<'a>(&self, canonical: &'a Path) -> Option<&'a Path> {
        let rel = canonical.strip_prefix(self.root.as_ref()?).ok()?;
        (!rel.as_os_str().is_empty()).then_some(rel)
    }
}
