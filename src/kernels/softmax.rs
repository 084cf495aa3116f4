use super::elementwise::{Sizes, rows_of};
use crate::error::Result;
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::Tensor;

/// Softmax over the last dimension. `x` and `y` are f32 of the same shape.
pub fn softmax(rec: &mut Recorder<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    let (rows, c) = rows_of("softmax", x, y)?;
    let groups = grid_1d(rec.context(), rows as u32);
    rec.dispatch(Dispatch {
        kernel: Kernel::Softmax,
        spec: Spec::new(),
        params: bytemuck::bytes_of(&Sizes::new(rows, c)),
        buffers: &[x.buffer(), y.buffer()],
        groups,
        traffic: Traffic::whole(&[x], y),
    })
}
