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
/// The subgroup variant's specialisation: as [`spec`], plus vec4 loads when C % 4 == 0.
pub(super) fn subgroup_spec(has_residual: bool, f16: (bool, bool), vec4: bool) -> Spec {
    spec(has_residual, f16).bool("VEC", vec4)
}

/// Rows per workgroup of `layer_norm_subgroup` (its ROWS).
const SUBGROUP_ROWS: u32 = 4;

/// Which LayerNorm kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerNormVariant {
    /// `layer_norm.wgsl`: one workgroup of 256 per row, workgroup-memory reductions.
    Workgroup,
    /// `layer_norm_subgroup.wgsl`: one subgroup per row, several rows per workgroup, vec4 loads.
    Subgroup,
}

impl LayerNormVariant {
    /// The subgroup kernel where the adapter's subgroups passed the context's known-answer
    /// check (the `subgroup_matmul` family: the same subgroupAdd); else the workgroup kernel.
    pub fn choose(ctx: &crate::Context) -> Self {
        let subgroups = super::MatmulTile::Subgroup.fits(ctx)
            && ctx.family_enabled(crate::selftest::Family::SubgroupMatmul);
        if subgroups {
            LayerNormVariant::Subgroup
        } else {
            LayerNormVariant::Workgroup
        }
    }
}

/// `y = LayerNorm(x [+ residual]) * gamma + beta` over the last dimension, by the variant
/// [`LayerNormVariant::choose`] picks for the adapter.
pub fn layer_norm(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &Tensor,
) -> Result<()> {
    let variant = LayerNormVariant::choose(rec.context());
    layer_norm_variant(rec, x, residual, gamma, beta, eps, y, variant)
}

/// [`layer_norm`] by the subgroup kernel (tests force it; the twin is the same).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_subgroup(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &Tensor,
) -> Result<()> {
    layer_norm_variant(
        rec,
        x,
        residual,
        gamma,
        beta,
        eps,
        y,
        LayerNormVariant::Subgroup,
    )
}

/// [`layer_norm`] by the given kernel (tests force each; both have the same twin).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_variant(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    residual: Option<&Tensor>,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &Tensor,
    variant: LayerNormVariant,
) -> Result<()> {
    let ctx = rec.context();
    // Checked here, where either variant can be asked for, so a forced subgroup variant on an
    // adapter without subgroups is a clear error rather than a pipeline failure.
    if variant == LayerNormVariant::Subgroup && !super::MatmulTile::Subgroup.fits(ctx) {
        return Err(Error::Argument {
            op: "layer_norm_subgroup",
            arg: "adapter",
            reason: format!(
                "needs the SUBGROUP feature outside browsers; {} offers no subgroups here",
                ctx.capabilities().adapter.name
            ),
        });
    }
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
    let traffic = Traffic {
        read: (rows * c * (1 + usize::from(residual.is_some())) * x.dtype().size() + 4 * 2 * c)
            as u64,
        written: (rows * c * y.dtype().size()) as u64,
    };
    let res = residual.map_or(&ctx.dummy, |r| r.buffer());
    match variant {
        LayerNormVariant::Workgroup => rec.dispatch(Dispatch {
            kernel: Kernel::LayerNorm,
            spec: spec(residual.is_some(), f16),
            params: bytemuck::bytes_of(&params),
            buffers: &[x.buffer(), res, gamma.buffer(), beta.buffer(), y.buffer()],
            groups: grid_1d(ctx, rows as u32),
            traffic,
        }),
        LayerNormVariant::Subgroup => rec.dispatch(Dispatch {
            kernel: Kernel::LayerNormSubgroup,
            spec: subgroup_spec(residual.is_some(), f16, c % 4 == 0),
            params: bytemuck::bytes_of(&params),
            buffers: &[
                x.buffer(),
                res,
                gamma.buffer(),
                beta.buffer(),
                x.buffer(),
                res,
                y.buffer(),
            ],
            groups: grid_1d(ctx, (rows as u32).div_ceil(SUBGROUP_ROWS)),
            traffic,
        }),
    }
}
