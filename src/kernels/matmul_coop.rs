//! The matmul on cooperative matrices (tensor cores): f16 fragments, f32 accumulation, the
//! same operands, views and epilogue as [`super::matmul`]. Used by `kernels::matmul` for f16
//! operands where the adapter reports f16 x f16 -> f32 fragments (16x16x16 on NVIDIA and AMD
//! Vulkan, 8x8x8 on Metal) and a fixed subgroup size; wgpu exposes them only behind
//! [`crate::ContextOptions::enable_experimental_cooperative_matrix`].

use super::matmul::{
    Activation, Epilogue, Params, StridedMatmul, WLayout, bindings, check_operands, operand_traffic,
};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec};
use crate::recorder::Recorder;
use crate::tensor::Tensor;

/// The fragment size and subgroup size the cooperative kernel runs with on this adapter:
/// `Some((T, SG))` when it has `EXPERIMENTAL_COOPERATIVE_MATRIX` and `SHADER_F16`, reports
/// square T x T x T fragments with f16 inputs and an f32 accumulator (16 preferred, then 8),
/// and a single subgroup size.
pub fn coop_fragment(ctx: &Context) -> Option<(u32, u32)> {
    let caps = ctx.capabilities();
    let needed = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16;
    let (sg_min, sg_max) = caps.subgroup_size;
    if !caps.features.contains(needed) || sg_min == 0 || sg_min != sg_max {
        return None;
    }
    [16u32, 8].into_iter().find_map(|t| {
        caps.cooperative_matrix
            .iter()
            .any(|p| {
                p.m_size == t
                    && p.n_size == t
                    && p.k_size == t
                    && p.ab_type == wgpu::CooperativeScalarType::F16
                    && p.cr_type == wgpu::CooperativeScalarType::F32
            })
            .then_some((t, sg_min))
    })
}

/// Specialisation: fragment size `t`, subgroup size `sg`, layout, epilogue, storage types.
pub(super) fn spec(
    (t, sg): (u32, u32),
    w_layout: WLayout,
    epilogue: (bool, Activation, bool),
    f16: (bool, bool, bool),
) -> Spec {
    let (bias, act, residual) = epilogue;
    Spec::new()
        .enable("f16")
        .enable("wgpu_cooperative_matrix")
        .storage("XT", f16.0)
        .storage("WT", f16.1)
        .storage("YT", f16.2)
        .alias("FRAG_A", &format!("coop_mat{t}x{t}<f16, A>"))
        .alias("FRAG_B", &format!("coop_mat{t}x{t}<f16, B>"))
        .alias("FRAG_C", &format!("coop_mat{t}x{t}<f32, C>"))
        .u32("T", t)
        .u32("SG", sg)
        .bool("W_NK", w_layout == WLayout::NK)
        .bool("HAS_BIAS", bias)
        .bool("HAS_RESIDUAL", residual)
        .u32("ACT", act.code())
}

/// Variants for offline validation: both fragment sizes, both layouts, plain and full epilogue.
pub(super) fn variants() -> Vec<Spec> {
    let mut out = Vec::new();
    for frag in [(16, 32), (8, 32)] {
        for layout in [WLayout::NK, WLayout::KN] {
            out.push(spec(
                frag,
                layout,
                (false, Activation::None, false),
                (true, true, false),
            ));
            out.push(spec(
                frag,
                layout,
                (true, Activation::Gelu, true),
                (true, true, true),
            ));
        }
    }
    out
}

/// [`super::matmul_strided`] on cooperative matrices. An adapter without them (see
/// [`coop_fragment`]) gets an error naming the feature.
pub fn matmul_coop(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    w: &Tensor,
    y: &Tensor,
    ep: Epilogue<'_>,
    p: &StridedMatmul,
) -> Result<()> {
    let ctx = rec.context();
    let f16 = check_operands(ctx, x, w, y, &ep, p)?;
    let Some(frag) = coop_fragment(ctx) else {
        return Err(Error::Argument {
            op: "matmul_coop",
            arg: "ctx",
            reason: format!(
                "{} offers no f16 cooperative matrices (EXPERIMENTAL_COOPERATIVE_MATRIX with \
                 f16 x f16 -> f32 fragments, a fixed subgroup size, and the context's opt-in)",
                ctx.capabilities().adapter.name
            ),
        });
    };
    let tile = 2 * frag.0;
    rec.dispatch(Dispatch {
        kernel: Kernel::MatmulCoop,
        spec: spec(
            frag,
            p.w_layout,
            (ep.bias.is_some(), ep.act, ep.residual.is_some()),
            f16,
        ),
        params: bytemuck::bytes_of(&Params::new(p, ep.alpha)),
        buffers: &bindings(ctx, x, w, y, &ep),
        groups: [
            (p.n as u32).div_ceil(tile),
            (p.m as u32).div_ceil(tile),
            (p.batch[0] * p.batch[1]) as u32,
        ],
        traffic: operand_traffic(p, x, w, y, &ep),
    })
}
