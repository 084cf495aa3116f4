//! The real Python clients against `backbone serve` (tests/clients/tei_clients.py): OpenAI's
//! `embeddings.create` (its default base64, float, `dimensions`) and Hugging Face's
//! `InferenceClient` (`feature_extraction`, `sentence_similarity`, `text_classification`)
//! pointed at the server's URL, as they are pointed at text-embeddings-inference. Their
//! vectors must equal the `embed` CLI's, the similarities the cosines of those vectors, and the
//! classification the server's `/predict`. `.ci/run` installs the two packages; without them
//! this test fails (it never passes having compared nothing).

mod common;

use backbone::bench::serve_load::ServerProcess;
use common::*;
use serde_json::{Value, json};

const TEXTS: [&str; 3] = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "Stocks fell.",
];

fn rows(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("rows of floats ({e}): {v}"))
}

fn close(what: &str, got: &[Vec<f32>], want: &[Vec<f32>], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: rows");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: row {i} width");
        for (j, (a, b)) in g.iter().zip(w).enumerate() {
            assert!((a - b).abs() <= tol, "{what}: row {i} [{j}]: {a} vs {b}");
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn openai_and_huggingface_clients_get_the_clis_answers() {
    let args: Vec<String> = ["--device", "cpu"].iter().map(|a| a.to_string()).collect();
    let embedding_dir = fixture("bert-micro-12l-random");
    let embedding = ServerProcess::start(&bin("backbone"), &embedding_dir, &args).expect("start");
    let reranker = ServerProcess::start(
        &bin("backbone"),
        &fixture("text/bert-cross-long-micro"),
        &args,
    )
    .expect("start");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/tei_clients.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(format!("http://{}", embedding.addr))
        .arg(format!("http://{}", reranker.addr))
        .args(TEXTS)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the clients failed (.ci/run installs openai and huggingface_hub):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("the script's JSON");

    let dir = embedding_dir.to_str().expect("utf-8");
    let mut args = vec!["embed", "--model", dir];
    args.extend(TEXTS);
    let want = rows(&serde_json::from_slice(&backbone_stdout(&args)).expect("CLI json"));
    for key in ["openai_default", "openai_float", "hf_feature_extraction"] {
        close(key, &rows(&got[key]), &want, 1e-6);
    }
    let similarity: Vec<f32> =
        serde_json::from_value(got["hf_sentence_similarity"].clone()).expect("similarities");
    let cosines: Vec<f32> = want[1..].iter().map(|v| cosine(&want[0], v)).collect();
    close("hf_sentence_similarity", &[similarity], &[cosines], 1e-5);

    let http = embedding.http();
    let (_, eight) = http
        .json("/embed", &json!({ "inputs": TEXTS[0], "dimensions": 8 }))
        .expect("/embed");
    close(
        "openai_dimensions",
        &rows(&got["openai_dimensions"]),
        &rows(&eight),
        1e-6,
    );

    let (_, predicted) = reranker
        .http()
        .json("/predict", &json!({ "inputs": TEXTS[0] }))
        .expect("/predict");
    let classified = &got["hf_text_classification"][0];
    assert_eq!(classified["label"], predicted[0]["label"], "{got}");
    let (a, b) = (classified["score"].as_f64(), predicted[0]["score"].as_f64());
    assert!(
        a.zip(b).is_some_and(|(a, b)| (a - b).abs() < 1e-6),
        "{classified} vs {predicted}"
    );
    assert!(embedding.stop().expect("stop").success());
    assert!(reranker.stop().expect("stop").success());
}
