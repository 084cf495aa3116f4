//! Every text family as a new user meets it, through the `backbone` binary: `run` on the
//! fixture's ids writes the hidden states transformers gives, `embed` on the texts prints one
//! vector per text, and unsupported keys and pooling modes are clear errors naming them.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const FAMILIES: [&str; 7] = [
    "roberta-micro-cls",
    "xlmr-micro",
    "distilbert-micro",
    "electra-micro",
    "mpnet-micro",
    "modernbert-micro",
    "st-mean-dense",
];

fn tmp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("backbone-text-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    dir
}

fn texts(dir: &std::path::Path) -> Vec<String> {
    sentence_list(dir, "texts")
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn every_family_runs_and_embeds_from_the_cli() {
    let tmp = tmp_dir("families");
    for name in FAMILIES {
        let dir = fixture(&format!("text/{name}"));
        let dir_s = dir.to_str().expect("utf-8 path");
        let golden = Golden::open(&dir.join("io.safetensors"));
        if golden.has("last_hidden_state") {
            let out_path = tmp.join(format!("{name}.safetensors"));
            let input = dir.join("io.safetensors");
            backbone_stdout([
                "run",
                "--model",
                dir_s,
                "--input",
                input.to_str().expect("utf-8"),
                "--output",
                out_path.to_str().expect("utf-8"),
            ]);
            let (_, mask) = golden.ids("attention_mask");
            let got = real_rows(&Golden::open(&out_path).f32("last_hidden_state"), &mask);
            let want = real_rows(&golden.f32("last_hidden_state"), &mask);
            assert_close(&format!("run {name}"), &got, &want, 5e-5, 0.0);
        }
        let texts = texts(&dir);
        let mut args = vec!["embed", "--model", dir_s];
        args.extend(texts.iter().map(String::as_str));
        let rows: Vec<Vec<f32>> = serde_json::from_slice(&backbone_stdout(&args)).expect("json");
        assert_eq!(rows.len(), texts.len(), "{name}: one vector per text");
        assert!(
            rows.iter()
                .all(|r| !r.is_empty() && r.iter().all(|v| v.is_finite()))
        );
    }
    std::fs::remove_dir_all(&tmp).ok();
}

/// A copy of fixture `name` with `edit` applied to the JSON file `file`.
fn edited(name: &str, file: &str, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let src = fixture(&format!("text/{name}"));
    let dir = tmp_dir(&format!("{name}-{n}"));
    copy_dir(&src, &dir);
    let path = dir.join(file);
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec(&json).expect("json")).expect("write");
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn unsupported_keys_and_modes_are_clear_errors() {
    let set = |key: &'static str, value: serde_json::Value| {
        move |j: &mut serde_json::Value| j[key] = value.clone()
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            edited(
                "xlmr-micro",
                "config.json",
                set("model_type", "nomic_bert".into()),
            ),
            "nomic_bert",
        ),
        (
            edited(
                "xlmr-micro",
                "config.json",
                set("hidden_act", "silu".into()),
            ),
            "hidden_act",
        ),
        (
            edited(
                "xlmr-micro",
                "config.json",
                set("position_embedding_type", "relative_key".into()),
            ),
            "position_embedding_type",
        ),
        (
            edited(
                "modernbert-micro",
                "config.json",
                set("attention_bias", true.into()),
            ),
            "attention_bias",
        ),
        (
            edited(
                "modernbert-cross-mean-micro",
                "config.json",
                set("classifier_pooling", "max".into()),
            ),
            "classifier_pooling",
        ),
        (
            edited(
                "modernbert-cross-cls-micro",
                "config.json",
                set("classifier_activation", "silu".into()),
            ),
            "classifier_activation",
        ),
        (
            edited(
                "st-max",
                "1_Pooling/config.json",
                set("pooling_mode", "median".into()),
            ),
            "median",
        ),
    ];
    for (dir, words) in cases {
        let out = backbone_output([
            "embed",
            "--device",
            "cpu",
            "--model",
            dir.to_str().expect("utf-8"),
            "a text",
        ]);
        assert!(!out.status.success(), "{words}: accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{words}: {err}");
        std::fs::remove_dir_all(&dir).ok();
    }
    // An unknown prompt name lists the folder's prompts.
    let dir = fixture("text/st-max");
    let out = backbone_output([
        "embed",
        "--device",
        "cpu",
        "--prompt-name",
        "passage",
        "--model",
        dir.to_str().expect("utf-8"),
        "a",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("passage") && err.contains("query"), "{err}");
}
