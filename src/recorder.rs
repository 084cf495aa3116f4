//! The [`Recorder`]: encodes dispatches of cached pipelines into one command encoder inside
//! wgpu error scopes, with per-pass traffic and optional timestamps; split from `pipeline.rs`
//! (compile-and-cache) as the layer above it.

use std::future::Future;
use std::pin::Pin;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{Kernel, Spec};

/// One dispatch: which kernel, its specialisation, uniforms, buffers in binding order, grid,
/// and the memory traffic it must do.
pub(crate) struct Dispatch<'b> {
    pub kernel: Kernel,
    pub spec: Spec,
    pub params: &'b [u8],
    pub buffers: &'b [&'b wgpu::Buffer],
    pub groups: [u32; 3],
    pub traffic: Traffic,
}

/// The compulsory memory traffic of a dispatch: the bytes its kernel must read and write if
/// every element it needs is read once (re-reads from tiling and caches not counted). Summed
/// over a forward, it shows what a fusion saves on any adapter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Traffic {
    pub read: u64,
    pub written: u64,
}

impl Traffic {
    /// Every element of `inputs` read, every element of `output` written.
    pub(crate) fn whole(inputs: &[&crate::tensor::Tensor], output: &crate::tensor::Tensor) -> Self {
        let bytes = |t: &crate::tensor::Tensor| (t.numel() * t.dtype().size()) as u64;
        Self {
            read: inputs.iter().map(|t| bytes(t)).sum(),
            written: bytes(output),
        }
    }

    /// `read` and `written` f32 (or u32) elements.
    pub(crate) fn elements(read: usize, written: usize) -> Self {
        Self {
            read: 4 * read as u64,
            written: 4 * written as u64,
        }
    }
}

/// One recorded dispatch, for counting passes and bytes per forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassStat {
    pub kernel: &'static str,
    pub traffic: Traffic,
}

/// GPU time of one recorded pass.
#[derive(Debug, Clone)]
pub struct PassTime {
    pub label: &'static str,
    /// Start of the pass, in ms after the start of the first timed pass.
    pub start_ms: f64,
    /// Duration of the pass.
    pub ms: f64,
}

impl PassTime {
    /// GPU time from the start of the first pass to the end of the last (gaps included).
    pub fn span_ms(times: &[PassTime]) -> f64 {
        times.iter().map(|t| t.start_ms + t.ms).fold(0.0, f64::max)
    }
}

struct Timer {
    queries: wgpu::QuerySet,
    capacity: u32,
    labels: Vec<&'static str>,
}

/// The pending verdict of one pair of error scopes.
type ScopeResult = Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

/// Runs `f` inside validation and out-of-memory error scopes, popped right after it (so
/// scopes never interleave between recorders); returns `f`'s value and the verdicts.
fn scoped<R>(device: &wgpu::Device, f: impl FnOnce() -> R) -> (R, [ScopeResult; 2]) {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let value = f();
    let oom: ScopeResult = Box::pin(out_of_memory.pop());
    let invalid: ScopeResult = Box::pin(validation.pop());
    (value, [invalid, oom])
}

/// Records kernel dispatches into one command encoder; [`Recorder::submit`] sends them in one
/// submission and returns the first wgpu validation or out-of-memory error raised while
/// recording or submitting. Each dispatch is its own compute pass, so passes can be timed
/// one by one.
pub struct Recorder<'c> {
    ctx: &'c Context,
    encoder: wgpu::CommandEncoder,
    pending: Vec<ScopeResult>,
    timer: Option<Timer>,
    passes: Vec<PassStat>,
}

impl<'c> Recorder<'c> {
    pub fn new(ctx: &'c Context) -> Self {
        let encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("backbone.recorder"),
            });
        Self {
            ctx,
            encoder,
            pending: Vec::new(),
            timer: None,
            passes: Vec::new(),
        }
    }

    /// A recorder that writes GPU timestamps around each of its first `max_passes` passes
    /// (when the adapter has `TIMESTAMP_QUERY`; otherwise, and past that count, passes run
    /// untimed).
    pub fn with_timing(ctx: &'c Context, max_passes: u32) -> Self {
        let mut rec = Self::new(ctx);
        if ctx.capabilities().timestamps() && max_passes > 0 {
            let capacity = max_passes.min(wgpu::QUERY_SET_MAX_QUERIES / 2);
            let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("backbone.timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity * 2,
            });
            rec.timer = Some(Timer {
                queries,
                capacity,
                labels: Vec::new(),
            });
        }
        rec
    }

    pub fn context(&self) -> &'c Context {
        self.ctx
    }

    /// The dispatches recorded so far, in order, with their compulsory traffic.
    pub fn passes(&self) -> &[PassStat] {
        &self.passes
    }

    /// Encodes caller-provided commands (copies, clears, passes of the caller's own) into the
    /// same submission, under the same error reporting.
    pub fn encode_raw(&mut self, f: impl FnOnce(&wgpu::Device, &mut wgpu::CommandEncoder)) {
        let (device, encoder) = (&self.ctx.device, &mut self.encoder);
        let ((), verdicts) = scoped(device, || f(device, encoder));
        self.pending.extend(verdicts);
    }

    /// Records a copy of `t` into a new tensor (to keep an intermediate state that later
    /// dispatches overwrite).
    pub fn copy_of(
        &mut self,
        t: &crate::tensor::Tensor,
        label: &str,
    ) -> Result<crate::tensor::Tensor> {
        let copy = crate::tensor::Tensor::empty(self.ctx, t.shape(), t.dtype(), label)?;
        let size = t.buffer().size();
        self.encode_raw(|_, encoder| {
            encoder.copy_buffer_to_buffer(t.buffer(), 0, copy.buffer(), 0, size)
        });
        Ok(copy)
    }

    pub(crate) fn dispatch(&mut self, d: Dispatch<'_>) -> Result<()> {
        let ctx = self.ctx;
        let max = ctx.limits().max_compute_workgroups_per_dimension;
        if let Some(&n) = d.groups.iter().find(|&&n| n > max) {
            return Err(Error::Limit {
                what: format!("{} dispatch of {:?} workgroups", d.kernel.name(), d.groups),
                requested: n as u64,
                limit: max as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        // The output is the last binding; WebGPU forbids binding it as an input as well.
        if let Some((out, inputs)) = d.buffers.split_last()
            && inputs.iter().any(|b| b == out)
        {
            return Err(Error::Argument {
                op: d.kernel.name(),
                arg: "y",
                reason: "the output may not share its buffer with an input (no in-place ops)"
                    .into(),
            });
        }
        ctx.check_device()?;
        self.passes.push(PassStat {
            kernel: d.kernel.name(),
            traffic: d.traffic,
        });
        let (encoder, timer) = (&mut self.encoder, &mut self.timer);
        let (encoded, verdicts) = scoped(&ctx.device, || encode_pass(ctx, encoder, timer, &d));
        self.pending.extend(verdicts);
        encoded
    }

    /// Submits everything recorded, waits for wgpu's verdict on it, and (for a timed
    /// recorder) returns the GPU time of each timed pass.
    pub async fn submit(mut self) -> Result<Vec<PassTime>> {
        let ctx = self.ctx;
        ctx.check_device()?;
        let timer = self.timer.take().filter(|t| !t.labels.is_empty());
        let staging = timer.as_ref().map(|t| {
            let n = t.labels.len() as u32 * 2;
            let size = n as u64 * 8;
            let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("backbone.timestamps.resolve"),
                size,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("backbone.timestamps.read"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.encoder
                .resolve_query_set(&t.queries, 0..n, &resolve, 0);
            self.encoder
                .copy_buffer_to_buffer(&resolve, 0, &staging, 0, Some(size));
            staging
        });
        let Recorder {
            encoder,
            mut pending,
            ..
        } = self;
        let ((), verdicts) = scoped(&ctx.device, || {
            ctx.queue.submit([encoder.finish()]);
        });
        pending.extend(verdicts);
        for verdict in pending {
            if let Some(e) = verdict.await {
                return Err(Error::Gpu {
                    during: "recording and submitting kernels".into(),
                    message: e.to_string(),
                });
            }
        }

        let (Some(staging), Some(timer)) = (staging, timer) else {
            return Ok(Vec::new());
        };
        crate::tensor::map_read(ctx, &staging, "timestamps").await?;
        let ticks: Vec<u64> = {
            let view = staging.get_mapped_range(..).map_err(|e| Error::Readback {
                what: "timestamps".into(),
                message: e.to_string(),
            })?;
            bytemuck::pod_collect_to_vec(&view)
        };
        staging.unmap();
        let period = ctx.capabilities().timestamp_period_ns as f64;
        let origin = ticks.first().copied().unwrap_or(0);
        Ok(timer
            .labels
            .iter()
            .zip(ticks.chunks_exact(2))
            .map(|(&label, t)| PassTime {
                label,
                start_ms: t[0].saturating_sub(origin) as f64 * period * 1e-6,
                ms: t[1].saturating_sub(t[0]) as f64 * period * 1e-6,
            })
            .collect())
    }

    /// [`Recorder::submit`], blocking until the GPU has finished (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn submit_blocking(self) -> Result<Vec<PassTime>> {
        let ctx = self.ctx;
        let times = pollster::block_on(self.submit())?;
        ctx.poll_wait()?;
        Ok(times)
    }
}

/// Encodes one dispatch as its own compute pass (timed while the timer has room).
fn encode_pass(
    ctx: &Context,
    encoder: &mut wgpu::CommandEncoder,
    timer: &mut Option<Timer>,
    d: &Dispatch<'_>,
) -> Result<()> {
    let pipeline = ctx.pipelines.get(&ctx.device, d.kernel, &d.spec);
    let params = uniform_buffer(ctx, d.kernel.name(), d.params)?;
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: params.as_entire_binding(),
    }];
    for (i, buffer) in d.buffers.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: buffer.as_entire_binding(),
        });
    }
    let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(d.kernel.name()),
        layout: &pipeline.layout,
        entries: &entries,
    });
    let timestamp_writes = match timer {
        Some(t) if (t.labels.len() as u32) < t.capacity => {
            let i = t.labels.len() as u32;
            t.labels.push(d.kernel.name());
            Some(wgpu::ComputePassTimestampWrites {
                query_set: &t.queries,
                beginning_of_pass_write_index: Some(2 * i),
                end_of_pass_write_index: Some(2 * i + 1),
            })
        }
        _ => None,
    };
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(d.kernel.name()),
        timestamp_writes,
    });
    pass.set_pipeline(&pipeline.pipeline);
    pass.set_bind_group(0, &bind_group, &[]);
    let [x, y, z] = d.groups;
    if x > 0 && y > 0 && z > 0 {
        pass.dispatch_workgroups(x, y, z);
    }
    Ok(())
}

/// A uniform buffer holding `contents`. Unlike wgpu's `create_buffer_init`, which panics when
/// the buffer cannot be mapped (a lost device), this returns the error.
fn uniform_buffer(ctx: &Context, label: &str, contents: &[u8]) -> Result<wgpu::Buffer> {
    let size = (contents.len() as u64)
        .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
        .max(wgpu::COPY_BUFFER_ALIGNMENT);
    let buffer = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: true,
    });
    {
        let mut view = buffer.get_mapped_range_mut(..).map_err(|e| Error::Gpu {
            during: format!("creating the parameters of {label}"),
            message: e.to_string(),
        })?;
        view.slice(..contents.len()).copy_from_slice(contents);
    }
    buffer.unmap();
    Ok(buffer)
}

/// Splits `groups` workgroups over x and y so neither exceeds the per-dimension limit;
/// shaders recover the linear index as `wid.x + wid.y * nwg.x`.
pub(crate) fn grid_1d(ctx: &Context, groups: u32) -> [u32; 3] {
    let max = ctx.limits().max_compute_workgroups_per_dimension.max(1);
    if groups <= max {
        [groups, 1, 1]
    } else {
        let y = groups.div_ceil(max);
        [groups.div_ceil(y), y, 1]
    }
}
