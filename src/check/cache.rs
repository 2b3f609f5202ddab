//! Reading `/etc/ld.so.cache`, the index ldconfig writes of the libraries in the system's
//! library directories.
//!
//! Only the format glibc 2.3x reads is understood: a `glibc-ld.so.cache1.1` header, either at
//! the start of the file or after an old `ld.so-1.7.0` table (which glibc ignores too).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use thiserror::Error;

const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
const NEW_HEADER_SIZE: usize = 48;
const NEW_ENTRY_SIZE: usize = 24;
const OLD_HEADER_SIZE: usize = 16;
const OLD_ENTRY_SIZE: usize = 12;
const EXTENSION_MAGIC: u32 = 0xeaa4_2174;
const EXTENSION_TAG_GLIBC_HWCAPS: u32 = 1;
/// An entry whose `hwcap` field names a `glibc-hwcaps` subdirectory (an index into the
/// extension's string list) rather than legacy capability bits.
const HWCAP_EXTENSION: u64 = 1 << 62;

/// Why a cache file could not be read.
#[derive(Debug, Error)]
pub enum CacheError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a glibc ld.so cache")]
    BadMagic,
    #[error("truncated ld.so cache: {0}")]
    Truncated(&'static str),
}

/// One library the cache knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// Which ABI the library is for (`FLAG_ELF_LIBC6 | FLAG_X8664_LIB64` and so on).
    pub flags: i32,
    pub path: PathBuf,
    /// The `glibc-hwcaps` subdirectory the entry is for, such as `x86-64-v3`.
    pub hwcaps: Option<String>,
}

/// The parsed cache: entries by library name, in file order.
#[derive(Debug, Default, Clone)]
pub struct LdCache {
    entries: HashMap<String, Vec<CacheEntry>>,
}

impl LdCache {
    pub fn read(path: &Path) -> Result<LdCache, CacheError> {
        let bytes = std::fs::read(path).map_err(|source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        LdCache::parse(&bytes)
    }

    pub fn parse(bytes: &[u8]) -> Result<LdCache, CacheError> {
        let header = &bytes[new_header_offset(bytes)?..];
        let nlibs = read_u32(header, 20).ok_or(CacheError::Truncated("header"))? as usize;
        let extension_offset = read_u32(header, 32).ok_or(CacheError::Truncated("header"))?;
        let hwcaps_names = hwcaps_names(header, extension_offset as usize);
        let mut entries: HashMap<String, Vec<CacheEntry>> = HashMap::new();
        for index in 0..nlibs {
            let at = NEW_HEADER_SIZE + index * NEW_ENTRY_SIZE;
            let raw = header
                .get(at..at + NEW_ENTRY_SIZE)
                .ok_or(CacheError::Truncated("entries"))?;
            let field = |o: usize| read_u32(raw, o).unwrap_or_default();
            let (Some(key), Some(value)) = (c_string(header, field(4)), c_string(header, field(8)))
            else {
                continue;
            };
            let hwcap = read_u64(raw, 16).unwrap_or_default();
            let hwcaps = (hwcap & HWCAP_EXTENSION != 0).then(|| {
                // An index the extension does not cover names no usable subdirectory.
                hwcaps_names
                    .get(hwcap as u32 as usize)
                    .cloned()
                    .unwrap_or_default()
            });
            entries.entry(key).or_default().push(CacheEntry {
                flags: field(0) as i32,
                path: PathBuf::from(value),
                hwcaps,
            });
        }
        Ok(LdCache { entries })
    }

    /// The library glibc picks for `name`: among entries whose flags `accepts`, the one in the
    /// most preferred of `hwcaps` subdirectories (most preferred first), else the first plain one.
    pub fn lookup(
        &self,
        name: &str,
        accepts: impl Fn(i32) -> bool,
        hwcaps: &[&str],
    ) -> Option<&Path> {
        let candidates: Vec<&CacheEntry> = self
            .entries
            .get(name)?
            .iter()
            .filter(|e| accepts(e.flags))
            .collect();
        let in_hwcaps = candidates
            .iter()
            .filter_map(|e| {
                let rank = hwcaps
                    .iter()
                    .position(|h| Some(*h) == e.hwcaps.as_deref())?;
                Some((rank, e))
            })
            .min_by_key(|(rank, _)| *rank)
            .map(|(_, e)| e.path.as_path());
        in_hwcaps.or_else(|| {
            candidates
                .iter()
                .find(|e| e.hwcaps.is_none())
                .map(|e| e.path.as_path())
        })
    }

    pub fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where the new-format header starts: at 0, or after the old-format table.
fn new_header_offset(bytes: &[u8]) -> Result<usize, CacheError> {
    if bytes.starts_with(NEW_MAGIC) {
        return Ok(0);
    }
    if !bytes.starts_with(OLD_MAGIC) {
        return Err(CacheError::BadMagic);
    }
    let nlibs = read_u32(bytes, 12).ok_or(CacheError::Truncated("old header"))? as usize;
    let end = OLD_HEADER_SIZE + nlibs * OLD_ENTRY_SIZE;
    // The new header is aligned like its 64-bit fields.
    let offset = end.next_multiple_of(8);
    match bytes.get(offset..) {
        Some(rest) if rest.starts_with(NEW_MAGIC) => Ok(offset),
        Some(_) => Err(CacheError::BadMagic),
        None => Err(CacheError::Truncated("old entries")),
    }
}

/// The `glibc-hwcaps` subdirectory names of the cache extension, by index.
fn hwcaps_names(header: &[u8], extension_offset: usize) -> Vec<String> {
    let section = (|| {
        if extension_offset == 0 || read_u32(header, extension_offset)? != EXTENSION_MAGIC {
            return None;
        }
        let count = read_u32(header, extension_offset + 4)? as usize;
        (0..count.min(64)).find_map(|i| {
            let at = extension_offset + 8 + i * 16;
            (read_u32(header, at)? == EXTENSION_TAG_GLIBC_HWCAPS)
                .then(|| {
                    Some((
                        read_u32(header, at + 8)? as usize,
                        read_u32(header, at + 12)? as usize,
                    ))
                })
                .flatten()
        })
    })();
    let Some((offset, size)) = section else {
        return Vec::new();
    };
    (0..size / 4)
        .map(|i| {
            read_u32(header, offset + i * 4)
                .and_then(|s| c_string(header, s))
                .unwrap_or_default()
        })
        .collect()
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The NUL-terminated string at `offset` (strings are relative to the new header).
fn c_string(bytes: &[u8], offset: u32) -> Option<String> {
    let rest = bytes.get(offset as usize..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&rest[..len]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a new-format cache with `entries` of (flags, key, value, hwcaps index).
    fn build(entries: &[(i32, &str, &str, Option<u32>)], hwcaps: &[&str]) -> Vec<u8> {
        let entries_end = NEW_HEADER_SIZE + entries.len() * NEW_ENTRY_SIZE;
        let mut strings = Vec::new();
        let string_at = |s: &str, strings: &mut Vec<u8>| {
            let at = entries_end + strings.len();
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at as u32
        };
        let mut table = Vec::new();
        for (flags, key, value, hwcap) in entries {
            let key = string_at(key, &mut strings);
            let value = string_at(value, &mut strings);
            table.extend_from_slice(&flags.to_ne_bytes());
            table.extend_from_slice(&key.to_ne_bytes());
            table.extend_from_slice(&value.to_ne_bytes());
            table.extend_from_slice(&0u32.to_ne_bytes());
            let hwcap = hwcap.map_or(0, |i| HWCAP_EXTENSION | u64::from(i));
            table.extend_from_slice(&hwcap.to_ne_bytes());
        }
        let names: Vec<u32> = hwcaps.iter().map(|h| string_at(h, &mut strings)).collect();
        while !(entries_end + strings.len()).is_multiple_of(4) {
            strings.push(0);
        }
        let names_at = entries_end + strings.len();
        let extension_at = names_at + names.len() * 4;
        let mut out = Vec::new();
        out.extend_from_slice(NEW_MAGIC);
        out.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        out.extend_from_slice(&[2, 0, 0, 0]);
        out.extend_from_slice(&(extension_at as u32).to_ne_bytes());
        out.extend_from_slice(&[0; 12]);
        out.extend_from_slice(&table);
        out.extend_from_slice(&strings);
        for n in names {
            out.extend_from_slice(&n.to_ne_bytes());
        }
        for word in [EXTENSION_MAGIC, 1, EXTENSION_TAG_GLIBC_HWCAPS, 0] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(&(names_at as u32).to_ne_bytes());
        out.extend_from_slice(&(hwcaps.len() as u32 * 4).to_ne_bytes());
        out
    }

    const X8664: i32 = 0x0303;

    #[test]
    fn finds_plain_entries_by_flags() {
        let bytes = build(
            &[
                (3, "libz.so.1", "/lib32/libz.so.1", None),
                (X8664, "libz.so.1", "/lib64/libz.so.1", None),
            ],
            &[],
        );
        let cache = LdCache::parse(&bytes).unwrap();
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.lookup("libz.so.1", |f| f == X8664, &[]),
            Some(Path::new("/lib64/libz.so.1"))
        );
        assert_eq!(
            cache.lookup("libz.so.1", |f| f == 3, &[]),
            Some(Path::new("/lib32/libz.so.1"))
        );
        assert_eq!(cache.lookup("libq.so", |_| true, &[]), None);
    }

    #[test]
    fn prefers_the_best_supported_hwcaps_subdir() {
        let bytes = build(
            &[
                (
                    X8664,
                    "libm.so.6",
                    "/l/glibc-hwcaps/x86-64-v4/libm.so.6",
                    Some(1),
                ),
                (
                    X8664,
                    "libm.so.6",
                    "/l/glibc-hwcaps/x86-64-v3/libm.so.6",
                    Some(0),
                ),
                (X8664, "libm.so.6", "/l/libm.so.6", None),
            ],
            &["x86-64-v3", "x86-64-v4"],
        );
        let cache = LdCache::parse(&bytes).unwrap();
        let any = |_| true;
        assert_eq!(
            cache.lookup("libm.so.6", any, &["x86-64-v4", "x86-64-v3"]),
            Some(Path::new("/l/glibc-hwcaps/x86-64-v4/libm.so.6"))
        );
        assert_eq!(
            cache.lookup("libm.so.6", any, &["x86-64-v3", "x86-64-v2"]),
            Some(Path::new("/l/glibc-hwcaps/x86-64-v3/libm.so.6"))
        );
        assert_eq!(
            cache.lookup("libm.so.6", any, &[]),
            Some(Path::new("/l/libm.so.6"))
        );
    }

    #[test]
    fn reads_the_new_table_after_an_old_one() {
        let new = build(&[(X8664, "liba.so", "/a/liba.so", None)], &[]);
        let mut bytes = OLD_MAGIC.to_vec();
        bytes.push(0);
        bytes.extend_from_slice(&1u32.to_ne_bytes());
        bytes.extend_from_slice(&[0; OLD_ENTRY_SIZE]);
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        bytes.extend_from_slice(&new);
        let cache = LdCache::parse(&bytes).unwrap();
        assert_eq!(
            cache.lookup("liba.so", |_| true, &[]),
            Some(Path::new("/a/liba.so"))
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(matches!(
            LdCache::parse(b"hello"),
            Err(CacheError::BadMagic)
        ));
        let bytes = build(&[(X8664, "liba.so", "/a/liba.so", None)], &[]);
        for len in 0..bytes.len() {
            let _ = LdCache::parse(&bytes[..len]);
        }
    }

    #[test]
    fn reads_the_host_cache_when_there_is_one() {
        let path = Path::new("/etc/ld.so.cache");
        if path.exists() {
            let cache = LdCache::read(path).unwrap();
            assert!(!cache.is_empty());
        }
    }
}
