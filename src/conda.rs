//! Conda prefix metadata: which package installed each file, what each package depends on, and
//! keeping the `conda-meta` records truthful after files were rewritten.
//!
//! Records written by conda are complete; those written by mamba, micromamba, pixi or rattler may
//! leave out fields (`files`, `paths_data`, even `depends`), which are then read from the
//! extracted package in the package cache (`info/paths.json`, `info/index.json`).

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::fastmap::FastMap;

/// Why the conda metadata of a prefix could not be read or updated.
#[derive(Debug, Error)]
pub enum CondaError {
    #[error("cannot read {}: {source}; check its permissions", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{} is not valid conda metadata ({source}); restore it from a backup or reinstall the package it belongs to",
        path.display()
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{} names no package and its package cache entry is gone; reinstall that package",
        path.display()
    )]
    Unnamed { path: PathBuf },
    #[error("cannot write {}: {source}; check that the prefix is writable", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "cannot keep the old values of {} in the undo journal: {source}; check that the prefix is writable",
        path.display()
    )]
    Journal { path: PathBuf, source: io::Error },
}

pub type Result<T, E = CondaError> = std::result::Result<T, E>;

/// The path of one entry of a record's `paths_data.paths`: the rest of it is not needed to
/// know which package installed a file.
#[derive(Debug, Deserialize)]
struct PathEntry {
    /// Relative to the prefix.
    #[serde(rename = "_path")]
    path: String,
}

/// A package installed in the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub build: String,
    /// Match specs as written, e.g. `libzlib >=1.3.1,<2.0a0`.
    pub depends: Vec<String>,
    /// Installed files, relative to the prefix.
    pub files: Vec<String>,
    /// The `conda-meta/*.json` record this was read from.
    pub record: PathBuf,
    /// The extracted package in the package cache, when it still exists.
    pub package_dir: Option<PathBuf>,
    pub url: Option<String>,
    /// The archive's file name (`fn`), e.g. `libzlib-1.3.1-hb9d3cd8_2.conda`.
    pub file_name: Option<String>,
}

impl Package {
    /// Names of the packages this one depends on, virtual ones (`__glibc`) included.
    pub fn dependency_names(&self) -> impl Iterator<Item = &str> {
        self.depends.iter().map(|spec| match_spec_name(spec))
    }
}

/// The package name a match spec is about: `libzlib >=1.3.1,<2.0a0` → `libzlib`,
/// `conda-forge::numpy>=1.26` → `numpy`.
pub fn match_spec_name(spec: &str) -> &str {
    let first = spec.split_whitespace().next().unwrap_or("");
    let without_channel = first.rsplit("::").next().unwrap_or(first);
    let end = without_channel
        .find(|c: char| "<>=!~[(".contains(c))
        .unwrap_or(without_channel.len());
    &without_channel[..end]
}

/// The conda packages of a prefix, by name and by the files they installed.
#[derive(Debug, Clone)]
pub struct CondaPrefix {
    prefix: PathBuf,
    /// Sorted by name.
    packages: Vec<Package>,
    by_name: FastMap<String, usize>,
    /// Installed file (its path relative to the prefix, as bytes) → package.
    by_file: FastMap<OsString, usize>,
}

impl CondaPrefix {
    /// Reads every `conda-meta/*.json` record of `prefix`; `None` when it is no conda prefix.
    pub fn load(prefix: &Path) -> Result<Option<CondaPrefix>> {
        let meta = prefix.join("conda-meta");
        if !meta.is_dir() {
            return Ok(None);
        }
        let mut packages = record_paths(&meta)?
            .iter()
            .map(|record| read_package(prefix, record))
            .collect::<Result<Vec<_>>>()?;
        packages.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.record.cmp(&b.record)));
        Ok(Some(CondaPrefix::index(prefix, packages)))
    }

    fn index(prefix: &Path, packages: Vec<Package>) -> CondaPrefix {
        let mut by_name = FastMap::default();
        let mut by_file = FastMap::default();
        for (i, package) in packages.iter().enumerate() {
            by_name.entry(package.name.clone()).or_insert(i);
            for file in &package.files {
                // A file claimed twice (a clobber) stays with the first package by name.
                by_file.entry(OsString::from(file)).or_insert(i);
            }
        }
        CondaPrefix {
            prefix: prefix.to_path_buf(),
            packages,
            by_name,
            by_file,
        }
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// All packages, sorted by name.
    pub fn packages(&self) -> &[Package] {
        &self.packages
    }

    pub fn package(&self, name: &str) -> Option<&Package> {
        self.by_name.get(name).map(|&i| &self.packages[i])
    }

    /// The package that installed `path`: relative to the prefix, or absolute inside it.
    pub fn owner_of(&self, path: impl AsRef<Path>) -> Option<&Package> {
        let path = path.as_ref();
        let relative = path.strip_prefix(&self.prefix).unwrap_or(path);
        self.by_file
            .get(relative.as_os_str())
            .map(|&i| &self.packages[i])
    }

    /// Every package `name` depends on, directly or not, that is installed in the prefix
    /// (`name` itself excluded).
    pub fn transitive_depends(&self, name: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut pending: Vec<&Package> = self.package(name).into_iter().collect();
        while let Some(package) = pending.pop() {
            for dep in package.dependency_names() {
                if dep == name || found.contains(dep) {
                    continue;
                }
                if let Some(installed) = self.package(dep) {
                    found.insert(dep.to_string());
                    pending.push(installed);
                }
            }
        }
        found
    }
}

/// The `*.json` files of `conda-meta`, sorted.
fn record_paths(meta: &Path) -> Result<Vec<PathBuf>> {
    let read_error = |source| CondaError::Read {
        path: meta.to_path_buf(),
        source,
    };
    let mut records = Vec::new();
    for entry in fs::read_dir(meta).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            records.push(path);
        }
    }
    records.sort();
    Ok(records)
}

/// A record as any installer writes it; everything may be missing.
#[derive(Debug, Default, Deserialize)]
struct RecordJson {
    name: Option<String>,
    version: Option<String>,
    build: Option<String>,
    depends: Option<Vec<String>>,
    files: Option<Vec<String>>,
    /// Only noted, and read again when `files` is missing: it lists the same paths, with much
    /// else, and makes up most of a record.
    paths_data: Option<IgnoredAny>,
    link: Option<LinkJson>,
    extracted_package_dir: Option<String>,
    url: Option<String>,
    #[serde(rename = "fn")]
    file_name: Option<String>,
}

/// The `paths_data` of a record.
#[derive(Debug, Deserialize)]
struct RecordPathsJson {
    paths_data: PathsJson,
}

#[derive(Debug, Deserialize)]
struct PathsJson {
    #[serde(default)]
    paths: Vec<PathEntry>,
}

impl PathsJson {
    fn into_files(self) -> Vec<String> {
        self.paths.into_iter().map(|p| p.path).collect()
    }
}

#[derive(Debug, Deserialize)]
struct LinkJson {
    source: Option<String>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    parse_json(path, &read_bytes(path)?)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|source| CondaError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| CondaError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads `path` from the package cache. The cache only fills gaps in the records, so an entry
/// that is missing or damaged leaves them unfilled rather than failing the whole prefix.
fn read_cached_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    if !path.is_file() {
        return None;
    }
    read_json(path)
        .inspect_err(|e| tracing::warn!("ignoring the package cache entry: {e}"))
        .ok()
}

fn read_package(prefix: &Path, record_path: &Path) -> Result<Package> {
    let bytes = read_bytes(record_path)?;
    let record: RecordJson = parse_json(record_path, &bytes)?;
    let package_dir = find_package_dir(prefix, record_path, &record);
    let info = package_dir.as_ref().map(|d| d.join("info"));
    let incomplete_identity = record.name.is_none()
        || record.version.is_none()
        || record.build.is_none()
        || record.depends.is_none();
    let index: RecordJson = match (&info, incomplete_identity) {
        (Some(info), true) => read_cached_json(&info.join("index.json")).unwrap_or_default(),
        _ => RecordJson::default(),
    };
    let files = match (record.files, record.paths_data, &info) {
        (Some(files), _, _) => files,
        (None, Some(_), _) => parse_json::<RecordPathsJson>(record_path, &bytes)?
            .paths_data
            .into_files(),
        (None, None, Some(info)) => read_cached_json::<PathsJson>(&info.join("paths.json"))
            .map(PathsJson::into_files)
            .unwrap_or_default(),
        (None, None, None) => Vec::new(),
    };
    let (name_from_file, version_from_file, build_from_file) =
        identity_from_record_name(record_path);
    let name = record
        .name
        .or(index.name)
        .or(name_from_file)
        .ok_or_else(|| CondaError::Unnamed {
            path: record_path.to_path_buf(),
        })?;
    Ok(Package {
        name,
        version: record
            .version
            .or(index.version)
            .or(version_from_file)
            .unwrap_or_default(),
        build: record
            .build
            .or(index.build)
            .or(build_from_file)
            .unwrap_or_default(),
        depends: record.depends.or(index.depends).unwrap_or_default(),
        files,
        record: record_path.to_path_buf(),
        package_dir,
        url: record.url,
        file_name: record.file_name,
    })
}

/// Records are named `<name>-<version>-<build>.json`; names may hold dashes, version and build
/// may not.
fn identity_from_record_name(record: &Path) -> (Option<String>, Option<String>, Option<String>) {
    let stem = record.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let mut parts = stem.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(build), Some(version), Some(name)) if !name.is_empty() => (
            Some(name.to_string()),
            Some(version.to_string()),
            Some(build.to_string()),
        ),
        _ => (None, None, None),
    }
}

/// Where the package was extracted: what the record says, else the usual package caches of a
/// named environment (`<root>/envs/<env>` → `<root>/pkgs`) and of a root prefix.
fn find_package_dir(prefix: &Path, record_path: &Path, record: &RecordJson) -> Option<PathBuf> {
    let dist = dist_name(record_path, record);
    let recorded = [
        record.link.as_ref().and_then(|l| l.source.clone()),
        record.extracted_package_dir.clone(),
    ];
    let named_env_root = prefix.parent().and_then(Path::parent);
    let conventional = [
        named_env_root.map(|root| root.join("pkgs").join(&dist)),
        Some(prefix.join("pkgs").join(&dist)),
    ];
    recorded
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .chain(conventional.into_iter().flatten())
        .find(|dir| dir.join("info").is_dir())
}

/// The archive name without its extension, e.g. `libzlib-1.3.1-hb9d3cd8_2`.
fn dist_name(record_path: &Path, record: &RecordJson) -> String {
    let archive = record.file_name.clone().or_else(|| {
        record
            .url
            .as_ref()
            .and_then(|u| u.rsplit('/').next().map(String::from))
    });
    match archive {
        Some(a) => strip_archive_extension(&a).to_string(),
        None => record_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    }
}

fn strip_archive_extension(archive: &str) -> &str {
    archive
        .strip_suffix(".conda")
        .or_else(|| archive.strip_suffix(".tar.bz2"))
        .unwrap_or(archive)
}

/// A rewritten file: its path relative to the prefix, new sha256 (hex) and new size.
pub type ChangedFile<'a> = (&'a str, &'a str, u64);

/// Records the new hash and size of rewritten files in the `paths_data` of the records that list
/// them, so `conda doctor` and friends do not report them as corrupted. Only the changed entries
/// are written anew, in the record's indentation; every other byte is kept. Each record is
/// replaced atomically. Returns how many records
/// were rewritten.
pub fn update_records(prefix: &Path, changed: &[ChangedFile]) -> Result<usize> {
    let rewritten = update_records_logged(prefix, changed, &mut |_, _| Ok(()), &mut || Ok(()))?;
    let meta = prefix.join("conda-meta");
    crate::apply::sync_filesystems(&[meta]).map_err(|e| CondaError::Write {
        path: e.path,
        source: e.source,
    })?;
    Ok(rewritten)
}

/// The `sha256_in_prefix` and `size_in_bytes` of one `paths_data` entry, each `None` where the
/// key is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordFields {
    pub path: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub sha256_in_prefix: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub size_in_bytes: Option<Value>,
}

/// A key that is there, even with `null`, is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

const FIELD_KEYS: [&str; 2] = ["sha256_in_prefix", "size_in_bytes"];

impl RecordFields {
    fn of(path: &str, entry: &Map<String, Value>) -> RecordFields {
        RecordFields {
            path: path.to_string(),
            sha256_in_prefix: entry.get(FIELD_KEYS[0]).cloned(),
            size_in_bytes: entry.get(FIELD_KEYS[1]).cloned(),
        }
    }
}

/// [`update_records`], telling `before_write` each record about to be rewritten (by path) and
/// what its changed entries held before, so the change can be taken back; `before_writes_done`
/// is called once they all were, before the first record is replaced. Records are replaced
/// without a flush of their own: the caller flushes the filesystem once.
pub fn update_records_logged(
    prefix: &Path,
    changed: &[ChangedFile],
    before_write: &mut dyn FnMut(&Path, Vec<RecordFields>) -> io::Result<()>,
    before_writes_done: &mut dyn FnMut() -> io::Result<()>,
) -> Result<usize> {
    let staged = stage_record_updates(prefix, changed, before_write, before_writes_done)?;
    let count = staged.len();
    staged.into_iter().try_for_each(StagedRecord::replace)?;
    Ok(count)
}

/// [`update_records_logged`] up to the replacement of the records: their new texts are written
/// beside them, for the caller to flush and then [`StagedRecord::replace`] each.
pub fn stage_record_updates(
    prefix: &Path,
    changed: &[ChangedFile],
    before_write: &mut dyn FnMut(&Path, Vec<RecordFields>) -> io::Result<()>,
    before_writes_done: &mut dyn FnMut() -> io::Result<()>,
) -> Result<Vec<StagedRecord>> {
    use rayon::prelude::*;
    let meta = prefix.join("conda-meta");
    if changed.is_empty() || !meta.is_dir() {
        return Ok(Vec::new());
    }
    let by_path: HashMap<&str, (&str, u64)> = changed
        .iter()
        .map(|&(path, sha, size)| (path, (sha, size)))
        .collect();
    // What a record that lists a changed file holds: its path as a JSON string. Hundreds of
    // paths are looked for in each record at once.
    let quoted: Vec<String> = by_path
        .keys()
        .filter_map(|path| serde_json::to_string(path).ok())
        .collect();
    let listing = AhoCorasick::new(&quoted).map_err(|e| CondaError::Read {
        path: meta.clone(),
        source: io::Error::other(e),
    })?;
    let updates: Vec<RecordUpdate> = record_paths(&meta)?
        .into_par_iter()
        .map(|record| planned_update(record, &by_path, &listing))
        .filter_map(Result::transpose)
        .collect::<Result<_>>()?;
    for u in &updates {
        before_write(&u.record, u.before.clone()).map_err(|source| CondaError::Journal {
            path: u.record.clone(),
            source,
        })?;
    }
    if let Some(first) = updates.first() {
        before_writes_done().map_err(|source| CondaError::Journal {
            path: first.record.clone(),
            source,
        })?;
    }
    updates
        .iter()
        .map(|u| write_beside(&u.record, &u.text, false))
        .collect()
}

/// A record's new text, with what its changed entries held before.
struct RecordUpdate {
    record: PathBuf,
    text: Vec<u8>,
    before: Vec<RecordFields>,
}

/// The update of `record`, or `None` when it lists none of `changed`.
fn planned_update(
    record: PathBuf,
    changed: &HashMap<&str, (&str, u64)>,
    listing: &AhoCorasick,
) -> Result<Option<RecordUpdate>> {
    let Some(text) = read_record_listing(&record, listing)? else {
        return Ok(None);
    };
    let mut before = Vec::new();
    let mut update = |entry: &mut Map<String, Value>| {
        let Some(path) = entry.get("_path").and_then(Value::as_str) else {
            return false;
        };
        let Some(&(sha, size)) = changed.get(path) else {
            return false;
        };
        let old = RecordFields::of(path, entry);
        let mut modified = set_field(entry, FIELD_KEYS[0], Value::from(sha));
        modified |= set_field(entry, FIELD_KEYS[1], Value::from(size));
        if modified {
            before.push(old);
        }
        modified
    };
    let spliced = splice_entries(&record, &text, &|raw| listing.is_match(raw), &mut update)?;
    Ok(spliced.map(|text| RecordUpdate {
        text: text.into_bytes(),
        record,
        before,
    }))
}

/// The text of the record, when it holds one of the changed paths `listing` finds (as JSON
/// strings): most records of an environment list none of a run's files and are not parsed.
fn read_record_listing(record: &Path, listing: &AhoCorasick) -> Result<Option<String>> {
    let text = read_record_text(record)?;
    Ok(listing.is_match(&text).then_some(text))
}

fn read_record_text(record: &Path) -> Result<String> {
    fs::read_to_string(record).map_err(|source| CondaError::Read {
        path: record.to_path_buf(),
        source,
    })
}

/// The entries of a record's `paths_data.paths`, as the slices of its text that hold them.
#[derive(Deserialize)]
struct RawPathsRecord<'a> {
    #[serde(borrow)]
    paths_data: Option<RawPaths<'a>>,
}

#[derive(Deserialize)]
struct RawPaths<'a> {
    #[serde(borrow, default)]
    paths: Vec<&'a serde_json::value::RawValue>,
}

/// `text` with the `paths_data` entries that `edit` changes written anew, in the record's own
/// style, and every other byte as it was: a record can list thousands of files, a run changes a
/// few. Only entries whose text `might_change` are parsed. `None` when nothing changed.
fn splice_entries(
    record: &Path,
    text: &str,
    might_change: &dyn Fn(&str) -> bool,
    edit: &mut dyn FnMut(&mut Map<String, Value>) -> bool,
) -> Result<Option<String>> {
    let parse_error = |source| CondaError::Parse {
        path: record.to_path_buf(),
        source,
    };
    let parsed: RawPathsRecord = serde_json::from_str(text).map_err(parse_error)?;
    let entries = parsed.paths_data.map(|p| p.paths).unwrap_or_default();
    let indent = indentation_of(text);
    let mut out = String::new();
    let mut copied = 0;
    for raw in entries
        .iter()
        .map(|r| r.get())
        .filter(|raw| might_change(raw))
    {
        let Ok(mut entry) = serde_json::from_str::<Map<String, Value>>(raw) else {
            continue;
        };
        if !edit(&mut entry) {
            continue;
        }
        let start = raw.as_ptr() as usize - text.as_ptr() as usize;
        out.push_str(&text[copied..start]);
        out.push_str(&render_entry(&entry, indent, line_indentation(text, start)));
        copied = start + raw.len();
    }
    if copied == 0 {
        return Ok(None);
    }
    out.push_str(&text[copied..]);
    Ok(Some(out))
}

/// An entry as the pretty printer that wrote the record would: `indent` per level, each line
/// after the first starting with `base`, the indentation of the line the entry starts on.
fn render_entry(entry: &Map<String, Value>, indent: Option<&str>, base: &str) -> String {
    let Some(indent) = indent else {
        return serde_json::to_string(entry).expect("a JSON map serializes");
    };
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    Serialize::serialize(entry, &mut serializer).expect("a JSON map serializes");
    let pretty = String::from_utf8(out).expect("serde_json writes UTF-8");
    pretty.replace('\n', &format!("\n{base}"))
}

/// The whitespace that starts the line `at` lies on, when only whitespace comes before `at`.
fn line_indentation(text: &str, at: usize) -> &str {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let lead = &text[line_start..at];
    if lead.chars().all(|c| c == ' ' || c == '\t') {
        lead
    } else {
        ""
    }
}

/// Puts `fields` back into the record at `record`: each key takes the value it had, or is
/// removed when it was absent. Returns whether the record changed.
pub fn restore_record_fields(record: &Path, fields: &[RecordFields]) -> Result<bool> {
    let text = read_record_text(record)?;
    let by_path: HashMap<&str, &RecordFields> =
        fields.iter().map(|f| (f.path.as_str(), f)).collect();
    let mut restore = |entry: &mut Map<String, Value>| {
        let Some(old) = entry
            .get("_path")
            .and_then(Value::as_str)
            .and_then(|p| by_path.get(p))
        else {
            return false;
        };
        let mut modified = false;
        for (key, value) in FIELD_KEYS
            .iter()
            .zip([&old.sha256_in_prefix, &old.size_in_bytes])
        {
            modified |= match value {
                Some(v) => set_field(entry, key, v.clone()),
                None => entry.shift_remove(*key).is_some(),
            };
        }
        modified
    };
    match splice_entries(record, &text, &|_| true, &mut restore)? {
        Some(restored) => write_atomically(record, restored.as_bytes(), true).map(|()| true),
        None => Ok(false),
    }
}

/// Sets `key`, returning whether anything changed. A new key goes where sorted order puts it, as
/// conda and rattler both write their keys sorted.
fn set_field(entry: &mut Map<String, Value>, key: &str, value: Value) -> bool {
    if let Some(old) = entry.get_mut(key) {
        let changed = *old != value;
        *old = value;
        return changed;
    }
    let at = entry
        .keys()
        .position(|k| k.as_str() > key)
        .unwrap_or(entry.len());
    entry.shift_insert(at, key.to_string(), value);
    true
}

/// The whitespace starting the first indented line; `None` for single-line JSON.
fn indentation_of(text: &str) -> Option<&str> {
    let trimmed = text.trim_end();
    if !trimmed.contains('\n') {
        return None;
    }
    let indented = trimmed
        .lines()
        .skip(1)
        .map(|line| &line[..line.len() - line.trim_start().len()])
        .find(|indent| !indent.is_empty());
    Some(indented.unwrap_or("  "))
}

/// Replaces `path` with `contents` through a temporary file in the same directory, keeping its
/// permissions, so a crash leaves either the old record or the new one; flushed first when
/// `flush`, else the caller flushes the filesystem.
fn write_atomically(path: &Path, contents: &[u8], flush: bool) -> Result<()> {
    write_beside(path, contents, flush)?.replace()
}

/// A record's new text, written beside it under a temporary name (removed if it is dropped).
pub struct StagedRecord {
    record: PathBuf,
    temp: tempfile::TempPath,
}

impl StagedRecord {
    /// Renames the new text over the record. On ext4, renaming over a file whose replacement
    /// is not on disk yet writes the replacement out there and then, milliseconds per record:
    /// a caller replacing many flushes them all first.
    pub fn replace(self) -> Result<()> {
        let record = self.record;
        self.temp.persist(&record).map_err(|e| CondaError::Write {
            path: record,
            source: e.error,
        })
    }

    /// [`Self::replace`], keeping the old record linked under a temporary name beside it, which
    /// is returned for the caller to remove. Freeing a large file's blocks can take milliseconds
    /// (ext4 mounted with `discard` trims them there and then): the caller can spend them later,
    /// beside other work. A run killed before the removal leaves the name for the next to sweep.
    pub fn replace_keeping_old(self) -> Result<PathBuf> {
        let old = self.temp.with_extension("old");
        fs::hard_link(&self.record, &old).map_err(|source| CondaError::Write {
            path: self.record.clone(),
            source,
        })?;
        self.replace()
            .inspect_err(|_| drop(fs::remove_file(&old)))
            .map(|()| old)
    }
}

/// Writes `contents` beside `path`, with its permissions; flushed when `flush`.
fn write_beside(path: &Path, contents: &[u8], flush: bool) -> Result<StagedRecord> {
    let write_error = |source| CondaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let permissions = fs::metadata(path).map_err(write_error)?.permissions();
    let mut temp = tempfile::Builder::new()
        .prefix(".autopatch-")
        .suffix(".json.tmp")
        .tempfile_in(dir)
        .map_err(write_error)?;
    temp.write_all(contents).map_err(write_error)?;
    temp.as_file()
        .set_permissions(permissions)
        .map_err(write_error)?;
    if flush {
        temp.as_file().sync_all().map_err(write_error)?;
    }
    Ok(StagedRecord {
        record: path.to_path_buf(),
        temp: temp.into_temp_path(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn conda_record(name: &str, depends: &[&str], files: &[&str]) -> Value {
        let paths: Vec<Value> = files
            .iter()
            .map(|f| json!({"_path": f, "path_type": "hardlink", "sha256": "00", "size_in_bytes": 1}))
            .collect();
        json!({
            "build": "h0_0",
            "depends": depends,
            "files": files,
            "name": name,
            "paths_data": {"paths": paths, "paths_version": 1},
            "version": "1.0",
        })
    }

    fn write_record(prefix: &Path, record: &Value) {
        let file = format!(
            "{}-{}-{}.json",
            record["name"].as_str().unwrap(),
            "1.0",
            "h0_0"
        );
        write(
            &prefix.join("conda-meta").join(file),
            &serde_json::to_string_pretty(record).unwrap(),
        );
    }

    #[test]
    fn match_spec_names() {
        assert_eq!(match_spec_name("libgcc >=13"), "libgcc");
        assert_eq!(match_spec_name("libzlib >=1.3.1,<2.0a0"), "libzlib");
        assert_eq!(match_spec_name("python_abi 3.12.* *_cp312"), "python_abi");
        assert_eq!(match_spec_name("conda-forge::numpy>=1.26"), "numpy");
        assert_eq!(match_spec_name("numpy[version='>=1.0']"), "numpy");
        assert_eq!(match_spec_name("__glibc"), "__glibc");
    }

    #[test]
    fn no_conda_meta_is_no_conda_prefix() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CondaPrefix::load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn owners_and_transitive_depends() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path();
        write_record(
            prefix,
            &conda_record(
                "zstd",
                &["libgcc >=13", "libzlib >=1.3.1,<2.0a0", "__glibc >=2.17"],
                &["lib/libzstd.so.1"],
            ),
        );
        write_record(
            prefix,
            &conda_record("libzlib", &["libgcc >=13"], &["lib/libz.so.1"]),
        );
        write_record(
            prefix,
            &conda_record("libgcc", &["_openmp_mutex >=4.5"], &["lib/libgcc_s.so.1"]),
        );
        write(&prefix.join("conda-meta/history"), "==> 2025 <==\n");

        let conda = CondaPrefix::load(prefix).unwrap().unwrap();
        let names: Vec<&str> = conda.packages().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["libgcc", "libzlib", "zstd"]);
        assert_eq!(conda.owner_of("lib/libz.so.1").unwrap().name, "libzlib");
        assert_eq!(
            conda
                .owner_of(prefix.join("lib/libzstd.so.1"))
                .unwrap()
                .name,
            "zstd"
        );
        assert!(conda.owner_of("lib/unknown.so").is_none());
        let deps: Vec<String> = conda.transitive_depends("zstd").into_iter().collect();
        assert_eq!(deps, ["libgcc", "libzlib"]);
        assert!(conda.transitive_depends("libgcc").is_empty());
        assert!(conda.transitive_depends("absent").is_empty());
    }

    #[test]
    fn dependency_cycles_terminate() {
        let dir = tempfile::tempdir().unwrap();
        write_record(dir.path(), &conda_record("a", &["b"], &[]));
        write_record(dir.path(), &conda_record("b", &["a"], &[]));
        let conda = CondaPrefix::load(dir.path()).unwrap().unwrap();
        assert_eq!(
            conda
                .transitive_depends("a")
                .into_iter()
                .collect::<Vec<_>>(),
            ["b"]
        );
    }

    /// A rattler-style record lacking `files`, `paths_data` and `depends`: they come from the
    /// package cache of a named environment (`<root>/envs/<env>` and `<root>/pkgs`).
    #[test]
    fn sparse_record_falls_back_to_package_cache() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("envs/work");
        let pkg = dir.path().join("pkgs/libzlib-1.3.1-hb9d3cd8_2");
        write(
            &pkg.join("info/index.json"),
            r#"{"name": "libzlib", "version": "1.3.1", "build": "hb9d3cd8_2", "depends": ["libgcc >=13"]}"#,
        );
        write(
            &pkg.join("info/paths.json"),
            r#"{"paths": [{"_path": "lib/libz.so.1", "path_type": "softlink", "sha256": "ab", "size_in_bytes": 7}], "paths_version": 1}"#,
        );
        write(
            &prefix.join("conda-meta/libzlib-1.3.1-hb9d3cd8_2.json"),
            r#"{"name": "libzlib", "fn": "libzlib-1.3.1-hb9d3cd8_2.conda"}"#,
        );

        let conda = CondaPrefix::load(&prefix).unwrap().unwrap();
        let zlib = conda.package("libzlib").unwrap();
        assert_eq!(zlib.version, "1.3.1");
        assert_eq!(zlib.build, "hb9d3cd8_2");
        assert_eq!(zlib.depends, ["libgcc >=13"]);
        assert_eq!(zlib.files, ["lib/libz.so.1"]);
        assert_eq!(zlib.package_dir.as_deref(), Some(pkg.as_path()));
        assert_eq!(conda.owner_of("lib/libz.so.1").unwrap().name, "libzlib");
    }

    #[test]
    fn a_record_without_files_lists_them_in_its_paths_data() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("conda-meta/zstd-1.5.6-h0_0.json"),
            r#"{"name": "zstd", "depends": [], "paths_data": {"paths": [{"_path": "lib/libzstd.so.1", "sha256": "ab", "size_in_bytes": 7}], "paths_version": 1}}"#,
        );
        let conda = CondaPrefix::load(dir.path()).unwrap().unwrap();
        assert_eq!(conda.package("zstd").unwrap().files, ["lib/libzstd.so.1"]);
        assert_eq!(conda.owner_of("lib/libzstd.so.1").unwrap().name, "zstd");
    }

    #[test]
    fn damaged_package_cache_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path();
        write(
            &prefix.join("pkgs/zstd-1.5.6-h0_0/info/paths.json"),
            "{ damaged",
        );
        write(
            &prefix.join("conda-meta/zstd-1.5.6-h0_0.json"),
            r#"{"name": "zstd", "fn": "zstd-1.5.6-h0_0.tar.bz2"}"#,
        );
        let conda = CondaPrefix::load(prefix).unwrap().unwrap();
        let zstd = conda.package("zstd").unwrap();
        assert_eq!(zstd.package_dir, Some(prefix.join("pkgs/zstd-1.5.6-h0_0")));
        assert!(zstd.files.is_empty());
        assert_eq!(zstd.version, "1.5.6");
    }

    #[test]
    fn identity_from_record_file_name_when_all_else_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path()
                .join("conda-meta/libgcc-ng-14.2.0-h69a702a_1.json"),
            "{}",
        );
        let conda = CondaPrefix::load(dir.path()).unwrap().unwrap();
        let package = &conda.packages()[0];
        assert_eq!(
            (
                package.name.as_str(),
                package.version.as_str(),
                package.build.as_str()
            ),
            ("libgcc-ng", "14.2.0", "h69a702a_1")
        );
    }

    #[test]
    fn malformed_record_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("conda-meta/broken-1-0.json");
        write(&record, "{ not json");
        let err = CondaPrefix::load(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&record.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn update_records_keeps_order_and_style() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path();
        let record = prefix.join("conda-meta/libzlib-1.3.1-h0_0.json");
        let original = r#"{
  "name": "libzlib",
  "zzz_last": [],
  "aaa_after": {"x": 1},
  "paths_data": {
    "paths": [
      {
        "_path": "lib/libz.so.1",
        "path_type": "hardlink",
        "sha256": "aa",
        "size_in_bytes": 10
      },
      {
        "_path": "lib/untouched",
        "sha256": "bb",
        "sha256_in_prefix": "cc",
        "size_in_bytes": 20
      }
    ],
    "paths_version": 1
  }
}
"#;
        write(&record, original);
        write(
            &prefix.join("conda-meta/other-1-0.json"),
            r#"{"name": "other"}"#,
        );

        let changed = [("lib/libz.so.1", "ff", 12), ("lib/not-owned", "ee", 1)];
        assert_eq!(update_records(prefix, &changed).unwrap(), 1);

        let text = fs::read_to_string(&record).unwrap();
        // Only the changed entry is written anew: the rest keeps even a style the pretty
        // printer would not produce.
        let expected = original.replace(
                "\"sha256\": \"aa\",\n        \"size_in_bytes\": 10",
                "\"sha256\": \"aa\",\n        \"sha256_in_prefix\": \"ff\",\n        \"size_in_bytes\": 12",
            );
        assert_eq!(text, expected);
        assert_eq!(
            fs::read_to_string(prefix.join("conda-meta/other-1-0.json")).unwrap(),
            r#"{"name": "other"}"#
        );

        // Idempotent: nothing left to change, nothing rewritten.
        assert_eq!(update_records(prefix, &changed).unwrap(), 0);
        let leftovers = fs::read_dir(prefix.join("conda-meta")).unwrap().count();
        assert_eq!(leftovers, 2, "no temporary files left behind");
    }

    #[test]
    fn restoring_logged_fields_gives_the_record_back_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path();
        let record = prefix.join("conda-meta/zlib-1-0.json");
        let original = "{\n  \"name\": \"zlib\",\n  \"paths_data\": {\n    \"paths\": [\n      {\n        \"_path\": \"lib/a.so\",\n        \"sha256\": \"aa\",\n        \"size_in_bytes\": 10\n      },\n      {\n        \"_path\": \"lib/b.so\",\n        \"sha256\": \"bb\",\n        \"sha256_in_prefix\": \"cc\",\n        \"size_in_bytes\": 20\n      }\n    ]\n  }\n}\n";
        write(&record, original);
        let mut logged = Vec::new();
        let changed = [("lib/a.so", "a2", 11), ("lib/b.so", "b2", 21)];
        let mut flushed = 0;
        let count = update_records_logged(
            prefix,
            &changed,
            &mut |path, fields| {
                logged.push((path.to_path_buf(), fields));
                Ok(())
            },
            &mut || {
                flushed += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(count, 1);
        assert_eq!(
            flushed, 1,
            "the log is flushed once, before the records change"
        );
        assert_ne!(fs::read_to_string(&record).unwrap(), original);
        assert_eq!(logged.len(), 1);
        assert_eq!(logged[0].0, record);
        assert_eq!(logged[0].1[0].sha256_in_prefix, None);
        assert_eq!(logged[0].1[1].sha256_in_prefix, Some(Value::from("cc")));

        let line = serde_json::to_string(&logged[0].1).unwrap();
        let fields: Vec<RecordFields> = serde_json::from_str(&line).unwrap();
        assert!(restore_record_fields(&record, &fields).unwrap());
        assert_eq!(fs::read_to_string(&record).unwrap(), original);
    }

    #[test]
    fn a_failing_log_leaves_the_record_alone() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("conda-meta/zlib-1-0.json");
        let original = r#"{"paths_data": {"paths": [{"_path": "lib/a.so", "size_in_bytes": 1}]}}"#;
        write(&record, original);
        let err = update_records_logged(
            dir.path(),
            &[("lib/a.so", "ff", 2)],
            &mut |_, _| Err(io::Error::other("disk full")),
            &mut || Ok(()),
        )
        .unwrap_err();
        assert!(matches!(err, CondaError::Journal { .. }), "{err}");
        assert_eq!(fs::read_to_string(&record).unwrap(), original);
    }

    #[test]
    fn compact_records_stay_compact() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("conda-meta/a-1-0.json");
        let original = r#"{"name":"a","paths_data":{"paths":[{"_path":"lib/a.so","size_in_bytes":1},{"_path":"lib/b.so"}]}}"#;
        write(&record, original);
        update_records_logged(
            dir.path(),
            &[("lib/a.so", "ff", 2)],
            &mut |_, _| Ok(()),
            &mut || Ok(()),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&record).unwrap(),
            r#"{"name":"a","paths_data":{"paths":[{"_path":"lib/a.so","sha256_in_prefix":"ff","size_in_bytes":2},{"_path":"lib/b.so"}]}}"#
        );
        assert_eq!(indentation_of("{\n\t\"a\": 1\n}"), Some("\t"));
        assert_eq!(indentation_of("{\n    \"a\": 1\n}\n"), Some("    "));
    }
}
