//! BERT-family encoders from Hugging Face checkpoints (`config.json` + `model.safetensors`),
//! mirroring `transformers`' `BertModel` (modeling_bert.py): embeddings, post-norm encoder
//! layers, pooler, plus sentence-transformers' mean pooling and L2 normalisation.
//!
//! The Rust tree follows the checkpoint keys; the one change is that query, key and value
//! are fused into one [3C, C] projection at load time, so attention reads Q, K and V from a
//! single matmul output.

use serde::Deserialize;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{self, Epilogue, MatrixView, StridedMatmul, WLayout};
use crate::limits;
use crate::models::weights::{Weights, upload};
pub use crate::models::{LayerNorm, Linear};
use crate::models::{PlanLease, Plans};
use crate::pipeline::Recorder;
use crate::reference::{self, HostTensor};
use crate::tensor::{DType, Tensor};

/// `config.json` of a Hugging Face BERT model (the keys this engine reads).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_position")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
}

fn default_model_type() -> String {
    "bert".into()
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_max_position() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Parses and checks `config.json`.
    pub fn from_json(json: &str) -> Result<Self> {
        let config: Self =
            serde_json::from_str(json).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let unsupported = |what: String| Err(Error::Config(what));
        if self.model_type != "bert" {
            return unsupported(format!("model_type {:?} is not \"bert\"", self.model_type));
        }
        if self.hidden_act != "gelu" {
            return unsupported(format!(
                "hidden_act {:?} is not supported (only \"gelu\", exact erf)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return unsupported(format!(
                "position_embedding_type {:?} is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return unsupported(format!("{name} is 0"));
        }
        // Bounds (largest released value in parentheses): XLM-R's 250k vocabulary, 4096-wide
        // hidden states, 48 layers, 64 heads, 16k MLP, 8192 positions.
        for (key, max) in [
            ("vocab_size", 1 << 22),
            ("hidden_size", 1 << 14),
            ("num_hidden_layers", 512),
            ("num_attention_heads", 1 << 10),
            ("intermediate_size", 1 << 17),
            ("max_position_embeddings", 1 << 17),
            ("type_vocab_size", 1 << 16),
        ] {
            let value = sizes.iter().find(|(k, _)| *k == key).map_or(0, |(_, v)| *v);
            limits::check_key(key, value as u64, max)?;
        }
        limits::check_elements(
            "vocab_size x hidden_size",
            &[self.vocab_size, self.hidden_size],
        )?;
        limits::check_elements(
            "intermediate_size x hidden_size",
            &[self.intermediate_size, self.hidden_size],
        )?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() > kernels::MAX_HEAD_DIM {
            return unsupported(format!(
                "head size {} is above the {} the attention kernel takes",
                self.head_dim(),
                kernels::MAX_HEAD_DIM
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return unsupported(format!(
                "layer_norm_eps {} is not positive",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// `BertEmbeddings`.
#[derive(Debug, Clone)]
pub struct BertEmbeddings<T> {
    pub word_embeddings: T,
    pub position_embeddings: T,
    pub token_type_embeddings: T,
    pub layer_norm: LayerNorm<T>,
}

/// `BertLayer`: `attention.self.{query,key,value}` (fused as `qkv`), `attention.output`,
/// `intermediate`, `output`.
#[derive(Debug, Clone)]
pub struct BertLayer<T> {
    pub qkv: Linear<T>,
    pub attention_output: Linear<T>,
    pub attention_norm: LayerNorm<T>,
    pub intermediate: Linear<T>,
    pub output: Linear<T>,
    pub output_norm: LayerNorm<T>,
}

/// `BertModel`'s parameters, on the host (`T = HostTensor`) or the GPU (`T = Tensor`).
#[derive(Debug, Clone)]
pub struct BertWeights<T> {
    pub embeddings: BertEmbeddings<T>,
    pub layers: Vec<BertLayer<T>>,
    /// `pooler.dense`, when the checkpoint has one.
    pub pooler: Option<Linear<T>>,
}

impl BertWeights<HostTensor> {
    /// Loads and checks every tensor from safetensors bytes (keys with or without `bert.`;
    /// f32, f16 or bf16). Unknown extra tensors are an error unless they belong to a task head
    /// (`cls.*`, `classifier.*`, ...) or are the `position_ids` buffer.
    pub fn from_safetensors(config: &BertConfig, bytes: &[u8]) -> Result<Self> {
        let mut w = Weights::from_bytes(bytes)?.with_fallback_prefix("bert.");
        let (c, i) = (config.hidden_size, config.intermediate_size);
        let linear = Linear::load;
        let norm = |w: &mut Weights, key: &str| LayerNorm::load(w, key, c);
        let embeddings = BertEmbeddings {
            word_embeddings: w.get("embeddings.word_embeddings.weight", &[config.vocab_size, c])?,
            position_embeddings: w.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, c],
            )?,
            token_type_embeddings: w.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, c],
            )?,
            layer_norm: norm(&mut w, "embeddings.LayerNorm")?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = linear(&mut w, &format!("{p}.attention.self.query"), c, c)?;
            let k = linear(&mut w, &format!("{p}.attention.self.key"), c, c)?;
            let v = linear(&mut w, &format!("{p}.attention.self.value"), c, c)?;
            let qkv = Linear {
                weight: concat_rows(&[&q.weight, &k.weight, &v.weight], &[3 * c, c])?,
                bias: concat_rows(&[&q.bias, &k.bias, &v.bias], &[3 * c])?,
            };
            layers.push(BertLayer {
                qkv,
                attention_output: linear(&mut w, &format!("{p}.attention.output.dense"), c, c)?,
                attention_norm: norm(&mut w, &format!("{p}.attention.output.LayerNorm"))?,
                intermediate: linear(&mut w, &format!("{p}.intermediate.dense"), i, c)?,
                output: linear(&mut w, &format!("{p}.output.dense"), c, i)?,
                output_norm: norm(&mut w, &format!("{p}.output.LayerNorm"))?,
            });
        }
        let pooler = if w.contains("pooler.dense.weight") {
            Some(linear(&mut w, "pooler.dense", c, c)?)
        } else {
            None
        };
        let head = ["cls.", "classifier.", "qa_outputs.", "bert.pooler."];
        let unused =
            w.unused(|k| k.ends_with("position_ids") || head.iter().any(|h| k.starts_with(h)));
        if let Some(key) = unused.first() {
            return Err(Error::Weights {
                key: key.clone(),
                reason: format!(
                    "not part of a BertModel with this config ({} unexpected tensors; more layers \
                     than num_hidden_layers = {}?)",
                    unused.len(),
                    config.num_hidden_layers
                ),
            });
        }
        Ok(Self {
            embeddings,
            layers,
            pooler,
        })
    }

    /// The same weights in GPU buffers.
    pub fn upload(&self, ctx: &Context) -> Result<BertWeights<Tensor>> {
        let lin = |name: &str, l: &Linear<HostTensor>| l.upload(ctx, name);
        let norm = |name: &str, n: &LayerNorm<HostTensor>| n.upload(ctx, name);
        let e = &self.embeddings;
        let embeddings = BertEmbeddings {
            word_embeddings: upload(ctx, "embeddings.word_embeddings.weight", &e.word_embeddings)?,
            position_embeddings: upload(
                ctx,
                "embeddings.position_embeddings.weight",
                &e.position_embeddings,
            )?,
            token_type_embeddings: upload(
                ctx,
                "embeddings.token_type_embeddings.weight",
                &e.token_type_embeddings,
            )?,
            layer_norm: norm("embeddings.LayerNorm", &e.layer_norm)?,
        };
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let p = format!("encoder.layer.{i}");
                Ok(BertLayer {
                    qkv: lin(&format!("{p}.attention.self.qkv"), &l.qkv)?,
                    attention_output: lin(
                        &format!("{p}.attention.output.dense"),
                        &l.attention_output,
                    )?,
                    attention_norm: norm(
                        &format!("{p}.attention.output.LayerNorm"),
                        &l.attention_norm,
                    )?,
                    intermediate: lin(&format!("{p}.intermediate.dense"), &l.intermediate)?,
                    output: lin(&format!("{p}.output.dense"), &l.output)?,
                    output_norm: norm(&format!("{p}.output.LayerNorm"), &l.output_norm)?,
                })
            })
            .collect::<Result<_>>()?;
        let pooler = self
            .pooler
            .as_ref()
            .map(|p| lin("pooler.dense", p))
            .transpose()?;
        Ok(BertWeights {
            embeddings,
            layers,
            pooler,
        })
    }
}

fn concat_rows(parts: &[&HostTensor], shape: &[usize]) -> Result<HostTensor> {
    HostTensor::new(
        shape,
        parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
    )
}

/// A batch of tokenized text: row-major [batch, seq] ids, mask (1 real, 0 padding) and
/// segment ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BertInput {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    pub token_type_ids: Vec<u32>,
}

impl BertInput {
    /// Checks that the three arrays are [batch, seq]; `token_type_ids` defaults to zeros and
    /// `attention_mask` to all ones.
    pub fn new(
        batch: usize,
        seq: usize,
        input_ids: Vec<u32>,
        attention_mask: Option<Vec<u32>>,
        token_type_ids: Option<Vec<u32>>,
    ) -> Result<Self> {
        let n = batch.checked_mul(seq).ok_or_else(|| Error::Input {
            arg: "input_ids".into(),
            reason: format!("shape [{batch}, {seq}] is too large"),
        })?;
        let attention_mask = attention_mask.unwrap_or_else(|| vec![1; n]);
        let token_type_ids = token_type_ids.unwrap_or_else(|| vec![0; n]);
        for (arg, len) in [
            ("input_ids", input_ids.len()),
            ("attention_mask", attention_mask.len()),
            ("token_type_ids", token_type_ids.len()),
        ] {
            if len != n {
                return Err(Error::Input {
                    arg: arg.into(),
                    reason: format!("{len} values for shape [{batch}, {seq}] ({n} expected)"),
                });
            }
        }
        Ok(Self {
            batch,
            seq,
            input_ids,
            attention_mask,
            token_type_ids,
        })
    }

    /// Checks the input against a model: non-empty, no longer than the position table, every
    /// id inside its table, mask values 0 or 1.
    pub fn validate(&self, config: &BertConfig) -> Result<()> {
        let bad = |arg: &str, reason: String| {
            Err(Error::Input {
                arg: arg.into(),
                reason,
            })
        };
        if self.batch == 0 || self.seq == 0 {
            return bad(
                "input_ids",
                format!("empty batch [{}, {}]", self.batch, self.seq),
            );
        }
        if self.batch.saturating_mul(self.seq) > limits::MAX_BATCH_TOKENS {
            return bad(
                "input_ids",
                format!(
                    "batch [{}, {}] has more than {} tokens: split it",
                    self.batch,
                    self.seq,
                    limits::MAX_BATCH_TOKENS
                ),
            );
        }
        if self.seq > config.max_position_embeddings {
            return bad(
                "input_ids",
                format!(
                    "sequence length {} is longer than max_position_embeddings {}",
                    self.seq, config.max_position_embeddings
                ),
            );
        }
        kernels::check_ids("input_ids", &self.input_ids, config.vocab_size).map_err(|e| {
            Error::Input {
                arg: "input_ids".into(),
                reason: e.to_string(),
            }
        })?;
        kernels::check_ids(
            "token_type_ids",
            &self.token_type_ids,
            config.type_vocab_size,
        )
        .map_err(|e| Error::Input {
            arg: "token_type_ids".into(),
            reason: e.to_string(),
        })?;
        if let Some(i) = self.attention_mask.iter().position(|&m| m > 1) {
            return bad(
                "attention_mask",
                format!(
                    "value {} at position {i} is not 0 or 1",
                    self.attention_mask[i]
                ),
            );
        }
        Ok(())
    }

    /// Reads `input_ids`, `attention_mask` and (optional) `token_type_ids` ([B, T], I64 or
    /// I32) from safetensors bytes.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let file = Weights::from_bytes(bytes)?;
        let ids = file.ids("input_ids")?.ok_or_else(|| Error::Input {
            arg: "input_ids".into(),
            reason: "missing from the input file".into(),
        })?;
        let [batch, seq] = ids.0[..] else {
            return Err(Error::Input {
                arg: "input_ids".into(),
                reason: format!("shape {:?} is not [batch, seq]", ids.0),
            });
        };
        let mut rest = [None, None];
        for (slot, name) in rest.iter_mut().zip(["attention_mask", "token_type_ids"]) {
            if let Some((shape, values)) = file.ids(name)? {
                if shape != ids.0 {
                    return Err(Error::Input {
                        arg: name.into(),
                        reason: format!("shape {shape:?} differs from input_ids' {:?}", ids.0),
                    });
                }
                *slot = Some(values);
            }
        }
        let [mask, types] = rest;
        Self::new(batch, seq, ids.1, mask, types)
    }

    fn position_ids(&self) -> Vec<u32> {
        (0..self.batch).flat_map(|_| 0..self.seq as u32).collect()
    }
}

/// What a forward returns (host tensors).
#[derive(Debug, Clone)]
pub struct BertOutput {
    /// [B, T, C]: the last layer's output.
    pub last_hidden_state: HostTensor,
    /// [B, C]: tanh(dense(h[:, 0])), when the checkpoint has a pooler.
    pub pooler_output: Option<HostTensor>,
    /// [B, C]: mean over real tokens, L2-normalised (sentence-transformers).
    pub sentence_embedding: HostTensor,
    /// Embedding output then each layer's output ([B, T, C] each), when requested.
    pub hidden_states: Vec<HostTensor>,
}

impl BertOutput {
    /// `last_hidden_state`, `pooler_output` (when present) and `sentence_embedding` as an F32
    /// safetensors file.
    pub fn to_safetensors(&self) -> Result<Vec<u8>> {
        let mut tensors = vec![
            ("last_hidden_state", &self.last_hidden_state),
            ("sentence_embedding", &self.sentence_embedding),
        ];
        if let Some(p) = &self.pooler_output {
            tensors.push(("pooler_output", p));
        }
        crate::models::weights::to_safetensors(&tensors)
    }
}

/// A BERT encoder on the GPU: weights uploaded once, pipelines cached by the context, and
/// intermediate buffers planned once per (batch, seq) and reused.
pub struct Bert {
    pub config: BertConfig,
    weights: BertWeights<Tensor>,
    plans: Plans<(usize, usize), Plan>,
}

/// Buffers for one (batch, seq).
pub struct Plan {
    batch: usize,
    seq: usize,
    input_ids: Tensor,
    position_ids: Tensor,
    token_type_ids: Tensor,
    mask: Tensor,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    word_position: Tensor,
    hidden: Tensor,
    qkv: Tensor,
    context: Tensor,
    attention_sum: Tensor,
    attention_out: Tensor,
    intermediate: Tensor,
    output_sum: Tensor,
    pooled: Tensor,
    sentence_embedding: Tensor,
    pooler_output: Tensor,
}

impl Plan {
    fn new(ctx: &Context, config: &BertConfig, batch: usize, seq: usize) -> Result<Self> {
        let (c, i) = (config.hidden_size, config.intermediate_size);
        let f32s = |shape: &[usize], label: &str| Tensor::empty(ctx, shape, DType::F32, label);
        let u32s = |label: &str| Tensor::empty(ctx, &[batch, seq], DType::U32, label);
        let btc = [batch, seq, c];
        Ok(Self {
            batch,
            seq,
            input_ids: u32s("input_ids")?,
            position_ids: u32s("position_ids")?,
            token_type_ids: u32s("token_type_ids")?,
            mask: u32s("attention_mask")?,
            word: f32s(&btc, "word")?,
            position: f32s(&btc, "position")?,
            token_type: f32s(&btc, "token_type")?,
            word_position: f32s(&btc, "word_position")?,
            hidden: f32s(&btc, "hidden")?,
            qkv: f32s(&[batch, seq, 3 * c], "qkv")?,
            context: f32s(&btc, "context")?,
            attention_sum: f32s(&btc, "attention_sum")?,
            attention_out: f32s(&btc, "attention_out")?,
            intermediate: f32s(&[batch, seq, i], "intermediate")?,
            output_sum: f32s(&btc, "output_sum")?,
            pooled: f32s(&[batch, c], "pooled")?,
            sentence_embedding: f32s(&[batch, c], "sentence_embedding")?,
            pooler_output: f32s(&[batch, c], "pooler_output")?,
        })
    }
}

/// The pooler's product reads row 0 of each sequence: X rows are `seq · C` apart.
fn pooler_problem(batch: usize, seq: usize, c: usize) -> StridedMatmul {
    StridedMatmul {
        m: batch,
        n: c,
        k: c,
        batch: [1, 1],
        x: MatrixView {
            offset: 0,
            ld: seq * c,
            outer_stride: 0,
            inner_stride: 0,
        },
        w: MatrixView::contiguous(c, c),
        w_layout: WLayout::NK,
        y: MatrixView::contiguous(batch, c),
    }
}

impl Bert {
    /// Uploads host weights.
    pub fn new(
        ctx: &Context,
        config: BertConfig,
        weights: &BertWeights<HostTensor>,
    ) -> Result<Self> {
        Ok(Self {
            weights: weights.upload(ctx)?,
            config,
            plans: Plans::default(),
        })
    }

    /// Loads `config.json` and `model.safetensors` from a Hugging Face model folder.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_dir(ctx: &Context, dir: &std::path::Path) -> Result<Self> {
        let (config, weights) = load_dir(dir)?;
        Self::new(ctx, config, &weights)
    }

    pub fn has_pooler(&self) -> bool {
        self.weights.pooler.is_some()
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
        self.plans
            .lease((batch, seq), || Plan::new(ctx, &self.config, batch, seq))
    }

    /// Validates and uploads `input`, then records the whole forward into `rec`. Returns the
    /// plan whose output tensors hold the results once `rec` is submitted. `after_layer` is
    /// called with the hidden state after the embeddings and after each layer (to copy it).
    pub fn record(
        &self,
        rec: &mut Recorder<'_>,
        input: &BertInput,
        mut after_layer: impl FnMut(&mut Recorder<'_>, usize, &Tensor),
    ) -> Result<PlanLease<'_, (usize, usize), Plan>> {
        let ctx = rec.context();
        input.validate(&self.config)?;
        let p = self.plan(ctx, input.batch, input.seq)?;
        p.input_ids.write(ctx, &input.input_ids)?;
        p.position_ids.write(ctx, &input.position_ids())?;
        p.token_type_ids.write(ctx, &input.token_type_ids)?;
        p.mask.write(ctx, &input.attention_mask)?;

        let (cfg, w) = (&self.config, &self.weights);
        let eps = cfg.layer_norm_eps as f32;
        // Embeddings: word + position + token type, then LayerNorm.
        let e = &w.embeddings;
        kernels::embedding(rec, &p.input_ids, &e.word_embeddings, &p.word)?;
        kernels::embedding(rec, &p.position_ids, &e.position_embeddings, &p.position)?;
        kernels::embedding(
            rec,
            &p.token_type_ids,
            &e.token_type_embeddings,
            &p.token_type,
        )?;
        kernels::add(rec, &p.word, &p.position, &p.word_position)?;
        let ln = &e.layer_norm;
        kernels::layer_norm(
            rec,
            &p.word_position,
            Some(&p.token_type),
            &ln.weight,
            &ln.bias,
            eps,
            &p.hidden,
        )?;
        after_layer(rec, 0, &p.hidden);

        for (l, layer) in w.layers.iter().enumerate() {
            // Self-attention: fused QKV projection, fused attention, output projection + residual, norm.
            let qkv = Epilogue::none().bias(&layer.qkv.bias);
            kernels::matmul(rec, &p.hidden, &layer.qkv.weight, &p.qkv, qkv)?;
            kernels::attention(rec, &p.qkv, &p.mask, cfg.num_attention_heads, &p.context)?;
            let out = Epilogue::none()
                .bias(&layer.attention_output.bias)
                .residual(&p.hidden);
            kernels::matmul(
                rec,
                &p.context,
                &layer.attention_output.weight,
                &p.attention_sum,
                out,
            )?;
            let n = &layer.attention_norm;
            kernels::layer_norm(
                rec,
                &p.attention_sum,
                None,
                &n.weight,
                &n.bias,
                eps,
                &p.attention_out,
            )?;
            // Feed-forward: up + GELU, down + residual, norm.
            let up = Epilogue::none().bias(&layer.intermediate.bias).gelu();
            kernels::matmul(
                rec,
                &p.attention_out,
                &layer.intermediate.weight,
                &p.intermediate,
                up,
            )?;
            let down = Epilogue::none()
                .bias(&layer.output.bias)
                .residual(&p.attention_out);
            kernels::matmul(
                rec,
                &p.intermediate,
                &layer.output.weight,
                &p.output_sum,
                down,
            )?;
            let n = &layer.output_norm;
            kernels::layer_norm(rec, &p.output_sum, None, &n.weight, &n.bias, eps, &p.hidden)?;
            after_layer(rec, l + 1, &p.hidden);
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
        kernels::mean_pool(rec, &p.hidden, &p.mask, &p.pooled)?;
        kernels::l2_normalize(rec, &p.pooled, &p.sentence_embedding)?;
        Ok(p)
    }

    /// Runs the encoder on the GPU: one command encoder, one submission.
    pub async fn forward(
        &self,
        ctx: &Context,
        input: &BertInput,
        hidden_states: bool,
    ) -> Result<BertOutput> {
        let mut rec = Recorder::new(ctx);
        let mut copies = Vec::new();
        let plan = self.record(&mut rec, input, |rec, _, h| {
            if hidden_states {
                copies.push(rec.copy_of(h, "hidden_state"));
            }
        })?;
        let copies = copies.into_iter().collect::<Result<Vec<_>>>()?;
        rec.submit().await?;
        let mut states = Vec::new();
        for copy in &copies {
            states.push(copy.read_host(ctx).await?);
        }
        Ok(BertOutput {
            last_hidden_state: plan.hidden.read_host(ctx).await?,
            pooler_output: match self.has_pooler() {
                true => Some(plan.pooler_output.read_host(ctx).await?),
                false => None,
            },
            sentence_embedding: plan.sentence_embedding.read_host(ctx).await?,
            hidden_states: states,
        })
    }

    /// [`Bert::forward`], blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_blocking(
        &self,
        ctx: &Context,
        input: &BertInput,
        hidden_states: bool,
    ) -> Result<BertOutput> {
        pollster::block_on(self.forward(ctx, input, hidden_states))
    }

    /// Records and submits a forward with a timestamp around every pass; returns the pass
    /// times (empty without timestamp queries). For benchmarks.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn forward_timed(
        &self,
        ctx: &Context,
        input: &BertInput,
    ) -> Result<Vec<crate::pipeline::PassTime>> {
        let passes = 6 + 7 * self.config.num_hidden_layers as u32 + 3;
        let mut rec = Recorder::with_timing(ctx, passes);
        self.record(&mut rec, input, |_, _, _| {})?;
        rec.submit_blocking()
    }
}

/// Reads `config.json` and `model.safetensors` from a model folder.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_dir(dir: &std::path::Path) -> Result<(BertConfig, BertWeights<HostTensor>)> {
    let config = load_config(dir)?;
    let weights = load_weights(dir, &config)?;
    Ok((config, weights))
}

/// Reads and checks a model folder's `config.json`; errors name the file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_config(dir: &std::path::Path) -> Result<BertConfig> {
    let path = dir.join("config.json");
    let json = crate::io::read_bounded(&path, crate::limits::MAX_CONFIG_BYTES)?;
    BertConfig::from_json(&String::from_utf8_lossy(&json)).map_err(|e| e.in_file(&path))
}

/// Reads a model folder's `model.safetensors` for `config`; errors name the file.
#[cfg(not(target_arch = "wasm32"))]
pub fn load_weights(dir: &std::path::Path, config: &BertConfig) -> Result<BertWeights<HostTensor>> {
    let path = dir.join("model.safetensors");
    BertWeights::from_safetensors(config, &crate::io::read_safetensors(&path)?)
        .map_err(|e| e.in_file(&path))
}

/// The CPU forward, built only from the kernels' CPU twins.
pub fn forward_cpu(
    config: &BertConfig,
    w: &BertWeights<HostTensor>,
    input: &BertInput,
    hidden_states: bool,
) -> Result<BertOutput> {
    input.validate(config)?;
    let (b, t, c, i) = (
        input.batch,
        input.seq,
        config.hidden_size,
        config.intermediate_size,
    );
    let eps = config.layer_norm_eps as f32;
    let ids = |v: &[u32]| HostTensor::new(&[b, t], v.to_vec());
    let btc = [b, t, c];
    let z = HostTensor::zeros;
    let mask = ids(&input.attention_mask)?;

    let e = &w.embeddings;
    let (mut word, mut position, mut token_type, mut sum) = (z(&btc), z(&btc), z(&btc), z(&btc));
    reference::embedding(&ids(&input.input_ids)?, &e.word_embeddings, &mut word)?;
    reference::embedding(
        &ids(&input.position_ids())?,
        &e.position_embeddings,
        &mut position,
    )?;
    reference::embedding(
        &ids(&input.token_type_ids)?,
        &e.token_type_embeddings,
        &mut token_type,
    )?;
    reference::add(&word, &position, &mut sum)?;
    let mut hidden = z(&btc);
    let ln = &e.layer_norm;
    reference::layer_norm(
        &sum,
        Some(&token_type),
        &ln.weight,
        &ln.bias,
        eps,
        &mut hidden,
    )?;
    let mut states = Vec::new();
    if hidden_states {
        states.push(hidden.clone());
    }

    let (mut qkv, mut context, mut attention_sum, mut attention_out) =
        (z(&[b, t, 3 * c]), z(&btc), z(&btc), z(&btc));
    let (mut intermediate, mut output_sum) = (z(&[b, t, i]), z(&btc));
    for layer in &w.layers {
        reference::matmul(
            &hidden,
            &layer.qkv.weight,
            &mut qkv,
            Epilogue::none().bias(&layer.qkv.bias),
        )?;
        reference::attention(&qkv, &mask, config.num_attention_heads, &mut context)?;
        let out = Epilogue::none()
            .bias(&layer.attention_output.bias)
            .residual(&hidden);
        reference::matmul(
            &context,
            &layer.attention_output.weight,
            &mut attention_sum,
            out,
        )?;
        let n = &layer.attention_norm;
        reference::layer_norm(
            &attention_sum,
            None,
            &n.weight,
            &n.bias,
            eps,
            &mut attention_out,
        )?;
        let up = Epilogue::none().bias(&layer.intermediate.bias).gelu();
        reference::matmul(
            &attention_out,
            &layer.intermediate.weight,
            &mut intermediate,
            up,
        )?;
        let down = Epilogue::none()
            .bias(&layer.output.bias)
            .residual(&attention_out);
        reference::matmul(&intermediate, &layer.output.weight, &mut output_sum, down)?;
        let n = &layer.output_norm;
        reference::layer_norm(&output_sum, None, &n.weight, &n.bias, eps, &mut hidden)?;
        if hidden_states {
            states.push(hidden.clone());
        }
    }

    let pooler_output = match &w.pooler {
        Some(pooler) => {
            let mut out = z(&[b, c]);
            let ep = Epilogue::none().bias(&pooler.bias).tanh();
            reference::matmul_strided(
                &hidden,
                &pooler.weight,
                &mut out,
                ep,
                &pooler_problem(b, t, c),
            )?;
            Some(out)
        }
        None => None,
    };
    let (mut pooled, mut sentence_embedding) = (z(&[b, c]), z(&[b, c]));
    reference::mean_pool(&hidden, &mask, &mut pooled)?;
    reference::l2_normalize(&pooled, &mut sentence_embedding)?;
    Ok(BertOutput {
        last_hidden_state: hidden,
        pooler_output,
        sentence_embedding,
        hidden_states: states,
    })
}
