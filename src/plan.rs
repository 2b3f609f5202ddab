//! Turning a scan into a plan: for each inode, the interpreter and run path it should have,
//! with every needed library's provider and the reason it was chosen.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use globset::GlobSet;
use rayon::prelude::*;
use serde::Serialize;

use crate::conda::CondaPrefix;
use crate::elf::{Class, ET_DYN, Elf, RunPathKind, VersionNeed};
use crate::fastmap::FastMap;
use crate::pip::PipSite;
use crate::resolve::{
    DefinedVersions, FileToResolve, Needed, PrefixLib, PrefixLibs, Resolution, Resolver,
};
use crate::scan::{self, Inode, InodeId, MappedFile, ScanResult, skip_reason};
use crate::store::{Preferences, StoreIndex};

/// Paths in JSON output: as text, with bytes that are not UTF-8 replaced (serde refuses them).
pub mod lossy {
    use std::path::{Path, PathBuf};

    use serde::Serializer;

    pub fn path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&path.to_string_lossy())
    }

    pub fn paths<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(paths.iter().map(|p| p.to_string_lossy()))
    }
}

/// What a file holds that planning needs, read from its headers.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    pub machine: u16,
    pub class: Class,
    pub e_type: u16,
    pub interpreter: Option<String>,
    pub run_path_kind: Option<RunPathKind>,
    pub run_path: Option<String>,
    /// The run path as the file holds it: `run_path` is for reading, and replaces bytes that
    /// are not UTF-8.
    #[serde(skip)]
    pub run_path_bytes: Option<Vec<u8>>,
    pub needed: Vec<String>,
    pub soname: Option<String>,
    pub version_needs: Vec<VersionNeed>,
    #[serde(skip)]
    pub skip: Option<&'static str>,
}

impl FileInfo {
    pub fn read(path: &Path) -> Result<FileInfo, String> {
        let file = MappedFile::open(path)
            .map_err(|e| format!("cannot open: {e}; {}", crate::apply::advice(&e)))?;
        let elf = Elf::parse(file.bytes())
            .map_err(|e| format!("{e}; left unchanged: {}", crate::apply::elf_advice(&e)))?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Ok(FileInfo {
            machine: elf.machine,
            class: elf.class,
            e_type: elf.e_type,
            interpreter: elf.interpreter().map(text),
            run_path_kind: elf.run_path().map(|(k, _)| k),
            run_path: elf.run_path().map(|(_, p)| text(p)),
            run_path_bytes: elf.run_path().map(|(_, p)| p.to_vec()),
            needed: elf.needed().into_iter().map(text).collect(),
            soname: elf.soname().map(text),
            version_needs: elf.version_needs(),
            skip: skip_reason(&elf),
        })
    }
}

/// What happens to one inode.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Patch,
    AlreadyFine,
    Skip { reason: String },
    Error { message: String },
}

/// The plan for one inode.
#[derive(Debug, Clone, Serialize)]
pub struct FilePlan {
    /// The name the file is planned under (its `$ORIGIN`).
    #[serde(serialize_with = "lossy::path")]
    pub path: PathBuf,
    /// Every name of the inode inside the roots.
    #[serde(serialize_with = "lossy::paths")]
    pub names: Vec<PathBuf>,
    #[serde(skip)]
    pub inode: Option<Inode>,
    #[serde(serialize_with = "lossy::path")]
    pub prefix: PathBuf,
    #[serde(flatten)]
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_interpreter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_interpreter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_path_kind: Option<RunPathKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_run_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_run_path: Option<String>,
    /// `new_run_path` as written: the entries kept from the old run path keep their bytes.
    #[serde(skip)]
    pub new_run_path_bytes: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    /// The other prefixes the inode is linked into, each resolved under one of its names there:
    /// the run path serves them too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<ResolvedElsewhere>,
    /// Some conda record lists one of its names: a rewrite must give the record its new hash.
    #[serde(skip)]
    pub in_conda_record: bool,
}

/// A file's needed libraries as the loader finds them under its name in another prefix.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedElsewhere {
    /// The name resolved (its `$ORIGIN`): the first of the inode's names in that prefix.
    #[serde(serialize_with = "lossy::path")]
    pub path: PathBuf,
    #[serde(serialize_with = "lossy::path")]
    pub prefix: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub needed: Vec<Needed>,
}

/// One name a file was resolved under, in its prefix.
pub struct NameInPrefix<'p> {
    pub path: &'p Path,
    pub prefix: &'p Path,
    pub needed: &'p [Needed],
}

impl FilePlan {
    /// The planning name, then the name resolved in each further prefix.
    pub fn names_in_prefixes(&self) -> impl Iterator<Item = NameInPrefix<'_>> {
        let planning = NameInPrefix {
            path: &self.path,
            prefix: &self.prefix,
            needed: self.resolution.as_ref().map_or(&[], |r| &r.needed),
        };
        let elsewhere = self.also.iter().map(|a| NameInPrefix {
            path: &a.path,
            prefix: &a.prefix,
            needed: &a.needed,
        });
        std::iter::once(planning).chain(elsewhere)
    }
}

/// Settings that shape a plan.
pub struct Settings<'a> {
    pub interpreter: Option<PathBuf>,
    pub store: Option<&'a StoreIndex>,
    pub preferences: &'a Preferences,
    pub ignore_missing: &'a GlobSet,
    /// Rewrite setuid and setgid files too.
    pub allow_setuid: bool,
}

/// A prefix: an environment whose files may reach each other through `$ORIGIN`.
struct Prefix {
    root: PathBuf,
    conda: Option<CondaPrefix>,
    pip: PipSite,
    /// A venv's base Python's `lib` directory.
    python_lib: Option<PathBuf>,
}

impl Prefix {
    fn load(root: PathBuf) -> Prefix {
        let conda = CondaPrefix::load(&root).ok().flatten();
        let pip = PipSite::load(&root).unwrap_or_default();
        let python_lib = crate::pip::venv_base_lib(&root);
        Prefix {
            root,
            conda,
            pip,
            python_lib,
        }
    }

    fn owner_of(&self, path: &Path) -> Option<String> {
        let rel = path.strip_prefix(&self.root).ok()?;
        self.conda
            .as_ref()
            .and_then(|c| c.owner_of(rel).map(|p| p.name.clone()))
            .or_else(|| self.pip.owner_of(path).map(|d| d.name.clone()))
    }
}

/// What the directories above the scanned files are, read once per directory: a scan of
/// thousands of files in a few hundred directories asks the filesystem a few hundred times.
pub struct DirFacts {
    roots: Vec<PathBuf>,
    /// Directory → (is an environment root, is an extracted package of a package cache).
    dirs: FastMap<OsString, (bool, bool)>,
    /// Directory of a file that is no root → (the file's prefix, whether it lies in a package
    /// cache): both are the same for every file of a directory.
    by_parent: FastMap<OsString, (PathBuf, bool)>,
}

impl DirFacts {
    /// Facts about the directories above every ELF file `scan` found under `roots`. (A symlink
    /// in a directory without one is placed by the nearest directory above it that has one.)
    pub fn of_scan(roots: &[PathBuf], scan: &ScanResult) -> DirFacts {
        let names = scan.elf_inodes.iter().flat_map(|i| &i.names);
        DirFacts::new(roots, names.map(PathBuf::as_path))
    }

    fn new<'p>(roots: &[PathBuf], paths: impl Iterator<Item = &'p Path>) -> DirFacts {
        let mut facts = DirFacts {
            roots: roots.to_vec(),
            dirs: FastMap::default(),
            by_parent: FastMap::default(),
        };
        // One file of each directory, whose answers serve the others.
        let mut one_per_dir: FastMap<&OsStr, &Path> = FastMap::default();
        for path in paths {
            if let Some(dir) = path.parent()
                && !facts.is_root(path)
            {
                one_per_dir.entry(dir.as_os_str()).or_insert(path);
            }
            for dir in path.ancestors().skip(1) {
                if facts.dirs.contains_key(dir.as_os_str()) {
                    break;
                }
                let env = dir.join("conda-meta").is_dir() || dir.join("pyvenv.cfg").is_file();
                let package = !env && dir.join("info/index.json").is_file();
                facts
                    .dirs
                    .insert(dir.as_os_str().to_owned(), (env, package));
            }
        }
        let by_parent = one_per_dir
            .into_iter()
            .map(|(dir, path)| {
                let answers = (facts.find_prefix(path), facts.find_in_package_cache(path));
                (dir.to_owned(), answers)
            })
            .collect();
        facts.by_parent = by_parent;
        facts
    }

    fn is_root(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r == path)
    }

    /// What is known of every file in the directory of `path`, unless `path` is a root.
    fn parent_facts(&self, path: &Path) -> Option<&(PathBuf, bool)> {
        let dir = path.parent()?;
        let facts = self.by_parent.get(dir.as_os_str())?;
        (!self.is_root(path)).then_some(facts)
    }

    /// The prefix a path belongs to: the nearest ancestor with `conda-meta/` or `pyvenv.cfg`,
    /// else the root it was found under.
    pub fn prefix_of(&self, path: &Path) -> PathBuf {
        match self.parent_facts(path) {
            Some((prefix, _)) => prefix.clone(),
            None => self.find_prefix(path),
        }
    }

    fn find_prefix(&self, path: &Path) -> PathBuf {
        let root = self
            .roots
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
            .cloned()
            .unwrap_or_else(|| path.parent().unwrap_or(Path::new("/")).to_path_buf());
        for dir in path.ancestors().skip(1) {
            if self.dirs.get(dir.as_os_str()).is_some_and(|d| d.0) {
                return dir.to_path_buf();
            }
            if dir == root {
                break;
            }
        }
        if root == path {
            return root.parent().unwrap_or(Path::new("/")).to_path_buf();
        }
        root
    }

    /// Whether a path lies in an extracted package of a conda package cache (`pkgs/<pkg>/`):
    /// such files are patched through the environments that link them, not on their own.
    fn in_package_cache(&self, path: &Path) -> bool {
        match self.parent_facts(path) {
            Some(&(_, in_cache)) => in_cache,
            None => self.find_in_package_cache(path),
        }
    }

    fn find_in_package_cache(&self, path: &Path) -> bool {
        path.ancestors()
            .skip(1)
            .any(|dir| self.dirs.get(dir.as_os_str()).is_some_and(|d| d.1))
    }

    /// The name an inode is planned under: one inside an environment rather than a package
    /// cache.
    fn planning_name<'i>(&self, inode: &'i Inode) -> Option<&'i PathBuf> {
        inode.names.iter().find(|n| !self.in_package_cache(n))
    }

    /// The names an inode is resolved under, each with its prefix: the planning name, then the
    /// first name in each further prefix (hard links into several environments). Empty when
    /// every name is in a package cache.
    fn names_per_prefix(&self, inode: &Inode) -> Vec<(PathBuf, PathBuf)> {
        let Some(planning) = self.planning_name(inode) else {
            return Vec::new();
        };
        let mut found = vec![(planning.clone(), self.prefix_of(planning))];
        // The names before the planning name are all in a package cache.
        let rest = inode.names.iter().skip_while(|n| *n != planning).skip(1);
        for name in rest.filter(|n| !self.in_package_cache(n)) {
            let prefix = self.prefix_of(name);
            if !found.iter().any(|(_, p)| *p == prefix) {
                found.push((name.clone(), prefix));
            }
        }
        found
    }
}

/// Plans every ELF inode the scan found.
pub fn plan(scan: &ScanResult, facts: &DirFacts, settings: &Settings) -> Vec<FilePlan> {
    let infos: Vec<Result<FileInfo, String>> = scan
        .elf_inodes
        .par_iter()
        .map(|i| FileInfo::read(&i.names[0]))
        .collect();
    let by_inode: HashMap<InodeId, &FileInfo> = scan
        .elf_inodes
        .iter()
        .zip(&infos)
        .filter_map(|(i, info)| info.as_ref().ok().map(|f| (i.id, f)))
        .collect();

    let planned: Vec<Vec<(PathBuf, PathBuf)>> = scan
        .elf_inodes
        .par_iter()
        .map(|inode| facts.names_per_prefix(inode))
        .collect();
    let mut prefixes = load_prefixes(planned.iter().flatten().map(|(_, p)| p.clone()).collect());
    let needed: HashSet<&OsStr> = infos
        .iter()
        .flatten()
        .flat_map(|i| i.needed.iter().map(OsStr::new))
        .collect();
    let libs = prefix_libraries(scan, &by_inode, &needed, &prefixes, facts);
    let depends = |prefix: &Path, owner: &str| -> Vec<String> {
        prefixes
            .get(prefix)
            .and_then(|p| p.conda.as_ref())
            .map(|c| c.transitive_depends(owner).into_iter().collect())
            .unwrap_or_default()
    };
    let resolver = Resolver {
        store: settings.store,
        preferences: settings.preferences,
        ignore_missing: settings.ignore_missing,
        depends: &depends,
        defined_versions: DefinedVersions::default(),
    };

    let context = Context {
        prefixes: &prefixes,
        libs: &libs,
        no_libs: PrefixLibs::default(),
        settings,
        resolver: &resolver,
    };
    let mut plans: Vec<FilePlan> = scan
        .elf_inodes
        .par_iter()
        .enumerate()
        .map(|(k, inode)| {
            let Some((name, prefix_root)) = planned[k].first() else {
                return skipped(inode, cache_only_reason(inode));
            };
            match &infos[k] {
                Ok(info) => plan_file(inode, &planned[k], info, &context),
                Err(message) => errored(inode, name, prefix_root, message),
            }
        })
        .collect();
    plans.sort_by(|a, b| a.path.cmp(&b.path));
    mark_recorded(&mut plans, &mut prefixes, facts);
    // Freeing the prefixes' indexes of their records takes milliseconds that the rewrites need
    // not wait for.
    rayon::spawn(move || drop((libs, prefixes)));
    plans
}

/// The bytes of the run path `new`, whose entries kept from `old` get back the bytes they have
/// there: planning reads run paths as text, and an entry that is not UTF-8 would otherwise be
/// written with replacement characters. `Err` says why the file is left alone instead.
fn run_path_bytes(new: &str, old: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let mut kept: HashMap<String, Option<&[u8]>> = HashMap::new();
    for entry in old.unwrap_or_default().split(|&b| b == b':') {
        let text = String::from_utf8_lossy(entry).into_owned();
        let slot = kept.entry(text).or_insert(Some(entry));
        if slot.is_some_and(|other| other != entry) {
            // Two entries read as the same text: which is which cannot be told.
            *slot = None;
        }
    }
    let mut bytes = Vec::with_capacity(new.len());
    for (k, entry) in new.split(':').enumerate() {
        if k > 0 {
            bytes.push(b':');
        }
        match kept.get(entry) {
            Some(Some(original)) => bytes.extend_from_slice(original),
            Some(None) => {
                return Err(format!(
                    "its run path has entries that differ only in bytes that are not UTF-8 ({entry}); left unchanged: set its run path with `autopatch elf --set-rpath`"
                ));
            }
            None if entry.contains(char::REPLACEMENT_CHARACTER) => {
                return Err(format!(
                    "a directory it needs has a name that is not UTF-8 ({entry}); left unchanged: set its run path with `autopatch elf --set-rpath`"
                ));
            }
            None => bytes.extend_from_slice(entry.as_bytes()),
        }
    }
    Ok(bytes)
}

/// Reads each prefix once, in parallel.
fn load_prefixes(roots: BTreeSet<PathBuf>) -> BTreeMap<PathBuf, Prefix> {
    roots
        .into_par_iter()
        .map(|p| (p.clone(), Prefix::load(p)))
        .collect()
}

/// Marks the plans that patch a file which a conda record lists under one of its names, in any
/// environment it is linked into; the environments not read for planning are read now.
fn mark_recorded(
    plans: &mut [FilePlan],
    prefixes: &mut BTreeMap<PathBuf, Prefix>,
    facts: &DirFacts,
) {
    let patching = |p: &&mut FilePlan| p.action == Action::Patch;
    let unread: BTreeSet<PathBuf> = plans
        .iter_mut()
        .filter(patching)
        .flat_map(|p| p.names.iter().map(|n| facts.prefix_of(n)))
        .filter(|p| !prefixes.contains_key(p))
        .collect();
    prefixes.extend(load_prefixes(unread));
    let prefixes = &*prefixes;
    plans.par_iter_mut().filter(patching).for_each(|plan| {
        plan.in_conda_record = plan.names.iter().any(|n| {
            prefixes[&facts.prefix_of(n)]
                .conda
                .as_ref()
                .is_some_and(|c| c.owner_of(n).is_some())
        });
    });
}

/// What planning a file consults besides the file itself.
struct Context<'a> {
    prefixes: &'a BTreeMap<PathBuf, Prefix>,
    libs: &'a HashMap<PathBuf, PrefixLibs>,
    /// The libraries of a prefix in which none were found.
    no_libs: PrefixLibs,
    settings: &'a Settings<'a>,
    resolver: &'a Resolver<'a>,
}

impl Context<'_> {
    /// What `info` needs, as the loader finds it under `name` in `prefix`.
    fn resolve(
        &self,
        info: &FileInfo,
        name: &Path,
        prefix: &Path,
        owner: Option<&str>,
    ) -> Resolution {
        let file = FileToResolve {
            path: name,
            machine: info.machine,
            class: info.class,
            needed: &info.needed,
            run_path: info.run_path.as_deref(),
            owner,
            version_needs: &info.version_needs,
        };
        let libs = self.libs.get(prefix).unwrap_or(&self.no_libs);
        self.resolver.resolve(&file, libs)
    }

    /// What `info` needs under `name`, in a prefix other than its planning name's.
    fn resolve_elsewhere(&self, info: &FileInfo, name: &Path, prefix: &Path) -> ResolvedElsewhere {
        let owner = self.prefixes[prefix].owner_of(name);
        let resolution = self.resolve(info, name, prefix, owner.as_deref());
        ResolvedElsewhere {
            path: name.to_path_buf(),
            prefix: prefix.to_path_buf(),
            owner,
            needed: resolution.needed,
        }
    }
}

/// Plans one inode under `names`: its planning name first, then one name per further prefix it
/// is linked into, each with its prefix.
fn plan_file(
    inode: &Inode,
    names: &[(PathBuf, PathBuf)],
    info: &FileInfo,
    context: &Context,
) -> FilePlan {
    let (name, prefix_root) = &names[0];
    let settings = context.settings;
    let mut plan = FilePlan {
        path: name.clone(),
        names: inode.names.clone(),
        inode: Some(inode.clone()),
        prefix: prefix_root.clone(),
        action: Action::AlreadyFine,
        owner: context.prefixes[prefix_root].owner_of(name),
        old_interpreter: info.interpreter.clone(),
        new_interpreter: None,
        run_path_kind: info.run_path_kind,
        old_run_path: info.run_path.clone(),
        new_run_path: None,
        new_run_path_bytes: None,
        resolution: None,
        also: Vec::new(),
        in_conda_record: false,
    };
    if let Some(reason) = info.skip {
        plan.action = Action::Skip {
            reason: reason.to_string(),
        };
        return plan;
    }
    if info.interpreter.is_some() {
        match &settings.interpreter {
            Some(interp) if interp.to_str().is_none() => {
                plan.action = Action::Error {
                    message: format!(
                        "the interpreter's path is not UTF-8 ({}); pass an --interpreter whose path is",
                        interp.display()
                    ),
                };
                return plan;
            }
            Some(interp) if interpreter_fits(interp, info) => {
                let wanted = interp.display().to_string();
                if info.interpreter.as_deref() != Some(wanted.as_str()) {
                    plan.new_interpreter = Some(wanted);
                }
            }
            Some(_) => {
                plan.action = Action::Skip {
                    reason: format!(
                        "built for {}, not the interpreter's machine",
                        crate::elf::machine_name(info.machine)
                    ),
                };
                return plan;
            }
            None => {
                plan.action = Action::Error {
                    message: "no interpreter to set: none found in the store; pass --interpreter"
                        .into(),
                };
                return plan;
            }
        }
    }
    let mut resolution = context.resolve(info, name, prefix_root, plan.owner.as_deref());
    plan.also = names[1..]
        .iter()
        .map(|(name, prefix)| context.resolve_elsewhere(info, name, prefix))
        .collect();
    for elsewhere in &plan.also {
        resolution.append_entries_for(info.run_path.as_deref(), &elsewhere.needed);
    }
    plan.new_run_path = resolution.run_path.clone();
    plan.resolution = Some(resolution);
    if let Some(new) = &plan.new_run_path {
        match run_path_bytes(new, info.run_path_bytes.as_deref()) {
            Ok(bytes) => plan.new_run_path_bytes = Some(bytes),
            Err(message) => {
                plan.action = Action::Error { message };
                return plan;
            }
        }
    }
    if plan.new_interpreter.is_some() || plan.new_run_path.is_some() {
        plan.action = if inode.mode & 0o6000 != 0 && !settings.allow_setuid {
            Action::Error {
                message: "setuid or setgid: left alone; pass --allow-setuid to patch it".into(),
            }
        } else {
            Action::Patch
        };
    }
    plan
}

/// Whether the interpreter at `interp` can load a file like `info`.
fn interpreter_fits(interp: &Path, info: &FileInfo) -> bool {
    // Interpreters are often named through a symlink (`/lib64/ld-linux-x86-64.so.2`), which
    // reading never follows.
    let target = std::fs::canonicalize(interp).unwrap_or_else(|_| interp.to_path_buf());
    match FileInfo::read(&target) {
        Ok(i) => i.machine == info.machine && i.class == info.class,
        // An interpreter that cannot be read here (a store path not built yet) is trusted.
        Err(_) => true,
    }
}

fn skipped(inode: &Inode, reason: &str) -> FilePlan {
    bare_plan(
        inode,
        &inode.names[0],
        Path::new("/"),
        Action::Skip {
            reason: reason.to_string(),
        },
    )
}

fn errored(inode: &Inode, name: &Path, prefix: &Path, message: &str) -> FilePlan {
    bare_plan(
        inode,
        name,
        prefix,
        Action::Error {
            message: message.to_string(),
        },
    )
}

fn bare_plan(inode: &Inode, name: &Path, prefix: &Path, action: Action) -> FilePlan {
    FilePlan {
        path: name.to_path_buf(),
        names: inode.names.clone(),
        inode: Some(inode.clone()),
        prefix: prefix.to_path_buf(),
        action,
        owner: None,
        old_interpreter: None,
        new_interpreter: None,
        run_path_kind: None,
        old_run_path: None,
        new_run_path: None,
        new_run_path_bytes: None,
        resolution: None,
        also: Vec::new(),
        in_conda_record: false,
    }
}

/// The shared libraries of each prefix, under every name the loader could find them by
/// (their own names and symlinks to them).
fn prefix_libraries(
    scan: &ScanResult,
    by_inode: &HashMap<InodeId, &FileInfo>,
    needed: &HashSet<&OsStr>,
    prefixes: &BTreeMap<PathBuf, Prefix>,
    facts: &DirFacts,
) -> HashMap<PathBuf, PrefixLibs> {
    let mut libs: HashMap<PathBuf, PrefixLibs> = HashMap::new();
    let links = scan::links_named(&scan.symlinks, needed, &scan.elf_inodes);
    let names = library_names(scan, &links, &|id| by_inode.get(&id).copied());
    // Where each library lies and who owns it, worked out in parallel; gathered in order.
    let found: Vec<(PathBuf, String, PrefixLib)> = names
        .par_iter()
        .filter_map(|&(name, info)| {
            let root = facts.prefix_of(name);
            let (file_name, lib) = prefix_library(name, info, prefixes.get(&root)?)?;
            Some((root, file_name, lib))
        })
        .collect();
    for (root, file_name, lib) in found {
        libs.entry(root.clone())
            .or_insert_with(|| PrefixLibs::new(root))
            .add(file_name, lib);
    }
    for (root, prefix) in prefixes {
        if !facts.roots.iter().any(|r| root.starts_with(r)) {
            add_rest_of_prefix(root, prefix, needed, &mut libs);
        }
        if let Some(lib) = &prefix.python_lib {
            libs.entry(root.clone())
                .or_insert_with(|| PrefixLibs::new(root.clone()))
                .python_lib = Some(lib.clone());
        }
    }
    libs
}

/// Why a file found only in package caches is left alone: an environment outside the roots
/// links it (and a run over that environment patches it), or none does.
fn cache_only_reason(inode: &Inode) -> &'static str {
    if inode.nlink > inode.names.len() as u64 {
        "only in a package cache here: patched through the environments that link it"
    } else {
        "only in a package cache, linked into no environment: no environment loads it"
    }
}

/// A prefix given only in part (single files, a subdirectory) still provides all its
/// libraries: the rest of it is read for them, without nested environments or package caches.
fn add_rest_of_prefix(
    root: &Path,
    prefix: &Prefix,
    needed: &HashSet<&OsStr>,
    libs: &mut HashMap<PathBuf, PrefixLibs>,
) {
    let roots = [root.to_path_buf()];
    let rest = scan::scan(&roots);
    let rest_facts = DirFacts::of_scan(&roots, &rest);
    let infos: HashMap<InodeId, FileInfo> = rest
        .elf_inodes
        .par_iter()
        .filter_map(|i| Some((i.id, FileInfo::read(&i.names[0]).ok()?)))
        .collect();
    let entry = libs
        .entry(root.to_path_buf())
        .or_insert_with(|| PrefixLibs::new(root.to_path_buf()));
    let links = scan::links_named(&rest.symlinks, needed, &rest.elf_inodes);
    for (name, info) in library_names(&rest, &links, &|id| infos.get(&id)) {
        if rest_facts.prefix_of(name) == root
            && !rest_facts.in_package_cache(name)
            && let Some((file_name, lib)) = prefix_library(name, info, prefix)
        {
            entry.add(file_name, lib);
        }
    }
}

/// Every name `scan` found a file under, with what the file is: its own names and the `links`
/// to it.
fn library_names<'s, 'i>(
    scan: &'s ScanResult,
    links: &'s [(PathBuf, InodeId)],
    info_of: &dyn Fn(InodeId) -> Option<&'i FileInfo>,
) -> Vec<(&'s Path, &'i FileInfo)> {
    let mut found = Vec::new();
    for inode in &scan.elf_inodes {
        if let Some(info) = info_of(inode.id) {
            found.extend(inode.names.iter().map(|n| (n.as_path(), info)));
        }
    }
    for (link, id) in links {
        if let Some(info) = info_of(*id) {
            found.push((link.as_path(), info));
        }
    }
    found
}

/// The file name the loader finds a shared library by, and where it lies in `prefix`; `None`
/// for a file that is no shared library.
fn prefix_library(name: &Path, info: &FileInfo, prefix: &Prefix) -> Option<(String, PrefixLib)> {
    let (dir, file_name) = (name.parent()?, name.file_name()?);
    if info.e_type != ET_DYN {
        return None;
    }
    let lib = PrefixLib {
        dir: dir.to_path_buf(),
        machine: info.machine,
        class: info.class,
        owner: prefix.owner_of(name),
    };
    Some((file_name.to_string_lossy().into_owned(), lib))
}

#[cfg(test)]
mod tests {
    use super::run_path_bytes;

    #[test]
    fn kept_entries_get_their_bytes_back_wherever_they_moved() {
        let old: &[u8] = b"/opt/caf\xe9/lib:$ORIGIN";
        let new = "$ORIGIN:/nix/store/x-zlib/lib:/opt/caf\u{FFFD}/lib";
        assert_eq!(
            run_path_bytes(new, Some(old)).unwrap(),
            b"$ORIGIN:/nix/store/x-zlib/lib:/opt/caf\xe9/lib"
        );
    }

    #[test]
    fn a_replacement_character_with_no_entry_behind_it_is_refused() {
        assert!(run_path_bytes("/opt/caf\u{FFFD}", None).is_err());
        assert!(run_path_bytes("/opt/a\u{FFFD}", Some(b"/opt/a\xe9:/opt/a\xe8")).is_err());
        assert_eq!(
            run_path_bytes("/opt/caf\u{FFFD}", Some("/opt/caf\u{FFFD}".as_bytes())).unwrap(),
            "/opt/caf\u{FFFD}".as_bytes()
        );
    }
}
