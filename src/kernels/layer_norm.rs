use super::elementwise::shape_rows;
use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float, check_shape};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    c: u32,
    eps: f32,
    _pad: u32,
}

/// Specialisation: the residual, and the storage types of `x` (and `residual`) and `y`.
pub(super) fn spec(has_residual: bool, f16: (bool, bool)) -> Spec {
    Spec::new()
        .storage("XT", f16.0)
        .storage("YT", f16.1)
        .bool("HAS_RESIDUAL", has_residual)
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
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, "layer_norm", "x", x)?,
        check_float(ctx, "layer_norm", "y", y)?,
    );
    let (rows, c) = shape_rows("layer_norm", x, y)?;
    for (arg, t) in [("gamma", gamma), ("beta", beta)] {
        check_dtype("layer_norm", arg, t, DType::F32)?;
        check_shape("layer_norm", arg, t, &[c])?;
    }
    if let Some(r) = residual {
        check_dtype("layer_norm", "residual", r, x.dtype())?;
        check_shape("layer_norm", "residual", r, x.shape())?;
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::Argument {
            op: "layer_norm",
            arg: "eps",
            reason: format!("{eps} is not a positive finite number"),
        });
    }
    let params = Params {
        rows: rows as u32,
        c: c as u32,
        eps,
        _pad: 0,
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::LayerNorm,
        spec: spec(residual.is_some(), f16),
        params: bytemuck::bytes_of(&params),
        buffers: &[
            x.buffer(),
            residual.map_or(&ctx.dummy, |r| r.buffer()),
            gamma.buffer(),
            beta.buffer(),
            y.buffer(),
        ],
        groups: grid_1d(ctx, rows as u32),
        traffic: Traffic {
            read: (rows * c * (1 + usize::from(residual.is_some())) * x.dtype().size() + 4 * 2 * c)
                as u64,
            written: (rows * c * y.dtype().size()) as u64,
        },
    })
}
