use super::elementwise::{Sizes, rows_of};
use crate::error::Result;
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{Tensor, check_shape};

/// y = a + b elementwise. All three are f32 of the same shape.
pub fn add(rec: &mut Recorder<'_>, a: &Tensor, b: &Tensor, y: &Tensor) -> Result<()> {
    rows_of("add", a, y)?;
    rows_of("add", b, y)?;
    check_shape("add", "b", b, a.shape())?;
    let n = a.numel();
    let groups = grid_1d(rec.context(), n.div_ceil(256) as u32);
    rec.dispatch(Dispatch {
        kernel: Kernel::Add,
        spec: Spec::new(),
        params: bytemuck::bytes_of(&Sizes::new(n, 0)),
        buffers: &[a.buffer(), b.buffer(), y.buffer()],
        groups,
        traffic: Traffic::whole(&[a, b], y),
    })
}
