//! CSWin Transformer (Dong et al., CVPR 2022) as Microsoft's official `models/cswin.py`
//! computes it (see the project's CSWIN notes): conv stem, four stages of pre-norm blocks with
//! cross-shaped window attention and LePE, conv merges, final LayerNorm on every token, mean,
//! head. Weights use the official `state_dict` names. Outputs the stem, the four stage features
//! (before each merge), the pooled features and the logits.
//!
//! Inputs of any size (at least 3x3) are taken: stripes are zero-padded after the qkv
//! projection, as the official segmentation backbone does, when the window does not divide the
//! map. At the checkpoint's `img_size` this is exactly the classification model.

use serde::Deserialize;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{self, ConvInput, CswinBranch, Epilogue};
use crate::limits;
use crate::models::weights::Weights;
use crate::models::{Conv2d, LayerNorm, Linear, PlanLease, Plans};
use crate::pipeline::Recorder;
use crate::reference::{self, HostTensor};
use crate::tensor::{DType, Tensor};

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
        if self.embed_dim == 0 || self.in_chans == 0 || self.num_classes == 0 || self.img_size < 32
        {
            return bad(
                "embed_dim, in_chans, num_classes must be positive and img_size at least 32".into(),
            );
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

/// One CSWinBlock's parameters. `lepe` holds each branch's `attns.{i}.get_v` as [Cb, 3, 3].
#[derive(Debug, Clone)]
pub struct CswinBlock<T> {
    pub qkv: Linear<T>,
    pub norm1: LayerNorm<T>,
    pub proj: Linear<T>,
    pub lepe: Vec<Linear<T>>,
    pub fc1: Linear<T>,
    pub fc2: Linear<T>,
    pub norm2: LayerNorm<T>,
}

/// `Merge_Block`: conv 3x3 / 2 then LayerNorm.
#[derive(Debug, Clone)]
pub struct Merge<T> {
    pub conv: Conv2d<T>,
    pub norm: LayerNorm<T>,
}

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
    pub norm: LayerNorm<T>,
    pub head: Linear<T>,
}

impl CswinWeights<HostTensor> {
    /// Loads and checks every tensor (official key names; f32, f16 or bf16).
    pub fn from_safetensors(config: &CswinConfig, bytes: &[u8]) -> Result<Self> {
        let mut w = Weights::from_bytes(bytes)?;
        let c = config.embed_dim;
        let stem = Conv2d::load(&mut w, "stage1_conv_embed.0", [c, config.in_chans, 7, 7])?;
        let stem_norm = LayerNorm::load(&mut w, "stage1_conv_embed.2", c)?;
        let mut stages = Vec::new();
        for s in 0..4 {
            let (d, hidden) = (config.dim(s), config.hidden(s));
            let mut blocks = Vec::new();
            for i in 0..config.depth[s] {
                let p = format!("stage{}.{i}", s + 1);
                let branches = config.branches(s);
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
        let norm = LayerNorm::load(&mut w, "norm", config.dim(3))?;
        let head = Linear::load(&mut w, "head", config.num_classes, config.dim(3))?;
        let unused = w.unused(|_| false);
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
        })
    }

    pub fn upload(&self, ctx: &Context) -> Result<CswinWeights<Tensor>> {
        let stages = self
            .stages
            .iter()
            .enumerate()
            .map(|(s, blocks)| {
                blocks
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let p = format!("stage{}.{i}", s + 1);
                        Ok(CswinBlock {
                            qkv: b.qkv.upload(ctx, &format!("{p}.qkv"))?,
                            norm1: b.norm1.upload(ctx, &format!("{p}.norm1"))?,
                            proj: b.proj.upload(ctx, &format!("{p}.proj"))?,
                            lepe: (b.lepe.iter().enumerate())
                                .map(|(j, l)| l.upload(ctx, &format!("{p}.attns.{j}.get_v")))
                                .collect::<Result<_>>()?,
                            fc1: b.fc1.upload(ctx, &format!("{p}.mlp.fc1"))?,
                            fc2: b.fc2.upload(ctx, &format!("{p}.mlp.fc2"))?,
                            norm2: b.norm2.upload(ctx, &format!("{p}.norm2"))?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        let merges = (self.merges.iter().enumerate())
            .map(|(m, g)| {
                Ok(Merge {
                    conv: g.conv.upload(ctx, &format!("merge{}.conv", m + 1))?,
                    norm: g.norm.upload(ctx, &format!("merge{}.norm", m + 1))?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(CswinWeights {
            stem: self.stem.upload(ctx, "stage1_conv_embed.0")?,
            stem_norm: self.stem_norm.upload(ctx, "stage1_conv_embed.2")?,
            stages,
            merges,
            norm: self.norm.upload(ctx, "norm")?,
            head: self.head.upload(ctx, "head")?,
        })
    }
}

/// The spatial plan of a forward: each stage's map size and each branch's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub batch: usize,
    pub image: (usize, usize),
    /// (H, W) of stages 1..4.
    pub stages: [(usize, usize); 4],
}

impl Geometry {
    /// Checks `pixel_values`' shape [B, in_chans, H, W] and derives the stage sizes.
    pub fn new(config: &CswinConfig, pixel_values: &[usize]) -> Result<Self> {
        let &[batch, chans, h, w] = pixel_values else {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "shape {pixel_values:?} is not [B, {}, H, W]",
                    config.in_chans
                ),
            });
        };
        if chans != config.in_chans {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "{chans} channels, the model takes {} (shape {pixel_values:?})",
                    config.in_chans
                ),
            });
        }
        if batch == 0 || h < 3 || w < 3 {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "{batch} images of {h}x{w}: need at least one image of 3x3 or more (the 7x7/4 stem)"
                ),
            });
        }
        let size = config.img_size as u64;
        let (side, area) = (
            limits::CSWIN_SIDE_FACTOR * size,
            limits::CSWIN_IMAGE_AREA_FACTOR * size * size,
        );
        let batch_area = limits::CSWIN_BATCH_AREA_FACTOR * size * size;
        let pixels = (h as u64).saturating_mul(w as u64);
        if h as u64 > side || w as u64 > side || pixels > area {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "images of {h}x{w} are over this model's limit (img_size {size}: sides up to \
                     {side}, at most {area} pixels)"
                ),
            });
        }
        if pixels.saturating_mul(batch as u64) > batch_area {
            return Err(Error::Input {
                arg: "pixel_values".into(),
                reason: format!(
                    "a batch of {batch} images of {h}x{w} is over this model's limit of \
                     {batch_area} pixels per forward (img_size {size}): split the batch"
                ),
            });
        }
        let mut stages = [((h - 3) / 4 + 1, (w - 3) / 4 + 1); 4];
        for s in 1..4 {
            let (ph, pw) = stages[s - 1];
            stages[s] = (ph.div_ceil(2), pw.div_ceil(2));
        }
        Ok(Self {
            batch,
            image: (h, w),
            stages,
        })
    }

    /// The attention branches of a stage-`s` block with `branches` branches.
    pub fn branches(&self, config: &CswinConfig, s: usize, branches: usize) -> Vec<CswinBranch> {
        let (h, w) = self.stages[s];
        let (c, heads, sw) = (config.dim(s), config.num_heads[s], config.split_size[s]);
        if branches == 1 {
            return vec![CswinBranch {
                h,
                w,
                c,
                channel_offset: 0,
                channels: c,
                heads,
                window: (h, w),
            }];
        }
        let half = CswinBranch {
            h,
            w,
            c,
            channel_offset: 0,
            channels: c / 2,
            heads: heads / 2,
            window: (h, sw),
        };
        vec![
            half,
            CswinBranch {
                channel_offset: c / 2,
                window: (sw, w),
                ..half
            },
        ]
    }
}

/// What a forward returns. Features are token-major [B, H_s*W_s, C_s] (token = y*W_s + x).
#[derive(Debug, Clone)]
pub struct CswinOutput {
    pub geometry: Geometry,
    /// The stem's output (conv, LayerNorm), [B, H1*W1, C].
    pub stem: HostTensor,
    /// Each stage's last block's output, before the merge: the backbone features.
    pub stages: Vec<HostTensor>,
    /// LayerNorm on every stage-4 token, then the mean: [B, 8C].
    pub pooled: HostTensor,
    /// `head(pooled)`: [B, num_classes].
    pub logits: HostTensor,
    /// Each stage's first block's attention output (before `proj`), when requested.
    pub block0_attention: Vec<HostTensor>,
}

impl CswinOutput {
    /// `stem`, `stage1`..`stage4`, `pooled` and `logits` as an F32 safetensors file.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let names = ["stage1", "stage2", "stage3", "stage4"];
        let mut tensors = vec![("stem", &self.stem)];
        tensors.extend(names.iter().copied().zip(&self.stages));
        tensors.extend([("pooled", &self.pooled), ("logits", &self.logits)]);
        crate::models::weights::to_safetensors(&tensors)
    }
}

/// Buffers for one input shape.
struct Plan {
    geometry: Geometry,
    pixels: Tensor,
    stem_conv: Tensor,
    stem: Tensor,
    /// Per stage: x (block output, the stage feature), x2 (after attention), normed, qkv,
    /// attention output, MLP hidden; then the merge's conv output and norm output.
    x: Vec<Tensor>,
    x2: Vec<Tensor>,
    normed: Vec<Tensor>,
    qkv: Vec<Tensor>,
    attn: Vec<Tensor>,
    hidden: Vec<Tensor>,
    merge_conv: Vec<Tensor>,
    merged: Vec<Tensor>,
    final_norm: Tensor,
    ones: Tensor,
    pooled: Tensor,
    logits: Tensor,
}

impl Plan {
    fn new(ctx: &Context, config: &CswinConfig, geometry: Geometry) -> Result<Self> {
        let b = geometry.batch;
        let f32s = |shape: &[usize], label: &str| Tensor::empty(ctx, shape, DType::F32, label);
        let tokens = |s: usize| geometry.stages[s].0 * geometry.stages[s].1;
        let per_stage = |label: &str, width: &dyn Fn(usize) -> usize| -> Result<Vec<Tensor>> {
            (0..4)
                .map(|s| {
                    f32s(
                        &[b, tokens(s), width(s)],
                        &format!("stage{}.{label}", s + 1),
                    )
                })
                .collect()
        };
        let (img_h, img_w) = geometry.image;
        let c = config.embed_dim;
        let n4 = tokens(3);
        Ok(Self {
            pixels: f32s(&[b, config.in_chans, img_h, img_w], "pixel_values")?,
            stem_conv: f32s(&[b, tokens(0), c], "stem_conv")?,
            stem: f32s(&[b, tokens(0), c], "stem")?,
            x: per_stage("x", &|s| config.dim(s))?,
            x2: per_stage("x2", &|s| config.dim(s))?,
            normed: per_stage("normed", &|s| config.dim(s))?,
            qkv: per_stage("qkv", &|s| 3 * config.dim(s))?,
            attn: per_stage("attn", &|s| config.dim(s))?,
            hidden: per_stage("hidden", &|s| config.hidden(s))?,
            merge_conv: (1..4)
                .map(|s| f32s(&[b, tokens(s), config.dim(s)], "merge_conv"))
                .collect::<Result<_>>()?,
            merged: (1..4)
                .map(|s| f32s(&[b, tokens(s), config.dim(s)], "merged"))
                .collect::<Result<_>>()?,
            final_norm: f32s(&[b, n4, config.dim(3)], "norm")?,
            ones: Tensor::from_u32(ctx, &[b, n4], &vec![1; b * n4], "all_tokens")?,
            pooled: f32s(&[b, config.dim(3)], "pooled")?,
            logits: f32s(&[b, config.num_classes], "logits")?,
            geometry,
        })
    }
}

/// A CSWin model on the GPU: weights uploaded once, buffers planned once per input shape.
pub struct Cswin {
    pub config: CswinConfig,
    weights: CswinWeights<Tensor>,
    plans: Plans<Vec<usize>, Plan>,
}

impl Cswin {
    pub fn new(
        ctx: &Context,
        config: CswinConfig,
        weights: &CswinWeights<HostTensor>,
    ) -> Result<Self> {
        Ok(Self {
            weights: weights.upload(ctx)?,
            config,
            plans: Plans::default(),
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(ctx: &Context, dir: &std::path::Path) -> Result<Self> {
        let (config, weights) = load_dir(dir)?;
        Self::new(ctx, config, &weights)
    }

    /// Buffer plans kept for reuse (at most [`crate::models::MAX_IDLE_PLANS`]).
    pub fn cached_plans(&self) -> usize {
        self.plans.idle_count()
    }

    fn plan(&self, ctx: &Context, shape: &[usize]) -> Result<PlanLease<'_, Vec<usize>, Plan>> {
        let geometry = Geometry::new(&self.config, shape)?;
        self.plans
            .lease(shape.to_vec(), || Plan::new(ctx, &self.config, geometry))
    }

    /// Uploads `pixel_values` [B, C, H, W] and records the whole forward into `rec`.
    /// `on_attention` sees each stage's first block's attention output (to copy it).
    fn record(
        &self,
        rec: &mut Recorder<'_>,
        pixel_values: &HostTensor,
        mut on_attention: impl FnMut(&mut Recorder<'_>, &Tensor),
    ) -> Result<PlanLease<'_, Vec<usize>, Plan>> {
        let ctx = rec.context();
        check_input(&self.config, pixel_values)?;
        let p = self.plan(ctx, &pixel_values.shape)?;
        p.pixels.write(ctx, &pixel_values.data)?;
        let (cfg, w) = (&self.config, &self.weights);
        let eps = cfg.layer_norm_eps as f32;
        let g = &p.geometry;

        kernels::conv2d(
            rec,
            &p.pixels,
            ConvInput::Nchw,
            &w.stem.weight,
            &w.stem.bias,
            4,
            2,
            &p.stem_conv,
        )?;
        let n = &w.stem_norm;
        kernels::layer_norm(rec, &p.stem_conv, None, &n.weight, &n.bias, eps, &p.stem)?;
        for s in 0..4 {
            let mut input = if s == 0 { &p.stem } else { &p.merged[s - 1] };
            for (i, block) in w.stages[s].iter().enumerate() {
                // x2 = x + proj(attention(norm1(x))); x = x2 + fc2(gelu(fc1(norm2(x2))))
                let n = &block.norm1;
                kernels::layer_norm(rec, input, None, &n.weight, &n.bias, eps, &p.normed[s])?;
                let qkv = Epilogue::none().bias(&block.qkv.bias);
                kernels::matmul(rec, &p.normed[s], &block.qkv.weight, &p.qkv[s], qkv)?;
                for (branch, lepe) in g.branches(cfg, s, block.lepe.len()).iter().zip(&block.lepe) {
                    kernels::cswin_attention(
                        rec,
                        &p.qkv[s],
                        &lepe.weight,
                        &lepe.bias,
                        branch,
                        &p.attn[s],
                    )?;
                }
                if i == 0 {
                    on_attention(rec, &p.attn[s]);
                }
                let proj = Epilogue::none().bias(&block.proj.bias).residual(input);
                kernels::matmul(rec, &p.attn[s], &block.proj.weight, &p.x2[s], proj)?;
                let n = &block.norm2;
                kernels::layer_norm(rec, &p.x2[s], None, &n.weight, &n.bias, eps, &p.normed[s])?;
                let fc1 = Epilogue::none().bias(&block.fc1.bias).gelu();
                kernels::matmul(rec, &p.normed[s], &block.fc1.weight, &p.hidden[s], fc1)?;
                let fc2 = Epilogue::none().bias(&block.fc2.bias).residual(&p.x2[s]);
                kernels::matmul(rec, &p.hidden[s], &block.fc2.weight, &p.x[s], fc2)?;
                input = &p.x[s];
            }
            if s < 3 {
                let (h, w_) = g.stages[s];
                let m = &w.merges[s];
                let tokens = ConvInput::Tokens { h, w: w_ };
                kernels::conv2d(
                    rec,
                    input,
                    tokens,
                    &m.conv.weight,
                    &m.conv.bias,
                    2,
                    1,
                    &p.merge_conv[s],
                )?;
                kernels::layer_norm(
                    rec,
                    &p.merge_conv[s],
                    None,
                    &m.norm.weight,
                    &m.norm.bias,
                    eps,
                    &p.merged[s],
                )?;
            }
        }
        let n = &w.norm;
        kernels::layer_norm(rec, &p.x[3], None, &n.weight, &n.bias, eps, &p.final_norm)?;
        kernels::mean_pool(rec, &p.final_norm, &p.ones, &p.pooled)?;
        let head = Epilogue::none().bias(&w.head.bias);
        kernels::matmul(rec, &p.pooled, &w.head.weight, &p.logits, head)?;
        Ok(p)
    }

    /// Runs the model on the GPU (one submission). Every stage must have at least one block.
    pub async fn forward(
        &self,
        ctx: &Context,
        pixel_values: &HostTensor,
        block0_attention: bool,
    ) -> Result<CswinOutput> {
        self.check_depths()?;
        let mut rec = Recorder::new(ctx);
        let mut copies = Vec::new();
        let p = self.record(&mut rec, pixel_values, |rec, t| {
            if block0_attention {
                copies.push(rec.copy_of(t, "attention_copy"));
            }
        })?;
        let copies = copies.into_iter().collect::<Result<Vec<_>>>()?;
        rec.submit().await?;
        let mut attention = Vec::new();
        for c in &copies {
            attention.push(c.read_host(ctx).await?);
        }
        let mut stages = Vec::new();
        for x in &p.x {
            stages.push(x.read_host(ctx).await?);
        }
        Ok(CswinOutput {
            geometry: p.geometry.clone(),
            stem: p.stem.read_host(ctx).await?,
            stages,
            pooled: p.pooled.read_host(ctx).await?,
            logits: p.logits.read_host(ctx).await?,
            block0_attention: attention,
        })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &self,
        ctx: &Context,
        pixel_values: &HostTensor,
        block0_attention: bool,
    ) -> Result<CswinOutput> {
        pollster::block_on(self.forward(ctx, pixel_values, block0_attention))
    }

    /// Records and submits one forward with a timestamp around every pass (benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_timed(
        &self,
        ctx: &Context,
        pixel_values: &HostTensor,
    ) -> Result<Vec<crate::pipeline::PassTime>> {
        self.check_depths()?;
        let blocks: usize = self.config.depth.iter().sum();
        let mut rec = Recorder::with_timing(ctx, (8 * blocks + 12) as u32);
        self.record(&mut rec, pixel_values, |_, _| {})?;
        rec.submit_blocking()
    }

    fn check_depths(&self) -> Result<()> {
        check_depths(&self.config)
    }
}

fn check_depths(config: &CswinConfig) -> Result<()> {
    match config.depth.iter().position(|&d| d == 0) {
        Some(s) => Err(Error::Config(format!(
            "depth[{s}] is 0: every stage needs a block"
        ))),
        None => Ok(()),
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
    let path = dir.join("config.json");
    let json = crate::io::read_bounded(&path, crate::limits::MAX_CONFIG_BYTES)?;
    CswinConfig::from_json(&String::from_utf8_lossy(&json)).map_err(|e| e.in_file(&path))
}

/// Reads a model folder's `model.safetensors` for `config`; errors name the file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_weights(
    dir: &std::path::Path,
    config: &CswinConfig,
) -> Result<CswinWeights<HostTensor>> {
    let path = dir.join("model.safetensors");
    CswinWeights::from_safetensors(config, &crate::io::read_safetensors(&path)?)
        .map_err(|e| e.in_file(&path))
}

/// The CPU forward, built only from the kernels' CPU twins.
pub fn forward_cpu(
    config: &CswinConfig,
    w: &CswinWeights<HostTensor>,
    pixel_values: &HostTensor,
    block0_attention: bool,
) -> Result<CswinOutput> {
    check_depths(config)?;
    check_input(config, pixel_values)?;
    let g = Geometry::new(config, &pixel_values.shape)?;
    let b = g.batch;
    let eps = config.layer_norm_eps as f32;
    let z = HostTensor::zeros;
    let tokens = |s: usize| g.stages[s].0 * g.stages[s].1;

    let mut stem_conv = z(&[b, tokens(0), config.embed_dim]);
    reference::conv2d(
        pixel_values,
        ConvInput::Nchw,
        &w.stem.weight,
        &w.stem.bias,
        4,
        2,
        &mut stem_conv,
    )?;
    let mut stem = z(&stem_conv.shape);
    reference::layer_norm(
        &stem_conv,
        None,
        &w.stem_norm.weight,
        &w.stem_norm.bias,
        eps,
        &mut stem,
    )?;
    let mut x = stem.clone();
    let (mut stages, mut attention) = (Vec::new(), Vec::new());
    for s in 0..4 {
        let (d, n) = (config.dim(s), tokens(s));
        let (mut normed, mut qkv, mut attn) = (z(&[b, n, d]), z(&[b, n, 3 * d]), z(&[b, n, d]));
        let (mut x2, mut hidden) = (z(&[b, n, d]), z(&[b, n, config.hidden(s)]));
        for (i, block) in w.stages[s].iter().enumerate() {
            reference::layer_norm(
                &x,
                None,
                &block.norm1.weight,
                &block.norm1.bias,
                eps,
                &mut normed,
            )?;
            reference::matmul(
                &normed,
                &block.qkv.weight,
                &mut qkv,
                Epilogue::none().bias(&block.qkv.bias),
            )?;
            for (branch, lepe) in g
                .branches(config, s, block.lepe.len())
                .iter()
                .zip(&block.lepe)
            {
                reference::cswin_attention(&qkv, &lepe.weight, &lepe.bias, branch, &mut attn)?;
            }
            if i == 0 && block0_attention {
                attention.push(attn.clone());
            }
            reference::matmul(
                &attn,
                &block.proj.weight,
                &mut x2,
                Epilogue::none().bias(&block.proj.bias).residual(&x),
            )?;
            reference::layer_norm(
                &x2,
                None,
                &block.norm2.weight,
                &block.norm2.bias,
                eps,
                &mut normed,
            )?;
            reference::matmul(
                &normed,
                &block.fc1.weight,
                &mut hidden,
                Epilogue::none().bias(&block.fc1.bias).gelu(),
            )?;
            reference::matmul(
                &hidden,
                &block.fc2.weight,
                &mut x,
                Epilogue::none().bias(&block.fc2.bias).residual(&x2),
            )?;
        }
        stages.push(x.clone());
        if s < 3 {
            let (h, w_) = g.stages[s];
            let m = &w.merges[s];
            let mut conv = z(&[b, tokens(s + 1), config.dim(s + 1)]);
            reference::conv2d(
                &x,
                ConvInput::Tokens { h, w: w_ },
                &m.conv.weight,
                &m.conv.bias,
                2,
                1,
                &mut conv,
            )?;
            x = z(&conv.shape);
            reference::layer_norm(&conv, None, &m.norm.weight, &m.norm.bias, eps, &mut x)?;
        }
    }
    let mut final_norm = z(&x.shape);
    reference::layer_norm(&x, None, &w.norm.weight, &w.norm.bias, eps, &mut final_norm)?;
    let ones = HostTensor::new(&[b, tokens(3)], vec![1u32; b * tokens(3)])?;
    let mut pooled = z(&[b, config.dim(3)]);
    reference::mean_pool(&final_norm, &ones, &mut pooled)?;
    let mut logits = z(&[b, config.num_classes]);
    reference::matmul(
        &pooled,
        &w.head.weight,
        &mut logits,
        Epilogue::none().bias(&w.head.bias),
    )?;
    Ok(CswinOutput {
        geometry: g,
        stem,
        stages,
        pooled,
        logits,
        block0_attention: attention,
    })
}

/// Reads `pixel_values` [B, C, H, W] (F32) from safetensors bytes.
pub fn pixel_values_from_safetensors(bytes: &[u8]) -> Result<HostTensor> {
    let mut file = Weights::from_bytes(bytes)?;
    let shape = file.shape("pixel_values").ok_or_else(|| Error::Input {
        arg: "pixel_values".into(),
        reason: "missing from the input file".into(),
    })?;
    let pixels = file.get_f32("pixel_values", &shape)?;
    pixels.check_finite("pixel_values")?;
    Ok(pixels)
}

/// Checks `pixel_values` for a model before anything is allocated for it: its shape and size
/// (within the model's limits) and that every value is finite.
pub fn check_input(config: &CswinConfig, pixel_values: &HostTensor) -> Result<()> {
    Geometry::new(config, &pixel_values.shape)?;
    pixel_values.check_finite("pixel_values")
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
