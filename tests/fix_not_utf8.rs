//! `autopatch fix` where bytes are not UTF-8: a run path entry kept from the old run path keeps
//! its bytes; a run path whose entries cannot be told apart as text, or an interpreter whose
//! path is not UTF-8, leaves the file as it was, with a message saying why.

mod common;

use common::{fix, run_ok, text};

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output};

use autopatch::elf::Elf;

/// The host's zlib, which the store of the NixOS-like root holds a copy of.
const HOST_ZLIB: &str = "/lib/x86_64-linux-gnu/libz.so.1";
/// UTF-8's replacement character, which a lossy reading puts for each byte it cannot read.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// A library in `env/lib` that needs zlib, with `run_path` as its run path.
fn library_needing_zlib(env: &Path, run_path: &[u8]) -> std::path::PathBuf {
    fs::create_dir_all(env.join("conda-meta")).unwrap();
    fs::create_dir_all(env.join("lib")).unwrap();
    let lib = env.join("lib/libuseszlib.so");
    let source = env.join("uses.c");
    fs::write(
        &source,
        "extern const char *zlibVersion(void);\nconst char *uses(void) { return zlibVersion(); }\n",
    )
    .unwrap();
    let rpath_flag = [b"-Wl,-rpath,".as_slice(), run_path].concat();
    run_ok(
        Command::new("gcc")
            .args(["-shared", "-fPIC", "-Wl,-soname,libuseszlib.so"])
            .arg(&source)
            .arg(HOST_ZLIB)
            .arg(OsStr::from_bytes(&rpath_flag))
            .arg("-o")
            .arg(&lib),
    );
    fs::remove_file(source).unwrap();
    lib
}

/// `fix` failed, said that something is not UTF-8, and left `file` as `before`.
fn assert_refused_and_left_alone(out: &Output, file: &Path, before: &[u8]) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "fix should fail on it: {}",
        text(out)
    );
    assert!(
        text(out).contains("not UTF-8"),
        "the message should say why: {}",
        text(out)
    );
    assert_eq!(
        fs::read(file).unwrap(),
        before,
        "{} was changed",
        file.display()
    );
}

fn run_path_of(lib: &Path) -> Vec<u8> {
    let bytes = fs::read(lib).unwrap();
    let elf = Elf::parse(&bytes).unwrap();
    elf.run_path().expect("a run path").1.to_vec()
}

#[test]
fn an_entry_that_is_not_utf8_keeps_its_bytes() {
    let nix = common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let env = work.path().join("env");
    let kept = b"/opt/caf\xe9/lib";
    let lib = library_needing_zlib(&env, kept);

    let out = fix(&work.path().join("cache"), &[], &[&env]);
    assert!(out.status.success(), "fix failed: {}", text(&out));

    let run_path = run_path_of(&lib);
    let entries: Vec<&[u8]> = run_path.split(|&b| b == b':').collect();
    assert!(
        entries.contains(&kept.as_slice()),
        "the old entry lost its bytes: {}",
        String::from_utf8_lossy(&run_path)
    );
    assert!(
        entries.contains(&nix.zlib_lib.as_os_str().as_bytes()),
        "the store's zlib was not added: {}",
        String::from_utf8_lossy(&run_path)
    );
    assert!(
        !run_path
            .windows(REPLACEMENT.len())
            .any(|w| w == REPLACEMENT),
        "a replacement character was written: {}",
        String::from_utf8_lossy(&run_path)
    );
}

#[test]
fn entries_that_read_alike_as_text_leave_the_file_as_it_was() {
    common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let env = work.path().join("env");
    // Both read as "/opt/a\u{FFFD}", so which one an entry of the new run path stands for
    // cannot be told.
    let lib = library_needing_zlib(&env, b"/opt/a\xe9:/opt/a\xe8");
    let before = fs::read(&lib).unwrap();

    let out = fix(&work.path().join("cache"), &[], &[&env]);
    assert_refused_and_left_alone(&out, &lib, &before);
}

#[test]
fn an_interpreter_whose_path_is_not_utf8_leaves_programs_as_they_were() {
    let nix = common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let env = work.path().join("env");
    fs::create_dir_all(env.join("conda-meta")).unwrap();
    fs::create_dir_all(env.join("bin")).unwrap();
    let program = env.join("bin/true");
    fs::copy("/bin/true", &program).unwrap();
    let before = fs::read(&program).unwrap();
    let loader_dir = work.path().join(OsStr::from_bytes(b"glibc-\xe9"));
    fs::create_dir(&loader_dir).unwrap();
    let loader = loader_dir.join("ld-linux-x86-64.so.2");
    fs::copy(&nix.ld, &loader).unwrap();

    let cache = work.path().join("cache");
    let out = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .arg("fix")
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--interpreter")
        .arg(&loader)
        .arg(&env)
        .env("XDG_CONFIG_HOME", &cache)
        .output()
        .unwrap();
    assert_refused_and_left_alone(&out, &program, &before);
}
