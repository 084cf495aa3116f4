use super::elementwise::{Sizes, rows_of};
use crate::error::Result;
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::Tensor;

/// Each row (last dimension) divided by max(its L2 norm, 1e-12), as torch's `F.normalize`.
pub fn l2_normalize(rec: &mut Recorder<'_>, x: &Tensor, y: &Tensor) -> Result<()> {
    let (rows, c) = rows_of("l2_normalize", x, y)?;
    let groups = grid_1d(rec.context(), rows as u32);
    rec.dispatch(Dispatch {
        kernel: Kernel::L2Normalize,
        spec: Spec::new(),
        params: bytemuck::bytes_of(&Sizes::new(rows, c)),
        buffers: &[x.buffer(), y.buffer()],
        groups,
        traffic: Traffic::whole(&[x], y),
    })
}
