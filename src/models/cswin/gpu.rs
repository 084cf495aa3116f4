//! The GPU forward: weights uploaded once, buffers leased per input shape, one submission.

use super::config::check_depths;
use super::{CswinConfig, CswinOutput, CswinWeights, Geometry, check_input};
use crate::context::Context;
use crate::error::Result;
use crate::host::HostTensor;
use crate::kernels::{self, ConvInput, Epilogue};
use crate::models::{PlanLease, Plans, Programs, Recorded};
#[cfg(not(target_arch = "wasm32"))]
use crate::recorder::Timing;
use crate::recorder::{PassStat, Recorder};
use crate::tensor::{DType, Tensor};

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
    pooled: Option<Tensor>,
    logits: Option<Tensor>,
    /// The segmentation backbone's normed stage outputs, token-major (made NCHW on read).
    features: Vec<Tensor>,
    /// The forward recorded once for this plan (with and without kept attention outputs).
    programs: Programs,
}

impl Plan {
    /// Buffers for one input shape: activations stored as `dtype`, pixels, pooled features and
    /// logits as f32.
    fn new(
        ctx: &Context,
        config: &CswinConfig,
        heads: (bool, bool),
        dtype: DType,
        geometry: Geometry,
    ) -> Result<Self> {
        let (classifier, segmentation) = heads;
        let b = geometry.batch;
        let f32s = |shape: &[usize], label: &str| Tensor::empty(ctx, shape, DType::F32, label);
        let acts = |shape: &[usize], label: &str| Tensor::empty(ctx, shape, dtype, label);
        let tokens = |s: usize| geometry.stages[s].0 * geometry.stages[s].1;
        let per_stage = |label: &str, width: &dyn Fn(usize) -> usize| -> Result<Vec<Tensor>> {
            (0..4)
                .map(|s| {
                    acts(
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
            stem_conv: acts(&[b, tokens(0), c], "stem_conv")?,
            stem: acts(&[b, tokens(0), c], "stem")?,
            x: per_stage("x", &|s| config.dim(s))?,
            x2: per_stage("x2", &|s| config.dim(s))?,
            normed: per_stage("normed", &|s| config.dim(s))?,
            qkv: per_stage("qkv", &|s| 3 * config.dim(s))?,
            attn: per_stage("attn", &|s| config.dim(s))?,
            hidden: per_stage("hidden", &|s| config.hidden(s))?,
            merge_conv: (1..4)
                .map(|s| acts(&[b, tokens(s), config.dim(s)], "merge_conv"))
                .collect::<Result<_>>()?,
            merged: (1..4)
                .map(|s| acts(&[b, tokens(s), config.dim(s)], "merged"))
                .collect::<Result<_>>()?,
            final_norm: acts(&[b, n4, config.dim(3)], "norm")?,
            ones: Tensor::from_u32(ctx, &[b, n4], &vec![1; b * n4], "all_tokens")?,
            pooled: classifier
                .then(|| f32s(&[b, config.dim(3)], "pooled"))
                .transpose()?,
            logits: classifier
                .then(|| f32s(&[b, config.num_classes], "logits"))
                .transpose()?,
            features: match segmentation {
                true => per_stage("features", &|s| config.dim(s))?,
                false => Vec::new(),
            },
            geometry,
            programs: Programs::default(),
        })
    }
}

/// A CSWin model on the GPU: weights uploaded once, buffers planned once per input shape.
pub struct Cswin {
    pub config: CswinConfig,
    /// Storage type of weights and activations (f32, or f16 with f32 accumulation).
    dtype: DType,
    weights: CswinWeights<Tensor>,
    plans: Plans<Vec<usize>, Plan>,
}

impl Cswin {
    pub fn new(
        ctx: &Context,
        config: CswinConfig,
        weights: &CswinWeights<HostTensor>,
    ) -> Result<Self> {
        Self::with_dtype(ctx, config, weights, DType::F32)
    }

    /// Uploads host weights for a forward in `dtype`: f32, or f16 storage of weights and
    /// activations (converted once here; every kernel accumulates in f32 and outputs come
    /// back as f32). f16 needs the adapter's `SHADER_F16`.
    pub fn with_dtype(
        ctx: &Context,
        config: CswinConfig,
        weights: &CswinWeights<HostTensor>,
        dtype: DType,
    ) -> Result<Self> {
        crate::models::check_model_dtype(ctx, dtype)?;
        Ok(Self {
            weights: weights.upload(ctx, dtype)?,
            config,
            dtype,
            plans: Plans::default(),
        })
    }

    /// The storage type of this model's weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(ctx: &Context, dir: &std::path::Path) -> Result<Self> {
        let (config, weights) = super::load_dir(dir)?;
        Self::new(ctx, config, &weights)
    }

    /// The dispatches of one forward on this input, with their compulsory traffic (recorded,
    /// not run): how many passes and bytes a forward costs, on any adapter.
    pub fn forward_passes(
        &self,
        ctx: &Context,
        pixel_values: &HostTensor,
    ) -> Result<Vec<PassStat>> {
        let p = self.prepare(ctx, pixel_values)?;
        let mut rec = Recorder::new(ctx);
        self.record(&mut rec, &p, |_, _| {})?;
        Ok(rec.passes().to_vec())
    }

    /// Buffer plans kept for reuse (at most [`crate::models::MAX_IDLE_PLANS`]).
    pub fn cached_plans(&self) -> usize {
        self.plans.idle_count()
    }

    fn plan(&self, ctx: &Context, shape: &[usize]) -> Result<PlanLease<'_, Vec<usize>, Plan>> {
        let geometry = Geometry::new(&self.config, shape)?;
        self.plans.lease(shape.to_vec(), || {
            let heads = (self.weights.head.is_some(), self.weights.is_segmentation());
            Plan::new(ctx, &self.config, heads, self.dtype, geometry)
        })
    }

    /// Checks `pixel_values` [B, C, H, W], leases the plan for its shape and uploads them.
    fn prepare(
        &self,
        ctx: &Context,
        pixel_values: &HostTensor,
    ) -> Result<PlanLease<'_, Vec<usize>, Plan>> {
        check_input(&self.config, pixel_values)?;
        let p = self.plan(ctx, &pixel_values.shape)?;
        p.pixels.write(ctx, &pixel_values.data)?;
        Ok(p)
    }

    /// The plan's forward as a program, recorded on first use and kept with the plan
    /// (`attention`: with a copy of each stage's first block's attention output).
    async fn recorded(
        &self,
        ctx: &Context,
        p: &Plan,
        attention: bool,
    ) -> Result<std::sync::Arc<Recorded>> {
        p.programs
            .get_or_record(ctx, attention as u32, |rec, copies| {
                self.record(rec, p, |rec, t| {
                    if attention {
                        copies.push(rec.copy_of(t, "attention_copy"));
                    }
                })
            })
            .await
    }

    /// Records the whole forward of plan `p` into `rec`. `on_attention` sees each stage's
    /// first block's attention output (to copy it).
    fn record(
        &self,
        rec: &mut Recorder<'_>,
        p: &Plan,
        mut on_attention: impl FnMut(&mut Recorder<'_>, &Tensor),
    ) -> Result<()> {
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
        if let (Some(n), Some(h), Some(pooled), Some(logits)) =
            (&w.norm, &w.head, &p.pooled, &p.logits)
        {
            kernels::layer_norm(rec, &p.x[3], None, &n.weight, &n.bias, eps, &p.final_norm)?;
            kernels::mean_pool(rec, &p.final_norm, &p.ones, pooled)?;
            let head = Epilogue::none().bias(&h.bias);
            kernels::matmul(rec, pooled, &h.weight, logits, head)?;
        }
        // The segmentation backbone's features: each stage's output after norm1..norm4.
        for ((x, n), out) in p.x.iter().zip(&w.stage_norms).zip(&p.features) {
            kernels::layer_norm(rec, x, None, &n.weight, &n.bias, eps, out)?;
        }
        Ok(())
    }

    /// Runs the model on the GPU: the plan's recorded program (made on the first forward of
    /// this shape), one submission, one combined readback. Every stage must have at least one
    /// block.
    pub async fn forward(
        &self,
        ctx: &Context,
        pixel_values: &HostTensor,
        block0_attention: bool,
    ) -> Result<CswinOutput> {
        self.check_depths()?;
        let p = self.prepare(ctx, pixel_values)?;
        let recorded = self.recorded(ctx, &p, block0_attention).await?;
        let mut outputs = vec![&p.stem];
        outputs.extend(&p.x);
        outputs.extend(&p.features);
        outputs.extend(p.pooled.as_ref());
        outputs.extend(p.logits.as_ref());
        let mut values = recorded.run_and_read(ctx, outputs, "cswin outputs").await?;
        let stem = values.next()?;
        let stages = values.take(p.x.len())?;
        let mut features = Vec::new();
        for s in 0..p.features.len() {
            let (h, w) = p.geometry.stages[s];
            features.push(super::to_nchw(&values.next()?, h, w)?);
        }
        Ok(CswinOutput {
            geometry: p.geometry.clone(),
            stem,
            stages,
            pooled: p.pooled.as_ref().map(|_| values.next()).transpose()?,
            logits: p.logits.as_ref().map(|_| values.next()).transpose()?,
            features,
            block0_attention: values.take(recorded.copies.len())?,
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

    /// Runs one forward timed by `timing` (see [`crate::models::text::Encoder::forward_timed`]) and waits for
    /// it (benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_timed(
        &self,
        ctx: &Context,
        pixel_values: &HostTensor,
        timing: Timing,
    ) -> Result<Vec<crate::recorder::PassTime>> {
        self.check_depths()?;
        let p = self.prepare(ctx, pixel_values)?;
        let recorded = pollster::block_on(self.recorded(ctx, &p, false))?;
        recorded.program.run_timed(ctx, timing)
    }

    /// Uploads `pixel_values` and submits the plan's recorded forward without waiting for the
    /// GPU or reading anything back: the host's share of a forward (benchmarks). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_enqueue(&self, ctx: &Context, pixel_values: &HostTensor) -> Result<()> {
        self.check_depths()?;
        let p = self.prepare(ctx, pixel_values)?;
        let recorded = pollster::block_on(self.recorded(ctx, &p, false))?;
        recorded.program.encode_and_submit(ctx)
    }

    fn check_depths(&self) -> Result<()> {
        check_depths(&self.config)
    }
}
