//! The conda integrations (hooks/conda): the plugin's own Python tests, its hooks driven
//! against a real conda environment with the real autopatch, and the post-link script run the
//! way conda runs it. Results are checked in the NixOS-like root.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{CondaEnv, NixRoot};

const SPECS: &[&str] = &["bzip2", "tk", "zstd"];
const FHS_LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

fn python() -> String {
    std::env::var("AUTOPATCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn python_tests_of_the_conda_plugin_pass() {
    let root = common::project_root();
    let out = Command::new(python())
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(root.join("hooks/conda/tests"))
        .arg("-t")
        .arg(root.join("hooks/conda"))
        .env("AUTOPATCH", env!("CARGO_BIN_EXE_autopatch"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("running python3 -m unittest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| l.contains("skipped")) {
        eprintln!("{line}");
    }
    assert!(
        out.status.success(),
        "the plugin's Python tests failed:\n{}",
        text(&out)
    );
    let ran: usize = stderr
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .expect("unittest's 'Ran N tests' line");
    assert!(ran >= 30, "expected the plugin's tests, ran {ran}");
}

/// A fresh copy of the env, with a cache and config dir of its own beside it.
struct Work {
    _dir: tempfile::TempDir,
    env: CondaEnv,
    cache: PathBuf,
    empty: PathBuf,
}

fn work(cached: &CondaEnv) -> Work {
    let dir = tempfile::tempdir().unwrap();
    let env = cached.fresh_copy(&dir.path().join("root"));
    let cache = dir.path().join("cache");
    let empty = dir.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    Work {
        _dir: dir,
        env,
        cache,
        empty,
    }
}

impl Work {
    fn prefix(&self, rel: &str) -> PathBuf {
        self.env.prefix.join(rel)
    }

    /// The environment every hook gets: the built autopatch, the root's loader, a private
    /// cache, no user config.
    fn autopatch_env(&self, cmd: &mut Command, root: &NixRoot) {
        cmd.env("AUTOPATCH", env!("CARGO_BIN_EXE_autopatch"))
            .env("AUTOPATCH_INTERPRETER", &root.ld)
            .env("AUTOPATCH_CACHE_DIR", &self.cache)
            .env("XDG_CONFIG_HOME", &self.empty)
            .env_remove("AUTOPATCH_LIB_DIR")
            .env_remove("AUTOPATCH_IGNORE_MISSING")
            .env_remove("AUTOPATCH_STORE");
    }

    fn drive(&self, root: &NixRoot, args: &[&str], extra: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(python());
        cmd.arg(common::project_root().join("testdata/hooks/conda/drive_plugin.py"))
            .arg(args[0])
            .arg(&self.env.prefix)
            .args(&args[1..])
            .env("PYTHONDONTWRITEBYTECODE", "1");
        self.autopatch_env(&mut cmd, root);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("running drive_plugin.py");
        eprintln!("drive_plugin.py {args:?}: {}", text(&out));
        out
    }

    /// Runs PREFIX/REL ARGS... in the root; its stdout and stderr together.
    fn run(&self, root: &NixRoot, rel: &str, args: &[&str]) -> (bool, String) {
        let mut argv = vec![self.prefix(rel).display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        let out = root.run(&self.env.root, &argv);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), all)
    }

    fn assert_runs(&self, root: &NixRoot) {
        for (rel, args, expect) in [
            ("bin/zstd", vec!["--version"], "Zstandard"),
            ("bin/bzip2", vec!["--help"], "bzip2"),
        ] {
            let (ok, all) = self.run(root, rel, &args);
            assert!(ok && all.contains(expect), "{rel} in the root: {all}");
        }
        let script = self.prefix("version.tcl");
        fs::write(&script, "puts [info patchlevel]\n").unwrap();
        let (ok, all) = self.run(root, "bin/tclsh8.6", &[script.to_str().unwrap()]);
        assert!(ok && all.starts_with("8.6"), "tclsh in the root: {all}");
        let tk = root.ldd(&self.env.root, &self.prefix("lib/libtk8.6.so"));
        assert!(tk.ok, "libtk in the root:\n{tk}");
    }

    fn interpreter(&self, rel: &str) -> String {
        common::elf_interpreter(&self.prefix(rel)).unwrap_or_default()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The conda-meta record of `name`, parsed.
fn record(prefix: &Path, name: &str) -> (PathBuf, serde_json::Value) {
    for entry in fs::read_dir(prefix.join("conda-meta")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let json: serde_json::Value =
                serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
            if json["name"] == name {
                return (path, json);
            }
        }
    }
    panic!("no record of {name} in {}", prefix.display());
}

fn recorded_sha(prefix: &Path, name: &str, rel: &str) -> String {
    let (_, json) = record(prefix, name);
    let entry = json["paths_data"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["_path"] == rel)
        .unwrap_or_else(|| panic!("{rel} in the record of {name}"))
        .clone();
    entry["sha256_in_prefix"]
        .as_str()
        .or(entry["sha256"].as_str())
        .unwrap()
        .to_string()
}

#[test]
fn plugin_hooks_patch_a_real_environment() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(SPECS) else {
        return;
    };

    // The post-transaction action: only the linked package's files.
    let w = work(&cached);
    let bzip2_before = fs::read(w.prefix("bin/bzip2")).unwrap();
    let tclsh_before = fs::read(w.prefix("bin/tclsh8.6")).unwrap();
    let out = w.drive(&root, &["transaction", "zstd"], &[]);
    assert!(out.status.success());
    assert_eq!(w.interpreter("bin/zstd"), root.ld.to_str().unwrap());
    assert_eq!(fs::read(w.prefix("bin/bzip2")).unwrap(), bzip2_before);
    assert_eq!(fs::read(w.prefix("bin/tclsh8.6")).unwrap(), tclsh_before);
    let (ok, all) = w.run(&root, "bin/zstd", &["--version"]);
    assert!(ok && all.contains("Zstandard"), "zstd in the root: {all}");
    assert_eq!(
        recorded_sha(&w.env.prefix, "zstd", "bin/zstd"),
        sha256_hex(&w.prefix("bin/zstd"))
    );

    // conda doctor: libtk needs libX11, which only the store has.
    let out = w.drive(&root, &["doctor"], &[]);
    assert!(out.status.success());
    let report = stdout(&out);
    assert!(report.contains("❌"), "{report}");
    assert!(report.contains("lib/libtk8.6.so"), "{report}");
    let out = w.drive(&root, &["doctor-verbose"], &[]);
    assert!(stdout(&out).contains("libX11.so.6"), "{}", stdout(&out));

    // conda doctor --fix, then the check passes and everything runs.
    let out = w.drive(&root, &["doctor-fix"], &[]);
    assert!(out.status.success(), "the fixer returned non-zero");
    assert!(stdout(&out).contains("patched"), "{}", stdout(&out));
    let out = w.drive(&root, &["doctor"], &[]);
    assert!(stdout(&out).contains("✅"), "{}", stdout(&out));
    w.assert_runs(&root);

    // The post-command on an untouched copy: one line, and everything runs.
    let w = work(&cached);
    let out = w.drive(&root, &["post-command"], &[]);
    assert!(out.status.success());
    let said = stdout(&out);
    let prefix = w.env.prefix.display().to_string();
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(
        said.starts_with(&format!("autopatch: {prefix}: ")),
        "{said}"
    );
    assert!(
        said.contains("patched") && !said.contains("warning"),
        "{said}"
    );
    w.assert_runs(&root);
}

#[test]
fn plugin_warns_about_an_unresolved_library_and_goes_on() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(SPECS) else {
        return;
    };
    let w = work(&cached);
    // No store: nothing provides libX11.
    let out = w.drive(&root, &["post-command"], &[("AUTOPATCH_STORE", &w.empty)]);
    assert!(out.status.success(), "the hook must not fail the command");
    let said = stdout(&out);
    assert!(said.contains("with unresolved libraries"), "{said}");
    assert!(said.contains("warning: libX11.so.6 not found"), "{said}");
    // What could be done was done.
    assert_eq!(w.interpreter("bin/zstd"), root.ld.to_str().unwrap());
}

/// Puts hooks/conda/post-link.sh in the env as `bin/.NAME-post-link.sh` (and, hard-linked,
/// in the package cache, as the package would ship it).
fn install_post_link(w: &Work, name: &str) -> PathBuf {
    let script = w.prefix(&format!("bin/.{name}-post-link.sh"));
    fs::copy(
        common::project_root().join("hooks/conda/post-link.sh"),
        &script,
    )
    .unwrap();
    let (_, json) = record(&w.env.prefix, name);
    let cached_pkg = PathBuf::from(json["extracted_package_dir"].as_str().unwrap());
    let cached_pkg = w.env.pkgs.join(cached_pkg.file_name().unwrap());
    fs::hard_link(
        &script,
        cached_pkg.join(format!("bin/.{name}-post-link.sh")),
    )
    .unwrap();
    script
}

/// Runs a post-link script as conda's run_script does: `bash -x SCRIPT` in its directory,
/// with PREFIX, PKG_NAME, PKG_VERSION, PKG_BUILDNUM and ROOT_PREFIX set and the script's
/// directory first on PATH.
fn run_post_link(
    w: &Work,
    root: &NixRoot,
    json: &serde_json::Value,
    script: &Path,
    extra: &[(&str, &str)],
) -> Output {
    let name = json["name"].as_str().unwrap();
    let bin = script.parent().unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-x")
        .arg(script)
        .current_dir(bin)
        .env("ROOT_PREFIX", &w.empty)
        .env("PREFIX", &w.env.prefix)
        .env("PKG_NAME", name)
        .env("PKG_VERSION", json["version"].as_str().unwrap())
        .env("PKG_BUILDNUM", json["build_number"].to_string())
        .env("PATH", path)
        .env_remove("CONDA_PKGS_DIRS");
    w.autopatch_env(&mut cmd, root);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running bash");
    eprintln!("post-link of {name}: {}", text(&out));
    out
}

fn messages(w: &Work) -> String {
    fs::read_to_string(w.prefix(".messages.txt")).unwrap_or_default()
}

#[test]
fn post_link_script_patches_only_its_package() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(SPECS) else {
        return;
    };
    let w = work(&cached);
    let script = install_post_link(&w, "zstd");
    let bzip2_before = fs::read(w.prefix("bin/bzip2")).unwrap();
    let tclsh_before = fs::read(w.prefix("bin/tclsh8.6")).unwrap();
    let out = run_post_link(&w, &root, &record(&w.env.prefix, "zstd").1, &script, &[]);
    assert!(out.status.success());
    assert_eq!(messages(&w), "", "no warnings expected");
    assert_eq!(w.interpreter("bin/zstd"), root.ld.to_str().unwrap());
    assert_eq!(fs::read(w.prefix("bin/bzip2")).unwrap(), bzip2_before);
    assert_eq!(fs::read(w.prefix("bin/tclsh8.6")).unwrap(), tclsh_before);
    let (ok, all) = w.run(&root, "bin/zstd", &["--version"]);
    assert!(ok && all.contains("Zstandard"), "zstd in the root: {all}");
    assert_eq!(
        recorded_sha(&w.env.prefix, "zstd", "bin/zstd"),
        sha256_hex(&w.prefix("bin/zstd"))
    );
    // The package cache keeps the original (other environments link it).
    let cached_zstd = fs::read_dir(&w.env.pkgs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("zstd-")
        })
        .unwrap();
    assert_eq!(
        common::elf_interpreter(&cached_zstd.join("bin/zstd")).as_deref(),
        Some(FHS_LOADER)
    );
}

#[test]
fn post_link_script_finds_its_files_in_the_package_cache_before_records_exist() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(SPECS) else {
        return;
    };
    // conda runs post-link scripts before it writes the package's record.
    let w = work(&cached);
    let script = install_post_link(&w, "tk");
    let (record_path, tk_record) = record(&w.env.prefix, "tk");
    let zstd_before = fs::read(w.prefix("bin/zstd")).unwrap();
    fs::remove_file(&record_path).unwrap();
    let pkgs = w.env.pkgs.display().to_string();
    let out = run_post_link(
        &w,
        &root,
        &tk_record,
        &script,
        &[("CONDA_PKGS_DIRS", &pkgs)],
    );
    assert!(out.status.success());
    assert_eq!(messages(&w), "", "no warnings expected");
    fs::write(&record_path, serde_json::to_vec(&tk_record).unwrap()).unwrap();
    assert_eq!(w.interpreter("bin/tclsh8.6"), root.ld.to_str().unwrap());
    assert_eq!(fs::read(w.prefix("bin/zstd")).unwrap(), zstd_before);
    let tk = root.ldd(&w.env.root, &w.prefix("lib/libtk8.6.so"));
    assert!(tk.ok, "libtk in the root:\n{tk}");
}

#[test]
fn post_link_script_never_fails_the_install() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(SPECS) else {
        return;
    };

    // libX11 unresolved (no store): a warning in .messages.txt, the rest patched.
    let w = work(&cached);
    let script = install_post_link(&w, "tk");
    let empty = w.empty.display().to_string();
    let tk = record(&w.env.prefix, "tk").1;
    let out = run_post_link(&w, &root, &tk, &script, &[("AUTOPATCH_STORE", &empty)]);
    assert!(out.status.success());
    let said = messages(&w);
    assert!(said.contains("autopatch (tk)"), "{said}");
    assert!(said.contains("libX11.so.6"), "{said}");
    assert_eq!(w.interpreter("bin/tclsh8.6"), root.ld.to_str().unwrap());

    // No autopatch at all.
    let w = work(&cached);
    let script = install_post_link(&w, "zstd");
    let mut cmd_env = vec![("AUTOPATCH", ""), ("PATH", "/usr/bin:/bin")];
    let out = run_post_link(
        &w,
        &root,
        &record(&w.env.prefix, "zstd").1,
        &script,
        &cmd_env,
    );
    assert!(out.status.success());
    assert!(
        messages(&w).contains("autopatch not found"),
        "{}",
        messages(&w)
    );
    assert_eq!(w.interpreter("bin/zstd"), FHS_LOADER);

    // Called without the variables conda sets.
    let w = work(&cached);
    let script = install_post_link(&w, "zstd");
    cmd_env = vec![("PKG_VERSION", "")];
    let out = run_post_link(
        &w,
        &root,
        &record(&w.env.prefix, "zstd").1,
        &script,
        &cmd_env,
    );
    assert!(out.status.success());
    assert!(
        messages(&w).contains("post-link step failed"),
        "{}",
        messages(&w)
    );
}
