//! Finding the ELF files of a prefix.

mod mapped;

pub use mapped::MappedFile;
