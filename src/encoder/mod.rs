//! Loaded models, the one way every front door (the CLI, the server, the load test, the web
//! demo, the examples, an application) opens and runs a model folder: [`TextEncoder`] for the
//! text families, [`ImageEncoder`] for CSWin. Every default (device, dtype, truncation length,
//! pooling, prompts, pad id, labels) is decided here, once, and reported by `info()`.
//!
//! ```no_run
//! use backbone::encoder::{EncoderOptions, TextEncoder};
//! # fn main() -> backbone::Result<()> {
//! let model = TextEncoder::open("all-MiniLM-L6-v2", &EncoderOptions::default())?;
//! let embeddings = model.encode_blocking(&["A cat.", "A dog."], None, None)?; // [2, 384]
//! println!("{} at {} tokens: {:?}", model.info().model_id, model.info().max_length,
//!     &embeddings.data[..4]);
//! # Ok(()) }
//! ```

mod files;
mod image;
mod text;

use std::sync::Arc;

#[cfg(feature = "tokenizers")]
pub use crate::models::tokenizer::{Token, Truncate};
pub use files::ModelFiles;
pub use image::{ImageEncoder, ImageInfo};
pub use text::{MaxLengthSource, Row, TextEncoder, TextInfo, TextKind, Want};

use crate::context::{Context, ContextOptions};
use crate::error::Result;
use crate::tensor::DType;

/// Where a model runs.
#[derive(Clone, Default)]
pub enum Device {
    /// `BACKBONE_DEVICE` (gpu, cpu, reference) when set; else the GPU when the best adapter
    /// is a hardware one, and the fast CPU path when there is no adapter or only a software
    /// one (lavapipe, SwiftShader, WARP), said once in a warning.
    #[default]
    Auto,
    /// The best GPU adapter (`BACKBONE_BACKEND` / `BACKBONE_ADAPTER` choose another), opened
    /// for this model, software adapters included.
    Gpu,
    /// The CPU: the fast CPU executor (SIMD, multi-threaded products; `BACKBONE_CPU_THREADS`
    /// caps its threads). On the web, the twins.
    Cpu,
    /// The CPU reference path: the kernels' CPU twins (exact, f64 sums, slow), for debugging
    /// and checking.
    Reference,
    /// A GPU context the caller already has, shared (e.g. one made with
    /// [`Context::from_device`] on an application's own wgpu device).
    Context(Arc<Context>),
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => f.write_str("Auto"),
            Device::Gpu => f.write_str("Gpu"),
            Device::Cpu => f.write_str("Cpu"),
            Device::Reference => f.write_str("Reference"),
            Device::Context(ctx) => write!(f, "Context({})", ctx.capabilities().adapter.name),
        }
    }
}

/// How to open a model.
#[derive(Debug, Clone)]
pub struct EncoderOptions {
    pub device: Device,
    /// Storage of weights and activations: f32, or f16 (GPU: needs `SHADER_F16`; CPU: the
    /// twin of such a run).
    pub dtype: DType,
    /// Text: truncate at this many tokens instead of the folder's own length.
    pub max_length: Option<usize>,
    /// Text: a missing `tokenizer.json` is an error at open (false: only when text is
    /// tokenized; `backbone run` takes token ids).
    pub require_tokenizer: bool,
    /// CSWin: a preset (`cswin-t-224`, ...) instead of the folder's config.json.
    pub variant: Option<String>,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            device: Device::Auto,
            dtype: DType::F32,
            max_length: None,
            require_tokenizer: true,
            variant: None,
        }
    }
}

impl EncoderOptions {
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    pub fn max_length(mut self, max_length: Option<usize>) -> Self {
        self.max_length = max_length;
        self
    }
}

/// A model on the device it runs on.
enum Runner<G, C> {
    Gpu {
        ctx: Arc<Context>,
        model: G,
    },
    Cpu {
        model: C,
        dtype: DType,
        exec: CpuExec,
    },
}

/// Which CPU executor a CPU model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CpuExec {
    /// [`crate::cpu::Fast`] (native only).
    #[cfg(not(target_arch = "wasm32"))]
    Fast,
    /// [`crate::cpu::Twin`]: the kernels' CPU twins.
    Twin,
}

impl CpuExec {
    /// The fastest executor this target has: the fast path natively; the twins on the web.
    #[cfg(not(target_arch = "wasm32"))]
    const BEST: Self = Self::Fast;
    #[cfg(target_arch = "wasm32")]
    const BEST: Self = Self::Twin;
}

/// The device a model opens on, resolved: a GPU context, or a CPU executor.
struct Resolved {
    ctx: Option<Arc<Context>>,
    exec: CpuExec,
}

impl Device {
    /// `BACKBONE_DEVICE`'s device, when it is set (an unknown value is an error).
    fn from_env() -> Result<Option<Device>> {
        let Ok(value) = std::env::var("BACKBONE_DEVICE") else {
            return Ok(None);
        };
        Ok(Some(match value.trim() {
            "" | "auto" => return Ok(None),
            "gpu" => Device::Gpu,
            "cpu" => Device::Cpu,
            "reference" => Device::Reference,
            other => {
                return Err(crate::Error::InvalidOption {
                    name: "BACKBONE_DEVICE",
                    value: other.to_string(),
                    expected: "auto, gpu, cpu or reference",
                });
            }
        }))
    }
}

/// The GPU context or CPU executor `device` asks for: a context opened here for
/// [`Device::Gpu`], shared for [`Device::Context`], and for [`Device::Auto`] the GPU only
/// when it is hardware.
async fn resolve(device: &Device) -> Result<Resolved> {
    let fast = CpuExec::BEST;
    let cpu = |exec| Resolved { ctx: None, exec };
    let gpu = |ctx: Arc<Context>| Resolved {
        ctx: Some(ctx),
        exec: fast,
    };
    let chosen = match device {
        Device::Auto => Device::from_env()?.unwrap_or(Device::Auto),
        other => other.clone(),
    };
    Ok(match chosen {
        Device::Cpu => cpu(fast),
        Device::Reference => cpu(CpuExec::Twin),
        Device::Context(ctx) => gpu(ctx),
        Device::Gpu => gpu(Arc::new(Context::new(ContextOptions::from_env()?).await?)),
        Device::Auto => match Context::new(ContextOptions::from_env()?).await {
            Ok(ctx) if !ctx.capabilities().is_software() => gpu(Arc::new(ctx)),
            found => {
                let what = match &found {
                    Ok(ctx) => format!(
                        "only a software adapter ({})",
                        ctx.capabilities().adapter.name
                    ),
                    Err(e) => format!("no GPU adapter ({e})"),
                };
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| {
                    log::warn!(
                        "{what}: running on the fast CPU path (--device gpu or \
                         BACKBONE_DEVICE=gpu use the adapter anyway)"
                    )
                });
                cpu(fast)
            }
        },
    })
}

/// What a model runs on, for `info()`.
fn describe(resolved: &Resolved) -> String {
    match (&resolved.ctx, resolved.exec) {
        (Some(ctx), _) => ctx.capabilities().to_string(),
        (None, CpuExec::Twin) => "CPU reference path (the kernels' twins)".into(),
        #[cfg(not(target_arch = "wasm32"))]
        (None, CpuExec::Fast) => format!("CPU ({} threads)", crate::cpu::threads()),
    }
}
