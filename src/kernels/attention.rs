use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Recorder, Spec, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float};

/// Largest head size the fused kernel takes (it keeps a query row in registers).
pub const MAX_HEAD_DIM: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    t: u32,
    heads: u32,
    scale: f32,
}

/// Keys per staged tile, a power of two from 4 to 32 with KV_TILE x HEAD_DIM <= 1024: the K
/// and V tiles take 8 KiB of workgroup memory at most in f32, 4 KiB with f16 storage (they
/// are staged in qkv's storage type); 4 to 32 keys for head sizes 1..=128; WebGPU guarantees
/// 16 KiB.
fn kv_tile(head_dim: usize) -> u32 {
    let keys = (1024 / head_dim.max(1)).clamp(4, 32);
    1 << (usize::BITS - 1 - keys.leading_zeros())
}

/// Specialisation: head size, key tile, and the storage types of `qkv` and `out`.
pub(super) fn spec(head_dim: usize, f16: (bool, bool)) -> Spec {
    Spec::new()
        .storage("XT", f16.0)
        .storage("YT", f16.1)
        .u32("HEAD_DIM", head_dim as u32)
        .u32("KV_TILE", kv_tile(head_dim))
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
    let ctx = rec.context();
    let f16 = (
        check_float(ctx, "attention", "qkv", qkv)?,
        check_float(ctx, "attention", "out", out)?,
    );
    check_dtype("attention", "mask", mask, DType::U32)?;
    let (b, t, _c, d) = attention_dims(qkv.shape(), mask.shape(), heads, out.shape())?;
    let params = Params {
        batch: b as u32,
        t: t as u32,
        heads: heads as u32,
        scale: 1.0 / (d as f32).sqrt(),
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::Attention,
        spec: spec(d, f16),
        params: bytemuck::bytes_of(&params),
        buffers: &[qkv.buffer(), mask.buffer(), out.buffer()],
        groups: [t.div_ceil(64) as u32, heads as u32, b as u32],
        traffic: Traffic::whole(&[qkv, mask], out),
    })
}
