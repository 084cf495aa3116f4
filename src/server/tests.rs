//! A failed batch (a GPU error, or a panic in the forward) answers its requests 424 (TEI's Backend) in TEI's
//! shape and the server keeps serving; a lost device also turns /health to 503. The failure
//! is injected into the model the batcher owns; everything else (HTTP, queue, batcher) is
//! the real server.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::{Loaded, ServeOptions, load, serve_with};
use crate::bench::serve_load::Http;
use crate::error::Error;

fn options() -> ServeOptions {
    let model: std::path::PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests/fixtures/bert-micro-12l-random",
    ]
    .iter()
    .collect();
    ServeOptions {
        port: 0,
        device: crate::encoder::Device::Reference,
        max_concurrent_requests: 64,
        ..ServeOptions::new(model)
    }
}

/// The first forward fails with a GPU error, the second panics, the rest run.
fn failing_first_two(loaded: Loaded) -> Loaded {
    let calls = AtomicUsize::new(0);
    let inner = loaded.forward;
    Loaded {
        forward: Box::new(
            move |input, want| match calls.fetch_add(1, Ordering::Relaxed) {
                0 => Err(Error::Gpu {
                    during: "a queue submit".into(),
                    message: "injected: the queue submit failed".into(),
                }),
                1 => panic!("injected: a bug in the forward"),
                _ => inner(input, want),
            },
        ),
        ..loaded
    }
}

/// The real server on an ephemeral port, serving `loaded` until the returned sender fires.
fn start(
    options: ServeOptions,
    loaded: Loaded,
) -> (
    Http,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<crate::error::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let shutdown = async {
            stopped.await.ok();
        };
        serve_with(options, loaded, shutdown, move |addr| {
            addr_tx.send(addr).ok();
        })
    });
    let addr = addr_rx.recv().expect("the server listens");
    (Http::new(&addr.to_string()), stop, server)
}

#[test]
fn a_failed_batch_is_424_and_the_server_keeps_serving() {
    let options = options();
    let loaded = failing_first_two(load(&options).expect("load bert-micro"));
    let (http, stop, server) = start(options, loaded);
    let body = json!({ "inputs": "The station is near the river." });

    for injected in ["the queue submit failed", "the forward panicked"] {
        let (status, got) = http.json("/embed", &body).expect("answer");
        assert_eq!(status, 424, "{got}");
        assert_eq!(got["error_type"], "Backend", "{got}");
        let message = got["error"].as_str().unwrap_or("");
        assert!(message.contains(injected), "{got}");
    }
    let (status, got) = http.json("/embed", &body).expect("answer");
    assert_eq!(status, 200, "the next batch runs: {got}");
    assert_eq!(got[0].as_array().map(Vec::len), Some(32), "{got}");
    let (status, got) = http
        .json("/v1/embeddings", &json!({ "input": ["a", "b"] }))
        .expect("answer");
    assert_eq!(status, 200, "{got}");
    let (_, metrics) = http.get("/metrics").expect("metrics");
    assert!(metrics.contains("te_request_failure 2"), "{metrics}");
    assert!(metrics.contains("te_request_count 4"), "{metrics}");
    assert!(
        metrics.contains("te_request_duration_seconds_count 4")
            && metrics.contains("te_batch_size_bucket{le=\"+Inf\"} 4"),
        "{metrics}"
    );
    assert_eq!(http.get("/health").expect("health").0, 200, "still healthy");

    stop.send(()).ok();
    server
        .join()
        .expect("the server thread")
        .expect("the server ends cleanly");
}

/// A lost device fails its batch with 424 and turns /health to 503, so a load balancer or
/// Kubernetes takes the instance out and can restart it.
#[test]
fn a_lost_device_makes_health_503() {
    let options = options();
    let loaded = Loaded {
        forward: Box::new(|_, _| {
            Err(Error::DeviceLost {
                reason: "injected: the driver reset the GPU".into(),
            })
        }),
        ..load(&options).expect("load bert-micro")
    };
    let (http, stop, server) = start(options, loaded);
    assert_eq!(http.get("/health").expect("health").0, 200);
    let (status, got) = http
        .json("/embed", &json!({ "inputs": "a" }))
        .expect("answer");
    assert_eq!(status, 424, "{got}");
    let (status, body) = http.get("/health").expect("health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("Unhealthy"), "{body}");
    stop.send(()).ok();
    server
        .join()
        .expect("the server thread")
        .expect("clean end");
}
