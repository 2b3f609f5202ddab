//! `autopatch fix` of a conda environment and the package cache it is hard-linked from, killed
//! with SIGKILL at random moments: after each kill every file is its original (possibly with
//! data appended that nothing refers to yet) or its final form, or (grown in place and killed
//! between two later steps) loads with the root's loader, and every conda record is whole; `undo` then gives back the original tree byte for
//! byte, and a rerun reaches exactly the tree of an uninterrupted run (content, symlinks and
//! hard links), with no temporary file left.
//!
//! `AUTOPATCH_CRASH_TRIALS` sets the number of trials (30 by default); `AUTOPATCH_TEST_SEED`
//! replays a run.

mod common;
mod reliability_support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reliability_support::{Rng, Snapshot, copy_tree, fix, fix_command, snapshot, undo};

const SPECS: &[&str] = &[
    "zstd",
    "bzip2",
    "openssl",
    "tk",
    "libsqlite",
    "lz4-c",
    "readline",
    "liblzma",
    "libffi",
];

/// When to kill a run.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Once it has logged this many patched files, and this many microseconds more.
    Patched(usize, u64),
    /// This long after it started.
    After(Duration),
}

#[test]
fn killed_runs_lose_nothing_and_reruns_finish_the_job() {
    let root = common::require_nixroot();
    let Some(env) = common::conda_env_or_skip(SPECS) else {
        return;
    };
    let trials: usize = std::env::var("AUTOPATCH_CRASH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(30);
    let work = scratch_dir();
    let cache = work.path().join("cache");
    let tree = work.path().join("tree");
    copy_tree(&env.root, &tree);
    let pristine = snapshot(&tree);

    let started = Instant::now();
    let out = fix(&cache, &[], &[&tree]);
    let full_run = started.elapsed();
    assert!(out.status.success(), "the uninterrupted run failed");
    let reference = snapshot(&tree);
    let changed = reference.differences(&pristine);
    assert!(
        changed.len() >= 5,
        "expected the run to change files, it changed {changed:?}"
    );
    assert_loads(&root, &tree);
    let patched = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("patched "))
        .count();

    let mut rng = Rng::from_env();
    let started = Instant::now();
    let mut completed_before_kill = 0;
    for trial in 0..trials {
        copy_tree(&env.root, &tree);
        let at = if trial % 3 == 2 {
            KillAt::After(Duration::from_micros(
                rng.below(full_run.as_micros() as u64 * 3 / 2),
            ))
        } else {
            KillAt::Patched(rng.below(patched as u64 + 1) as usize, rng.below(3000))
        };
        eprintln!("trial {trial}: kill {at:?}");
        if run_and_kill(&cache, &tree, at) {
            completed_before_kill += 1;
        }
        let killed = snapshot(&tree);
        assert_each_file_is_original_final_or_loads(&root, &tree, &killed, &pristine, &reference);

        // Undo straight after the kill, or after a rerun finished the job.
        let undo_first = trial % 2 == 0;
        if undo_first {
            assert_undo_restores(&tree, &pristine, &format!("trial {trial}, undo after kill"));
        }
        let out = fix(&cache, &[], &[&tree]);
        assert!(out.status.success(), "trial {trial}: the rerun failed");
        snapshot(&tree).assert_same(&reference, &format!("trial {trial}, rerun"));
        if !undo_first {
            assert_undo_restores(
                &tree,
                &pristine,
                &format!("trial {trial}, undo after rerun"),
            );
        }
    }
    eprintln!(
        "{trials} trials in {:.1?} ({completed_before_kill} runs finished before their kill)",
        started.elapsed()
    );
    assert!(
        trials - completed_before_kill >= trials / 2,
        "most kills must land while the run works"
    );
}

/// A directory in memory when there is one: each trial copies and reads the whole tree several
/// times, and a kill means the same on any filesystem.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().unwrap()
}

/// Runs `fix` on `tree` and kills it at `at`; returns whether it had ended by then.
fn run_and_kill(cache: &Path, tree: &Path, at: KillAt) -> bool {
    let mut cmd = fix_command(cache, &[], &[tree]);
    cmd.env("AUTOPATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("starting autopatch");
    let stderr = child.stderr.take().unwrap();
    match at {
        KillAt::After(delay) => std::thread::sleep(delay),
        KillAt::Patched(count, micros) => {
            let mut seen = 0;
            let mut lines = BufReader::new(stderr).lines();
            while seen < count {
                match lines.next() {
                    Some(Ok(line)) if line.contains(" patched ") => seen += 1,
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            std::thread::sleep(Duration::from_micros(micros));
            // Keep the pipe open (and drained) until the kill, so the run never sees it closed.
            std::thread::spawn(move || lines.for_each(drop));
        }
    }
    let ended = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    child.wait().unwrap();
    ended
}

fn assert_each_file_is_original_final_or_loads(
    root: &common::NixRoot,
    tree: &Path,
    killed: &Snapshot,
    pristine: &Snapshot,
    done: &Snapshot,
) {
    assert_eq!(
        killed.files.keys().collect::<Vec<_>>(),
        pristine.files.keys().collect::<Vec<_>>(),
        "a kill must neither remove nor add files (temporary ones aside)"
    );
    for (path, bytes) in &killed.files {
        let original = &pristine.files[path];
        // The original with data appended that no header names yet reads as the original.
        if !bytes.starts_with(original) && Some(bytes) != done.files.get(path) {
            assert_in_between_form_loads(root, tree, path, bytes);
        }
        if path.starts_with("env/conda-meta") && path.extension().is_some_and(|e| e == "json") {
            serde_json::from_slice::<serde_json::Value>(bytes)
                .unwrap_or_else(|e| panic!("{} is not whole: {e}", path.display()));
        }
    }
    assert_eq!(killed.links, pristine.links, "symlinks changed");
}

/// A file caught between two steps of an in-place rewrite: it must read as ELF and load.
fn assert_in_between_form_loads(root: &common::NixRoot, tree: &Path, path: &Path, bytes: &[u8]) {
    let elf = autopatch::elf::Elf::parse(bytes).unwrap_or_else(|e| {
        panic!(
            "{} is neither its original nor its final form, and does not read as ELF: {e}",
            path.display()
        )
    });
    if elf.is_static() || !path.starts_with("env") {
        return;
    }
    let ldd = root.ldd(tree, &tree.join(path));
    assert!(
        ldd.ok,
        "{} is neither its original nor its final form, and does not load:\n{ldd}",
        path.display()
    );
}

fn assert_undo_restores(tree: &Path, pristine: &Snapshot, what: &str) {
    let out = undo(&[], &[tree]);
    assert!(out.status.success(), "{what}: undo failed");
    snapshot(tree).assert_same(pristine, what);
    assert!(
        !tree.join("env/.autopatch/journal.jsonl").exists(),
        "{what}: the journal must go once everything is undone"
    );
}

/// Every ELF file of the env loads with the root's loader.
fn assert_loads(root: &common::NixRoot, tree: &Path) {
    let mut checked = 0;
    for entry in walkdir::WalkDir::new(tree.join("env")).follow_links(false) {
        let entry = entry.unwrap();
        let path = entry.path();
        if !entry.file_type().is_file() || !reliability_support::is_elf(path) {
            continue;
        }
        let bytes = std::fs::read(path).unwrap();
        let elf = autopatch::elf::Elf::parse(&bytes).unwrap();
        if !elf.is_loadable() || elf.is_static() {
            continue;
        }
        let ldd = root.ldd(tree, path);
        assert!(ldd.ok, "{} does not load:\n{ldd}", path.display());
        checked += 1;
    }
    assert!(
        checked >= 10,
        "expected the env's ELF files, found {checked}"
    );
}
