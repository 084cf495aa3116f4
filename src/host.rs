//! [`HostTensor`]: a tensor in host memory, the CPU twins' and the loaders' data type (the
//! GPU's is [`crate::Tensor`]).

use crate::error::{Error, Result};

/// A tensor in host memory: row-major data and its shape (outermost first).
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor<T = f32> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Clone + Default> HostTensor<T> {
    pub fn new(shape: &[usize], data: Vec<T>) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if data.len() != expected {
            return Err(Error::DataLength {
                what: "host tensor".into(),
                shape: shape.to_vec(),
                expected,
                found: data.len(),
            });
        }
        Ok(Self {
            shape: shape.to_vec(),
            data,
        })
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![T::default(); shape.iter().product()],
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

impl HostTensor {
    /// The values as a tensor stored as `dtype` holds them: rounded to the nearest f16 (ties to
    /// even, as the upload and the GPU's stores) for F16, unchanged otherwise. The CPU twin of
    /// an f16 run applies this wherever the GPU stores f16.
    pub fn round_to(mut self, dtype: crate::tensor::DType) -> Self {
        self.round_in_place(dtype);
        self
    }

    /// [`HostTensor::round_to`] in place.
    pub fn round_in_place(&mut self, dtype: crate::tensor::DType) {
        if dtype == crate::tensor::DType::F16 {
            for v in &mut self.data {
                *v = half::f16::from_f32(*v).to_f32();
            }
        }
    }

    /// The first NaN or infinite value: (flat index, value).
    pub fn first_non_finite(&self) -> Option<(usize, f32)> {
        self.data
            .iter()
            .position(|v| !v.is_finite())
            .map(|i| (i, self.data[i]))
    }

    /// An input error naming `arg` and the first non-finite value, if there is one.
    pub fn check_finite(&self, arg: &str) -> Result<()> {
        match self.first_non_finite() {
            None => Ok(()),
            Some((i, v)) => Err(Error::Input {
                arg: arg.into(),
                reason: format!(
                    "{v} at flat index {i} (of shape {:?}): inputs must be finite",
                    self.shape
                ),
            }),
        }
    }
}

/// Exact-erf GELU in f64.
pub fn gelu_scalar(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// The rotary table [2, t, d/2] (cos, then sin) for base `theta`, computed in f32 as
/// transformers' `ModernBertRotaryEmbedding` does: inv_freq = 1 / theta^(2i/d), angle =
/// position * inv_freq.
pub fn rotary_table(theta: f64, t: usize, d: usize) -> HostTensor {
    let half = d / 2;
    let mut out = HostTensor::zeros(&[2, t, half]);
    for i in 0..half {
        let inv_freq = 1.0f32 / (theta as f32).powf((2 * i) as f32 / d as f32);
        for pos in 0..t {
            let angle = pos as f32 * inv_freq;
            out.data[pos * half + i] = angle.cos();
            out.data[(t + pos) * half + i] = angle.sin();
        }
    }
    out
}

/// `row / max(|row|, 1e-12)` with the norm in f64, into `out` (same length): the L2
/// normalisation of sentence-transformers' `Normalize`, for host code (the server's
/// `normalize`) and the l2_normalize kernel's twin alike.
pub fn l2_normalize_row(row: &[f32], out: &mut [f32]) {
    let norm = row
        .iter()
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (v as f64 / norm) as f32;
    }
}
