//! Proves the test harness itself: the NixOS-like root behaves like NixOS
//! for FHS binaries, and conda environments are real installs.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{conda_env_or_skip, nixroot_or_skip};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn fhs_binary_fails_in_root_and_patched_copy_runs() {
    let Some(root) = nixroot_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path();
    fs::create_dir(prefix.join("bin")).unwrap();
    let unpatched = prefix.join("bin/ls-unpatched");
    let patched = prefix.join("bin/ls");
    fs::copy("/usr/bin/ls", &unpatched).unwrap();
    fs::copy("/usr/bin/ls", &patched).unwrap();
    fs::write(prefix.join("marker-file"), "x").unwrap();

    // As on NixOS: the FHS interpreter does not exist.
    let out = root.run(prefix, &[unpatched.to_str().unwrap()]);
    assert!(!out.status.success(), "unpatched ls ran: {}", stdout(&out));
    assert!(
        stderr(&out).contains("No such file or directory"),
        "{}",
        stderr(&out)
    );
    let ldd = root.ldd(prefix, &unpatched);
    assert!(!ldd.ok, "{ldd}");
    assert!(!ldd.interpreter_ok, "{ldd}");
    assert_eq!(
        ldd.interpreter.as_deref(),
        Some("/lib64/ld-linux-x86-64.so.2")
    );

    // Store interpreter and glibc only: host libraries must not leak in, so
    // libselinux (not part of glibc) is missing.
    let ld = root.ld.to_str().unwrap();
    common::patchelf(
        &[
            "--set-interpreter",
            ld,
            "--set-rpath",
            root.glibc_lib.to_str().unwrap(),
        ],
        &patched,
    );
    let out = root.run(prefix, &[patched.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("libselinux.so.1"), "{}", stderr(&out));
    let ldd = root.ldd(prefix, &patched);
    assert!(!ldd.ok, "{ldd}");
    assert_eq!(ldd.not_found, vec!["libselinux.so.1".to_string()], "{ldd}");

    // With the store's libselinux on the RUNPATH it runs, entirely from /nix.
    let rpath = format!(
        "{}:{}",
        root.libselinux_lib.display(),
        root.glibc_lib.display()
    );
    common::patchelf(&["--set-rpath", &rpath], &patched);
    let out = root.run(
        prefix,
        &[patched.to_str().unwrap(), "-1", prefix.to_str().unwrap()],
    );
    assert!(out.status.success(), "patched ls failed: {}", stderr(&out));
    assert!(stdout(&out).contains("marker-file"), "{}", stdout(&out));
    let ldd = root.ldd(prefix, &patched);
    assert!(ldd.ok, "{ldd}");
    assert!(ldd.interpreter_ok, "{ldd}");
    assert!(
        ldd.resolved("libselinux.so.1")
            .unwrap()
            .starts_with(&root.libselinux_lib),
        "{ldd}"
    );
    assert!(
        ldd.resolved("libc.so.6")
            .unwrap()
            .starts_with(&root.glibc_lib),
        "{ldd}"
    );
    assert!(
        ldd.resolved("libpcre2-8.so.0")
            .unwrap()
            .starts_with("/nix/store"),
        "{ldd}"
    );
}

#[test]
fn root_has_no_fhs_library_or_bin_dirs() {
    let Some(root) = nixroot_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let script = "for d in /lib64 /lib64/ld-linux-x86-64.so.2 /usr /bin /etc; do \
                  if [ -e $d ]; then echo present $d; fi; done; \
                  [ -e /lib/x86_64-linux-gnu/libc.so.6 ] && echo default-glibc; \
                  echo x > /tmp/t && cat /tmp/t && touch \"$PWD/written\"";
    let out = root.run(tmp.path(), &["sh", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "default-glibc\nx\n", "{}", stderr(&out));
    assert!(
        tmp.path().join("written").exists(),
        "prefix is not writable in the root"
    );
}

#[test]
fn store_libraries_resolve_through_their_runpaths() {
    let Some(root) = nixroot_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for (lib, dep) in [
        (root.x11_lib.join("libX11.so.6"), "libxcb.so.1"),
        (root.gcc_lib.join("libstdc++.so.6"), "libgcc_s.so.1"),
        (root.zlib_lib.join("libz.so.1"), "libc.so.6"),
    ] {
        let ldd = root.ldd(tmp.path(), &lib);
        assert!(ldd.ok, "{}: {ldd}", lib.display());
        let found = ldd
            .resolved(dep)
            .unwrap_or_else(|| panic!("{dep} not listed: {ldd}"));
        assert!(
            found.starts_with("/nix/store"),
            "{dep} from {}: {ldd}",
            found.display()
        );
    }
    // libX11's closure: libXdmcp -> libbsd -> libmd, each via its own RUNPATH.
    let ldd = root.ldd(tmp.path(), &root.x11_lib.join("libX11.so.6"));
    for dep in ["libXau.so.6", "libXdmcp.so.6", "libbsd.so.0", "libmd.so.0"] {
        assert!(
            ldd.resolved(dep)
                .is_some_and(|p| p.starts_with("/nix/store")),
            "{dep}: {ldd}"
        );
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    let (ma, mb) = (fs::metadata(a).unwrap(), fs::metadata(b).unwrap());
    ma.dev() == mb.dev() && ma.ino() == mb.ino()
}

#[test]
fn conda_env_is_a_real_install_with_hard_links() {
    let Some(env) = conda_env_or_skip(&["zstd"]) else {
        return;
    };
    let records = env.records();
    let zstd_record = records
        .iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("zstd-")
        })
        .unwrap_or_else(|| panic!("no zstd record in {records:?}"));
    let record = fs::read_to_string(zstd_record).unwrap();
    assert!(
        record.contains("\"bin/zstd\""),
        "record lacks its files: {record}"
    );
    assert!(
        records
            .iter()
            .any(|p| p.to_str().unwrap().contains("libzlib-")),
        "{records:?}"
    );

    let bin = env.prefix.join("bin/zstd");
    assert_eq!(
        common::elf_interpreter(&bin).as_deref(),
        Some("/lib64/ld-linux-x86-64.so.2")
    );
    let pkg_dir = fs::read_dir(&env.pkgs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.is_dir()
                && p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("zstd-")
        })
        .expect("zstd in the package cache");
    let cached = pkg_dir.join("bin/zstd");
    assert!(
        same_file(&bin, &cached),
        "env file is not a hard link into pkgs"
    );
    assert!(fs::metadata(&bin).unwrap().nlink() >= 2);

    // A fresh copy keeps the env <-> pkgs hard links, detached from the cache.
    let tmp = tempfile::tempdir().unwrap();
    let copy = env.fresh_copy(tmp.path());
    let copy_bin = copy.prefix.join("bin/zstd");
    let copy_cached = copy
        .pkgs
        .join(pkg_dir.file_name().unwrap())
        .join("bin/zstd");
    assert!(
        same_file(&copy_bin, &copy_cached),
        "fresh_copy broke hard links"
    );
    assert!(
        !same_file(&copy_bin, &bin),
        "fresh_copy shares files with the cache"
    );
    assert_eq!(copy.records().len(), records.len());
}

#[test]
fn conda_binary_runs_in_root_once_interpreter_is_patched() {
    let Some(root) = nixroot_or_skip() else {
        return;
    };
    let Some(env) = conda_env_or_skip(&["zstd"]) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let copy = env.fresh_copy(tmp.path());
    let bin = copy.prefix.join("bin/zstd");
    let argv = [bin.to_str().unwrap(), "--version"];

    let out = root.run(&copy.root, &argv);
    assert!(!out.status.success(), "unpatched conda zstd ran");

    // Its RUNPATH ($ORIGIN/../lib) finds the env's own libraries; glibc comes
    // from the loader's default directory, as on NixOS.
    common::patchelf(&["--set-interpreter", root.ld.to_str().unwrap()], &bin);
    let out = root.run(&copy.root, &argv);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("v1.5.6"), "{}", stdout(&out));
    let ldd = root.ldd(&copy.root, &bin);
    assert!(ldd.ok, "{ldd}");
    let libzstd = ldd.resolved("libzstd.so.1").expect("libzstd listed");
    assert!(libzstd.starts_with(&copy.prefix), "{ldd}");
}
