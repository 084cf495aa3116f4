//! `config.json` of a CSWin model: the official constructor's arguments, bounds, presets.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::limits;

/// `config.json` with the official constructor's names.
#[derive(Debug, Clone, Deserialize)]
pub struct CswinConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub img_size: usize,
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: [usize; 4],
    pub split_size: [usize; 4],
    pub num_heads: [usize; 4],
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// Classes of the head; 0 (or absent) for the segmentation backbone, which has none.
    #[serde(default)]
    pub num_classes: usize,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

fn default_model_type() -> String {
    "cswin".into()
}
fn default_in_chans() -> usize {
    3
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_true() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-5
}

impl CswinConfig {
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(json).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// The official variants (`models/cswin.py`'s factories), with 1000 classes:
    /// `cswin-t-224`, `cswin-s-224`, `cswin-b-224`, `cswin-l-224`, `cswin-b-384`, `cswin-l-384`.
    pub fn preset(name: &str) -> Result<Self> {
        let (embed_dim, depth, heads, img_size) = match name {
            "cswin-t-224" => (64, [1, 2, 21, 1], [2, 4, 8, 16], 224),
            "cswin-s-224" => (64, [2, 4, 32, 2], [2, 4, 8, 16], 224),
            "cswin-b-224" => (96, [2, 4, 32, 2], [4, 8, 16, 32], 224),
            // The code's 24 stage-4 heads, not the paper's 48.
            "cswin-l-224" => (144, [2, 4, 32, 2], [6, 12, 24, 24], 224),
            "cswin-b-384" => (96, [2, 4, 32, 2], [4, 8, 16, 32], 384),
            "cswin-l-384" => (144, [2, 4, 32, 2], [6, 12, 24, 24], 384),
            _ => return Err(Error::Config(format!("unknown CSWin preset {name:?}"))),
        };
        let split_size = if img_size == 384 {
            [1, 2, 12, 12]
        } else {
            [1, 2, 7, 7]
        };
        Ok(Self {
            model_type: "cswin".into(),
            img_size,
            in_chans: 3,
            embed_dim,
            depth,
            split_size,
            num_heads: heads,
            mlp_ratio: 4.0,
            num_classes: 1000,
            qkv_bias: true,
            layer_norm_eps: 1e-5,
        })
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(what));
        if self.model_type != "cswin" {
            return bad(format!("model_type {:?} is not \"cswin\"", self.model_type));
        }
        if !self.qkv_bias {
            return bad("qkv_bias false is not supported (the official models all have it)".into());
        }
        if self.embed_dim == 0 || self.in_chans == 0 || self.img_size < 32 {
            return bad("embed_dim and in_chans must be positive and img_size at least 32".into());
        }
        if let Some(s) = self.split_size.iter().position(|&s| s == 0) {
            return bad(format!("split_size[{s}] is 0"));
        }
        // Bounds (largest official value in parentheses): img_size (384), embed_dim (144),
        // depth (32), classes (21,841), mlp_ratio (4); every stripe at most its stage's side.
        limits::check_key("img_size", self.img_size as u64, 4096)?;
        limits::check_key("in_chans", self.in_chans as u64, 64)?;
        limits::check_key("embed_dim", self.embed_dim as u64, 2048)?;
        limits::check_key("num_classes", self.num_classes as u64, 1 << 20)?;
        for s in 0..4 {
            limits::check_key(&format!("depth[{s}]"), self.depth[s] as u64, 256)?;
            limits::check_key(
                &format!("num_heads[{s}]"),
                self.num_heads[s] as u64,
                self.dim(s) as u64,
            )?;
            limits::check_key(
                &format!("split_size[{s}]"),
                self.split_size[s] as u64,
                self.resolution(s).max(1) as u64,
            )?;
        }
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return bad(format!("mlp_ratio {} is not in (0, 64]", self.mlp_ratio));
        }
        limits::check_elements(
            "num_classes x 8 embed_dim",
            &[self.num_classes, self.dim(3)],
        )?;
        if !(self.mlp_ratio > 0.0
            && (self.hidden(0) as f64 - self.dim(0) as f64 * self.mlp_ratio).abs() < 1e-6)
        {
            return bad(format!(
                "mlp_ratio {} does not give a whole hidden size",
                self.mlp_ratio
            ));
        }
        for s in 0..4 {
            let (dim, heads) = (self.dim(s), self.num_heads[s]);
            if heads == 0 || dim % heads != 0 {
                return bad(format!(
                    "num_heads[{s}] = {heads} does not divide stage {} width {dim}",
                    s + 1
                ));
            }
            if self.branches(s) == 2 {
                let (branch_heads, branch_dim) = (heads / 2, dim / 2);
                if branch_heads == 0 || branch_dim % branch_heads != 0 {
                    return bad(format!(
                        "stage {}: {heads} heads cannot be split over two branches of {branch_dim} channels",
                        s + 1
                    ));
                }
            }
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad(format!(
                "layer_norm_eps {} is not positive",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    /// Channels of stage `s` (0-based).
    pub fn dim(&self, s: usize) -> usize {
        self.embed_dim << s
    }

    /// MLP hidden size of stage `s`.
    pub fn hidden(&self, s: usize) -> usize {
        (self.dim(s) as f64 * self.mlp_ratio).round() as usize
    }

    /// Side of stage `s` at `img_size` (the resolution the official code builds for).
    pub fn resolution(&self, s: usize) -> usize {
        self.img_size / (4 << s)
    }

    /// Branches of stage `s`'s blocks: the last stage, and any stage whose resolution equals
    /// its split size, have one global branch.
    pub fn branches(&self, s: usize) -> usize {
        if s == 3 || self.resolution(s) == self.split_size[s] {
            1
        } else {
            2
        }
    }
}

/// Every stage needs a block (a config with a 0 depth parses, but cannot run).
pub(super) fn check_depths(config: &CswinConfig) -> Result<()> {
    match config.depth.iter().position(|&d| d == 0) {
        Some(s) => Err(Error::Config(format!(
            "depth[{s}] is 0: every stage needs a block"
        ))),
        None => Ok(()),
    }
}
