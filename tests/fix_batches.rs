//! `autopatch fix` on a prefix with more files to grow than one batch of rewrites holds: the
//! batches overlap (one is read and planned while the one before is written), and every file
//! must still be grown once, where it lies, and load.

mod common;

use common::{fix, run_ok, text};

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use autopatch::elf::Elf;

/// The host's zlib, which the store of the NixOS-like root holds a copy of.
const HOST_ZLIB: &str = "/lib/x86_64-linux-gnu/libz.so.1";
/// More than two batches' worth.
const COPIES: usize = 600;

fn gcc(source: &str, out: &Path, args: &[&str]) {
    let c = out.with_extension("c");
    fs::write(&c, source).unwrap();
    run_ok(Command::new("gcc").arg(&c).arg("-o").arg(out).args(args));
    fs::remove_file(c).unwrap();
}

#[test]
fn every_file_of_several_batches_is_grown_in_place_and_loads() {
    let nix = common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let env = work.path().join("env");
    fs::create_dir_all(env.join("conda-meta")).unwrap();
    fs::create_dir_all(env.join("bin")).unwrap();
    let lib = env.join("lib/libuseszlib.so");
    fs::create_dir_all(lib.parent().unwrap()).unwrap();
    gcc(
        "extern const char *zlibVersion(void);\nconst char *uses(void) { return zlibVersion(); }\n",
        &lib,
        &["-shared", "-fPIC", "-Wl,-soname,libuseszlib.so", HOST_ZLIB],
    );
    gcc(
        "#include <stdio.h>\nextern const char *uses(void);\nint main(void) { printf(\"zlib %s\\n\", uses()); return 0; }\n",
        &env.join("bin/prog"),
        &[lib.to_str().unwrap(), "-Wl,-rpath,$ORIGIN/../lib"],
    );
    let copies: Vec<_> = (0..COPIES)
        .map(|i| {
            let copy = env.join(format!("lib/plugins/p{i:03}/libuseszlib.so"));
            fs::create_dir_all(copy.parent().unwrap()).unwrap();
            fs::copy(&lib, &copy).unwrap();
            let inode = fs::metadata(&copy).unwrap().ino();
            (copy, inode)
        })
        .collect();

    let out = fix(&cache, &[], &[&env]);
    assert!(out.status.success(), "fix failed: {}", text(&out));

    let zlib_dir = nix.zlib_lib.to_str().unwrap();
    for (copy, inode) in &copies {
        assert_eq!(
            fs::metadata(copy).unwrap().ino(),
            *inode,
            "{} was not grown where it lies",
            copy.display()
        );
        let bytes = fs::read(copy).unwrap();
        let elf = Elf::parse(&bytes).unwrap();
        let run_path = String::from_utf8_lossy(elf.run_path().unwrap().1).into_owned();
        assert!(
            run_path.split(':').any(|entry| entry == zlib_dir),
            "{}: run path {run_path} lacks the store's zlib",
            copy.display()
        );
    }
    let check = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .arg("check")
        .arg(&env)
        .output()
        .unwrap();
    assert!(check.status.success(), "check: {}", text(&check));
    let run = nix.run(&env, &[env.join("bin/prog")]);
    assert!(
        run.status.success() && text(&run).contains("zlib "),
        "prog in the root: {}",
        text(&run)
    );
}
