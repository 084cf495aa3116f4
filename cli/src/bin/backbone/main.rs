//! `backbone`: run a model folder on safetensors input, or embed text.
//!
//! ```text
//! backbone run --model DIR --input IN.safetensors --output OUT.safetensors [--device auto|gpu|cpu|reference] [--dtype f32|f16]
//! backbone embed --model DIR [--max-length N] [--prompt-name NAME | --prompt TEXT] [--dtype f32|f16] (TEXT... | --texts-file FILE)
//! backbone rerank --model DIR --query Q [--raw] [--max-length N] [--dtype f32|f16] DOC...
//! backbone classify --model DIR [--dtype f32|f16] IMAGE...
//! backbone convert --checkpoint FILE.pth --output DIR
//! backbone serve --model DIR [--host 127.0.0.1] [--port 8080] [--dtype f32|f16] [--max-batch-tokens N] ...
//! ```

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use backbone::encoder::{EncoderOptions, ImageEncoder, TextEncoder};
use backbone::models::cswin::{self, CswinConfig};
use backbone::models::text::{self, TextInput};
use backbone::reference::HostTensor;
use backbone::{DType, io, limits};
use clap::{Parser, Subcommand, ValueEnum};

mod stream;
use stream::Texts;

#[derive(Debug, Parser)]
#[command(
    name = "backbone",
    version,
    about = "Transformer backbones on any GPU through wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// wgpu's runtime checks in the GPU kernels (index clamping, loop bounding): on (the
    /// default) or off (faster; every kernel guards its own indices). Same as
    /// BACKBONE_SHADER_CHECKS.
    #[arg(long, global = true, value_enum)]
    shader_checks: Option<OnOff>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// Storage type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dtype {
    /// f32 throughout.
    F32,
    /// f16 weights and activations, f32 accumulation (GPU: needs SHADER_F16; CPU: the twin of
    /// such a run).
    F16,
}

impl Dtype {
    fn dtype(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    /// BACKBONE_DEVICE when set; else the GPU when the best adapter is a hardware one, the
    /// fast CPU path when there is none or only a software one (said once).
    Auto,
    /// The best wgpu adapter (BACKBONE_BACKEND / BACKBONE_ADAPTER override), software ones
    /// included.
    Gpu,
    /// The CPU: SIMD, multi-threaded products (BACKBONE_CPU_THREADS caps the threads).
    Cpu,
    /// The CPU reference path: the kernels' twins (exact, f64 sums, slow), for checking.
    Reference,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a model on tensors from a safetensors file and writes its outputs to another.
    ///
    /// Text encoders (model_type bert, roberta, xlm-roberta, camembert, electra, distilbert,
    /// mpnet, modernbert):
    /// IN holds input_ids, attention_mask and optionally token_type_ids ([B, T], I64 or I32);
    /// OUT gets last_hidden_state, pooler_output (when the checkpoint has a pooler) and
    /// sentence_embedding, all F32.
    ///
    /// CSWin (model_type "cswin"): IN holds pixel_values [B, 3, H, W] F32; OUT gets stem,
    /// stage1..stage4 ([B, H_s*W_s, C_s], token-major), pooled and logits, all F32.
    Run {
        /// Model folder: config.json and model.safetensors.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        /// CSWin: the config from a preset (cswin-t-224, cswin-s-224, cswin-b-224, cswin-l-224,
        /// cswin-b-384, cswin-l-384) instead of the folder's config.json (a checkpoint does not
        /// record its heads and split sizes).
        #[arg(long)]
        variant: Option<String>,
        /// CSWin: require the segmentation backbone's features1..4 (an error for a
        /// classification checkpoint, which has no norm1..norm4).
        #[arg(long)]
        features: bool,
    },
    /// Prints one JSON array of sentence embeddings (one per text) on stdout.
    ///
    /// A sentence-transformers folder (modules.json) is followed: its pooling modes, Dense
    /// modules, Normalize, max_seq_length, do_lower_case and prompts. A plain Hugging Face
    /// folder gets mean pooling and L2 normalisation.
    Embed {
        /// Model folder: config.json, model.safetensors and tokenizer.json.
        #[arg(long)]
        model: PathBuf,
        /// Longer texts are truncated to this many tokens (special tokens included); default:
        /// the folder's max_seq_length (sentence_bert_config.json), else the tokenizer's
        /// model_max_length, else the model's positions.
        #[arg(long)]
        max_length: Option<usize>,
        /// A prompt of the folder's config_sentence_transformers.json to prepend (e.g. query).
        #[arg(long, conflicts_with = "prompt")]
        prompt_name: Option<String>,
        /// A prompt to prepend to every text.
        #[arg(long)]
        prompt: Option<String>,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        /// A file of texts, one per line (`-`: standard input), read and embedded a batch at
        /// a time; instead of TEXT arguments.
        #[arg(long, conflicts_with = "texts")]
        texts_file: Option<PathBuf>,
        #[arg(required_unless_present = "texts_file")]
        texts: Vec<String>,
    },
    /// Scores documents against a query with a cross-encoder folder (a
    /// …ForSequenceClassification checkpoint) and prints one JSON array of scores, one per
    /// document, as sentence_transformers.CrossEncoder.predict gives them: the sigmoid of the
    /// logit for one label (--raw: the logit), the logits for several.
    Rerank {
        /// Model folder: config.json, model.safetensors (with its classifier) and tokenizer.json.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        query: String,
        /// Print logits instead of sigmoid scores.
        #[arg(long)]
        raw: bool,
        /// Pairs longer than this are truncated, longest first; default as `embed` (and as
        /// `/rerank` and CrossEncoder.predict): the tokenizer's model_max_length for most
        /// cross-encoders.
        #[arg(long)]
        max_length: Option<usize>,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        #[arg(required = true)]
        documents: Vec<String>,
    },
    /// Serves a text model over HTTP as a drop-in for text-embeddings-inference: its routes
    /// (/embed, /embed_all, /similarity, /rerank, /predict, /tokenize, /decode, /info,
    /// /health, /metrics, POST / and /invocations) and OpenAI's /v1/embeddings, with dynamic
    /// batching. Prints `listening on http://ADDR` once ready; SIGINT/SIGTERM answer what is
    /// in flight and exit 0 within --graceful-timeout.
    Serve {
        /// Model folder (Hugging Face or sentence-transformers; a cross-encoder serves /rerank).
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// 0 picks a free port (printed on start).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        /// The model name /info and /v1/embeddings answer with (default: the folder's name).
        #[arg(long)]
        served_model_name: Option<String>,
        /// Most tokens (padded) in one batched forward; larger requests are split across
        /// batches. Must be at least the model's input length unless --auto-truncate.
        #[arg(long, default_value_t = 16384)]
        max_batch_tokens: usize,
        /// Most inputs in one request (422 past it, as text-embeddings-inference answers).
        #[arg(long, default_value_t = 32)]
        max_client_batch_size: usize,
        /// Requests handled at once (429 past it).
        #[arg(long, default_value_t = 512)]
        max_concurrent_requests: usize,
        /// Largest request body in bytes (413 past it).
        #[arg(long, default_value_t = 2_000_000)]
        payload_limit: usize,
        /// Threads that tokenize requests (default: one per core but one, 1 to 64).
        #[arg(long)]
        tokenization_workers: Option<usize>,
        /// Truncate inputs longer than the model takes when a request does not say
        /// (`truncate`); without it they get 422, as in text-embeddings-inference.
        #[arg(long)]
        auto_truncate: bool,
        /// Require `Authorization: Bearer KEY` on every route but /health, /ping, GET / and
        /// /metrics (401 otherwise); also read from BACKBONE_API_KEY, which keeps it out of
        /// the process list.
        #[arg(long)]
        api_key: Option<String>,
        /// Origins CORS allows (repeat or comma-separate; default: any).
        #[arg(long, value_delimiter = ',')]
        cors_allow_origin: Vec<String>,
        /// Seconds a connection may take to send a request head, and then its body.
        #[arg(long, default_value_t = 30.0)]
        read_timeout: f64,
        /// Seconds in-flight requests get after SIGINT/SIGTERM before the server exits.
        #[arg(long, default_value_t = 30.0)]
        graceful_timeout: f64,
    },
    /// Converts a PyTorch checkpoint (.pth / .pt as torch.save writes it: the official CSWin
    /// and mmseg checkpoints) into a safetensors model folder: OUTPUT/model.safetensors with
    /// every floating-point tensor of its state dict as f32, and the config.json (and
    /// labels.txt) beside the checkpoint when there is one. Nothing in the checkpoint is run.
    Convert {
        #[arg(long)]
        checkpoint: PathBuf,
        /// The folder to write (created if missing).
        #[arg(long)]
        output: PathBuf,
    },
    /// Classifies images with a CSWin model folder and prints the top-5 classes of each
    /// (labels from config.json's id2label or a labels.txt beside it).
    Classify {
        /// Model folder: config.json and model.safetensors.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_enum, default_value = "auto")]
        device: Device,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    // The library's own warnings show by default (an output written in place, say); RUST_LOG
    // sets anything else.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("backbone=warn"))
        .init();
    ignore_file_size_signal();
    let cli = Cli::parse();
    if let Some(checks) = cli.shader_checks {
        let value = if checks == OnOff::On { "on" } else { "off" };
        // SAFETY: set first thing in main, before any thread exists; every GPU context of
        // this process reads it through ContextOptions::from_env.
        unsafe { std::env::set_var("BACKBONE_SHADER_CHECKS", value) };
    }
    match cli.command {
        Command::Run {
            model,
            input,
            output,
            device,
            dtype,
            variant,
            features,
        } => {
            let cswin = CswinChoice { variant, features };
            run(&model, &input, &output, device, dtype.dtype(), &cswin)?
        }
        Command::Embed {
            model,
            max_length,
            prompt_name,
            prompt,
            device,
            dtype,
            texts_file,
            texts,
        } => {
            let prompt = Prompt {
                name: prompt_name,
                text: prompt,
            };
            let texts = match texts_file {
                Some(path) => Texts::file(&path)?,
                None => Texts::Args(texts.into_iter()),
            };
            stream::embed(&model, max_length, &prompt, device, dtype.dtype(), texts)?
        }
        Command::Rerank {
            model,
            query,
            raw,
            max_length,
            device,
            dtype,
            documents,
        } => rerank(
            &model,
            &query,
            &documents,
            raw,
            max_length,
            device,
            dtype.dtype(),
        )?,
        Command::Classify {
            model,
            device,
            dtype,
            images,
        } => stream::classify(&model, device, dtype.dtype(), &images)?,
        Command::Convert { checkpoint, output } => convert(&checkpoint, &output)?,
        Command::Serve {
            model,
            host,
            port,
            device,
            dtype,
            served_model_name,
            max_batch_tokens,
            max_client_batch_size,
            max_concurrent_requests,
            payload_limit,
            tokenization_workers,
            auto_truncate,
            api_key,
            cors_allow_origin,
            read_timeout,
            graceful_timeout,
        } => {
            let options = backbone::server::ServeOptions {
                model,
                host,
                port,
                dtype: dtype.dtype(),
                device: device.device(),
                served_model_name,
                max_batch_tokens,
                max_client_batch_size,
                max_concurrent_requests,
                payload_limit,
                tokenization_workers: tokenization_workers
                    .unwrap_or_else(backbone::server::default_tokenization_workers),
                auto_truncate,
                api_key: api_key
                    .or_else(|| std::env::var("BACKBONE_API_KEY").ok())
                    .filter(|k| !k.is_empty())
                    .map(backbone::server::ApiKey),
                cors_allow_origin: (!cors_allow_origin.is_empty()).then_some(cors_allow_origin),
                read_timeout: seconds("--read-timeout", read_timeout)?,
                graceful_timeout: seconds("--graceful-timeout", graceful_timeout)?,
            };
            backbone::server::serve(options, |addr| {
                println!("listening on http://{addr}");
                std::io::stdout().flush().ok();
            })?;
        }
    }
    Ok(())
}

/// `--prompt-name` or `--prompt`.
struct Prompt {
    name: Option<String>,
    text: Option<String>,
}

impl Device {
    fn device(self) -> backbone::encoder::Device {
        match self {
            Device::Auto => backbone::encoder::Device::Auto,
            Device::Gpu => backbone::encoder::Device::Gpu,
            Device::Cpu => backbone::encoder::Device::Cpu,
            Device::Reference => backbone::encoder::Device::Reference,
        }
    }
}

fn options(device: Device, dtype: DType, max_length: Option<usize>) -> EncoderOptions {
    EncoderOptions::default()
        .device(device.device())
        .dtype(dtype)
        .max_length(max_length)
}

/// `rerank`: (query, document) pairs through a cross-encoder's [`TextEncoder`], truncated
/// at the length it decided (as `/rerank` and `CrossEncoder.predict` truncate).
fn rerank(
    model: &Path,
    query: &str,
    documents: &[String],
    raw: bool,
    max_length: Option<usize>,
    device: Device,
    dtype: DType,
) -> Result<()> {
    let encoder = TextEncoder::open(model, &options(device, dtype, max_length))?;
    let docs: Vec<&str> = documents.iter().map(String::as_str).collect();
    let logits = encoder.encode_pairs_blocking(query, &docs)?;
    check_finite("logits", &logits)?;
    let labels = logits.shape[1];
    let scores: Vec<serde_json::Value> = logits
        .data
        .chunks(labels)
        .map(|row| match (labels, raw) {
            (1, false) => serde_json::json!(text::cross_encoder_score(row[0])),
            (1, true) => serde_json::json!(row[0]),
            _ => serde_json::json!(row),
        })
        .collect();
    println!("{}", serde_json::to_string(&scores)?);
    Ok(())
}

/// `run`: everything the user gave is checked (input file, output path, model config, input
/// against the config) before the weights are read; the output is written atomically.
/// `run`'s CSWin options.
struct CswinChoice {
    variant: Option<String>,
    features: bool,
}

fn run(
    model: &Path,
    input: &Path,
    output: &Path,
    device: Device,
    dtype: DType,
    choice: &CswinChoice,
) -> Result<()> {
    if io::same_file(input, output) {
        bail!(
            "--output {} is the --input file: refusing to overwrite the input",
            output.display()
        );
    }
    io::check_writable(output).context("--output")?;
    let model_type = match &choice.variant {
        Some(_) => "cswin".to_string(),
        None => model_type(model)?,
    };
    let bytes = io::read_safetensors(input)?;
    let reading = || format!("reading {}", input.display());
    let text = text::MODEL_TYPES.iter().any(|(t, _)| *t == model_type);
    let result = match model_type.as_str() {
        _ if text => {
            let input = TextInput::from_safetensors(&bytes).with_context(reading)?;
            let config = text::load_config(model)?;
            input.validate(&config).with_context(reading)?;
            let mut options = options(device, dtype, None);
            options.require_tokenizer = false;
            let want = backbone::encoder::Want {
                last_hidden_state: true,
                hidden_states: false,
            };
            let out = TextEncoder::open(model, &options)?.forward_blocking(&input, want)?;
            check_finite("last_hidden_state", &out.last_hidden_state)?;
            out.to_safetensors()?
        }
        "cswin" => {
            let pixels = cswin::pixel_values_from_safetensors(&bytes).with_context(reading)?;
            let config = match &choice.variant {
                Some(v) => CswinConfig::preset(v)?,
                None => cswin::load_config(model)?,
            };
            cswin::check_input(&config, &pixels).with_context(reading)?;
            let mut options = options(device, dtype, None);
            options.variant = choice.variant.clone();
            let out = ImageEncoder::open(model, &options)?.forward_blocking(&pixels, false)?;
            if choice.features {
                out.features()?;
            }
            if let Some(logits) = &out.logits {
                check_finite("logits", logits)?;
            }
            for (s, f) in out.features.iter().enumerate() {
                check_finite(&format!("features{}", s + 1), f)?;
            }
            out.to_safetensors()?
        }
        other => {
            let mut known: Vec<&str> = text::MODEL_TYPES.iter().map(|(t, _)| *t).collect();
            known.push("cswin");
            bail!(
                "{}: model_type {other:?} is not supported ({})",
                model.display(),
                known.join(", ")
            )
        }
    };
    io::write_atomic(output, &result)?;
    Ok(())
}

/// `convert`: the checkpoint's tensors as model.safetensors, with the config (and labels)
/// beside the checkpoint copied. A new output folder is made under a temporary name and renamed
/// into place only once every file is written, so a failed conversion leaves no half-made
/// folder; into an existing folder each file is written atomically.
fn convert(checkpoint: &Path, output: &Path) -> Result<()> {
    let bytes = io::read_regular(checkpoint, limits::MAX_STREAM_BYTES)?;
    let safetensors =
        backbone::models::pth::pth_to_safetensors(&bytes, &checkpoint.display().to_string())?;
    drop(bytes);
    let from = checkpoint.parent().unwrap_or(Path::new("."));
    let mut files = vec![("model.safetensors", safetensors)];
    for name in ["config.json", "labels.txt"] {
        if from.join(name).is_file() && !io::same_file(from, output) {
            files.push((
                name,
                io::read_bounded(&from.join(name), limits::MAX_CONFIG_BYTES)?,
            ));
        }
    }
    if output.is_dir() {
        for (name, bytes) in &files {
            io::write_atomic(&output.join(name), bytes)?;
        }
        return Ok(());
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".convert.{}.tmp", std::process::id()));
    let written = (|| -> Result<()> {
        std::fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
        for (name, bytes) in &files {
            io::write_atomic(&staging.join(name), bytes)?;
        }
        std::fs::rename(&staging, output)
            .with_context(|| format!("moving the converted folder to {}", output.display()))
    })();
    if written.is_err() {
        std::fs::remove_dir_all(&staging).ok();
    }
    written
}

/// A model output with NaN or infinity is an error, not a result (finite inputs and weights
/// can still overflow).
fn check_finite(name: &str, t: &HostTensor) -> Result<()> {
    if let Some((i, v)) = t.first_non_finite() {
        bail!("the model produced {v} in `{name}` at flat index {i}: no output written");
    }
    Ok(())
}

/// Past a file-size limit (`ulimit -f`) the kernel sends SIGXFSZ, which kills the process
/// mid-write; ignored, the write fails with EFBIG and the atomic write cleans up.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_slice(&io::read_bounded(path, limits::MAX_CONFIG_BYTES)?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// `model_type` from a model folder's config.json.
fn model_type(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    match read_json(&path)?.get("model_type").and_then(|v| v.as_str()) {
        Some(t) => Ok(t.to_string()),
        None => bail!("{}: no model_type", path.display()),
    }
}

/// A positive, finite number of seconds (up to a day).
fn seconds(name: &str, value: f64) -> anyhow::Result<std::time::Duration> {
    if !(value > 0.0 && value <= 86_400.0) {
        anyhow::bail!("{name} must be a number of seconds above 0 and at most 86400, not {value}");
    }
    Ok(std::time::Duration::from_secs_f64(value))
}
