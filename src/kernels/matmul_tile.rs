//! The matmul's variants as tiles: the workgroup-memory tiles of `shaders/matmul.wgsl` and the
//! subgroup kernel `shaders/matmul_subgroup.wgsl` for a few rows, chosen per problem by a tune
//! table or the built-in heuristic.

use super::matmul::{Activation, WLayout};
use crate::context::Context;
use crate::pipeline::Spec;

/// The matmul's variants. The workgroup tiles use at most 256 invocations and under 9 KiB of
/// workgroup memory, so they fit WebGPU's default limits (16 KiB, 256 invocations); the
/// subgroup kernel uses 64 invocations and no workgroup memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulTile {
    /// 16 x 64 outputs per workgroup, 4 x 4 per invocation (64 invocations), K step 16: for
    /// few rows (batch-1 tokens, late CSWin stages), where a 64-row tile computes mostly padding.
    Skinny,
    /// 64 x 64 outputs per workgroup, 4 x 4 per invocation, K step 16.
    Small,
    /// 128 x 128 outputs per workgroup, 8 x 8 per invocation, K step 8.
    Large,
    /// 4 rows x 16 columns per workgroup, each output a dot product reduced across a subgroup
    /// (`shaders/matmul_subgroup.wgsl`): for at most a few rows (a batch-1 head or pooler).
    /// Needs the adapter's `SUBGROUP` feature; not offered to browsers (their WGSL needs an
    /// `enable subgroups;` this naga cannot parse yet).
    Subgroup,
}

impl MatmulTile {
    pub const ALL: [MatmulTile; 4] = [
        MatmulTile::Skinny,
        MatmulTile::Small,
        MatmulTile::Large,
        MatmulTile::Subgroup,
    ];

    /// (BM, BN, BK, TM, TN): rows and columns of Y per workgroup, K step, rows and columns per
    /// invocation. The subgroup kernel has no K step (0) and reduces each output across a
    /// subgroup (1 x 1).
    pub const fn dims(self) -> (u32, u32, u32, u32, u32) {
        match self {
            MatmulTile::Skinny => (16, 64, 16, 4, 4),
            MatmulTile::Small => (64, 64, 16, 4, 4),
            MatmulTile::Large => (128, 128, 8, 8, 8),
            MatmulTile::Subgroup => (4, 16, 0, 1, 1),
        }
    }

    pub const fn invocations(self) -> u32 {
        match self {
            MatmulTile::Subgroup => 64,
            _ => {
                let (bm, bn, _, tm, tn) = self.dims();
                (bm / tm) * (bn / tn)
            }
        }
    }

    pub const fn workgroup_bytes(self) -> u32 {
        let (bm, bn, bk, _, _) = self.dims();
        bk * (bm / 4 + 1 + bn / 4 + 1) * 16
    }

    /// The tile for this problem on this adapter: the context's tune table's choice when it
    /// measured exactly this problem (see [`crate::tune`]), else [`MatmulTile::heuristic`].
    pub fn choose(ctx: &Context, m: usize, n: usize, k: usize, batch: usize, f16: bool) -> Self {
        ctx.tune_table()
            .and_then(|t| t.matmul_tile(m, n, k, batch, f16))
            .filter(|t| t.fits(ctx) && t.enabled(ctx))
            .unwrap_or_else(|| Self::heuristic(ctx, m, n, batch))
    }

    /// The built-in choice: the subgroup kernel for at most 4 rows where the adapter has
    /// subgroups (on lavapipe 3x faster than the skinny tile at 4 rows, 6x at 1, slower at 16),
    /// skinny tiles for at most 32 rows, large tiles once there are enough of them to fill a
    /// real GPU, small ones otherwise (and always on software adapters).
    pub fn heuristic(ctx: &Context, m: usize, n: usize, batch: usize) -> Self {
        let large = MatmulTile::Large;
        let (bm, bn, ..) = large.dims();
        let tiles = m.div_ceil(bm as usize) * n.div_ceil(bn as usize) * batch;
        if m <= 4 && MatmulTile::Subgroup.fits(ctx) && MatmulTile::Subgroup.enabled(ctx) {
            MatmulTile::Subgroup
        } else if m <= 32 && MatmulTile::Skinny.fits(ctx) {
            MatmulTile::Skinny
        } else if !ctx.capabilities().is_software() && tiles >= 256 && large.fits(ctx) {
            large
        } else {
            MatmulTile::Small
        }
    }

    /// Whether the tile's kernel family passed its known-answer check on this context (the
    /// subgroup kernel has one; see [`crate::selftest`]).
    pub fn enabled(self, ctx: &Context) -> bool {
        self != MatmulTile::Subgroup || ctx.family_enabled(crate::selftest::Family::SubgroupMatmul)
    }

    /// Whether the adapter can run this tile (invocations and workgroup memory; subgroups for
    /// the subgroup kernel, outside browsers).
    pub fn fits(self, ctx: &Context) -> bool {
        let l = ctx.limits();
        let caps = ctx.capabilities();
        if self == MatmulTile::Subgroup
            && (!caps.has(wgpu::Features::SUBGROUP)
                || caps.adapter.backend == wgpu::Backend::BrowserWebGpu)
        {
            return false;
        }
        self.invocations() <= l.max_compute_invocations_per_workgroup
            && self.invocations() <= l.max_compute_workgroup_size_x
            && self.workgroup_bytes() <= l.max_compute_workgroup_storage_size
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn spec(
        self,
        w_layout: WLayout,
        vec: (bool, bool),
        bias: bool,
        act: Activation,
        residual: bool,
        f16: (bool, bool, bool),
        splits: u32,
    ) -> Spec {
        let (bm, bn, bk, tm, tn) = self.dims();
        let spec = Spec::new()
            .storage("XT", f16.0)
            .storage("WT", f16.1)
            .storage("YT", f16.2);
        let spec = if self == MatmulTile::Subgroup {
            // vec4 loads along K only, for both operands at once.
            let vec4 = vec.0 && vec.1 && w_layout == WLayout::NK;
            spec.u32("MR", bm)
                .u32("NC", bn)
                .bool("VEC_X", vec4)
                .bool("VEC_W", vec4)
        } else {
            spec.u32("BM", bm)
                .u32("BN", bn)
                .u32("BK", bk)
                .u32("TM", tm)
                .u32("TN", tn)
                .u32("SPLITS", splits)
                .bool("VEC_X", vec.0)
                .bool("VEC_W", vec.1)
        };
        spec.bool("W_NK", w_layout == WLayout::NK)
            .bool("HAS_BIAS", bias)
            .bool("HAS_RESIDUAL", residual)
            .u32("ACT", act.code())
    }
}

/// Every specialisation of the workgroup tiles (`subgroup` false) or of the subgroup kernel,
/// for offline shader validation.
pub(super) fn variants(subgroup: bool) -> Vec<Spec> {
    let tiles = MatmulTile::ALL
        .into_iter()
        .filter(|&t| (t == MatmulTile::Subgroup) == subgroup);
    let mut out = Vec::new();
    for tile in tiles.clone() {
        for layout in [WLayout::NK, WLayout::KN] {
            for act in [
                Activation::None,
                Activation::Gelu,
                Activation::Tanh,
                Activation::Relu,
            ] {
                for (bias, residual) in [(false, false), (true, false), (false, true), (true, true)]
                {
                    for vec in [(false, false), (true, false), (false, true), (true, true)] {
                        out.push(tile.spec(
                            layout,
                            vec,
                            bias,
                            act,
                            residual,
                            (false, false, false),
                            1,
                        ));
                    }
                }
            }
        }
    }
    // f16 storage of X, W or both: every load path, with the fullest epilogue.
    for tile in tiles {
        for layout in [WLayout::NK, WLayout::KN] {
            for vec in [(false, false), (true, true)] {
                for f16 in [
                    (true, false, false),
                    (false, true, false),
                    (true, true, false),
                    (true, true, true),
                    (false, false, true),
                ] {
                    out.push(tile.spec(layout, vec, true, Activation::Gelu, true, f16, 1));
                }
            }
        }
    }
    // Split-K partial products: f32 out, no epilogue, f32 or f16 operands.
    if !subgroup {
        for tile in [MatmulTile::Skinny, MatmulTile::Small, MatmulTile::Large] {
            for vec in [(false, false), (true, true)] {
                for f16 in [(false, false, false), (true, true, false)] {
                    let (layout, act) = (WLayout::NK, Activation::None);
                    out.push(tile.spec(layout, vec, false, act, false, f16, 4));
                }
            }
        }
    }
    out
}
