//! `backbone`: transformer backbones on any GPU through wgpu.
//!
//! The engine core: a [`Context`] (adapter, device, pipeline cache), GPU [`Tensor`]s, the
//! kernel set in [`kernels`] (each with a CPU twin in [`reference`]), and a [`Recorder`] that
//! encodes kernels into one submission and reports wgpu errors as [`Error`]s.
//!
//! ```no_run
//! use backbone::{Context, Recorder, Tensor, kernels};
//! # fn main() -> backbone::Result<()> {
//! let ctx = Context::from_env_blocking()?;
//! let x = Tensor::from_f32(&ctx, &[2, 3], &[1., 2., 3., 4., 5., 6.], "x")?;
//! let w = Tensor::from_f32(&ctx, &[4, 3], &[0.5; 12], "w")?; // [out, in], as nn.Linear
//! let y = Tensor::empty(&ctx, &[2, 4], backbone::DType::F32, "y")?;
//! let mut rec = Recorder::new(&ctx);
//! kernels::matmul(&mut rec, &x, &w, &y, kernels::Epilogue::none().gelu())?;
//! rec.submit_blocking()?;
//! println!("{:?}", y.read_f32_blocking(&ctx)?);
//! # Ok(()) }
//! ```

mod adapter;
#[cfg(all(feature = "bench", not(target_arch = "wasm32")))]
pub mod bench;
pub mod context;
pub mod cpu;
pub mod encoder;
pub mod error;
pub mod host;
#[cfg(not(target_arch = "wasm32"))]
pub mod io;
pub mod kernels;
pub mod limits;
pub mod models;
pub mod pipeline;
pub mod program;
pub mod recorder;
pub mod reference;
pub mod selftest;
#[cfg(all(feature = "server", not(target_arch = "wasm32")))]
pub mod server;
pub mod tensor;
pub mod tune;

/// The git commit this library was built from (`-dirty` with uncommitted changes): benchmark
/// records carry it, and the Python package reports it so a stale build is caught.
pub const COMMIT: &str = env!("BACKBONE_COMMIT");

pub use context::{Capabilities, Context, ContextOptions, ResourceCounts, ShaderChecks};
pub use error::{Error, Result};
pub use pipeline::{Kernel, Spec, shader_source};
pub use program::Program;
pub use recorder::Timing;
pub use recorder::{PassStat, PassTime, Recorder, Traffic};
pub use selftest::Family;
pub use tensor::{DType, Tensor};
