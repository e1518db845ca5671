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
async fn unsafe_requests_and_unlisted_conditions_are_not_retried() {
    let mock = Mock::new(|_| async { Ok(status(503)) });
    let mut svc = RetryLayer.layer(mock.clone());
    let t = target(None, Some((3, vec![RetryOn::Status5xx])));
    let mut post = Request::post("/").body(empty()).unwrap();
    post.extensions_mut().insert(t.clone());
    svc.ready().await.unwrap().call(post).await.unwrap();
    assert_eq!(mock.count(), 1, "POST is not safe to repeat");

    let mock = Mock::new(|_| async { Err(ProxyError::Connect("x".into())) });
    let mut svc = RetryLayer.layer(mock.clone());
    let mut req = get();
    req.extensions_mut()
        .insert(target(None, Some((3, vec![RetryOn::Status5xx]))));
    assert!(svc.ready().await.unwrap().call(req).await.is_err());
    assert_eq!(mock.count(), 1, "connect-failure was not asked for");
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
