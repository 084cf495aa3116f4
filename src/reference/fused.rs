//! Twins of the fused kernels and of the variants that compute what another kernel does,
//! composed from the twins of the kernels they replace.

use super::HostTensor;
use crate::error::Result;
use crate::kernels::Epilogue;

/// Twin of [`crate::kernels::matmul_layer_norm`]: the matmul twin with the bias and residual
/// epilogue (f64 sums), then the LayerNorm twin.
#[allow(clippy::too_many_arguments)]
pub fn matmul_layer_norm(
    x: &HostTensor,
    w: &HostTensor,
    bias: Option<&HostTensor>,
    residual: &HostTensor,
    gamma: &HostTensor,
    beta: &HostTensor,
    eps: f32,
    y: &mut HostTensor,
) -> Result<()> {
    let mut sums = HostTensor::zeros(&y.shape);
    let mut ep = Epilogue::none().residual(residual);
    if let Some(b) = bias {
        ep = ep.bias(b);
    }
    super::matmul(x, w, &mut sums, ep)?;
    super::layer_norm(&sums, None, gamma, beta, eps, y)
}

/// Twin of [`crate::kernels::layer_norm_subgroup`]: the LayerNorm twin (the variant computes
/// the same LayerNorm, one subgroup per row).
pub fn layer_norm_subgroup(
    x: &HostTensor,
    residual: Option<&HostTensor>,
    gamma: &HostTensor,
    beta: &HostTensor,
    eps: f32,
    y: &mut HostTensor,
) -> Result<()> {
    super::layer_norm(x, residual, gamma, beta, eps, y)
}
