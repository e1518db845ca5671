//! The admin port: `/ready`, `/live`, `/metrics`, `/config_dump`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::compiled::Source;
use crate::state::Config;
use crate::tls::Workload;
use crate::Body;

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

/// Answers one admin request; `workload` is the proxy's identity (none
/// for a `--config-file` proxy).
pub fn handle(config: &Config, workload: Option<&Workload>, path: &str) -> Response<Body> {
    match path {
        "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
        "/ready" => {
            let s = config.current();
            if let Some(why) = crate::server::refusing_all(config, workload) {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {why}\n"),
                )
            } else if s.source == Source::Empty {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: no configuration yet\n".into(),
                )
            } else if config.life.borrow().draining {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready: draining (stopping)\n".into(),
                )
            } else if !config.life.borrow().app_ready {
                let why = config
                    .probe_failure
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: the app is not ready ({why})\n"),
                )
            } else {
                reply(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready: revision {}\n", s.revision),
                )
            }
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            config.metrics.render(config),
        ),
        "/config_dump" => {
            let s = config.current();
            let v = serde_json::json!({
                "revision": s.revision,
                "source": s.source,
                "resources": s.resources.values().collect::<Vec<_>>(),
            });
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /ready, /live, /metrics or /config_dump\n".into(),
        ),
    }
}

/// Serves the admin port until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    workload: Option<Arc<Workload>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = crate::stopped(&mut shutdown) => return,
            _ = crate::health::handing_over(&config.life) => return,
        };
        let (config, workload) = (config.clone(), workload.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let r = handle(&config, workload.as_deref(), req.uri().path());
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
