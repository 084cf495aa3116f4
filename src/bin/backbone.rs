//! `backbone`: run a model folder on safetensors input, or embed text.
//!
//! ```text
//! backbone run --model DIR --input IN.safetensors --output OUT.safetensors [--device gpu|cpu]
//! backbone embed --model DIR [--max-length N] TEXT...
//! backbone classify --model DIR IMAGE...
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use backbone::models::bert::{self, Bert, BertInput, BertOutput};
use backbone::models::cswin::{self, Cswin, CswinOutput};
use backbone::models::image;
use backbone::models::tokenizer::{DEFAULT_MAX_LENGTH, TextTokenizer};
use backbone::models::weights::read_file;
use backbone::reference::HostTensor;
use backbone::{Context, ContextOptions};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(version, about = "Transformer backbones on any GPU through wgpu")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Device {
    /// The best wgpu adapter (BACKBONE_BACKEND / BACKBONE_ADAPTER override).
    Gpu,
    /// The CPU reference path (slow, f64 accumulation).
    Cpu,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a model on tensors from a safetensors file and writes its outputs to another.
    ///
    /// BERT (model_type "bert"): IN holds input_ids, attention_mask and optionally
    /// token_type_ids ([B, T], I64 or I32); OUT gets last_hidden_state, pooler_output (when the
    /// checkpoint has a pooler) and sentence_embedding, all F32.
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
        #[arg(long, value_enum, default_value = "gpu")]
        device: Device,
    },
    /// Prints one JSON array of sentence embeddings (one per text) on stdout.
    Embed {
        /// Model folder: config.json, model.safetensors and tokenizer.json.
        #[arg(long)]
        model: PathBuf,
        /// Longer texts are truncated to this many tokens (special tokens included).
        #[arg(long, default_value_t = DEFAULT_MAX_LENGTH)]
        max_length: usize,
        #[arg(long, value_enum, default_value = "gpu")]
        device: Device,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Classifies images with a CSWin model folder and prints the top-5 classes of each
    /// (labels from config.json's id2label or a labels.txt beside it).
    Classify {
        /// Model folder: config.json and model.safetensors.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, value_enum, default_value = "gpu")]
        device: Device,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

fn main() -> Result<()> {
    env_logger::init();
    match Cli::parse().command {
        Command::Run {
            model,
            input,
            output,
            device,
        } => {
            let model_type = model_type(&model)?;
            match model_type.as_str() {
                "bert" => {
                    let input = BertInput::from_safetensors(&read_file(&input)?)
                        .with_context(|| format!("reading {}", input.display()))?;
                    let out = run_bert(&model, &input, device)?;
                    std::fs::write(&output, out.to_safetensors()?)
                        .with_context(|| format!("writing {}", output.display()))?;
                }
                "cswin" => {
                    let pixels = cswin::pixel_values_from_safetensors(&read_file(&input)?)
                        .with_context(|| format!("reading {}", input.display()))?;
                    let out = run_cswin(&model, &pixels, device)?;
                    std::fs::write(&output, out.to_safetensors()?)
                        .with_context(|| format!("writing {}", output.display()))?;
                }
                other => bail!(
                    "{}: model_type {other:?} is not supported (bert, cswin)",
                    model.display()
                ),
            }
        }
        Command::Embed {
            model,
            max_length,
            device,
            texts,
        } => {
            let tokenizer = TextTokenizer::from_dir(&model, max_length)?;
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            let input = tokenizer.encode(&texts)?;
            let out = run_bert(&model, &input, device)?;
            let c = out.sentence_embedding.shape[1];
            let rows: Vec<&[f32]> = out.sentence_embedding.data.chunks(c).collect();
            println!("{}", serde_json::to_string(&rows)?);
        }
        Command::Classify {
            model,
            device,
            images,
        } => classify(&model, device, &images)?,
    }
    Ok(())
}

fn classify(dir: &Path, device: Device, paths: &[PathBuf]) -> Result<()> {
    let size = cswin::load_dir(dir)?.0.img_size;
    let pixels = paths
        .iter()
        .map(|p| {
            let img = image::decode(&read_file(p)?, &p.display().to_string())?;
            image::imagenet_preprocess(&img, size)
        })
        .collect::<backbone::Result<Vec<_>>>()?;
    let out = run_cswin(dir, &image::stack(&pixels)?, device)?;
    let labels = labels(dir)?;
    let classes = out.logits.shape[1];
    for (path, logits) in paths.iter().zip(out.logits.data.chunks(classes)) {
        println!("{}:", path.display());
        for (k, p) in cswin::top_k(logits, 5) {
            let label = labels.get(k).map_or("", String::as_str);
            println!("  {:>6.2}%  {k:>5}  {label}", 100.0 * p);
        }
    }
    Ok(())
}

/// Class names from config.json's `id2label`, else `labels.txt` (one per line), else none.
fn labels(dir: &Path) -> Result<Vec<String>> {
    let json: serde_json::Value = serde_json::from_slice(&read_file(&dir.join("config.json"))?)?;
    let labels = cswin::id2label(&json);
    if !labels.is_empty() {
        return Ok(labels);
    }
    match std::fs::read_to_string(dir.join("labels.txt")) {
        Ok(text) => Ok(text.lines().map(str::to_string).collect()),
        Err(_) => Ok(Vec::new()),
    }
}

fn run_cswin(dir: &Path, pixels: &HostTensor, device: Device) -> Result<CswinOutput> {
    let (config, weights) = cswin::load_dir(dir)?;
    Ok(match device {
        Device::Cpu => cswin::forward_cpu(&config, &weights, pixels, false)?,
        Device::Gpu => {
            let ctx = pollster::block_on(Context::new(ContextOptions::from_env()?))?;
            Cswin::new(&ctx, config, &weights)?.forward_blocking(&ctx, pixels, false)?
        }
    })
}

/// `model_type` from a model folder's config.json.
fn model_type(dir: &Path) -> Result<String> {
    let path = dir.join("config.json");
    let json: serde_json::Value = serde_json::from_slice(&read_file(&path)?)
        .with_context(|| format!("parsing {}", path.display()))?;
    match json.get("model_type").and_then(|v| v.as_str()) {
        Some(t) => Ok(t.to_string()),
        None => bail!("{}: no model_type", path.display()),
    }
}

fn run_bert(dir: &Path, input: &BertInput, device: Device) -> Result<BertOutput> {
    let (config, weights) = bert::load_dir(dir)?;
    Ok(match device {
        Device::Cpu => bert::forward_cpu(&config, &weights, input, false)?,
        Device::Gpu => {
            let ctx = pollster::block_on(Context::new(ContextOptions::from_env()?))?;
            Bert::new(&ctx, config, &weights)?.forward_blocking(&ctx, input, false)?
        }
    })
}
