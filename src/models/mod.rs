//! Models built from the kernels: each with a GPU forward (one submission) and a CPU forward
//! built only from the CPU twins.

/// Declares a weight tree, `pub struct Name<T> { .. }` on the host (`T = HostTensor`) or the
/// GPU (`T = Tensor`), and derives its [`MapTensors`] walk from the same field list, so a new
/// tensor is its field here (with its storage) and its line in the family's loader (which
/// fills the struct, so the compiler asks for it); uploading and f16 rounding follow. Each
/// tensor's key in the walk is its field path (`layers.3.qkv.weight`). A field is:
/// - a nested tree (`Linear<T>`, `Option<..>`, `Vec<..>`, `(tree, Activation)`): its walk;
/// - `@Run pub x: T` / `@F32 pub x: T`: one tensor, stored in the run's dtype or in f32;
/// - `@in_f32 pub x: tree`: the nested tree's walk with every tensor kept in f32;
/// - `@keep pub x: ..`: not a tensor (a flag, an activation, host-side data), cloned.
macro_rules! weight_tree {
    (
        $(#[$meta:meta])*
        pub struct $name:ident<$t:ident> {
            $(
                $(#[$field_meta:meta])*
                $(@$how:ident)?
                pub $field:ident: $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name<$t> {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl<$t> $crate::models::MapTensors<$t> for $name<$t> {
            type Out<U> = $name<U>;
            fn map_tensors<U, E>(
                &self,
                key: &str,
                f: &mut impl FnMut(&str, $crate::models::Storage, &$t) -> std::result::Result<U, E>,
            ) -> std::result::Result<$name<U>, E> {
                let tree = self;
                Ok($name {
                    $(
                        $field: $crate::models::weight_tree!(
                            @field tree, key, f, $field $(, $how)?
                        ),
                    )*
                })
            }
        }
    };
    (@field $tree:ident, $key:ident, $f:ident, $field:ident) => {
        $crate::models::MapTensors::map_tensors(
            &$tree.$field,
            &$crate::models::join($key, stringify!($field)),
            $f,
        )?
    };
    (@field $tree:ident, $key:ident, $f:ident, $field:ident, Run) => {
        $f(
            &$crate::models::join($key, stringify!($field)),
            $crate::models::Storage::Run,
            &$tree.$field,
        )?
    };
    (@field $tree:ident, $key:ident, $f:ident, $field:ident, F32) => {
        $f(
            &$crate::models::join($key, stringify!($field)),
            $crate::models::Storage::F32,
            &$tree.$field,
        )?
    };
    (@field $tree:ident, $key:ident, $f:ident, $field:ident, in_f32) => {
        $crate::models::MapTensors::map_tensors(
            &$tree.$field,
            &$crate::models::join($key, stringify!($field)),
            &mut |k: &str, _: $crate::models::Storage, t| $f(k, $crate::models::Storage::F32, t),
        )?
    };
    (@field $tree:ident, $key:ident, $f:ident, $field:ident, keep) => {
        $tree.$field.clone()
    };
}
pub(crate) use weight_tree;

pub mod cswin;
pub mod image;
pub mod pth;
pub mod text;
#[cfg(feature = "tokenizers")]
pub mod tokenizer;
pub mod weights;

weight_tree! {
    /// `nn.Linear`: weight [out, in] (in the run's dtype), bias [out] (f32).
    #[derive(Debug, Clone)]
    pub struct Linear<T> {
        @Run pub weight: T,
        @F32 pub bias: T,
    }
}

weight_tree! {
    /// `nn.LayerNorm`: weight and bias [C], f32.
    #[derive(Debug, Clone)]
    pub struct LayerNorm<T> {
        @F32 pub weight: T,
        @F32 pub bias: T,
    }
}

weight_tree! {
    /// `nn.Conv2d` with bias: weight [Cout, Cin / groups, KH, KW] (in the run's dtype), bias
    /// [Cout] (f32).
    #[derive(Debug, Clone)]
    pub struct Conv2d<T> {
        @Run pub weight: T,
        @F32 pub bias: T,
    }
}

use std::sync::{Arc, Mutex};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::host::HostTensor;
use crate::models::weights::{Weights, upload, upload_as};
use crate::recorder::Recorder;
use crate::tensor::{DType, Tensor};

impl Linear<HostTensor> {
    /// `{key}.weight` [out, inp] and `{key}.bias` [out].
    pub fn load(w: &mut Weights, key: &str, out: usize, inp: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get(&format!("{key}.weight"), &[out, inp])?,
            bias: w.get(&format!("{key}.bias"), &[out])?,
        })
    }

    pub fn upload(&self, ctx: &Context, key: &str) -> Result<Linear<Tensor>> {
        self.upload_as(ctx, key, DType::F32)
    }

    /// The weight stored as `dtype`, the bias as f32.
    pub fn upload_as(&self, ctx: &Context, key: &str, dtype: DType) -> Result<Linear<Tensor>> {
        Ok(Linear {
            weight: upload_as(ctx, &format!("{key}.weight"), &self.weight, dtype)?,
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
        self.upload_as(ctx, key, DType::F32)
    }

    /// The weight stored as `dtype`, the bias as f32.
    pub fn upload_as(&self, ctx: &Context, key: &str, dtype: DType) -> Result<Conv2d<Tensor>> {
        Ok(Conv2d {
            weight: upload_as(ctx, &format!("{key}.weight"), &self.weight, dtype)?,
            bias: upload(ctx, &format!("{key}.bias"), &self.bias)?,
        })
    }
}

/// How a run stores one tensor of a weight tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In the run's dtype (f16 for an f16 run): matmul and convolution weights, embedding
    /// tables.
    Run,
    /// In f32 whatever the run: biases, norms, CSWin's LePE, sentence-transformers' Dense.
    F32,
}

/// A tree of weights whose every tensor can be turned, with its key and [`Storage`], into
/// another kind of tensor. Uploading (`HostTensor` to GPU `Tensor`) and the CPU twin's f16
/// rounding both walk a model through this. Trees derive it with [`weight_tree!`] from their
/// field list; the containers (`Option`, `Vec`, a tree with a non-tensor) walk their parts.
pub trait MapTensors<T> {
    type Out<U>;
    fn map_tensors<U, E>(
        &self,
        key: &str,
        f: &mut impl FnMut(&str, Storage, &T) -> std::result::Result<U, E>,
    ) -> std::result::Result<Self::Out<U>, E>;
}

/// `key.name`, or `name` at the root.
pub(crate) fn join(key: &str, name: &str) -> String {
    if key.is_empty() {
        name.to_string()
    } else {
        format!("{key}.{name}")
    }
}

impl<T, X: MapTensors<T>> MapTensors<T> for Option<X> {
    type Out<U> = Option<X::Out<U>>;
    fn map_tensors<U, E>(
        &self,
        key: &str,
        f: &mut impl FnMut(&str, Storage, &T) -> std::result::Result<U, E>,
    ) -> std::result::Result<Self::Out<U>, E> {
        self.as_ref().map(|x| x.map_tensors(key, f)).transpose()
    }
}

impl<T, X: MapTensors<T>> MapTensors<T> for Vec<X> {
    type Out<U> = Vec<X::Out<U>>;
    /// Element `i` at `key.i`.
    fn map_tensors<U, E>(
        &self,
        key: &str,
        f: &mut impl FnMut(&str, Storage, &T) -> std::result::Result<U, E>,
    ) -> std::result::Result<Self::Out<U>, E> {
        (self.iter().enumerate())
            .map(|(i, x)| x.map_tensors(&join(key, &i.to_string()), f))
            .collect()
    }
}

impl<T, X: MapTensors<T>, A: Clone> MapTensors<T> for (X, A) {
    type Out<U> = (X::Out<U>, A);
    /// A tree with something that is not a tensor (a layer and its activation): the tree
    /// walked at `key`, the rest cloned.
    fn map_tensors<U, E>(
        &self,
        key: &str,
        f: &mut impl FnMut(&str, Storage, &T) -> std::result::Result<U, E>,
    ) -> std::result::Result<Self::Out<U>, E> {
        Ok((self.0.map_tensors(key, f)?, self.1.clone()))
    }
}

/// The tree in GPU buffers: [`Storage::Run`] tensors as `dtype` (f16 converted once here),
/// the rest as f32.
pub(crate) fn upload_tree<X: MapTensors<HostTensor>>(
    tree: &X,
    ctx: &Context,
    dtype: DType,
) -> Result<X::Out<Tensor>> {
    tree.map_tensors("", &mut |key, storage, t| match storage {
        Storage::Run => upload_as(ctx, key, t, dtype),
        Storage::F32 => upload(ctx, key, t),
    })
}

/// The tree as a `dtype` run holds it: [`Storage::Run`] tensors rounded to `dtype`, the rest
/// unchanged (the CPU twin's side of an f16 run).
pub(crate) fn rounded_tree<X: MapTensors<HostTensor>>(
    tree: &X,
    dtype: DType,
) -> X::Out<HostTensor> {
    let rounded = tree.map_tensors::<_, std::convert::Infallible>("", &mut |_, storage, t| {
        Ok(match storage {
            Storage::Run => t.clone().round_to(dtype),
            Storage::F32 => t.clone(),
        })
    });
    let Ok(tree) = rounded;
    tree
}

/// Idle plans kept for reuse, over all shapes; the least recently used go first.
pub const MAX_IDLE_PLANS: usize = 4;

/// Buffers planned per input shape and reused by later calls with that shape. A forward
/// leases a plan for its whole run (inputs written, kernels recorded and submitted, outputs
/// read back), so concurrent forwards never share buffers: a caller that finds every plan of
/// its shape in use gets a new one. At most [`MAX_IDLE_PLANS`] idle plans are kept, so a
/// stream of new shapes does not grow memory without bound.
pub(crate) struct Plans<K, P>(Mutex<PlanPool<K, P>>);

struct PlanPool<K, P> {
    /// (key, plan), least recently used first.
    idle: Vec<(K, Arc<P>)>,
}

impl<K, P> Default for Plans<K, P> {
    fn default() -> Self {
        Self(Mutex::new(PlanPool { idle: Vec::new() }))
    }
}

impl<K, P> Plans<K, P> {
    fn pool(&self) -> std::sync::MutexGuard<'_, PlanPool<K, P>> {
        // A poisoned lock only means another thread panicked mid-update; the pool stays valid.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle plans held now.
    pub(crate) fn idle_count(&self) -> usize {
        self.pool().idle.len()
    }
}

impl<K: Eq + Clone, P> Plans<K, P> {
    /// Leases an idle plan for `key`, or one made by `make`.
    pub(crate) fn lease(
        &self,
        key: K,
        make: impl FnOnce() -> Result<P>,
    ) -> Result<PlanLease<'_, K, P>> {
        let found = {
            let mut pool = self.pool();
            let at = pool.idle.iter().rposition(|(k, _)| *k == key);
            at.map(|i| pool.idle.remove(i).1)
        };
        let plan = match found {
            Some(plan) => plan,
            None => Arc::new(make()?),
        };
        Ok(PlanLease {
            plans: self,
            key: Some(key),
            plan,
        })
    }
}

/// A plan in use by one forward; back in the pool when dropped.
pub struct PlanLease<'a, K: Eq + Clone, P> {
    plans: &'a Plans<K, P>,
    key: Option<K>,
    plan: Arc<P>,
}

impl<K: Eq + Clone, P> std::ops::Deref for PlanLease<'_, K, P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.plan
    }
}

impl<K: Eq + Clone, P> Drop for PlanLease<'_, K, P> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut pool = self.plans.pool();
        pool.idle.push((key, self.plan.clone()));
        if pool.idle.len() > MAX_IDLE_PLANS {
            let excess = pool.idle.len() - MAX_IDLE_PLANS;
            pool.idle.drain(..excess);
        }
    }
}

/// A forward recorded once for a plan and kept with it: the program (parameters and bind
/// groups made once) and the tensors its copies fill (kept intermediate states).
pub(crate) struct Recorded {
    pub program: crate::program::Program,
    pub copies: Vec<crate::tensor::Tensor>,
}

/// The recorded forwards of one plan, by variant (e.g. with or without kept hidden states).
#[derive(Default)]
pub(crate) struct Programs(Mutex<Vec<(u32, Arc<Recorded>)>>);

impl Programs {
    pub(crate) fn get(&self, variant: u32) -> Option<Arc<Recorded>> {
        let programs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        programs
            .iter()
            .find(|(v, _)| *v == variant)
            .map(|(_, r)| r.clone())
    }

    fn insert(&self, variant: u32, recorded: Recorded) -> Arc<Recorded> {
        let recorded = Arc::new(recorded);
        let mut programs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        programs.retain(|(v, _)| *v != variant);
        programs.push((variant, recorded.clone()));
        recorded
    }

    /// The forward recorded for `variant`, recorded by `record` on first use; `record` pushes
    /// the tensors its copies fill (kept with the program).
    pub(crate) async fn get_or_record(
        &self,
        ctx: &Context,
        variant: u32,
        record: impl FnOnce(&mut Recorder<'_>, &mut Vec<Result<Tensor>>) -> Result<()>,
    ) -> Result<Arc<Recorded>> {
        if let Some(r) = self.get(variant) {
            return Ok(r);
        }
        let mut rec = Recorder::new(ctx);
        let mut copies = Vec::new();
        record(&mut rec, &mut copies)?;
        let copies = copies.into_iter().collect::<Result<Vec<_>>>()?;
        let program = rec.finish().await?;
        Ok(self.insert(variant, Recorded { program, copies }))
    }
}

impl Recorded {
    /// Runs the program and reads `outputs`, then the copies, back in one readback.
    pub(crate) async fn run_and_read(
        &self,
        ctx: &Context,
        mut outputs: Vec<&Tensor>,
        what: &'static str,
    ) -> Result<Outputs> {
        outputs.extend(&self.copies);
        let values = self.program.run_and_read(ctx, &outputs).await?;
        Ok(Outputs {
            values: values.into_iter(),
            what,
        })
    }
}

/// Values read back by [`Recorded::run_and_read`], taken in the order they were asked for.
pub(crate) struct Outputs {
    values: std::vec::IntoIter<HostTensor>,
    what: &'static str,
}

impl Outputs {
    pub(crate) fn next(&mut self) -> Result<HostTensor> {
        self.values.next().ok_or_else(|| Error::Readback {
            what: self.what.into(),
            message: "fewer outputs than asked for".into(),
        })
    }

    /// The next `n` values.
    pub(crate) fn take(&mut self, n: usize) -> Result<Vec<HostTensor>> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// A model dtype the GPU path runs: f32, or f16 where the adapter has `SHADER_F16`.
pub(crate) fn check_model_dtype(ctx: &Context, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 => Ok(()),
        DType::F16 if ctx.capabilities().has(wgpu::Features::SHADER_F16) => Ok(()),
        DType::F16 => Err(Error::Argument {
            op: "model",
            arg: "dtype",
            reason: format!(
                "f16 needs the adapter feature SHADER_F16, which {} does not have (use f32)",
                ctx.capabilities().adapter.name
            ),
        }),
        DType::U32 => Err(Error::Argument {
            op: "model",
            arg: "dtype",
            reason: "a model computes in f32 or f16, not u32".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Activation;

    weight_tree! {
        /// Every kind of field `weight_tree!` knows.
        #[derive(Debug, Clone)]
        pub struct Tree<T> {
            @Run pub table: T,
            pub norm: LayerNorm<T>,
            pub layers: Vec<Linear<T>>,
            pub head: Option<(Linear<T>, Activation)>,
            pub absent: Option<Linear<T>>,
            @in_f32 pub small: Linear<T>,
            @keep pub flag: bool,
        }
    }

    /// The derived walk visits every tensor once, in field order, with its field path as key
    /// and the storage its field says; what is not a tensor is carried over.
    #[test]
    fn the_derived_walk_names_and_stores_every_tensor() {
        let linear = |w: &str| Linear {
            weight: format!("{w}.w"),
            bias: format!("{w}.b"),
        };
        let tree = Tree {
            table: "table".to_string(),
            norm: LayerNorm {
                weight: "norm.w".into(),
                bias: "norm.b".into(),
            },
            layers: vec![linear("l0"), linear("l1")],
            head: Some((linear("head"), Activation::Tanh)),
            absent: None,
            small: linear("small"),
            flag: true,
        };
        let mut seen = Vec::new();
        let walked =
            tree.map_tensors::<_, std::convert::Infallible>("root", &mut |key, storage, t| {
                seen.push(format!("{key} {storage:?} {t}"));
                Ok(t.len())
            });
        let Ok(walked) = walked;
        assert_eq!(
            seen,
            [
                "root.table Run table",
                "root.norm.weight F32 norm.w",
                "root.norm.bias F32 norm.b",
                "root.layers.0.weight Run l0.w",
                "root.layers.0.bias F32 l0.b",
                "root.layers.1.weight Run l1.w",
                "root.layers.1.bias F32 l1.b",
                "root.head.weight Run head.w",
                "root.head.bias F32 head.b",
                "root.small.weight F32 small.w",
                "root.small.bias F32 small.b",
            ]
        );
        assert_eq!(walked.table, 5);
        assert_eq!(
            walked.head.map(|(l, a)| (l.weight, a)),
            Some((6, Activation::Tanh))
        );
        assert!(walked.absent.is_none() && walked.flag);
    }
}
