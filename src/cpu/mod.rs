//! The CPU executors a model's CPU forward runs on. A forward is written once against
//! [`CpuOps`] (the kernels' names and arguments, host tensors in): [`Twin`] runs the kernels'
//! CPU twins (exact, f64 sums: the oracle of every test, `Device::Reference`), [`Fast`] runs
//! the same operations for speed (`Device::Cpu`, native only): matrix products and attention
//! through a SIMD, multi-threaded GEMM, the elementwise work on the same threads.

#[cfg(not(target_arch = "wasm32"))]
mod fast;
#[cfg(not(target_arch = "wasm32"))]
pub use fast::{Fast, threads};

use crate::error::Result;
use crate::kernels::matmul::{Epilogue, StridedMatmul, plain_problem};
use crate::kernels::{AttentionBias, ConvInput, CswinBranch, EmbeddingTables, PoolMode};
use crate::reference::{self, HostTensor};

/// The operations a CPU forward is made of, with the GPU kernels' names and arguments. Every
/// method defaults to the twin; an executor overrides what it does faster.
pub trait CpuOps: Sync {
    fn matmul(
        &self,
        x: &HostTensor,
        w: &HostTensor,
        y: &mut HostTensor,
        ep: Epilogue<'_, HostTensor>,
    ) -> Result<()> {
        let problem = plain_problem(&x.shape, &w.shape, &y.shape)?;
        self.matmul_strided(x, w, y, ep, &problem)
    }

    fn matmul_strided(
        &self,
        x: &HostTensor,
        w: &HostTensor,
        y: &mut HostTensor,
        ep: Epilogue<'_, HostTensor>,
        p: &StridedMatmul,
    ) -> Result<()> {
        reference::matmul_strided(x, w, y, ep, p)
    }

    fn layer_norm(
        &self,
        x: &HostTensor,
        residual: Option<&HostTensor>,
        gamma: &HostTensor,
        beta: &HostTensor,
        eps: f32,
        y: &mut HostTensor,
    ) -> Result<()> {
        reference::layer_norm(x, residual, gamma, beta, eps, y)
    }

    fn attention_biased(
        &self,
        qkv: &HostTensor,
        mask: &HostTensor<u32>,
        extra: AttentionBias<'_, HostTensor>,
        heads: usize,
        out: &mut HostTensor,
    ) -> Result<()> {
        reference::attention_biased(qkv, mask, extra, heads, out)
    }

    fn bert_embeddings(
        &self,
        ids: &HostTensor<u32>,
        tables: &EmbeddingTables<'_, HostTensor>,
        eps: f32,
        y: &mut HostTensor,
    ) -> Result<()> {
        reference::bert_embeddings(ids, tables, eps, y)
    }

    fn rotary(
        &self,
        qkv: &HostTensor,
        table: &HostTensor,
        head_dim: usize,
        out: &mut HostTensor,
    ) -> Result<()> {
        reference::rotary(qkv, table, head_dim, out)
    }

    fn geglu(&self, x: &HostTensor, y: &mut HostTensor) -> Result<()> {
        reference::geglu(x, y)
    }

    fn pool(
        &self,
        x: &HostTensor,
        mask: &HostTensor<u32>,
        keep: &HostTensor<u32>,
        mode: PoolMode,
        y: &mut HostTensor,
        col0: usize,
    ) -> Result<()> {
        reference::pool(x, mask, keep, mode, y, col0)
    }

    fn mean_pool(&self, x: &HostTensor, mask: &HostTensor<u32>, y: &mut HostTensor) -> Result<()> {
        reference::mean_pool(x, mask, y)
    }

    fn l2_normalize(&self, x: &HostTensor, y: &mut HostTensor) -> Result<()> {
        reference::l2_normalize(x, y)
    }

    #[allow(clippy::too_many_arguments)] // same arguments as the GPU op
    fn conv2d(
        &self,
        x: &HostTensor,
        layout: ConvInput,
        weight: &HostTensor,
        bias: &HostTensor,
        stride: usize,
        pad: usize,
        y: &mut HostTensor,
    ) -> Result<()> {
        reference::conv2d(x, layout, weight, bias, stride, pad, y)
    }

    fn cswin_attention(
        &self,
        qkv: &HostTensor,
        lepe_w: &HostTensor,
        lepe_b: &HostTensor,
        branch: &CswinBranch,
        out: &mut HostTensor,
    ) -> Result<()> {
        reference::cswin_attention(qkv, lepe_w, lepe_b, branch, out)
    }
}

/// The kernels' CPU twins, exactly: the reference every other path is checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Twin;

impl CpuOps for Twin {}
