//! `autopatch check` run inside the NixOS-like root agrees, file by file, with the store's real
//! loader on the prefixes `fix` is tested on, a conda environment and a venv with wheels, in three
//! states: unpatched, patched by `fix`, and patched then broken on purpose.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::NixRoot;

const SPECS: &[&str] = &["zstd", "tk", "bzip2", "openssl", "libstdcxx"];

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

/// Compares `check` with the real loader on `prefix` (inside `bound`, which is bound in the root)
/// unpatched, after `fix` of `fix_target`, and after `break_it`, which returns files it broke.
fn assert_three_states(
    root: &NixRoot,
    bound: &Path,
    prefix: &Path,
    fix_target: &Path,
    break_it: impl FnOnce() -> Vec<PathBuf>,
) {
    let autopatch = autopatch_for_the_root(root, bound);
    let unpatched = check_verdicts(root, bound, &autopatch, prefix);
    assert!(
        unpatched.values().any(|(ok, _)| !ok),
        "unpatched files must fail in the root"
    );
    assert_agreement(root, bound, &autopatch, prefix, "unpatched");

    let cache = tempfile::tempdir().unwrap();
    let fix = common::fix(cache.path(), &[], &[fix_target]);
    assert!(fix.status.success(), "fix failed");
    let patched = check_verdicts(root, bound, &autopatch, prefix);
    assert!(
        patched.values().all(|(ok, _)| *ok),
        "after fix everything loads: {patched:?}"
    );
    assert_agreement(root, bound, &autopatch, prefix, "patched");

    let broken = break_it();
    let verdicts = check_verdicts(root, bound, &autopatch, prefix);
    for file in &broken {
        assert!(
            verdicts.get(file).is_some_and(|(ok, _)| !ok),
            "{} must fail once broken: {:?}",
            file.display(),
            verdicts.get(file)
        );
    }
    assert_agreement(root, bound, &autopatch, prefix, "broken");
}

/// Sets the run path of `file`, as `autopatch elf --set-rpath`.
fn set_run_path(file: &Path, run_path: &Path) {
    common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_autopatch"))
            .args(["elf", "--set-rpath"])
            .arg(run_path)
            .arg(file),
    );
}

#[test]
fn check_agrees_with_the_loader_unpatched_patched_and_broken() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(SPECS) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let env = cached.fresh_copy(&work.path().join("root"));
    // Unpatched, it finds the store's libstdc++, older than it needs.
    let newer = env.prefix.join("bin/needs-newer-glibcxx");
    common::build_newer_glibcxx_program(&newer, &env.prefix.join("lib"), &root.ld, &root.gcc_lib);

    // Broken on purpose: a library the env's programs need is deleted, a library's run path is
    // pointed away from the prefix, and the program's at the store's older libstdc++ again.
    let break_it = || {
        let libz = fs::read_link(env.prefix.join("lib/libz.so.1")).unwrap();
        fs::remove_file(env.prefix.join("lib").join(libz)).unwrap();
        let tcl = env.prefix.join("lib/libtcl8.6.so");
        set_run_path(&tcl, &root.gcc_lib);
        set_run_path(&newer, &root.gcc_lib);
        vec![tcl, env.prefix.join("bin/tclsh8.6"), newer.clone()]
    };
    assert_three_states(&root, &env.root, &env.prefix, &env.root, break_it);
}

#[test]
fn check_agrees_with_the_loader_on_a_venv_unpatched_patched_and_broken() {
    let root = common::require_nixroot();
    let Some(python) = root.python_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let venv = work.path().join("venv");
    let Some(()) = common::wheel_venv(&python, &venv) else {
        return;
    };
    let site = common::site_packages(&venv);
    let numpy_libs = site.join("numpy.libs");

    // Broken on purpose: the libgfortran numpy vendors is deleted (its OpenBLAS needs it), and a
    // pandas extension's run path is pointed at a store path without libstdc++.
    let break_it = || {
        fs::remove_file(common::shared_object(&numpy_libs, "libgfortran")).unwrap();
        let aggregations =
            common::shared_object(&site.join("pandas/_libs/window"), "aggregations.");
        set_run_path(&aggregations, &root.zlib_lib);
        vec![
            common::shared_object(&numpy_libs, "libscipy_openblas"),
            common::shared_object(&site.join("numpy/_core"), "_multiarray_umath."),
            aggregations,
        ]
    };
    assert_three_states(&root, work.path(), &venv, &venv, break_it);
}
