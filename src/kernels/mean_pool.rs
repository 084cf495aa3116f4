use super::elementwise::Sizes;
use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Recorder, Spec, Traffic, grid_1d};
use crate::tensor::{DType, Tensor, check_dtype, check_float, check_shape};

/// Masked mean over tokens: `y[b, c] = Σ_t m[b,t]·x[b,t,c] / max(Σ_t m[b,t], 1e-9)` with
/// `m = (mask != 0)`. `x` is f32 [B, T, C], `mask` u32 [B, T], `y` f32 [B, C].
/// Specialisation: the storage type of `x`.
pub(super) fn spec(f16: bool) -> Spec {
    Spec::new().storage("XT", f16)
}

pub fn mean_pool(rec: &mut Recorder<'_>, x: &Tensor, mask: &Tensor, y: &Tensor) -> Result<()> {
    let f16 = check_float(rec.context(), "mean_pool", "x", x)?;
    check_dtype("mean_pool", "mask", mask, DType::U32)?;
    check_dtype("mean_pool", "y", y, DType::F32)?;
    let &[b, t, c] = x.shape() else {
        return Err(Error::Shape {
            op: "mean_pool",
            arg: "x",
            expected: "[B, T, C]".into(),
            found: x.shape().to_vec(),
        });
    };
    check_shape("mean_pool", "mask", mask, &[b, t])?;
    check_shape("mean_pool", "y", y, &[b, c])?;
    let params = Sizes {
        a: b as u32,
        b: t as u32,
        c: c as u32,
        d: 0,
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::MeanPool,
        spec: spec(f16),
        params: bytemuck::bytes_of(&params),
        buffers: &[x.buffer(), mask.buffer(), y.buffer()],
        groups: grid_1d(rec.context(), (b * c).div_ceil(256) as u32),
        traffic: Traffic::whole(&[x, mask], y),
    })
}
