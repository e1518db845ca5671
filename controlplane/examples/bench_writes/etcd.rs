//! etcd beside meshd: three `etcd` members (Debian's `etcd-server`, its
//! defaults: an fsync of the WAL on every commit) on loopback, and the one
//! call the benchmark makes, `etcdserverpb.KV/Put`, over gRPC as etcd's own
//! clients do. The two messages are written out here (the fields this call
//! uses, numbered as in etcd's `rpc.proto`) instead of pulling in a client
//! crate that needs `protoc` to build.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use super::{free_port, Procs};

/// `etcdserverpb.PutRequest` (key, value; lease and flags left unset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`, of which only the revision is read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

/// `etcdserverpb.StatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

/// `etcdserverpb.StatusResponse`: who answers, and who leads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(uint64, tag = "4")]
    pub leader: u64,
}

/// A client of one etcd member.
#[derive(Clone)]
pub struct Etcd(Grpc<Channel>);

impl Etcd {
    pub fn new(addr: &str) -> Self {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        Self(Grpc::new(ch))
    }

    /// One committed put; its revision.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<i64, tonic::Status> {
        self.0
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let r: tonic::Response<PutResponse> = self
            .0
            .unary(
                tonic::Request::new(PutRequest { key, value }),
                PathAndQuery::from_static("/etcdserverpb.KV/Put"),
                tonic_prost::ProstCodec::default(),
            )
            .await?;
        Ok(r.into_inner().header.map(|h| h.revision).unwrap_or(0))
    }

    /// Whether this member leads.
    pub async fn is_leader(&mut self) -> Result<bool, tonic::Status> {
        self.0
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let r: StatusResponse = self
            .0
            .unary(
                tonic::Request::new(StatusRequest {}),
                PathAndQuery::from_static("/etcdserverpb.Maintenance/Status"),
                tonic_prost::ProstCodec::default(),
            )
            .await?
            .into_inner();
        Ok(r.header.map(|h| h.member_id) == Some(r.leader))
    }
}

/// Starts three etcd members in `dir`; the client address of the leader.
pub async fn start(bin: &Path, dir: &Path, procs: &mut Procs) -> String {
    let members: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = members
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    for (i, (client, peer)) in members.iter().enumerate() {
        procs.0.push(
            Command::new(bin)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("e{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--advertise-client-urls",
                    &format!("http://127.0.0.1:{client}"),
                    "--listen-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--log-level",
                    "error",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start {}: {e} (apt-get install etcd-server, or --etcd-bin)",
                        bin.display()
                    )
                }),
        );
    }
    let addrs: Vec<String> = members
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut probe = Etcd::new(&addrs[0]);
    while probe
        .put(b"/bench/ready".to_vec(), b"1".to_vec())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in &addrs {
        if matches!(Etcd::new(a).is_leader().await, Ok(true)) {
            return a.clone();
        }
    }
    panic!("no etcd member says it leads")
}
