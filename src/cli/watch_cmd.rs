//! `autopatch watch`: keep prefixes patched while installers write to them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::fix_cmd::{FixArgs, absolute_roots};
use crate::fix::FixOutcome;
use crate::plan::Action;
use crate::watch::{POLL_INTERVAL, Report, Stopper, Watch, WatchOptions};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Follow changes only: skip the fix of everything watched at start.
    #[arg(long)]
    pub no_initial_scan: bool,
    #[command(flatten)]
    pub fix: FixArgs,
}

pub fn run(args: &WatchArgs) -> Result<bool> {
    let fix_args = &args.fix;
    let prepared = fix_args.prepare()?;
    let roots = watched_roots(&fix_args.paths)?;
    let (nothing_planned, nothing_done) = (|_| {}, || {});
    let options = WatchOptions {
        fix: fix_args.options(&prepared, &nothing_planned, &nothing_done),
        initial_scan: !args.no_initial_scan,
    };
    let watch = Watch::new(roots, options)?;
    let signals = stop_on_signals(watch.stopper())?;
    let mut printer = Printer {
        json: fix_args.json,
        dry_run: fix_args.dry_run,
        said: HashSet::new(),
    };
    watch.run(&mut |r| printer.print(r));
    signals.close();
    printer.line(json!({"event": "stopped"}), "stopped".into());
    Ok(true)
}

/// The directories to watch, absolute; those that do not exist are said and left out.
fn watched_roots(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut roots = Vec::new();
    for root in absolute_roots(paths)? {
        if root.is_dir() {
            roots.push(root);
        } else if root.exists() {
            bail!(
                "{}: not a directory: watch takes directories",
                root.display()
            );
        } else {
            eprintln!("autopatch: {}: does not exist, not watched", root.display());
        }
    }
    if roots.is_empty() {
        bail!("none of the given directories exists");
    }
    Ok(roots)
}

/// SIGINT and SIGTERM stop the watch once the fix in flight is done; a second one stops the
/// process at once.
fn stop_on_signals(stopper: Stopper) -> Result<signal_hook::iterator::Handle> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot handle signals")?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        let mut forever = signals.forever();
        if forever.next().is_some() {
            stopper.stop();
        }
        if let Some(signal) = forever.next() {
            let _ = signal_hook::low_level::emulate_default_handler(signal);
        }
    });
    Ok(handle)
}

/// One line per thing that happened: JSON on stdout, or text on stderr. Errors and unresolved
/// libraries are told once, not again at every fix of their prefix.
struct Printer {
    json: bool,
    dry_run: bool,
    said: HashSet<String>,
}

impl Printer {
    fn line(&self, value: Value, text: String) {
        if self.json {
            println!("{value}");
        } else {
            eprintln!("{text}");
        }
    }

    fn once(&mut self, value: Value, text: String) {
        if self.said.insert(text.clone()) {
            self.line(value, text);
        }
    }

    fn print(&mut self, report: Report) {
        match report {
            Report::Watching {
                roots,
                watched,
                polled,
            } => self.line(
                json!({"event": "watching", "roots": texts(roots), "watched_dirs": watched, "polled_dirs": polled}),
                format!(
                    "watching {watched} directories under {} ({polled} polled)",
                    join(roots)
                ),
            ),
            Report::LimitReached { polled } => self.limit_reached(polled),
            Report::Unwatched { dir, why } => self.line(
                json!({"event": "error", "path": text(dir), "message": format!("cannot watch: {why}")}),
                format!("error: {}: cannot watch: {why}", dir.display()),
            ),
            Report::WatchError(e) => self.line(
                json!({"event": "error", "path": e.paths.first().map(|p| text(p)), "message": e.to_string()}),
                format!("error: inotify: {e}"),
            ),
            Report::Overflow => self.line(
                json!({"event": "overflow"}),
                "warning: inotify's event queue overflowed (sysctl fs.inotify.max_queued_events): fixing everything again".into(),
            ),
            Report::Fixed {
                roots,
                outcome,
                elapsed,
            } => self.fixed(roots, outcome, elapsed),
            Report::Failed { roots, error } => self.line(
                json!({"event": "error", "path": texts(roots), "message": error.to_string()}),
                format!("error: fixing {}: {error}", join(roots)),
            ),
            Report::Idle { as_of } => self.line(
                json!({"event": "idle", "as_of_ms": unix_ms(as_of)}),
                "idle".into(),
            ),
        }
    }

    fn limit_reached(&self, polled: &[PathBuf]) {
        let interval = POLL_INTERVAL.as_secs();
        self.line(
            json!({"event": "watch_limit", "sysctl": "fs.inotify.max_user_watches", "polled": texts(polled), "poll_interval_s": interval}),
            format!(
                "warning: the inotify watch limit is reached (sysctl fs.inotify.max_user_watches): {} and what is below {} polled every {interval} s instead; raise the limit (sysctl -w fs.inotify.max_user_watches=524288, or on NixOS boot.kernel.sysctl.\"fs.inotify.max_user_watches\") and restart",
                join(polled),
                if polled.len() == 1 { "it is" } else { "them are" },
            ),
        );
    }

    fn fixed(&mut self, roots: &[PathBuf], outcome: &FixOutcome, elapsed: Duration) {
        let (event, verb) = if self.dry_run {
            ("would_patch", "would patch")
        } else {
            ("patched", "patched")
        };
        for r in outcome.files.iter().filter(|r| {
            r.plan.action == Action::Patch
                && r.error.is_none()
                && (self.dry_run || r.written == Some(true))
        }) {
            let plan = &r.plan;
            let kind = plan.run_path_kind.map_or("RUNPATH", |k| k.name());
            let mut what = Vec::new();
            if let Some(i) = &plan.new_interpreter {
                what.push(format!("interpreter {i}"));
            }
            if let Some(p) = &plan.new_run_path {
                what.push(format!("{kind} {p}"));
            }
            self.line(
                json!({"event": event, "path": text(&plan.path), "prefix": text(&plan.prefix),
                       "interpreter": plan.new_interpreter, "run_path": plan.new_run_path,
                       "run_path_kind": kind}),
                format!("{verb} {}: {}", plan.path.display(), what.join(", ")),
            );
        }
        self.problems(outcome);
        let summary = &outcome.summary;
        self.line(
            json!({"event": "fixed", "roots": texts(roots), "elf_files": summary.elf_files,
                   "patched": summary.patched, "errors": summary.errors,
                   "elapsed_ms": elapsed.as_millis() as u64}),
            format!(
                "fixed {}: {} ELF files, {} {verb}, {} errors, {} ms",
                join(roots),
                summary.elf_files,
                summary.patched,
                summary.errors,
                elapsed.as_millis()
            ),
        );
    }

    /// Errors and unresolved libraries, told once each. A file removed meanwhile (an installer
    /// replacing it) is no error: its replacement has events of its own.
    fn problems(&mut self, outcome: &FixOutcome) {
        let exists = |p: &Path| p.symlink_metadata().is_ok();
        for r in outcome.files.iter().filter(|r| exists(&r.plan.path)) {
            let path = &r.plan.path;
            let message = match (&r.error, &r.plan.action) {
                (Some(e), _) => Some(e.clone()),
                (None, Action::Error { message }) => Some(format!("{}: {message}", path.display())),
                _ => None,
            };
            if let Some(message) = message {
                self.once(
                    json!({"event": "error", "path": text(path), "message": message}),
                    format!("error: {message}"),
                );
            }
            for failed in &r.load_problems {
                let (path, message) = (&failed.path, &failed.problem.message);
                self.once(
                    json!({"event": "not_loading", "path": text(path), "message": message}),
                    format!("does not load: {}: {message}", path.display()),
                );
            }
        }
        for (path, why) in outcome.scan_errors.iter().filter(|(p, _)| exists(p)) {
            self.once(
                json!({"event": "error", "path": text(path), "message": why}),
                format!("error: {}: {why}", path.display()),
            );
        }
        for (soname, files) in &outcome.unresolved {
            self.once(
                json!({"event": "unresolved", "soname": soname, "files": texts(files)}),
                format!(
                    "unresolved: {soname} (needed by {}); add a --lib-dir that has it, or --ignore-missing '{soname}'",
                    join(files)
                ),
            );
        }
    }
}

/// A path as JSON text; a name that is not UTF-8 is shown with replacement characters.
fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn texts(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| text(p)).collect()
}

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_roots_are_left_out_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let missing = dir.path().join("missing");
        let roots = watched_roots(&[dir.path().to_path_buf(), missing.clone()]).unwrap();
        assert_eq!(roots, [dir.path()]);
        assert!(watched_roots(&[missing]).is_err());
        assert!(watched_roots(&[file]).is_err());
    }
}
