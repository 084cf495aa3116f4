//! Helpers of the hostile-input tests (tests/hostile.rs, tests/hostile_files.rs): scratch
//! folders, model copies, running the binary and checking that it failed cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use backbone::reference::HostTensor;

use super::fixture;

/// A fresh scratch folder for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("backbone-hostile-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A copy of a fixture model folder (config, weights, tokenizer) in a scratch folder.
pub fn model_copy(name: &str, test: &str) -> PathBuf {
    let dir = scratch(test).join("model");
    std::fs::create_dir_all(&dir).expect("model dir");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        let from = fixture(name).join(file);
        if from.exists() {
            std::fs::copy(&from, dir.join(file)).expect("copy");
        }
    }
    dir
}

/// Rewrites one key of a model folder's config.json.
pub fn set_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("json");
    json[key] = value;
    std::fs::write(&path, serde_json::to_vec(&json).expect("json")).expect("write config");
}

/// Runs the binary (bounded to 60 s) and returns its output and wall time.
pub fn backbone(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(super::bin("backbone"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run backbone");
    (out, start.elapsed())
}

/// `backbone run [--device D] --model M --input I --output O` through [`backbone`].
pub fn run_model(
    device: Option<&str>,
    model: &Path,
    input: &Path,
    output: &Path,
) -> (Output, Duration) {
    let mut args = vec!["run"];
    if let Some(d) = device {
        args.extend(["--device", d]);
    }
    args.extend([
        "--model",
        p(model),
        "--input",
        p(input),
        "--output",
        p(output),
    ]);
    backbone(&args)
}

/// The `backbone` binary with `args`, to be run under a shell limit (`ulimit_args`, e.g.
/// `-f 64` for a file-size limit in KiB, `-v 4194304` for a 4 GiB address-space cap).
pub fn limited(ulimit_args: &str, args: &[&str]) -> Command {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("ulimit {ulimit_args} && exec \"$0\" \"$@\""))
        .arg(super::bin("backbone"))
        .args(args)
        .env("RUST_LOG", "off");
    command
}

/// [`limited`], run to its end.
pub fn backbone_limited(ulimit_args: &str, args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = limited(ulimit_args, args).output().expect("bash");
    (out, start.elapsed())
}

/// The `backbone` binary run with `args` under a file-size limit of `kib` KiB (`ulimit -f`).
pub fn backbone_with_file_limit(kib: u32, args: &[&str]) -> (Output, Duration) {
    backbone_limited(&format!("-f {kib}"), args)
}

/// The address-space cap for the memory cases: 4 GiB (`ulimit -v`, in KiB).
pub const ADDRESS_SPACE_KIB: u64 = 4 << 20;

/// The `backbone` binary run with `args` under [`ADDRESS_SPACE_KIB`]: an allocation past it
/// fails (an abort, signal 6, where it is not bounded beforehand).
pub fn backbone_capped(args: &[&str]) -> (Output, Duration) {
    backbone_limited(&format!("-v {ADDRESS_SPACE_KIB}"), args)
}

/// CRC-32 as zip and PNG compute it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Asserts a clean failure: exit status 1 (an error returned, not a panic = 101 or an abort or
/// a signal), within `max_s` seconds, with every one of `words` in the message.
pub fn assert_fails(
    what: &str,
    (out, took): (Output, Duration),
    words: &[&str],
    max_s: u64,
) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: expected exit status 1, got {:?}; stderr:\n{stderr}",
        out.status
    );
    for word in words {
        assert!(
            stderr.contains(word),
            "{what}: the message should contain {word:?}; stderr:\n{stderr}"
        );
    }
    assert!(
        took < Duration::from_secs(max_s),
        "{what}: took {took:?} (limit {max_s} s)"
    );
    assert!(out.stdout.is_empty(), "{what}: printed a result anyway");
    eprintln!("{what}: exit 1 in {took:.2?}: {}", stderr.trim());
    stderr
}

/// A safetensors file whose header lists `n` empty tensors and nothing else.
pub fn empty_tensors_file(n: usize) -> Vec<u8> {
    let mut header = String::from("{");
    for i in 0..n {
        header.push_str(&format!(
            "\"t{i}\":{{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}},"
        ));
    }
    header.pop();
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes
}

pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A flat grey PNG (compresses to almost nothing whatever its size).
pub fn write_png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_pixel(w, h, image::Rgb([90, 90, 90]))
        .save(path)
        .expect("write png");
}

pub fn pixel_file(path: &Path, shape: &[usize], poison: Option<(usize, f32)>) {
    let n = shape.iter().product();
    let mut data: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
    if let Some((i, v)) = poison {
        data[i] = v;
    }
    let t = HostTensor::new(shape, data).expect("tensor");
    let bytes = backbone::models::weights::to_safetensors(&[("pixel_values", &t)]).expect("st");
    std::fs::write(path, bytes).expect("write input");
}
