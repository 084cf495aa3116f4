//! Kernels as an enum, their WGSL sources, the pipeline cache, and the [`Recorder`] that
//! encodes dispatches into one command encoder inside wgpu error scopes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::context::Context;
use crate::error::{Error, Result};

/// Helpers shared by every kernel (prepended to each kernel's source).
const COMMON: &str = include_str!("../shaders/common.wgsl");

/// Every compute kernel. The name is the same everywhere: `shaders/<name>.wgsl`, its entry
/// point, `kernels::<name>`, `reference::<name>` and the pipeline label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Matmul,
    LayerNorm,
    Softmax,
    Gelu,
    Add,
    Embedding,
    Pool,
    L2Normalize,
    Attention,
    Conv2d,
    CswinAttention,
    BertEmbeddings,
    MatmulCoop,
    AttentionCoop,
    CswinAttentionCoop,
    MatmulSubgroup,
    Rotary,
    Geglu,
}

impl Kernel {
    pub const ALL: [Kernel; 18] = [
        Kernel::Matmul,
        Kernel::LayerNorm,
        Kernel::Softmax,
        Kernel::Gelu,
        Kernel::Add,
        Kernel::Embedding,
        Kernel::Pool,
        Kernel::L2Normalize,
        Kernel::Attention,
        Kernel::Conv2d,
        Kernel::CswinAttention,
        Kernel::BertEmbeddings,
        Kernel::MatmulCoop,
        Kernel::AttentionCoop,
        Kernel::CswinAttentionCoop,
        Kernel::MatmulSubgroup,
        Kernel::Rotary,
        Kernel::Geglu,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::LayerNorm => "layer_norm",
            Kernel::Softmax => "softmax",
            Kernel::Gelu => "gelu",
            Kernel::Add => "add",
            Kernel::Embedding => "embedding",
            Kernel::Pool => "pool",
            Kernel::L2Normalize => "l2_normalize",
            Kernel::Attention => "attention",
            Kernel::Conv2d => "conv2d",
            Kernel::CswinAttention => "cswin_attention",
            Kernel::BertEmbeddings => "bert_embeddings",
            Kernel::MatmulCoop => "matmul_coop",
            Kernel::AttentionCoop => "attention_coop",
            Kernel::CswinAttentionCoop => "cswin_attention_coop",
            Kernel::MatmulSubgroup => "matmul_subgroup",
            Kernel::Rotary => "rotary",
            Kernel::Geglu => "geglu",
        }
    }

    /// The kernel's own WGSL file, without the shared helpers.
    pub const fn wgsl(self) -> &'static str {
        match self {
            Kernel::Matmul => include_str!("../shaders/matmul.wgsl"),
            Kernel::LayerNorm => include_str!("../shaders/layer_norm.wgsl"),
            Kernel::Softmax => include_str!("../shaders/softmax.wgsl"),
            Kernel::Gelu => include_str!("../shaders/gelu.wgsl"),
            Kernel::Add => include_str!("../shaders/add.wgsl"),
            Kernel::Embedding => include_str!("../shaders/embedding.wgsl"),
            Kernel::Pool => include_str!("../shaders/pool.wgsl"),
            Kernel::L2Normalize => include_str!("../shaders/l2_normalize.wgsl"),
            Kernel::Attention => include_str!("../shaders/attention.wgsl"),
            Kernel::Conv2d => include_str!("../shaders/conv2d.wgsl"),
            Kernel::CswinAttention => include_str!("../shaders/cswin_attention.wgsl"),
            Kernel::BertEmbeddings => include_str!("../shaders/bert_embeddings.wgsl"),
            Kernel::MatmulCoop => include_str!("../shaders/matmul_coop.wgsl"),
            Kernel::AttentionCoop => include_str!("../shaders/attention_coop.wgsl"),
            Kernel::CswinAttentionCoop => include_str!("../shaders/cswin_attention_coop.wgsl"),
            Kernel::MatmulSubgroup => include_str!("../shaders/matmul_subgroup.wgsl"),
            Kernel::Rotary => include_str!("../shaders/rotary.wgsl"),
            Kernel::Geglu => include_str!("../shaders/geglu.wgsl"),
        }
    }

    /// Binding kinds in binding order (group 0).
    const fn bindings(self) -> &'static [Binding] {
        use Binding::*;
        match self {
            // params, x, w, bias, residual, x as vec4s, w as vec4s, y
            Kernel::Matmul | Kernel::MatmulCoop | Kernel::MatmulSubgroup => {
                &[Uniform, Read, Read, Read, Read, Read, Read, Write]
            }
            // params, x, residual, gamma, beta, y
            Kernel::LayerNorm => &[Uniform, Read, Read, Read, Read, Write],
            // params, x, y
            Kernel::Softmax | Kernel::Gelu | Kernel::L2Normalize => &[Uniform, Read, Write],
            // params, a, b, y
            Kernel::Add => &[Uniform, Read, Read, Write],
            // params, ids, table, y
            Kernel::Embedding => &[Uniform, Read, Read, Write],
            // params, ids, word, position, token_type, gamma, beta, y
            Kernel::BertEmbeddings => &[Uniform, Read, Read, Read, Read, Read, Read, Write],
            // params, x, mask, keep, y
            Kernel::Pool => &[Uniform, Read, Read, Read, Write],
            // params, qkv, table, out
            Kernel::Rotary => &[Uniform, Read, Read, Write],
            // params, x, y
            Kernel::Geglu => &[Uniform, Read, Write],
            // params, qkv, mask, rel_bias, out
            Kernel::Attention | Kernel::AttentionCoop => &[Uniform, Read, Read, Read, Write],
            // params, x, weight, bias, y
            Kernel::Conv2d => &[Uniform, Read, Read, Read, Write],
            // params, qkv, lepe_w, lepe_b, out
            Kernel::CswinAttention | Kernel::CswinAttentionCoop => {
                &[Uniform, Read, Read, Read, Write]
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Binding {
    Uniform,
    Read,
    Write,
}

/// Compile-time specialisation of a kernel: a few `const` lines prepended to its source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Spec(String);

impl Spec {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u32(mut self, name: &str, value: u32) -> Self {
        let _ = writeln!(self.0, "const {name}: u32 = {value}u;");
        self
    }

    pub fn bool(mut self, name: &str, value: bool) -> Self {
        let _ = writeln!(self.0, "const {name}: bool = {value};");
        self
    }

    /// A storage element type: `alias {name} = f16;` (enabling WGSL's f16 extension, on the
    /// first line as WGSL requires) or `alias {name} = f32;`.
    pub fn storage(mut self, name: &str, f16: bool) -> Self {
        if f16 {
            self = self.enable("f16");
        }
        let ty = if f16 { "f16" } else { "f32" };
        self.alias(name, ty)
    }

    /// A WGSL extension (`enable {ext};`, placed first as WGSL requires), once.
    pub fn enable(mut self, ext: &str) -> Self {
        let line = format!("enable {ext};\n");
        if !self.0.contains(&line) {
            self.0.insert_str(0, &line);
        }
        self
    }

    /// A type alias (`alias {name} = {ty};`), e.g. a cooperative-matrix fragment type.
    pub fn alias(mut self, name: &str, ty: &str) -> Self {
        let _ = writeln!(self.0, "alias {name} = {ty};");
        self
    }

    /// Whether the source needs the f16 extension (and so the adapter's `SHADER_F16`).
    pub fn uses_f16(&self) -> bool {
        self.0.contains("enable f16;")
    }

    /// Whether the source uses cooperative matrices (`EXPERIMENTAL_COOPERATIVE_MATRIX`).
    pub fn uses_cooperative_matrix(&self) -> bool {
        self.0.contains("enable wgpu_cooperative_matrix;")
    }
}

/// The full WGSL a kernel is compiled from: specialisation constants, shared helpers, kernel.
pub fn shader_source(kernel: Kernel, spec: &Spec) -> String {
    format!(
        "// ---- specialisation\n{}// ---- shaders/common.wgsl\n{}\n// ---- shaders/{}.wgsl\n{}",
        spec.0,
        COMMON,
        kernel.name(),
        kernel.wgsl()
    )
}

pub(crate) struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Pipelines compiled once per (kernel, specialisation).
#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<(Kernel, Spec), Arc<Pipeline>>>,
}

impl PipelineCache {
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    fn get(&self, device: &wgpu::Device, kernel: Kernel, spec: &Spec) -> Arc<Pipeline> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((kernel, spec.clone()))
            .or_insert_with(|| Arc::new(compile(device, kernel, spec)))
            .clone()
    }
}

fn compile(device: &wgpu::Device, kernel: Kernel, spec: &Spec) -> Pipeline {
    let label = kernel.name();
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings()
        .iter()
        .enumerate()
        .map(|(i, binding)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match binding {
                    Binding::Uniform => wgpu::BufferBindingType::Uniform,
                    Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                    Binding::Write => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(shader_source(kernel, spec).into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(label),
        compilation_options: Default::default(),
        cache: None,
    });
    Pipeline { pipeline, layout }
}

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
