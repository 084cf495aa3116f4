//! sentence-transformers folders against `SentenceTransformer.encode` (tests/fixtures/text,
//! made by scripts/make_text_fixtures.py with sentence-transformers 6.2): CLS pooling without
//! Normalize, max pooling with Normalize (and a prompt left out of pooling), mean pooling + Dense(tanh) + Normalize with a
//! `query: ` prompt. GPU and CPU paths within 1e-5; the `embed` CLI gives the same vectors.
//! The legacy `pooling_mode_*` format is read as sentence-transformers reads it.

mod common;

use std::collections::BTreeMap;

use backbone::encoder::{Device, EncoderOptions, TextEncoder};
use backbone::kernels::{Activation, PoolMode};
use backbone::models::text::{self, Encoder, TextOutput, load_sentence};
use common::*;

/// The issue's bound for sentence embeddings.
const EMBEDDING_ATOL: f32 = 1e-5;

fn texts(dir: &std::path::Path) -> Vec<String> {
    sentence_list(dir, "texts")
}

/// Embeds the fixture's texts (with the folder's prompt `prompt_name`) on both paths.
fn embed(name: &str, prompt_name: Option<&str>) -> (Vec<f32>, Vec<f32>) {
    let dir = fixture(&format!("text/{name}"));
    let (config, weights) = text::load_dir(&dir).expect("load");
    let options = EncoderOptions::default().device(Device::Cpu);
    let encoder = TextEncoder::open(&dir, &options).expect("open");
    let texts = texts(&dir);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let input = encoder
        .tokenize(&texts, None, prompt_name, true)
        .expect("encode");
    let cpu: TextOutput = text::forward_cpu(&config, &weights, &input, false).expect("cpu");
    let model = Encoder::new(ctx(), config, &weights).expect("upload");
    let gpu = model.forward_blocking(ctx(), &input, false).expect("gpu");
    (gpu.sentence_embedding.data, cpu.sentence_embedding.data)
}

fn check(name: &str, prompt_name: Option<&str>, golden_name: &str) {
    let dir = fixture(&format!("text/{name}"));
    let want = Golden::open(&dir.join("io.safetensors")).f32(golden_name);
    let (gpu, cpu) = embed(name, prompt_name);
    assert_close(
        &format!("{name} CPU {golden_name}"),
        &cpu,
        &want.data,
        EMBEDDING_ATOL,
        0.0,
    );
    assert_close(
        &format!("{name} GPU {golden_name}"),
        &gpu,
        &want.data,
        EMBEDDING_ATOL,
        0.0,
    );
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn cls_pooling_without_normalize_matches_sentence_transformers() {
    check("st-cls", None, "embeddings");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn max_pooling_with_normalize_matches_sentence_transformers() {
    check("st-max", None, "embeddings");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn mean_dense_normalize_matches_sentence_transformers() {
    check("st-mean-dense", None, "embeddings");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn prompt_name_query_matches_sentence_transformers() {
    check("st-mean-dense", Some("query"), "query_embeddings");
}

/// `include_prompt: false`: the prompt's tokens ([CLS] included) are left out of max pooling.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn prompt_left_out_of_pooling_matches_sentence_transformers() {
    check("st-max", Some("query"), "query_embeddings");
}

/// The folders' modules as read: modes, Dense, Normalize, max_seq_length, prompts.
#[test]
fn folder_modules_are_read() {
    let dir = fixture("text/st-mean-dense");
    let (head, settings) = text::load_sentence_dir(&dir, 32).expect("modules");
    assert_eq!(head.modes, vec![PoolMode::Mean]);
    assert_eq!(head.dense.len(), 1);
    assert_eq!(head.dense[0].act, Activation::Tanh);
    assert_eq!(head.dense[0].linear.weight.shape, vec![24, 32]);
    assert!(head.normalize && head.include_prompt);
    assert_eq!(settings.max_seq_length, Some(48));
    assert_eq!(
        settings.prompt(Some("query")).expect("query"),
        Some("query: ")
    );
    let err = settings
        .prompt(Some("passage"))
        .expect_err("unknown prompt");
    assert!(
        err.to_string().contains("passage") && err.to_string().contains("query"),
        "{err}"
    );
    // A plain Hugging Face folder: mean + L2.
    let (head, settings) = text::load_sentence_dir(&fixture("text/xlmr-micro"), 32).expect("plain");
    assert_eq!(head.modes, vec![PoolMode::Mean]);
    assert!(head.normalize && head.dense.is_empty());
    assert_eq!(settings.max_seq_length, None);
}

fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// Folders saved by sentence-transformers 2.x-4.x: `pooling_mode_*` flags concatenate in the
/// fixed order cls, max, mean, mean_sqrt_len, weightedmean, lasttoken; `sentence_bert_config`
/// gives max_seq_length and do_lower_case. Unsupported modules and modes are clear errors.
#[test]
fn legacy_and_unsupported_folders() {
    let modules = r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#;
    let pooling = r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": false,
        "pooling_mode_mean_tokens": true, "pooling_mode_max_tokens": true,
        "pooling_mode_mean_sqrt_len_tokens": false, "pooling_mode_lasttoken": true}"#;
    let map = files(&[
        ("modules.json", modules),
        ("1_Pooling/config.json", pooling),
        (
            "sentence_bert_config.json",
            r#"{"max_seq_length": 77, "do_lower_case": true}"#,
        ),
    ]);
    let read = |p: &str| Ok(map.get(p).cloned());
    let (head, settings) = load_sentence(&read, 8).expect("legacy");
    assert_eq!(
        head.modes,
        vec![PoolMode::Max, PoolMode::Mean, PoolMode::LastToken]
    );
    assert!(!head.normalize);
    assert_eq!(settings.max_seq_length, Some(77));
    assert!(settings.do_lower_case);

    let cases = [
        (r#"{"pooling_mode": "median"}"#, modules, "median"),
        (
            r#"{"embedding_dimension": 9, "pooling_mode": "cls"}"#,
            modules,
            "hidden_size 8",
        ),
        (
            r#"{"pooling_mode": "cls"}"#,
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_LayerNorm","type":"sentence_transformers.models.LayerNorm"}]"#,
            "LayerNorm",
        ),
        (
            r#"{"pooling_mode": "cls"}"#,
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
            "2_Dense/config.json",
        ),
    ];
    for (pooling, modules, words) in cases {
        let map = files(&[
            ("modules.json", modules),
            ("1_Pooling/config.json", pooling),
        ]);
        let read = |p: &str| Ok(map.get(p).cloned());
        let err = load_sentence(&read, 8).expect_err(words);
        assert!(err.to_string().contains(words), "{words}: {err}");
    }
}

/// `backbone embed` on a sentence-transformers folder prints what the library gives.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn embed_cli_follows_the_folder() {
    let dir = fixture("text/st-mean-dense");
    let want = Golden::open(&dir.join("io.safetensors")).f32("query_embeddings");
    let texts = texts(&dir);
    for device in ["gpu", "cpu"] {
        let mut args = vec!["embed", "--model", dir.to_str().expect("utf-8")];
        args.extend(["--prompt-name", "query", "--device", device]);
        args.extend(texts.iter().map(String::as_str));
        let rows: Vec<Vec<f32>> = serde_json::from_slice(&backbone_stdout(args)).expect("json");
        let got: Vec<f32> = rows.concat();
        assert_close(
            &format!("embed --device {device}"),
            &got,
            &want.data,
            EMBEDDING_ATOL,
            0.0,
        );
    }
}

/// A model folder never makes the program read outside it: a `modules.json` whose module
/// path leaves the folder (`../outside_pool`, `/etc`, `../../etc`) is refused by every door
/// (the library's encoder, `embed`), even where the outside folder holds a valid module.
#[test]
fn module_paths_outside_the_folder_are_refused() {
    use backbone::encoder::{Device, EncoderOptions, TextEncoder};
    let src = fixture("text/st-cls");
    let root = std::env::temp_dir().join(format!("backbone-outside-{}", std::process::id()));
    let model = root.join("model");
    std::fs::create_dir_all(model.join("1_Pooling")).expect("tmp");
    std::fs::create_dir_all(root.join("outside_pool")).expect("tmp");
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        std::fs::copy(src.join(name), model.join(name)).expect("copy");
    }
    std::fs::copy(
        src.join("1_Pooling/config.json"),
        root.join("outside_pool/config.json"),
    )
    .expect("copy");
    for path in [
        "../outside_pool",
        "/etc",
        "../../etc",
        "1_Pooling/../../outside_pool",
    ] {
        let modules = serde_json::json!([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": path, "type": "sentence_transformers.models.Pooling"}
        ]);
        std::fs::write(model.join("modules.json"), modules.to_string()).expect("write");
        let err = TextEncoder::open(&model, &EncoderOptions::default().device(Device::Cpu))
            .expect_err(path);
        assert!(
            err.to_string().contains("inside the model folder"),
            "{path}: {err}"
        );
        let out = backbone_output([
            "embed",
            "--device",
            "cpu",
            "--model",
            model.to_str().expect("utf-8"),
            "a",
        ]);
        assert!(!out.status.success(), "{path}: embed refused");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("inside the model folder"),
            "{path}: {stderr}"
        );
    }
    std::fs::remove_dir_all(&root).ok();
}

/// Symlinks are followed only where they stay inside the model: a folder whose files (a
/// fixed name such as `config.json`, or a module folder `modules.json` names) are links out
/// of it is refused by every door, naming the link and its target, while a Hugging Face hub
/// cache snapshot (`models--org--name/snapshots/<rev>`, every file a relative link into the
/// repository's `blobs/`) loads and embeds as the plain folder does.
#[cfg(unix)]
#[test]
fn symlinks_stay_inside_the_model_and_hub_snapshots_load() {
    use std::os::unix::fs::symlink;
    let src = fixture("text/st-cls");
    let names = [
        "config.json",
        "model.safetensors",
        "modules.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ];
    let root = std::env::temp_dir().join(format!("backbone-links-{}", std::process::id()));
    std::fs::remove_dir_all(&root).ok();
    let options = EncoderOptions::default().device(Device::Cpu);
    let plain = TextEncoder::open(&src, &options)
        .expect("plain folder")
        .encode_blocking(&["a linked model"], None, None)
        .expect("embed");

    // The hub cache: blobs named by a hash, the snapshot all relative links into them.
    let repo = root.join("hub/models--org--st-cls");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(repo.join("blobs")).expect("tmp");
    for (i, name) in names.iter().enumerate() {
        let blob = format!("blob{i}");
        std::fs::copy(src.join(name), repo.join("blobs").join(&blob)).expect("copy");
        let link = snapshot.join(name);
        std::fs::create_dir_all(link.parent().expect("parent")).expect("tmp");
        let up = "../".repeat(name.matches('/').count() + 2);
        symlink(format!("{up}blobs/{blob}"), &link).expect("link");
    }
    let hub = TextEncoder::open(&snapshot, &options)
        .expect("hub snapshot opens")
        .encode_blocking(&["a linked model"], None, None)
        .expect("embed");
    assert_eq!(hub.data, plain.data, "the snapshot is the same model");

    // Links that leave: a fixed name, a module folder, and a snapshot linking past its repo.
    let outside = root.join("outside");
    std::fs::create_dir_all(outside.join("1_Pooling")).expect("tmp");
    for name in names {
        std::fs::copy(src.join(name), outside.join(name)).expect("copy");
    }
    let model = root.join("model");
    let cases: [(&str, &dyn Fn()); 3] = [
        ("config.json", &|| {
            std::fs::remove_file(model.join("config.json")).expect("rm");
            symlink(outside.join("config.json"), model.join("config.json")).expect("link");
        }),
        ("1_Pooling", &|| {
            std::fs::remove_dir_all(model.join("1_Pooling")).expect("rm");
            symlink(outside.join("1_Pooling"), model.join("1_Pooling")).expect("link");
        }),
        ("tokenizer.json", &|| {
            std::fs::remove_file(model.join("tokenizer.json")).expect("rm");
            symlink("../outside/tokenizer.json", model.join("tokenizer.json")).expect("link");
        }),
    ];
    for (what, spoil) in cases {
        std::fs::remove_dir_all(&model).ok();
        std::fs::create_dir_all(model.join("1_Pooling")).expect("tmp");
        for name in names {
            std::fs::copy(src.join(name), model.join(name)).expect("copy");
        }
        spoil();
        let err = TextEncoder::open(&model, &options).expect_err(what);
        assert!(
            err.to_string().contains("outside the model folder"),
            "{what}: {err}"
        );
        let out = backbone_output(["embed", "--device", "cpu", "--model", p(&model), "a"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: embed refused");
        assert!(
            stderr.contains("outside the model folder"),
            "{what}: {stderr}"
        );
    }
    std::fs::remove_file(snapshot.join("config.json")).expect("rm");
    symlink(
        "../../../../outside/config.json",
        snapshot.join("config.json"),
    )
    .expect("link");
    let err = TextEncoder::open(&snapshot, &options).expect_err("past the repository");
    assert!(
        err.to_string().contains("outside the model folder"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

fn p(path: &std::path::Path) -> &str {
    path.to_str().expect("utf-8 path")
}
