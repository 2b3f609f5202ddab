//! Shared helpers for integration tests: a NixOS-like root to run binaries in
//! (testdata/nixroot) and real conda environments installed offline from the
//! fixture channel (testdata/conda).
//!
//! Tests that cannot run without these should call `require_nixroot()` /
//! `require_conda_env()` (panic when unavailable), or, to allow a skip on
//! machines without the tools, `nixroot_or_skip()` / `conda_env_or_skip()`,
//! which return `None` only when `AUTOPATCH_ALLOW_SKIP=1` and panic otherwise:
//!
//! ```ignore
//! let Some(root) = common::nixroot_or_skip() else { return };
//! ```
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

pub mod elf;

/// Directory the host ld.so searches by default; run.sh binds the store glibc
/// there, so the loader reports libraries found by default under this path.
pub const DEFAULT_LIB_DIR: &str = "/lib/x86_64-linux-gnu";

/// The crate's root directory (where Cargo.toml is).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory (caches live there, outside the source tree).
pub fn target_dir() -> PathBuf {
    if let Some(tmp) = option_env!("CARGO_TARGET_TMPDIR")
        && let Some(parent) = Path::new(tmp).parent()
    {
        return parent.to_path_buf();
    }
    project_root().join("target")
}

/// `AUTOPATCH_ALLOW_SKIP=1` lets tests skip when the harness's tools or
/// fixtures are missing; without it they fail (as they must in CI).
pub fn allow_skip() -> bool {
    std::env::var("AUTOPATCH_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// `None` when AUTOPATCH_ALLOW_SKIP=1 (saying why), else a panic: for tests whose other
/// prerequisites (e.g. a network download) are missing.
pub fn unavailable<T>(what: &str, reason: &str) -> Option<T> {
    skip_or_panic(what, reason)
}

/// Skip (return `None`) if allowed, else panic with `reason`.
fn skip_or_panic<T>(what: &str, reason: &str) -> Option<T> {
    if allow_skip() {
        eprintln!("SKIPPED ({what} unavailable, AUTOPATCH_ALLOW_SKIP=1): {reason}");
        None
    } else {
        panic!(
            "{what} unavailable: {reason}\n(set AUTOPATCH_ALLOW_SKIP=1 to skip such tests instead)"
        );
    }
}

/// The folder holding the fixture channels: `$AUTOPATCH_FIXTURES`, else
/// `../shared/fixtures` beside the project. `None` when it does not exist.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = fixtures_candidate();
    if dir.is_dir() {
        Some(fs::canonicalize(&dir).unwrap_or(dir))
    } else {
        None
    }
}

fn fixtures_candidate() -> PathBuf {
    match std::env::var_os("AUTOPATCH_FIXTURES") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => project_root().join("..").join("shared").join("fixtures"),
    }
}

/// Whether `name` is an executable in `$PATH`.
pub fn have_tool(name: &str) -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// Run `patchelf ARGS... FILE` on the host, panicking on failure.
pub fn patchelf(args: &[&str], file: &Path) {
    let out = Command::new("patchelf")
        .args(args)
        .arg(file)
        .output()
        .expect("running patchelf (apt-get install patchelf)");
    assert!(
        out.status.success(),
        "patchelf {args:?} {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// PT_INTERP of a 64-bit little-endian ELF file, if it has one.
pub fn elf_interpreter(path: &Path) -> Option<String> {
    let mut data = Vec::new();
    fs::File::open(path).ok()?.read_to_end(&mut data).ok()?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16_at(0x36)? as usize;
    let phnum = u16_at(0x38)? as usize;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? == 3 {
            let off = u64_at(ph + 8)? as usize;
            let size = u64_at(ph + 32)? as usize;
            let raw = data.get(off..off + size)?;
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            return Some(String::from_utf8_lossy(&raw[..end]).into_owned());
        }
    }
    None
}

// ---------------------------------------------------------------------------
// NixOS-like root
// ---------------------------------------------------------------------------

/// Store paths made by testdata/nixroot/build.sh (copies of the host's
/// libraries in the real /nix/store, linked like Nix builds).
#[derive(Clone, Debug)]
pub struct NixRoot {
    /// Where env.sh and the GC roots are (`target/nixroot`).
    pub dir: PathBuf,
    /// `/nix/store/...-glibc-X/lib`
    pub glibc_lib: PathBuf,
    /// `/nix/store/...-glibc-X/lib/ld-linux-x86-64.so.2`
    pub ld: PathBuf,
    /// `/nix/store/...-gcc-X-lib/lib` (libstdc++.so.6, libgcc_s.so.1)
    pub gcc_lib: PathBuf,
    /// `/nix/store/...-libX11-X/lib` (its deps are found via its RUNPATH)
    pub x11_lib: PathBuf,
    /// `/nix/store/...-zlib-X/lib`
    pub zlib_lib: PathBuf,
    /// `/nix/store/...-libselinux-X/lib` (the host's ls needs it)
    pub libselinux_lib: PathBuf,
    /// `/nix/store/...-dash-X/bin/sh`
    pub sh: PathBuf,
    /// `/nix/store/...-coreutils-X/bin`
    pub coreutils_bin: PathBuf,
    /// PATH inside the root.
    pub path: String,
    /// Every store path built, and every `lib` dir among them.
    pub store_paths: Vec<PathBuf>,
    pub lib_dirs: Vec<PathBuf>,
}

static NIXROOT: OnceLock<Result<NixRoot, String>> = OnceLock::new();

/// The NixOS-like root, built once per test process into `target/nixroot`
/// (a no-op when already built). `None`, with the reason on stderr, when
/// nix-store, bwrap or patchelf is missing or bwrap cannot make a sandbox.
pub fn nixroot() -> Option<NixRoot> {
    match NIXROOT.get_or_init(build_nixroot) {
        Ok(r) => Some(r.clone()),
        Err(why) => {
            eprintln!("nixroot unavailable: {why}");
            None
        }
    }
}

/// The NixOS-like root; panics (with how to fix it) when unavailable.
pub fn require_nixroot() -> NixRoot {
    match NIXROOT.get_or_init(build_nixroot) {
        Ok(r) => r.clone(),
        Err(why) => panic!(
            "nixroot unavailable: {why}\n(tests may skip instead via nixroot_or_skip() with AUTOPATCH_ALLOW_SKIP=1)"
        ),
    }
}

/// The NixOS-like root, or `None` when unavailable and AUTOPATCH_ALLOW_SKIP=1;
/// panics when unavailable otherwise.
pub fn nixroot_or_skip() -> Option<NixRoot> {
    match NIXROOT.get_or_init(build_nixroot) {
        Ok(r) => Some(r.clone()),
        Err(why) => skip_or_panic("nixroot", why),
    }
}

fn build_nixroot() -> Result<NixRoot, String> {
    let missing: Vec<&str> = ["nix-store", "bwrap", "patchelf", "readelf"]
        .into_iter()
        .filter(|t| !have_tool(t))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} not in PATH (apt-get install -y nix-bin bubblewrap patchelf binutils)",
            missing.join(", ")
        ));
    }
    let dir = target_dir().join("nixroot");
    let script = project_root().join("testdata/nixroot/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(77) => return Err(stderr.trim().to_string()),
        _ => panic!(
            "{} {} failed ({}):\n{stderr}",
            script.display(),
            dir.display(),
            out.status
        ),
    }
    let vars = parse_env_sh(&dir.join("env.sh"))?;
    let get = |k: &str| {
        vars.get(k)
            .cloned()
            .ok_or_else(|| format!("{k} missing from {}", dir.join("env.sh").display()))
    };
    let split = |k: &str, sep: char| -> Result<Vec<PathBuf>, String> {
        Ok(get(k)?
            .split(sep)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect())
    };
    let root = NixRoot {
        glibc_lib: get("NIXROOT_GLIBC")?.into(),
        ld: get("NIXROOT_LD")?.into(),
        gcc_lib: get("NIXROOT_GCCLIB")?.into(),
        x11_lib: get("NIXROOT_X11")?.into(),
        zlib_lib: get("NIXROOT_ZLIB")?.into(),
        libselinux_lib: get("NIXROOT_LIBSELINUX")?.into(),
        sh: get("NIXROOT_SH")?.into(),
        coreutils_bin: get("NIXROOT_COREUTILS")?.into(),
        path: get("NIXROOT_PATH")?,
        store_paths: split("NIXROOT_STORE_PATHS", ' ')?,
        lib_dirs: split("NIXROOT_LIBDIRS", ':')?,
        dir,
    };
    // bwrap can be present yet unable to sandbox (no user namespaces, seccomp).
    let probe = root.run(
        Path::new("/tmp"),
        &[root.sh.to_str().unwrap(), "-c", "exit 0"],
    );
    if !probe.status.success() {
        return Err(format!(
            "bwrap cannot run the store shell: {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        ));
    }
    Ok(root)
}

/// Read the `export K='V'` lines build.sh writes.
fn parse_env_sh(path: &Path) -> Result<HashMap<String, String>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut vars = HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("export ") else {
            continue;
        };
        let Some((k, v)) = rest.split_once('=') else {
            continue;
        };
        let v = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(v);
        vars.insert(k.to_string(), v.to_string());
    }
    Ok(vars)
}

/// What the store's loader made of a file inside the root.
#[derive(Clone, Debug, Default)]
pub struct LddResult {
    /// Every library and needed version found, and the file's interpreter
    /// (if any) exists inside the root.
    pub ok: bool,
    /// Sonames the loader could not find (`libfoo.so.1 => not found`).
    pub not_found: Vec<String>,
    /// `version `V' not found (required by X)` messages.
    pub missing_versions: Vec<String>,
    /// Libraries found: soname (or path as listed) and where. Paths in
    /// `DEFAULT_LIB_DIR` are reported as the store glibc's lib dir they are.
    pub libs: Vec<(String, PathBuf)>,
    /// PT_INTERP of the file and whether it exists inside the root.
    pub interpreter: Option<String>,
    pub interpreter_ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl LddResult {
    /// Where the loader found `soname`.
    pub fn resolved(&self, soname: &str) -> Option<&Path> {
        self.libs
            .iter()
            .find(|(n, _)| n == soname)
            .map(|(_, p)| p.as_path())
    }
}

impl fmt::Display for LddResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ok={} not_found={:?} missing_versions={:?} interpreter={:?} (ok={})",
            self.ok, self.not_found, self.missing_versions, self.interpreter, self.interpreter_ok
        )?;
        write!(f, "--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

impl NixRoot {
    fn run_script() -> PathBuf {
        project_root().join("testdata/nixroot/run.sh")
    }

    /// A command running `argv` in the root with `prefixes` bound read-write
    /// (the first is the working directory) and `env` set (nothing else from
    /// the host environment passes through).
    pub fn command<S: AsRef<OsStr>>(
        &self,
        prefixes: &[&Path],
        env: &[(&str, &str)],
        argv: &[S],
    ) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(Self::run_script()).env("NIXROOT_DIR", &self.dir);
        for (k, v) in env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.args(prefixes).arg("--").args(argv);
        cmd
    }

    /// Run `argv` in the root with `prefix` bound read-write.
    pub fn run<S: AsRef<OsStr>>(&self, prefix: &Path, argv: &[S]) -> Output {
        self.command(&[prefix], &[], argv)
            .output()
            .expect("running run.sh")
    }

    /// Let the store loader resolve `file` inside the root (as ldd does),
    /// with `prefix` bound read-write.
    pub fn ldd(&self, prefix: &Path, file: &Path) -> LddResult {
        self.ldd_in(&[prefix], file)
    }

    /// `ldd` with several prefixes bound.
    pub fn ldd_in(&self, prefixes: &[&Path], file: &Path) -> LddResult {
        let out = Command::new("bash")
            .arg(Self::run_script())
            .env("NIXROOT_DIR", &self.dir)
            .arg("--ldd")
            .args(prefixes)
            .arg("--")
            .arg(file)
            .output()
            .expect("running run.sh --ldd");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut r = LddResult {
            stdout,
            stderr,
            ..Default::default()
        };
        for line in r.stdout.lines() {
            let line = line.trim();
            if let Some((name, rest)) = line.split_once(" => ") {
                if rest.trim() == "not found" {
                    r.not_found.push(name.to_string());
                } else {
                    let path = rest.split(" (0x").next().unwrap_or(rest).trim();
                    r.libs
                        .push((name.to_string(), self.host_view(Path::new(path))));
                }
            } else if let Some(path) = line.split(" (0x").next().filter(|p| p.starts_with('/')) {
                r.libs
                    .push((path.to_string(), self.host_view(Path::new(path))));
            }
        }
        for line in r.stderr.lines() {
            if let Some(i) = line.find("version `") {
                r.missing_versions.push(line[i..].to_string());
            }
        }
        r.interpreter = elf_interpreter(file);
        r.interpreter_ok = match &r.interpreter {
            None => true,
            Some(i) => {
                let p = Path::new(i);
                let visible =
                    p.starts_with("/nix/") || prefixes.iter().any(|pre| p.starts_with(pre));
                visible && p.exists()
            }
        };
        let loader_error = r.stderr.contains("error while loading")
            || r.stderr.contains("not a dynamic executable");
        r.ok = out.status.success()
            && !loader_error
            && r.not_found.is_empty()
            && r.missing_versions.is_empty()
            && r.interpreter_ok;
        r
    }

    /// A variable of the root's env.sh, `None` when unset or empty.
    pub fn env_var(&self, key: &str) -> Option<String> {
        parse_env_sh(&self.dir.join("env.sh"))
            .ok()?
            .remove(key)
            .filter(|v| !v.is_empty())
    }

    /// `/nix/store/...-python3-X/bin/python3`: a CPython in the store, its modules linked
    /// against store libraries (build.sh copies pyenv's 3.11, or `$NIXROOT_PYTHON_SRC`).
    /// `None` when the host had none to copy.
    pub fn python(&self) -> Option<PathBuf> {
        self.env_var("NIXROOT_PYTHON").map(PathBuf::from)
    }

    /// `python()`, or `None` when there is none and AUTOPATCH_ALLOW_SKIP=1; panics when there
    /// is none otherwise.
    pub fn python_or_skip(&self) -> Option<PathBuf> {
        match self.python() {
            Some(p) => Some(p),
            None => skip_or_panic(
                "store python",
                "testdata/nixroot/build.sh found no CPython to copy: install pyenv's 3.11 \
                 (built with --enable-shared) or set NIXROOT_PYTHON_SRC to such a prefix",
            ),
        }
    }

    /// Map a path as seen inside the root to the host path it is bound from.
    fn host_view(&self, p: &Path) -> PathBuf {
        match p.strip_prefix(DEFAULT_LIB_DIR) {
            Ok(rest) => self.glibc_lib.join(rest),
            Err(_) => p.to_path_buf(),
        }
    }
}

// ---------------------------------------------------------------------------
// Conda environments
// ---------------------------------------------------------------------------

/// A conda environment installed by testdata/conda/install_env.py:
/// `root/env` (the prefix) and `root/pkgs` (the package cache its files are
/// hard-linked from). Cached ones are shared: call `fresh_copy` before
/// modifying. Text files inside embed the prefix they were installed at.
#[derive(Clone, Debug)]
pub struct CondaEnv {
    pub root: PathBuf,
    pub prefix: PathBuf,
    pub pkgs: PathBuf,
}

impl CondaEnv {
    fn at(root: PathBuf) -> CondaEnv {
        CondaEnv {
            prefix: root.join("env"),
            pkgs: root.join("pkgs"),
            root,
        }
    }

    /// Copy the whole root (env and pkgs together, so hard links between them
    /// are kept) to `dest` (created, or an existing empty dir).
    pub fn fresh_copy(&self, dest: &Path) -> CondaEnv {
        let out = Command::new("cp")
            .arg("-a")
            .arg(self.root.join("."))
            .arg(dest)
            .output()
            .expect("running cp");
        assert!(
            out.status.success(),
            "cp -a {} {}: {}",
            self.root.display(),
            dest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = fs::remove_file(dest.join(COMPLETE_MARKER));
        CondaEnv::at(dest.to_path_buf())
    }

    /// The `conda-meta/*.json` records.
    pub fn records(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(self.prefix.join("conda-meta"))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

const COMPLETE_MARKER: &str = ".complete";
static CONDA_LOCK: Mutex<()> = Mutex::new(());

/// 64-bit FNV-1a, stable across Rust versions (unlike DefaultHasher).
fn fnv64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// A conda env with `specs` installed from the fixture channel, cached under
/// `target/conda-envs/` keyed by the specs, the channel and the install
/// script. `None`, with the reason on stderr, when the channel, python3 or
/// py-rattler is missing. Panics if the install itself fails.
pub fn conda_env(specs: &[&str]) -> Option<CondaEnv> {
    match build_conda_env(specs) {
        Ok(env) => Some(env),
        Err(why) => {
            eprintln!("conda env unavailable: {why}");
            None
        }
    }
}

/// `conda_env`, panicking (with the reason) when unavailable.
pub fn require_conda_env(specs: &[&str]) -> CondaEnv {
    build_conda_env(specs).unwrap_or_else(|why| {
        panic!("conda env {specs:?} unavailable: {why}\n(tests may skip instead via conda_env_or_skip() with AUTOPATCH_ALLOW_SKIP=1)")
    })
}

/// `conda_env`, or `None` when the fixtures folder is absent (a clone without `../shared`
/// must still pass: the skip is said on stderr) or when unavailable otherwise and
/// AUTOPATCH_ALLOW_SKIP=1; panics in the remaining cases.
pub fn conda_env_or_skip(specs: &[&str]) -> Option<CondaEnv> {
    if fixtures_dir().is_none() {
        eprintln!(
            "SKIPPED: the fixtures folder {} is absent (set AUTOPATCH_FIXTURES to run this test)",
            fixtures_candidate().display()
        );
        return None;
    }
    match build_conda_env(specs) {
        Ok(env) => Some(env),
        Err(why) => skip_or_panic("conda env", &why),
    }
}

fn build_conda_env(specs: &[&str]) -> Result<CondaEnv, String> {
    assert!(!specs.is_empty(), "conda_env needs at least one spec");
    let fixtures = fixtures_dir().ok_or_else(|| {
        format!(
            "fixtures folder {} not found (set AUTOPATCH_FIXTURES; default ../shared/fixtures)",
            fixtures_candidate().display()
        )
    })?;
    let script = project_root().join("testdata/conda/install_env.py");
    let mut sorted: Vec<&str> = specs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();

    let mut key_src = sorted.join("\n").into_bytes();
    key_src.extend_from_slice(fixtures.to_string_lossy().as_bytes());
    key_src.extend(fs::read(&script).map_err(|e| format!("reading {}: {e}", script.display()))?);
    let readable: String = sorted
        .join("+")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '+' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    let base = target_dir().join("conda-envs");
    let root = base.join(format!("{readable}-{:016x}", fnv64(&key_src)));

    // One builder at a time: threads of this process, then other processes.
    let _guard = CONDA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    let lock_path = root.with_extension("lock");
    let lock = fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;

    if root.join(COMPLETE_MARKER).exists() {
        return Ok(CondaEnv::at(root));
    }
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|e| format!("removing stale {}: {e}", root.display()))?;
    }
    fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let env = CondaEnv::at(root.clone());
    let python = std::env::var("AUTOPATCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .arg(&env.prefix)
        .arg(&env.pkgs)
        .args(&sorted)
        .env("AUTOPATCH_FIXTURES", &fixtures)
        .output()
        .map_err(|e| format!("running {python} {}: {e}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(77) => {
            let _ = fs::remove_dir_all(&root);
            return Err(stderr.trim().to_string());
        }
        _ => panic!(
            "{} {:?} failed ({}):\n{stderr}",
            script.display(),
            sorted,
            out.status
        ),
    }
    fs::write(root.join(COMPLETE_MARKER), sorted.join("\n"))
        .map_err(|e| format!("writing marker in {}: {e}", root.display()))?;
    Ok(env)
}

// ---------------------------------------------------------------------------
// Small helpers shared by the integration tests
// ---------------------------------------------------------------------------

/// Every dynamically linked executable or shared object under `dir` (symlinks not followed),
/// sorted.
pub fn elf_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() && is_dynamic_elf(entry.path()) {
            files.push(entry.path().to_path_buf());
        }
    }
    files.sort();
    files
}

/// Whether `path` is an executable or shared object the loader has work for.
pub fn is_dynamic_elf(path: &Path) -> bool {
    let Ok(bytes) = fs::read(path) else {
        return false;
    };
    autopatch::elf::Elf::parse(&bytes).is_ok_and(|e| e.is_loadable() && !e.is_static())
}

/// Runs a host command, panicking with its status and output when it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `autopatch fix` on `paths` with the store index cached (and the config file looked
/// for) in `cache`, echoing its report to stderr.
pub fn fix(cache: &Path, extra: &[&str], paths: &[&Path]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_autopatch"))
        .arg("fix")
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .args(paths)
        .env("XDG_CONFIG_HOME", cache)
        .output()
        .expect("running autopatch");
    eprintln!(
        "autopatch fix {extra:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------
// Venvs with wheels from PyPI
// ---------------------------------------------------------------------------

/// The wheels of the venv tests, pinned so that reruns install the same wheels from the cache,
/// offline.
pub const VENV_WHEELS: &[&str] = &["numpy==2.4.6", "pandas==3.1.1"];

/// A command's stdout and stderr, as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// pip, quiet and without looking for newer versions of itself.
fn pip(venv: &Path) -> Command {
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1");
    cmd
}

/// The wheels of `VENV_WHEELS` and their dependencies for the venv's Python, downloaded once into
/// `target/wheels/` with the venv's pip (so the tags are the store python's).
fn cached_wheels(venv: &Path) -> Result<PathBuf, String> {
    let tag = run_ok(
        Command::new(venv.join("bin/python"))
            .args(["-c", "import sys; print(sys.implementation.cache_tag)"]),
    )
    .stdout;
    let tag = String::from_utf8_lossy(&tag).trim().to_string();
    let base = target_dir().join("wheels");
    fs::create_dir_all(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
    let dir = base.join(format!("{tag}-{}", VENV_WHEELS.join("+")));
    let marker = dir.join(".complete");

    // One downloader at a time across test processes.
    let lock_path = dir.with_extension("lock");
    let lock = fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if marker.exists() {
        return Ok(dir);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    let started = Instant::now();
    let out = pip(venv)
        .args(["download", "-q", "--only-binary=:all:", "-d"])
        .arg(&dir)
        .args(VENV_WHEELS)
        .output()
        .map_err(|e| format!("running pip download: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "pip download {VENV_WHEELS:?} (needs PyPI once; later runs use {}): {}",
            dir.display(),
            text(&out)
        ));
    }
    eprintln!(
        "downloaded the wheels to {} in {:.1?}",
        dir.display(),
        started.elapsed()
    );
    fs::write(&marker, VENV_WHEELS.join("\n"))
        .map_err(|e| format!("writing {}: {e}", marker.display()))?;
    Ok(dir)
}

/// A venv at `venv` made by `python` (the store's: the host runs store binaries too), with
/// `VENV_WHEELS` installed from manylinux wheels. `None` when the wheels cannot be had and
/// AUTOPATCH_ALLOW_SKIP=1.
pub fn wheel_venv(python: &Path, venv: &Path) -> Option<()> {
    run_ok(Command::new(python).arg("-m").arg("venv").arg(venv));
    let wheels = match cached_wheels(venv) {
        Ok(dir) => dir,
        Err(why) => unavailable("the wheels", &why)?,
    };
    run_ok(
        pip(venv)
            .args(["install", "-q", "--no-index", "--only-binary=:all:"])
            .arg("--find-links")
            .arg(&wheels)
            .args(VENV_WHEELS),
    );
    Some(())
}

/// The venv's site-packages (`lib/python3.X/site-packages`).
pub fn site_packages(venv: &Path) -> PathBuf {
    let lib = venv.join("lib");
    let python_dir = fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("python3")
        })
        .unwrap_or_else(|| panic!("no python3.X in {}", lib.display()));
    python_dir.join("site-packages")
}

/// The shared object in `dir` whose name starts with `stem` (extension modules carry an ABI
/// tag, vendored libraries a hash).
pub fn shared_object(dir: &Path, stem: &str) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(stem) && (name.ends_with(".so") || name.contains(".so."))
        })
        .unwrap_or_else(|| panic!("no {stem}*.so in {}", dir.display()))
}

// ---------------------------------------------------------------------------
// Programs that need a newer libstdc++ than the store's
// ---------------------------------------------------------------------------

/// The version `build_newer_glibcxx_program` needs: GCC 13's libstdc++ and later define it, the
/// store's (Debian 12's GCC 12) stops at GLIBCXX_3.4.30.
pub const GLIBCXX_NEWER: &str = "GLIBCXX_3.4.31";

/// Builds `exe`, a program that prints "tzdb ok" and needs GLIBCXX_3.4.31 of the libstdc++ in
/// `lib` (a conda env's), with `interpreter` and `DT_RUNPATH` `run_path`. The linker records
/// the version need itself: the program calls `std::chrono::get_tzdb_list()`, which exists from
/// that version on, on a branch never taken.
pub fn build_newer_glibcxx_program(exe: &Path, lib: &Path, interpreter: &Path, run_path: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tzdb.c");
    fs::write(
        &source,
        "#include <stdio.h>\n\
         extern const void *_ZNSt6chrono13get_tzdb_listEv(void);\n\
         int main(int argc, char **argv) {\n\
             (void)argv;\n\
             if (argc > 1000) return _ZNSt6chrono13get_tzdb_listEv() != 0;\n\
             puts(\"tzdb ok\");\n\
             return 0;\n\
         }\n",
    )
    .unwrap();
    run_ok(
        Command::new("gcc")
            .arg(&source)
            .arg("-o")
            .arg(exe)
            .arg(format!("-L{}", lib.display()))
            .arg("-lstdc++")
            .arg(format!("-Wl,-rpath-link,{}", lib.display()))
            .arg(format!("-Wl,--dynamic-linker,{}", interpreter.display()))
            .arg(format!(
                "-Wl,--enable-new-dtags,-rpath,{}",
                run_path.display()
            )),
    );
}
