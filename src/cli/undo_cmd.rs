//! `autopatch undo`: put back what `autopatch fix` changed, from the prefix's journal.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::journal::{self, FileOutcome, PrefixUndo, UndoOptions, UndoOutcome};

#[derive(Debug, Args)]
pub struct UndoArgs {
    /// Leave conda-meta records as they are.
    #[arg(long, env = "AUTOPATCH_NO_UPDATE_RECORDS")]
    pub no_update_records: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    /// Environments, conda roots, venvs, or directories and files inside them.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

pub fn run(args: &UndoArgs) -> Result<bool> {
    let options = UndoOptions {
        update_records: !args.no_update_records,
    };
    let mut success = true;
    let mut outcomes = Vec::new();
    for path in super::fix_cmd::absolute_roots(&args.paths)? {
        if std::fs::symlink_metadata(&path).is_err() {
            eprintln!("error: {}: does not exist", path.display());
            success = false;
            continue;
        }
        let outcome = journal::undo(&path, &options)
            .with_context(|| format!("cannot undo under {}", path.display()))?;
        success &= outcome.is_success();
        if !args.json {
            print_human(&path, &outcome);
        }
        outcomes.push(outcome);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    }
    Ok(success)
}

fn print_human(path: &std::path::Path, outcome: &UndoOutcome) {
    if outcome.prefixes.is_empty() {
        eprintln!(
            "{}: no undo journal here: autopatch changed nothing under it",
            path.display()
        );
    }
    for prefix in &outcome.prefixes {
        print_prefix(prefix);
    }
}

fn print_prefix(prefix: &PrefixUndo) {
    let mut counts = [0usize; 5];
    for file in &prefix.files {
        let path = file.path.display();
        match &file.outcome {
            FileOutcome::Restored => {
                counts[0] += 1;
                eprintln!("restored {path}");
            }
            FileOutcome::AlreadyOriginal => counts[1] += 1,
            FileOutcome::Deleted => {
                counts[2] += 1;
                eprintln!("{path}: deleted since autopatch changed it; nothing to restore");
            }
            FileOutcome::Changed => {
                counts[3] += 1;
                eprintln!(
                    "{path}: changed since autopatch wrote it; left alone (reinstall its package to get the original)"
                );
            }
            FileOutcome::Failed { error } => {
                counts[4] += 1;
                eprintln!("error: {error}");
            }
        }
    }
    for error in &prefix.record_errors {
        eprintln!("error: {error}");
    }
    let journal = if prefix.journal_removed {
        "journal removed"
    } else {
        "journal kept for what is left: run undo again once it is fixed"
    };
    eprintln!(
        "{}: {} restored, {} already original, {} deleted, {} changed since, {} errors; {} conda records restored; {journal}",
        prefix.prefix.display(),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4] + prefix.record_errors.len(),
        prefix.records,
    );
}
