//! `backbone-bench`: times kernels (and, later, whole models) on any adapter.
//!
//! ```text
//! backbone-bench                      # default suite, sized for the adapter found
//! backbone-bench matmul --sizes 1024,4096,128x1536x384 --json out.json
//! backbone-bench soak --forwards 10000   # memory soak, GPU and CPU
//! backbone-bench serve-load --model DIR --requests 2000 --clients 16   # HTTP load test
//! backbone-bench tune --dtype f32,f16 --tune-out tune.json   # then BACKBONE_TUNE=tune.json
//! backbone-bench --list-adapters
//! ```

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use backbone::bench::serve_load;
use backbone::bench::soak::{self, SoakDevice};
use backbone::bench::tune;
use backbone::bench::{
    self, AttentionShape, BenchOptions, BertShape, CswinAttentionShape, CswinShape, MatmulSize,
    Sink as _,
};
use backbone::{Context, ContextOptions, DType, ShaderChecks};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// Y = X·Wᵀ in f32, square sizes and the BERT projection shapes.
    Matmul,
    /// The fused BERT attention kernel at BERT-base / MiniLM shapes.
    Attention,
    /// CSWin-T's cross-shaped window attention with LePE, per stage at 224.
    CswinAttention,
    /// Whole BERT-base / MiniLM forwards with random weights of the real sizes.
    Bert,
    /// Whole CSWin-T/S/B forwards with random weights of the real sizes.
    Cswin,
    /// Times every matmul tile on the products of the --bert and --cswin shapes (not in the
    /// default set) and writes the fastest per product to --tune-out, for BACKBONE_TUNE.
    Tune,
    /// Memory soak (not in the default set): --forwards small BERT forwards on the GPU and
    /// the CPU path; fails unless memory and live GPU objects stay flat after warm-up.
    Soak,
    /// Load test of `backbone serve` (not in the default set): starts the server on
    /// 127.0.0.1 with --model, sends --requests requests from --clients concurrent clients,
    /// prints throughput, p50/p99 latency and the mean batch size; fails unless every answer
    /// matches the CPU reference and the server's memory stays flat.
    ServeLoad,
    /// The fast CPU path beside PyTorch (not in the default set, needs no GPU): MiniLM-L6 and
    /// MPNet-base at each --cpu-shapes, the peer (--peer, python3 with torch and
    /// transformers) on the same thread count, and the ratio.
    Cpu,
}

#[derive(Debug, Parser)]
#[command(
    name = "backbone-bench",
    version,
    about = "Benchmark backbone's kernels on a GPU adapter"
)]
struct Args {
    /// Suites to run (default: all).
    suites: Vec<Suite>,
    /// Matmul sizes, comma-separated: N for N³ or MxNxK (default: a short list for the adapter).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<String>,
    /// Attention shapes, comma-separated: BxHxTxD (default: sized for the adapter).
    #[arg(long, value_delimiter = ',')]
    attention: Vec<String>,
    /// BERT shapes, comma-separated: base:BxT or minilm:BxT (default: sized for the adapter).
    #[arg(long, value_delimiter = ',')]
    bert: Vec<String>,
    /// CSWin shapes, comma-separated: t|s|b|l:B (224) or t|s|b|l:BxS (default: sized for the adapter).
    #[arg(long, value_delimiter = ',')]
    cswin: Vec<String>,
    /// Print the GPU time of each kernel in a model forward.
    #[arg(long)]
    breakdown: bool,
    /// Untimed runs before measuring (default 3; 1 on software adapters).
    #[arg(long)]
    warmup: Option<usize>,
    /// Timed runs per measurement, the median is reported (default 10; 3 on software adapters).
    #[arg(long)]
    iters: Option<usize>,
    /// The card's f32 peak in TFLOP/s, for "% of peak" (known cards are filled in).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Also write each record to this file as soon as it is measured, one JSON object per
    /// line (JSON Lines; `serve-load` appends its report as one more line).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also print a Markdown table (for BENCHMARKS.md).
    #[arg(long)]
    markdown: bool,
    /// Storage types for the matmul and bert suites, comma-separated: f32, f16 (f16 needs
    /// SHADER_F16).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    dtype: Vec<String>,
    /// wgpu's runtime checks in the kernels (index clamping, loop bounding): on or off
    /// (default: BACKBONE_SHADER_CHECKS, else on).
    #[arg(long, value_parser = ["on", "off"])]
    shader_checks: Option<String>,
    /// Opt in to wgpu's experimental cooperative matrices (tensor cores) for f16 products.
    #[arg(long)]
    experimental_cooperative_matrix: bool,
    /// Where `tune` writes its table (JSON, atomically).
    #[arg(long, default_value = "tune.json")]
    tune_out: PathBuf,
    /// Forwards per device for the soak.
    #[arg(long, default_value_t = 10_000)]
    forwards: usize,
    /// The model folder `serve-load` serves.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Requests `serve-load` sends.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients of `serve-load` (each a thread with a keep-alive connection).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Texts in each `serve-load` request.
    #[arg(long, default_value_t = 1)]
    texts_per_request: usize,
    /// More `backbone serve` arguments for `serve-load`, e.g. --serve-arg=--dtype
    /// --serve-arg=f16 (the storage type is read from them for the reference).
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// Shapes of the `cpu` suite, comma-separated BxT.
    #[arg(long, value_delimiter = ',', default_value = "1x128,8x128,32x128")]
    cpu_shapes: Vec<String>,
    /// The PyTorch peer of the `cpu` suite ("none": ours only).
    #[arg(long, default_value = "scripts/peer_cpu.py")]
    peer: String,
    /// List the adapters (BACKBONE_ADAPTER takes an index or a name) and exit.
    #[arg(long)]
    list_adapters: bool,
}

fn main() -> Result<()> {
    env_logger::init();
    let args = Args::parse();
    if args.list_adapters {
        for (i, info) in backbone::context::list_adapters().iter().enumerate() {
            println!(
                "{i}: {} ({:?}, {:?}, driver {} {})",
                info.name, info.backend, info.device_type, info.driver, info.driver_info
            );
        }
        return Ok(());
    }
    if args.suites.contains(&Suite::Cpu) {
        if args.suites.len() > 1 {
            bail!("the cpu suite runs alone (it needs no GPU): backbone-bench cpu");
        }
        return cpu_suite(&args);
    }
    let mut context_options = ContextOptions::from_env()?;
    if let Some(checks) = &args.shader_checks {
        context_options.shader_checks = ShaderChecks::parse(checks)?;
    }
    if args.experimental_cooperative_matrix {
        // SAFETY: the user asked for wgpu's experimental cooperative matrices on the command
        // line; f16 products then run on tensor cores where the adapter has them.
        context_options = unsafe { context_options.enable_experimental_cooperative_matrix() };
    }
    let ctx = pollster::block_on(Context::new(context_options))?;
    let caps = ctx.capabilities();
    println!("adapter: {caps}");
    for (_, why) in ctx.disabled_families() {
        println!("warning: {why}");
    }
    println!(
        "clock: {}; commit {}",
        if caps.timestamps() {
            "GPU timestamp queries (wall time beside)"
        } else {
            "wall time only (no TIMESTAMP_QUERY)"
        },
        bench::COMMIT
    );
    let software = caps.is_software();
    let options = BenchOptions {
        warmup: args.warmup.unwrap_or(if software { 1 } else { 3 }),
        iters: args.iters.unwrap_or(if software { 3 } else { 10 }),
        peak_tflops: args.peak_tflops,
        dtypes: args
            .dtype
            .iter()
            .map(|d| match d.as_str() {
                "f32" => Ok(DType::F32),
                "f16" => Ok(DType::F16),
                other => bail!("--dtype {other:?}: expected f32 or f16"),
            })
            .collect::<Result<_>>()?,
        breakdown: args.breakdown,
    };
    let suites = if args.suites.is_empty() {
        vec![
            Suite::Matmul,
            Suite::Attention,
            Suite::CswinAttention,
            Suite::Bert,
            Suite::Cswin,
        ]
    } else {
        args.suites.clone()
    };

    let mut sink = StreamSink::new(args.json.as_deref())?;
    for suite in suites {
        match suite {
            Suite::Matmul => {
                let sizes = given_or(
                    &args.sizes,
                    || MatmulSize::defaults(&ctx),
                    MatmulSize::parse,
                )?;
                bench::matmul_suite(&ctx, &sizes, &options, &mut sink);
            }
            Suite::Attention => {
                let shapes = given_or(
                    &args.attention,
                    || AttentionShape::defaults(&ctx),
                    AttentionShape::parse,
                )?;
                bench::attention_suite(&ctx, &shapes, &options, &mut sink);
            }
            Suite::CswinAttention => {
                let shapes = CswinAttentionShape::defaults(&ctx);
                bench::cswin_attention_suite(&ctx, &shapes, &options, &mut sink)?;
            }
            Suite::Bert => {
                let shapes = given_or(&args.bert, || BertShape::defaults(&ctx), BertShape::parse)?;
                bench::bert_suite(&ctx, &shapes, &options, &mut sink);
            }
            Suite::Cswin => {
                let shapes = given_or(
                    &args.cswin,
                    || CswinShape::defaults(&ctx),
                    CswinShape::parse,
                )?;
                bench::cswin_suite(&ctx, &shapes, &options, &mut sink);
            }
            Suite::Tune => {
                let bert_shapes =
                    given_or(&args.bert, || BertShape::defaults(&ctx), BertShape::parse)?;
                let cswin_shapes = given_or(
                    &args.cswin,
                    || CswinShape::defaults(&ctx),
                    CswinShape::parse,
                )?;
                let mut problems = tune::bert_problems(&bert_shapes);
                problems.extend(tune::cswin_problems(&cswin_shapes)?);
                let table = tune::tune(&ctx, &problems, &options, |m| sink.progress(m))?;
                sink.end_progress();
                print!("{}", tune::tune_report(&ctx, &table));
                backbone::io::write_atomic(&args.tune_out, &serde_json::to_vec_pretty(&table)?)?;
                println!(
                    "tune table ({} products) written to {}; use it with BACKBONE_TUNE={}",
                    table.matmul.len(),
                    args.tune_out.display(),
                    args.tune_out.display()
                );
            }
            Suite::Soak => {
                for device in [SoakDevice::Gpu, SoakDevice::Cpu] {
                    let warmup = (args.forwards / 10).max(12);
                    let report = soak::soak(Some(&ctx), device, args.forwards, warmup)?;
                    println!("{}", report.summary());
                    if !report.is_flat() {
                        bail!("the {} soak grew: {report:?}", report.device);
                    }
                }
            }
            Suite::Cpu => bail!("the cpu suite runs alone: backbone-bench cpu"),
            Suite::ServeLoad => {
                let Some(model) = args.model.clone() else {
                    bail!("serve-load needs --model DIR");
                };
                let f16 = args.serve_arg.iter().enumerate().any(|(i, a)| {
                    a == "--dtype=f16"
                        || (a == "--dtype"
                            && args.serve_arg.get(i + 1).map(String::as_str) == Some("f16"))
                });
                let dtype = if f16 { DType::F16 } else { DType::F32 };
                let options = serve_load::LoadOptions {
                    server: std::env::current_exe()?.with_file_name("backbone"),
                    model,
                    server_args: args.serve_arg.clone(),
                    dtype,
                    requests: args.requests,
                    clients: args.clients,
                    texts_per_request: args.texts_per_request,
                    warmup: None,
                };
                let report = serve_load::load_test(&options)?;
                println!("{}", report.summary());
                sink.append_json(&report)?;
                if !report.passed() {
                    bail!("the load test FAILED: {report:?}");
                }
            }
        }
    }
    sink.end_progress();
    // Each record's row was printed as it was measured; the tables below add to them.
    let records = &sink.records;
    let traffic = bench::traffic_table(records);
    if !traffic.is_empty() {
        print!("\n{traffic}");
    }
    if args.breakdown {
        print!("\n{}", bench::breakdown_table(records));
    }
    if args.markdown {
        print!("\n{}", bench::markdown(records));
    }
    if let Some(e) = sink.json_error.take() {
        return Err(e);
    }
    let failed = records.iter().filter(|r| !r.passed()).count();
    if failed > 0 {
        bail!("{failed} measurement(s) FAILED (an error, or the check against the CPU twin)");
    }
    Ok(())
}

/// Prints each record as soon as it is measured and appends it, as one JSON line, to the
/// `--json` file (flushed per line: a run killed half-way keeps every finished record).
struct StreamSink {
    json: Option<(PathBuf, std::fs::File)>,
    /// The first failed JSON write (reported at the end; measuring goes on).
    json_error: Option<anyhow::Error>,
    records: Vec<bench::Record>,
    /// Whether stderr is a terminal (progress redrawn in place) or a log (one line each).
    terminal: bool,
    progress_shown: bool,
}

impl StreamSink {
    fn new(json: Option<&std::path::Path>) -> Result<Self> {
        let json = match json {
            Some(path) => Some((
                path.to_path_buf(),
                std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?,
            )),
            None => None,
        };
        Ok(Self {
            json,
            json_error: None,
            records: Vec::new(),
            terminal: std::io::stderr().is_terminal(),
            progress_shown: false,
        })
    }

    fn end_progress(&mut self) {
        if self.terminal && self.progress_shown {
            eprint!("\r\x1b[2K");
        }
        self.progress_shown = false;
    }

    /// One JSON line appended to the `--json` file, if any.
    fn append_json(&mut self, value: &impl serde::Serialize) -> Result<()> {
        let Some((path, file)) = &mut self.json else {
            return Ok(());
        };
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.flush())
            .with_context(|| format!("appending to {}", path.display()))
    }
}

impl bench::Sink for StreamSink {
    fn progress(&mut self, what: &str) {
        if self.terminal {
            eprint!("\r\x1b[2K  running {what}");
        } else {
            eprintln!("running {what}");
        }
        std::io::stderr().flush().ok();
        self.progress_shown = true;
    }

    fn record(&mut self, record: bench::Record) {
        self.end_progress();
        if self.records.is_empty() {
            print!("{}", bench::table_header());
        }
        print!("{}", bench::table_row(&record));
        std::io::stdout().flush().ok();
        if let Err(e) = self.append_json(&record) {
            eprintln!("{e:#}");
            self.json_error.get_or_insert(e);
        }
        self.records.push(record);
    }
}

/// The shapes given on the command line, parsed, or the adapter's defaults when none are.
fn given_or<T, E>(
    given: &[String],
    defaults: impl FnOnce() -> Vec<T>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, E> {
    if given.is_empty() {
        Ok(defaults())
    } else {
        given.iter().map(|s| parse(s)).collect()
    }
}

/// `backbone-bench cpu`: the fast CPU path beside PyTorch; the rows go to --json too.
fn cpu_suite(args: &Args) -> Result<()> {
    let shapes = args
        .cpu_shapes
        .iter()
        .map(|s| {
            let parsed = s
                .split_once('x')
                .and_then(|(b, t)| Some((b.parse().ok()?, t.parse().ok()?)));
            match parsed {
                Some((b, t)) if b > 0 && t > 0 && t <= 512 => Ok((b, t)),
                _ => bail!("--cpu-shapes {s:?}: BxT with 1 <= T <= 512"),
            }
        })
        .collect::<Result<Vec<(usize, usize)>>>()?;
    let peer = (args.peer != "none").then(|| PathBuf::from(&args.peer));
    let records = bench::cpu::cpu_suite(&shapes, args.iters.unwrap_or(3), peer.as_deref())?;
    if let Some(path) = &args.json {
        let lines: String = records
            .iter()
            .map(|r| serde_json::to_string(r).map(|l| l + "\n"))
            .collect::<Result<_, _>>()?;
        backbone::io::write_atomic(path, lines.as_bytes())?;
    }
    Ok(())
}
