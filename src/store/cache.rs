//! The store index's cache file: a versioned little-endian table, mapped and read in place, so
//! that opening a cached index costs a checksum and the lookups made rather than a parse.
//!
//! ```text
//! offset
//!  0  magic "apstore\0"
//!  8  u64 XXH3-64 of every byte from offset 16 on
//! 16  u32 format (2), u32 flags (1: the store key is set)
//! 24  store key: u64 device, u64 inode, i64 mtime s, i64 ctime s, u32 mtime ns, u32 ctime ns
//! 64  store dir (a Str: u32 offset into the string bytes, u32 length)
//! 72  u32 counts: store paths, sonames, libraries, string bytes
//! 88  store paths by name, 20 bytes each: Str name, Str glibc, u32 flags (1: settled,
//!     2: has a glibc)
//!     sonames in order, 16 bytes each: Str soname, u32 first library, u32 libraries
//!     libraries by soname, store path and lib dir, 8 bytes each: u32 store path,
//!     u16 machine, u8 class bits, u8 lib dir (index into LIB_DIRS)
//!     string bytes
//! ```
//!
//! Format 1 was `store-index-v1.json`; it is not read, and is removed once this file is written.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::Metadata;
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64;

use super::LIB_DIRS;
use crate::elf::Class;
use crate::scan::MappedFile;

/// The cache's file name; the number changes whenever its layout does.
pub const FILE_NAME: &str = "store-index-v2.bin";
/// Caches of earlier formats, removed when a new cache is written.
pub const OLD_FILE_NAMES: [&str; 1] = ["store-index-v1.json"];

const MAGIC: &[u8; 8] = b"apstore\0";
const FORMAT: u32 = 2;
const HAS_KEY: u32 = 1;
const SETTLED: u32 = 1;
const HAS_GLIBC: u32 = 2;
const CHECKSUM_AT: usize = 8;
const CHECKED_FROM: usize = 16;
const FORMAT_AT: usize = 16;
const FLAGS_AT: usize = 20;
const KEY_AT: usize = 24;
const STORE_DIR_AT: usize = 64;
const COUNTS_AT: usize = 72;
const HEADER_LEN: usize = 88;
const PATH_LEN: usize = 20;
const SONAME_LEN: usize = 16;
const LIB_LEN: usize = 8;
/// How long before a listing the store must have last changed for its key to be trusted: a
/// later change then gets a later timestamp, even at FAT's 2 s granularity.
const SETTLE_MARGIN_NS: i128 = 2_000_000_000;

/// The state of the store directory's entries. Adding, removing or renaming a store path (as
/// `nix-store --add`, `--delete` and garbage collection do) updates the directory's mtime and
/// ctime, and no one can set a ctime back: an unchanged key means unchanged entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreKey {
    dev: u64,
    ino: u64,
    mtime: (i64, u32),
    ctime: (i64, u32),
}

impl StoreKey {
    pub fn of(meta: &Metadata) -> StoreKey {
        let nanos = |ns: i64| u32::try_from(ns).unwrap_or(0);
        StoreKey {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: (meta.mtime(), nanos(meta.mtime_nsec())),
            ctime: (meta.ctime(), nanos(meta.ctime_nsec())),
        }
    }

    /// Whether the directory's entries last changed well before `listed`, when its listing
    /// began. Two changes within one clock tick share an mtime, so a younger key could stay the
    /// same through a change the listing missed; an older one cannot, as every change of the
    /// entries sets the mtime to the current time.
    pub fn settled_before(&self, listed: SystemTime) -> bool {
        let Ok(since_epoch) = listed.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let (secs, nanos) = self.mtime;
        let mtime = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        mtime < i128::try_from(since_epoch.as_nanos()).unwrap_or(i128::MAX) - SETTLE_MARGIN_NS
    }
}

/// A store path and the libraries it provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// The glibc store path its libraries were built against.
    pub glibc: Option<PathBuf>,
    /// In the order of `LIB_DIRS`, then by file name.
    pub libs: Vec<Lib>,
    /// False while Nix still builds or substitutes the path: it is read again next time.
    pub settled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lib {
    pub soname: String,
    /// One of `LIB_DIRS`.
    pub dir: &'static str,
    pub machine: u16,
    pub class: Class,
}

/// A library found by its soname, as the table holds it.
#[derive(Debug, Clone, Copy)]
pub struct Provided<'a> {
    pub store_path: &'a str,
    pub glibc: Option<&'a Path>,
    pub dir: &'static str,
    pub machine: u16,
    pub class: Class,
}

/// Why a cache file was not taken.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct Corrupt(&'static str);

/// The cache's bytes: the mapped file, or a table just built.
pub enum Bytes {
    Mapped(MappedFile),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(file) => file.bytes(),
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// A checked cache; its records are decoded when asked for.
pub struct Table {
    bytes: Bytes,
    paths: usize,
    sonames: usize,
    libs: usize,
    strings: usize,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("store_paths", &self.paths)
            .field("sonames", &self.sonames)
            .field("libs", &self.libs)
            .finish_non_exhaustive()
    }
}

struct PathRecord<'a> {
    name: &'a str,
    glibc: Option<&'a Path>,
    settled: bool,
}

struct LibRecord {
    path: usize,
    dir: &'static str,
    machine: u16,
    class: Class,
}

impl Table {
    /// The table of `entries` (in any order) for `store_dir`. `key` is kept only when every
    /// entry is settled, so that a cache with paths still being built never skips the listing.
    pub fn build(store_dir: &Path, key: Option<StoreKey>, mut entries: Vec<Entry>) -> Table {
        // Stable: it merges the sorted runs of cached and newly read entries in linear time.
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let key = key.filter(|_| entries.iter().all(|e| e.settled));
        let bytes = encode(store_dir, key, &entries);
        Table::parse(Bytes::Owned(bytes)).expect("a table just encoded is valid")
    }

    /// Checks the header, the length, the checksum and every record's bounds.
    pub fn parse(bytes: Bytes) -> Result<Table, Corrupt> {
        let data = bytes.as_slice();
        if data.len() < HEADER_LEN {
            return Err(Corrupt("truncated"));
        }
        if &data[..MAGIC.len()] != MAGIC {
            return Err(Corrupt("not a store index cache"));
        }
        if u32_at(data, FORMAT_AT) != FORMAT {
            return Err(Corrupt("another format version"));
        }
        let count = |n: usize| u32_at(data, COUNTS_AT + 4 * n) as usize;
        let table = Table {
            paths: count(0),
            sonames: count(1),
            libs: count(2),
            strings: count(3),
            bytes,
        };
        table.check_length()?;
        let data = table.data();
        if u64_at(data, CHECKSUM_AT) != xxh3_64(&data[CHECKED_FROM..]) {
            return Err(Corrupt("checksum mismatch"));
        }
        table.check_records()?;
        Ok(table)
    }

    fn check_length(&self) -> Result<(), Corrupt> {
        let expected = [
            (HEADER_LEN, 1),
            (self.paths, PATH_LEN),
            (self.sonames, SONAME_LEN),
            (self.libs, LIB_LEN),
            (self.strings, 1),
        ]
        .iter()
        .map(|&(n, size)| n as u64 * size as u64)
        .sum::<u64>();
        match (self.data().len() as u64).cmp(&expected) {
            Ordering::Less => Err(Corrupt("truncated")),
            Ordering::Greater => Err(Corrupt("trailing bytes")),
            Ordering::Equal => Ok(()),
        }
    }

    fn check_records(&self) -> Result<(), Corrupt> {
        self.bytes_at(STORE_DIR_AT)
            .ok_or(Corrupt("store dir out of bounds"))?;
        if (0..self.paths).any(|i| self.path(i).is_none()) {
            return Err(Corrupt("bad store path record"));
        }
        let soname_ok = |i| {
            self.soname(i)
                .is_some_and(|(_, libs)| libs.end <= self.libs)
        };
        if !(0..self.sonames).all(soname_ok) {
            return Err(Corrupt("bad soname record"));
        }
        if !(0..self.libs).all(|i| self.lib(i).is_some_and(|l| l.path < self.paths)) {
            return Err(Corrupt("bad library record"));
        }
        Ok(())
    }

    pub fn bytes(&self) -> &[u8] {
        self.data()
    }

    pub fn store_dir(&self) -> &Path {
        Path::new(OsStr::from_bytes(
            self.bytes_at(STORE_DIR_AT).unwrap_or_default(),
        ))
    }

    pub fn key(&self) -> Option<StoreKey> {
        let data = self.data();
        let at = KEY_AT;
        (u32_at(data, FLAGS_AT) & HAS_KEY != 0).then(|| StoreKey {
            dev: u64_at(data, at),
            ino: u64_at(data, at + 8),
            mtime: (u64_at(data, at + 16) as i64, u32_at(data, at + 32)),
            ctime: (u64_at(data, at + 24) as i64, u32_at(data, at + 36)),
        })
    }

    pub fn store_paths(&self) -> usize {
        self.paths
    }

    pub fn sonames(&self) -> usize {
        self.sonames
    }

    /// The index of `soname`, in `0..sonames()`.
    pub fn soname_id(&self, soname: &str) -> Option<usize> {
        let mut range = 0..self.sonames;
        while !range.is_empty() {
            let mid = range.start + range.len() / 2;
            match self.soname(mid)?.0.cmp(soname) {
                Ordering::Less => range.start = mid + 1,
                Ordering::Greater => range.end = mid,
                Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The libraries named like soname `id`, by store path and lib dir.
    pub fn provided(&self, id: usize) -> impl Iterator<Item = Provided<'_>> {
        let libs = self.soname(id).map(|(_, libs)| libs).unwrap_or_default();
        libs.filter_map(|i| self.lib(i)).filter_map(|lib| {
            let path = self.path(lib.path)?;
            Some(Provided {
                store_path: path.name,
                glibc: path.glibc,
                dir: lib.dir,
                machine: lib.machine,
                class: lib.class,
            })
        })
    }

    /// Every store path, by name, with its libraries.
    pub fn entries(&self) -> Vec<Entry> {
        let mut entries: Vec<Entry> = (0..self.paths)
            .filter_map(|i| self.path(i))
            .map(|p| Entry {
                name: p.name.to_owned(),
                glibc: p.glibc.map(Path::to_path_buf),
                libs: Vec::new(),
                settled: p.settled,
            })
            .collect();
        for (soname, libs) in (0..self.sonames).filter_map(|id| self.soname(id)) {
            for lib in libs.filter_map(|i| self.lib(i)) {
                if let Some(entry) = entries.get_mut(lib.path) {
                    entry.libs.push(Lib {
                        soname: soname.to_owned(),
                        dir: lib.dir,
                        machine: lib.machine,
                        class: lib.class,
                    });
                }
            }
        }
        // By soname so far; a stable sort by dir restores the order of a scan.
        for entry in &mut entries {
            entry.libs.sort_by_key(|lib| dir_index(lib.dir));
        }
        entries
    }

    fn data(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    fn sonames_at(&self) -> usize {
        HEADER_LEN + self.paths * PATH_LEN
    }

    fn libs_at(&self) -> usize {
        self.sonames_at() + self.sonames * SONAME_LEN
    }

    fn strings_at(&self) -> usize {
        self.libs_at() + self.libs * LIB_LEN
    }

    /// The string bytes a Str at `at` refers to, if in bounds.
    fn bytes_at(&self, at: usize) -> Option<&[u8]> {
        let data = self.data();
        let start = u32_at(data, at) as usize;
        let len = u32_at(data, at + 4) as usize;
        let strings = data.get(self.strings_at()..)?;
        strings.get(start..start.checked_add(len)?)
    }

    fn str_at(&self, at: usize) -> Option<&str> {
        std::str::from_utf8(self.bytes_at(at)?).ok()
    }

    fn path(&self, i: usize) -> Option<PathRecord<'_>> {
        let at = HEADER_LEN + i * PATH_LEN;
        let flags = u32_at(self.data(), at + 16);
        let glibc = match flags & HAS_GLIBC {
            0 => None,
            _ => Some(Path::new(OsStr::from_bytes(self.bytes_at(at + 8)?))),
        };
        Some(PathRecord {
            name: self.str_at(at)?,
            glibc,
            settled: flags & SETTLED != 0,
        })
    }

    fn soname(&self, id: usize) -> Option<(&str, Range<usize>)> {
        let at = self.sonames_at() + id * SONAME_LEN;
        let first = u32_at(self.data(), at + 8) as usize;
        let count = u32_at(self.data(), at + 12) as usize;
        Some((self.str_at(at)?, first..first.checked_add(count)?))
    }

    fn lib(&self, i: usize) -> Option<LibRecord> {
        let at = self.libs_at() + i * LIB_LEN;
        let data = self.data();
        let record = data.get(at..at + LIB_LEN)?;
        Some(LibRecord {
            path: u32_at(record, 0) as usize,
            machine: u16::from_le_bytes([record[4], record[5]]),
            class: class_of_bits(record[6])?,
            dir: LIB_DIRS.get(usize::from(record[7])).copied()?,
        })
    }
}

/// A string's place in the string bytes.
#[derive(Debug, Clone, Copy, Default)]
struct Str {
    at: u32,
    len: u32,
}

/// The string bytes, each distinct string once.
#[derive(Default)]
struct Strings<'a> {
    bytes: Vec<u8>,
    seen: HashMap<&'a [u8], Str>,
}

impl<'a> Strings<'a> {
    /// A string known to be new, such as a store path name.
    fn push(&mut self, s: &[u8]) -> Str {
        let at = to_u32(self.bytes.len());
        self.bytes.extend_from_slice(s);
        Str {
            at,
            len: to_u32(s.len()),
        }
    }

    /// A string many records share, such as a soname or a glibc.
    fn intern(&mut self, s: &'a [u8]) -> Str {
        if let Some(&known) = self.seen.get(s) {
            return known;
        }
        let new = self.push(s);
        self.seen.insert(s, new);
        new
    }
}

/// The cache of `entries`, which are sorted by name.
fn encode(store_dir: &Path, key: Option<StoreKey>, entries: &[Entry]) -> Vec<u8> {
    let mut strings = Strings::default();
    let store_dir = strings.push(store_dir.as_os_str().as_bytes());
    let paths = path_records(entries, &mut strings);
    let (sonames, libs) = lib_records(entries, &mut strings);
    let counts = [
        entries.len(),
        sonames.len() / SONAME_LEN,
        libs.len() / LIB_LEN,
        strings.bytes.len(),
    ];
    let mut out = header(key, store_dir, counts);
    for section in [paths, sonames, libs, strings.bytes] {
        out.extend_from_slice(&section);
    }
    let checksum = xxh3_64(&out[CHECKED_FROM..]);
    out[CHECKSUM_AT..CHECKED_FROM].copy_from_slice(&checksum.to_le_bytes());
    out
}

/// The header, its checksum still zero.
fn header(key: Option<StoreKey>, store_dir: Str, counts: [usize; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&0u64.to_le_bytes());
    put_u32(&mut out, FORMAT);
    put_u32(&mut out, if key.is_some() { HAS_KEY } else { 0 });
    let key = key.unwrap_or_default();
    for word in [key.dev, key.ino, key.mtime.0 as u64, key.ctime.0 as u64] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    put_u32(&mut out, key.mtime.1);
    put_u32(&mut out, key.ctime.1);
    put_str(&mut out, store_dir);
    for count in counts {
        put_u32(&mut out, to_u32(count));
    }
    out
}

fn path_records<'a>(entries: &'a [Entry], strings: &mut Strings<'a>) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * PATH_LEN);
    for entry in entries {
        put_str(&mut out, strings.push(entry.name.as_bytes()));
        let glibc = entry
            .glibc
            .as_ref()
            .map(|g| strings.intern(g.as_os_str().as_bytes()));
        put_str(&mut out, glibc.unwrap_or_default());
        let settled = if entry.settled { SETTLED } else { 0 };
        put_u32(&mut out, settled | glibc.map_or(0, |_| HAS_GLIBC));
    }
    out
}

/// The soname and library records: libraries grouped by soname, each group in the order
/// candidates are listed (by store path, then lib dir).
fn lib_records<'a>(entries: &'a [Entry], strings: &mut Strings<'a>) -> (Vec<u8>, Vec<u8>) {
    let mut libs: Vec<(&Lib, usize)> = entries
        .iter()
        .enumerate()
        .flat_map(|(path, entry)| entry.libs.iter().map(move |lib| (lib, path)))
        .collect();
    libs.sort_by_key(|&(lib, path)| (lib.soname.as_str(), path, dir_index(lib.dir)));
    let mut sonames = Vec::new();
    let mut records = Vec::with_capacity(libs.len() * LIB_LEN);
    for group in libs.chunk_by(|a, b| a.0.soname == b.0.soname) {
        put_str(&mut sonames, strings.intern(group[0].0.soname.as_bytes()));
        put_u32(&mut sonames, to_u32(records.len() / LIB_LEN));
        put_u32(&mut sonames, to_u32(group.len()));
        for &(lib, path) in group {
            put_u32(&mut records, to_u32(path));
            records.extend_from_slice(&lib.machine.to_le_bytes());
            records.push(class_bits(lib.class));
            records.push(dir_index(lib.dir) as u8);
        }
    }
    (sonames, records)
}

fn dir_index(dir: &str) -> usize {
    LIB_DIRS.iter().position(|d| *d == dir).unwrap_or(0)
}

fn class_bits(class: Class) -> u8 {
    match class {
        Class::Elf32 => 32,
        Class::Elf64 => 64,
    }
}

fn class_of_bits(bits: u8) -> Option<Class> {
    match bits {
        32 => Some(Class::Elf32),
        64 => Some(Class::Elf64),
        _ => None,
    }
}

/// Counts and offsets are u32: 4 GiB of names would take some 80 million store paths.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("store index within the cache format's 4 GiB")
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: Str) {
    put_u32(out, s.at);
    put_u32(out, s.len);
}

/// The little-endian u32 at `at`; zero past the end (callers check bounds first).
fn u32_at(data: &[u8], at: usize) -> u32 {
    read_array(data, at).map_or(0, u32::from_le_bytes)
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    read_array(data, at).map_or(0, u64::from_le_bytes)
}

fn read_array<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const STORE: &str = "/nix/store";
    const GLIBC: &str = "/nix/store/ggg-glibc-2.40-66";

    fn lib(soname: &str, dir: &'static str, machine: u16, class: Class) -> Lib {
        Lib {
            soname: soname.to_owned(),
            dir,
            machine,
            class,
        }
    }

    fn entry(name: &str, glibc: Option<&str>, libs: Vec<Lib>, settled: bool) -> Entry {
        Entry {
            name: name.to_owned(),
            glibc: glibc.map(PathBuf::from),
            libs,
            settled,
        }
    }

    /// Store paths with libraries of two machines and classes, in lib and lib64, sharing
    /// sonames, and one without libraries; listed out of order.
    fn sample() -> Vec<Entry> {
        vec![
            entry(
                "zzz-zlib-1.3.1",
                Some(GLIBC),
                vec![
                    lib("libz.so.1", "lib", 62, Class::Elf64),
                    lib("libz.so.1", "lib64", 62, Class::Elf64),
                ],
                true,
            ),
            entry("hhh-hello-2.12", None, Vec::new(), true),
            entry(
                "aaa-zlib-1.2.13",
                Some(GLIBC),
                vec![
                    lib("libminizip.so.1", "lib", 3, Class::Elf32),
                    lib("libz.so.1", "lib", 62, Class::Elf64),
                ],
                true,
            ),
            entry(
                "ggg-glibc-2.40-66",
                Some(GLIBC),
                vec![lib("libc.so.6", "lib", 183, Class::Elf64)],
                true,
            ),
        ]
    }

    fn sorted(mut entries: Vec<Entry>) -> Vec<Entry> {
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries
    }

    fn key() -> StoreKey {
        StoreKey {
            dev: 0x803,
            ino: 1_234_567,
            mtime: (-5, 999_999_999),
            ctime: (1_700_000_000, 1),
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let built = Table::build(Path::new(STORE), Some(key()), sample());
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join(FILE_NAME);
        std::fs::write(&file, built.bytes()).unwrap();
        let table = Table::parse(Bytes::Mapped(MappedFile::open(&file).unwrap())).unwrap();

        assert_eq!(table.store_dir(), Path::new(STORE));
        assert_eq!(table.key(), Some(key()));
        assert_eq!(table.store_paths(), 4);
        assert_eq!(table.entries(), sorted(sample()));
        let libz = table.soname_id("libz.so.1").unwrap();
        let provided: Vec<(&str, &str)> = table
            .provided(libz)
            .map(|p| (p.store_path, p.dir))
            .collect();
        assert_eq!(
            provided,
            [
                ("aaa-zlib-1.2.13", "lib"),
                ("zzz-zlib-1.3.1", "lib"),
                ("zzz-zlib-1.3.1", "lib64")
            ]
        );
        let minizip = table.soname_id("libminizip.so.1").unwrap();
        let only = table.provided(minizip).next().unwrap();
        assert_eq!(
            (only.machine, only.class, only.glibc),
            (3, Class::Elf32, Some(Path::new(GLIBC)))
        );
        assert_eq!(table.soname_id("libmissing.so.1"), None);
        assert_eq!(table.soname_id(""), None);
    }

    #[test]
    fn empty_and_unsettled_tables() {
        let empty = Table::build(Path::new(STORE), Some(key()), Vec::new());
        assert_eq!(empty.entries(), []);
        assert_eq!(empty.soname_id("libz.so.1"), None);
        assert_eq!(empty.key(), Some(key()));

        let mut entries = sample();
        entries[0].settled = false;
        let building = Table::build(Path::new(STORE), Some(key()), entries.clone());
        assert_eq!(building.key(), None, "a store still being built is listed");
        assert_eq!(building.entries(), sorted(entries));
    }

    #[test]
    fn damaged_tables_are_refused() {
        let bytes = Table::build(Path::new(STORE), Some(key()), sample())
            .bytes()
            .to_vec();
        let parse = |bytes: Vec<u8>| Table::parse(Bytes::Owned(bytes)).map(|_| ());
        for len in 0..bytes.len() {
            assert!(parse(bytes[..len].to_vec()).is_err(), "truncated to {len}");
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(parse(flipped).is_err(), "byte {at} flipped");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(parse(longer).unwrap_err().to_string(), "trailing bytes");
        assert!(parse(bytes).is_ok());
    }

    #[test]
    fn a_key_is_trusted_once_the_store_settled() {
        let at = |secs: i64| StoreKey {
            mtime: (secs, 0),
            ctime: (secs, 0),
            ..key()
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(at(1_700_000_000 - 3).settled_before(now));
        assert!(!at(1_700_000_000 - 1).settled_before(now));
        assert!(!at(1_700_000_000 + 60).settled_before(now));
    }
}
