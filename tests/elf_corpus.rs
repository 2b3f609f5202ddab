//! Every loadable dynamic ELF file of the host (/usr/bin, /usr/lib/x86_64-linux-gnu) and of a
//! real conda environment, patched with an interpreter of at least 200 characters (a real ld.so
//! copied there; only files that have one) and a run path of at least 600 characters that keeps
//! the original entries, still loads:
//! - `LONG_LD --list FILE` resolves as before: host files are listed in their own place (the
//!   patched copy bound over the original, so `$ORIGIN` means the same), and must list exactly
//!   what the original lists, except that the loader now names the new interpreter; conda files
//!   are listed inside the NixOS-like root and must resolve every library, from the environment
//!   or the store;
//! - `readelf -lSdW` shows the new values and no warning the original did not have;
//! - `strip -o` of the patched file succeeds, keeps the values and still loads the same way.

mod common;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use autopatch::elf::{Edits, Elf, ElfError, RunPathEdit, plan};
use common::elf::listing;
use rayon::prelude::*;

const HOST_DIRS: [&str; 2] = ["/usr/bin", "/usr/lib/x86_64-linux-gnu"];
const HOST_LD: &str = "/lib64/ld-linux-x86-64.so.2";
const CONDA_SPECS: [&str; 18] = [
    "zstd",
    "bzip2",
    "openssl",
    "tk",
    "libsqlite",
    "ncurses",
    "readline",
    "liblzma",
    "lz4-c",
    "libffi",
    "c-ares",
    "libuuid",
    "libnsl",
    "libxcrypt",
    "libexpat",
    "libgcc",
    "libstdcxx",
    "libgomp",
];
const INTERP_MIN: usize = 200;
const RUN_PATH_MIN: usize = 600;

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(path).is_ok_and(|mut f| f.read_exact(&mut magic).is_ok()) && &magic == b"\x7fELF"
}

fn is_loadable_dynamic(path: &Path) -> bool {
    let bytes = fs::read(path).unwrap();
    Elf::parse(&bytes).is_ok_and(|e| e.is_loadable() && e.has_dynamic() && !e.is_separate_debug())
}

/// Loadable dynamic ELF files under `dirs`, one path per inode.
fn loadable_elf_files(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for dir in dirs {
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry = entry.expect("walking a directory");
            let meta = entry.metadata().unwrap();
            if entry.file_type().is_file()
                && is_elf(entry.path())
                && seen.insert((meta.dev(), meta.ino()))
            {
                files.push(entry.into_path());
            }
        }
    }
    files.retain(|p| is_loadable_dynamic(p));
    files
}

/// A copy of the loader `ld` at a path of at least `INTERP_MIN` characters under `base`.
fn long_loader(base: &Path, ld: &Path) -> PathBuf {
    let name = ld.file_name().unwrap();
    let mut dir = base.join("interp");
    while dir.join(name).as_os_str().len() < INTERP_MIN {
        dir.push("a-long-directory-for-the-program-interpreter");
    }
    fs::create_dir_all(&dir).unwrap();
    let long = dir.join(name);
    fs::copy(ld, &long).unwrap();
    long
}

/// The original run path, then `extra`, then unused directories up to `RUN_PATH_MIN`.
fn long_run_path(original: Option<&[u8]>, extra: &[&Path]) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = original
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .into_iter()
        .collect();
    parts.extend(
        extra
            .iter()
            .map(|d| d.as_os_str().as_encoded_bytes().to_vec()),
    );
    let mut i = 0;
    while parts.join(&b':').len() < RUN_PATH_MIN {
        parts.push(format!("/opt/autopatch-corpus/an-unused-run-path-directory-{i}").into_bytes());
        i += 1;
    }
    parts.join(&b':')
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", path.display()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn relocates_itself(file: &Path) -> bool {
    Elf::parse(&fs::read(file).unwrap()).is_ok_and(|e| e.relocates_itself())
}

fn assert_run_path_refused(file: &Path) {
    let bytes = fs::read(file).unwrap();
    let elf = Elf::parse(&bytes).unwrap();
    let edits = Edits {
        run_path: Some(RunPathEdit::Set(b"/x".to_vec())),
        ..Edits::default()
    };
    match plan(&elf, &edits) {
        Err(ElfError::Refused(why)) => assert!(why.contains("relocates itself"), "{why}"),
        other => panic!("{}: a run path was not refused: {other:?}", file.display()),
    }
}

/// What a patched file must hold.
struct Patched {
    path: PathBuf,
    original_interp: Option<String>,
    interp: Option<String>,
    run_path: Vec<u8>,
}

/// Patches `src` into `out` in process; `extra` run path directories follow the original ones.
fn patch(src: &Path, out: &Path, interp: &Path, extra: &[&Path]) -> Result<Patched, String> {
    let bytes = fs::read(src).unwrap();
    let elf = Elf::parse(&bytes).map_err(|e| format!("parse: {e}"))?;
    let run_path = long_run_path(elf.run_path().map(|(_, p)| p), extra);
    let interp = elf
        .interpreter()
        .map(|_| interp.to_str().unwrap().to_string());
    let edits = Edits {
        interpreter: interp.clone().map(String::into_bytes),
        run_path: Some(RunPathEdit::Set(run_path.clone())),
        ..Edits::default()
    };
    let rewrite = plan(&elf, &edits)
        .map_err(|e| format!("plan: {e}"))?
        .ok_or("plan: nothing to change")?;
    let tmp = suffixed(out, "autopatch-tmp");
    fs::write(&tmp, rewrite.apply(&bytes)).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, out).unwrap();
    Ok(Patched {
        path: out.to_path_buf(),
        original_interp: elf.interpreter().map(text),
        interp,
        run_path,
    })
}

/// The values read back from `path` are the ones set.
fn check_values(path: &Path, want: &Patched) -> Result<(), String> {
    let bytes = fs::read(path).unwrap();
    let elf = Elf::parse(&bytes).map_err(|e| format!("{}: parse: {e}", path.display()))?;
    let interp = elf.interpreter().map(text);
    let run_path = elf.run_path().map(|(_, p)| p.to_vec());
    if interp != want.interp || run_path.as_ref() != Some(&want.run_path) {
        return Err(format!(
            "{}: reads back interpreter {interp:?}, run path {:?}",
            path.display(),
            run_path.as_deref().map(text)
        ));
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("spawning a tool")
}

fn lines(bytes: &[u8], file: &Path) -> Vec<String> {
    text(bytes)
        .replace(file.to_str().unwrap(), "FILE")
        .lines()
        .map(str::to_string)
        .collect()
}

/// Warnings and errors `readelf -lSdW` gives for `path`, and what it prints.
fn readelf(path: &Path) -> (String, Vec<String>) {
    let out = output(Command::new("readelf").arg("-lSdW").arg(path));
    (text(&out.stdout), lines(&out.stderr, path))
}

/// readelf sees the new values and warns about nothing it did not warn about before.
fn check_readelf(original: &Path, patched: &Patched) -> Result<(), String> {
    let (_, before) = readelf(original);
    let (shown, after) = readelf(&patched.path);
    let new: Vec<&String> = after.iter().filter(|w| !before.contains(w)).collect();
    if !new.is_empty() {
        return Err(format!("readelf warns anew: {new:?}"));
    }
    if let Some(i) = &patched.interp
        && !shown.contains(&format!("[Requesting program interpreter: {i}]"))
    {
        return Err("readelf does not show the new interpreter".into());
    }
    let rp = text(&patched.run_path);
    if !shown.contains(&format!("Library runpath: [{rp}]"))
        && !shown.contains(&format!("Library rpath: [{rp}]"))
    {
        return Err("readelf does not show the new run path".into());
    }
    Ok(())
}

/// `strip -o out patched`, which must warn about nothing stripping the original does not.
fn strip(original: &Path, patched: &Patched, out: &Path) -> Result<(), String> {
    let run = |input: &Path, to: &Path| {
        let o = output(Command::new("strip").arg("-o").arg(to).arg(input));
        (o.status.success(), lines(&o.stderr, input))
    };
    let (ok, warnings) = run(&patched.path, out);
    if !ok || !warnings.is_empty() {
        let (ok_before, before) = run(original, &suffixed(out, "original"));
        let new: Vec<&String> = warnings.iter().filter(|w| !before.contains(w)).collect();
        if ok != ok_before || !new.is_empty() {
            return Err(format!("strip: success {ok}, warnings {warnings:?}"));
        }
    }
    check_values(out, patched)
}

/// `ld --list at`, with `content` bound over `at` when given.
fn list_host(ld: &Path, at: &Path, content: Option<&Path>) -> (bool, Vec<String>, String) {
    let mut cmd = Command::new("bwrap");
    cmd.args(["--dev-bind", "/", "/"]);
    if let Some(c) = content {
        cmd.arg("--bind").arg(c).arg(at);
    }
    listing(&output(cmd.arg(ld).arg("--list").arg(at)))
}

/// Outcome of one host file: whether the original resolves everything on its own.
fn check_host_file(original: &Path, work: &Path, ld: &Path) -> Result<bool, String> {
    let patched = patch(original, &work.join("patched"), ld, &[])?;
    check_values(&patched.path, &patched)?;
    check_readelf(original, &patched)?;
    let stripped = work.join("stripped");
    strip(original, &patched, &stripped)?;

    let (ok, mut expected, err) = list_host(ld, original, None);
    if let Some(old) = &patched.original_interp {
        // The loader names the file's own interpreter: the new one, which is itself.
        let was = format!("{old} => {}", ld.display());
        for l in expected.iter_mut().filter(|l| **l == was) {
            *l = ld.display().to_string();
        }
    }
    for (what, file) in [("patched", &patched.path), ("stripped", &stripped)] {
        let got = list_host(ld, original, Some(file));
        if got != (ok, expected.clone(), err.clone()) {
            return Err(format!(
                "{what}: ld.so --list gives {got:?}, expected {:?}",
                (ok, &expected, &err)
            ));
        }
    }
    Ok(ok && !expected.iter().any(|l| l.ends_with("not found")))
}

#[test]
fn host_files_load_after_long_edits() {
    let start = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let ld = long_loader(tmp.path(), &fs::canonicalize(HOST_LD).unwrap());
    let dirs: Vec<&Path> = HOST_DIRS.iter().map(Path::new).collect();
    let files = loadable_elf_files(&dirs);
    assert!(
        files.len() > 900,
        "only {} loadable dynamic ELF files",
        files.len()
    );
    // The loader relocates itself, and glibc stops it at start when it has a run path.
    let (own, files): (Vec<PathBuf>, Vec<PathBuf>) =
        files.into_iter().partition(|f| relocates_itself(f));
    assert!(!own.is_empty(), "the host's loader was not among the files");
    for file in &own {
        assert_run_path_refused(file);
    }
    let results: Vec<Result<bool, String>> = files
        .par_iter()
        .enumerate()
        .map(|(i, f)| {
            let work = tmp.path().join(i.to_string());
            fs::create_dir(&work).unwrap();
            let r = check_host_file(f, &work, &ld).map_err(|e| format!("{}: {e}", f.display()));
            fs::remove_dir_all(&work).unwrap();
            r
        })
        .collect();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let unresolved_originals = results.iter().filter(|r| r == &&Ok(false)).count();
    println!(
        "host: {} loadable dynamic ELF files patched (interpreter {} chars), {} failures; \
         {unresolved_originals} of them do not resolve on their own and were checked to fail \
         the same way; {:.1}s",
        files.len(),
        ld.as_os_str().len(),
        failures.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Lists `file` inside the root with `prefixes` bound: every library resolves, from a prefix or
/// the store, and the loader names the new interpreter.
fn check_conda_listing(
    root: &common::NixRoot,
    prefixes: &[&Path],
    file: &Path,
    interp: Option<&str>,
    ld: &Path,
) -> Result<(), String> {
    let out = root
        .command(
            prefixes,
            &[],
            &[ld.as_os_str(), "--list".as_ref(), file.as_os_str()],
        )
        .output()
        .expect("running run.sh");
    let (ok, listed, err) = listing(&out);
    let from_outside = listed.iter().find(|l| match l.split_once(" => ") {
        Some((_, at)) => {
            !(prefixes.iter().any(|p| Path::new(at).starts_with(p))
                || at.starts_with("/nix/store/")
                || at.starts_with(common::DEFAULT_LIB_DIR))
        }
        None => false,
    });
    let names_interp = interp.is_none_or(|i| listed.iter().any(|l| l == i));
    if !ok || from_outside.is_some() || !names_interp {
        return Err(format!(
            "{}: ld.so --list in the root: success {ok}, {listed:?}, {err}",
            file.display()
        ));
    }
    Ok(())
}

/// Patches the conda file `file` in place, keeping its original in `pristine`.
fn patch_conda_file(
    root: &common::NixRoot,
    file: &Path,
    ld: &Path,
    pristine: &Path,
) -> Result<(PathBuf, Patched), String> {
    let bytes = fs::read(file).unwrap();
    let elf = Elf::parse(&bytes).map_err(|e| e.to_string())?;
    let mut extra = vec![root.glibc_lib.as_path()];
    if elf.needed().contains(&&b"libX11.so.6"[..]) {
        extra.push(root.x11_lib.as_path());
    }
    fs::create_dir(pristine).unwrap();
    let original = pristine.join(file.file_name().unwrap());
    fs::copy(file, &original).unwrap();
    Ok((original.clone(), patch(&original, file, ld, &extra)?))
}

fn check_conda_file(
    root: &common::NixRoot,
    prefixes: &[&Path],
    original: &Path,
    patched: &Patched,
    ld: &Path,
) -> Result<(), String> {
    check_values(&patched.path, patched)?;
    check_readelf(original, patched)?;
    let interp = patched.interp.as_deref();
    check_conda_listing(root, prefixes, &patched.path, interp, ld)?;
    let stripped = suffixed(&patched.path, "stripped");
    strip(original, patched, &stripped)?;
    check_conda_listing(root, prefixes, &stripped, interp, ld)
}

#[test]
fn conda_files_load_in_the_nixos_root_after_long_edits() {
    let start = Instant::now();
    let Some(root) = common::nixroot_or_skip() else {
        return;
    };
    let Some(env) = common::conda_env_or_skip(&CONDA_SPECS) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let copy = env.fresh_copy(tmp.path());
    let ld = long_loader(tmp.path(), &root.ld);
    let files = loadable_elf_files(&[&copy.prefix]);
    assert!(files.len() > 40, "only {} conda ELF files", files.len());
    // Every file is patched before any is loaded, as a whole environment would be.
    let pristine = tempfile::tempdir().unwrap();
    let patched: Vec<Result<(PathBuf, Patched), String>> = files
        .par_iter()
        .enumerate()
        .map(|(i, f)| patch_conda_file(&root, f, &ld, &pristine.path().join(i.to_string())))
        .collect();
    // Some run paths name the prefix the environment was installed at, which stays visible
    // (read-only use) beside the patched copy.
    let prefixes = [tmp.path(), env.root.as_path()];
    let failures: Vec<String> = files
        .par_iter()
        .zip(&patched)
        .filter_map(|(f, p)| {
            let checked = match p {
                Ok((original, p)) => check_conda_file(&root, &prefixes, original, p, &ld),
                Err(e) => Err(e.clone()),
            };
            checked.err().map(|e| format!("{}: {e}", f.display()))
        })
        .collect();
    println!(
        "conda: {} ELF files patched and loaded in the NixOS-like root, {} failures; {:.1}s",
        files.len(),
        failures.len(),
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
