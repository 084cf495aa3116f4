//! The `backbone` command, as it is checked from outside: `run` on the fixture's input file
//! (GPU and CPU) and `embed` on text.

mod common;

use std::process::Command;

use common::*;

fn backbone() -> Command {
    Command::new(env!("CARGO_BIN_EXE_backbone"))
}

#[test]
fn run_writes_the_reference_outputs() {
    let dir = fixture("bert-micro-12l-random");
    let golden = Golden::open(&dir.join("io.safetensors"));
    let (_, mask) = golden.ids("attention_mask");
    let devices: &[&str] = if gpu().is_some() {
        &["gpu", "cpu"]
    } else {
        &["cpu"]
    };
    for device in devices {
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
fn embed_prints_one_unit_vector_per_text() {
    let Some(_) = gpu() else { return };
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
