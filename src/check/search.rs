//! Search paths as the loader reads them: splitting, and the dynamic string tokens `$ORIGIN`,
//! `$LIB` and `$PLATFORM`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What the tokens of one object's strings expand to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tokens<'a> {
    /// The directory of the object whose string it is.
    pub origin: &'a Path,
    pub lib: &'a str,
    pub platform: &'a str,
}

/// Expands `$ORIGIN`, `$LIB` and `$PLATFORM` (or `${...}`) as glibc's `_dl_dst_substitute` does;
/// any other `$` is kept as it is.
pub(crate) fn expand(text: &[u8], tokens: &Tokens) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        if byte != b'$' {
            out.push(byte);
            continue;
        }
        let replacements: [(&str, &[u8]); 3] = [
            ("ORIGIN", tokens.origin.as_os_str().as_bytes()),
            ("PLATFORM", tokens.platform.as_bytes()),
            ("LIB", tokens.lib.as_bytes()),
        ];
        match replacements
            .iter()
            .find_map(|(name, value)| Some((token_len(rest, name)?, *value)))
        {
            Some((len, value)) => {
                out.extend_from_slice(value);
                rest = &rest[len..];
            }
            None => out.push(b'$'),
        }
    }
    out
}

/// Whether a search path may hold a token other than `$ORIGIN` (`$LIB`, `$PLATFORM`), whose
/// value depends on the interpreter.
pub(crate) fn has_interpreter_tokens(raw: &[u8]) -> bool {
    let has = |token: &[u8]| raw.windows(token.len()).any(|w| w == token);
    raw.contains(&b'$') && (has(b"LIB") || has(b"PLATFORM"))
}

/// The length of token `name` at the start of `input` (just after a `$`): `NAME` not followed by
/// an identifier character, or `{NAME}`.
fn token_len(input: &[u8], name: &str) -> Option<usize> {
    let name = name.as_bytes();
    if let Some(inner) = input.strip_prefix(b"{") {
        return (inner.starts_with(name) && inner.get(name.len()) == Some(&b'}'))
            .then_some(name.len() + 2);
    }
    let next = input.get(name.len()).copied().unwrap_or(0);
    (input.starts_with(name) && !(next.is_ascii_alphanumeric() || next == b'_'))
        .then_some(name.len())
}

/// The directories of a search path split at any of `separators`, with tokens expanded. As in
/// glibc, an empty entry is the current directory, an entry that expands to nothing is dropped,
/// and trailing slashes are removed.
pub(crate) fn search_dirs(raw: &[u8], separators: &[u8], tokens: &Tokens) -> Vec<PathBuf> {
    raw.split(|b| separators.contains(b))
        .filter_map(|entry| {
            if entry.is_empty() {
                return Some(PathBuf::new());
            }
            let mut dir = expand(entry, tokens);
            while dir.len() > 1 && dir.ends_with(b"/") {
                dir.pop();
            }
            (!dir.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(&dir)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens<'static> {
        Tokens {
            origin: Path::new("/p/bin"),
            lib: "lib64",
            platform: "x86_64",
        }
    }

    fn expanded(s: &str) -> String {
        String::from_utf8(expand(s.as_bytes(), &tokens())).unwrap()
    }

    #[test]
    fn expands_known_tokens_in_both_spellings() {
        assert_eq!(expanded("$ORIGIN/../lib"), "/p/bin/../lib");
        assert_eq!(expanded("${ORIGIN}/x"), "/p/bin/x");
        assert_eq!(expanded("/usr/$LIB/$PLATFORM"), "/usr/lib64/x86_64");
        assert_eq!(expanded("${LIB}a"), "lib64a");
    }

    #[test]
    fn leaves_unknown_or_longer_names_alone() {
        assert_eq!(expanded("$ORIGINAL/x"), "$ORIGINAL/x");
        assert_eq!(expanded("$LIB_DIR"), "$LIB_DIR");
        assert_eq!(expanded("${ORIGIN/x"), "${ORIGIN/x");
        assert_eq!(expanded("$HOME/lib"), "$HOME/lib");
        assert_eq!(expanded("a$"), "a$");
    }

    #[test]
    fn splits_keeping_empty_entries_as_the_current_directory() {
        let dirs = search_dirs(b"$ORIGIN/:/usr/lib//::/", b":", &tokens());
        let shown: Vec<_> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(shown, ["/p/bin", "/usr/lib", "", "/"]);
    }

    #[test]
    fn ld_library_path_also_splits_at_semicolons() {
        let dirs = search_dirs(b"/a;/b:/c", b":;", &tokens());
        assert_eq!(dirs.len(), 3);
    }

    #[test]
    fn only_lib_and_platform_tokens_depend_on_the_interpreter() {
        assert!(!has_interpreter_tokens(b"$ORIGIN/../lib:/usr/lib"));
        assert!(!has_interpreter_tokens(b"/opt/LIB"));
        assert!(has_interpreter_tokens(b"$ORIGIN/../$LIB"));
        assert!(has_interpreter_tokens(b"/opt/${PLATFORM}/lib"));
    }
}
