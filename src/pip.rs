//! Python distributions installed by pip (or uv, or conda) into a prefix or venv: which
//! distribution installed each file, from the `*.dist-info/RECORD` files.
//!
//! Wheels repaired by auditwheel carry their own copies of system libraries in a `<name>.libs`
//! directory beside the packages (`numpy.libs`, `scipy.libs`); such a directory belongs to its
//! distribution even for files its RECORD does not list.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// Why the Python distributions of a prefix could not be read.
#[derive(Debug, Error)]
pub enum PipError {
    #[error("cannot read {}: {source}; check its permissions", path.display())]
    Read { path: PathBuf, source: io::Error },
}

pub type Result<T, E = PipError> = std::result::Result<T, E>;

/// One line of a RECORD file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEntry {
    /// Absolute and without `..`, even when the RECORD wrote `../../../bin/tool`.
    pub path: PathBuf,
    /// `sha256=<urlsafe base64>`; absent for the RECORD itself and compiled bytecode.
    pub hash: Option<String>,
    pub size: Option<u64>,
}

/// An installed distribution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    /// As in METADATA (`Name:`), else from the dist-info directory name.
    pub name: String,
    pub version: String,
    /// What installed it (`pip`, `uv`, `conda`), from the INSTALLER file.
    pub installer: Option<String>,
    pub dist_info: PathBuf,
    pub site_packages: PathBuf,
    pub files: Vec<RecordEntry>,
    /// Directories of bundled libraries (`numpy.libs`) owned as a whole.
    pub vendored_lib_dirs: Vec<PathBuf>,
}

/// The distributions of every site-packages directory of a prefix.
#[derive(Debug, Clone, Default)]
pub struct PipSite {
    distributions: Vec<Distribution>,
    by_file: HashMap<PathBuf, usize>,
}

impl PipSite {
    /// Reads every `*.dist-info` under the prefix's `lib/python*/site-packages` (and `lib64`,
    /// `dist-packages`, PyPy's `lib/pypy*`). A prefix without Python yields an empty site.
    pub fn load(prefix: &Path) -> Result<PipSite> {
        let mut distributions = Vec::new();
        for site in site_packages_dirs(prefix)? {
            for dist_info in dist_info_dirs(&site)? {
                distributions.push(read_distribution(&site, &dist_info)?);
            }
        }
        distributions.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| a.dist_info.cmp(&b.dist_info))
        });
        Ok(PipSite::index(distributions))
    }

    fn index(distributions: Vec<Distribution>) -> PipSite {
        let mut by_file = HashMap::new();
        for (i, dist) in distributions.iter().enumerate() {
            for entry in &dist.files {
                by_file.entry(entry.path.clone()).or_insert(i);
            }
        }
        PipSite {
            distributions,
            by_file,
        }
    }

    /// All distributions, sorted by name.
    pub fn distributions(&self) -> &[Distribution] {
        &self.distributions
    }

    /// The distribution that installed `path` (absolute), listed in its RECORD or inside one of
    /// its vendored library directories.
    pub fn owner_of(&self, path: &Path) -> Option<&Distribution> {
        let path = normalize(path);
        if let Some(&i) = self.by_file.get(&path) {
            return Some(&self.distributions[i]);
        }
        self.distributions
            .iter()
            .find(|d| d.vendored_lib_dirs.iter().any(|dir| path.starts_with(dir)))
    }
}

/// The `lib` directory of the Python a venv was made from (`home` in its `pyvenv.cfg` names
/// that Python's `bin`): where a copied interpreter (`venv --copies`) finds its libpython.
pub fn venv_base_lib(prefix: &Path) -> Option<PathBuf> {
    let config = fs::read_to_string(prefix.join("pyvenv.cfg")).ok()?;
    let home = config.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "home").then(|| value.trim())
    })?;
    Some(Path::new(home).parent()?.join("lib"))
}

/// Site directories of `prefix`, each once even when `lib64` links to `lib` (as in venvs).
fn site_packages_dirs(prefix: &Path) -> Result<Vec<PathBuf>> {
    let mut seen = HashSet::new();
    let mut sites = Vec::new();
    for lib in ["lib", "lib64"] {
        let is_interpreter_dir = |name: &OsStr| {
            [&b"python"[..], b"pypy"]
                .iter()
                .any(|p| name.as_bytes().starts_with(p))
        };
        for interpreter_dir in sorted_children(&prefix.join(lib), is_interpreter_dir)? {
            for site in ["site-packages", "dist-packages"] {
                let dir = normalize(&interpreter_dir.join(site));
                if dir.is_dir() && seen.insert(fs::canonicalize(&dir).unwrap_or(dir.clone())) {
                    sites.push(dir);
                }
            }
        }
    }
    Ok(sites)
}

fn dist_info_dirs(site: &Path) -> Result<Vec<PathBuf>> {
    let is_dist_info = |name: &OsStr| Path::new(name).extension() == Some(OsStr::new("dist-info"));
    Ok(sorted_children(site, is_dist_info)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

/// Entries of `dir` whose name is `wanted`, sorted; none when it does not exist. (A `lib`
/// directory holds hundreds of entries, of which a few are wanted.)
fn sorted_children(dir: &Path, wanted: impl Fn(&OsStr) -> bool) -> Result<Vec<PathBuf>> {
    let read_error = |source| PipError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            return Ok(Vec::new());
        }
        Err(e) => return Err(read_error(e)),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry.map_err(read_error)?;
        if wanted(&entry.file_name()) {
            children.push(entry.path());
        }
    }
    children.sort();
    Ok(children)
}

/// Reads `path`, `None` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PipError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_distribution(site: &Path, dist_info: &Path) -> Result<Distribution> {
    let (dir_name, dir_version) = name_version_from_dir(dist_info);
    let metadata = read_optional(&dist_info.join("METADATA"))?.unwrap_or_default();
    let name = metadata_field(&metadata, "Name").unwrap_or(dir_name);
    let version = metadata_field(&metadata, "Version").unwrap_or(dir_version);
    let installer = read_optional(&dist_info.join("INSTALLER"))?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let files = read_optional(&dist_info.join("RECORD"))?
        .map(|record| parse_record(site, &record))
        .unwrap_or_default();
    let top_level = read_optional(&dist_info.join("top_level.txt"))?.unwrap_or_default();
    let vendored_lib_dirs = vendored_lib_dirs(site, &name, &top_level, &files);
    Ok(Distribution {
        name,
        version,
        installer,
        dist_info: dist_info.to_path_buf(),
        site_packages: site.to_path_buf(),
        files,
        vendored_lib_dirs,
    })
}

/// `six-1.17.0.dist-info` → (`six`, `1.17.0`). Wheel file names escape dashes in the name, so
/// the first dash ends it.
fn name_version_from_dir(dist_info: &Path) -> (String, String) {
    let stem = dist_info.file_stem().unwrap_or_default().to_string_lossy();
    match stem.split_once('-') {
        Some((name, version)) => (name.to_string(), version.to_string()),
        None => (stem.into_owned(), String::new()),
    }
}

/// A header of the METADATA file (RFC 822 style, headers end at the first blank line).
fn metadata_field(metadata: &str, field: &str) -> Option<String> {
    metadata
        .lines()
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case(field))
        .map(|(_, value)| value.trim().to_string())
}

fn parse_record(site: &Path, record: &str) -> Vec<RecordEntry> {
    record
        .lines()
        .filter_map(|line| {
            let mut fields = csv_fields(line).into_iter();
            let path = fields.next().filter(|p| !p.is_empty())?;
            let hash = fields.next().filter(|h| !h.is_empty());
            let size = fields.next().and_then(|s| s.parse().ok());
            Some(RecordEntry {
                path: normalize(&site.join(path)),
                hash,
                size,
            })
        })
        .collect()
}

/// Splits one CSV line; fields may be quoted (paths holding commas), `""` escapes a quote.
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// `<name>.libs` directories in site-packages named after the distribution or one of its
/// top-level packages, as auditwheel names them.
fn vendored_lib_dirs(
    site: &Path,
    name: &str,
    top_level: &str,
    files: &[RecordEntry],
) -> Vec<PathBuf> {
    let from_record = files
        .iter()
        .filter_map(|f| f.path.strip_prefix(site).ok()?.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let mut stems: Vec<String> = [
        name.to_string(),
        name.replace('-', "_"),
        name.to_lowercase(),
    ]
    .into_iter()
    .chain(top_level.lines().map(|l| l.trim().to_string()))
    .chain(from_record)
    .filter(|s| !s.is_empty())
    .map(|s| s.strip_suffix(".libs").unwrap_or(&s).to_string())
    .collect();
    stems.sort();
    stems.dedup();
    stems
        .iter()
        .map(|stem| site.join(format!("{stem}.libs")))
        .filter(|dir| dir.is_dir())
        .collect()
}

/// Removes `.` and resolves `..` lexically, as RECORD paths are relative to site-packages.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn csv_lines() {
        assert_eq!(
            csv_fields("a/b.py,sha256=x,12"),
            ["a/b.py", "sha256=x", "12"]
        );
        assert_eq!(csv_fields("\"a,b.py\",,"), ["a,b.py", "", ""]);
        assert_eq!(
            csv_fields("\"say \"\"hi\"\".txt\",h,1\r"),
            ["say \"hi\".txt", "h", "1"]
        );
    }

    #[test]
    fn normalizes_parent_components() {
        assert_eq!(
            normalize(Path::new(
                "/p/lib/python3.12/site-packages/../../../bin/tool"
            )),
            Path::new("/p/bin/tool")
        );
    }

    #[test]
    fn metadata_fields() {
        let metadata = "Metadata-Version: 2.1\nName: Foo-Bar\nVersion: 2.0\n\nName: not a header\n";
        assert_eq!(metadata_field(metadata, "name").as_deref(), Some("Foo-Bar"));
        assert_eq!(metadata_field(metadata, "Version").as_deref(), Some("2.0"));
        assert_eq!(metadata_field(metadata, "Summary"), None);
    }

    #[test]
    fn owners_from_record_and_vendored_libs() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path();
        let site = prefix.join("lib/python3.12/site-packages");
        let dist_info = site.join("numpy-2.1.0.dist-info");
        write(
            &dist_info.join("METADATA"),
            "Metadata-Version: 2.1\nName: numpy\nVersion: 2.1.0\n\n",
        );
        write(&dist_info.join("INSTALLER"), "pip\n");
        write(
            &dist_info.join("RECORD"),
            "numpy/__init__.py,sha256=abc,10\n\
             numpy/core/_multiarray.so,sha256=def,2000\n\
             numpy.libs/libopenblas64_p-r0.so,sha256=ghi,30000\n\
             ../../../bin/f2py,sha256=jkl,300\n\
             numpy-2.1.0.dist-info/RECORD,,\n",
        );
        write(&site.join("numpy.libs/libgfortran-abc.so.5"), "");
        write(&site.join("other/mod.py"), "");

        let pip = PipSite::load(prefix).unwrap();
        let [numpy] = pip.distributions() else {
            panic!("{:?}", pip.distributions())
        };
        assert_eq!(
            (numpy.name.as_str(), numpy.version.as_str()),
            ("numpy", "2.1.0")
        );
        assert_eq!(numpy.installer.as_deref(), Some("pip"));
        assert_eq!(numpy.files[1].size, Some(2000));
        assert_eq!(numpy.files[4].hash, None);
        let owner = |p: &Path| pip.owner_of(p).map(|d| d.name.clone());
        assert_eq!(
            owner(&site.join("numpy/core/_multiarray.so")).as_deref(),
            Some("numpy")
        );
        assert_eq!(owner(&prefix.join("bin/f2py")).as_deref(), Some("numpy"));
        assert_eq!(
            owner(&site.join("numpy.libs/libgfortran-abc.so.5")).as_deref(),
            Some("numpy")
        );
        assert_eq!(
            owner(&site.join("numpy/../numpy/__init__.py")).as_deref(),
            Some("numpy")
        );
        assert_eq!(owner(&site.join("other/mod.py")), None);
    }

    #[test]
    fn name_from_directory_without_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("lib64/python3.11/site-packages");
        write(
            &site.join("Pillow-10.0.0.dist-info/RECORD"),
            "PIL/_imaging.so,sha256=a,1\n",
        );
        fs::create_dir_all(site.join("pillow.libs")).unwrap();
        let pip = PipSite::load(dir.path()).unwrap();
        let pillow = &pip.distributions()[0];
        assert_eq!(
            (pillow.name.as_str(), pillow.version.as_str()),
            ("Pillow", "10.0.0")
        );
        assert_eq!(pillow.vendored_lib_dirs, [site.join("pillow.libs")]);
    }

    #[test]
    fn lib64_symlink_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let site = dir.path().join("lib/python3.12/site-packages");
        write(
            &site.join("six-1.17.0.dist-info/RECORD"),
            "six.py,sha256=a,1\n",
        );
        std::os::unix::fs::symlink("lib", dir.path().join("lib64")).unwrap();
        let pip = PipSite::load(dir.path()).unwrap();
        assert_eq!(pip.distributions().len(), 1);
        assert_eq!(pip.distributions()[0].site_packages, site);
    }

    #[test]
    fn no_python_no_distributions() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            PipSite::load(dir.path())
                .unwrap()
                .distributions()
                .is_empty()
        );
    }
}
