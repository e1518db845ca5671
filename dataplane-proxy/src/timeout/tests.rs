//! The time limit with paused time and a mock inner service.

use std::time::Duration;

use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::testing::{target, Mock};

#[tokio::test(start_paused = true)]
async fn a_slow_upstream_gets_upstream_timeout() {
    let mock = Mock::new(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(Response::new(crate::empty()))
    });
    let mut svc = TimeoutLayer.layer(mock);
    let mut req = Request::new(crate::empty());
    req.extensions_mut()
        .insert(target(Some(Duration::from_secs(1)), None));
    let err = svc.ready().await.unwrap().call(req).await.unwrap_err();
    assert_eq!(err.code(), "upstream-timeout");
}

#[tokio::test(start_paused = true)]
async fn without_a_timeout_the_request_may_take_its_time() {
    let mock = Mock::new(|_| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok(Response::new(crate::empty()))
    });
    let mut svc = TimeoutLayer.layer(mock);
    let mut req = Request::new(crate::empty());
    req.extensions_mut().insert(target(None, None));
    assert!(svc.ready().await.unwrap().call(req).await.is_ok());
}
