//! Rotary position embedding of a fused QKV projection (`shaders/rotary.wgsl`) and GeGLU's
//! gate (`shaders/geglu.wgsl`): ModernBERT's two elementwise steps.

use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

/// Checks shared with the twin: qkv and out [B, T, 3C], table [2, T, D/2], D even and dividing
/// C. Returns (rows, T, C, D).
pub fn rotary_dims(
    qkv: &[usize],
    table: &[usize],
    head_dim: usize,
    out: &[usize],
) -> Result<(usize, usize, usize, usize)> {
    let &[b, t, c3] = qkv else {
        return Err(Error::Shape {
            op: "rotary",
            arg: "qkv",
            expected: "[B, T, 3C]".into(),
            found: qkv.to_vec(),
        });
    };
    let c = c3 / 3;
    if c3 % 3 != 0 || head_dim == 0 || !head_dim.is_multiple_of(2) || c % head_dim != 0 {
        return Err(Error::Argument {
            op: "rotary",
            arg: "head_dim",
            reason: format!("{head_dim} is not an even size dividing C = {c} (qkv width {c3})"),
        });
    }
    for (arg, shape, want) in [
        ("table", table, vec![2, t, head_dim / 2]),
        ("out", out, vec![b, t, c3]),
    ] {
        if shape != want {
            return Err(Error::Shape {
                op: "rotary",
                arg,
                expected: format!("{want:?}"),
                found: shape.to_vec(),
            });
        }
    }
    Ok((b * t, t, c, head_dim))
}

pub(super) fn spec(f16: (bool, bool)) -> Spec {
    Spec::new().storage("XT", f16.0).storage("YT", f16.1)
}

/// Rotates the query and key heads of `qkv` [B, T, 3C] by the positions' angles (`table` [2, T,
/// D/2] f32: cos, then sin) into `out` (values copied).
pub fn rotary(
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    table: &Tensor,
    head_dim: usize,
    out: &Tensor,
) -> Result<()> {
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, "rotary", "qkv", qkv)?,
        check_float(ctx, "rotary", "out", out)?,
    );
    check_dtype("rotary", "table", table, DType::F32)?;
    let (rows, t, c, d) = rotary_dims(qkv.shape(), table.shape(), head_dim, out.shape())?;
    let params = Params {
        a: rows as u32,
        b: t as u32,
        c: c as u32,
        d: d as u32,
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::Rotary,
        spec: spec(f16),
        params: bytemuck::bytes_of(&params),
        buffers: &[qkv.buffer(), table.buffer(), out.buffer()],
        groups: grid_1d(ctx, (rows * 3 * c).div_ceil(256) as u32),
        traffic: Traffic::whole(&[qkv, table], out),
    })
}

/// Checks shared with the twin: x [.., 2I], y [.., I] with the same leading dimensions.
/// Returns (rows, I).
pub fn geglu_dims(x: &[usize], y: &[usize]) -> Result<(usize, usize)> {
    let ok = !x.is_empty()
        && x.len() == y.len()
        && x[..x.len() - 1] == y[..y.len() - 1]
        && x[x.len() - 1] == 2 * y[y.len() - 1];
    if !ok {
        return Err(Error::Shape {
            op: "geglu",
            arg: "y",
            expected: format!("x's shape {x:?} with the last dimension halved"),
            found: y.to_vec(),
        });
    }
    let i = y[y.len() - 1];
    Ok((y.iter().product::<usize>() / i.max(1), i))
}

/// `y = GELU(x[.., :I]) * x[.., I:]` (ModernBERT's GeGLU).
pub fn geglu(rec: &mut Recorder<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, "geglu", "x", x)?,
        check_float(ctx, "geglu", "y", y)?,
    );
    let (rows, i) = geglu_dims(x.shape(), y.shape())?;
    let params = Params {
        a: rows as u32,
        b: i as u32,
        c: 0,
        d: 0,
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::Geglu,
        spec: spec(f16),
        params: bytemuck::bytes_of(&params),
        buffers: &[x.buffer(), y.buffer()],
        groups: grid_1d(ctx, (rows * i).div_ceil(256) as u32),
        traffic: Traffic::whole(&[x], y),
    })
}
