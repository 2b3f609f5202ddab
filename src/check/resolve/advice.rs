//! The words of a problem: where the search looked, what was found instead, and what would serve.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use super::{Candidate, Loaded, Session, Trail, parent};
use crate::check::report::{Problem, ProblemKind};

impl Session<'_, '_> {
    pub(super) fn problem(
        &mut self,
        kind: ProblemKind,
        needer: usize,
        library: &str,
        message: String,
    ) -> &mut Problem {
        let mut problem = Problem::new(kind, message);
        problem.chain = self.chain_paths(needer);
        problem.library = Some(library.to_string());
        self.report.add(problem);
        self.report.problems.last_mut().expect("just added")
    }

    pub(super) fn not_found(&mut self, needer: usize, name: &str, trail: &Trail) {
        let who = self.loaded[needer].shown(self.shown);
        let mut message = if name.contains('/') {
            format!("{name} (needed by {who}) does not exist")
        } else {
            format!(
                "{name} (needed by {who}) not found in {}",
                join_places(&trail.places)
            )
        };
        for (path, why) in trail.skipped.iter().take(3) {
            message += &format!("; skipped {} ({why})", path.display());
        }
        let (hint, suggestion) = self.library_hint(needer, name);
        message += &hint;
        self.problem(ProblemKind::NotFound, needer, name, message)
            .suggestion = suggestion;
    }

    pub(super) fn refused(&mut self, needer: usize, name: &str, path: &Path, why: &str) {
        let message = format!(
            "{name} (needed by {}): the loader stops at {}: {why}",
            self.loaded[needer].shown(self.shown),
            path.display()
        );
        self.problem(ProblemKind::Unloadable, needer, name, message);
    }

    /// Where a usable copy of `name` is, as message text and a suggestion.
    fn library_hint(&self, needer: usize, name: &str) -> (String, Option<String>) {
        let needer_entry = &self.loaded[needer];
        let usable = |p: &PathBuf| matches!(self.candidate(p), Candidate::Usable(_));
        if let Some(found) = self
            .loader
            .hints
            .prefix_provides(name)
            .into_iter()
            .find(usable)
        {
            let canonical = std::fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
            let dir = parent(&canonical);
            let entry = relative_path(&needer_entry.origin, &dir)
                .filter(|_| self.shown.relative(&canonical).is_some())
                .map_or_else(|| dir.display().to_string(), |rel| origin_entry(&rel));
            return (
                format!(
                    "; the prefix has it at {}",
                    self.shown.path(&canonical, &found)
                ),
                Some(format!(
                    "add {entry} to the run path of {}",
                    needer_entry.shown(self.shown)
                )),
            );
        }
        let elsewhere: Vec<PathBuf> = self
            .loader
            .hints
            .where_is(name, self.setup.machine, self.setup.class)
            .into_iter()
            .filter(usable)
            .collect();
        let Some(first) = elsewhere.first() else {
            return (String::new(), None);
        };
        let dir = parent(first);
        let more = match elsewhere.len() {
            1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        (
            format!("; the store has it in {}{more}", dir.display()),
            Some(format!(
                "add {} to the run path of {}",
                dir.display(),
                needer_entry.shown(self.shown)
            )),
        )
    }

    pub(super) fn missing_version(
        &mut self,
        needer: usize,
        target: usize,
        file: &str,
        version: &str,
    ) {
        let found = &self.loaded[target];
        let found_dir = self.shown_dir(found);
        let has = match highest_of_family(&found.object.version_defs, version) {
            Some(highest) => format!("has up to {highest}"),
            None => "does not define it".to_string(),
        };
        let mut message = format!(
            "{} needs {version}; the {file} it finds ({found_dir}) {has}",
            self.loaded[needer].shown(self.shown)
        );
        let serving = self.version_provider(file, version);
        if let Some(serving) = &serving {
            message += &format!("; {serving} would serve");
        }
        let suggestion = serving.map(|s| {
            format!(
                "make {} find {s} before {found_dir}",
                self.loaded[needer].shown(self.shown)
            )
        });
        let problem = self.problem(ProblemKind::MissingVersion, needer, file, message);
        problem.version = Some(version.to_string());
        problem.suggestion = suggestion;
    }

    /// A copy of `file` that defines `version`, preferring the prefix's own.
    fn version_provider(&self, file: &str, version: &str) -> Option<String> {
        let serves = |p: &PathBuf| match self.candidate(p) {
            Candidate::Usable(object) => object.defines(version),
            _ => false,
        };
        let hints = self.loader.hints;
        if let Some(own) = hints.prefix_provides(file).into_iter().find(serves) {
            // Named as the loader would look it up (lib/libstdc++.so.6), not as its link target.
            let dir = std::fs::canonicalize(parent(&own)).unwrap_or_else(|_| parent(&own));
            let named = own.file_name().map_or_else(|| own.clone(), |n| dir.join(n));
            return Some(format!(
                "the prefix's own {}",
                self.shown.path(&named, &own)
            ));
        }
        hints
            .where_is(file, self.setup.machine, self.setup.class)
            .into_iter()
            .find(serves)
            .map(|p| p.display().to_string())
    }

    fn shown_dir(&self, entry: &Loaded) -> String {
        let dir = parent(&entry.path);
        let canonical = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        match self.shown.relative(&canonical) {
            Some(rel) => rel.display().to_string(),
            None => dir.display().to_string(),
        }
    }
}

/// The highest version of `defs` in the family of `wanted` (`GLIBCXX_3.4.30` for
/// `GLIBCXX_3.4.31`): same text before the first digit, compared number by number.
fn highest_of_family<'d>(defs: &'d [String], wanted: &str) -> Option<&'d str> {
    let family = |v: &str| {
        v.find(|c: char| c.is_ascii_digit())
            .map(|at| v[..at].to_string())
    };
    let wanted_family = family(wanted)?;
    defs.iter()
        .filter(|d| family(d).as_deref() == Some(wanted_family.as_str()))
        .max_by_key(|d| version_numbers(d))
        .map(String::as_str)
}

fn version_numbers(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn join_places(places: &[String]) -> String {
    match places {
        [] => "nowhere".into(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// `to` relative to `from`, both resolved, for a `$ORIGIN`-based run path entry.
fn relative_path(from: &Path, to: &Path) -> Option<PathBuf> {
    let from = std::fs::canonicalize(from).ok()?;
    let to = std::fs::canonicalize(to).ok()?;
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let ups = from.components().skip(common).map(|_| Component::ParentDir);
    Some(ups.chain(to.components().skip(common)).collect())
}

fn origin_entry(relative: &Path) -> String {
    if relative.as_os_str().is_empty() {
        "$ORIGIN".into()
    } else {
        format!("$ORIGIN/{}", OsStr::new(relative).to_string_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_highest_version_of_a_family() {
        let defs: Vec<String> = [
            "libstdc++.so.6",
            "GLIBCXX_3.4",
            "GLIBCXX_3.4.9",
            "GLIBCXX_3.4.30",
            "CXXABI_1.3.13",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            highest_of_family(&defs, "GLIBCXX_3.4.31"),
            Some("GLIBCXX_3.4.30")
        );
        assert_eq!(
            highest_of_family(&defs, "CXXABI_1.3.15"),
            Some("CXXABI_1.3.13")
        );
        assert_eq!(highest_of_family(&defs, "GLIBC_2.34"), None);
        assert_eq!(highest_of_family(&defs, "GLIBC_PRIVATE"), None);
    }

    #[test]
    fn joins_places_as_a_sentence() {
        assert_eq!(join_places(&["a".into()]), "a");
        assert_eq!(
            join_places(&["a".into(), "b".into(), "c".into()]),
            "a, b or c"
        );
    }

    #[test]
    fn relative_entries_climb_from_the_origin() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = tmp.path().join("bin");
        let lib = tmp.path().join("lib");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&lib).unwrap();
        let rel = relative_path(&bin, &lib).unwrap();
        assert_eq!(origin_entry(&rel), "$ORIGIN/../lib");
        assert_eq!(origin_entry(&relative_path(&lib, &lib).unwrap()), "$ORIGIN");
    }
}
