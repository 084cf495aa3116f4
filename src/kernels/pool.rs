//! sentence-transformers' token poolings (`shaders/pool.wgsl`), each into a column range of
//! the output so that several modes concatenate.

use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_float, check_shape};

/// A pooling mode, named as sentence-transformers' `pooling_mode` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMode {
    /// The first pooled token (`cls`).
    Cls,
    /// Channel-wise max over pooled tokens (`max`).
    Max,
    /// Mean over pooled tokens (`mean`).
    Mean,
    /// Sum over pooled tokens / sqrt(count) (`mean_sqrt_len_tokens`).
    MeanSqrtLen,
    /// Position-weighted mean, weights 1, 2, ... from the first real token (`weightedmean`).
    WeightedMean,
    /// The last pooled token (`lasttoken`).
    LastToken,
}

impl PoolMode {
    /// Every mode, in sentence-transformers' concatenation order.
    pub const ALL: [PoolMode; 6] = [
        PoolMode::Cls,
        PoolMode::Max,
        PoolMode::Mean,
        PoolMode::MeanSqrtLen,
        PoolMode::WeightedMean,
        PoolMode::LastToken,
    ];

    /// The sentence-transformers name (`pooling_mode` values; the legacy
    /// `pooling_mode_*` keys map to them).
    pub const fn name(self) -> &'static str {
        match self {
            PoolMode::Cls => "cls",
            PoolMode::Max => "max",
            PoolMode::Mean => "mean",
            PoolMode::MeanSqrtLen => "mean_sqrt_len_tokens",
            PoolMode::WeightedMean => "weightedmean",
            PoolMode::LastToken => "lasttoken",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    const fn code(self) -> u32 {
        match self {
            PoolMode::Cls => 0,
            PoolMode::Max => 1,
            PoolMode::Mean => 2,
            PoolMode::MeanSqrtLen => 3,
            PoolMode::WeightedMean => 4,
            PoolMode::LastToken => 5,
        }
    }
}

/// Specialisation: the storage type of `x` and the mode.
pub(super) fn spec(f16: bool, mode: PoolMode) -> Spec {
    Spec::new().storage("XT", f16).u32("MODE", mode.code())
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    t: u32,
    c: u32,
    ldy: u32,
    col0: u32,
    neg_inf: f32,
    _pad: [u32; 2],
}

/// The shape checks shared with the CPU twin: returns (B, T, C).
pub fn pool_dims(
    x: &[usize],
    mask: &[usize],
    keep: &[usize],
    y: &[usize],
    col0: usize,
) -> Result<(usize, usize, usize)> {
    let &[b, t, c] = x else {
        return Err(Error::Shape {
            op: "pool",
            arg: "x",
            expected: "[B, T, C]".into(),
            found: x.to_vec(),
        });
    };
    for (arg, shape) in [("mask", mask), ("keep", keep)] {
        if shape != [b, t] {
            return Err(Error::Shape {
                op: "pool",
                arg,
                expected: format!("[{b}, {t}]"),
                found: shape.to_vec(),
            });
        }
    }
    match y {
        &[yb, ldy] if yb == b && col0 + c <= ldy => Ok((b, t, c)),
        _ => Err(Error::Shape {
            op: "pool",
            arg: "y",
            expected: format!("[{b}, at least {col0} + {c}] (columns {col0}.. of each row)"),
            found: y.to_vec(),
        }),
    }
}

/// Pools `x` [B, T, C] over the tokens `keep` [B, T] u32 marks (`mask`, the attention mask,
/// gives weightedmean its start) into columns `col0..col0 + C` of `y` [B, ldy] f32.
pub fn pool(
    rec: &mut Recorder<'_>,
    x: &Tensor,
    mask: &Tensor,
    keep: &Tensor,
    mode: PoolMode,
    y: &Tensor,
    col0: usize,
) -> Result<()> {
    let f16 = check_float(rec.context(), "pool", "x", x)?;
    check_dtype("pool", "mask", mask, DType::U32)?;
    check_dtype("pool", "keep", keep, DType::U32)?;
    check_dtype("pool", "y", y, DType::F32)?;
    let (b, t, c) = pool_dims(x.shape(), mask.shape(), keep.shape(), y.shape(), col0)?;
    let params = Params {
        batch: b as u32,
        t: t as u32,
        c: c as u32,
        ldy: y.shape()[1] as u32,
        col0: col0 as u32,
        neg_inf: f32::NEG_INFINITY,
        _pad: [0; 2],
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::Pool,
        spec: spec(f16, mode),
        params: bytemuck::bytes_of(&params),
        buffers: &[x.buffer(), mask.buffer(), keep.buffer(), y.buffer()],
        groups: grid_1d(rec.context(), (b * c).div_ceil(256) as u32),
        traffic: Traffic::whole(&[x, mask, keep], y),
    })
}

/// Masked mean over tokens (`pool` in mean mode over the attention mask):
/// `y[b, c] = Σ_t m[b,t]·x[b,t,c] / max(Σ_t m[b,t], 1e-9)`. `x` [B, T, C], `mask` u32 [B, T],
/// `y` f32 [B, C].
pub fn mean_pool(rec: &mut Recorder<'_>, x: &Tensor, mask: &Tensor, y: &Tensor) -> Result<()> {
    let (b, _, c) = pool_dims(x.shape(), mask.shape(), mask.shape(), y.shape(), 0)?;
    check_shape("mean_pool", "y", y, &[b, c])?;
    pool(rec, x, mask, mask, PoolMode::Mean, y, 0)
}
