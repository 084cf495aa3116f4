//! `backbone-bench cpu`: the fast CPU path beside PyTorch on the same cores. MiniLM-L6 and
//! MPNet-base (real weights where `BACKBONE_MINILM_DIR` / `BACKBONE_MPNET_DIR` name their
//! folders, else seeded random weights of the real sizes) at each `BxT`, timed in process;
//! the peer script (`scripts/peer_cpu.py`) runs the same config in transformers with the
//! same thread count, and the table gives the ratio.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::text::{self, TextConfig, TextInput, TextWeights};
use crate::models::weights::Weights;

/// One model of the suite: its name, config, weights and the folder the peer loads (a real
/// model folder, or a folder holding only the config for random weights).
struct Model {
    name: &'static str,
    config: TextConfig,
    weights: TextWeights<HostTensor>,
    folder: PathBuf,
    real: bool,
}

/// One row: a model at one shape, ours and the peer's median milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuRecord {
    pub model: String,
    pub shape: String,
    pub threads: usize,
    pub weights: &'static str,
    pub backbone_ms: f64,
    pub torch_ms: Option<f64>,
    pub ratio: Option<f64>,
}

/// MPNet-base as all-mpnet-base-v2 is.
const MPNET_BASE: &str = r#"{"model_type": "mpnet", "vocab_size": 30527, "hidden_size": 768,
 "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
 "hidden_act": "gelu", "max_position_embeddings": 514, "layer_norm_eps": 1e-5,
 "relative_attention_num_buckets": 32, "pad_token_id": 1, "type_vocab_size": 1}"#;

/// all-MiniLM-L6-v2 as it is.
const MINILM_L6: &str = r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
 "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
 "hidden_act": "gelu", "max_position_embeddings": 512, "layer_norm_eps": 1e-12,
 "type_vocab_size": 2, "pad_token_id": 0}"#;

fn model(name: &'static str, env: &str, config_json: &str, scratch: &Path) -> Result<Model> {
    if let Some(dir) = std::env::var_os(env).map(PathBuf::from) {
        let (config, weights) = text::load_dir(&dir)?;
        return Ok(Model {
            name,
            config,
            weights,
            folder: dir,
            real: true,
        });
    }
    let config = TextConfig::from_json(config_json)?;
    let weights = TextWeights::from_weights(&config, Weights::random(7, |_| false))?;
    let folder = scratch.join(name);
    std::fs::create_dir_all(&folder).map_err(|e| Error::Io {
        path: folder.display().to_string(),
        source: e,
    })?;
    crate::io::write_atomic(&folder.join("config.json"), config_json.as_bytes())?;
    Ok(Model {
        name,
        config,
        weights,
        folder,
        real: false,
    })
}

/// Milliseconds of one fast forward of `[b, t]` (median of `iters` after one warm-up).
fn time_ours(m: &Model, (b, t): (usize, usize), iters: usize) -> Result<f64> {
    let ids = (0..b * t)
        .map(|i| (1000 + (i * 7919) % 20000) as u32)
        .collect();
    let input = TextInput::new(b, t, ids, None, None)?;
    let run = || text::forward_fast(&m.config, &m.weights, &input, false, crate::DType::F32);
    run()?;
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The peer's milliseconds per shape for `m`, from `python3 peer` (None, with a warning,
/// when it cannot run: no Python or no torch).
fn time_torch(
    peer: &Path,
    m: &Model,
    shapes: &[(usize, usize)],
    threads: usize,
    iters: usize,
) -> Vec<Option<f64>> {
    let list = shapes
        .iter()
        .map(|(b, t)| format!("{b}x{t}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = std::process::Command::new("python3")
        .arg(peer)
        .arg("--model")
        .arg(&m.folder)
        .args([
            "--shapes",
            &list,
            "--threads",
            &threads.to_string(),
            "--iters",
            &iters.to_string(),
        ])
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            eprintln!(
                "peer {}: {}",
                peer.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return vec![None; shapes.len()];
        }
        Err(e) => {
            eprintln!("peer {}: {e}", peer.display());
            return vec![None; shapes.len()];
        }
    };
    let values: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    shapes
        .iter()
        .map(|(b, t)| {
            let shape = format!("{b}x{t}");
            values
                .iter()
                .find(|v| v["shape"] == shape.as_str())
                .and_then(|v| v["ms"].as_f64())
        })
        .collect()
}

/// Runs the suite and prints each row as it is measured; `peer` is the peer script (None:
/// ours only).
pub fn cpu_suite(
    shapes: &[(usize, usize)],
    iters: usize,
    peer: Option<&Path>,
) -> Result<Vec<CpuRecord>> {
    let threads = crate::cpu::threads();
    let scratch = std::env::temp_dir().join(format!("backbone-bench-cpu-{}", std::process::id()));
    println!("fast CPU path, {threads} threads (BACKBONE_CPU_THREADS); PyTorch with the same");
    println!(
        "| model | shape | weights | backbone ms | torch ms | ratio |\n|---|---|---|---|---|---|"
    );
    let mut records = Vec::new();
    for (name, env, json) in [
        ("minilm-l6", "BACKBONE_MINILM_DIR", MINILM_L6),
        ("mpnet-base", "BACKBONE_MPNET_DIR", MPNET_BASE),
    ] {
        let m = model(name, env, json, &scratch)?;
        let torch = match peer {
            Some(peer) => time_torch(peer, &m, shapes, threads, iters),
            None => vec![None; shapes.len()],
        };
        for (&shape, torch_ms) in shapes.iter().zip(torch) {
            let ours = time_ours(&m, shape, iters)?;
            let record = CpuRecord {
                model: m.name.into(),
                shape: format!("{}x{}", shape.0, shape.1),
                threads,
                weights: if m.real { "real" } else { "random" },
                backbone_ms: ours,
                torch_ms,
                ratio: torch_ms.map(|t| ours / t),
            };
            println!(
                "| {} | {} | {} | {:.1} | {} | {} |",
                record.model,
                record.shape,
                record.weights,
                ours,
                torch_ms.map_or("-".into(), |t| format!("{t:.1}")),
                record.ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            );
            records.push(record);
        }
    }
    std::fs::remove_dir_all(&scratch).ok();
    Ok(records)
}
