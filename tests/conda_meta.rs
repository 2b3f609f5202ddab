//! Reading and updating the conda-meta records of a real environment installed offline from the
//! fixture channel.

mod common;

use std::fs;
use std::path::Path;

use autopatch::conda::{CondaPrefix, update_records};
use serde_json::Value;

const SPECS: &[&str] = &["zstd", "tk"];

fn real_env() -> Option<common::CondaEnv> {
    common::conda_env_or_skip(SPECS)
}

fn record_of(prefix: &Path, name: &str) -> std::path::PathBuf {
    let conda = CondaPrefix::load(prefix).unwrap().unwrap();
    conda.package(name).unwrap().record.clone()
}

#[test]
fn reads_packages_owners_and_dependencies() {
    let Some(env) = real_env() else { return };
    let conda = CondaPrefix::load(&env.prefix).unwrap().unwrap();

    let zlib = conda.package("libzlib").expect("libzlib installed");
    assert_eq!(zlib.version, "1.3.1");
    assert!(
        zlib.package_dir
            .as_ref()
            .is_some_and(|d| d.join("info/index.json").is_file())
    );
    assert_eq!(conda.owner_of("lib/libz.so.1").unwrap().name, "libzlib");
    assert_eq!(
        conda
            .owner_of(env.prefix.join("lib/libtk8.6.so"))
            .unwrap()
            .name,
        "tk"
    );
    for package in conda.packages() {
        for file in &package.files {
            assert!(
                conda.owner_of(file).is_some(),
                "{file} of {} has no owner",
                package.name
            );
        }
    }

    let zstd_deps = conda.transitive_depends("zstd");
    for expected in ["libzlib", "libgcc", "libstdcxx", "_libgcc_mutex"] {
        assert!(
            zstd_deps.contains(expected),
            "{expected} missing from {zstd_deps:?}"
        );
    }
    assert!(
        !zstd_deps.contains("__glibc"),
        "virtual packages are not installed"
    );
    assert!(!zstd_deps.contains("tk"));
}

/// Mamba-style records may lack `files`, `paths_data` and `depends`; the package cache fills in.
#[test]
fn sparse_records_fall_back_to_package_cache() {
    let Some(env) = real_env() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let env = env.fresh_copy(tmp.path());
    let before = CondaPrefix::load(&env.prefix).unwrap().unwrap();
    let original = before.package("zstd").unwrap();

    let mut json: Value = serde_json::from_slice(&fs::read(&original.record).unwrap()).unwrap();
    let fields = json.as_object_mut().unwrap();
    for field in ["files", "paths_data", "depends", "link"] {
        fields.remove(field);
    }
    fields.insert(
        "extracted_package_dir".into(),
        original
            .package_dir
            .as_ref()
            .unwrap()
            .to_str()
            .unwrap()
            .into(),
    );
    fs::write(&original.record, serde_json::to_vec_pretty(&json).unwrap()).unwrap();

    let after = CondaPrefix::load(&env.prefix).unwrap().unwrap();
    let sparse = after.package("zstd").unwrap();
    // The archive's own depends may predate the channel's repodata patches: compare names.
    let names = |p: &autopatch::conda::Package| -> Vec<String> {
        p.dependency_names().map(String::from).collect()
    };
    assert_eq!(names(sparse), names(original));
    assert_eq!(sparse.files, original.files);
    assert_eq!(after.owner_of("lib/libzstd.so.1").unwrap().name, "zstd");
}

#[test]
fn update_records_changes_only_hash_and_size() {
    let Some(env) = real_env() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let env = env.fresh_copy(tmp.path());
    let zlib_record = record_of(&env.prefix, "libzlib");
    let records_before: Vec<(std::path::PathBuf, Vec<u8>)> = env
        .records()
        .into_iter()
        .map(|r| {
            let bytes = fs::read(&r).unwrap();
            (r, bytes)
        })
        .collect();

    let new_sha = "ab".repeat(32);
    let changed = [("lib/libz.so.1.3.1", new_sha.as_str(), 4242)];
    assert_eq!(update_records(&env.prefix, &changed).unwrap(), 1);

    for (record, before) in &records_before {
        let after = fs::read(record).unwrap();
        if *record != zlib_record {
            assert_eq!(&after, before, "{} changed", record.display());
            continue;
        }
        let before: Value = serde_json::from_slice(before).unwrap();
        let after_json: Value = serde_json::from_slice(&after).unwrap();
        assert_eq!(keys(&before), keys(&after_json), "top-level key order kept");
        let entry = after_json["paths_data"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["_path"] == "lib/libz.so.1.3.1")
            .unwrap();
        assert_eq!(entry["sha256_in_prefix"], new_sha.as_str());
        assert_eq!(entry["size_in_bytes"], 4242);
        let mut expected = before.clone();
        expected["paths_data"]["paths"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|e| e["_path"] == "lib/libz.so.1.3.1")
            .unwrap()
            .as_object_mut()
            .unwrap()
            .extend([
                (
                    "sha256_in_prefix".to_string(),
                    Value::from(new_sha.as_str()),
                ),
                ("size_in_bytes".to_string(), Value::from(4242)),
            ]);
        assert_eq!(after_json, expected, "nothing else changed");
        assert_same_text_but_changed_lines(before_text(&records_before, record), &after, &new_sha);
    }

    let conda = CondaPrefix::load(&env.prefix).unwrap().unwrap();
    assert_eq!(
        conda.owner_of("lib/libz.so.1.3.1").unwrap().name,
        "libzlib",
        "the updated record still reads"
    );
    assert_eq!(
        update_records(&env.prefix, &changed).unwrap(),
        0,
        "idempotent"
    );
}

fn keys(json: &Value) -> Vec<&String> {
    json.as_object().unwrap().keys().collect()
}

fn before_text<'a>(records: &'a [(std::path::PathBuf, Vec<u8>)], record: &Path) -> &'a str {
    let (_, bytes) = records.iter().find(|(r, _)| r == record).unwrap();
    std::str::from_utf8(bytes).unwrap()
}

/// The rewritten record is the installer's text with the changed entry's hash line added and its
/// size replaced: same indentation, same line breaks, same trailing newline (or none).
fn assert_same_text_but_changed_lines(before: &str, after: &[u8], new_sha: &str) {
    let after = std::str::from_utf8(after).unwrap();
    let sha_line = format!("\"sha256_in_prefix\": \"{new_sha}\",");
    let unchanged = |text: &str| -> String {
        text.split('\n')
            .filter(|l| l.trim() != sha_line && !l.trim().starts_with("\"size_in_bytes\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(unchanged(after), unchanged(before));
    assert_eq!(after.lines().count(), before.lines().count() + 1);
}
