use super::attention_coop::CoopAttention;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float};

/// Largest head size the fused kernels take (their tiles fit 16 KiB of workgroup memory up to it).
pub const MAX_HEAD_DIM: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    t: u32,
    heads: u32,
    scale: f32,
    window: u32,
    _pad: [u32; 3],
}

/// Workgroup memory the attention kernels may use: what WebGPU guarantees.
const WORKGROUP_BYTES: usize = 16 * 1024;

/// The tiles of both attention kernels for one head size and storage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionTiles {
    /// Queries per workgroup (BQ).
    pub queries: usize,
    /// Keys per staged K/V tile (KV_TILE).
    pub keys: usize,
}

impl AttentionTiles {
    /// Workgroup memory of these tiles: the Q and K/V tiles in the storage type (rows padded
    /// by one element), the f32 score tile, the mask bias and the per-row scales.
    fn bytes(self, head_dim: usize, element: usize) -> usize {
        (self.queries + self.keys) * (head_dim + 1) * element
            + self.queries * self.keys * 4
            + (self.keys + self.queries) * 4
    }
}

/// 32 queries by 32 keys, halving the keys (then the queries) down to 8 until the tiles fit
/// in 16 KiB of workgroup memory: 32x32 up to D = 32 in f32 (D = 64 in f16), 32x16 at 64 in
/// f32, 16x8 at 128 in f32.
pub fn attention_tiles(head_dim: usize, f16: bool) -> AttentionTiles {
    let element = if f16 { 2 } else { 4 };
    let mut tiles = AttentionTiles {
        queries: 32,
        keys: 32,
    };
    while tiles.bytes(head_dim, element) > WORKGROUP_BYTES {
        if tiles.keys > 8 {
            tiles.keys /= 2;
        } else if tiles.queries > 8 {
            tiles.queries /= 2;
        } else {
            break;
        }
    }
    tiles
}

/// Specialisation: head size, tiles, the storage types of `qkv` and `out`, and (for the BERT
/// kernel) whether a relative position bias is added.
pub(super) fn spec(head_dim: usize, f16: (bool, bool)) -> Spec {
    spec_biased(head_dim, f16, false)
}

pub(super) fn spec_biased(head_dim: usize, f16: (bool, bool), rel_bias: bool) -> Spec {
    let tiles = attention_tiles(head_dim, f16.0);
    Spec::new()
        .storage("XT", f16.0)
        .storage("YT", f16.1)
        .bool("HAS_REL_BIAS", rel_bias)
        .u32("HEAD_DIM", head_dim as u32)
        .u32("BQ", tiles.queries as u32)
        .u32("KV_TILE", tiles.keys as u32)
}

/// The kernel both attentions run for head size `head_dim` and storage types `f16` (qkv, out):
/// the cooperative-matrix kernel for f16 qkv where the adapter has it for this head size, else
/// the scalar one; with its specialisation and the queries per workgroup. `coop` picks between
/// `Kernel::Attention`/`AttentionCoop` or `CswinAttention`/`CswinAttentionCoop`.
pub(super) fn choose(
    ctx: &Context,
    head_dim: usize,
    f16: (bool, bool),
    rel_bias: bool,
    kernels: (Kernel, Kernel),
) -> (Kernel, Spec, usize) {
    let family = match kernels.1 {
        Kernel::CswinAttentionCoop => crate::selftest::Family::CoopCswinAttention,
        _ => crate::selftest::Family::CoopAttention,
    };
    match CoopAttention::for_head(ctx, head_dim).filter(|_| f16.0 && ctx.family_enabled(family)) {
        Some(c) => (
            kernels.1,
            c.spec(head_dim, f16, rel_bias),
            c.fragment as usize,
        ),
        None => (
            kernels.0,
            spec_biased(head_dim, f16, rel_bias),
            attention_tiles(head_dim, f16.0).queries,
        ),
    }
}

/// What both attention kernels run as for this head size and qkv storage on `ctx` (for
/// benchmark records): "flash-2 QxK tiles" or the cooperative-matrix variant.
pub fn attention_variant(ctx: &Context, head_dim: usize, f16: bool) -> String {
    let enabled = ctx.family_enabled(crate::selftest::Family::CoopAttention);
    match CoopAttention::for_head(ctx, head_dim).filter(|_| f16 && enabled) {
        Some(c) => c.variant(),
        None => {
            let t = attention_tiles(head_dim, f16);
            format!("flash-2 {}x{} tiles", t.queries, t.keys)
        }
    }
}

/// Head sizes shader validation covers.
pub(super) const VALIDATED_HEAD_DIMS: [usize; 5] = [8, 12, 32, 64, 128];

/// The shape checks shared with the CPU twin: returns (B, T, C, D).
pub fn attention_dims(
    qkv: &[usize],
    mask: &[usize],
    heads: usize,
    out: &[usize],
) -> Result<(usize, usize, usize, usize)> {
    let &[b, t, c3] = qkv else {
        return Err(Error::Shape {
            op: "attention",
            arg: "qkv",
            expected: "[B, T, 3C]".into(),
            found: qkv.to_vec(),
        });
    };
    let c = c3 / 3;
    if c3 % 3 != 0 || heads == 0 || c % heads != 0 {
        return Err(Error::Argument {
            op: "attention",
            arg: "heads",
            reason: format!("qkv's last dimension {c3} is not 3 x heads ({heads}) x head_dim"),
        });
    }
    let d = c / heads;
    if d == 0 || d > MAX_HEAD_DIM {
        return Err(Error::Argument {
            op: "attention",
            arg: "heads",
            reason: format!("head_dim {d} is outside 1..={MAX_HEAD_DIM}"),
        });
    }
    if mask != [b, t] {
        return Err(Error::Shape {
            op: "attention",
            arg: "mask",
            expected: format!("[{b}, {t}]"),
            found: mask.to_vec(),
        });
    }
    if out != [b, t, c] {
        return Err(Error::Shape {
            op: "attention",
            arg: "out",
            expected: format!("[{b}, {t}, {c}]"),
            found: out.to_vec(),
        });
    }
    Ok((b, t, c, d))
}

/// Checks MPNet's relative position bias against (heads, T): [heads, 2T - 1].
pub fn rel_bias_dims(rel_bias: &[usize], heads: usize, t: usize) -> Result<()> {
    let want = [heads, 2 * t - 1];
    if rel_bias != want {
        return Err(Error::Shape {
            op: "attention",
            arg: "rel_bias",
            expected: format!("{want:?} (heads, 2T - 1)"),
            found: rel_bias.to_vec(),
        });
    }
    Ok(())
}

/// Fused multi-head self-attention: `out[b, t, h*D..] = softmax(q·Kᵀ / sqrt(D) + bias) · V`
/// for every head, with Q, K, V read from the fused projection `qkv` [B, T, 3C] and the
/// Hugging Face key-padding mask (`mask` [B, T] u32, 0 = padding: additive f32::MIN).
/// Writes merged heads into `out` [B, T, C].
pub fn attention(
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    out: &Tensor,
) -> Result<()> {
    attention_biased(rec, qkv, mask, AttentionBias::default(), heads, out)
}

/// What an encoder family adds to BERT's attention scores.
#[derive(Debug)]
pub struct AttentionBias<'a, T = Tensor> {
    /// MPNet's relative position bias, [heads, 2T - 1] f32: head `h` adds
    /// `rel_bias[h, k - q + T - 1]` to the scaled score of query `q` and key `k`.
    pub rel_bias: Option<&'a T>,
    /// ModernBERT's local attention: keys with `|k - q| > window` are masked (f32::MIN).
    pub window: Option<usize>,
}

impl<T> Default for AttentionBias<'_, T> {
    fn default() -> Self {
        Self {
            rel_bias: None,
            window: None,
        }
    }
}

impl<T> Clone for AttentionBias<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for AttentionBias<'_, T> {}

/// [`attention`] with a family's additions ([`AttentionBias`]): the relative bias before the
/// mask bias, the local window after it.
pub fn attention_biased(
    rec: &mut Recorder<'_>,
    qkv: &Tensor,
    mask: &Tensor,
    extra: AttentionBias<'_>,
    heads: usize,
    out: &Tensor,
) -> Result<()> {
    let rel_bias = extra.rel_bias;
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, "attention", "qkv", qkv)?,
        check_float(ctx, "attention", "out", out)?,
    );
    check_dtype("attention", "mask", mask, DType::U32)?;
    let (b, t, _c, d) = attention_dims(qkv.shape(), mask.shape(), heads, out.shape())?;
    if let Some(bias) = rel_bias {
        check_dtype("attention", "rel_bias", bias, DType::F32)?;
        rel_bias_dims(bias.shape(), heads, t)?;
    }
    let kernels = (Kernel::Attention, Kernel::AttentionCoop);
    let (kernel, spec, queries) = choose(ctx, d, f16, rel_bias.is_some(), kernels);
    let params = Params {
        batch: b as u32,
        t: t as u32,
        heads: heads as u32,
        scale: 1.0 / (d as f32).sqrt(),
        window: extra
            .window
            .map_or(0, |w| w.clamp(1, u32::MAX as usize) as u32),
        _pad: [0; 3],
    };
    let bias = rel_bias.map_or(&ctx.dummy, |t| t.buffer());
    let inputs: Vec<&Tensor> = [qkv, mask].into_iter().chain(rel_bias).collect();
    rec.dispatch(Dispatch {
        kernel,
        spec,
        params: bytemuck::bytes_of(&params),
        buffers: &[qkv.buffer(), mask.buffer(), bias, out.buffer()],
        groups: [t.div_ceil(queries) as u32, heads as u32, b as u32],
        traffic: Traffic::whole(&inputs, out),
    })
}
