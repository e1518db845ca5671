//! A gRPC upstream for `bench/grpc.sh`: the standard gRPC health service
//! (`grpc.health.v1.Health/Check` answers SERVING for the empty service
//! name) on one current-thread runtime, so that it costs the same for every
//! proxy measured in front of it.
//!
//!     cargo run --release -p raftmesh-dataplane-proxy --example grpc_upstream -- 127.0.0.1:18280

use std::net::SocketAddr;

fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: grpc_upstream ADDR (e.g. 127.0.0.1:18280)"))?
        .parse()
        .map_err(|e| anyhow::anyhow!("ADDR: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        eprintln!("grpc_upstream: health service on {addr}");
        tonic::transport::Server::builder()
            .add_service(health)
            .serve(addr)
            .await
    })?;
    Ok(())
}
