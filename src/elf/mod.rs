//! Reading and editing ELF files: interpreter, run path, needed libraries and soname.
//!
//! This module knows nothing of conda or Nix. [`Elf::parse`] reads a file's headers and dynamic
//! section without copying it; [`plan`] turns a set of [`Edits`] into a [`Rewrite`], a short list of
//! byte ranges to write, which the caller applies to a copy or in place.

mod codec;
mod edit;
mod error;
mod inplace;
mod read;
mod region;
mod rewrite;
mod strings;

pub use edit::{Edits, RunPathEdit, plan};
pub use error::ElfError;
pub use inplace::{InPlaceSteps, in_place_steps};
pub use read::{Class, DynEntry, Elf, RunPathKind, Section, Segment, VersionDef, VersionNeed};
pub use rewrite::{Rewrite, TailMove, Write};

/// ELF type of a relocatable object file.
pub const ET_REL: u16 = 1;
/// ELF type of a position-dependent executable.
pub const ET_EXEC: u16 = 2;
/// ELF type of a shared object or position-independent executable.
pub const ET_DYN: u16 = 3;
/// ELF type of a core dump.
pub const ET_CORE: u16 = 4;

/// Machines the editor knows page sizes and names for.
pub const EM_386: u16 = 3;
pub const EM_PPC: u16 = 20;
pub const EM_PPC64: u16 = 21;
pub const EM_S390: u16 = 22;
pub const EM_ARM: u16 = 40;
pub const EM_X86_64: u16 = 62;
pub const EM_AARCH64: u16 = 183;
pub const EM_RISCV: u16 = 243;

/// A short name for a machine, as used in messages.
pub fn machine_name(machine: u16) -> String {
    match machine {
        EM_386 => "i386".into(),
        EM_PPC => "ppc".into(),
        EM_PPC64 => "ppc64".into(),
        EM_S390 => "s390x".into(),
        EM_ARM => "arm".into(),
        EM_X86_64 => "x86_64".into(),
        EM_AARCH64 => "aarch64".into(),
        EM_RISCV => "riscv".into(),
        other => format!("machine {other}"),
    }
}
