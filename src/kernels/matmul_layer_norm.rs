//! The post-norm transformer's "linear, add & norm" in one dispatch:
//! `y = LayerNorm(X·Wᵀ + bias + residual) · gamma + beta`, a workgroup owning whole rows
//! (`shaders/matmul_layer_norm.wgsl`). It replaces a matmul with a residual epilogue and the
//! LayerNorm after it (two dispatches and one round trip of the sums through memory).

use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float, check_shape};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    eps: f32,
}

/// Rows of Y per workgroup (`BM` in the shader).
const ROWS_PER_GROUP: usize = 16;

/// Specialisation: the bias, and the storage types of X, W and Y (and the residual).
pub(super) fn spec(has_bias: bool, f16: (bool, bool, bool)) -> Spec {
    Spec::new()
        .storage("XT", f16.0)
        .storage("WT", f16.1)
        .storage("YT", f16.2)
        .bool("HAS_BIAS", has_bias)
}

/// `y = LayerNorm(x·wᵀ + bias + residual)` over the last dimension, scaled by `gamma` and
/// shifted by `beta`. `x` is [.., K] (rows = all leading dimensions), `w` [N, K], `bias`,
/// `gamma`, `beta` [N] f32, `residual` and `y` [.., N] of one storage type. f16 storage of
/// `x`, `w` and `y` where the adapter has `SHADER_F16`; the arithmetic is f32. The sums are
/// stored in `y` before they are normalised, rounded to its storage type as the unfused
/// matmul would store them.
#[allow(clippy::too_many_arguments)]
pub fn matmul_layer_norm(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &Tensor,
) -> Result<()> {
    const OP: &str = "matmul_layer_norm";
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, OP, "x", x)?,
        check_float(ctx, OP, "w", w)?,
        check_float(ctx, OP, "y", y)?,
    );
    let shape_err = |arg: &'static str, expected: String, t: &Tensor| Error::Shape {
        op: OP,
        arg,
        expected,
        found: t.shape().to_vec(),
    };
    let (&k, lead) = x
        .shape()
        .split_last()
        .ok_or_else(|| shape_err("x", "[.., K]".into(), x))?;
    let [n, wk] = w.shape() else {
        return Err(shape_err("w", "[N, K]".into(), w));
    };
    let (n, m) = (*n, lead.iter().product::<usize>());
    if *wk != k || k == 0 || n == 0 {
        return Err(shape_err("w", format!("[N, {k}] with N, K > 0"), w));
    }
    let mut y_shape = lead.to_vec();
    y_shape.push(n);
    check_shape(OP, "y", y, &y_shape)?;
    check_dtype(OP, "residual", residual, y.dtype())?;
    check_shape(OP, "residual", residual, &y_shape)?;
    for (arg, t) in [("gamma", Some(gamma)), ("beta", Some(beta)), ("bias", bias)] {
        if let Some(t) = t {
            check_dtype(OP, arg, t, DType::F32)?;
            check_shape(OP, arg, t, &[n])?;
        }
    }
    if !(eps.is_finite() && eps > 0.0) {
        return Err(Error::Argument {
            op: OP,
            arg: "eps",
            reason: format!("{eps} is not a positive finite number"),
        });
    }
    let too_big = |v: usize| u32::try_from(v).is_err();
    if too_big(m * k) || too_big(n * k) || too_big(m * n) {
        return Err(Error::Argument {
            op: OP,
            arg: "x",
            reason: format!("{m}x{n}x{k} indexes past 2^32 elements"),
        });
    }
    let params = Params {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        eps,
    };
    let size = |t: &Tensor| t.numel() * t.dtype().size();
    rec.dispatch(Dispatch {
        kernel: Kernel::MatmulLayerNorm,
        spec: spec(bias.is_some(), f16),
        params: bytemuck::bytes_of(&params),
        buffers: &[
            x.buffer(),
            w.buffer(),
            bias.map_or(&ctx.dummy, |b| b.buffer()),
            residual.buffer(),
            gamma.buffer(),
            beta.buffer(),
            y.buffer(),
        ],
        groups: grid_1d(ctx, m.div_ceil(ROWS_PER_GROUP) as u32),
        traffic: Traffic {
            read: (size(x) + size(w) + size(residual) + 4 * n * (2 + usize::from(bias.is_some())))
                as u64,
            written: size(y) as u64,
        },
    })
}
