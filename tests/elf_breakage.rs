//! The kinds of breakage patchelf's tracker keeps hearing about, each on programs gcc builds
//! here: the patched program must still run (or fail exactly as the edit demands), readelf must
//! not warn, and what autopatch reads back must be what was set.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use autopatch::elf::Elf;
use common::elf::{
    Fixture, autopatch, compile, fixture, greet_library, long_loader, long_run_path, output, print,
    text,
};

const GREETING: &str = "hello from libgreet\n";
const HOST_LD: &str = "/lib64/ld-linux-x86-64.so.2";

fn autopatch_ok(args: &[&str], file: &Path) {
    let o = autopatch(args, file);
    assert!(
        o.status.success(),
        "autopatch elf {args:?} {}: {}",
        file.display(),
        text(&o.stderr)
    );
}

/// Runs `argv` and checks it greets.
fn assert_greets(argv: &[&Path]) {
    let o = output(Command::new(argv[0]).args(&argv[1..]));
    assert!(
        o.status.success() && text(&o.stdout) == GREETING,
        "{argv:?}: {}, stdout {:?}, stderr {:?}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn readelf(args: &str, file: &Path) -> (String, String) {
    let o = output(Command::new("readelf").arg(args).arg(file));
    (text(&o.stdout), text(&o.stderr))
}

fn assert_readelf_clean(file: &Path) {
    let (_, err) = readelf("-lSdVW", file);
    assert!(err.is_empty(), "readelf {}: {err}", file.display());
}

/// Sets a long interpreter and run path, then checks the result runs, reads back and is clean.
fn grow_and_check(fx: &Fixture, ld: &str) {
    let rpath = long_run_path("$ORIGIN/lib", "grow");
    autopatch_ok(&["--set-interpreter", ld, "--set-rpath", &rpath], &fx.exe);
    assert_eq!(print("--print-interpreter", &fx.exe), ld);
    assert_eq!(print("--print-rpath", &fx.exe), rpath);
    assert_greets(&[&fx.exe]);
    assert_readelf_clean(&fx.exe);
}

fn strip(args: &[&str], file: &Path) {
    let o = output(Command::new("strip").args(args).arg(file));
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "strip {args:?}: {}",
        text(&o.stderr)
    );
}

/// Patches `fx` the long way, strips it in place and to a copy, and checks both still run and
/// keep the values; then edits the stripped program again.
fn assert_survives_strip(fx: &Fixture, ld: &str) {
    grow_and_check(fx, ld);
    let rpath = print("--print-rpath", &fx.exe);
    let copy = fx.dir.join("hello-stripped-copy");
    strip(&["-o", copy.to_str().unwrap()], &fx.exe);
    strip(&[], &fx.exe);
    for file in [&fx.exe, &copy] {
        assert_greets(&[file]);
        assert_readelf_clean(file);
        assert_eq!(print("--print-interpreter", file), ld);
        assert_eq!(print("--print-rpath", file), rpath);
    }
    autopatch_ok(
        &["--set-interpreter", HOST_LD, "--set-rpath", "$ORIGIN/lib"],
        &fx.exe,
    );
    assert_greets(&[&fx.exe]);
    grow_and_check(fx, ld);
}

#[test]
fn strip_after_patching() {
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), HOST_LD);
    let fx = fixture("gcc", tmp.path(), &[]);
    assert_survives_strip(&fx, &ld);
    // A library patched the long way survives strip too.
    autopatch_ok(&["--set-rpath", &long_run_path("/usr/lib", "lib")], &fx.lib);
    strip(&[], &fx.lib);
    assert_readelf_clean(&fx.lib);
    assert_greets(&[&fx.exe]);
}

#[test]
fn non_pie_executable() {
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), HOST_LD);
    let fx = fixture("gcc", tmp.path(), &["-no-pie"]);
    assert!(readelf("-h", &fx.exe).0.contains("EXEC (Executable file)"));
    assert_survives_strip(&fx, &ld);
}

#[test]
fn no_separate_code() {
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), HOST_LD);
    let fx = fixture("gcc", tmp.path(), &["-Wl,-z,noseparate-code"]);
    let loads = |f: &Path| readelf("-lW", f).0.matches("  LOAD ").count();
    assert_eq!(loads(&fx.exe), 2, "noseparate-code gives two PT_LOADs");
    assert_survives_strip(&fx, &ld);
}

/// Zeroes e_shoff, e_shnum and e_shstrndx and cuts the section header table off the end.
fn remove_section_headers(file: &Path) {
    let mut data = fs::read(file).unwrap();
    let shoff = u64::from_le_bytes(data[0x28..0x30].try_into().unwrap()) as usize;
    assert_eq!(
        shoff + 64 * usize::from(u16::from_le_bytes([data[0x3c], data[0x3d]])),
        data.len(),
        "section headers end the file"
    );
    data.truncate(shoff);
    data[0x28..0x30].fill(0);
    data[0x3c..0x40].fill(0);
    fs::write(file, data).unwrap();
}

#[test]
fn no_section_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), HOST_LD);
    let fx = fixture("gcc", tmp.path(), &[]);
    remove_section_headers(&fx.exe);
    assert!(
        readelf("-S", &fx.exe).0.contains("There are no sections"),
        "section headers still there"
    );
    let refused = output(Command::new("patchelf").arg("--print-needed").arg(&fx.exe));
    assert!(text(&refused.stderr).contains("no section headers"));

    // Read through PT_INTERP and PT_DYNAMIC.
    assert_eq!(print("--print-interpreter", &fx.exe), HOST_LD);
    assert_eq!(print("--print-needed", &fx.exe), "libgreet.so\nlibc.so.6");
    assert_eq!(print("--print-rpath", &fx.exe), "");

    // Adding a run path needs a larger dynamic section: growth without section headers.
    autopatch_ok(&["--set-rpath", "$ORIGIN/lib"], &fx.exe);
    assert_greets(&[&fx.exe]);
    grow_and_check(&fx, &ld);
    autopatch_ok(&["--set-interpreter", HOST_LD], &fx.exe);
    assert_greets(&[&fx.exe]);
    assert_eq!(Elf::parse(&fs::read(&fx.exe).unwrap()).unwrap().shoff, 0);
    assert_readelf_clean(&fx.exe);
}

#[test]
fn alternating_long_and_short_values_stay_within_one_growth() {
    let tmp = tempfile::tempdir().unwrap();
    let loaders = [
        long_loader(&tmp.path().join("a"), HOST_LD),
        long_loader(&tmp.path().join("b"), HOST_LD),
    ];
    let fx = fixture("gcc", tmp.path(), &[]);
    let size = |f: &Path| fs::metadata(f).unwrap().len();
    let original = size(&fx.exe);
    let mut after_first_growth = None;
    for round in 0..16 {
        let (interp, rpath) = if round % 2 == 0 {
            let rpath = long_run_path("$ORIGIN/lib", &format!("round{round}"));
            (loaders[round / 2 % 2].clone(), rpath)
        } else {
            (HOST_LD.to_string(), "$ORIGIN/lib".to_string())
        };
        autopatch_ok(
            &["--set-interpreter", &interp, "--set-rpath", &rpath],
            &fx.exe,
        );
        assert_eq!(
            print("--print-interpreter", &fx.exe),
            interp,
            "round {round}"
        );
        assert_eq!(print("--print-rpath", &fx.exe), rpath, "round {round}");
        assert_greets(&[&fx.exe]);
        assert_readelf_clean(&fx.exe);
        let now = size(&fx.exe);
        let first = *after_first_growth.get_or_insert(now);
        assert!(first > original, "the first round grows the file");
        // Rebuilding the region may realign it, never stack a second copy of the values.
        assert!(
            now <= first + 64,
            "round {round}: {now} bytes, {first} after the first growth"
        );
    }
}

/// A grown file whose symbol is named by a string an edit appended: rebuilding the string table
/// from its pre-growth part would lose the name, so the next growing edit is refused and the
/// file left as it was.
#[test]
fn a_symbol_named_past_the_pre_growth_strings_is_not_lost() {
    const DT_SYMTAB: i64 = 6;
    const RUN_PATH_TAGS: [i64; 2] = [15, 29];
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &[]);
    autopatch_ok(
        &["--set-rpath", &long_run_path("$ORIGIN/lib", "first")],
        &fx.exe,
    );
    let mut bytes = fs::read(&fx.exe).unwrap();
    let elf = Elf::parse(&bytes).unwrap();
    let value = |tags: &[i64]| {
        let entries = elf.dynamic_entries().iter();
        entries
            .filter(|e| tags.contains(&e.tag))
            .map(|e| e.val)
            .next()
            .unwrap()
    };
    let appended = value(&RUN_PATH_TAGS);
    let symtab = elf.vaddr_to_offset(value(&[DT_SYMTAB])).unwrap() as usize;
    // Symbol 1's `st_name` (an `Elf64_Sym` is 24 bytes) now names the appended run path.
    let st_name = symtab + 24;
    bytes[st_name..st_name + 4].copy_from_slice(&(appended as u32).to_le_bytes());
    fs::write(&fx.exe, &bytes).unwrap();

    let o = autopatch(
        &["--set-rpath", &long_run_path("$ORIGIN/lib", "second")],
        &fx.exe,
    );
    assert!(!o.status.success(), "the rebuild was not refused");
    assert!(
        text(&o.stderr).contains("symbol names lie past"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(fs::read(&fx.exe).unwrap(), bytes, "the file was changed");
}

/// Builds `lib/libextra.so`, which announces itself when loaded.
fn extra_lib(fx: &Fixture) {
    compile(
        "gcc",
        &fx.dir.join("lib"),
        "libextra.so",
        "#include <stdio.h>\n__attribute__((constructor)) static void hi(void) { puts(\"extra\"); }\n",
        &["-shared", "-fPIC", "-Wl,-soname,libextra.so"],
    );
}

fn run_stdout(file: &Path) -> String {
    stdout_of(&mut Command::new(file))
}

/// What `cmd` prints, once it has succeeded.
fn stdout_of(cmd: &mut Command) -> String {
    let o = output(cmd);
    assert!(o.status.success(), "{cmd:?}: {}", text(&o.stderr));
    text(&o.stdout)
}

#[test]
fn needed_and_soname_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &[]);
    autopatch_ok(&["--set-rpath", "$ORIGIN/lib"], &fx.exe);
    let needed = print("--print-needed", &fx.exe);
    assert_greets(&[&fx.exe]);

    // A renamed copy of the library, with its own soname.
    let renamed = fx.dir.join("lib/libhowdy.so");
    fs::rename(&fx.lib, &renamed).unwrap();
    autopatch_ok(&["--set-soname", "libhowdy.so"], &renamed);
    assert_eq!(print("--print-soname", &renamed), "libhowdy.so");
    assert!(!output(&mut Command::new(&fx.exe)).status.success());
    autopatch_ok(&["--replace-needed", "libgreet.so", "libhowdy.so"], &fx.exe);
    assert_eq!(print("--print-needed", &fx.exe), "libhowdy.so\nlibc.so.6");
    // The version requirement follows the library, or the loader would not match it.
    let versions = readelf("-V", &fx.exe).0;
    assert!(versions.contains("File: libhowdy.so"), "{versions}");
    assert!(!versions.contains("File: libgreet.so"), "{versions}");
    assert_greets(&[&fx.exe]);

    // And back, to the original name and soname.
    autopatch_ok(&["--set-soname", "libgreet.so"], &renamed);
    fs::rename(&renamed, &fx.lib).unwrap();
    autopatch_ok(&["--replace-needed", "libhowdy.so", "libgreet.so"], &fx.exe);
    assert_eq!(print("--print-needed", &fx.exe), needed);
    assert_eq!(print("--print-soname", &fx.lib), "libgreet.so");
    assert_greets(&[&fx.exe]);

    // A long soname needs growth; the library still serves the program.
    let long_soname = format!("libgreet-{}.so", "x".repeat(300));
    autopatch_ok(&["--set-soname", &long_soname], &fx.lib);
    assert_eq!(print("--print-soname", &fx.lib), long_soname);
    assert_readelf_clean(&fx.lib);
    assert_greets(&[&fx.exe]);

    extra_lib(&fx);
    autopatch_ok(&["--add-needed", "libextra.so"], &fx.exe);
    assert_eq!(
        print("--print-needed", &fx.exe),
        format!("libextra.so\n{needed}")
    );
    assert_eq!(run_stdout(&fx.exe), format!("extra\n{GREETING}"));
    autopatch_ok(&["--remove-needed", "libextra.so"], &fx.exe);
    assert_eq!(print("--print-needed", &fx.exe), needed);
    assert_eq!(run_stdout(&fx.exe), GREETING);
    assert_readelf_clean(&fx.exe);
}

/// `autopatch elf ARGS file` with arguments as bytes; stdout, after checking it succeeded.
fn autopatch_bytes(args: &[&[u8]], file: &Path) -> Vec<u8> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let o = output(
        Command::new(env!("CARGO_BIN_EXE_autopatch"))
            .arg("elf")
            .args(args.iter().map(|a| OsStr::from_bytes(a)))
            .arg(file),
    );
    assert!(
        o.status.success(),
        "{}: {}",
        file.display(),
        text(&o.stderr)
    );
    o.stdout
}

#[test]
fn run_paths_and_names_that_are_not_utf8_keep_their_bytes() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &[]);
    // The library the program needs, in a directory whose name is not UTF-8.
    let odd_dir = fx.dir.join(OsStr::from_bytes(b"lib\xe9"));
    fs::create_dir(&odd_dir).unwrap();
    fs::copy(&fx.lib, odd_dir.join("libgreet.so")).unwrap();
    fs::remove_file(&fx.lib).unwrap();
    let patchelf_prints =
        |flag: &str, file: &Path| output(Command::new("patchelf").arg(flag).arg(file)).stdout;

    autopatch_bytes(&[b"--set-rpath", b"/opt/caf\xe9:$ORIGIN/lib\xe9"], &fx.exe);
    let printed = autopatch_bytes(&[b"--print-rpath"], &fx.exe);
    assert_eq!(printed, b"/opt/caf\xe9:$ORIGIN/lib\xe9\n");
    assert_eq!(patchelf_prints("--print-rpath", &fx.exe), printed);
    assert_greets(&[&fx.exe]);

    autopatch_bytes(&[b"--add-rpath", b"/extra\xe8"], &fx.exe);
    assert_eq!(
        autopatch_bytes(&[b"--print-rpath"], &fx.exe),
        b"/opt/caf\xe9:$ORIGIN/lib\xe9:/extra\xe8\n"
    );
    // Only the entry that holds a needed library stays, as the file had it.
    autopatch_bytes(&[b"--shrink-rpath"], &fx.exe);
    assert_eq!(
        autopatch_bytes(&[b"--print-rpath"], &fx.exe),
        b"$ORIGIN/lib\xe9\n"
    );
    assert_greets(&[&fx.exe]);

    let lib = odd_dir.join("libgreet.so");
    autopatch_bytes(&[b"--set-soname", b"libgr\xe9et.so"], &lib);
    let soname = autopatch_bytes(&[b"--print-soname"], &lib);
    assert_eq!(soname, b"libgr\xe9et.so\n");
    assert_eq!(patchelf_prints("--print-soname", &lib), soname);
}

/// `file` with its `DT_VERNEEDNUM` entry turned into a `DT_CHECKSUM`, which the loader ignores.
fn drop_verneed_count(file: &Path) {
    const DT_VERNEEDNUM: u64 = 0x6fff_ffff;
    const DT_CHECKSUM: u64 = 0x6fff_fdf8;
    let mut bytes = fs::read(file).unwrap();
    let dynamic = {
        let elf = Elf::parse(&bytes).unwrap();
        let section = elf.sections.iter().find(|s| s.name == b".dynamic").unwrap();
        section.offset as usize..(section.offset + section.size) as usize
    };
    let at = (dynamic.start..dynamic.end)
        .step_by(16)
        .find(|&at| bytes[at..at + 8] == DT_VERNEEDNUM.to_le_bytes())
        .expect("a DT_VERNEEDNUM entry");
    bytes[at..at + 8].copy_from_slice(&DT_CHECKSUM.to_le_bytes());
    fs::write(file, bytes).unwrap();
}

#[test]
fn version_needs_without_their_count_are_read_as_the_loader_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &[]);
    autopatch_ok(&["--set-rpath", "$ORIGIN/lib"], &fx.exe);
    let counted = Elf::parse(&fs::read(&fx.exe).unwrap())
        .unwrap()
        .version_needs();
    drop_verneed_count(&fx.exe);
    let walked = Elf::parse(&fs::read(&fx.exe).unwrap())
        .unwrap()
        .version_needs();
    let files = |needs: &[autopatch::elf::VersionNeed]| -> Vec<(String, Vec<String>)> {
        needs
            .iter()
            .map(|n| (n.file.clone(), n.versions.clone()))
            .collect()
    };
    assert_eq!(files(&walked), files(&counted));
    assert!(
        files(&walked)
            .iter()
            .any(|(f, v)| f == "libgreet.so" && v.contains(&"GREET_1.0".to_string()))
    );
    assert_greets(&[&fx.exe]);

    // A libgreet with another version: the loader still checks the need, and so must `check`.
    greet_library("gcc", &fx.dir, "GREET_2.0");
    let run = output(&mut Command::new(&fx.exe));
    assert!(
        !run.status.success() && text(&run.stderr).contains("GREET_1.0"),
        "the loader should refuse it: {}",
        text(&run.stderr)
    );
    let check = output(
        Command::new(env!("CARGO_BIN_EXE_autopatch"))
            .args(["check", "--interpreter", HOST_LD])
            .arg(&fx.exe),
    );
    assert!(
        !check.status.success() && text(&check.stdout).contains("GREET_1.0"),
        "check should find the missing version: {}{}",
        text(&check.stdout),
        text(&check.stderr)
    );
}

/// The dynamic symbol names of `file`, as nm lists them.
fn dynamic_symbols(file: &Path) -> String {
    stdout_of(Command::new("nm").arg("-D").arg(file))
}

/// How often `needle` occurs in the dynamic string table of `file`.
fn in_dynstr(file: &Path, needle: &[u8]) -> usize {
    let bytes = fs::read(file).unwrap();
    let elf = Elf::parse(&bytes).unwrap();
    let dynstr = elf.sections.iter().find(|s| s.name == b".dynstr").unwrap();
    let table = &bytes[dynstr.offset as usize..(dynstr.offset + dynstr.size) as usize];
    table.windows(needle.len()).filter(|w| *w == needle).count()
}

/// GNU ld lets a symbol's name share the bytes of a run path that ends with it (patchelf's
/// issues 162 and 315): a shorter run path written over the old one renamed the symbol, and the
/// library no longer linked.
#[test]
fn symbols_named_by_the_end_of_a_run_path_keep_their_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lib = dir.join("lib");
    fs::create_dir_all(&lib).unwrap();
    compile(
        "gcc",
        &lib,
        "libnames.so",
        "int lib = 40;\nint system2(void) { return 2; }\n",
        &["-shared", "-fPIC", "-Wl,-soname,libnames.so"],
    );
    let link_dir = format!("-L{}", lib.display());
    let user = |name: &str, source: &str, run_path: &str| {
        let rpath = format!("-Wl,-rpath,{run_path}");
        let args = ["-shared", "-fPIC", &link_dir, "-lnames", &rpath];
        compile("gcc", &lib, name, source, &args)
    };
    let whole = user(
        "libwhole.so",
        "extern int lib;\nint whole(void) { return lib; }\n",
        "lib",
    );
    let tail = user(
        "libtail.so",
        "int system2(void);\nint tail(void) { return system2(); }\n",
        "/opt/x/system2",
    );
    // The linker did share them: each name is in the file once, inside the run path.
    assert_eq!(in_dynstr(&whole, b"\0lib\0"), 1);
    assert_eq!(in_dynstr(&tail, b"system2\0"), 1);
    assert_eq!(in_dynstr(&tail, b"/opt/x/system2\0"), 1);
    let exe = compile(
        "gcc",
        dir,
        "main",
        "#include <stdio.h>\nint whole(void);\nint tail(void);\n\
         int main(void) { printf(\"%d\\n\", whole() + tail()); return 0; }\n",
        &[&link_dir, "-lwhole", "-ltail", "-lnames"],
    );

    let symbols_before = [dynamic_symbols(&whole), dynamic_symbols(&tail)];
    autopatch_ok(&["--set-rpath", "ab"], &whole);
    autopatch_ok(&["--set-rpath", "/a/b"], &tail);
    assert_eq!(print("--print-rpath", &whole), "ab");
    assert_eq!(print("--print-rpath", &tail), "/a/b");
    assert_eq!(
        [dynamic_symbols(&whole), dynamic_symbols(&tail)],
        symbols_before
    );
    assert_readelf_clean(&whole);
    assert_readelf_clean(&tail);
    let run = output(Command::new(&exe).env("LD_LIBRARY_PATH", &lib));
    assert!(
        run.status.success() && text(&run.stdout) == "42\n",
        "{}: stdout {:?}, stderr {:?}",
        run.status,
        text(&run.stdout),
        text(&run.stderr)
    );
}

/// A run path an edit replaces or drops leaves no trace in the file: Nix's reference scan
/// finds store paths by their hash, so a build input's path left behind would keep it in the
/// package's closure. Each kind of edit is checked on a library a program loads.
#[test]
fn replaced_run_paths_leave_no_trace() {
    const HASH: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let lib = dir.join("lib");
    fs::create_dir_all(&lib).unwrap();
    let old = format!("/nix/store/{HASH}-build-input/lib");
    let library = compile(
        "gcc",
        &lib,
        "libold.so",
        "int answer(void) { return 42; }\n",
        &[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libold.so",
            &format!("-Wl,-rpath,{old}"),
        ],
    );
    let exe = compile(
        "gcc",
        dir,
        "main",
        "#include <stdio.h>\nint answer(void);\nint main(void) { printf(\"%d\\n\", answer()); return 0; }\n",
        &[&format!("-L{}", lib.display()), "-lold"],
    );
    let pristine = fs::read(&library).unwrap();
    assert_eq!(in_dynstr(&library, HASH.as_bytes()), 1);
    let symbols = dynamic_symbols(&library);
    let longer = long_run_path("$ORIGIN", "longer");
    let edits: [(&[&str], &str); 4] = [
        (&["--set-rpath", &longer], &longer),
        (&["--set-rpath", "/x"], "/x"),
        (&["--shrink-rpath"], ""),
        (&["--remove-rpath"], ""),
    ];
    for (args, run_path) in edits {
        fs::write(&library, &pristine).unwrap();
        autopatch_ok(args, &library);
        let bytes = fs::read(&library).unwrap();
        let traces = bytes
            .windows(HASH.len())
            .filter(|w| *w == HASH.as_bytes())
            .count();
        assert_eq!(traces, 0, "{args:?} left the old run path in the file");
        assert_eq!(print("--print-rpath", &library), run_path, "{args:?}");
        assert_eq!(dynamic_symbols(&library), symbols, "{args:?}");
        assert_readelf_clean(&library);
        let run = output(Command::new(&exe).env("LD_LIBRARY_PATH", &lib));
        assert_eq!(text(&run.stdout), "42\n", "{args:?}: {}", text(&run.stderr));
    }
}

/// Runs `autopatch elf ARGS` and checks it refuses, saying `why`, and leaves `file` as it was.
fn assert_refused(args: &[&str], file: &Path, why: &str) {
    let before = fs::read(file).unwrap();
    let o = autopatch(args, file);
    assert_eq!(o.status.code(), Some(1), "{args:?} was not refused");
    assert!(
        text(&o.stderr).contains(why),
        "{args:?}: {}",
        text(&o.stderr)
    );
    assert_eq!(fs::read(file).unwrap(), before, "{args:?} changed the file");
}

/// The loader finds no object for a version need whose library is gone, and stops with an
/// assertion (patchelf's issue 115): removing such a library is refused.
#[test]
fn a_library_the_file_needs_versions_from_is_not_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &[]);
    assert_refused(
        &["--remove-needed", "libgreet.so"],
        &fx.exe,
        "needs symbol versions (GREET_1.0) from libgreet.so",
    );
    // Removing and adding it back in one edit leaves the need met.
    autopatch_ok(
        &[
            "--remove-needed",
            "libgreet.so",
            "--add-needed",
            "libgreet.so",
            "--set-rpath",
            "$ORIGIN/lib",
        ],
        &fx.exe,
    );
    assert_greets(&[&fx.exe]);
}

/// The dynamic loader and static-pie programs relocate themselves, and glibc's code for that
/// asserts they have no run path (patchelf's issue 465): setting one is refused.
#[test]
fn files_that_relocate_themselves_get_no_run_path() {
    let tmp = tempfile::tempdir().unwrap();
    let program = compile(
        "gcc",
        tmp.path(),
        "static-pie",
        "#include <stdio.h>\nint main(void) { puts(\"static\"); return 0; }\n",
        &["-static-pie"],
    );
    let loader = tmp.path().join("ld.so");
    fs::copy(HOST_LD, &loader).unwrap();
    for file in [&program, &loader] {
        assert_refused(&["--set-rpath", "/x"], file, "relocates itself");
    }
    assert_eq!(run_stdout(&program), "static\n");
}

/// `$ORIGIN` of a file named without a directory is the current directory.
#[test]
fn shrink_rpath_finds_origin_for_a_bare_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &["-Wl,-rpath,$ORIGIN/lib:/nonexistent"]);
    let o = output(
        Command::new(env!("CARGO_BIN_EXE_autopatch"))
            .current_dir(&fx.dir)
            .args(["elf", "--shrink-rpath", "hello"]),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(print("--print-rpath", &fx.exe), "$ORIGIN/lib");
    assert_greets(&[&fx.exe]);
}

#[test]
fn rpath_kind_is_kept_and_converted() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = tmp.path().join("lib");
    fs::create_dir(&lib).unwrap();
    // libgreet needs libbase, which only the program's DT_RPATH finds: DT_RUNPATH would not
    // serve libgreet's own needs.
    compile(
        "gcc",
        &lib,
        "libbase.so",
        "const char *base(void) { return \"hello from libgreet\"; }\n",
        &["-shared", "-fPIC", "-Wl,-soname,libbase.so"],
    );
    compile(
        "gcc",
        &lib,
        "libgreet.so",
        "const char *base(void);\nconst char *greet(void) { return base(); }\n",
        &[
            "-shared",
            "-fPIC",
            "-Wl,-soname,libgreet.so",
            "-L",
            lib.to_str().unwrap(),
            "-lbase",
        ],
    );
    let exe = compile(
        "gcc",
        tmp.path(),
        "hello",
        "#include <stdio.h>\nconst char *greet(void);\nint main(void) { puts(greet()); return 0; }\n",
        &[
            "-L",
            lib.to_str().unwrap(),
            "-lgreet",
            &format!("-Wl,-rpath-link,{}", lib.display()),
            "-Wl,--disable-new-dtags,-rpath,$ORIGIN/lib",
        ],
    );
    let tags = |f: &Path| {
        let d = readelf("-dW", f).0;
        (d.contains("(RPATH)"), d.contains("(RUNPATH)"))
    };
    assert_eq!(tags(&exe), (true, false));
    assert_greets(&[&exe]);

    let rpath = long_run_path("$ORIGIN/lib", "kind");
    autopatch_ok(&["--set-rpath", &rpath], &exe);
    assert_eq!(tags(&exe), (true, false), "the kind is kept");
    assert_eq!(print("--print-rpath", &exe), rpath);
    assert_greets(&[&exe]);

    autopatch_ok(&["--force-runpath"], &exe);
    assert_eq!(tags(&exe), (false, true));
    assert_eq!(print("--print-rpath", &exe), rpath);
    let o = output(&mut Command::new(&exe));
    assert!(
        !o.status.success() && text(&o.stderr).contains("libbase.so"),
        "DT_RUNPATH must not serve libgreet's needs: {}",
        text(&o.stderr)
    );

    autopatch_ok(&["--force-rpath", "--set-rpath", "$ORIGIN/lib"], &exe);
    assert_eq!(tags(&exe), (true, false));
    assert_greets(&[&exe]);
    assert_readelf_clean(&exe);
}

/// A cross toolchain and its emulator, when installed.
struct Cross {
    gcc: &'static str,
    sysroot: &'static str,
    ld: &'static str,
    qemu: &'static str,
}

/// Patches a program built by `cross` the long way; checks readelf, then runs it under qemu.
/// Returns the patched program's `readelf -lW` output.
fn cross_check(cross: &Cross, tmp: &Path) -> Option<String> {
    if !common::have_tool(cross.gcc) {
        eprintln!(
            "SKIPPED: {} not installed (apt-get install gcc-{})",
            cross.gcc,
            cross.gcc.trim_end_matches("-gcc")
        );
        return None;
    }
    let ld = long_loader(tmp, &format!("{}/lib/{}", cross.sysroot, cross.ld));
    let fx = fixture(cross.gcc, tmp, &[]);
    let rpath = long_run_path("$ORIGIN/lib", "cross");
    autopatch_ok(&["--set-interpreter", &ld, "--set-rpath", &rpath], &fx.exe);
    assert_eq!(print("--print-interpreter", &fx.exe), ld);
    assert_eq!(print("--print-rpath", &fx.exe), rpath);
    assert_readelf_clean(&fx.exe);
    let (headers, _) = readelf("-lW", &fx.exe);
    assert!(headers.contains(&format!("[Requesting program interpreter: {ld}]")));
    let dynamic = readelf("-dW", &fx.exe).0;
    assert!(
        dynamic.contains(&format!("Library runpath: [{rpath}]")),
        "{dynamic}"
    );
    if common::have_tool(cross.qemu) {
        let qemu = PathBuf::from(cross.qemu);
        assert_greets(&[&qemu, Path::new("-L"), Path::new(cross.sysroot), &fx.exe]);
    } else {
        eprintln!(
            "SKIPPED running: {} not installed (apt-get install qemu-user)",
            cross.qemu
        );
    }
    Some(headers)
}

/// `(offset, vaddr, align)` of every PT_LOAD in `readelf -lW` output.
fn loads(headers: &str) -> Vec<(u64, u64, u64)> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    headers
        .lines()
        .filter(|l| l.trim_start().starts_with("LOAD "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (hex(f[1]), hex(f[2]), hex(f[f.len() - 1]))
        })
        .collect()
}

#[test]
fn aarch64_with_64k_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let cross = Cross {
        gcc: "aarch64-linux-gnu-gcc",
        sysroot: "/usr/aarch64-linux-gnu",
        ld: "ld-linux-aarch64.so.1",
        qemu: "qemu-aarch64",
    };
    let Some(headers) = cross_check(&cross, tmp.path()) else {
        return;
    };
    let loads = loads(&headers);
    assert!(loads.len() >= 3, "a PT_LOAD was added: {headers}");
    for (offset, vaddr, align) in loads {
        assert_eq!(align, 0x10000, "{headers}");
        assert_eq!(offset % 0x10000, vaddr % 0x10000, "{headers}");
    }
}

#[test]
fn big_endian_s390x() {
    let tmp = tempfile::tempdir().unwrap();
    let cross = Cross {
        gcc: "s390x-linux-gnu-gcc",
        sysroot: "/usr/s390x-linux-gnu",
        ld: "ld64.so.1",
        qemu: "qemu-s390x",
    };
    let Some(headers) = cross_check(&cross, tmp.path()) else {
        return;
    };
    assert!(
        readelf("-h", &tmp.path().join("hello"))
            .0
            .contains("big endian")
    );
    for (offset, vaddr, align) in loads(&headers) {
        assert_eq!(offset % align, vaddr % align, "{headers}");
    }
}

/// Where the next data at or after `at` lies in `file` (`SEEK_DATA`).
fn next_data(file: &fs::File, at: u64) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on an open descriptor has no memory effects.
    let r = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, libc::SEEK_DATA) };
    assert!(r >= 0, "SEEK_DATA: {}", std::io::Error::last_os_error());
    r as u64
}

/// Sections growth may move to make room or rebuild: everything else keeps its bytes.
fn movable(name: &[u8]) -> bool {
    name.starts_with(b".note")
        || name.starts_with(b".gnu.version")
        || [
            &b".interp"[..],
            b".hash",
            b".gnu.hash",
            b".dynsym",
            b".dynstr",
            b".dynamic",
        ]
        .contains(&name)
}

#[test]
fn sparse_file_over_4_gib() {
    const HOLE: u64 = 9 << 29; // 4.5 GiB
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), HOST_LD);
    let fx = fixture("gcc", tmp.path(), &[]);
    let original = fs::read(&fx.exe).unwrap();
    let end = original.len() as u64;
    let file = fs::OpenOptions::new().write(true).open(&fx.exe).unwrap();
    file.set_len(end + HOLE).unwrap();
    drop(file);
    let blocks_before = fs::metadata(&fx.exe).unwrap().blocks();

    let rpath = long_run_path("$ORIGIN/lib", "sparse");
    autopatch_ok(&["--set-interpreter", &ld, "--set-rpath", &rpath], &fx.exe);
    let meta = fs::metadata(&fx.exe).unwrap();
    assert!(meta.len() > end + HOLE);
    assert!(
        meta.blocks() <= blocks_before + 64,
        "{} blocks allocated, {blocks_before} before: the hole was filled",
        meta.blocks()
    );
    assert_eq!(print("--print-interpreter", &fx.exe), ld);
    assert_eq!(print("--print-rpath", &fx.exe), rpath);

    let f = fs::File::open(&fx.exe).unwrap();
    let after_original = end.next_multiple_of(4096);
    assert!(
        next_data(&f, after_original) >= (end + HOLE) / 4096 * 4096,
        "data written into the hole"
    );
    // SAFETY: the file is not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let elf = Elf::parse(&map).unwrap();
    assert_eq!(elf.interpreter(), Some(ld.as_bytes()));
    let before = Elf::parse(&original).unwrap();
    let mut compared = 0;
    for s in before.sections.iter().filter(|s| {
        s.sh_type != 8 /* SHT_NOBITS */ && s.size > 0 && !movable(s.name)
    }) {
        let range = s.offset as usize..(s.offset + s.size) as usize;
        assert_eq!(
            map[range.clone()],
            original[range],
            "{} changed",
            String::from_utf8_lossy(s.name)
        );
        compared += 1;
    }
    assert!(compared > 10, "only {compared} sections compared");
    drop(map);
    assert_greets(&[&fx.exe]);
}

/// `data` with the 8-byte field at `at` inside program header `index` set to `value`.
fn with_segment_field(data: &[u8], index: usize, at: usize, value: u64) -> Vec<u8> {
    let field = Elf::parse(data).unwrap().phoff as usize + index * 56 + at;
    let mut d = data.to_vec();
    d[field..field + 8].copy_from_slice(&value.to_le_bytes());
    d
}

/// The index of the first program header of `p_type`.
fn segment_index(elf: &Elf, p_type: u32) -> usize {
    elf.segments
        .iter()
        .position(|s| s.p_type == p_type)
        .unwrap()
}

#[test]
fn bad_input_is_refused_and_left_alone() {
    const PT_INTERP: u32 = 3;
    const PT_NOTE: u32 = 4;
    const P_OFFSET: usize = 8;
    const P_FILESZ: usize = 32;
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &[]);
    let good = fs::read(&fx.exe).unwrap();
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut d = good.clone();
        edit(&mut d);
        d
    };
    let elf = Elf::parse(&good).unwrap();
    let shoff = elf.shoff as usize;
    let mut garbage = b"\x7fELF".to_vec();
    garbage.extend((0..4092u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
    // Unreadable files: every command fails.
    let unreadable: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 4].to_vec()),
        ("garbage-after-magic", garbage),
        (
            "phoff-past-end",
            with(&|d| d[0x20..0x28].copy_from_slice(&(good.len() as u64 + 64).to_le_bytes())),
        ),
        (
            "phnum-65535",
            with(&|d| d[0x38..0x3a].copy_from_slice(&[0xff, 0xff])),
        ),
        (
            "section-wraps-around",
            with(&|d| d[shoff + 64 + 32..shoff + 64 + 40].fill(0xff)),
        ),
        ("empty", Vec::new()),
        ("not-elf", b"#!/bin/sh\necho hello\n".to_vec()),
    ];
    // Readable, but editing them in place would clobber the headers or read past the end.
    let uneditable: Vec<(&str, Vec<u8>)> = vec![
        (
            "interpreter-over-program-headers",
            with_segment_field(&good, segment_index(&elf, PT_INTERP), P_OFFSET, 64),
        ),
        (
            "note-past-end",
            with_segment_field(&good, segment_index(&elf, PT_NOTE), P_FILESZ, 1 << 20),
        ),
        ("load-with-more-file-than-memory", {
            let rw = elf.segments.iter().rposition(|s| s.is_load()).unwrap();
            let memsz = elf.segments[rw].memsz;
            with_segment_field(&good, rw, P_FILESZ, memsz + 256)
        }),
    ];
    let dir = tmp.path().join("bad");
    fs::create_dir(&dir).unwrap();
    let edit = &["--set-interpreter", HOST_LD, "--set-rpath", "/opt/lib"][..];
    let cases = unreadable
        .iter()
        .map(|c| (c, vec![edit, &["--print-rpath"][..]]))
        .chain(uneditable.iter().map(|c| (c, vec![edit])));
    for ((name, bytes), commands) in cases {
        let file = dir.join(name);
        fs::write(&file, bytes).unwrap();
        for args in commands {
            let o = autopatch(args, &file);
            let err = text(&o.stderr);
            assert!(!o.status.success(), "{name} {args:?} succeeded");
            assert!(err.contains(file.to_str().unwrap()), "{name}: {err}");
            assert_eq!(&fs::read(&file).unwrap(), bytes, "{name} was modified");
        }
    }
    let left = fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        left,
        unreadable.len() + uneditable.len(),
        "temporary files left behind"
    );
}

#[test]
fn headers_lying_about_sizes_do_not_move_code() {
    const PT_NOTE: u32 = 4;
    const P_FILESZ: usize = 32;
    const SH_SIZE: usize = 32;
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), HOST_LD);
    let good = fs::read(&fixture("gcc", tmp.path(), &[]).exe).unwrap();
    let elf = Elf::parse(&good).unwrap();
    let text = elf.sections.iter().find(|s| s.name == b".text").unwrap();
    let span = |from: u64| text.offset + text.size - from;
    // A note segment and the section after the program headers each claim to run over the code.
    let note = elf.segments.iter().find(|s| s.p_type == PT_NOTE).unwrap();
    let long_note = with_segment_field(
        &good,
        segment_index(&elf, PT_NOTE),
        P_FILESZ,
        span(note.offset),
    );
    let first = elf
        .sections
        .iter()
        .filter(|s| s.offset >= elf.phoff + 56 * elf.segments.len() as u64)
        .min_by_key(|s| s.offset)
        .unwrap();
    let mut long_section = good.clone();
    let field = (elf.shoff + 64 * first.index as u64) as usize + SH_SIZE;
    long_section[field..field + 8].copy_from_slice(&span(first.offset).to_le_bytes());
    for (name, bytes) in [("long-note", long_note), ("long-section", long_section)] {
        let fx = fixture("gcc", &tmp.path().join(name), &[]);
        fs::write(&fx.exe, &bytes).unwrap();
        grow_and_check(&fx, &ld);
        let after = fs::read(&fx.exe).unwrap();
        let code = text.offset as usize..(text.offset + text.size) as usize;
        assert_eq!(after[code.clone()], good[code], "{name}: the code changed");
    }
}

#[test]
fn a_file_needing_no_change_is_not_rewritten() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &["-Wl,-rpath,$ORIGIN/lib"]);
    let old = Command::new("touch")
        .args(["-d", "@1000000000"])
        .arg(&fx.exe)
        .status()
        .unwrap();
    assert!(old.success());
    let before = fs::metadata(&fx.exe).unwrap();
    autopatch_ok(
        &[
            "--set-interpreter",
            HOST_LD,
            "--set-rpath",
            "$ORIGIN/lib",
            "--add-needed",
            "libc.so.6",
            "--remove-needed",
            "libabsent.so",
            "--replace-needed",
            "libabsent.so",
            "libother.so",
        ],
        &fx.exe,
    );
    let after = fs::metadata(&fx.exe).unwrap();
    assert_eq!(after.ino(), before.ino(), "rewritten");
    assert_eq!(after.mtime(), 1_000_000_000);
    assert_eq!(after.mtime_nsec(), before.mtime_nsec());
}

#[test]
fn permissions_and_xattrs_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), HOST_LD);
    let fx = fixture("gcc", tmp.path(), &[]);
    fs::set_permissions(&fx.exe, fs::Permissions::from_mode(0o751)).unwrap();
    xattr::set(&fx.exe, "user.test", b"kept").expect("setting user.test (user xattrs)");
    let before = fs::metadata(&fx.exe).unwrap();
    grow_and_check(&fx, &ld);
    let after = fs::metadata(&fx.exe).unwrap();
    assert_ne!(after.ino(), before.ino(), "the file was rewritten");
    assert_eq!(after.permissions().mode() & 0o7777, 0o751);
    assert_eq!(
        xattr::get(&fx.exe, "user.test").unwrap().as_deref(),
        Some(&b"kept"[..])
    );
}

#[test]
fn output_to_a_new_file_leaves_the_input_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", tmp.path(), &[]);
    let before = fs::read(&fx.exe).unwrap();
    let out = fx.dir.join("hello-patched");
    let rpath = fx.lib.parent().unwrap().display().to_string();
    autopatch_ok(
        &[
            "--set-rpath",
            &rpath,
            "--output",
            &out.display().to_string(),
        ],
        &fx.exe,
    );
    assert_eq!(fs::read(&fx.exe).unwrap(), before, "the input changed");
    assert_eq!(print("--print-rpath", &out), rpath);
    assert_greets(&[&out]);
}

/// The states a file passes through when grown in place, each the content of a file of its own:
/// after the append, with the staging table, with the front rewritten, with the final header,
/// and cut to length.
fn in_place_states(file: &Path, edits: &autopatch::elf::Edits) -> Vec<Vec<u8>> {
    let input = fs::read(file).unwrap();
    let (rewrite, steps) = common::elf::in_place_growth(&input, edits);
    let states: Vec<Vec<u8>> = (0..=4)
        .map(|step| common::elf::in_place_state(&input, &steps, step))
        .collect();
    assert_eq!(
        states[4],
        rewrite.apply(&input),
        "the last state is the rewrite's result"
    );
    states
}

/// Every state of an in-place growth runs, for a PIE, a position-dependent program and the
/// shared library they load: the real kernel and loader read the staging table.
#[test]
fn every_step_of_an_in_place_growth_runs() {
    use autopatch::elf::{Edits, RunPathEdit};
    let dir = tempfile::tempdir().unwrap();
    // A run path of its own, so that the original runs too.
    let origin = "-Wl,-rpath,$ORIGIN/lib";
    for (kind, args) in [("pie", &[origin][..]), ("no-pie", &[origin, "-no-pie"][..])] {
        let fx = fixture("gcc", &dir.path().join(kind), args);
        let ld = long_loader(&fx.dir, HOST_LD);
        let exe_edits = Edits {
            interpreter: Some(ld.clone().into_bytes()),
            run_path: Some(RunPathEdit::Set(
                long_run_path("$ORIGIN/lib", "exe").into_bytes(),
            )),
            ..Edits::default()
        };
        let lib_edits = Edits {
            run_path: Some(RunPathEdit::Set(
                long_run_path("$ORIGIN", "lib").into_bytes(),
            )),
            ..Edits::default()
        };
        let exe_states = in_place_states(&fx.exe, &exe_edits);
        let lib_states = in_place_states(&fx.lib, &lib_edits);
        let original_lib = fs::read(&fx.lib).unwrap();
        for (step, exe) in exe_states.iter().enumerate() {
            fs::write(&fx.exe, exe).unwrap();
            assert_greets(&[&fx.exe]);
            // From the staging table on, the loader reads the new interpreter.
            let interp = if step == 0 { HOST_LD } else { ld.as_str() };
            assert_eq!(
                print("--print-interpreter", &fx.exe),
                interp,
                "{kind}, step {step}"
            );
        }
        for (step, lib) in lib_states.iter().enumerate() {
            fs::write(&fx.lib, lib).unwrap();
            assert_greets(&[&fx.exe]);
            assert_readelf_clean(&fx.lib);
            assert!(step < 4 || print("--print-rpath", &fx.lib).starts_with("$ORIGIN:"));
        }
        fs::write(&fx.lib, original_lib).unwrap();
    }
}
