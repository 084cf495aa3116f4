//! The GPU kernels. Each submodule owns one kernel: its uniforms, shape checks and dispatch;
//! its WGSL is `shaders/<name>.wgsl` and its CPU twin is `reference::<name>`, with the same
//! arguments (host tensors in place of GPU tensors).

mod add;
mod attention;
mod attention_coop;
mod bert_embeddings;
mod conv2d;
mod cswin_attention;
mod elementwise;
mod embedding;
mod gelu;
mod l2_normalize;
mod layer_norm;
pub mod matmul;
pub mod matmul_coop;
mod matmul_layer_norm;
mod matmul_split;
mod matmul_tile;
mod pool;
mod rotary;
mod softmax;

pub use add::add;
pub use attention::{
    AttentionBias, AttentionTiles, MAX_HEAD_DIM, attention, attention_biased, attention_dims,
    attention_tiles, attention_variant, rel_bias_dims,
};
pub use attention_coop::CoopAttention;
pub use bert_embeddings::{EmbeddingTables, bert_embeddings, bert_embeddings_dims};
pub use conv2d::{ConvGeometry, ConvInput, conv2d};
pub use cswin_attention::{CswinBranch, cswin_attention};
pub use embedding::{check_ids, embedding};
pub use gelu::gelu;
pub use l2_normalize::l2_normalize;
pub use layer_norm::{LayerNormVariant, layer_norm, layer_norm_subgroup, layer_norm_variant};
pub use matmul::{
    Activation, Epilogue, MatmulTile, MatrixView, StridedMatmul, WLayout, matmul, matmul_strided,
};
pub use matmul_layer_norm::matmul_layer_norm;
pub use matmul_split::{MAX_SPLITS, matmul_split_k, matmul_split_reduce, split_k};
pub use pool::{PoolMode, mean_pool, pool, pool_dims};
pub use rotary::{geglu, geglu_dims, rotary, rotary_dims};
pub use softmax::softmax;

use crate::pipeline::{Kernel, Spec};

/// Every (kernel, specialisation) the library can compile, for offline shader validation.
pub fn shader_variants() -> Vec<(Kernel, Spec)> {
    let mut out = Vec::new();
    for kernel in Kernel::ALL {
        match kernel {
            Kernel::Matmul | Kernel::MatmulSubgroup => out.extend(
                matmul_tile::variants(kernel == Kernel::MatmulSubgroup)
                    .into_iter()
                    .map(|s| (kernel, s)),
            ),
            Kernel::MatmulSplitReduce => out.extend(
                matmul_split::split_reduce_variants()
                    .into_iter()
                    .map(|s| (kernel, s)),
            ),
            Kernel::MatmulCoop => {
                out.extend(matmul_coop::variants().into_iter().map(|s| (kernel, s)));
            }
            Kernel::Attention => {
                let dims = attention::VALIDATED_HEAD_DIMS;
                out.extend(dims.map(|d| (kernel, attention::spec(d, (false, false)))));
                out.extend(dims.map(|d| (kernel, attention::spec(d, (true, true)))));
                out.push((kernel, attention::spec(64, (true, false))));
                out.extend(
                    [false, true].map(|f| (kernel, attention::spec_biased(64, (f, f), true))),
                );
            }
            Kernel::AttentionCoop => {
                for bias in [false, true] {
                    let specs = attention_coop::variants(bias).into_iter();
                    out.extend(specs.map(|(_, s)| (kernel, s)));
                }
            }
            Kernel::CswinAttentionCoop => {
                let specs = attention_coop::variants(false).into_iter();
                out.extend(specs.map(|(_, s)| (kernel, s)));
            }
            Kernel::Conv2d => {
                out.extend(
                    [true, false].map(|nchw| (kernel, conv2d::spec(nchw, (false, false, false)))),
                );
                // CSWin in f16: pixels f32 into the stem, f16 tokens into the merges.
                out.push((kernel, conv2d::spec(true, (false, true, true))));
                out.push((kernel, conv2d::spec(false, (true, true, true))));
            }
            Kernel::CswinAttention => {
                let dims = cswin_attention::VALIDATED_HEAD_DIMS;
                out.extend(dims.map(|d| (kernel, cswin_attention::spec(d, (false, false)))));
                out.extend(dims.map(|d| (kernel, cswin_attention::spec(d, (true, true)))));
            }
            Kernel::LayerNorm => {
                for f16 in [(false, false), (true, true), (false, true), (true, false)] {
                    out.extend([false, true].map(|r| (kernel, layer_norm::spec(r, f16))));
                }
            }
            Kernel::LayerNormSubgroup => {
                for f16 in [(false, false), (true, true), (false, true), (true, false)] {
                    for vec4 in [false, true] {
                        out.extend(
                            [false, true]
                                .map(|r| (kernel, layer_norm::subgroup_spec(r, f16, vec4))),
                        );
                    }
                }
            }
            Kernel::MatmulLayerNorm => {
                for f16 in [
                    (false, false, false),
                    (true, true, true),
                    (false, true, true),
                ] {
                    out.extend([false, true].map(|b| (kernel, matmul_layer_norm::spec(b, f16))));
                }
            }
            Kernel::Rotary | Kernel::Geglu => {
                for f16 in [(false, false), (true, true), (true, false), (false, true)] {
                    out.push((kernel, rotary::spec(f16)));
                }
            }
            Kernel::Pool => {
                for mode in PoolMode::ALL {
                    out.extend([false, true].map(|f16| (kernel, pool::spec(f16, mode))));
                }
            }
            Kernel::Embeddings => {
                for f16 in [(false, false), (true, true), (true, false), (false, true)] {
                    out.push((kernel, bert_embeddings::spec(f16)));
                }
            }
            _ => out.push((kernel, Spec::new())),
        }
    }
    out
}
