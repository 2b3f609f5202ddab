//! The loader simulation for a Nix glibc, against the store's real loader in the NixOS-like root:
//! every ELF file of an unpatched conda environment (most of which cannot load there) must get
//! the same verdict, and the same library paths; and the messages of `autopatch check` there name
//! what the real loader fails on and what would serve.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use autopatch::check::{DefaultDirs, FileReport, Loader, LoaderConfig, Via};
use common::{LddResult, NixRoot};
use rayon::prelude::*;

/// What the store loader says of `file`, and whether it agrees with `report`.
fn disagreement(root: &NixRoot, prefix: &Path, report: &FileReport) -> Option<String> {
    let canonical = report.path.canonicalize().ok()?;
    let real = root.ldd(prefix, &canonical);
    let aborted = real.stderr.contains("error while loading");
    // The file's own PT_INTERP is not in the root; the check names the store loader instead.
    let real_ok = !aborted && real.not_found.is_empty() && real.missing_versions.is_empty();
    if report.ok != real_ok {
        return Some(format!(
            "{}: simulated ok={}, real ok={real_ok}\n{report:#?}\n{real}",
            report.path.display(),
            report.ok
        ));
    }
    if aborted {
        return None;
    }
    let differs = |what: String| Some(format!("{}: {what}\n{real}", report.path.display()));
    for resolved in report.resolved.iter().filter(|r| r.via != Via::Interpreter) {
        if real.resolved(&resolved.name) != Some(resolved.path.as_path()) {
            return differs(format!(
                "{} resolved to {}",
                resolved.name,
                resolved.path.display()
            ));
        }
    }
    listed_by_name(&real)
        .find(|(name, path)| report.resolved_path(name) != Some(path))
        .and_then(|(name, _)| differs(format!("{name} was not loaded by the simulation")))
}

/// The `name => path` lines (the loader's own line names no library).
fn listed_by_name(real: &LddResult) -> impl Iterator<Item = (&str, &Path)> {
    real.libs
        .iter()
        .filter(|(name, _)| !name.starts_with('/'))
        .map(|(name, path)| (name.as_str(), path.as_path()))
}

#[test]
fn agrees_with_the_store_loader_on_an_unpatched_conda_env() {
    let Some(root) = common::nixroot_or_skip() else {
        return;
    };
    let Some(env) = common::conda_env_or_skip(&["tk", "zstd"]) else {
        return;
    };
    // The store's interpreter makes the default directories its glibc's (DefaultDirs::Auto).
    let loader = Loader::new(LoaderConfig {
        interpreter: Some(root.ld.clone()),
        default_dirs: DefaultDirs::Auto,
        ..LoaderConfig::default()
    });
    let reports = loader.check_paths(std::slice::from_ref(&env.prefix));
    let disagreements: Vec<String> = reports
        .par_iter()
        .filter_map(|report| disagreement(&root, &env.prefix, report))
        .collect();
    let failing = reports.iter().filter(|r| !r.ok).count();
    eprintln!(
        "differential: {} files of the conda env checked against the store loader ({failing} not ok), {} disagreements",
        reports.len(),
        disagreements.len()
    );
    assert!(failing > 0, "an unpatched env should not load in the root");
    assert!(
        failing < reports.len(),
        "libraries with $ORIGIN run paths load"
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n\n"));
}

/// `autopatch check --json` on the host with the store's loader (the host's /nix/store is the
/// root's): each file's problem messages, and the exit status.
fn check(root: &NixRoot, prefix: &Path) -> (BTreeMap<PathBuf, Vec<String>>, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .arg("check")
        .arg("--interpreter")
        .arg(&root.ld)
        .arg("--json")
        .arg(prefix)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}: {}", common::text(&out)));
    let files = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let messages = f["problems"].as_array().unwrap().iter();
            (
                PathBuf::from(f["path"].as_str().unwrap()),
                messages
                    .map(|p| p["message"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    (files, out.status.success())
}

/// The one problem `check` reports for `file`.
fn only_problem<'a>(checked: &'a BTreeMap<PathBuf, Vec<String>>, file: &Path) -> &'a str {
    match checked.get(file).map(Vec::as_slice) {
        Some([message]) => message,
        other => panic!("one problem expected for {}: {other:?}", file.display()),
    }
}

#[test]
fn a_library_only_the_store_has_is_named_with_its_store_dir() {
    let Some(root) = common::nixroot_or_skip() else {
        return;
    };
    let Some(env) = common::conda_env_or_skip(&["tk", "zstd"]) else {
        return;
    };
    let (checked, ok) = check(&root, &env.prefix);
    assert!(
        !ok,
        "unpatched tk cannot find libX11 with the store's loader"
    );
    let tail = format!(
        " or the default dirs [{}]; the store has it in {}",
        root.glibc_lib.display(),
        root.x11_lib.display()
    );
    let libtk = env.prefix.join("lib/libtk8.6.so");
    let message = only_problem(&checked, &libtk);
    assert!(
        message.starts_with("libX11.so.6 (needed by lib/libtk8.6.so) not found in RPATH [")
            && message.ends_with(&tail),
        "{message}"
    );
    let message = only_problem(&checked, &env.prefix.join("bin/wish8.6"));
    assert!(
        message.starts_with("libX11.so.6 (needed by lib/libtk8.6.so) not found in RPATH [")
            && message.ends_with(&format!(", RPATH [$ORIGIN/../lib] of bin/wish8.6{tail}")),
        "{message}"
    );
    let real = root.ldd(&env.prefix, &libtk);
    assert_eq!(real.not_found, ["libX11.so.6"], "{real}");
}

#[test]
fn a_newer_glibcxx_than_the_store_has_is_a_shortfall_until_fix() {
    let Some(root) = common::nixroot_or_skip() else {
        return;
    };
    let Some(cached) = common::conda_env_or_skip(&["tk", "zstd", "libstdcxx"]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let env = cached.fresh_copy(&work.path().join("root"));
    let exe = env.prefix.join("bin/needs-newer-glibcxx");
    common::build_newer_glibcxx_program(&exe, &env.prefix.join("lib"), &root.ld, &root.gcc_lib);

    let (checked, _) = check(&root, &env.prefix);
    assert_eq!(
        only_problem(&checked, &exe),
        format!(
            "bin/needs-newer-glibcxx needs {}; the libstdc++.so.6 it finds ({}) has up to \
             GLIBCXX_3.4.30; the prefix's own lib/libstdc++.so.6 would serve",
            common::GLIBCXX_NEWER,
            root.gcc_lib.display()
        )
    );
    let run = root.run(&env.root, &[&exe]);
    let said = common::text(&run);
    assert!(
        !run.status.success()
            && said.contains(&format!(
                "version `{}' not found (required by {})",
                common::GLIBCXX_NEWER,
                exe.display()
            )),
        "the store's loader must refuse it: {said}"
    );

    let out = common::fix(&work.path().join("cache"), &[], &[&env.root]);
    assert!(out.status.success(), "fix failed");
    let run = root.run(&env.root, &[&exe]);
    assert!(
        run.status.success() && String::from_utf8_lossy(&run.stdout) == "tzdb ok\n",
        "after fix: {}",
        common::text(&run)
    );
    let (checked, ok) = check(&root, &env.prefix);
    assert_eq!(checked.get(&exe), Some(&Vec::new()), "check after fix");
    assert!(ok, "everything loads after fix: {checked:?}");
    // The prefix's copy is found first; the store's entry stays, after it.
    let rpath = common::run_ok(
        Command::new(env!("CARGO_BIN_EXE_autopatch"))
            .args(["elf", "--print-rpath"])
            .arg(&exe),
    );
    assert_eq!(
        String::from_utf8_lossy(&rpath.stdout).trim(),
        format!("$ORIGIN/../lib:{}", root.gcc_lib.display())
    );
}
