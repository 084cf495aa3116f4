//! Model suites: whole BERT and CSWin forwards with random weights of the real sizes.

use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::{BenchOptions, ForwardTraffic, Record, Sink, compare, measure, record, time_forwards};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::cswin::{self, Cswin, CswinConfig, CswinWeights, Geometry};
use crate::models::text::{self, Encoder, TextConfig, TextInput, TextWeights};
use crate::models::weights::Weights;
use crate::tensor::DType;

/// A BERT-family shape for the `bert` suite (random weights of the real sizes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BertShape {
    pub model: BertSize,
    pub batch: usize,
    pub seq: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BertSize {
    /// bert-base-uncased: 12 layers, 768 hidden, 12 heads, 3072 intermediate.
    Base,
    /// all-MiniLM-L6-v2: 6 layers, 384 hidden, 12 heads, 1536 intermediate.
    MiniLm,
}

impl BertSize {
    pub fn name(self) -> &'static str {
        match self {
            BertSize::Base => "bert-base",
            BertSize::MiniLm => "minilm-l6",
        }
    }

    pub fn config(self) -> TextConfig {
        let (layers, hidden, intermediate) = match self {
            BertSize::Base => (12, 768, 3072),
            BertSize::MiniLm => (6, 384, 1536),
        };
        TextConfig {
            model_type: "bert".into(),
            vocab_size: 30522,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: 12,
            intermediate_size: intermediate,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            position_embedding_type: "absolute".into(),
            pad_token_id: None,
            embedding_size: None,
            sinusoidal_pos_embds: false,
            relative_attention_num_buckets: None,
            modern: Default::default(),
        }
    }
}

impl BertShape {
    /// The default shapes: BERT-base and MiniLM at batch 1 / seq 128, batch 32 / seq 128 and
    /// batch 8 / seq 512 on a real GPU; one small MiniLM forward on a software adapter.
    pub fn defaults(ctx: &Context) -> Vec<Self> {
        let s = |model, batch, seq| Self { model, batch, seq };
        if ctx.capabilities().is_software() {
            vec![s(BertSize::MiniLm, 1, 32)]
        } else {
            let mut out = Vec::new();
            for model in [BertSize::Base, BertSize::MiniLm] {
                out.extend([s(model, 1, 128), s(model, 32, 128), s(model, 8, 512)]);
            }
            out
        }
    }

    /// Parses `base:BxT` or `minilm:BxT`.
    pub fn parse(text: &str) -> Result<Self> {
        let err = || Error::Argument {
            op: "bench",
            arg: "bert",
            reason: format!("{text:?} is not base:BxT or minilm:BxT"),
        };
        let (model, dims) = text.split_once(':').ok_or_else(err)?;
        let model = match model {
            "base" | "bert-base" => BertSize::Base,
            "minilm" | "minilm-l6" => BertSize::MiniLm,
            _ => return Err(err()),
        };
        let (b, t) = dims.split_once('x').ok_or_else(err)?;
        let (batch, seq) = (b.parse().map_err(|_| err())?, t.parse().map_err(|_| err())?);
        if batch == 0 || seq == 0 || seq > 512 {
            return Err(err());
        }
        Ok(Self { model, batch, seq })
    }

    /// Multiply-adds x 2 of one forward: projections, FFN, attention's two products, pooler.
    pub fn flops(&self, config: &TextConfig) -> f64 {
        let (b, t) = (self.batch as f64, self.seq as f64);
        let (c, i, l) = (
            config.hidden_size as f64,
            config.intermediate_size as f64,
            config.num_hidden_layers as f64,
        );
        let per_layer = 2.0 * b * t * (4.0 * c * c + 2.0 * c * i) + 4.0 * b * t * t * c;
        l * per_layer + 2.0 * b * c * c
    }
}

/// Seeded random weights of a config's real sizes, through the family's own loader
/// ([`TextWeights::from_weights`] on [`Weights::random`]): with a pooler, no classifier.
pub fn random_bert_weights(config: &TextConfig, seed: u64) -> Result<TextWeights<HostTensor>> {
    TextWeights::from_weights(config, Weights::random(seed, |k| k.starts_with("pooler.")))
}

/// Measures whole BERT forwards (one submission each). The check runs the CPU forward on
/// the batch's first sequence and compares its hidden states and sentence embedding.
pub fn bert_suite(
    ctx: &Context,
    shapes: &[BertShape],
    options: &BenchOptions,
    sink: &mut dyn Sink,
) {
    let mut loaded: Option<(BertSize, TextConfig, TextWeights<HostTensor>, Encoder)> = None;
    for (n, &shape) in shapes.iter().enumerate() {
        for &dtype in &options.dtypes {
            let label = format!("{} {}x{}", shape.model.name(), shape.batch, shape.seq);
            let of = format!("({}/{})", n + 1, shapes.len());
            sink.progress(&format!("bert {label} {} {of}", dtype.name()));
            measure(ctx, sink, ("bert", label, dtype), || {
                let (_, config, weights, model) = match loaded.take() {
                    Some(l) if l.0 == shape.model && l.3.dtype() == dtype => loaded.insert(l),
                    previous => {
                        drop(previous); // free the previous model's GPU memory first
                        let config = shape.model.config();
                        let weights = random_bert_weights(&config, 7)?;
                        let model = Encoder::with_dtype(ctx, config.clone(), &weights, dtype)?;
                        loaded.insert((shape.model, config, weights, model))
                    }
                };
                bert_one(ctx, config, weights, model, shape, options)
            });
        }
    }
}

fn bert_one(
    ctx: &Context,
    config: &TextConfig,
    weights: &TextWeights<HostTensor>,
    model: &Encoder,
    shape: BertShape,
    options: &BenchOptions,
) -> Result<Record> {
    let mut rng = StdRng::seed_from_u64(shape.batch as u64 * 1000 + shape.seq as u64);
    let n = shape.batch * shape.seq;
    let ids: Vec<u32> = (0..n).map(|_| rng.random_range(1000..30000)).collect();
    let input = TextInput::new(shape.batch, shape.seq, ids, None, None)?;

    let start = Instant::now();
    let first = model.forward_blocking(ctx, &input, false)?;
    let first_run_ms = start.elapsed().as_secs_f64() * 1e3;
    let timings = time_forwards(
        ctx,
        options,
        |ctx, timing| model.forward_timed(ctx, &input, timing),
        |ctx| model.forward_enqueue(ctx, &input),
    )?;

    // Check: the first sequence alone through the CPU twins (sequences are independent).
    let one = TextInput::new(
        1,
        shape.seq,
        input.input_ids[..shape.seq].to_vec(),
        None,
        None,
    )?;
    let dtype = model.dtype();
    let cpu = text::forward_cpu_as(config, weights, &one, false, dtype)?;
    let c = config.hidden_size;
    let pairs = [
        (
            &first.last_hidden_state.data[..shape.seq * c],
            &cpu.last_hidden_state.data[..],
        ),
        (
            &first.sentence_embedding.data[..c],
            &cpu.sentence_embedding.data[..],
        ),
    ];
    // f16: both sides hold the same f16 values; a rounding that tips the other way in one
    // layer carries on, so the bound is a few f16 ulps of the O(1) LayerNorm outputs.
    let tol = if dtype == DType::F16 { 1e-2 } else { 1e-4 };
    let check = compare(&pairs, tol, tol, (n + shape.batch) * c);
    let flops = shape.flops(config);
    let shape_label = format!("{} {}x{}", shape.model.name(), shape.batch, shape.seq);
    let mut r = record(
        ctx,
        "bert",
        shape_label,
        &timings,
        first_run_ms,
        flops,
        check,
        options,
    );
    r.dtype = dtype.name().0.into();
    r.variant = format!("{} storage, f32 accumulation", dtype.name());
    r.items_per_s = Some(shape.batch as f64 / (timings.gpu_ms.median * 1e-3));
    r.traffic = Some(ForwardTraffic::of(&model.forward_passes(ctx, &input)?));
    r.set_floor(
        r.traffic
            .map_or(0.0, |t| (t.bytes_read + t.bytes_written) as f64),
    );
    Ok(r)
}

/// A CSWin shape for the `cswin` suite (random weights of the real sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CswinShape {
    /// A preset name (`cswin-t-224`, ...).
    pub variant: String,
    pub batch: usize,
    /// Square input side.
    pub size: usize,
}

impl CswinShape {
    /// CSWin-T/S/B at 224, batch 1 and 64, on a real GPU; CSWin-T on one 64x64 image on a
    /// software adapter.
    pub fn defaults(ctx: &Context) -> Vec<Self> {
        let s = |v: &str, batch, size| Self {
            variant: v.into(),
            batch,
            size,
        };
        if ctx.capabilities().is_software() {
            vec![s("cswin-t-224", 1, 64)]
        } else {
            ["cswin-t-224", "cswin-s-224", "cswin-b-224"]
                .iter()
                .flat_map(|v| [s(v, 1, 224), s(v, 64, 224)])
                .collect()
        }
    }

    /// Parses `t:B`, `s:B`, `b:B`, `l:B` (at the preset's size) or `t:BxS` (square side S).
    pub fn parse(text: &str) -> Result<Self> {
        let err = || Error::Argument {
            op: "bench",
            arg: "cswin",
            reason: format!("{text:?} is not t|s|b|l:B or t|s|b|l:BxS"),
        };
        let (v, dims) = text.split_once(':').ok_or_else(err)?;
        let variant = format!("cswin-{v}-224");
        let (batch, size) = match dims.split_once('x') {
            Some((b, s)) => (b.parse().map_err(|_| err())?, s.parse().map_err(|_| err())?),
            None => (dims.parse().map_err(|_| err())?, 224),
        };
        CswinConfig::preset(&variant)?;
        if batch == 0 || size < 32 {
            return Err(err());
        }
        Ok(Self {
            variant,
            batch,
            size,
        })
    }

    /// 2 x multiply-adds of one forward (convolutions, projections, MLPs, window attention, LePE).
    pub fn flops(&self, config: &CswinConfig, geometry: &Geometry) -> f64 {
        let b = self.batch as f64;
        let tokens = |s: usize| (geometry.stages[s].0 * geometry.stages[s].1) as f64;
        let mut macs = tokens(0) * config.embed_dim as f64 * 3.0 * 49.0;
        for s in 0..4 {
            let (n, d, hid) = (tokens(s), config.dim(s) as f64, config.hidden(s) as f64);
            let branches = geometry.branches(config, s, config.branches(s));
            let attention: f64 = branches
                .iter()
                .map(|br| {
                    2.0 * n * (br.window.0 * br.window.1) as f64 * br.channels as f64
                        + 9.0 * n * br.channels as f64
                })
                .sum();
            macs += config.depth[s] as f64
                * (n * d * 3.0 * d + n * d * d + 2.0 * n * d * hid + attention);
            if s < 3 {
                macs += tokens(s + 1) * 2.0 * d * d * 9.0;
            }
        }
        macs += config.dim(3) as f64 * config.num_classes as f64;
        2.0 * b * macs
    }
}

/// Seeded random weights of a classification CSWin of `config`'s sizes, through its own
/// loader ([`CswinWeights::from_weights`] on [`Weights::random`]): a second attention branch
/// where the config's stage has one, no segmentation norms.
pub fn random_cswin_weights(config: &CswinConfig, seed: u64) -> Result<CswinWeights<HostTensor>> {
    let config_for_keys = config.clone();
    let present = move |key: &str| -> bool {
        // `stage{s}.{i}.attns.1.get_v.weight`: the second branch of a two-branch stage.
        let Some(rest) = key.strip_prefix("stage") else {
            return false;
        };
        let stage = rest.split('.').next().and_then(|s| s.parse::<usize>().ok());
        key.ends_with(".attns.1.get_v.weight")
            && stage.is_some_and(|s| (1..=4).contains(&s) && config_for_keys.branches(s - 1) == 2)
    };
    CswinWeights::from_weights(config, Weights::random(seed, present))
}

/// Measures whole CSWin forwards. The check runs the CPU forward on the batch's first image
/// and compares its stage-4 features and logits.
pub fn cswin_suite(
    ctx: &Context,
    shapes: &[CswinShape],
    options: &BenchOptions,
    sink: &mut dyn Sink,
) {
    let mut loaded: Option<(String, CswinConfig, CswinWeights<HostTensor>, Cswin)> = None;
    for (n, shape) in shapes.iter().enumerate() {
        for &dtype in &options.dtypes {
            sink.progress(&format!(
                "cswin {} {}x{} {} ({}/{})",
                shape.variant,
                shape.batch,
                shape.size,
                dtype.name(),
                n + 1,
                shapes.len()
            ));
            let label = format!(
                "{} {}x{}",
                shape.variant.trim_end_matches("-224"),
                shape.batch,
                shape.size
            );
            measure(ctx, sink, ("cswin", label, dtype), || {
                let (_, config, weights, model) = match loaded.take() {
                    Some(l) if l.0 == shape.variant && l.3.dtype() == dtype => loaded.insert(l),
                    previous => {
                        drop(previous); // free the previous model's GPU memory first
                        let config = CswinConfig::preset(&shape.variant)?;
                        let weights = random_cswin_weights(&config, 11)?;
                        let model = Cswin::with_dtype(ctx, config.clone(), &weights, dtype)?;
                        loaded.insert((shape.variant.clone(), config, weights, model))
                    }
                };
                cswin_one(ctx, config, weights, model, shape, options)
            });
        }
    }
}

fn cswin_one(
    ctx: &Context,
    config: &CswinConfig,
    weights: &CswinWeights<HostTensor>,
    model: &Cswin,
    shape: &CswinShape,
    options: &BenchOptions,
) -> Result<Record> {
    let mut rng = StdRng::seed_from_u64(shape.batch as u64 * 1000 + shape.size as u64);
    let dims = [shape.batch, config.in_chans, shape.size, shape.size];
    let per_image = config.in_chans * shape.size * shape.size;
    let pixels = HostTensor::new(
        &dims,
        (0..shape.batch * per_image)
            .map(|_| rng.random_range(-2.0f32..2.0))
            .collect(),
    )?;
    let geometry = Geometry::new(config, &dims)?;

    let start = Instant::now();
    let first = model.forward_blocking(ctx, &pixels, false)?;
    let first_run_ms = start.elapsed().as_secs_f64() * 1e3;
    let timings = time_forwards(
        ctx,
        options,
        |ctx, timing| model.forward_timed(ctx, &pixels, timing),
        |ctx| model.forward_enqueue(ctx, &pixels),
    )?;

    let one = HostTensor::new(
        &[1, config.in_chans, shape.size, shape.size],
        pixels.data[..per_image].to_vec(),
    )?;
    let dtype = model.dtype();
    let cpu = cswin::forward_cpu_as(config, weights, &one, false, dtype)?;
    let n4 = cpu.stages[3].data.len();
    let classes = config.num_classes;
    let (first_logits, cpu_logits) = (first.logits()?, cpu.logits()?);
    let pairs = [
        (&first.stages[3].data[..n4], &cpu.stages[3].data[..]),
        (&first_logits.data[..classes], &cpu_logits.data[..]),
    ];
    // f16: both sides hold the same f16 values; see bert_one.
    let tol = if dtype == DType::F16 { 1e-2 } else { 1e-4 };
    let check = compare(
        &pairs,
        tol,
        tol,
        first.stages[3].data.len() + first_logits.data.len(),
    );
    let label = format!(
        "{} {}x{}",
        shape.variant.trim_end_matches("-224"),
        shape.batch,
        shape.size
    );
    let mut r = record(
        ctx,
        "cswin",
        label,
        &timings,
        first_run_ms,
        shape.flops(config, &geometry),
        check,
        options,
    );
    r.items_per_s = Some(shape.batch as f64 / (timings.gpu_ms.median * 1e-3));
    r.dtype = dtype.name().0.into();
    r.variant = format!("{} storage, f32 accumulation", dtype.name());
    r.traffic = Some(ForwardTraffic::of(&model.forward_passes(ctx, &pixels)?));
    r.set_floor(
        r.traffic
            .map_or(0.0, |t| (t.bytes_read + t.bytes_written) as f64),
    );
    Ok(r)
}
