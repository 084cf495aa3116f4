//! Shared test helpers: the GPU context, seeded data, and the tolerance check.
#![allow(dead_code)]

use std::sync::OnceLock;

use backbone::reference::HostTensor;
use backbone::{Context, DType, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Set to 1 to skip GPU tests on a machine without any adapter (not even lavapipe).
pub const SKIP_VAR: &str = "BACKBONE_SKIP_GPU_TESTS";

/// The shared GPU context, or `None` when the user opted out. Without an adapter (and no
/// opt-out) this fails loudly: GPU tests never skip silently.
pub fn gpu() -> Option<&'static Context> {
    static CTX: OnceLock<Option<Context>> = OnceLock::new();
    CTX.get_or_init(|| {
        if std::env::var(SKIP_VAR).is_ok_and(|v| v == "1") {
            eprintln!("backbone tests: GPU tests skipped ({SKIP_VAR}=1)");
            return None;
        }
        match Context::from_env_blocking() {
            Ok(ctx) => {
                eprintln!("backbone tests: adapter = {}", ctx.capabilities());
                Some(ctx)
            }
            Err(e) => panic!(
                "GPU tests need an adapter: {e}\n(set {SKIP_VAR}=1 to skip them on a machine without one)"
            ),
        }
    })
    .as_ref()
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// `n` values uniform in [-scale, scale).
pub fn random(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

pub fn host(shape: &[usize], data: Vec<f32>) -> HostTensor {
    HostTensor::new(shape, data).expect("host tensor")
}

pub fn random_host(rng: &mut StdRng, shape: &[usize], scale: f32) -> HostTensor {
    let n = shape.iter().product();
    host(shape, random(rng, n, scale))
}

pub fn upload(ctx: &Context, t: &HostTensor, label: &str) -> Tensor {
    Tensor::from_f32(ctx, &t.shape, &t.data, label).expect("upload")
}

pub fn upload_u32(ctx: &Context, t: &HostTensor<u32>, label: &str) -> Tensor {
    Tensor::from_u32(ctx, &t.shape, &t.data, label).expect("upload")
}

pub fn empty(ctx: &Context, shape: &[usize], label: &str) -> Tensor {
    Tensor::empty(ctx, shape, DType::F32, label).expect("allocate")
}

/// Asserts `|gpu - cpu| <= atol + rtol * |cpu|` everywhere; on failure names the first bad
/// index with both values, the number of bad entries and the worst error.
pub fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], atol: f32, rtol: f32) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: length differs");
    let mut first = None;
    let mut bad = 0usize;
    let mut worst = 0f32;
    for (i, (&g, &c)) in gpu.iter().zip(cpu).enumerate() {
        let err = (g - c).abs();
        worst = worst.max(if err.is_nan() { f32::INFINITY } else { err });
        if err.is_nan() || err > atol + rtol * c.abs() {
            bad += 1;
            first.get_or_insert((i, g, c));
        }
    }
    if let Some((i, g, c)) = first {
        panic!(
            "{what}: {bad} of {} values out of tolerance (atol {atol}, rtol {rtol}); first at \
             index {i}: gpu {g} vs cpu {c}; max abs error {worst}",
            gpu.len()
        );
    }
}

/// A fixture folder under `tests/fixtures`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The tensors of a golden safetensors file, as f32 or integer host data.
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn open(path: &std::path::Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self { bytes }
    }

    fn view(&self, name: &str) -> safetensors::tensor::TensorView<'_> {
        let file = safetensors::SafeTensors::deserialize(&self.bytes).expect("golden file");
        file.tensor(name)
            .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"))
    }

    pub fn f32(&self, name: &str) -> HostTensor {
        let v = self.view(name);
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
        host(v.shape(), bytemuck::pod_collect_to_vec(v.data()))
    }

    /// An I64 tensor as u32 (ids and masks), with its shape.
    pub fn ids(&self, name: &str) -> (Vec<usize>, Vec<u32>) {
        let v = self.view(name);
        assert_eq!(v.dtype(), safetensors::Dtype::I64, "{name}");
        let wide: Vec<i64> = bytemuck::pod_collect_to_vec(v.data());
        (
            v.shape().to_vec(),
            wide.iter()
                .map(|&x| u32::try_from(x).expect("id fits u32"))
                .collect(),
        )
    }
}

/// Rows `[.., C]` of `t` where `mask` is nonzero, packed in order.
pub fn real_rows(t: &HostTensor, mask: &[u32]) -> Vec<f32> {
    let c = *t.shape.last().expect("rank >= 1");
    mask.iter()
        .enumerate()
        .filter(|&(_, &m)| m != 0)
        .flat_map(|(i, _)| t.data[i * c..(i + 1) * c].iter().copied())
        .collect()
}

/// Cosine similarity of each row pair; returns the smallest.
pub fn min_row_cosine(a: &HostTensor, b: &HostTensor) -> f64 {
    let c = *a.shape.last().expect("rank >= 1");
    a.data
        .chunks(c)
        .zip(b.data.chunks(c))
        .map(|(x, y)| {
            let dot: f64 = x.iter().zip(y).map(|(&p, &q)| p as f64 * q as f64).sum();
            let nx: f64 = x.iter().map(|&p| p as f64 * p as f64).sum::<f64>().sqrt();
            let ny: f64 = y.iter().map(|&q| q as f64 * q as f64).sum::<f64>().sqrt();
            dot / (nx * ny)
        })
        .fold(1.0, f64::min)
}

/// ||a - b||_2 / ||b||_2.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Every tensor of a fixture's model.safetensors (f32), sorted by name: a checkpoint to
/// rewrite with a defect.
pub fn checkpoint_tensors(fixture_name: &str) -> Vec<(String, HostTensor)> {
    let bytes = std::fs::read(fixture(fixture_name).join("model.safetensors")).expect("model");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                host(v.shape(), bytemuck::pod_collect_to_vec(v.data())),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Named tensors as safetensors bytes.
pub fn checkpoint_bytes(tensors: &[(String, HostTensor)]) -> Vec<u8> {
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    backbone::models::weights::to_safetensors(&refs).expect("serialize")
}
