//! Kernels as an enum, their WGSL sources and specialisation, and the pipeline cache (compiled
//! once per kernel and specialisation). The [`Recorder`] that encodes dispatches lives in
//! `recorder.rs`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

#[cfg(not(target_arch = "wasm32"))]
use crate::error::Error;
use crate::error::Result;

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
    Embeddings,
    MatmulCoop,
    AttentionCoop,
    CswinAttentionCoop,
    MatmulSubgroup,
    Rotary,
    Geglu,
    MatmulLayerNorm,
    MatmulSplitReduce,
    LayerNormSubgroup,
}

impl Kernel {
    pub const ALL: [Kernel; 21] = [
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
        Kernel::Embeddings,
        Kernel::MatmulCoop,
        Kernel::AttentionCoop,
        Kernel::CswinAttentionCoop,
        Kernel::MatmulSubgroup,
        Kernel::Rotary,
        Kernel::Geglu,
        Kernel::MatmulLayerNorm,
        Kernel::MatmulSplitReduce,
        Kernel::LayerNormSubgroup,
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
            Kernel::Embeddings => "bert_embeddings",
            Kernel::MatmulCoop => "matmul_coop",
            Kernel::AttentionCoop => "attention_coop",
            Kernel::CswinAttentionCoop => "cswin_attention_coop",
            Kernel::MatmulSubgroup => "matmul_subgroup",
            Kernel::Rotary => "rotary",
            Kernel::Geglu => "geglu",
            Kernel::MatmulLayerNorm => "matmul_layer_norm",
            Kernel::MatmulSplitReduce => "matmul_split_reduce",
            Kernel::LayerNormSubgroup => "layer_norm_subgroup",
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
            Kernel::Embeddings => include_str!("../shaders/bert_embeddings.wgsl"),
            Kernel::MatmulCoop => include_str!("../shaders/matmul_coop.wgsl"),
            Kernel::AttentionCoop => include_str!("../shaders/attention_coop.wgsl"),
            Kernel::CswinAttentionCoop => include_str!("../shaders/cswin_attention_coop.wgsl"),
            Kernel::MatmulSubgroup => include_str!("../shaders/matmul_subgroup.wgsl"),
            Kernel::Rotary => include_str!("../shaders/rotary.wgsl"),
            Kernel::Geglu => include_str!("../shaders/geglu.wgsl"),
            Kernel::MatmulLayerNorm => include_str!("../shaders/matmul_layer_norm.wgsl"),
            Kernel::MatmulSplitReduce => include_str!("../shaders/matmul_split_reduce.wgsl"),
            Kernel::LayerNormSubgroup => include_str!("../shaders/layer_norm_subgroup.wgsl"),
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
            // params, x, residual, gamma, beta, x as vec4s, residual as vec4s, y
            Kernel::LayerNormSubgroup => &[Uniform, Read, Read, Read, Read, Read, Read, Write],
            // params, partial, bias, residual, y
            Kernel::MatmulSplitReduce => &[Uniform, Read, Read, Read, Write],
            // params, x, w, bias, residual, gamma, beta, y
            Kernel::MatmulLayerNorm => &[Uniform, Read, Read, Read, Read, Read, Read, Write],
            // params, x, y
            Kernel::Softmax | Kernel::Gelu | Kernel::L2Normalize => &[Uniform, Read, Write],
            // params, a, b, y
            Kernel::Add => &[Uniform, Read, Read, Write],
            // params, ids, table, y
            Kernel::Embedding => &[Uniform, Read, Read, Write],
            // params, ids, word, position, token_type, gamma, beta, y
            Kernel::Embeddings => &[Uniform, Read, Read, Read, Read, Read, Read, Write],
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
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

/// Pipelines compiled once per (kernel, specialisation). A pipeline that fails to build is
/// an error and is never kept, so a later use compiles (and reports) again.
#[derive(Default)]
pub(crate) struct PipelineCache {
    map: Mutex<HashMap<(Kernel, Spec), Arc<Pipeline>>>,
}

impl PipelineCache {
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        kernel: Kernel,
        spec: &Spec,
        checks: bool,
    ) -> Result<Arc<Pipeline>> {
        let key = (kernel, spec.clone());
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        if let Some(p) = self.map.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let pipeline = Arc::new(compile(device, kernel, spec, checks)?);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(key).or_insert(pipeline).clone())
    }
}

/// Compiles one kernel inside validation, internal and out-of-memory error scopes. Native
/// wgpu reports their verdicts at once, so a shader or pipeline the driver rejects is an error
/// here; on the web the verdicts arrive later and surface at submission instead.
fn compile(device: &wgpu::Device, kernel: Kernel, spec: &Spec, checks: bool) -> Result<Pipeline> {
    let scopes = [
        device.push_error_scope(wgpu::ErrorFilter::Validation),
        device.push_error_scope(wgpu::ErrorFilter::Internal),
        device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
    ];
    let pipeline = build(device, kernel, spec, checks);
    #[allow(unused_variables)]
    let verdicts: Vec<_> = scopes.into_iter().rev().map(|s| s.pop()).collect();
    #[cfg(not(target_arch = "wasm32"))]
    for verdict in verdicts {
        if let Some(e) = pollster::block_on(verdict) {
            return Err(Error::Gpu {
                during: format!("building the {} pipeline", kernel.name()),
                message: e.to_string(),
            });
        }
    }
    Ok(pipeline)
}

fn build(device: &wgpu::Device, kernel: Kernel, spec: &Spec, checks: bool) -> Pipeline {
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
    let desc = wgpu::ShaderModuleDescriptor {
        label: Some(label),
        source: wgpu::ShaderSource::Wgsl(shader_source(kernel, spec).into()),
    };
    let module = if checks {
        device.create_shader_module(desc)
    } else {
        // SAFETY: only this crate's own kernels are compiled here (never user WGSL). Each
        // guards its buffer indices against the sizes in its parameters and runs loops with
        // uniform, finite trip counts; the kernel tests run with checks on and off, on sizes
        // off every tile multiple with NaN-prefilled outputs (see `ShaderChecks`).
        unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
    };
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

pub(crate) use crate::recorder::{Dispatch, grid_1d};
