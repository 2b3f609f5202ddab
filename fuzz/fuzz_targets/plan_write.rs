//! Runs the pipeline of `autopatch fix` (scan, planning with resolution, the on-disk write with
//! its journal) on a mutated real binary placed in a small prefix beside a real library it may
//! need, with a lib dir of the host's libraries and a store glibc that `fuzz/seeds.sh` lays out
//! in `fuzz/world/`. Checks that a file the pipeline leaves alone is byte for byte the input;
//! that every written file parses and reads back the planned interpreter and run path; that a
//! file which loaded (loader simulation, with its libraries on `LD_LIBRARY_PATH`) still loads
//! on its own after the fix; and that undo gives back every original.

#![no_main]

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use autopatch::check::{Loader, LoaderConfig};
use autopatch::elf::{Class, Elf};
use autopatch::fix::{FileResult, FixOptions, fix};
use autopatch::journal::{self, UndoOptions};
use autopatch::plan::{Action, Settings};
use autopatch::store::Preferences;
use globset::GlobSet;
use libfuzzer_sys::fuzz_target;

/// What `fuzz/seeds.sh` lays out for this target.
struct World {
    /// Holds the store glibc: its interpreter's directory is the loader's default.
    store: PathBuf,
    interpreter: PathBuf,
    /// The machine and class of the files the interpreter can load.
    kind: (u16, Class),
    /// The host's libraries other than glibc's: the fix's `--lib-dir`.
    lib_dir: PathBuf,
    /// Libraries copied into every prefix's `lib/`, with their content.
    prefix_libs: Vec<(String, Vec<u8>)>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("world");
        let store = root.join("store");
        let interpreter = store_interpreter(&store);
        let ld = fs::read(&interpreter).unwrap();
        let ld = Elf::parse(&ld).expect("the world's interpreter parses");
        World {
            store,
            kind: (ld.machine, ld.class),
            interpreter,
            lib_dir: root.join("lib-dir"),
            prefix_libs: contents(&root.join("prefix-lib")),
        }
    })
}

/// The interpreter of the glibc in `store`: `<store>/<hash>-glibc-*/lib/ld-*`.
fn store_interpreter(store: &Path) -> PathBuf {
    let is_loader = |p: &PathBuf| {
        p.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b"ld-"))
    };
    entries(store)
        .into_iter()
        .flat_map(|glibc| entries(&glibc.join("lib")))
        .find(is_loader)
        .unwrap_or_else(|| panic!("{}: no glibc; run fuzz/seeds.sh", store.display()))
}

/// The files in `dir`, by name, with their content.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    entries(dir)
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect()
}

/// The entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run fuzz/seeds.sh", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// A prefix on a memory filesystem (the fix flushes the filesystems it writes to): `lib/` with
/// the world's prefix libraries, and `data` as a program in `bin/` when it names an
/// interpreter, else as a library in `lib/`. Returns the prefix and the fuzzed file's path.
fn prefix_with(data: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let prefix = tempfile::Builder::new()
        .prefix("autopatch-fuzz-")
        .tempdir_in(base)
        .unwrap();
    let lib = prefix.path().join("lib");
    fs::create_dir_all(prefix.path().join("bin")).unwrap();
    fs::create_dir_all(&lib).unwrap();
    for (name, bytes) in &world().prefix_libs {
        fs::write(lib.join(name), bytes).unwrap();
    }
    let is_program = Elf::parse(data).map_or(true, |elf| elf.interpreter().is_some());
    let file = if is_program {
        prefix.path().join("bin/prog")
    } else {
        lib.join("libfuzzed.so")
    };
    fs::write(&file, data).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
    (prefix, file)
}

/// Whether the loader simulation finds everything `file` needs. `before`: run by the store's
/// interpreter with the prefix's and the lib dir's libraries on `LD_LIBRARY_PATH`, as it may
/// have been run before the fix; else as it is, with its own interpreter and nothing set.
fn loads(file: &Path, prefix: &Path, before: bool) -> bool {
    let w = world();
    let config = LoaderConfig {
        interpreter: before.then(|| w.interpreter.clone()),
        env_ld_library_path: before.then(|| vec![prefix.join("lib"), w.lib_dir.clone()]),
        store_dir: w.store.clone(),
        library_interpreter: Some(w.interpreter.clone()),
        ..LoaderConfig::default()
    };
    Loader::new(config).check_file(file).ok
}

/// Runs the fix as `autopatch fix --interpreter I --lib-dir L --no-verify --no-update-records`
/// with no store.
fn run_fix(prefix: &Path) -> Vec<FileResult> {
    let w = world();
    let preferences = Preferences {
        lib_dirs: vec![w.lib_dir.clone()],
        ..Preferences::default()
    };
    let options = FixOptions {
        settings: Settings {
            interpreter: Some(w.interpreter.clone()),
            store: None,
            preferences: &preferences,
            ignore_missing: &GlobSet::empty(),
            allow_setuid: false,
        },
        dry_run: false,
        update_records: false,
        verify: false,
        on_planned: &|_| {},
        on_file_done: &|| {},
    };
    fix(&[prefix.to_path_buf()], &options)
        .expect("the fix runs")
        .files
}

/// Every name of a written file parses and reads back what the plan set, or what it had; an
/// interpreter is set only on files it can load.
fn check_written(result: &FileResult) {
    let Some(patched) = &result.patched else {
        return;
    };
    let plan = &result.plan;
    let lossy = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
    for name in &patched.names {
        let bytes = fs::read(name).unwrap();
        let elf = Elf::parse(&bytes).expect("the written file parses");
        let interpreter = plan
            .new_interpreter
            .as_ref()
            .or(plan.old_interpreter.as_ref());
        assert_eq!(lossy(elf.interpreter()).as_ref(), interpreter);
        if plan.new_interpreter.is_some() {
            assert_eq!(
                (elf.machine, elf.class),
                world().kind,
                "an interpreter of another kind"
            );
        }
        let run_path = plan.new_run_path.as_ref().or(plan.old_run_path.as_ref());
        assert_eq!(lossy(elf.run_path().map(|(_, p)| p)).as_ref(), run_path);
    }
}

/// Whether the pipeline meant the file to load afterwards: planned to patch and written, or
/// already fine.
fn meant_to_load(result: &FileResult) -> bool {
    result.error.is_none() && matches!(result.plan.action, Action::Patch | Action::AlreadyFine)
}

/// Undo puts back the fuzzed file as `data` and the prefix's libraries as they were.
fn check_undo(prefix: &Path, file: &Path, data: &[u8]) {
    let options = UndoOptions {
        update_records: false,
    };
    let undone = journal::undo(prefix, &options).expect("undo runs");
    assert!(undone.is_success(), "undo: {undone:?}");
    assert_eq!(fs::read(file).unwrap(), data, "undo gives the input back");
    for (name, bytes) in &world().prefix_libs {
        let restored = fs::read(prefix.join("lib").join(name)).unwrap();
        assert_eq!(&restored, bytes, "undo gives {name} back");
    }
}

fuzz_target!(|data: &[u8]| {
    if !data.starts_with(b"\x7fELF") {
        return;
    }
    let (prefix, file) = prefix_with(data);
    let loaded = loads(&file, prefix.path(), true);
    let results = run_fix(prefix.path());
    results.iter().for_each(check_written);
    let ours = results
        .iter()
        .find(|r| r.plan.path == file)
        .expect("the fuzzed file is scanned");
    if !meant_to_load(ours) {
        assert_eq!(fs::read(&file).unwrap(), data, "left alone, yet changed");
    } else if loaded {
        let after = loads(&file, prefix.path(), false);
        assert!(after, "loaded before the fix, not after");
    }
    check_undo(prefix.path(), &file, data);
});
