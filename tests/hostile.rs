//! Hostile and careless input through the `backbone` binary: every case ends in a clear error
//! (exit status 1, the words of the message checked), quickly and within bounded memory, and
//! no file is lost. These run on the CPU path or fail before any device is opened.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use backbone::reference::HostTensor;
use common::fixture;

/// A fresh scratch folder for one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("backbone-hostile-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A copy of a fixture model folder (config, weights, tokenizer) in a scratch folder.
fn model_copy(name: &str, test: &str) -> PathBuf {
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
fn set_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config")).expect("json");
    json[key] = value;
    std::fs::write(&path, serde_json::to_vec(&json).expect("json")).expect("write config");
}

/// Runs the binary (bounded to 60 s) and returns its output and wall time.
fn backbone(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_backbone"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run backbone");
    (out, start.elapsed())
}

/// Asserts a clean failure: exit status 1 (an error returned, not a panic = 101 or an abort or
/// a signal), within `max_s` seconds, with every one of `words` in the message.
fn assert_fails(what: &str, (out, took): (Output, Duration), words: &[&str], max_s: u64) -> String {
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
fn empty_tensors_file(n: usize) -> Vec<u8> {
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

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A flat grey PNG (compresses to almost nothing whatever its size).
fn write_png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_pixel(w, h, image::Rgb([90, 90, 90]))
        .save(path)
        .expect("write png");
}

fn pixel_file(path: &Path, shape: &[usize], poison: Option<(usize, f32)>) {
    let n = shape.iter().product();
    let mut data: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) / 50.0).collect();
    if let Some((i, v)) = poison {
        data[i] = v;
    }
    let t = HostTensor::new(shape, data).expect("tensor");
    let bytes = backbone::models::weights::to_safetensors(&[("pixel_values", &t)]).expect("st");
    std::fs::write(path, bytes).expect("write input");
}

#[test]
fn extreme_aspect_images_are_refused_before_resizing() {
    let dir = scratch("aspect");
    let model = fixture("cswin-micro-224");
    // 1x10000: a 100-byte file whose resize target would be 248 x 2,480,000.
    let thin = dir.join("thin.png");
    write_png(&thin, 1, 10_000);
    let r = backbone(&[
        "classify",
        "--device",
        "cpu",
        "--model",
        p(&model),
        p(&thin),
    ]);
    assert_fails(
        "1x10000 PNG",
        r,
        &["thin.png", "aspect ratio", "budget"],
        10,
    );
    // 20,000,000 x 1: refused from the header, before the decoder allocates its pixels.
    let wide = dir.join("wide.png");
    write_png(&wide, 20_000_000, 1);
    let size = std::fs::metadata(&wide).expect("wide").len();
    assert!(size < 1 << 20, "the test PNG is small ({size} bytes)");
    let r = backbone(&[
        "classify",
        "--device",
        "cpu",
        "--model",
        p(&model),
        p(&wide),
    ]);
    assert_fails("20000000x1 PNG", r, &["wide.png", "limits", "16384"], 10);
}

#[test]
fn truncated_and_corrupt_images_are_errors() {
    let dir = scratch("truncated");
    let model = fixture("cswin-micro-224");
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([
            (x * 7 % 256) as u8,
            (y * 13 % 256) as u8,
            ((x ^ y) % 256) as u8,
        ])
    });
    let jpeg = dir.join("full.jpg");
    img.save(&jpeg).expect("jpeg");
    let bytes = std::fs::read(&jpeg).expect("read jpeg");
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &bytes[..600]).expect("cut");
    let r = backbone(&["classify", "--device", "cpu", "--model", p(&model), p(&cut)]);
    assert_fails(
        "JPEG cut to 600 bytes",
        r,
        &["cut.jpg", "truncated JPEG"],
        10,
    );

    let png = dir.join("full.png");
    img.save(&png).expect("png");
    let bytes = std::fs::read(&png).expect("read png");
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("cut");
    let r = backbone(&["classify", "--device", "cpu", "--model", p(&model), p(&cut)]);
    assert_fails("PNG cut in half", r, &["cut.png", "cannot decode"], 10);

    // The whole JPEG still classifies (the strict check refuses only broken files).
    let (out, _) = backbone(&[
        "classify",
        "--device",
        "cpu",
        "--model",
        p(&model),
        p(&jpeg),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oversized_config_values_name_their_key() {
    let images = scratch("config-images");
    let png = images.join("cat.png");
    write_png(&png, 64, 48);
    let model = model_copy("cswin-micro-224", "img-size");
    set_config(&model, "img_size", serde_json::json!(1_000_000_000u64));
    let r = backbone(&["classify", "--device", "cpu", "--model", p(&model), p(&png)]);
    assert_fails(
        "img_size 1e9",
        r,
        &["config.json", "img_size", "maximum"],
        10,
    );

    let model = model_copy("cswin-micro-224", "split-size");
    set_config(
        &model,
        "split_size",
        serde_json::json!([1_000_000, 2, 7, 7]),
    );
    let input = images.join("in.safetensors");
    pixel_file(&input, &[1, 3, 64, 64], None);
    let out = images.join("out.safetensors");
    for device in ["cpu", "gpu"] {
        let r = backbone(&[
            "run",
            "--device",
            device,
            "--model",
            p(&model),
            "--input",
            p(&input),
            "--output",
            p(&out),
        ]);
        assert_fails(
            "split_size[0] 1e6",
            r,
            &["config.json", "split_size[0]"],
            10,
        );
    }

    let model = model_copy("bert-micro-12l-random", "bert-config");
    set_config(&model, "num_hidden_layers", serde_json::json!(100_000));
    let r = backbone(&["embed", "--device", "cpu", "--model", p(&model), "hello"]);
    assert_fails(
        "num_hidden_layers 1e5",
        r,
        &["num_hidden_layers", "maximum"],
        10,
    );
}

#[test]
fn output_equal_to_input_is_refused_and_the_input_kept() {
    let dir = scratch("same-file");
    let input = dir.join("in.safetensors");
    pixel_file(&input, &[1, 3, 32, 32], None);
    let before = std::fs::read(&input).expect("input");
    let model = fixture("cswin-micro-224");
    for output in [input.clone(), dir.join(".").join("in.safetensors")] {
        let r = backbone(&[
            "run",
            "--device",
            "cpu",
            "--model",
            p(&model),
            "--input",
            p(&input),
            "--output",
            p(&output),
        ]);
        assert_fails(
            "--output = --input",
            r,
            &["refusing to overwrite the input"],
            10,
        );
        assert_eq!(
            std::fs::read(&input).expect("input"),
            before,
            "input changed"
        );
    }
}

#[test]
fn a_failed_write_leaves_the_old_output_intact() {
    let dir = scratch("atomic");
    let input = dir.join("in.safetensors");
    pixel_file(&input, &[1, 3, 32, 32], None);
    let output = dir.join("out.safetensors");
    let old = b"the previous result, which must survive".to_vec();
    std::fs::write(&output, &old).expect("old output");
    let model = fixture("cswin-micro-224");
    // A 4 KiB file-size limit: the output (tens of KiB) cannot be written.
    let start = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg("ulimit -f 4 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_backbone"))
        .args([
            "run",
            "--device",
            "cpu",
            "--model",
            p(&model),
            "--input",
            p(&input),
        ])
        .args(["--output", p(&output)])
        .output()
        .expect("bash");
    assert_fails(
        "write past ulimit -f",
        (out, start.elapsed()),
        &["out.safetensors", "File too large"],
        60,
    );
    assert_eq!(
        std::fs::read(&output).expect("output"),
        old,
        "old output lost"
    );
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["in.safetensors", "out.safetensors"],
        "temporary files left"
    );

    // Without the limit the same command replaces the file.
    let (out, _) = backbone(&[
        "run",
        "--device",
        "cpu",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--output",
        p(&output),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(std::fs::read(&output).expect("output"), old);
}

#[test]
fn user_errors_come_before_the_weights_are_read() {
    // Weights that would fail to load: the input and output errors must be reported first.
    let model = model_copy("cswin-micro-224", "order");
    std::fs::write(model.join("model.safetensors"), b"not weights").expect("corrupt");
    let dir = scratch("order-io");
    let input = dir.join("in.safetensors");
    pixel_file(&input, &[1, 3, 2, 32], None);
    let out = dir.join("out.safetensors");
    let r = backbone(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--output",
        p(&out),
    ]);
    assert_fails("input too small", r, &["pixel_values", "3x3"], 10);
    pixel_file(&input, &[1, 3, 32, 32], None);
    let missing = dir.join("no/such/dir/out.safetensors");
    let r = backbone(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--output",
        p(&missing),
    ]);
    assert_fails(
        "output folder missing",
        r,
        &["--output", "out.safetensors"],
        10,
    );
    let r = backbone(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--output",
        p(&dir),
    ]);
    assert_fails("output is a folder", r, &["--output", "directory"], 10);
    // With a good input and output, the weight error names the file.
    let r = backbone(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--output",
        p(&out),
    ]);
    assert_fails(
        "corrupt weights",
        r,
        &["model.safetensors", "safetensors"],
        10,
    );
    assert!(!out.exists(), "an output was written");
}

#[test]
fn non_finite_inputs_and_weights_are_errors() {
    let dir = scratch("nan");
    let model = fixture("cswin-micro-224");
    let out = dir.join("out.safetensors");
    for (value, word) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let input = dir.join("in.safetensors");
        pixel_file(&input, &[1, 3, 32, 32], Some((1234, value)));
        for device in ["cpu", "gpu"] {
            let r = backbone(&[
                "run",
                "--device",
                device,
                "--model",
                p(&model),
                "--input",
                p(&input),
                "--output",
                p(&out),
            ]);
            assert_fails(
                "non-finite pixel",
                r,
                &["pixel_values", word, "index 1234"],
                10,
            );
        }
    }
    assert!(!out.exists(), "an output was written");

    // One NaN weight: a load error naming the tensor and the file.
    let bert = model_copy("bert-micro-12l-random", "nan-weights");
    let path = bert.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("weights");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("st");
    let mut tensors: Vec<(String, HostTensor)> = file
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = HostTensor::new(v.shape(), bytemuck::pod_collect_to_vec(v.data()));
            (name, t.expect("tensor"))
        })
        .collect();
    let key = "encoder.layer.3.attention.self.query.weight";
    let (_, t) = tensors
        .iter_mut()
        .find(|(n, _)| n.ends_with(key))
        .expect("query weight");
    t.data[5] = f32::NAN;
    let refs: Vec<(&str, &HostTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = backbone::models::weights::to_safetensors(&refs).expect("st");
    std::fs::write(&path, bytes).expect("write");
    let r = backbone(&["embed", "--device", "cpu", "--model", p(&bert), "hello"]);
    assert_fails(
        "NaN weight",
        r,
        &["model.safetensors", key, "NaN", "index 5"],
        20,
    );
}

#[test]
fn unbounded_and_hostile_files_are_refused_quickly() {
    let model = fixture("cswin-micro-224");
    let dir = scratch("files");
    let out = dir.join("out.safetensors");
    // /dev/zero never ends: its 8 zero bytes are a header length of 0.
    let r = backbone(&[
        "run",
        "--model",
        p(&model),
        "--input",
        "/dev/zero",
        "--output",
        p(&out),
    ]);
    assert_fails("/dev/zero input", r, &["/dev/zero", "header length 0"], 10);
    let r = backbone(&["classify", "--model", p(&model), "/dev/zero"]);
    assert_fails("/dev/zero image", r, &["/dev/zero", "limit"], 30);

    // A header listing 1.4 M empty tensors (70 MB of JSON): refused by its declared length.
    let bytes = empty_tensors_file(1_400_000);
    let many = dir.join("many.safetensors");
    std::fs::write(&many, &bytes).expect("write");
    let r = backbone(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&many),
        "--output",
        p(&out),
    ]);
    assert_fails(
        "1.4 M tensors",
        r,
        &["many.safetensors", "header length"],
        10,
    );
    // The same under the header-size limit (100 k tensors): refused by the tensor count.
    let bytes = empty_tensors_file(100_000);
    std::fs::write(&many, &bytes).expect("write");
    let r = backbone(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&many),
        "--output",
        p(&out),
    ]);
    assert_fails(
        "100 k tensors",
        r,
        &["many.safetensors", "more than 65536 tensors"],
        10,
    );

    // A truncated weight file names itself and what is missing.
    let weights = model_copy("cswin-micro-224", "truncated-weights");
    let path = weights.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("weights");
    std::fs::write(&path, &bytes[..bytes.len() - 100]).expect("truncate");
    let input = dir.join("in.safetensors");
    pixel_file(&input, &[1, 3, 32, 32], None);
    let r = backbone(&[
        "run",
        "--model",
        p(&weights),
        "--input",
        p(&input),
        "--output",
        p(&out),
    ]);
    assert_fails(
        "truncated weights",
        r,
        &["model.safetensors", "truncated"],
        10,
    );
    assert!(!out.exists(), "an output was written");
}

#[test]
fn images_over_the_model_budget_are_refused_before_the_forward() {
    let dir = scratch("budget");
    let model = fixture("cswin-micro-224");
    let out = dir.join("out.safetensors");
    // 3600 > 16 x 224: refused by side, on both paths, before anything runs.
    let input = dir.join("tall.safetensors");
    pixel_file(&input, &[1, 3, 3600, 3], None);
    for device in ["cpu", "gpu"] {
        let r = backbone(&[
            "run",
            "--device",
            device,
            "--model",
            p(&model),
            "--input",
            p(&input),
            "--output",
            p(&out),
        ]);
        assert_fails("3600x3 image", r, &["pixel_values", "limit", "3584"], 10);
    }
    // 4000x4000 (16 MP) for a 224 model: refused by area without allocating anything.
    let config = backbone::models::cswin::load_config(&model).expect("config");
    let err = backbone::models::cswin::Geometry::new(&config, &[1, 3, 4000, 4000])
        .expect_err("4000x4000 is over the budget");
    let message = err.to_string();
    assert!(
        message.contains("pixel_values") && message.contains("3211264"),
        "{message}"
    );
    // A batch of 300 images at 224 is over the per-forward budget.
    let err = backbone::models::cswin::Geometry::new(&config, &[300, 3, 224, 224])
        .expect_err("batch over the budget");
    assert!(err.to_string().contains("split the batch"), "{err}");
    // A 2048x1536 segmentation-sized input is within it.
    backbone::models::cswin::Geometry::new(&config, &[1, 3, 1536, 2048]).expect("2048x1536");
    assert!(!out.exists(), "an output was written");
}

/// Safetensors from a stream (`/dev/stdin`): the declared size is bounded, and the stream must
/// end where the header says. An output path ending in a separator is refused up front.
#[test]
fn streamed_inputs_are_bounded_and_checked() {
    use std::io::Write as _;
    let model = fixture("cswin-micro-224");
    let dir = scratch("stream");
    let out = dir.join("out.safetensors");
    let run_with_stdin = |bytes: Vec<u8>| {
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_backbone"))
            .args([
                "run",
                "--device",
                "cpu",
                "--model",
                p(&model),
                "--input",
                "/dev/stdin",
            ])
            .args(["--output", p(&out)])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        // The process may stop reading early (that is the point): ignore a broken pipe.
        let _ = stdin.write_all(&bytes);
        drop(stdin);
        let output = child.wait_with_output().expect("wait");
        (output, start.elapsed())
    };
    // A header declaring 1 TiB of data.
    let header = br#"{"pixel_values":{"dtype":"F32","shape":[262144,1048576],"data_offsets":[0,1099511627776]}}"#;
    let mut huge = (header.len() as u64).to_le_bytes().to_vec();
    huge.extend_from_slice(header);
    huge.extend_from_slice(&[0u8; 64]);
    assert_fails(
        "1 TiB declared on a stream",
        run_with_stdin(huge),
        &["/dev/stdin", "stream"],
        10,
    );
    // A valid file and one byte more.
    let input = dir.join("in.safetensors");
    pixel_file(&input, &[1, 3, 32, 32], None);
    let mut bytes = std::fs::read(&input).expect("input");
    bytes.push(0);
    assert_fails(
        "trailing byte on a stream",
        run_with_stdin(bytes),
        &["trailing bytes"],
        10,
    );
    // The same file without the extra byte runs.
    let (ok, _) = run_with_stdin(std::fs::read(&input).expect("input"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let slash = format!("{}/", dir.join("no-such-dir").display());
    let r = backbone(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--output",
        &slash,
    ]);
    assert_fails("output ending in /", r, &["--output", "directory"], 10);
}
