//! The proxy on real sockets: upstream servers on loopback, proxies started
//! in-process from static configs or a fake control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod control_plane;
mod resilience;
mod routing;
mod support;
mod transport;
