//! `autopatch fix` on a real conda environment, checked in a NixOS-like root: programs that
//! fail before run after, the real loader resolves every ELF file, hard links survive, a second
//! run changes nothing, and conda's records stay true.

mod common;

use common::{elf_files, fix, is_dynamic_elf};

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// A C++ program with no run path, placed in the env: it must be pointed at the env's own
/// libstdc++ even though the store has one too.
fn add_cxx_program(prefix: &Path) -> PathBuf {
    let src = prefix.join("hello.cc");
    fs::write(
        &src,
        "#include <iostream>\nint main(){ std::cout << \"hello c++\" << std::endl; }\n",
    )
    .unwrap();
    let exe = prefix.join("bin/hello-cxx");
    let out = Command::new("g++")
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "g++: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(src).unwrap();
    exe
}

struct Snapshot(BTreeMap<PathBuf, (u64, i64, i64, Vec<u8>)>);

/// Inode, mtime and content of every regular file under `dir`.
fn snapshot(dir: &Path) -> Snapshot {
    let mut files = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let meta = entry.metadata().unwrap();
            files.insert(
                entry.path().to_path_buf(),
                (
                    meta.ino(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    fs::read(entry.path()).unwrap(),
                ),
            );
        }
    }
    Snapshot(files)
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn fixed_conda_env_runs_in_a_nixos_like_root() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(SPECS) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let env = cached.fresh_copy(&work.path().join("root"));
    let cache = work.path().join("cache");
    let cxx = add_cxx_program(&env.prefix);
    let outside_link = work.path().join("outside-zstd");
    fs::hard_link(env.prefix.join("bin/zstd"), &outside_link).unwrap();
    let outside_before = fs::read(&outside_link).unwrap();

    let before = root.run(
        &env.root,
        &[env.prefix.join("bin/zstd"), "--version".into()],
    );
    assert!(
        !before.status.success(),
        "unpatched zstd must not run in the root"
    );

    let dry = snapshot(&env.root);
    let out = fix(&cache, &["--dry-run"], &[&env.root]);
    assert!(out.status.success());
    assert!(snapshot(&env.root).0 == dry.0, "--dry-run changed files");

    let out = fix(&cache, &[], &[&env.root]);
    assert!(out.status.success(), "fix failed");

    for (argv, expect) in [
        (vec!["bin/zstd", "--version"], "Zstandard"),
        (vec!["bin/bzip2", "--help"], "bzip2"),
        (vec!["bin/openssl", "version"], "OpenSSL 3"),
        (vec!["bin/hello-cxx"], "hello c++"),
    ] {
        let mut full: Vec<String> = vec![env.prefix.join(argv[0]).display().to_string()];
        full.extend(argv[1..].iter().map(|s| s.to_string()));
        let run = root.run(&env.root, &full);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            run.status.success() && text.contains(expect),
            "{argv:?} in the root: {text}"
        );
    }
    let script = env.prefix.join("patchlevel.tcl");
    fs::write(&script, "puts [info patchlevel]\n").unwrap();
    let tcl = root.run(&env.root, &[env.prefix.join("bin/tclsh8.6"), script]);
    assert!(
        tcl.status.success(),
        "tclsh: {}",
        String::from_utf8_lossy(&tcl.stderr)
    );
    assert!(String::from_utf8_lossy(&tcl.stdout).starts_with("8.6"));

    let files = elf_files(&env.prefix);
    assert!(
        files.len() > 20,
        "expected the env's ELF files, found {}",
        files.len()
    );
    for file in &files {
        let ldd = root.ldd(&env.root, file);
        assert!(
            ldd.ok,
            "{} does not load in the root:\n{ldd}",
            file.display()
        );
    }
    eprintln!("{} ELF files of the env load in the root", files.len());

    let tk = root.ldd(&env.root, &env.prefix.join("lib/libtk8.6.so"));
    let x11 = tk.resolved("libX11.so.6").expect("libX11 resolved");
    assert!(
        x11.starts_with("/nix/store"),
        "libX11 from the store, got {}",
        x11.display()
    );
    let stdcxx = root.ldd(&env.root, &cxx);
    let found = stdcxx
        .resolved("libstdc++.so.6")
        .expect("libstdc++ resolved");
    assert!(
        found.starts_with(&env.prefix),
        "the env's libstdc++ must win, got {}",
        found.display()
    );

    assert_hard_links_kept(&env.prefix, &env.pkgs);
    assert_eq!(
        fs::read(&outside_link).unwrap(),
        outside_before,
        "a link outside the root changed"
    );

    assert_records_match(&env.prefix);

    let after = snapshot(&env.root);
    let out = fix(&cache, &[], &[&env.root]);
    assert!(out.status.success());
    let again = snapshot(&env.root);
    for (path, state) in &after.0 {
        assert_eq!(
            again.0.get(path),
            Some(state),
            "second run changed {}",
            path.display()
        );
    }
}

/// Every ELF file of the env that shared an inode with the package cache still does.
fn assert_hard_links_kept(prefix: &Path, pkgs: &Path) {
    let cache_inodes: std::collections::HashSet<u64> = walkdir::WalkDir::new(pkgs)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().ino())
        .collect();
    let mut linked = 0;
    for file in elf_files(prefix) {
        let meta = fs::metadata(&file).unwrap();
        if meta.nlink() > 1 {
            assert!(
                cache_inodes.contains(&meta.ino()),
                "{} lost its link into pkgs",
                file.display()
            );
            linked += 1;
        }
    }
    assert!(
        linked > 10,
        "expected hard-linked ELF files, found {linked}"
    );
}

/// `sha256_in_prefix` and `size_in_bytes` of every patched file match its content, and no
/// temporary file or replaced record is left beside the records.
fn assert_records_match(prefix: &Path) {
    let mut checked = 0;
    for record in fs::read_dir(prefix.join("conda-meta")).unwrap() {
        let record = record.unwrap().path();
        let name = record.file_name().unwrap().to_string_lossy();
        assert!(!name.starts_with(".autopatch-"), "left behind: {name}");
        if record.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
        let Some(paths) = json["paths_data"]["paths"].as_array() else {
            continue;
        };
        // Symlink entries describe links, which autopatch never changes.
        for entry in paths.iter().filter(|e| e["path_type"] != "softlink") {
            let path = prefix.join(entry["_path"].as_str().unwrap());
            if !is_dynamic_elf(&path) {
                continue;
            }
            let sha = entry["sha256_in_prefix"]
                .as_str()
                .or(entry["sha256"].as_str())
                .unwrap();
            assert_eq!(sha, sha256_hex(&path), "record of {}", path.display());
            if let Some(size) = entry["size_in_bytes"].as_u64() {
                assert_eq!(
                    size,
                    fs::metadata(&path).unwrap().len(),
                    "size of {}",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked > 10,
        "expected records for the env's ELF files, checked {checked}"
    );
}
