//! `autopatch elf --print-interpreter/--print-rpath/--print-needed/--print-soname` against
//! Debian's patchelf 0.14 on every ELF file under /usr/bin and /usr/lib/x86_64-linux-gnu: the
//! same stdout and the same success or failure.
//!
//! Every file goes through the library (what the CLI prints, computed in process); a sample also
//! goes through the CLI binary, which must agree with the library byte for byte.
//!
//! Where the two tools legitimately differ, the difference is predicted exactly (see
//! `known_difference`) and patchelf's error message is checked:
//! - files that are neither executables nor shared objects (relocatable objects such as crt1.o):
//!   patchelf refuses them ("wrong ELF type"); autopatch reads them and finds nothing;
//! - statically linked files without a dynamic section: patchelf fails on --print-rpath and
//!   --print-needed ("cannot find section '.dynamic'"); autopatch prints an empty run path and
//!   no libraries;
//! - files without section headers: patchelf refuses them ("no section headers"); autopatch reads
//!   program headers, and must print what patchelf prints for the same file with its section
//!   headers (checked on copies of real files with the headers removed).

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use autopatch::elf::{ET_DYN, ET_EXEC, Elf};
use rayon::prelude::*;

const DIRS: [&str; 2] = ["/usr/bin", "/usr/lib/x86_64-linux-gnu"];
/// One file in this many also goes through the CLI.
const CLI_SAMPLE: usize = 10;
/// One dynamic file in this many is also compared without its section headers.
const NO_SHDR_SAMPLE: usize = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Interpreter,
    RunPath,
    Needed,
    Soname,
}

impl Query {
    const ALL: [Query; 4] = [
        Query::Interpreter,
        Query::RunPath,
        Query::Needed,
        Query::Soname,
    ];

    fn flag(self) -> &'static str {
        match self {
            Query::Interpreter => "--print-interpreter",
            Query::RunPath => "--print-rpath",
            Query::Needed => "--print-needed",
            Query::Soname => "--print-soname",
        }
    }
}

/// What a `--print-*` run gave: stdout on success, stderr on failure.
type Outcome = Result<Vec<u8>, String>;

fn line(bytes: &[u8]) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.push(b'\n');
    v
}

/// What `autopatch elf FLAG` prints for `elf`, computed with the library.
fn library_print(elf: &Elf, q: Query) -> Outcome {
    match q {
        Query::Interpreter => elf
            .interpreter()
            .map(line)
            .ok_or_else(|| "no PT_INTERP".to_string()),
        Query::RunPath => Ok(line(elf.run_path().map_or(&[][..], |(_, p)| p))),
        Query::Needed => Ok(elf.needed().into_iter().flat_map(line).collect()),
        Query::Soname => Ok(elf.soname().map(line).unwrap_or_default()),
    }
}

fn library_print_file(bytes: &[u8], q: Query) -> Outcome {
    match Elf::parse(bytes) {
        Ok(elf) => library_print(&elf, q),
        Err(e) => Err(e.to_string()),
    }
}

fn outcome(cmd: &mut Command) -> Outcome {
    let out = cmd.output().expect("spawning");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn patchelf_print(path: &Path, q: Query) -> Outcome {
    outcome(Command::new("patchelf").arg(q.flag()).arg(path))
}

fn cli_print(path: &Path, q: Query) -> Outcome {
    outcome(
        Command::new(env!("CARGO_BIN_EXE_autopatch"))
            .args(["elf", q.flag()])
            .arg(path),
    )
}

fn same(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => true,
        _ => false,
    }
}

fn show(o: &Outcome) -> String {
    match o {
        Ok(out) => format!("ok {:?}", String::from_utf8_lossy(out)),
        Err(err) => format!("error {:?}", err.trim()),
    }
}

/// What autopatch prints for a file with nothing to report.
fn nothing(q: Query) -> Outcome {
    match q {
        Query::Interpreter => Err("no PT_INTERP".into()),
        Query::RunPath => Ok(b"\n".to_vec()),
        Query::Needed | Query::Soname => Ok(Vec::new()),
    }
}

/// A documented difference: patchelf fails with this message, autopatch gives this outcome.
fn known_difference(elf: &Elf, q: Query) -> Option<(&'static str, Outcome)> {
    if elf.has_dynamic() {
        return None;
    }
    if !matches!(elf.e_type, ET_EXEC | ET_DYN) {
        return Some(("wrong ELF type", nothing(q)));
    }
    matches!(q, Query::RunPath | Query::Needed)
        .then(|| ("cannot find section '.dynamic'", nothing(q)))
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(path).is_ok_and(|mut f| f.read_exact(&mut magic).is_ok()) && &magic == b"\x7fELF"
}

/// Regular ELF files under `DIRS`, one path per inode, and how many paths there were.
fn host_elf_files() -> (Vec<PathBuf>, usize) {
    let mut seen = HashSet::new();
    let mut paths = 0;
    let mut files = Vec::new();
    for dir in DIRS {
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry = entry.expect("walking the host's directories");
            if !entry.file_type().is_file() || !is_elf(entry.path()) {
                continue;
            }
            paths += 1;
            let meta = entry.metadata().unwrap();
            if seen.insert((meta.dev(), meta.ino())) {
                files.push(entry.into_path());
            }
        }
    }
    (files, paths)
}

/// Compares every query on `path`; returns what disagreed and how many documented differences
/// were met.
fn compare(path: &Path, index: usize) -> (Vec<String>, usize) {
    let bytes = fs::read(path).unwrap();
    let elf = Elf::parse(&bytes);
    let mut failures = Vec::new();
    let mut documented = 0;
    for q in Query::ALL {
        let ours = library_print_file(&bytes, q);
        let theirs = patchelf_print(path, q);
        if index.is_multiple_of(CLI_SAMPLE) {
            let cli = cli_print(path, q);
            let agrees = match (&cli, &ours) {
                (Ok(a), Ok(b)) => a == b,
                (Err(err), Err(_)) => err.contains(&path.display().to_string()),
                _ => false,
            };
            if !agrees {
                failures.push(format!(
                    "{} {}: CLI {} but library {}",
                    path.display(),
                    q.flag(),
                    show(&cli),
                    show(&ours)
                ));
            }
        }
        if same(&ours, &theirs) {
            continue;
        }
        let expected = elf.as_ref().ok().and_then(|e| known_difference(e, q));
        match (expected, &theirs) {
            (Some((message, outcome)), Err(err)) if err.contains(message) && outcome == ours => {
                documented += 1;
            }
            _ => failures.push(format!(
                "{} {}: autopatch {} but patchelf {}",
                path.display(),
                q.flag(),
                show(&ours),
                show(&theirs)
            )),
        }
    }
    (failures, documented)
}

/// A copy of `path` at `out` without section headers: e_shoff, e_shnum and e_shstrndx zeroed,
/// and the table cut off when it ends the file.
fn without_section_headers(path: &Path, out: &Path) {
    let mut data = fs::read(path).unwrap();
    let shoff = u64::from_le_bytes(data[0x28..0x30].try_into().unwrap()) as usize;
    let shentsize = u16::from_le_bytes([data[0x3a], data[0x3b]]) as usize;
    let shnum = u16::from_le_bytes([data[0x3c], data[0x3d]]) as usize;
    if shoff + shentsize * shnum == data.len() {
        data.truncate(shoff);
    }
    data[0x28..0x30].fill(0);
    data[0x3c..0x40].fill(0);
    fs::write(out, data).unwrap();
}

/// Files without section headers print what patchelf prints for them with their headers.
fn compare_without_section_headers(path: &Path, stripped: &Path) -> Vec<String> {
    without_section_headers(path, stripped);
    let bytes = fs::read(stripped).unwrap();
    let mut failures = Vec::new();
    for q in Query::ALL {
        let reference = patchelf_print(path, q);
        let refused = patchelf_print(stripped, q);
        let ours = library_print_file(&bytes, q);
        let cli = cli_print(stripped, q);
        let refused_as_documented = matches!(&refused, Err(e) if e.contains("no section headers"));
        if !refused_as_documented || !same(&ours, &reference) || !same(&cli, &reference) {
            failures.push(format!(
                "{} without section headers {}: autopatch {} (CLI {}), patchelf {} and {} with them",
                path.display(),
                q.flag(),
                show(&ours),
                show(&cli),
                show(&refused),
                show(&reference)
            ));
        }
    }
    failures
}

/// A statically linked executable, so the static case is met even where the host has none.
fn static_executable(dir: &Path) -> PathBuf {
    let src = dir.join("static.c");
    fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let out = dir.join("static");
    let status = Command::new("gcc")
        .args(["-static", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running gcc (apt-get install gcc libc6-dev)");
    assert!(status.success(), "gcc -static failed");
    out
}

#[test]
fn print_queries_match_patchelf() {
    assert!(
        common::have_tool("patchelf"),
        "patchelf not in PATH (apt-get install patchelf)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (mut files, paths) = host_elf_files();
    let host_files = files.len();
    assert!(host_files > 900, "only {host_files} ELF files found");
    files.push(static_executable(tmp.path()));

    let documented = AtomicUsize::new(0);
    let failures: Vec<String> = files
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, path)| {
            let (failures, known) = compare(path, i);
            documented.fetch_add(known, Ordering::Relaxed);
            failures
        })
        .collect();

    let dynamic: Vec<&PathBuf> = files
        .iter()
        .filter(|p| {
            let bytes = fs::read(p).unwrap();
            Elf::parse(&bytes).is_ok_and(|e| e.has_dynamic() && e.is_loadable())
        })
        .step_by(NO_SHDR_SAMPLE)
        .collect();
    let shdr_failures: Vec<String> = dynamic
        .par_iter()
        .enumerate()
        .flat_map_iter(|(i, p)| {
            compare_without_section_headers(p, &tmp.path().join(format!("no-shdr-{i}")))
        })
        .collect();

    println!(
        "compared {} files ({host_files} host inodes from {paths} paths, plus a static executable) \
         x {} queries; {} documented differences; {} files also without section headers",
        files.len(),
        Query::ALL.len(),
        documented.load(Ordering::Relaxed),
        dynamic.len()
    );
    let all: Vec<String> = failures.into_iter().chain(shdr_failures).collect();
    assert!(
        all.is_empty(),
        "{} disagreements:\n{}",
        all.len(),
        all.join("\n")
    );
}
