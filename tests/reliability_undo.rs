//! `autopatch undo`: every file and conda record `fix` changed comes back byte for byte, from
//! a journal much smaller than the files; after a second run with other settings, after the
//! user deleted or changed a file, and for part of a prefix, it does what it says.

mod common;
mod reliability_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use reliability_support::{Snapshot, copy_tree, fix, snapshot, text, undo};

const SPECS: &[&str] = &["zstd", "tk"];

/// A fresh copy of the env under `work`, and what it holds.
fn fresh_env(work: &Path) -> Option<(PathBuf, Snapshot)> {
    common::require_nixroot();
    let env = common::conda_env_or_skip(SPECS)?;
    let tree = work.join("tree");
    copy_tree(&env.root, &tree);
    let pristine = snapshot(&tree);
    Some((tree, pristine))
}

fn journal(tree: &Path) -> PathBuf {
    tree.join("env/.autopatch/journal.jsonl")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn undo_after_a_second_run_with_other_settings_gives_back_the_original() {
    let work = tempfile::tempdir().unwrap();
    let Some((tree, pristine)) = fresh_env(work.path()) else {
        return;
    };
    let cache = work.path().join("cache");
    assert!(fix(&cache, &[], &[&tree]).status.success());
    let first = snapshot(&tree);
    let patched = first.differences(&pristine);

    // A longer interpreter than before: the second rewrite rebuilds the region the first added.
    let other = format!(
        "/nix/store/{}-glibc-elsewhere/lib/ld-linux-x86-64.so.2",
        "0".repeat(32)
    );
    let out = fix(&cache, &["--no-verify", "--interpreter", &other], &[&tree]);
    assert!(out.status.success(), "second run: {}", text(&out));
    let second = snapshot(&tree);
    assert!(
        !second.differences(&first).is_empty(),
        "the second run must change files again"
    );

    let journal_len = fs::metadata(journal(&tree)).unwrap().len();
    let patched: Vec<_> = patched
        .into_iter()
        .filter(|p| !p.starts_with("env/conda-meta"))
        .collect();
    let patched_len: usize = patched.iter().map(|p| first.files[p].len()).sum();
    assert!(
        journal_len * 20 < patched_len as u64,
        "the journal ({journal_len} bytes) must hold header bytes, not copies of the \
         {patched_len} bytes of patched files"
    );

    let out = undo(&["--json"], &[&tree]);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = report[0]["prefixes"][0]["files"].as_array().unwrap();
    let restored = files.iter().filter(|f| f["outcome"] == "restored").count();
    assert!(restored >= patched.len(), "{report:#}");
    snapshot(&tree).assert_same(&pristine, "after undo");
    assert!(!journal(&tree).exists(), "the journal must go");
    assert!(!tree.join("env/.autopatch").exists());

    let out = undo(&[], &[&tree]);
    assert!(out.status.success(), "a second undo has nothing to do");
    assert!(
        stderr(&out).contains("no undo journal here"),
        "{}",
        text(&out)
    );
}

#[test]
fn undo_after_the_user_deleted_a_file_restores_the_rest_and_says_so() {
    let work = tempfile::tempdir().unwrap();
    let Some((tree, pristine)) = fresh_env(work.path()) else {
        return;
    };
    assert!(
        fix(&work.path().join("cache"), &[], &[&tree])
            .status
            .success()
    );
    let gone = PathBuf::from("env/bin/zstd");
    fs::remove_file(tree.join(&gone)).unwrap();

    let out = undo(&[], &[&tree]);
    assert!(out.status.success(), "a deleted file is no failure");
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "{}: deleted since autopatch changed it; nothing to restore",
            tree.join(&gone).display()
        )),
        "{said}"
    );
    assert!(said.contains("restored "), "{said}");

    let mut expected = pristine.clone();
    expected.files.remove(&gone);
    expected.shared.retain(|group| !group.contains(&gone));
    snapshot(&tree).assert_same(&expected, "after undo");
}

#[test]
fn undo_leaves_a_file_changed_since_alone_and_fails() {
    let work = tempfile::tempdir().unwrap();
    let Some((tree, pristine)) = fresh_env(work.path()) else {
        return;
    };
    assert!(
        fix(&work.path().join("cache"), &[], &[&tree])
            .status
            .success()
    );
    let patched = snapshot(&tree);
    let lib = PathBuf::from("env/bin/zstd");
    let cache_lib = PathBuf::from("pkgs/zstd-1.5.6-ha6fb4c9_0/bin/zstd");
    assert!(
        patched
            .shared
            .iter()
            .any(|g| g.contains(&lib) && g.contains(&cache_lib))
    );
    // One byte in the middle, the length unchanged: far from anything autopatch wrote.
    let mut bytes = patched.files[&lib].clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(tree.join(&lib))
            .unwrap();
        file.write_all_at(&bytes[middle..middle + 1], middle as u64)
            .unwrap();
    }

    let out = undo(&[], &[&tree]);
    assert_eq!(out.status.code(), Some(1), "a file left alone is a failure");
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "{}: changed since autopatch wrote it; left alone",
            tree.join(&lib).display()
        )),
        "{said}"
    );
    let after = snapshot(&tree);
    assert_eq!(after.files[&lib], bytes, "the user's version is kept");
    assert_eq!(after.files[&cache_lib], bytes);
    let mut expected = pristine.clone();
    for name in [&lib, &cache_lib] {
        expected.files.insert(name.clone(), bytes.clone());
    }
    let record = after
        .files
        .keys()
        .find(|p| p.starts_with("env/conda-meta") && p.to_string_lossy().contains("/zstd-"))
        .unwrap()
        .clone();
    // Its record keeps what fix wrote, as no value would fit the user's file.
    expected
        .files
        .insert(record.clone(), after.files[&record].clone());
    after.assert_same(&expected, "after undo");
    assert_ne!(after.files[&record], pristine.files[&record]);
}

#[test]
fn undo_of_part_of_a_prefix_keeps_the_rest_in_the_journal() {
    let work = tempfile::tempdir().unwrap();
    let Some((tree, pristine)) = fresh_env(work.path()) else {
        return;
    };
    assert!(
        fix(&work.path().join("cache"), &[], &[&tree])
            .status
            .success()
    );
    let patched = snapshot(&tree);

    let out = undo(&[], &[&tree.join("env/bin")]);
    assert!(out.status.success());
    let after = snapshot(&tree);
    let mut still_patched = 0;
    for (path, bytes) in &after.files {
        if path.starts_with("env/bin") {
            assert_eq!(bytes, &pristine.files[path], "{} is undone", path.display());
        } else if path.starts_with("env/lib") {
            assert_eq!(
                bytes,
                &patched.files[path],
                "{} is as fix left it",
                path.display()
            );
            still_patched += usize::from(*bytes != pristine.files[path]);
        }
    }
    assert!(still_patched > 0);
    assert!(journal(&tree).exists(), "the libraries are still in it");

    let out = undo(&[], &[&tree]);
    assert!(out.status.success());
    snapshot(&tree).assert_same(&pristine, "after the second undo");
    assert!(!journal(&tree).exists());
}

#[test]
fn undo_keeps_permission_bits_extended_attributes_and_hard_links() {
    let root = common::require_nixroot();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("tools");
    fs::create_dir(&dir).unwrap();
    let program = dir.join("hello");
    let src = work.path().join("hello.c");
    fs::write(&src, "int main(void) { return 0; }\n").unwrap();
    let cc = std::process::Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&program)
        .output()
        .unwrap();
    assert!(cc.status.success(), "{}", text(&cc));
    fs::set_permissions(&program, fs::Permissions::from_mode(0o750)).unwrap();
    xattr::set(&program, "user.origin", b"test").unwrap();
    fs::hard_link(&program, dir.join("hello-again")).unwrap();
    let pristine = snapshot(&dir);

    let ld = root.ld.to_str().unwrap();
    let out = fix(&work.path().join("cache"), &["--interpreter", ld], &[&dir]);
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(
        fs::read(&program).unwrap(),
        pristine.files[Path::new("hello")]
    );

    let out = undo(&[], &[&dir]);
    assert!(out.status.success());
    snapshot(&dir).assert_same(&pristine, "after undo");
    let meta = fs::metadata(&program).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o750);
    assert_eq!(meta.nlink(), 2);
    assert_eq!(
        xattr::get(&program, "user.origin").unwrap().as_deref(),
        Some(&b"test"[..])
    );
}
