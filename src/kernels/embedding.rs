use super::elementwise::Sizes;
use crate::error::{Error, Result};
use crate::pipeline::{Dispatch, Kernel, Spec, grid_1d};
use crate::recorder::{Recorder, Traffic};
use crate::tensor::{DType, Tensor, check_dtype, check_shape};

/// Row gather: `y[i, :] = table[ids[i], :]`. `ids` is u32 of any shape, `table` is f32
/// [vocab, C], `y` is f32 of shape `ids.shape + [C]`.
///
/// Ids live on the GPU here, so they cannot be checked on the host: validate them with
/// [`check_ids`] where they are made. The kernel writes zeros for an id ≥ vocab rather than
/// read out of bounds.
pub fn embedding(rec: &mut Recorder<'_>, ids: &Tensor, table: &Tensor, y: &Tensor) -> Result<()> {
    check_dtype("embedding", "ids", ids, DType::U32)?;
    check_dtype("embedding", "table", table, DType::F32)?;
    check_dtype("embedding", "y", y, DType::F32)?;
    let &[vocab, c] = table.shape() else {
        return Err(Error::Shape {
            op: "embedding",
            arg: "table",
            expected: "[vocab, C]".into(),
            found: table.shape().to_vec(),
        });
    };
    let mut y_shape = ids.shape().to_vec();
    y_shape.push(c);
    check_shape("embedding", "y", y, &y_shape)?;
    let n = ids.numel();
    let params = Sizes {
        a: n as u32,
        b: c as u32,
        c: vocab as u32,
        d: 0,
    };
    rec.dispatch(Dispatch {
        kernel: Kernel::Embedding,
        spec: Spec::new(),
        params: bytemuck::bytes_of(&params),
        buffers: &[ids.buffer(), table.buffer(), y.buffer()],
        groups: grid_1d(rec.context(), n as u32),
        traffic: Traffic::elements(n + n * c, n * c),
    })
}

/// Checks host-side ids against a table's row count; the error names the argument, the
/// position and the offending id.
pub fn check_ids(arg: &'static str, ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= vocab) {
        None => Ok(()),
        Some(i) => Err(Error::Argument {
            op: "embedding",
            arg,
            reason: format!(
                "id {} at position {i} is not below the table size {vocab}",
                ids[i]
            ),
        }),
    }
}
