//! The lines of the journal, as written to disk.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::conda::RecordFields;
use crate::elf::{Rewrite, TailMove, Write};

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Entry {
    /// An inode about to be replaced.
    Patch(PatchEntry),
    /// Fields of a conda-meta record about to be rewritten, as they were.
    Records(RecordsEntry),
    /// The entries above are complete: written, flushed, and their records updated.
    Done,
}

/// An inode autopatch rewrote: how to tell its new form, and how to get its original back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchEntry {
    /// Its names, relative to the prefix.
    pub names: Vec<Name>,
    pub original: Restore,
    pub new: NewForm,
    /// Present when the inode was rewritten where it lies rather than replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_place: Option<InPlaceHeaders>,
}

/// The ELF header before and after an in-place rewrite: which of them the file holds tells how
/// far a killed rewrite got (any other header names the staging table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InPlaceHeaders {
    pub original: Hex,
    pub new: Hex,
}

/// The original content, as a rewrite of the new one: keep `[0, keep)`, move `moved` back, then
/// put back `bytes` (the original bytes of every range the new content does not hold as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restore {
    pub len: u64,
    pub keep: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<Moved>,
    pub bytes: Vec<Bytes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub from: u64,
    pub len: u64,
    pub to: u64,
}

/// Bytes at an offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bytes {
    pub offset: u64,
    pub hex: Hex,
}

/// What the new content is: its length and the SHA-256 of the bytes autopatch wrote (header
/// ranges, cheap to check even in a huge file), and of the whole content when it was computed
/// anyway (for conda's records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewForm {
    pub len: u64,
    /// `[offset, length]` of every range written.
    pub written: Vec<[u64; 2]>,
    pub written_sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The fields of one conda-meta record before autopatch changed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsEntry {
    /// The record, relative to the prefix.
    pub record: Name,
    pub fields: Vec<RecordFields>,
}

impl Restore {
    pub fn of(rewrite: &Rewrite) -> Restore {
        Restore {
            len: rewrite.len,
            keep: rewrite.keep,
            moved: rewrite.tail.map(|t| Moved {
                from: t.from,
                len: t.len,
                to: t.to,
            }),
            bytes: rewrite
                .writes
                .iter()
                .map(|w| Bytes {
                    offset: w.offset,
                    hex: Hex(w.bytes.clone()),
                })
                .collect(),
        }
    }

    pub fn rewrite(&self) -> Rewrite {
        Rewrite {
            keep: self.keep,
            tail: self.moved.map(|m| TailMove {
                from: m.from,
                len: m.len,
                to: m.to,
            }),
            writes: self
                .bytes
                .iter()
                .map(|b| Write {
                    offset: b.offset,
                    bytes: b.hex.0.clone(),
                })
                .collect(),
            len: self.len,
        }
    }

    /// Whether `data` has the original's length and bytes where autopatch wrote: what a file
    /// that is still, or again, in its original form looks like.
    pub fn looks_original(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.len
            && self.bytes.iter().all(|b| {
                usize::try_from(b.offset)
                    .ok()
                    .and_then(|at| data.get(at..at + b.hex.0.len()))
                    == Some(b.hex.0.as_slice())
            })
    }
}

/// A path relative to the prefix (it may climb out of it, to a package cache beside it).
/// Written as a string when it is UTF-8, else as `{"hex": ...}` of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(pub PathBuf);

impl Name {
    /// `path` relative to `prefix`; both absolute and normalized.
    pub fn relative(path: &Path, prefix: &Path) -> Name {
        let to: Vec<Component> = path.components().collect();
        let from: Vec<Component> = prefix.components().collect();
        let common = to.iter().zip(&from).take_while(|(a, b)| a == b).count();
        let mut rel = PathBuf::new();
        for _ in common..from.len() {
            rel.push("..");
        }
        for c in &to[common..] {
            rel.push(c);
        }
        Name(rel)
    }

    /// The absolute path this names under `prefix`.
    pub fn under(&self, prefix: &Path) -> PathBuf {
        crate::resolve::normalize(&prefix.join(&self.0))
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::os::unix::ffi::OsStrExt;
        match self.0.to_str() {
            Some(text) => s.serialize_str(text),
            None => NameRepr::Bytes {
                hex: Hex(self.0.as_os_str().as_bytes().to_vec()),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use std::os::unix::ffi::OsStringExt;
        Ok(match NameRepr::deserialize(d)? {
            NameRepr::Text(text) => Name(PathBuf::from(text)),
            NameRepr::Bytes { hex } => Name(PathBuf::from(std::ffi::OsString::from_vec(hex.0))),
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum NameRepr {
    Text(String),
    Bytes { hex: Hex },
}

/// Bytes written as a hexadecimal string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        from_hex(&text)
            .map(Hex)
            .ok_or_else(|| serde::de::Error::custom("invalid hexadecimal bytes"))
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    crate::apply::to_hex(bytes)
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_climb_out_of_the_prefix() {
        let prefix = Path::new("/root/envs/a");
        let name = Name::relative(Path::new("/root/pkgs/z-1/bin/z"), prefix);
        assert_eq!(name.0, Path::new("../../pkgs/z-1/bin/z"));
        assert_eq!(name.under(prefix), Path::new("/root/pkgs/z-1/bin/z"));
        let inside = Name::relative(Path::new("/root/envs/a/lib/l.so"), prefix);
        assert_eq!(inside.0, Path::new("lib/l.so"));
    }

    #[test]
    fn names_that_are_not_utf8_survive_a_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        let raw = std::ffi::OsStr::from_bytes(b"bin/n\xffame");
        let name = Name(PathBuf::from(raw));
        let text = serde_json::to_string(&name).unwrap();
        assert_eq!(text, r#"{"hex":"62696e2f6eff616d65"}"#);
        assert_eq!(serde_json::from_str::<Name>(&text).unwrap(), name);
        let plain = Name(PathBuf::from("bin/zstd"));
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#""bin/zstd""#);
    }

    #[test]
    fn entries_round_trip_as_single_lines() {
        let entry = Entry::Patch(PatchEntry {
            names: vec![Name(PathBuf::from("bin/zstd"))],
            original: Restore {
                len: 10,
                keep: 10,
                moved: None,
                bytes: vec![Bytes {
                    offset: 2,
                    hex: Hex(vec![0, 0xab]),
                }],
            },
            new: NewForm {
                len: 20,
                written: vec![[2, 2], [10, 10]],
                written_sha256: "00".into(),
                sha256: None,
            },
            in_place: None,
        });
        let line = serde_json::to_string(&entry).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"op":"patch","#), "{line}");
        assert_eq!(serde_json::from_str::<Entry>(&line).unwrap(), entry);
        let done = serde_json::to_string(&Entry::Done).unwrap();
        assert_eq!(done, r#"{"op":"done"}"#);
    }

    #[test]
    fn malformed_hex_is_refused() {
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
        assert_eq!(from_hex("00ff"), Some(vec![0, 255]));
    }
}
