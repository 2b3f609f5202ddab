//! `autopatch fix` on hostile input, one test each. A file that cannot or must not be patched
//! gets a message naming it and saying what to do, stays as it was, the rest of the prefix is
//! still patched, and the exit status is 1. Entries that are not ELF files at all (empty files,
//! FIFOs, sockets, devices, links of every kind) are passed over without being opened, except
//! when given by name. Never a panic, never a hang.
//!
//! The permission cases run autopatch without the capabilities that let root ignore
//! permissions, as a user would.

mod common;
mod reliability_support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use reliability_support::{make_writable, text};

const DAMAGED: &str = "the file is damaged or not a complete program";
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const NOT_ELF: &str = "not an ELF file: nothing to patch";

/// A prefix holding `good`, a program that needs a new interpreter, beside the case's entry.
struct Case {
    root: common::NixRoot,
    work: tempfile::TempDir,
    prefix: PathBuf,
    good: PathBuf,
}

impl Case {
    fn new() -> Case {
        let root = common::require_nixroot();
        let work = tempfile::tempdir().unwrap();
        let prefix = work.path().join("prefix");
        fs::create_dir(&prefix).unwrap();
        let good = prefix.join("good");
        fs::copy(program("hello"), &good).unwrap();
        Case {
            root,
            work,
            prefix,
            good,
        }
    }

    /// Puts `bytes` at `name` in the prefix, executable.
    fn add(&self, name: impl AsRef<Path>, bytes: &[u8]) -> PathBuf {
        let path = self.prefix.join(name);
        fs::write(&path, bytes).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn command(&self, extra: &[&OsStr], paths: &[&Path]) -> Command {
        let mut cmd = reliability_support::autopatch();
        cmd.arg("fix")
            .arg("--cache-dir")
            .arg(self.work.path().join("cache"))
            .arg("--interpreter")
            .arg(&self.root.ld)
            .args(extra)
            .args(paths)
            .env("XDG_CONFIG_HOME", self.work.path().join("cache"));
        cmd
    }

    /// `fix` on the prefix.
    fn fix(&self) -> Output {
        finish(self.command(&[], &[&self.prefix]))
    }

    /// `fix` on the prefix, without root's power over permissions.
    fn fix_as_user(&self) -> Output {
        finish(as_user(self.command(&[], &[&self.prefix])))
    }

    fn assert_good_patched(&self) {
        let interp = common::elf_interpreter(&self.good);
        assert_eq!(
            interp.as_deref(),
            self.root.ld.to_str(),
            "the rest of the prefix must still be patched"
        );
    }
}

/// Runs `cmd`, failing the test if it takes more than a minute or panics.
fn finish(mut cmd: Command) -> Output {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting autopatch");
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{cmd:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    eprintln!("{cmd:?}: {}\n{}", out.status, text(&out));
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "exit 0 or 1, never a crash: {}",
        out.status
    );
    out
}

/// `cmd` without the capabilities that let root read and write whatever the permissions say.
fn as_user(cmd: Command) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return cmd;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args([
            "--bounding-set=-dac_override,-dac_read_search,-fowner",
            "--inh-caps=-all",
            "--",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    wrapped
}

/// The programs the cases are made of, compiled once.
fn program(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        for (name, source) in [
            ("hello", "int main(void) { return 0; }\n"),
            (
                "sleeper",
                "#include <unistd.h>\nint main(void) { sleep(60); return 0; }\n",
            ),
        ] {
            let src = dir.path().join(format!("{name}.c"));
            fs::write(&src, source).unwrap();
            let out = Command::new("cc")
                .arg(&src)
                .arg("-o")
                .arg(dir.path().join(name))
                .output()
                .unwrap();
            assert!(out.status.success(), "cc: {}", text(&out));
        }
        dir
    });
    dir.path().join(name)
}

/// Asserts that `out` failed, naming `path` on a line that says `advice`.
fn assert_refused(out: &Output, path: &Path, advice: &str) {
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    let said = String::from_utf8_lossy(&out.stderr);
    let named = format!("{}:", path.display());
    assert!(
        said.lines()
            .any(|l| l.contains(&named) && l.contains(advice)),
        "expected a line naming {} and saying {advice:?}:\n{said}",
        path.display()
    );
}

/// What a file is: its bytes and permission bits.
fn state(path: &Path) -> (Vec<u8>, u32) {
    let meta = fs::symlink_metadata(path).unwrap();
    (fs::read(path).unwrap(), meta.mode() & 0o7777)
}

fn hello() -> Vec<u8> {
    fs::read(program("hello")).unwrap()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// File offsets of the program headers of a 64-bit little-endian ELF file, with their type.
fn program_headers(b: &[u8]) -> Vec<(usize, u32)> {
    let (phoff, size, count) = (
        u64_at(b, 0x20) as usize,
        u16_at(b, 0x36) as usize,
        u16_at(b, 0x38) as usize,
    );
    (0..count)
        .map(|i| {
            let at = phoff + i * size;
            (at, u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
        })
        .collect()
}

/// The file offset of the first program header of type `p_type`.
fn program_header(b: &[u8], p_type: u32) -> usize {
    program_headers(b)
        .into_iter()
        .find(|&(_, t)| t == p_type)
        .unwrap_or_else(|| panic!("no program header of type {p_type}"))
        .0
}

/// File offsets of the dynamic entries before `DT_NULL`, with their tag.
fn dynamic_entries(b: &[u8]) -> Vec<(usize, u64)> {
    let start = u64_at(b, program_header(b, PT_DYNAMIC) + 8) as usize;
    (start..)
        .step_by(16)
        .map(|at| (at, u64_at(b, at)))
        .take_while(|&(_, tag)| tag != 0)
        .collect()
}

/// A damaged program is refused as such, and left as it was.
fn assert_damaged_refused(name: &str, bytes: Vec<u8>) {
    let case = Case::new();
    let bad = case.add(name, &bytes);
    let before = state(&bad);
    let out = case.fix();
    assert_refused(&out, &bad, DAMAGED);
    assert_eq!(state(&bad), before, "a damaged file must be left as it was");
    case.assert_good_patched();
}

#[test]
fn truncated_elf() {
    assert_damaged_refused("truncated", hello()[..100].to_vec());
}

#[test]
fn elf_cut_inside_its_header() {
    assert_damaged_refused("cut", hello()[..30].to_vec());
}

#[test]
fn elf_magic_then_garbage() {
    let mut bytes = b"\x7fELF".to_vec();
    let mut x: u32 = 0x9e37_79b9;
    bytes.extend((0..4000).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    assert_damaged_refused("garbage", bytes);
}

#[test]
fn program_header_offset_past_the_end() {
    let mut bytes = hello();
    let past = bytes.len() as u64 + 0x1000;
    put_u64(&mut bytes, 0x20, past);
    assert_damaged_refused("phoff", bytes);
}

#[test]
fn section_header_offset_past_the_end() {
    let mut bytes = hello();
    let past = bytes.len() as u64 + 0x1000;
    put_u64(&mut bytes, 0x28, past);
    assert_damaged_refused("shoff", bytes);
}

#[test]
fn program_header_count_65535() {
    let mut bytes = hello();
    put_u16(&mut bytes, 0x38, 0xffff);
    assert_damaged_refused("phnum", bytes);
}

#[test]
fn overlapping_segments() {
    let mut bytes = hello();
    let loads: Vec<usize> = program_headers(&bytes)
        .into_iter()
        .filter(|&(_, t)| t == PT_LOAD)
        .map(|(at, _)| at)
        .collect();
    let first_vaddr = u64_at(&bytes, loads[0] + 16);
    put_u64(&mut bytes, loads[1] + 16, first_vaddr);
    put_u64(&mut bytes, loads[1] + 24, first_vaddr);
    assert_damaged_refused("overlap", bytes);
}

/// Growth rewrites section headers; an interpreter lying among them would be overwritten (found
/// by fuzzing: fuzz/regressions/read_edit/).
#[test]
fn interpreter_inside_the_section_headers() {
    let mut bytes = hello();
    let interp = program_header(&bytes, PT_INTERP);
    let shoff = u64_at(&bytes, 0x28);
    put_u64(&mut bytes, interp + 8, shoff + 0x30);
    assert_damaged_refused("interp-in-section-headers", bytes);
}

/// The version needs are read through the dynamic section, which an edit rewrites: needs lying
/// inside it would change with it (found by fuzzing: fuzz/regressions/read_edit/).
#[test]
fn version_needs_inside_the_dynamic_section() {
    const DT_VERNEED: u64 = 0x6fff_fffe;
    const DT_VERNEEDNUM: u64 = 0x6fff_ffff;
    let mut bytes = hello();
    let dynamic = program_header(&bytes, PT_DYNAMIC);
    let dynamic_vaddr = u64_at(&bytes, dynamic + 16);
    let mut found = 0;
    // Its first entry, read as a version need: one need with no versions, named "".
    for (at, tag) in dynamic_entries(&bytes) {
        let value = match tag {
            DT_VERNEED => dynamic_vaddr,
            DT_VERNEEDNUM => 1,
            _ => continue,
        };
        put_u64(&mut bytes, at + 8, value);
        found += 1;
    }
    assert_eq!(found, 2, "hello has version needs");
    assert_damaged_refused("verneed-in-dynamic", bytes);
}

#[test]
fn dynamic_section_outside_every_segment() {
    let mut bytes = hello();
    let dynamic = program_header(&bytes, PT_DYNAMIC);
    let offset = bytes.len() as u64 - 0x200;
    put_u64(&mut bytes, dynamic + 8, offset);
    put_u64(&mut bytes, dynamic + 16, 0x90_0000);
    put_u64(&mut bytes, dynamic + 24, 0x90_0000);
    assert_damaged_refused("dynamic", bytes);
}

#[test]
fn string_offsets_past_the_end() {
    let mut bytes = hello();
    let (at, _) = dynamic_entries(&bytes)
        .into_iter()
        .find(|&(_, tag)| tag == DT_NEEDED)
        .expect("no DT_NEEDED");
    put_u64(&mut bytes, at + 8, 0xff_fff0);
    assert_damaged_refused("strings", bytes);
}

#[test]
fn empty_file() {
    let case = Case::new();
    let empty = case.add("libempty.so", b"");
    let out = case.fix();
    assert_eq!(out.status.code(), Some(0), "an empty file is no ELF file");
    assert_eq!(state(&empty).0, b"");
    case.assert_good_patched();

    let out = finish(case.command(&[], &[&empty]));
    assert_refused(&out, &empty, NOT_ELF);
}

#[test]
fn fifo_socket_and_device_are_never_opened() {
    let case = Case::new();
    let fifo = case.prefix.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let socket = case.prefix.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let device = case.prefix.join("null");
    let c = std::ffi::CString::new(device.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; makedev has no preconditions.
    let made = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    if made != 0 {
        let why = std::io::Error::last_os_error().to_string();
        if common::unavailable::<()>("mknod", &why).is_none() {
            return;
        }
    }
    // No writer ever opens the FIFO: opening it to read would block forever.
    let out = case.fix();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    case.assert_good_patched();
    for special in [&fifo, &socket, &device] {
        let kind = fs::symlink_metadata(special).unwrap().file_type();
        assert!(
            !kind.is_file(),
            "{} is still what it was",
            special.display()
        );
        let out = finish(case.command(&[], &[special]));
        assert_refused(&out, special, NOT_ELF);
    }
}

#[test]
fn unreadable_file() {
    let case = Case::new();
    let secret = case.add("secret", &hello());
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    let out = case.fix_as_user();
    assert_refused(
        &out,
        &secret,
        "permission denied: run autopatch as the owner",
    );
    assert_eq!(state(&secret), (hello(), 0o000));
    case.assert_good_patched();
}

#[test]
fn read_only_file_is_replaced_keeping_its_mode() {
    // Replacing a file takes write permission on its directory, not on the file: package
    // managers replace read-only files the same way, and conda packages ship some.
    let case = Case::new();
    let read_only = case.add("read-only", &hello());
    fs::set_permissions(&read_only, fs::Permissions::from_mode(0o555)).unwrap();
    let out = case.fix_as_user();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        common::elf_interpreter(&read_only).as_deref(),
        case.root.ld.to_str()
    );
    assert_eq!(state(&read_only).1, 0o555);
    case.assert_good_patched();
}

#[test]
fn read_only_directory() {
    let case = Case::new();
    let dir = case.prefix.join("locked");
    fs::create_dir(&dir).unwrap();
    let inside = dir.join("program");
    fs::copy(program("hello"), &inside).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let out = case.fix_as_user();
    make_writable(&dir);
    assert_refused(&out, &inside, "permission denied");
    assert_eq!(state(&inside).0, hello());
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        1,
        "nothing left beside it"
    );
    case.assert_good_patched();
}

#[test]
fn read_only_filesystem() {
    let case = Case::new();
    let dir = case.prefix.join("mounted");
    fs::create_dir(&dir).unwrap();
    let inside = dir.join("program");
    fs::copy(program("hello"), &inside).unwrap();
    let fix = case.command(&[], &[&case.prefix]);
    let mut cmd = Command::new("bwrap");
    cmd.args([
        "--bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--ro-bind",
    ])
    .arg(&dir)
    .arg(&dir)
    .arg("--")
    .arg(fix.get_program())
    .args(fix.get_args())
    .env("XDG_CONFIG_HOME", case.work.path().join("cache"));
    let out = finish(cmd);
    assert_refused(&out, &inside, "the filesystem is read-only");
    assert_eq!(state(&inside).0, hello());
    case.assert_good_patched();
}

/// Clears the immutable flag again, so the test can clean up whatever happens.
struct Immutable(PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

#[test]
fn immutable_file() {
    let case = Case::new();
    let frozen = case.add("frozen", &hello());
    let out = Command::new("chattr")
        .arg("+i")
        .arg(&frozen)
        .output()
        .unwrap();
    if !out.status.success() && common::unavailable::<()>("chattr +i", &text(&out)).is_none() {
        return;
    }
    let _guard = Immutable(frozen.clone());
    let out = case.fix();
    assert_refused(&out, &frozen, "immutable");
    assert_eq!(state(&frozen).0, hello());
    case.assert_good_patched();
    let leftovers: Vec<_> = fs::read_dir(&case.prefix)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".autopatch-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn running_executable_is_replaced_under_it() {
    let case = Case::new();
    let sleeper = case.prefix.join("sleeper");
    fs::copy(program("sleeper"), &sleeper).unwrap();
    let mut running = Command::new(&sleeper).spawn().unwrap();
    let out = case.fix();
    let alive = running.try_wait().unwrap().is_none();
    let exe = fs::read_link(format!("/proc/{}/exe", running.id())).unwrap();
    let _ = running.kill();
    running.wait().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(alive, "the running program must not be disturbed");
    assert!(
        exe.to_string_lossy().ends_with("(deleted)"),
        "it keeps running its old file: {}",
        exe.display()
    );
    assert_eq!(
        common::elf_interpreter(&sleeper).as_deref(),
        case.root.ld.to_str()
    );
    case.assert_good_patched();
}

#[test]
fn setuid_and_setgid_files_need_allow_setuid() {
    let case = Case::new();
    let setuid = case.add("setuid", &hello());
    fs::set_permissions(&setuid, fs::Permissions::from_mode(0o4755)).unwrap();
    let setgid = case.add("setgid", &hello());
    fs::set_permissions(&setgid, fs::Permissions::from_mode(0o2755)).unwrap();
    let out = case.fix();
    for file in [&setuid, &setgid] {
        assert_refused(&out, file, "pass --allow-setuid to patch it");
    }
    assert_eq!(state(&setuid), (hello(), 0o4755));
    assert_eq!(state(&setgid), (hello(), 0o2755));
    case.assert_good_patched();

    let out = finish(case.command(&[OsStr::new("--allow-setuid")], &[&case.prefix]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for (file, mode) in [(&setuid, 0o4755), (&setgid, 0o2755)] {
        assert_eq!(
            common::elf_interpreter(file).as_deref(),
            case.root.ld.to_str()
        );
        assert_eq!(state(file).1, mode, "{} keeps its mode", file.display());
    }
}

#[test]
fn symlink_loops() {
    let case = Case::new();
    let (a, b) = (case.prefix.join("loop-a"), case.prefix.join("loop-b"));
    std::os::unix::fs::symlink("loop-b", &a).unwrap();
    std::os::unix::fs::symlink("loop-a", &b).unwrap();
    let dir_loop = case.prefix.join("sub");
    fs::create_dir(&dir_loop).unwrap();
    std::os::unix::fs::symlink("..", dir_loop.join("up")).unwrap();
    let out = case.fix();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read_link(&a).unwrap(), Path::new("loop-b"));
    assert_eq!(fs::read_link(&b).unwrap(), Path::new("loop-a"));
    case.assert_good_patched();
}

#[test]
fn dangling_links() {
    let case = Case::new();
    let dangling = case.prefix.join("libgone.so");
    std::os::unix::fs::symlink("libgone.so.1", &dangling).unwrap();
    let out = case.fix();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(fs::read_link(&dangling).unwrap(), Path::new("libgone.so.1"));
    case.assert_good_patched();
}

#[test]
fn links_out_of_the_roots_are_never_followed() {
    let case = Case::new();
    let outside = case.work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = outside.join("program");
    fs::copy(program("hello"), &target).unwrap();
    let before = (state(&target), fs::metadata(&target).unwrap().ino());
    std::os::unix::fs::symlink(&target, case.prefix.join("to-program")).unwrap();
    std::os::unix::fs::symlink(&outside, case.prefix.join("to-dir")).unwrap();
    let out = case.fix();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        (state(&target), fs::metadata(&target).unwrap().ino()),
        before,
        "a file outside the roots must never change"
    );
    assert_eq!(
        fs::read_link(case.prefix.join("to-program")).unwrap(),
        target
    );
    assert_eq!(fs::read_link(case.prefix.join("to-dir")).unwrap(), outside);
    case.assert_good_patched();
}

#[test]
fn names_that_are_not_utf8() {
    let case = Case::new();
    let odd = case.add(OsStr::from_bytes(b"n\xffame"), &hello());
    let out = finish(case.command(&[OsStr::new("--json")], &[&case.prefix]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let paths: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    assert!(
        paths.iter().any(|p| p.ends_with("n\u{fffd}ame")),
        "{paths:?}"
    );
    assert_eq!(
        common::elf_interpreter(&odd).as_deref(),
        case.root.ld.to_str()
    );

    let undo = reliability_support::undo(&[], &[&case.prefix]);
    assert!(undo.status.success());
    assert_eq!(
        fs::read(&odd).unwrap(),
        hello(),
        "undo finds it by its bytes"
    );
}

#[test]
fn sparse_file_over_4_gib() {
    let case = Case::new();
    let big = case.add("big", &hello());
    let len = 5u64 << 30;
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(len)
        .unwrap();
    let out = case.fix();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        common::elf_interpreter(&big).as_deref(),
        case.root.ld.to_str()
    );
    let meta = fs::metadata(&big).unwrap();
    assert!(meta.len() >= len);
    assert!(
        meta.blocks() * 512 < 64 << 20,
        "the holes must stay holes: {} bytes on disk",
        meta.blocks() * 512
    );
    let run = case.root.run(&case.prefix, &[&big]);
    assert!(run.status.success(), "{}", text(&run));

    let undo = reliability_support::undo(&[], &[&case.prefix]);
    assert!(undo.status.success());
    let meta = fs::metadata(&big).unwrap();
    assert_eq!(meta.len(), len);
    assert!(meta.blocks() * 512 < 64 << 20);
    let mut head = vec![0u8; hello().len()];
    use std::os::unix::fs::FileExt;
    fs::File::open(&big)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(head, hello());
}
