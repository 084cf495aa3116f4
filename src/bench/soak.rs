//! Memory soak: thousands of small forwards through one model and one context, cycling over
//! more input shapes than the plan cache keeps, so plans are made, reused and evicted. After a
//! warm-up, resident memory and the device's live buffer and bind-group counts must stay flat,
//! and every output must equal the first output for its input (bit for bit).
//! `backbone-bench soak` runs the long version; the test suite a short one.

use std::time::Instant;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::text::{self, Encoder, TextConfig, TextInput, TextWeights};

/// Where the forwards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoakDevice {
    Gpu,
    Cpu,
}

/// What a soak measured. Memory in KiB (resident set, from /proc/self/statm).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    pub device: &'static str,
    pub forwards: usize,
    pub warmup: usize,
    pub seconds: f64,
    pub rss_after_warmup_kib: u64,
    pub rss_max_after_warmup_kib: u64,
    pub rss_end_kib: u64,
    /// Live device buffers: the most seen during the warm-up, and after it.
    pub buffers_max_warmup: u64,
    pub buffers_max_after: u64,
    pub bind_groups_max_warmup: u64,
    pub bind_groups_max_after: u64,
    pub cached_plans: usize,
}

impl SoakReport {
    /// Growth allowed in resident memory after the warm-up (allocator noise).
    pub const RSS_SLACK_KIB: u64 = 64 << 10;

    /// Flat: no more live GPU objects after the warm-up than during it, and resident memory
    /// within [`Self::RSS_SLACK_KIB`] of its post-warm-up level.
    pub fn is_flat(&self) -> bool {
        self.buffers_max_after <= self.buffers_max_warmup
            && self.bind_groups_max_after <= self.bind_groups_max_warmup
            && self.rss_max_after_warmup_kib <= self.rss_after_warmup_kib + Self::RSS_SLACK_KIB
    }

    pub fn summary(&self) -> String {
        format!(
            "soak {}: {} forwards in {:.1} s ({:.1} ms each); resident memory after {} warm-up \
             forwards {:.1} MiB, at most {:.1} MiB after, {:.1} MiB at the end; live buffers at \
             most {} during warm-up, {} after; bind groups {} / {}; {} plans cached: {}",
            self.device,
            self.forwards,
            self.seconds,
            1e3 * self.seconds / self.forwards.max(1) as f64,
            self.warmup,
            self.rss_after_warmup_kib as f64 / 1024.0,
            self.rss_max_after_warmup_kib as f64 / 1024.0,
            self.rss_end_kib as f64 / 1024.0,
            self.buffers_max_warmup,
            self.buffers_max_after,
            self.bind_groups_max_warmup,
            self.bind_groups_max_after,
            self.cached_plans,
            if self.is_flat() { "FLAT" } else { "GROWING" }
        )
    }
}

/// Resident set size of this process in KiB (0 where /proc is absent).
pub fn resident_kib() -> u64 {
    statm_resident_kib("/proc/self/statm")
}

/// The resident set in KiB from a `/proc/PID/statm` file (0 where it cannot be read).
pub(crate) fn statm_resident_kib(path: &str) -> u64 {
    let statm = std::fs::read_to_string(path).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// A small BERT (4 layers, 64 wide) and six inputs of different shapes: more shapes than
/// [`crate::models::MAX_IDLE_PLANS`], so the plan cache evicts while the soak runs.
pub fn soak_model() -> Result<(TextConfig, TextWeights<HostTensor>, Vec<TextInput>)> {
    let config = TextConfig::from_json(
        r#"{"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 4,
            "num_attention_heads": 4, "intermediate_size": 256, "max_position_embeddings": 64}"#,
    )?;
    let weights = super::random_bert_weights(&config, 7)?;
    let inputs = [(1, 8), (2, 16), (1, 5), (3, 9), (2, 31), (4, 12)]
        .iter()
        .map(|&(batch, seq)| {
            let n = batch * seq;
            let ids = (0..n).map(|i| ((i * 37 + 11) % 1000) as u32).collect();
            let mask = (0..n)
                .map(|i| u32::from(i % seq < seq - i / seq % 3))
                .collect();
            TextInput::new(batch, seq, ids, Some(mask), None)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((config, weights, inputs))
}

/// Runs `forwards` forwards (the first `warmup` of them unmeasured) and reports.
pub fn soak(
    ctx: Option<&Context>,
    device: SoakDevice,
    forwards: usize,
    warmup: usize,
) -> Result<SoakReport> {
    let (config, weights, inputs) = soak_model()?;
    let model = match device {
        SoakDevice::Gpu => {
            let ctx = ctx.ok_or_else(|| Error::Argument {
                op: "soak",
                arg: "ctx",
                reason: "a GPU soak needs a context".into(),
            })?;
            Some((ctx, Encoder::new(ctx, config.clone(), &weights)?))
        }
        SoakDevice::Cpu => None,
    };
    let counts = || {
        model
            .as_ref()
            .map(|(ctx, _)| ctx.resource_counts())
            .unwrap_or_default()
    };
    let mut first: Vec<Option<HostTensor>> = vec![None; inputs.len()];
    let (mut buffers, mut bind_groups) = ([0u64; 2], [0u64; 2]);
    let (mut rss_warm, mut rss_max) = (0, 0);
    let start = Instant::now();
    for i in 0..forwards {
        let k = i % inputs.len();
        let hidden = match &model {
            Some((ctx, bert)) => bert.forward_blocking(ctx, &inputs[k], false),
            None => text::forward_cpu(&config, &weights, &inputs[k], false),
        }?
        .last_hidden_state;
        match &first[k] {
            None => first[k] = Some(hidden),
            Some(want) if *want != hidden => {
                return Err(Error::Argument {
                    op: "soak",
                    arg: "forward",
                    reason: format!("forward {i} (input {k}) differs from the first run"),
                });
            }
            Some(_) => {}
        }
        let phase = usize::from(i >= warmup);
        let c = counts();
        buffers[phase] = buffers[phase].max(c.buffers);
        bind_groups[phase] = bind_groups[phase].max(c.bind_groups);
        if i + 1 == warmup {
            rss_warm = resident_kib();
        } else if i >= warmup && (i % 64 == 0 || i + 1 == forwards) {
            rss_max = rss_max.max(resident_kib());
        }
    }
    Ok(SoakReport {
        device: match device {
            SoakDevice::Gpu => "gpu",
            SoakDevice::Cpu => "cpu",
        },
        forwards,
        warmup,
        seconds: start.elapsed().as_secs_f64(),
        rss_after_warmup_kib: rss_warm,
        rss_max_after_warmup_kib: rss_max,
        rss_end_kib: resident_kib(),
        buffers_max_warmup: buffers[0],
        buffers_max_after: buffers[1],
        bind_groups_max_warmup: bind_groups[0],
        bind_groups_max_after: bind_groups[1],
        cached_plans: model.as_ref().map_or(0, |(_, m)| m.cached_plans()),
    })
}
