//! Shared mocks for layer tests: no sockets, paused time.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use raftmesh_api::{LoadBalancer, Protocol, RetryOn};

use crate::compiled::{Backend, Endpoint, Outlier, Retries, Rule, ServiceTable};
use crate::error::ProxyError;
use crate::stats::{EndpointStats, ServiceStats};
use crate::target::Target;
use crate::Body;

type Handler = dyn Fn(Request<Body>) -> Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>
    + Send
    + Sync;

/// An inner service answering with a closure, counting calls.
#[derive(Clone)]
pub struct Mock {
    f: Arc<Handler>,
    /// Calls so far.
    pub calls: Arc<AtomicUsize>,
}

impl Mock {
    /// A mock answering with `f`.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(Request<Body>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static,
    {
        Self {
            f: Arc::new(move |r| Box::pin(f(r))),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Calls made.
    pub fn count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl tower::Service<Request<Body>> for Mock {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        (self.f)(req)
    }
}

/// A target for service `web` with two endpoints and the given policy.
pub fn target(timeout: Option<Duration>, retries: Option<(u32, Vec<RetryOn>)>) -> Target {
    let table = ServiceTable {
        id: ("default".into(), "web".into()),
        protocol: Protocol::Http,
        route: None,
        rules: vec![Rule {
            matches: vec![],
            backends: vec![Backend {
                label: String::new(),
                subset: BTreeMap::new(),
                weight: 100,
                endpoints: vec![0, 1],
                ring: None,
            }],
            actions: None,
            mirror: None,
        }],
        timeout,
        retries: retries.map(|(attempts, on)| Retries {
            attempts,
            on,
            grpc_on: vec![14],
            // Short, so tests do not wait.
            backoff_base: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
            ..Retries::default()
        }),
        lb: LoadBalancer::RoundRobin,
        hash_on: None,
        max_in_flight: None,
        max_connections: None,
        connect_timeout: crate::compiled::CONNECT_TIMEOUT,
        fault: None,
        outlier: Outlier::default(),
        endpoints: (0..2)
            .map(|i| Endpoint {
                name: format!("web-{i}"),
                addr: format!("127.0.0.1:{}", 9100 + i).parse().expect("addr"),
                labels: BTreeMap::new(),
                tier: 0,
                dial: None,
                subset_only: false,
                healthy: true,
                server_name: None,
                identity: None,
                stats: Arc::new(EndpointStats::default()),
            })
            .collect(),
    };
    Target {
        table: Arc::new(table),
        rule: 0,
        backend: 0,
        stats: Arc::new(ServiceStats::new(crate::metrics::Metrics::new())),
        hash: None,
        chosen: None,
    }
}
