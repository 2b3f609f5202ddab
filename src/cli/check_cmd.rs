//! `autopatch check`: what the dynamic loader will make of each file, without running anything.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use crate::check::{DefaultDirs, DirHints, FileReport, Loader, LoaderConfig};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check every file with this interpreter instead of its own PT_INTERP; a program's $ORIGIN
    /// stays its real directory, as when it runs (`ld.so FILE` would take the path as given).
    #[arg(long, value_name = "PATH", env = "AUTOPATCH_INTERPRETER")]
    interpreter: Option<PathBuf>,
    /// The Nix store: an interpreter in it means a Nix glibc, and missing libraries found in it
    /// are suggested.
    #[arg(
        long,
        value_name = "DIR",
        env = "AUTOPATCH_STORE",
        default_value = "/nix/store"
    )]
    store: PathBuf,
    /// Search LD_LIBRARY_PATH from the environment, as the programs would when started from here.
    #[arg(long)]
    env: bool,
    /// Print one JSON object with every file's report and a summary.
    #[arg(long)]
    json: bool,
    /// Files and directories to check (directories are walked).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Summary {
    checked: usize,
    ok: usize,
    with_problems: usize,
}

#[derive(Serialize)]
struct JsonOutput<'a> {
    files: &'a [FileReport],
    summary: Summary,
}

/// Checks the files; `Ok(false)` when any has a problem.
/// The loader libraries are checked with: the one `fix` would give programs, when the store
/// has one.
fn library_interpreter(store: &std::path::Path) -> Option<std::path::PathBuf> {
    let index = store
        .is_dir()
        .then(|| crate::store::StoreIndex::open(store, &crate::config::cache_dir(None)).ok())
        .flatten();
    crate::fix::discover_interpreter(index.as_ref())
}

pub fn run(args: &CheckArgs) -> Result<bool> {
    let config = LoaderConfig {
        interpreter: args.interpreter.clone(),
        env_ld_library_path: args.env.then(ld_library_path).flatten(),
        default_dirs: DefaultDirs::Auto,
        store_dir: args.store.clone(),
        library_interpreter: library_interpreter(&args.store),
        // Only the JSON output lists what each file loads; the report for people shows problems.
        list_resolved: args.json,
    };
    let prefixes = args.paths.iter().filter(|p| p.is_dir()).cloned().collect();
    let hints = DirHints::new(Some(args.store.clone()), prefixes);
    let reports = Loader::new(config)
        .with_hints(&hints)
        .check_paths(&args.paths);
    let ok = reports.iter().filter(|r| r.ok).count();
    let summary = Summary {
        checked: reports.len(),
        ok,
        with_problems: reports.len() - ok,
    };
    let all_ok = summary.with_problems == 0;
    let mut out = std::io::stdout().lock();
    if args.json {
        let output = JsonOutput {
            files: &reports,
            summary,
        };
        serde_json::to_writer_pretty(&mut out, &output)?;
        writeln!(out)?;
    } else {
        for report in reports.iter().filter(|r| !r.ok) {
            let problems: Vec<&str> = report.problems.iter().map(|p| p.message.as_str()).collect();
            writeln!(out, "{}: {}", report.path.display(), problems.join("; "))?;
        }
        writeln!(
            out,
            "checked {} files: {} ok, {} with problems",
            summary.checked, summary.ok, summary.with_problems
        )?;
    }
    Ok(all_ok)
}

/// `LD_LIBRARY_PATH` split as glibc splits it (at `:` and `;`, empty entries meaning the current
/// directory); unset or empty is none.
fn ld_library_path() -> Option<Vec<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let value = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty())?;
    let entries = value
        .as_bytes()
        .split(|b| *b == b':' || *b == b';')
        .map(|e| PathBuf::from(std::ffi::OsStr::from_bytes(e)))
        .collect();
    Some(entries)
}
