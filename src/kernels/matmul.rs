//! Tiled matmul with a fused epilogue: `Y = act(alpha · X·Wᵀ + bias) + residual`.

use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float, check_shape};

pub use super::matmul_tile::MatmulTile;

/// The activation a matmul epilogue applies after the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Activation {
    #[default]
    None,
    /// Exact-erf GELU (BERT's FFN).
    Gelu,
    /// tanh (BERT's pooler).
    Tanh,
    /// max(x, 0) (DistilBERT's `activation: relu`).
    Relu,
}

impl Activation {
    pub(super) const fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Gelu => 1,
            Activation::Tanh => 2,
            Activation::Relu => 3,
        }
    }

    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::None => x,
            Activation::Gelu => crate::host::gelu_scalar(x),
            Activation::Tanh => x.tanh(),
            Activation::Relu => x.max(0.0),
        }
    }
}

/// What happens to `alpha · X·Wᵀ` before it is stored: `+ bias[n]`, then the activation,
/// then `+ residual` (laid out as the output). Generic over the tensor type so the CPU twin
/// (`reference::matmul`) takes the same struct with host tensors.
#[derive(Debug)]
pub struct Epilogue<'a, T = Tensor> {
    pub alpha: f32,
    pub bias: Option<&'a T>,
    pub act: Activation,
    pub residual: Option<&'a T>,
}

// Manual impls: the derives would demand `T: Copy`, but only references are held.
impl<T> Clone for Epilogue<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Epilogue<'_, T> {}

impl<T> Default for Epilogue<'_, T> {
    fn default() -> Self {
        Self {
            alpha: 1.0,
            bias: None,
            act: Activation::None,
            residual: None,
        }
    }
}

impl<'a, T> Epilogue<'a, T> {
    /// Plain `X·Wᵀ`.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn bias(mut self, bias: &'a T) -> Self {
        self.bias = Some(bias);
        self
    }

    pub fn gelu(mut self) -> Self {
        self.act = Activation::Gelu;
        self
    }

    pub fn act(mut self, act: Activation) -> Self {
        self.act = act;
        self
    }

    pub fn tanh(mut self) -> Self {
        self.act = Activation::Tanh;
        self
    }

    pub fn residual(mut self, residual: &'a T) -> Self {
        self.residual = Some(residual);
        self
    }

    pub fn alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
}

/// How W is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WLayout {
    /// [N, K], as PyTorch's `Linear.weight` and as K in attention's Q·Kᵀ.
    NK,
    /// [K, N], as V in attention's P·V.
    KN,
}

/// Where a batch of matrices lives inside a tensor (in elements): matrix `b` of the batch,
/// with `b = outer · batch_inner + inner`, starts at `offset + outer·outer_stride +
/// inner·inner_stride`, and its rows are `ld` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixView {
    pub offset: usize,
    pub ld: usize,
    pub outer_stride: usize,
    pub inner_stride: usize,
}

impl MatrixView {
    /// A contiguous batch of `rows x cols` matrices.
    pub fn contiguous(rows: usize, cols: usize) -> Self {
        Self {
            offset: 0,
            ld: cols,
            outer_stride: rows * cols,
            inner_stride: 0,
        }
    }

    /// Offset of matrix `b` (counted over the whole batch) of a batch whose inner size is
    /// `inner`.
    pub fn base(&self, b: usize, inner: usize) -> usize {
        self.offset + (b / inner) * self.outer_stride + (b % inner) * self.inner_stride
    }

    /// Largest element index touched by a batch of `rows x cols` matrices, plus one.
    fn extent(&self, batch: [usize; 2], rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 || batch[0] == 0 || batch[1] == 0 {
            return 0;
        }
        self.offset
            + (batch[0] - 1) * self.outer_stride
            + (batch[1] - 1) * self.inner_stride
            + (rows - 1) * self.ld
            + cols
    }
}

/// A batched, strided product: `batch[0] · batch[1]` products of X (M x K) with W, giving
/// Y (M x N). Attention's Q·Kᵀ and P·V read their heads straight out of a fused QKV buffer
/// this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StridedMatmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// (outer, inner) batch sizes, e.g. (batch, heads).
    pub batch: [usize; 2],
    pub x: MatrixView,
    pub w: MatrixView,
    pub w_layout: WLayout,
    pub y: MatrixView,
}

impl StridedMatmul {
    /// Compulsory traffic: each distinct X and W matrix read once (a view with stride 0 over a
    /// batch dimension is one matrix for it) at its element size in bytes, bias and residual
    /// once (f32) and the residual once, Y written once (element sizes X, W, Y in bytes).
    pub fn traffic(&self, sizes: (usize, usize, usize), bias: bool, residual: bool) -> Traffic {
        let distinct = |v: &MatrixView| {
            (if v.outer_stride > 0 { self.batch[0] } else { 1 })
                * (if v.inner_stride > 0 { self.batch[1] } else { 1 })
        };
        let outputs = self.batch[0] * self.batch[1] * self.m * self.n;
        let operands = distinct(&self.x) * self.m * self.k * sizes.0
            + distinct(&self.w) * self.n * self.k * sizes.1;
        let epilogue =
            4 * if bias { self.n } else { 0 } + sizes.2 * if residual { outputs } else { 0 };
        Traffic {
            read: (operands + epilogue) as u64,
            written: (sizes.2 * outputs) as u64,
        }
    }

    /// The plain case: contiguous X [batch, M, K], W [N, K] shared by the whole batch
    /// (`w_shared`) or [batch, N, K], Y [batch, M, N].
    pub fn contiguous(batch: usize, m: usize, n: usize, k: usize, w_shared: bool) -> Self {
        let mut w = MatrixView::contiguous(n, k);
        if w_shared {
            w.outer_stride = 0;
        }
        Self {
            m,
            n,
            k,
            batch: [batch, 1],
            x: MatrixView::contiguous(m, k),
            w,
            w_layout: WLayout::NK,
            y: MatrixView::contiguous(m, n),
        }
    }

    /// Checks every view against the tensors' sizes; the CPU twin uses it too.
    pub fn check(&self, x_len: usize, w_len: usize, y_len: usize) -> Result<()> {
        let (w_rows, w_cols) = match self.w_layout {
            WLayout::NK => (self.n, self.k),
            WLayout::KN => (self.k, self.n),
        };
        for (arg, view, rows, cols, len) in [
            ("x", &self.x, self.m, self.k, x_len),
            ("w", &self.w, w_rows, w_cols, w_len),
            ("y", &self.y, self.m, self.n, y_len),
        ] {
            let extent = view.extent(self.batch, rows, cols);
            if extent > len {
                return Err(Error::Shape {
                    op: "matmul",
                    arg,
                    expected: format!(
                        "at least {extent} elements for {:?} matrices of {rows} x {cols} at {view:?}",
                        self.batch
                    ),
                    found: vec![len],
                });
            }
        }
        Ok(())
    }

    /// Whether X and W can be loaded as aligned vec4s: the contiguous dimension (K for X and
    /// for W as [N, K]; N for W as [K, N]) and every offset and stride a multiple of 4.
    pub(super) fn vec4_loads(&self) -> (bool, bool) {
        let aligned = |v: &MatrixView, contiguous: usize| {
            [contiguous, v.ld, v.offset, v.outer_stride, v.inner_stride]
                .iter()
                .all(|d| d % 4 == 0)
        };
        let w_contiguous = match self.w_layout {
            WLayout::NK => self.k,
            WLayout::KN => self.n,
        };
        (aligned(&self.x, self.k), aligned(&self.w, w_contiguous))
    }

    fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k * self.batch[0] * self.batch[1]) as f64
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(super) struct Params {
    m: u32,
    n: u32,
    k: u32,
    batch_inner: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    alpha: f32,
    x: [u32; 4],
    w: [u32; 4],
    pub(super) y: [u32; 4],
}

impl Params {
    pub(super) fn new(p: &StridedMatmul, alpha: f32) -> Self {
        Self {
            m: p.m as u32,
            n: p.n as u32,
            k: p.k as u32,
            batch_inner: p.batch[1].max(1) as u32,
            lda: p.x.ld as u32,
            ldb: p.w.ld as u32,
            ldc: p.y.ld as u32,
            alpha,
            x: view_params(&p.x),
            w: view_params(&p.w),
            y: view_params(&p.y),
        }
    }
}

/// The buffers every matmul variant binds, in binding order: x, w, bias, residual, x and w
/// again (seen as vec4s), y. An absent bias or residual binds the context's dummy buffer.
pub(super) fn bindings<'b>(
    ctx: &'b Context,
    x: &'b Tensor,
    w: &'b Tensor,
    y: &'b Tensor,
    ep: &Epilogue<'b>,
) -> [&'b wgpu::Buffer; 7] {
    [
        x.buffer(),
        w.buffer(),
        ep.bias.map_or(&ctx.dummy, |b| b.buffer()),
        ep.residual.map_or(&ctx.dummy, |r| r.buffer()),
        x.buffer(),
        w.buffer(),
        y.buffer(),
    ]
}

/// [`StridedMatmul::traffic`] at the operands' element sizes and epilogue.
pub(super) fn operand_traffic(
    p: &StridedMatmul,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    ep: &Epilogue<'_>,
) -> Traffic {
    p.traffic(
        (x.dtype().size(), w.dtype().size(), y.dtype().size()),
        ep.bias.is_some(),
        ep.residual.is_some(),
    )
}

/// The operand checks every matmul variant makes; returns which of X, W, Y are f16.
pub(super) fn check_operands(
    ctx: &Context,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    ep: &Epilogue<'_>,
    p: &StridedMatmul,
) -> Result<(bool, bool, bool)> {
    let f16 = (
        check_float(ctx, "matmul", "x", x)?,
        check_float(ctx, "matmul", "w", w)?,
        check_float(ctx, "matmul", "y", y)?,
    );
    p.check(x.numel(), w.numel(), y.numel())?;
    if let Some(bias) = ep.bias {
        check_dtype("matmul", "bias", bias, DType::F32)?;
        check_shape("matmul", "bias", bias, &[p.n])?;
    }
    if let Some(residual) = ep.residual {
        check_dtype("matmul", "residual", residual, y.dtype())?;
        check_shape("matmul", "residual", residual, y.shape())?;
    }
    Ok(f16)
}

fn view_params(v: &MatrixView) -> [u32; 4] {
    [
        v.offset as u32,
        v.outer_stride as u32,
        v.inner_stride as u32,
        0,
    ]
}

/// `Y = epilogue(X·Wᵀ)` for X [.., M, K], W [N, K] (shared over the batch) or
/// [.., N, K] (one per batch entry, same leading dims as X), Y [.., M, N].
pub fn matmul(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    ep: Epilogue<'_>,
) -> Result<()> {
    let problem = plain_problem(x.shape(), w.shape(), y.shape())?;
    matmul_strided(rec, x, w, y, ep, &problem)
}

/// Shapes of the plain [`matmul`] as a [`StridedMatmul`]; shared with the CPU twin.
pub fn plain_problem(x: &[usize], w: &[usize], y: &[usize]) -> Result<StridedMatmul> {
    let shape_err = |arg, expected: String, found: &[usize]| Error::Shape {
        op: "matmul",
        arg,
        expected,
        found: found.to_vec(),
    };
    let &[ref lead @ .., m, k] = x else {
        return Err(shape_err("x", "[.., M, K]".into(), x));
    };
    let batch: usize = lead.iter().product();
    let (n, w_shared) = match *w {
        [n, wk] if wk == k => (n, true),
        [ref wl @ .., n, wk] if wk == k && wl == lead => (n, false),
        _ => {
            return Err(shape_err(
                "w",
                format!("[N, {k}] or {lead:?} + [N, {k}]"),
                w,
            ));
        }
    };
    let mut y_expected = lead.to_vec();
    y_expected.extend([m, n]);
    if y != y_expected {
        return Err(shape_err("y", format!("{y_expected:?}"), y));
    }
    Ok(StridedMatmul::contiguous(batch, m, n, k, w_shared))
}

/// The general batched, strided product; see [`StridedMatmul`]. The tile is chosen per
/// problem and adapter ([`MatmulTile::choose`]).
pub fn matmul_strided(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    ep: Epilogue<'_>,
    problem: &StridedMatmul,
) -> Result<()> {
    // Tensor cores where the adapter has them, for f16 operands.
    if x.dtype() == DType::F16
        && w.dtype() == DType::F16
        && super::matmul_coop::coop_fragment(rec.context()).is_some()
        && rec
            .context()
            .family_enabled(crate::selftest::Family::CoopMatmul)
    {
        return super::matmul_coop::matmul_coop(rec, x, w, y, ep, problem);
    }
    let (x16, w16) = (x.dtype() == DType::F16, w.dtype() == DType::F16);
    let batch = problem.batch[0] * problem.batch[1];
    // Tune tables measure X and W both f32 or both f16; mixed operands use the heuristic.
    let tile = if x16 == w16 {
        MatmulTile::choose(rec.context(), problem.m, problem.n, problem.k, batch, x16)
    } else {
        MatmulTile::heuristic(rec.context(), problem.m, problem.n, batch)
    };
    // The subgroup kernel reads W along K: W as [K, N] (unmeasured there) takes a tile.
    let tile = match (tile, problem.w_layout) {
        (MatmulTile::Subgroup, WLayout::KN) => MatmulTile::Skinny,
        (tile, _) => tile,
    };
    match super::split_k(rec.context(), problem, tile) {
        1 => matmul_with_tile(rec, x, w, y, ep, problem, tile),
        splits => super::matmul_split_k(rec, x, w, y, ep, problem, tile, splits),
    }
}

/// [`matmul_strided`] with an explicit tile (tests and benchmarks cover both).
pub fn matmul_with_tile(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    ep: Epilogue<'_>,
    p: &StridedMatmul,
    tile: MatmulTile,
) -> Result<()> {
    let ctx = rec.context();
    let f16 = check_operands(ctx, x, w, y, &ep, p)?;
    if tile == MatmulTile::Subgroup && !tile.fits(ctx) {
        return Err(Error::Argument {
            op: "matmul",
            arg: "tile",
            reason: format!(
                "the subgroup variant needs the SUBGROUP feature outside browsers; {} offers \
                 no subgroups here",
                ctx.capabilities().adapter.name
            ),
        });
    }
    if !tile.fits(ctx) {
        return Err(Error::Limit {
            what: format!("matmul tile {tile:?} ({} invocations)", tile.invocations()),
            requested: tile.workgroup_bytes() as u64,
            limit: ctx.limits().max_compute_workgroup_storage_size as u64,
            limit_name: "max_compute_workgroup_storage_size",
        });
    }
    let (bm, bn, ..) = tile.dims();
    let params = Params::new(p, ep.alpha);
    let kernel = match tile {
        MatmulTile::Subgroup => Kernel::MatmulSubgroup,
        _ => Kernel::Matmul,
    };
    let groups = [
        (p.n as u32).div_ceil(bn),
        (p.m as u32).div_ceil(bm),
        (p.batch[0] * p.batch[1]) as u32,
    ];
    rec.dispatch(Dispatch {
        kernel,
        spec: tile.spec(
            p.w_layout,
            p.vec4_loads(),
            ep.bias.is_some(),
            ep.act,
            ep.residual.is_some(),
            f16,
            1,
        ),
        params: bytemuck::bytes_of(&params),
        buffers: &bindings(ctx, x, w, y, &ep),
        groups,
        traffic: operand_traffic(p, x, w, y, &ep),
    })
}

/// Floating-point operations of a product (2·M·N·K per matrix).
pub fn flops(p: &StridedMatmul) -> f64 {
    p.flops()
}
