//! [`ImageEncoder`]: a CSWin folder (classification or segmentation backbone) loaded once and
//! run by every front door the same way: config (or a preset), labels, weights (safetensors,
//! or the folder's one PyTorch checkpoint), then the device.

use std::sync::Arc;

use super::{EncoderOptions, ModelFiles, Runner};
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::cswin::{self, Cswin, CswinConfig, CswinOutput, CswinWeights};

/// What the front doors print about a loaded image model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageInfo {
    pub model_id: String,
    pub model_type: String,
    /// The GPU adapter, or "CPU reference path".
    pub device: String,
    pub dtype: &'static str,
    /// The side images are resized and cropped to for classification.
    pub img_size: usize,
    /// Classes of the head (`None` for a segmentation backbone).
    pub num_classes: Option<usize>,
    /// The segmentation backbone: `features1..4` (NCHW) after `norm1..norm4`, no head.
    pub segmentation: bool,
    /// Channels of each stage's features.
    pub stage_dims: Vec<usize>,
}

/// A CSWin model loaded once.
pub struct ImageEncoder {
    config: CswinConfig,
    labels: Vec<String>,
    runner: Runner<Cswin, CswinWeights<HostTensor>>,
    info: ImageInfo,
}

impl ImageEncoder {
    /// Opens a model folder on disk (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: impl AsRef<std::path::Path>, options: &EncoderOptions) -> Result<Self> {
        pollster::block_on(Self::open_files(&ModelFiles::dir(dir.as_ref()), options))
    }

    /// Opens a model from its files: config.json (or `options.variant`'s preset), labels
    /// (config.json's `id2label`, else `labels.txt`), weights, then the device.
    pub async fn open_files(files: &ModelFiles, options: &EncoderOptions) -> Result<Self> {
        let json = files.json("config.json")?;
        let config = match (&options.variant, &json) {
            (Some(v), _) => CswinConfig::preset(v)?,
            (None, Some(json)) => CswinConfig::from_json(&json.to_string())
                .map_err(|e| e.in_file(&files.describe("config.json")))?,
            (None, None) => {
                return Err(files.missing("config.json", "a model folder needs its config.json"));
            }
        };
        let labels = labels(files, json.as_ref())?;
        let weights = load_weights(files, &config)?;
        let resolved = super::resolve(&options.device).await?;
        let ctx = resolved.ctx.clone();
        let info = ImageInfo {
            model_id: files.name(),
            model_type: "cswin".into(),
            device: super::describe(&resolved),
            dtype: options.dtype.name().0,
            img_size: config.img_size,
            num_classes: (!weights.is_segmentation()).then_some(config.num_classes),
            segmentation: weights.is_segmentation(),
            stage_dims: (0..4).map(|s| config.dim(s)).collect(),
        };
        let runner = match ctx {
            Some(ctx) => Runner::Gpu {
                model: Cswin::with_dtype(&ctx, config.clone(), &weights, options.dtype)?,
                ctx,
            },
            None => Runner::Cpu {
                // Rounded once here for f16, not per forward.
                model: match options.dtype {
                    crate::DType::F32 => weights,
                    dtype => weights.rounded(dtype),
                },
                dtype: options.dtype,
                exec: resolved.exec,
            },
        };
        Ok(Self {
            config,
            labels,
            runner,
            info,
        })
    }

    pub fn info(&self) -> &ImageInfo {
        &self.info
    }

    pub fn config(&self) -> &CswinConfig {
        &self.config
    }

    /// Class names (empty when the folder names none).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The GPU context the model runs on (`None` on the CPU path).
    pub fn context(&self) -> Option<&Arc<crate::Context>> {
        match &self.runner {
            Runner::Gpu { ctx, .. } => Some(ctx),
            Runner::Cpu { .. } => None,
        }
    }

    /// An encoded image (JPEG, PNG, WebP, BMP) as the classifier takes it: resized, centre
    /// cropped to `img_size` and normalised with ImageNet's mean and std, [1, 3, S, S].
    /// `what` names the image in errors.
    pub fn preprocess(&self, bytes: &[u8], what: &str) -> Result<HostTensor> {
        let img = crate::models::image::decode(bytes, what)?;
        crate::models::image::imagenet_preprocess(&img, self.config.img_size)
            .map_err(|e| e.in_file(std::path::Path::new(what)))
    }

    /// Raw 8-bit pixels (`height x width x channels`, row-major; 1, 3 or 4 channels) prepared
    /// as [`Self::preprocess`] prepares a decoded image.
    pub fn preprocess_pixels(
        &self,
        width: usize,
        height: usize,
        channels: usize,
        pixels: &[u8],
        what: &str,
    ) -> Result<HostTensor> {
        let img = crate::models::image::from_pixels(width, height, channels, pixels, what)?;
        crate::models::image::imagenet_preprocess(&img, self.config.img_size)
            .map_err(|e| e.in_file(std::path::Path::new(what)))
    }

    /// Runs the model on `pixel_values` [B, 3, H, W] (checked first); with
    /// `block0_attention`, each stage's first block's attention output too.
    pub async fn forward(
        &self,
        pixel_values: &HostTensor,
        block0_attention: bool,
    ) -> Result<CswinOutput> {
        cswin::check_input(&self.config, pixel_values)?;
        match &self.runner {
            Runner::Gpu { ctx, model } => model.forward(ctx, pixel_values, block0_attention).await,
            Runner::Cpu { model, dtype, exec } => {
                let (config, attention) = (&self.config, block0_attention);
                match exec {
                    super::CpuExec::Twin => cswin::forward_rounded(
                        &crate::cpu::Twin,
                        config,
                        model,
                        pixel_values,
                        attention,
                        *dtype,
                    ),
                    #[cfg(not(target_arch = "wasm32"))]
                    super::CpuExec::Fast => cswin::forward_rounded(
                        &crate::cpu::Fast,
                        config,
                        model,
                        pixel_values,
                        attention,
                        *dtype,
                    ),
                }
            }
        }
    }

    /// [`Self::forward`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &self,
        pixel_values: &HostTensor,
        block0_attention: bool,
    ) -> Result<CswinOutput> {
        pollster::block_on(self.forward(pixel_values, block0_attention))
    }

    /// The `k` most probable classes of each image: (class, probability, label), best first.
    pub async fn classify(
        &self,
        pixel_values: &HostTensor,
        k: usize,
    ) -> Result<Vec<Vec<(usize, f32, String)>>> {
        let out = self.forward(pixel_values, false).await?;
        let logits = out.logits()?;
        if let Some((i, v)) = logits.first_non_finite() {
            return Err(Error::Readback {
                what: "logits".into(),
                message: format!("the model produced {v} at flat index {i}"),
            });
        }
        let classes = logits.shape[1];
        Ok(logits
            .data
            .chunks(classes)
            .map(|row| {
                cswin::top_k(row, k)
                    .into_iter()
                    .map(|(c, p)| (c, p, self.labels.get(c).cloned().unwrap_or_default()))
                    .collect()
            })
            .collect())
    }

    /// [`Self::classify`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn classify_blocking(
        &self,
        pixel_values: &HostTensor,
        k: usize,
    ) -> Result<Vec<Vec<(usize, f32, String)>>> {
        pollster::block_on(self.classify(pixel_values, k))
    }
}

/// Class names from config.json's `id2label`, else `labels.txt` (one per line), else none.
fn labels(files: &ModelFiles, json: Option<&serde_json::Value>) -> Result<Vec<String>> {
    let labels = json.map(cswin::id2label).unwrap_or_default();
    if !labels.is_empty() {
        return Ok(labels);
    }
    Ok(match files.read("labels.txt")? {
        Some(text) => String::from_utf8_lossy(&text)
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    })
}

/// `model.safetensors`, or else the folder's one PyTorch checkpoint (`.pth` / `.pt`, as
/// released, read by [`crate::models::pth`]).
fn load_weights(files: &ModelFiles, config: &CswinConfig) -> Result<CswinWeights<HostTensor>> {
    if let Some(bytes) = files.read("model.safetensors")? {
        let path = files.describe("model.safetensors");
        return CswinWeights::from_safetensors(config, &bytes).map_err(|e| e.in_file(&path));
    }
    let (path, bytes) = match files {
        #[cfg(not(target_arch = "wasm32"))]
        ModelFiles::Dir(dir) => {
            let path = crate::models::pth::checkpoint_in(dir)?;
            let bytes = crate::io::read_regular(&path, crate::limits::MAX_STREAM_BYTES)?;
            (path, bytes)
        }
        ModelFiles::Map { files: map, .. } => {
            let found: Vec<_> = map
                .keys()
                .filter(|k| !k.contains('/') && (k.ends_with(".pth") || k.ends_with(".pt")))
                .collect();
            match found[..] {
                [name] => (files.describe(name), files.need(name, "the checkpoint")?),
                _ => {
                    return Err(Error::Format(format!(
                        "{}: no model.safetensors and {} PyTorch checkpoints (one expected)",
                        files.name(),
                        found.len()
                    )));
                }
            }
        }
    };
    let what = path.display().to_string();
    let safetensors = crate::models::pth::pth_to_safetensors(&bytes, &what)?;
    CswinWeights::from_safetensors(config, &safetensors).map_err(|e| e.in_file(&path))
}

impl std::fmt::Debug for ImageEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageEncoder")
            .field("info", &self.info)
            .finish()
    }
}
