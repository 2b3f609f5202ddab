//! What the reliability tests share: running autopatch, and snapshots of a tree (content of
//! every file, target of every link, which names share an inode) to compare runs by.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn autopatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autopatch"));
    cmd.env_remove("AUTOPATCH_LOG");
    cmd
}

/// `autopatch fix` on `paths`, with the store index cached in `cache`.
pub fn fix_command(cache: &Path, extra: &[&str], paths: &[&Path]) -> Command {
    let mut cmd = autopatch();
    cmd.arg("fix")
        .arg("--cache-dir")
        .arg(cache)
        .args(extra)
        .args(paths)
        .env("XDG_CONFIG_HOME", cache);
    cmd
}

pub fn fix(cache: &Path, extra: &[&str], paths: &[&Path]) -> Output {
    run(fix_command(cache, extra, paths))
}

pub fn undo(extra: &[&str], paths: &[&Path]) -> Output {
    let mut cmd = autopatch();
    cmd.arg("undo").args(extra).args(paths);
    run(cmd)
}

/// Runs `cmd`, echoing what it said for the test log.
pub fn run(mut cmd: Command) -> Output {
    let out = cmd.output().expect("running autopatch");
    eprintln!("{cmd:?}: {}\n{}", out.status, text(&out));
    out
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// What a tree holds, by path relative to its root: the bytes of regular files and the targets
/// of symlinks; and which names are links of one inode. The journal directory and autopatch's
/// temporary files are left out (listed apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub files: BTreeMap<PathBuf, Vec<u8>>,
    pub links: BTreeMap<PathBuf, PathBuf>,
    /// Groups of two or more names of one inode.
    pub shared: BTreeSet<Vec<PathBuf>>,
    pub temp_files: Vec<PathBuf>,
}

pub fn snapshot(root: &Path) -> Snapshot {
    let mut snap = Snapshot {
        files: BTreeMap::new(),
        links: BTreeMap::new(),
        shared: BTreeSet::new(),
        temp_files: Vec::new(),
    };
    let mut by_inode: BTreeMap<(u64, u64), Vec<PathBuf>> = BTreeMap::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".autopatch");
    for entry in walk {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
        let name = entry.file_name().to_string_lossy();
        if name.starts_with(".autopatch-") {
            snap.temp_files.push(rel);
            continue;
        }
        let kind = entry.file_type();
        if kind.is_symlink() {
            snap.links.insert(rel, fs::read_link(entry.path()).unwrap());
        } else if kind.is_file() {
            let meta = entry.metadata().unwrap();
            by_inode
                .entry((meta.dev(), meta.ino()))
                .or_default()
                .push(rel.clone());
            snap.files.insert(rel, fs::read(entry.path()).unwrap());
        }
    }
    snap.shared = by_inode.into_values().filter(|n| n.len() > 1).collect();
    snap
}

impl Snapshot {
    /// The paths whose content differs from `other`'s, or that only one of them has.
    pub fn differences(&self, other: &Snapshot) -> Vec<PathBuf> {
        let paths: BTreeSet<&PathBuf> = self.files.keys().chain(other.files.keys()).collect();
        paths
            .into_iter()
            .filter(|p| self.files.get(*p) != other.files.get(*p))
            .cloned()
            .collect()
    }

    /// Panics, naming what differs, unless `self` holds what `other` does.
    pub fn assert_same(&self, other: &Snapshot, what: &str) {
        let differ = self.differences(other);
        assert!(differ.is_empty(), "{what}: content differs: {differ:?}");
        assert_eq!(self.links, other.links, "{what}: symlinks differ");
        assert_eq!(self.shared, other.shared, "{what}: hard links differ");
        assert!(
            self.temp_files.is_empty(),
            "{what}: temporary files left: {:?}",
            self.temp_files
        );
    }
}

/// Copies `from` (a conda root: env and pkgs) to `to`, hard links between them kept.
pub fn copy_tree(from: &Path, to: &Path) {
    if to.exists() {
        make_writable(to);
        fs::remove_dir_all(to).unwrap();
    }
    fs::create_dir_all(to).unwrap();
    let out = Command::new("cp")
        .arg("-a")
        .arg(from.join("."))
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "cp: {}", text(&out));
}

/// Gives back write permission everywhere under `dir`, so a test can clean up.
pub fn make_writable(dir: &Path) {
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+rwX")
        .arg(dir)
        .output();
}

/// A small random number generator, seeded from `AUTOPATCH_TEST_SEED` or the clock (the seed
/// is printed so that a failure can be replayed).
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("AUTOPATCH_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("AUTOPATCH_TEST_SEED={seed}");
        Rng(seed | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Whether `name` starts with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"\x7fELF")
}
