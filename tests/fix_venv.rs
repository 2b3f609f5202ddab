//! `autopatch fix` on a real venv, checked in a NixOS-like root: the venv's python lives in the
//! store, numpy and pandas come from PyPI's manylinux wheels. Before, their extensions cannot
//! find libstdc++ (which manylinux wheels take from the system); after, both import and compute,
//! numpy with the OpenBLAS it vendors in `numpy.libs` and libstdc++ from the store, every ELF
//! file of the venv loads, the store's python is left alone, and a second run changes nothing.

mod common;

use common::{elf_files, fix, run_ok, shared_object, site_packages, text};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// `path` with `..` applied, as the loader reports `$ORIGIN/../x` unnormalised.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Inode, size, mtime and ctime of every regular file under `dir`: a rewrite, a rename over
/// or a metadata change of any file shows.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, u64, i64, i64, i64, i64)> {
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.path().to_path_buf(),
                (
                    m.ino(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                ),
            )
        })
        .collect()
}

fn assert_unchanged(
    before: &BTreeMap<PathBuf, (u64, u64, i64, i64, i64, i64)>,
    after: &BTreeMap<PathBuf, (u64, u64, i64, i64, i64, i64)>,
    what: &str,
) {
    for (path, state) in before {
        assert_eq!(
            after.get(path),
            Some(state),
            "{what} changed {}",
            path.display()
        );
    }
    assert_eq!(before.len(), after.len(), "{what} added or removed files");
}

/// The plan's entry for `path`, from `autopatch fix --dry-run --json`.
fn planned<'a>(plan: &'a serde_json::Value, path: &Path) -> &'a serde_json::Value {
    plan["files"]
        .as_array()
        .expect("files in the JSON plan")
        .iter()
        .find(|f| f["path"].as_str() == Some(path.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} not in the plan", path.display()))
}

/// The plan's provider of the needed library whose name starts with `stem`.
fn provider<'a>(file: &'a serde_json::Value, stem: &str) -> &'a serde_json::Value {
    file["resolution"]["needed"]
        .as_array()
        .expect("needed libraries in the plan")
        .iter()
        .find(|n| n["soname"].as_str().is_some_and(|s| s.starts_with(stem)))
        .unwrap_or_else(|| panic!("{stem}* not needed by {}", file["path"]))
}

/// Imports both, uses pandas and numpy's LAPACK (OpenBLAS), then lists the shared objects the
/// process mapped.
const SCRIPT: &str = r#"
import json, numpy, pandas
print(pandas.DataFrame({"a": [1, 2]}).sum().a)
a = numpy.array([[3.0, 1.0], [1.0, 2.0]])
x = numpy.linalg.solve(a, numpy.array([9.0, 8.0]))
assert numpy.allclose(x, [2.0, 3.0]) and numpy.allclose(numpy.linalg.inv(a) @ a, numpy.eye(2)), x
print(json.dumps(sorted({l.split()[-1] for l in open("/proc/self/maps") if ".so" in l.split()[-1]})))
"#;

#[test]
fn fixed_venv_with_manylinux_wheels_imports_in_a_nixos_like_root() {
    let total = Instant::now();
    let root = common::require_nixroot();
    let Some(python) = root.python_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let venv = work.path().join("venv");
    let cache = work.path().join("cache");

    let started = Instant::now();
    let Some(()) = common::wheel_venv(&python, &venv) else {
        return;
    };
    eprintln!(
        "venv with {:?} in {:.1?}",
        common::VENV_WHEELS,
        started.elapsed()
    );
    let site = site_packages(&venv);
    let numpy_libs = site.join("numpy.libs");
    let multiarray = shared_object(&site.join("numpy/_core"), "_multiarray_umath.");
    let aggregations = shared_object(&site.join("pandas/_libs/window"), "aggregations.");
    let gfortran = shared_object(&numpy_libs, "libgfortran");
    let store_python = python
        .parent()
        .and_then(Path::parent)
        .expect("<store path>/bin/python3")
        .to_path_buf();

    // Before: the wheels' C++ extensions find no libstdc++ in a root without /usr/lib.
    let before = root.run(
        &venv,
        &[venv.join("bin/python"), "-c".into(), "import pandas".into()],
    );
    let before_text = text(&before);
    assert!(
        !before.status.success()
            && before_text.contains("libstdc++.so.6: cannot open shared object file"),
        "import pandas must fail for want of libstdc++ before fix:\n{before_text}"
    );
    let ldd = root.ldd(&venv, &aggregations);
    assert!(
        ldd.not_found.iter().any(|s| s == "libstdc++.so.6"),
        "libstdc++ must be missing before fix:\n{ldd}"
    );

    // The plan: pip's ownership, numpy's own run path kept for its vendored libraries, the
    // store for what the wheels expect of the system.
    let dry = snapshot(&venv);
    let out = fix(&cache, &["--dry-run", "--json"], &[&venv]);
    assert!(out.status.success(), "fix --dry-run failed");
    assert_unchanged(&dry, &snapshot(&venv), "--dry-run");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    let gcc_lib = root.gcc_lib.to_str().unwrap();
    let file = planned(&plan, &multiarray);
    assert_eq!(file["owner"], "numpy", "{file:#}");
    let openblas = provider(file, "libscipy_openblas");
    assert_eq!(openblas["from"], "run_path", "{openblas:#}");
    assert_eq!(
        openblas["entry"], "$ORIGIN/../../numpy.libs",
        "{openblas:#}"
    );
    let stdcxx = provider(file, "libstdc++.so.6");
    assert_eq!(
        (&stdcxx["from"], stdcxx["entry"].as_str()),
        (&serde_json::json!("outside"), Some(gcc_lib)),
        "{stdcxx:#}"
    );
    let file = planned(&plan, &gfortran);
    assert_eq!(file["owner"], "numpy", "a file of numpy.libs: {file:#}");
    let stdcxx = provider(planned(&plan, &aggregations), "libstdc++.so.6");
    assert_eq!(stdcxx["entry"].as_str(), Some(gcc_lib), "{stdcxx:#}");

    let started = Instant::now();
    let out = fix(&cache, &[], &[&venv]);
    assert!(out.status.success(), "fix failed");
    eprintln!("fix in {:.1?}", started.elapsed());

    // After: both import and compute in the root.
    let after = root.run(
        &venv,
        &[venv.join("bin/python"), "-c".into(), SCRIPT.into()],
    );
    let after_text = text(&after);
    assert!(after.status.success(), "after fix:\n{after_text}");
    let stdout = String::from_utf8_lossy(&after.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("3"), "{after_text}");
    let mapped: Vec<PathBuf> = serde_json::from_str(lines.next().expect("mapped objects"))
        .unwrap_or_else(|e| panic!("{e}: {after_text}"));
    let mapped_named = |stem: &str| -> Vec<&PathBuf> {
        mapped
            .iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(stem))
            .collect()
    };
    // The loader took numpy's own OpenBLAS and its libgfortran from numpy.libs, and libstdc++
    // from the store: the venv holds no copy of it.
    for stem in ["libscipy_openblas", "libgfortran", "libquadmath"] {
        let found = mapped_named(stem);
        assert!(
            !found.is_empty() && found.iter().all(|p| p.starts_with(&numpy_libs)),
            "{stem} must come from {}: {found:?}",
            numpy_libs.display()
        );
    }
    let found = mapped_named("libstdc++.so");
    assert!(
        !found.is_empty() && found.iter().all(|p| p.starts_with(&root.gcc_lib)),
        "libstdc++ must come from {}: {found:?}",
        root.gcc_lib.display()
    );
    let copies: Vec<PathBuf> = walkdir::WalkDir::new(&venv)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_name().to_string_lossy().starts_with("libstdc++"))
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(
        copies.is_empty(),
        "the venv must hold no libstdc++: {copies:?}"
    );

    // The venv's own tools run in the root.
    let pip_version = root
        .command(
            &[&venv],
            &[("PIP_DISABLE_PIP_VERSION_CHECK", "1")],
            &[venv.join("bin/pip"), "--version".into()],
        )
        .output()
        .unwrap();
    assert!(
        pip_version.status.success() && text(&pip_version).contains(venv.to_str().unwrap()),
        "pip in the root: {}",
        text(&pip_version)
    );

    // Every ELF file of the venv loads, as the store's loader resolves it.
    let files = elf_files(&venv);
    assert!(
        files.len() > 30,
        "expected the wheels' ELF files, found {}",
        files.len()
    );
    for file in &files {
        let ldd = root.ldd(&venv, file);
        assert!(
            ldd.ok,
            "{} does not load in the root:\n{ldd}",
            file.display()
        );
    }
    eprintln!("{} ELF files of the venv load in the root", files.len());
    let ldd = root.ldd(&venv, &multiarray);
    let openblas = ldd
        .libs
        .iter()
        .find(|(name, _)| name.starts_with("libscipy_openblas"))
        .unwrap_or_else(|| panic!("no OpenBLAS for {}:\n{ldd}", multiarray.display()));
    assert!(lexical(&openblas.1).starts_with(&numpy_libs), "{ldd}");
    let stdcxx = ldd.resolved("libstdc++.so.6").expect("libstdc++ resolved");
    assert!(stdcxx.starts_with(&root.gcc_lib), "{ldd}");

    // The venv's python is a link into the store, which fix must not follow: the store path
    // still has the content Nix recorded.
    assert!(
        fs::symlink_metadata(venv.join("bin/python3"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    run_ok(
        Command::new("nix-store")
            .arg("--verify-path")
            .arg(&store_python),
    );

    // A second run changes nothing.
    let settled = snapshot(&venv);
    let out = fix(&cache, &[], &[&venv]);
    assert!(out.status.success(), "second fix failed");
    assert_unchanged(&settled, &snapshot(&venv), "the second run");
    eprintln!("whole test in {:.1?}", total.elapsed());
}

/// `venv --copies` copies the interpreter, whose `$ORIGIN/../lib` then misses libpython: it
/// comes from the Python the venv was made from (`home` in pyvenv.cfg), even beside a newer
/// store path holding the same library.
#[test]
fn a_copied_interpreter_takes_libpython_from_the_python_the_venv_came_from() {
    let root = common::require_nixroot();
    let Some(python) = root.python_or_skip() else {
        return;
    };
    let store_python = python
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_path_buf();
    let work = tempfile::tempdir().unwrap();
    let venv = work.path().join("venv");
    run_ok(
        Command::new(&python)
            .args(["-m", "venv", "--without-pip", "--copies"])
            .arg(&venv),
    );
    let libpython = "libpython3.11.so.1.0";
    let decoy = work.path().join("python3-3.11.99");
    fs::create_dir_all(decoy.join("lib")).unwrap();
    fs::copy(
        store_python.join("lib").join(libpython),
        decoy.join("lib").join(libpython),
    )
    .unwrap();
    run_ok(Command::new("nix-store").arg("--add").arg(&decoy));

    let cache = work.path().join("cache");
    let out = fix(&cache, &["--dry-run", "--json"], &[&venv]);
    assert!(out.status.success(), "fix --dry-run failed");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON plan");
    let chosen = provider(planned(&plan, &venv.join("bin/python3")), libpython);
    let home_lib = store_python.join("lib");
    assert_eq!(chosen["entry"].as_str(), home_lib.to_str(), "{chosen:#}");
    assert!(
        chosen["reason"].as_str().unwrap().contains("pyvenv.cfg"),
        "{chosen:#}"
    );

    let out = fix(&cache, &[], &[&venv]);
    assert!(out.status.success(), "fix failed");
    let ran = root.run(
        &venv,
        &[
            venv.join("bin/python3"),
            "-c".into(),
            "import sys; print(sys.base_prefix)".into(),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).trim(),
        store_python.to_str().unwrap(),
        "{}",
        text(&ran)
    );
}
