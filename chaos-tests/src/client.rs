//! Clients the harness and simulators use: the admin API with a bearer
//! token, failing over between addresses, and helpers to read cluster status.

use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::admin_client::AdminClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

/// Adds `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// An admin client to one node.
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;

/// A lazily connected channel to `addr` (`host:port`).
pub fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// An admin client to `addr` with `token`.
pub fn admin(addr: &str, token: &str) -> anyhow::Result<Admin> {
    let v: MetadataValue<Ascii> = format!("Bearer {}", token.trim()).parse()?;
    Ok(AdminClient::with_interceptor(channel(addr)?, Bearer(v)))
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
