//! `autopatch check` run inside the NixOS-like root agrees, file by file, with the store's real
//! loader on a conda environment in three states: unpatched, patched by `fix`, and patched then
//! broken on purpose.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::NixRoot;

const SPECS: &[&str] = &["zstd", "tk", "bzip2", "openssl"];

/// A copy of autopatch that runs inside the root: its interpreter and run path point into the
/// store, edited by autopatch itself.
fn autopatch_for_the_root(root: &NixRoot, dir: &Path) -> PathBuf {
    let copy = dir.join("autopatch");
    fs::copy(env!("CARGO_BIN_EXE_autopatch"), &copy).unwrap();
    let rpath = format!("{}:{}", root.glibc_lib.display(), root.gcc_lib.display());
    let out = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .args(["elf", "--set-interpreter"])
        .arg(&root.ld)
        .args(["--set-rpath", &rpath])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    copy
}

/// `check`'s verdict for every file of `prefix`, run inside the root.
fn check_verdicts(
    root: &NixRoot,
    bound: &Path,
    autopatch: &Path,
    prefix: &Path,
) -> BTreeMap<PathBuf, (bool, String)> {
    let out = root.run(
        bound,
        &[autopatch, Path::new("check"), Path::new("--json"), prefix],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let messages: Vec<&str> = f["problems"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["message"].as_str())
                .collect();
            (
                PathBuf::from(f["path"].as_str().unwrap()),
                (f["ok"].as_bool().unwrap(), messages.join("; ")),
            )
        })
        .collect()
}

/// Compares `check` with the real loader for every file `check` reported; returns how many.
fn assert_agreement(
    root: &NixRoot,
    bound: &Path,
    autopatch: &Path,
    prefix: &Path,
    state: &str,
) -> usize {
    let verdicts = check_verdicts(root, bound, autopatch, prefix);
    assert!(
        verdicts.len() > 10,
        "{state}: check reported only {} files",
        verdicts.len()
    );
    let mut disagreements = Vec::new();
    for (path, (ok, why)) in &verdicts {
        let real = root.ldd(bound, path);
        if real.ok != *ok {
            disagreements.push(format!(
                "{}: check ok={ok} ({why}); loader: {real}",
                path.display()
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{state}: {} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    let failing = verdicts.values().filter(|(ok, _)| !ok).count();
    eprintln!(
        "{state}: {} files, {failing} not loading, 0 disagreements",
        verdicts.len()
    );
    verdicts.len()
}

#[test]
fn check_agrees_with_the_loader_unpatched_patched_and_broken() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(SPECS) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let env = cached.fresh_copy(&work.path().join("root"));
    let autopatch = autopatch_for_the_root(&root, &env.root);

    let unpatched = check_verdicts(&root, &env.root, &autopatch, &env.prefix);
    assert!(
        unpatched.values().any(|(ok, _)| !ok),
        "unpatched programs must fail in the root"
    );
    assert_agreement(&root, &env.root, &autopatch, &env.prefix, "unpatched");

    let fix = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .arg("fix")
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .arg(&env.root)
        .output()
        .unwrap();
    assert!(
        fix.status.success(),
        "fix: {}",
        String::from_utf8_lossy(&fix.stderr)
    );
    let patched = check_verdicts(&root, &env.root, &autopatch, &env.prefix);
    assert!(
        patched.values().all(|(ok, _)| *ok),
        "after fix everything loads: {patched:?}"
    );
    assert_agreement(&root, &env.root, &autopatch, &env.prefix, "patched");

    // Broken on purpose: a library the env's programs need is deleted, and a library's run
    // path is pointed away from the prefix.
    let libz = fs::read_link(env.prefix.join("lib/libz.so.1")).unwrap();
    fs::remove_file(env.prefix.join("lib").join(libz)).unwrap();
    let tcl = env.prefix.join("lib/libtcl8.6.so");
    let out = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .args(["elf", "--set-rpath"])
        .arg(&root.gcc_lib)
        .arg(&tcl)
        .output()
        .unwrap();
    assert!(out.status.success());
    let broken = check_verdicts(&root, &env.root, &autopatch, &env.prefix);
    let failing: Vec<&PathBuf> = broken
        .iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(p, _)| p)
        .collect();
    assert!(
        failing.contains(&&tcl),
        "libtcl with a run path away from the prefix must fail"
    );
    assert!(
        failing.len() > 2,
        "deleting libz must break its users: {failing:?}"
    );
    assert_agreement(&root, &env.root, &autopatch, &env.prefix, "broken");
}
