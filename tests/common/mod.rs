//! Shared test helpers: the GPU context, seeded data, and the tolerance check.
#![allow(dead_code)]

pub mod hostile;

use std::sync::OnceLock;

use backbone::reference::HostTensor;
use backbone::{Context, DType, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Set to 1 on a machine without any adapter (not even lavapipe): build.rs then sets
/// `cfg(skip_gpu_tests)` and every GPU test, marked
/// `#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]`, is
/// reported as ignored (never as passed with nothing compared).
pub const SKIP_VAR: &str = "BACKBONE_SKIP_GPU_TESTS";

/// The adapter's context, opened once per test binary (or why it could not be).
fn shared_context() -> &'static Result<Context, String> {
    static CTX: OnceLock<Result<Context, String>> = OnceLock::new();
    CTX.get_or_init(|| match Context::from_env_blocking() {
        Ok(ctx) => {
            eprintln!("backbone tests: adapter = {}", ctx.capabilities());
            Ok(ctx)
        }
        Err(e) => Err(e.to_string()),
    })
}

/// The shared GPU context for a GPU test (one marked ignored under `cfg(skip_gpu_tests)`).
/// Without an adapter this fails loudly: GPU tests never pass silently.
pub fn ctx() -> &'static Context {
    match shared_context() {
        Ok(ctx) => ctx,
        Err(e) => panic!(
            "GPU tests need an adapter: {e}\n(set {SKIP_VAR}=1 on a machine without one: the GPU \
             tests are then reported as ignored)"
        ),
    }
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

/// An f32 output tensor filled with NaN: an element the kernel fails to write (a skipped zero
/// result, a lost tail) stays NaN, and [`assert_close`] fails on it.
pub fn nan_filled(ctx: &Context, shape: &[usize], label: &str) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_f32(ctx, shape, &vec![f32::NAN; n], label).expect("upload NaN-filled output")
}

/// A host output filled with NaN, so a CPU twin is checked to write every element too.
pub fn nan_host(shape: &[usize]) -> HostTensor {
    host(shape, vec![f32::NAN; shape.iter().product()])
}

/// Reads an f32 tensor back.
pub fn read_f32(ctx: &Context, t: &Tensor) -> Vec<f32> {
    t.read_f32_blocking(ctx).expect("read back")
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

/// A binary of the CLI package (`cli/`: `backbone`, `backbone-bench`), which `cargo test`
/// builds beside the test executables (the CLI package's own integration test makes cargo
/// build its binaries whenever the workspace's tests run).
pub fn bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the target folder");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run the workspace's tests (cargo test --release) or build the CLI \
         first (cargo build --release -p backbone-cli)",
        path.display()
    );
    path
}

/// The `backbone` binary run with `args`: its output, whatever its exit status.
pub fn backbone_output<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> std::process::Output {
    std::process::Command::new(bin("backbone"))
        .args(args)
        .output()
        .expect("run backbone")
}

/// The `backbone` binary run with `args`, which must succeed (the arguments and its stderr
/// in the message otherwise): its stdout.
pub fn backbone_stdout<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Vec<u8> {
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().into()).collect();
    let out = backbone_output(&args);
    assert!(
        out.status.success(),
        "backbone {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fixture folder under `tests/fixtures`.
pub fn fixture(name: &str) -> std::path::PathBuf {
    // BACKBONE_FIXTURES: where prebuilt test executables find the fixtures on another machine
    // (scripts/gpu_check.sh sets it).
    std::env::var_os("BACKBONE_FIXTURES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join(name)
}

/// A text fixture's `sentences.json`.
pub fn sentences(dir: &std::path::Path) -> serde_json::Value {
    let path = dir.join("sentences.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("sentences.json")
}

/// The strings under `key` of a text fixture's `sentences.json` (e.g. "texts", "documents").
pub fn sentence_list(dir: &std::path::Path, key: &str) -> Vec<String> {
    sentences(dir)[key]
        .as_array()
        .unwrap_or_else(|| panic!("sentences.json has no {key}"))
        .iter()
        .map(|t| t.as_str().expect("a string").to_string())
        .collect()
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

    /// Whether the file holds tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        let file = safetensors::SafeTensors::deserialize(&self.bytes).expect("golden file");
        file.names().contains(&name)
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

/// One tensor's float32-vs-float64 deviation, as the fixture generator recorded it in
/// `tests/fixtures/<name>/tolerance.json` (the PyTorch float32 run against the same weights and
/// input in float64).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Deviation {
    pub max_abs_diff: f64,
    pub max_abs_ref: f64,
    pub rel_l2: f64,
}

/// A fixture's `tolerance.json`.
#[derive(Debug, serde::Deserialize)]
pub struct Tolerances {
    tensors: std::collections::BTreeMap<String, Deviation>,
}

/// How far a path may drift from the golden output, relative to the recorded float32 error.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bound on max |got - golden| as a multiple of the recorded `max_abs_diff`.
    pub max_abs: f64,
    /// Bound on ||got - golden|| / ||golden|| as a multiple of the recorded `rel_l2`.
    pub rel_l2: f64,
}

/// The GPU path (float32, its own summation orders) against the golden float32 outputs.
/// Measured on lavapipe: at most 2.7x the recorded max-abs deviation (cswin-micro-s3full
/// logits) and 1.8x the recorded relative L2, so the worst error / bound ratio is 0.34; an
/// error 3x the worst seen today fails.
pub const GPU_BUDGET: Budget = Budget {
    max_abs: 8.0,
    rel_l2: 8.0,
};
/// The CPU path accumulates in float64, so it sits about as far from the golden float32 file
/// as that file sits from the float64 truth: measured at most 1.2x the recorded max-abs
/// deviation and 1.14x the recorded relative L2 (worst ratio 0.30).
pub const CPU_BUDGET: Budget = Budget {
    max_abs: 4.0,
    rel_l2: 4.0,
};

/// The floor under a max-abs bound, in float32 epsilons of the tensor's largest value
/// (`max_abs_ref`), i.e. about two units in the last place of that value. A correct float32
/// result can be half an ulp off per rounding however it sums, so a tensor whose recorded
/// deviation is tiny (under half an ulp of its largest value, when the golden run happened to
/// round well) still gets a bound it can meet. No fixture tensor needs it today (the smallest
/// recorded deviation is 1.0 epsilon of its largest value, so 4x that is above the floor).
pub const FLOOR_EPS_OF_MAX: f64 = 2.0;
/// The floor under a relative-L2 bound (float32 epsilon is 1.2e-7; the smallest recorded
/// relative L2 is 7.2e-8).
pub const REL_L2_FLOOR: f64 = 1e-7;

impl Tolerances {
    pub fn load(fixture_name: &str) -> Self {
        let path = fixture(fixture_name).join("tolerance.json");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The recorded deviation of `key`; panics when the fixture has none (a new output needs
    /// its own recorded deviation, not a borrowed one).
    pub fn get(&self, key: &str) -> Deviation {
        *self.tensors.get(key).unwrap_or_else(|| {
            panic!(
                "tolerance.json has no entry {key:?} (has {:?})",
                self.tensors.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Checks `got` against the golden `want` within `budget` times the recorded deviation of
    /// `key` (floored, see [`FLOOR_EPS_OF_MAX`], [`REL_L2_FLOOR`]); prints the measured error,
    /// the bound and their ratio, and returns the larger of the two ratios. A failure names the
    /// first index over the max-abs bound.
    pub fn check(&self, what: &str, key: &str, got: &[f32], want: &[f32], budget: Budget) -> f64 {
        let dev = self.get(key);
        let floor = FLOOR_EPS_OF_MAX * f32::EPSILON as f64 * dev.max_abs_ref;
        let abs_bound = (budget.max_abs * dev.max_abs_diff).max(floor);
        let rel_bound = (budget.rel_l2 * dev.rel_l2).max(REL_L2_FLOOR);
        assert_eq!(got.len(), want.len(), "{what}: {key}: length differs");
        let worst = got
            .iter()
            .zip(want)
            .map(|(&g, &w)| {
                let e = (g as f64 - w as f64).abs();
                if e.is_nan() { f64::INFINITY } else { e }
            })
            .fold(0.0, f64::max);
        let rel = rel_l2(got, want);
        let (abs_ratio, rel_ratio) = (worst / abs_bound, rel / rel_bound);
        eprintln!(
            "{what}: {key}: max abs {worst:.3e} = {:.2}x recorded {:.3e}, bound {abs_bound:.3e} \
             (ratio {abs_ratio:.3}); rel L2 {rel:.3e} = {:.2}x recorded {:.3e}, bound \
             {rel_bound:.3e} (ratio {rel_ratio:.3})",
            worst / dev.max_abs_diff,
            dev.max_abs_diff,
            rel / dev.rel_l2,
            dev.rel_l2,
        );
        assert_close(&format!("{what}: {key}"), got, want, abs_bound as f32, 0.0);
        assert!(
            rel <= rel_bound,
            "{what}: {key}: relative L2 {rel:.3e} > {rel_bound:.3e} ({}x recorded {:.3e})",
            budget.rel_l2,
            dev.rel_l2
        );
        abs_ratio.max(rel_ratio)
    }
}

/// Real all-MiniLM-L6-v2 weights (tests marked ignored without `cfg(has_minilm)`): the model
/// folder from BACKBONE_MINILM_DIR, the fixture's sentences tokenized as sentence-transformers
/// did (checked against the golden ids), and the golden outputs.
pub fn minilm() -> (
    std::path::PathBuf,
    backbone::models::text::TextInput,
    Golden,
) {
    let model_dir = std::env::var("BACKBONE_MINILM_DIR")
        .map(std::path::PathBuf::from)
        .expect("BACKBONE_MINILM_DIR (the test is built to run with it)");
    let fixture_dir = fixture("all-minilm-l6-v2");
    let golden = Golden::open(&fixture_dir.join("golden.safetensors"));
    let sentences: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture_dir.join("sentences.json")).expect("sentences"),
    )
    .expect("json");
    let texts: Vec<String> =
        serde_json::from_value(sentences["sentences"].clone()).expect("sentences");
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tokenizer =
        backbone::models::tokenizer::TextTokenizer::from_dir(&model_dir, 256).expect("tokenizer");
    let input = tokenizer.encode(&texts).expect("encode");
    let (shape, ids) = golden.ids("input_ids");
    let (_, mask) = golden.ids("attention_mask");
    let (_, types) = golden.ids("token_type_ids");
    let expected =
        backbone::models::text::TextInput::new(shape[0], shape[1], ids, Some(mask), Some(types))
            .expect("golden input");
    assert_eq!(
        input, expected,
        "tokenization differs from sentence-transformers"
    );
    eprintln!("MiniLM tests run on {}", model_dir.display());
    (model_dir, input, golden)
}

/// The largest |got - want|, as a fraction of the largest magnitude in `want`.
pub fn of_max(got: &[f32], want: &[f32]) -> f32 {
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    err / max.max(f32::MIN_POSITIVE)
}

/// The top class of each row of logits [B, classes] (the library's `cswin::top_k`).
pub fn top1(logits: &HostTensor) -> Vec<usize> {
    logits
        .data
        .chunks(logits.shape[1])
        .map(|row| backbone::models::cswin::top_k(row, 1)[0].0)
        .collect()
}
