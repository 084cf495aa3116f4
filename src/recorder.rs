//! The [`Recorder`] collects the dispatches of cached pipelines (and buffer copies) as steps;
//! [`Recorder::finish`] turns them into a [`Program`]: every kernel's parameters in one
//! uniform buffer, one bind group per dispatch, made once. A program replays with no new
//! buffer or bind group: one compute pass between copies, one submission, and (through
//! [`Program::run_and_read`]) one combined readback of the outputs asked for. Models keep
//! one program per plan, so a steady-state forward only writes its inputs and encodes.
//! Split from `pipeline.rs` (compile-and-cache) as the layer above it.

use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{Kernel, Pipeline, Spec};
use crate::reference::HostTensor;
use crate::tensor::{DType, Tensor};

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
    pub(crate) fn whole(inputs: &[&Tensor], output: &Tensor) -> Self {
        let bytes = |t: &Tensor| (t.numel() * t.dtype().size()) as u64;
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

/// GPU time of one recorded pass (or, untimed per dispatch, of one stretch of passes).
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

/// How a program's run is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// No timestamps.
    Off,
    /// One timestamp pair around each compute pass (one pass between copies): the GPU span
    /// of a forward at the cost of a few queries.
    Span,
    /// Each dispatch in its own pass with its own timestamp pair: the per-kernel breakdown,
    /// at the cost of a pass boundary per dispatch.
    PerDispatch,
}

/// Caller-encoded commands ([`Recorder::encode_raw`]).
type RawStep<'c> = Box<dyn FnOnce(&wgpu::Device, &mut wgpu::CommandEncoder) + 'c>;

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

/// The first error among `verdicts`, as an `Error::Gpu` naming `during`.
async fn first_error(verdicts: Vec<ScopeResult>, during: &str) -> Result<()> {
    for verdict in verdicts {
        if let Some(e) = verdict.await {
            return Err(Error::Gpu {
                during: during.into(),
                message: e.to_string(),
            });
        }
    }
    Ok(())
}

/// A recorded dispatch: its pipeline, where its parameters sit in the shared uniform buffer,
/// and the buffers it binds.
struct RecordedDispatch {
    label: &'static str,
    pipeline: Arc<Pipeline>,
    params: (u64, u64),
    buffers: Vec<wgpu::Buffer>,
    groups: [u32; 3],
}

enum Step<'c> {
    Dispatch(RecordedDispatch),
    Copy {
        from: wgpu::Buffer,
        to: wgpu::Buffer,
        bytes: u64,
    },
    /// Caller-encoded commands: one-shot, so only [`Recorder::submit`] runs them.
    Raw(RawStep<'c>),
}

/// Collects kernel dispatches and copies, in order; [`Recorder::submit`] runs them once (one
/// submission, the first wgpu validation or out-of-memory error returned), and
/// [`Recorder::finish`] makes them a [`Program`] that can run many times.
pub struct Recorder<'c> {
    ctx: &'c Context,
    steps: Vec<Step<'c>>,
    /// Every dispatch's parameters, each at an offset the adapter's uniform alignment allows.
    params: Vec<u8>,
    passes: Vec<PassStat>,
    timing: Timing,
}

impl<'c> Recorder<'c> {
    pub fn new(ctx: &'c Context) -> Self {
        Self {
            ctx,
            steps: Vec::new(),
            params: Vec::new(),
            passes: Vec::new(),
            timing: Timing::Off,
        }
    }

    /// A recorder whose [`Recorder::submit`] times each dispatch in its own pass (when the
    /// adapter has `TIMESTAMP_QUERY`; otherwise passes run untimed). `max_passes` is kept
    /// for callers of earlier versions: every dispatch is timed.
    pub fn with_timing(ctx: &'c Context, max_passes: u32) -> Self {
        let mut rec = Self::new(ctx);
        if max_passes > 0 {
            rec.timing = Timing::PerDispatch;
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
    /// same submission, under the same error reporting. One-shot: a recording with such a
    /// step can be submitted, not made a [`Program`].
    pub fn encode_raw(&mut self, f: impl FnOnce(&wgpu::Device, &mut wgpu::CommandEncoder) + 'c) {
        self.steps.push(Step::Raw(Box::new(f)));
    }

    /// Records a copy of `bytes` bytes from the start of `from` to the start of `to`.
    pub fn copy(&mut self, from: &Tensor, to: &Tensor, bytes: u64) {
        self.steps.push(Step::Copy {
            from: from.buffer().clone(),
            to: to.buffer().clone(),
            bytes,
        });
    }

    /// Records a copy of `t` into a new tensor (to keep an intermediate state that later
    /// dispatches overwrite).
    pub fn copy_of(&mut self, t: &Tensor, label: &str) -> Result<Tensor> {
        let copy = Tensor::empty(self.ctx, t.shape(), t.dtype(), label)?;
        self.copy(t, &copy, t.buffer().size());
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
        let pipeline = ctx.pipeline(d.kernel, &d.spec)?;
        let align = u64::from(ctx.limits().min_uniform_buffer_offset_alignment.max(4));
        let offset = (self.params.len() as u64).next_multiple_of(align);
        let size = (d.params.len() as u64)
            .next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT)
            .max(16);
        self.params.resize((offset + size) as usize, 0);
        self.params[offset as usize..][..d.params.len()].copy_from_slice(d.params);
        self.passes.push(PassStat {
            kernel: d.kernel.name(),
            traffic: d.traffic,
        });
        self.steps.push(Step::Dispatch(RecordedDispatch {
            label: d.kernel.name(),
            pipeline,
            params: (offset, size),
            buffers: d.buffers.iter().map(|&b| b.clone()).collect(),
            groups: d.groups,
        }));
        Ok(())
    }

    /// Makes the recording a [`Program`]: the parameters uploaded into one uniform buffer and
    /// a bind group made per dispatch, once. Fails for a recording with
    /// [`Recorder::encode_raw`] steps (they cannot be replayed).
    pub async fn finish(self) -> Result<Program> {
        let (program, raw) = self.build().await?;
        if !raw.is_empty() {
            return Err(Error::Argument {
                op: "recorder",
                arg: "steps",
                reason: "a recording with caller-encoded (encode_raw) steps runs once through \
                         submit; it cannot become a reusable program"
                    .into(),
            });
        }
        Ok(program)
    }

    /// The program, with the one-shot raw steps kept aside (by their place in the steps).
    #[allow(clippy::type_complexity)]
    async fn build(self) -> Result<(Program, Vec<(usize, RawStep<'c>)>)> {
        let ctx = self.ctx;
        ctx.check_device()?;
        let (built, verdicts) = scoped(&ctx.device, || {
            let params = match self.params.is_empty() {
                true => None,
                false => Some(uniform_buffer(ctx, &self.params)?),
            };
            let (mut steps, mut raw) = (Vec::new(), Vec::new());
            for step in self.steps {
                match step {
                    Step::Dispatch(d) => {
                        let Some(params) = &params else { continue };
                        let bind_group = bind_group(ctx, &d, params);
                        steps.push(ProgramStep::Dispatch {
                            label: d.label,
                            pipeline: d.pipeline,
                            bind_group,
                            groups: d.groups,
                        });
                    }
                    Step::Copy { from, to, bytes } => {
                        steps.push(ProgramStep::Copy { from, to, bytes })
                    }
                    Step::Raw(f) => raw.push((steps.len(), f)),
                }
            }
            Ok::<_, Error>((params, steps, raw))
        });
        first_error(
            verdicts.into(),
            "preparing the kernels' parameters and bindings",
        )
        .await?;
        let (params, steps, raw) = built?;
        let program = Program {
            steps,
            _params: params,
            passes: self.passes,
            staging: Mutex::new(None),
            timers: Mutex::new(Vec::new()),
        };
        Ok((program, raw))
    }

    /// Submits everything recorded, waits for wgpu's verdict on it, and (for a timed
    /// recorder) returns the GPU time of each timed pass.
    pub async fn submit(self) -> Result<Vec<PassTime>> {
        let ctx = self.ctx;
        let timing = self.timing;
        let (program, raw) = self.build().await?;
        program.run_with(ctx, timing, &[], raw).await.map(|r| r.0)
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

/// A uniform buffer holding `contents`. Unlike wgpu's `create_buffer_init`, which panics when
/// the buffer cannot be mapped (a lost device), this returns the error.
fn uniform_buffer(ctx: &Context, contents: &[u8]) -> Result<wgpu::Buffer> {
    let buffer = ctx.create_buffer(&wgpu::BufferDescriptor {
        label: Some("backbone.params"),
        size: contents.len() as u64,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: true,
    });
    {
        let mut view = buffer.get_mapped_range_mut(..).map_err(|e| Error::Gpu {
            during: "writing the kernels' parameters".into(),
            message: e.to_string(),
        })?;
        view.slice(..).copy_from_slice(contents);
    }
    buffer.unmap();
    Ok(buffer)
}

/// The bind group of one dispatch: its parameters' range at binding 0, its buffers after.
fn bind_group(ctx: &Context, d: &RecordedDispatch, params: &wgpu::Buffer) -> wgpu::BindGroup {
    let (offset, size) = d.params;
    let mut entries = vec![wgpu::BindGroupEntry {
        binding: 0,
        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: params,
            offset,
            size: NonZeroU64::new(size),
        }),
    }];
    for (i, buffer) in d.buffers.iter().enumerate() {
        entries.push(wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: buffer.as_entire_binding(),
        });
    }
    ctx.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(d.label),
        layout: &d.pipeline.layout,
        entries: &entries,
    })
}

enum ProgramStep {
    Dispatch {
        label: &'static str,
        pipeline: Arc<Pipeline>,
        bind_group: wgpu::BindGroup,
        groups: [u32; 3],
    },
    Copy {
        from: wgpu::Buffer,
        to: wgpu::Buffer,
        bytes: u64,
    },
}

/// Timestamp queries with their resolve and read buffers, made once per (program, timing).
#[derive(Clone)]
struct Timer {
    timing: Timing,
    queries: wgpu::QuerySet,
    count: u32,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
}

/// What [`Program::encode`] made: the encoder, the labels of its timed passes, the staging
/// buffer the outputs were copied to, and the timer's read buffer.
struct Encoded {
    encoder: wgpu::CommandEncoder,
    labels: Vec<&'static str>,
    staging: Option<wgpu::Buffer>,
    timer: Option<wgpu::Buffer>,
}

/// A recorded sequence of dispatches and copies with its parameters and bind groups made
/// once: [`Program::run`] replays it without creating any buffer or bind group.
pub struct Program {
    steps: Vec<ProgramStep>,
    /// Every dispatch's parameters (bound by range from the bind groups).
    _params: Option<wgpu::Buffer>,
    passes: Vec<PassStat>,
    /// The combined readback buffer, grown to the largest set of outputs read so far.
    staging: Mutex<Option<wgpu::Buffer>>,
    timers: Mutex<Vec<Timer>>,
}

impl Program {
    /// The dispatches, in order, with their compulsory traffic.
    pub fn passes(&self) -> &[PassStat] {
        &self.passes
    }

    /// Encodes and submits the program once, untimed, and waits for wgpu's verdict.
    pub async fn run(&self, ctx: &Context) -> Result<()> {
        self.run_with(ctx, Timing::Off, &[], Vec::new())
            .await
            .map(|_| ())
    }

    /// Runs the program, then copies `outputs` into one staging buffer in the same
    /// submission and reads them back with one map: the outputs as f32 host tensors, in order.
    pub async fn run_and_read(
        &self,
        ctx: &Context,
        outputs: &[&Tensor],
    ) -> Result<Vec<HostTensor>> {
        self.run_with(ctx, Timing::Off, outputs, Vec::new())
            .await
            .map(|r| r.1)
    }

    /// Runs the program with timestamps (`Timing::Span`: around each pass; `PerDispatch`:
    /// around each dispatch in a pass of its own) and waits for the GPU (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run_timed(&self, ctx: &Context, timing: Timing) -> Result<Vec<PassTime>> {
        let times = pollster::block_on(self.run_with(ctx, timing, &[], Vec::new()))?.0;
        ctx.poll_wait()?;
        Ok(times)
    }

    /// Encodes and submits the program (without waiting for the GPU, and without reading
    /// anything back): what one forward costs the host. Native only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_and_submit(&self, ctx: &Context) -> Result<()> {
        let encoded = self.encode(ctx, Timing::Off, &[], Vec::new())?;
        ctx.queue.submit([encoded.encoder.finish()]);
        Ok(())
    }

    async fn run_with<'c>(
        &self,
        ctx: &Context,
        timing: Timing,
        outputs: &[&Tensor],
        raw: Vec<(usize, RawStep<'c>)>,
    ) -> Result<(Vec<PassTime>, Vec<HostTensor>)> {
        ctx.check_device()?;
        let timing = if ctx.capabilities().timestamps() {
            timing
        } else {
            Timing::Off
        };
        let (encoded, verdicts) = scoped(&ctx.device, || {
            let encoded = self.encode(ctx, timing, outputs, raw)?;
            ctx.queue.submit([encoded.encoder.finish()]);
            Ok::<_, Error>((encoded.labels, encoded.staging, encoded.timer))
        });
        first_error(verdicts.into(), "recording and submitting kernels").await?;
        let (labels, staging, timer) = encoded?;
        let values = match &staging {
            Some(staging) => read_outputs(ctx, staging, outputs).await?,
            None => Vec::new(),
        };
        let times = match &timer {
            Some(read) if !labels.is_empty() => read_times(ctx, read, &labels).await?,
            _ => Vec::new(),
        };
        Ok((times, values))
    }

    /// One command encoder holding the program (its passes timed as asked), the raw steps at
    /// their places, and the copies of `outputs` into the staging buffer; returns the labels
    /// of the timed passes.
    fn encode<'c>(
        &self,
        ctx: &Context,
        timing: Timing,
        outputs: &[&Tensor],
        raw: Vec<(usize, RawStep<'c>)>,
    ) -> Result<Encoded> {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("backbone.program"),
            });
        let timer = match timing {
            Timing::Off => None,
            _ => Some(self.timer(ctx, timing)),
        };
        let queries = timer.as_ref().map(|t| (&t.queries, t.count));
        let mut labels = Vec::new();
        let mut raw = raw.into_iter().peekable();
        let mut i = 0;
        while i < self.steps.len() || raw.peek().is_some() {
            if let Some((_, f)) = raw.next_if(|(at, _)| *at <= i) {
                f(&ctx.device, &mut encoder);
                continue;
            }
            match &self.steps[i] {
                ProgramStep::Copy { from, to, bytes } => {
                    encoder.copy_buffer_to_buffer(from, 0, to, 0, Some(*bytes));
                    i += 1;
                }
                ProgramStep::Dispatch { .. } => {
                    // One pass for this stretch of dispatches (a pass per dispatch when each
                    // is timed), ending at the next copy or raw step.
                    let next_raw = raw.peek().map_or(usize::MAX, |(at, _)| *at);
                    let mut end = i;
                    while end < self.steps.len()
                        && end < next_raw
                        && matches!(self.steps[end], ProgramStep::Dispatch { .. })
                        && (timing != Timing::PerDispatch || end == i)
                    {
                        end += 1;
                    }
                    let timestamp_writes = queries.and_then(|(q, count)| {
                        let n = labels.len() as u32;
                        (2 * n + 1 < count).then_some(wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: Some(2 * n),
                            end_of_pass_write_index: Some(2 * n + 1),
                        })
                    });
                    if timestamp_writes.is_some() {
                        labels.push(match (&self.steps[i], timing) {
                            (ProgramStep::Dispatch { label, .. }, Timing::PerDispatch) => *label,
                            _ => "forward",
                        });
                    }
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("backbone.pass"),
                        timestamp_writes,
                    });
                    for step in &self.steps[i..end] {
                        if let ProgramStep::Dispatch {
                            pipeline,
                            bind_group,
                            groups: [x, y, z],
                            ..
                        } = step
                            && *x > 0
                            && *y > 0
                            && *z > 0
                        {
                            pass.set_pipeline(&pipeline.pipeline);
                            pass.set_bind_group(0, bind_group, &[]);
                            pass.dispatch_workgroups(*x, *y, *z);
                        }
                    }
                    drop(pass);
                    i = end;
                }
            }
        }
        if let Some(t) = &timer {
            let n = 2 * labels.len() as u32;
            if n > 0 {
                encoder.resolve_query_set(&t.queries, 0..n, &t.resolve, 0);
                encoder.copy_buffer_to_buffer(&t.resolve, 0, &t.read, 0, Some(n as u64 * 8));
            }
        }
        let staging = match outputs {
            [] => None,
            _ => {
                let staging = self.staging_for(ctx, outputs)?;
                let mut offset = 0;
                for t in outputs {
                    let bytes = t.buffer().size();
                    encoder.copy_buffer_to_buffer(t.buffer(), 0, &staging, offset, Some(bytes));
                    offset += bytes;
                }
                Some(staging)
            }
        };
        Ok(Encoded {
            encoder,
            labels,
            staging,
            timer: timer.map(|t| t.read),
        })
    }

    /// The timestamp queries for `timing`, made on first use (two queries per pass).
    fn timer(&self, ctx: &Context, timing: Timing) -> Timer {
        let mut timers = lock(&self.timers);
        if let Some(t) = timers.iter().find(|t| t.timing == timing) {
            return t.clone();
        }
        let passes = match timing {
            Timing::PerDispatch => self
                .steps
                .iter()
                .filter(|s| matches!(s, ProgramStep::Dispatch { .. }))
                .count(),
            _ => self.steps.len(),
        };
        let count = (2 * passes.max(1) as u32).min(wgpu::QUERY_SET_MAX_QUERIES);
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("backbone.timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let size = count as u64 * 8;
        let resolve = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("backbone.timestamps.resolve"),
            size,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("backbone.timestamps.read"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let timer = Timer {
            timing,
            queries,
            count,
            resolve,
            read,
        };
        timers.push(timer.clone());
        timer
    }

    /// The staging buffer, grown (made anew) when `outputs` need more room than it has.
    fn staging_for(&self, ctx: &Context, outputs: &[&Tensor]) -> Result<wgpu::Buffer> {
        let needed: u64 = outputs.iter().map(|t| t.buffer().size()).sum();
        let mut slot = lock(&self.staging);
        if let Some(b) = slot.as_ref().filter(|b| b.size() >= needed) {
            return Ok(b.clone());
        }
        let limit = ctx.limits().max_buffer_size;
        if needed > limit {
            return Err(Error::Limit {
                what: "the combined readback of a forward's outputs".into(),
                requested: needed,
                limit,
                limit_name: "max_buffer_size",
            });
        }
        let buffer = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("backbone.readback"),
            size: needed.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        *slot = Some(buffer.clone());
        Ok(buffer)
    }
}

/// The pass times from the timer's read buffer, one pair of ticks per label.
async fn read_times(
    ctx: &Context,
    read: &wgpu::Buffer,
    labels: &[&'static str],
) -> Result<Vec<PassTime>> {
    crate::tensor::map_read(ctx, read, "timestamps").await?;
    let ticks: Vec<u64> = {
        let view = read.get_mapped_range(..).map_err(|e| Error::Readback {
            what: "timestamps".into(),
            message: e.to_string(),
        })?;
        bytemuck::pod_collect_to_vec(&view[..labels.len() * 16])
    };
    read.unmap();
    let period = ctx.capabilities().timestamp_period_ns as f64;
    let origin = ticks.first().copied().unwrap_or(0);
    Ok(labels
        .iter()
        .zip(ticks.chunks_exact(2))
        .map(|(&label, t)| PassTime {
            label,
            start_ms: t[0].saturating_sub(origin) as f64 * period * 1e-6,
            ms: t[1].saturating_sub(t[0]) as f64 * period * 1e-6,
        })
        .collect())
}

/// Maps the staging buffer once and converts each output's bytes to f32.
async fn read_outputs(
    ctx: &Context,
    staging: &wgpu::Buffer,
    outputs: &[&Tensor],
) -> Result<Vec<HostTensor>> {
    crate::tensor::map_read(ctx, staging, "outputs").await?;
    let result = (|| {
        let view = staging.get_mapped_range(..).map_err(|e| Error::Readback {
            what: "outputs".into(),
            message: e.to_string(),
        })?;
        let mut offset = 0usize;
        let mut values = Vec::with_capacity(outputs.len());
        for t in outputs {
            let len = t.numel() * t.dtype().size();
            let bytes = &view[offset..offset + len];
            offset += t.buffer().size() as usize;
            let data = match t.dtype() {
                DType::F32 => bytemuck::pod_collect_to_vec(bytes),
                DType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes)
                    .into_iter()
                    .map(f32::from)
                    .collect(),
                DType::U32 => bytemuck::pod_collect_to_vec::<u8, u32>(bytes)
                    .into_iter()
                    .map(|v| v as f32)
                    .collect(),
            };
            values.push(HostTensor::new(t.shape(), data)?);
        }
        Ok(values)
    })();
    staging.unmap();
    result
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update; the data stays valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
