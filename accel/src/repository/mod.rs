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

use crate::core::{ModelDir, ModelFile, is_file_name, shown_path};

pub use complete::complete_config;
pub use config::{parse_config, to_spec};

/// The file name Triton uses for config files.
pub const CONFIG_FILE: &str = "config.pbtxt";
/// The model file looked for in a version directory when the config names none.
pub const DEFAULT_ONNX_FILE: &str = "model.onnx";
/// The largest config.pbtxt read.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

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
    /// The versions the version policy selects, ascending, with their model file.
    pub versions: Vec<(u64, ModelFile)>,
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
    /// config.pbtxt when given. Every file is looked up inside the model's directory (`ModelDir`):
    /// nothing the config names can lead out of it.
    pub fn read_model_with(&self, name: &str, config: Option<ModelConfig>) -> Result<ModelSource, RepositoryError> {
        if name.is_empty() || name.contains('/') || name.contains('\\') || name.starts_with('.') || name.contains('\0')
        {
            return Err(RepositoryError::Invalid(format!("'{name}' is not a model name")));
        }
        let dir = ModelDir::open(&self.root.join(name)).map_err(|e| RepositoryError::Invalid(e.to_string()))?;
        let read = match config {
            Some(c) => Ok((c, Vec::new(), true)),
            None => match dir.lookup(CONFIG_FILE) {
                Ok(Some(file)) => file
                    .read_to_string(MAX_CONFIG_BYTES)
                    .map_err(|e| RepositoryError::Config(e.to_string()))
                    .and_then(|text| parse_config(&text).map_err(RepositoryError::Config))
                    .map(|(config, ignored)| (config, ignored, true)),
                Ok(None) => Ok((ModelConfig::default(), Vec::new(), false)),
                Err(e) => Err(RepositoryError::Config(e.to_string())),
            },
        };
        let (config, ignored_fields, has_config_file) = read?;
        if !config.name.is_empty() && config.name != name {
            return Err(RepositoryError::Invalid(format!(
                "{CONFIG_FILE} names the model '{}', but its directory is '{name}'",
                config.name
            )));
        }
        let mut config = config;
        let file = if config.default_model_filename.is_empty() && config.backend == crate::backend::hf::BACKEND {
            crate::backend::hf::CONFIG_JSON.to_string()
        } else if config.default_model_filename.is_empty() {
            // A version directory with no model.onnx but a Hugging Face layout is a huggingface model.
            if config.backend.is_empty() && config.platform.is_empty() && is_hf_layout(&dir) {
                config.backend = crate::backend::hf::BACKEND.to_string();
                crate::backend::hf::CONFIG_JSON.to_string()
            } else {
                DEFAULT_ONNX_FILE.to_string()
            }
        } else if is_file_name(&config.default_model_filename) {
            config.default_model_filename.clone()
        } else {
            return Err(RepositoryError::Invalid(format!(
                "default_model_filename {} must be a file name (it is looked up in each version directory)",
                shown_path(&config.default_model_filename)
            )));
        };
        let mut available = Vec::new();
        let entries = std::fs::read_dir(dir.root())
            .map_err(|e| RepositoryError::Invalid(format!("the model's directory cannot be listed: {}", e.kind())))?;
        for entry in entries.flatten() {
            let Ok(dir_name) = entry.file_name().into_string() else {
                continue;
            };
            let Ok(version) = dir_name.parse::<u64>() else {
                continue;
            };
            if version == 0 {
                continue;
            }
            match dir.lookup(&format!("{dir_name}/{file}")) {
                Ok(Some(model_file)) => available.push((version, model_file)),
                Ok(None) => {}
                Err(e) => tracing::warn!(model = %name, version, error = %e, "version skipped"),
            }
        }
        available.sort_by_key(|(v, _)| *v);
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

/// Whether some version directory of `dir` holds `config.json` and `tokenizer.json` and none holds
/// `model.onnx` (a Hugging Face / sentence-transformers directory).
fn is_hf_layout(dir: &ModelDir) -> bool {
    let Ok(entries) = std::fs::read_dir(dir.root()) else {
        return false;
    };
    let mut hf = false;
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.parse::<u64>().is_err() {
            continue;
        }
        let has = |file: &str| matches!(dir.lookup(&format!("{name}/{file}")), Ok(Some(_)));
        if has(DEFAULT_ONNX_FILE) {
            return false;
        }
        hf |= has(crate::backend::hf::CONFIG_JSON) && has("tokenizer.json");
    }
    hf
}
