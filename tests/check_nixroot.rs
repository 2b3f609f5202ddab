//! The loader simulation for a Nix glibc, against the store's real loader in the NixOS-like root:
//! every ELF file of an unpatched conda environment (most of which cannot load there) must get
//! the same verdict, and the same library paths.

mod common;

use std::path::Path;

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
