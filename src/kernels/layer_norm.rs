use super::elementwise::rows_of;
use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Recorder, Spec, Traffic, grid_1d};
use crate::tensor::{DType, Tensor, check_dtype, check_shape};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    _pad: u32,
}

pub(super) fn spec(has_residual: bool) -> Spec {
    Spec::new().bool("HAS_RESIDUAL", has_residual)
}

/// LayerNorm over the last dimension of `x + residual` (or `x`), scaled by `gamma` and shifted
/// by `beta` ([C] each). `x`, `residual` and `y` are f32 of the same shape.
pub fn layer_norm(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &Tensor,
) -> Result<()> {
    let (rows, c) = rows_of("layer_norm", x, y)?;
    for (arg, t) in [("gamma", gamma), ("beta", beta)] {
        check_dtype("layer_norm", arg, t, DType::F32)?;
        check_shape("layer_norm", arg, t, &[c])?;
    }
    if let Some(r) = residual {
        check_dtype("layer_norm", "residual", r, DType::F32)?;
        check_shape("layer_norm", "residual", r, x.shape())?;
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::Argument {
            op: "layer_norm",
            arg: "eps",
            reason: format!("{eps} is not a positive finite number"),
        });
    }
    let ctx = rec.context();
    let params = Params {
        rows: rows as u32,
        c: c as u32,
        eps,
        _pad: 0,
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::LayerNorm,
        spec: spec(residual.is_some()),
        params: bytemuck::bytes_of(&params),
        buffers: &[
            x.buffer(),
            residual.map_or(&ctx.dummy, |r| r.buffer()),
            gamma.buffer(),
            beta.buffer(),
            y.buffer(),
        ],
        groups: grid_1d(ctx, rows as u32),
        traffic: Traffic::elements(
            rows * c * (1 + usize::from(residual.is_some())) + 2 * c,
            rows * c,
        ),
    })
}
