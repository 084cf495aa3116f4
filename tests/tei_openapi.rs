//! text-embeddings-inference's published OpenAPI document (tests/fixtures/tei/openapi.json,
//! kept unchanged) walked against the real `backbone serve`: for every route, a request built
//! from the document's request schema (checked against it) is answered 200 with a body of the
//! documented response schema, and every documented error status is reproduced by a real
//! request and answered in the documented error schema. What cannot be reproduced against a
//! healthy server with the models this engine loads is listed in `EXPLAINED` and in the README,
//! and nothing else may be missing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use backbone::bench::serve_load::{Http, ServerProcess};
use common::*;
use serde_json::{Value, json};

/// Documented (route, status) pairs a request cannot reproduce here, each with why; the README
/// section "Coming from text-embeddings-inference" says the same.
const EXPLAINED: [(&str, &str, &str); 2] = [
    (
        "POST /embed_sparse",
        "200",
        "no model this engine loads has a SPLADE head: /embed_sparse answers 424",
    ),
    (
        "GET /health",
        "503",
        "needs a lost GPU device: src/server/tests.rs injects one (a_lost_device_makes_health_503)",
    ),
];

fn document() -> Value {
    let path = fixture("tei/openapi.json");
    serde_json::from_slice(&std::fs::read(&path).expect("the OpenAPI document")).expect("json")
}

fn resolve<'a>(schema: &'a Value, doc: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            resolve(&doc["components"]["schemas"][name], doc)
        }
        None => schema,
    }
}

/// Whether `v` fits `schema` (the JSON Schema subset utoipa writes: $ref, oneOf read as
/// any-of since utoipa's alternatives overlap, allOf, type, nullable, enum, required,
/// properties, additionalProperties, items, minItems/maxItems, minimum 0); the first misfit's
/// path otherwise.
fn fits(schema: &Value, v: &Value, doc: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(schema, doc);
    if v.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    if let Some(alternatives) = schema["oneOf"].as_array() {
        let misfits: Vec<String> = alternatives
            .iter()
            .filter_map(|s| fits(s, v, doc, at).err())
            .collect();
        return match misfits.len() < alternatives.len() {
            true => Ok(()),
            false => Err(format!("{at}: fits none of oneOf: {misfits:?}")),
        };
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().try_for_each(|s| fits(s, v, doc, at));
    }
    if let Some(values) = schema["enum"].as_array()
        && !values.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {values:?}"));
    }
    let wrong = |t: &str| Err(format!("{at}: {v} is not {t}"));
    match schema["type"].as_str() {
        Some("object") => {
            let Some(o) = v.as_object() else {
                return wrong("an object");
            };
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                if !o.contains_key(key) {
                    return Err(format!("{at}: required `{key}` missing from {v}"));
                }
            }
            for (key, value) in o {
                let path = format!("{at}.{key}");
                if let Some(s) = schema["properties"].get(key) {
                    fits(s, value, doc, &path)?;
                } else if let Some(s) = schema.get("additionalProperties")
                    && s.is_object()
                {
                    fits(s, value, doc, &path)?;
                }
            }
            Ok(())
        }
        Some("array") => {
            let Some(a) = v.as_array() else {
                return wrong("an array");
            };
            let (min, max) = (schema["minItems"].as_u64(), schema["maxItems"].as_u64());
            if min.is_some_and(|m| (a.len() as u64) < m) || max.is_some_and(|m| a.len() as u64 > m)
            {
                return Err(format!("{at}: {} items outside {min:?}..{max:?}", a.len()));
            }
            a.iter()
                .enumerate()
                .try_for_each(|(i, x)| fits(&schema["items"], x, doc, &format!("{at}[{i}]")))
        }
        Some("string") if !v.is_string() => wrong("a string"),
        Some("boolean") if !v.is_boolean() => wrong("a boolean"),
        Some("number") if !v.is_number() => wrong("a number"),
        Some("integer") if schema["minimum"] == 0 && !v.is_u64() => wrong("an unsigned integer"),
        Some("integer") if !(v.is_u64() || v.is_i64()) => wrong("an integer"),
        _ => Ok(()),
    }
}

fn operation<'a>(doc: &'a Value, route: &str) -> &'a Value {
    let (method, path) = route.split_once(' ').expect("METHOD /path");
    &doc["paths"][path][method.to_lowercase()]
}

fn response_schema<'a>(doc: &'a Value, route: &str, status: &str) -> &'a Value {
    &operation(doc, route)["responses"][status]["content"]["application/json"]["schema"]
}

/// One request of the walk: which server, the route, the body, the status it must get.
struct Case {
    reranker: bool,
    route: &'static str,
    body: Value,
    status: &'static str,
}

fn case(reranker: bool, route: &'static str, body: Value, status: &'static str) -> Case {
    Case {
        reranker,
        route,
        body,
        status,
    }
}

/// A valid request (200) for every route, and one for each error status but 429 (which needs
/// a request in flight, walked after).
fn cases() -> Vec<Case> {
    let over = "w".repeat(120_000);
    let many: Vec<String> = (0..33).map(|i| format!("text {i}")).collect();
    let (e, r) = (false, true);
    vec![
        case(
            e,
            "POST /decode",
            json!({ "ids": [101, 7592, 102], "skip_special_tokens": false }),
            "200",
        ),
        case(
            e,
            "POST /decode",
            json!({ "ids": [[101], [7592, 102]] }),
            "200",
        ),
        case(e, "POST /decode", json!({ "ids": [] }), "400"),
        case(e, "POST /decode", json!({ "ids": vec![1; 60_000] }), "413"),
        case(
            e,
            "POST /decode",
            json!({ "ids": vec![vec![1]; 33] }),
            "422",
        ),
        case(e, "POST /decode", json!({ "ids": "101" }), "422"),
        case(
            e,
            "POST /embed",
            json!({ "inputs": "What is Deep Learning?", "normalize": true, "truncate": false, "truncation_direction": "Right", "prompt_name": null, "dimensions": null }),
            "200",
        ),
        case(
            e,
            "POST /embed",
            json!({ "inputs": ["a", [101, 7592, 102]], "dimensions": 8, "normalize": false }),
            "200",
        ),
        case(e, "POST /embed", json!({ "inputs": [] }), "400"),
        case(e, "POST /embed", json!({ "inputs": over }), "413"),
        case(e, "POST /embed", json!({ "inputs": many }), "422"),
        case(r, "POST /embed", json!({ "inputs": "a" }), "424"),
        case(
            e,
            "POST /embed_all",
            json!({ "inputs": ["a", "b c"], "truncate": true, "truncation_direction": "Left" }),
            "200",
        ),
        case(e, "POST /embed_all", json!({ "inputs": [] }), "400"),
        case(e, "POST /embed_all", json!({ "inputs": over }), "413"),
        case(e, "POST /embed_all", json!({ "inputs": 5 }), "422"),
        case(r, "POST /embed_all", json!({ "inputs": "a" }), "424"),
        case(e, "POST /embed_sparse", json!({ "inputs": [] }), "400"),
        case(e, "POST /embed_sparse", json!({ "inputs": over }), "413"),
        case(e, "POST /embed_sparse", json!({ "inputs": many }), "422"),
        case(
            e,
            "POST /embed_sparse",
            json!({ "inputs": "a", "truncate": true }),
            "424",
        ),
        case(e, "GET /health", Value::Null, "200"),
        case(e, "GET /info", Value::Null, "200"),
        case(r, "GET /info", Value::Null, "200"),
        case(e, "GET /metrics", Value::Null, "200"),
        case(
            r,
            "POST /predict",
            json!({ "inputs": "What is Deep Learning?", "raw_scores": false, "truncate": false, "truncation_direction": "Right" }),
            "200",
        ),
        case(
            r,
            "POST /predict",
            json!({ "inputs": ["a question", "an answer"] }),
            "200",
        ),
        case(
            r,
            "POST /predict",
            json!({ "inputs": [["a"], ["a question", "an answer"]], "raw_scores": true }),
            "200",
        ),
        case(r, "POST /predict", json!({ "inputs": [] }), "400"),
        case(r, "POST /predict", json!({ "inputs": over }), "413"),
        case(
            r,
            "POST /predict",
            json!({ "inputs": ["a", "b", "c"] }),
            "422",
        ),
        case(e, "POST /predict", json!({ "inputs": "a" }), "424"),
        case(
            r,
            "POST /rerank",
            json!({ "query": "What is Deep Learning?", "texts": ["Deep Learning is...", "cheese"], "raw_scores": false, "return_text": true, "truncate": true, "truncation_direction": "Left" }),
            "200",
        ),
        case(
            r,
            "POST /rerank",
            json!({ "query": "q", "texts": [] }),
            "400",
        ),
        case(
            r,
            "POST /rerank",
            json!({ "query": over, "texts": ["a"] }),
            "413",
        ),
        case(
            r,
            "POST /rerank",
            json!({ "query": "q", "texts": many }),
            "422",
        ),
        case(
            e,
            "POST /rerank",
            json!({ "query": "q", "texts": ["a"] }),
            "424",
        ),
        case(
            e,
            "POST /similarity",
            json!({ "inputs": { "source_sentence": "What is Deep Learning?", "sentences": ["What is Machine Learning?", "cheese"] }, "parameters": { "truncate": true, "truncation_direction": "Right", "prompt_name": null } }),
            "200",
        ),
        case(
            e,
            "POST /similarity",
            json!({ "inputs": { "source_sentence": "a", "sentences": [] } }),
            "400",
        ),
        case(
            e,
            "POST /similarity",
            json!({ "inputs": { "source_sentence": over, "sentences": ["a"] } }),
            "413",
        ),
        case(
            e,
            "POST /similarity",
            json!({ "inputs": { "source_sentence": "a", "sentences": many } }),
            "422",
        ),
        case(
            r,
            "POST /similarity",
            json!({ "inputs": { "source_sentence": "a", "sentences": ["b"] } }),
            "424",
        ),
        case(
            e,
            "POST /tokenize",
            json!({ "inputs": ["Hello world", "x"], "add_special_tokens": false, "prompt_name": null }),
            "200",
        ),
        case(e, "POST /tokenize", json!({ "inputs": [] }), "400"),
        case(e, "POST /tokenize", json!({ "inputs": over }), "413"),
        case(e, "POST /tokenize", json!({ "inputs": many }), "422"),
        case(
            e,
            "POST /v1/embeddings",
            json!({ "input": ["a", [101, 7592, 102]], "model": "any", "user": "u", "encoding_format": "float", "dimensions": 8 }),
            "200",
        ),
        case(
            e,
            "POST /v1/embeddings",
            json!({ "input": "a", "encoding_format": "base64" }),
            "200",
        ),
        case(e, "POST /v1/embeddings", json!({ "input": [] }), "400"),
        case(e, "POST /v1/embeddings", json!({ "input": over }), "413"),
        case(e, "POST /v1/embeddings", json!({ "input": many }), "422"),
        case(r, "POST /v1/embeddings", json!({ "input": "a" }), "424"),
    ]
}

struct Servers {
    embedding: ServerProcess,
    reranker: ServerProcess,
}

impl Servers {
    fn http(&self, reranker: bool) -> Http {
        match reranker {
            true => self.reranker.http(),
            false => self.embedding.http(),
        }
    }
}

/// Sends `c`: its status and body.
fn send(servers: &Servers, c: &Case) -> (u16, String) {
    let http = servers.http(c.reranker);
    let (method, path) = c.route.split_once(' ').expect("route");
    match method {
        "GET" => http.get(path),
        _ => http.post(path, &c.body.to_string()),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", c.route))
}

/// Sends `c` and checks its status and body against the document; returns the body.
fn walk_one(servers: &Servers, doc: &Value, c: &Case) -> Value {
    let request_schema =
        &operation(doc, c.route)["requestBody"]["content"]["application/json"]["schema"];
    if c.status == "200" && !request_schema.is_null() {
        fits(request_schema, &c.body, doc, "request")
            .unwrap_or_else(|e| panic!("{}: the walk's own request is not TEI's: {e}", c.route));
    }
    let (status, text) = send(servers, c);
    check(doc, c, status, text)
}

/// Checks an answer's status and body against the document; returns the body.
fn check(doc: &Value, c: &Case, status: u16, text: String) -> Value {
    let path = c.route.split_once(' ').expect("route").1;
    assert_eq!(
        status.to_string(),
        c.status,
        "{} {}: {text}",
        c.route,
        c.body
    );
    if path == "/metrics" || (path == "/health" && status == 200) {
        return Value::String(text);
    }
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} answered {status} with no JSON ({e}): {text}", c.route));
    let schema = response_schema(doc, c.route, c.status);
    assert!(
        !schema.is_null(),
        "{} {} is documented without a schema",
        c.route,
        c.status
    );
    fits(schema, &body, doc, "response").unwrap_or_else(|e| {
        panic!(
            "{} {}: the answer is not TEI's: {e}\n{body}",
            c.route, c.status
        )
    });
    body
}

#[test]
fn every_route_and_status_of_teis_openapi_document() {
    let doc = document();
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "--device",
            "cpu",
            "--max-concurrent-requests",
            "1",
            "--payload-limit",
            "100000",
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    let backbone = bin("backbone");
    let servers = Servers {
        embedding: ServerProcess::start(&backbone, &fixture("bert-micro-12l-random"), &args(&[]))
            .expect("the embedding server"),
        reranker: ServerProcess::start(
            &backbone,
            &fixture("text/bert-cross-long-micro"),
            &args(&[]),
        )
        .expect("the reranker server"),
    };
    let mut covered = BTreeSet::new();
    for c in cases() {
        walk_one(&servers, &doc, &c);
        covered.insert((c.route.to_string(), c.status.to_string()));
    }

    // 429: with one request in flight (32 long texts on the CPU path) and a limit of one. A
    // probe that found the slow request already done is sent again with a new one in flight.
    for reranker in [false, true] {
        let http = servers.http(reranker);
        let long = "word ".repeat(300);
        let slow = match reranker {
            false => json!({ "inputs": vec![long; 32], "truncate": true }),
            true => json!({ "query": long, "texts": vec![long; 32], "truncate": true }),
        };
        let route = if reranker { "/rerank" } else { "/embed" };
        let probes: Vec<Case> = match reranker {
            false => [
                "POST /embed",
                "POST /embed_all",
                "POST /embed_sparse",
                "POST /similarity",
                "POST /v1/embeddings",
            ]
            .into_iter()
            .map(|route| {
                let body = match route {
                    "POST /similarity" => {
                        json!({ "inputs": { "source_sentence": "a", "sentences": ["b"] } })
                    }
                    "POST /v1/embeddings" => json!({ "input": "a" }),
                    _ => json!({ "inputs": "a" }),
                };
                case(false, route, body, "429")
            })
            .collect(),
            true => vec![
                case(true, "POST /predict", json!({ "inputs": "a" }), "429"),
                case(
                    true,
                    "POST /rerank",
                    json!({ "query": "q", "texts": ["a"] }),
                    "429",
                ),
            ],
        };
        for c in &probes {
            let mut tries = 0;
            loop {
                let in_flight = {
                    let (http, slow) = (http.clone(), slow.to_string());
                    std::thread::spawn(move || http.post(route, &slow).expect("the slow request").0)
                };
                std::thread::sleep(Duration::from_millis(30));
                let (status, text) = send(&servers, c);
                assert_eq!(in_flight.join().expect("the slow request"), 200);
                if status == 429 || tries == 20 {
                    check(&doc, c, status, text);
                    break;
                }
                tries += 1;
            }
            covered.insert((c.route.to_string(), "429".to_string()));
        }
    }

    // Nothing documented is left out, but what EXPLAINED explains (and the README with it).
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    for (route, status, why) in EXPLAINED {
        assert!(
            readme.contains(why),
            "the README explains {route} {status}: {why}"
        );
        covered.insert((route.to_string(), status.to_string()));
    }
    let mut documented = BTreeSet::new();
    for (path, methods) in doc["paths"].as_object().expect("paths") {
        for (method, op) in methods.as_object().expect("methods") {
            for status in op["responses"].as_object().expect("responses").keys() {
                documented.insert((format!("{} {path}", method.to_uppercase()), status.clone()));
            }
        }
    }
    let missing: Vec<_> = documented.difference(&covered).collect();
    assert!(missing.is_empty(), "documented but not walked: {missing:?}");
    eprintln!(
        "walked {} documented (route, status) pairs",
        documented.len()
    );

    // TEI's other entry points: SageMaker's POST / and /invocations (the route the model's kind
    // serves), GET / and /ping (health), /embeddings (OpenAI's route without /v1), CORS.
    let e = servers.http(false);
    let r = servers.http(true);
    let (status, got) = e.json("/", &json!({ "inputs": "a" })).expect("POST /");
    assert_eq!(
        (status, got[0].as_array().map(Vec::len)),
        (200, Some(32)),
        "{got}"
    );
    let (status, got) = r
        .json(
            "/invocations",
            &json!({ "query": "q", "texts": ["a", "b"] }),
        )
        .expect("invocations");
    assert_eq!(
        (status, got.as_array().map(Vec::len)),
        (200, Some(2)),
        "{got}"
    );
    assert_eq!(e.get("/").expect("GET /").0, 200);
    assert_eq!(e.get("/ping").expect("ping").0, 200);
    let (status, got) = e
        .json("/embeddings", &json!({ "input": "a" }))
        .expect("/embeddings");
    assert_eq!(
        (status, got["object"].as_str()),
        (200, Some("list")),
        "{got}"
    );
    assert_eq!(
        got["model"], "bert-micro-12l-random",
        "the served name: {got}"
    );
    // A CORS preflight, as a browser sends it.
    let mut socket = std::net::TcpStream::connect(&servers.embedding.addr).expect("connect");
    use std::io::{Read, Write};
    socket
        .write_all(
            b"OPTIONS /embed HTTP/1.1\r\nHost: x\r\nOrigin: http://example.com\r\n\
              Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
        )
        .expect("send");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).expect("read");
    let answer = answer.to_lowercase();
    assert!(
        answer.starts_with("http/1.1 200"),
        "CORS preflight: {answer}"
    );
    assert!(
        answer.contains("access-control-allow-origin: *"),
        "{answer}"
    );
    assert!(servers.embedding.stop().expect("stop").success());
    assert!(servers.reranker.stop().expect("stop").success());
}
