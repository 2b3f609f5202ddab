//! The main job: scan the given roots, plan every ELF file, and apply the plan in parallel,
//! keeping conda's records true.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;
use serde::Serialize;
use thiserror::Error;

use crate::apply::{self, Patched};
use crate::check::{DirHints, Loader, LoaderConfig, Problem};
use crate::conda::StagedRecord;
use crate::elf::{self, Edits, RunPathEdit};
use crate::fastmap::FastSet;
use crate::journal::{self, Entry, JournalError, Journals, Name, RecordsEntry};
use crate::plan::{self, Action, DirFacts, FileInfo, FilePlan, NameInPrefix, Settings};
use crate::resolve;
use crate::scan::{self, Inode, InodeId, ScanResult};
use crate::store::StoreIndex;

/// How to run a fix.
pub struct FixOptions<'a> {
    pub settings: Settings<'a>,
    pub dry_run: bool,
    pub update_records: bool,
    /// Check with the loader simulation that what was patched loads.
    pub verify: bool,
    /// Told how many files will be patched, once planning is done.
    pub on_planned: &'a (dyn Fn(usize) + Sync),
    /// Told each time a file is done.
    pub on_file_done: &'a (dyn Fn() + Sync),
}

#[derive(Debug, Error)]
pub enum FixError {
    #[error("{0}: cannot lock the directory against a concurrent run: {1}")]
    Lock(PathBuf, std::io::Error),
    #[error(transparent)]
    Flush(#[from] apply::ApplyError),
    #[error("{0}: cannot update the conda-meta records: {1}")]
    Records(PathBuf, crate::conda::CondaError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What a fix did.
#[derive(Debug)]
pub struct FixOutcome {
    pub files: Vec<FileResult>,
    pub summary: Summary,
    /// Sonames nothing provides, with the files that need them.
    pub unresolved: BTreeMap<String, Vec<PathBuf>>,
    /// Entries the scan could not read.
    pub scan_errors: Vec<(PathBuf, String)>,
}

impl FixOutcome {
    /// Everything resolved and written.
    pub fn is_success(&self) -> bool {
        self.summary.errors == 0 && self.summary.not_loading == 0 && self.unresolved.is_empty()
    }
}

/// Scans `roots`, plans and applies.
pub fn fix(roots: &[PathBuf], options: &FixOptions) -> Result<FixOutcome, FixError> {
    let mut scanned = timed("scan", || scan::scan(roots));
    let not_elf = not_elf_roots(roots, &scanned);
    scanned.errors.extend(not_elf);
    fix_scanned(scanned, roots, options)
}

/// Runs one phase of a run and logs how long it took (`AUTOPATCH_LOG=autopatch=debug`), so that
/// a slow run shows where its time went.
fn timed<T>(phase: &str, work: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let done = work();
    tracing::debug!("{phase}: {:.3} s", start.elapsed().as_secs_f64());
    done
}

/// The roots given as files in which the scan found nothing: FIFOs, devices, empty or other
/// files that are not ELF. Each is an error, as the user asked for something that cannot be.
fn not_elf_roots(roots: &[PathBuf], scanned: &ScanResult) -> Vec<(PathBuf, String)> {
    let found = |root: &PathBuf| {
        scanned.elf_inodes.iter().any(|i| i.names.contains(root))
            || scanned.errors.iter().any(|(p, _)| p == root)
    };
    roots
        .iter()
        .filter(|r| fs::metadata(r).is_ok_and(|m| !m.is_dir()) && !found(r))
        .map(|r| {
            let why = "not an ELF file: nothing to patch; give autopatch an environment, a \
                       directory, or a program or library";
            (r.clone(), why.to_string())
        })
        .collect()
}

/// [`fix`] over a scan of `roots` that the caller made, and may have narrowed: the watcher
/// leaves out files that are still being written.
pub fn fix_scanned(
    mut scanned: ScanResult,
    roots: &[PathBuf],
    options: &FixOptions,
) -> Result<FixOutcome, FixError> {
    let facts = timed("directory facts", || DirFacts::of_scan(roots, &scanned));
    let journals = Journals::default();
    let mut recovered = Vec::new();
    let _locks = if options.dry_run {
        Vec::new()
    } else {
        timed("lock, recover", || {
            lock_and_recover(roots, &mut scanned, &facts, &journals, &mut recovered)
        })?
    };
    let plans = timed("plan", || plan::plan(&scanned, &facts, &options.settings));
    (options.on_planned)(plans.iter().filter(|p| p.action == Action::Patch).count());
    let mut files = timed("apply", || apply_plans(plans, roots, options, &journals));
    files.sort_by(|a, b| a.plan.path.cmp(&b.plan.path));
    if files.iter().any(|f| f.patched.is_some()) {
        timed("flush", || {
            apply::sync_filesystems(roots_as_dirs(roots).as_slice())
        })?;
    }
    // The records are written while the files are checked: one writes conda-meta, the other
    // reads the patched files, and each leaves the processors idle at times.
    let (records, problems) = timed("records and verify", || {
        rayon::join(
            || {
                let mut old_records = Vec::new();
                if options.update_records && !options.dry_run {
                    old_records = timed("records and verify / conda records", || {
                        update_conda_records(&files, &recovered, &journals)
                    })?;
                }
                timed("records and verify / journal", || journals.finish())?;
                // The replaced records are removed while the files are checked.
                Ok::<_, FixError>(std::thread::spawn(move || {
                    old_records.iter().for_each(remove_quietly);
                }))
            },
            || {
                (options.verify && !options.dry_run).then(|| {
                    timed("records and verify / verify", || {
                        verify(&files, &options.settings)
                    })
                })
            },
        )
    });
    let removal = records?;
    for (file, problems) in files.iter_mut().zip(problems.into_iter().flatten()) {
        file.load_problems = problems;
    }
    timed("old records removed", || removal.join()).expect("removing files does not panic");
    let mut summary = summarize(&files);
    summary.scanned_entries = scanned.entries;
    summary.errors += scanned.errors.len();
    let unresolved = resolve::unresolved_summary(
        files
            .iter()
            .flat_map(|r| r.plan.names_in_prefixes())
            .map(|n| (n.path, n.needed)),
    );
    Ok(FixOutcome {
        files,
        summary,
        unresolved,
        scan_errors: scanned.errors,
    })
}

/// Locks the directories of the run and completes what killed runs left there; returns the
/// locks, to be held until the run is done.
fn lock_and_recover(
    roots: &[PathBuf],
    scanned: &mut ScanResult,
    facts: &DirFacts,
    journals: &Journals,
    recovered: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<Vec<File>, FixError> {
    let locked = lock_dirs(roots, scanned, facts)?;
    let relinked = recover(&locked, journals, recovered)?;
    sweep(&locked, scanned);
    if locked.waited || relinked > 0 {
        *scanned = restat(std::mem::take(scanned));
    }
    Ok(locked.files)
}

/// Completes what killed runs left in the journals of the locked directories; the files they
/// wrote are added to `records` with their prefix. Returns how many names were linked back.
fn recover(
    locked: &Locked,
    journals: &Journals,
    records: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<usize, JournalError> {
    let mut relinked = 0;
    for dir in &locked.dirs {
        let done = journal::recover(dir, journals)?;
        relinked += done.relinked;
        records.extend(done.records.into_iter().map(|n| (dir.clone(), n)));
    }
    Ok(relinked)
}

/// Removes the temporary files killed runs left beside the files of this run, in conda-meta
/// and in the journal directories.
fn sweep(locked: &Locked, scanned: &ScanResult) {
    let mut dirs: BTreeSet<&Path> = scanned
        .elf_inodes
        .iter()
        .flat_map(|i| &i.names)
        .filter_map(|n| n.parent())
        .collect();
    let meta: Vec<PathBuf> = locked
        .dirs
        .iter()
        .flat_map(|d| [d.join("conda-meta"), d.join(journal::DIR)])
        .collect();
    dirs.extend(meta.iter().map(PathBuf::as_path));
    apply::sweep_temp_files(dirs, locked.at);
}

/// The scan with its names grouped again by the inode each is now: another run, or the
/// completion of a killed one, may have replaced files since the scan was made.
fn restat(scanned: ScanResult) -> ScanResult {
    let mut by_inode: BTreeMap<InodeId, Inode> = BTreeMap::new();
    for name in scanned.elf_inodes.iter().flat_map(|i| &i.names) {
        let Ok(meta) = fs::symlink_metadata(name) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let id = InodeId::of(&meta);
        by_inode
            .entry(id)
            .or_insert_with(|| Inode {
                id,
                names: Vec::new(),
                nlink: meta.nlink(),
                len: meta.len(),
                mode: meta.mode() & 0o7777,
            })
            .names
            .push(name.clone());
    }
    let mut elf_inodes: Vec<Inode> = by_inode
        .into_values()
        .map(|mut i| {
            i.names.sort();
            i
        })
        .collect();
    elf_inodes.sort_by(|a, b| a.names[0].cmp(&b.names[0]));
    ScanResult {
        elf_inodes,
        ..scanned
    }
}

/// Runs the loader simulation on every file that was written, as the given interpreter would
/// load it: under one name in each prefix the file is linked into, as each finds its libraries
/// in its own prefix.
fn verify(files: &[FileResult], settings: &Settings) -> Vec<Vec<LoadProblem>> {
    let store_dir = settings.store.map_or_else(
        || PathBuf::from("/nix/store"),
        |s| s.store_dir().to_path_buf(),
    );
    let prefixes: BTreeSet<PathBuf> = files
        .iter()
        .filter(|f| f.patched.is_some())
        .flat_map(|f| f.plan.names_in_prefixes().map(|n| n.prefix.to_path_buf()))
        .collect();
    let hints = DirHints::new(Some(store_dir.clone()), prefixes.into_iter().collect());
    let loader = Loader::new(LoaderConfig {
        interpreter: settings.interpreter.clone(),
        store_dir,
        // Verification wants the problems only.
        list_resolved: false,
        ..LoaderConfig::default()
    })
    .with_hints(&hints);
    files
        .par_iter()
        .map(|f| {
            if f.patched.is_none() {
                return Vec::new();
            }
            let names: Vec<NameInPrefix> = f.plan.names_in_prefixes().collect();
            names
                .par_iter()
                .flat_map_iter(|n| load_problems(&loader, n.path, n.prefix, settings))
                .collect()
        })
        .collect()
}

/// What stops the loader from loading `path` in `prefix`, each problem under that name.
fn load_problems(
    loader: &Loader,
    path: &Path,
    prefix: &Path,
    settings: &Settings,
) -> Vec<LoadProblem> {
    let report = loader.check_file_in(path, prefix);
    // A library the user said may be missing is no failure of the patch.
    report
        .problems
        .into_iter()
        .filter(|p| {
            !p.library
                .as_deref()
                .is_some_and(|l| settings.ignore_missing.is_match(l))
        })
        .map(|problem| LoadProblem {
            path: path.to_path_buf(),
            problem,
        })
        .collect()
}

/// The roots, with a file root standing for its directory.
fn roots_as_dirs(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .map(|r| {
            if r.is_dir() {
                r.clone()
            } else {
                r.parent().unwrap_or(Path::new("/")).to_path_buf()
            }
        })
        .collect()
}

/// Locks held on directories, in the order taken.
struct Locked {
    dirs: Vec<PathBuf>,
    files: Vec<File>,
    /// Whether another run held one of them: the scan may be out of date.
    waited: bool,
    at: SystemTime,
}

/// Takes an exclusive lock on every root and environment, in a fixed order, so that two runs
/// (or a run and the watcher) on one prefix take turns.
fn lock_dirs(
    roots: &[PathBuf],
    scanned: &scan::ScanResult,
    facts: &DirFacts,
) -> Result<Locked, FixError> {
    let root_dirs = roots_as_dirs(roots).into_iter();
    // Gathered in a hash set first: most names share their prefix, and ordering paths compares
    // them component by component.
    let prefixes: FastSet<PathBuf> = scanned
        .elf_inodes
        .iter()
        .flat_map(|i| &i.names)
        .map(|n| facts.prefix_of(n))
        .collect();
    let dirs: BTreeSet<PathBuf> = root_dirs.chain(prefixes).collect();
    let mut locked = Locked {
        dirs: Vec::new(),
        files: Vec::new(),
        waited: false,
        at: SystemTime::now(),
    };
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        let (file, waited) = lock_dir(&dir).map_err(|e| FixError::Lock(dir.clone(), e))?;
        locked.files.push(file);
        locked.dirs.push(dir);
        locked.waited |= waited;
    }
    locked.at = SystemTime::now();
    Ok(locked)
}

/// Takes an exclusive lock on `dir` (`flock` on the directory itself), waiting, with a word to
/// the user, while another run holds it. Returns it with whether it had to wait. The kernel
/// drops the lock when its holder dies, so a killed run never leaves a prefix locked.
pub fn lock_dir(dir: &Path) -> io::Result<(File, bool)> {
    let file = File::open(dir)?;
    match file.try_lock() {
        Ok(()) => Ok((file, false)),
        Err(TryLockError::WouldBlock) => {
            tracing::warn!(
                "{}: waiting for another autopatch run on it to finish",
                dir.display()
            );
            file.lock()?;
            Ok((file, true))
        }
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The interpreter to use when none is given: the toolchain's, the running system's, the one
/// autopatch itself runs with, or the newest glibc of the store.
pub fn discover_interpreter(store: Option<&StoreIndex>) -> Option<PathBuf> {
    let from_bintools = std::env::var_os("NIX_BINTOOLS")
        .and_then(|b| {
            std::fs::read_to_string(Path::new(&b).join("nix-support/dynamic-linker")).ok()
        })
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| !p.as_os_str().is_empty());
    let interpreter_of = |p: &Path| {
        FileInfo::read(p)
            .ok()
            .and_then(|i| i.interpreter)
            .map(PathBuf::from)
    };
    let from_system = || interpreter_of(Path::new("/run/current-system/sw/bin/sh"));
    let from_self = || {
        std::env::current_exe()
            .ok()
            .filter(|exe| exe.starts_with("/nix/store"))
            .and_then(|exe| interpreter_of(&exe))
    };
    let from_store = || store.and_then(|s| s.newest_glibc_interpreter(host_machine()));
    from_bintools
        .or_else(from_system)
        .or_else(from_self)
        .or_else(from_store)
}

fn host_machine() -> u16 {
    match std::env::consts::ARCH {
        "aarch64" => elf::EM_AARCH64,
        "x86" => elf::EM_386,
        "powerpc64" => elf::EM_PPC64,
        "s390x" => elf::EM_S390,
        "riscv64" => elf::EM_RISCV,
        "arm" => elf::EM_ARM,
        _ => elf::EM_X86_64,
    }
}

/// The outcome for one file.
#[derive(Debug, Serialize)]
pub struct FileResult {
    #[serde(flatten)]
    pub plan: FilePlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip)]
    pub patched: Option<Patched>,
    /// What the loader simulation found wrong with the patched file, under each name checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub load_problems: Vec<LoadProblem>,
}

/// Something that stops the loader from loading one name of a patched file.
#[derive(Debug, Serialize)]
pub struct LoadProblem {
    /// The name checked, in its prefix.
    #[serde(serialize_with = "plan::lossy::path")]
    pub path: PathBuf,
    #[serde(flatten)]
    pub problem: Problem,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub scanned_entries: usize,
    pub elf_files: usize,
    pub patched: usize,
    pub already_fine: usize,
    pub skipped: usize,
    /// Names (one per prefix of a file) with a library nothing provides.
    pub unresolved: usize,
    /// Names of patched files (one per prefix of a file) the loader simulation says will not
    /// load.
    pub not_loading: usize,
    pub errors: usize,
    pub bytes_written: u64,
}

/// Inodes patched per batch: the in-place rewrites of a batch keep their file open until their
/// header steps are done, and each step ends with one flush for the whole batch.
const BATCH: usize = 256;

/// Carries out the plans that patch, a batch at a time.
fn apply_plans(
    plans: Vec<FilePlan>,
    roots: &[PathBuf],
    options: &FixOptions,
    journals: &Journals,
) -> Vec<FileResult> {
    let (to_patch, others): (Vec<FilePlan>, Vec<FilePlan>) = plans
        .into_iter()
        .partition(|p| p.action == Action::Patch && !options.dry_run);
    let mut files: Vec<FileResult> = others.into_iter().map(FileResult::untouched).collect();
    files.iter().for_each(|_| (options.on_file_done)());
    let dirs = roots_as_dirs(roots);
    let flush = || {
        journals.sync().map_err(|e| match e {
            JournalError::Write { path, source } | JournalError::Read { path, source } => {
                apply::ApplyError {
                    path,
                    action: "cannot flush the undo journal",
                    source,
                }
            }
        })?;
        apply::sync_filesystems(&dirs)
    };
    let mut to_patch = to_patch.into_iter();
    let mut next_batch = || -> Vec<FilePlan> { to_patch.by_ref().take(BATCH).collect() };
    let start_batch = |batch: Vec<FilePlan>| -> Vec<Started> {
        batch
            .into_par_iter()
            .map(|plan| start(plan, journals))
            .collect()
    };
    let mut started = start_batch(next_batch());
    while !started.is_empty() {
        let mut jobs = Vec::new();
        for (result, job) in started {
            match job {
                Some(job) => jobs.push((result, job)),
                None => files.push(result),
            }
            (options.on_file_done)();
        }
        // The next batch is read, planned and hashed while this one waits for its flushes.
        let batch = next_batch();
        let (completed, following) = rayon::join(
            || apply::complete_in_place(jobs, &flush),
            || start_batch(batch),
        );
        for (result, outcome) in completed {
            files.push(result.with(outcome.map(Some)));
        }
        started = following;
    }
    files
}

/// A file whose patch has begun: done, or waiting for its batch's in-place writes.
type Started = (FileResult, Option<Box<apply::InPlaceJob>>);

impl FileResult {
    fn untouched(plan: FilePlan) -> FileResult {
        FileResult {
            plan,
            written: None,
            error: None,
            patched: None,
            load_problems: Vec::new(),
        }
    }

    /// This result, told the outcome of patching it.
    fn with(mut self, outcome: Result<Option<Patched>, apply::PatchError>) -> FileResult {
        match outcome {
            Ok(patched) => {
                if patched.is_some() {
                    tracing::info!("patched {}", self.plan.path.display());
                }
                self.written = Some(patched.is_some());
                self.patched = patched;
            }
            Err(e) => {
                self.written = Some(false);
                self.error = Some(e.to_string());
            }
        }
        self
    }
}

/// Patches the file of `plan`, or starts an in-place rewrite of it that the batch completes.
fn start(plan: FilePlan, journals: &Journals) -> Started {
    let edits = Edits {
        interpreter: plan
            .new_interpreter
            .as_ref()
            .map(|i| i.clone().into_bytes()),
        run_path: plan
            .new_run_path_bytes
            .as_ref()
            .map(|r| RunPathEdit::Set(r.clone())),
        ..Edits::default()
    };
    let journal = |staged: &apply::Staged| journals.record_patch(&plan.prefix, staged);
    let started = apply::start_patch(
        &ordered_names(&plan),
        &edits,
        plan.in_conda_record,
        &journal,
    );
    let result = FileResult::untouched(plan);
    match started {
        Ok(apply::Started::InPlace(job)) => (result, Some(job)),
        Ok(apply::Started::Done(patched)) => (result.with(Ok(patched)), None),
        Err(e) => (result.with(Err(e)), None),
    }
}

/// The planning name first: it is the one the rewrite reads.
fn ordered_names(plan: &FilePlan) -> Vec<PathBuf> {
    let mut names = vec![plan.path.clone()];
    names.extend(plan.names.iter().filter(|n| **n != plan.path).cloned());
    names
}

/// Writes the new hash and size of patched files into their prefixes' conda records, and of the
/// files a killed run wrote (`recovered`, with their prefix); the old values go to the journal
/// first. Symlink entries are left as the installer wrote them: the links themselves do not
/// change.
/// The conda environment a name lies in: its nearest ancestor with `conda-meta/`.
fn conda_prefix_of(name: &Path) -> Option<&Path> {
    name.ancestors()
        .skip(1)
        .find(|dir| dir.join("conda-meta").is_dir())
}

/// Gives the conda records of the patched and recovered files their new hashes and sizes;
/// returns the temporary names the replaced records are left under, to be removed.
fn update_conda_records(
    results: &[FileResult],
    recovered: &[(PathBuf, PathBuf)],
    journals: &Journals,
) -> Result<Vec<PathBuf>, FixError> {
    let mut by_prefix: BTreeMap<&Path, Vec<NewRecordValues>> = BTreeMap::new();
    let conda = recovered
        .iter()
        .filter(|(prefix, _)| prefix.join("conda-meta").is_dir());
    for (prefix, name) in conda {
        if let (Ok(rel), Some((sha, len))) = (name.strip_prefix(prefix), current_hash(name)) {
            by_prefix.entry(prefix).or_default().push((
                rel.to_string_lossy().into_owned(),
                sha,
                len,
            ));
        }
    }
    for r in results {
        let Some(p) = &r.patched else { continue };
        let Some(sha) = &p.sha256 else { continue };
        // One inode may be linked into several environments: each records it.
        for name in &p.names {
            let Some(prefix) = conda_prefix_of(name) else {
                continue;
            };
            if let Ok(rel) = name.strip_prefix(prefix) {
                by_prefix.entry(prefix).or_default().push((
                    rel.to_string_lossy().into_owned(),
                    sha.clone(),
                    p.len,
                ));
            }
        }
    }
    let by_prefix: Vec<(&Path, Vec<NewRecordValues>)> = by_prefix.into_iter().collect();
    let staged: Vec<Vec<StagedRecord>> = by_prefix
        .par_iter()
        .map(|(prefix, files)| stage_prefix_records(prefix, files, journals))
        .collect::<Result<_, _>>()?;
    let prefixes: Vec<PathBuf> = by_prefix
        .iter()
        .map(|(p, _)| p.join("conda-meta"))
        .collect();
    // The new texts reach the disk together, before any replaces its record.
    apply::sync_filesystems(&prefixes)?;
    let mut old_records = Vec::new();
    for (records, (prefix, _)) in staged.into_iter().zip(&by_prefix) {
        for record in records {
            let old = record
                .replace_keeping_old()
                .map_err(|e| FixError::Records(prefix.to_path_buf(), e))?;
            old_records.push(old);
        }
    }
    apply::sync_filesystems(&prefixes)?;
    Ok(old_records)
}

fn remove_quietly(path: &PathBuf) {
    if let Err(e) = fs::remove_file(path) {
        tracing::warn!(
            "cannot remove {}: {e}; the next run removes it",
            path.display()
        );
    }
}

/// A file's path relative to its environment, new SHA-256 and new size.
type NewRecordValues = (String, String, u64);

/// Writes the new records of one environment beside the old ones, the old values journaled
/// first.
fn stage_prefix_records(
    prefix: &Path,
    files: &[NewRecordValues],
    journals: &Journals,
) -> Result<Vec<StagedRecord>, FixError> {
    let refs: Vec<crate::conda::ChangedFile> = files
        .iter()
        .map(|(p, s, l)| (p.as_str(), s.as_str(), *l))
        .collect();
    let journal = journals.of(prefix)?;
    let mut keep_old = |record: &Path, fields| {
        let entry = Entry::Records(RecordsEntry {
            record: Name::relative(record, prefix),
            fields,
        });
        journal.append_unsynced(&entry).map(drop)
    };
    let mut journaled = || journal.sync();
    crate::conda::stage_record_updates(prefix, &refs, &mut keep_old, &mut journaled)
        .map_err(|e| FixError::Records(prefix.to_path_buf(), e))
}

/// The SHA-256 and length of a file as it is now.
fn current_hash(name: &Path) -> Option<(String, u64)> {
    let file = scan::MappedFile::open(name).ok()?;
    Some((apply::hash_file(&file.file).ok()?, file.meta.len()))
}

fn summarize(results: &[FileResult]) -> Summary {
    let mut s = Summary {
        elf_files: results.len(),
        ..Summary::default()
    };
    for r in results {
        s.bytes_written += r.patched.as_ref().map_or(0, |p| p.bytes_written);
        match (&r.plan.action, &r.error) {
            (_, Some(_)) | (Action::Error { .. }, _) => s.errors += 1,
            (Action::Patch, None) => s.patched += 1,
            (Action::AlreadyFine, None) => s.already_fine += 1,
            (Action::Skip { .. }, None) => s.skipped += 1,
        }
        s.unresolved += r
            .plan
            .names_in_prefixes()
            .filter(|n| n.needed.iter().any(|n| n.is_unresolved()))
            .count();
        let not_loading: BTreeSet<&Path> =
            r.load_problems.iter().map(|p| p.path.as_path()).collect();
        s.not_loading += not_loading.len();
    }
    s
}
