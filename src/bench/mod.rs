//! Benchmark suites, shared by the `backbone-bench` binary and `cargo bench`.
//!
//! Each measurement: one cold run (pipeline compilation and first dispatch, wall clock),
//! warm-up runs, then timed runs reported as median and min–max. GPU time comes from
//! timestamp queries around the kernel's pass when the adapter has them; wall time (submit
//! to completion) is always reported beside it. Every result is checked against the CPU
//! twin (on sampled rows for large outputs).

use std::time::Instant;

use rand::{Rng, rngs::StdRng};
use serde::Serialize;

use crate::context::Context;
use crate::error::Result;
use crate::recorder::Timing;
use crate::recorder::{PassTime, Recorder};

pub mod cpu;
mod kernels;
mod models;
mod report;
pub mod roofline;
pub mod serve_load;
pub mod soak;
pub mod tune;

pub use kernels::{
    AttentionShape, CswinAttentionShape, MatmulSize, attention_suite, cswin_attention_suite,
    matmul_suite,
};
pub use models::{
    BertShape, BertSize, CswinShape, bert_suite, cswin_suite, random_bert_weights,
    random_cswin_weights,
};
pub use report::{breakdown_table, markdown, table, table_header, table_row, traffic_table};
pub use roofline::{Peak, known_peak};

/// The commit this binary was built from (`-dirty` when the tree had changes).
pub const COMMIT: &str = crate::COMMIT;

/// How many runs to make, and the card's peak for "% of peak".
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub warmup: usize,
    pub iters: usize,
    /// Peak f32 throughput in TFLOP/s; `None` uses [`known_peak_tflops`].
    pub peak_tflops: Option<f64>,
    /// Storage types to measure the matmul and bert suites in (f16 rows need SHADER_F16).
    pub dtypes: Vec<crate::DType>,
    /// Also time each kernel of a model forward in a pass of its own (the breakdown).
    pub breakdown: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            warmup: 3,
            iters: 10,
            peak_tflops: None,
            dtypes: vec![crate::DType::F32],
            breakdown: false,
        }
    }
}

/// f32 FMA peak of cards we know ([`roofline::KNOWN`]), by adapter-name substring.
pub fn known_peak_tflops(adapter_name: &str) -> Option<f64> {
    known_peak(adapter_name).map(|p| p.f32_tflops)
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
    /// Which kernel variant ran: the matmul tile (and whether a tune table chose it), "fused"
    /// for the attention kernels, the storage type for models.
    pub variant: String,
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
    /// The least bytes the work must move (inputs read and outputs written once; for a model,
    /// the sum of its kernels' compulsory traffic).
    pub min_bytes: f64,
    /// The roofline floor on this adapter: max(FLOPs / peak FLOP/s, min_bytes / bandwidth),
    /// for adapters in [`roofline::KNOWN`]; `None` elsewhere (software adapters included).
    pub floor_ms: Option<f64>,
    /// 100 x floor / measured GPU time.
    pub pct_of_floor: Option<f64>,
    pub check: Check,
    /// Sequences (or images) per second, for model suites.
    pub items_per_s: Option<f64>,
    /// GPU ms per kernel over one forward (summed by kernel), for model suites.
    pub breakdown: Vec<(String, f64)>,
    /// Dispatches and compulsory bytes of one forward, for model suites.
    pub traffic: Option<ForwardTraffic>,
    /// CPU time to record and submit one forward without waiting for the GPU, for model
    /// suites: what the host costs per forward, whatever the adapter.
    pub host_ms: Option<Stats>,
    /// Whether the shader modules kept wgpu's runtime checks (index clamping, loop bounding).
    pub shader_checks: bool,
    /// Why the measurement failed (then `check.passed` is false and the timings are NaN).
    pub error: Option<String>,
    pub commit: String,
}

impl Record {
    /// A FAIL record for a measurement that could not be made, carrying the error's text.
    pub fn failed(
        ctx: &Context,
        suite: &str,
        shape: String,
        dtype: crate::DType,
        error: String,
    ) -> Self {
        let nan = Stats::of(&[]);
        let timings = Timings {
            gpu_ms: nan,
            wall: Vec::new(),
            clock: Clock::Wall,
            breakdown: Vec::new(),
            host_ms: None,
        };
        let check = Check {
            passed: false,
            max_abs_err: f64::NAN,
            compared: 0,
            total: 0,
        };
        let mut r = record(
            ctx,
            suite,
            shape,
            &timings,
            f64::NAN,
            f64::NAN,
            check,
            &BenchOptions::default(),
        );
        r.dtype = dtype.name().0.into();
        r.variant = "-".into();
        r.error = Some(error);
        r
    }

    /// Passed its check and carries no error.
    pub fn passed(&self) -> bool {
        self.check.passed && self.error.is_none()
    }
}

/// Where measurements go as soon as each is made: `backbone-bench` prints it and appends it
/// to its JSON Lines file (so a run killed half-way keeps what it measured), `cargo bench`
/// collects them.
pub trait Sink {
    /// What is about to be measured.
    fn progress(&mut self, _what: &str) {}
    /// One finished measurement (a FAIL record when it could not be made).
    fn record(&mut self, record: Record);
}

impl Sink for Vec<Record> {
    fn record(&mut self, record: Record) {
        self.push(record);
    }
}

/// Runs one measurement and hands its record to `sink`; an error, or a panic, becomes a FAIL
/// record carrying its message, and the suite goes on.
pub(super) fn measure(
    ctx: &Context,
    sink: &mut dyn Sink,
    (suite, shape, dtype): (&str, String, crate::DType),
    f: impl FnOnce() -> Result<Record>,
) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let record = match outcome {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Record::failed(ctx, suite, shape, dtype, e.to_string()),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic without a message");
            Record::failed(ctx, suite, shape, dtype, format!("panicked: {what}"))
        }
    };
    sink.record(record);
}

/// What one model forward dispatches and moves ([`crate::Traffic`] summed over its passes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ForwardTraffic {
    pub dispatches: usize,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

impl ForwardTraffic {
    pub fn of(passes: &[crate::PassStat]) -> Self {
        Self {
            dispatches: passes.len(),
            bytes_read: passes.iter().map(|p| p.traffic.read).sum(),
            bytes_written: passes.iter().map(|p| p.traffic.written).sum(),
        }
    }
}

pub(super) fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    ctx: &Context,
    suite: &str,
    shape: String,
    timings: &Timings,
    first_run_ms: f64,
    flops: f64,
    check: Check,
    options: &BenchOptions,
) -> Record {
    let (gpu_ms, clock) = (timings.gpu_ms, timings.clock);
    let info = &ctx.capabilities().adapter;
    let gflops = flops / (gpu_ms.median * 1e-3) / 1e9;
    let peak = options
        .peak_tflops
        .or_else(|| known_peak_tflops(&info.name));
    Record {
        suite: suite.into(),
        shape,
        dtype: "f32".into(),
        variant: "default".into(),
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        clock,
        gpu_ms,
        wall_ms: Stats::of(&timings.wall),
        first_run_ms,
        flops,
        gflops,
        pct_of_peak: peak.map(|p| 100.0 * gflops / (p * 1e3)),
        min_bytes: 0.0,
        floor_ms: None,
        pct_of_floor: None,
        check,
        items_per_s: None,
        breakdown: timings.breakdown.clone(),
        traffic: None,
        host_ms: timings.host_ms,
        shader_checks: ctx.shader_checks(),
        error: None,
        commit: COMMIT.into(),
    }
}

/// What [`time_forwards`] measured.
pub(super) struct Timings {
    gpu_ms: Stats,
    wall: Vec<f64>,
    clock: Clock,
    /// Mean GPU ms per kernel over one forward, largest first.
    breakdown: Vec<(String, f64)>,
    /// CPU ms to record and submit one forward (model suites).
    host_ms: Option<Stats>,
}

/// Warm-up, then timed forwards: the GPU span of each (timestamps around its passes), and,
/// with `options.breakdown`, as many more with each kernel timed in a pass of its own (the
/// per-kernel breakdown; those passes cost extra, so they never count in `gpu_ms`). Then
/// `host_ms`: the CPU time of `enqueue` (write the inputs, encode and submit one forward,
/// without waiting), the GPU drained between runs.
pub(super) fn time_forwards(
    ctx: &Context,
    options: &BenchOptions,
    forward: impl Fn(&Context, Timing) -> Result<Vec<PassTime>>,
    enqueue: impl Fn(&Context) -> Result<()>,
) -> Result<Timings> {
    for _ in 0..options.warmup {
        forward(ctx, Timing::Span)?;
    }
    let (mut wall, mut gpu) = (Vec::new(), Vec::new());
    for _ in 0..options.iters.max(1) {
        let start = Instant::now();
        let times = forward(ctx, Timing::Span)?;
        wall.push(start.elapsed().as_secs_f64() * 1e3);
        if !times.is_empty() {
            gpu.push(PassTime::span_ms(&times));
        }
    }
    let mut breakdown: Vec<(String, f64)> = Vec::new();
    if options.breakdown {
        for _ in 0..options.iters.max(1) {
            for t in forward(ctx, Timing::PerDispatch)? {
                match breakdown.iter_mut().find(|(k, _)| k == t.label) {
                    Some((_, ms)) => *ms += t.ms,
                    None => breakdown.push((t.label.to_string(), t.ms)),
                }
            }
        }
        let runs = options.iters.max(1) as f64;
        breakdown.iter_mut().for_each(|(_, ms)| *ms /= runs);
        breakdown.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    let mut host = Vec::new();
    for _ in 0..options.iters.max(1) {
        ctx.poll_wait()?;
        let start = Instant::now();
        enqueue(ctx)?;
        host.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ctx.poll_wait()?;
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
        host_ms: Some(Stats::of(&host)),
    })
}

/// Compares (GPU, CPU) slices with |g - c| <= atol + rtol |c|.
pub(super) fn compare(pairs: &[(&[f32], &[f32])], atol: f64, rtol: f64, total: usize) -> Check {
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

/// Records `f` into a fresh recorder (timed: one timestamp pair per pass) and submits it;
/// returns (wall ms, GPU ms over all passes if timed).
pub(super) fn kernel_run(
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
pub(super) fn time_kernel(
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
            host_ms: None,
        },
        first_run_ms,
    ))
}

/// Every suite with its default shapes for this adapter (what `backbone-bench` and
/// `cargo bench` run without arguments), each record handed to `sink` as it is made.
pub fn default_suites(ctx: &Context, options: &BenchOptions, sink: &mut dyn Sink) -> Result<()> {
    matmul_suite(ctx, &MatmulSize::defaults(ctx), options, sink);
    attention_suite(ctx, &AttentionShape::defaults(ctx), options, sink);
    cswin_attention_suite(ctx, &CswinAttentionShape::defaults(ctx), options, sink)?;
    bert_suite(ctx, &BertShape::defaults(ctx), options, sink);
    cswin_suite(ctx, &CswinShape::defaults(ctx), options, sink);
    Ok(())
}
