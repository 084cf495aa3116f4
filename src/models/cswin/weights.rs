//! CSWin parameters under the official `state_dict` names: loaded, checked and uploaded.

use super::CswinConfig;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::weights::Weights;
use crate::models::{Conv2d, LayerNorm, Linear, rounded_tree, upload_tree};
use crate::tensor::{DType, Tensor};

weight_tree! {
    /// One CSWinBlock's parameters. `lepe` holds each branch's `attns.{i}.get_v` as
    /// [Cb, 3, 3], kept in f32.
    #[derive(Debug, Clone)]
    pub struct CswinBlock<T> {
        pub qkv: Linear<T>,
        pub norm1: LayerNorm<T>,
        pub proj: Linear<T>,
        @in_f32 pub lepe: Vec<Linear<T>>,
        pub fc1: Linear<T>,
        pub fc2: Linear<T>,
        pub norm2: LayerNorm<T>,
    }
}

weight_tree! {
    /// `Merge_Block`: conv 3x3 / 2 then LayerNorm.
    #[derive(Debug, Clone)]
    pub struct Merge<T> {
        pub conv: Conv2d<T>,
        pub norm: LayerNorm<T>,
    }
}

weight_tree! {
    /// All parameters of a CSWinTransformer.
    #[derive(Debug, Clone)]
    pub struct CswinWeights<T> {
        /// `stage1_conv_embed.0`
        pub stem: Conv2d<T>,
        /// `stage1_conv_embed.2`
        pub stem_norm: LayerNorm<T>,
        /// `stage1`..`stage4`
        pub stages: Vec<Vec<CswinBlock<T>>>,
        /// `merge1`..`merge3`
        pub merges: Vec<Merge<T>>,
        /// The classifier's final `norm` and `head` (absent in a segmentation backbone).
        pub norm: Option<LayerNorm<T>>,
        pub head: Option<Linear<T>>,
        /// The segmentation backbone's per-stage `norm1`..`norm4` (empty for a classifier).
        pub stage_norms: Vec<LayerNorm<T>>,
    }
}

impl<T> CswinWeights<T> {
    /// Whether these are the segmentation backbone's weights (`norm1..norm4`, stage features).
    pub fn is_segmentation(&self) -> bool {
        !self.stage_norms.is_empty()
    }
}

impl CswinWeights<HostTensor> {
    /// Loads and checks every tensor (official key names; f32, f16 or bf16): a classification
    /// checkpoint (`norm`, `head`), or the segmentation backbone's (`segmentation/backbone/`:
    /// keys under `backbone.`, `norm1..norm4`, every stage but the last with two branches,
    /// decode and auxiliary heads ignored).
    pub fn from_safetensors(config: &CswinConfig, bytes: &[u8]) -> Result<Self> {
        Self::from_weights(config, Weights::from_bytes(bytes)?)
    }

    /// The tree read from any source of weights: a checkpoint (safetensors, or a `.pth`
    /// converted to it), or seeded random weights ([`Weights::random`], the bench's models).
    /// The one description of CSWin's tensors, keys and shapes; uploading and f16 rounding
    /// walk the result (the walk `weight_tree!` derives from the structs above).
    pub fn from_weights(config: &CswinConfig, w: Weights<'_>) -> Result<Self> {
        let mut w = w.with_fallback_prefix("backbone.");
        let segmentation = w.contains("norm1.weight");
        let c = config.embed_dim;
        let stem = Conv2d::load(&mut w, "stage1_conv_embed.0", [c, config.in_chans, 7, 7])?;
        let stem_norm = LayerNorm::load(&mut w, "stage1_conv_embed.2", c)?;
        let mut stages = Vec::new();
        for s in 0..4 {
            let (d, hidden) = (config.dim(s), config.hidden(s));
            let mut blocks = Vec::new();
            for i in 0..config.depth[s] {
                let p = format!("stage{}.{i}", s + 1);
                let branches = if segmentation && s < 3 {
                    2
                } else {
                    config.branches(s)
                };
                let has_second = w.contains(&format!("{p}.attns.1.get_v.weight"));
                if has_second != (branches == 2) {
                    return Err(Error::Weights {
                        key: format!("{p}.attns.1.get_v.weight"),
                        reason: format!(
                            "the config gives stage {} {branches} branch(es) (img_size {}, split {}), the checkpoint {}",
                            s + 1,
                            config.img_size,
                            config.split_size[s],
                            if has_second { "2" } else { "1" }
                        ),
                    });
                }
                let cb = d / branches;
                let lepe = (0..branches)
                    .map(|b| {
                        let key = format!("{p}.attns.{b}.get_v");
                        let weight = w.get(&format!("{key}.weight"), &[cb, 1, 3, 3])?;
                        Ok(Linear {
                            weight: HostTensor::new(&[cb, 3, 3], weight.data)?,
                            bias: w.get(&format!("{key}.bias"), &[cb])?,
                        })
                    })
                    .collect::<Result<_>>()?;
                blocks.push(CswinBlock {
                    qkv: Linear::load(&mut w, &format!("{p}.qkv"), 3 * d, d)?,
                    norm1: LayerNorm::load(&mut w, &format!("{p}.norm1"), d)?,
                    proj: Linear::load(&mut w, &format!("{p}.proj"), d, d)?,
                    lepe,
                    fc1: Linear::load(&mut w, &format!("{p}.mlp.fc1"), hidden, d)?,
                    fc2: Linear::load(&mut w, &format!("{p}.mlp.fc2"), d, hidden)?,
                    norm2: LayerNorm::load(&mut w, &format!("{p}.norm2"), d)?,
                });
            }
            stages.push(blocks);
        }
        let merges = (0..3)
            .map(|m| {
                let (d, p) = (config.dim(m), format!("merge{}", m + 1));
                Ok(Merge {
                    conv: Conv2d::load(&mut w, &format!("{p}.conv"), [2 * d, d, 3, 3])?,
                    norm: LayerNorm::load(&mut w, &format!("{p}.norm"), 2 * d)?,
                })
            })
            .collect::<Result<_>>()?;
        let stage_norms = match segmentation {
            true => (0..4)
                .map(|s| LayerNorm::load(&mut w, &format!("norm{}", s + 1), config.dim(s)))
                .collect::<Result<_>>()?,
            false => Vec::new(),
        };
        let classifier = !segmentation || w.contains("head.weight");
        if classifier && config.num_classes == 0 {
            return Err(Error::Weights {
                key: "head.weight".into(),
                reason: "the checkpoint is a classifier (no norm1..norm4) but config.json has no \
                         num_classes"
                    .into(),
            });
        }
        let (norm, head) = match classifier {
            true => (
                Some(LayerNorm::load(&mut w, "norm", config.dim(3))?),
                Some(Linear::load(
                    &mut w,
                    "head",
                    config.num_classes,
                    config.dim(3),
                )?),
            ),
            false => (None, None),
        };
        let heads = ["decode_head.", "auxiliary_head.", "neck."];
        let unused = w.unused(|k| heads.iter().any(|h| k.starts_with(h)));
        if let Some(key) = unused.first() {
            return Err(Error::Weights {
                key: key.clone(),
                reason: format!(
                    "not part of a CSWin with this config ({} unexpected tensors)",
                    unused.len()
                ),
            });
        }
        Ok(Self {
            stem,
            stem_norm,
            stages,
            merges,
            norm,
            head,
            stage_norms,
        })
    }

    /// The same weights in GPU buffers: projection, MLP, head and convolution weights stored
    /// as `dtype`; biases, norms and LePE as f32.
    pub fn upload(&self, ctx: &Context, dtype: DType) -> Result<CswinWeights<Tensor>> {
        upload_tree(self, ctx, dtype)
    }

    /// The weights as a `dtype` run holds them (the weights [`Self::upload`] stores as
    /// `dtype` rounded to it): the CPU twin's side of an f16 run.
    pub fn rounded(&self, dtype: DType) -> Self {
        rounded_tree(self, dtype)
    }
}

/// Reads `config.json` and `model.safetensors` from a model folder.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_dir(dir: &std::path::Path) -> Result<(CswinConfig, CswinWeights<HostTensor>)> {
    let config = load_config(dir)?;
    let weights = load_weights(dir, &config)?;
    Ok((config, weights))
}

/// Reads and checks a model folder's `config.json`; errors name the file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_config(dir: &std::path::Path) -> Result<CswinConfig> {
    let path = crate::io::in_model(dir, "config.json")?;
    let json = crate::io::read_bounded(&path, crate::limits::MAX_CONFIG_BYTES)?;
    CswinConfig::from_json(&String::from_utf8_lossy(&json)).map_err(|e| e.in_file(&path))
}

/// Reads a model folder's weights for `config`: `model.safetensors`, or else the folder's one
/// PyTorch checkpoint (`.pth` / `.pt`, as released, read by [`crate::models::pth`]); errors
/// name the file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_weights(
    dir: &std::path::Path,
    config: &CswinConfig,
) -> Result<CswinWeights<HostTensor>> {
    let path = crate::io::in_model(dir, "model.safetensors")?;
    if path.exists() {
        return CswinWeights::from_safetensors(config, &crate::io::read_safetensors(&path)?)
            .map_err(|e| e.in_file(&path));
    }
    let path = crate::models::pth::checkpoint_in(dir)?;
    let bytes = crate::io::read_regular(&path, crate::limits::MAX_STREAM_BYTES)?;
    let what = path.display().to_string();
    let safetensors = crate::models::pth::pth_to_safetensors(&bytes, &what)?;
    CswinWeights::from_safetensors(config, &safetensors).map_err(|e| e.in_file(&path))
}
