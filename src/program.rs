//! A [`Program`]: a recording made once (parameters in one uniform buffer, a bind group per
//! dispatch) that replays without creating any buffer or bind group: one compute pass between
//! copies, one submission, timestamps per pass or per dispatch, and one combined readback of
//! the outputs asked for. Made by [`crate::Recorder::finish`].

use std::sync::{Arc, Mutex};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::pipeline::Pipeline;
use crate::recorder::{PassStat, PassTime, RawStep, Timing, first_error, lock, scoped};
use crate::tensor::Tensor;

pub(crate) enum ProgramStep {
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
    pub(crate) fn new(
        steps: Vec<ProgramStep>,
        params: Option<wgpu::Buffer>,
        passes: Vec<PassStat>,
    ) -> Self {
        Self {
            steps,
            _params: params,
            passes,
            staging: Mutex::new(None),
            timers: Mutex::new(Vec::new()),
        }
    }

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

    pub(crate) async fn run_with<'c>(
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
            let data = t.f32_from_bytes(bytes)?;
            values.push(HostTensor::new(t.shape(), data)?);
        }
        Ok(values)
    })();
    staging.unmap();
    result
}
