//! Twins of split-K: the partial products over the same ranges of K as the GPU splits them
//! (f64 sums, stored as f32 as the GPU stores them), then the reduction in split order.

use super::HostTensor;
use crate::error::{Error, Result};
use crate::kernels::{Epilogue, MatmulTile, MatrixView, StridedMatmul};

/// Twin of [`crate::kernels::matmul_split_k`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_split_k(
    x: &HostTensor,
    w: &HostTensor,
    y: &mut HostTensor,
    ep: Epilogue<'_, HostTensor>,
    p: &StridedMatmul,
    tile: MatmulTile,
    splits: usize,
) -> Result<()> {
    p.check(x.numel(), w.numel(), y.numel())?;
    if splits == 0 || p.batch[1] != 1 || p.y != MatrixView::contiguous(p.m, p.n) {
        return Err(Error::Argument {
            op: "matmul",
            arg: "splits",
            reason: format!("split-K needs splits >= 1, a contiguous Y, one batch dim: {p:?}"),
        });
    }
    let bk = tile.dims().2 as usize;
    let chunk = p.k.div_ceil(splits * bk) * bk;
    let per_split = p.batch[0] * p.m * p.n;
    let mut partial = HostTensor::zeros(&[splits, p.batch[0] * p.m, p.n]);
    for s in 0..splits {
        let begin = p.k.min(s * chunk);
        let end = p.k.min(begin + chunk);
        let mut range = *p;
        range.k = end - begin;
        range.x.offset += begin;
        range.w.offset += match p.w_layout {
            crate::kernels::WLayout::NK => begin,
            crate::kernels::WLayout::KN => begin * p.w.ld,
        };
        let mut part = HostTensor::zeros(&[p.batch[0], p.m, p.n]);
        if range.k > 0 {
            super::matmul_strided(x, w, &mut part, Epilogue::none(), &range)?;
        }
        partial.data[s * per_split..][..per_split].copy_from_slice(&part.data);
    }
    matmul_split_reduce(&partial, splits, ep, y)
}

/// Twin of [`crate::kernels::matmul_split_reduce`].
pub fn matmul_split_reduce(
    partial: &HostTensor,
    splits: usize,
    ep: Epilogue<'_, HostTensor>,
    y: &mut HostTensor,
) -> Result<()> {
    let n = y.shape.last().copied().unwrap_or(0);
    let total = y.numel();
    if partial.shape != [splits, total / n.max(1), n] {
        return Err(Error::Shape {
            op: "matmul_split_reduce",
            arg: "partial",
            expected: format!("[{splits}, {}, {n}]", total / n.max(1)),
            found: partial.shape.clone(),
        });
    }
    super::check_epilogue(&ep, n, y)?;
    for i in 0..total {
        let sum: f64 = (0..splits)
            .map(|s| partial.data[s * total + i] as f64)
            .sum();
        let mut v = ep.alpha as f64 * sum;
        if let Some(bias) = ep.bias {
            v += bias.data[i % n] as f64;
        }
        v = ep.act.apply(v);
        if let Some(r) = ep.residual {
            v += r.data[i] as f64;
        }
        y.data[i] = v as f32;
    }
    Ok(())
}
