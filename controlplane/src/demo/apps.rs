//! The demo's applications: tiny HTTP servers answering their name.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running app.
pub struct App {
    /// Its port on loopback.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl App {
    /// Serves `body` (e.g. `web v2`) to every request.
    pub async fn start(body: &'static str) -> std::io::Result<Self> {
        Self::serve(TcpListener::bind("127.0.0.1:0").await?, body)
    }

    /// Serves `body` on a listener bound elsewhere (in another network
    /// namespace: `meshd demo --transparent`).
    pub fn serve_std(l: std::net::TcpListener, body: &'static str) -> std::io::Result<Self> {
        Self::serve(TcpListener::from_std(l)?, body)
    }

    fn serve(l: TcpListener, body: &'static str) -> std::io::Result<Self> {
        let addr = l.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: hyper::Request<Incoming>| async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            body.as_bytes(),
                        ))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}
