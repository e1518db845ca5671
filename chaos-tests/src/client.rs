//! The harness's view of meshd's admin API: one client per node (the
//! client itself is `raftmesh-client`'s), and reading cluster status from
//! whichever node answers.

use std::time::Duration;

use raftmesh_api::v1 as pb;
use tonic::transport::Channel;

pub use raftmesh_client::Admin;

/// A lazily connected channel to `addr` (`host:port`), for discovery
/// streams; the harness waits a little longer to connect than meshctl.
pub fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(raftmesh_client::endpoint(addr, None)?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// An admin client to `addr` with `token`.
pub fn admin(addr: &str, token: &str) -> anyhow::Result<Admin> {
    Ok(raftmesh_client::admin_client(addr, Some(token), None)?)
}

/// Cluster status from the first of `addrs` that answers.
pub async fn cluster_status(
    addrs: &[String],
    token: &str,
) -> anyhow::Result<pb::ClusterStatusResponse> {
    let mut last = None;
    for a in addrs {
        let mut c = admin(a, token)?;
        match c.cluster_status(pb::ClusterStatusRequest {}).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!("no node answered cluster status: {last:?}"))
}

/// A bootstrap token for proxies of `service` (default namespace,
/// unlimited uses).
pub async fn bootstrap_token(adm: &mut Admin, service: &str) -> anyhow::Result<String> {
    Ok(raftmesh_client::bootstrap_token(adm, service, "").await?)
}
