//! The model repository on disk, in Triton's layout: `<repo>/<model>/config.pbtxt` and
//! `<repo>/<model>/<version>/<file>`. This module reads directories and configurations; it loads
//! nothing. A model whose files are missing or whose config is invalid is reported with the reason,
//! and the caller keeps every other model.

mod complete;
mod config;
mod pbtxt;

use std::path::{Path, PathBuf};

use accel_proto::inference::ModelConfig;
use thiserror::Error;

pub use complete::complete_config;
pub use config::{parse_config, to_spec};

/// The file name Triton uses for config files.
pub const CONFIG_FILE: &str = "config.pbtxt";
/// The model file looked for in a version directory when the config names none.
pub const DEFAULT_ONNX_FILE: &str = "model.onnx";

/// Why a model of the repository cannot be served.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RepositoryError {
    #[error("model repository '{path}' is not a readable directory: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("invalid {CONFIG_FILE}: {0}")]
    Config(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no version directory holds '{file}' (versions are directories named by positive integers)")]
    NoVersions { file: String },
}

/// A model directory's configuration (as written, not yet completed) and its version files.
#[derive(Debug, Clone)]
pub struct ModelSource {
    pub name: String,
    pub config: ModelConfig,
    /// Whether the directory has a config.pbtxt (if not, everything comes from the model file).
    pub has_config_file: bool,
    /// Fields of config.pbtxt that Accel does not use.
    pub ignored_fields: Vec<String>,
    /// The versions the version policy selects, ascending, with the path of their model file.
    pub versions: Vec<(u64, PathBuf)>,
}

/// A repository root.
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, RepositoryError> {
        let root = root.into();
        match std::fs::metadata(&root) {
            Ok(m) if m.is_dir() => Ok(Repository { root }),
            Ok(_) => Err(RepositoryError::Unreadable {
                path: root.display().to_string(),
                reason: "not a directory".into(),
            }),
            Err(e) => Err(RepositoryError::Unreadable {
                path: root.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The model names: every non-hidden subdirectory, sorted.
    pub fn model_names(&self) -> Result<Vec<String>, RepositoryError> {
        let unreadable = |e: std::io::Error| RepositoryError::Unreadable {
            path: self.root.display().to_string(),
            reason: e.to_string(),
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Reads one model directory. `name` must be one of [`Repository::model_names`].
    pub fn read_model(&self, name: &str) -> Result<ModelSource, RepositoryError> {
        self.read_model_with(name, None)
    }

    /// Reads one model directory, with `config` (the repository API's override) in place of its
    /// config.pbtxt when given.
    pub fn read_model_with(&self, name: &str, config: Option<ModelConfig>) -> Result<ModelSource, RepositoryError> {
        if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(RepositoryError::Invalid(format!("'{name}' is not a model name")));
        }
        let dir = self.root.join(name);
        let config_path = dir.join(CONFIG_FILE);
        let read = match config {
            Some(c) => Ok((c, Vec::new(), true)),
            None => match std::fs::read_to_string(&config_path) {
                Ok(text) => parse_config(&text)
                    .map(|(config, ignored)| (config, ignored, true))
                    .map_err(RepositoryError::Config),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((ModelConfig::default(), Vec::new(), false)),
                Err(e) => Err(RepositoryError::Config(format!("{}: {e}", config_path.display()))),
            },
        };
        let (config, ignored_fields, has_config_file) = read?;
        if !config.name.is_empty() && config.name != name {
            return Err(RepositoryError::Invalid(format!(
                "{CONFIG_FILE} names the model '{}', but its directory is '{name}'",
                config.name
            )));
        }
        let file = if config.default_model_filename.is_empty() {
            DEFAULT_ONNX_FILE.to_string()
        } else {
            config.default_model_filename.clone()
        };
        let mut available = Vec::new();
        let entries =
            std::fs::read_dir(&dir).map_err(|e| RepositoryError::Invalid(format!("{}: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let Some(version) = entry.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            let path = entry.path().join(&file);
            if version > 0 && path.is_file() {
                available.push((version, path));
            }
        }
        available.sort();
        let versions = config::select_versions(&config, available)?;
        if versions.is_empty() {
            return Err(RepositoryError::NoVersions { file });
        }
        Ok(ModelSource {
            name: name.to_string(),
            config,
            has_config_file,
            ignored_fields,
            versions,
        })
    }
}
