//! Kernel suites: matmul, BERT attention, CSWin attention.

use rand::{SeedableRng, rngs::StdRng};

use super::{
    BenchOptions, Check, Record, Sink, compare, kernel_run, measure, random, record, time_kernel,
};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::kernels::{self, Epilogue, MatmulTile, StridedMatmul};
use crate::models::cswin::{CswinConfig, Geometry};
use crate::reference::{self, HostTensor};
use crate::tensor::{DType, Tensor};

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

/// Measures `Y = X·Wᵀ` (f32) for each size.
pub fn matmul_suite(
    ctx: &Context,
    sizes: &[MatmulSize],
    options: &BenchOptions,
    sink: &mut dyn Sink,
) {
    for (i, &size) in sizes.iter().enumerate() {
        for &dtype in &options.dtypes {
            sink.progress(&format!(
                "matmul {size} {} ({}/{})",
                dtype.name(),
                i + 1,
                sizes.len()
            ));
            measure(ctx, sink, ("matmul", size.to_string(), dtype), || {
                matmul_one(ctx, size, dtype, options)
            });
        }
    }
}

/// One product; for f16, X and W are stored as f16 (Y stays f32) and the check uses the
/// f16-rounded inputs.
fn matmul_one(
    ctx: &Context,
    size: MatmulSize,
    dtype: DType,
    options: &BenchOptions,
) -> Result<Record> {
    let MatmulSize { m, n, k } = size;
    // The GPU tensors first: their limits are checked before any host data is made.
    let (x, w) = (
        Tensor::empty(ctx, &[m, k], dtype, "x")?,
        Tensor::empty(ctx, &[n, k], dtype, "w")?,
    );
    let y = Tensor::empty(ctx, &[m, n], DType::F32, "y")?;
    let mut rng = StdRng::seed_from_u64((m * 31 + n * 17 + k) as u64);
    let x_host = HostTensor::new(&[m, k], random(&mut rng, m * k))?.round_to(dtype);
    let w_host = HostTensor::new(&[n, k], random(&mut rng, n * k))?.round_to(dtype);
    write_as(ctx, &x, &x_host)?;
    write_as(ctx, &w, &w_host)?;

    let run = |timed: bool| {
        kernel_run(ctx, timed, |rec| {
            kernels::matmul(rec, &x, &w, &y, Epilogue::none())
        })
    };
    let (timings, first_run_ms) = time_kernel(ctx, options, run)?;

    let check = check_matmul_rows(ctx, &x_host, &w_host, &y, size)?;
    let flops = kernels::matmul::flops(&StridedMatmul::contiguous(1, m, n, k, true));
    let mut r = record(
        ctx,
        "matmul",
        size.to_string(),
        &timings,
        first_run_ms,
        flops,
        check,
        options,
    );
    r.dtype = dtype.name().0.into();
    r.set_floor(((m * k + n * k + m * n) as f64) * super::roofline::element_bytes(dtype));
    let tile = MatmulTile::choose(ctx, m, n, k, 1, dtype == DType::F16);
    let tuned = ctx
        .tune_table()
        .and_then(|t| t.matmul_tile(m, n, k, 1, dtype == DType::F16))
        .is_some();
    r.variant = format!("{tile:?}{}", if tuned { " (tuned)" } else { "" }).to_lowercase();
    let coop = kernels::matmul_coop::coop_fragment(ctx)
        .filter(|_| ctx.family_enabled(crate::selftest::Family::CoopMatmul));
    if let (DType::F16, Some((t, _))) = (dtype, coop) {
        r.variant = format!("cooperative matrix {t}x{t}x{t}");
    }
    Ok(r)
}

/// Writes host values into `t` in its storage type (f16 rounded from f32).
fn write_as(ctx: &Context, t: &Tensor, host: &HostTensor) -> Result<()> {
    match t.dtype() {
        DType::F16 => {
            let halves: Vec<half::f16> =
                host.data.iter().map(|&v| half::f16::from_f32(v)).collect();
            t.write(ctx, &halves)
        }
        _ => t.write(ctx, &host.data),
    }
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

/// Measures the fused attention kernel in each dtype (f16: qkv and out stored as f16); checks
/// the first batch entry against the CPU twin on the same (rounded) inputs.
pub fn attention_suite(
    ctx: &Context,
    shapes: &[AttentionShape],
    options: &BenchOptions,
    sink: &mut dyn Sink,
) {
    for (n, s) in shapes.iter().enumerate() {
        let label = format!("{}x{}x{}x{}", s.batch, s.heads, s.seq, s.head_dim);
        for &dtype in &options.dtypes {
            sink.progress(&format!(
                "attention {label} {} ({}/{})",
                dtype.name(),
                n + 1,
                shapes.len()
            ));
            measure(ctx, sink, ("attention", label.clone(), dtype), || {
                attention_one(ctx, s, n, label.clone(), dtype, options)
            });
        }
    }
}

fn attention_one(
    ctx: &Context,
    s: &AttentionShape,
    n: usize,
    label: String,
    dtype: DType,
    options: &BenchOptions,
) -> Result<Record> {
    let c = s.heads * s.head_dim;
    // Limits checked before any host data is made.
    Tensor::empty(ctx, &[s.batch, s.seq, 3 * c], dtype, "qkv")?;
    let mut rng = StdRng::seed_from_u64(n as u64 + 77);
    let qkv = HostTensor::new(
        &[s.batch, s.seq, 3 * c],
        random(&mut rng, s.batch * s.seq * 3 * c),
    )?
    .round_to(dtype);
    let gqkv = crate::models::weights::upload_as(ctx, "qkv", &qkv, dtype)?;
    let mask = Tensor::from_u32(ctx, &[s.batch, s.seq], &vec![1; s.batch * s.seq], "mask")?;
    let out = Tensor::empty(ctx, &[s.batch, s.seq, c], dtype, "out")?;
    let run = |timed: bool| {
        kernel_run(ctx, timed, |rec| {
            kernels::attention(rec, &gqkv, &mask, s.heads, &out)
        })
    };
    let (timings, first_run_ms) = time_kernel(ctx, options, run)?;
    let one = HostTensor::new(&[1, s.seq, 3 * c], qkv.data[..s.seq * 3 * c].to_vec())?;
    let mut cpu = HostTensor::zeros(&[1, s.seq, c]);
    reference::attention(
        &one,
        &HostTensor::new(&[1, s.seq], vec![1u32; s.seq])?,
        s.heads,
        &mut cpu,
    )?;
    let got = out.read_f32_blocking(ctx)?;
    let rtol = if dtype == DType::F16 { 2e-3 } else { 1e-4 };
    let check = compare(&[(&got[..s.seq * c], &cpu.data[..])], 1e-5, rtol, got.len());
    let flops = 4.0 * (s.batch * s.heads * s.seq * s.seq * s.head_dim) as f64;
    let mut r = record(
        ctx,
        "attention",
        label,
        &timings,
        first_run_ms,
        flops,
        check,
        options,
    );
    r.dtype = dtype.name().0.into();
    // qkv read and the merged heads written once, and the mask.
    let tokens = (s.batch * s.seq) as f64;
    let c = (s.heads * s.head_dim) as f64;
    r.set_floor(4.0 * tokens * c * super::roofline::element_bytes(dtype) + 4.0 * tokens);
    r.variant = kernels::attention_variant(ctx, s.head_dim, dtype == DType::F16);
    Ok(r)
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
/// recording) in each dtype (f16: qkv and out stored as f16); checks the first image against
/// the CPU twin on the same (rounded) inputs.
pub fn cswin_attention_suite(
    ctx: &Context,
    shapes: &[CswinAttentionShape],
    options: &BenchOptions,
    sink: &mut dyn Sink,
) -> Result<()> {
    let config = CswinConfig::preset("cswin-t-224")?;
    for (n, s) in shapes.iter().enumerate() {
        for &dtype in &options.dtypes {
            sink.progress(&format!(
                "cswin_attention T stage{} b{} {} ({}/{})",
                s.stage,
                s.batch,
                dtype.name(),
                n + 1,
                shapes.len()
            ));
            let shape = format!("T stage{} b{}", s.stage, s.batch);
            measure(ctx, sink, ("cswin_attn", shape, dtype), || {
                cswin_attention_one(ctx, &config, s, n, dtype, options)
            });
        }
    }
    Ok(())
}

fn cswin_attention_one(
    ctx: &Context,
    config: &CswinConfig,
    s: &CswinAttentionShape,
    n: usize,
    dtype: DType,
    options: &BenchOptions,
) -> Result<Record> {
    let stage = s.stage.clamp(1, 4) - 1;
    let geometry = Geometry::new(config, &[s.batch, 3, 224, 224])?;
    let branches = geometry.branches(config, stage, config.branches(stage));
    let (h, w) = geometry.stages[stage];
    let label = format!(
        "T stage{} {}x{}x{} b{}",
        stage + 1,
        h,
        w,
        config.dim(stage),
        s.batch
    );
    let (c, tokens) = (config.dim(stage), h * w);
    let mut rng = StdRng::seed_from_u64(n as u64 + 99);
    let qkv = HostTensor::new(
        &[s.batch, tokens, 3 * c],
        random(&mut rng, s.batch * tokens * 3 * c),
    )?
    .round_to(dtype);
    let gqkv = crate::models::weights::upload_as(ctx, "qkv", &qkv, dtype)?;
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
    let out = Tensor::empty(ctx, &[s.batch, tokens, c], dtype, "out")?;
    let run = |timed: bool| {
        kernel_run(ctx, timed, |rec| {
            for (b, (lw, lb)) in branches.iter().zip(&glepe) {
                kernels::cswin_attention(rec, &gqkv, lw, lb, b, &out)?;
            }
            Ok(())
        })
    };
    let (timings, first_run_ms) = time_kernel(ctx, options, run)?;
    let one = HostTensor::new(&[1, tokens, 3 * c], qkv.data[..tokens * 3 * c].to_vec())?;
    let mut cpu = HostTensor::zeros(&[1, tokens, c]);
    for (b, (lw, lb)) in branches.iter().zip(&lepe) {
        reference::cswin_attention(&one, lw, lb, b, &mut cpu)?;
    }
    let got = out.read_f32_blocking(ctx)?;
    let rtol = if dtype == DType::F16 { 2e-3 } else { 1e-4 };
    let check = compare(
        &[(&got[..tokens * c], &cpu.data[..])],
        1e-5,
        rtol,
        got.len(),
    );
    let flops: f64 = branches
        .iter()
        .map(|b| {
            2.0 * (s.batch * tokens * b.channels) as f64
                * (2.0 * (b.window.0 * b.window.1) as f64 + 9.0)
        })
        .sum();
    let mut r = record(
        ctx,
        "cswin_attn",
        label,
        &timings,
        first_run_ms,
        flops,
        check,
        options,
    );
    r.dtype = dtype.name().0.into();
    // Each branch reads its q, k, v channels and writes its output channels once.
    let moved: usize = branches
        .iter()
        .map(|b| 4 * s.batch * tokens * b.channels)
        .sum();
    r.set_floor(moved as f64 * super::roofline::element_bytes(dtype));
    r.variant = kernels::attention_variant(ctx, branches[0].head_dim(), dtype == DType::F16);
    Ok(r)
}
