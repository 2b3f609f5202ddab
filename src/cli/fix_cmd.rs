//! `autopatch fix`: make every binary under the given paths load on NixOS.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::config::{self, ConfigFile};
use crate::fix::{self, FileResult, FixOptions, FixOutcome, Summary, discover_interpreter};
use crate::plan::{Action, Settings};
use crate::resolve;
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
    /// Skip checking with the loader simulation that patched files load.
    #[arg(long, env = "AUTOPATCH_NO_VERIFY")]
    pub no_verify: bool,
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

#[derive(Debug, Serialize)]
struct Report<'a> {
    dry_run: bool,
    interpreter: Option<&'a Path>,
    summary: &'a Summary,
    unresolved: &'a BTreeMap<String, Vec<PathBuf>>,
    files: &'a [FileResult],
}

/// What every run takes from flags, environment and config file, merged.
pub(crate) struct Prepared {
    pub(crate) resolved: Resolved,
    pub(crate) update_records: bool,
    pub(crate) verify: bool,
}

impl FixArgs {
    /// Merges the config file in, sizes the thread pool and opens the store index.
    pub(crate) fn prepare(&self) -> Result<Prepared> {
        let file_config = config::load()?;
        if let Some(jobs) = self.jobs.or(file_config.jobs) {
            rayon::ThreadPoolBuilder::new()
                .num_threads(jobs)
                .build_global()
                .ok();
        }
        Ok(Prepared {
            resolved: self.resolve.resolve(&file_config)?,
            update_records: !(self.no_update_records
                || file_config.no_update_records.unwrap_or(false)),
            verify: !(self.no_verify || file_config.no_verify.unwrap_or(false)),
        })
    }

    /// The options of a fix with these settings.
    pub(crate) fn options<'a>(
        &self,
        prepared: &'a Prepared,
        on_planned: &'a (dyn Fn(usize) + Sync),
        on_file_done: &'a (dyn Fn() + Sync),
    ) -> FixOptions<'a> {
        let resolved = &prepared.resolved;
        FixOptions {
            settings: Settings {
                interpreter: resolved.interpreter.clone(),
                store: resolved.store.as_ref(),
                preferences: &resolved.preferences,
                ignore_missing: &resolved.ignore_missing,
                allow_setuid: self.allow_setuid,
            },
            dry_run: self.dry_run,
            update_records: prepared.update_records,
            verify: prepared.verify,
            on_planned,
            on_file_done,
        }
    }
}

pub fn run(args: &FixArgs) -> Result<bool> {
    let prepared = args.prepare()?;
    let settings = &prepared.resolved;
    let roots = absolute_roots(&args.paths)?;
    let progress = ProgressSlot::default();
    let on_planned = |count| progress.start(count);
    let on_file_done = || progress.inc();
    let options = args.options(&prepared, &on_planned, &on_file_done);
    let outcome = fix::fix(&roots, &options)?;
    progress.finish();
    if args.json {
        let report = Report {
            dry_run: args.dry_run,
            interpreter: settings.interpreter.as_deref(),
            summary: &outcome.summary,
            unresolved: &outcome.unresolved,
            files: &outcome.files,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&outcome, args.dry_run)?;
    }
    Ok(outcome.is_success())
}

pub(crate) fn absolute_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    paths
        .iter()
        .map(|p| {
            std::path::absolute(p)
                .map(|a| resolve::normalize(&a))
                .with_context(|| format!("{}: cannot make the path absolute", p.display()))
        })
        .collect()
}

/// The report for people, on stderr: a line per patched file, then problems and the summary.
/// Written through one buffer: a run reports thousands of files.
fn print_human(outcome: &FixOutcome, dry_run: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut err = std::io::BufWriter::new(std::io::stderr().lock());
    let (results, summary) = (&outcome.files, &outcome.summary);
    let (unresolved, scan_errors) = (&outcome.unresolved, &outcome.scan_errors);
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
        writeln!(err, "{verb} {}: {}", r.plan.path.display(), what.join(", "))?;
    }
    for r in results {
        if let Some(e) = &r.error {
            writeln!(err, "error: {e}")?;
        } else if let Action::Error { message } = &r.plan.action {
            writeln!(err, "error: {}: {message}", r.plan.path.display())?;
        }
    }
    for failed in results.iter().flat_map(|r| &r.load_problems) {
        let problem = &failed.problem;
        let hint = problem
            .suggestion
            .as_deref()
            .map(|s| format!("; {s}"))
            .unwrap_or_default();
        writeln!(
            err,
            "does not load: {}: {}{hint}",
            failed.path.display(),
            problem.message
        )?;
    }
    for (path, why) in scan_errors {
        writeln!(err, "error: {}: {why}", path.display())?;
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
            .flat_map(|r| r.plan.names_in_prefixes())
            .flat_map(|name| name.needed)
            .find(|n| n.is_unresolved() && n.soname == *soname)
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
        writeln!(
            err,
            "unresolved: {soname} (needed by {}{tail}); searched {searched}; add a --lib-dir that has it, or --ignore-missing '{soname}'",
            names.join(", ")
        )?;
    }
    writeln!(
        err,
        "{} ELF files under {} entries: {} {verb}, {} already fine, {} skipped, {} with unresolved libraries, {} not loading, {} errors",
        summary.elf_files,
        summary.scanned_entries,
        summary.patched,
        summary.already_fine,
        summary.skipped,
        summary.unresolved,
        summary.not_loading,
        summary.errors
    )?;
    err.flush()
}

/// A progress bar on a terminal, created once the number of files to patch is known.
#[derive(Default)]
struct ProgressSlot(std::sync::OnceLock<indicatif::ProgressBar>);

impl ProgressSlot {
    fn start(&self, len: usize) {
        use std::io::IsTerminal;
        let bar = if !std::io::stderr().is_terminal() || len < 50 {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(len as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} patching")
            {
                bar.set_style(style);
            }
            bar
        };
        let _ = self.0.set(bar);
    }

    fn inc(&self) {
        if let Some(bar) = self.0.get() {
            bar.inc(1);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.0.get() {
            bar.finish_and_clear();
        }
    }
}
