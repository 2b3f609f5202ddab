//! Concurrent runs on one prefix take turns on a lock held in the prefix (on its directory),
//! which the kernel releases when the holder dies: two `fix` runs, or `fix` and `watch`, end
//! with exactly the tree of a single run, and a journal that `undo` takes back from.

mod common;
mod reliability_support;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reliability_support::{Snapshot, copy_tree, fix, fix_command, snapshot, text, undo};

const SPECS: &[&str] = &["zstd", "tk"];
const PATIENCE: Duration = Duration::from_secs(60);

/// A conda root copied to `work/tree`, with what it holds before and after one `fix`.
struct Setup {
    tree: PathBuf,
    cache: PathBuf,
    pristine: Snapshot,
    reference: Snapshot,
}

fn setup(work: &Path) -> Option<Setup> {
    common::require_nixroot();
    let env = common::conda_env_or_skip(SPECS)?;
    let tree = work.join("tree");
    let cache = work.join("cache");
    copy_tree(&env.root, &tree);
    let pristine = snapshot(&tree);
    assert!(fix(&cache, &[], &[&tree]).status.success());
    let reference = snapshot(&tree);
    copy_tree(&env.root, &tree);
    Some(Setup {
        tree,
        cache,
        pristine,
        reference,
    })
}

/// Lines of a child's output as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("| {line}");
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// Waits for a line satisfying `pred`.
fn wait_for_line(lines: &mpsc::Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if pred(&line) => return,
            Ok(_) => {}
            Err(e) => panic!("no {what}: {e}"),
        }
    }
}

fn wait_with_deadline(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn two_runs_at_once_end_as_one_run() {
    let work = tempfile::tempdir().unwrap();
    let Some(s) = setup(work.path()) else {
        return;
    };
    let mut waited = 0;
    for round in 0..3 {
        let mut runs: Vec<(Child, mpsc::Receiver<String>)> = (0..2)
            .map(|_| {
                let mut cmd = fix_command(&s.cache, &[], &[&s.tree]);
                cmd.stdout(Stdio::null()).stderr(Stdio::piped());
                let mut child = cmd.spawn().unwrap();
                let lines = lines_of(child.stderr.take().unwrap());
                (child, lines)
            })
            .collect();
        for (run, lines) in &mut runs {
            let status = wait_with_deadline(run, "fix");
            assert!(status.success(), "round {round}: a run failed");
            waited += lines.try_iter().filter(|l| l.contains("waiting")).count();
        }
        snapshot(&s.tree).assert_same(&s.reference, &format!("round {round}"));
        let out = undo(&[], &[&s.tree]);
        assert!(out.status.success(), "round {round}: undo: {}", text(&out));
        snapshot(&s.tree).assert_same(&s.pristine, &format!("round {round}, undo"));
    }
    eprintln!("a run waited for the other {waited} times in 3 rounds");
}

#[test]
fn a_held_lock_makes_fix_wait_until_its_holder_dies() {
    let work = tempfile::tempdir().unwrap();
    let Some(s) = setup(work.path()) else {
        return;
    };
    let env = s.tree.join("env");
    let mut holder = Command::new("flock")
        .arg("--no-fork")
        .arg(&env)
        .args(["sleep", "600"])
        .spawn()
        .expect("running flock");
    let probe = File::open(&env).unwrap();
    let deadline = Instant::now() + PATIENCE;
    while probe.try_lock().is_ok() {
        probe.unlock().unwrap();
        assert!(Instant::now() < deadline, "flock never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut cmd = fix_command(&s.cache, &[], &[&s.tree]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut run = cmd.spawn().unwrap();
    let lines = lines_of(run.stderr.take().unwrap());
    wait_for_line(&lines, "word of waiting", |l| {
        l.contains(&format!(
            "{}: waiting for another autopatch run on it to finish",
            env.display()
        ))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(run.try_wait().unwrap().is_none(), "fix must wait");
    snapshot(&s.tree).assert_same(&s.pristine, "nothing is written while waiting");

    holder.kill().unwrap();
    holder.wait().unwrap();
    let status = wait_with_deadline(&mut run, "fix after the holder died");
    assert!(status.success());
    snapshot(&s.tree).assert_same(&s.reference, "after the wait");
}

#[test]
fn fix_and_watch_on_one_prefix_take_turns() {
    let work = tempfile::tempdir().unwrap();
    let Some(s) = setup(work.path()) else {
        return;
    };
    let mut watch = reliability_support::autopatch()
        .args(["watch", "--json", "--cache-dir"])
        .arg(&s.cache)
        .arg(&s.tree)
        .env("XDG_CONFIG_HOME", &s.cache)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let events = lines_of(watch.stdout.take().unwrap());
    let _said = lines_of(watch.stderr.take().unwrap());
    let out = fix(&s.cache, &[], &[&s.tree]);
    assert!(out.status.success(), "{}", text(&out));
    // A new directory makes the watcher look at the prefix again, even when the fix left it
    // nothing to do: its next idle report covers everything both did.
    let probe = s.tree.join("env/probe");
    let probed_at = unix_ms();
    std::fs::create_dir(&probe).unwrap();
    wait_for_line(&events, "idle after the fix", |l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["event"] == "idle" && v["as_of_ms"].as_u64().is_some_and(|t| t >= probed_at)
        })
    });
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let status = wait_with_deadline(&mut watch, "watch after SIGTERM");
    assert!(status.success());
    std::fs::remove_dir(&probe).unwrap();

    snapshot(&s.tree).assert_same(&s.reference, "after fix and watch");
    let out = undo(&[], &[&s.tree]);
    assert!(out.status.success(), "{}", text(&out));
    snapshot(&s.tree).assert_same(&s.pristine, "after undo");
}

/// While another process holds a write lease on a file (as a run growing it in place does), a
/// reader's non-blocking open is refused; it waits for the lease instead of calling the file
/// unreadable.
#[test]
fn a_file_under_a_write_lease_is_read_once_the_lease_is_released() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("prog");
    std::fs::copy(std::env::current_exe().unwrap(), &file).unwrap();
    let holder = r#"
import fcntl, os, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("held", flush=True)
time.sleep(0.5)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
os.close(fd)
"#;
    let mut child = Command::new("python3")
        .args(["-c", holder])
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut held = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut held)
        .unwrap();
    assert_eq!(held.trim(), "held");

    let asked = Instant::now();
    let opened = autopatch::scan::open_nonblocking(&file, false);
    assert!(opened.is_ok(), "{opened:?}");
    assert!(
        asked.elapsed() >= Duration::from_millis(200),
        "opened while the lease was held"
    );
    let scanned = autopatch::scan::scan(&[work.path().to_path_buf()]);
    assert!(scanned.errors.is_empty(), "{:?}", scanned.errors);
    assert_eq!(scanned.elf_inodes.len(), 1);
    assert!(child.wait().unwrap().success());
}
