use thiserror::Error;

/// Why a file could not be read or edited as ELF.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("malformed ELF: {0}")]
    Malformed(String),
    #[error("unsupported ELF: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Refused(String),
}

impl ElfError {
    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        ElfError::Malformed(what.into())
    }
}

impl From<object::read::Error> for ElfError {
    fn from(err: object::read::Error) -> Self {
        ElfError::Malformed(err.to_string())
    }
}
