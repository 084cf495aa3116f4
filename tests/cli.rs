//! The `backbone` command, as it is checked from outside: `run` on the fixture's input file
//! (GPU and CPU) and `embed` on text.

mod common;

use std::process::Command;

use common::*;

fn backbone() -> Command {
    Command::new(common::bin("backbone"))
}

/// The golden file's `pixel_values` as a `run` input file in the temp folder.
fn pixel_input(golden: &Golden, tag: &str) -> std::path::PathBuf {
    let input = std::env::temp_dir().join(format!("backbone-cli-{tag}.safetensors"));
    let pixels = golden.f32("pixel_values");
    let bytes =
        backbone::models::weights::to_safetensors(&[("pixel_values", &pixels)]).expect("serialize");
    std::fs::write(&input, bytes).expect("write input");
    input
}

#[test]
fn run_writes_the_reference_outputs_on_cpu() {
    run_bert_fixture("cpu");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn run_writes_the_reference_outputs_on_gpu() {
    ctx();
    run_bert_fixture("gpu");
}

fn run_bert_fixture(device: &str) {
    let dir = fixture("bert-micro-12l-random");
    let golden = Golden::open(&dir.join("io.safetensors"));
    let (_, mask) = golden.ids("attention_mask");
    {
        let out_path = std::env::temp_dir().join(format!("backbone-cli-{device}.safetensors"));
        let status = backbone()
            .args(["run", "--model"])
            .arg(&dir)
            .arg("--input")
            .arg(dir.join("io.safetensors"))
            .arg("--output")
            .arg(&out_path)
            .args(["--device", device])
            .status()
            .expect("run backbone");
        assert!(status.success(), "backbone run --device {device} failed");
        let out = Golden::open(&out_path);
        let what = format!("backbone run --device {device}");
        let hidden = real_rows(&out.f32("last_hidden_state"), &mask);
        let expected = real_rows(&golden.f32("last_hidden_state"), &mask);
        assert_close(
            &format!("{what}: last_hidden_state"),
            &hidden,
            &expected,
            5e-5,
            0.0,
        );
        for name in ["sentence_embedding", "pooler_output"] {
            assert_close(
                &format!("{what}: {name}"),
                &out.f32(name).data,
                &golden.f32(name).data,
                1e-5,
                0.0,
            );
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn embed_prints_one_unit_vector_per_text() {
    ctx();
    let output = backbone()
        .args(["embed", "--model"])
        .arg(fixture("bert-micro-12l-random"))
        .args(["How old are you?", "Paris is the capital of France."])
        .output()
        .expect("run backbone");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Vec<f32>> =
        serde_json::from_slice(&output.stdout).expect("a JSON array of arrays");
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row.len(), 32);
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn bad_input_file_fails_with_a_message() {
    let dir = fixture("bert-micro-12l-random");
    let output = backbone()
        .args(["run", "--model"])
        .arg(&dir)
        .arg("--input")
        .arg(dir.join("config.json"))
        .args(["--output", "/dev/null", "--device", "cpu"])
        .output()
        .expect("run backbone");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("config.json") && stderr.contains("safetensors"),
        "{stderr}"
    );
}

#[test]
fn run_cswin_writes_the_reference_outputs_on_cpu() {
    run_cswin_fixture("cpu");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn run_cswin_writes_the_reference_outputs_on_gpu() {
    ctx();
    run_cswin_fixture("gpu");
}

fn run_cswin_fixture(device: &str) {
    let dir = fixture("cswin-micro-s3full");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    let input = pixel_input(&golden, &format!("cswin-in-{device}"));
    {
        let out_path =
            std::env::temp_dir().join(format!("backbone-cli-cswin-{device}.safetensors"));
        let status = backbone()
            .args(["run", "--model"])
            .arg(&dir)
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&out_path)
            .args(["--device", device])
            .status()
            .expect("run backbone");
        assert!(
            status.success(),
            "backbone run (cswin) --device {device} failed"
        );
        let out = Golden::open(&out_path);
        for name in [
            "stem", "stage1", "stage2", "stage3", "stage4", "pooled", "logits",
        ] {
            let tol = if name == "pooled" || name == "logits" {
                2e-5
            } else {
                5e-5
            };
            assert_close(
                &format!("cswin run {device}: {name}"),
                &out.f32(name).data,
                &golden.f32(name).data,
                tol,
                0.0,
            );
        }
    }
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn classify_prints_the_top5_of_each_image() {
    ctx();
    let dir = std::env::temp_dir().join("backbone-classify");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut paths = Vec::new();
    for (i, (w, h)) in [(300u32, 200u32), (180, 260)].into_iter().enumerate() {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) * 3 % 256) as u8])
        });
        let path = dir.join(format!("test{i}.png"));
        img.save(&path).expect("save png");
        paths.push(path);
    }
    let mut outputs = Vec::new();
    for device in ["gpu", "cpu"] {
        let output = backbone()
            .args(["classify", "--device", device, "--model"])
            .arg(fixture("cswin-micro-s3full"))
            .args(&paths)
            .output()
            .expect("run backbone");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            2 * 6,
            "a header and 5 classes per image:\n{text}"
        );
        assert!(
            lines[0].ends_with("test0.png:") && lines[6].ends_with("test1.png:"),
            "{text}"
        );
        // Class indices of the top 5, per image.
        let ranks: Vec<String> = lines
            .iter()
            .filter(|l| l.contains('%'))
            .map(|l| l.split_whitespace().nth(1).expect("index").to_string())
            .collect();
        outputs.push(ranks);
    }
    assert_eq!(outputs[0], outputs[1], "GPU and CPU rank the classes alike");
}

/// Many images are classified in batches of 16, each printed before the next is read: a bad
/// 18th image fails the run after the first batch's 16 answers are out (it was decoded with
/// all the others before any forward, so memory grew with the image count).
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn classify_streams_images_in_batches() {
    ctx();
    let dir = std::env::temp_dir().join(format!("backbone-classify-many-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = dir.join("good.png");
    image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 5) as u8, 90])
    })
    .save(&good)
    .expect("save png");
    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"not an image").expect("write");
    let mut paths = vec![good.clone(); 17];
    paths.push(bad);
    paths.push(good);
    let output = backbone()
        .args(["classify", "--model"])
        .arg(fixture("cswin-micro-s3full"))
        .args(&paths)
        .output()
        .expect("run backbone");
    assert!(!output.status.success(), "the bad image fails the run");
    let text = String::from_utf8_lossy(&output.stdout);
    let answered = text.lines().filter(|l| l.ends_with("good.png:")).count();
    assert_eq!(
        answered, 16,
        "the first batch answered before the bad one:\n{text}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.png"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `backbone-bench --json` writes one record per measurement with the documented fields, and
/// PASS on a small run.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bench_json_has_the_documented_fields() {
    ctx();
    let path = std::env::temp_dir().join("backbone-bench-test.json");
    let output = Command::new(common::bin("backbone-bench"))
        .args([
            "matmul",
            "attention",
            "--sizes",
            "7,1x9x3",
            "--attention",
            "1x2x5x8",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--json",
        ])
        .arg(&path)
        .output()
        .expect("run backbone-bench");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("PASS").count(), 3, "{stdout}");
    let records = json_lines(&path);
    assert_eq!(records.len(), 3);
    for r in &records {
        for key in [
            "suite",
            "shape",
            "dtype",
            "variant",
            "adapter",
            "backend",
            "driver",
            "clock",
            "wall_ms",
            "first_run_ms",
            "gflops",
            "check",
            "shader_checks",
            "commit",
        ] {
            assert!(r.get(key).is_some(), "record lacks {key}: {r}");
        }
        for key in ["median", "min", "max"] {
            assert!(
                r["gpu_ms"][key].as_f64().is_some_and(|v| v > 0.0),
                "gpu_ms.{key}: {r}"
            );
        }
        assert_eq!(r["check"]["passed"], true);
    }
    assert_eq!(records[2]["suite"], "attention");
}

/// The records of a `--json` file: one JSON object per line.
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("json")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A measurement that cannot be made becomes a FAIL record carrying its error, printed and
/// written like the others, and the suite goes on to the next one (the exit status says a
/// measurement failed).
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bench_failure_is_a_record_and_the_run_goes_on() {
    ctx();
    let path = std::env::temp_dir().join("backbone-bench-fail.jsonl");
    // 100000³: X alone is 40 GB, over any binding limit.
    let output = Command::new(common::bin("backbone-bench"))
        .args([
            "matmul", "--sizes", "100000,8", "--iters", "1", "--warmup", "0",
        ])
        .arg("--json")
        .arg(&path)
        .output()
        .expect("run backbone-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a FAIL must fail the run: {stdout}"
    );
    let records = json_lines(&path);
    assert_eq!(records.len(), 2, "{records:?}");
    let error = records[0]["error"]
        .as_str()
        .expect("the first record carries its error");
    assert!(
        error.contains("binding") || error.contains("limit"),
        "{error}"
    );
    assert_eq!(records[0]["check"]["passed"], false);
    assert!(records[1]["error"].is_null(), "{}", records[1]);
    assert_eq!(records[1]["check"]["passed"], true);
    assert!(
        stdout.contains("FAIL: ") && stdout.contains("PASS"),
        "{stdout}"
    );
}

/// A bench killed half-way (SIGTERM, as `timeout` sends) leaves every finished record on
/// disk, each a whole JSON line.
#[test]
#[cfg(unix)]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn bench_killed_half_way_keeps_its_records() {
    ctx();
    let path = std::env::temp_dir().join("backbone-bench-killed.jsonl");
    let _ = std::fs::remove_file(&path);
    let sizes = vec!["96"; 40].join(",");
    let mut child = Command::new(common::bin("backbone-bench"))
        .args(["matmul", "--sizes", &sizes, "--iters", "3", "--warmup", "0"])
        .arg("--json")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run backbone-bench");
    let start = std::time::Instant::now();
    let finished = || std::fs::read_to_string(&path).map_or(0, |s| s.lines().count());
    while finished() < 2 {
        assert!(start.elapsed().as_secs() < 120, "no record after 120 s");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "ended before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = child.wait().expect("wait");
    assert!(!status.success(), "killed: {status:?}");
    let records = json_lines(&path);
    assert!(
        records.len() >= 2 && records.len() < 40,
        "{} records",
        records.len()
    );
    assert!(records.iter().all(|r| r["check"]["passed"] == true));
}

/// `run --dtype f16` on the BERT fixture, GPU and CPU paths, within the f16 bounds of the
/// README (hidden states within 1e-2 of the largest magnitude, embeddings cosine >= 0.999).
fn run_bert_f16(device: &str) {
    let dir = fixture("bert-micro-12l-random");
    let golden = Golden::open(&dir.join("io.safetensors"));
    let (_, mask) = golden.ids("attention_mask");
    let out_path = std::env::temp_dir().join(format!("backbone-cli-f16-{device}.safetensors"));
    let output = backbone()
        .args(["run", "--dtype", "f16", "--device", device, "--model"])
        .arg(&dir)
        .arg("--input")
        .arg(dir.join("io.safetensors"))
        .arg("--output")
        .arg(&out_path)
        .output()
        .expect("run backbone");
    assert!(
        output.status.success(),
        "backbone run --dtype f16 --device {device}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = Golden::open(&out_path);
    let got = real_rows(&out.f32("last_hidden_state"), &mask);
    let want = real_rows(&golden.f32("last_hidden_state"), &mask);
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(
        &format!("run --dtype f16 --device {device}: last_hidden_state"),
        &got,
        &want,
        1e-2 * max,
        0.0,
    );
    let cosine = min_row_cosine(
        &out.f32("sentence_embedding"),
        &golden.f32("sentence_embedding"),
    );
    assert!(
        cosine >= 0.999,
        "{device}: sentence_embedding cosine {cosine}"
    );
}

#[test]
fn run_f16_on_cpu() {
    run_bert_f16("cpu");
    run_cswin_f16("cpu");
}

/// `run --dtype f16` on a CSWin fixture: logits within 1e-2 of the largest, same top-1.
fn run_cswin_f16(device: &str) {
    let dir = fixture("cswin-micro-s3full");
    let golden = Golden::open(&dir.join("golden.safetensors"));
    let input = pixel_input(&golden, &format!("cswin16-in-{device}"));
    let out_path = std::env::temp_dir().join(format!("backbone-cli-cswin16-{device}.safetensors"));
    let output = backbone()
        .args(["run", "--dtype", "f16", "--device", device, "--model"])
        .arg(&dir)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out_path)
        .output()
        .expect("run backbone");
    assert!(
        output.status.success(),
        "cswin run --dtype f16 --device {device}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (got, want) = (Golden::open(&out_path).f32("logits"), golden.f32("logits"));
    let max = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert_close(
        "cswin run f16: logits",
        &got.data,
        &want.data,
        1e-2 * max,
        0.0,
    );
    assert_eq!(
        top1(&got),
        top1(&want),
        "cswin run f16: top-1 classes differ"
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn run_f16_on_gpu() {
    let ctx = ctx();
    if ctx.capabilities().has(wgpu::Features::SHADER_F16) {
        run_bert_f16("gpu");
        run_cswin_f16("gpu");
    } else {
        // Without the feature the command fails, naming it.
        let dir = fixture("bert-micro-12l-random");
        let output = backbone()
            .args(["embed", "--dtype", "f16", "--model"])
            .arg(&dir)
            .arg("hello")
            .output()
            .expect("run backbone");
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("SHADER_F16"));
    }
}

/// `embed` of more texts than one batch may hold runs them in batches: every row equals the
/// text embedded alone.
#[test]
fn embed_batches_many_texts() {
    let dir = fixture("bert-micro-12l-random");
    let texts: Vec<String> = (0..600)
        .map(|i| format!("sentence number {i} of many"))
        .collect();
    let many = backbone()
        .args(["embed", "--device", "cpu", "--max-length", "512", "--model"])
        .arg(&dir)
        .args(&texts)
        .output()
        .expect("embed");
    assert!(
        many.status.success(),
        "{}",
        String::from_utf8_lossy(&many.stderr)
    );
    let rows: Vec<Vec<f32>> = serde_json::from_slice(&many.stdout).expect("json");
    assert_eq!(rows.len(), 600);
    for i in [0, 255, 256, 599] {
        let one = backbone()
            .args(["embed", "--device", "cpu", "--model"])
            .arg(&dir)
            .arg(&texts[i])
            .output()
            .expect("embed one");
        let alone: Vec<Vec<f32>> = serde_json::from_slice(&one.stdout).expect("json");
        assert_close(&format!("text {i}"), &rows[i], &alone[0], 1e-6, 1e-5);
    }
}
