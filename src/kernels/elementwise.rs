//! Shared shape checks and uniforms for the simple one-row-per-workgroup and
//! one-element-per-invocation kernels.

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, check_dtype, check_shape};

/// Uniforms of the kernels that only need two sizes (`rows`/`n` and `c`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Sizes {
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub d: u32,
}

impl Sizes {
    pub fn new(a: usize, b: usize) -> Self {
        Self {
            a: a as u32,
            b: b as u32,
            c: 0,
            d: 0,
        }
    }
}

/// `x` is f32 with at least one dimension and `y` is f32 of the same shape; returns
/// (rows, last dimension).
pub(crate) fn rows_of(op: &'static str, x: &Tensor, y: &Tensor) -> Result<(usize, usize)> {
    check_dtype(op, "x", x, DType::F32)?;
    check_dtype(op, "y", y, DType::F32)?;
    shape_rows(op, x, y)
}

/// [`rows_of`] without the dtype checks (for kernels that also take f16 storage).
pub(crate) fn shape_rows(op: &'static str, x: &Tensor, y: &Tensor) -> Result<(usize, usize)> {
    let Some(&c) = x.shape().last() else {
        return Err(Error::Shape {
            op,
            arg: "x",
            expected: "at least one dimension".into(),
            found: x.shape().to_vec(),
        });
    };
    check_shape(op, "y", y, x.shape())?;
    let rows = x.numel().checked_div(c).unwrap_or(0);
    Ok((rows, c))
}
