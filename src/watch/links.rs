//! The package-cache directories an environment's files are hard-linked from, as its conda-meta
//! records name them: fixed together with the environment, the names keep sharing one inode.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

#[derive(Deserialize)]
struct Record {
    extracted_package_dir: Option<PathBuf>,
}

/// Records read so far, by path, with the modification time they were read at.
#[derive(Default)]
pub struct PackageDirs(HashMap<PathBuf, (SystemTime, Option<PathBuf>)>);

impl PackageDirs {
    /// The existing package directories `env`'s records name that lie inside `within`.
    pub fn of(&mut self, env: &Path, within: &[PathBuf]) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(env.join("conda-meta")) else {
            return Vec::new();
        };
        let mut dirs = Vec::new();
        for record in entries.filter_map(Result::ok).map(|e| e.path()) {
            if record.extension().is_none_or(|x| x != "json") {
                continue;
            }
            if let Some(dir) = self.package_dir(&record)
                && within.iter().any(|w| dir.starts_with(w))
                && dir.is_dir()
            {
                dirs.push(dir);
            }
        }
        dirs
    }

    fn package_dir(&mut self, record: &Path) -> Option<PathBuf> {
        let mtime = fs::metadata(record).and_then(|m| m.modified()).ok()?;
        if let Some((seen, dir)) = self.0.get(record)
            && *seen == mtime
        {
            return dir.clone();
        }
        let dir = fs::read(record)
            .ok()
            .and_then(|text| serde_json::from_slice::<Record>(&text).ok())
            .and_then(|r| r.extracted_package_dir);
        self.0.insert(record.to_path_buf(), (mtime, dir.clone()));
        dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_dirs_come_from_records_and_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let env = root.join("envs/e");
        fs::create_dir_all(env.join("conda-meta")).unwrap();
        fs::create_dir_all(root.join("pkgs/zstd-1")).unwrap();
        let record = |name: &str, dir: &Path| {
            let json = serde_json::json!({ "name": name, "extracted_package_dir": dir });
            fs::write(
                env.join(format!("conda-meta/{name}.json")),
                json.to_string(),
            )
            .unwrap();
        };
        record("zstd", &root.join("pkgs/zstd-1"));
        record("gone", &root.join("pkgs/gone-1"));
        record("outside", Path::new("/"));
        fs::write(env.join("conda-meta/history"), "").unwrap();
        let mut dirs = PackageDirs::default();
        assert_eq!(
            dirs.of(&env, &[root.to_path_buf()]),
            [root.join("pkgs/zstd-1")]
        );
    }
}
