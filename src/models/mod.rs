//! Models built from the kernels: each with a GPU forward (one submission) and a CPU forward
//! built only from the CPU twins.

pub mod bert;
#[cfg(not(target_arch = "wasm32"))]
pub mod tokenizer;
pub mod weights;
