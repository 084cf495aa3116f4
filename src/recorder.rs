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
use crate::program::{Program, ProgramStep};
use crate::tensor::Tensor;

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
pub(crate) type RawStep<'c> = Box<dyn FnOnce(&wgpu::Device, &mut wgpu::CommandEncoder) + 'c>;

/// The pending verdict of one pair of error scopes.
pub(crate) type ScopeResult = Pin<Box<dyn Future<Output = Option<wgpu::Error>>>>;

/// Runs `f` inside validation and out-of-memory error scopes, popped right after it (so
/// scopes never interleave between recorders); returns `f`'s value and the verdicts.
pub(crate) fn scoped<R>(device: &wgpu::Device, f: impl FnOnce() -> R) -> (R, [ScopeResult; 2]) {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let value = f();
    let oom: ScopeResult = Box::pin(out_of_memory.pop());
    let invalid: ScopeResult = Box::pin(validation.pop());
    (value, [invalid, oom])
}

/// The first error among `verdicts`, as an `Error::Gpu` naming `during`.
pub(crate) async fn first_error(verdicts: Vec<ScopeResult>, during: &str) -> Result<()> {
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
        let program = Program::new(steps, params, self.passes);
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
