//! Twins of ModernBERT's elementwise kernels.

use super::HostTensor;
use crate::error::Result;

/// Twin of [`crate::kernels::rotary`], in f64 from the same f32 table.
pub fn rotary(
    qkv: &HostTensor,
    table: &HostTensor,
    head_dim: usize,
    out: &mut HostTensor,
) -> Result<()> {
    let (rows, t, c, d) =
        crate::kernels::rotary_dims(&qkv.shape, &table.shape, head_dim, &out.shape)?;
    let half = d / 2;
    for row in 0..rows {
        let pos = row % t;
        let base = row * 3 * c;
        out.data[base + 2 * c..base + 3 * c].copy_from_slice(&qkv.data[base + 2 * c..base + 3 * c]);
        for head in 0..2 * c / d {
            let at = base + head * d;
            for i in 0..half {
                let (cos, sin) = (
                    table.data[pos * half + i] as f64,
                    table.data[(t + pos) * half + i] as f64,
                );
                let (x1, x2) = (qkv.data[at + i] as f64, qkv.data[at + i + half] as f64);
                out.data[at + i] = (x1 * cos - x2 * sin) as f32;
                out.data[at + i + half] = (x2 * cos + x1 * sin) as f32;
            }
        }
    }
    Ok(())
}

/// Twin of [`crate::kernels::geglu`].
pub fn geglu(x: &HostTensor, y: &mut HostTensor) -> Result<()> {
    let (rows, i) = crate::kernels::geglu_dims(&x.shape, &y.shape)?;
    for r in 0..rows {
        for j in 0..i {
            let a = x.data[r * 2 * i + j] as f64;
            let g = x.data[r * 2 * i + i + j] as f64;
            y.data[r * i + j] = (super::gelu_scalar(a) * g) as f32;
        }
    }
    Ok(())
}
