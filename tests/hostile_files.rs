//! Hostile and careless files through the `backbone` binary: outputs that would overwrite an
//! input, failed writes, user errors found before the weights are read, unbounded and hostile
//! files, streamed inputs. Every case ends in a clear error (exit status 1) and no file is lost.
//! (Images, configs and non-finite values: tests/hostile.rs.)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::fixture;
use common::hostile::*;

#[test]
fn output_equal_to_input_is_refused_and_the_input_kept() {
    let dir = scratch("same-file");
    let input = dir.join("in.safetensors");
    pixel_file(&input, &[1, 3, 32, 32], None);
    let before = std::fs::read(&input).expect("input");
    let model = fixture("cswin-micro-224");
    for output in [input.clone(), dir.join(".").join("in.safetensors")] {
        let r = run_model(Some("cpu"), &model, &input, &output);
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
    let r = backbone_with_file_limit(
        4,
        &[
            "run",
            "--device",
            "cpu",
            "--model",
            p(&model),
            "--input",
            p(&input),
            "--output",
            p(&output),
        ],
    );
    assert_fails(
        "write past ulimit -f",
        r,
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
    let (out, _) = run_model(Some("cpu"), &model, &input, &output);
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
    let r = run_model(None, &model, &input, &out);
    assert_fails("input too small", r, &["pixel_values", "3x3"], 10);
    pixel_file(&input, &[1, 3, 32, 32], None);
    let missing = dir.join("no/such/dir/out.safetensors");
    let r = run_model(None, &model, &input, &missing);
    assert_fails(
        "output folder missing",
        r,
        &["--output", "out.safetensors"],
        10,
    );
    let r = run_model(None, &model, &input, &dir);
    assert_fails("output is a folder", r, &["--output", "directory"], 10);
    // With a good input and output, the weight error names the file.
    let r = run_model(None, &model, &input, &out);
    assert_fails(
        "corrupt weights",
        r,
        &["model.safetensors", "safetensors"],
        10,
    );
    assert!(!out.exists(), "an output was written");
}

#[test]
fn unbounded_and_hostile_files_are_refused_quickly() {
    let model = fixture("cswin-micro-224");
    let dir = scratch("files");
    let out = dir.join("out.safetensors");
    // /dev/zero never ends: its 8 zero bytes are a header length of 0.
    let r = run_model(None, &model, Path::new("/dev/zero"), &out);
    assert_fails("/dev/zero input", r, &["/dev/zero", "header length 0"], 10);
    let r = backbone(&["classify", "--model", p(&model), "/dev/zero"]);
    assert_fails("/dev/zero image", r, &["/dev/zero", "limit"], 30);

    // A header listing 1.4 M empty tensors (70 MB of JSON): refused by its declared length.
    let bytes = empty_tensors_file(1_400_000);
    let many = dir.join("many.safetensors");
    std::fs::write(&many, &bytes).expect("write");
    let r = run_model(None, &model, &many, &out);
    assert_fails(
        "1.4 M tensors",
        r,
        &["many.safetensors", "header length"],
        10,
    );
    // The same under the header-size limit (100 k tensors): refused by the tensor count.
    let bytes = empty_tensors_file(100_000);
    std::fs::write(&many, &bytes).expect("write");
    let r = run_model(None, &model, &many, &out);
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
    let r = run_model(None, &weights, &input, &out);
    assert_fails(
        "truncated weights",
        r,
        &["model.safetensors", "truncated"],
        10,
    );
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
        let mut child = Command::new(common::bin("backbone"))
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
    let r = run_model(None, &model, &input, Path::new(&slash));
    assert_fails("output ending in /", r, &["--output", "directory"], 10);
}
