//! Ownership of files in a real venv with a wheel installed by pip.

use std::path::Path;
use std::process::Command;

use autopatch::pip::PipSite;

/// Runs a command, returning its stderr as the error when it fails or cannot start.
fn run(program: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{} cannot run: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} {args:?} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A venv at `venv` with the `six` wheel from PyPI installed.
fn venv_with_six(venv: &Path, wheels: &Path) -> Result<(), String> {
    let python = Path::new("python3");
    run(python, &["-m", "venv", venv.to_str().unwrap()])?;
    let venv_python = venv.join("bin/python");
    let wheels = wheels.to_str().unwrap();
    run(
        &venv_python,
        &[
            "-m",
            "pip",
            "download",
            "--only-binary=:all:",
            "--no-deps",
            "-d",
            wheels,
            "six",
        ],
    )?;
    run(
        &venv_python,
        &[
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            wheels,
            "six",
        ],
    )
}

#[test]
fn pip_installed_wheel_owns_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let venv = tmp.path().join("venv");
    if let Err(why) = venv_with_six(&venv, &tmp.path().join("wheels")) {
        eprintln!("SKIPPED: needs python3 with venv and pip, and PyPI reachable: {why}");
        return;
    }

    let site = PipSite::load(&venv).unwrap();
    let six = site
        .distributions()
        .iter()
        .find(|d| d.name == "six")
        .expect("six among the venv's distributions");
    assert_eq!(six.installer.as_deref(), Some("pip"));
    let module = six.site_packages.join("six.py");
    assert!(module.is_file(), "{}", module.display());
    assert_eq!(site.owner_of(&module).unwrap().name, "six");
    assert_eq!(
        site.owner_of(&six.dist_info.join("METADATA")).unwrap().name,
        "six"
    );
    for entry in &six.files {
        assert!(
            entry.path.exists(),
            "RECORD lists missing {}",
            entry.path.display()
        );
    }
    assert!(site.owner_of(&venv.join("bin/python")).is_none());

    let names: Vec<&str> = site
        .distributions()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let distinct: std::collections::BTreeSet<&&str> = names.iter().collect();
    assert_eq!(
        names.len(),
        distinct.len(),
        "each distribution once: {names:?}"
    );
}
