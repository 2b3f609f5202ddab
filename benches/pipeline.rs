//! Micro-benchmarks of the pipeline's stages: reading ELF headers, resolving a file's needed
//! libraries, planning a prefix, writing a patched file, and opening the store index.
//!
//! The inputs are built from the host's (Debian's) programs and libraries in a temporary
//! directory: a conda-like prefix and a Nix-like store with fake hashes. The store group
//! indexes a synthetic store of 2,000 store paths, or the store at `AUTOPATCH_BENCH_STORE`
//! (benches/fix_bench.sh's W3) when set.

use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use autopatch::apply::{self, Staged};
use autopatch::elf::{self, Edits, Elf, RunPathEdit};
use autopatch::plan::{self, DirFacts, FileInfo, Settings};
use autopatch::resolve::{DefinedVersions, FileToResolve, PrefixLib, PrefixLibs, Resolver};
use autopatch::scan;
use autopatch::store::{Preferences, StoreIndex};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use globset::GlobSet;

const HOST_LIB: &str = "/lib/x86_64-linux-gnu";
const HOST_PROGRAMS: &[&str] = &[
    "/usr/bin/ls",
    "/usr/bin/cp",
    "/usr/bin/mv",
    "/usr/bin/find",
    "/usr/bin/grep",
    "/usr/bin/sort",
    "/usr/bin/tar",
    "/usr/bin/dd",
    "/usr/bin/du",
];
/// Libraries the prefix ships (found through `$ORIGIN`).
const PREFIX_LIBS: &[&str] = &["libstdc++.so.6", "libgcc_s.so.1", "libz.so.1"];
/// Libraries only the store has, as (store path label, soname).
const STORE_LIBS: &[(&str, &str)] = &[
    ("libselinux-3.4", "libselinux.so.1"),
    ("pcre2-10.42", "libpcre2-8.so.0"),
    ("libX11-1.8.4", "libX11.so.6"),
    ("libxcb-1.15", "libxcb.so.1"),
    ("libXau-1.0.9", "libXau.so.6"),
    ("libXdmcp-1.1.2", "libXdmcp.so.6"),
    ("libbsd-0.11.7", "libbsd.so.0"),
    ("libmd-1.0.4", "libmd.so.0"),
    ("acl-2.3.1", "libacl.so.1"),
];
const SYNTHETIC_STORE_PATHS: usize = 2_000;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    env: PathBuf,
    store: PathBuf,
    interpreter: PathBuf,
}

fn fake_hash(n: usize) -> String {
    const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut digits = vec![b'0'; 32];
    let mut rest = n * 7919 + 1;
    for digit in digits.iter_mut().rev() {
        *digit = NIX_BASE32[rest % 32];
        rest /= 32;
    }
    String::from_utf8(digits).unwrap()
}

fn copy_if_present(from: &Path, to: &Path) -> bool {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    fs::copy(from, to).is_ok()
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let env = dir.join("env");
        fs::create_dir_all(env.join("conda-meta")).unwrap();
        for program in HOST_PROGRAMS {
            let p = Path::new(program);
            copy_if_present(p, &env.join("bin").join(p.file_name().unwrap()));
        }
        for lib in PREFIX_LIBS {
            copy_if_present(&Path::new(HOST_LIB).join(lib), &env.join("lib").join(lib));
        }
        let store = dir.join("store");
        let glibc = store.join(format!("{}-glibc-2.36", fake_hash(0)));
        for lib in ["ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6"] {
            copy_if_present(&Path::new(HOST_LIB).join(lib), &glibc.join("lib").join(lib));
        }
        for (i, (label, soname)) in STORE_LIBS.iter().enumerate() {
            let lib = store
                .join(format!("{}-{label}", fake_hash(i + 1)))
                .join("lib");
            copy_if_present(&Path::new(HOST_LIB).join(soname), &lib.join(soname));
        }
        Fixture {
            _tmp: tmp,
            interpreter: glibc.join("lib/ld-linux-x86-64.so.2"),
            dir,
            env,
            store,
        }
    }

    /// A store like nixpkgs' in miniature: most store paths hold no library; three in ten hold
    /// one or two (hard links of the fixture's, under their sonames).
    fn synthetic_store(&self) -> PathBuf {
        let store = self.dir.join("synthetic-store");
        let libs: Vec<PathBuf> = fs::read_dir(self.env.join("lib"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        for i in 0..SYNTHETIC_STORE_PATHS {
            let path = store.join(format!("{}-pkg{i}-1.{}", fake_hash(i), i % 7));
            fs::create_dir_all(path.join("share/doc")).unwrap();
            fs::write(path.join("share/doc/README"), format!("{i}\n")).unwrap();
            if i % 10 < 3 {
                fs::create_dir_all(path.join("lib")).unwrap();
                for lib in libs.iter().skip(i % libs.len()).take(2) {
                    fs::hard_link(lib, path.join("lib").join(lib.file_name().unwrap())).unwrap();
                }
            }
        }
        store
    }
}

fn host_ready() -> bool {
    Path::new(HOST_LIB).join("libstdc++.so.6").is_file() && Path::new("/usr/bin/ls").is_file()
}

fn read(c: &mut Criterion, fx: &Fixture) {
    let big = fx.env.join("lib/libstdc++.so.6");
    let bytes = fs::read(&big).unwrap();
    let exe = fx.env.join("bin/ls");
    let mut g = c.benchmark_group("read");
    g.bench_function("Elf::parse libstdc++ (in memory)", |b| {
        b.iter(|| Elf::parse(black_box(&bytes)).unwrap().needed().len())
    });
    g.bench_function("FileInfo::read ls (open, map, parse)", |b| {
        b.iter(|| FileInfo::read(black_box(&exe)).unwrap())
    });
    g.finish();
}

fn resolve(c: &mut Criterion, fx: &Fixture) {
    let index = StoreIndex::open(&fx.store, &fx.dir.join("cache")).unwrap();
    let preferences = Preferences::default();
    let ignore = GlobSet::empty();
    let depends = |_: &Path, _: &str| Vec::new();
    let resolver = Resolver {
        store: Some(&index),
        preferences: &preferences,
        ignore_missing: &ignore,
        depends: &depends,
        defined_versions: DefinedVersions::default(),
    };
    let mut libs = PrefixLibs::new(fx.env.clone());
    for lib in PREFIX_LIBS {
        libs.add(
            lib.to_string(),
            PrefixLib {
                dir: fx.env.join("lib"),
                machine: elf::EM_X86_64,
                class: elf::Class::Elf64,
                owner: None,
            },
        );
    }
    let mut g = c.benchmark_group("resolve");
    for name in ["bin/ls", "lib/libstdc++.so.6"] {
        let path = fx.env.join(name);
        let info = FileInfo::read(&path).unwrap();
        let file = FileToResolve {
            path: &path,
            machine: info.machine,
            class: info.class,
            needed: &info.needed,
            run_path: info.run_path.as_deref(),
            owner: None,
            version_needs: &info.version_needs,
        };
        g.bench_function(name, |b| {
            b.iter(|| resolver.resolve(black_box(&file), &libs))
        });
    }
    g.finish();
}

fn plan(c: &mut Criterion, fx: &Fixture) {
    let index = StoreIndex::open(&fx.store, &fx.dir.join("cache")).unwrap();
    let preferences = Preferences::default();
    let ignore = GlobSet::empty();
    let settings = Settings {
        interpreter: Some(fx.interpreter.clone()),
        store: Some(&index),
        preferences: &preferences,
        ignore_missing: &ignore,
        allow_setuid: false,
    };
    let roots = vec![fx.env.clone()];
    let scanned = scan::scan(&roots);
    let facts = DirFacts::of_scan(&roots, &scanned);
    let files = scanned.elf_inodes.len();
    let mut g = c.benchmark_group("plan");
    g.bench_function(format!("scan a prefix of {files} ELF files"), |b| {
        b.iter(|| scan::scan(black_box(&roots)).elf_inodes.len())
    });
    g.bench_function(format!("plan a prefix of {files} ELF files"), |b| {
        b.iter(|| plan::plan(black_box(&scanned), &facts, &settings).len())
    });
    g.finish();
}

fn write(c: &mut Criterion, fx: &Fixture) {
    let source = fx.env.join("bin/ls");
    let bytes = fs::read(&source).unwrap();
    let work = fx.dir.join("write");
    fs::create_dir_all(&work).unwrap();
    let target = work.join("ls");
    // A new interpreter and run path longer than the old ones: the file grows.
    let edits = Edits {
        interpreter: Some(fx.interpreter.as_os_str().as_encoded_bytes().to_vec()),
        run_path: Some(RunPathEdit::Set(
            format!("{}/lib", fx.store.join(fake_hash(1)).display()).into_bytes(),
        )),
        ..Edits::default()
    };
    let no_journal = |_: &Staged| Ok(());
    let mut g = c.benchmark_group("write");
    g.bench_function("elf::plan growth of ls (in memory)", |b| {
        b.iter(|| {
            let parsed = Elf::parse(black_box(&bytes)).unwrap();
            elf::plan(&parsed, &edits).unwrap().unwrap().len
        })
    });
    g.bench_function("patch_inode growth of ls (temp file, rename)", |b| {
        b.iter_batched(
            || fs::copy(&source, &target).unwrap(),
            |_| {
                apply::patch_inode(std::slice::from_ref(&target), &edits, false, &no_journal)
                    .unwrap()
                    .unwrap()
                    .len
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("start_patch growth of ls in place (steps, no flush)", |b| {
        b.iter_batched(
            || fs::copy(&source, &target).unwrap(),
            |_| {
                let names = std::slice::from_ref(&target);
                match apply::start_patch(names, &edits, false, &no_journal).unwrap() {
                    apply::Started::InPlace(job) => {
                        let done = apply::complete_in_place(vec![((), job)], &|| Ok(()));
                        done[0].1.as_ref().unwrap().len
                    }
                    apply::Started::Done(_) => panic!("ls was not grown in place"),
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function(
        "patch_inode growth of ls, with SHA-256 for conda-meta",
        |b| {
            b.iter_batched(
                || fs::copy(&source, &target).unwrap(),
                |_| {
                    apply::patch_inode(std::slice::from_ref(&target), &edits, true, &no_journal)
                        .unwrap()
                        .unwrap()
                        .len
                },
                BatchSize::PerIteration,
            )
        },
    );
    g.finish();
}

fn store(c: &mut Criterion, fx: &Fixture) {
    let store = std::env::var_os("AUTOPATCH_BENCH_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| fx.synthetic_store());
    let paths = fs::read_dir(&store).map(|d| d.count()).unwrap_or(0);
    let cache = fx.dir.join("store-cache");
    let mut g = c.benchmark_group("store");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function(format!("StoreIndex::open cold, {paths} store paths"), |b| {
        b.iter_batched(
            || {
                let _ = fs::remove_dir_all(&cache);
            },
            |_| StoreIndex::open(&store, &cache).unwrap(),
            BatchSize::PerIteration,
        )
    });
    StoreIndex::open(&store, &cache).unwrap();
    g.bench_function(format!("StoreIndex::open warm, {paths} store paths"), |b| {
        b.iter(|| StoreIndex::open(black_box(&store), &cache).unwrap())
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    if !host_ready() {
        eprintln!("pipeline: the host's programs and libraries are not where expected; skipped");
        return;
    }
    let fx = Fixture::new();
    read(c, &fx);
    resolve(c, &fx);
    plan(c, &fx);
    write(c, &fx);
    store(c, &fx);
}

criterion_group! {
    name = pipeline;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(pipeline);
