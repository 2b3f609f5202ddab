//! `autopatch watch` on roots that installers write into while it runs, checked in a NixOS-like
//! root: conda environments installed by py-rattler (package cache inside the root) and venvs
//! filled by pip from real wheels are patched once the installers are done, round after round;
//! a library arriving after its binary is resolved again; a program running while it is
//! patched keeps running; the watcher's own writes start no work; past the inotify watch limit
//! it polls; SIGINT and SIGTERM end it with status 0.

mod common;

use common::{elf_files, run_ok};

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Conda packages installed round after round into one root, sharing its package cache.
const ROUNDS: &[&[&str]] = &[
    &["zstd", "tk", "openssl"],
    &["lz4-c", "readline", "libsqlite", "c-ares"],
    &["bzip2", "liblzma", "libffi", "libexpat", "ncurses"],
];
/// Pinned so that reruns install the same wheel from the cache, offline.
const WHEEL: &str = "numpy==2.4.6";
const PATIENCE: Duration = Duration::from_secs(180);

/// A running `autopatch watch --json`, its output lines gathered as they come.
struct Watcher {
    child: Child,
    lines: Arc<(Mutex<Vec<Value>>, Condvar)>,
    stderr: Arc<Mutex<String>>,
}

impl Watcher {
    fn start(root: &Path, cache: &Path, extra: &[&str]) -> Watcher {
        Watcher::spawn(
            Command::new(env!("CARGO_BIN_EXE_autopatch")),
            root,
            cache,
            extra,
        )
    }

    /// Runs the watcher through `launcher` (whose last arguments are followed by autopatch's).
    fn spawn(mut launcher: Command, root: &Path, cache: &Path, extra: &[&str]) -> Watcher {
        let mut child = launcher
            .args(["watch", "--json", "--cache-dir"])
            .arg(cache)
            .args(extra)
            .arg(root)
            .env("XDG_CONFIG_HOME", cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting autopatch watch");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.0.lock().unwrap().push(value);
                sink.1.notify_all();
            }
        });
        let (mut err, text) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Watcher {
            child,
            lines,
            stderr,
        }
    }

    fn output(&self) -> String {
        let lines = self.lines.0.lock().unwrap();
        let out: Vec<String> = lines.iter().map(Value::to_string).collect();
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            out.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// The first line satisfying `pred`, waiting for it.
    fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        let (lock, cvar) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(v) = lines.iter().find(|v| pred(v)) {
                return v.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                drop(lines);
                panic!("no {what} within {PATIENCE:?}\n{}", self.output());
            }
            lines = cvar.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits until everything changed so far is handled: a file written into `dir` (a watched
    /// directory) after now must be covered by an idle report.
    fn settle(&self, dir: &Path) {
        // Past the millisecond of any idle report already read.
        std::thread::sleep(Duration::from_millis(2));
        let now = unix_ms();
        fs::write(dir.join(".watch-sync"), now.to_string()).unwrap();
        self.wait_for("idle after the installers", |v| {
            v["event"] == "idle" && v["as_of_ms"].as_u64().is_some_and(|t| t >= now)
        });
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let lines = self.lines.0.lock().unwrap();
        lines
            .iter()
            .filter(|v| v["event"] == kind)
            .cloned()
            .collect()
    }

    fn patched(&self) -> Vec<PathBuf> {
        self.events("patched")
            .iter()
            .map(|v| PathBuf::from(v["path"].as_str().unwrap()))
            .collect()
    }

    /// Sends `signal` and waits for the watcher to end.
    fn stop(mut self, signal: i32) -> (ExitStatus, String) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the watcher did not stop\n{}", self.output());
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every dynamic ELF file under `dirs` loads in the root, with `top` bound; how many there are.
fn assert_all_load(root: &common::NixRoot, top: &Path, dirs: &[PathBuf]) -> usize {
    let files: Vec<PathBuf> = dirs.iter().flat_map(|d| elf_files(d)).collect();
    let failures: Vec<String> = files
        .iter()
        .map(|f| (f, root.ldd_in(&[top], f)))
        .filter(|(_, ldd)| !ldd.ok)
        .map(|(f, ldd)| format!("{}:\n{ldd}", f.display()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} ELF files do not load in the root:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    files.len()
}

/// The wheel for `python`, downloaded once into `target/wheels/`.
fn cached_wheel(python: &Path, work: &Path) -> Option<PathBuf> {
    let tag = run_ok(
        Command::new(python).args(["-c", "import sys; print(sys.implementation.cache_tag)"]),
    )
    .stdout;
    let base = common::target_dir().join("wheels");
    let dir = base.join(format!("{}-{WHEEL}", String::from_utf8_lossy(&tag).trim()));
    fs::create_dir_all(&base).unwrap();
    let lock = fs::File::create(dir.with_extension("lock")).unwrap();
    lock.lock().unwrap();
    if dir.join(".complete").exists() {
        return Some(dir);
    }
    let venv = work.join("download-venv");
    run_ok(Command::new(python).arg("-m").arg("venv").arg(&venv));
    let out = pip(&venv)
        .args(["download", "-q", "--no-deps", "--only-binary=:all:", "-d"])
        .arg(&dir)
        .arg(WHEEL)
        .output()
        .unwrap();
    if !out.status.success() {
        return common::unavailable(
            "the wheel",
            &format!("pip download {WHEEL}: {}", text(&out)),
        );
    }
    fs::write(dir.join(".complete"), WHEEL).unwrap();
    Some(dir)
}

fn pip(venv: &Path) -> Command {
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1");
    cmd
}

/// Installs `specs` from the fixture channel into `env`, with the package cache `pkgs`.
fn conda_install(fixtures: &Path, env: &Path, pkgs: &Path, specs: &[&str]) -> Child {
    let python = std::env::var("AUTOPATCH_PYTHON").unwrap_or_else(|_| "python3".into());
    Command::new(python)
        .arg(common::project_root().join("testdata/conda/install_env.py"))
        .arg(env)
        .arg(pkgs)
        .args(specs)
        .env("AUTOPATCH_FIXTURES", fixtures)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running install_env.py")
}

/// Makes a venv with `python` and pip-installs the wheel into it.
fn venv_install(python: &Path, venv: &Path, wheels: &Path) -> Child {
    let script = format!(
        "{python} -m venv {venv} && PIP_DISABLE_PIP_VERSION_CHECK=1 {venv}/bin/pip install -q \
         --no-index --only-binary=:all: --find-links {wheels} {WHEEL}",
        python = python.display(),
        venv = venv.display(),
        wheels = wheels.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running sh")
}

#[test]
fn installs_into_a_watched_root_are_patched_round_after_round() {
    let root = common::require_nixroot();
    let Some(fixtures) = common::fixtures_dir() else {
        eprintln!(
            "SKIPPED: the fixtures folder is absent (set AUTOPATCH_FIXTURES to run this test)"
        );
        return;
    };
    let Some(python) = root.python_or_skip() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let Some(wheels) = cached_wheel(&python, work.path()) else {
        return;
    };
    let top = work.path().join("root");
    let cache = work.path().join("cache");
    fs::create_dir(&top).unwrap();

    let started = unix_ms();
    let watcher = Watcher::start(&top, &cache, &[]);
    watcher.wait_for("idle at start", |v| {
        v["event"] == "idle" && v["as_of_ms"].as_u64() >= Some(started)
    });

    let mut installed = Vec::new();
    for (round, specs) in ROUNDS.iter().enumerate() {
        let env = top.join(format!("envs/e{round}"));
        let venv = top.join(format!("venvs/v{round}"));
        let clock = Instant::now();
        let conda = conda_install(&fixtures, &env, &top.join("pkgs"), specs);
        let pip = venv_install(&python, &venv, &wheels);
        for (what, child) in [("install_env.py", conda), ("venv and pip", pip)] {
            let out = child.wait_with_output().unwrap();
            if out.status.code() == Some(77) {
                common::unavailable::<()>(what, &text(&out));
                return;
            }
            assert!(
                out.status.success(),
                "{what}: {}\n{}",
                out.status,
                text(&out)
            );
        }
        let installers = clock.elapsed();
        watcher.settle(&top);
        eprintln!(
            "round {round}: installers {installers:.1?}, patched {:.1?} after",
            clock.elapsed() - installers
        );
        installed.extend([env.clone(), venv.clone()]);
        let count = assert_all_load(&root, &top, &[env.clone(), venv.clone()]);
        assert!(
            count > 20,
            "round {round}: only {count} ELF files installed"
        );

        let numpy = root.run(
            &top,
            &[
                venv.join("bin/python").display().to_string(),
                "-c".into(),
                "import numpy; print(int(numpy.arange(10).sum()))".into(),
            ],
        );
        assert!(
            numpy.status.success() && String::from_utf8_lossy(&numpy.stdout).trim() == "45",
            "numpy in the root: {}",
            text(&numpy)
        );
    }
    let zstd = top.join("envs/e0/bin/zstd");
    let run = root.run(&top, &[zstd.display().to_string(), "--version".into()]);
    assert!(run.status.success(), "zstd in the root: {}", text(&run));
    // No file missed: every round's files still load after the later rounds.
    let total = assert_all_load(&root, &top, &installed);
    let patched = watcher.patched();
    assert!(
        patched.len() > 20,
        "expected a line per patched file, got {}",
        patched.len()
    );
    assert!(
        watcher.events("error").is_empty(),
        "errors reported:\n{}",
        watcher.output()
    );
    assert_links_into_the_cache(&top.join("envs"), &top.join("pkgs"));

    let (status, output) = watcher.stop(libc::SIGTERM);
    assert!(status.success(), "SIGTERM: {status}\n{output}");
    assert!(output.contains(r#"{"event":"stopped"}"#), "{output}");
    eprintln!(
        "{total} ELF files in {} environments load; {} patched lines",
        installed.len(),
        patched.len()
    );
}

/// Some environment ELF files still share their inode with the package cache, patched together.
fn assert_links_into_the_cache(envs: &Path, pkgs: &Path) {
    let cache: std::collections::HashSet<u64> = walkdir::WalkDir::new(pkgs)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().ino())
        .collect();
    let shared = elf_files(envs)
        .iter()
        .filter(|f| cache.contains(&fs::metadata(f).unwrap().ino()))
        .count();
    assert!(
        shared > 10,
        "only {shared} ELF files still linked from pkgs"
    );
}

/// Compiles a shared library `libwt.so` and a program needing it without a run path, which
/// prints `wt=42` once it reads a line.
fn build_late_library_pair(dir: &Path) -> (PathBuf, PathBuf) {
    fs::write(dir.join("wt.c"), "int wt(void) { return 42; }\n").unwrap();
    fs::write(
        dir.join("prog.c"),
        "#include <stdio.h>\nint wt(void);\nint main(void) { char b[8]; \
         if (!fgets(b, sizeof b, stdin)) return 1; printf(\"wt=%d\\n\", wt()); return 0; }\n",
    )
    .unwrap();
    let lib = dir.join("libwt.so");
    let prog = dir.join("wtprog");
    run_ok(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&lib)
            .arg(dir.join("wt.c")),
    );
    run_ok(
        Command::new("cc")
            .arg("-o")
            .arg(&prog)
            .arg(dir.join("prog.c"))
            .arg("-L")
            .arg(dir)
            .arg("-lwt"),
    );
    (lib, prog)
}

#[test]
fn late_library_running_program_and_own_writes() {
    let root = common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let build = work.path().join("build");
    let top = work.path().join("root");
    let env = top.join("env");
    for dir in [
        &build,
        &env.join("conda-meta"),
        &env.join("bin"),
        &env.join("lib"),
    ] {
        fs::create_dir_all(dir).unwrap();
    }
    let (lib, prog) = build_late_library_pair(&build);
    let cache = work.path().join("cache");
    let started = unix_ms();
    let watcher = Watcher::start(&top, &cache, &["--no-initial-scan"]);
    watcher.wait_for("idle at start", |v| {
        v["event"] == "idle" && v["as_of_ms"].as_u64() >= Some(started)
    });
    assert!(
        watcher.events("fixed").is_empty(),
        "--no-initial-scan fixed"
    );

    // The program arrives without its library, and runs (on the host) while it is patched.
    let installed = env.join("bin/wtprog");
    fs::copy(&prog, &installed).unwrap();
    let mut running = Command::new(&installed)
        .env("LD_LIBRARY_PATH", &build)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    watcher.settle(&top);
    assert_eq!(watcher.patched(), std::slice::from_ref(&installed));
    assert_eq!(
        common::elf_interpreter(&installed).as_deref(),
        root.ld.to_str(),
        "the interpreter is the store's"
    );
    let unresolved = watcher.events("unresolved");
    assert!(
        unresolved.iter().any(|v| v["soname"] == "libwt.so"),
        "libwt.so should be reported unresolved:\n{}",
        watcher.output()
    );
    running.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = running.wait_with_output().unwrap();
    assert!(out.status.success(), "the running program: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "wt=42");

    // Its own writes started nothing: one fix for the program, then quiet.
    let fixes = watcher.events("fixed").len();
    assert_eq!(fixes, 1, "{}", watcher.output());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(watcher.events("fixed").len(), fixes, "{}", watcher.output());

    // The library arrives: the program is resolved again and loads.
    fs::copy(&lib, env.join("lib/libwt.so")).unwrap();
    watcher.settle(&top);
    let ldd = root.ldd_in(&[&top], &installed);
    assert!(ldd.ok, "after the library arrived:\n{ldd}");
    let found = ldd
        .resolved("libwt.so")
        .map(|p| fs::canonicalize(p).unwrap());
    assert_eq!(
        found,
        Some(fs::canonicalize(env.join("lib/libwt.so")).unwrap())
    );
    let script = format!("echo go | {}", installed.display());
    let run = root.run(&top, &[root.sh.display().to_string(), "-c".into(), script]);
    assert!(
        run.status.success() && String::from_utf8_lossy(&run.stdout).trim() == "wt=42",
        "the program in the root: {}",
        text(&run)
    );

    let (status, output) = watcher.stop(libc::SIGINT);
    assert!(status.success(), "SIGINT: {status}\n{output}");
}

#[test]
fn past_the_watch_limit_it_polls() {
    let root = common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("root");
    let deep = top.join("env/lib/a/b/c/d/e/f");
    fs::create_dir_all(&deep).unwrap();
    fs::create_dir_all(top.join("env/conda-meta")).unwrap();
    let probe = Command::new("unshare")
        .args([
            "-Ur",
            "sh",
            "-c",
            "echo 4 > /proc/sys/user/max_inotify_watches",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        other => {
            common::unavailable::<()>(
                "a user namespace with its own inotify limit",
                &format!("{other:?}"),
            );
            return;
        }
    }
    // Four watches in a user namespace of its own: the barrier, the root, env, and one more.
    let mut launcher = Command::new("unshare");
    launcher.args([
        "-Ur",
        "sh",
        "-c",
        "echo 4 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_autopatch"),
    ]);
    let cache = work.path().join("cache");
    let watcher = Watcher::spawn(launcher, &top, &cache, &["--no-initial-scan"]);
    let limit = watcher.wait_for("the watch limit report", |v| v["event"] == "watch_limit");
    assert_eq!(limit["sysctl"], "fs.inotify.max_user_watches");
    let polled = limit["polled"].as_array().unwrap();
    assert!(!polled.is_empty());
    watcher.wait_for("idle", |v| v["event"] == "idle");

    let installed = deep.join("true");
    fs::copy("/bin/true", &installed).unwrap();
    watcher.settle(&top);
    assert!(
        watcher.patched().contains(&installed),
        "a file in a polled directory was not patched:\n{}",
        watcher.output()
    );
    let ldd = root.ldd_in(&[&top], &installed);
    assert!(ldd.ok, "{ldd}");

    let (status, output) = watcher.stop(libc::SIGTERM);
    assert!(status.success(), "SIGTERM: {status}\n{output}");
}

#[test]
fn sigterm_during_a_fix_finishes_it_and_exits_0() {
    let root = common::require_nixroot();
    let Some(cached) = common::conda_env_or_skip(ROUNDS[0]) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let top = work.path().join("root");
    fs::create_dir(&top).unwrap();
    let env = cached.fresh_copy(&top);
    let cache = work.path().join("cache");
    let watcher = Watcher::start(&top, &cache, &[]);
    // Watches are in place before the initial fix starts: it is in flight now.
    watcher.wait_for("the start", |v| v["event"] == "watching");
    let (status, output) = watcher.stop(libc::SIGTERM);
    assert!(status.success(), "SIGTERM: {status}\n{output}");
    // The signal, sent within a millisecond of the start, came while the fix ran.
    let fix = watcher_line(&output, "fixed");
    assert!(fix["elapsed_ms"].as_u64() > Some(20), "{output}");
    let fixed = output.find(r#""event":"fixed""#);
    let stopped = output.find(r#"{"event":"stopped"}"#);
    assert!(
        fixed.is_some() && fixed < stopped,
        "the initial fix did not finish before the exit:\n{output}"
    );
    let leftovers: Vec<PathBuf> = walkdir::WalkDir::new(&top)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".autopatch-"))
        .map(|e| e.path().to_path_buf())
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let count = assert_all_load(&root, &top, std::slice::from_ref(&env.prefix));
    assert!(count > 20, "only {count} ELF files");
}

/// The first JSON line of `output` of the given event.
fn watcher_line(output: &str, event: &str) -> Value {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == event)
        .unwrap_or_else(|| panic!("no {event} line in:\n{output}"))
}
