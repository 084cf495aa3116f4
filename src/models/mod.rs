//! Models built from the kernels: each with a GPU forward (one submission) and a CPU forward
//! built only from the CPU twins.

pub mod bert;
pub mod cswin;
pub mod image;
pub mod tokenizer;
pub mod weights;

/// `nn.Linear`: weight [out, in], bias [out]; on the host (`T = HostTensor`) or the GPU.
#[derive(Debug, Clone)]
pub struct Linear<T> {
    pub weight: T,
    pub bias: T,
}

/// `nn.LayerNorm`: weight and bias [C].
#[derive(Debug, Clone)]
pub struct LayerNorm<T> {
    pub weight: T,
    pub bias: T,
}

/// `nn.Conv2d` with bias: weight [Cout, Cin / groups, KH, KW], bias [Cout].
#[derive(Debug, Clone)]
pub struct Conv2d<T> {
    pub weight: T,
    pub bias: T,
}

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::context::Context;
use crate::error::Result;
use crate::models::weights::{Weights, upload};
use crate::reference::HostTensor;
use crate::tensor::Tensor;

impl Linear<HostTensor> {
    /// `{key}.weight` [out, inp] and `{key}.bias` [out].
    pub fn load(w: &mut Weights, key: &str, out: usize, inp: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{key}.weight"), &[out, inp])?,
            bias: w.get(&format!("{key}.bias"), &[out])?,
        })
    }

    pub fn upload(&self, ctx: &Context, key: &str) -> Result<Linear<Tensor>> {
        Ok(Linear {
            weight: upload(ctx, &format!("{key}.weight"), &self.weight)?,
            bias: upload(ctx, &format!("{key}.bias"), &self.bias)?,
        })
    }
}

impl LayerNorm<HostTensor> {
    /// `{key}.weight` and `{key}.bias`, [c] each.
    pub fn load(w: &mut Weights, key: &str, c: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{key}.weight"), &[c])?,
            bias: w.get(&format!("{key}.bias"), &[c])?,
        })
    }

    pub fn upload(&self, ctx: &Context, key: &str) -> Result<LayerNorm<Tensor>> {
        Ok(LayerNorm {
            weight: upload(ctx, &format!("{key}.weight"), &self.weight)?,
            bias: upload(ctx, &format!("{key}.bias"), &self.bias)?,
        })
    }
}

impl Conv2d<HostTensor> {
    /// `{key}.weight` with `shape` and `{key}.bias` [shape[0]].
    pub fn load(w: &mut Weights, key: &str, shape: [usize; 4]) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{key}.weight"), &shape)?,
            bias: w.get(&format!("{key}.bias"), &[shape[0]])?,
        })
    }

    pub fn upload(&self, ctx: &Context, key: &str) -> Result<Conv2d<Tensor>> {
        Ok(Conv2d {
            weight: upload(ctx, &format!("{key}.weight"), &self.weight)?,
            bias: upload(ctx, &format!("{key}.bias"), &self.bias)?,
        })
    }
}

/// Buffers planned once per input shape and reused by every later call with that shape.
pub(crate) struct Plans<K, P>(Mutex<HashMap<K, Arc<P>>>);

impl<K, P> Default for Plans<K, P> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<K: Eq + Hash, P> Plans<K, P> {
    /// The plan for `key`, made by `make` the first time.
    pub(crate) fn get_or_make(&self, key: K, make: impl FnOnce() -> Result<P>) -> Result<Arc<P>> {
        // A poisoned lock only means another thread panicked mid-insert; the map is still valid.
        let mut plans = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(plan) = plans.get(&key) {
            return Ok(plan.clone());
        }
        let plan = Arc::new(make()?);
        plans.insert(key, plan.clone());
        Ok(plan)
    }
}
