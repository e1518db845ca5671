//! A simulated proxy speaking the discovery protocol, for tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use raftmesh_api::v1 as pb;
use raftmesh_api::v1::discovery_client::DiscoveryClient;
use raftmesh_api::v1::proxy_message::Msg as In;
use raftmesh_api::v1::server_message::Msg as Out;
use raftmesh_api::{Resource, ResourceKey};
use tokio::sync::mpsc;
use tonic::Streaming;

pub struct FakeProxy {
    pub tx: mpsc::Sender<pb::ProxyMessage>,
    pub rx: Streaming<pb::ServerMessage>,
    /// The last revision received.
    pub revision: u64,
    /// What the proxy holds.
    pub held: BTreeMap<ResourceKey, Resource>,
    /// Every delta received, in order.
    pub deltas: Vec<pb::Delta>,
}

pub fn hello(service: &str, instance: &str, token: &str, subs: &[&str]) -> pb::Hello {
    pb::Hello {
        service: service.into(),
        instance: instance.into(),
        token: token.into(),
        subscriptions: subs.iter().map(|s| s.to_string()).collect(),
        address: "127.0.0.1".into(),
        port: 0,
        ready: true,
        ..Default::default()
    }
}

pub fn msg(m: In) -> pb::ProxyMessage {
    pb::ProxyMessage { msg: Some(m) }
}

impl FakeProxy {
    pub async fn connect(addr: SocketAddr, hello: pb::Hello) -> Result<Self, tonic::Status> {
        Self::connect_raw(addr, vec![msg(In::Hello(hello))]).await
    }

    /// Opens a stream whose first messages are `first`.
    pub async fn connect_raw(
        addr: SocketAddr,
        first: Vec<pb::ProxyMessage>,
    ) -> Result<Self, tonic::Status> {
        let channel = raftmesh_client::endpoint(&addr.to_string(), None)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client = DiscoveryClient::new(channel).max_encoding_message_size(16 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(16);
        for m in first {
            tx.send(m).await.unwrap();
        }
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let rx = client.stream(stream).await?.into_inner();
        Ok(Self {
            tx,
            rx,
            revision: 0,
            held: BTreeMap::new(),
            deltas: Vec::new(),
        })
    }

    /// The next delta within `timeout` (heartbeats skipped), applied to
    /// what the proxy holds; `Ok(None)` when none came.
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<pb::Delta>, tonic::Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = match tokio::time::timeout_at(deadline, self.rx.message()).await {
                Err(_) => return Ok(None),
                Ok(r) => r?,
            };
            let Some(m) = m else {
                return Err(tonic::Status::cancelled("stream ended"));
            };
            match m.msg {
                Some(Out::Delta(d)) => {
                    assert!(
                        d.revision > self.revision,
                        "revision went from {} to {}",
                        self.revision,
                        d.revision
                    );
                    self.revision = d.revision;
                    if d.full {
                        self.held.clear();
                    }
                    for r in &d.upserts {
                        let r = Resource::try_from(r.clone()).unwrap();
                        self.held.insert(r.key(), r);
                    }
                    for k in &d.removals {
                        self.held.remove(&ResourceKey::try_from(k.clone()).unwrap());
                    }
                    self.deltas.push(d.clone());
                    return Ok(Some(d));
                }
                Some(Out::Error(e)) => {
                    return Err(tonic::Status::internal(format!(
                        "{}: {}",
                        e.code, e.message
                    )))
                }
                _ => continue,
            }
        }
    }

    /// The next delta, which must come within 10 s.
    pub async fn expect(&mut self) -> pb::Delta {
        self.next(Duration::from_secs(10))
            .await
            .unwrap()
            .expect("no delta within 10s")
    }

    pub async fn ack(&self, d: &pb::Delta) {
        self.tx
            .send(msg(In::Ack(pb::Ack {
                nonce: d.nonce.clone(),
            })))
            .await
            .unwrap();
    }

    /// Next delta, acknowledged.
    pub async fn expect_acked(&mut self) -> pb::Delta {
        let d = self.expect().await;
        self.ack(&d).await;
        d
    }

    pub fn names(&self) -> Vec<String> {
        self.held
            .keys()
            .map(|k| format!("{}/{}", k.kind, k.name))
            .collect()
    }
}
