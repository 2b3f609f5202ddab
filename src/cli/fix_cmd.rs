//! `autopatch fix`: make every binary under the given paths load on NixOS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use clap::Args;
use globset::{Glob, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use serde::Serialize;

use crate::apply::{self, Patched};
use crate::config::{self, ConfigFile};
use crate::elf::{self, Edits, RunPathEdit};
use crate::plan::{self, Action, FileInfo, FilePlan, Settings};
use crate::resolve;
use crate::scan;
use crate::store::{Preferences, StoreIndex};

/// Options shared by every command that resolves libraries.
#[derive(Debug, Args, Clone)]
pub struct ResolveArgs {
    /// The Nix store to find outside libraries in.
    #[arg(long, env = "AUTOPATCH_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// The interpreter (dynamic loader) to set; found automatically when not given.
    #[arg(long, env = "AUTOPATCH_INTERPRETER", value_name = "PATH")]
    pub interpreter: Option<PathBuf>,
    /// A directory searched first for outside libraries (repeatable).
    #[arg(
        long = "lib-dir",
        env = "AUTOPATCH_LIB_DIR",
        value_delimiter = ':',
        value_name = "DIR"
    )]
    pub lib_dirs: Vec<PathBuf>,
    /// Sonames (globs) that may stay unresolved (repeatable).
    #[arg(
        long,
        env = "AUTOPATCH_IGNORE_MISSING",
        value_delimiter = ':',
        value_name = "GLOB"
    )]
    pub ignore_missing: Vec<String>,
    /// Where the store index is cached.
    #[arg(long, env = "AUTOPATCH_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FixArgs {
    #[command(flatten)]
    pub resolve: ResolveArgs,
    /// Show what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the whole plan and result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Parallel jobs (default: one per core).
    #[arg(short = 'j', long, env = "AUTOPATCH_JOBS")]
    pub jobs: Option<usize>,
    /// Patch setuid and setgid files too (they are refused otherwise).
    #[arg(long)]
    pub allow_setuid: bool,
    /// Leave conda-meta records as they are.
    #[arg(long, env = "AUTOPATCH_NO_UPDATE_RECORDS")]
    pub no_update_records: bool,
    /// Environments, conda roots, venvs, directories or single files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// Settings after flags, environment and config file are merged.
pub struct Resolved {
    pub interpreter: Option<PathBuf>,
    pub store: Option<StoreIndex>,
    pub preferences: Preferences,
    pub ignore_missing: GlobSet,
}

impl ResolveArgs {
    /// Merges the config file in and opens the store index.
    pub fn resolve(&self, file: &ConfigFile) -> Result<Resolved> {
        let store_dir = self
            .store
            .clone()
            .or_else(|| file.store.clone())
            .unwrap_or_else(|| PathBuf::from("/nix/store"));
        let cache = config::cache_dir(self.cache_dir.as_deref().or(file.cache_dir.as_deref()));
        let store = if store_dir.is_dir() {
            Some(
                StoreIndex::open(&store_dir, &cache)
                    .with_context(|| format!("cannot index the store {}", store_dir.display()))?,
            )
        } else {
            tracing::warn!(
                "no store at {}: outside libraries cannot be found",
                store_dir.display()
            );
            None
        };
        let interpreter = self
            .interpreter
            .clone()
            .or_else(|| file.interpreter.clone())
            .or_else(|| discover_interpreter(store.as_ref()));
        let mut lib_dirs = self.lib_dirs.clone();
        lib_dirs.extend(file.lib_dir.iter().cloned());
        let mut preferences =
            Preferences::from_profiles(&store_dir, &Preferences::default_profiles());
        preferences.lib_dirs = lib_dirs;
        preferences.glibc = interpreter
            .as_ref()
            .and_then(|i| store.as_ref().and_then(|s| s.store_path_of(i)));
        let globs = self.ignore_missing.iter().chain(&file.ignore_missing);
        Ok(Resolved {
            interpreter,
            store,
            preferences,
            ignore_missing: glob_set(globs)?,
        })
    }
}

fn glob_set<'a>(globs: impl Iterator<Item = &'a String>) -> Result<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for g in globs {
        builder
            .add(Glob::new(g).with_context(|| format!("invalid --ignore-missing pattern {g:?}"))?);
    }
    Ok(builder.build()?)
}

/// The interpreter to use when none is given: the toolchain's, the running system's, the one
/// autopatch itself runs with, or the newest glibc of the store.
fn discover_interpreter(store: Option<&StoreIndex>) -> Option<PathBuf> {
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
struct FileResult {
    #[serde(flatten)]
    plan: FilePlan,
    #[serde(skip_serializing_if = "Option::is_none")]
    written: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip)]
    patched: Option<Patched>,
}

#[derive(Debug, Default, Serialize)]
struct Summary {
    scanned_entries: usize,
    elf_files: usize,
    patched: usize,
    already_fine: usize,
    skipped: usize,
    unresolved: usize,
    errors: usize,
    bytes_written: u64,
}

#[derive(Debug, Serialize)]
struct Report<'a> {
    dry_run: bool,
    interpreter: Option<&'a Path>,
    summary: &'a Summary,
    unresolved: BTreeMap<String, Vec<PathBuf>>,
    files: &'a [FileResult],
}

pub fn run(args: &FixArgs) -> Result<bool> {
    let file_config = config::load()?;
    let jobs = args.jobs.or(file_config.jobs);
    if let Some(jobs) = jobs {
        rayon::ThreadPoolBuilder::new()
            .num_threads(jobs)
            .build_global()
            .ok();
    }
    let update_records =
        !(args.no_update_records || file_config.no_update_records.unwrap_or(false));
    let settings = args.resolve.resolve(&file_config)?;
    let roots = absolute_roots(&args.paths)?;
    let scanned = scan::scan(&roots);
    let plans = plan::plan(
        &scanned,
        &roots,
        &Settings {
            interpreter: settings.interpreter.clone(),
            store: settings.store.as_ref(),
            preferences: &settings.preferences,
            ignore_missing: &settings.ignore_missing,
            allow_setuid: args.allow_setuid,
        },
    );
    let written = AtomicU64::new(0);
    let progress = progress_bar(plans.iter().filter(|p| p.action == Action::Patch).count());
    let mut results: Vec<FileResult> = plans
        .into_par_iter()
        .map(|plan| {
            let result = execute(plan, args.dry_run, &written);
            progress.inc(1);
            result
        })
        .collect();
    progress.finish_and_clear();
    results.sort_by(|a, b| a.plan.path.cmp(&b.plan.path));
    if update_records && !args.dry_run {
        update_conda_records(&results)?;
    }

    let mut summary = summarize(&results);
    summary.scanned_entries = scanned.entries;
    summary.errors += scanned.errors.len();
    summary.bytes_written = written.load(Ordering::Relaxed);
    let unresolved = resolve::unresolved_summary(results.iter().filter_map(|r| {
        r.plan
            .resolution
            .as_ref()
            .map(|res| (r.plan.path.as_path(), res))
    }));
    if args.json {
        let report = Report {
            dry_run: args.dry_run,
            interpreter: settings.interpreter.as_deref(),
            summary: &summary,
            unresolved: unresolved.clone(),
            files: &results,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(
            &results,
            &summary,
            &unresolved,
            &scanned.errors,
            args.dry_run,
        );
    }
    Ok(summary.errors == 0 && unresolved.is_empty())
}

fn absolute_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    paths
        .iter()
        .map(|p| {
            std::path::absolute(p)
                .map(|a| resolve::normalize(&a))
                .with_context(|| format!("{}: cannot make the path absolute", p.display()))
        })
        .collect()
}

fn execute(plan: FilePlan, dry_run: bool, written: &AtomicU64) -> FileResult {
    let untouched = |plan| FileResult {
        plan,
        written: None,
        error: None,
        patched: None,
    };
    if plan.action != Action::Patch || dry_run {
        return untouched(plan);
    }
    let edits = Edits {
        interpreter: plan
            .new_interpreter
            .as_ref()
            .map(|i| i.clone().into_bytes()),
        run_path: plan
            .new_run_path
            .as_ref()
            .map(|r| RunPathEdit::Set(r.clone().into_bytes())),
        ..Edits::default()
    };
    let want_hash = plan.prefix.join("conda-meta").is_dir();
    match apply::patch_inode(&ordered_names(&plan), &edits, want_hash) {
        Ok(patched) => {
            if let Some(p) = &patched {
                written.fetch_add(p.bytes_written, Ordering::Relaxed);
                tracing::info!("patched {}", plan.path.display());
            }
            FileResult {
                written: Some(patched.is_some()),
                plan,
                error: None,
                patched,
            }
        }
        Err(e) => FileResult {
            plan,
            written: Some(false),
            error: Some(e.to_string()),
            patched: None,
        },
    }
}

/// The planning name first: it is the one the rewrite reads.
fn ordered_names(plan: &FilePlan) -> Vec<PathBuf> {
    let mut names = vec![plan.path.clone()];
    names.extend(plan.names.iter().filter(|n| **n != plan.path).cloned());
    names
}

/// Writes the new hash and size of patched files into their prefixes' conda records. Symlink
/// entries are left as the installer wrote them: the links themselves do not change.
fn update_conda_records(results: &[FileResult]) -> Result<()> {
    let mut by_prefix: BTreeMap<&Path, Vec<(String, &str, u64)>> = BTreeMap::new();
    for r in results {
        let Some(p) = &r.patched else { continue };
        let Some(sha) = &p.sha256 else { continue };
        for name in &p.names {
            if let Ok(rel) = name.strip_prefix(&r.plan.prefix) {
                by_prefix.entry(&r.plan.prefix).or_default().push((
                    rel.to_string_lossy().into_owned(),
                    sha,
                    p.len,
                ));
            }
        }
    }
    for (prefix, files) in by_prefix {
        let refs: Vec<crate::conda::ChangedFile> =
            files.iter().map(|(p, s, l)| (p.as_str(), *s, *l)).collect();
        crate::conda::update_records(prefix, &refs)
            .with_context(|| format!("{}: cannot update conda-meta records", prefix.display()))?;
    }
    Ok(())
}

fn summarize(results: &[FileResult]) -> Summary {
    let mut s = Summary {
        elf_files: results.len(),
        ..Summary::default()
    };
    for r in results {
        match (&r.plan.action, &r.error) {
            (_, Some(_)) | (Action::Error { .. }, _) => s.errors += 1,
            (Action::Patch, None) => s.patched += 1,
            (Action::AlreadyFine, None) => s.already_fine += 1,
            (Action::Skip { .. }, None) => s.skipped += 1,
        }
        if r.plan
            .resolution
            .as_ref()
            .is_some_and(|res| res.unresolved().next().is_some())
        {
            s.unresolved += 1;
        }
    }
    s
}

fn print_human(
    results: &[FileResult],
    summary: &Summary,
    unresolved: &BTreeMap<String, Vec<PathBuf>>,
    scan_errors: &[(PathBuf, String)],
    dry_run: bool,
) {
    let verb = if dry_run { "would patch" } else { "patched" };
    for r in results
        .iter()
        .filter(|r| r.plan.action == Action::Patch && r.error.is_none())
    {
        let mut what = Vec::new();
        if let Some(i) = &r.plan.new_interpreter {
            what.push(format!("interpreter {i}"));
        }
        if let Some(p) = &r.plan.new_run_path {
            let kind = r.plan.run_path_kind.map_or("RUNPATH", |k| k.name());
            what.push(format!("{kind} {p}"));
        }
        eprintln!("{verb} {}: {}", r.plan.path.display(), what.join(", "));
    }
    for r in results {
        if let Some(e) = &r.error {
            eprintln!("error: {e}");
        } else if let Action::Error { message } = &r.plan.action {
            eprintln!("error: {}: {message}", r.plan.path.display());
        }
    }
    for (path, why) in scan_errors {
        eprintln!("error: {}: {why}", path.display());
    }
    for (soname, files) in unresolved {
        let names: Vec<String> = files
            .iter()
            .take(5)
            .map(|f| f.display().to_string())
            .collect();
        let more = files.len().saturating_sub(5);
        let searched = results
            .iter()
            .filter_map(|r| r.plan.resolution.as_ref())
            .flat_map(|res| res.unresolved())
            .find(|n| n.soname == *soname)
            .and_then(|n| match &n.provider {
                resolve::Provider::Unresolved { searched } => Some(searched.join(", ")),
                _ => None,
            })
            .unwrap_or_default();
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        eprintln!(
            "unresolved: {soname} (needed by {}{tail}); searched {searched}; add a --lib-dir that has it, or --ignore-missing '{soname}'",
            names.join(", ")
        );
    }
    eprintln!(
        "{} ELF files under {} entries: {} {verb}, {} already fine, {} skipped, {} with unresolved libraries, {} errors",
        summary.elf_files,
        summary.scanned_entries,
        summary.patched,
        summary.already_fine,
        summary.skipped,
        summary.unresolved,
        summary.errors
    );
}

fn progress_bar(len: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || len < 50 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} patching {wide_msg}")
    {
        bar.set_style(style);
    }
    bar
}
