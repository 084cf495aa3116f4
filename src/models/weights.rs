//! Checkpoint loading from safetensors bytes (the same path natively and on the web):
//! tensors by name, converted to f32 on the host, every shape checked on the way in. The
//! same reader also serves seeded random weights ([`Weights::random`], the bench's models), so
//! each family's loader is the one description of its tree whatever the source.

use std::collections::HashSet;

use safetensors::{Dtype, SafeTensors};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::tensor::{DType, Tensor};

/// A parsed safetensors file with an optional key prefix (e.g. `bert.`) that is tried when
/// a key is not found as given, or seeded random weights. Records which keys were taken.
pub struct Weights<'a> {
    source: Source<'a>,
    prefix: String,
    taken: HashSet<String>,
}

enum Source<'a> {
    File(SafeTensors<'a>),
    /// Every tensor asked for, filled from a seeded generator by what its key and shape say
    /// it is; `present` answers `contains` for the optional parts (a pooler, a second branch).
    Random {
        state: u64,
        present: Box<dyn Fn(&str) -> bool + 'a>,
    },
}

impl<'a> Weights<'a> {
    /// Parses a safetensors file held in memory.
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| Error::Weights {
            key: "(file)".into(),
            reason: format!("not a valid safetensors file: {e}"),
        })?;
        Ok(Self {
            source: Source::File(file),
            prefix: String::new(),
            taken: HashSet::new(),
        })
    }

    /// Seeded random weights of any model, through that model's own loader: a tensor's key
    /// and shape decide its values (biases uniform in ±0.1, one-dimensional weights (norms)
    /// ones, embedding tables uniform in ±1, other weights uniform in ±1/sqrt(fan-in));
    /// `present` says which optional tensors exist. Benchmarks and soak tests run on these.
    pub fn random(seed: u64, present: impl Fn(&str) -> bool + 'a) -> Self {
        Self {
            source: Source::Random {
                state: seed ^ 0x9e37_79b9_7f4a_7c15,
                present: Box::new(present),
            },
            prefix: String::new(),
            taken: HashSet::new(),
        }
    }

    /// Also look keys up under `prefix` (tried second), e.g. `bert.` for BertFor* checkpoints.
    pub fn with_fallback_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    fn resolve(&self, key: &str) -> Option<String> {
        let file = match &self.source {
            Source::File(file) => file,
            Source::Random { present, .. } => return present(key).then(|| key.to_string()),
        };
        let names = file.names();
        let prefixed = format!("{}{key}", self.prefix);
        if names.contains(&key) {
            Some(key.to_string())
        } else if !self.prefix.is_empty() && names.iter().any(|n| **n == prefixed) {
            Some(prefixed)
        } else {
            None
        }
    }

    /// The shape of tensor `key`, if present.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let name = self.resolve(key)?;
        match &self.source {
            Source::File(file) => file.tensor(&name).ok().map(|v| v.shape().to_vec()),
            Source::Random { .. } => None,
        }
    }

    pub fn contains(&self, key: &str) -> bool {
        self.resolve(key).is_some()
    }

    /// The weight `key` as f32 (from f32, f16 or bf16), which must have exactly `shape` and
    /// hold only finite values.
    pub fn get(&mut self, key: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.get_f32(key, shape)?;
        match t.first_non_finite() {
            None => Ok(t),
            Some((i, v)) => Err(Error::Weights {
                key: self.resolve(key).unwrap_or_else(|| key.to_string()),
                reason: format!("{v} at flat index {i}: weights must be finite"),
            }),
        }
    }

    /// The tensor `key` as f32 (from f32, f16 or bf16), which must have exactly `shape`;
    /// values are not checked.
    pub fn get_f32(&mut self, key: &str, shape: &[usize]) -> Result<HostTensor> {
        if let Source::Random { state, .. } = &mut self.source {
            crate::limits::check_elements(key, shape)?;
            return HostTensor::new(shape, random_values(state, key, shape));
        }
        let name = self.resolve(key).ok_or_else(|| Error::Weights {
            key: key.to_string(),
            reason: if self.prefix.is_empty() {
                "missing from the checkpoint".into()
            } else {
                format!(
                    "missing from the checkpoint (also tried `{}{key}`)",
                    self.prefix
                )
            },
        })?;
        let Source::File(file) = &self.source else {
            return Err(Error::Weights {
                key: name,
                reason: "random weights are filled above".into(),
            });
        };
        let view = file.tensor(&name).map_err(|e| Error::Weights {
            key: name.clone(),
            reason: e.to_string(),
        })?;
        if view.shape() != shape {
            return Err(Error::Weights {
                key: name,
                reason: format!("expected shape {shape:?}, found {:?}", view.shape()),
            });
        }
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytemuck::pod_collect_to_vec(bytes),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::Weights {
                    key: name,
                    reason: format!("dtype {other:?} is not supported (f32, f16 or bf16)"),
                });
            }
        };
        self.taken.insert(name);
        HostTensor::new(shape, data)
    }

    /// An integer tensor (I64 or I32) as u32, with its shape; `None` when absent. Negative
    /// or too large values are an error naming the tensor.
    pub fn ids(&self, key: &str) -> Result<Option<(Vec<usize>, Vec<u32>)>> {
        let Some(name) = self.resolve(key) else {
            return Ok(None);
        };
        let Source::File(file) = &self.source else {
            return Ok(None);
        };
        let view = file.tensor(&name).map_err(|e| Error::Weights {
            key: name.clone(),
            reason: e.to_string(),
        })?;
        let wide: Vec<i64> = match view.dtype() {
            Dtype::I64 => bytemuck::pod_collect_to_vec(view.data()),
            Dtype::I32 => bytemuck::pod_collect_to_vec::<u8, i32>(view.data())
                .into_iter()
                .map(i64::from)
                .collect(),
            other => {
                return Err(Error::Input {
                    arg: name,
                    reason: format!("dtype {other:?} is not I64 or I32"),
                });
            }
        };
        let values = wide
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                u32::try_from(v).map_err(|_| Error::Input {
                    arg: name.clone(),
                    reason: format!("value {v} at position {i} is not a valid id"),
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok(Some((view.shape().to_vec(), values)))
    }

    /// Keys in the file that were never taken, except those `ignore` accepts.
    pub fn unused(&self, ignore: impl Fn(&str) -> bool) -> Vec<String> {
        let Source::File(file) = &self.source else {
            return Vec::new();
        };
        let mut keys: Vec<String> = file
            .names()
            .into_iter()
            .filter(|n| !self.taken.contains(*n) && !ignore(n))
            .map(|n| n.to_string())
            .collect();
        keys.sort();
        keys
    }
}

/// Values for a random tensor `key` of `shape` (see [`Weights::random`]), from SplitMix64.
fn random_values(state: &mut u64, key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let (center, scale) = if key.ends_with("bias") {
        (0.0, 0.1)
    } else if shape.len() == 1 {
        (1.0, 0.0)
    } else if key.contains("embeddings") && !key.contains("project") {
        (0.0, 1.0)
    } else {
        let fan_in: usize = shape[1..].iter().product();
        (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    };
    (0..n)
        .map(|_| {
            *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // 24 random bits -> uniform in [-1, 1)
            let u = (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            center + scale * u
        })
        .collect()
}

/// Uploads a host tensor, labelled with its checkpoint name.
pub fn upload(ctx: &Context, name: &str, t: &HostTensor) -> Result<Tensor> {
    Tensor::from_f32(ctx, &t.shape, &t.data, name)
}

/// Uploads a host tensor stored as `dtype` (f32, or f16 converted once here, round to nearest
/// even).
pub fn upload_as(ctx: &Context, name: &str, t: &HostTensor, dtype: DType) -> Result<Tensor> {
    match dtype {
        DType::F16 => {
            let halves: Vec<half::f16> = t.data.iter().map(|&v| half::f16::from_f32(v)).collect();
            Tensor::from_f16(ctx, &t.shape, &halves, name)
        }
        _ => upload(ctx, name, t),
    }
}

/// Writes named f32 host tensors as a safetensors file.
pub fn to_safetensors(tensors: &[(&str, &HostTensor)]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let view = safetensors::tensor::TensorView::new(
                Dtype::F32,
                t.shape.clone(),
                bytemuck::cast_slice(&t.data),
            )
            .map_err(|e| Error::Weights {
                key: name.to_string(),
                reason: e.to_string(),
            })?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(views, None).map_err(|e| Error::Weights {
        key: "(output file)".into(),
        reason: e.to_string(),
    })
}
