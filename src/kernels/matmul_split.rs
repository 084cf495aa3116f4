//! Split-K for products with few rows: K cut into ranges whose partial products go to the
//! context's scratch buffer (`matmul.wgsl` with SPLITS > 1), then `matmul_split_reduce` sums
//! them in split order and applies the epilogue. Twins: `reference::matmul_split_k`,
//! `reference::matmul_split_reduce`.

use super::matmul::{
    Activation, Epilogue, MatmulTile, MatrixView, Params, StridedMatmul, bindings, check_operands,
    matmul_with_tile, operand_traffic,
};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float, check_shape};

/// Workgroups below which a product leaves a GPU idle: twice the multiprocessors of the
/// largest cards (an H100 has 132).
const BUSY_WORKGROUPS: usize = 264;

/// How many ranges of K to split a product into: more than one only for products with at
/// most 256 rows (per batch entry) whose tiles would leave a hardware GPU idle, with a long
/// enough K (at least four K steps per split), a contiguous Y and a workgroup tile. Software
/// adapters have few cores and never split.
pub fn split_k(ctx: &Context, p: &StridedMatmul, tile: MatmulTile) -> usize {
    let (bm, bn, bk, ..) = tile.dims();
    let software = ctx.capabilities().is_software();
    if software || !split_k_fits(p, tile) || p.m > 256 {
        return 1;
    }
    let groups = p.n.div_ceil(bn as usize) * p.m.div_ceil(bm as usize) * p.batch[0];
    let wanted = BUSY_WORKGROUPS.div_ceil(groups.max(1));
    let most = p.k / (4 * bk as usize);
    wanted.min(most).min(MAX_SPLITS)
}

/// The most K ranges split-K takes.
pub const MAX_SPLITS: usize = 16;

/// Whether split-K can run this product with this tile: a workgroup tile, Y contiguous
/// ([batch, M, N]) and one batch dimension.
fn split_k_fits(p: &StridedMatmul, tile: MatmulTile) -> bool {
    tile != MatmulTile::Subgroup && p.batch[1] == 1 && p.y == MatrixView::contiguous(p.m, p.n)
}

/// [`matmul_with_tile`] with K cut into `splits` ranges (small-M products): each range's
/// partial product goes to the context's scratch buffer, then [`matmul_split_reduce`] sums
/// them in order and applies the epilogue. Any K works (the last range is cut at K).
#[allow(clippy::too_many_arguments)]
pub fn matmul_split_k(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    ep: Epilogue<'_>,
    p: &StridedMatmul,
    tile: MatmulTile,
    splits: usize,
) -> Result<()> {
    let ctx = rec.context();
    let f16 = check_operands(ctx, x, w, y, &ep, p)?;
    if !split_k_fits(p, tile) || !(2..=MAX_SPLITS).contains(&splits) {
        return Err(Error::Argument {
            op: "matmul",
            arg: "splits",
            reason: format!(
                "split-K takes 2 to {MAX_SPLITS} splits, a workgroup tile, a contiguous Y and \
                 one batch dimension (got {splits} splits, {tile:?}, {p:?})"
            ),
        });
    }
    if !tile.fits(ctx) {
        return matmul_with_tile(rec, x, w, y, ep, p, tile);
    }
    let rows = p.batch[0] * p.m;
    let partial = ctx.split_scratch(&[splits, rows, p.n])?;
    let mut params = Params::new(p, 1.0);
    params.y[3] = (rows * p.n) as u32;
    let (bm, bn, ..) = tile.dims();
    let none = Epilogue::none();
    let spec = tile.spec(
        p.w_layout,
        p.vec4_loads(),
        false,
        Activation::None,
        false,
        (f16.0, f16.1, false),
        splits as u32,
    );
    let mut traffic = operand_traffic(p, x, w, &partial, &none);
    traffic.written *= splits as u64;
    rec.dispatch(Dispatch {
        kernel: Kernel::Matmul,
        spec,
        params: bytemuck::bytes_of(&params),
        buffers: &bindings(ctx, x, w, &partial, &none),
        groups: [
            (p.n as u32).div_ceil(bn),
            (p.m as u32).div_ceil(bm),
            (p.batch[0] * splits) as u32,
        ],
        traffic,
    })?;
    matmul_split_reduce(rec, &partial, splits, ep, y)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ReduceParams {
    total: u32,
    n: u32,
    splits: u32,
    alpha: f32,
}

/// The second half of split-K: `y = epilogue(alpha · Σ_s partial[s])` for `partial`
/// [splits, rows, N] f32 and a contiguous `y` [.., N] of rows x N values, summed in split
/// order.
pub fn matmul_split_reduce(
    rec: &mut Recorder<'_>,
    partial: &Tensor,
    splits: usize,
    ep: Epilogue<'_>,
    y: &Tensor,
) -> Result<()> {
    let ctx = rec.context();
    let y16 = check_float(ctx, "matmul_split_reduce", "y", y)?;
    check_dtype("matmul_split_reduce", "partial", partial, DType::F32)?;
    let n = y.shape().last().copied().unwrap_or(0);
    let total = y.numel();
    check_shape(
        "matmul_split_reduce",
        "partial",
        partial,
        &[splits, total / n.max(1), n],
    )?;
    if let Some(bias) = ep.bias {
        check_dtype("matmul_split_reduce", "bias", bias, DType::F32)?;
        check_shape("matmul_split_reduce", "bias", bias, &[n])?;
    }
    if let Some(residual) = ep.residual {
        check_dtype("matmul_split_reduce", "residual", residual, y.dtype())?;
        check_shape("matmul_split_reduce", "residual", residual, y.shape())?;
    }
    let params = ReduceParams {
        total: total as u32,
        n: n as u32,
        splits: splits as u32,
        alpha: ep.alpha,
    };
    let spec = crate::pipeline::Spec::new()
        .storage("YT", y16)
        .bool("HAS_BIAS", ep.bias.is_some())
        .bool("HAS_RESIDUAL", ep.residual.is_some())
        .u32("ACT", ep.act.code());
    let element = y.dtype().size();
    rec.dispatch(Dispatch {
        kernel: Kernel::MatmulSplitReduce,
        spec,
        params: bytemuck::bytes_of(&params),
        buffers: &[
            partial.buffer(),
            ep.bias.map_or(&ctx.dummy, |b| b.buffer()),
            ep.residual.map_or(&ctx.dummy, |r| r.buffer()),
            y.buffer(),
        ],
        groups: crate::recorder::grid_1d(ctx, total.div_ceil(256) as u32),
        traffic: Traffic {
            read: (4 * splits * total
                + 4 * if ep.bias.is_some() { n } else { 0 }
                + if ep.residual.is_some() {
                    element * total
                } else {
                    0
                }) as u64,
            written: (element * total) as u64,
        },
    })
}

/// The specialisations of [`matmul_split_reduce`] shader validation covers.
pub(super) fn split_reduce_variants() -> Vec<crate::pipeline::Spec> {
    let mut out = Vec::new();
    for y16 in [false, true] {
        for (bias, residual, act) in [
            (false, false, Activation::None),
            (true, false, Activation::Gelu),
            (true, true, Activation::Gelu),
            (false, true, Activation::Tanh),
            (true, false, Activation::Relu),
        ] {
            out.push(
                crate::pipeline::Spec::new()
                    .storage("YT", y16)
                    .bool("HAS_BIAS", bias)
                    .bool("HAS_RESIDUAL", residual)
                    .u32("ACT", act.code()),
            );
        }
    }
    out
}
