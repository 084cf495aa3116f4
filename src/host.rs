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
