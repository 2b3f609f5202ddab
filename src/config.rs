//! Settings shared by `fix`, `check` and `watch`: flags win over environment variables
//! (`AUTOPATCH_*`, handled by clap), which win over `$XDG_CONFIG_HOME/autopatch/config.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// The config file's contents; every key is optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub store: Option<PathBuf>,
    pub interpreter: Option<PathBuf>,
    #[serde(default)]
    pub lib_dir: Vec<PathBuf>,
    #[serde(default)]
    pub ignore_missing: Vec<String>,
    pub jobs: Option<usize>,
    pub cache_dir: Option<PathBuf>,
    pub no_update_records: Option<bool>,
    pub no_verify: Option<bool>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0}: cannot read the config file: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: invalid config file (fix or remove it): {1}")]
    Parse(PathBuf, toml::de::Error),
}

/// Where the config file is looked for.
pub fn config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("autopatch/config.toml"))
}

/// Reads the config file; a missing file is an empty config.
pub fn load() -> Result<ConfigFile, ConfigError> {
    let Some(path) = config_path() else {
        return Ok(ConfigFile::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(ConfigError::Read(path, e)),
    }
}

/// Where the store index is cached.
pub fn cache_dir(configured: Option<&Path>) -> PathBuf {
    if let Some(dir) = configured {
        return dir.to_path_buf();
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("autopatch")
}
