//! CSWin Transformer (Dong et al., CVPR 2022) as Microsoft's official `models/cswin.py`
//! computes it (see the project's CSWIN notes): conv stem, four stages of pre-norm blocks with
//! cross-shaped window attention and LePE, conv merges, final LayerNorm on every token, mean,
//! head. Weights use the official `state_dict` names. Outputs the stem, the four stage features
//! (before each merge), the pooled features and the logits.
//!
//! Inputs of any size (at least 3x3) are taken: stripes are zero-padded after the qkv
//! projection, as the official segmentation backbone does, when the window does not divide the
//! map. At the checkpoint's `img_size` this is exactly the classification model.

mod config;
mod cpu;
mod geometry;
mod gpu;
mod weights;

pub use config::CswinConfig;
#[cfg(not(target_arch = "wasm32"))]
pub use cpu::forward_fast;
pub use cpu::{forward_cpu, forward_cpu_as, forward_on, forward_rounded};
pub use geometry::{Geometry, check_input, pixel_values_from_safetensors};
pub use gpu::Cswin;
pub use weights::{CswinBlock, CswinWeights, Merge};
#[cfg(not(target_arch = "wasm32"))]
pub use weights::{load_config, load_dir, load_weights};

use crate::error::Result;
use crate::host::HostTensor;

/// What a forward returns. Features are token-major [B, H_s*W_s, C_s] (token = y*W_s + x).
#[derive(Debug, Clone)]
pub struct CswinOutput {
    pub geometry: Geometry,
    /// The stem's output (conv, LayerNorm), [B, H1*W1, C].
    pub stem: HostTensor,
    /// Each stage's last block's output, before the merge: the backbone features.
    pub stages: Vec<HostTensor>,
    /// LayerNorm on every stage-4 token, then the mean: [B, 8C] (classification checkpoints).
    pub pooled: Option<HostTensor>,
    /// `head(pooled)`: [B, num_classes] (classification checkpoints).
    pub logits: Option<HostTensor>,
    /// The segmentation backbone's outputs: each stage's output after its `norm1..norm4`, in
    /// NCHW `[B, C_s, H_s, W_s]` as heads expect them (empty for a classifier).
    pub features: Vec<HostTensor>,
    /// Each stage's first block's attention output (before `proj`), when requested.
    pub block0_attention: Vec<HostTensor>,
}

impl CswinOutput {
    /// `stem`, `stage1`..`stage4`, then `pooled` and `logits` (classifiers) or
    /// `features1`..`features4` (segmentation backbones) as an F32 safetensors file.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let names = ["stage1", "stage2", "stage3", "stage4"];
        let features = ["features1", "features2", "features3", "features4"];
        let mut tensors = vec![("stem", &self.stem)];
        tensors.extend(names.iter().copied().zip(&self.stages));
        for (name, t) in [("pooled", &self.pooled), ("logits", &self.logits)] {
            if let Some(t) = t {
                tensors.push((name, t));
            }
        }
        tensors.extend(features.iter().copied().zip(&self.features));
        crate::models::weights::to_safetensors(&tensors)
    }

    /// The segmentation backbone's features1..4 (NCHW); an error for a classification
    /// checkpoint, which has no per-stage norms.
    pub fn features(&self) -> Result<&[HostTensor]> {
        if self.features.is_empty() {
            return Err(crate::Error::Argument {
                op: "cswin",
                arg: "model",
                reason: "features1..4 come from the segmentation backbone's norm1..norm4, which \
                         this classification checkpoint does not have (its stage features are \
                         stage1..4)"
                    .into(),
            });
        }
        Ok(&self.features)
    }

    /// The logits of a classification checkpoint; an error for a segmentation backbone.
    pub fn logits(&self) -> Result<&HostTensor> {
        self.logits.as_ref().ok_or_else(|| crate::Error::Argument {
            op: "cswin",
            arg: "model",
            reason: "a segmentation backbone (norm1..norm4, no head) has no logits: use its \
                         features"
                .into(),
        })
    }
}

/// Class names from a config.json's `id2label` map (empty when it has none).
pub fn id2label(config_json: &serde_json::Value) -> Vec<String> {
    let Some(map) = config_json.get("id2label").and_then(|v| v.as_object()) else {
        return Vec::new();
    };
    let mut labels = vec![String::new(); map.len()];
    for (k, v) in map {
        if let (Ok(i), Some(name)) = (k.parse::<usize>(), v.as_str())
            && i < labels.len()
        {
            labels[i] = name.to_string();
        }
    }
    labels
}

/// The `k` most probable classes of one row of logits: (class, softmax probability), best first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().fold(f32::MIN, |m, &v| m.max(v));
    let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    let mut ranked: Vec<usize> = (0..logits.len()).collect();
    ranked.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    ranked
        .into_iter()
        .take(k)
        .map(|c| (c, (logits[c] - max).exp() / sum))
        .collect()
}

/// Token-major stage features [B, H*W, C] as NCHW [B, C, H, W].
pub fn to_nchw(t: &HostTensor, h: usize, w: usize) -> Result<HostTensor> {
    let &[b, n, c] = t.shape.as_slice() else {
        return Err(crate::Error::Shape {
            op: "to_nchw",
            arg: "t",
            expected: "[B, H*W, C]".into(),
            found: t.shape.clone(),
        });
    };
    if n != h * w {
        return Err(crate::Error::Shape {
            op: "to_nchw",
            arg: "t",
            expected: format!("[{b}, {}, {c}]", h * w),
            found: t.shape.clone(),
        });
    }
    let mut out = vec![0f32; t.data.len()];
    for bi in 0..b {
        for p in 0..n {
            for ci in 0..c {
                out[(bi * c + ci) * n + p] = t.data[(bi * n + p) * c + ci];
            }
        }
    }
    HostTensor::new(&[b, c, h, w], out)
}
