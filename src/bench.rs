//! Benchmark suites, shared by the `backbone-bench` binary and `cargo bench`.
//!
//! Each measurement: one cold run (pipeline compilation and first dispatch, wall clock),
//! warm-up runs, then timed runs reported as median and min–max. GPU time comes from
//! timestamp queries around the kernel's pass when the adapter has them; wall time (submit
//! to completion) is always reported beside it. Every result is checked against the CPU
//! twin (on sampled rows for large outputs).

use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{self, Epilogue, StridedMatmul};
use crate::models::Conv2d;
use crate::models::bert::{
    self, Bert, BertConfig, BertEmbeddings, BertInput, BertLayer, BertWeights, LayerNorm, Linear,
};
use crate::models::cswin::{self, Cswin, CswinBlock, CswinConfig, CswinWeights, Geometry, Merge};
use crate::pipeline::PassTime;
use crate::pipeline::Recorder;
use crate::reference::{self, HostTensor};
use crate::tensor::{DType, Tensor};

/// The commit this binary was built from (`-dirty` when the tree had changes).
pub const COMMIT: &str = env!("BACKBONE_COMMIT");

/// How many runs to make, and the card's peak for "% of peak".
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub warmup: usize,
    pub iters: usize,
    /// Peak f32 throughput in TFLOP/s; `None` uses [`known_peak_tflops`].
    pub peak_tflops: Option<f64>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            warmup: 3,
            iters: 10,
            peak_tflops: None,
        }
    }
}

/// f32 FMA peak of cards we know (see shared PEERS.md), by adapter-name substring.
pub fn known_peak_tflops(adapter_name: &str) -> Option<f64> {
    const KNOWN: [(&str, f64); 2] = [("H100", 67.0), ("H200", 67.0)];
    KNOWN
        .iter()
        .find(|(name, _)| adapter_name.contains(name))
        .map(|&(_, tflops)| tflops)
}

/// Median, minimum and maximum of a set of timings, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let median = match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
        };
        Self {
            median,
            min: s.first().copied().unwrap_or(f64::NAN),
            max: s.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Which clock gave `gpu_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Clock {
    /// Timestamp queries around the kernel's compute pass.
    Timestamp,
    /// No timestamp queries on this adapter: wall time, submit to completion.
    Wall,
}

/// Result of comparing the GPU output with the CPU twin.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub passed: bool,
    pub max_abs_err: f64,
    /// How many output values were compared.
    pub compared: usize,
    pub total: usize,
}

/// One measurement, as written to `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub suite: String,
    pub shape: String,
    pub dtype: String,
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    pub clock: Clock,
    pub gpu_ms: Stats,
    pub wall_ms: Stats,
    /// The first run: pipeline compilation plus one execution, wall clock.
    pub first_run_ms: f64,
    pub flops: f64,
    pub gflops: f64,
    pub pct_of_peak: Option<f64>,
    pub check: Check,
    /// Sequences (or images) per second, for model suites.
    pub items_per_s: Option<f64>,
    /// GPU ms per kernel over one forward (summed by kernel), for model suites.
    pub breakdown: Vec<(String, f64)>,
    pub commit: String,
}

/// A matmul problem size: Y[M, N] = X[M, K] · W[N, K]ᵀ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulSize {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl MatmulSize {
    /// Parses `N` (square) or `MxNxK`.
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('x').collect();
        let nums: Option<Vec<usize>> = parts.iter().map(|p| p.trim().parse().ok()).collect();
        match nums.as_deref() {
            Some(&[n]) if n > 0 => Ok(Self { m: n, n, k: n }),
            Some(&[m, n, k]) if m > 0 && n > 0 && k > 0 => Ok(Self { m, n, k }),
            _ => Err(Error::Argument {
                op: "bench",
                arg: "sizes",
                reason: format!("{s:?} is not N or MxNxK with positive sizes"),
            }),
        }
    }

    /// A short default list sized for the adapter: small on software adapters.
    pub fn defaults(ctx: &Context) -> Vec<Self> {
        let s = |m, n, k| Self { m, n, k };
        if ctx.capabilities().is_software() {
            vec![
                s(64, 64, 64),
                s(128, 128, 128),
                s(256, 256, 256),
                s(128, 1536, 384),
            ]
        } else {
            // Squares; BERT-base at batch 32 x seq 128: QKV, FFN up, FFN down; CSWin-T at
            // batch 64: stage-1 QKV (64 x 3136 tokens) and stage-3 FFN up (64 x 196 tokens).
            vec![
                s(1024, 1024, 1024),
                s(2048, 2048, 2048),
                s(4096, 4096, 4096),
                s(4096, 2304, 768),
                s(4096, 3072, 768),
                s(4096, 768, 3072),
                s(200704, 192, 64),
                s(12544, 1024, 256),
            ]
        }
    }
}

impl std::fmt::Display for MatmulSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.m, self.n, self.k)
    }
}

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Measures `Y = X·Wᵀ` (f32) for each size.
pub fn matmul_suite(
    ctx: &Context,
    sizes: &[MatmulSize],
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        progress(&format!("matmul {size} ({}/{})", i + 1, sizes.len()));
        records.push(matmul_one(ctx, size, options)?);
    }
    Ok(records)
}

fn matmul_one(ctx: &Context, size: MatmulSize, options: &BenchOptions) -> Result<Record> {
    let MatmulSize { m, n, k } = size;
    let mut rng = StdRng::seed_from_u64((m * 31 + n * 17 + k) as u64);
    let x_host = HostTensor::new(&[m, k], random(&mut rng, m * k))?;
    let w_host = HostTensor::new(&[n, k], random(&mut rng, n * k))?;
    let x = Tensor::from_f32(ctx, &[m, k], &x_host.data, "x")?;
    let w = Tensor::from_f32(ctx, &[n, k], &w_host.data, "w")?;
    let y = Tensor::empty(ctx, &[m, n], DType::F32, "y")?;

    let run = |timed: bool| {
        kernel_run(ctx, timed, |rec| {
            kernels::matmul(rec, &x, &w, &y, Epilogue::none())
        })
    };
    let (
        Timings {
            gpu_ms,
            wall,
            clock,
            ..
        },
        first_run_ms,
    ) = time_kernel(ctx, options, run)?;

    let check = check_matmul_rows(ctx, &x_host, &w_host, &y, size)?;
    let flops = kernels::matmul::flops(&StridedMatmul::contiguous(1, m, n, k, true));
    Ok(record(
        ctx,
        "matmul",
        size.to_string(),
        clock,
        gpu_ms,
        Stats::of(&wall),
        first_run_ms,
        flops,
        check,
        options,
    ))
}

/// Compares Y with the CPU twin: all of it for small problems, 16 spread rows otherwise.
fn check_matmul_rows(
    ctx: &Context,
    x: &HostTensor,
    w: &HostTensor,
    y: &Tensor,
    size: MatmulSize,
) -> Result<Check> {
    let MatmulSize { m, n, k } = size;
    // Every row while the CPU twin is cheap (up to 2^27 multiply-adds), else 16 spread rows.
    let rows: Vec<usize> = if m <= 16 || m * n * k <= 1 << 27 {
        (0..m).collect()
    } else {
        (0..16).map(|i| i * (m - 1) / 15).collect()
    };
    let mut xs = Vec::with_capacity(rows.len() * k);
    for &r in &rows {
        xs.extend_from_slice(&x.data[r * k..(r + 1) * k]);
    }
    let x_rows = HostTensor::new(&[rows.len(), k], xs)?;
    let mut expect = HostTensor::zeros(&[rows.len(), n]);
    reference::matmul(&x_rows, w, &mut expect, Epilogue::none())?;
    let got = y.read_f32_blocking(ctx)?;
    let atol = (2e-6 * (k as f64).sqrt()).max(1e-5);
    let mut passed = true;
    let mut max_abs_err = 0f64;
    for (i, &r) in rows.iter().enumerate() {
        for j in 0..n {
            let (g, c) = (got[r * n + j] as f64, expect.data[i * n + j] as f64);
            let err = (g - c).abs();
            max_abs_err = max_abs_err.max(if err.is_nan() { f64::INFINITY } else { err });
            passed &= err <= atol + 1e-5 * c.abs();
        }
    }
    Ok(Check {
        passed,
        max_abs_err,
        compared: rows.len() * n,
        total: m * n,
    })
}

#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &Context,
    suite: &str,
    shape: String,
    clock: Clock,
    gpu_ms: Stats,
    wall_ms: Stats,
    first_run_ms: f64,
    flops: f64,
    check: Check,
    options: &BenchOptions,
) -> Record {
    let info = &ctx.capabilities().adapter;
    let gflops = flops / (gpu_ms.median * 1e-3) / 1e9;
    let peak = options
        .peak_tflops
        .or_else(|| known_peak_tflops(&info.name));
    Record {
        suite: suite.into(),
        shape,
        dtype: "f32".into(),
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        clock,
        gpu_ms,
        wall_ms,
        first_run_ms,
        flops,
        gflops,
        pct_of_peak: peak.map(|p| 100.0 * gflops / (p * 1e3)),
        check,
        items_per_s: None,
        breakdown: Vec::new(),
        commit: COMMIT.into(),
    }
}

/// A plain-text table of records.
pub fn table(records: &[Record]) -> String {
    let mut out = format!(
        "{:<8} {:<20} {:>5} {:>10} {:>21} {:>10} {:>9} {:>10} {:>6} {:>9}  {}\n",
        "suite",
        "shape",
        "dtype",
        "gpu ms",
        "(min-max)",
        "wall ms",
        "first ms",
        "GFLOP/s",
        "%peak",
        "items/s",
        "check"
    );
    for r in records {
        out += &format!(
            "{:<8} {:<20} {:>5} {:>10.4} {:>21} {:>10.3} {:>9.1} {:>10.1} {:>6} {:>9}  {} (max err {:.1e}, {}/{} values)\n",
            r.suite,
            r.shape,
            r.dtype,
            r.gpu_ms.median,
            format!("({:.4}-{:.4})", r.gpu_ms.min, r.gpu_ms.max),
            r.wall_ms.median,
            r.first_run_ms,
            r.gflops,
            r.pct_of_peak.map_or("-".into(), |p| format!("{p:.1}")),
            r.items_per_s.map_or("-".into(), |v| format!("{v:.1}")),
            if r.check.passed { "PASS" } else { "FAIL" },
            r.check.max_abs_err,
            r.check.compared,
            r.check.total,
        );
    }
    out
}

/// A Markdown table of records (for BENCHMARKS.md).
pub fn markdown(records: &[Record]) -> String {
    let mut out = String::from(
        "| suite | shape | dtype | GPU ms (median) | min-max | wall ms | GFLOP/s | % peak | items/s | check |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        out += &format!(
            "| {} | {} | {} | {:.4} | {:.4}-{:.4} | {:.3} | {:.1} | {} | {} | {} |\n",
            r.suite,
            r.shape,
            r.dtype,
            r.gpu_ms.median,
            r.gpu_ms.min,
            r.gpu_ms.max,
            r.wall_ms.median,
            r.gflops,
            r.pct_of_peak.map_or("-".into(), |p| format!("{p:.1}")),
            r.items_per_s.map_or("-".into(), |v| format!("{v:.1}")),
            if r.check.passed { "PASS" } else { "FAIL" },
        );
    }
    out
}

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

    pub fn config(self) -> BertConfig {
        let (layers, hidden, intermediate) = match self {
            BertSize::Base => (12, 768, 3072),
            BertSize::MiniLm => (6, 384, 1536),
        };
        BertConfig {
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
    pub fn flops(&self, config: &BertConfig) -> f64 {
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

/// Seeded random weights of a config's real sizes (LayerNorm weights near 1).
pub fn random_bert_weights(config: &BertConfig, seed: u64) -> Result<BertWeights<HostTensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = |shape: &[usize], scale: f32, center: f32| -> Result<HostTensor> {
        let n = shape.iter().product();
        HostTensor::new(
            shape,
            (0..n)
                .map(|_| center + scale * rng.random_range(-1.0f32..1.0))
                .collect(),
        )
    };
    let (c, i) = (config.hidden_size, config.intermediate_size);
    let mut linear = |out: usize, inp: usize| -> Result<Linear<HostTensor>> {
        let scale = 1.0 / (inp as f32).sqrt();
        Ok(Linear {
            weight: t(&[out, inp], scale, 0.0)?,
            bias: t(&[out], 0.1, 0.0)?,
        })
    };
    let mut layers = Vec::new();
    for _ in 0..config.num_hidden_layers {
        layers.push(BertLayer {
            qkv: linear(3 * c, c)?,
            attention_output: linear(c, c)?,
            attention_norm: LayerNorm {
                weight: HostTensor::new(&[c], vec![1.0; c])?,
                bias: HostTensor::zeros(&[c]),
            },
            intermediate: linear(i, c)?,
            output: linear(c, i)?,
            output_norm: LayerNorm {
                weight: HostTensor::new(&[c], vec![1.0; c])?,
                bias: HostTensor::zeros(&[c]),
            },
        });
    }
    let pooler = Some(linear(c, c)?);
    let mut t = |shape: &[usize]| -> Result<HostTensor> {
        let n = shape.iter().product();
        HostTensor::new(
            shape,
            (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        )
    };
    let embeddings = BertEmbeddings {
        word_embeddings: t(&[config.vocab_size, c])?,
        position_embeddings: t(&[config.max_position_embeddings, c])?,
        token_type_embeddings: t(&[config.type_vocab_size, c])?,
        layer_norm: LayerNorm {
            weight: HostTensor::new(&[c], vec![1.0; c])?,
            bias: HostTensor::zeros(&[c]),
        },
    };
    Ok(BertWeights {
        embeddings,
        layers,
        pooler,
    })
}

/// Measures whole BERT forwards (one submission each). The check runs the CPU forward on
/// the batch's first sequence and compares its hidden states and sentence embedding.
pub fn bert_suite(
    ctx: &Context,
    shapes: &[BertShape],
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut loaded: Option<(BertSize, BertConfig, BertWeights<HostTensor>, Bert)> = None;
    for (n, &shape) in shapes.iter().enumerate() {
        let label = format!("{} {}x{}", shape.model.name(), shape.batch, shape.seq);
        progress(&format!("bert {label} ({}/{})", n + 1, shapes.len()));
        if loaded.as_ref().is_none_or(|l| l.0 != shape.model) {
            drop(loaded.take()); // free the previous model's GPU memory first
            let config = shape.model.config();
            let weights = random_bert_weights(&config, 7)?;
            let model = Bert::new(ctx, config.clone(), &weights)?;
            loaded = Some((shape.model, config, weights, model));
        }
        let Some((_, config, weights, model)) = &loaded else {
            continue;
        };
        records.push(bert_one(ctx, config, weights, model, shape, options)?);
    }
    Ok(records)
}

fn bert_one(
    ctx: &Context,
    config: &BertConfig,
    weights: &BertWeights<HostTensor>,
    model: &Bert,
    shape: BertShape,
    options: &BenchOptions,
) -> Result<Record> {
    let mut rng = StdRng::seed_from_u64(shape.batch as u64 * 1000 + shape.seq as u64);
    let n = shape.batch * shape.seq;
    let ids: Vec<u32> = (0..n).map(|_| rng.random_range(1000..30000)).collect();
    let input = BertInput::new(shape.batch, shape.seq, ids, None, None)?;

    let start = Instant::now();
    let first = model.forward_blocking(ctx, &input, false)?;
    let first_run_ms = start.elapsed().as_secs_f64() * 1e3;
    let Timings {
        gpu_ms,
        wall,
        clock,
        breakdown,
    } = time_forwards(ctx, options, |ctx| model.forward_timed(ctx, &input))?;

    // Check: the first sequence alone through the CPU twins (sequences are independent).
    let one = BertInput::new(
        1,
        shape.seq,
        input.input_ids[..shape.seq].to_vec(),
        None,
        None,
    )?;
    let cpu = bert::forward_cpu(config, weights, &one, false)?;
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
    let check = compare(&pairs, 1e-4, 1e-4, (n + shape.batch) * c);
    let flops = shape.flops(config);
    let shape_label = format!("{} {}x{}", shape.model.name(), shape.batch, shape.seq);
    let mut r = record(
        ctx,
        "bert",
        shape_label,
        clock,
        gpu_ms,
        Stats::of(&wall),
        first_run_ms,
        flops,
        check,
        options,
    );
    r.items_per_s = Some(shape.batch as f64 / (gpu_ms.median * 1e-3));
    r.breakdown = breakdown;
    Ok(r)
}

/// Per-kernel GPU time of model records, as text.
pub fn breakdown_table(records: &[Record]) -> String {
    let mut out = String::new();
    for r in records.iter().filter(|r| !r.breakdown.is_empty()) {
        let total: f64 = r.breakdown.iter().map(|(_, ms)| ms).sum();
        out += &format!(
            "{} {}: GPU time by kernel (sum of passes {total:.3} ms)\n",
            r.suite, r.shape
        );
        for (kernel, ms) in &r.breakdown {
            out += &format!(
                "  {kernel:<14} {ms:>10.3} ms {:>6.1}%\n",
                100.0 * ms / total
            );
        }
    }
    out
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

/// Seeded random CSWin weights of a config's real sizes.
pub fn random_cswin_weights(config: &CswinConfig, seed: u64) -> Result<CswinWeights<HostTensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = |shape: &[usize], scale: f32| -> Result<HostTensor> {
        let n = shape.iter().product();
        HostTensor::new(
            shape,
            (0..n)
                .map(|_| scale * rng.random_range(-1.0f32..1.0))
                .collect(),
        )
    };
    let ones = |c: usize| HostTensor::new(&[c], vec![1.0; c]);
    let norm = |c: usize| -> Result<LayerNorm<HostTensor>> {
        Ok(LayerNorm {
            weight: ones(c)?,
            bias: HostTensor::zeros(&[c]),
        })
    };
    let linear = |out: usize,
                  inp: usize,
                  t: &mut dyn FnMut(&[usize], f32) -> Result<HostTensor>|
     -> Result<Linear<HostTensor>> {
        Ok(Linear {
            weight: t(&[out, inp], 1.0 / (inp as f32).sqrt())?,
            bias: t(&[out], 0.1)?,
        })
    };
    let c = config.embed_dim;
    let stem = Conv2d {
        weight: t(&[c, config.in_chans, 7, 7], 0.1)?,
        bias: t(&[c], 0.1)?,
    };
    let mut stages = Vec::new();
    for s in 0..4 {
        let (d, hidden, branches) = (config.dim(s), config.hidden(s), config.branches(s));
        let mut blocks = Vec::new();
        for _ in 0..config.depth[s] {
            let lepe = (0..branches)
                .map(|_| {
                    Ok(Linear {
                        weight: t(&[d / branches, 3, 3], 0.3)?,
                        bias: t(&[d / branches], 0.1)?,
                    })
                })
                .collect::<Result<_>>()?;
            blocks.push(CswinBlock {
                qkv: linear(3 * d, d, &mut t)?,
                norm1: norm(d)?,
                proj: linear(d, d, &mut t)?,
                lepe,
                fc1: linear(hidden, d, &mut t)?,
                fc2: linear(d, hidden, &mut t)?,
                norm2: norm(d)?,
            });
        }
        stages.push(blocks);
    }
    let merges = (0..3)
        .map(|m| {
            let d = config.dim(m);
            Ok(Merge {
                conv: Conv2d {
                    weight: t(&[2 * d, d, 3, 3], 1.0 / (9.0 * d as f32).sqrt())?,
                    bias: t(&[2 * d], 0.1)?,
                },
                norm: norm(2 * d)?,
            })
        })
        .collect::<Result<_>>()?;
    let head = linear(config.num_classes, config.dim(3), &mut t)?;
    Ok(CswinWeights {
        stem,
        stem_norm: norm(c)?,
        stages,
        merges,
        norm: norm(config.dim(3))?,
        head,
    })
}

/// Measures whole CSWin forwards. The check runs the CPU forward on the batch's first image
/// and compares its stage-4 features and logits.
pub fn cswin_suite(
    ctx: &Context,
    shapes: &[CswinShape],
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut loaded: Option<(String, CswinConfig, CswinWeights<HostTensor>, Cswin)> = None;
    for (n, shape) in shapes.iter().enumerate() {
        progress(&format!(
            "cswin {} {}x{} ({}/{})",
            shape.variant,
            shape.batch,
            shape.size,
            n + 1,
            shapes.len()
        ));
        if loaded.as_ref().is_none_or(|l| l.0 != shape.variant) {
            drop(loaded.take()); // free the previous model's GPU memory first
            let config = CswinConfig::preset(&shape.variant)?;
            let weights = random_cswin_weights(&config, 11)?;
            let model = Cswin::new(ctx, config.clone(), &weights)?;
            loaded = Some((shape.variant.clone(), config, weights, model));
        }
        let Some((_, config, weights, model)) = &loaded else {
            continue;
        };
        records.push(cswin_one(ctx, config, weights, model, shape, options)?);
    }
    Ok(records)
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
    let timed = |ctx: &Context| model.forward_timed(ctx, &pixels);
    let Timings {
        gpu_ms,
        wall,
        clock,
        breakdown,
    } = time_forwards(ctx, options, timed)?;

    let one = HostTensor::new(
        &[1, config.in_chans, shape.size, shape.size],
        pixels.data[..per_image].to_vec(),
    )?;
    let cpu = cswin::forward_cpu(config, weights, &one, false)?;
    let n4 = cpu.stages[3].data.len();
    let classes = config.num_classes;
    let pairs = [
        (&first.stages[3].data[..n4], &cpu.stages[3].data[..]),
        (&first.logits.data[..classes], &cpu.logits.data[..]),
    ];
    let check = compare(
        &pairs,
        1e-4,
        1e-4,
        first.stages[3].data.len() + first.logits.data.len(),
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
        clock,
        gpu_ms,
        Stats::of(&wall),
        first_run_ms,
        shape.flops(config, &geometry),
        check,
        options,
    );
    r.items_per_s = Some(shape.batch as f64 / (gpu_ms.median * 1e-3));
    r.breakdown = breakdown;
    Ok(r)
}

/// What [`time_forwards`] measured.
struct Timings {
    gpu_ms: Stats,
    wall: Vec<f64>,
    clock: Clock,
    /// Mean GPU ms per kernel over one forward, largest first.
    breakdown: Vec<(String, f64)>,
}

/// Warm-up, then timed forwards.
fn time_forwards(
    ctx: &Context,
    options: &BenchOptions,
    forward: impl Fn(&Context) -> Result<Vec<PassTime>>,
) -> Result<Timings> {
    for _ in 0..options.warmup {
        forward(ctx)?;
    }
    let (mut wall, mut gpu) = (Vec::new(), Vec::new());
    let mut breakdown: Vec<(String, f64)> = Vec::new();
    for _ in 0..options.iters.max(1) {
        let start = Instant::now();
        let times = forward(ctx)?;
        wall.push(start.elapsed().as_secs_f64() * 1e3);
        if !times.is_empty() {
            gpu.push(PassTime::span_ms(&times));
            for t in &times {
                match breakdown.iter_mut().find(|(k, _)| k == t.label) {
                    Some((_, ms)) => *ms += t.ms,
                    None => breakdown.push((t.label.to_string(), t.ms)),
                }
            }
        }
    }
    let runs = options.iters.max(1) as f64;
    breakdown.iter_mut().for_each(|(_, ms)| *ms /= runs);
    breakdown.sort_by(|a, b| b.1.total_cmp(&a.1));
    let clock = if gpu.len() == wall.len() {
        Clock::Timestamp
    } else {
        Clock::Wall
    };
    let gpu_ms = Stats::of(if clock == Clock::Timestamp {
        &gpu
    } else {
        &wall
    });
    Ok(Timings {
        gpu_ms,
        wall,
        clock,
        breakdown,
    })
}

/// Compares (GPU, CPU) slices with |g - c| <= atol + rtol |c|.
fn compare(pairs: &[(&[f32], &[f32])], atol: f64, rtol: f64, total: usize) -> Check {
    let (mut passed, mut max_abs_err, mut compared) = (true, 0f64, 0);
    for (got, want) in pairs {
        for (&g, &w) in got.iter().zip(*want) {
            let err = (g as f64 - w as f64).abs();
            max_abs_err = max_abs_err.max(if err.is_nan() { f64::INFINITY } else { err });
            passed &= err <= atol + rtol * (w as f64).abs();
            compared += 1;
        }
    }
    Check {
        passed,
        max_abs_err,
        compared,
        total,
    }
}

/// A fused-attention problem for the `attention` suite (BERT's self-attention).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub heads: usize,
    pub seq: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// BERT-base (head_dim 64) and MiniLM (32) at seq 128 (batch 32) and 512 (batch 8); one
    /// small problem on a software adapter.
    pub fn defaults(ctx: &Context) -> Vec<Self> {
        let s = |batch, heads, seq, head_dim| Self {
            batch,
            heads,
            seq,
            head_dim,
        };
        if ctx.capabilities().is_software() {
            vec![s(1, 4, 64, 32)]
        } else {
            vec![
                s(32, 12, 128, 64),
                s(8, 12, 512, 64),
                s(32, 12, 128, 32),
                s(8, 12, 512, 32),
            ]
        }
    }

    /// Parses `BxHxTxD`.
    pub fn parse(text: &str) -> Result<Self> {
        let v: Vec<usize> = text.split('x').filter_map(|p| p.parse().ok()).collect();
        match v[..] {
            [batch, heads, seq, head_dim] if batch * heads * seq * head_dim > 0 => Ok(Self {
                batch,
                heads,
                seq,
                head_dim,
            }),
            _ => Err(Error::Argument {
                op: "bench",
                arg: "attention",
                reason: format!("{text:?} is not BxHxTxD"),
            }),
        }
    }
}

/// Measures the fused attention kernel; checks the first batch entry against the CPU twin.
pub fn attention_suite(
    ctx: &Context,
    shapes: &[AttentionShape],
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for (n, s) in shapes.iter().enumerate() {
        let label = format!("{}x{}x{}x{}", s.batch, s.heads, s.seq, s.head_dim);
        progress(&format!("attention {label} ({}/{})", n + 1, shapes.len()));
        let c = s.heads * s.head_dim;
        let mut rng = StdRng::seed_from_u64(n as u64 + 77);
        let qkv = HostTensor::new(
            &[s.batch, s.seq, 3 * c],
            random(&mut rng, s.batch * s.seq * 3 * c),
        )?;
        let gqkv = Tensor::from_f32(ctx, &qkv.shape, &qkv.data, "qkv")?;
        let mask = Tensor::from_u32(ctx, &[s.batch, s.seq], &vec![1; s.batch * s.seq], "mask")?;
        let out = Tensor::empty(ctx, &[s.batch, s.seq, c], DType::F32, "out")?;
        let run = |timed: bool| {
            kernel_run(ctx, timed, |rec| {
                kernels::attention(rec, &gqkv, &mask, s.heads, &out)
            })
        };
        let (
            Timings {
                gpu_ms,
                wall,
                clock,
                ..
            },
            first_run_ms,
        ) = time_kernel(ctx, options, run)?;
        let one = HostTensor::new(&[1, s.seq, 3 * c], qkv.data[..s.seq * 3 * c].to_vec())?;
        let mut cpu = HostTensor::zeros(&[1, s.seq, c]);
        reference::attention(
            &one,
            &HostTensor::new(&[1, s.seq], vec![1u32; s.seq])?,
            s.heads,
            &mut cpu,
        )?;
        let got = out.read_f32_blocking(ctx)?;
        let check = compare(&[(&got[..s.seq * c], &cpu.data[..])], 1e-5, 1e-4, got.len());
        let flops = 4.0 * (s.batch * s.heads * s.seq * s.seq * s.head_dim) as f64;
        records.push(record(
            ctx,
            "attention",
            label,
            clock,
            gpu_ms,
            Stats::of(&wall),
            first_run_ms,
            flops,
            check,
            options,
        ));
    }
    Ok(records)
}

/// A CSWin stage's attention (both branches, or the global one) for the `cswin_attention`
/// suite: CSWin-T at 224.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CswinAttentionShape {
    pub stage: usize,
    pub batch: usize,
}

impl CswinAttentionShape {
    /// Every CSWin-T stage at 224, batch 64 (batch 1, stages 3 and 4 on a software adapter).
    pub fn defaults(ctx: &Context) -> Vec<Self> {
        if ctx.capabilities().is_software() {
            vec![Self { stage: 3, batch: 1 }, Self { stage: 4, batch: 1 }]
        } else {
            (1..=4).map(|stage| Self { stage, batch: 64 }).collect()
        }
    }
}

/// Measures one CSWin-T stage's cross-shaped attention with LePE (all its branches in one
/// recording); checks the first image against the CPU twin.
pub fn cswin_attention_suite(
    ctx: &Context,
    shapes: &[CswinAttentionShape],
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Record>> {
    let config = CswinConfig::preset("cswin-t-224")?;
    let mut records = Vec::new();
    for (n, s) in shapes.iter().enumerate() {
        let stage = s.stage.clamp(1, 4) - 1;
        let geometry = Geometry::new(&config, &[s.batch, 3, 224, 224])?;
        let branches = geometry.branches(&config, stage, config.branches(stage));
        let (h, w) = geometry.stages[stage];
        let label = format!(
            "T stage{} {}x{}x{} b{}",
            stage + 1,
            h,
            w,
            config.dim(stage),
            s.batch
        );
        progress(&format!(
            "cswin_attention {label} ({}/{})",
            n + 1,
            shapes.len()
        ));
        let (c, tokens) = (config.dim(stage), h * w);
        let mut rng = StdRng::seed_from_u64(n as u64 + 99);
        let qkv = HostTensor::new(
            &[s.batch, tokens, 3 * c],
            random(&mut rng, s.batch * tokens * 3 * c),
        )?;
        let gqkv = Tensor::from_f32(ctx, &qkv.shape, &qkv.data, "qkv")?;
        let lepe: Vec<(HostTensor, HostTensor)> = branches
            .iter()
            .map(|b| {
                Ok((
                    HostTensor::new(&[b.channels, 3, 3], random(&mut rng, b.channels * 9))?,
                    HostTensor::new(&[b.channels], random(&mut rng, b.channels))?,
                ))
            })
            .collect::<Result<_>>()?;
        let glepe: Vec<(Tensor, Tensor)> = lepe
            .iter()
            .map(|(w, b)| {
                Ok((
                    Tensor::from_f32(ctx, &w.shape, &w.data, "lepe_w")?,
                    Tensor::from_f32(ctx, &b.shape, &b.data, "lepe_b")?,
                ))
            })
            .collect::<Result<_>>()?;
        let out = Tensor::empty(ctx, &[s.batch, tokens, c], DType::F32, "out")?;
        let run = |timed: bool| {
            kernel_run(ctx, timed, |rec| {
                for (b, (lw, lb)) in branches.iter().zip(&glepe) {
                    kernels::cswin_attention(rec, &gqkv, lw, lb, b, &out)?;
                }
                Ok(())
            })
        };
        let (
            Timings {
                gpu_ms,
                wall,
                clock,
                ..
            },
            first_run_ms,
        ) = time_kernel(ctx, options, run)?;
        let one = HostTensor::new(&[1, tokens, 3 * c], qkv.data[..tokens * 3 * c].to_vec())?;
        let mut cpu = HostTensor::zeros(&[1, tokens, c]);
        for (b, (lw, lb)) in branches.iter().zip(&lepe) {
            reference::cswin_attention(&one, lw, lb, b, &mut cpu)?;
        }
        let got = out.read_f32_blocking(ctx)?;
        let check = compare(
            &[(&got[..tokens * c], &cpu.data[..])],
            1e-5,
            1e-4,
            got.len(),
        );
        let flops: f64 = branches
            .iter()
            .map(|b| {
                2.0 * (s.batch * tokens * b.channels) as f64
                    * (2.0 * (b.window.0 * b.window.1) as f64 + 9.0)
            })
            .sum();
        records.push(record(
            ctx,
            "cswin_attn",
            label,
            clock,
            gpu_ms,
            Stats::of(&wall),
            first_run_ms,
            flops,
            check,
            options,
        ));
    }
    Ok(records)
}

/// Records `f` into a fresh recorder (timed: one timestamp pair per pass) and submits it;
/// returns (wall ms, GPU ms over all passes if timed).
fn kernel_run(
    ctx: &Context,
    timed: bool,
    f: impl FnOnce(&mut Recorder<'_>) -> Result<()>,
) -> Result<(f64, Option<f64>)> {
    let mut rec = if timed {
        Recorder::with_timing(ctx, 8)
    } else {
        Recorder::new(ctx)
    };
    f(&mut rec)?;
    let start = Instant::now();
    let times = rec.submit_blocking()?;
    let gpu = (!times.is_empty()).then(|| PassTime::span_ms(&times));
    Ok((start.elapsed().as_secs_f64() * 1e3, gpu))
}

/// Cold run, warm-ups, then timed runs of one kernel recording; also returns the cold run's
/// wall ms (pipeline compilation included).
fn time_kernel(
    ctx: &Context,
    options: &BenchOptions,
    run: impl Fn(bool) -> Result<(f64, Option<f64>)>,
) -> Result<(Timings, f64)> {
    ctx.poll_wait()?;
    let start = Instant::now();
    run(false)?;
    let first_run_ms = start.elapsed().as_secs_f64() * 1e3;
    for _ in 0..options.warmup {
        run(false)?;
    }
    let (mut wall, mut gpu) = (Vec::new(), Vec::new());
    for _ in 0..options.iters.max(1) {
        let (w, g) = run(true)?;
        wall.push(w);
        gpu.extend(g);
    }
    let clock = if gpu.len() == wall.len() {
        Clock::Timestamp
    } else {
        Clock::Wall
    };
    let gpu_ms = Stats::of(if clock == Clock::Timestamp {
        &gpu
    } else {
        &wall
    });
    Ok((
        Timings {
            gpu_ms,
            wall,
            clock,
            breakdown: Vec::new(),
        },
        first_run_ms,
    ))
}

/// Every suite with its default shapes for this adapter (what `backbone-bench` and
/// `cargo bench` run without arguments).
pub fn default_suites(
    ctx: &Context,
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Record>> {
    let mut records = matmul_suite(ctx, &MatmulSize::defaults(ctx), options, &mut progress)?;
    records.extend(attention_suite(
        ctx,
        &AttentionShape::defaults(ctx),
        options,
        &mut progress,
    )?);
    records.extend(cswin_attention_suite(
        ctx,
        &CswinAttentionShape::defaults(ctx),
        options,
        &mut progress,
    )?);
    records.extend(bert_suite(
        ctx,
        &BertShape::defaults(ctx),
        options,
        &mut progress,
    )?);
    records.extend(cswin_suite(
        ctx,
        &CswinShape::defaults(ctx),
        options,
        &mut progress,
    )?);
    Ok(records)
}
