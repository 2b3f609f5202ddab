//! A file grown in place and killed after any of its steps: the next `fix` ends with exactly
//! the tree an uninterrupted run gives, and `undo` instead gives back the original tree. The
//! kill is simulated exactly: the journal line the run writes first, then the steps up to the
//! one the kill interrupted, written into the file itself (every name of it sees them).

mod common;
mod reliability_support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use autopatch::apply::Staged;
use autopatch::elf::{Edits, RunPathEdit};
use autopatch::journal::Journals;
use reliability_support::{copy_tree, fix, snapshot, undo};

const SPECS: &[&str] = &["zstd", "tk"];
/// The files killed mid-rewrite: a program hard-linked into the cache, and a library the
/// installer copied (conda wrote the prefix into it).
const FILES: &[&str] = &["env/bin/zstd", "env/lib/libtk8.6.so"];
/// After the append, the staging header, the front writes, the final header; the cut is the
/// end of the rewrite.
const STEPS: usize = 4;

#[test]
fn a_rewrite_killed_after_any_step_is_settled_by_the_next_run_or_undone() {
    common::require_nixroot();
    let Some(env) = common::conda_env_or_skip(SPECS) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let tree = work.path().join("tree");
    copy_tree(&env.root, &tree);
    let pristine = snapshot(&tree);
    let planned = fix(&cache, &["--dry-run", "--json"], &[&tree]);
    let planned: serde_json::Value = serde_json::from_slice(&planned.stdout).unwrap();
    assert!(fix(&cache, &[], &[&tree]).status.success());
    let reference = snapshot(&tree);

    assert!(
        links_of(&tree, &tree.join(FILES[0])).len() >= 2,
        "{} is a link",
        FILES[0]
    );
    for file in FILES {
        let edits = planned_edits(&planned, &tree.join(file));
        for step in 0..STEPS {
            let what = format!("{file} killed after step {step}");
            copy_tree(&env.root, &tree);
            kill_after(&tree, &tree.join(file), &edits, step);
            assert_ne!(snapshot(&tree), pristine, "{what}: the steps wrote nothing");
            let out = fix(&cache, &[], &[&tree]);
            assert!(out.status.success(), "{what}: the rerun failed");
            snapshot(&tree).assert_same(&reference, &format!("{what}, then a rerun"));

            copy_tree(&env.root, &tree);
            kill_after(&tree, &tree.join(file), &edits, step);
            assert!(undo(&[], &[&tree]).status.success(), "{what}: undo failed");
            snapshot(&tree).assert_same(&pristine, &format!("{what}, then undo"));
        }
    }
}

/// The edits the plan gives `path`.
fn planned_edits(plan: &serde_json::Value, path: &Path) -> Edits {
    let entry = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == path.to_str())
        .unwrap_or_else(|| panic!("{} is not planned", path.display()));
    let text = |key: &str| entry[key].as_str().map(|s| s.as_bytes().to_vec());
    Edits {
        interpreter: text("new_interpreter"),
        run_path: text("new_run_path").map(RunPathEdit::Set),
        ..Edits::default()
    }
}

/// What a run killed after `step` leaves: its journal line, and the steps up to `step` written
/// into the file.
fn kill_after(tree: &Path, path: &Path, edits: &Edits, step: usize) {
    let input = fs::read(path).unwrap();
    let (rewrite, steps) = common::elf::in_place_growth(&input, edits);
    let names = links_of(tree, path);
    let prefix = tree.join("env");
    Journals::default()
        .record_patch(
            &prefix,
            &Staged {
                names: &names,
                input: &input,
                rewrite: &rewrite,
                sha256: None,
                in_place: Some(&steps),
            },
        )
        .unwrap();
    // Written over the same inode, as the run writes it: every name sees the steps.
    fs::write(path, common::elf::in_place_state(&input, &steps, step)).unwrap();
}

/// Every name of `path`'s inode in `tree`, `path` first.
fn links_of(tree: &Path, path: &Path) -> Vec<PathBuf> {
    let ino = fs::metadata(path).unwrap().ino();
    let mut names = vec![path.to_path_buf()];
    for entry in walkdir::WalkDir::new(tree) {
        let entry = entry.unwrap();
        if entry.file_type().is_file()
            && entry.path() != path
            && entry.metadata().unwrap().ino() == ino
        {
            names.push(entry.path().to_path_buf());
        }
    }
    names
}
