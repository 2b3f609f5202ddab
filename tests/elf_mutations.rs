//! Seeded mutations of real files, gcc's and the host's: bytes flipped or fields overwritten in
//! the ELF header, program headers, dynamic section, section headers and string tables, and
//! truncations. Every mutant the real loader accepts (a gcc-built program runs; a host file is
//! listed by `ld.so` as `ldd -r` lists, every library, version and symbol found) does the same
//! after `autopatch elf` grows its interpreter and run path, which read back as set, and after
//! `autopatch fix` of a prefix holding it, then without `LD_LIBRARY_PATH`. Every mutant
//! autopatch refuses is left byte for byte, with a message naming it and exit status 1.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use autopatch::elf::Elf;
use common::elf::{autopatch, fixture, listing, long_loader, long_run_path, output, print, text};
use rayon::prelude::*;

const HOST_LD: &str = "/lib64/ld-linux-x86-64.so.2";
const MUTANTS_PER_BASE: usize = 100;
const PT_DYNAMIC: u32 = 2;
/// Seconds a mutant may run or be listed before it counts as not loading.
const TIMEOUT: &str = "10";

/// splitmix64: the same mutants on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// How the real loader's verdict on a file is taken.
#[derive(Clone, Copy)]
enum Probe {
    /// Run the program, with `lib/` of its prefix on `LD_LIBRARY_PATH` unless told otherwise.
    Run,
    /// List it with the host's `ld.so`, relocating everything (as `ldd -r` does) so that a
    /// missing symbol or version shows.
    List,
}

/// A real file to mutate, where it sits in a prefix, and the unmutated files beside it.
struct Base {
    name: &'static str,
    bytes: Vec<u8>,
    rel: &'static str,
    probe: Probe,
    beside: Vec<(&'static str, Vec<u8>)>,
}

impl Base {
    fn has_interpreter(&self) -> bool {
        Elf::parse(&self.bytes).is_ok_and(|e| e.interpreter().is_some())
    }
}

/// The byte ranges worth mutating: headers, the dynamic section and string tables.
fn regions(bytes: &[u8]) -> Vec<(&'static str, usize, usize)> {
    let elf = Elf::parse(bytes).unwrap();
    let mut found = vec![("elf header", 0, 64)];
    found.push((
        "program headers",
        elf.phoff as usize,
        elf.segments.len() * 56,
    ));
    if let Some(d) = elf.segments.iter().find(|s| s.p_type == PT_DYNAMIC) {
        found.push(("dynamic", d.offset as usize, d.filesz as usize));
    }
    found.push((
        "section headers",
        elf.shoff as usize,
        elf.sections.len() * 64,
    ));
    for (name, label) in [
        (&b".dynstr"[..], ".dynstr"),
        (b".interp", ".interp"),
        (b".gnu.version_r", ".gnu.version_r"),
        (b".shstrtab", ".shstrtab"),
    ] {
        if let Some(s) = elf.sections.iter().find(|s| s.name == name) {
            found.push((label, s.offset as usize, s.size as usize));
        }
    }
    found.retain(|&(_, _, len)| len > 0);
    found
}

/// Values that make fields lie: zero, all ones, past the end, or a little off.
fn field_value(rng: &mut Rng, old: u64, file_len: usize) -> u64 {
    match rng.below(5) {
        0 => 0,
        1 => u64::MAX,
        2 => file_len as u64 + rng.below(4096) as u64,
        3 => old.wrapping_add(8 * (1 + rng.below(8)) as u64),
        _ => old.wrapping_sub(8 * (1 + rng.below(8)) as u64),
    }
}

/// The `index`th mutant of `base`, and what was done to it.
fn mutant(base: &[u8], seed: u64, index: usize) -> (Vec<u8>, String) {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut bytes = base.to_vec();
    let regions = regions(base);
    let (label, start, len) = regions[rng.below(regions.len())];
    let end = (start + len).min(bytes.len());
    match rng.below(10) {
        0..=4 => {
            let mut what = format!("flip in {label}:");
            for _ in 0..1 + rng.below(3) {
                let at = start + rng.below(end - start);
                let mask = 1 + rng.below(255) as u8;
                bytes[at] ^= mask;
                what.push_str(&format!(" {at:#x}^{mask:#04x}"));
            }
            (bytes, what)
        }
        5..=7 if end - start >= 8 => {
            let at = start + rng.below((end - start) / 8) * 8;
            let old = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            let new = field_value(&mut rng, old, base.len());
            bytes[at..at + 8].copy_from_slice(&new.to_le_bytes());
            (
                bytes,
                format!("field in {label} at {at:#x}: {old:#x} -> {new:#x}"),
            )
        }
        _ => {
            let at = start + rng.below(end - start);
            bytes.truncate(at);
            (bytes, format!("truncated in {label} at {at:#x}"))
        }
    }
}

/// Writes `base` with `bytes` in its place into a new prefix at `dir`; returns the file.
fn lay_out(base: &Base, bytes: &[u8], dir: &Path) -> PathBuf {
    for (rel, content) in base
        .beside
        .iter()
        .chain([(base.rel, bytes.to_vec())].iter())
    {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir.join(base.rel)
}

/// What the real loader makes of `file`: `None` when it refuses it; else, for a program run,
/// what it printed, and for a listing, each library with the file it was found in.
fn probe(base: &Base, file: &Path, prefix: &Path, env_libs: bool) -> Option<Vec<String>> {
    // The variables go through `env`, so that they do not apply to `timeout` itself. A mutant
    // may do anything when run, such as create files named by whatever bytes: it runs in its
    // prefix.
    let mut cmd = Command::new("timeout");
    cmd.args([TIMEOUT, "env"])
        .env_remove("LD_LIBRARY_PATH")
        .current_dir(prefix);
    match base.probe {
        Probe::Run => {
            if env_libs {
                cmd.arg(format!("LD_LIBRARY_PATH={}", prefix.join("lib").display()));
            }
            let out = output(cmd.arg(file));
            out.status
                .success()
                .then(|| text(&out.stdout).lines().map(str::to_string).collect())
        }
        Probe::List => {
            let traced = [
                "LD_TRACE_LOADED_OBJECTS=1",
                "LD_WARN=yes",
                "LD_BIND_NOW=yes",
            ];
            let listed = output(cmd.args(traced).arg(HOST_LD).arg(file));
            found_libraries(&listed, &interpreter_of(file))
        }
    }
}

/// The interpreter `file` names, as the loader lists it.
fn interpreter_of(file: &Path) -> Option<String> {
    let bytes = fs::read(file).unwrap();
    Elf::parse(&bytes).ok()?.interpreter().map(text)
}

/// The `name => file` lines of a listing, the file's path canonical, but for the interpreter
/// (which an edit changes); `None` if a library, version or symbol is missing.
fn found_libraries(out: &Output, interpreter: &Option<String>) -> Option<Vec<String>> {
    let (ok, lines, err) = listing(out);
    let missing = |l: &str| l.contains("not found") || l.contains("undefined symbol");
    if !ok || lines.iter().any(|l| missing(l)) || missing(&err) {
        return None;
    }
    let found = lines
        .iter()
        .filter_map(|l| l.split_once(" => "))
        .filter(|(name, _)| Some(*name) != interpreter.as_deref());
    Some(
        found
            .map(|(name, at)| {
                let at = fs::canonicalize(at).unwrap_or_else(|_| PathBuf::from(at));
                format!("{name} => {}", at.display())
            })
            .collect(),
    )
}

/// A refusal: exit status 1, a message naming `file`, the file as it was and nothing left
/// beside it.
fn check_refusal(out: &Output, file: &Path, bytes: &[u8], mark: &str) -> Result<(), String> {
    let err = text(&out.stderr);
    let named = err.contains(&format!("{mark}{}: ", file.display()));
    let leftovers: Vec<_> = fs::read_dir(file.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".autopatch-"))
        .collect();
    if out.status.code() != Some(1) || !named {
        return Err(format!("refused with {}: {err}", out.status));
    }
    if fs::read(file).unwrap() != bytes {
        return Err(format!("refused, yet changed: {err}"));
    }
    if !leftovers.is_empty() {
        return Err(format!("refused, leaving {leftovers:?}"));
    }
    Ok(())
}

/// How one mutant fared.
#[derive(Default)]
struct Tally {
    loaded: bool,
    edited: bool,
    fixed: bool,
}

/// Grows the interpreter (a program's) and run path of the mutant laid out in `prefix`; when
/// written, they read back and the loader's verdict is still `before`.
fn check_elf_edit(
    base: &Base,
    prefix: &Path,
    bytes: &[u8],
    ld: &str,
    before: &Option<Vec<String>>,
) -> Result<bool, String> {
    let file = prefix.join(base.rel);
    let rpath = long_run_path("$ORIGIN/lib:$ORIGIN/../lib", "mutant");
    let mut args = vec!["--set-rpath", &rpath];
    if base.has_interpreter() {
        args.extend(["--set-interpreter", ld]);
    }
    let out = autopatch(&args, &file);
    if !out.status.success() {
        return check_refusal(&out, &file, bytes, "autopatch: ").map(|()| false);
    }
    if base.has_interpreter() && print("--print-interpreter", &file) != ld {
        return Err("the interpreter does not read back".into());
    }
    if print("--print-rpath", &file) != rpath {
        return Err("the run path does not read back".into());
    }
    let after = probe(base, &file, prefix, true);
    if before.is_some() && after != *before {
        return Err(format!("loaded as {before:?}, after the edit {after:?}"));
    }
    Ok(true)
}

/// Runs `autopatch fix` on a prefix holding the mutant; when it succeeds, the mutant loads as
/// `before` with nothing on `LD_LIBRARY_PATH`; when it fails, the mutant is as it was.
fn check_fix(
    base: &Base,
    bytes: &[u8],
    work: &Path,
    ld: &str,
    before: &[String],
) -> Result<bool, String> {
    let prefix = work.join("prefix");
    let file = lay_out(base, bytes, &prefix);
    let store = work.join("no-store");
    let host_lib = fs::canonicalize("/lib/x86_64-linux-gnu").unwrap();
    let extra = [
        "--interpreter",
        ld,
        "--lib-dir",
        host_lib.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    let out = common::fix(&work.join("cache"), &extra, &[&prefix]);
    if !out.status.success() {
        return check_refusal(&out, &file, bytes, "error: ").map(|()| false);
    }
    let after = probe(base, &file, &prefix, false);
    if after.as_deref() != Some(before) {
        return Err(format!("loaded as {before:?}, after the fix {after:?}"));
    }
    Ok(true)
}

fn check_mutant(base: &Base, bytes: &[u8], work: &Path, ld: &str) -> Result<Tally, String> {
    let prefix = work.join("edit");
    let before = probe(base, &lay_out(base, bytes, &prefix), &prefix, true);
    let mut tally = Tally {
        loaded: before.is_some(),
        edited: check_elf_edit(base, &prefix, bytes, ld, &before)?,
        ..Tally::default()
    };
    if let Some(before) = &before {
        tally.fixed = check_fix(base, bytes, work, ld, before)?;
    }
    Ok(tally)
}

/// The files mutated: gcc-built programs (PIE and not) beside their library, and a host
/// program and library.
fn bases(dir: &Path) -> Vec<Base> {
    let mut found = Vec::new();
    for (name, flags) in [("hello-pie", &[][..]), ("hello-nopie", &["-no-pie"][..])] {
        let fx = fixture("gcc", &dir.join(name), flags);
        found.push(Base {
            name,
            bytes: fs::read(&fx.exe).unwrap(),
            rel: "hello",
            probe: Probe::Run,
            beside: vec![("lib/libgreet.so", fs::read(&fx.lib).unwrap())],
        });
    }
    for (name, path, rel) in [
        ("ls", "/usr/bin/ls", "bin/ls"),
        ("libz", "/lib/x86_64-linux-gnu/libz.so.1", "lib/libz.so.1"),
    ] {
        found.push(Base {
            name,
            bytes: fs::read(path).unwrap(),
            rel,
            probe: Probe::List,
            beside: Vec::new(),
        });
    }
    found
}

/// A gcc-built program in a fresh directory, and its bytes.
fn gcc_program() -> (tempfile::TempDir, common::elf::Fixture, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let fx = fixture("gcc", &tmp.path().join("fixture"), &[]);
    let bytes = fs::read(&fx.exe).unwrap();
    (tmp, fx, bytes)
}

#[test]
fn mutants_that_load_still_load_after_growth_and_fix() {
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), HOST_LD);
    let bases = bases(&tmp.path().join("bases"));
    let cases: Vec<(usize, usize)> = (0..bases.len())
        .flat_map(|b| (0..MUTANTS_PER_BASE).map(move |i| (b, i)))
        .collect();
    let results: Vec<(String, Result<Tally, String>)> = cases
        .par_iter()
        .map(|&(b, i)| {
            let base = &bases[b];
            let (bytes, what) = mutant(&base.bytes, 0x5eed + b as u64, i);
            let work = tmp.path().join(format!("{}-{i}", base.name));
            let result = check_mutant(base, &bytes, &work, &ld);
            fs::remove_dir_all(&work).unwrap();
            (format!("{} #{i} ({what})", base.name), result)
        })
        .collect();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|(what, r)| r.as_ref().err().map(|e| format!("{what}: {e}")))
        .collect();
    let tallies: Vec<&Tally> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let count = |f: fn(&Tally) -> bool| tallies.iter().filter(|t| f(t)).count();
    let loaded = count(|t| t.loaded);
    let edited = count(|t| t.loaded && t.edited);
    let fixed = count(|t| t.fixed);
    println!(
        "{} mutants: {loaded} load, of which {edited} were grown and {fixed} fixed; \
         {} refused by autopatch elf; {} failures; {:.1}s",
        cases.len(),
        count(|t| !t.edited),
        failures.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(loaded * 3 >= cases.len(), "only {loaded} mutants load");
    assert!(
        edited * 2 >= loaded,
        "only {edited} of {loaded} loading mutants grown"
    );
    assert!(
        fixed * 2 >= loaded,
        "only {fixed} of {loaded} loading mutants fixed"
    );
}

/// A program whose header claims another machine gets no interpreter of this one, also when
/// the interpreter is named through a symlink (as `/lib64/ld-linux-x86-64.so.2` is).
#[test]
fn a_program_of_another_machine_keeps_its_interpreter() {
    const E_MACHINE: usize = 0x12;
    const EM_AARCH64: u16 = 183;
    let (tmp, _fx, mut bytes) = gcc_program();
    bytes[E_MACHINE..E_MACHINE + 2].copy_from_slice(&EM_AARCH64.to_le_bytes());
    let prefix = tmp.path().join("prefix");
    let file = prefix.join("bin/hello");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, &bytes).unwrap();
    let link = tmp.path().join("ld-link");
    std::os::unix::fs::symlink(fs::canonicalize(HOST_LD).unwrap(), &link).unwrap();
    let store = tmp.path().join("no-store");
    let extra = [
        "--interpreter",
        link.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
    ];
    let out = common::fix(&tmp.path().join("cache"), &extra, &[&prefix]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1 skipped"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read(&file).unwrap(), bytes, "the program was rewritten");
}

/// A note claiming the memory up to the end of the address space cannot move with that claim:
/// growth, which moves the notes after the program headers, refuses the file instead of writing
/// one no reader accepts.
#[test]
fn a_note_claiming_all_memory_is_refused_not_moved() {
    const PT_NOTE: u32 = 4;
    const P_MEMSZ: usize = 40;
    let (tmp, fx, mut bytes) = gcc_program();
    let ld = long_loader(tmp.path(), HOST_LD);
    let elf = Elf::parse(&bytes).unwrap();
    let note = elf
        .segments
        .iter()
        .position(|s| s.p_type == PT_NOTE)
        .unwrap();
    let claim = u64::MAX - elf.segments[note].vaddr;
    let at = elf.phoff as usize + note * 56 + P_MEMSZ;
    bytes[at..at + 8].copy_from_slice(&claim.to_le_bytes());
    fs::write(&fx.exe, &bytes).unwrap();
    let out = autopatch(&["--set-interpreter", &ld], &fx.exe);
    check_refusal(&out, &fx.exe, &bytes, "autopatch: ").unwrap();
}

/// A symbol version whose name runs past the end of the string table (the table's size cut by
/// the last string's NUL) makes the file unreadable: an edit would not know every string.
#[test]
fn a_version_name_past_the_string_table_is_refused() {
    const DT_STRSZ: i64 = 10;
    let (_tmp, fx, mut bytes) = gcc_program();
    let elf = Elf::parse(&bytes).unwrap();
    let dynstr = elf.sections.iter().find(|s| s.name == b".dynstr").unwrap();
    let table = &bytes[dynstr.offset as usize..(dynstr.offset + dynstr.size) as usize];
    let last = text(table[..table.len() - 1].rsplit(|&b| b == 0).next().unwrap());
    let versions: Vec<String> = elf
        .version_needs()
        .into_iter()
        .flat_map(|n| n.versions)
        .collect();
    assert!(versions.contains(&last), "{last} ends the table");
    let dynamic = elf
        .segments
        .iter()
        .find(|s| s.p_type == PT_DYNAMIC)
        .unwrap();
    let index = elf
        .dynamic_entries()
        .iter()
        .position(|e| e.tag == DT_STRSZ)
        .unwrap();
    let at = dynamic.offset as usize + index * 16 + 8;
    let strsz = dynstr.size - 1;
    bytes[at..at + 8].copy_from_slice(&strsz.to_le_bytes());
    fs::write(&fx.exe, &bytes).unwrap();
    let out = autopatch(&["--set-rpath", "$ORIGIN/lib"], &fx.exe);
    check_refusal(&out, &fx.exe, &bytes, "autopatch: ").unwrap();
}

/// An interpreter lying on a note, in a file without section headers: growth moves the note out
/// of the program header table's way, and must not leave the new interpreter to be wiped with
/// the note's old place (found by fuzzing: fuzz/regressions/read_edit/).
#[test]
fn an_interpreter_lying_on_a_note_keeps_the_value_set() {
    const PT_NOTE: u32 = 4;
    const PT_INTERP: u32 = 3;
    let (_tmp, fx, mut bytes) = gcc_program();
    let elf = Elf::parse(&bytes).unwrap();
    let note = elf
        .segments
        .iter()
        .find(|s| s.p_type == PT_NOTE)
        .unwrap()
        .clone();
    let interp = elf
        .segments
        .iter()
        .position(|s| s.p_type == PT_INTERP)
        .unwrap();
    let phdr = elf.phoff as usize + interp * 56;
    for (field, value) in [(8, note.offset), (16, note.vaddr), (24, note.vaddr)] {
        bytes[phdr + field..phdr + field + 8].copy_from_slice(&value.to_le_bytes());
    }
    bytes[phdr + 32..phdr + 48].copy_from_slice(&[&note.filesz.to_le_bytes()[..]; 2].concat());
    // No section headers: e_shoff, e_shnum and e_shstrndx zeroed.
    bytes[0x28..0x30].fill(0);
    bytes[0x3c..0x40].fill(0);
    fs::write(&fx.exe, &bytes).unwrap();
    let run_path = long_run_path("$ORIGIN/lib", "note");
    let out = autopatch(
        &["--set-interpreter", "/l", "--set-rpath", &run_path],
        &fx.exe,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(print("--print-interpreter", &fx.exe), "/l");
    assert_eq!(print("--print-rpath", &fx.exe), run_path);
}
