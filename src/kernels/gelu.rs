use super::elementwise::{Sizes, rows_of};
use crate::error::Result;
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::Tensor;

/// y = GELU(x) elementwise, exact-erf form. `x` and `y` are f32 of the same shape.
pub fn gelu(rec: &mut Recorder<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    rows_of("gelu", x, y)?;
    let n = x.numel();
    let groups = grid_1d(rec.context(), n.div_ceil(256) as u32);
    rec.dispatch(Dispatch {
        kernel: Kernel::Gelu,
        spec: Spec::new(),
        params: bytemuck::bytes_of(&Sizes::new(n, 0)),
        buffers: &[x.buffer(), y.buffer()],
        groups,
        traffic: Traffic::whole(&[x], y),
    })
}
