//! The GPU forward: weights uploaded once, buffers leased per (batch, seq), one submission.

pub use super::plan::Plan;
use super::{
    ClassifierHead, EncoderLayer, SentenceHead, TextConfig, TextInput, TextOutput, TextWeights,
    pooler_problem, relative_position_bias,
};
use crate::context::Context;
use crate::error::Result;
use crate::host::HostTensor;
use crate::kernels::{self, Activation, AttentionBias, Epilogue, PoolMode};
use crate::models::{PlanLease, Plans, Recorded};
#[cfg(not(target_arch = "wasm32"))]
use crate::recorder::Timing;
use crate::recorder::{PassStat, Recorder};
use crate::tensor::{DType, Tensor};

/// A text encoder (any family of [`super::MODEL_TYPES`]) on the GPU: weights uploaded once, pipelines cached by the context, and
/// intermediate buffers planned once per (batch, seq) and reused.
pub struct Encoder {
    pub config: TextConfig,
    /// The sentence and classification heads as loaded (their shapes size the plans).
    head: SentenceHead<HostTensor>,
    classifier: Option<ClassifierHead<HostTensor>>,
    /// Storage type of weights and activations (f32, or f16 with f32 accumulation).
    dtype: DType,
    weights: TextWeights<Tensor>,
    plans: Plans<(usize, usize), Plan>,
}

/// What a forward reads back besides the sentence embedding, the pooler output and the
/// classifier's logits (always read when the model has them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readback {
    /// `last_hidden_state` [B, T, C]; without it the field comes back empty (shape [0]).
    pub last_hidden_state: bool,
    /// Each layer's hidden state (`hidden_states`).
    pub hidden_states: bool,
}

impl Encoder {
    /// Uploads host weights (f32 storage).
    pub fn new(
        ctx: &Context,
        config: TextConfig,
        weights: &TextWeights<HostTensor>,
    ) -> Result<Self> {
        Self::with_dtype(ctx, config, weights, DType::F32)
    }

    /// Uploads host weights for a forward in `dtype`: f32, or f16 storage of weights and
    /// activations (converted once here; matmuls, attention, norms and pooling still accumulate
    /// in f32, and outputs come back as f32). f16 needs the adapter's `SHADER_F16`.
    pub fn with_dtype(
        ctx: &Context,
        config: TextConfig,
        weights: &TextWeights<HostTensor>,
        dtype: DType,
    ) -> Result<Self> {
        crate::models::check_model_dtype(ctx, dtype)?;
        super::check_classifier_pooler(weights)?;
        Ok(Self {
            weights: weights.upload(ctx, dtype)?,
            head: weights.sentence.clone(),
            classifier: weights.classifier.clone(),
            config,
            dtype,
            plans: Plans::default(),
        })
    }

    /// The storage type of this model's weights and activations.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Loads `config.json` and `model.safetensors` from a Hugging Face model folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(ctx: &Context, dir: &std::path::Path) -> Result<Self> {
        let (config, weights) = super::load_dir(dir)?;
        Self::new(ctx, config, &weights)
    }

    pub fn has_pooler(&self) -> bool {
        self.weights.pooler.is_some()
    }

    /// The dispatches of one forward on this input, with their compulsory traffic (recorded,
    /// not run): how many passes and bytes a forward costs, on any adapter.
    pub fn forward_passes(&self, ctx: &Context, input: &TextInput) -> Result<Vec<PassStat>> {
        let mut rec = Recorder::new(ctx);
        self.record(&mut rec, input, |_, _, _| {})?;
        Ok(rec.passes().to_vec())
    }

    /// Buffer plans kept for reuse (at most [`crate::models::MAX_IDLE_PLANS`]).
    pub fn cached_plans(&self) -> usize {
        self.plans.idle_count()
    }

    fn plan(
        &self,
        ctx: &Context,
        batch: usize,
        seq: usize,
    ) -> Result<PlanLease<'_, (usize, usize), Plan>> {
        self.plans.lease((batch, seq), || {
            let classifier = self.classifier.as_ref();
            let plan = Plan::new(
                ctx,
                &self.config,
                &self.head,
                classifier,
                self.dtype,
                batch,
                seq,
            )?;
            self.write_position_tables(ctx, &plan)?;
            Ok(plan)
        })
    }

    /// The tables that depend only on the sequence length, written once per plan: MPNet's
    /// relative position bias and ModernBERT's rotary tables.
    fn write_position_tables(&self, ctx: &Context, p: &Plan) -> Result<()> {
        if let (Some(bias), Some(table)) = (&p.rel_bias, &self.weights.relative_attention_bias) {
            bias.write(ctx, &relative_position_bias(table, p.seq).data)?;
        }
        for (table, local) in [(&p.rope_global, false), (&p.rope_local, true)] {
            if let Some(table) = table {
                // The theta of the first layer of that kind (every layer of a kind shares it).
                let l = (0..self.config.num_hidden_layers)
                    .find(|&l| self.config.attention_window(l).is_some() == local)
                    .unwrap_or(0);
                let theta = self.config.rope_theta(l);
                let values = crate::host::rotary_table(theta, p.seq, self.config.head_dim());
                table.write(ctx, &values.data)?;
            }
        }
        Ok(())
    }

    /// Validates and uploads `input`, then records the whole forward into `rec`. Returns the
    /// plan whose output tensors hold the results once `rec` is submitted. `after_layer` is
    /// called with the hidden state after the embeddings and after each layer (to copy it).
    pub fn record(
        &self,
        rec: &mut Recorder<'_>,
        input: &TextInput,
        after_layer: impl FnMut(&mut Recorder<'_>, usize, &Tensor),
    ) -> Result<PlanLease<'_, (usize, usize), Plan>> {
        let p = self.prepare(rec.context(), input)?;
        self.record_plan(rec, &p, after_layer)?;
        Ok(p)
    }

    /// Validates `input`, leases the plan for its shape and writes the ids and masks into it.
    fn prepare(
        &self,
        ctx: &Context,
        input: &TextInput,
    ) -> Result<PlanLease<'_, (usize, usize), Plan>> {
        input.validate(&self.config)?;
        let p = self.plan(ctx, input.batch, input.seq)?;
        p.ids.write(ctx, &input.embedding_ids(&self.config))?;
        p.mask.write(ctx, &input.attention_mask)?;
        if let Some(keep) = &p.keep {
            keep.write(ctx, &input.pooling_mask(false))?;
        }
        Ok(p)
    }

    /// The plan's forward as a program, recorded on first use and kept with the plan
    /// (`hidden_states`: with a copy of the hidden state after the embeddings and each layer).
    async fn recorded(
        &self,
        ctx: &Context,
        p: &Plan,
        hidden_states: bool,
    ) -> Result<std::sync::Arc<Recorded>> {
        let variant = hidden_states as u32;
        p.programs
            .get_or_record(ctx, variant, |rec, copies| {
                self.record_plan(rec, p, |rec, _, h| {
                    if hidden_states {
                        copies.push(rec.copy_of(h, "hidden_state"));
                    }
                })
            })
            .await
    }

    /// Records the whole forward of plan `p` into `rec`.
    fn record_plan(
        &self,
        rec: &mut Recorder<'_>,
        p: &Plan,
        mut after_layer: impl FnMut(&mut Recorder<'_>, usize, &Tensor),
    ) -> Result<()> {
        let (cfg, w) = (&self.config, &self.weights);
        let eps = cfg.layer_norm_eps as f32;
        // Embeddings: word + position + token type, then LayerNorm, in one pass (ELECTRA:
        // at embedding_size, then projected to the hidden size).
        let tables = w.embeddings.tables();
        match (&w.embeddings.project, &p.embedded) {
            (Some(project), Some(embedded)) => {
                kernels::bert_embeddings(rec, &p.ids, &tables, eps, embedded)?;
                let ep = Epilogue::none().bias(&project.bias);
                kernels::matmul(rec, embedded, &project.weight, &p.hidden, ep)?;
            }
            _ => kernels::bert_embeddings(rec, &p.ids, &tables, eps, &p.hidden)?,
        }
        after_layer(rec, 0, &p.hidden);
        let act = cfg.activation().unwrap_or(Activation::Gelu);

        for (l, layer) in w.layers.iter().enumerate() {
            if cfg.family().pre_norm() {
                self.pre_norm_layer(rec, p, l, layer)?;
            } else {
                self.post_norm_layer(rec, p, l, layer, act)?;
            }
            after_layer(rec, l + 1, &p.hidden);
        }
        if let Some(n) = &w.final_norm {
            // ModernBERT's final norm, back into `hidden` (read as the last hidden state).
            kernels::layer_norm(rec, &p.hidden, None, &n.weight, &n.bias, eps, &p.output_sum)?;
            rec.copy(&p.output_sum, &p.hidden, p.hidden.buffer().size());
        }

        if let Some(pooler) = &w.pooler {
            let problem = pooler_problem(p.batch, p.seq, cfg.hidden_size);
            let ep = Epilogue::none().bias(&pooler.bias).tanh();
            kernels::matmul_strided(
                rec,
                &p.hidden,
                &pooler.weight,
                &p.pooler_output,
                ep,
                &problem,
            )?;
        }
        // A cross-encoder's logits: BERT's classifier on the pooler output, the others' dense
        // layer on the first token (ModernBERT's: or the masked mean, then `head.norm`), then
        // the output projection.
        if let (Some(cls), Some(logits)) = (&w.classifier, &p.logits) {
            let mut input = match (&cls.dense, &p.classifier_hidden) {
                (Some((dense, act)), Some(h)) => {
                    let ep = Epilogue::none().bias(&dense.bias).act(*act);
                    match &p.classifier_pooled {
                        Some(mean) => {
                            kernels::pool(
                                rec,
                                &p.hidden,
                                &p.mask,
                                &p.mask,
                                PoolMode::Mean,
                                mean,
                                0,
                            )?;
                            kernels::matmul(rec, mean, &dense.weight, h, ep)?;
                        }
                        None => {
                            let problem = pooler_problem(p.batch, p.seq, cfg.hidden_size);
                            kernels::matmul_strided(
                                rec,
                                &p.hidden,
                                &dense.weight,
                                h,
                                ep,
                                &problem,
                            )?;
                        }
                    }
                    h
                }
                _ => &p.pooler_output,
            };
            if let (Some(norm), Some(normed)) = (&cls.norm, &p.classifier_normed) {
                kernels::layer_norm(rec, input, None, &norm.weight, &norm.bias, eps, normed)?;
                input = normed;
            }
            let ep = Epilogue::none().bias(&cls.out.bias);
            kernels::matmul(rec, input, &cls.out.weight, logits, ep)?;
        }
        // The sentence embedding: pooling modes side by side, Dense modules, Normalize.
        let head = &w.sentence;
        let keep = p.keep.as_ref().unwrap_or(&p.mask);
        for (i, &mode) in head.modes.iter().enumerate() {
            let col0 = i * cfg.hidden_size;
            kernels::pool(rec, &p.hidden, &p.mask, keep, mode, &p.pooled, col0)?;
        }
        let mut current = &p.pooled;
        for (dense, out) in head.dense.iter().zip(&p.dense) {
            let ep = Epilogue::none().bias(&dense.linear.bias).act(dense.act);
            kernels::matmul(rec, current, &dense.linear.weight, out, ep)?;
            current = out;
        }
        if head.normalize {
            kernels::l2_normalize(rec, current, &p.sentence_embedding)?;
        } else {
            let bytes = (p.sentence_embedding.numel() * 4) as u64;
            rec.copy(current, &p.sentence_embedding, bytes);
        }
        Ok(())
    }

    /// One post-norm layer (BERT and most families): `h = norm(h + attn(h))`,
    /// `h = norm(h + mlp(h))`, in 5 dispatches (QKV, attention, O-proj + add & norm, FFN up,
    /// FFN down + add & norm).
    fn post_norm_layer(
        &self,
        rec: &mut Recorder<'_>,
        p: &Plan,
        l: usize,
        layer: &EncoderLayer<Tensor>,
        act: Activation,
    ) -> Result<()> {
        let cfg = &self.config;
        let eps = cfg.layer_norm_eps as f32;
        // Self-attention: fused QKV projection, fused attention, output projection + residual, norm.
        let qkv = Epilogue::none().bias(&layer.qkv.bias);
        kernels::matmul(rec, &p.hidden, &layer.qkv.weight, &p.qkv, qkv)?;
        let (heads, bias) = (cfg.num_attention_heads, p.rel_bias.as_ref());
        let extra = AttentionBias {
            rel_bias: bias,
            window: cfg.attention_window(l),
        };
        kernels::attention_biased(rec, &p.qkv, &p.mask, extra, heads, &p.context)?;
        // Output projection + bias + residual and its norm in one dispatch.
        let (o, n) = (&layer.attention_output, &layer.attention_norm);
        kernels::matmul_layer_norm(
            rec,
            &p.context,
            &o.weight,
            Some(&o.bias),
            &p.hidden,
            &n.weight,
            &n.bias,
            eps,
            &p.attention_out,
        )?;
        // Feed-forward: up + activation, then down + bias + residual and the norm.
        let up = Epilogue::none().bias(&layer.intermediate.bias).act(act);
        kernels::matmul(
            rec,
            &p.attention_out,
            &layer.intermediate.weight,
            &p.intermediate,
            up,
        )?;
        let (d, n) = (&layer.output, &layer.output_norm);
        kernels::matmul_layer_norm(
            rec,
            &p.intermediate,
            &d.weight,
            Some(&d.bias),
            &p.attention_out,
            &n.weight,
            &n.bias,
            eps,
            &p.hidden,
        )
    }

    /// One pre-norm layer (ModernBERT): `h = h + attn(norm(h))` with rotary positions and
    /// the layer's window (layer 0 has no attention norm), `h = h + Wo(GeGLU(Wi(norm(h))))`.
    fn pre_norm_layer(
        &self,
        rec: &mut Recorder<'_>,
        p: &Plan,
        l: usize,
        layer: &EncoderLayer<Tensor>,
    ) -> Result<()> {
        let cfg = &self.config;
        let eps = cfg.layer_norm_eps as f32;
        let (Some(qkv_rot), Some(gated)) = (&p.qkv_rot, &p.gated) else {
            return Err(crate::error::Error::Argument {
                op: "bert",
                arg: "plan",
                reason: "a pre-norm plan needs its rotary and GeGLU buffers".into(),
            });
        };
        let input = if l == 0 {
            &p.hidden
        } else {
            let n = &layer.attention_norm;
            kernels::layer_norm(
                rec,
                &p.hidden,
                None,
                &n.weight,
                &n.bias,
                eps,
                &p.attention_out,
            )?;
            &p.attention_out
        };
        kernels::matmul(rec, input, &layer.qkv.weight, &p.qkv, Epilogue::none())?;
        let local = cfg.attention_window(l).is_some();
        let table = if local { &p.rope_local } else { &p.rope_global };
        let table = table.as_ref().unwrap_or(&p.mask);
        kernels::rotary(rec, &p.qkv, table, cfg.head_dim(), qkv_rot)?;
        let extra = AttentionBias {
            rel_bias: None,
            window: cfg.attention_window(l),
        };
        kernels::attention_biased(
            rec,
            qkv_rot,
            &p.mask,
            extra,
            cfg.num_attention_heads,
            &p.context,
        )?;
        let out = Epilogue::none().residual(&p.hidden);
        kernels::matmul(
            rec,
            &p.context,
            &layer.attention_output.weight,
            &p.attention_sum,
            out,
        )?;
        let n = &layer.output_norm;
        kernels::layer_norm(
            rec,
            &p.attention_sum,
            None,
            &n.weight,
            &n.bias,
            eps,
            &p.attention_out,
        )?;
        kernels::matmul(
            rec,
            &p.attention_out,
            &layer.intermediate.weight,
            &p.intermediate,
            Epilogue::none(),
        )?;
        kernels::geglu(rec, &p.intermediate, gated)?;
        let down = Epilogue::none().residual(&p.attention_sum);
        kernels::matmul(rec, gated, &layer.output.weight, &p.hidden, down)
    }

    /// Runs the encoder on the GPU: the plan's recorded program (made on the first forward of
    /// this shape), one submission, one combined readback of every output (and of each
    /// layer's hidden state with `hidden_states`).
    pub async fn forward(
        &self,
        ctx: &Context,
        input: &TextInput,
        hidden_states: bool,
    ) -> Result<TextOutput> {
        let readback = Readback {
            last_hidden_state: true,
            hidden_states,
        };
        self.forward_with(ctx, input, readback).await
    }

    /// [`Encoder::forward`] reading back only what `readback` asks for besides the sentence
    /// embedding and the heads' outputs (a server that returns embeddings or scores leaves the
    /// [B, T, C] hidden states on the GPU).
    pub async fn forward_with(
        &self,
        ctx: &Context,
        input: &TextInput,
        readback: Readback,
    ) -> Result<TextOutput> {
        let p = self.prepare(ctx, input)?;
        let recorded = self.recorded(ctx, &p, readback.hidden_states).await?;
        let unnormalized = self
            .head
            .normalize
            .then(|| p.dense.last().unwrap_or(&p.pooled));
        let pooler = self.has_pooler().then_some(&p.pooler_output);
        let mut outputs = vec![&p.sentence_embedding];
        if readback.last_hidden_state {
            outputs.push(&p.hidden);
        }
        outputs.extend(pooler);
        outputs.extend(p.logits.as_ref());
        outputs.extend(unnormalized);
        let mut values = recorded.run_and_read(ctx, outputs, "bert outputs").await?;
        let sentence_embedding = values.next()?;
        let last_hidden_state = match readback.last_hidden_state {
            true => values.next()?,
            false => HostTensor::zeros(&[0]),
        };
        Ok(TextOutput {
            last_hidden_state,
            sentence_embedding,
            pooler_output: pooler.map(|_| values.next()).transpose()?,
            logits: p.logits.as_ref().map(|_| values.next()).transpose()?,
            unnormalized_embedding: unnormalized.map(|_| values.next()).transpose()?,
            hidden_states: values.take(recorded.copies.len())?,
        })
    }

    /// [`Encoder::forward_with`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_with_blocking(
        &self,
        ctx: &Context,
        input: &TextInput,
        readback: Readback,
    ) -> Result<TextOutput> {
        pollster::block_on(self.forward_with(ctx, input, readback))
    }

    /// [`Encoder::forward`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &self,
        ctx: &Context,
        input: &TextInput,
        hidden_states: bool,
    ) -> Result<TextOutput> {
        pollster::block_on(self.forward(ctx, input, hidden_states))
    }

    /// Runs a forward timed by `timing` (`Span`: the GPU time of the forward's passes;
    /// `PerDispatch`: each kernel in a pass of its own, for the breakdown) and waits for it;
    /// returns the pass times (empty without timestamp queries). For benchmarks.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_timed(
        &self,
        ctx: &Context,
        input: &TextInput,
        timing: Timing,
    ) -> Result<Vec<crate::recorder::PassTime>> {
        let p = self.prepare(ctx, input)?;
        let recorded = pollster::block_on(self.recorded(ctx, &p, false))?;
        recorded.program.run_timed(ctx, timing)
    }

    /// Writes `input` and submits the plan's recorded forward without waiting for the GPU or
    /// reading anything back: the host's share of a forward (benchmarks time it). Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_enqueue(&self, ctx: &Context, input: &TextInput) -> Result<()> {
        let p = self.prepare(ctx, input)?;
        let recorded = pollster::block_on(self.recorded(ctx, &p, false))?;
        recorded.program.encode_and_submit(ctx)
    }
}
