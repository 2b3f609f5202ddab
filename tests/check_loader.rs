//! The loader simulation against the host's real glibc loader: small programs and libraries
//! built with gcc, each verdict (and where each library resolves) compared with what
//! `ld.so` reports in trace mode (`LD_TRACE_LOADED_OBJECTS=1 ld.so FILE`, as ldd runs it).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use autopatch::check::{DefaultDirs, FileReport, Hints, Loader, LoaderConfig, ProblemKind, Via};
use autopatch::elf::Class;
use rayon::prelude::*;

const HOST_LD: &str = "/lib64/ld-linux-x86-64.so.2";

/// What the real loader made of a file.
#[derive(Debug)]
struct RealVerdict {
    ok: bool,
    /// `name => path` lines.
    libs: Vec<(String, PathBuf)>,
    /// Lines naming only a path: the loader itself, and libraries needed by path.
    paths: Vec<PathBuf>,
    /// Whether it listed the libraries at all: a refused file stops it before.
    listed: bool,
    output: String,
}

impl RealVerdict {
    fn resolved(&self, name: &str) -> Option<&Path> {
        self.libs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_path())
    }
}

/// Runs the host loader in trace mode on `file`, with a clean environment plus `env`.
fn real_loader(file: &Path, env: &[(&str, &str)]) -> RealVerdict {
    let out = Command::new(HOST_LD)
        .arg(file)
        .env_clear()
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .envs(env.iter().copied())
        .output()
        .expect("running the host ld.so");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut libs = Vec::new();
    let mut paths = Vec::new();
    let mut missing = false;
    for line in stdout.lines() {
        if let Some((name, rest)) = line.trim().split_once(" => ") {
            if rest.trim() == "not found" {
                missing = true;
            } else {
                let path = rest.split(" (0x").next().unwrap_or(rest).trim();
                libs.push((name.to_string(), PathBuf::from(path)));
            }
        } else if let Some(path) = line
            .trim()
            .split(" (0x")
            .next()
            .filter(|p| p.starts_with('/'))
        {
            paths.push(PathBuf::from(path));
        }
    }
    let aborted = stderr.contains("error while loading");
    // A weak version need the library lacks is only warned about.
    let missing_version = stderr
        .lines()
        .any(|l| l.contains("version `") && !l.contains("weak version `"));
    let failed = missing_version || aborted || stdout.contains("not a dynamic executable");
    RealVerdict {
        ok: out.status.success() && !missing && !failed,
        libs,
        paths,
        listed: !aborted,
        output: format!("--- stdout\n{stdout}--- stderr\n{stderr}"),
    }
}

fn host_loader_available() -> bool {
    Path::new(HOST_LD).exists() && cfg!(target_arch = "x86_64")
}

fn require_tools() -> bool {
    let have = host_loader_available() && tool_runs("gcc");
    if !have {
        let allow = std::env::var("AUTOPATCH_ALLOW_SKIP").is_ok_and(|v| v == "1");
        assert!(allow, "gcc and {HOST_LD} are needed (apt-get install gcc)");
        eprintln!("SKIPPED: gcc or {HOST_LD} unavailable");
    }
    have
}

fn tool_runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("running a build tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(path: &Path, text: &str) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    path.to_path_buf()
}

/// Builds a shared library `out` (soname = its file name) from C `source`, linked with `args`.
fn shared_lib(out: &Path, source: &str, args: &[&str]) {
    let src = write(&out.with_extension("c"), source);
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let soname = out.file_name().unwrap().to_str().unwrap();
    run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(out)
        .arg(&src)
        .arg(format!("-Wl,-soname,{soname}"))
        .args(args));
}

/// Builds an executable `out` from C `source`, linked with `args`.
fn executable(out: &Path, source: &str, args: &[&str]) {
    let src = write(&out.with_extension("c"), source);
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    run(Command::new("gcc").arg("-o").arg(out).arg(&src).args(args));
}

fn loader() -> Loader<'static> {
    Loader::new(LoaderConfig {
        default_dirs: DefaultDirs::Distribution,
        ..LoaderConfig::default()
    })
}

/// Asserts that the simulation and the real loader agree on `file`: the verdict, and (when the
/// real loader got as far as listing them) where every library resolved.
fn assert_agrees(report: &FileReport, real: &RealVerdict) {
    assert_eq!(
        report.ok,
        real.ok,
        "verdicts differ for {}:\nsimulated: {report:#?}\nreal:\n{}",
        report.path.display(),
        real.output
    );
    if !real.listed {
        return;
    }
    for resolved in &report.resolved {
        if resolved.via == Via::Interpreter {
            continue;
        }
        if resolved.via == Via::Path {
            assert!(
                real.paths.contains(&resolved.path),
                "{} is not listed by the real loader:\n{}",
                resolved.path.display(),
                real.output
            );
            continue;
        }
        assert_eq!(
            Some(resolved.path.as_path()),
            real.resolved(&resolved.name),
            "{} resolves differently for {}:\nsimulated: {report:#?}\nreal:\n{}",
            resolved.name,
            report.path.display(),
            real.output
        );
    }
    for (name, path) in &real.libs {
        assert_eq!(
            report.resolved_path(name),
            Some(path.as_path()),
            "the simulation did not load {name} for {}:\n{report:#?}",
            report.path.display()
        );
    }
}

/// A prefix with liba.so and libb.so (needing liba, with no run path of its own) in lib/.
fn liba_libb(dir: &Path) {
    let lib = dir.join("lib");
    shared_lib(&lib.join("liba.so"), "int a(void) { return 1; }\n", &[]);
    shared_lib(
        &lib.join("libb.so"),
        "int a(void);\nint b(void) { return a() + 1; }\n",
        &["-L", lib.to_str().unwrap(), "-la"],
    );
}

const MAIN_B: &str = "int b(void);\nint main(void) { return b() - 2; }\n";

fn exe_linking_b(dir: &Path, name: &str, rpath: &str, new_dtags: bool) -> PathBuf {
    let lib = dir.join("lib");
    let exe = dir.join("bin").join(name);
    let dtags = if new_dtags {
        "-Wl,--enable-new-dtags"
    } else {
        "-Wl,--disable-new-dtags"
    };
    executable(
        &exe,
        MAIN_B,
        &[
            "-L",
            lib.to_str().unwrap(),
            "-lb",
            &format!("-Wl,-rpath,{rpath}"),
            &format!("-Wl,-rpath-link,{}", lib.display()),
            dtags,
        ],
    );
    exe
}

#[test]
fn an_indirect_dependency_is_found_through_the_programs_rpath() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    liba_libb(tmp.path());
    let exe = exe_linking_b(tmp.path(), "rpath", "$ORIGIN/../lib", false);
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(report.ok, "{report:#?}");
    let liba = report
        .resolved
        .iter()
        .find(|r| r.name == "liba.so")
        .unwrap();
    assert!(matches!(&liba.via, Via::Rpath { owner } if owner.ends_with("bin/rpath")));
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));
}

#[test]
fn a_runpath_does_not_serve_the_libraries_a_program_loads() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    liba_libb(tmp.path());
    let exe = exe_linking_b(tmp.path(), "runpath", "$ORIGIN/../lib", true);
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(!report.ok);
    assert_eq!(
        report.resolved_path("libb.so").map(Path::exists),
        Some(true)
    );
    let problem = &report.problems[0];
    assert_eq!(problem.kind, ProblemKind::NotFound);
    assert_eq!(problem.library.as_deref(), Some("liba.so"));
    assert!(
        problem.message.starts_with(
            "liba.so (needed by lib/libb.so) not found in the ld.so cache or the default dirs ["
        ),
        "{}",
        problem.message
    );
    assert_eq!(problem.chain.len(), 2);
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));
}

#[test]
fn rpath_comes_before_ld_library_path_and_runpath_after() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    liba_libb(tmp.path());
    // A second libb.so in other/ to be found through LD_LIBRARY_PATH.
    let other = tmp.path().join("other");
    shared_lib(
        &other.join("libb.so"),
        "int a(void);\nint b(void) { return a() + 1; }\n",
        &[
            "-L",
            tmp.path().join("lib").to_str().unwrap(),
            "-la",
            "-Wl,-rpath,$ORIGIN/../lib",
        ],
    );
    let config = |env: &Path| LoaderConfig {
        env_ld_library_path: Some(vec![env.to_path_buf()]),
        default_dirs: DefaultDirs::Distribution,
        ..LoaderConfig::default()
    };
    let env = [("LD_LIBRARY_PATH", other.to_str().unwrap())];
    for (name, new_dtags, expected_dir) in [("rpath", false, "lib"), ("runpath", true, "other")] {
        let exe = exe_linking_b(tmp.path(), name, "$ORIGIN/../lib", new_dtags);
        let report = Loader::new(config(&other)).check_file_in(&exe, tmp.path());
        let libb = report.resolved_path("libb.so").unwrap();
        assert!(
            libb.parent().unwrap().ends_with(expected_dir),
            "{name}: {report:#?}"
        );
        assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &env));
    }
}

#[test]
fn origin_of_a_program_is_its_real_directory() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    liba_libb(tmp.path());
    let exe = exe_linking_b(tmp.path(), "prog", "$ORIGIN/../lib", false);
    // Started through a symlink elsewhere, the kernel still reports the real path.
    let elsewhere = tmp.path().join("elsewhere/bin");
    fs::create_dir_all(&elsewhere).unwrap();
    let link = elsewhere.join("prog");
    symlink(&exe, &link).unwrap();
    let report = loader().check_file(&link);
    assert!(report.ok, "{report:#?}");
    let started = Command::new(&link).env_clear().status().unwrap();
    assert!(
        started.success(),
        "the program itself fails to start: {started}"
    );
}

#[test]
fn a_shared_library_is_checked_as_ld_so_lists_it() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    liba_libb(tmp.path());
    let libb = tmp.path().join("lib/libb.so").canonicalize().unwrap();
    let report = loader().check_file(&libb);
    assert!(
        !report.ok,
        "libb.so has no run path to find liba.so: {report:#?}"
    );
    assert_agrees(&report, &real_loader(&libb, &[]));

    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    shared_lib(&lib.join("liba.so"), "int a(void) { return 1; }\n", &[]);
    shared_lib(
        &lib.join("libc2.so"),
        "int a(void);\nint c(void) { return a(); }\n",
        &["-L", lib.to_str().unwrap(), "-la", "-Wl,-rpath,$ORIGIN"],
    );
    let libc2 = lib.join("libc2.so").canonicalize().unwrap();
    let report = loader().check_file(&libc2);
    assert!(report.ok, "{report:#?}");
    assert_agrees(&report, &real_loader(&libc2, &[]));
}

/// Under `dir`: `full/libv.so`, defining `f1` at V1 and `f2` at V2, which programs link
/// against, and `lib/libv.so`, which they find: its versions as the script `v1_map` gives them
/// (V1 only). Returns `full`.
fn libv_pair(dir: &Path, v1_map: &str) -> PathBuf {
    let source = "int f1(void) { return 1; }\nint f2(void) { return 2; }\n";
    let v12 = write(
        &dir.join("v12.map"),
        "V1 { global: f1; local: *; };\nV2 { global: f2; } V1;\n",
    );
    let v1 = write(&dir.join("v1.map"), v1_map);
    let script = |map: &Path| format!("-Wl,--version-script={}", map.display());
    let full = dir.join("full");
    shared_lib(&full.join("libv.so"), source, &[&script(&v12)]);
    shared_lib(&dir.join("lib/libv.so"), source, &[&script(&v1)]);
    full
}

#[test]
fn a_version_shortfall_names_what_is_found_and_what_would_serve() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let full = libv_pair(tmp.path(), "V1 { global: f1; f2; local: *; };\n");
    executable(
        &tmp.path().join("bin/needs-v2"),
        "int f2(void);\nint main(void) { return f2() - 2; }\n",
        &[
            "-L",
            full.to_str().unwrap(),
            "-lv",
            "-Wl,-rpath,$ORIGIN/../lib",
        ],
    );
    let exe = tmp.path().join("bin/needs-v2");

    struct PrefixHas(PathBuf);
    impl Hints for PrefixHas {
        fn where_is(&self, _: &str, _: u16, _: Class) -> Vec<PathBuf> {
            Vec::new()
        }
        fn prefix_provides(&self, soname: &str) -> Vec<PathBuf> {
            vec![self.0.join(soname)]
        }
    }
    let hints = PrefixHas(full.clone());
    let report = loader().with_hints(&hints).check_file_in(&exe, tmp.path());
    assert!(!report.ok);
    let problem = &report.problems[0];
    assert_eq!(problem.kind, ProblemKind::MissingVersion);
    assert_eq!(problem.version.as_deref(), Some("V2"));
    assert_eq!(
        problem.message,
        "bin/needs-v2 needs V2; the libv.so it finds (lib) has up to V1; \
         the prefix's own full/libv.so would serve"
    );
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));

    // A loader asked for problems only finds the same, without listing what it loaded.
    let problems_only = Loader::new(LoaderConfig {
        default_dirs: DefaultDirs::Distribution,
        list_resolved: false,
        ..LoaderConfig::default()
    })
    .with_hints(&hints)
    .check_file_in(&exe, tmp.path());
    assert!(!report.resolved.is_empty());
    assert!(problems_only.resolved.is_empty());
    assert_eq!(
        format!("{:?}", problems_only.problems),
        format!("{:?}", report.problems)
    );
}

/// Sets `VER_FLG_WEAK` on the need for `version` in `file`'s version needs (ld emits the flag
/// rarely, so the test sets it).
fn make_version_need_weak(file: &Path, version: &[u8]) {
    const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
    let mut bytes = fs::read(file).unwrap();
    let elf = autopatch::elf::Elf::parse(&bytes).unwrap();
    let needs = elf
        .sections
        .iter()
        .find(|s| s.sh_type == SHT_GNU_VERNEED)
        .unwrap();
    let strings = elf
        .sections
        .iter()
        .find(|s| s.name == b".dynstr")
        .unwrap()
        .offset as usize;
    let (mut record, mut flag_at) = (needs.offset as usize, None);
    let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    loop {
        let mut aux = record + word(&bytes, record + 8);
        for _ in 0..u16::from_le_bytes([bytes[record + 2], bytes[record + 3]]) {
            let name = strings + word(&bytes, aux + 8);
            if bytes[name..].starts_with(version) && bytes[name + version.len()] == 0 {
                flag_at = Some(aux + 4);
            }
            aux += word(&bytes, aux + 12);
        }
        match word(&bytes, record + 12) {
            0 => break,
            next => record += next,
        }
    }
    let at = flag_at.expect("the version is needed");
    bytes[at..at + 2].copy_from_slice(&2u16.to_le_bytes());
    fs::write(file, bytes).unwrap();
}

#[test]
fn a_weak_version_need_the_library_lacks_is_no_failure() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let full = libv_pair(tmp.path(), "V1 { global: f1; local: *; };\n");
    let exe = tmp.path().join("bin/maybe-v2");
    executable(
        &exe,
        "int f1(void);\n__attribute__((weak)) int f2(void);\n\
         int main(void) { return f1() - 1 + (f2 ? f2() - 2 : 0); }\n",
        &[
            "-L",
            full.to_str().unwrap(),
            "-lv",
            "-Wl,-rpath,$ORIGIN/../lib",
        ],
    );
    let exe = exe.canonicalize().unwrap();

    let required = loader().check_file_in(&exe, tmp.path());
    let real = real_loader(&exe, &[]);
    assert!(!required.ok && !real.ok, "{}", real.output);
    assert_agrees(&required, &real);

    make_version_need_weak(&exe, b"V2");
    let weak = loader().check_file_in(&exe, tmp.path());
    let real = real_loader(&exe, &[]);
    assert!(
        real.output.contains("weak version `V2' not found"),
        "{}",
        real.output
    );
    assert!(weak.ok, "{weak:#?}");
    assert_agrees(&weak, &real);
    let ran = Command::new(&exe).output().unwrap();
    assert!(ran.status.success(), "{ran:?}");
}

#[test]
fn a_candidate_of_the_wrong_class_is_passed_over() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lib32 = tmp.path().join("lib32");
    let lib64 = tmp.path().join("lib64");
    fs::create_dir_all(&lib32).unwrap();
    if !build_32bit_lib(&lib32.join("liba.so")) {
        eprintln!(
            "SKIPPED: neither gcc -m32 nor as --32 with ld -m elf_i386 can build a 32-bit library"
        );
        return;
    }
    shared_lib(&lib64.join("liba.so"), "int a(void) { return 1; }\n", &[]);
    let exe = tmp.path().join("bin/prog");
    executable(
        &exe,
        "int a(void);\nint main(void) { return a() - 1; }\n",
        &[
            "-L",
            lib64.to_str().unwrap(),
            "-la",
            "-Wl,-rpath,$ORIGIN/../lib32:$ORIGIN/../lib64",
        ],
    );
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(report.ok, "{report:#?}");
    assert!(
        report
            .resolved_path("liba.so")
            .unwrap()
            .ends_with("lib64/liba.so")
    );
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));

    // With only the 32-bit one, the message tells what was passed over.
    fs::remove_file(lib64.join("liba.so")).unwrap();
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(!report.ok);
    assert!(
        report.problems[0]
            .message
            .contains("(wrong ELF class: ELFCLASS32 i386)"),
        "{}",
        report.problems[0].message
    );
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));
}

/// A 32-bit x86 shared library with soname liba.so: with gcc -m32 when multilib is installed,
/// else assembled directly (binutils for x86-64 can emit i386 objects).
fn build_32bit_lib(out: &Path) -> bool {
    let src = write(&out.with_extension("c"), "int a(void) { return 1; }\n");
    let with_gcc = Command::new("gcc")
        .args(["-m32", "-shared", "-fPIC", "-Wl,-soname,liba.so", "-o"])
        .arg(out)
        .arg(&src)
        .output()
        .is_ok_and(|o| o.status.success());
    if with_gcc {
        return true;
    }
    let asm = write(
        &out.with_extension("s"),
        ".globl a\na:\n  movl $1, %eax\n  ret\n",
    );
    let obj = out.with_extension("o");
    let assembled = Command::new("as")
        .arg("--32")
        .arg("-o")
        .arg(&obj)
        .arg(&asm)
        .output()
        .is_ok_and(|o| o.status.success());
    assembled
        && Command::new("ld")
            .args(["-m", "elf_i386", "-shared", "-soname", "liba.so", "-o"])
            .arg(out)
            .arg(&obj)
            .output()
            .is_ok_and(|o| o.status.success())
}

#[test]
fn glibc_hwcaps_subdirectories_come_first() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    for dir in [lib.clone(), lib.join("glibc-hwcaps/x86-64-v2")] {
        shared_lib(&dir.join("liba.so"), "int a(void) { return 1; }\n", &[]);
    }
    let exe = tmp.path().join("bin/prog");
    executable(
        &exe,
        "int a(void);\nint main(void) { return a() - 1; }\n",
        &[
            "-L",
            lib.to_str().unwrap(),
            "-la",
            "-Wl,-rpath,$ORIGIN/../lib",
        ],
    );
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(report.ok, "{report:#?}");
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));
}

#[test]
fn a_file_the_loader_refuses_stops_the_search() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    let good = tmp.path().join("good");
    shared_lib(&good.join("liba.so"), "int a(void) { return 1; }\n", &[]);
    let exe = tmp.path().join("bin/prog");
    executable(
        &exe,
        "int a(void);\nint main(void) { return a() - 1; }\n",
        &[
            "-L",
            good.to_str().unwrap(),
            "-la",
            "-Wl,-rpath,$ORIGIN/../lib:$ORIGIN/../good",
        ],
    );
    // A linker script where the library should be: glibc gives up rather than search on.
    write(
        &lib.join("liba.so"),
        "/* GNU ld script\n   Use the shared library, but some functions are only in\n   \
         the static library.  */\nGROUP ( liba.so.1 )\n",
    );
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(!report.ok);
    assert_eq!(report.problems[0].kind, ProblemKind::Unloadable);
    assert!(
        report.problems[0].message.contains("invalid ELF header"),
        "{report:#?}"
    );
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));
}

#[test]
fn missing_libraries_are_explained_with_hints() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    liba_libb(tmp.path());
    let exe = exe_linking_b(tmp.path(), "prog", "$ORIGIN/.", true);
    struct Hinted(PathBuf);
    impl Hints for Hinted {
        fn where_is(&self, _: &str, _: u16, _: Class) -> Vec<PathBuf> {
            Vec::new()
        }
        fn prefix_provides(&self, soname: &str) -> Vec<PathBuf> {
            vec![self.0.join(soname)]
        }
    }
    let hints = Hinted(tmp.path().join("lib"));
    let report = loader().with_hints(&hints).check_file_in(&exe, tmp.path());
    let problem = &report.problems[0];
    assert!(
        problem.message.starts_with(
            "libb.so (needed by bin/prog) not found in RUNPATH [$ORIGIN/.], the ld.so cache or the default dirs"
        ),
        "{}",
        problem.message
    );
    assert!(
        problem
            .message
            .ends_with("; the prefix has it at lib/libb.so")
    );
    assert_eq!(
        problem.suggestion.as_deref(),
        Some("add $ORIGIN/../lib to the run path of bin/prog")
    );
}

#[test]
fn walking_a_prefix_checks_only_dynamic_elf_files() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    liba_libb(tmp.path());
    exe_linking_b(tmp.path(), "prog", "$ORIGIN/../lib", false);
    write(&tmp.path().join("bin/script.sh"), "#!/bin/sh\n");
    run(Command::new("gcc")
        .arg("-c")
        .arg("-o")
        .arg(tmp.path().join("lib/obj.o"))
        .arg(tmp.path().join("lib/liba.c")));
    symlink("liba.so", tmp.path().join("lib/liba.so.1")).unwrap();
    let reports = loader().check_paths(&[tmp.path().to_path_buf()]);
    let names: Vec<String> = reports
        .iter()
        .map(|r| {
            r.path
                .strip_prefix(tmp.path())
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["bin/prog", "lib/liba.so", "lib/libb.so"]);
    assert_eq!(reports.iter().filter(|r| r.ok).count(), 2, "{reports:#?}");
}

/// Checks every dynamically linked file under `dir` as the distribution's loader would load it
/// (with `LD_LIBRARY_PATH` set to `library_path` if given) and compares with the real loader;
/// returns (files compared, not ok, disagreeing files).
fn differential(dir: &Path, library_path: Option<&Path>) -> (usize, usize, Vec<String>) {
    let config = LoaderConfig {
        env_ld_library_path: library_path.map(|p| vec![p.to_path_buf()]),
        default_dirs: DefaultDirs::Distribution,
        ..LoaderConfig::default()
    };
    let env: Vec<(&str, &str)> = library_path
        .map(|p| ("LD_LIBRARY_PATH", p.to_str().unwrap()))
        .into_iter()
        .collect();
    let reports = Loader::new(config).check_paths(&[dir.to_path_buf()]);
    // Only what the host's 64-bit loader can run.
    let x86_64: Vec<&FileReport> = reports
        .iter()
        .filter(|r| {
            r.interpreter.as_deref() == Some(Path::new(HOST_LD))
                && !r
                    .problems
                    .iter()
                    .any(|p| p.kind == ProblemKind::Interpreter)
        })
        .collect();
    let disagreements = x86_64
        .par_iter()
        .filter_map(|report| {
            let canonical = report.path.canonicalize().ok()?;
            let real = real_loader(&canonical, &env);
            std::panic::catch_unwind(|| assert_agrees(report, &real))
                .err()
                .map(|_| report.path.display().to_string())
        })
        .collect();
    let failing = x86_64.iter().filter(|r| !r.ok).count();
    (x86_64.len(), failing, disagreements)
}

/// Every dynamically linked program in /usr/bin must get the real loader's verdict and the same
/// library paths.
#[test]
fn agrees_with_the_host_loader_on_every_program_in_usr_bin() {
    if !host_loader_available() {
        eprintln!("SKIPPED: no {HOST_LD}");
        return;
    }
    let (checked, failing, disagreements) = differential(Path::new("/usr/bin"), None);
    eprintln!(
        "differential: {checked} files in /usr/bin checked against {HOST_LD} ({failing} not ok), {} disagreements",
        disagreements.len()
    );
    assert!(checked > 0);
    assert!(
        disagreements.is_empty(),
        "disagreements: {disagreements:#?}"
    );
}

/// The same for the distribution's shared libraries, plugins included: those whose dependencies
/// only their loading program's run path provides fail here as in `ld.so --list`.
#[test]
fn agrees_with_the_host_loader_on_the_system_libraries() {
    let dir = Path::new("/usr/lib/x86_64-linux-gnu");
    if !host_loader_available() || !dir.is_dir() {
        eprintln!("SKIPPED: no {HOST_LD} or {}", dir.display());
        return;
    }
    let (checked, failing, disagreements) = differential(dir, None);
    eprintln!(
        "differential: {checked} files in {} checked against {HOST_LD} ({failing} not ok), {} disagreements",
        dir.display(),
        disagreements.len()
    );
    assert!(checked > 0);
    assert!(
        disagreements.is_empty(),
        "disagreements: {disagreements:#?}"
    );
}

/// /usr/bin again, with `LD_LIBRARY_PATH` shadowing system libraries by bad copies: a libz.so.1
/// defining too old a version, a 32-bit libm.so.6 (passed over), a libpcre2-8.so.0 without
/// version information (accepted), and a linker script as libselinux.so.1 (fatal).
#[test]
fn agrees_with_the_host_loader_when_bad_copies_shadow_system_libraries() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let shadow = tmp.path().join("shadow");
    let old_zlib = write(
        &tmp.path().join("zlib.map"),
        "ZLIB_1.2.0 { global: zlibVersion; local: *; };\n",
    );
    shared_lib(
        &shadow.join("libz.so.1"),
        "const char *zlibVersion(void) { return \"1.2.0\"; }\n",
        &[&format!("-Wl,--version-script={}", old_zlib.display())],
    );
    shared_lib(
        &shadow.join("libpcre2-8.so.0"),
        "int pcre2_config_8(void) { return 0; }\n",
        &[],
    );
    write(
        &shadow.join("libselinux.so.1"),
        "/* GNU ld script\n   Use the shared library, but some functions are only in\n   \
         the static library.  */\nGROUP ( libselinux.so.1.0 )\n",
    );
    let with_32bit = build_32bit_lib(&shadow.join("libm.so.6"));
    let (checked, failing, disagreements) = differential(Path::new("/usr/bin"), Some(&shadow));
    eprintln!(
        "differential: {checked} files in /usr/bin with shadowing LD_LIBRARY_PATH \
         (32-bit libm: {with_32bit}) ({failing} not ok), {} disagreements",
        disagreements.len()
    );
    assert!(
        failing > 0,
        "the shadowing libraries should break some programs"
    );
    assert!(
        disagreements.is_empty(),
        "disagreements: {disagreements:#?}"
    );
}

/// Rewrites `file` in place with `edits`, using the crate's own ELF editor.
fn edit(file: &Path, edits: &autopatch::elf::Edits) {
    let input = fs::read(file).unwrap();
    let elf = autopatch::elf::Elf::parse(&input).unwrap();
    let rewrite = autopatch::elf::plan(&elf, edits)
        .unwrap()
        .expect("a change");
    fs::write(file, rewrite.apply(&input)).unwrap();
}

#[test]
fn a_needed_path_with_tokens_is_opened_without_searching() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    shared_lib(&lib.join("liba.so"), "int a(void) { return 1; }\n", &[]);
    let exe = tmp.path().join("bin/prog");
    executable(
        &exe,
        "int a(void);\nint main(void) { return a() - 1; }\n",
        &["-L", lib.to_str().unwrap(), "-la"],
    );
    edit(
        &exe,
        &autopatch::elf::Edits {
            replace_needed: vec![(b"liba.so".to_vec(), b"$ORIGIN/../lib/liba.so".to_vec())],
            ..Default::default()
        },
    );
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(report.ok, "{report:#?}");
    let resolved = &report.resolved[0];
    assert_eq!(resolved.via, Via::Path);
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));

    fs::remove_file(lib.join("liba.so")).unwrap();
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(
        report.problems[0]
            .message
            .ends_with("(needed by bin/prog) does not exist")
    );
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));
}

/// `$LIB` is what the host's glibc build says (`lib/x86_64-linux-gnu` on Debian, `lib64` on
/// Fedora); both candidates exist, and the simulation must pick the real loader's.
#[test]
fn the_lib_token_expands_as_the_distributions_glibc_does() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for dir in ["lib/x86_64-linux-gnu", "lib64", "lib"] {
        shared_lib(
            &tmp.path().join(dir).join("liba.so"),
            "int a(void) { return 1; }\n",
            &[],
        );
    }
    let exe = tmp.path().join("bin/prog");
    executable(
        &exe,
        "int a(void);\nint main(void) { return a() - 1; }\n",
        &[
            "-L",
            tmp.path().join("lib").to_str().unwrap(),
            "-la",
            "-Wl,-rpath,$ORIGIN/../$LIB",
        ],
    );
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(report.ok, "{report:#?}");
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));
}

#[test]
fn an_empty_run_path_entry_searches_the_current_directory_and_is_noted() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    liba_libb(tmp.path());
    let exe = exe_linking_b(tmp.path(), "prog", "$ORIGIN/../lib::/nonexistent", false);
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(report.ok, "{report:#?}");
    assert!(
        report.notes.iter().any(|n| n.starts_with(
            "RPATH [$ORIGIN/../lib::/nonexistent] has an entry relative to the current directory"
        )),
        "{:#?}",
        report.notes
    );
    assert_agrees(&report, &real_loader(&exe.canonicalize().unwrap(), &[]));
}

#[test]
fn the_interpreter_must_exist_and_fit_the_file() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("bin/prog");
    executable(
        &exe,
        "int main(void) { return 0; }\n",
        &["-Wl,--dynamic-linker=/nonexistent/ld-linux-x86-64.so.2"],
    );
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(!report.ok);
    assert_eq!(report.problems[0].kind, ProblemKind::Interpreter);
    assert_eq!(
        report.problems[0].message,
        "interpreter /nonexistent/ld-linux-x86-64.so.2 does not exist"
    );

    let lib32 = tmp.path().join("lib32/liba.so");
    fs::create_dir_all(lib32.parent().unwrap()).unwrap();
    if build_32bit_lib(&lib32) {
        let report = Loader::new(LoaderConfig {
            interpreter: Some(lib32.clone()),
            ..LoaderConfig::default()
        })
        .check_file(&exe);
        assert_eq!(
            report.problems[0].message,
            format!(
                "interpreter {} is ELFCLASS32 i386, the file is ELFCLASS64 x86_64",
                lib32.display()
            )
        );
    }
}

/// An interpreter inside the store makes the default directories its own directory only: no
/// ld.so cache, no system directories.
#[test]
fn an_interpreter_in_the_store_searches_only_its_own_directory() {
    if !require_tools() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let glibc = store.join("abc-glibc/lib");
    fs::create_dir_all(&glibc).unwrap();
    let ld = glibc.join("ld-linux-x86-64.so.2");
    fs::copy(Path::new(HOST_LD).canonicalize().unwrap(), &ld).unwrap();
    let exe = tmp.path().join("bin/prog");
    executable(
        &exe,
        "int main(void) { return 0; }\n",
        &[&format!("-Wl,--dynamic-linker={}", ld.display())],
    );
    let loader = || {
        Loader::new(LoaderConfig {
            store_dir: store.clone(),
            ..LoaderConfig::default()
        })
    };
    let report = loader().check_file_in(&exe, tmp.path());
    assert!(!report.ok);
    assert_eq!(
        report.problems[0].message,
        format!(
            "libc.so.6 (needed by bin/prog) not found in the default dirs [{}]",
            glibc.display()
        )
    );

    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    if libc.exists() {
        fs::copy(libc, glibc.join("libc.so.6")).unwrap();
        let report = loader().check_file_in(&exe, tmp.path());
        assert!(report.ok, "{report:#?}");
        assert_eq!(
            report.resolved_path("libc.so.6"),
            Some(glibc.join("libc.so.6").as_path())
        );
        assert_eq!(report.resolved[0].via, Via::DefaultDirs);
    }
}
