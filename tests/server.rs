//! `backbone serve` started for real on 127.0.0.1 (an ephemeral port) with the micro fixtures:
//! /embed and /v1/embeddings give exactly the `embed` CLI's vectors, /rerank the `rerank` CLI's
//! scores, every error status (422, 413, 429, 424) comes from a real request, /health, /info,
//! /metrics and /tokenize answer, and SIGTERM ends the server with status 0.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use common::*;

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &std::path::Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_backbone"))
            .args(["serve", "--port", "0", "--model"])
            .arg(model)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start backbone serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Self { child, addr }
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.client().request(method, path, body)
    }

    fn json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.client().json(path, body)
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait")
    }

    /// A handle on the same server for another thread (it does not own the process).
    fn client(&self) -> Client {
        Client {
            addr: self.addr.clone(),
        }
    }
}

struct Client {
    addr: String,
}

impl Client {
    /// One HTTP/1.1 request; returns (status, body).
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(req.as_bytes()).expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("receive");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text[9..12].parse().expect("status");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, dechunk(&body))
    }

    fn json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (status, text) = self.request("POST", path, &body.to_string());
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for Server {
    /// A failed test does not leave its server running.
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Undoes `Transfer-Encoding: chunked` when the body is chunked.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, tail)) = rest.split_once("\r\n") else {
            return body.to_string();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || tail.len() < n {
            return if n == 0 { out } else { body.to_string() };
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
}

fn cli(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_backbone"))
        .args(args)
        .output()
        .expect("cli");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
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

    let (status, got) = server.json("/embed", serde_json::json!({ "inputs": TEXTS }));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, want, "/embed equals the embed CLI");

    let (status, got) = server.json(
        "/v1/embeddings",
        serde_json::json!({ "input": TEXTS, "model": "m" }),
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["object"], "list");
    assert_eq!(got["model"], "m");
    for (i, row) in got["data"].as_array().expect("data").iter().enumerate() {
        assert_eq!(row["object"], "embedding");
        assert_eq!(row["index"], i);
        assert_eq!(row["embedding"], want[i], "/v1/embeddings row {i}");
    }
    assert!(got["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0);
    // base64: little-endian f32s of the same vector.
    let (_, b64) = server.json(
        "/v1/embeddings",
        serde_json::json!({ "input": TEXTS[0], "encoding_format": "base64" }),
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
    let (status, _) = server.json(
        "/v1/embeddings",
        serde_json::json!({ "input": [[101, 7592, 102]] }),
    );
    assert_eq!(status, 200);

    // normalize: false gives a vector with the same direction.
    let (_, raw) = server.json(
        "/embed",
        serde_json::json!({ "inputs": TEXTS[0], "normalize": false }),
    );
    let raw: Vec<f32> = serde_json::from_value(raw[0].clone()).expect("raw");
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "an unnormalized vector");
    for (a, b) in raw.iter().zip(&want0) {
        assert!((a / norm - b).abs() < 1e-5);
    }

    // Every error status, in TEI's shape.
    let (status, body) = server.request("POST", "/embed", "{not json");
    assert_eq!(status, 422, "{body}");
    let (status, body) = server.json("/embed", serde_json::json!({ "inputs": 5 }));
    assert_eq!(
        (status, body["error_type"].as_str()),
        (422, Some("Validation")),
        "{body}"
    );
    let (status, body) = server.json(
        "/embed",
        serde_json::json!({ "inputs": ["a", "b", "c", "d", "e"] }),
    );
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("batch size"),
        "{body}"
    );
    let (status, _) = server.request(
        "POST",
        "/embed",
        &format!("{{\"inputs\": \"{}\"}}", "x".repeat(5000)),
    );
    assert_eq!(status, 413);
    let (status, body) = server.json(
        "/rerank",
        serde_json::json!({ "query": "q", "texts": ["a"] }),
    );
    assert_eq!(status, 424, "not a re-ranker: {body}");
    let (status, body) = server.json(
        "/v1/embeddings",
        serde_json::json!({ "input": [[999999999]] }),
    );
    assert_eq!(status, 422, "{body}");

    // health, info, tokenize, metrics.
    assert_eq!(server.request("GET", "/health", "").0, 200);
    let (status, info) = server.request("GET", "/info", "");
    let info: serde_json::Value = serde_json::from_str(&info).expect("info json");
    assert_eq!(status, 200);
    assert_eq!(info["max_client_batch_size"], 4);
    assert!(info["adapter"].as_str().is_some_and(|a| !a.is_empty()));
    let (status, tokens) = server.json("/tokenize", serde_json::json!({ "inputs": "Hello world" }));
    assert_eq!(status, 200);
    assert_eq!(tokens[0][0]["special"], true, "{tokens}");
    assert_eq!(tokens[0][1]["text"], "hello", "{tokens}");
    let (status, metrics) = server.request("GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("te_request_count") && metrics.contains("te_batch_count"),
        "{metrics}"
    );

    assert!(server.stop().success(), "SIGTERM exits 0");
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
        serde_json::json!({ "query": query, "texts": docs, "return_text": true }),
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
    assert!(server.stop().success());
}

/// Past --max-concurrent-requests a request gets 429 while another is in flight (a slow one:
/// 32 texts of 256 tokens on the CPU path).
#[test]
fn overload_is_429() {
    let dir = fixture("bert-micro-12l-random");
    let server = Server::start(&dir, &["--device", "cpu", "--max-concurrent-requests", "1"]);
    let long = "word ".repeat(300);
    let slow = serde_json::json!({ "inputs": vec![long; 32] }).to_string();
    let client = server.client();
    let first = std::thread::spawn(move || client.request("POST", "/embed", &slow).0);
    std::thread::sleep(std::time::Duration::from_millis(30));
    let (status, body) = server.json("/embed", serde_json::json!({ "inputs": "short" }));
    assert_eq!(
        (status, body["error_type"].as_str()),
        (429, Some("Overloaded")),
        "{body}"
    );
    assert_eq!(first.join().expect("first request"), 200);
    assert!(server.stop().success());
}
