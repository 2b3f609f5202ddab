//! Editing the interpreter and run path of a ~100 MB shared library: an edit that fits in place
//! and one that grows the file, done by the library in process, by the `autopatch elf` command,
//! and by patchelf for comparison. Every iteration starts from a fresh copy (not timed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use autopatch::elf::{Edits, Elf, RunPathEdit, plan};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};

const ORIGINAL_INTERP: &str = "/lib64/ld-linux-x86-64.so.2";
const ORIGINAL_RPATH: &str = "/opt/original/run/path/of/a/library/that/is/long/enough";

/// The library, built once and cached under the target directory: 100 MiB of read-only data,
/// with a run path and, as libc.so.6 has, an interpreter (a `.interp` section) to edit.
fn big_library() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-elf");
    let lib = dir.join("big.so");
    if lib.exists() {
        return lib;
    }
    fs::create_dir_all(&dir).unwrap();
    let src = dir.join("big.c");
    fs::write(
        &src,
        format!(
            "const char interp[] __attribute__((section(\".interp\"))) = \"{ORIGINAL_INTERP}\";\n\
             const char big[100 << 20] = {{1}};\nconst char *data(void) {{ return big; }}\n"
        ),
    )
    .unwrap();
    let tmp = dir.join(format!("big.so.{}", std::process::id()));
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&tmp)
        .arg(&src)
        .arg(format!("-Wl,-rpath,{ORIGINAL_RPATH}"))
        .status()
        .expect("running gcc");
    assert!(status.success(), "gcc failed");
    fs::rename(&tmp, &lib).unwrap();
    lib
}

/// Interpreter and run path for an edit that fits in place, and for one that grows.
fn values(grow: bool) -> (String, String) {
    if grow {
        (
            format!(
                "/nix/store/{}-glibc-2.40/lib/ld-linux-x86-64.so.2",
                "g".repeat(200)
            ),
            format!("/nix/store/{}-env/lib", "r".repeat(700)),
        )
    } else {
        (
            "/nix/store/glibc/lib/ld.so".into(),
            "/nix/store/env/lib".into(),
        )
    }
}

/// Edits `file` in process, as `autopatch elf` does: parse, plan, write beside and rename.
fn edit_in_process(file: &Path, interp: &str, rpath: &str) {
    let f = fs::File::open(file).unwrap();
    let meta = f.metadata().unwrap();
    // SAFETY: nothing else modifies the file while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let elf = Elf::parse(&map).unwrap();
    let edits = Edits {
        interpreter: Some(interp.as_bytes().to_vec()),
        run_path: Some(RunPathEdit::Set(rpath.as_bytes().to_vec())),
        ..Edits::default()
    };
    let rewrite = plan(&elf, &edits).unwrap().expect("a change");
    autopatch::apply::replace(file, &f, &map, &rewrite, &meta).unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawning");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[derive(Clone, Copy)]
enum Tool {
    Library,
    Autopatch,
    Patchelf,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Library => "library",
            Tool::Autopatch => "autopatch",
            Tool::Patchelf => "patchelf",
        }
    }

    fn edit(self, file: &Path, interp: &str, rpath: &str) {
        let args = ["--set-interpreter", interp, "--set-rpath", rpath];
        match self {
            Tool::Library => edit_in_process(file, interp, rpath),
            Tool::Autopatch => run(Command::new(env!("CARGO_BIN_EXE_autopatch"))
                .arg("elf")
                .args(args)
                .arg(file)),
            Tool::Patchelf => run(Command::new("patchelf").args(args).arg(file)),
        }
    }
}

fn bench(c: &mut Criterion) {
    let lib = big_library();
    let work = lib.with_file_name("work.so");
    let mut group = c.benchmark_group("elf-100MB");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    for grow in [false, true] {
        let (interp, rpath) = values(grow);
        let case = if grow { "grows" } else { "fits" };
        for tool in [Tool::Library, Tool::Autopatch, Tool::Patchelf] {
            group.bench_function(format!("{}/{case}", tool.name()), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        fs::copy(&lib, &work).unwrap();
                        let start = Instant::now();
                        tool.edit(&work, &interp, &rpath);
                        total += start.elapsed();
                    }
                    total
                });
            });
        }
    }
    group.finish();
    let _ = fs::remove_file(&work);
}

criterion_group!(benches, bench);
criterion_main!(benches);
