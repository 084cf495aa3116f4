//! Both attention kernels with their tile products (S = Q·Kᵀ, O += P·V) on cooperative
//! matrices: f16 fragments, f32 accumulation and softmax. Same operands, checks and outputs as
//! [`super::attention`] and [`super::cswin_attention`], which use them for f16 `qkv` where the
//! adapter has f16 cooperative matrices (see [`super::matmul_coop::coop_fragment`]) and the
//! head size is a multiple of the fragment; wgpu exposes them only behind
//! [`crate::ContextOptions::enable_experimental_cooperative_matrix`].

use super::matmul_coop::coop_fragment;
use crate::context::Context;
use crate::pipeline::Spec;

/// Workgroup memory the tiles may use: what WebGPU guarantees.
const WORKGROUP_BYTES: usize = 16 * 1024;

/// How the cooperative kernels run on one adapter for one head size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoopAttention {
    /// Fragment size: queries per workgroup and keys per multiply-add (16, or 8 on Metal).
    pub fragment: u32,
    /// Subgroup size (the workgroup is one subgroup).
    pub subgroup: u32,
    /// Key blocks of `fragment` keys per staged tile.
    pub kv_frags: u32,
}

impl CoopAttention {
    /// Workgroup memory: f16 Q and K/V tiles, f32 scores, f16 probabilities, f32 output tile,
    /// mask bias and row scales.
    fn bytes(self, head_dim: usize) -> usize {
        let (ft, kv) = (
            self.fragment as usize,
            (self.kv_frags * self.fragment) as usize,
        );
        ft * head_dim * 2 + kv * head_dim * 2 + ft * kv * 6 + ft * head_dim * 4 + (kv + ft) * 4
    }

    /// The cooperative path for `head_dim` on this adapter: `None` without f16 cooperative
    /// matrices, for a head size that is not a multiple of the fragment, or when even one key
    /// block per tile exceeds 16 KiB (the scalar kernels take those).
    pub fn for_head(ctx: &Context, head_dim: usize) -> Option<Self> {
        let (fragment, subgroup) = coop_fragment(ctx)?;
        Self::with_fragment((fragment, subgroup), head_dim)
    }

    fn with_fragment((fragment, subgroup): (u32, u32), head_dim: usize) -> Option<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(fragment as usize) {
            return None;
        }
        [4, 2, 1]
            .into_iter()
            .map(|kv_frags| Self {
                fragment,
                subgroup,
                kv_frags,
            })
            .find(|c| c.bytes(head_dim) <= WORKGROUP_BYTES)
    }

    /// Specialisation shared by both kernels (`rel_bias`: MPNet's relative position bias, read
    /// by the BERT kernel only).
    pub(super) fn spec(self, head_dim: usize, f16: (bool, bool), rel_bias: bool) -> Spec {
        let t = self.fragment;
        Spec::new()
            .enable("f16")
            .enable("wgpu_cooperative_matrix")
            .storage("XT", f16.0)
            .storage("YT", f16.1)
            .alias("FRAG_A", &format!("coop_mat{t}x{t}<f16, A>"))
            .alias("FRAG_B", &format!("coop_mat{t}x{t}<f16, B>"))
            .alias("FRAG_C", &format!("coop_mat{t}x{t}<f32, C>"))
            .u32("FT", t)
            .u32("SG", self.subgroup)
            .u32("KV_FRAGS", self.kv_frags)
            .u32("HEAD_DIM", head_dim as u32)
            .bool("HAS_REL_BIAS", rel_bias)
    }

    /// The variant name the bench reports.
    pub fn variant(self) -> String {
        format!(
            "cooperative {0}x{0} fragments, {0}x{1} tiles",
            self.fragment,
            self.fragment * self.kv_frags
        )
    }
}

/// Variants for offline validation: both fragment sizes, the head sizes of the supported
/// models, f16 qkv into f16 or f32 outputs, with or without the relative bias.
pub(super) fn variants(rel_bias: bool) -> Vec<(usize, Spec)> {
    let mut out = Vec::new();
    for frag in [(16, 32), (8, 32)] {
        for head_dim in [32, 64, 96] {
            if let Some(c) = CoopAttention::with_fragment(frag, head_dim) {
                out.push((head_dim, c.spec(head_dim, (true, true), rel_bias)));
                out.push((head_dim, c.spec(head_dim, (true, false), rel_bias)));
            }
        }
    }
    out
}
