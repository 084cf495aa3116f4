//! A model's files, from a folder on disk or from a map of names to bytes (the web demo's
//! picked folder), read through one door: names relative to the model, never outside it, each
//! read bounded by the limit of its kind before anything is allocated.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::limits;

/// Where a model's files come from.
#[derive(Debug, Clone)]
pub enum ModelFiles {
    /// A folder on disk (native only).
    #[cfg(not(target_arch = "wasm32"))]
    Dir(std::path::PathBuf),
    /// Files by their path relative to the model folder (`1_Pooling/config.json`), with the
    /// name the model goes by (`model_id`).
    Map {
        name: String,
        files: BTreeMap<String, Vec<u8>>,
    },
}

impl ModelFiles {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn dir(path: impl Into<std::path::PathBuf>) -> Self {
        Self::Dir(path.into())
    }

    pub fn map(name: impl Into<String>, files: BTreeMap<String, Vec<u8>>) -> Self {
        Self::Map {
            name: name.into(),
            files,
        }
    }

    /// The model's name: the folder's last component (as TEI's `model_id` shows it).
    pub fn name(&self) -> String {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Self::Dir(dir) => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
            Self::Map { name, .. } => name.clone(),
        }
    }

    /// Where `rel` is, for error messages.
    pub fn describe(&self, rel: &str) -> std::path::PathBuf {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Self::Dir(dir) => dir.join(rel),
            Self::Map { name, .. } => std::path::Path::new(name).join(rel),
        }
    }

    /// The whole model: its folder (errors of a folder-wide step name it).
    pub fn root(&self) -> std::path::PathBuf {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Self::Dir(dir) => dir.clone(),
            Self::Map { name, .. } => std::path::PathBuf::from(name),
        }
    }

    /// The bytes of `rel` (a path inside the model, `/`-separated), `None` when the model has
    /// no such file. A name that would leave the model (absolute, `..`, a drive or root) is
    /// an error and nothing is read. Safetensors files are bounded by their own header, other
    /// files by the budget of their kind (tokenizers, configs).
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        check_inside(rel)?;
        let limit = byte_limit(rel);
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Self::Dir(dir) => {
                let path = crate::io::in_model(dir, rel)?;
                if !path.exists() {
                    return Ok(None);
                }
                if rel.ends_with(".safetensors") {
                    crate::io::read_safetensors(&path).map(Some)
                } else {
                    crate::io::read_bounded(&path, limit).map(Some)
                }
            }
            Self::Map { files, .. } => match files.get(rel) {
                None => Ok(None),
                Some(bytes) if bytes.len() as u64 > limit => Err(Error::Input {
                    arg: self.describe(rel).display().to_string(),
                    reason: format!(
                        "file of {} bytes is over the limit of {limit} bytes",
                        bytes.len()
                    ),
                }),
                Some(bytes) => Ok(Some(bytes.clone())),
            },
        }
    }

    /// [`Self::read`], with a missing file an error that says what the model folder needs.
    pub fn need(&self, rel: &str, why: &str) -> Result<Vec<u8>> {
        self.read(rel)?.ok_or_else(|| self.missing(rel, why))
    }

    /// The error for a missing `rel`, saying `why` the model needs it.
    pub fn missing(&self, rel: &str, why: &str) -> Error {
        Error::Io {
            path: format!("{} ({why})", self.describe(rel).display()),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }
    }

    /// A JSON file parsed, `None` when absent; errors name the file.
    pub fn json(&self, rel: &str) -> Result<Option<serde_json::Value>> {
        let Some(bytes) = self.read(rel)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Config(format!("{}: {e}", self.describe(rel).display())))
    }
}

/// The most bytes read for a file of `rel`'s kind (safetensors: the limit on a weights file).
fn byte_limit(rel: &str) -> u64 {
    if rel.ends_with(".safetensors") {
        limits::MAX_STREAM_BYTES
    } else if rel.ends_with("tokenizer.json") {
        limits::MAX_TOKENIZER_BYTES
    } else {
        limits::MAX_CONFIG_BYTES
    }
}

/// `rel` names a file inside the model: relative, no `..`, no root or drive, not empty.
fn check_inside(rel: &str) -> Result<()> {
    use std::path::Component;
    let path = std::path::Path::new(rel);
    let inside = !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.starts_with('\\')
        && !rel.contains('\\')
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{rel:?} is not a file inside the model folder (a model folder never makes this \
             program read outside it)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_model_are_refused() {
        let files = ModelFiles::map("m", BTreeMap::new());
        for rel in [
            "../outside_pool/config.json",
            "/etc/passwd",
            "a/../../etc",
            "",
            "..",
            "a\\..\\b",
        ] {
            let err = files.read(rel).expect_err(rel);
            assert!(err.to_string().contains("inside the model folder"), "{err}");
        }
        assert!(
            files
                .read("1_Pooling/config.json")
                .expect("inside")
                .is_none()
        );
        assert!(files.read("./modules.json").expect("inside").is_none());
    }

    #[test]
    fn map_files_are_bounded_by_their_kind() {
        let mut map = BTreeMap::new();
        map.insert(
            "config.json".to_string(),
            vec![b' '; limits::MAX_CONFIG_BYTES as usize + 1],
        );
        let files = ModelFiles::map("m", map);
        let err = files.read("config.json").expect_err("over the limit");
        assert!(err.to_string().contains("over the limit"), "{err}");
    }
}
