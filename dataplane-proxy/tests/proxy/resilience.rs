//! Retries, budgets, timeouts, ejection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::prom::{has, metric};
use super::support::*;

#[tokio::test]
async fn retries_reach_a_healthy_endpoint_and_the_budget_caps_them() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.status.store(503, Ordering::SeqCst);
    let route = "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  retries: {attempts: 2, on: [5xx]}\n  load_balancer: round-robin\n  outlier: {consecutive_failures: 1000}\n";
    let (p, _d) = static_proxy(&mesh(
        "web",
        &[("web-1", bad.addr, "v1"), ("web-2", good.addr, "v1")],
        route,
    ))
    .await;
    let c = http_client();
    // Ten requests, half of them needing a retry: within the budget's reserve.
    for _ in 0..10 {
        let (s, body, _) = get(&c, p.outbound, "web", "/", &[]).await;
        assert_eq!(s, 200, "a retry goes to the other endpoint");
        assert!(body.starts_with("good"));
    }
    p.shutdown().await;

    // Every endpoint failing: retries stay within ~20 % of the traffic.
    let down = Upstream::start("down").await;
    down.status.store(500, Ordering::SeqCst);
    let route = "kind: Route\nmetadata: {name: budgeted}\nspec:\n  service: budgeted\n  retries: {attempts: 3, on: [5xx]}\n  outlier: {consecutive_failures: 100000}\n";
    let (p, _d) = static_proxy(&mesh("budgeted", &[("budgeted-1", down.addr, "v1")], route)).await;
    let n = 500;
    for _ in 0..n {
        let (s, _, _) = get(&c, p.outbound, "budgeted", "/", &[]).await;
        assert_eq!(s, 500);
    }
    let extra = down.hits() - n;
    assert!(extra <= n / 5 + 10, "{extra} retries for {n} requests");
    let m = super::routing::reqwest_metrics(p.admin).await;
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_retries_total",
            &[("destination_service", "budgeted")]
        ),
        extra as f64,
        "{m}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_slow_upstream_gets_upstream_timeout() {
    let slow = Upstream::start("slow").await;
    slow.delay_ms.store(2_000, Ordering::SeqCst);
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, timeout: 200ms}\n";
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", slow.addr, "v1")], route)).await;
    let c = http_client();
    let t0 = std::time::Instant::now();
    let (s, _, e) = get(&c, p.outbound, "web", "/", &[]).await;
    assert_eq!((s, e.as_deref()), (504, Some("upstream-timeout")));
    assert!(t0.elapsed() < Duration::from_millis(1_500));
    p.shutdown().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_tried_again_after_its_ejection() {
    let bad = Upstream::start("bad").await;
    let good = Upstream::start("good").await;
    bad.status.store(500, Ordering::SeqCst);
    let route = "kind: Route\nmetadata: {name: ejectme}\nspec:\n  service: ejectme\n  load_balancer: round-robin\n  outlier: {consecutive_failures: 3, base_ejection: 1s, max_ejection_percent: 50}\n";
    let (p, _d) = static_proxy(&mesh(
        "ejectme",
        &[("e-1", bad.addr, "v1"), ("e-2", good.addr, "v1")],
        route,
    ))
    .await;
    let c = http_client();
    for _ in 0..20 {
        get(&c, p.outbound, "ejectme", "/", &[]).await;
    }
    let hits = bad.hits();
    assert_eq!(hits, 3, "ejected after 3 consecutive failures");
    for _ in 0..20 {
        let (s, _, _) = get(&c, p.outbound, "ejectme", "/", &[]).await;
        assert_eq!(s, 200, "no failed request after ejection");
    }
    assert_eq!(bad.hits(), 3);
    // Recovered: back in rotation after the ejection time.
    bad.status.store(200, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    for _ in 0..10 {
        get(&c, p.outbound, "ejectme", "/", &[]).await;
    }
    assert!(
        bad.hits() > 3,
        "the endpoint is used again after its ejection"
    );
    let m = super::routing::reqwest_metrics(p.admin).await;
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_ejections_total",
            &[("destination_service", "ejectme")]
        ),
        1.0,
        "{m}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_connect_failure_is_explained_and_retried_when_asked() {
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // nothing listens
    let good = Upstream::start("good").await;
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", gone, "v1")], "")).await;
    let c = http_client();
    let (s, _, e) = get(&c, p.outbound, "web", "/", &[]).await;
    assert_eq!((s, e.as_deref()), (503, Some("upstream-connect")));
    p.shutdown().await;
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, load_balancer: round-robin, retries: {attempts: 1, on: [connect-failure]}}\n";
    let (p, _d) = static_proxy(&mesh(
        "web",
        &[("web-1", gone, "v1"), ("web-2", good.addr, "v1")],
        route,
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(get(&c, p.outbound, "web", "/", &[]).await.0, 200);
    }
    p.shutdown().await;

    // P2C, no ejection to hide behind: a dead endpoint fails fast, so its
    // latency looks good; the retry must still go to the other endpoint.
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, retries: {attempts: 1, on: [connect-failure]}, outlier: {consecutive_failures: 100000}}\n";
    let (p, _d) = static_proxy(&mesh(
        "web",
        &[("web-1", gone, "v1"), ("web-2", good.addr, "v1")],
        route,
    ))
    .await;
    for i in 0..100 {
        let (s, body, e) = get(&c, p.outbound, "web", "/", &[]).await;
        assert_eq!(s, 200, "request {i}: {e:?} {body}");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn a_circuit_opens_past_the_in_flight_limit() {
    let slow = Upstream::start("slow").await;
    slow.delay_ms.store(500, Ordering::SeqCst);
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, circuit_breaker: {max_pending_requests: 2}}\n";
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", slow.addr, "v1")], route)).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let out = p.outbound;
        tasks.push(tokio::spawn(async move {
            get(&http_client(), out, "web", "/", &[]).await
        }));
    }
    // While two wait on the slow app, the circuit shows open.
    let gauge = |name: &str| {
        metric(
            &p.config.metrics.render(&p.config),
            name,
            &[("destination_service", "web")],
        )
    };
    for _ in 0..50 {
        if gauge("raftmesh_proxy_requests_in_flight") == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(gauge("raftmesh_proxy_requests_in_flight"), 2.0);
    assert_eq!(gauge("raftmesh_proxy_circuit_open"), 1.0);
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap().2);
    }
    assert_eq!(gauge("raftmesh_proxy_circuit_open"), 0.0);
    assert!(has(
        &p.config.metrics.render(&p.config),
        "raftmesh_proxy_circuit_open",
        &[("destination_service", "web")]
    ));
    let open = codes
        .iter()
        .filter(|c| c.as_deref() == Some("circuit-open"))
        .count();
    assert_eq!(open, 4, "{codes:?}");
    p.shutdown().await;
}

/// An app that answers each request with its method and body.
async fn echo_body() -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let m = req.method().to_string();
                        let b = req.into_body().collect().await?.to_bytes();
                        let out = [m.as_bytes(), b" ", &b].concat();
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(out),
                        )))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_post_to_an_endpoint_that_refuses_connections_succeeds_on_another_without_a_retry_policy()
{
    use http_body_util::BodyExt;
    let gone = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // nothing listens
    let good = echo_body().await;
    // No retry policy; and ejection never hides the dead endpoint.
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, load_balancer: round-robin, outlier: {consecutive_failures: 100000}}\n";
    let (p, _d) = static_proxy(&mesh(
        "web",
        &[("web-1", gone, "v1"), ("web-2", good, "v1")],
        route,
    ))
    .await;
    let c: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    // Bodies of every size up to past the replay limit (64 KiB): those
    // within it always arrive whole; the one past it is sent once.
    for (i, size) in [0usize, 1, 100, 10_000, 65_536]
        .into_iter()
        .cycle()
        .take(50)
        .enumerate()
    {
        let body = vec![b'a' + (i % 26) as u8; size];
        let req = hyper::Request::post(format!("http://{}/orders", p.outbound))
            .header("host", "web")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let r = c.request(req).await.unwrap();
        assert_eq!(r.status(), 200, "POST {i} of {size} bytes");
        let got = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 5 + size, "POST {i}: the whole body, once");
        assert!(got.starts_with(b"POST "));
        assert!(got[5..].iter().all(|b| *b == b'a' + (i % 26) as u8));
    }
    p.shutdown().await;
}

/// An app answering after `delay`, counting the connections open at once
/// (the most seen).
async fn counting_app(delay: Duration) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = most.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (open, most) = (open.clone(), most.clone());
            let n = open.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn max_connections_caps_connections_and_requests_beyond_wait_for_one() {
    for (limit, route) in [
        (Some(2), "kind: Route\nmetadata: {name: web}\nspec: {service: web, circuit_breaker: {max_connections: 2}}\n"),
        (None, ""),
    ] {
        let (app, most) = counting_app(Duration::from_millis(200)).await;
        let (p, _d) = static_proxy(&mesh("web", &[("web-1", app, "v1")], route)).await;
        let c = http_client();
        let calls = (0..8).map(|i| {
            let c = c.clone();
            let out = p.outbound;
            async move { get(&c, out, "web", &format!("/{i}"), &[]).await }
        });
        let results = futures::future::join_all(calls).await;
        for (s, body, e) in &results {
            assert_eq!(*s, 200, "{limit:?}: {body} {e:?}");
        }
        let most = most.load(Ordering::SeqCst);
        match limit {
            // Queued, not refused (it is no longer folded into the
            // in-flight cap) and never more than the limit.
            Some(n) => assert!(most <= n, "{most} connections open at once, limit {n}"),
            // Without a limit the 8 concurrent requests take more.
            None => assert!(most > 2, "only {most} connections without a limit"),
        }
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_route_s_connect_timeout_bounds_a_connection_that_hangs() {
    // A listener whose accept queue is full: the kernel leaves further
    // connection attempts unanswered.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let hung = sock.listen(1).unwrap();
    let addr = hung.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fill.push(s),
            _ => break,
        }
    }
    // One attempt, within 100 ms (the default would wait 1 s).
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, connect_timeout: 100ms, retries: {attempts: 0}}\n";
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", addr, "v1")], route)).await;
    let c = http_client();
    let t0 = std::time::Instant::now();
    let (s, _, e) = get(&c, p.outbound, "web", "/", &[]).await;
    let took = t0.elapsed();
    assert_eq!((s, e.as_deref()), (503, Some("upstream-connect")));
    assert!(
        took < Duration::from_millis(900),
        "the connect timeout was not the route's: {took:?}"
    );
    drop(fill);
    p.shutdown().await;
}

/// An HTTP/2 (h2c) server answering every call with `first` (an HTTP
/// status, or a trailers-only gRPC status with `grpc`) on the first
/// request and fine afterwards; the first request waits `delay`.
pub(super) async fn flaky_h2(
    first_grpc_status: Option<u8>,
    delay: Duration,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let calls = calls.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let n = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n == 0 {
                            tokio::time::sleep(delay).await;
                        }
                        use http_body_util::BodyExt;
                        let mut r = match (n, first_grpc_status) {
                            // Trailers-only: the status in the headers, no body.
                            (0, Some(code)) => {
                                let mut r = hyper::Response::new(
                                    http_body_util::Empty::<bytes::Bytes>::new().boxed(),
                                );
                                r.headers_mut()
                                    .insert("grpc-status", code.to_string().parse().unwrap());
                                r
                            }
                            // An empty message (5-byte frame), then OK in trailers.
                            _ => {
                                let mut trailers = http::HeaderMap::new();
                                trailers.insert("grpc-status", "0".parse().unwrap());
                                let frames: Vec<Result<_, std::convert::Infallible>> = vec![
                                    Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                                        b"\0\0\0\0\0",
                                    ))),
                                    Ok(hyper::body::Frame::trailers(trailers)),
                                ];
                                hyper::Response::new(
                                    http_body_util::StreamBody::new(futures::stream::iter(frames))
                                        .boxed(),
                                )
                            }
                        };
                        r.headers_mut()
                            .insert("content-type", "application/grpc".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_grpc_call_answered_unavailable_is_retried_per_the_route_on_real_sockets() {
    use raftmesh_api::v1 as pb;
    for (route, want_ok, want_calls) in [
        ("kind: Route\nmetadata: {name: grpcsvc}\nspec: {service: grpcsvc, retries: {attempts: 2}}\n", true, 2),
        // No retry policy: UNAVAILABLE from the app is its answer.
        ("", false, 1),
    ] {
        let (app, calls) = flaky_h2(Some(14), Duration::ZERO).await;
        let (p, _d) = static_proxy(&mesh("grpcsvc", &[("g-1", app, "v1")], route)).await;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.outbound))
            .unwrap()
            .origin("http://grpcsvc".parse().unwrap())
            .connect()
            .await
            .unwrap();
        let r = pb::raft_client::RaftClient::new(ch)
            .node_info(pb::NodeInfoRequest {})
            .await;
        match (want_ok, r) {
            (true, Ok(_)) => {}
            (false, Err(s)) => assert_eq!(s.code(), tonic::Code::Unavailable),
            (_, other) => panic!("{route:?}: {other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), want_calls, "{route:?}");
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_per_try_timeout_cuts_a_slow_attempt_and_the_retry_answers_on_real_sockets() {
    use raftmesh_api::v1 as pb;
    let (app, calls) = flaky_h2(None, Duration::from_secs(3)).await;
    let route = "kind: Route\nmetadata: {name: grpcsvc}\nspec: {service: grpcsvc, retries: {attempts: 1, per_try_timeout: 200ms, on: [gateway-error]}}\n";
    let (p, _d) = static_proxy(&mesh("grpcsvc", &[("g-1", app, "v1")], route)).await;
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", p.outbound))
        .unwrap()
        .origin("http://grpcsvc".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut c = pb::raft_client::RaftClient::new(ch);
    // A gRPC call is a POST: a per-try timeout retries it only as gRPC
    // (none of its statuses here), so it is cut, not retried...
    let e = c.node_info(pb::NodeInfoRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    p.shutdown().await;
    // ...while a GET is: the first attempt cut at 200 ms, the second answers.
    let slow = Upstream::start("slow-then-fast").await;
    let route = "kind: Route\nmetadata: {name: web}\nspec: {service: web, retries: {attempts: 1, per_try_timeout: 200ms, on: [gateway-error]}}\n";
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", slow.addr, "v1")], route)).await;
    slow.delay_ms.store(3_000, Ordering::SeqCst);
    let c = http_client();
    let t0 = std::time::Instant::now();
    let first = tokio::spawn({
        let (c, out) = (c.clone(), p.outbound);
        async move { get(&c, out, "web", "/", &[]).await }
    });
    // The retry finds the app fast again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow.delay_ms.store(0, Ordering::SeqCst);
    let (s, _, e) = first.await.unwrap();
    assert_eq!(s, 200, "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(slow.hits(), 2);
    p.shutdown().await;
}

/// An endpoint that answers the first `answered` requests of each
/// connection and resets the connection (RST, not FIN) on the next,
/// unanswered: with 1, a proxy handing over that closes a kept connection
/// with a request unread in it; with 0, an endpoint failing. Counts the
/// resets.
async fn resetting_after(answered: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let resets = Arc::new(AtomicUsize::new(0));
    let counted = resets.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let resets = counted.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut served = 0;
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    buf.drain(..end + 4);
                    if served == answered {
                        resets.fetch_add(1, Ordering::SeqCst);
                        s.set_zero_linger().unwrap();
                        return; // dropped: RST
                    }
                    served += 1;
                    s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (addr, resets)
}

#[tokio::test]
async fn an_idempotent_request_on_a_kept_connection_reset_before_its_answer_goes_again() {
    use http_body_util::BodyExt;
    let (addr, resets) = resetting_after(1).await;
    // No Route: no retry policy of its own.
    let (p, _d) = static_proxy(&mesh("web", &[("web-1", addr, "v1")], "")).await;
    let c: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    for i in 0..4 {
        let req = hyper::Request::get(format!("http://{}/", p.outbound))
            .header("host", "web")
            .body(http_body_util::Empty::new())
            .unwrap();
        let r = c.request(req).await.unwrap();
        assert_eq!(r.status(), 200, "GET {i}");
        // Whole, so the connection is back in the proxy's pool.
        r.into_body().collect().await.unwrap();
    }
    // Every request after the first met a kept connection that reset.
    assert!(resets.load(Ordering::SeqCst) >= 3, "{resets:?}");
    // A POST is not sent again: the endpoint may have acted on it.
    let req = hyper::Request::post(format!("http://{}/", p.outbound))
        .header("host", "web")
        .body(http_body_util::Empty::new())
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["x-raftmesh-error"], "upstream-reset");
    p.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_that_resets_every_request_is_ejected_and_gets_requests_retried_meanwhile() {
    let (bad, resets) = resetting_after(0).await;
    let good = Upstream::start("good").await;
    let route = "kind: Route\nmetadata: {name: web}\nspec:\n  service: web\n  load_balancer: round-robin\n  outlier: {consecutive_failures: 3, base_ejection: 30s, max_ejection_percent: 50}\n";
    let (p, _d) = static_proxy(&mesh(
        "web",
        &[("web-1", bad, "v1"), ("web-2", good.addr, "v1")],
        route,
    ))
    .await;
    let c = http_client();
    for i in 0..20 {
        let (s, _, _) = get(&c, p.outbound, "web", "/", &[]).await;
        assert_eq!(s, 200, "GET {i}: retried on the other endpoint");
    }
    // A reset is the endpoint failing: three in a row eject it.
    assert_eq!(resets.load(Ordering::SeqCst), 3);
    let m = super::routing::reqwest_metrics(p.admin).await;
    assert_eq!(
        metric(
            &m,
            "raftmesh_proxy_ejections_total",
            &[("destination_service", "web")]
        ),
        1.0,
        "{m}"
    );
    p.shutdown().await;
}
