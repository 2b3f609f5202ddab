//! `autopatch fix` on a conda root whose package cache is hard-linked into two environments that
//! differ: env a has its own libz, env b has none. The one inode serves both names, checked with
//! the store's real loader in the NixOS-like root.

mod common;

use common::{fix, run_ok, text};

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The host's zlib, which the store of the NixOS-like root holds a copy of.
const HOST_ZLIB: &str = "/lib/x86_64-linux-gnu/libz.so.1";

/// A conda root: `pkgs/foo-1.0-0` and the environments `envs/a` and `envs/b` linking it.
struct Root {
    top: PathBuf,
    package: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

impl Root {
    fn new(top: &Path) -> Root {
        let root = Root {
            top: top.to_path_buf(),
            package: top.join("pkgs/foo-1.0-0"),
            a: top.join("envs/a"),
            b: top.join("envs/b"),
        };
        for dir in [&root.package, &root.a, &root.b] {
            fs::create_dir_all(dir.join("lib")).unwrap();
            fs::create_dir_all(dir.join("bin")).unwrap();
        }
        fs::create_dir_all(root.package.join("info")).unwrap();
        fs::write(
            root.package.join("info/index.json"),
            r#"{"name": "foo", "version": "1.0", "build": "0", "depends": []}"#,
        )
        .unwrap();
        root
    }

    /// Links the package's `files` into both environments and records them there as `foo`.
    fn link_package(&self, files: &[&str]) {
        for env in [&self.a, &self.b] {
            for file in files {
                fs::hard_link(self.package.join(file), env.join(file)).unwrap();
            }
            record(env, "foo", files, Some(&self.package));
        }
    }
}

/// Writes `env`'s conda-meta record of package `name` installing `files`.
fn record(env: &Path, name: &str, files: &[&str], package_dir: Option<&Path>) {
    let paths: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            let path = env.join(f);
            serde_json::json!({
                "_path": f,
                "path_type": "hardlink",
                "sha256": sha256_hex(&path),
                "size_in_bytes": fs::metadata(&path).unwrap().len(),
            })
        })
        .collect();
    let json = serde_json::json!({
        "name": name,
        "version": "1.0",
        "build": "0",
        "depends": [],
        "files": files,
        "paths_data": {"paths_version": 1, "paths": paths},
        "extracted_package_dir": package_dir.map(|d| d.display().to_string()),
    });
    let meta = env.join("conda-meta");
    fs::create_dir_all(&meta).unwrap();
    fs::write(meta.join(format!("{name}-1.0-0.json")), json.to_string()).unwrap();
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compiles C `source` with gcc into `out`, with `args` (libraries, linker flags) after it.
fn gcc(source: &str, out: &Path, args: &[&str]) {
    let c = out.with_extension("c");
    fs::write(&c, source).unwrap();
    run_ok(Command::new("gcc").arg(&c).arg("-o").arg(out).args(args));
    fs::remove_file(c).unwrap();
}

/// Builds into the package `lib/<uses>` (a library whose function `uses()` calls `function` of
/// `library`, run path `$ORIGIN`) and `bin/prog` (printing what `uses()` returns, run path
/// `$ORIGIN/../lib`, the host's interpreter), as conda-forge packages are linked.
fn build_package(root: &Root, uses: &str, library: &Path, function: &str) {
    let lib = root.package.join("lib").join(uses);
    gcc(
        &format!(
            "extern const char *{function}(void);\nconst char *uses(void) {{ return {function}(); }}\n"
        ),
        &lib,
        &[
            "-shared",
            "-fPIC",
            &format!("-Wl,-soname,{uses}"),
            library.to_str().unwrap(),
            "-Wl,-rpath,$ORIGIN",
        ],
    );
    gcc(
        "#include <stdio.h>\nextern const char *uses(void);\nint main(void) { printf(\"got %s\\n\", uses()); return 0; }\n",
        &root.package.join("bin/prog"),
        &[
            lib.to_str().unwrap(),
            &format!("-Wl,-rpath-link,{}", library.parent().unwrap().display()),
            "-Wl,-rpath,$ORIGIN/../lib",
        ],
    );
}

/// Gives `env` its own copy of `library` in `lib/`, recorded as package `name`.
fn give_library(env: &Path, library: &Path, name: &str) {
    let file = format!("lib/{}", library.file_name().unwrap().to_string_lossy());
    fs::copy(library, env.join(&file)).unwrap();
    record(env, name, &[file.as_str()], None);
}

/// Runs `prog` in the root with `root.top` bound.
fn run_prog(nix: &common::NixRoot, root: &Root, env: &Path) -> std::process::Output {
    nix.run(&root.top, &[env.join("bin/prog")])
}

/// The inode numbers of `rel` in the package and both environments.
fn inodes(root: &Root, rel: &str) -> Vec<(u64, u64)> {
    [&root.package, &root.a, &root.b]
        .iter()
        .map(|d| {
            let meta = fs::metadata(d.join(rel)).unwrap();
            (meta.ino(), meta.nlink())
        })
        .collect()
}

/// The file the loader took for `soname` (it names it through the run path entry that found it,
/// `bin/../lib/...`).
fn loaded_from(ldd: &common::LddResult, soname: &str) -> PathBuf {
    let path = ldd
        .resolved(soname)
        .unwrap_or_else(|| panic!("{soname} not loaded: {ldd}"));
    fs::canonicalize(path).unwrap()
}

/// The plan of `fix --dry-run --json` for the file named `name`.
fn dry_run_plan(cache: &Path, root: &Root, name: &Path) -> serde_json::Value {
    let out = fix(cache, &["--dry-run", "--json"], &[&root.top]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json: {e}: {}", text(&out)));
    let named = |f: &&serde_json::Value| {
        f["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str() == name.to_str())
    };
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(named)
        .unwrap_or_else(|| panic!("no plan names {}: {report:#}", name.display()))
        .clone()
}

/// The provider (`from`) the plan's `needed` list gives `soname`.
fn provider<'a>(needed: &'a serde_json::Value, soname: &str) -> &'a serde_json::Value {
    needed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["soname"] == soname)
        .unwrap_or_else(|| panic!("{soname} not in {needed:#}"))
}

#[test]
fn a_file_linked_into_two_environments_loads_in_both() {
    let nix = common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let root = Root::new(&work.path().join("root"));
    build_package(&root, "libuseszlib.so", Path::new(HOST_ZLIB), "zlibVersion");
    root.link_package(&["lib/libuseszlib.so", "bin/prog"]);
    give_library(&root.a, Path::new(HOST_ZLIB), "libzlib");
    let env_a_zlib = root.a.join("lib/libz.so.1");

    let before_a = nix.ldd_in(&[&root.top], &root.a.join("bin/prog"));
    assert!(
        before_a.not_found.is_empty(),
        "env a has its libz: {before_a}"
    );
    let before_b = nix.ldd_in(&[&root.top], &root.b.join("bin/prog"));
    assert_eq!(before_b.not_found, ["libz.so.1"], "{before_b}");
    let run = run_prog(&nix, &root, &root.b);
    assert!(!run.status.success(), "prog in env b ran before fix");

    // The library is planned under env a's name, where its $ORIGIN finds libz: env b's name is
    // resolved too, and needs the store's.
    let library = root.a.join("lib/libuseszlib.so");
    let plan = dry_run_plan(&cache, &root, &library);
    assert_eq!(plan["action"], "patch", "{plan:#}");
    assert_eq!(plan["path"].as_str(), library.to_str());
    assert_eq!(
        provider(&plan["resolution"]["needed"], "libz.so.1")["from"],
        "run_path",
        "{plan:#}"
    );
    let also = plan["also"].as_array().expect("an `also` list");
    assert_eq!(also.len(), 1, "{plan:#}");
    assert_eq!(also[0]["prefix"].as_str(), root.b.to_str());
    assert_eq!(
        also[0]["path"].as_str(),
        root.b.join("lib/libuseszlib.so").to_str()
    );
    assert_eq!(also[0]["owner"], "foo");
    let from_store = provider(&also[0]["needed"], "libz.so.1");
    assert_eq!(from_store["from"], "outside", "{plan:#}");
    let store_zlib = from_store["entry"].as_str().unwrap().to_string();
    assert!(store_zlib.starts_with("/nix/store/"), "{store_zlib}");
    assert_eq!(
        plan["new_run_path"].as_str(),
        Some(format!("$ORIGIN:{store_zlib}").as_str()),
        "env a's entry first, the store's for env b after it"
    );

    let out = fix(&cache, &[], &[&root.top]);
    let said = text(&out);
    assert!(out.status.success(), "fix failed: {said}");
    assert!(said.contains(" 0 not loading, "), "{said}");

    for env in [&root.a, &root.b] {
        let run = run_prog(&nix, &root, env);
        assert!(
            run.status.success() && String::from_utf8_lossy(&run.stdout).starts_with("got 1."),
            "prog in {}: {}",
            env.display(),
            text(&run)
        );
    }
    let after_a = nix.ldd_in(&[&root.top], &root.a.join("bin/prog"));
    assert_eq!(
        loaded_from(&after_a, "libz.so.1"),
        fs::canonicalize(&env_a_zlib).unwrap(),
        "env a keeps its own libz: {after_a}"
    );
    let after_b = nix.ldd_in(&[&root.top], &root.b.join("bin/prog"));
    assert_eq!(
        loaded_from(&after_b, "libz.so.1"),
        fs::canonicalize(Path::new(&store_zlib).join("libz.so.1")).unwrap(),
        "env b gets the store's: {after_b}"
    );
    for rel in ["lib/libuseszlib.so", "bin/prog"] {
        let linked = inodes(&root, rel);
        assert!(
            linked.iter().all(|l| *l == (linked[0].0, 3)),
            "{rel} is no longer one inode with its three names: {linked:?}"
        );
    }

    let again = fix(&cache, &[], &[&root.top]);
    assert!(again.status.success(), "second fix: {}", text(&again));
    assert!(text(&again).contains(" 0 patched, "), "{}", text(&again));
}

#[test]
fn a_library_only_another_environment_has_is_reported_for_the_one_lacking_it() {
    let nix = common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let root = Root::new(&work.path().join("root"));
    let build = work.path().join("build");
    fs::create_dir_all(&build).unwrap();
    let nowhere = build.join("libnowhere.so");
    gcc(
        "const char *nowhere(void) { return \"1.0 from nowhere\"; }\n",
        &nowhere,
        &["-shared", "-fPIC", "-Wl,-soname,libnowhere.so"],
    );
    build_package(&root, "libusesnowhere.so", &nowhere, "nowhere");
    root.link_package(&["lib/libusesnowhere.so", "bin/prog"]);
    give_library(&root.a, &nowhere, "nowhere");

    let out = fix(&cache, &[], &[&root.top]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let b_library = root.b.join("lib/libusesnowhere.so");
    assert!(
        said.contains(&format!(
            "unresolved: libnowhere.so (needed by {});",
            b_library.display()
        )),
        "env b's name must be reported: {said}"
    );
    assert!(
        said.contains(&format!(
            "does not load: {}: libnowhere.so",
            root.b.join("bin/prog").display()
        )),
        "env b's prog must be reported as not loading: {said}"
    );
    assert!(
        said.contains(" 1 with unresolved libraries, 1 not loading, "),
        "{said}"
    );

    let run = run_prog(&nix, &root, &root.a);
    assert!(
        run.status.success() && String::from_utf8_lossy(&run.stdout) == "got 1.0 from nowhere\n",
        "prog in env a: {}",
        text(&run)
    );
}

/// A file only the package cache holds is left alone, and the reason says whether some
/// environment outside the paths given links it.
#[test]
fn files_only_in_the_package_cache_say_why_they_are_left_alone() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let root = Root::new(&work.path().join("root"));
    build_package(&root, "libuseszlib.so", Path::new(HOST_ZLIB), "zlibVersion");
    root.link_package(&["lib/libuseszlib.so", "bin/prog"]);
    let unlinked = root.package.join("lib/libunlinked.so");
    fs::copy(root.package.join("lib/libuseszlib.so"), &unlinked).unwrap();

    let out = fix(&cache, &["--dry-run", "--json"], &[&root.top.join("pkgs")]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json: {e}: {}", text(&out)));
    let reason = |file: &Path| {
        let plan = report["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str() == file.to_str())
            .unwrap_or_else(|| panic!("no plan for {}: {report:#}", file.display()));
        assert_eq!(plan["action"], "skip", "{plan:#}");
        plan["reason"].as_str().unwrap().to_string()
    };
    assert!(
        reason(&root.package.join("lib/libuseszlib.so"))
            .contains("patched through the environments that link it")
    );
    assert!(reason(&unlinked).contains("linked into no environment"));
}
