//! The accept loop, on hyper directly (axum::serve has neither header-read timeouts nor a
//! bounded graceful shutdown): each connection must send a request head within
//! `read_timeout` (an idle keep-alive connection is closed after it too); on shutdown the
//! listener closes, idle connections are closed, in-flight requests are answered, and
//! whatever is still open after `graceful_timeout` is dropped, so the process always exits.

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::ServeOptions;

/// Serves `app` on `listener` until `shutdown` completes, then shuts down gracefully within
/// the options' graceful timeout.
pub(super) async fn serve_until(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()>,
    options: &ServeOptions,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(options.read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    stream.set_nodelay(true).ok();
                    let service = TowerToHyperService::new(app.clone());
                    let connection = graceful.watch(
                        http.serve_connection(TokioIo::new(stream), service),
                    );
                    tokio::spawn(async move {
                        // A client that goes away or times out ends only its connection.
                        let _ = connection.await;
                    });
                }
                // Out of file descriptors (or a connection reset before it was accepted):
                // wait a little rather than spin; the header timeout frees descriptors.
                Err(e) => {
                    log::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    log::info!(
        "shutting down: answering in-flight requests (at most {} s)",
        options.graceful_timeout.as_secs_f64()
    );
    tokio::select! {
        _ = graceful.shutdown() => {},
        _ = tokio::time::sleep(options.graceful_timeout) => {
            log::warn!("connections still open after the graceful timeout are dropped");
        }
    }
}

/// SIGINT or SIGTERM.
pub(super) async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// CORS as TEI answers it: GET and POST with a JSON body, from any origin unless
/// `--cors-allow-origin` names them.
pub(super) fn cors(options: &ServeOptions) -> CorsLayer {
    let origin = match &options.cors_allow_origin {
        None => AllowOrigin::any(),
        Some(origins) => AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        ),
    };
    CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION])
        .allow_origin(origin)
}
