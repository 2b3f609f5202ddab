//! Where a missing library could come from, for the advice in problem messages.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::elf::Class;

/// Tells the checker where else a library exists. The checker verifies each answer (class,
/// machine, versions) before suggesting it.
pub trait Hints: Sync {
    /// Files named `soname` outside the prefix (such as in the Nix store) for programs of this
    /// machine and class.
    fn where_is(&self, soname: &str, machine: u16, class: Class) -> Vec<PathBuf>;
    /// Files named `soname` inside the prefix being checked.
    fn prefix_provides(&self, soname: &str) -> Vec<PathBuf>;
}

/// Knows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHints;

impl Hints for NoHints {
    fn where_is(&self, _: &str, _: u16, _: Class) -> Vec<PathBuf> {
        Vec::new()
    }

    fn prefix_provides(&self, _: &str) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// Looks in the `lib` directories of a Nix store's paths and anywhere in the given prefixes. Each
/// is listed once, the first time a hint is wanted, so a check with no problems reads nothing.
#[derive(Debug, Default)]
pub struct DirHints {
    store: Option<PathBuf>,
    prefixes: Vec<PathBuf>,
    store_index: OnceLock<Index>,
    prefix_index: OnceLock<Index>,
}

/// Paths by file name.
type Index = HashMap<String, Vec<PathBuf>>;

impl DirHints {
    pub fn new(store: Option<PathBuf>, prefixes: Vec<PathBuf>) -> DirHints {
        DirHints {
            store,
            prefixes,
            ..DirHints::default()
        }
    }

    fn store_index(&self) -> &Index {
        self.store_index.get_or_init(|| {
            let mut index = Index::new();
            let Some(store) = &self.store else {
                return index;
            };
            for entry in read_dir_paths(store) {
                for lib in read_dir_paths(&entry.join("lib")) {
                    add_to_index(&mut index, lib);
                }
            }
            index
        })
    }

    fn prefix_index(&self) -> &Index {
        self.prefix_index.get_or_init(|| {
            let mut index = Index::new();
            for prefix in &self.prefixes {
                walkdir::WalkDir::new(prefix)
                    .into_iter()
                    .filter_map(Result::ok)
                    .filter(|e| !e.file_type().is_dir())
                    .filter(|e| e.file_name().to_string_lossy().contains(".so"))
                    .for_each(|e| add_to_index(&mut index, e.into_path()));
            }
            index
        })
    }
}

impl Hints for DirHints {
    fn where_is(&self, soname: &str, machine: u16, class: Class) -> Vec<PathBuf> {
        self.store_index()
            .get(soname)
            .into_iter()
            .flatten()
            .filter(|p| elf_kind(p) == Some((machine, class)))
            .cloned()
            .collect()
    }

    fn prefix_provides(&self, soname: &str) -> Vec<PathBuf> {
        self.prefix_index().get(soname).cloned().unwrap_or_default()
    }
}

fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    paths
}

fn add_to_index(index: &mut Index, path: PathBuf) {
    if let Some(name) = path.file_name() {
        let name = name.to_string_lossy().into_owned();
        index.entry(name).or_default().push(path);
    }
}

/// Machine and class from an ELF header, reading only the header.
fn elf_kind(path: &Path) -> Option<(u16, Class)> {
    let mut header = [0u8; 20];
    fs::File::open(path).ok()?.read_exact(&mut header).ok()?;
    if &header[..4] != b"\x7fELF" {
        return None;
    }
    let class = match header[4] {
        1 => Class::Elf32,
        2 => Class::Elf64,
        _ => return None,
    };
    let machine_bytes = [header[18], header[19]];
    let machine = match header[5] {
        2 => u16::from_be_bytes(machine_bytes),
        _ => u16::from_le_bytes(machine_bytes),
    };
    Some((machine, class))
}
