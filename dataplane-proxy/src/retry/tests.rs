//! Retry decisions and the budget, with mocks.

use http::{Request, Response, StatusCode};
use raftmesh_api::RetryOn;
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::testing::{target, Mock};

fn status(code: u16) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::from_u16(code).unwrap();
    r
}

fn get() -> Request<Body> {
    Request::get("/").body(empty()).unwrap()
}

#[tokio::test]
async fn a_failing_get_is_retried_until_it_succeeds() {
    let mock = Mock::new({
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        move |_| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(status(if i < 2 { 503 } else { 200 })) }
        }
    });
    let mut svc = RetryLayer.layer(mock.clone());
    let mut req = get();
    req.extensions_mut()
        .insert(target(None, Some((2, vec![RetryOn::Status5xx]))));
    let r = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.count(), 3);
}

#[tokio::test]
async fn non_idempotent_requests_and_unlisted_conditions_are_not_retried() {
    let mock = Mock::new(|_| async { Ok(status(503)) });
    let mut svc = RetryLayer.layer(mock.clone());
    let t = target(None, Some((3, vec![RetryOn::Status5xx])));
    let mut post = Request::post("/").body(empty()).unwrap();
    post.extensions_mut().insert(t.clone());
    svc.ready().await.unwrap().call(post).await.unwrap();
    assert_eq!(
        mock.count(),
        1,
        "a POST that reached the app is not repeated"
    );

    let mock = Mock::new(|_| async { Err(ProxyError::Reset("x".into())) });
    let mut svc = RetryLayer.layer(mock.clone());
    let mut req = get();
    req.extensions_mut()
        .insert(target(None, Some((3, vec![RetryOn::GatewayError]))));
    assert!(svc.ready().await.unwrap().call(req).await.is_err());
    assert_eq!(mock.count(), 1, "reset was not asked for");

    // A reset POST may have reached the app: never repeated.
    let mock = Mock::new(|_| async { Err(ProxyError::Reset("x".into())) });
    let mut svc = RetryLayer.layer(mock.clone());
    let mut post = Request::post("/").body(full("x")).unwrap();
    post.extensions_mut()
        .insert(target(None, Some((3, vec![RetryOn::Reset]))));
    assert!(svc.ready().await.unwrap().call(post).await.is_err());
    assert_eq!(mock.count(), 1);
}

fn full(s: &'static str) -> Body {
    http_body_util::Full::new(bytes::Bytes::from_static(s.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// A mock whose first `fails` calls fail with `error`, recording every
/// body it is sent.
fn failing_then_ok(
    fails: usize,
    error: ProxyError,
) -> (Mock, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = bodies.clone();
    let mock = Mock::new(move |req: Request<Body>| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (seen, error) = (seen.clone(), error.clone());
        async move {
            if i < fails {
                // The failed attempt never reads the body (as a failed
                // connect does not).
                return Err(error);
            }
            let b = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&b).into_owned());
            Ok(status(200))
        }
    });
    (mock, bodies)
}

#[tokio::test]
async fn a_post_that_never_reached_the_app_is_sent_whole_to_another_endpoint_without_a_route() {
    for error in [
        ProxyError::Connect("a".into()),
        ProxyError::Refused("a".into()),
    ] {
        let (mock, bodies) = failing_then_ok(2, error.clone());
        let mut svc = RetryLayer.layer(mock.clone());
        let mut post = Request::post("/orders").body(full("{\"qty\": 3}")).unwrap();
        // No retry policy at all.
        post.extensions_mut().insert(target(None, None));
        let r = svc.ready().await.unwrap().call(post).await.unwrap();
        assert_eq!(r.status(), 200, "{error:?}");
        assert_eq!(
            mock.count(),
            3,
            "two failed attempts, then one that got there"
        );
        assert_eq!(*bodies.lock().unwrap(), vec!["{\"qty\": 3}".to_string()]);
    }
    // Without a Route, twice at most.
    let (mock, _) = failing_then_ok(5, ProxyError::Connect("a".into()));
    let mut svc = RetryLayer.layer(mock.clone());
    let mut post = Request::post("/").body(full("x")).unwrap();
    post.extensions_mut().insert(target(None, None));
    let e = svc.ready().await.unwrap().call(post).await.unwrap_err();
    assert!(matches!(e, ProxyError::Connect(_)));
    assert_eq!(mock.count(), 3);
}

#[tokio::test]
async fn attempts_zero_turns_every_retry_off() {
    let (mock, _) = failing_then_ok(1, ProxyError::Connect("a".into()));
    let mut svc = RetryLayer.layer(mock.clone());
    let mut req = get();
    req.extensions_mut()
        .insert(target(None, Some((0, vec![RetryOn::ConnectFailure]))));
    assert!(svc.ready().await.unwrap().call(req).await.is_err());
    assert_eq!(mock.count(), 1);
}

#[tokio::test]
async fn put_and_delete_are_idempotent_and_retried_on_the_policy_s_conditions() {
    for method in [http::Method::PUT, http::Method::DELETE] {
        let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mock = Mock::new(move |_| {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(status(if i == 0 { 503 } else { 200 })) }
        });
        let mut svc = RetryLayer.layer(mock.clone());
        let mut req = Request::builder()
            .method(method.clone())
            .uri("/x")
            .body(full("v"))
            .unwrap();
        req.extensions_mut()
            .insert(target(None, Some((2, vec![RetryOn::Status5xx]))));
        let r = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(mock.count(), 2, "{method}");
    }
}

fn grpc_answer(code: u8) -> Response<Body> {
    let mut r = status(200);
    r.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    r.headers_mut()
        .insert("grpc-status", code.to_string().parse().unwrap());
    r
}

fn grpc_call() -> Request<Body> {
    Request::post("/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .body(full("\0\0\0\0\0"))
        .unwrap()
}

#[tokio::test]
async fn a_grpc_call_is_retried_on_the_policy_s_statuses_only() {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mock = Mock::new(move |_| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { Ok(grpc_answer(if i == 0 { 14 } else { 0 })) }
    });
    let mut svc = RetryLayer.layer(mock.clone());
    let mut req = grpc_call();
    req.extensions_mut()
        .insert(target(None, Some((2, vec![RetryOn::Status5xx]))));
    let r = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(r.headers()["grpc-status"], "0");
    assert_eq!(mock.count(), 2, "UNAVAILABLE is retried (the default)");

    // INVALID_ARGUMENT is not; nor is UNAVAILABLE without a policy.
    let mock = Mock::new(|_| async { Ok(grpc_answer(3)) });
    let mut svc = RetryLayer.layer(mock.clone());
    let mut req = grpc_call();
    req.extensions_mut()
        .insert(target(None, Some((2, vec![RetryOn::Status5xx]))));
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(mock.count(), 1);
    let mock = Mock::new(|_| async { Ok(grpc_answer(14)) });
    let mut svc = RetryLayer.layer(mock.clone());
    let mut req = grpc_call();
    req.extensions_mut().insert(target(None, None));
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(mock.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_ends_a_slow_attempt_and_the_next_answers() {
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mock = Mock::new(move |_| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if i == 0 {
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
            Ok(status(200))
        }
    });
    let mut svc = RetryLayer.layer(mock.clone());
    let mut t = target(None, Some((2, vec![RetryOn::Status5xx])));
    let mut table = (*t.table).clone();
    if let Some(r) = table.retries.as_mut() {
        r.per_try_timeout = Some(std::time::Duration::from_millis(100));
    }
    t.table = std::sync::Arc::new(table);
    let mut req = get();
    req.extensions_mut().insert(t);
    let started = tokio::time::Instant::now();
    let r = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(mock.count(), 2);
    // 100 ms, a backoff of at most 2 ms (the test target's), and the answer.
    assert!(started.elapsed() < std::time::Duration::from_millis(150));
}

#[test]
fn backoff_doubles_up_to_the_cap_with_full_jitter() {
    let (base, max) = (
        std::time::Duration::from_millis(25),
        std::time::Duration::from_millis(250),
    );
    for n in 1..=8 {
        let cap = (base * 2u32.pow(n - 1)).min(max);
        let samples: Vec<_> = (0..200).map(|_| backoff(n, base, max)).collect();
        assert!(samples.iter().all(|d| *d <= cap), "n={n}");
        // Jittered: not all the same, and some below half the cap.
        assert!(samples.iter().any(|d| *d < cap / 2), "n={n}");
    }
}

#[tokio::test]
async fn the_budget_caps_retries_at_a_fifth_of_the_traffic() {
    let mock = Mock::new(|_| async { Ok(status(500)) });
    let mut svc = RetryLayer.layer(mock.clone());
    let t = target(None, Some((1, vec![RetryOn::Status5xx])));
    let n = 1_000;
    for _ in 0..n {
        let mut req = get();
        req.extensions_mut().insert(t.clone());
        svc.ready().await.unwrap().call(req).await.unwrap();
    }
    let retries = mock.count() - n;
    // 20 % of 1,000 plus the reserve of 10.
    assert!(retries <= 210, "{retries} retries for {n} requests");
    assert!(retries >= 190, "the budget should allow ~20 %: {retries}");
}

#[tokio::test]
async fn a_closed_or_reset_keep_alive_connection_is_retried_for_idempotent_requests_only() {
    for cut in [
        ProxyError::Closed("a".into()),
        ProxyError::ResetBeforeAnswer("a".into()),
    ] {
        let (mock, _) = failing_then_ok(1, cut.clone());
        let mut svc = RetryLayer.layer(mock.clone());
        let mut req = get();
        req.extensions_mut().insert(target(None, None));
        let r = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(mock.count(), 2, "{cut}: a GET goes again, no policy needed");

        let (mock, _) = failing_then_ok(1, cut.clone());
        let mut svc = RetryLayer.layer(mock.clone());
        let mut post = Request::post("/").body(full("x")).unwrap();
        post.extensions_mut().insert(target(None, None));
        assert!(svc.ready().await.unwrap().call(post).await.is_err());
        assert_eq!(mock.count(), 1, "{cut}: a POST may have reached the app");
    }
    // Any other break (`Reset`: a bad answer head, an HTTP/2 stream
    // error) is not sent again without a policy that asks for it.
    let (mock, _) = failing_then_ok(1, ProxyError::Reset("a".into()));
    let mut svc = RetryLayer.layer(mock.clone());
    let mut req = get();
    req.extensions_mut().insert(target(None, None));
    assert!(svc.ready().await.unwrap().call(req).await.is_err());
    assert_eq!(mock.count(), 1);
}
