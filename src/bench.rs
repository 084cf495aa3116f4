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
            // Squares, then BERT-base at batch 32 x seq 128: QKV, FFN up, FFN down.
            vec![
                s(1024, 1024, 1024),
                s(2048, 2048, 2048),
                s(4096, 4096, 4096),
                s(4096, 2304, 768),
                s(4096, 3072, 768),
                s(4096, 768, 3072),
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

    let run = |timed: bool| -> Result<(f64, Option<f64>)> {
        let mut rec = if timed {
            Recorder::with_timing(ctx, 1)
        } else {
            Recorder::new(ctx)
        };
        kernels::matmul(&mut rec, &x, &w, &y, Epilogue::none())?;
        let start = Instant::now();
        let times = rec.submit_blocking()?;
        Ok((
            start.elapsed().as_secs_f64() * 1e3,
            times.first().map(|t| t.ms),
        ))
    };
    ctx.poll_wait()?; // uploads done before the cold run
    let first_run_ms = {
        let start = Instant::now();
        run(false)?;
        start.elapsed().as_secs_f64() * 1e3
    };
    for _ in 0..options.warmup {
        run(false)?;
    }
    let mut wall = Vec::new();
    let mut gpu = Vec::new();
    for _ in 0..options.iters.max(1) {
        let (w_ms, g_ms) = run(true)?;
        wall.push(w_ms);
        gpu.extend(g_ms);
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
        commit: COMMIT.into(),
    }
}

/// A plain-text table of records.
pub fn table(records: &[Record]) -> String {
    let mut out = format!(
        "{:<10} {:<18} {:>5} {:>10} {:>21} {:>10} {:>10} {:>10} {:>7}  {}\n",
        "suite",
        "shape",
        "dtype",
        "gpu ms",
        "(min-max)",
        "wall ms",
        "first ms",
        "GFLOP/s",
        "% peak",
        "check"
    );
    for r in records {
        out += &format!(
            "{:<10} {:<18} {:>5} {:>10.4} {:>21} {:>10.3} {:>10.1} {:>10.1} {:>7}  {} (max err {:.1e}, {}/{} values)\n",
            r.suite,
            r.shape,
            r.dtype,
            r.gpu_ms.median,
            format!("({:.4}-{:.4})", r.gpu_ms.min, r.gpu_ms.max),
            r.wall_ms.median,
            r.first_run_ms,
            r.gflops,
            r.pct_of_peak.map_or("-".into(), |p| format!("{p:.1}")),
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
        "| suite | shape | dtype | GPU ms (median) | min-max | wall ms | GFLOP/s | % peak | check |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in records {
        out += &format!(
            "| {} | {} | {} | {:.4} | {:.4}-{:.4} | {:.3} | {:.1} | {} | {} |\n",
            r.suite,
            r.shape,
            r.dtype,
            r.gpu_ms.median,
            r.gpu_ms.min,
            r.gpu_ms.max,
            r.wall_ms.median,
            r.gflops,
            r.pct_of_peak.map_or("-".into(), |p| format!("{p:.1}")),
            if r.check.passed { "PASS" } else { "FAIL" },
        );
    }
    out
}
