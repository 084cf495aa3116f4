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
    /// The best GPU adapter (`BACKBONE_BACKEND` / `BACKBONE_ADAPTER` choose another), opened
    /// for this model.
    #[default]
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
            device: Device::Gpu,
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
    /// [`crate::cpu::Fast`] (native).
    Fast,
    /// [`crate::cpu::Twin`]: the kernels' CPU twins.
    Twin,
}

impl CpuExec {
    /// The executor `device` asks for (the twins on the web, which has no fast path).
    fn of(device: &Device) -> Self {
        match device {
            Device::Reference => Self::Twin,
            _ if cfg!(target_arch = "wasm32") => Self::Twin,
            _ => Self::Fast,
        }
    }
}

/// The GPU context `device` asks for (`None` for the CPU path): opened here for
/// [`Device::Gpu`], shared for [`Device::Context`].
async fn context_for(device: &Device) -> Result<Option<Arc<Context>>> {
    Ok(match device {
        Device::Cpu | Device::Reference => None,
        Device::Context(ctx) => Some(ctx.clone()),
        Device::Gpu => Some(Arc::new(Context::new(ContextOptions::from_env()?).await?)),
    })
}

/// What a model runs on, for `info()`.
fn describe(ctx: Option<&Context>, device: &Device) -> String {
    match (ctx, CpuExec::of(device)) {
        (Some(ctx), _) => ctx.capabilities().to_string(),
        (None, CpuExec::Twin) => "CPU reference path (the kernels' twins)".into(),
        #[cfg(not(target_arch = "wasm32"))]
        (None, CpuExec::Fast) => format!("CPU ({} threads)", crate::cpu::threads()),
        #[cfg(target_arch = "wasm32")]
        (None, CpuExec::Fast) => "CPU".into(),
    }
}
